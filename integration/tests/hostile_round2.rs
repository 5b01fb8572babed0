//! The second hostile-peer pass (issue 22): what an unauthenticated peer, a
//! pending key and a compromised agent could still do, one test per hole,
//! each failing while the hole is open. `docs/security.md` names them under
//! their party.

use std::io::{Read, Write as _};
use std::path::Path;
use std::time::{Duration, Instant};

use pantry_integration::curve::{
    admin, admin_pair, bootstrap_admin, create_named_client, curve_dealer, full_keys, line_with, recv_for, send,
    sign_as_admin, wait_for_line, write_key_file, KEYS,
};
use pantry_integration::etcd::Etcd;
use pantry_integration::plain::{PlainAgent, PlainCurve, PlainSpec};
use pantry_integration::{free_port, wait_for_status, wait_until, Agent, AgentSpec, Server};
use pantry_shared::commands::enroll::{self, EnrollRequest};
use pantry_shared::commands::{echo, register_client, status};
use pantry_shared::filter::{ClientFilter, Identities};
use pantry_shared::keys::KeyPair;
use pantry_shared::Message;

const WAIT: Duration = Duration::from_secs(10);

fn online(server: &Server, cwd: &Path, ids: &[&str]) -> bool {
    wait_for_status(server, cwd, &["--curve-key-file", KEYS, "--timeout", "2"], ids, WAIT)
}

/// A CURVE DEALER with a key the server does not know: admitted to enroll.
fn stranger(ctx: &zmq::Context, server: &Server) -> (zmq::Socket, KeyPair) {
    let pair = KeyPair::generate().unwrap();
    (curve_dealer(ctx, server, &pair), pair)
}

/// The stranger asks to be enrolled as `identity` and hears it waits.
fn claim(dealer: &zmq::Socket, identity: &str) {
    let request =
        enroll::request(&EnrollRequest { token: None, identity: Some(identity.into()), hostname: "h".into() });
    send(dealer, &request);
    assert!(recv_for(dealer, request.uuid(), WAIT).is_some(), "no answer to the claim of {identity}");
}

fn file_size(path: &Path) -> u64 {
    std::fs::metadata(path).map(|m| m.len()).unwrap_or(0)
}

// ---------------------------------------------------------------------------
// 1. A flood of unknown keys and a claimed name
// ---------------------------------------------------------------------------

#[test]
fn a_flood_of_unknown_keys_cannot_take_a_machines_name() {
    let server = Server::start(true);
    let (cwd, _) = bootstrap_admin(&server);
    let ctx = zmq::Context::new();
    let (machine, machine_key) = stranger(&ctx, &server);
    claim(&machine, "web-3");
    drop(machine);
    // Past the pending list's bounds: anonymous keys (a handshake and a
    // refused request each) and keys claiming names of their own.
    for batch in 0..11 {
        let mut open = Vec::new();
        for i in 0..100 {
            let (dealer, _) = stranger(&ctx, &server);
            if i % 2 == 0 {
                claim(&dealer, &format!("flood-{batch}-{i}"));
            } else {
                let probe = status::request(&ClientFilter::default());
                send(&dealer, &probe);
                assert!(recv_for(&dealer, probe.uuid(), WAIT).is_some());
            }
            open.push(dealer);
        }
    }
    let (attacker, attacker_key) = stranger(&ctx, &server);
    claim(&attacker, "web-3");

    let accepted = admin(&server, cwd.path(), 5, &["client:accept", "web-3"]);
    assert_eq!(accepted.code, Some(1), "accepted by name after a flood: {accepted:?}");
    assert!(accepted.stderr.contains("claimed by 2 keys"), "{accepted:?}");
    let keys = admin(&server, cwd.path(), 5, &["client:list"]);
    assert!(!keys.stdout.contains(&attacker_key.public_key), "the attacker's key is known: {keys:?}");
    let pending = admin(&server, cwd.path(), 5, &["client:pending"]);
    assert!(pending.stdout.contains(&machine_key.public_key), "the machine's claim was pushed out: {pending:?}");
    // The machine's own key, named by key, is accepted.
    let by_key = admin(&server, cwd.path(), 5, &["client:accept", &machine_key.public_key]);
    assert!(by_key.success() && by_key.stdout.contains("web-3"), "{by_key:?}");
}

