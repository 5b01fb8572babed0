//! Authorization and key management end to end (issue 6), under CURVE: a
//! client key cannot speak for another name, nor run admin commands;
//! `client:revoke` cuts a connected agent off at once; `keys:create-admin`
//! adds an admin to a running server that does not trust on first use; a
//! message over `max_message_size` drops only its own connection; and the
//! original `server_keys.yml` format (a plain list of Z85 keys) still loads.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use pantry_integration::curve::{
    admin, admin_pair, bootstrap_admin, create_named_client, curve_dealer, field, full_keys, keys_dir, line_with,
    log_since, pair_of, recv_for, send, server_key_only, wait_for_line, write_key_file, yaml, KEYS,
};
use pantry_integration::{bin, wait_for_status, AdminRun, Agent, AgentSpec, Server};
use pantry_shared::commands::{create_client, echo, register_client, status};
use pantry_shared::filter::ClientFilter;
use pantry_shared::keys::{KeyPair, Role};
use pantry_shared::BodyPart;

const LOG_WAIT: Duration = Duration::from_secs(5);

// ---------------------------------------------------------------------------
// Key files and admin runs (as in curve.rs)
// ---------------------------------------------------------------------------

/// `client:list --json`, parsed.
fn client_list(server: &Server, cwd: &Path) -> Vec<serde_json::Value> {
    let run = admin(server, cwd, 5, &["client:list", "--json"]);
    assert!(run.success(), "client:list --json failed: {run:?}\nserver log:\n{}", server.log());
    let list: serde_json::Value = serde_json::from_str(&run.stdout)
        .unwrap_or_else(|e| panic!("client:list --json is not JSON ({e}): {run:?}\nserver log:\n{}", server.log()));
    list.as_array().cloned().unwrap_or_else(|| panic!("client:list --json is not a list: {}", run.stdout))
}

fn entry<'a>(list: &'a [serde_json::Value], name: &str) -> Option<&'a serde_json::Value> {
    list.iter().find(|k| k["name"] == name)
}

/// `status --json`, parsed (identity → the whole entry).
fn status_json(server: &Server, cwd: &Path) -> Vec<serde_json::Value> {
    let run = admin(server, cwd, 5, &["status", "--json"]);
    assert!(run.success(), "status --json failed: {run:?}\nserver log:\n{}", server.log());
    let list: serde_json::Value = serde_json::from_str(&run.stdout).expect("status --json is JSON");
    list.as_array().cloned().unwrap_or_default()
}

fn identities(status: &[serde_json::Value]) -> Vec<String> {
    let mut ids: Vec<String> = status.iter().filter_map(|c| c["identity"].as_str().map(str::to_owned)).collect();
    ids.sort();
    ids
}

// ---------------------------------------------------------------------------
// Agents
// ---------------------------------------------------------------------------

/// Starts an agent (`app`/`test`/`web`, heartbeat 1 s) with `credentials`
/// as its client_keys.yml.
fn start_agent(server: &Server, identity: &str, credentials: &str) -> Agent {
    let mut spec = AgentSpec::new(identity, "app", "test", &["web"]);
    spec.client_keys_yaml = Some(credentials.to_owned());
    Agent::start(server, spec)
}

/// Waits until `status` lists exactly `ids`.
fn assert_status_is(server: &Server, cwd: &Path, ids: &[&str], agents: &[&Agent]) {
    let listed =
        wait_for_status(server, cwd, &["--curve-key-file", KEYS, "--timeout", "2"], ids, Duration::from_secs(10));
    let logs: Vec<String> = agents.iter().map(|a| format!("--- {}:\n{}", a.spec.identity, a.log())).collect();
    assert!(listed, "status never listed exactly {ids:?}\n{}\nserver log:\n{}", logs.join("\n"), server.log());
}

/// A broadcast `echo TEXT`; returns the run.
fn echo_all(server: &Server, cwd: &Path, text: &str) -> AdminRun {
    admin(server, cwd, 3, &["echo", text])
}

