//! `exec` on the agent: the program runs in a process group of its own,
//! killed whole at its time limit whatever holds its output pipes; stdout
//! and stderr are captured, each capped.

use pantry_shared::commands::exec::*;
use pantry_shared::commands::rollout::CANCELLED_FIELD;

use super::running::{Running, Started};
use pantry_shared::message::{BodyPart, Message};
use serde_json::Value;
use std::io::Read;
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::process::{Command, Stdio};
use std::sync::{mpsc, Arc, Mutex};
use std::time::{Duration, Instant};

/// Client: run the request (blocking: call it on a worker thread) and
/// build the answer. `allowed` is the agent's `allow_exec`; the program
/// sees `PANTRY_IDENTITY` (this agent) and `PANTRY_JOB` (the request's
/// uuid) in its environment.
pub fn handle(request: &Message, allowed: bool, identity: &str, running: &Running) -> Message {
    let mut response = request.response();
    if !allowed {
        response.set_error(format!("{DISABLED} (allow_exec: false in its client.yml)"));
        return response;
    }
    match parse(request) {
        Ok(exec) => {
            let job = running.start(request.uuid());
            let env = [("PANTRY_IDENTITY", identity), ("PANTRY_JOB", request.uuid())];
            let result = run_as(&exec, &env, Some(&job));
            if result.cancelled {
                response.metadata.custom.insert(CANCELLED_FIELD.into(), Value::Bool(true));
            }
            response.body.push(BodyPart::Json(serde_json::to_value(result).unwrap_or(Value::Null)));
        }
        Err(e) => response.set_error(e.to_string()),
    }
    response
}

/// Runs the program in its own process group and kills the whole group at
/// the time limit, whatever holds the output pipes: the program itself, or
/// a child it left running in the background (`sleep 20 & echo started`).
/// Output read by then is kept, capped.
pub fn run(exec: &ExecRequest) -> ExecResult {
    run_as(exec, &[], None)
}

/// [`run`] with `env` added to the program's environment, and registered
/// as `job` (its process group, and whether it was cancelled).
fn run_as(exec: &ExecRequest, env: &[(&str, &str)], job: Option<&Started>) -> ExecResult {
    let started = Instant::now();
    let mut command = if exec.shell {
        let mut c = Command::new("sh");
        let line = std::iter::once(exec.program.as_str()).chain(exec.args.iter().map(String::as_str));
        c.arg("-c").arg(line.collect::<Vec<_>>().join(" "));
        c
    } else {
        let mut c = Command::new(&exec.program);
        c.args(&exec.args);
        c
    };
    command.stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped()).process_group(0);
    command.envs(env.iter().copied());
    let mut child = match command.spawn() {
        Ok(child) => child,
        Err(e) => {
            return ExecResult {
                exit_code: None,
                signal: None,
                timed_out: false,
                stdout: String::new(),
                stderr: String::new(),
                stdout_truncated: false,
                stderr_truncated: false,
                duration_ms: 0,
                error: Some(format!("{}: {e}", exec.program)),
                cancelled: false,
            }
        }
    };
    let deadline = started + Duration::from_secs_f64(exec.timeout);
    // Each reader says when its pipe closed; the waiter when the program
    // ended. Nothing below waits past the deadline (plus a grace after the
    // kill) for either.
    let (closed_tx, closed_rx) = mpsc::channel();
    let stdout = Capture::start(child.stdout.take(), closed_tx.clone());
    let stderr = Capture::start(child.stderr.take(), closed_tx);
    let pid = child.id() as i32;
    if let Some(job) = job {
        job.group(pid);
    }
    let (done_tx, done_rx) = mpsc::channel();
    std::thread::spawn(move || {
        let _ = done_tx.send(child.wait());
    });
    let mut status = done_rx.recv_timeout(deadline.saturating_duration_since(Instant::now())).ok();
    let mut open_pipes = 2;
    while open_pipes > 0 && closed_rx.recv_timeout(deadline.saturating_duration_since(Instant::now())).is_ok() {
        open_pipes -= 1;
    }
    let timed_out = status.is_none() || open_pipes > 0;
    if timed_out {
        // The whole group: a shell's children and background jobs die too.
        // SAFETY: kill(2) with a negative pid signals our child's group.
        unsafe { libc::kill(-pid, libc::SIGKILL) };
        let grace = Instant::now() + KILL_GRACE;
        if status.is_none() {
            status = done_rx.recv_timeout(KILL_GRACE).ok();
        }
        while open_pipes > 0 && closed_rx.recv_timeout(grace.saturating_duration_since(Instant::now())).is_ok() {
            open_pipes -= 1;
        }
    }
    let status = status.and_then(Result::ok);
    let (stdout, stdout_truncated) = stdout.take();
    let (stderr, stderr_truncated) = stderr.take();
    ExecResult {
        exit_code: status.and_then(|s| s.code()),
        signal: status.and_then(|s| s.signal()),
        timed_out,
        stdout,
        stderr,
        stdout_truncated,
        stderr_truncated,
        duration_ms: started.elapsed().as_millis() as u64,
        error: None,
        cancelled: job.is_some_and(Started::is_cancelled),
    }
}