// ---------------------------------------------------------------------------
// 2. Refused requests and the disk
// ---------------------------------------------------------------------------

#[test]
fn refused_requests_grow_the_logs_by_little() {
    let server = Server::start_at_info(true, "");
    let (cwd, _) = bootstrap_admin(&server);
    let audit = server.root_dir().join("audit.log");
    let (log_before, audit_before) = (file_size(&server.process.log_path), file_size(&audit));
    let ctx = zmq::Context::new();
    let (dealer, pair) = stranger(&ctx, &server);
    // 12 requests of 4 MiB: type, stream and identities of 1.3 MiB each.
    let big = "T".repeat(1_400_000);
    let mut last = String::new();
    for i in 0..12 {
        let mut m = Message::new(&big);
        m.metadata.requires_response = true;
        m.metadata.uuid = format!("big-{i}");
        m.stream = big.clone();
        Identities::attach(&mut m, std::slice::from_ref(&big));
        send(&dealer, &m);
        last = m.uuid().to_owned();
    }
    assert!(recv_for(&dealer, &last, Duration::from_secs(30)).is_some(), "the refusals were not answered");
    let grown = |before: (u64, u64)| (file_size(&server.process.log_path) - before.0) + (file_size(&audit) - before.1);
    let after_big = grown((log_before, audit_before));
    eprintln!("48 MiB of refused requests grew the logs by {after_big} bytes");
    assert!(after_big < 64 * 1024, "the logs grew by {after_big} bytes");
    // The refusals were counted in one line per window, in both logs.
    let counted = wait_for_line(|| server.log(), &["WARN", "more refusals", &pair.public_key], Duration::from_secs(15));
    assert!(counted.is_some(), "no count line:\n{}", server.log());
    let audited = std::fs::read_to_string(&audit).unwrap();
    assert!(audited.lines().any(|l| l.contains("more requests from this key")), "{audited}");
    assert!(grown((log_before, audit_before)) < 1 << 20);
    drop(cwd);
}

// ---------------------------------------------------------------------------
// 3. Forged log lines
// ---------------------------------------------------------------------------

#[test]
fn a_value_with_a_newline_forges_no_log_line() {
    let server = Server::start(true);
    let (_cwd, _) = bootstrap_admin(&server);
    let ctx = zmq::Context::new();
    let (dealer, _) = stranger(&ctx, &server);
    let forged = "Echo\nDec 07 06:00:00.000 WARN key revoked and cut off, name: admin\u{1b}[2J";
    let mut m = Message::new(forged);
    m.metadata.requires_response = true;
    m.metadata.uuid = "u\nDec 07 06:00:00.000 WARN forged uuid line".into();
    m.metadata.from = "x\nDec 07 06:00:00.000 WARN forged from line".into();
    send(&dealer, &m);
    let refused = wait_for_line(|| server.log(), &["WARN", "refused", "key revoked and cut off"], WAIT)
        .unwrap_or_else(|| panic!("no refusal logged:\n{}", server.log()));
    assert!(refused.contains("Echo\\nDec 07") && refused.contains("\\u001b[2J"), "{refused}");
    for line in server.log().lines() {
        assert!(!line.starts_with("Dec 07 06:00:00.000"), "a forged line: {line}");
        assert!(!line.contains('\u{1b}'), "a terminal escape written as is: {line:?}");
    }
}

// ---------------------------------------------------------------------------
// 4. A squatted stream
// ---------------------------------------------------------------------------

