//! Agents that know only SPEC.md (issue 21): a raw ZeroMQ SUB + DEALER that
//! subscribes to its bare streams and keeps a message only when its first
//! frame equals one of them (`pantry_integration::plain`, no Pantry code).
//! They must register, receive every request meant for them exactly once
//! with the bare stream in the first frame, and have their answers routed,
//! under null and under CURVE, beside Pantry's own agents, which keep
//! their exact delivery.

use std::path::Path;
use std::time::Duration;

use pantry_integration::curve::{
    admin, admin_pair, bootstrap_admin, create_named_client, curve_dealer, field, full_keys, yaml, KEYS,
};
use pantry_integration::plain::{metadata, Frames, PlainAgent, PlainCurve, PlainSpec};
use pantry_integration::{wait_for_status, wait_until, AdminRun, Agent, AgentSpec, Server};

const WAIT: Duration = Duration::from_secs(10);

fn plain_spec(server: &Server, identity: &str, roles: &[&str], curve: Option<PlainCurve>) -> PlainSpec {
    PlainSpec::for_server(server, identity, roles, curve)
}

/// Admin arguments for the server's security.
fn run(server: &Server, cwd: &Path, args: &[&str]) -> AdminRun {
    if server.curve {
        admin(server, cwd, 5, args)
    } else {
        let mut all = vec!["--timeout", "5"];
        all.extend_from_slice(args);
        server.admin_in(cwd, &all)
    }
}

fn online(server: &Server, cwd: &Path, ids: &[&str]) -> bool {
    let extra: &[&str] = if server.curve { &["--curve-key-file", KEYS, "--timeout", "2"] } else { &["--timeout", "2"] };
    wait_for_status(server, cwd, extra, ids, WAIT)
}

/// The uuid of the last job (`jobs --json`): what the admin just sent.
fn last_uuid(server: &Server, cwd: &Path) -> String {
    let listed = run(server, cwd, &["jobs", "--json", "--limit", "1"]);
    let jobs: serde_json::Value = serde_json::from_str(&listed.stdout).unwrap_or_else(|_| panic!("{listed:?}"));
    jobs[0]["id"].as_str().unwrap_or_else(|| panic!("{listed:?}")).to_owned()
}

/// The agent received the request `uuid` exactly once, with `stream`, bare,
/// in the first frame.
fn received_once(agent: &PlainAgent, uuid: &str, stream: &str) {
    let got: Vec<Frames> = agent.received_for(uuid);
    assert_eq!(got.len(), 1, "{} received {uuid} {} times: {got:?}", agent.spec.identity, got.len());
    assert_eq!(got[0][0], stream.as_bytes(), "first frame: {:?}", String::from_utf8_lossy(&got[0][0]));
}

/// echo by identity, by application, by app.env.role and to everyone; an
/// Exec it does not know reported as such.
fn a_plain_agent_answers(curve: bool) {
    let server = Server::start(curve);
    let (cwd, credentials) = if curve {
        let (cwd, _) = bootstrap_admin(&server);
        let credentials = create_named_client(&server, cwd.path(), "host-1");
        (cwd, Some(PlainCurve::from_credentials(&credentials)))
    } else {
        (tempfile::tempdir().unwrap(), None)
    };
    let agent = PlainAgent::start(plain_spec(&server, "host-1", &["web"], credentials));
    assert!(online(&server, cwd.path(), &["host-1"]), "{}", server.log());

    let cases: [(&[&str], &str); 4] = [
        (&["-i", "host-1"], "host-1"),
        (&["-a", "pantry"], "pantry"),
        (&["-a", "pantry", "-e", "test", "-r", "web"], "pantry.test.web"),
        (&[], "*"),
    ];
    for (targets, stream) in cases {
        let mut args = targets.to_vec();
        args.extend(["echo", "plain hello"]);
        let answered = run(&server, cwd.path(), &args);
        assert!(answered.success(), "{args:?}: {answered:?}\n{}", server.log());
        assert!(answered.stdout.contains("host-1: plain hello"), "{args:?}: {answered:?}");
        received_once(&agent, &last_uuid(&server, cwd.path()), stream);
    }

    let exec = run(&server, cwd.path(), &["-a", "pantry", "exec", "--", "true"]);
    assert_eq!(exec.code, Some(1), "{exec:?}");
    assert!(exec.stderr.contains("host-1: does not support the command type Exec"), "{exec:?}");
    received_once(&agent, &last_uuid(&server, cwd.path()), "pantry");
}