fn answered_by(run: &AdminRun, identity: &str, text: &str) -> bool {
    run.stdout.lines().any(|l| l == format!("{identity}: {text}"))
}

// ---------------------------------------------------------------------------
// Raw CURVE sockets
// ---------------------------------------------------------------------------

/// A client key sends `CreateClient` from a raw DEALER with its own name in
/// `from`: the answer is "not authorized" and the server warns. Returns the
/// warning.
fn assert_raw_create_client_refused(server: &Server, pair: &KeyPair, name: &str) -> String {
    let ctx = zmq::Context::new();
    let dealer = curve_dealer(&ctx, server, pair);
    let mut request = create_client::request(Some("sneaky-raw"), Role::Admin);
    request.metadata.from = name.into();
    send(&dealer, &request);
    let answer = recv_for(&dealer, request.uuid(), LOG_WAIT)
        .unwrap_or_else(|| panic!("no answer to {name}'s CreateClient:\n{}", server.log()));
    assert_eq!(answer.error(), Some("not authorized: CreateClient needs an admin key"), "{answer:?}");
    let line = wait_for_line(
        || server.log(),
        &["WARN", "unauthorized command refused", "CreateClient", name, &pair.public_key, request.uuid()],
        LOG_WAIT,
    );
    line.unwrap_or_else(|| panic!("no warning for {name}'s refused CreateClient:\n{}", server.log()))
}

// ---------------------------------------------------------------------------
// Servers with a config or key store of our own
// ---------------------------------------------------------------------------

/// Stops `server`, lets `edit` change its files (config, key store), and
/// starts it again on the same ports. Nothing has connected before, so the
/// restarted server is as good as a fresh one.
fn restart_after(server: &mut Server, edit: impl FnOnce(&Server)) {
    server.process.terminate();
    edit(server);
    server.restart();
}

/// `trust_first_client: false` under `networking:` in the server's config.
fn no_trust_on_first_use(server: &Server) {
    let path = server.config_path();
    let text = std::fs::read_to_string(&path).expect("server.yml");
    assert!(text.contains("networking:\n"), "no networking section:\n{text}");
    let text = text.replacen("networking:\n", "networking:\n  trust_first_client: false\n", 1);
    std::fs::write(&path, text).expect("write server.yml");
}

fn server_keys_path(server: &Server) -> PathBuf {
    server.root_dir().join("security/curve/server_keys.yml")
}

// ---------------------------------------------------------------------------
// 1. A spoofed `from`
// ---------------------------------------------------------------------------