#[test]
fn a_compromised_agent_cannot_lock_a_machine_out_by_its_streams() {
    let server = Server::start(true);
    let (cwd, _) = bootstrap_admin(&server);
    let evil_credentials = create_named_client(&server, cwd.path(), "evil");
    let evil_key = PlainCurve::from_credentials(&evil_credentials).public_key;
    // The compromised key registers application `web` and the stream
    // `sq1.example.com` before those machines first register.
    let mut squat = AgentSpec::new("evil", "web", "x", &[]);
    squat.client_keys_yaml = Some(evil_credentials);
    let _evil = Agent::start(&server, squat);
    assert!(online(&server, cwd.path(), &["evil"]), "{}", server.log());
    let evil2_credentials = create_named_client(&server, cwd.path(), "evil-2");
    let mut squat2 = AgentSpec::new("evil-2", "sq1", "example", &["com"]);
    squat2.client_keys_yaml = Some(evil2_credentials);
    let _evil2 = Agent::start(&server, squat2);
    assert!(online(&server, cwd.path(), &["evil", "evil-2"]), "{}", server.log());

    let started = Instant::now();
    let machines: Vec<Agent> = ["web", "sq1.example.com"]
        .iter()
        .map(|id| {
            let mut spec = AgentSpec::new(id, "shop", "prod", &[]);
            spec.client_keys_yaml = Some(create_named_client(&server, cwd.path(), id));
            Agent::start(&server, spec)
        })
        .collect();
    let wins = wait_for_status(
        &server,
        cwd.path(),
        &["--curve-key-file", KEYS, "--timeout", "2", "-a", "shop"],
        &["sq1.example.com", "web"],
        WAIT,
    );
    assert!(wins, "the machines did not get in:\n{}", server.log());
    eprintln!("the machines were online {:?} after they started", started.elapsed());
    let line = line_with(&server.log(), &["WARN", "registration refused", "evil", "owner: web"])
        .unwrap_or_else(|| panic!("no warning naming both:\n{}", server.log()));
    assert!(line.contains(&evil_key) && line.contains("owner_key"), "{line}");
    let echo = admin(&server, cwd.path(), 5, &["-i", "web", "echo", "mine"]);
    assert!(echo.success() && echo.stdout.contains("web: mine"), "{echo:?}");
    drop(machines);
}

// ---------------------------------------------------------------------------
// 5. Metrics and health
// ---------------------------------------------------------------------------

#[test]
fn a_stalled_metrics_reader_does_not_stop_health_checks() {
    let port = free_port();
    let server = Server::start_with(true, &format!("metrics:\n  listen: 127.0.0.1:{port}\n"));
    assert!(server.process.wait_for_log("metrics served", WAIT), "{}", server.log());
    let mut greedy = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    greedy.set_write_timeout(Some(Duration::from_secs(3))).unwrap();
    let _ = greedy.write_all("GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n".repeat(5000).as_bytes());
    std::thread::sleep(Duration::from_millis(300));
    for _ in 0..3 {
        let started = Instant::now();
        let mut probe = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
        probe.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        probe.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").unwrap();
        let mut answer = String::new();
        let _ = probe.read_to_string(&mut answer);
        let took = started.elapsed();
        eprintln!("/healthz answered in {took:?} beside a stalled reader");
        assert!(answer.starts_with("HTTP/1.1 200"), "{answer:?}");
        assert!(took < Duration::from_secs(1), "{took:?}");
    }
}

// ---------------------------------------------------------------------------
// 6. max_output
// ---------------------------------------------------------------------------

#[test]
fn a_malicious_agent_cannot_bypass_max_output() {
    let server = Server::start_with(true, "jobs:\n  max_output: 64KiB\n");
    let (cwd, _) = bootstrap_admin(&server);
    let credentials = PlainCurve::from_credentials(&create_named_client(&server, cwd.path(), "liar"));
    let mut spec = PlainSpec::for_server(&server, "liar", &["web"], Some(credentials));
    spec.oversized_answers = 3 << 20;
    let _liar = PlainAgent::start(spec);
    assert!(online(&server, cwd.path(), &["liar"]), "{}", server.log());
    let db = server.root_dir().join("pantry.db");
    let wal = server.root_dir().join("pantry.db-wal");
    let before = file_size(&db) + file_size(&wal);
    let mut ids = Vec::new();
    for _ in 0..6 {
        let run = admin(&server, cwd.path(), 10, &["-i", "liar", "exec", "--async", "--", "true"]);
        assert!(run.success(), "{run:?}");
        ids.push(run.stdout.trim().to_owned());
    }
    for id in &ids {
        let shown = admin(&server, cwd.path(), 10, &["job", id, "--wait", "--json"]);
        assert!(shown.stdout.contains("liar"), "{shown:?}");
        assert!(shown.stdout.len() < 200 * 1024, "job {id} is {} bytes", shown.stdout.len());
    }
    let grown = (file_size(&db) + file_size(&wal)).saturating_sub(before);
    eprintln!("6 answers of 6 MiB grew the job store by {grown} bytes");
    assert!(grown < 2 << 20, "the job store grew by {grown} bytes");
}

