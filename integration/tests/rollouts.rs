//! Rolling out safely (issue 24), on the real binaries: batches and a
//! failure budget run by the server, pause, resume, abort, cancel (the
//! processes gone), a server SIGKILLed between batches, re-runs, grouped
//! output, and every agent in exactly one final state.
//!
//! Every agent runs `sh` that appends its identity to one file: the file
//! says which agents ran, and how many times.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use pantry_integration::curve::{recv_for, send};
use pantry_integration::{bin, wait_for_status, wait_until, AdminRun, Agent, AgentSpec, Server};
use serde_json::Value;

const WAIT: Duration = Duration::from_secs(15);

fn agents(server: &Server, ids: &[String]) -> Vec<Agent> {
    let started: Vec<Agent> =
        ids.iter().map(|id| Agent::start(server, AgentSpec::new(id, "shop", "prod", &["web"]))).collect();
    let want: Vec<&str> = ids.iter().map(String::as_str).collect();
    assert!(wait_for_status(server, server.dir.path(), &["--timeout", "2"], &want, WAIT), "{}", server.log());
    started
}

fn names(prefix: &str, n: usize) -> Vec<String> {
    (1..=n).map(|i| format!("{prefix}-{i:02}")).collect()
}

fn admin(server: &Server, args: &[&str]) -> AdminRun {
    server.admin(args)
}

/// The identities that ran, one line each run.
fn ran(file: &Path) -> Vec<String> {
    std::fs::read_to_string(file).unwrap_or_default().lines().map(str::to_owned).collect()
}

/// `sh` that records the agent, then fails on the identities in `failing`.
fn recording(file: &Path, failing: &str) -> String {
    format!("echo $PANTRY_IDENTITY >> {}; case $PANTRY_IDENTITY in {failing}) exit 1;; esac", file.display())
}

fn job_json(server: &Server, id: &str) -> Value {
    let shown = admin(server, &["job", id, "--json"]);
    serde_json::from_str(&shown.stdout).unwrap_or_else(|e| panic!("{e}: {shown:?}"))
}

fn states(job: &Value) -> Vec<(String, String)> {
    let agents = job["agents"].as_array().cloned().unwrap_or_default();
    agents.iter().map(|a| (a["identity"].as_str().unwrap_or("").to_owned(), a["state"].to_string())).collect()
}

fn job_state(server: &Server, id: &str) -> String {
    job_json(server, id)["state"].as_str().unwrap_or("").to_owned()
}

fn async_id(run: &AdminRun) -> String {
    assert!(run.success(), "{run:?}");
    run.stdout.trim().to_owned()
}

