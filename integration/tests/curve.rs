//! CURVE security end to end (SPEC §6): encrypted round trips, trust on first
//! use, `client:create`, rejected keys and mechanisms, what the server logs
//! about each handshake, key file permissions, and that private keys never go
//! out over PUB.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::time::{Duration, Instant};

use pantry_integration::curve::{
    bootstrap_admin, create_named_client, decode, field, full_keys, server_key_only, wait_for_line, write_key_file,
    yaml, KEYS,
};
use pantry_integration::{wait_for_status, wait_until, Agent, AgentSpec, Server};
use pantry_shared::keys::KeyPair;

const LOG_WAIT: Duration = Duration::from_secs(5);

fn mode(path: &Path) -> u32 {
    std::fs::metadata(path).unwrap_or_else(|e| panic!("{}: {e}", path.display())).permissions().mode() & 0o777
}

/// `client:create` from an enrolled admin; returns the printed YAML. The
/// server picks the key's name (an agent's identity must match its key's
/// name: use [`create_named_client`] for agents).
fn create_client(server: &Server, cwd: &Path) -> String {
    let run = server.admin_in(cwd, &["--curve-key-file", KEYS, "--timeout", "5", "client:create"]);
    assert!(run.success(), "client:create failed: {run:?}");
    run.stdout
}

fn admin_status(server: &Server, cwd: &Path) -> pantry_integration::AdminRun {
    server.admin_in(cwd, &["--curve-key-file", KEYS, "--timeout", "5", "status"])
}

/// Starts an agent with `keys_yaml` as its client_keys.yml and checks that it
/// shows up in `status` and answers `echo`.
fn assert_agent_answers(server: &Server, cwd: &Path, identity: &str, keys_yaml: String) -> Agent {
    let mut spec = AgentSpec::new(identity, "app", "test", &["web"]);
    spec.client_keys_yaml = Some(keys_yaml);
    let agent = Agent::start(server, spec);
    assert!(
        wait_for_status(
            server,
            cwd,
            &["--curve-key-file", KEYS, "--timeout", "2"],
            &[identity],
            Duration::from_secs(10)
        ),
        "agent {identity} never appeared in status\nagent log:\n{}\nserver log:\n{}",
        agent.log(),
        server.log()
    );
    let run = server.admin_in(cwd, &["--curve-key-file", KEYS, "--timeout", "5", "echo", "hello curve"]);
    assert!(run.success(), "echo failed: {run:?}\nagent log:\n{}", agent.log());
    assert!(run.stdout.lines().any(|l| l == format!("{identity}: hello curve")), "echo output: {run:?}");
    agent
}

#[test]
fn encrypted_round_trip_with_an_agent_enrolled_by_client_create() {
    let server = Server::start(true);
    let (cwd, admin_key) = bootstrap_admin(&server);
    let accepted = wait_for_line(|| server.log(), &["handshake accepted", "CURVE", "127.0.0.1", &admin_key], LOG_WAIT);
    assert!(accepted.is_some(), "no accepted handshake logged for {admin_key}:\n{}", server.log());
    // The ZAP handler's user id tells the server which key sent each message.
    let received = wait_for_line(|| server.log(), &["message received", &format!("key: {admin_key}")], LOG_WAIT);
    assert!(received.is_some(), "messages not attributed to {admin_key}:\n{}", server.log());

    let credentials = create_named_client(&server, cwd.path(), "agent-1");
    let parsed = yaml(&credentials);
    assert_eq!(field(&parsed, "server_public_key"), server.public_key());
    let agent_key = field(&parsed, "public_key");
    let _agent = assert_agent_answers(&server, cwd.path(), "agent-1", credentials);
    assert!(
        wait_for_line(|| server.log(), &["handshake accepted", &agent_key], LOG_WAIT).is_some(),
        "no accepted handshake logged for the agent's key {agent_key}:\n{}",
        server.log()
    );
}

