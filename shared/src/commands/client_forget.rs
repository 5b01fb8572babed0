//! `client:forget IDENTITY`: the server drops a client from its registry
//! now (offline clients also leave by themselves after
//! `registry.forget_after`). A client still running comes back at its next
//! check-in. Admin keys only.

use serde_json::Value;

use crate::message::Message;

use crate::rule::{Rule, RunsOn, Senders};

pub const TYPE: &str = "ForgetClient";

pub const RULE: Rule =
    Rule { wire: TYPE, runs_on: RunsOn::Server, senders: Senders::Admins, may_block: false, job: true };

/// Admin: the identity in `custom.identity`.
pub fn request(identity: &str) -> Message {
    let mut m = Message::new(TYPE);
    m.metadata.requires_response = true;
    m.metadata.custom.insert("identity".into(), Value::String(identity.into()));
    m
}

/// Server: the identity to forget.
pub fn identity(request: &Message) -> Option<&str> {
    request.metadata.custom.get("identity").and_then(Value::as_str)
}
