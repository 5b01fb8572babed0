//! Remote execution, file transfer and application config end to end
//! (issue 5), over CURVE, with the real binaries on loopback.
//!
//! Every test starts its own server, enrolls an admin by trust on first use
//! and its agents with `client:create`:
//!
//! - `exec` on three agents: answers under `==> identity: status` headers,
//!   the summary, failures, a time limit that kills the process (group), and
//!   `--json`; an agent with `allow_exec: false` refuses;
//! - `upload` of a 200 MiB generated file to two agents: identical SHA-256 at
//!   both destinations and the source, and the admin's and agents' peak RSS
//!   well under the file size;
//! - `upload --timeout` counts waiting for the server and the agents, not
//!   hashing the local file first;
//! - killing the server mid-transfer leaves neither the file nor the agent's
//!   temporary file behind;
//! - `edit` with `EDITOR` scripts that write invalid and valid YAML, `app:show`,
//!   and `edit` without `-a`.
//!
//! The agents all run on this machine, so one absolute REMOTE_PATH would be
//! one file for both. The upload test therefore starts each agent in its own
//! temporary directory and uploads to `/proc/self/cwd/NAME`: an absolute path
//! that each agent resolves to its own directory.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{BufWriter, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use pantry_integration::curve::{bootstrap_admin, create_named_client, KEYS};
use pantry_integration::{bin, wait_for_status, wait_until, AdminRun, Agent, AgentSpec, Server};
use tempfile::TempDir;

const MIB: u64 = 1024 * 1024;
/// How long agents may take to show up in `status`.
const AGENTS_WAIT: Duration = Duration::from_secs(15);

// ---------------------------------------------------------------------------
// CURVE enrollment (as in tests/curve.rs)
// ---------------------------------------------------------------------------

/// A harness agent enrolled with fresh keys.
fn enrolled_agent(server: &Server, cwd: &Path, identity: &str, application: &str) -> Agent {
    let mut spec = AgentSpec::new(identity, application, "test", &["worker"]);
    spec.client_keys_yaml = Some(create_named_client(server, cwd, identity));
    Agent::start(server, spec)
}

/// Waits until `status` lists exactly `identities`.
fn assert_agents_up(server: &Server, cwd: &Path, identities: &[&str], logs: &[String]) {
    assert!(
        wait_for_status(server, cwd, &["--curve-key-file", KEYS, "--timeout", "2"], identities, AGENTS_WAIT),
        "agents {identities:?} never all appeared in status\nserver log:\n{}\nagent logs:\n{}",
        server.log(),
        logs.join("\n-----\n")
    );
}

// ---------------------------------------------------------------------------
// Agents the harness cannot start: another working directory, extra config
// ---------------------------------------------------------------------------

/// A `pantry-client` started here rather than by the harness, so that its
/// `client:` section may hold more keys (`allow_exec: false`) and its working
/// directory is its own temporary directory.
struct OwnAgent {
    dir: TempDir,
    child: Option<Child>,
    log_path: PathBuf,
}

impl OwnAgent {
    fn start(server: &Server, keys_yaml: &str, identity: &str, application: &str, extra_client_yaml: &str) -> OwnAgent {
        let dir = tempfile::tempdir().expect("temp dir");
        let root = dir.path().join("root");
        let curve = root.join("security/curve");
        std::fs::create_dir_all(&curve).expect("create curve dir");
        std::fs::write(curve.join("client_keys.yml"), keys_yaml).expect("write client_keys.yml");
        let config = format!(
            "log_level: debug\nroot_dir: {}\n{}client:\n  identity: {identity}\n  heartbeat_interval: 1\n  \
             application: {application}\n  environment: test\n  roles: [worker]\n{extra_client_yaml}",
            root.display(),
            server.ports.networking_yaml(true),
        );
        let config_path = dir.path().join("client.yml");
        std::fs::write(&config_path, config).expect("write client.yml");
        let log_path = dir.path().join("client.log");
        let log = File::create(&log_path).expect("create log file");
        let child = Command::new(bin("pantry-client"))
            .arg("-c")
            .arg(&config_path)
            .current_dir(dir.path())
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("clone log file"))
            .stderr(log)
            .spawn()
            .expect("start pantry-client");
        OwnAgent { dir, child: Some(child), log_path }
    }

    fn pid(&self) -> u32 {
        self.child.as_ref().map(Child::id).expect("agent running")
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log_path).unwrap_or_default()
    }
}

