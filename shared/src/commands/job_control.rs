//! `job pause|resume|abort|cancel ID`: control a running job, a rollout or
//! a plain one. Admin keys only; audited, and recorded as a job of its own.
//!
//! - `pause`: no new batch starts (agents running go on) until `resume`;
//! - `abort`: no new agent starts; running ones finish; the rest are
//!   `skipped`;
//! - `cancel [-i GLOB]`: the agents running it kill the command's whole
//!   process group (SIGTERM, SIGKILL after `--grace`) and answer
//!   `cancelled`; agents not yet started are `skipped`.
//!
//! The server answers with the job's state after the change; a job that is
//! over is refused ("finished").

use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::error::DecodeError;
use crate::message::{BodyPart, Message};
use crate::rule::{Rule, RunsOn, Senders};

use super::rollout::JobState;

pub const TYPE: &str = "JobControl";

pub const RULE: Rule =
    Rule { wire: TYPE, runs_on: RunsOn::Server, senders: Senders::Admins, may_block: false, job: true };

/// The default time between SIGTERM and SIGKILL of a cancelled command.
pub const DEFAULT_GRACE: Duration = Duration::from_secs(5);

/// What to do to a job.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Action {
    Pause,
    Resume,
    Abort,
    Cancel,
}

impl Action {
    pub fn name(self) -> &'static str {
        match self {
            Action::Pause => "pause",
            Action::Resume => "resume",
            Action::Abort => "abort",
            Action::Cancel => "cancel",
        }
    }

    pub fn parse(word: &str) -> Option<Action> {
        [Action::Pause, Action::Resume, Action::Abort, Action::Cancel].into_iter().find(|a| a.name() == word)
    }
}

/// A control request, as the admin sends it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Control {
    pub job: String,
    pub action: Action,
    /// `cancel -i`: only the agents whose identity matches.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub identities: Vec<String>,
    /// `cancel --grace`, milliseconds.
    #[serde(default)]
    pub grace_ms: u64,
}

impl Control {
    /// Between SIGTERM and SIGKILL (`0`: the default).
    pub fn grace(&self) -> Duration {
        match self.grace_ms {
            0 => DEFAULT_GRACE,
            ms => Duration::from_millis(ms),
        }
    }
}

/// Admin: the request.
pub fn request(control: &Control) -> Message {
    let mut m = Message::new(TYPE);
    m.metadata.requires_response = true;
    m.body.push(BodyPart::Json(serde_json::to_value(control).unwrap_or(Value::Null)));
    m
}

/// Server: the request, checked.
pub fn parse(request: &Message) -> Result<Control, DecodeError> {
    let bad = |reason: String| DecodeError::Body { message_type: TYPE.into(), reason };
    let body = request.body.first().and_then(BodyPart::as_json).ok_or_else(|| bad("no JSON body".into()))?;
    let control: Control = serde_json::from_value(body.clone()).map_err(|e| bad(e.to_string()))?;
    if control.job.is_empty() {
        return Err(bad("no job id".into()));
    }
    Ok(control)
}

/// What the server did.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Done {
    /// The job's state now.
    pub state: JobState,
    /// Agents the change reached (cancel: sent the cancel; abort: skipped).
    pub agents: usize,
    /// What it means, in a sentence.
    pub note: String,
}

/// Server: the answer.
pub fn respond(request: &Message, done: &Done) -> Message {
    let mut response = request.response();
    response.body.push(BodyPart::Json(serde_json::to_value(done).unwrap_or(Value::Null)));
    response
}

/// Admin: what the server did.
pub fn done(response: &Message) -> Option<Done> {
    response.body.first().and_then(BodyPart::as_json).and_then(|v| serde_json::from_value(v.clone()).ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn control_round_trips() {
        let c = Control { job: "j".into(), action: Action::Cancel, identities: vec!["web-*".into()], grace_ms: 2000 };
        let m = Message::from_frames(&request(&c).to_frames()).unwrap();
        assert_eq!(parse(&m).unwrap(), c);
        assert_eq!(Action::parse("abort"), Some(Action::Abort));
        assert_eq!(Action::parse("frobnicate"), None);
    }
}
