//! Facts (issue 25), on the real binaries: the built-in facts of a real
//! agent match this machine, custom JSON, YAML and executable facts, a
//! changed fact targetable within a heartbeat and a second, every `-F`
//! operator, stale facts never matched, `--dry-run` sends nothing, a
//! client key reads no facts, facts survive a server restart, and a set
//! too big is refused with the previous one kept.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::time::Duration;

use pantry_integration::curve::{bootstrap_admin, create_named_client, curve_dealer, pair_of, recv_for, send};
use pantry_integration::{wait_until, Agent, AgentSpec, Server};
use serde_json::Value;

const WAIT: Duration = Duration::from_secs(15);

fn agent_with_facts(server: &Server, identity: &str, dir: &Path, interval: &str) -> Agent {
    let mut spec = AgentSpec::new(identity, "shop", "prod", &["web"]);
    spec.client_extra = format!("  facts_dir: {}\n  facts_interval: {interval}\n", dir.display());
    Agent::start(server, spec)
}

/// `facts --json` on the server: the agents with their facts.
fn facts_of(server: &Server, args: &[&str]) -> Vec<Value> {
    let mut all = args.to_vec();
    all.extend(["facts", "--json", "--timeout", "3"]);
    let run = server.admin(&all);
    serde_json::from_str::<Value>(&run.stdout).ok().and_then(|v| v.as_array().cloned()).unwrap_or_default()
}

fn fact(server: &Server, identity: &str, key: &str) -> Option<Value> {
    facts_of(server, &["-i", identity]).first().and_then(|a| a["facts"].get(key).cloned())
}

fn os_release(field: &str) -> Option<String> {
    let text = std::fs::read_to_string("/etc/os-release").ok()?;
    let line = text.lines().find(|l| l.starts_with(&format!("{field}=")))?;
    Some(line[field.len() + 1..].trim_matches('"').to_owned())
}

fn write_script(path: &Path, body: &str) {
    std::fs::write(path, format!("#!/bin/sh\n{body}\n")).unwrap();
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o755)).unwrap();
}