impl Drop for OwnAgent {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

// ---------------------------------------------------------------------------
// Running pantry-admin: bounded, with environment, with peak RSS
// ---------------------------------------------------------------------------

/// `pantry-admin` against `server` from `cwd` with the admin's CURVE keys,
/// `args` after them. `VISUAL` and `EDITOR` are removed from its environment.
fn admin_command(server: &Server, cwd: &Path, args: &[&str]) -> Command {
    let mut command = Command::new(bin("pantry-admin"));
    command
        .args(server.ports.admin_args())
        .args(["--curve-key-file", KEYS])
        .args(args)
        .current_dir(cwd)
        .stdin(Stdio::null())
        .env_remove("VISUAL")
        .env_remove("EDITOR");
    command
}

/// Peak resident set size (`VmHWM`) of a live process, in KiB.
fn vm_hwm_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

/// A spawned command whose output goes to files and whose peak RSS is
/// sampled every 20 ms; reaped with wait4(2) for its exact `ru_maxrss`.
struct Watched {
    pid: i32,
    started: Instant,
    out_dir: TempDir,
    /// Largest `VmHWM` seen while it ran (KiB).
    sampled_peak_kib: u64,
    /// Raw wait status, once reaped.
    status: Option<i32>,
    /// `ru_maxrss` from wait4 (KiB), once reaped.
    maxrss_kib: u64,
    what: String,
}

/// How a [`Watched`] command ended.
struct Finished {
    run: AdminRun,
    elapsed: Duration,
    /// The larger of the sampled `VmHWM` and `ru_maxrss` (KiB).
    peak_kib: u64,
}

impl Watched {
    fn spawn(mut command: Command) -> Watched {
        let what = format!("{command:?}");
        let out_dir = tempfile::tempdir().expect("temp dir");
        let stdout = File::create(out_dir.path().join("stdout")).expect("stdout file");
        let stderr = File::create(out_dir.path().join("stderr")).expect("stderr file");
        let started = Instant::now();
        let child = command.stdout(stdout).stderr(stderr).spawn().unwrap_or_else(|e| panic!("cannot run {what}: {e}"));
        // Reaped below with wait4, not through `Child`.
        let pid = child.id() as i32;
        drop(child);
        Watched { pid, started, out_dir, sampled_peak_kib: 0, status: None, maxrss_kib: 0, what }
    }

    /// Samples the peak RSS and reaps the process if it exited; true once
    /// it has.
    fn poll(&mut self) -> bool {
        if self.status.is_some() {
            return true;
        }
        if let Some(kib) = vm_hwm_kib(self.pid as u32) {
            self.sampled_peak_kib = self.sampled_peak_kib.max(kib);
        }
        let mut status = 0;
        // SAFETY: wait4 on our own child, with valid pointers.
        let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
        let reaped = unsafe { libc::wait4(self.pid, &mut status, libc::WNOHANG, &mut usage) };
        if reaped == self.pid {
            self.status = Some(status);
            self.maxrss_kib = usage.ru_maxrss as u64;
            return true;
        }
        false
    }

    /// Polls every 20 ms (calling `tick` each time) until the process exits;
    /// kills it and panics after `limit`.
    fn wait(mut self, limit: Duration, mut tick: impl FnMut()) -> Finished {
        while !self.poll() {
            if self.started.elapsed() > limit {
                let so_far = self.output();
                panic!("{} did not finish within {limit:?}; output so far: {so_far:#?}", self.what);
            }
            tick();
            std::thread::sleep(Duration::from_millis(20));
        }
        let elapsed = self.started.elapsed();
        Finished { run: self.output(), elapsed, peak_kib: self.sampled_peak_kib.max(self.maxrss_kib) }
    }