#[test]
fn a_rollout_stops_after_the_batch_that_crossed_the_budget_and_reruns() {
    let server = Server::start(false);
    let ids = names("r", 12);
    let _agents = agents(&server, &ids);
    let file = server.dir.path().join("ran");
    let sh = recording(&file, "r-04|r-05|r-06|r-07");
    let run = admin(&server, &["-a", "shop", "exec", "--batch", "3", "--max-fail", "2", "--shell", "--", &sh]);
    assert_eq!(run.code, Some(1), "{run:?}");
    assert!(run.stderr.contains("12 targeted: 3 ok, 3 failed, 6 skipped"), "{run:?}");
    assert!(run.stderr.contains("batch 2/4"), "{run:?}");
    assert!(!run.stderr.contains("batch 3/4"), "no batch after the one that crossed the budget: {run:?}");
    let mut which = ran(&file);
    which.sort();
    assert_eq!(which, ids[..6], "only the first two batches ran, once each");

    let jobs = admin(&server, &["jobs", "--json"]);
    let list: Value = serde_json::from_str(&jobs.stdout).unwrap();
    let job = &list[0];
    assert_eq!((job["command"].as_str(), job["state"].as_str()), (Some("Exec"), Some("aborted")), "{job}");
    assert_eq!(
        (job["answered"].as_u64(), job["pending"].as_u64()),
        (Some(6), Some(0)),
        "skipped is not pending: {job}"
    );
    let id = job["id"].as_str().unwrap().to_owned();
    let detail = job_json(&server, &id);
    assert_eq!(detail["batches"].as_array().map(Vec::len), Some(4), "{detail}");
    assert_eq!(detail["rollout"]["max_fail"], serde_json::json!({"count": 2}), "{detail}");
    let table = admin(&server, &["jobs"]);
    assert!(table.stdout.contains("STATE") && table.stdout.contains("aborted"), "{table:?}");

    // Again on the skipped ones, with a budget big enough: r-07 fails again.
    let again = admin(&server, &["exec", "--from-job", &id, "--state", "skipped", "--max-fail", "10"]);
    assert_eq!(again.code, Some(1), "{again:?}");
    assert!(again.stderr.contains("6 targeted: 5 ok, 1 failed"), "{again:?}");
    let mut which = ran(&file);
    which.sort();
    assert_eq!(which, ids, "every agent ran once in all");
    let list: Value = serde_json::from_str(&admin(&server, &["jobs", "--json"]).stdout).unwrap();
    let rerun = job_json(&server, list[0]["id"].as_str().unwrap());
    assert_eq!(rerun["rerun_of"].as_str(), Some(id.as_str()), "{rerun}");
    assert_eq!(rerun["arguments"]["program"], detail["arguments"]["program"]);

    // Every state but ok by default, in the job's batches of 3: four fail
    // again, within a budget given anew.
    let failed_again = admin(&server, &["exec", "--from-job", &id, "--group", "--max-fail", "5"]);
    assert_eq!(failed_again.code, Some(1), "{failed_again:?}");
    assert!(failed_again.stderr.contains("9 targeted: 5 ok, 4 failed"), "{failed_again:?}");
    assert!(failed_again.stdout.contains("==> r-[08-12] (5): exit 0"), "{failed_again:?}");
    assert!(failed_again.stdout.contains("==> r-[04-07] (4): exit 1"), "{failed_again:?}");
}

#[test]
fn bad_rollout_options_exit_2_naming_the_option() {
    for (args, option) in [
        (&["--batch", "0"][..], "--batch"),
        (&["--batch", "0%"], "--batch"),
        (&["--max-fail", "-1"], "--max-fail"),
        (&["--batch-wait", "soon"], "--batch-wait"),
    ] {
        let mut all = vec!["exec"];
        all.extend_from_slice(args);
        all.extend_from_slice(&["--", "true"]);
        let out = Command::new(bin("pantry-admin")).args(&all).stdin(Stdio::null()).output().unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {stderr}");
        assert!(stderr.contains(option), "{args:?}: {stderr}");
    }
}

#[test]
fn pause_resume_abort_and_control_refusals() {
    let server = Server::start(false);
    let ids = names("p", 6);
    let _agents = agents(&server, &ids);
    let file = server.dir.path().join("ran");
    let sh = recording(&file, "none");
    let start =
        || async_id(&admin(&server, &["exec", "--batch", "2", "--batch-wait", "3s", "--async", "--shell", "--", &sh]));

    let id = start();
    let paused = admin(&server, &["job", "pause", &id]);
    assert!(paused.success() && paused.stdout.contains("paused"), "{paused:?}");
    assert_eq!(job_state(&server, &id), "paused");
    let before = ran(&file).len();
    assert!(before <= 2, "at most the first batch: {before}");
    std::thread::sleep(Duration::from_secs(4));
    assert_eq!(ran(&file).len(), before, "no batch starts while paused");
    let table = admin(&server, &["jobs"]);
    assert!(table.stdout.contains("paused"), "{table:?}");
    let resumed = admin(&server, &["job", "resume", &id]);
    assert!(resumed.success(), "{resumed:?}");
    let waited = admin(&server, &["job", &id, "--wait", "--timeout", "30"]);
    assert!(waited.success(), "{waited:?}");
    assert!(waited.stderr.contains("6 targeted: 6 ok"), "{waited:?}");
    assert_eq!(ran(&file).len(), 6);

    // A finished job cannot be paused; an unknown one is unknown.
    let finished = admin(&server, &["job", "pause", &id]);
    assert_eq!(finished.code, Some(1), "{finished:?}");
    assert!(finished.stderr.contains("finished"), "{finished:?}");
    let unknown = admin(&server, &["job", "pause", "no-such-job"]);
    assert_eq!(unknown.code, Some(1), "{unknown:?}");
    assert!(unknown.stderr.contains("no job no-such-job"), "{unknown:?}");
    let unknown = admin(&server, &["job", "no-such-job"]);
    assert_eq!(unknown.code, Some(1), "{unknown:?}");

    // Abort: no new agent starts; the rest are skipped.
    std::fs::remove_file(&file).unwrap();
    let id = start();
    assert!(wait_until(WAIT, || ran(&file).len() >= 2), "first batch did not run");
    let aborted = admin(&server, &["job", "abort", &id]);
    assert!(aborted.success(), "{aborted:?}");
    let waited = admin(&server, &["job", &id, "--wait", "--timeout", "30"]);
    assert_eq!(waited.code, Some(1), "{waited:?}");
    let ran_now = ran(&file).len();
    assert!(waited.stderr.contains(&format!("6 targeted: {ran_now} ok, {} skipped", 6 - ran_now)), "{waited:?}");
    assert_eq!(job_state(&server, &id), "aborted");
    std::thread::sleep(Duration::from_secs(4));
    assert_eq!(ran(&file).len(), ran_now, "nothing started after the abort");
    let audit = std::fs::read_to_string(server.root_dir().join("audit.log")).unwrap_or_default();
    assert!(audit.lines().any(|l| l.contains("JobControl") && l.contains(&id)), "control is audited");
}