#[test]
fn a_plain_agent_answers_under_null() {
    a_plain_agent_answers(false);
}

#[test]
fn a_plain_agent_answers_under_curve() {
    a_plain_agent_answers(true);
}

/// Two plain agents and two `pantry-client`s: an echo reaches all four,
/// an exec runs on the Pantry agents and is reported per plain agent.
#[test]
fn a_mixed_fleet_answers() {
    let server = Server::start(true);
    let (cwd, _) = bootstrap_admin(&server);
    let plain: Vec<PlainAgent> = ["plain-1", "plain-2"]
        .iter()
        .map(|id| {
            let credentials = PlainCurve::from_credentials(&create_named_client(&server, cwd.path(), id));
            PlainAgent::start(plain_spec(&server, id, &["web"], Some(credentials)))
        })
        .collect();
    let _ours: Vec<Agent> = ["ours-1", "ours-2"]
        .iter()
        .map(|id| {
            let mut spec = AgentSpec::new(id, "pantry", "test", &["web"]);
            spec.client_keys_yaml = Some(create_named_client(&server, cwd.path(), id));
            Agent::start(&server, spec)
        })
        .collect();
    assert!(online(&server, cwd.path(), &["ours-1", "ours-2", "plain-1", "plain-2"]), "{}", server.log());

    let echo = run(&server, cwd.path(), &["-a", "pantry", "echo", "all of you"]);
    assert!(echo.success(), "{echo:?}");
    for id in ["ours-1", "ours-2", "plain-1", "plain-2"] {
        assert!(echo.stdout.contains(&format!("{id}: all of you")), "{id}: {echo:?}");
    }
    let uuid = last_uuid(&server, cwd.path());
    for agent in &plain {
        received_once(agent, &uuid, "pantry");
    }

    let exec = run(&server, cwd.path(), &["-a", "pantry", "exec", "--", "echo", "ran"]);
    assert_eq!(exec.code, Some(1), "{exec:?}");
    for id in ["ours-1", "ours-2"] {
        assert!(exec.stdout.contains(&format!("==> {id}: exit 0")), "{id}: {exec:?}");
    }
    for id in ["plain-1", "plain-2"] {
        assert!(exec.stderr.contains(&format!("{id}: does not support the command type Exec")), "{id}: {exec:?}");
    }
    assert!(exec.stderr.contains("4 of 4 clients answered, 2 failed"), "{exec:?}");
}

/// A plain subscriber sees published requests framed as the original
/// Ruby Pantry framed them (`wire-vectors-ruby-pantry.json`): the bare
/// stream, metadata with the same fields, then the body.
#[test]
fn published_frames_look_like_the_originals() {
    let vectors =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/tests/data/wire-vectors-ruby-pantry.json");
    let vectors: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&vectors).expect("wire vectors")).expect("JSON");
    let original = vectors["messages"]
        .as_array()
        .and_then(|all| all.iter().find(|m| m["socket"] == "PUB"))
        .expect("a published request among the vectors");
    let frames: Vec<&str> = original["frames"].as_array().unwrap().iter().map(|f| f.as_str().unwrap()).collect();
    let original_meta: serde_json::Value = serde_json::from_str(frames[1]).unwrap();

    let server = Server::start(false);
    let cwd = tempfile::tempdir().unwrap();
    let agent = PlainAgent::start(plain_spec(&server, "client-1", &["app"], None));
    assert!(online(&server, cwd.path(), &["client-1"]), "{}", server.log());
    let echo = run(&server, cwd.path(), &["-a", "pantry", "echo", frames[2]]);
    assert!(echo.success(), "{echo:?}");
    let got = agent.received_of("Echo");
    assert_eq!(got.len(), 1, "{got:?}");
    let got = &got[0];
    assert_eq!(got.len(), frames.len(), "frame count: {got:?}");
    assert_eq!(got[0], frames[0].as_bytes(), "stream");
    assert_eq!(got[2], frames[2].as_bytes(), "body");
    let meta = metadata(got).expect("metadata is JSON");
    let keys = |v: &serde_json::Value| {
        let mut k: Vec<String> = v.as_object().map(|o| o.keys().cloned().collect()).unwrap_or_default();
        k.sort();
        k
    };
    let mut extra = keys(&meta);
    extra.retain(|k| !keys(&original_meta).contains(k));
    assert!(keys(&original_meta).iter().all(|k| meta.get(k).is_some()), "{meta} lacks fields of {original_meta}");
    assert!(extra.is_empty(), "fields the original never sent: {extra:?}");
    for field in ["type", "to", "requires_response"] {
        assert_eq!(meta[field], original_meta[field], "{field}");
    }
}

