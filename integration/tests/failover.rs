//! Failing over between servers: real servers bound to 127.0.0.1,
//! 127.0.0.2 (and 127.0.0.3) on the same three ports, an agent whose
//! `networking.server_host` lists them, and the admin with `--host` given
//! more than once. After its server is SIGKILLed, the agent must answer via
//! another server within 3 heartbeat intervals.
//!
//! Under CURVE every server must know the same keys: the second one starts
//! with a copy of the first one's `server_keys.yml`.

use std::path::Path;
use std::time::{Duration, Instant};

use pantry_integration::curve::{bootstrap_admin, copy_key_store, create_named_client, KEYS};
use pantry_integration::{admin_at, bin, wait_until, AdminRun, Agent, AgentSpec, Ports, Server};

const HEARTBEAT: u64 = 1;
const IDENTITY: &str = "failover-1";
/// Scheduling on a loaded machine: admin processes, handshakes.
const SLACK: Duration = Duration::from_secs(2);

/// `pantry-admin [--host H]... -i IDENTITY echo hello`.
fn echo(cwd: &Path, curve: bool, hosts: &[&str], ports: &Ports, timeout: &str) -> AdminRun {
    let mut args = if curve { vec!["--curve-key-file", KEYS] } else { Vec::new() };
    args.extend(["--timeout", timeout, "-i", IDENTITY, "echo", "hello"]);
    admin_at(cwd, hosts, ports, &args)
}

fn answered(run: &AdminRun) -> bool {
    run.success() && run.stdout.contains(&format!("{IDENTITY}: hello"))
}

/// Polls `echo` via `hosts` until the agent answers (at most `within`);
/// returns how long after `since` it first did.
fn first_answer(
    cwd: &Path,
    curve: bool,
    hosts: &[&str],
    ports: &Ports,
    since: Instant,
    within: Duration,
) -> Option<Duration> {
    let mut at = None;
    wait_until(within, || {
        let ok = answered(&echo(cwd, curve, hosts, ports, "1"));
        if ok {
            at = Some(since.elapsed());
        }
        ok
    });
    at
}

/// An agent on `hosts` (the first one running as `first`) answers there;
/// `first` is killed; the agent must answer via `survivor` within
/// `3 * HEARTBEAT` (plus slack). Returns the measured time.
fn kill_and_measure(first: &mut Server, survivor: &Server, agent: &Agent, cwd: &Path, hosts: &[&str]) -> Duration {
    let (curve, ports) = (first.curve, first.ports);
    let via_first = first_answer(cwd, curve, &[&first.host], &ports, Instant::now(), Duration::from_secs(15));
    assert!(
        via_first.is_some(),
        "the agent never answered via {}\nagent log:\n{}\nserver log:\n{}",
        first.host,
        agent.log(),
        first.log()
    );

    first.process.kill();
    let killed = Instant::now();
    let limit = Duration::from_secs(3 * HEARTBEAT) + SLACK;
    // Waits longer than the limit, so that a slow failover is measured
    // rather than only reported as missing.
    let took = first_answer(cwd, curve, &[&survivor.host], &ports, killed, limit + Duration::from_secs(10));
    let agent_log = agent.log();
    let took = took.unwrap_or_else(|| {
        panic!(
            "the agent never answered via {}\nagent log:\n{agent_log}\nsurvivor log:\n{}",
            survivor.host,
            survivor.log()
        )
    });
    eprintln!(
        "failover ({}, hosts {hosts:?}): answered via {} {} ms after SIGKILL of {} (heartbeat {HEARTBEAT} s)",
        if curve { "curve" } else { "null" },
        survivor.host,
        took.as_millis(),
        first.host
    );
    assert!(took <= limit, "answered via {} only after {took:?} (limit {limit:?})\n{agent_log}", survivor.host);
    let from = format!("from: {}", first.host);
    let moved =
        agent_log.lines().find(|l| l.contains("server unreachable: moving to the next server") && l.contains(&from));
    assert!(moved.is_some(), "no move from {} logged:\n{agent_log}", first.host);
    took
}

