//! Enrollment and identity as operators use them (issue 11), with the real
//! binaries under CURVE: unnamed keys that bind on first use, original key
//! stores, host names with dots, refusals the agent hears, tokens, and the
//! pending list.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::time::{Duration, Instant};

use pantry_integration::curve::{
    admin, bootstrap_admin, create_named_client, curve_dealer, curve_socket, field, full_keys, line_with, pair_of,
    recv_for, send, server_key_only, wait_for_line, write_key_file, yaml, KEYS,
};
use pantry_integration::{wait_for_status, wait_until, Agent, AgentSpec, Server};
use pantry_shared::commands::{echo, register_client};
use pantry_shared::filter::ClientFilter;
use pantry_shared::keys::KeyPair;
use pantry_shared::Message;

const WAIT: Duration = Duration::from_secs(5);

fn spec(identity: &str, keys: Option<String>) -> AgentSpec {
    let mut spec = AgentSpec::new(identity, "app", "test", &["web"]);
    spec.client_keys_yaml = keys;
    spec
}

fn listed(server: &Server, cwd: &Path, ids: &[&str], within: Duration) -> bool {
    wait_for_status(server, cwd, &["--curve-key-file", KEYS, "--timeout", "2"], ids, within)
}

fn answers(server: &Server, cwd: &Path, identity: &str) -> bool {
    let run = admin(server, cwd, 5, &["-i", identity, "echo", "hello"]);
    run.success() && run.stdout.contains(&format!("{identity}: hello"))
}

fn mode(path: &Path) -> u32 {
    std::fs::metadata(path).unwrap().permissions().mode() & 0o777
}

fn client_list(server: &Server, cwd: &Path) -> Vec<serde_json::Value> {
    let run = admin(server, cwd, 5, &["client:list", "--json"]);
    assert!(run.success(), "{run:?}");
    serde_json::from_str::<serde_json::Value>(&run.stdout).unwrap().as_array().cloned().unwrap()
}

// ---------------------------------------------------------------------------
// Keys without a name
// ---------------------------------------------------------------------------

#[test]
fn an_unnamed_key_binds_on_first_registration_and_refuses_a_second_identity() {
    let server = Server::start(true);
    let (cwd, _) = bootstrap_admin(&server);
    let run = admin(&server, cwd.path(), 5, &["client:create"]);
    assert!(run.success(), "{run:?}");
    assert!(yaml(&run.stdout).get("name").is_none(), "an unnamed key's credentials name someone: {}", run.stdout);
    let pair = pair_of(&run.stdout);
    let table = admin(&server, cwd.path(), 5, &["client:list"]);
    assert!(table.stdout.contains("(unbound)"), "{table:?}");

    let _agent = Agent::start(&server, spec("web-7", Some(run.stdout.clone())));
    assert!(listed(&server, cwd.path(), &["web-7"], Duration::from_secs(10)), "{}", server.log());
    let bound = line_with(&server.log(), &["INFO", "key bound to the identity of its first registration", "web-7"]);
    let bound = bound.unwrap_or_else(|| panic!("no binding logged:\n{}", server.log()));
    assert!(bound.contains(&pair.public_key) && bound.contains("127.0.0.1"), "{bound}");
    let stored = std::fs::read_to_string(server.root_dir().join("security/curve/server_keys.yml")).unwrap();
    assert!(stored.contains("name: web-7"), "the binding is not in the key store:\n{stored}");
    assert!(client_list(&server, cwd.path()).iter().any(|k| k["name"] == "web-7"));

    // The key now speaks for web-7 only.
    let ctx = zmq::Context::new();
    let dealer = curve_dealer(&ctx, &server, &pair);
    let mut other = register_client::request(&ClientFilter { identity: Some("web-8".into()), ..Default::default() });
    other.metadata.requires_response = true;
    send(&dealer, &other);
    let spoofed = wait_for_line(|| server.log(), &["WARN", "spoofed sender", "web-8", &pair.public_key], WAIT);
    assert!(spoofed.is_some(), "{}", server.log());
    assert!(listed(&server, cwd.path(), &["web-7"], WAIT), "web-8 appeared");
    assert!(answers(&server, cwd.path(), "web-7"));
}