    fn output(&self) -> AdminRun {
        let read = |name: &str| std::fs::read_to_string(self.out_dir.path().join(name)).unwrap_or_default();
        let code = self.status.filter(|s| libc::WIFEXITED(*s)).map(|s| libc::WEXITSTATUS(s));
        AdminRun { code, stdout: read("stdout"), stderr: read("stderr") }
    }
}

impl Drop for Watched {
    fn drop(&mut self) {
        if self.status.is_none() {
            // SAFETY: signalling and reaping our own child.
            unsafe {
                libc::kill(self.pid, libc::SIGKILL);
                let mut status = 0;
                libc::waitpid(self.pid, &mut status, 0);
            }
        }
    }
}

/// Runs `pantry-admin` (see [`admin_command`]); it must exit within `limit`.
fn admin(server: &Server, cwd: &Path, args: &[&str], limit: Duration) -> Finished {
    Watched::spawn(admin_command(server, cwd, args)).wait(limit, || {})
}

// ---------------------------------------------------------------------------
// exec
// ---------------------------------------------------------------------------

/// `identity → status` from the `==> identity: status` header lines.
fn headers(stdout: &str) -> BTreeMap<String, String> {
    stdout
        .lines()
        .filter_map(|l| l.strip_prefix("==> "))
        .filter_map(|l| l.split_once(": "))
        .map(|(id, status)| (id.to_owned(), status.to_owned()))
        .collect()
}

/// This machine's node name, as the agents' `uname -n` prints it.
fn node_name() -> String {
    let out = Command::new("uname").arg("-n").output().expect("run uname -n");
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

/// Processes whose command line is exactly `argv`.
fn processes_running(argv: &[&str]) -> Vec<u32> {
    let want: Vec<u8> = argv.iter().flat_map(|a| a.bytes().chain([0])).collect();
    let Ok(entries) = std::fs::read_dir("/proc") else { return Vec::new() };
    entries
        .filter_map(Result::ok)
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| std::fs::read(format!("/proc/{pid}/cmdline")).is_ok_and(|c| c == want))
        .collect()
}

#[test]
fn exec_on_three_agents_answers_fails_times_out_and_speaks_json() {
    let server = Server::start(true);
    let cwd = bootstrap_admin(&server).0;
    let ids = ["exec-1", "exec-2", "exec-3"];
    let agents: Vec<Agent> = ids.iter().map(|id| enrolled_agent(&server, cwd.path(), id, "app")).collect();
    let logs = || agents.iter().map(Agent::log).collect::<Vec<_>>();
    assert_agents_up(&server, cwd.path(), &ids, &logs());
    let host = node_name();
    let all_with = |status: &str| ids.iter().map(|id| (id.to_string(), status.to_owned())).collect::<BTreeMap<_, _>>();

    // Three answers, exit 0 each, the node name under each header.
    let done = admin(
        &server,
        cwd.path(),
        &["--timeout", "10", "exec", "--timeout", "5", "--", "uname", "-n"],
        Duration::from_secs(30),
    );
    let run = &done.run;
    assert!(run.success(), "exec -- uname -n failed: {run:#?}\nagent logs:\n{:#?}", logs());
    assert_eq!(headers(&run.stdout), all_with("exit 0"), "stdout:\n{}", run.stdout);
    assert_eq!(run.stdout.lines().filter(|l| *l == host).count(), 3, "node name {host:?} not thrice:\n{}", run.stdout);
    assert!(run.stderr.lines().any(|l| l == "3 of 3 clients answered"), "stderr: {}", run.stderr);

    // A failing program: non-zero, and the failures are named and counted.
    let done = admin(
        &server,
        cwd.path(),
        &["--timeout", "10", "exec", "--timeout", "5", "--", "false"],
        Duration::from_secs(30),
    );
    let run = &done.run;
    assert_eq!(run.code, Some(1), "exec -- false: {run:#?}");
    assert_eq!(headers(&run.stdout), all_with("exit 1"), "stdout:\n{}", run.stdout);
    assert!(run.stderr.lines().any(|l| l == "3 of 3 clients answered, 3 failed"), "stderr: {}", run.stderr);

    // The time limit kills the program and is reported as a timeout, fast.
    let args = ["--timeout", "10", "exec", "--timeout", "1", "--", "sleep", "30"];
    let done = admin(&server, cwd.path(), &args, Duration::from_secs(30));
    let run = &done.run;
    assert!(done.elapsed < Duration::from_secs(10), "exec --timeout 1 took {:?}: {run:#?}", done.elapsed);
    assert_eq!(run.code, Some(1), "exec --timeout 1 -- sleep 30: {run:#?}");
    let statuses = headers(&run.stdout);
    assert_eq!(statuses.keys().collect::<Vec<_>>(), ids.iter().collect::<Vec<_>>(), "stdout:\n{}", run.stdout);
    assert!(statuses.values().all(|s| s.contains("timed out")), "not all timed out:\n{}", run.stdout);
    assert!(run.stderr.lines().any(|l| l == "3 of 3 clients answered, 3 failed"), "stderr: {}", run.stderr);
    let exec_timeout_elapsed = done.elapsed;

    // Through a shell the program is a grandchild: the process-group kill
    // must reach it too.
    let args = ["--timeout", "10", "exec", "--shell", "--timeout", "1", "--", "sleep 30.25;", "echo never"];
    let done = admin(&server, cwd.path(), &args, Duration::from_secs(30));
    let run = &done.run;
    assert!(done.elapsed < Duration::from_secs(10), "exec --shell --timeout 1 took {:?}: {run:#?}", done.elapsed);
    assert_eq!(run.code, Some(1), "exec --shell --timeout 1: {run:#?}");
    assert!(headers(&run.stdout).values().all(|s| s.contains("timed out")), "stdout:\n{}", run.stdout);
    assert_eq!(headers(&run.stdout).len(), 3, "stdout:\n{}", run.stdout);
    assert!(!run.stdout.contains("never"), "the shell went on after the time limit:\n{}", run.stdout);
    assert!(
        wait_until(Duration::from_secs(3), || processes_running(&["sleep", "30.25"]).is_empty()),
        "`sleep 30.25` survived the time limit: pids {:?}",
        processes_running(&["sleep", "30.25"])
    );

    // --json parses, with one result per agent and nothing failed or missing.
    let args = ["--timeout", "10", "exec", "--timeout", "5", "--json", "--", "uname", "-n"];
    let done = admin(&server, cwd.path(), &args, Duration::from_secs(30));
    let run = &done.run;
    assert!(run.success(), "exec --json failed: {run:#?}");
    let json: serde_json::Value =
        serde_json::from_str(&run.stdout).unwrap_or_else(|e| panic!("exec --json is not JSON ({e}):\n{}", run.stdout));
    let answers = json["answers"].as_array().unwrap_or_else(|| panic!("no answers array: {json}"));
    let mut answered: Vec<&str> = answers.iter().filter_map(|a| a["identity"].as_str()).collect();
    answered.sort();
    assert_eq!(answered, ids, "{json}");
    for answer in answers {
        assert_eq!(answer["result"]["exit_code"], 0, "{answer}");
        assert_eq!(answer["result"]["timed_out"], false, "{answer}");
        assert_eq!(answer["result"]["stdout"].as_str().map(str::trim), Some(host.as_str()), "{answer}");
    }
    assert_eq!(json["failed"], serde_json::json!([]), "{json}");
    assert_eq!(json["missing"], serde_json::json!([]), "{json}");
    eprintln!("exec --timeout 1 -- sleep 30 on 3 agents: admin finished in {exec_timeout_elapsed:?}");

    // A running program holds up neither other commands nor heartbeats.
    let args = ["--timeout", "10", "exec", "--timeout", "10", "--", "sleep", "3"];
    let mut sleeping = Watched::spawn(admin_command(&server, cwd.path(), &args));
    std::thread::sleep(Duration::from_millis(500));
    let echo = admin(&server, cwd.path(), &["--timeout", "5", "echo", "meanwhile"], Duration::from_secs(10));
    assert!(echo.run.success(), "echo while exec runs failed: {:#?}", echo.run);
    assert!(echo.elapsed < Duration::from_millis(2000), "echo while exec runs took {:?}", echo.elapsed);
    for id in ids {
        let line = format!("{id}: meanwhile");
        assert!(echo.run.stdout.lines().any(|l| l == line), "no `{line}`: {}", echo.run.stdout);
    }
    // Every agent keeps checking in (a RegisterClient a second) meanwhile.
    let check_ins = |id: &str| {
        let from = format!("from: {id},");
        server.log().lines().filter(|l| l.contains(&from) && l.contains("type: RegisterClient")).count()
    };
    let before: Vec<usize> = ids.iter().map(|id| check_ins(id)).collect();
    std::thread::sleep(Duration::from_millis(1500));
    let after: Vec<usize> = ids.iter().map(|id| check_ins(id)).collect();
    assert!(!sleeping.poll(), "exec -- sleep 3 ended too early: {:#?}", sleeping.output());
    assert!(before.iter().zip(&after).all(|(b, a)| a > b), "no check-ins while exec ran: {before:?} then {after:?}");
    let done = sleeping.wait(Duration::from_secs(20), || {});
    assert!(done.run.success(), "exec -- sleep 3 failed: {:#?}", done.run);
    assert_eq!(headers(&done.run.stdout), all_with("exit 0"), "stdout:\n{}", done.run.stdout);
}

#[test]
fn exec_is_refused_by_an_agent_with_allow_exec_false() {
    let server = Server::start(true);
    let cwd = bootstrap_admin(&server).0;
    let open = enrolled_agent(&server, cwd.path(), "open-agent", "open");
    let keys = create_named_client(&server, cwd.path(), "locked-agent");
    let locked = OwnAgent::start(&server, &keys, "locked-agent", "locked", "  allow_exec: false\n");
    assert_agents_up(&server, cwd.path(), &["open-agent", "locked-agent"], &[open.log(), locked.log()]);

    // Only the locked agent: it refuses, says why, and runs nothing.
    let marker_dir = tempfile::tempdir().expect("temp dir");
    let marker = marker_dir.path().join("ran");
    let marker_arg = marker.to_str().expect("utf-8 path");
    let args = ["-a", "locked", "--timeout", "10", "exec", "--timeout", "5", "--", "touch", marker_arg];
    let run = admin(&server, cwd.path(), &args, Duration::from_secs(30)).run;
    assert_eq!(run.code, Some(1), "exec on the locked agent: {run:#?}\nagent log:\n{}", locked.log());
    let refusal = run.stderr.lines().find(|l| l.starts_with("locked-agent: error:"));
    let refusal = refusal.unwrap_or_else(|| panic!("no error from locked-agent on stderr: {}", run.stderr));
    assert!(refusal.contains("allow_exec"), "the refusal does not mention allow_exec: {refusal}");
    assert!(run.stderr.lines().any(|l| l == "1 of 1 clients answered, 1 failed"), "stderr: {}", run.stderr);
    assert!(!marker.exists(), "the locked agent ran the program");

    // Both agents: the open one runs it, the locked one refuses; non-zero.
    let run = admin(
        &server,
        cwd.path(),
        &["--timeout", "10", "exec", "--timeout", "5", "--", "true"],
        Duration::from_secs(30),
    )
    .run;
    assert_eq!(run.code, Some(1), "exec on both agents: {run:#?}");
    assert_eq!(headers(&run.stdout).get("open-agent").map(String::as_str), Some("exit 0"), "stdout: {}", run.stdout);
    assert!(!headers(&run.stdout).contains_key("locked-agent"), "stdout: {}", run.stdout);
    assert!(
        run.stderr.lines().any(|l| l.starts_with("locked-agent: error:") && l.contains("allow_exec")),
        "stderr: {}",
        run.stderr
    );
    assert!(run.stderr.lines().any(|l| l == "2 of 2 clients answered, 1 failed"), "stderr: {}", run.stderr);
}

// ---------------------------------------------------------------------------
// upload
// ---------------------------------------------------------------------------

/// Writes `size` bytes from a seeded xorshift generator, 1 MiB at a time.
fn write_generated_file(path: &Path, size: u64, seed: u64) {
    let mut out = BufWriter::new(File::create(path).expect("create source file"));
    let mut state = seed | 1;
    let mut buf = vec![0u8; MIB as usize];
    let mut left = size;
    while left > 0 {
        for word in buf.chunks_exact_mut(8) {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            word.copy_from_slice(&state.to_le_bytes());
        }
        let n = left.min(MIB) as usize;
        out.write_all(&buf[..n]).expect("write source file");
        left -= n as u64;
    }
    out.flush().expect("flush source file");
}

/// SHA-256 (hex) of each file, from `sha256sum`.
fn sha256sums(paths: &[&Path]) -> Vec<String> {
    let out = Command::new("sha256sum").args(paths).output().expect("run sha256sum");
    assert!(out.status.success(), "sha256sum {paths:?}: {}", String::from_utf8_lossy(&out.stderr));
    let text = String::from_utf8_lossy(&out.stdout);
    let sums: Vec<String> = text.lines().filter_map(|l| l.split_whitespace().next()).map(str::to_owned).collect();
    assert_eq!(sums.len(), paths.len(), "sha256sum output: {text}");
    sums
}

/// The agent's temporary files for `name` in `dir`.
fn upload_temp_files(dir: &Path, name: &str) -> Vec<PathBuf> {
    let prefix = format!(".{name}.pantry-upload-");
    let Ok(entries) = std::fs::read_dir(dir) else { return Vec::new() };
    entries
        .filter_map(Result::ok)
        .filter(|e| e.file_name().to_string_lossy().starts_with(&prefix))
        .map(|e| e.path())
        .collect()
}

fn mib(kib: u64) -> f64 {
    kib as f64 / 1024.0
}

#[test]
fn upload_of_200_mib_to_two_agents_arrives_intact_in_bounded_memory() {
    const SIZE: u64 = 200 * MIB;
    const NAME: &str = "payload.bin";
    let server = Server::start(true);
    let cwd = bootstrap_admin(&server).0;
    let ids = ["upload-1", "upload-2"];
    let agents: Vec<OwnAgent> = ids
        .iter()
        .map(|id| OwnAgent::start(&server, &create_named_client(&server, cwd.path(), id), id, "files", ""))
        .collect();
    let logs = || agents.iter().map(OwnAgent::log).collect::<Vec<_>>();
    assert_agents_up(&server, cwd.path(), &ids, &logs());

    let source_dir = tempfile::tempdir().expect("temp dir");
    let source = source_dir.path().join("source.bin");
    write_generated_file(&source, SIZE, 0x5eed_1234_abcd_ef01);
    std::fs::set_permissions(&source, std::fs::Permissions::from_mode(0o640)).expect("chmod source");
    // Each agent resolves /proc/self/cwd to its own temporary directory.
    let remote = format!("/proc/self/cwd/{NAME}");
    let destinations: Vec<PathBuf> = agents.iter().map(|a| a.dir.path().join(NAME)).collect();

    // The admin's hashing of the file counts against --timeout (see the
    // report): give it room in a debug build.
    let source_arg = source.to_str().expect("utf-8 path");
    let command = admin_command(&server, cwd.path(), &["--timeout", "60", "upload", source_arg, &remote]);
    let mut transfer_started: Option<Instant> = None;
    let done = Watched::spawn(command).wait(Duration::from_secs(150), || {
        if transfer_started.is_none() && agents.iter().any(|a| !upload_temp_files(a.dir.path(), NAME).is_empty()) {
            transfer_started = Some(Instant::now());
        }
    });
    let finished = Instant::now();
    let run = &done.run;
    assert!(run.success(), "upload failed: {run:#?}\nagent logs:\n{:#?}\nserver log:\n{}", logs(), server.log());

    let mut paths: Vec<&Path> = vec![&source];
    paths.extend(destinations.iter().map(PathBuf::as_path));
    let sums = sha256sums(&paths);
    for (dest, sum) in destinations.iter().zip(&sums[1..]) {
        assert_eq!(sum, &sums[0], "{} differs from the source", dest.display());
        assert_eq!(std::fs::metadata(dest).expect("destination").len(), SIZE, "{}", dest.display());
        let mode = std::fs::metadata(dest).expect("destination").permissions().mode() & 0o777;
        assert_eq!(mode, 0o640, "{} mode", dest.display());
    }
    for id in ids {
        let line = format!("{id}: wrote {SIZE} bytes to {remote} (sha256 {})", sums[0]);
        assert!(run.stderr.lines().any(|l| l == line), "no `{line}` on stderr: {}", run.stderr);
    }
    assert!(run.stderr.lines().any(|l| l == "2 of 2 clients answered"), "stderr: {}", run.stderr);
    for agent in &agents {
        let left = upload_temp_files(agent.dir.path(), NAME);
        assert!(left.is_empty(), "temporary files left behind: {left:?}");
    }

    let admin_peak = done.peak_kib;
    let agent_peaks: Vec<u64> = agents.iter().map(|a| vm_hwm_kib(a.pid()).expect("agent VmHWM")).collect();
    let server_peak = server.process.pid().and_then(vm_hwm_kib);
    let size_mib = (SIZE / MIB) as f64;
    let secs = done.elapsed.as_secs_f64();
    eprintln!("upload of {size_mib} MiB to 2 agents: {secs:.1} s in all, {:.1} MiB/s", size_mib / secs);
    if let Some(started) = transfer_started {
        let transfer = finished.duration_since(started).as_secs_f64();
        eprintln!(
            "  of which {transfer:.1} s after the first agent's temporary file appeared: {:.1} MiB/s per agent",
            size_mib / transfer
        );
    }
    eprintln!(
        "  peak RSS: admin {:.1} MiB, agents {}, server {}",
        mib(admin_peak),
        agent_peaks.iter().map(|k| format!("{:.1} MiB", mib(*k))).collect::<Vec<_>>().join(" and "),
        server_peak.map_or("?".into(), |k| format!("{:.1} MiB", mib(k)))
    );
    assert!(admin_peak < 100 * 1024, "admin peak RSS {:.1} MiB for a {size_mib} MiB file", mib(admin_peak));
    for (id, peak) in ids.iter().zip(&agent_peaks) {
        assert!(*peak < 100 * 1024, "{id} peak RSS {:.1} MiB for a {size_mib} MiB file", mib(*peak));
    }
}

/// `--timeout` is how long the admin waits for the server and the clients;
/// hashing the local file first is not waiting on anyone, and a server and
/// agent that answer at once must not be reported as unreachable because
/// the hash took longer than `--timeout`.
#[test]
fn upload_timeout_does_not_count_hashing_the_local_file() {
    // Hashing takes longer than the --timeout given below (the binaries hash
    // at a few tens of MiB/s in a debug build, a GiB/s or two in release).
    let (size, timeout) = if cfg!(debug_assertions) { (128 * MIB, "3") } else { (2048 * MIB, "0.5") };
    const NAME: &str = "hashed.bin";
    let server = Server::start(true);
    let cwd = bootstrap_admin(&server).0;
    let agent = enrolled_agent(&server, cwd.path(), "hash-agent", "files");
    assert_agents_up(&server, cwd.path(), &["hash-agent"], &[agent.log()]);

    let source_dir = tempfile::tempdir().expect("temp dir");
    let source = source_dir.path().join("source.bin");
    File::create(&source).and_then(|f| f.set_len(size)).expect("sparse source file");
    // On tmpfs where there is one, so that the agent's final fsync cannot
    // outlast the short --timeout either.
    let dest_dir = tempfile::tempdir_in("/dev/shm").or_else(|_| tempfile::tempdir()).expect("temp dir");
    let remote = dest_dir.path().join(NAME);
    let args = ["--timeout", timeout, "upload", source.to_str().expect("utf-8 path"), remote.to_str().expect("utf-8")];
    let done = admin(&server, cwd.path(), &args, Duration::from_secs(60));
    let run = &done.run;
    assert!(
        run.success(),
        "upload --timeout {timeout} of a {} MiB file failed after {:?} although the server and the agent were \
         answering: {run:#?}",
        size / MIB,
        done.elapsed
    );
    assert_eq!(std::fs::metadata(&remote).map(|m| m.len()).ok(), Some(size), "{}", remote.display());
}

#[test]
fn killing_the_server_mid_transfer_leaves_no_file_behind() {
    // Long enough that the transfer is still running when the server dies
    // (the binaries hash at a few tens of MiB/s in a debug build).
    let size: u64 = if cfg!(debug_assertions) { 96 * MIB } else { 1024 * MIB };
    const NAME: &str = "big.bin";
    let mut server = Server::start(true);
    let cwd = bootstrap_admin(&server).0;
    let agent = enrolled_agent(&server, cwd.path(), "cut-agent", "files");
    assert_agents_up(&server, cwd.path(), &["cut-agent"], &[agent.log()]);

    let source_dir = tempfile::tempdir().expect("temp dir");
    let source = source_dir.path().join("big-source.bin");
    File::create(&source).and_then(|f| f.set_len(size)).expect("sparse source file");
    let dest_dir = tempfile::tempdir().expect("temp dir");
    let remote = dest_dir.path().join(NAME);

    let args = ["--timeout", "8", "upload", source.to_str().expect("utf-8 path"), remote.to_str().expect("utf-8 path")];
    let mut upload = Watched::spawn(admin_command(&server, cwd.path(), &args));
    let started =
        wait_until(Duration::from_secs(60), || upload.poll() || !upload_temp_files(dest_dir.path(), NAME).is_empty());
    assert!(started, "the transfer never started\nagent log:\n{}", agent.log());
    assert!(!upload.poll(), "the upload ended before the server was killed: {:#?}", upload.output());
    let temp = upload_temp_files(dest_dir.path(), NAME);
    assert!(!temp.is_empty(), "the agent's temporary file vanished before the kill");
    server.process.kill();
    let killed = Instant::now();

    // Neither the file nor the temporary file may remain; the file must
    // never appear meanwhile.
    let mut appeared = false;
    let cleaned = wait_until(Duration::from_secs(20), || {
        appeared |= remote.exists();
        !remote.exists() && upload_temp_files(dest_dir.path(), NAME).is_empty()
    });
    assert!(!appeared, "{} appeared although the server was killed mid-transfer", remote.display());
    assert!(
        cleaned,
        "after 20 s: {} exists: {}, temporary files: {:?}\nagent log:\n{}",
        remote.display(),
        remote.exists(),
        upload_temp_files(dest_dir.path(), NAME),
        agent.log()
    );
    let cleaned_after = killed.elapsed();

    let done = upload.wait(Duration::from_secs(60), || {});
    let run = &done.run;
    assert!(!run.success(), "the upload succeeded although the server was killed: {run:#?}");
    assert!(run.code.is_some(), "the admin died of a signal: {run:#?}");
    assert!(!remote.exists(), "{} appeared after the admin gave up", remote.display());
    eprintln!(
        "server killed mid-transfer ({} MiB file): temporary file gone {cleaned_after:?} later, admin exited {:?} \
         after the kill with {:?}: {}",
        size / MIB,
        killed.elapsed(),
        run.code,
        run.stderr.trim()
    );
}

// ---------------------------------------------------------------------------
// app:show and edit
// ---------------------------------------------------------------------------

/// An executable `sh` script `name` in `dir`.
fn editor_script(dir: &Path, name: &str, body: &str) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, format!("#!/bin/sh\n{body}\n")).expect("write editor script");
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).expect("chmod editor script");
    path
}

