//! Presence and targeting (issue 12), under CURVE with the real binaries:
//! clients go offline as soon as their connection closes or they miss
//! heartbeats, nobody waits for them, the registry survives a restart and
//! forgets, and `-i` reaches exactly the identities named.

use std::path::Path;
use std::time::{Duration, Instant};

use pantry_integration::curve::{admin, bootstrap_admin, create_named_client, KEYS};
use pantry_integration::{wait_for_status, wait_until, Agent, AgentSpec, Server};

fn start(server: &Server, cwd: &Path, identity: &str) -> Agent {
    let mut spec = AgentSpec::new(identity, "shop", "prod", &["web"]);
    spec.client_keys_yaml = Some(create_named_client(server, cwd, identity));
    Agent::start(server, spec)
}

fn restart_agent(server: &Server, old: &Agent) -> Agent {
    let keys = std::fs::read_to_string(old.dir.path().join("root/security/curve/client_keys.yml")).unwrap();
    let mut spec = old.spec.clone();
    spec.client_keys_yaml = Some(keys);
    Agent::start(server, spec)
}

fn online(server: &Server, cwd: &Path, ids: &[&str]) -> bool {
    wait_for_status(server, cwd, &["--curve-key-file", KEYS, "--timeout", "2"], ids, Duration::from_secs(10))
}

/// `status --json` as (identity, state) pairs, sorted.
fn states(server: &Server, cwd: &Path) -> Vec<(String, String)> {
    let run = admin(server, cwd, 3, &["status", "--json"]);
    let list: serde_json::Value = serde_json::from_str(&run.stdout).unwrap_or_default();
    let mut out: Vec<(String, String)> = list
        .as_array()
        .map(|a| {
            a.iter()
                .map(|c| {
                    (c["identity"].as_str().unwrap_or("").to_owned(), c["state"].as_str().unwrap_or("").to_owned())
                })
                .collect()
        })
        .unwrap_or_default();
    out.sort();
    out
}

fn state_of(server: &Server, cwd: &Path, identity: &str) -> Option<String> {
    states(server, cwd).into_iter().find(|(id, _)| id == identity).map(|(_, s)| s)
}

#[test]
fn a_killed_agent_is_offline_within_two_seconds_and_comes_back() {
    let server = Server::start(true);
    let (cwd, _) = bootstrap_admin(&server);
    let mut agents: Vec<Agent> = ["web-1", "web-2", "web-3"].iter().map(|id| start(&server, cwd.path(), id)).collect();
    assert!(online(&server, cwd.path(), &["web-1", "web-2", "web-3"]), "{}", server.log());

    agents[1].process.kill();
    let killed = Instant::now();
    let offline =
        wait_until(Duration::from_secs(2), || state_of(&server, cwd.path(), "web-2").as_deref() == Some("offline"));
    assert!(offline, "web-2 not offline 2 s after SIGKILL: {:?}", states(&server, cwd.path()));
    eprintln!("SIGKILL to offline: {:?}", killed.elapsed());
    let json = admin(&server, cwd.path(), 3, &["status", "--json"]);
    let list: serde_json::Value = serde_json::from_str(&json.stdout).unwrap();
    let web2 = list.as_array().unwrap().iter().find(|c| c["identity"] == "web-2").unwrap();
    assert!(humantime::parse_rfc3339(web2["last_seen"].as_str().unwrap()).is_ok(), "{web2}");
    let table = admin(&server, cwd.path(), 3, &["status"]);
    assert!(table.stdout.contains("STATE") && table.stdout.contains("offline"), "{table:?}");
    let only = admin(&server, cwd.path(), 3, &["status", "--offline", "--json"]);
    assert!(only.stdout.contains("web-2") && !only.stdout.contains("web-1"), "{only:?}");

    let started = Instant::now();
    let run = admin(&server, cwd.path(), 10, &["-a", "shop", "echo", "hi"]);
    let took = started.elapsed();
    assert_eq!(run.code, Some(1), "{run:?}");
    assert!(run.stdout.contains("web-2: offline (last seen"), "{run:?}");
    assert!(run.stdout.contains("web-1: hi") && run.stdout.contains("web-3: hi"), "{run:?}");
    assert!(took < Duration::from_secs(1), "echo took {took:?} with web-2 dead");

    agents[1] = restart_agent(&server, &agents[1]);
    assert!(online(&server, cwd.path(), &["web-1", "web-2", "web-3"]), "web-2 did not come back:\n{}", agents[1].log());
}