/// Issue 21, item 5: an original-format key store (`client_keys:` a plain
/// list, every key unbound but the first) and original agents that
/// subscribe before they register and never say their heartbeat: both
/// stay online while connected and checking in.
#[test]
fn original_agents_stay_online_under_curve() {
    let mut server = Server::start(true);
    let server_key = server.public_key();
    let admin_pair = pantry_shared::keys::KeyPair::generate().unwrap();
    let (web1, web2) = (PlainCurve::generate(&server_key), PlainCurve::generate(&server_key));
    server.process.terminate();
    let path = server.root_dir().join("security/curve/server_keys.yml");
    let head = yaml(&std::fs::read_to_string(&path).unwrap());
    std::fs::write(
        &path,
        format!(
            "---\npublic_key: '{}'\nprivate_key: '{}'\nclient_keys:\n- '{}'\n- '{}'\n- '{}'\n",
            field(&head, "public_key"),
            field(&head, "private_key"),
            admin_pair.public_key,
            web1.public_key,
            web2.public_key
        ),
    )
    .unwrap();
    server.restart();
    let cwd = tempfile::tempdir().unwrap();
    pantry_integration::curve::write_key_file(cwd.path(), KEYS, &full_keys(&server_key, &admin_pair));
    let _agents: Vec<PlainAgent> = [("web-1", web1), ("web-2", web2)]
        .into_iter()
        .map(|(id, keys)| {
            // As the original subscribed without an environment: `pantry`,
            // and `pantry.app` for its role, which is no stream here.
            let mut spec = plain_spec(&server, id, &["app"], Some(keys));
            spec.environment = None;
            spec.extra_subscriptions = vec!["pantry.app".into()];
            PlainAgent::start(spec)
        })
        .collect();
    assert!(online(&server, cwd.path(), &["web-1", "web-2"]), "{}", server.log());
    for id in ["web-1", "web-2"] {
        assert!(
            server.log().lines().any(|l| l.contains("INFO") && l.contains("client registered") && l.contains(id)),
            "no `client registered` at info for {id}:\n{}",
            server.log()
        );
    }
    // Still online a few heartbeats later, and answering.
    std::thread::sleep(Duration::from_secs(3));
    let status = run(&server, cwd.path(), &["status"]);
    assert!(!status.stdout.contains("offline"), "{status:?}\n{}", server.log());
    let echo = run(&server, cwd.path(), &["-a", "pantry", "echo", "still here"]);
    assert!(echo.success() && echo.stderr.contains("2 of 2 clients answered"), "{echo:?}\n{}", server.log());
}

/// `networking.plain_subscribers: refuse`: a plain subscription is refused
/// and logged at warn with its key and topic; Pantry's agents still work.
#[test]
fn plain_subscribers_can_be_refused() {
    let server = Server::start_with_networking(true, "  plain_subscribers: refuse\n", "");
    let (cwd, _) = bootstrap_admin(&server);
    let credentials = PlainCurve::from_credentials(&create_named_client(&server, cwd.path(), "plain-1"));
    let key = credentials.public_key.clone();
    let plain = PlainAgent::start(plain_spec(&server, "plain-1", &["web"], Some(credentials)));
    let mut spec = AgentSpec::new("ours-1", "pantry", "test", &["web"]);
    spec.client_keys_yaml = Some(create_named_client(&server, cwd.path(), "ours-1"));
    let _ours = Agent::start(&server, spec);
    let refused = wait_until(WAIT, || {
        server.log().lines().any(|l| {
            l.contains("WARN") && l.contains("subscription refused") && l.contains(&key) && l.contains("topic: pantry")
        })
    });
    assert!(refused, "{}", server.log());
    assert!(online(&server, cwd.path(), &["ours-1"]), "{}", server.log());
    let echo = run(&server, cwd.path(), &["-a", "pantry", "echo", "exact only"]);
    assert!(echo.stdout.contains("ours-1: exact only"), "{echo:?}");
    assert!(plain.received_of("Echo").is_empty(), "a refused subscriber received {:?}", plain.received_of("Echo"));
}