/// How long to wait for the pipes to close after killing the group (a
/// process that left the group may hold them forever: its output is lost).
const KILL_GRACE: Duration = Duration::from_millis(500);

/// One output pipe, read to the end on its own thread, at most
/// [`OUTPUT_CAP`] bytes kept. What was read is available at any time.
struct Capture(Arc<Mutex<(Vec<u8>, bool)>>);

impl Capture {
    fn start(pipe: Option<impl Read + Send + 'static>, closed: mpsc::Sender<()>) -> Capture {
        let kept = Arc::new(Mutex::new((Vec::new(), false)));
        let Some(mut pipe) = pipe else {
            let _ = closed.send(());
            return Capture(kept);
        };
        let shared = kept.clone();
        std::thread::spawn(move || {
            let mut buf = [0u8; 16 * 1024];
            loop {
                match pipe.read(&mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => {
                        let Ok(mut guard) = shared.lock() else { break };
                        let (kept, truncated) = &mut *guard;
                        let room = OUTPUT_CAP - kept.len();
                        *truncated |= n > room;
                        kept.extend_from_slice(&buf[..n.min(room)]);
                    }
                }
            }
            let _ = closed.send(());
        });
        Capture(kept)
    }

    /// The output so far, as text, and whether it was cut.
    fn take(&self) -> (String, bool) {
        match self.0.lock() {
            Ok(mut guard) => {
                let (kept, truncated) = &mut *guard;
                (String::from_utf8_lossy(&std::mem::take(kept)).into_owned(), *truncated)
            }
            Err(_) => (String::new(), false),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn exec(program: &str, args: &[&str], shell: bool, timeout: f64) -> ExecRequest {
        ExecRequest { program: program.into(), args: args.iter().map(|s| s.to_string()).collect(), shell, timeout }
    }

    #[test]
    fn runs_and_reports_exit_status() {
        let ok = run(&exec("echo", &["hello", "world"], false, 5.0));
        assert!(ok.succeeded(), "{ok:?}");
        assert_eq!(ok.stdout, "hello world\n");
        let fail = run(&exec("false", &[], false, 5.0));
        assert_eq!(fail.exit_code, Some(1));
        assert!(!fail.succeeded());
        let shell = run(&exec("echo a; echo b >&2; exit 3", &[], true, 5.0));
        assert_eq!((shell.exit_code, shell.stdout.as_str(), shell.stderr.as_str()), (Some(3), "a\n", "b\n"));
        let missing = run(&exec("/nonexistent/program", &[], false, 5.0));
        assert!(missing.error.is_some() && !missing.succeeded());
    }

    #[test]
    fn time_limit_kills_the_whole_group() {
        let started = Instant::now();
        // The shell's child `sleep` holds the pipes open: the group kill
        // must reach it too, or this would wait 30 s.
        let r = run(&exec("sleep 30; echo never", &[], true, 0.3));
        assert!(r.timed_out, "{r:?}");
        assert!(started.elapsed() < Duration::from_secs(5), "{:?}", started.elapsed());
        assert_eq!(r.status_text(0.3), "timed out after 0.3 s, killed");
    }

    #[test]
    fn a_background_child_holding_the_pipes_is_killed_at_the_deadline() {
        let started = Instant::now();
        let r = run(&exec("sleep 20 & echo started", &[], true, 1.0));
        let took = started.elapsed();
        assert!(r.timed_out, "{r:?}");
        assert_eq!(r.stdout, "started\n");
        assert!(took < Duration::from_secs(5), "answered after {took:?}");
        assert_eq!(r.status_text(1.0), "timed out after 1 s, killed");
        // The background sleep died with its group: no process of that
        // command line is left.
        let ps = Command::new("pgrep").args(["-f", "^sleep 20$"]).output().unwrap();
        assert!(ps.stdout.is_empty(), "left running: {}", String::from_utf8_lossy(&ps.stdout));
    }

    #[test]
    fn output_is_capped() {
        let r = run(&exec("head -c 1200000 /dev/zero | tr '\\0' x", &[], true, 10.0));
        assert_eq!(r.stdout.len(), OUTPUT_CAP);
        assert!(r.stdout_truncated);
    }

    #[test]
    fn refusal_and_round_trip() {
        let req = request(&exec("true", &[], false, 1.0));
        let running = crate::work::running::Running::default();
        let refused = handle(&req, false, "h", &running);
        assert!(refused.error().unwrap().contains("allow_exec"));
        let answer = handle(&Message::from_frames(&req.to_frames()).unwrap(), true, "h", &running);
        let back = result(&Message::from_frames(&answer.to_frames()).unwrap()).unwrap();
        assert!(back.succeeded());
    }
}
