//! `Cancel`: the server tells the agents running a job to kill it (`job
//! cancel`). It asks for no answer: each agent kills the command's whole
//! process group (SIGTERM, then SIGKILL after the grace) and the command's
//! own answer says `cancelled`. An agent that does not run the job (or
//! does not know the type: the original agent) does nothing.

use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::message::{BodyPart, Message};
use crate::rule::{Rule, RunsOn, Senders};

pub const TYPE: &str = "Cancel";

pub const RULE: Rule =
    Rule { wire: TYPE, runs_on: RunsOn::Clients, senders: Senders::Admins, may_block: false, job: false };

/// Which job, and how long its processes get between SIGTERM and SIGKILL.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CancelRequest {
    pub job: String,
    pub grace_ms: u64,
    /// Passed on to another server of a cluster: the agents there to
    /// cancel it on.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub identities: Vec<String>,
}

impl CancelRequest {
    pub fn grace(&self) -> Duration {
        Duration::from_millis(self.grace_ms)
    }
}

/// Server: the request to `stream` (an agent's identity), from `from`.
pub fn request(cancel: &CancelRequest, stream: &str, from: &str) -> Message {
    let mut m = Message::new(TYPE);
    m.metadata.from = from.to_owned();
    m.metadata.to = stream.to_owned();
    m.stream = stream.to_owned();
    m.body.push(BodyPart::Json(serde_json::to_value(cancel).unwrap_or(Value::Null)));
    m
}

/// Agent: the request.
pub fn parse(request: &Message) -> Option<CancelRequest> {
    request.body.first().and_then(BodyPart::as_json).and_then(|v| serde_json::from_value(v.clone()).ok())
}
