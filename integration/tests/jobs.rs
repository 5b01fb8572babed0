//! Jobs and audit (issue 13), with the real binaries under CURVE: every
//! command recorded with its answers, `--async` and `job ID --wait`, the
//! audit log (fail closed), crash safety and retention.

use std::path::Path;
use std::time::{Duration, Instant};

use pantry_integration::curve::{admin, bootstrap_admin, create_named_client, keys_dir, pair_of, KEYS};
use pantry_integration::{wait_for_status, wait_until, Agent, AgentSpec, Server};

fn start(server: &Server, cwd: &Path, identity: &str) -> Agent {
    let mut spec = AgentSpec::new(identity, "shop", "prod", &["web"]);
    spec.client_keys_yaml = Some(create_named_client(server, cwd, identity));
    Agent::start(server, spec)
}

fn online(server: &Server, cwd: &Path, ids: &[&str]) {
    let ok = wait_for_status(server, cwd, &["--curve-key-file", KEYS, "--timeout", "2"], ids, Duration::from_secs(10));
    assert!(ok, "not online: {ids:?}\n{}", server.log());
}

fn jobs_json(server: &Server, cwd: &Path, args: &[&str]) -> Vec<serde_json::Value> {
    let mut all = vec!["jobs", "--json"];
    all.extend_from_slice(args);
    let run = admin(server, cwd, 5, &all);
    assert!(run.success(), "{run:?}");
    serde_json::from_str::<serde_json::Value>(&run.stdout).unwrap().as_array().cloned().unwrap()
}

fn audit_lines(server: &Server) -> Vec<serde_json::Value> {
    let text = std::fs::read_to_string(server.root_dir().join("audit.log")).unwrap_or_default();
    text.lines().map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}"))).collect()
}

#[test]
fn exec_is_listed_with_its_counts_and_reprinted() {
    let server = Server::start(true);
    let (cwd, _) = bootstrap_admin(&server);
    let _agents: Vec<Agent> = ["web-1", "web-2"].iter().map(|id| start(&server, cwd.path(), id)).collect();
    online(&server, cwd.path(), &["web-1", "web-2"]);
    let run = admin(&server, cwd.path(), 5, &["-a", "shop", "exec", "--shell", "--", "echo out-$(hostname | wc -c)"]);
    assert!(run.success(), "{run:?}");
    let list = jobs_json(&server, cwd.path(), &[]);
    let exec = list.iter().find(|j| j["command"] == "Exec").unwrap_or_else(|| panic!("no Exec job: {list:?}"));
    assert_eq!((exec["answered"].as_u64(), exec["failed"].as_u64()), (Some(2), Some(0)), "{exec}");
    assert_eq!((exec["pending"].as_u64(), exec["offline"].as_u64()), (Some(0), Some(0)), "{exec}");
    assert_eq!(exec["target"], "shop");
    assert_eq!(exec["who"], "admin");
    let id = exec["id"].as_str().unwrap();
    let again = admin(&server, cwd.path(), 5, &["job", id]);
    assert!(again.success(), "{again:?}");
    let headers = |text: &str| -> Vec<String> {
        let mut h: Vec<String> = text.lines().filter(|l| l.starts_with("==> ")).map(str::to_owned).collect();
        h.sort();
        h
    };
    assert_eq!(headers(&again.stdout), headers(&run.stdout), "job {id} does not print what exec printed");
    let body = |text: &str| -> Vec<String> {
        let mut b: Vec<String> = text.lines().filter(|l| l.starts_with("out-")).map(str::to_owned).collect();
        b.sort();
        b
    };
    assert_eq!(body(&again.stdout), body(&run.stdout));
    let detail = admin(&server, cwd.path(), 5, &["job", id, "--json"]);
    let detail: serde_json::Value = serde_json::from_str(&detail.stdout).unwrap();
    assert_eq!(detail["arguments"]["program"].as_str().map(|p| p.starts_with("echo out-")), Some(true), "{detail}");
    assert_eq!(detail["address"], "127.0.0.1");
    // Table form, and the default of 20.
    let table = admin(&server, cwd.path(), 5, &["jobs"]);
    assert!(table.stdout.contains("Exec") && table.stdout.contains(id), "{table:?}");
    assert!(jobs_json(&server, cwd.path(), &["-i", "web-1"]).iter().any(|j| j["id"] == id));
    assert!(!jobs_json(&server, cwd.path(), &["-i", "db-*"]).iter().any(|j| j["id"] == id));
}