fn alive(pid: u32) -> bool {
    // A zombie is gone as far as the operator cares: it runs nothing.
    std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|s| !s.contains(") Z "))
}

fn pids(file: &Path) -> Vec<u32> {
    ran(file).iter().filter_map(|l| l.split_whitespace().nth(1)?.parse().ok()).collect()
}

#[test]
fn cancel_kills_the_processes_and_skips_the_rest() {
    let server = Server::start(false);
    let ids = names("c", 4);
    let _agents = agents(&server, &ids);
    let file = server.dir.path().join("pids");
    // Each agent's shell records itself, then becomes `sleep 600`.
    let sh = format!("echo $PANTRY_IDENTITY $$ >> {}; exec sleep 600", file.display());

    let id = async_id(&admin(&server, &["exec", "--async", "--shell", "--", &sh]));
    assert!(wait_until(WAIT, || pids(&file).len() == 4), "not all started: {:?}", ran(&file));
    let started = Instant::now();
    let cancelled = admin(&server, &["job", "cancel", &id, "--grace", "1s"]);
    assert!(cancelled.success() && cancelled.stdout.contains("cancelled on 4 running agents"), "{cancelled:?}");
    assert!(wait_until(Duration::from_secs(3), || pids(&file).iter().all(|p| !alive(*p))), "still running");
    eprintln!("cancel: every process gone {} ms after `job cancel`", started.elapsed().as_millis());
    let waited = admin(&server, &["job", &id, "--wait", "--timeout", "10"]);
    assert!(waited.stderr.contains("4 targeted: 4 cancelled"), "{waited:?}");
    assert_eq!(job_state(&server, &id), "cancelled");

    // A rollout: the batch running is cancelled, the rest skipped.
    std::fs::remove_file(&file).unwrap();
    let id = async_id(&admin(&server, &["exec", "--batch", "2", "--async", "--shell", "--", &sh]));
    assert!(wait_until(WAIT, || pids(&file).len() == 2), "first batch did not start");
    let cancelled = admin(&server, &["job", "cancel", &id]);
    assert!(cancelled.success(), "{cancelled:?}");
    assert!(wait_until(Duration::from_secs(3), || pids(&file).iter().all(|p| !alive(*p))), "still running");
    let waited = admin(&server, &["job", &id, "--wait", "--timeout", "10"]);
    assert!(waited.stderr.contains("4 targeted: 2 cancelled, 2 skipped"), "{waited:?}");

    // A Cancel is the server's to send: an admin's is refused.
    let ctx = zmq::Context::new();
    let dealer = ctx.socket(zmq::DEALER).unwrap();
    dealer.connect(&format!("tcp://127.0.0.1:{}", server.ports.receive)).unwrap();
    let cancel = pantry_shared::commands::cancel::CancelRequest { job: id.clone(), grace_ms: 0, identities: vec![] };
    let mut forged = pantry_shared::commands::cancel::request(&cancel, "c-01", "admin");
    forged.metadata.requires_response = true;
    send(&dealer, &forged);
    let refused = recv_for(&dealer, forged.uuid(), WAIT).expect("an answer");
    assert!(refused.error().is_some_and(|e| e.contains("sent by the server")), "{refused:?}");

    // Without a terminal, SIGINT cancels the job the admin waits for...
    std::fs::remove_file(&file).unwrap();
    let waiting = spawn_admin(&server, &["exec", "--shell", "--", &sh]);
    assert!(wait_until(WAIT, || pids(&file).len() == 4), "not all started");
    signal(&waiting, libc::SIGINT);
    let out = waiting.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("4 targeted: 4 cancelled"), "{stderr}");
    assert!(pids(&file).iter().all(|p| !alive(*p)));

    // ... and SIGTERM leaves it running.
    std::fs::remove_file(&file).unwrap();
    let waiting = spawn_admin(&server, &["exec", "-i", "c-01", "--shell", "--", &sh]);
    assert!(wait_until(WAIT, || pids(&file).len() == 1), "did not start");
    signal(&waiting, libc::SIGTERM);
    let out = waiting.wait_with_output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    assert!(pids(&file).iter().all(|p| alive(*p)), "detaching left the job running");
    assert!(admin(&server, &["job", "cancel", &stdout]).success(), "the job id was printed: {stdout}");
}