/// The server's resident memory, from /proc.
fn rss_kib(server: &Server) -> u64 {
    let pid = server.process.pid().expect("server running");
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("/proc status");
    let line = status.lines().find(|l| l.starts_with("VmRSS:")).expect("VmRSS");
    line.split_whitespace().nth(1).and_then(|n| n.parse().ok()).expect("VmRSS in kB")
}

/// Issue 21, item 4: a client key that stops reading its SUB pins a
/// bounded amount of the server's memory; the requests beyond are answered
/// at once with `agent not reading`.
#[test]
fn a_stalled_subscriber_pins_a_bounded_amount_of_memory() {
    use pantry_shared::commands::echo;
    use pantry_shared::filter::Identities;
    use pantry_shared::Message;

    let server = Server::start(true);
    let (cwd, _) = bootstrap_admin(&server);
    let credentials = create_named_client(&server, cwd.path(), "stalled");
    let mut spec = plain_spec(&server, "stalled", &["web"], Some(PlainCurve::from_credentials(&credentials)));
    spec.stall = true;
    let _stalled = PlainAgent::start(spec);
    assert!(online(&server, cwd.path(), &["stalled"]), "{}", server.log());

    let ctx = zmq::Context::new();
    let dealer = curve_dealer(&ctx, &server, &admin_pair(cwd.path()));
    let body = "x".repeat(64 * 1024);
    let sent = 4_000;
    // Recipient lists, `agent not reading` answers, anything else.
    let mut tally = (0, 0, 0);
    let drain = |dealer: &zmq::Socket, tally: &mut (usize, usize, usize)| {
        while let Ok(frames) = dealer.recv_multipart(zmq::DONTWAIT) {
            match Message::from_frames(&frames) {
                Ok(m) if m.is_client_response_list() => tally.0 += 1,
                Ok(m) if m.error().is_some_and(|e| e.starts_with("agent not reading")) => tally.1 += 1,
                _ => tally.2 += 1,
            }
        }
    };
    let before = rss_kib(&server);
    for i in 0..sent {
        let mut request = echo::request(&body);
        request.metadata.uuid = format!("stall-{i}");
        Identities::attach(&mut request, &["stalled".into()]);
        dealer.send_multipart(request.to_frames(), 0).expect("send");
        // At most 64 requests in flight, as a few busy admins would have:
        // what is measured is what the stalled agent pins, not the
        // pipeline's transients.
        let paced = wait_until(Duration::from_secs(10), || {
            drain(&dealer, &mut tally);
            i + 1 - tally.0 <= 64
        });
        assert!(paced, "no recipient list for 10 s after request {i}");
    }
    let done = wait_until(Duration::from_secs(30), || {
        drain(&dealer, &mut tally);
        tally.0 == sent
    });
    assert!(done, "{} recipient lists of {sent}", tally.0);
    // Let what the server queued settle before measuring.
    std::thread::sleep(Duration::from_secs(1));
    drain(&dealer, &mut tally);
    let (_, not_reading, other) = tally;
    let grown_mib = rss_kib(&server).saturating_sub(before) / 1024;
    eprintln!("server grew by {grown_mib} MiB; {not_reading} of {sent} answered `agent not reading`");
    assert!(grown_mib < 64, "the server grew by {grown_mib} MiB for a stalled subscriber");
    assert!(not_reading >= sent - 300, "only {not_reading} answered `agent not reading` ({other} other)");
    let warned = server.log().lines().filter(|l| l.contains("WARN") && l.contains("not reading")).count();
    assert!((1..=2).contains(&warned), "{warned} warn lines for one agent");
}