/// The admin, given every host in order, skips the dead ones and reaches
/// the agent through the one that answers.
fn admin_fails_over(cwd: &Path, curve: bool, hosts: &[&str], ports: &Ports, skipped: u32) {
    let started = Instant::now();
    let run = echo(cwd, curve, hosts, ports, "5");
    let took = started.elapsed();
    assert!(answered(&run), "admin with --host {hosts:?}: {run:?}");
    eprintln!("admin with --host {hosts:?}: answered in {} ms", took.as_millis());
    // One connect budget (1 s) per dead server, and not much more.
    assert!(took < Duration::from_secs(skipped.into()) + Duration::from_secs(3), "{took:?}");
}

#[test]
fn curve_agent_and_admin_fail_over_after_sigkill() {
    let hosts = ["127.0.0.1", "127.0.0.2"];
    let ports = Ports::free_on(&hosts);
    let mut a = Server::start_on(hosts[0], ports, true, |_| {});
    let (cwd, _admin_key) = bootstrap_admin(&a);
    let credentials = create_named_client(&a, cwd.path(), IDENTITY);
    // Started after the keys were made on A, with A's key store.
    let b = Server::start_on(hosts[1], ports, true, |root| copy_key_store(&a, root));
    assert_eq!(b.public_key(), a.public_key());

    let mut spec = AgentSpec::new(IDENTITY, "app", "test", &["web"]);
    spec.heartbeat = HEARTBEAT;
    spec.client_keys_yaml = Some(credentials);
    spec.server_hosts = hosts.map(String::from).to_vec();
    let agent = Agent::start(&a, spec);

    kill_and_measure(&mut a, &b, &agent, cwd.path(), &hosts);
    admin_fails_over(cwd.path(), true, &hosts, &ports, 1);
}

/// Three hosts, the middle one never started: after A dies the agent moves
/// to C, directly or after finding nothing on B for a heartbeat interval
/// (the order after the first host is the agent's own); when C dies too,
/// it comes back to A, past B if B is next.
#[test]
fn null_agent_skips_a_dead_server_and_wraps_around() {
    let hosts = ["127.0.0.1", "127.0.0.2", "127.0.0.3"];
    let ports = Ports::free_on(&hosts);
    let mut a = Server::start_on(hosts[0], ports, false, |_| {});
    let mut c = Server::start_on(hosts[2], ports, false, |_| {});
    let cwd = tempfile::tempdir().expect("temp dir");

    let mut spec = AgentSpec::new(IDENTITY, "app", "test", &["web"]);
    spec.heartbeat = HEARTBEAT;
    spec.server_hosts = hosts.map(String::from).to_vec();
    let agent = Agent::start(&a, spec);

    kill_and_measure(&mut a, &c, &agent, cwd.path(), &hosts);
    admin_fails_over(cwd.path(), false, &hosts, &ports, 2);

    // A back on its address: when C dies too, the agent wraps around to A
    // (past B, still down).
    let mut a2 = Server::start_on(hosts[0], ports, false, |_| {});
    kill_and_measure(&mut c, &a2, &agent, cwd.path(), &hosts);
    a2.process.terminate();
}

/// The server binds one address: a list of two in server.yml stops it at
/// startup with an error naming the key and the file.
#[test]
fn server_refuses_a_list_of_hosts() {
    let dir = tempfile::tempdir().expect("temp dir");
    let ports = Ports::free_on(&["127.0.0.1", "127.0.0.2"]);
    let config = dir.path().join("server.yml");
    let yaml = format!(
        "root_dir: {}\n{}",
        dir.path().join("root").display(),
        ports.networking_yaml_on(&["127.0.0.1", "127.0.0.2"], false)
    );
    std::fs::write(&config, yaml).expect("write server.yml");
    let mut child = std::process::Command::new(bin("pantry-server"))
        .arg("-c")
        .arg(&config)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("start pantry-server");
    let mut status = None;
    wait_until(Duration::from_secs(10), || {
        status = child.try_wait().ok().flatten();
        status.is_some()
    });
    let Some(status) = status else {
        let _ = child.kill();
        let _ = child.wait();
        panic!("pantry-server started with two hosts");
    };
    let mut stderr = String::new();
    if let Some(mut pipe) = child.stderr.take() {
        use std::io::Read;
        let _ = pipe.read_to_string(&mut stderr);
    }
    assert!(!status.success(), "{stderr}");
    assert!(stderr.contains("networking.server_host") && stderr.contains(&config.display().to_string()), "{stderr}");
}