#[test]
fn wrong_server_public_key_on_the_admin_is_reported() {
    let server = Server::start(true);
    let wrong = KeyPair::generate().expect("key pair").public_key;
    assert_ne!(wrong, server.public_key());
    let cwd = tempfile::tempdir().expect("temp dir");
    write_key_file(cwd.path(), KEYS, &server_key_only(&wrong));
    let started = Instant::now();
    let run = server.admin_in(cwd.path(), &["--curve-key-file", KEYS, "--timeout", "3", "status"]);
    assert!(started.elapsed() < Duration::from_secs(10), "admin took {:?}", started.elapsed());
    assert!(!run.success(), "admin with a wrong server key succeeded: {run:?}");
    assert!(run.stderr.contains("no CURVE handshake completed"), "stderr: {}", run.stderr);
    assert!(run.stderr.contains("likely cause"), "stderr: {}", run.stderr);
    assert!(run.stderr.contains(&format!("tcp://127.0.0.1:{}", server.ports.receive)), "stderr: {}", run.stderr);
    // Give a late log line a chance to appear before checking there is none.
    std::thread::sleep(Duration::from_millis(300));
    let log = server.log();
    assert!(!log.contains("handshake accepted"), "server accepted a handshake:\n{log}");
    assert!(!log.contains("trusted the first client"), "server trusted a client:\n{log}");
}

#[test]
fn unknown_client_key_is_rejected_and_logged() {
    let server = Server::start(true);
    let (_enrolled, _) = bootstrap_admin(&server);
    let stranger = KeyPair::generate().expect("key pair");
    let cwd = tempfile::tempdir().expect("temp dir");
    write_key_file(cwd.path(), KEYS, &full_keys(&server.public_key(), &stranger));
    let run = server.admin_in(cwd.path(), &["--curve-key-file", KEYS, "--timeout", "3", "status"]);
    assert!(!run.success(), "unknown client was let in: {run:?}");
    assert!(run.stderr.contains("rejected this client's key"), "stderr: {}", run.stderr);
    assert!(run.stderr.contains("unknown client"), "stderr: {}", run.stderr);
    assert!(run.stderr.contains(&stranger.public_key), "stderr lacks the key {}: {}", stranger.public_key, run.stderr);
    let line =
        wait_for_line(|| server.log(), &["rejected: unknown client", &stranger.public_key, "127.0.0.1"], LOG_WAIT);
    assert!(line.is_some(), "no rejection logged for {}:\n{}", stranger.public_key, server.log());
    assert!(line.unwrap().contains("DEBG"), "rejections are logged at debug");
}

#[test]
fn null_mechanism_client_is_rejected_and_server_keeps_serving() {
    let server = Server::start(true);
    let (cwd, _) = bootstrap_admin(&server);
    let ctx = zmq::Context::new();
    let dealer = ctx.socket(zmq::DEALER).expect("dealer");
    dealer.set_linger(0).expect("linger");
    dealer.connect(&format!("tcp://127.0.0.1:{}", server.ports.receive)).expect("connect");
    dealer.send_multipart([b"".to_vec(), b"{}".to_vec()], zmq::DONTWAIT).expect("queue a message");
    // Whichever side reads the other's greeting first ends the handshake:
    // the server logs a mechanism mismatch, or that the peer hung up.
    let line = wait_for_line(|| server.log(), &["handshake rejected"], LOG_WAIT);
    let line = line.unwrap_or_else(|| panic!("no rejected handshake logged:\n{}", server.log()));
    assert!(
        line.contains("mechanism mismatch") || line.contains("may not speak CURVE"),
        "unexpected rejection line: {line}"
    );
    // The NULL client never gets an answer.
    let mut items = [dealer.as_poll_item(zmq::POLLIN)];
    zmq::poll(&mut items, 200).expect("poll");
    assert!(!items[0].is_readable(), "the NULL client received something");
    drop(dealer);
    let run = admin_status(&server, cwd.path());
    assert!(run.success(), "enrolled admin's status failed after the NULL client: {run:?}\n{}", server.log());
}