/// `pantry-admin [-a APP] edit` with `EDITOR` set to `editor`.
fn edit(server: &Server, cwd: &Path, application: Option<&str>, editor: &Path) -> AdminRun {
    let mut args = Vec::new();
    if let Some(app) = application {
        args.extend(["-a", app]);
    }
    args.extend(["--timeout", "10", "edit"]);
    let mut command = admin_command(server, cwd, &args);
    command.env("EDITOR", editor);
    Watched::spawn(command).wait(Duration::from_secs(30), || {}).run
}

fn app_show(server: &Server, cwd: &Path, application: &str) -> AdminRun {
    admin(server, cwd, &["-a", application, "--timeout", "10", "app:show"], Duration::from_secs(30)).run
}

#[test]
fn edit_saves_only_valid_yaml_and_app_show_prints_it() {
    const APP: &str = "shop";
    let server = Server::start(true);
    let cwd = bootstrap_admin(&server).0;
    let scripts = tempfile::tempdir().expect("temp dir");
    let invalid =
        editor_script(scripts.path(), "invalid.sh", "printf 'name: shop\\nports: [80, 443\\nmode: }\\n' > \"$1\"");
    let valid_text = "# shop's settings\nname: shop\nports:\n  - 80\n  - 443\nworkers: 4\n";
    let valid = editor_script(scripts.path(), "valid.sh", &format!("cat > \"$1\" <<'EOF'\n{valid_text}EOF"));
    let unchanged = editor_script(scripts.path(), "unchanged.sh", "exit 0");
    let stored = pantry_shared::commands::app_config::config_path(&server.root_dir(), APP);

    // No config yet.
    let shown = app_show(&server, cwd.path(), APP);
    assert!(!shown.success(), "app:show of a new application succeeded: {shown:#?}");
    assert!(shown.stderr.contains("no config"), "stderr: {}", shown.stderr);

    // Invalid YAML: refused with its position, nothing saved.
    let run = edit(&server, cwd.path(), Some(APP), &invalid);
    assert!(!run.success(), "edit with invalid YAML succeeded: {run:#?}");
    assert!(run.stderr.contains("line") && run.stderr.contains("column"), "stderr: {}", run.stderr);
    assert!(run.stderr.contains("nothing saved"), "stderr: {}", run.stderr);
    assert!(!stored.exists(), "{} written despite invalid YAML", stored.display());
    let shown = app_show(&server, cwd.path(), APP);
    assert!(!shown.success() && shown.stderr.contains("no config"), "after the invalid edit: {shown:#?}");

    // Valid YAML: saved, and app:show prints it exactly.
    let run = edit(&server, cwd.path(), Some(APP), &valid);
    assert!(run.success(), "edit with valid YAML failed: {run:#?}\nserver log:\n{}", server.log());
    assert!(run.stderr.contains(&format!("saved the config of {APP}")), "stderr: {}", run.stderr);
    let shown = app_show(&server, cwd.path(), APP);
    assert!(shown.success(), "app:show failed: {shown:#?}");
    assert_eq!(shown.stdout, valid_text);
    assert_eq!(std::fs::read_to_string(&stored).expect("stored config"), valid_text);

    // Invalid YAML again: the saved config stays as it was.
    let run = edit(&server, cwd.path(), Some(APP), &invalid);
    assert!(!run.success(), "edit with invalid YAML succeeded: {run:#?}");
    assert!(run.stderr.contains("line") && run.stderr.contains("column"), "stderr: {}", run.stderr);
    let shown = app_show(&server, cwd.path(), APP);
    assert!(shown.success(), "app:show failed: {shown:#?}");
    assert_eq!(shown.stdout, valid_text, "the config changed after a refused edit");

    // No change: nothing to save, success.
    let run = edit(&server, cwd.path(), Some(APP), &unchanged);
    assert!(run.success(), "edit without changes failed: {run:#?}");
    assert!(run.stderr.contains("no changes"), "stderr: {}", run.stderr);
    assert_eq!(app_show(&server, cwd.path(), APP).stdout, valid_text);

    // Other applications are untouched.
    let other = app_show(&server, cwd.path(), "other");
    assert!(!other.success() && other.stderr.contains("no config"), "app:show of another application: {other:#?}");
}

#[test]
fn edit_without_an_application_fails_clearly() {
    let server = Server::start(true);
    let cwd = bootstrap_admin(&server).0;
    let scripts = tempfile::tempdir().expect("temp dir");
    let marker = scripts.path().join("editor-ran");
    let editor = editor_script(scripts.path(), "marker.sh", &format!("touch '{}'", marker.display()));
    let started = Instant::now();
    let run = edit(&server, cwd.path(), None, &editor);
    assert!(!run.success(), "edit without -a succeeded: {run:#?}");
    assert!(started.elapsed() < Duration::from_secs(5), "edit without -a took {:?}", started.elapsed());
    assert!(run.stderr.contains("-a/--application"), "stderr does not say -a is needed: {}", run.stderr);
    assert!(!marker.exists(), "the editor was started without -a");
}