#[test]
fn spoofed_sender_is_dropped_and_logged_and_the_real_owner_is_unaffected() {
    let server = Server::start(true);
    let (cwd, _) = bootstrap_admin(&server);
    let web = pair_of(&create_named_client(&server, cwd.path(), "web-1"));
    let db_credentials = create_named_client(&server, cwd.path(), "db-1");
    let db = start_agent(&server, "db-1", &db_credentials);
    assert_status_is(&server, cwd.path(), &["db-1"], &[&db]);
    let before = status_json(&server, cwd.path());

    // web-1's key, claiming to be db-1.
    let ctx = zmq::Context::new();
    let dealer = curve_dealer(&ctx, &server, &web);
    let filter = ClientFilter {
        identity: Some("db-1".into()),
        application: Some("evil".into()),
        environment: Some("prod".into()),
        roles: vec!["db".into()],
    };
    let mut register = register_client::request(&filter);
    register.metadata.from = "db-1".into();
    send(&dealer, &register);
    let mut spoofed_echo = echo::request("spoofed");
    spoofed_echo.metadata.from = "db-1".into();
    spoofed_echo.stream = "db-1".into();
    spoofed_echo.metadata.to = "db-1".into();
    send(&dealer, &spoofed_echo);

    let line = wait_for_line(
        || server.log(),
        &["WARN", "spoofed sender", "db-1", "web-1", &web.public_key, register.uuid()],
        LOG_WAIT,
    );
    let line = line.unwrap_or_else(|| panic!("no spoofed-sender warning for the registration:\n{}", server.log()));
    assert!(line.contains("RegisterClient"), "the warning does not name the type: {line}");
    eprintln!("spoofed RegisterClient: {line}");
    // A client key may not send an echo at all, whatever it claims to be:
    // refused and told so, neither forwarded nor published.
    let refused = wait_for_line(
        || server.log(),
        &["WARN", "unauthorized command refused", "Echo", &web.public_key, spoofed_echo.uuid()],
        LOG_WAIT,
    );
    assert!(refused.is_some(), "no refusal logged for the client key's echo:\n{}", server.log());
    let answer = recv_for(&dealer, spoofed_echo.uuid(), Duration::from_millis(2000)).expect("a refusal");
    assert!(answer.error().is_some_and(|e| e.contains("not authorized")), "{answer:?}");
    assert!(!answer.is_client_response_list(), "the echo was forwarded: {answer:?}");
    // An answer claiming to come from db-1 is dropped as spoofed.
    let mut spoofed_answer = echo::request("spoofed answer").response();
    spoofed_answer.metadata.from = "db-1".into();
    send(&dealer, &spoofed_answer);
    let line = wait_for_line(|| server.log(), &["WARN", "spoofed sender", "db-1", spoofed_answer.uuid()], LOG_WAIT);
    assert!(line.is_some(), "no spoofed-sender warning for the answer:\n{}", server.log());
    assert!(!db.log().contains(spoofed_echo.uuid()), "db-1 received the spoofed echo:\n{}", db.log());
    let forwarded = line_with(&server.log(), &["request forwarded", spoofed_echo.uuid()]);
    assert!(forwarded.is_none(), "the spoofed echo was forwarded: {forwarded:?}");

    // The real db-1 is unaffected: same registration, still answers.
    let after = status_json(&server, cwd.path());
    assert_eq!(identities(&after), ["db-1"], "status after the spoof: {after:?}");
    assert_eq!(after[0]["application"], before[0]["application"], "db-1's registration changed: {after:?}");
    assert_eq!(after[0]["application"], "app");
    let run = echo_all(&server, cwd.path(), "still db-1");
    assert!(run.success() && answered_by(&run, "db-1", "still db-1"), "db-1 no longer answers: {run:?}");
    assert!(line_with(&server.log(), &["client registered", "evil"]).is_none(), "{}", server.log());
}

// ---------------------------------------------------------------------------
// 2. Admin-only commands
// ---------------------------------------------------------------------------

#[test]
fn client_key_is_refused_admin_commands_and_an_admin_key_is_allowed() {
    let server = Server::start(true);
    let (cwd, _) = bootstrap_admin(&server);
    let web_credentials = create_named_client(&server, cwd.path(), "web-1");
    let web = pair_of(&web_credentials);
    let agent = start_agent(&server, "web-1", &web_credentials);
    assert_status_is(&server, cwd.path(), &["web-1"], &[&agent]);

    // The server's own check, with an honest `from`: an error answer.
    let line = assert_raw_create_client_refused(&server, &web, "web-1");
    eprintln!("unauthorized (raw DEALER): {line}");

    // The admin tool with the client's key.
    let client_cwd = keys_dir(&server, &web);
    for (args, kind) in [
        (&["client:create", "--name", "sneaky-2"][..], "CreateClient"),
        (&["exec", "--timeout", "2", "--", "echo", "ran-with-a-client-key"][..], "Exec"),
    ] {
        let offset = server.log().len();
        let run = admin(&server, client_cwd.path(), 3, args);
        assert!(!run.success(), "a client key ran {args:?}: {run:?}");
        // The first refusal of a type from a key and address is logged (the
        // raw CreateClient above was); the next ones within the window are
        // counted.
        let refused =
            wait_for_line(|| server.log(), &["WARN", "unauthorized command refused", kind, &web.public_key], LOG_WAIT);
        let spoofed = line_with(&log_since(&server, offset), &["spoofed sender", &web.public_key]);
        assert!(
            run.stderr.contains("not authorized"),
            "stderr of a client key's {args:?} lacks \"not authorized\": {run:?}\nserver warned: {:?}\n\
             server dropped it as spoofed: {spoofed:?}",
            refused
        );
        let refused = refused.unwrap_or_else(|| panic!("no warning for the refused {kind}:\n{}", server.log()));
        eprintln!("unauthorized (pantry-admin {}): {refused}", args[0]);
    }
    assert!(!agent.log().contains("ran-with-a-client-key"), "the agent ran a client key's exec:\n{}", agent.log());
    assert!(line_with(&agent.log(), &["request received", "Exec"]).is_none(), "exec reached the agent");
    let stored = std::fs::read_to_string(server_keys_path(&server)).unwrap();
    assert!(!stored.contains("sneaky"), "a client key created a key:\n{stored}");

    // The admin key may do both.
    let created = admin(&server, cwd.path(), 5, &["client:create", "--name", "web-2"]);
    assert!(created.success(), "admin's client:create failed: {created:?}\n{}", server.log());
    assert_eq!(pair_of(&created.stdout).public_key.len(), 40);
    let run = admin(&server, cwd.path(), 3, &["exec", "--timeout", "3", "--", "echo", "ran-with-an-admin-key"]);
    assert!(run.success(), "admin's exec failed: {run:?}\nagent log:\n{}\nserver log:\n{}", agent.log(), server.log());
    assert!(run.stdout.contains("==> web-1") && run.stdout.contains("ran-with-an-admin-key"), "exec output: {run:?}");
}