#[test]
fn an_original_format_store_keeps_its_fleet() {
    let server = Server::start(true);
    let server_key = server.public_key();
    let (admin_pair, old1, old2) =
        (KeyPair::generate().unwrap(), KeyPair::generate().unwrap(), KeyPair::generate().unwrap());
    let mut server = server;
    server.process.terminate();
    let path = server.root_dir().join("security/curve/server_keys.yml");
    let text = std::fs::read_to_string(&path).unwrap();
    let head = yaml(&text);
    std::fs::write(
        &path,
        format!(
            "---\npublic_key: '{}'\nprivate_key: '{}'\nclient_keys:\n- '{}'\n- '{}'\n- '{}'\n",
            field(&head, "public_key"),
            field(&head, "private_key"),
            admin_pair.public_key,
            old1.public_key,
            old2.public_key
        ),
    )
    .unwrap();
    server.restart();
    let cwd = tempfile::tempdir().unwrap();
    write_key_file(cwd.path(), KEYS, &full_keys(&server_key, &admin_pair));
    let _a = Agent::start(&server, spec("old-1.example.com", Some(full_keys(&server_key, &old1))));
    let _b = Agent::start(&server, spec("old-2", Some(full_keys(&server_key, &old2))));
    assert!(listed(&server, cwd.path(), &["old-1.example.com", "old-2"], Duration::from_secs(10)), "{}", server.log());
    let run = admin(&server, cwd.path(), 5, &["echo", "still here"]);
    assert!(run.success(), "{run:?}");
    for id in ["old-1.example.com", "old-2"] {
        assert!(run.stdout.contains(&format!("{id}: still here")), "{run:?}");
    }
}

#[test]
fn a_host_name_with_dots_is_an_identity() {
    let server = Server::start(true);
    let (cwd, _) = bootstrap_admin(&server);
    let credentials = create_named_client(&server, cwd.path(), "web1.example.com");
    assert_eq!(field(&yaml(&credentials), "name"), "web1.example.com");
    // No identity in client.yml: the agent takes its credentials' name.
    let mut s = spec("ignored", Some(credentials));
    s.identity_in_config = false;
    let agent = Agent::start(&server, s);
    assert!(listed(&server, cwd.path(), &["web1.example.com"], Duration::from_secs(10)), "{}", agent.log());
    assert!(answers(&server, cwd.path(), "web1.example.com"));
    let run = admin(&server, cwd.path(), 5, &["-a", "app", "-e", "test", "exec", "--", "echo", "fqdn"]);
    assert!(run.success() && run.stdout.contains("==> web1.example.com"), "{run:?}");
}

#[test]
fn credentials_and_client_yml_that_disagree_stop_the_agent() {
    let server = Server::start(true);
    let (cwd, _) = bootstrap_admin(&server);
    let credentials = create_named_client(&server, cwd.path(), "web-5");
    let prepared = Agent::prepare(&server, spec("web-6", Some(credentials)));
    let run = prepared.run(&[]);
    assert_eq!(run.code, Some(1), "{run:?}");
    assert!(run.stderr.contains("web-5") && run.stderr.contains("web-6"), "{run:?}");
}

// ---------------------------------------------------------------------------
// Refusals the agent hears
// ---------------------------------------------------------------------------

