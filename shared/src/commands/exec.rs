//! `exec -- PROGRAM ARGS...`: run a program on every matching client.
//!
//! The admin sends the program, its arguments, whether to use a shell and a
//! time limit. Each agent runs it in a new process group (killed whole when
//! the limit passes), captures stdout and stderr (each capped), and answers
//! with the exit status. The admin prints each answer under a header line,
//! then a summary, and fails if any client failed, timed out or did not
//! answer. Agents whose config sets `allow_exec: false` refuse.

use std::io::{Read, Write as _};
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::process::{Command, Stdio};
use std::sync::{mpsc, Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::error::DecodeError;
use crate::message::{BodyPart, Message};
use crate::session::{print_json_summary, report_offline, unsupported, Outcome, Session};

use super::{Admin, Rule, RunsOn, Senders};

pub const TYPE: &str = "Exec";

pub const RULE: Rule =
    Rule { wire: TYPE, runs_on: RunsOn::Clients, senders: Senders::Admins, may_block: true, job: true };

/// Most bytes of stdout (and of stderr) an answer carries.
pub const OUTPUT_CAP: usize = 1024 * 1024;

/// Run PROGRAM with ARGS on every matching client: `exec -- uname -a`.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// Seconds each client lets the program run before killing its
    /// process group.
    #[arg(long, default_value_t = 60.0, value_name = "SECONDS")]
    pub timeout: f64,
    /// Run through `sh -c` (PROGRAM ARGS joined by spaces).
    #[arg(long)]
    pub shell: bool,
    /// Print JSON for scripts.
    #[arg(long)]
    pub json: bool,
    /// Print the job id and return at once; `pantry-admin job ID` shows
    /// the answers.
    #[arg(long = "async")]
    pub detach: bool,
    /// The program and its arguments.
    #[arg(required = true, trailing_var_arg = true, allow_hyphen_values = true, value_name = "PROGRAM")]
    pub command: Vec<String>,
}

/// What to run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ExecRequest {
    pub program: String,
    #[serde(default)]
    pub args: Vec<String>,
    /// Run `sh -c "PROGRAM ARGS..."` instead of the program itself.
    #[serde(default)]
    pub shell: bool,
    /// Seconds after which the process group is killed.
    pub timeout: f64,
}

/// Admin: the request.
pub fn request(exec: &ExecRequest) -> Message {
    let mut m = Message::new(TYPE);
    m.metadata.requires_response = true;
    m.body.push(BodyPart::Json(serde_json::to_value(exec).unwrap_or(Value::Null)));
    m
}

/// How the program ended on one client.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ExecResult {
    /// The exit code, if it exited.
    pub exit_code: Option<i32>,
    /// The signal that ended it, if one did.
    pub signal: Option<i32>,
    pub timed_out: bool,
    pub stdout: String,
    pub stderr: String,
    pub stdout_truncated: bool,
    pub stderr_truncated: bool,
    pub duration_ms: u64,
    /// Why it could not be started, if it could not.
    pub error: Option<String>,
}

impl ExecResult {
    pub fn succeeded(&self) -> bool {
        self.exit_code == Some(0) && !self.timed_out && self.error.is_none()
    }

    /// `exit 0`, `exit 1`, `killed by signal 9`, `timed out after 1.0 s`.
    pub fn status_text(&self, timeout: f64) -> String {
        match (self.timed_out, &self.error, self.exit_code, self.signal) {
            (true, ..) => format!("timed out after {timeout} s, killed"),
            (_, Some(e), ..) => format!("not started: {e}"),
            (_, _, Some(code), _) => format!("exit {code}"),
            (_, _, None, Some(sig)) => format!("killed by signal {sig}"),
            _ => "unknown status".into(),
        }
    }
}

