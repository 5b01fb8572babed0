//! End-to-end tests of Pantry without security (`security` null): the real
//! `pantry-server`, `pantry-client` and `pantry-admin` binaries on loopback.
//!
//! They cover targeting (status and echo filtered by application,
//! environment and roles, and what each agent receives), an agent that dies,
//! a server restart, garbage on the server's ROUTER socket, bad
//! configuration files, SIGTERM, an unreachable server and an empty registry.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use pantry_integration::{bin, wait_for_status, wait_until, AdminRun, Agent, AgentSpec, Ports, Server};

/// Seconds every admin run may wait for the server and the clients.
const ADMIN_TIMEOUT: &str = "5";

/// Runs `pantry-admin` against `server` with `--timeout` set, and global
/// options before the command.
fn admin(server: &Server, args: &[&str]) -> AdminRun {
    let mut all = vec!["--timeout", ADMIN_TIMEOUT];
    all.extend_from_slice(args);
    server.admin(&all)
}

/// Like [`admin`], and the run must succeed.
fn admin_ok(server: &Server, args: &[&str]) -> AdminRun {
    let run = admin(server, args);
    assert!(run.success(), "pantry-admin {args:?} failed: {run:#?}\nserver log:\n{}", server.log());
    run
}

/// The identities in `status --json` output (sorted).
fn status_identities(run: &AdminRun) -> Vec<String> {
    let list: serde_json::Value = serde_json::from_str(&run.stdout)
        .unwrap_or_else(|e| panic!("status --json is not JSON ({e}): {:?}", run.stdout));
    let array = list.as_array().unwrap_or_else(|| panic!("status --json is not an array: {list}"));
    let mut ids: Vec<String> = array
        .iter()
        .map(|c| c["identity"].as_str().unwrap_or_else(|| panic!("entry without identity: {c}")).to_owned())
        .collect();
    ids.sort();
    ids
}

/// `status --json` with the given global options; the identities it lists.
fn status_with(server: &Server, filter: &[&str]) -> Vec<String> {
    let mut args = filter.to_vec();
    args.extend(["status", "--json"]);
    status_identities(&admin_ok(server, &args))
}

/// Output lines of a run, trimmed.
fn lines(text: &str) -> Vec<&str> {
    text.lines().map(str::trim).filter(|l| !l.is_empty()).collect()
}

/// Runs a command with captured output; the process must exit by itself
/// within `limit` (else it is killed and `timed_out` is true).
struct Bounded {
    code: Option<i32>,
    stdout: String,
    stderr: String,
    timed_out: bool,
    elapsed: Duration,
}

fn run_bounded(command: &mut Command, limit: Duration) -> Bounded {
    let start = Instant::now();
    let mut child =
        command.stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().expect("spawn the command");
    let exited = wait_until(limit, || matches!(child.try_wait(), Ok(Some(_))));
    if !exited {
        let _ = child.kill();
    }
    let elapsed = start.elapsed();
    let output = child.wait_with_output().expect("collect the output");
    Bounded {
        code: output.status.code(),
        stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
        timed_out: !exited,
        elapsed,
    }
}

/// The `to` field of every "request received" line in an agent's log.
fn received_streams(log: &str) -> Vec<String> {
    log.lines()
        .filter(|l| l.contains("request received"))
        .map(|l| {
            l.split(", ")
                .find_map(|kv| kv.strip_prefix("to: "))
                .map(|v| v.trim().trim_matches('"').to_owned())
                .unwrap_or_else(|| panic!("no `to` in log line {l:?}"))
        })
        .collect()
}

fn count_to(log: &str, stream: &str) -> usize {
    received_streams(log).iter().filter(|s| s.as_str() == stream).count()
}

fn three_agents(server: &Server) -> Vec<Agent> {
    let agents = vec![
        Agent::start(server, AgentSpec::new("web-1", "pantry", "test", &["web"])),
        Agent::start(server, AgentSpec::new("db-1", "pantry", "test", &["db"])),
        Agent::start(server, AgentSpec::new("web-2", "pantry", "prod", &["web", "cache"])),
    ];
    let dir = server.dir.path();
    let all = wait_for_status(server, dir, &[], &["web-1", "db-1", "web-2"], Duration::from_secs(10));
    assert!(
        all,
        "not all agents checked in\nserver log:\n{}\n{}",
        server.log(),
        agents.iter().map(|a| format!("{} log:\n{}", a.spec.identity, a.log())).collect::<String>()
    );
    agents
}