// ---------------------------------------------------------------------------
// 3. Revocation
// ---------------------------------------------------------------------------

#[test]
fn revoked_agent_is_cut_off_at_once_and_cannot_reconnect() {
    let server = Server::start(true);
    let (cwd, _) = bootstrap_admin(&server);
    let web_credentials = create_named_client(&server, cwd.path(), "web-1");
    let web_key = pair_of(&web_credentials).public_key;
    let db_credentials = create_named_client(&server, cwd.path(), "db-1");
    let web = start_agent(&server, "web-1", &web_credentials);
    let db = start_agent(&server, "db-1", &db_credentials);
    assert_status_is(&server, cwd.path(), &["db-1", "web-1"], &[&web, &db]);
    let run = echo_all(&server, cwd.path(), "before");
    assert!(answered_by(&run, "web-1", "before") && answered_by(&run, "db-1", "before"), "echo: {run:?}");

    let listed = client_list(&server, cwd.path());
    let entry_web = entry(&listed, "web-1").unwrap_or_else(|| panic!("client:list lacks web-1: {listed:?}"));
    assert_eq!(entry_web["role"], "client", "{entry_web}");
    assert_eq!(entry_web["connected"], true, "{entry_web}");
    assert_eq!(entry_web["public_key"], web_key.as_str(), "{entry_web}");
    assert_eq!(entry(&listed, "admin").map(|k| k["role"].clone()), Some("admin".into()), "{listed:?}");

    let offset = server.log().len();
    let revoke = admin(&server, cwd.path(), 5, &["client:revoke", "web-1"]);
    let revoked_at = Instant::now();
    assert!(revoke.success(), "client:revoke failed: {revoke:?}\n{}", server.log());
    assert!(revoke.stdout.contains("web-1") && revoke.stdout.contains(&web_key), "revoke output: {revoke:?}");
    let web_log_offset = web.log().len();

    // An echo sent within 2 s: web-1 neither receives it nor is waited
    // for; db-1 still answers.
    let sent_after = revoked_at.elapsed();
    assert!(sent_after < Duration::from_secs(2), "the echo was sent {sent_after:?} after the revoke");
    let run = echo_all(&server, cwd.path(), "after");
    std::thread::sleep(Duration::from_millis(300));
    let web_tail = web.log().get(web_log_offset..).unwrap_or_default().to_owned();
    assert!(!web_tail.contains("request received"), "web-1 received a request after the revoke:\n{web_tail}");
    assert!(answered_by(&run, "db-1", "after"), "db-1 did not answer: {run:?}");
    assert!(!run.stdout.contains("web-1") && !run.stderr.contains("web-1"), "web-1 still addressed: {run:?}");
    assert!(run.success(), "echo after the revoke failed: {run:?}\n{}", server.log());

    let revoked_line =
        wait_for_line(|| log_since(&server, offset), &["WARN", "key revoked and cut off", "web-1", &web_key], LOG_WAIT);
    let revoked_line = revoked_line.unwrap_or_else(|| panic!("no revocation logged:\n{}", server.log()));
    let cut_line = wait_for_line(|| log_since(&server, offset), &["cut off a revoked key", &web_key], LOG_WAIT);
    let cut_line = cut_line.unwrap_or_else(|| panic!("no cut-off logged:\n{}", server.log()));
    assert!(!cut_line.contains("connections: 0"), "no connection was shut down: {cut_line}");
    eprintln!("revocation: {revoked_line}\ncut-off: {cut_line}");

    // Its heartbeats (every second) no longer bring it back.
    for _ in 0..3 {
        let ids = identities(&status_json(&server, cwd.path()));
        assert_eq!(ids, ["db-1"], "web-1 is back in status after the revoke\n{}", server.log());
        std::thread::sleep(Duration::from_millis(700));
    }
    let listed = client_list(&server, cwd.path());
    assert!(entry(&listed, "web-1").is_none(), "client:list still shows web-1: {listed:?}");
    assert!(!listed.iter().any(|k| k["public_key"] == web_key.as_str()), "the key is still listed: {listed:?}");
    let stored = std::fs::read_to_string(server_keys_path(&server)).unwrap();
    assert!(!stored.contains(&web_key), "the key is still stored:\n{stored}");

    // It cannot come back.
    let rejected = wait_for_line(|| log_since(&server, offset), &["rejected: unknown client", &web_key], LOG_WAIT);
    assert!(rejected.is_some(), "web-1's reconnect was not rejected:\n{}", log_since(&server, offset));
    eprintln!("reconnect after the revoke: {}", rejected.unwrap_or_default());
    let accepted = line_with(&log_since(&server, offset), &["handshake accepted", &web_key]);
    assert!(accepted.is_none(), "web-1 was let in again: {accepted:?}");
    let run = echo_all(&server, cwd.path(), "later");
    assert!(answered_by(&run, "db-1", "later") && !run.stdout.contains("web-1"), "echo: {run:?}");
}