#[test]
fn a_refused_registration_is_logged_by_the_agent_and_recovers_once_fixed() {
    let server = Server::start(true);
    let (cwd, _) = bootstrap_admin(&server);
    let first = create_named_client(&server, cwd.path(), "web-1");
    let _owner = Agent::start(&server, spec("web-1", Some(first)));
    assert!(listed(&server, cwd.path(), &["web-1"], Duration::from_secs(10)));
    // A second machine claims web-1 with a key of its own.
    let run = admin(&server, cwd.path(), 5, &["client:create"]);
    let started = Instant::now();
    let second = Agent::start(&server, spec("web-1", Some(run.stdout)));
    let line = wait_for_line(|| second.log(), &["WARN", "refused this client's registration", "web-1"], WAIT)
        .unwrap_or_else(|| panic!("the agent did not say why:\n{}", second.log()));
    eprintln!("agent heard after {:?}: {line}", started.elapsed());
    assert!(started.elapsed() < Duration::from_secs(3), "heard after {:?}", started.elapsed());
    assert!(line.contains("already taken"), "{line}");
    let server_line = line_with(&server.log(), &["registration refused", "web-1", "address"]);
    assert!(server_line.is_some_and(|l| !l.contains("DEBG")), "{}", server.log());
    // The operator revokes the old key: the second agent gets in by itself.
    let revoke = admin(&server, cwd.path(), 5, &["client:revoke", "web-1"]);
    assert!(revoke.success(), "{revoke:?}");
    let ok =
        wait_until(Duration::from_secs(20), || line_with(&second.log(), &["registered with the server"]).is_some());
    assert!(ok, "the second agent never registered:\n{}\nserver:\n{}", second.log(), server.log());
    assert!(listed(&server, cwd.path(), &["web-1"], WAIT));
    assert!(answers(&server, cwd.path(), "web-1"));
}

// ---------------------------------------------------------------------------
// Answers the admin understands
// ---------------------------------------------------------------------------

#[test]
fn nothing_matched_exits_2() {
    let server = Server::start(true);
    let (cwd, _) = bootstrap_admin(&server);
    for args in [&["-a", "nothing", "echo", "hi"][..], &["-i", "nobody-*", "exec", "--", "true"]] {
        let run = admin(&server, cwd.path(), 3, args);
        assert_eq!(run.code, Some(2), "{args:?}: {run:?}");
        assert!(run.stderr.contains("no clients match"), "{run:?}");
    }
}

#[test]
fn an_agent_that_does_not_know_exec_is_reported_as_such() {
    let server = Server::start(true);
    let (cwd, _) = bootstrap_admin(&server);
    let old = pair_of(&create_named_client(&server, cwd.path(), "old-1"));
    // An agent of another make: it answers every request without a result.
    let ctx = zmq::Context::new();
    let sub = curve_socket(&ctx, &server, &old, zmq::SUB, server.ports.pub_sub);
    sub.set_subscribe(b"old-1").unwrap();
    let dealer = curve_dealer(&ctx, &server, &old);
    let mut registration =
        register_client::request(&ClientFilter { identity: Some("old-1".into()), ..Default::default() });
    registration.metadata.requires_response = true;
    send(&dealer, &registration);
    assert!(recv_for(&dealer, registration.uuid(), WAIT).is_some_and(|a| a.error().is_none()));
    assert!(listed(&server, cwd.path(), &["old-1"], Duration::from_secs(10)), "{}", server.log());
    let answering = std::thread::spawn(move || {
        let end = Instant::now() + Duration::from_secs(10);
        while Instant::now() < end {
            if sub.poll(zmq::POLLIN, 100).unwrap_or(0) > 0 {
                let frames = sub.recv_multipart(0).unwrap();
                let request = Message::from_frames(&frames).unwrap();
                let mut answer = request.response();
                answer.metadata.from = "old-1".into();
                dealer.send_multipart(answer.to_frames(), 0).unwrap();
                return;
            }
        }
    });
    let run = admin(&server, cwd.path(), 5, &["-i", "old-1", "exec", "--", "true"]);
    answering.join().unwrap();
    assert_eq!(run.code, Some(1), "{run:?}");
    assert!(run.stderr.contains("old-1: does not support the command type Exec"), "{run:?}");

    // The list of who will answer comes from the server: `from` is "".
    let admin_dealer = curve_dealer(&ctx, &server, &pantry_integration::curve::admin_pair(cwd.path()));
    let mut request = echo::request("x");
    request.stream = "old-1".into();
    send(&admin_dealer, &request);
    let list = recv_for(&admin_dealer, request.uuid(), WAIT).expect("client list");
    assert!(list.is_client_response_list() && list.metadata.from.is_empty(), "{list:?}");
}