// ---------------------------------------------------------------------------
// 7. Job history
// ---------------------------------------------------------------------------

#[test]
fn a_recorded_job_is_never_rewritten() {
    let server = Server::start(true);
    let (cwd, _) = bootstrap_admin(&server);
    let mut spec = AgentSpec::new("web-1", "shop", "prod", &[]);
    spec.client_keys_yaml = Some(create_named_client(&server, cwd.path(), "web-1"));
    let _agent = Agent::start(&server, spec);
    assert!(online(&server, cwd.path(), &["web-1"]), "{}", server.log());
    let ctx = zmq::Context::new();
    let dealer = curve_dealer(&ctx, &server, &admin_pair(cwd.path()));
    let mut first = echo::request("the original");
    first.metadata.uuid = "0190a000-0000-7000-8000-000000000001".into();
    sign_as_admin(cwd.path(), &mut first);
    send(&dealer, &first);
    assert!(wait_until(WAIT, || admin(&server, cwd.path(), 5, &["job", first.uuid()]).stdout.contains("the original")));
    let mut again = echo::request("rewritten");
    again.metadata.uuid = first.uuid().to_owned();
    again.stream = "nobody".into();
    send(&dealer, &again);
    // The first echo's answers may still be on their way: the refusal is
    // the answer with an error.
    let mut refusal = None;
    wait_until(WAIT, || {
        refusal = recv_for(&dealer, again.uuid(), Duration::from_millis(200)).filter(|m| m.error().is_some());
        refusal.is_some()
    });
    let refused = refusal.expect("a refusal");
    assert!(refused.error().is_some_and(|e| e.contains("already used")), "{refused:?}");
    let shown = admin(&server, cwd.path(), 5, &["job", first.uuid()]);
    assert!(shown.stdout.contains("the original") && !shown.stdout.contains("rewritten"), "{shown:?}");
    let audit = std::fs::read_to_string(server.root_dir().join("audit.log")).unwrap();
    assert!(audit.lines().any(|l| l.contains(first.uuid()) && l.contains("already used")), "{audit}");
}

// ---------------------------------------------------------------------------
// 8. Invisible characters
// ---------------------------------------------------------------------------

#[test]
fn invisible_and_bidirectional_characters_are_refused_in_names() {
    let server = Server::start(false);
    let ctx = zmq::Context::new();
    let dealer = ctx.socket(zmq::DEALER).unwrap();
    dealer.connect(&format!("tcp://127.0.0.1:{}", server.ports.receive)).unwrap();
    for (identity, application) in [("web-3\u{200b}", "shop"), ("\u{202e}3-bew", "shop"), ("web-4", "sh\u{2066}op")] {
        let mut m = register_client::request(&ClientFilter {
            identity: Some(identity.into()),
            application: Some(application.into()),
            ..Default::default()
        });
        m.metadata.requires_response = true;
        send(&dealer, &m);
        let answer = recv_for(&dealer, m.uuid(), WAIT).expect("an answer");
        let error = answer.error().unwrap_or_default();
        assert!(error.contains("invisible or control character"), "{identity:?}/{application:?}: {error}");
    }
    let listed = server.admin(&["--timeout", "3", "status", "--json"]);
    assert_eq!(listed.stdout.trim(), "[]", "{listed:?}");
    // Under CURVE, a claim to be enrolled under such a name is refused too.
    let server = Server::start(true);
    let (cwd, _) = bootstrap_admin(&server);
    let (dealer, _) = stranger(&ctx, &server);
    let request =
        enroll::request(&EnrollRequest { token: None, identity: Some("web-3\u{feff}".into()), hostname: "h".into() });
    send(&dealer, &request);
    let answer = recv_for(&dealer, request.uuid(), WAIT).expect("an answer");
    assert!(answer.error().is_some(), "{answer:?}");
    let pending = admin(&server, cwd.path(), 5, &["client:pending", "--json"]);
    assert!(!pending.stdout.contains("web-3"), "{pending:?}");
}

// ---------------------------------------------------------------------------
// Found by reading
// ---------------------------------------------------------------------------