#[test]
fn targeting_by_application_environment_and_roles() {
    let server = Server::start(false);
    let agents = three_agents(&server);
    let [web1, db1, web2] = [&agents[0], &agents[1], &agents[2]];

    // The table lists every identity.
    let table = admin_ok(&server, &["status"]);
    for id in ["web-1", "db-1", "web-2"] {
        assert!(table.stdout.contains(id), "status table misses {id}:\n{}", table.stdout);
    }
    assert!(table.stdout.contains("IDENTITY"), "status table has no header:\n{}", table.stdout);

    // JSON, and the filters.
    assert_eq!(status_with(&server, &[]), ["db-1", "web-1", "web-2"]);
    let json: serde_json::Value = serde_json::from_str(&admin_ok(&server, &["status", "--json"]).stdout).unwrap();
    let web2_entry = json.as_array().unwrap().iter().find(|c| c["identity"] == "web-2").unwrap();
    assert_eq!(web2_entry["application"], "pantry");
    assert_eq!(web2_entry["environment"], "prod");
    assert_eq!(web2_entry["roles"], serde_json::json!(["web", "cache"]));
    assert!(web2_entry["last_checked_in"].is_string(), "{web2_entry}");
    assert_eq!(status_with(&server, &["-a", "pantry", "-e", "test"]), ["db-1", "web-1"]);
    assert_eq!(status_with(&server, &["-r", "cache"]), ["web-2"]);
    assert_eq!(status_with(&server, &["-e", "prod"]), ["web-2"]);
    assert_eq!(status_with(&server, &["-a", "pantry", "-e", "test", "-r", "db"]), ["db-1"]);
    assert!(status_with(&server, &["-a", "other"]).is_empty());

    // pantry.test: web-1 and db-1 only.
    let run = admin_ok(&server, &["-a", "pantry", "-e", "test", "echo", "hello"]);
    let mut out = lines(&run.stdout);
    out.sort();
    assert_eq!(out, ["db-1: hello", "web-1: hello"], "{run:#?}");
    assert!(run.stderr.contains("2 of 2 clients answered"), "{run:#?}");
    assert!(!run.stdout.contains("web-2"), "{run:#?}");
    assert_eq!(run.code, Some(0));

    // pantry.test.db: db-1 only.
    let run = admin_ok(&server, &["-a", "pantry", "-e", "test", "-r", "db", "echo", "x"]);
    assert_eq!(lines(&run.stdout), ["db-1: x"], "{run:#?}");
    assert!(run.stderr.contains("1 of 1 clients answered"), "{run:#?}");

    // No filter: everyone.
    let run = admin_ok(&server, &["echo", "all"]);
    let mut out = lines(&run.stdout);
    out.sort();
    assert_eq!(out, ["db-1: all", "web-1: all", "web-2: all"], "{run:#?}");
    assert!(run.stderr.contains("3 of 3 clients answered"), "{run:#?}");

    // What each agent received (its debug log): every answer above was
    // logged before it was sent, but the log is asynchronous.
    let expected = [(web1, 1, 0), (db1, 1, 1), (web2, 0, 0)];
    for (agent, test, test_db) in expected {
        let done = wait_until(Duration::from_secs(3), || {
            let log = agent.log();
            count_to(&log, "pantry.test") >= test && count_to(&log, "pantry.test.db") >= test_db
        });
        assert!(done, "{} did not log its requests:\n{}", agent.spec.identity, agent.log());
    }
    // Give a wrongly delivered request time to show up too.
    std::thread::sleep(Duration::from_millis(300));
    for (agent, test, test_db) in expected {
        let log = agent.log();
        let streams = received_streams(&log);
        let id = &agent.spec.identity;
        assert_eq!(count_to(&log, "pantry.test"), test, "{id} got pantry.test requests: {streams:?}\n{log}");
        assert_eq!(count_to(&log, "pantry.test.db"), test_db, "{id} got pantry.test.db requests: {streams:?}\n{log}");
        // The last echo was broadcast; nothing else reached it.
        let broadcasts = streams.iter().filter(|s| s.as_str() == "*" || s.is_empty()).count();
        assert!(broadcasts == 1, "{id} logged {broadcasts} broadcasts: {streams:?}");
        assert_eq!(streams.len(), broadcasts + test + test_db, "{id} got unexpected requests: {streams:?}");
    }
}

