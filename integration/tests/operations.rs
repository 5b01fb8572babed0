//! Operations: readiness for systemd, SIGHUP (log level, log file reopened
//! for logrotate, without dropping clients), and `check-config` on good and
//! broken setups.

use std::os::unix::net::UnixDatagram;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use pantry_integration::{bin, wait_for_status, wait_until, Agent, AgentSpec, Ports, Server};

fn signal(pid: u32, sig: i32) {
    // SAFETY: kill(2) on a child of this test.
    unsafe { libc::kill(pid as i32, sig) };
}

/// Writes a server config with `log_level` and `log_to`.
fn write_config(path: &Path, root: &Path, ports: &Ports, level: &str, log_to: &Path) {
    let text = format!(
        "log_level: {level}\nlog_to: {}\nroot_dir: {}\n{}",
        log_to.display(),
        root.display(),
        ports.networking_yaml(false)
    );
    std::fs::write(path, text).expect("write server.yml");
}

#[test]
fn server_tells_systemd_it_is_ready_once_bound() {
    let dir = tempfile::tempdir().unwrap();
    let notify = dir.path().join("notify");
    let listener = UnixDatagram::bind(&notify).unwrap();
    listener.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let ports = Ports::free();
    let config = dir.path().join("server.yml");
    write_config(&config, &dir.path().join("root"), &ports, "info", &dir.path().join("server.log"));
    let mut child = Command::new(bin("pantry-server"))
        .args(["-c", config.to_str().unwrap()])
        .env("NOTIFY_SOCKET", &notify)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut buf = [0u8; 64];
    // A signal to this process (another test's child) may interrupt the wait.
    let got = loop {
        match listener.recv(&mut buf) {
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            other => break other,
        }
    };
    // Bound before ready: the port is taken by the time READY=1 arrives.
    let taken = std::net::TcpListener::bind(("127.0.0.1", ports.receive)).is_err();
    signal(child.id(), libc::SIGTERM);
    let _ = child.wait();
    let n = got.expect("READY=1 within 10 s");
    assert_eq!(&buf[..n], b"READY=1");
    assert!(taken, "READY=1 before the receive port was bound");
}

#[test]
fn sighup_raises_the_log_level_and_reopens_the_log_without_dropping_clients() {
    // Start with the harness (debug), then switch the same server to info
    // on a file, restart it once, and drive everything else by SIGHUP.
    let mut server = Server::start(false);
    let log = server.dir.path().join("server.log");
    write_config(&server.config_path(), &server.root_dir(), &server.ports, "info", &log);
    server.restart_quietly();
    assert!(wait_until(Duration::from_secs(10), || std::fs::read_to_string(&log)
        .is_ok_and(|t| t.contains("pantry-server started"))));
    let agent = Agent::start(&server, AgentSpec::new("ops-1", "pantry", "test", &["web"]));
    let cwd = server.dir.path();
    assert!(wait_for_status(&server, cwd, &[], &["ops-1"], Duration::from_secs(10)), "{}", agent.log());
    let before = std::fs::read_to_string(&log).unwrap();
    assert!(!before.contains("DEBG"), "info level logged debug lines:\n{before}");

    // logrotate: move the file away, raise the level, SIGHUP.
    let rotated = server.dir.path().join("server.log.1");
    std::fs::rename(&log, &rotated).unwrap();
    write_config(&server.config_path(), &server.root_dir(), &server.ports, "debug", &log);
    let pid = server.process.pid().unwrap();
    signal(pid, libc::SIGHUP);
    assert!(
        wait_until(Duration::from_secs(5), || std::fs::read_to_string(&log).is_ok_and(|t| t.contains("reloaded"))),
        "no reload line in the reopened log"
    );
    let run = server.admin(&["echo", "after-reload"]);
    assert!(run.success(), "{run:?}");
    assert!(run.stdout.contains("ops-1: after-reload"), "{run:?}");
    let after = || std::fs::read_to_string(&log).unwrap_or_default();
    assert!(
        wait_until(Duration::from_secs(5), || after().contains("DEBG") && after().contains("message received")),
        "debug lines did not appear after SIGHUP:\n{}",
        after()
    );
    // The agent was never dropped.
    assert!(server.process.is_running());
    assert!(!agent.log().contains("disconnected from the server"), "agent was dropped:\n{}", agent.log());
    let old = std::fs::read_to_string(&rotated).unwrap();
    assert!(old.contains("pantry-server started") && !old.contains("reloaded"), "{old}");
}

#[test]
fn check_config_reports_good_and_broken_setups() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("root");
    let config = dir.path().join("server.yml");
    std::fs::write(&config, format!("root_dir: {}\nnetworking:\n  security: curve\n", root.display())).unwrap();
    let run = |program: &str, cfg: &Path| {
        let started = Instant::now();
        let out = Command::new(bin(program)).args(["check-config", "-c", cfg.to_str().unwrap()]).output().unwrap();
        assert!(started.elapsed() < Duration::from_secs(10));
        (out.status.code(), String::from_utf8_lossy(&out.stdout).into_owned())
    };
    let (code, out) = run("pantry-server", &config);
    assert_eq!(code, Some(0), "{out}");
    assert!(out.contains("no problems"), "{out}");
    assert!(!root.exists(), "check-config created the root_dir");

    let keys = root.join("security/curve");
    std::fs::create_dir_all(&keys).unwrap();
    std::fs::write(keys.join("server_keys.yml"), "public_key: 'short'\nprivate_key: 'x'\n").unwrap();
    let (code, out) = run("pantry-server", &config);
    assert_eq!(code, Some(1), "{out}");
    assert!(out.contains("problem:") && out.contains("public_key"), "{out}");

    let client = dir.path().join("client.yml");
    std::fs::write(&client, format!("root_dir: {}\nnetworking:\n  security: curve\n", dir.path().join("c").display()))
        .unwrap();
    let (code, out) = run("pantry-client", &client);
    assert_eq!(code, Some(1), "{out}");
    assert!(out.contains("client_keys.yml does not exist"), "{out}");

    std::fs::write(&client, "client:\n  heartbeat_intervall: 3\n").unwrap();
    let (code, out) = run("pantry-client", &client);
    assert_eq!(code, Some(1), "{out}");
    assert!(out.contains("heartbeat_intervall"), "{out}");
}