#[test]
fn an_agent_that_stops_checking_in_goes_offline() {
    let server = Server::start(true);
    let (cwd, _) = bootstrap_admin(&server);
    let agent = start(&server, cwd.path(), "web-1");
    assert!(online(&server, cwd.path(), &["web-1"]));
    // Frozen: its connection stays up, its heartbeats (every second) stop.
    let pid = agent.process.pid().unwrap() as i32;
    // SAFETY: signals to our own child.
    unsafe { libc::kill(pid, libc::SIGSTOP) };
    let offline =
        wait_until(Duration::from_secs(8), || state_of(&server, cwd.path(), "web-1").as_deref() == Some("offline"));
    unsafe { libc::kill(pid, libc::SIGCONT) };
    assert!(offline, "a frozen agent stayed online:\n{}", server.log());
    assert!(online(&server, cwd.path(), &["web-1"]), "it did not come back after SIGCONT");
}

#[test]
fn identities_are_targeted_exactly_with_lists_and_globs() {
    let server = Server::start(true);
    let (cwd, _) = bootstrap_admin(&server);
    let ids = ["web-1", "web-3", "web-10", "db-1"];
    let _agents: Vec<Agent> = ids.iter().map(|id| start(&server, cwd.path(), id)).collect();
    assert!(online(&server, cwd.path(), &ids));
    let headers = |args: &[&str]| -> Vec<String> {
        let mut all = args.to_vec();
        all.extend(["exec", "--", "true"]);
        let run = admin(&server, cwd.path(), 5, &all);
        assert!(run.success(), "{all:?}: {run:?}");
        let mut got: Vec<String> = run
            .stdout
            .lines()
            .filter_map(|l| l.strip_prefix("==> "))
            .filter_map(|l| l.split(':').next().map(str::to_owned))
            .collect();
        got.sort();
        got
    };
    assert_eq!(headers(&["-i", "web-1,web-3"]), ["web-1", "web-3"]);
    assert_eq!(headers(&["-i", "web-*"]), ["web-1", "web-10", "web-3"]);
    assert_eq!(headers(&["-i", "web-?"]), ["web-1", "web-3"]);
    assert_eq!(headers(&["-a", "shop", "-i", "*-1"]), ["db-1", "web-1"]);
    let status = admin(&server, cwd.path(), 5, &["-i", "web-1*", "status", "--json"]);
    assert!(status.stdout.contains("\"web-10\"") && !status.stdout.contains("web-3"), "{status:?}");
    let none = admin(&server, cwd.path(), 5, &["-i", "nobody", "echo", "x"]);
    assert_eq!(none.code, Some(2), "{none:?}");
    assert!(none.stderr.contains("no clients match identity nobody"), "{none:?}");
    // The agents received only what was meant for them.
    for agent in &_agents {
        let received = agent.log().matches("request received").count();
        let expected = match agent.spec.identity.as_str() {
            "web-1" => 4,
            "web-3" => 3,
            "web-10" => 1,
            _ => 1,
        };
        assert_eq!(received, expected, "{} received {received} requests:\n{}", agent.spec.identity, agent.log());
    }
}

#[test]
fn the_registry_survives_a_restart_and_forgets() {
    let mut server = Server::start_with(true, "registry:\n  forget_after: 4s\n");
    let (cwd, _) = bootstrap_admin(&server);
    let mut a = start(&server, cwd.path(), "web-1");
    let mut b = start(&server, cwd.path(), "web-2");
    assert!(online(&server, cwd.path(), &["web-1", "web-2"]));
    a.process.kill();
    b.process.kill();
    server.restart();
    // Right after the restart: both listed, offline; a command says so.
    let listed = states(&server, cwd.path());
    assert_eq!(
        listed,
        [("web-1".to_owned(), "offline".to_owned()), ("web-2".to_owned(), "offline".to_owned())],
        "{}",
        server.log()
    );
    let run = admin(&server, cwd.path(), 3, &["-a", "shop", "echo", "hi"]);
    assert_eq!(run.code, Some(1), "{run:?}");
    assert!(run.stdout.contains("web-1: offline") && run.stdout.contains("web-2: offline"), "{run:?}");
    assert!(run.stderr.contains("0 of 2 clients answered, 2 offline"), "{run:?}");

    // web-1 comes back; web-2 does not and is forgotten after 4 s.
    a = restart_agent(&server, &a);
    assert!(wait_until(Duration::from_secs(10), || state_of(&server, cwd.path(), "web-1").as_deref() == Some("online")));
    let forgotten = wait_until(Duration::from_secs(10), || state_of(&server, cwd.path(), "web-2").is_none());
    assert!(forgotten, "web-2 was not forgotten: {:?}", states(&server, cwd.path()));
    assert!(server.log().contains("client forgotten"), "{}", server.log());

    // client:forget drops one now (a running agent comes back at its next
    // check-in).
    let run = admin(&server, cwd.path(), 3, &["client:forget", "web-1"]);
    assert!(run.success() && run.stdout.contains("forgot web-1"), "{run:?}");
    let missing = admin(&server, cwd.path(), 3, &["client:forget", "nobody"]);
    assert!(!missing.success() && missing.stderr.contains("nobody"), "{missing:?}");
    assert!(online(&server, cwd.path(), &["web-1"]), "web-1 did not check in again:\n{}", a.log());
    drop(b);
}