// ---------------------------------------------------------------------------
// Tokens
// ---------------------------------------------------------------------------

fn token(server: &Server, cwd: &Path, args: &[&str]) -> String {
    let mut all = vec!["client:token"];
    all.extend_from_slice(args);
    let run = admin(server, cwd, 5, &all);
    assert!(run.success(), "{run:?}");
    let lines: Vec<&str> = run.stdout.lines().collect();
    assert_eq!(lines.len(), 1, "client:token prints one line: {run:?}");
    assert_eq!(lines[0].len(), 64, "a 256-bit token: {run:?}");
    lines[0].to_owned()
}

#[test]
fn enrolling_with_a_token_keeps_the_private_key_on_the_agent() {
    let server = Server::start(true);
    let (cwd, _) = bootstrap_admin(&server);
    let server_key = server.public_key();
    let t = token(&server, cwd.path(), &["--uses", "2"]);

    let first = Agent::prepare(&server, spec("web-1", None));
    let run = first.run(&["enroll", "--token", &t, "--server-public-key", &server_key]);
    assert_eq!(run.code, Some(0), "{run:?}\nserver:\n{}", server.log());
    let keys_path = first.keys_path();
    assert_eq!(mode(&keys_path), 0o600);
    assert_eq!(mode(keys_path.parent().unwrap()), 0o700);
    let written = yaml(&std::fs::read_to_string(&keys_path).unwrap());
    assert_eq!(field(&written, "name"), "web-1");
    assert_eq!(field(&written, "server_public_key"), server_key);
    let private = field(&written, "private_key");

    // The second use, with the server key from client.yml this time.
    let mut s = spec("web-2", None);
    s.networking_extra = format!("  server_public_key: '{server_key}'\n");
    let second = Agent::prepare(&server, s);
    let run = second.run(&["enroll", "--token", &t]);
    assert_eq!(run.code, Some(0), "{run:?}");
    // Used up: a third agent is refused and nothing is stored.
    let third = Agent::prepare(&server, spec("web-3", None));
    let run = third.run(&["enroll", "--token", &t, "--server-public-key", &server_key]);
    assert_eq!(run.code, Some(1), "{run:?}");
    assert!(run.stderr.contains("used up"), "{run:?}");
    assert!(!third.keys_path().exists(), "keys written after a refusal");

    let agent = first.start();
    assert!(listed(&server, cwd.path(), &["web-1"], Duration::from_secs(10)), "{}", agent.log());
    assert!(answers(&server, cwd.path(), "web-1"));

    // The private key is in no file of the server's and not in its log.
    let mut leaks = Vec::new();
    for entry in walk(&server.dir.path().to_path_buf()) {
        let bytes = std::fs::read(&entry).unwrap_or_default();
        if bytes.windows(private.len()).any(|w| w == private.as_bytes()) {
            leaks.push(entry);
        }
    }
    assert!(leaks.is_empty(), "the agent's private key is in {leaks:?}");
    assert!(!server.log().contains(&private), "the private key is in the server log");
    assert!(!server.log().contains(&t), "the token is in the server log");
}

fn walk(dir: &std::path::PathBuf) -> Vec<std::path::PathBuf> {
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let path = entry.path();
        if path.is_dir() {
            files.extend(walk(&path));
        } else {
            files.push(path);
        }
    }
    files
}