#[test]
fn a_killed_agent_is_offline_at_once_and_nobody_waits_for_it() {
    let server = Server::start(false);
    let mut agents = three_agents(&server);

    agents[1].process.kill(); // db-1
    let killed = Instant::now();
    let offline = wait_until(Duration::from_secs(2), || {
        let run = admin(&server, &["status", "--json"]);
        serde_json::from_str::<serde_json::Value>(&run.stdout)
            .ok()
            .and_then(|v| v.as_array().cloned())
            .is_some_and(|list| list.iter().any(|c| c["identity"] == "db-1" && c["state"] == "offline"))
    });
    assert!(offline, "db-1 not offline within 2 s of SIGKILL:\n{}", server.log());
    eprintln!("SIGKILL to offline in status: {:?}", killed.elapsed());
    let start = Instant::now();
    let run = admin(&server, &["echo", "--timeout", "5", "hi"]);
    let elapsed = start.elapsed();

    assert_eq!(run.code, Some(1), "{run:#?}");
    assert!(run.stderr.contains("2 of 3 clients answered, 1 offline"), "{run:#?}");
    let mut out = lines(&run.stdout);
    out.sort();
    assert_eq!(out.len(), 3, "{run:#?}");
    assert!(out[0].starts_with("db-1: offline (last seen "), "{run:#?}");
    assert_eq!(&out[1..], ["web-1: hi", "web-2: hi"], "{run:#?}");
    assert!(elapsed < Duration::from_secs(1), "the admin waited {elapsed:?} for a dead agent");
    // --online-only leaves it out of the output and the exit status.
    let run = admin(&server, &["--online-only", "echo", "hi"]);
    assert!(run.success() && !run.stdout.contains("db-1"), "{run:#?}");
}

#[test]
fn agents_check_in_again_after_a_server_restart() {
    let mut server = Server::start(false);
    let agents = three_agents(&server);

    server.restart();
    let start = Instant::now();
    let back = wait_for_status(&server, server.dir.path(), &[], &["web-1", "db-1", "web-2"], Duration::from_secs(10));
    assert!(
        back,
        "agents did not reappear within 10 s of the restart\nserver log:\n{}\n{}",
        server.log(),
        agents.iter().map(|a| format!("{} log:\n{}", a.spec.identity, a.log())).collect::<String>()
    );
    eprintln!("agents back in status {:?} after the restart", start.elapsed());

    // The SUB sockets reconnect on their own; echo must reach all three
    // again (bounded: a subscription may lag the registration briefly).
    let mut attempts = Vec::new();
    let reached = wait_until(Duration::from_secs(10), || {
        let run = server.admin(&["--timeout", "2", "echo", "again"]);
        let ok = run.success() && run.stderr.contains("3 of 3 clients answered");
        attempts.push(run);
        ok
    });
    assert!(reached, "echo never reached all agents after the restart: {attempts:#?}\n{}", server.log());
    if attempts.len() > 1 {
        eprintln!("echo needed {} attempts after the restart: {:#?}", attempts.len(), &attempts[..attempts.len() - 1]);
    }
    let last = attempts.last().unwrap();
    let mut out = lines(&last.stdout);
    out.sort();
    assert_eq!(out, ["db-1: again", "web-1: again", "web-2: again"]);
}