#[test]
fn first_client_is_trusted_then_others_are_rejected() {
    let server = Server::start(true);
    let cwd = tempfile::tempdir().expect("temp dir");
    let path = write_key_file(cwd.path(), KEYS, &server_key_only(&server.public_key()));
    let run = server.admin_in(cwd.path(), &["--curve-key-file", KEYS, "--timeout", "5", "status"]);
    assert!(run.success(), "first admin failed: {run:?}\n{}", server.log());
    let keys = yaml(&std::fs::read_to_string(&path).expect("keys file"));
    assert_eq!(field(&keys, "server_public_key"), server.public_key());
    let public = field(&keys, "public_key");
    let private = field(&keys, "private_key");
    assert_eq!((public.len(), private.len()), (40, 40));
    assert_eq!(mode(&path), 0o600, "admin keys file mode");
    let trusted = wait_for_line(|| server.log(), &["trusted the first client on first use", &public], LOG_WAIT);
    assert!(trusted.is_some(), "no trust-on-first-use line for {public}:\n{}", server.log());
    let stored = std::fs::read_to_string(server.root_dir().join("security/curve/server_keys.yml")).unwrap();
    assert!(stored.contains(&public), "first client's key not stored:\n{stored}");

    // The saved keys are known from now on.
    assert!(admin_status(&server, cwd.path()).success(), "second run with the saved keys failed");

    let second = tempfile::tempdir().expect("temp dir");
    let second_path = write_key_file(second.path(), KEYS, &server_key_only(&server.public_key()));
    let run = server.admin_in(second.path(), &["--curve-key-file", KEYS, "--timeout", "3", "status"]);
    assert!(!run.success(), "second bootstrap admin was let in: {run:?}");
    assert!(run.stderr.contains("rejected this client's key"), "stderr: {}", run.stderr);
    let untouched = yaml(&std::fs::read_to_string(&second_path).unwrap());
    assert!(untouched.get("private_key").is_none(), "keys written back after a failed command: {untouched:?}");
}

#[test]
fn client_create_output_file_and_stdout() {
    let server = Server::start(true);
    let (cwd, _) = bootstrap_admin(&server);
    let out_dir = tempfile::tempdir().expect("temp dir");
    let out = out_dir.path().join("new_client_keys.yml");
    let run = server.admin_in(
        cwd.path(),
        &[
            "--curve-key-file",
            KEYS,
            "--timeout",
            "5",
            "client:create",
            "--name",
            "agent-file",
            "--output",
            out.to_str().unwrap(),
        ],
    );
    assert!(run.success(), "client:create --output failed: {run:?}");
    assert_eq!(mode(&out), 0o600, "--output file mode");
    let text = std::fs::read_to_string(&out).unwrap();
    let parsed = yaml(&text);
    assert_eq!(field(&parsed, "server_public_key"), server.public_key());
    assert!(!run.stdout.contains(&field(&parsed, "private_key")), "private key printed despite --output");
    let _agent = assert_agent_answers(&server, cwd.path(), "agent-file", text);

    let printed = create_client(&server, cwd.path());
    let parsed = yaml(&printed);
    assert_eq!(field(&parsed, "server_public_key"), server.public_key());
    assert_eq!(field(&parsed, "public_key").len(), 40);
    assert_eq!(field(&parsed, "private_key").len(), 40);
}

#[test]
fn restart_keeps_keys_and_permissions() {
    let mut server = Server::start(true);
    let (cwd, _) = bootstrap_admin(&server);
    create_client(&server, cwd.path());
    let keys_path = server.root_dir().join("security/curve/server_keys.yml");
    let before = yaml(&std::fs::read_to_string(&keys_path).unwrap());
    assert_eq!(before["client_keys"].as_sequence().map(Vec::len), Some(2), "{before:?}");
    server.restart();
    let after = yaml(&std::fs::read_to_string(&keys_path).unwrap());
    assert_eq!(before, after, "server_keys.yml changed across a restart");
    assert_eq!(mode(&server.root_dir().join("security/curve")), 0o700, "security/curve mode");
    assert_eq!(mode(&keys_path), 0o600, "server_keys.yml mode");
    let run = admin_status(&server, cwd.path());
    assert!(run.success(), "enrolled admin failed after restart: {run:?}\n{}", server.log());
}