#[test]
fn expired_and_named_tokens() {
    let server = Server::start(true);
    let (cwd, _) = bootstrap_admin(&server);
    let server_key = server.public_key();
    let short = token(&server, cwd.path(), &["--ttl", "1s"]);
    std::thread::sleep(Duration::from_millis(2100));
    let late = Agent::prepare(&server, spec("web-1", None));
    let run = late.run(&["enroll", "--token", &short, "--server-public-key", &server_key]);
    assert_eq!(run.code, Some(1), "{run:?}");
    assert!(run.stderr.contains("expired"), "{run:?}");
    assert!(!late.keys_path().exists());

    let named = token(&server, cwd.path(), &["--name", "db-4"]);
    // client.yml sets another identity: refused, both names said.
    let conflicting = Agent::prepare(&server, spec("web-9", None));
    let run = conflicting.run(&["enroll", "--token", &named, "--server-public-key", &server_key]);
    assert_eq!(run.code, Some(1), "{run:?}");
    assert!(run.stderr.contains("db-4") && run.stderr.contains("web-9"), "{run:?}");
    // On its default identity, the agent takes the token's name.
    let mut s = spec("unused", None);
    s.identity_in_config = false;
    let fitting = Agent::prepare(&server, s);
    let run = fitting.run(&["enroll", "--token", &named, "--server-public-key", &server_key]);
    assert_eq!(run.code, Some(0), "{run:?}");
    assert!(run.stdout.contains("db-4"), "{run:?}");
    let agent = fitting.start();
    assert!(listed(&server, cwd.path(), &["db-4"], Duration::from_secs(10)), "{}", agent.log());
}

// ---------------------------------------------------------------------------
// Pending keys
// ---------------------------------------------------------------------------

#[test]
fn an_agent_with_only_the_servers_key_is_accepted_without_a_restart() {
    let mut server = Server::start(true);
    let (cwd, _) = bootstrap_admin(&server);
    let agent = Agent::start(&server, spec("web-3", Some(server_key_only(&server.public_key()))));
    let waiting = wait_for_line(|| agent.log(), &["WARN", "waits to be accepted", "web-3"], Duration::from_secs(10))
        .unwrap_or_else(|| panic!("the agent does not say it waits:\n{}", agent.log()));
    let keys = yaml(&std::fs::read_to_string(agent.dir.path().join("root/security/curve/client_keys.yml")).unwrap());
    let public = field(&keys, "public_key");
    assert!(waiting.contains(&public), "{waiting}");

    let run = admin(&server, cwd.path(), 5, &["client:pending", "--json"]);
    assert!(run.success(), "{run:?}");
    let pending: serde_json::Value = serde_json::from_str(&run.stdout).unwrap();
    let entry = pending.as_array().unwrap().iter().find(|k| k["public_key"] == public.as_str()).cloned();
    let entry = entry.unwrap_or_else(|| panic!("not pending: {pending}"));
    assert_eq!(entry["identity"], "web-3", "{entry}");
    assert!(entry["attempts"].as_u64().unwrap() >= 1);

    // Another unknown key stays pending across a restart.
    let stranger = KeyPair::generate().unwrap();
    let other = tempfile::tempdir().unwrap();
    write_key_file(other.path(), KEYS, &full_keys(&server.public_key(), &stranger));
    let refused = admin(&server, other.path(), 3, &["status"]);
    assert!(!refused.success() && refused.stderr.contains("unknown client"), "{refused:?}");

    let accepted = admin(&server, cwd.path(), 5, &["client:accept", "web-3"]);
    assert!(accepted.success(), "{accepted:?}\n{}", server.log());
    let ok = wait_until(Duration::from_secs(20), || answers(&server, cwd.path(), "web-3"));
    assert!(ok, "web-3 never answered after client:accept:\n{}\nserver:\n{}", agent.log(), server.log());
    assert!(agent.process.pid().is_some());

    server.restart();
    let run = admin(&server, cwd.path(), 5, &["client:pending"]);
    assert!(run.stdout.contains(&stranger.public_key), "the pending list did not survive: {run:?}");
    assert!(!run.stdout.contains(&public), "an accepted key is still pending: {run:?}");
    let rejected = admin(&server, cwd.path(), 5, &["client:reject", &stranger.public_key]);
    assert!(rejected.success(), "{rejected:?}");
    let run = admin(&server, cwd.path(), 5, &["client:pending"]);
    assert!(run.stdout.contains("no pending keys"), "{run:?}");
}