#[test]
fn garbage_on_the_receive_port_is_dropped() {
    let mut server = Server::start(false);
    let ctx = zmq::Context::new();
    let dealer = ctx.socket(zmq::DEALER).unwrap();
    dealer.set_linger(0).unwrap();
    dealer.connect(&format!("tcp://127.0.0.1:{}", server.ports.receive)).unwrap();

    let metadata = |uuid: &str, kind: &str| {
        serde_json::json!({
            "uuid": uuid, "type": kind, "from": "raw", "to": "",
            "requires_response": true, "forwarded": false, "custom": {}
        })
        .to_string()
        .into_bytes()
    };
    // Pseudo-random bytes, different on every run.
    let mut seed = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos() as u64 | 1;
    let random: Vec<u8> = (0..64)
        .map(|_| {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            (seed >> 24) as u8
        })
        .collect();
    let garbage: Vec<(&str, Vec<Vec<u8>>)> = vec![
        ("one frame of random bytes", vec![random.clone()]),
        ("second frame not JSON", vec![b"".to_vec(), b"this is { not json".to_vec()]),
        ("metadata is a JSON array", vec![b"".to_vec(), br#"["uuid", "type"]"#.to_vec()]),
        (
            "metadata with wrong field types",
            vec![
                b"".to_vec(),
                br#"{"uuid": 7, "type": ["Echo"], "from": null, "to": 1, "requires_response": "yes", "forwarded": 0, "custom": []}"#
                    .to_vec(),
            ],
        ),
        ("metadata missing fields", vec![b"".to_vec(), br#"{"uuid": "u"}"#.to_vec()]),
        ("stream frame not UTF-8", vec![vec![0xff, 0xfe, 0xc3, 0x28], metadata("bad-stream", "Status")]),
        (
            "bad JSON after the marker",
            vec![b"".to_vec(), metadata("bad-body", "Status"), "\u{2042}{bad json".as_bytes().to_vec()],
        ),
        ("one empty frame", vec![Vec::new()]),
        ("random bytes in every frame", vec![random.clone(), random.clone(), random]),
    ];
    for (what, frames) in &garbage {
        dealer.send_multipart(frames, 0).unwrap_or_else(|e| panic!("cannot send {what}: {e}"));
    }

    // The same connection still works: a well-formed Status request after
    // the garbage gets its answer.
    dealer.send_multipart([b"".to_vec(), metadata("good-one", "Status"), "\u{2042}{}".as_bytes().to_vec()], 0).unwrap();
    let answered = wait_until(Duration::from_secs(5), || {
        while let Ok(frames) = dealer.recv_multipart(zmq::DONTWAIT) {
            let meta: serde_json::Value = serde_json::from_slice(frames.get(1).map(Vec::as_slice).unwrap_or_default())
                .unwrap_or(serde_json::Value::Null);
            assert_ne!(meta["uuid"], "bad-stream", "a message with a non-UTF-8 stream was answered");
            assert_ne!(meta["uuid"], "bad-body", "a message with bad JSON in its body was answered");
            if meta["uuid"] == "good-one" {
                return true;
            }
        }
        false
    });
    assert!(answered, "no answer to a good request after the garbage\nserver log:\n{}", server.log());

    assert!(server.process.is_running(), "the server died:\n{}", server.log());
    let run = admin_ok(&server, &["status"]);
    assert_eq!(run.code, Some(0));
    assert!(run.stdout.contains("no clients checked in"), "{run:#?}");

    let n = garbage.len();
    let logged = wait_until(Duration::from_secs(3), || server.log().matches("malformed message dropped").count() >= n);
    let count = server.log().matches("malformed message dropped").count();
    assert!(logged, "{count} of {n} malformed messages logged:\n{}", server.log());
    assert_eq!(count, n, "{}", server.log());
    assert!(server.process.is_running(), "the server died:\n{}", server.log());
}

/// Writes `yaml` to `name` in a temp dir, runs `program -c FILE` and checks
/// that it fails at once with an error naming `key` and the file.
fn assert_config_rejected(program: &str, name: &str, yaml: &str, key: &str) {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("root");
    // A root_dir and free ports, so that only the bad key can stop it.
    let ports = Ports::free();
    let mut text = format!("root_dir: {}\n", root.display());
    if !yaml.starts_with("networking:") {
        text.push_str(&ports.networking_yaml(false));
    }
    text.push_str(yaml);
    let path = dir.path().join(name);
    std::fs::write(&path, &text).unwrap();
    let run =
        run_bounded(Command::new(bin(program)).arg("-c").arg(&path).current_dir(dir.path()), Duration::from_secs(5));
    assert!(!run.timed_out, "{program} with {text:?} did not exit within 5 s; stderr:\n{}", run.stderr);
    assert!(run.code.is_some() && run.code != Some(0), "{program} with {text:?} exited {:?}", run.code);
    assert!(run.stderr.contains(key), "{program}: stderr does not name `{key}` for {text:?}:\n{}", run.stderr);
    let shown = path.display().to_string();
    assert!(run.stderr.contains(&shown), "{program}: stderr does not name the file {shown}:\n{}", run.stderr);
    assert!(run.elapsed < Duration::from_secs(3), "{program} took {:?} to reject its config", run.elapsed);
}

#[test]
fn bad_configuration_is_a_startup_error_naming_key_and_file() {
    assert_config_rejected("pantry-server", "server.yml", "networking:\n  pub_sub_prot: 1\n", "pub_sub_prot");
    assert_config_rejected("pantry-server", "server.yml", "networking:\n  receive_port: many\n", "receive_port");
    assert_config_rejected("pantry-server", "server.yml", "networking:\n  security: curvy\n", "security");
    assert_config_rejected("pantry-client", "client.yml", "client:\n  heartbeat_intervall: 3\n", "heartbeat_intervall");
    assert_config_rejected("pantry-client", "client.yml", "networking:\n  security: curvy\n", "security");
}

/// SIGTERM: exit status 0 within two seconds, with a log line.
fn assert_stops_cleanly(server: &mut Server) {
    let start = Instant::now();
    let status = server.process.terminate().expect("an exit status");
    let elapsed = start.elapsed();
    assert!(status.success(), "SIGTERM exit status {status:?}\n{}", server.log());
    assert!(elapsed < Duration::from_secs(2), "SIGTERM took {elapsed:?}");
    assert!(server.log().contains("shutting down"), "{}", server.log());
}

#[test]
fn sigterm_stops_the_server_cleanly() {
    let mut server = Server::start(false);
    assert_stops_cleanly(&mut server);
}

#[test]
fn sigterm_stops_a_server_with_a_connected_agent() {
    let mut server = Server::start(false);
    let _agent = Agent::start(&server, AgentSpec::new("web-1", "pantry", "test", &["web"]));
    assert!(wait_for_status(&server, server.dir.path(), &[], &["web-1"], Duration::from_secs(10)), "{}", server.log());
    assert_stops_cleanly(&mut server);
}

#[test]
fn admin_says_when_the_server_cannot_be_reached() {
    let dir = tempfile::tempdir().unwrap();
    let ports = Ports::free();
    let mut command = Command::new(bin("pantry-admin"));
    command.args(ports.admin_args()).args(["--timeout", "1", "echo", "hi"]).current_dir(dir.path());
    let run = run_bounded(&mut command, Duration::from_secs(5));
    assert!(!run.timed_out, "pantry-admin hung; stderr:\n{}", run.stderr);
    assert!(run.code.is_some() && run.code != Some(0), "exit {:?}, stderr:\n{}", run.code, run.stderr);
    assert!(run.stderr.contains("cannot reach the server"), "stderr:\n{}", run.stderr);
    assert!(run.stdout.is_empty(), "stdout:\n{}", run.stdout);
    assert!(run.elapsed < Duration::from_secs(3), "took {:?} with --timeout 1", run.elapsed);
}

#[test]
fn status_without_agents() {
    let server = Server::start(false);
    let run = admin_ok(&server, &["status"]);
    assert_eq!(run.code, Some(0));
    assert_eq!(run.stdout.trim(), "no clients checked in", "{run:#?}");
    let run = admin_ok(&server, &["status", "--json"]);
    assert!(status_identities(&run).is_empty(), "{run:#?}");
}

/// A requester that falls behind must still get every answer: more answers
/// than the ROUTER's high-water mark (1000) wait on the server instead of
/// being dropped.
#[test]
fn answers_beyond_the_high_water_mark_are_not_lost() {
    let server = Server::start(false);
    let _agent = Agent::start(&server, AgentSpec::new("hwm-1", "pantry", "test", &[]));
    assert!(wait_for_status(&server, server.dir.path(), &[], &["hwm-1"], Duration::from_secs(10)));
    let ctx = zmq::Context::new();
    let dealer = ctx.socket(zmq::DEALER).unwrap();
    dealer.set_linger(0).unwrap();
    dealer.set_rcvhwm(100).unwrap();
    dealer.connect(&format!("tcp://127.0.0.1:{}", server.ports.receive)).unwrap();
    // 16 KiB answers: more than the kernel's socket buffers hold too.
    const REQUESTS: usize = 1500;
    let payload = "x".repeat(16 * 1024);
    for i in 0..REQUESTS {
        let mut request = pantry_shared::commands::echo::request(&format!("{i} {payload}"));
        request.stream = "hwm-1".into();
        request.metadata.from = "raw-admin".into();
        dealer.send_multipart(request.to_frames(), 0).unwrap();
    }
    // Not reading for a while: answers pile up on the server.
    std::thread::sleep(Duration::from_millis(1500));
    let (mut lists, mut answers) = (0, 0);
    let end = Instant::now() + Duration::from_secs(20);
    while (lists < REQUESTS || answers < REQUESTS) && Instant::now() < end {
        let mut items = [dealer.as_poll_item(zmq::POLLIN)];
        zmq::poll(&mut items, 200).unwrap();
        while let Ok(frames) = dealer.recv_multipart(zmq::DONTWAIT) {
            let m = pantry_shared::Message::from_frames(&frames).unwrap();
            if m.is_client_response_list() {
                lists += 1;
            } else {
                answers += 1;
            }
        }
    }
    assert_eq!(
        (lists, answers),
        (REQUESTS, REQUESTS),
        "server log:\n{}",
        server.log().lines().rev().take(20).collect::<Vec<_>>().join("\n")
    );
}