#[test]
fn built_in_and_custom_facts_are_reported_and_targeted() {
    let server = Server::start(false);
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("team.json"), r#"{"team": "payments", "app": {"tier": 2}}"#).unwrap();
    std::fs::write(dir.path().join("rack.yaml"), "rack:\n  row: b\n  slots: [3, 4]\n").unwrap();
    write_script(&dir.path().join("disk.sh"), r#"echo '{"disk": {"encrypted": true}}'"#);
    write_script(&dir.path().join("hang.sh"), "sleep 30");
    let empty = tempfile::tempdir().unwrap();
    let _a = agent_with_facts(&server, "f-1", dir.path(), "10m");
    let _b = agent_with_facts(&server, "f-2", empty.path(), "10m");
    assert!(
        wait_until(WAIT, || facts_of(&server, &[]).len() == 2 && fact(&server, "f-1", "team").is_some()),
        "no facts"
    );

    // Built-in facts match this machine.
    let f1 = facts_of(&server, &["-i", "f-1"]).remove(0);
    let facts = &f1["facts"];
    assert_eq!(facts["os.id"].as_str().map(str::to_owned), os_release("ID"), "{f1}");
    assert_eq!(facts["cpus"].as_u64(), std::thread::available_parallelism().ok().map(|n| n.get() as u64));
    let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap();
    let kib: u64 = meminfo
        .lines()
        .find(|l| l.starts_with("MemTotal:"))
        .unwrap()
        .split_whitespace()
        .nth(1)
        .unwrap()
        .parse()
        .unwrap();
    assert_eq!(facts["memory_mib"].as_u64(), Some(kib / 1024));
    assert_eq!(facts["agent_version"], pantry_shared::VERSION);
    assert!(facts["ipv4"].as_array().is_some_and(|ips| ips.iter().all(|ip| !ip.as_str().unwrap().starts_with("127."))));
    // Custom ones: JSON, YAML and a script, flattened; the hanging script
    // costs only its own.
    assert_eq!((facts["team"].as_str(), facts["app.tier"].as_u64()), (Some("payments"), Some(2)), "{f1}");
    assert_eq!(facts["rack.row"], "b");
    assert_eq!(facts["rack.slots"], serde_json::json!([3, 4]));
    assert_eq!(facts["disk.encrypted"], true);
    assert!(_a.log().contains("hang.sh"), "the hanging script is named: {}", _a.log());

    // Every operator, through status and echo.
    let os = os_release("ID").unwrap_or_default();
    let version = os_release("VERSION_ID").unwrap_or_default();
    let targeted = |exprs: &[&str]| -> Vec<String> {
        let mut args = Vec::new();
        for e in exprs {
            args.extend(["-F", e]);
        }
        args.extend(["echo", "hi", "--timeout", "3"]);
        let run = server.admin(&args);
        let mut ids: Vec<String> =
            run.stdout.lines().filter_map(|l| l.strip_suffix(": hi")).map(str::to_owned).collect();
        ids.sort();
        ids
    };
    let both = vec!["f-1".to_owned(), "f-2".to_owned()];
    assert_eq!(targeted(&[&format!("os.id={os}")]), both);
    if !version.is_empty() {
        let glob = format!("os.version_id={}*", &version[..1]);
        assert_eq!(targeted(&[&format!("os.id={os}"), &glob]), both);
    }
    assert_eq!(targeted(&["team=payments"]), ["f-1"]);
    assert_eq!(targeted(&["team=pay*"]), ["f-1"]);
    assert_eq!(targeted(&["team!=payments"]), Vec::<String>::new(), "f-2 has no team: it matches nothing");
    assert_eq!(targeted(&["app.tier>1"]), ["f-1"]);
    assert_eq!(targeted(&["app.tier>=2", "app.tier<=2"]), ["f-1"]);
    assert_eq!(targeted(&["app.tier<2"]), Vec::<String>::new());
    assert_eq!(targeted(&["team~^pay"]), ["f-1"]);
    assert_eq!(targeted(&["disk.encrypted"]), ["f-1"]);
    assert_eq!(targeted(&["rack.slots=4"]), ["f-1"], "a list matches when any element does");
    assert_eq!(targeted(&[&format!("memory_mib>={}", kib / 1024)]), both);
    let status = server.admin(&["-F", "team=payments", "status", "--json"]);
    let listed: Value = serde_json::from_str(&status.stdout).unwrap();
    assert_eq!(listed.as_array().map(Vec::len), Some(1), "{status:?}");

    // A changed fact is targetable within a heartbeat and a second (once
    // no script takes its 5 s to be killed).
    std::fs::remove_file(dir.path().join("hang.sh")).unwrap();
    assert!(wait_until(WAIT, || _a.log().matches("facts gathered").count() >= 2), "{}", _a.log());
    std::fs::write(dir.path().join("team.json"), r#"{"team": "search", "app": {"tier": 2}}"#).unwrap();
    let changed = std::time::Instant::now();
    assert!(wait_until(Duration::from_secs(3), || targeted(&["team=search"]) == ["f-1"]), "not seen");
    eprintln!("changed fact targetable after {:?}", changed.elapsed());

    // --count, and --dry-run sends nothing.
    let counted = server.admin(&["facts", "--count", "team"]);
    assert!(counted.stdout.contains("1  search") && counted.stdout.contains("1  (no team)"), "{counted:?}");
    let marker = dir.path().join("ran");
    let touch = format!("touch {}", marker.display());
    let dry = server.admin(&["-F", "team=search", "exec", "--dry-run", "--shell", "--", &touch]);
    assert!(dry.success() && dry.stdout.trim() == "f-1" && dry.stderr.contains("1 targeted"), "{dry:?}");
    std::thread::sleep(Duration::from_millis(500));
    assert!(!marker.exists(), "--dry-run ran the command");

    // A bad expression exits 2 and points at the character.
    let bad = server.admin(&["-F", "os.id%debian", "status"]);
    assert_eq!(bad.code, Some(2), "{bad:?}");
    assert!(bad.stderr.contains("unknown comparison operator `%`") && bad.stderr.contains("     ^"), "{bad:?}");
}

#[test]
fn stale_facts_match_nothing_and_facts_survive_a_restart() {
    let mut server = Server::start_with(false, "registry:\n  facts_max_age: 3s\n");
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("role.json"), r#"{"tier": "front"}"#).unwrap();
    let _fresh = agent_with_facts(&server, "s-fresh", dir.path(), "1s");
    let mut stale = agent_with_facts(&server, "s-stale", dir.path(), "1h");
    let both = || facts_of(&server, &["-F", "tier=front"]).len() == 2;
    assert!(wait_until(WAIT, both), "{:?}", facts_of(&server, &[]));
    // Gathered once an hour, kept fresh for 3 s: then it matches nothing.
    let only_fresh = || {
        let ids: Vec<String> =
            facts_of(&server, &["-F", "tier=front"]).iter().map(|a| a["identity"].to_string()).collect();
        ids == ["\"s-fresh\""]
    };
    assert!(wait_until(Duration::from_secs(8), only_fresh), "{:?}", facts_of(&server, &[]));
    let shown = server.admin(&["--show-unknown", "-F", "tier=front", "status"]);
    assert!(shown.stderr.contains("s-stale") && !shown.stderr.contains("s-fresh"), "{shown:?}");

    // Kept in the database: after a restart (the agent gone), still there.
    stale.process.kill();
    server.restart();
    let kept = fact(&server, "s-stale", "tier");
    assert_eq!(kept, Some(Value::String("front".into())), "{:?}", facts_of(&server, &[]));
}

#[test]
fn a_set_too_big_is_refused_and_the_previous_kept() {
    let server = Server::start(false);
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("small.json"), r#"{"size": "small"}"#).unwrap();
    let agent = agent_with_facts(&server, "big-1", dir.path(), "10m");
    assert!(wait_until(WAIT, || fact(&server, "big-1", "size").is_some()), "no facts");
    // Two files of 40 KiB each: each fine, together over 64 KiB.
    for name in ["a", "b"] {
        let blob = "x".repeat(40 * 1024);
        std::fs::write(dir.path().join(format!("{name}.json")), format!(r#"{{"{name}": "{blob}"}}"#)).unwrap();
    }
    assert!(
        wait_until(WAIT, || agent.log().contains("the server refused this client's facts")),
        "{}\n{}",
        agent.log(),
        server.log()
    );
    assert!(server.log().contains("client facts refused: too big"), "{}", server.log());
    assert_eq!(fact(&server, "big-1", "size"), Some(Value::String("small".into())));
    assert_eq!(fact(&server, "big-1", "a"), None);
}

#[test]
fn a_client_key_reads_no_facts() {
    let server = Server::start(true);
    let (cwd, _) = bootstrap_admin(&server);
    let credentials = create_named_client(&server, cwd.path(), "web-1");
    let ctx = zmq::Context::new();
    let pair = pair_of(&credentials);
    let dealer = curve_dealer(&ctx, &server, &pair);
    let mut request = pantry_shared::commands::facts::list_request(&Default::default(), &[]);
    request.metadata.from = "web-1".into();
    send(&dealer, &request);
    let refused = recv_for(&dealer, request.uuid(), WAIT).expect("an answer");
    assert!(refused.error().is_some_and(|e| e.contains("admin")), "{refused:?}");
}