/// A CURVE SUB socket subscribed to everything, with enrolled keys.
fn curve_subscriber(ctx: &zmq::Context, server: &Server, keys: &serde_yaml::Value) -> zmq::Socket {
    let sub = ctx.socket(zmq::SUB).expect("sub");
    sub.set_linger(0).unwrap();
    sub.set_curve_serverkey(&decode(&field(keys, "server_public_key"))).unwrap();
    sub.set_curve_publickey(&decode(&field(keys, "public_key"))).unwrap();
    sub.set_curve_secretkey(&decode(&field(keys, "private_key"))).unwrap();
    sub.set_subscribe(b"").unwrap();
    sub.connect(&format!("tcp://127.0.0.1:{}", server.ports.pub_sub)).unwrap();
    sub
}

/// Every frame `sub` receives within `window`.
fn drain(sub: &zmq::Socket, window: Duration) -> Vec<Vec<u8>> {
    let end = Instant::now() + window;
    let mut frames = Vec::new();
    loop {
        let left = end.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return frames;
        }
        let mut items = [sub.as_poll_item(zmq::POLLIN)];
        zmq::poll(&mut items, left.as_millis().max(1) as i64).expect("poll");
        while let Ok(message) = sub.recv_multipart(zmq::DONTWAIT) {
            frames.extend(message);
        }
    }
}

#[test]
fn created_private_keys_never_go_out_over_pub() {
    let server = Server::start(true);
    let (cwd, _) = bootstrap_admin(&server);
    let sub_keys = yaml(&create_client(&server, cwd.path()));
    let ctx = zmq::Context::new();
    let sub = curve_subscriber(&ctx, &server, &sub_keys);

    // Prove the subscriber is connected: a broadcast echo reaches it.
    let mut seen = Vec::new();
    let connected = wait_until(Duration::from_secs(8), || {
        server.admin_in(cwd.path(), &["--curve-key-file", KEYS, "--timeout", "2", "echo", "ping"]);
        seen = drain(&sub, Duration::from_millis(300));
        seen.iter().any(|f| f.windows(4).any(|w| w == b"ping"))
    });
    assert!(connected, "the CURVE SUB never received the broadcast echo\n{}", server.log());

    let mut private_keys = Vec::new();
    for _ in 0..3 {
        let created = yaml(&create_client(&server, cwd.path()));
        private_keys.push(field(&created, "private_key"));
    }
    let frames = drain(&sub, Duration::from_secs(1));
    for key in &private_keys {
        let binary = decode(key);
        for frame in &frames {
            assert!(!frame.windows(key.len()).any(|w| w == key.as_bytes()), "private key {key} went out over PUB");
            assert!(!frame.windows(binary.len()).any(|w| w == binary), "private key {key} (binary) went out over PUB");
        }
    }
}

#[test]
fn agent_with_wrong_server_key_warns_and_keeps_running() {
    let server = Server::start(true);
    let wrong = KeyPair::generate().expect("key pair").public_key;
    let mut spec = AgentSpec::new("lost-agent", "app", "test", &[]);
    spec.client_keys_yaml = Some(server_key_only(&wrong));
    let mut agent = Agent::start(&server, spec);
    let line = wait_for_line(|| agent.log(), &["WARN", "no CURVE handshake completed", "likely cause"], LOG_WAIT);
    assert!(line.is_some(), "no warning about the handshake:\n{}", agent.log());
    std::thread::sleep(Duration::from_secs(2));
    assert!(agent.process.is_running(), "agent exited:\n{}", agent.log());
    assert!(!server.log().contains("handshake accepted"), "server accepted a handshake:\n{}", server.log());
}