/// Client: read the request.
pub fn parse(request: &Message) -> Result<ExecRequest, DecodeError> {
    let bad = |reason: String| DecodeError::Body { message_type: TYPE.into(), reason };
    let body = request.body.first().and_then(BodyPart::as_json).ok_or_else(|| bad("no JSON body".into()))?;
    let exec: ExecRequest = serde_json::from_value(body.clone()).map_err(|e| bad(e.to_string()))?;
    if exec.program.is_empty() {
        return Err(bad("no program".into()));
    }
    if !(exec.timeout > 0.0 && exec.timeout.is_finite()) {
        return Err(bad("timeout must be a positive number of seconds".into()));
    }
    Ok(exec)
}

/// Client: run the request (blocking: call it on a worker thread) and
/// build the answer. `allowed` is the agent's `allow_exec`.
pub fn handle(request: &Message, allowed: bool) -> Message {
    let mut response = request.response();
    if !allowed {
        response.set_error("exec is disabled on this client (allow_exec: false in its client.yml)");
        return response;
    }
    match parse(request) {
        Ok(exec) => {
            let result = run(&exec);
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

impl Admin for Args {
    /// The clients' time limit, plus the usual wait for the answers.
    fn wait(&self, global: f64) -> f64 {
        self.timeout + global
    }

    /// Admin: prints each answer as it arrives (or, with `--json`, all of
    /// them at the end), then the summary; a program that failed anywhere
    /// fails the command.
    fn run(self, session: &mut Session) -> anyhow::Result<Outcome> {
        let (program, args) = self.command.split_first().context("no program given")?;
        let exec =
            ExecRequest { program: program.clone(), args: args.to_vec(), shell: self.shell, timeout: self.timeout };
        let target = session.target()?;
        let request = session.to_clients(request(&exec), &target);
        if self.detach {
            return session.start_async(&request);
        }
        let (json, online_only) = (self.json, session.online_only);
        let mut answers = Vec::new();
        let result = session.ask_clients(
            &request,
            None,
            |_, offline| report_offline(offline, online_only, json),
            |answer| {
                let Some(ran) = result(answer) else {
                    eprintln!("{}: {}", answer.metadata.from, unsupported(TYPE));
                    return false;
                };
                if json {
                    answers.push(serde_json::json!({"identity": answer.metadata.from, "result": ran}));
                } else {
                    print!("{}", format_answer(&answer.metadata.from, &ran, exec.timeout));
                    let _ = std::io::stdout().flush();
                }
                ran.succeeded()
            },
        )?;
        print_json_summary(json, answers, &result)?;
        Ok(session.report(&result, &target))
    }
}

/// Admin: the result in an answer, if it carries one.
pub fn result(response: &Message) -> Option<ExecResult> {
    response.body.first().and_then(BodyPart::as_json).and_then(|v| serde_json::from_value(v.clone()).ok())
}

/// Admin: a header line with the identity and status, then the output.
pub fn format_answer(identity: &str, result: &ExecResult, timeout: f64) -> String {
    let mut out = format!("==> {identity}: {}\n", result.status_text(timeout));
    for (name, text, cut) in
        [("", &result.stdout, result.stdout_truncated), ("stderr: ", &result.stderr, result.stderr_truncated)]
    {
        for line in text.lines() {
            out.push_str(&format!("{name}{line}\n"));
        }
        if cut {
            out.push_str(&format!("{name}[output cut at {} MiB]\n", OUTPUT_CAP / (1024 * 1024)));
        }
    }
    out
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
        assert!(format_answer("h", &r, 10.0).contains("[output cut at 1 MiB]"));
    }

    #[test]
    fn refusal_and_round_trip() {
        let req = request(&exec("true", &[], false, 1.0));
        let refused = handle(&req, false);
        assert!(refused.error().unwrap().contains("allow_exec"));
        let answer = handle(&Message::from_frames(&req.to_frames()).unwrap(), true);
        let back = result(&Message::from_frames(&answer.to_frames()).unwrap()).unwrap();
        assert!(back.succeeded());
    }
}