fn spawn_admin(server: &Server, args: &[&str]) -> std::process::Child {
    let mut all: Vec<String> = server.ports.admin_args_on(&[&server.host]);
    all.extend(args.iter().map(|a| a.to_string()));
    Command::new(bin("pantry-admin"))
        .args(&all)
        .current_dir(server.dir.path())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start pantry-admin")
}

fn signal(child: &std::process::Child, signal: i32) {
    // SAFETY: kill(2) with a child's pid and a signal number has no memory
    // effects.
    let rc = unsafe { libc::kill(child.id() as i32, signal) };
    assert_eq!(rc, 0);
}

#[test]
fn a_rollout_survives_its_server_being_killed_between_batches() {
    let mut server = Server::start(false);
    let ids = names("k", 9);
    let _agents = agents(&server, &ids);
    let file = server.dir.path().join("ran");
    let sh = recording(&file, "none");
    let id =
        async_id(&admin(&server, &["exec", "--batch", "3", "--batch-wait", "3s", "--async", "--shell", "--", &sh]));
    assert!(
        wait_until(WAIT, || server.log().contains("rollout batch ended") && ran(&file).len() == 3),
        "first batch did not end"
    );
    server.kill_and_restart();
    assert!(server.process.wait_for_log("rollout resumed", WAIT), "{}", server.log());
    let waited = admin(&server, &["job", &id, "--wait", "--timeout", "60"]);
    let mut which = ran(&file);
    which.sort();
    assert_eq!(which, ids, "every agent ran exactly once: {waited:?}");
    assert_eq!(job_state(&server, &id), "done", "{waited:?}");
    let all: Vec<(String, String)> = states(&job_json(&server, &id));
    assert_eq!(all.len(), 9);
    // An answer of the first batch the store had not committed when the
    // server died is no-answer; every other agent is ok.
    assert!(all.iter().all(|(_, s)| s == "\"ok\"" || s == "\"no-answer\""), "{all:?}");
    assert!(all[3..].iter().all(|(_, s)| s == "\"ok\""), "{all:?}");
}