// ---------------------------------------------------------------------------
// 4. keys:create-admin on a running server without trust on first use
// ---------------------------------------------------------------------------

#[test]
fn keys_create_admin_works_on_a_running_server_without_trust_on_first_use() {
    let mut server = Server::start(true);
    restart_after(&mut server, no_trust_on_first_use);
    let pid = server.process.pid();

    // Even the very first unknown key is rejected.
    let first = tempfile::tempdir().expect("temp dir");
    let first_path = write_key_file(first.path(), KEYS, &server_key_only(&server.public_key()));
    let run = admin(&server, first.path(), 3, &["status"]);
    assert!(!run.success(), "the first unknown key was let in: {run:?}\n{}", server.log());
    assert!(run.stderr.contains("rejected this client's key"), "stderr: {}", run.stderr);
    assert!(wait_for_line(|| server.log(), &["rejected: unknown client"], LOG_WAIT).is_some(), "{}", server.log());
    assert!(!server.log().contains("trusted the first client"), "trusted on first use:\n{}", server.log());
    assert!(!std::fs::read_to_string(&first_path).unwrap().contains("private_key"), "keys saved after a failure");

    let stranger = KeyPair::generate().expect("key pair");
    let stranger_cwd = keys_dir(&server, &stranger);
    let run = admin(&server, stranger_cwd.path(), 3, &["status"]);
    assert!(!run.success(), "an unknown key was let in: {run:?}");
    assert!(
        wait_for_line(|| server.log(), &["rejected: unknown client", &stranger.public_key], LOG_WAIT).is_some(),
        "no rejection logged for {}:\n{}",
        stranger.public_key,
        server.log()
    );

    // keys:create-admin while the server runs.
    let cwd = tempfile::tempdir().expect("temp dir");
    std::fs::create_dir_all(cwd.path().join(".pantry")).unwrap();
    let output = cwd.path().join(".pantry").join(KEYS);
    let created = Command::new(bin("pantry-server"))
        .args(["-c", server.config_path().to_str().unwrap(), "keys:create-admin", "--name", "ops", "--output"])
        .arg(&output)
        .stdin(Stdio::null())
        .output()
        .expect("run pantry-server keys:create-admin");
    let created = AdminRun::from(created);
    assert!(created.success(), "keys:create-admin failed: {created:?}");
    assert!(created.stderr.contains("ops"), "stderr: {}", created.stderr);
    let credentials = std::fs::read_to_string(&output).expect("credentials file");
    assert_eq!(field(&yaml(&credentials), "server_public_key"), server.public_key());
    let ops = pair_of(&credentials);
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(std::fs::metadata(&output).unwrap().permissions().mode() & 0o777, 0o600, "--output file mode");

    let run = admin(&server, cwd.path(), 5, &["status"]);
    assert!(run.success(), "the new admin's status failed: {run:?}\nserver log:\n{}", server.log());
    assert!(server.process.is_running() && server.process.pid() == pid, "the server was restarted");
    let accepted = wait_for_line(|| server.log(), &["handshake accepted", "ops", &ops.public_key], LOG_WAIT);
    assert!(accepted.is_some(), "no accepted handshake for ops:\n{}", server.log());
    // An admin: it may create keys.
    let run = admin(&server, cwd.path(), 5, &["client:create", "--name", "web-1"]);
    assert!(run.success(), "the new admin's client:create failed: {run:?}\nserver log:\n{}", server.log());

    // Still no way in for unknown keys.
    let run = admin(&server, stranger_cwd.path(), 3, &["status"]);
    assert!(!run.success(), "an unknown key was let in after an admin was added: {run:?}");

    let listed = client_list(&server, cwd.path());
    let ops_entry = entry(&listed, "ops").unwrap_or_else(|| panic!("client:list lacks ops: {listed:?}"));
    assert_eq!(ops_entry["role"], "admin", "{ops_entry}");
    assert_eq!(ops_entry["public_key"], ops.public_key.as_str(), "{ops_entry}");
}