#[test]
fn an_outstanding_token_can_be_withdrawn_cluster_wide() {
    let etcd = Etcd::start();
    let cluster = |id: &str| {
        format!("cluster:\n  etcd: [{}]\n  server_id: {id}\n  advertise: 127.0.0.1\n  lease: 2s\n", etcd.endpoint())
    };
    let a = Server::start_on_with("127.0.0.1", pantry_integration::Ports::free(), true, &cluster("a"), |_| {});
    let (cwd, _) = bootstrap_admin(&a);
    let b = Server::start_on_with("127.0.0.1", pantry_integration::Ports::free(), true, &cluster("b"), |root| {
        pantry_integration::curve::copy_key_store(&a, root)
    });
    let token = admin(&a, cwd.path(), 5, &["client:token", "--uses", "5"]);
    assert!(token.success(), "{token:?}");
    let token = token.stdout.trim().to_owned();
    let listed = admin(&b, cwd.path(), 5, &["client:tokens", "--json"]);
    let tokens: serde_json::Value = serde_json::from_str(&listed.stdout).unwrap_or_else(|_| panic!("{listed:?}"));
    assert_eq!(tokens.as_array().map(Vec::len), Some(1), "{tokens}");
    assert!(!listed.stdout.contains(&token), "the token itself is listed: {listed:?}");
    assert_eq!(tokens[0]["uses_left"], 5);
    let id = tokens[0]["id"].as_str().unwrap().to_owned();
    let table = admin(&a, cwd.path(), 5, &["client:tokens"]);
    assert!(table.stdout.contains(&id), "{table:?}");
    // Revoked on B, it enrolls nothing on A.
    let revoked = admin(&b, cwd.path(), 5, &["client:token", "--revoke", &id]);
    assert!(revoked.success(), "{revoked:?}");
    let gone = wait_until(WAIT, || admin(&a, cwd.path(), 5, &["client:tokens"]).stdout.contains("no outstanding"));
    assert!(gone, "{}", a.log());
    let agent = Agent::prepare(&a, AgentSpec::new("web-1", "shop", "prod", &[]));
    let run = agent.run(&["enroll", "--token", &token, "--server-public-key", &a.public_key()]);
    assert_eq!(run.code, Some(1), "{run:?}");
    assert!(run.stderr.contains("unknown enrollment token"), "{run:?}");
    let audit = std::fs::read_to_string(b.root_dir().join("audit.log")).unwrap();
    assert!(audit.lines().any(|l| l.contains("RevokeToken") && l.contains(&id)), "{audit}");
    let unknown = admin(&a, cwd.path(), 5, &["client:token", "--revoke", "0123456789ab"]);
    assert_eq!(unknown.code, Some(1), "{unknown:?}");
}

#[test]
fn a_key_revoked_and_accepted_again_speaks_again() {
    let server = Server::start(true);
    let (cwd, _) = bootstrap_admin(&server);
    let ctx = zmq::Context::new();
    let pair = KeyPair::generate().unwrap();
    let enrollee = curve_dealer(&ctx, &server, &pair);
    claim(&enrollee, "web-5");
    assert!(admin(&server, cwd.path(), 5, &["client:accept", "web-5"]).success());
    assert!(admin(&server, cwd.path(), 5, &["client:revoke", "web-5"]).success());
    // It asks again, and is accepted again.
    let again = curve_dealer(&ctx, &server, &pair);
    claim(&again, "web-5");
    let accepted = admin(&server, cwd.path(), 5, &["client:accept", "web-5"]);
    assert!(accepted.success(), "{accepted:?}");
    let keys = tempfile::tempdir().unwrap();
    write_key_file(keys.path(), KEYS, &full_keys(&server.public_key(), &pair));
    let mut spec = AgentSpec::new("web-5", "shop", "prod", &[]);
    spec.client_keys_yaml = Some(format!(
        "---\nserver_public_key: '{}'\npublic_key: '{}'\nprivate_key: '{}'\nname: web-5\n",
        server.public_key(),
        pair.public_key,
        pair.private_key
    ));
    let _agent = Agent::start(&server, spec);
    assert!(online(&server, cwd.path(), &["web-5"]), "silenced after its second accept:\n{}", server.log());
    let echo = admin(&server, cwd.path(), 5, &["-i", "web-5", "echo", "back"]);
    assert!(echo.success(), "{echo:?}");
}