#[test]
fn every_state_is_reachable_and_counted() {
    let server = Server::start(false);
    let mut all: Vec<Agent> = agents(&server, &["s-ok".into(), "s-fail".into(), "s-slow".into()]);
    let mut refusing = AgentSpec::new("s-refuse", "shop", "prod", &["web"]);
    refusing.client_extra = "  allow_exec: false\n".into();
    all.push(Agent::start(&server, refusing));
    all.push(Agent::start(&server, AgentSpec::new("s-stopped", "shop", "prod", &["web"])));
    all.push(Agent::start(&server, AgentSpec::new("s-gone", "shop", "prod", &["web"])));
    let every = ["s-ok", "s-fail", "s-slow", "s-refuse", "s-stopped", "s-gone"];
    assert!(wait_for_status(&server, server.dir.path(), &["--timeout", "2"], &every, WAIT), "{}", server.log());
    all[5].process.kill();
    let online = ["s-ok", "s-fail", "s-slow", "s-refuse", "s-stopped"];
    assert!(wait_for_status(&server, server.dir.path(), &["--timeout", "2"], &online, WAIT), "s-gone still online");
    let stopped = all[4].process.pid().expect("pid");
    // SAFETY: as in `signal`.
    assert_eq!(unsafe { libc::kill(stopped as i32, libc::SIGSTOP) }, 0);

    let sh = "case $PANTRY_IDENTITY in s-fail) exit 3;; s-slow) sleep 30;; esac";
    let run =
        admin(&server, &["--timeout", "2", "-a", "shop", "exec", "--timeout", "1", "--json", "--shell", "--", sh]);
    assert_eq!(run.code, Some(1), "{run:?}");
    assert!(run.stderr.contains("6 targeted: 1 ok, 1 failed, 1 timeout, 1 no-answer, 1 offline, 1 refused"), "{run:?}");
    let json: Value = serde_json::from_str(&run.stdout).unwrap();
    let by_agent: Vec<(String, String)> = states(&json);
    let want = [
        ("s-fail", "failed"),
        ("s-gone", "offline"),
        ("s-ok", "ok"),
        ("s-refuse", "refused"),
        ("s-slow", "timeout"),
        ("s-stopped", "no-answer"),
    ];
    let want: Vec<(String, String)> = want.iter().map(|(i, s)| (i.to_string(), format!("\"{s}\""))).collect();
    assert_eq!(by_agent, want);
    // The job store says the same, once the deadline is past.
    let list: Value = serde_json::from_str(&admin(&server, &["jobs", "--json"]).stdout).unwrap();
    let id = list[0]["id"].as_str().unwrap().to_owned();
    assert!(wait_until(WAIT, || states(&job_json(&server, &id)) == want), "{}", job_json(&server, &id));
    // cancelled and skipped: in `cancel_kills_the_processes_and_skips_the_rest`.

    // --group folds identical answers.
    let grouped = admin(&server, &["-i", "s-ok,s-fail,s-slow,s-refuse", "echo", "--group", "hi"]);
    assert!(grouped.success(), "{grouped:?}");
    assert!(grouped.stdout.contains("==> s-fail,s-ok,s-refuse,s-slow (4): ok\nhi\n"), "{grouped:?}");
    let job_grouped = admin(&server, &["job", &id, "--group"]);
    assert!(job_grouped.stdout.contains("==> s-gone (1): offline"), "{job_grouped:?}");
}

#[test]
fn canary_random_order_and_upload_rollouts() {
    let server = Server::start(false);
    let ids = names("u", 5);
    let _agents = agents(&server, &ids);
    // A canary of 1, then halves of the rest, in an order of the seed's.
    let run = admin(&server, &["echo", "--canary", "1", "--batch", "50%", "--order", "random", "hi"]);
    assert!(run.success(), "{run:?}");
    assert!(run.stderr.contains("batch 1/3: 1 agents") && run.stderr.contains("batch 3/3"), "{run:?}");
    assert!(run.stderr.contains("5 targeted: 5 ok"), "{run:?}");
    let list: Value = serde_json::from_str(&admin(&server, &["jobs", "--json"]).stdout).unwrap();
    let job = job_json(&server, list[0]["id"].as_str().unwrap());
    assert_ne!(job["rollout"]["seed"].as_u64().unwrap_or(0), 0, "the seed is recorded: {job}");
    assert_eq!(job["rollout"]["order"], "random");

    // An upload rollout: the admin serves the file to each batch.
    let local = server.dir.path().join("payload");
    std::fs::write(&local, b"rolled out\n").unwrap();
    let target = tempfile::tempdir().unwrap();
    // Both agents are on this machine: the same path, written twice.
    let remote = target.path().join("copy").to_str().unwrap().to_owned();
    let run = admin(&server, &["-i", "u-01,u-02", "upload", "--batch", "1", local.to_str().unwrap(), &remote]);
    assert!(run.success(), "{run:?}");
    assert!(run.stderr.contains("2 targeted: 2 ok") && run.stderr.contains("batch 2/2"), "{run:?}");
    assert_eq!(std::fs::read(&remote).unwrap(), b"rolled out\n");
}