// ---------------------------------------------------------------------------
// 5. A message over max_message_size
// ---------------------------------------------------------------------------

#[test]
fn oversized_message_drops_its_connection_and_the_server_keeps_serving() {
    let mut server = Server::start(true);
    let (cwd, admin_key) = bootstrap_admin(&server);
    let other = tempfile::tempdir().expect("temp dir");
    std::fs::create_dir_all(other.path().join(".pantry")).unwrap();
    let other_keys = other.path().join(".pantry").join(KEYS);
    let run = admin(
        &server,
        cwd.path(),
        5,
        &["client:create", "--admin", "--name", "ops-2", "--output", other_keys.to_str().unwrap()],
    );
    assert!(run.success(), "client:create --admin failed: {run:?}");

    let ctx = zmq::Context::new();
    let dealer = curve_dealer(&ctx, &server, &admin_pair(cwd.path()));
    // A small request first, so the server knows whose connection it is.
    let mut hello = status::request(&ClientFilter::default());
    hello.metadata.from = "admin".into();
    send(&dealer, &hello);
    assert!(recv_for(&dealer, hello.uuid(), LOG_WAIT).is_some(), "no status answer:\n{}", server.log());

    let offset = server.log().len();
    let mut big = echo::request("");
    big.metadata.from = "admin".into();
    big.body = vec![BodyPart::Bytes(vec![0xa5; 65 * 1024 * 1024])];
    let started = Instant::now();
    send(&dealer, &big);
    drop(big);
    let closed =
        wait_for_line(|| log_since(&server, offset), &["last connection closed", &admin_key], Duration::from_secs(15));
    eprintln!("65 MiB message: connection closed after {:?}: {closed:?}", started.elapsed());
    assert!(closed.is_some(), "the oversized message's connection was not dropped:\n{}", server.log());
    assert!(
        line_with(&log_since(&server, offset), &["message received", "Echo", &admin_key]).is_none(),
        "the oversized message was delivered:\n{}",
        log_since(&server, offset)
    );
    drop(dealer);

    assert!(server.process.is_running(), "the server died:\n{}", server.log());
    let run = admin(&server, other.path(), 5, &["status"]);
    assert!(run.success(), "another admin's status failed after the big message: {run:?}\n{}", server.log());
    let run = admin(&server, cwd.path(), 5, &["status"]);
    assert!(run.success(), "the sender's own status failed after the big message: {run:?}\n{}", server.log());
    assert!(server.process.is_running(), "the server died:\n{}", server.log());
}