#[test]
fn async_exec_is_collected_by_the_server_and_waited_for_with_job_wait() {
    let server = Server::start(true);
    let (cwd, _) = bootstrap_admin(&server);
    let _agents: Vec<Agent> = ["web-1", "web-2"].iter().map(|id| start(&server, cwd.path(), id)).collect();
    online(&server, cwd.path(), &["web-1", "web-2"]);
    let started = Instant::now();
    let run = admin(&server, cwd.path(), 5, &["exec", "--async", "--shell", "--", "sleep 2; echo done"]);
    assert!(run.success(), "{run:?}");
    assert!(started.elapsed() < Duration::from_secs(2), "--async waited {:?}", started.elapsed());
    let id = run.stdout.trim().to_owned();
    assert_eq!(id.len(), 36, "the job id is printed: {run:?}");
    let waited = admin(&server, cwd.path(), 10, &["job", &id, "--wait"]);
    assert!(waited.success(), "{waited:?}\n{}", server.log());
    assert_eq!(
        waited.stdout.matches("\ndone\n").count() + usize::from(waited.stdout.starts_with("done\n")),
        2,
        "{waited:?}"
    );
    assert!(waited.stdout.contains("==> web-1: exit 0") && waited.stdout.contains("==> web-2: exit 0"), "{waited:?}");
    let echo = admin(&server, cwd.path(), 5, &["echo", "--async", "hi"]);
    assert!(echo.success() && echo.stdout.trim().len() == 36, "{echo:?}");
}

#[test]
fn a_client_key_is_refused_jobs_and_the_audit_log_says_so() {
    let server = Server::start(true);
    let (cwd, _) = bootstrap_admin(&server);
    let credentials = create_named_client(&server, cwd.path(), "web-1");
    let client = keys_dir(&server, &pair_of(&credentials));
    let run = admin(&server, client.path(), 3, &["jobs"]);
    assert!(!run.success() && run.stderr.contains("not authorized"), "{run:?}");
    let lines = audit_lines(&server);
    let refused = lines
        .iter()
        .find(|l| l["type"] == "ListJobs" && l["name"] == "web-1")
        .unwrap_or_else(|| panic!("no audit line for the refused jobs: {lines:?}"));
    assert!(refused["decision"].as_str().unwrap().starts_with("refused: not authorized"), "{refused}");
    assert_eq!(refused["role"], "client");
    assert_eq!(refused["key"], pair_of(&credentials).public_key);
    let mode = std::fs::metadata(server.root_dir().join("audit.log")).unwrap();
    assert_eq!(std::os::unix::fs::PermissionsExt::mode(&mode.permissions()) & 0o777, 0o600);
}

#[test]
fn audit_lines_and_jobs_never_hold_a_private_key() {
    let server = Server::start(true);
    let (cwd, _) = bootstrap_admin(&server);
    let credentials = create_named_client(&server, cwd.path(), "web-1");
    let private = pantry_integration::curve::field(&pantry_integration::curve::yaml(&credentials), "private_key");
    let mut spec = AgentSpec::new("web-1", "shop", "prod", &[]);
    spec.client_keys_yaml = Some(credentials);
    let _agent = Agent::start(&server, spec);
    online(&server, cwd.path(), &["web-1"]);
    let file = cwd.path().join("payload.txt");
    std::fs::write(&file, b"payload").unwrap();
    let remote = tempfile::tempdir().unwrap();
    let target = remote.path().join("copy.txt");
    assert!(admin(&server, cwd.path(), 5, &["exec", "--", "true"]).success());
    let up = admin(&server, cwd.path(), 5, &["upload", file.to_str().unwrap(), target.to_str().unwrap()]);
    assert!(up.success(), "{up:?}");
    let token = admin(&server, cwd.path(), 5, &["client:token"]);
    assert!(token.success());
    let lines = audit_lines(&server);
    for kind in ["Exec", "Upload", "CreateClient", "CreateToken"] {
        let line = lines.iter().find(|l| l["type"] == kind && l["decision"] == "accepted");
        let line = line.unwrap_or_else(|| panic!("no accepted {kind} in the audit log: {lines:?}"));
        for field in ["time", "name", "key", "role", "address", "target", "arguments"] {
            assert!(line.get(field).is_some(), "{kind} line lacks {field}: {line}");
        }
    }
    let upload = lines.iter().find(|l| l["type"] == "Upload").unwrap();
    assert_eq!(upload["arguments"]["size"], 7, "{upload}");
    let text = std::fs::read_to_string(server.root_dir().join("audit.log")).unwrap();
    assert!(!text.contains(&private) && !text.contains(token.stdout.trim()), "a secret in the audit log");
    let jobs = jobs_json(&server, cwd.path(), &[]);
    for kind in ["Exec", "Upload", "CreateClient", "CreateToken"] {
        assert!(jobs.iter().any(|j| j["command"] == kind), "no {kind} job: {jobs:?}");
    }
    let create = jobs.iter().find(|j| j["command"] == "CreateClient").unwrap()["id"].as_str().unwrap().to_owned();
    let detail = admin(&server, cwd.path(), 5, &["job", &create, "--json"]);
    assert!(detail.stdout.contains("\"result\": \"ok\""), "{detail:?}");
    // Nothing under the server's directory holds the private key.
    std::thread::sleep(Duration::from_millis(300));
    for entry in walk(server.dir.path()) {
        let bytes = std::fs::read(&entry).unwrap_or_default();
        assert!(!bytes.windows(private.len()).any(|w| w == private.as_bytes()), "the private key is in {entry:?}");
    }
}

