//! `exec -- PROGRAM ARGS...`: run a program on every matching client.
//!
//! The admin sends the program, its arguments, whether to use a shell and a
//! time limit. Each agent runs it in a new process group (killed whole when
//! the limit passes), captures stdout and stderr (each capped), and answers
//! with the exit status. The admin prints each answer under a header line,
//! then a summary, and fails if any client failed, timed out or did not
//! answer. Agents whose config sets `allow_exec: false` refuse.

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::error::DecodeError;
use crate::message::{BodyPart, Message};

use crate::rule::{Rule, RunsOn, Senders};

pub const TYPE: &str = "Exec";

pub const RULE: Rule =
    Rule { wire: TYPE, runs_on: RunsOn::Clients, senders: Senders::Admins, may_block: true, job: true };

/// How an agent with `allow_exec: false` refuses (its answer's error).
pub const DISABLED: &str = "exec is disabled on this client";

/// Most bytes of stdout (and of stderr) an answer carries.
pub const OUTPUT_CAP: usize = 1024 * 1024;

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
    /// Killed by `job cancel`.
    #[serde(default)]
    pub cancelled: bool,
}

impl ExecResult {
    pub fn succeeded(&self) -> bool {
        self.exit_code == Some(0) && !self.timed_out && self.error.is_none()
    }

    /// `exit 0`, `exit 1`, `killed by signal 9`, `timed out after 1.0 s`.
    pub fn status_text(&self, timeout: f64) -> String {
        if self.cancelled {
            return "cancelled".into();
        }
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

/// Admin: the result in an answer, if it carries one.
pub fn result(response: &Message) -> Option<ExecResult> {
    response.body.first().and_then(BodyPart::as_json).and_then(|v| serde_json::from_value(v.clone()).ok())
}