// ---------------------------------------------------------------------------
// 6. The original server_keys.yml format
// ---------------------------------------------------------------------------

#[test]
fn original_format_server_keys_load_and_work() {
    let mut server = Server::start(true);
    let server_pair = KeyPair::generate().expect("key pair");
    let first = KeyPair::generate().expect("key pair");
    let second = KeyPair::generate().expect("key pair");
    restart_after(&mut server, |s| {
        let original = format!(
            "---\npublic_key: '{}'\nprivate_key: '{}'\nclient_keys:\n- '{}'\n- '{}'\n",
            server_pair.public_key, server_pair.private_key, first.public_key, second.public_key
        );
        std::fs::write(server_keys_path(s), original).expect("write server_keys.yml");
    });
    assert_eq!(server.public_key(), server_pair.public_key, "the server did not keep its key pair");
    let loaded = line_with(&server.log(), &["server public key", &server_pair.public_key, "known_clients: 2"]);
    assert!(loaded.is_some(), "the original key store was not loaded with two keys:\n{}", server.log());

    // The first key is the admin.
    let admin_cwd = keys_dir(&server, &first);
    let run = admin(&server, admin_cwd.path(), 5, &["status"]);
    assert!(run.success(), "the first original key's status failed: {run:?}\nserver log:\n{}", server.log());

    // The second is a client named client-2: it may register and answer...
    let credentials = full_keys(&server.public_key(), &second);
    let agent = start_agent(&server, "client-2", &credentials);
    assert_status_is(&server, admin_cwd.path(), &["client-2"], &[&agent]);
    let run = echo_all(&server, admin_cwd.path(), "old keys");
    assert!(run.success() && answered_by(&run, "client-2", "old keys"), "client-2 did not answer: {run:?}");

    // ...but not create keys.
    assert_raw_create_client_refused(&server, &second, "client-2");
    let client_cwd = keys_dir(&server, &second);
    let offset = server.log().len();
    let run = admin(&server, client_cwd.path(), 3, &["client:create", "--name", "sneaky"]);
    assert!(!run.success(), "client-2 created a key: {run:?}");
    // Logged at its first refusal (the raw one above, within the window).
    let refused =
        wait_for_line(|| server.log(), &["unauthorized command refused", "CreateClient", &second.public_key], LOG_WAIT);
    assert!(
        run.stderr.contains("not authorized"),
        "stderr of client-2's client:create lacks \"not authorized\": {run:?}\nserver warned: {refused:?}\n\
         server log since:\n{}",
        log_since(&server, offset)
    );
    assert!(refused.is_some(), "no warning for client-2's client:create:\n{}", server.log());
    let stored = std::fs::read_to_string(server_keys_path(&server)).unwrap();
    assert!(!stored.contains("sneaky"), "client-2 created a key:\n{stored}");

    let listed = client_list(&server, admin_cwd.path());
    let admin_entry = entry(&listed, "admin").unwrap_or_else(|| panic!("no `admin` in client:list: {listed:?}"));
    assert_eq!(admin_entry["role"], "admin");
    assert_eq!(admin_entry["public_key"], first.public_key.as_str());
    let client_entry = entry(&listed, "client-2").unwrap_or_else(|| panic!("no `client-2` in client:list: {listed:?}"));
    assert_eq!(client_entry["role"], "client");
    assert_eq!(client_entry["public_key"], second.public_key.as_str());
}