fn walk(dir: &Path) -> Vec<std::path::PathBuf> {
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
fn an_unwritable_audit_log_refuses_requests() {
    let server = Server::start_with(true, "audit_log: /dev/full\n");
    let cwd = tempfile::tempdir().unwrap();
    pantry_integration::curve::write_key_file(
        cwd.path(),
        KEYS,
        &pantry_integration::curve::server_key_only(&server.public_key()),
    );
    let run = admin(&server, cwd.path(), 5, &["status"]);
    assert!(!run.success() && run.stderr.contains("audit log"), "{run:?}");
    let logged = pantry_integration::curve::wait_for_line(
        || server.log(),
        &["cannot write the audit log"],
        Duration::from_secs(5),
    );
    assert!(logged.is_some(), "{}", server.log());
}

#[test]
fn a_killed_server_keeps_the_answers_and_says_who_never_answered() {
    let mut server = Server::start(true);
    let (cwd, _) = bootstrap_admin(&server);
    let _fast = start(&server, cwd.path(), "web-1");
    let _slow = start(&server, cwd.path(), "web-2");
    online(&server, cwd.path(), &["web-1", "web-2"]);
    // web-1 answers at once, web-2 after 30 s: the server is killed between.
    let run = admin(&server, cwd.path(), 5, &["exec", "--async", "--", "true"]);
    assert!(run.success(), "{run:?}");
    let quick = run.stdout.trim().to_owned();
    let slow = admin(&server, cwd.path(), 5, &["-i", "web-2", "exec", "--async", "--", "sleep", "30"]);
    assert!(slow.success(), "{slow:?}");
    let slow = slow.stdout.trim().to_owned();
    // Both of the quick job's answers arrive; 300 ms later, SIGKILL.
    let answered = wait_until(Duration::from_secs(5), || {
        server.log().lines().filter(|l| l.contains("answer routed") && l.contains(&quick)).count() == 2
    });
    assert!(answered, "{}", server.log());
    std::thread::sleep(Duration::from_millis(300));
    server.process.kill();
    server.restart();
    let shown = admin(&server, cwd.path(), 5, &["job", &quick, "--json"]);
    let detail: serde_json::Value = serde_json::from_str(&shown.stdout).unwrap_or_else(|e| panic!("{e}: {shown:?}"));
    assert_eq!(detail["answers"].as_array().map(Vec::len), Some(2), "answers lost by the kill: {detail}");
    let shown = admin(&server, cwd.path(), 5, &["job", &slow]);
    assert!(shown.stdout.contains("web-2: no answer (server restarted)"), "{shown:?}");
    assert_eq!(shown.code, Some(1));
}

#[test]
fn old_jobs_are_pruned() {
    let server = Server::start_with(true, "jobs:\n  keep: 2s\n");
    let (cwd, _) = bootstrap_admin(&server);
    let run = admin(&server, cwd.path(), 5, &["client:token"]);
    assert!(run.success());
    // The token's job (and the first admin's signing key's).
    assert!(jobs_json(&server, cwd.path(), &[]).iter().any(|j| j["command"] == "CreateToken"));
    let gone = wait_until(Duration::from_secs(20), || jobs_json(&server, cwd.path(), &[]).is_empty());
    assert!(gone, "the job was not pruned: {:?}", jobs_json(&server, cwd.path(), &[]));
}
