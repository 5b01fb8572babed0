//! `client:revoke NAME|KEY`: the server removes the key from its store and
//! cuts the peer off at once: its messages are dropped from that moment, its
//! open connections are shut down (so it stops receiving published
//! messages), and its next handshake fails as an unknown client. Admin keys
//! only.

use serde_json::Value;

use crate::message::{BodyPart, Message};

use crate::rule::{Rule, RunsOn, Senders};

pub const TYPE: &str = "RevokeClient";

pub const RULE: Rule =
    Rule { wire: TYPE, runs_on: RunsOn::Server, senders: Senders::Admins, may_block: false, job: true };

/// Admin: the name or Z85 key in `custom.target`.
pub fn request(name_or_key: &str) -> Message {
    let mut m = Message::new(TYPE);
    m.metadata.requires_response = true;
    m.metadata.custom.insert("target".into(), Value::String(name_or_key.into()));
    m
}

/// Server: the name or key to revoke.
pub fn target(request: &Message) -> Option<&str> {
    request.metadata.custom.get("target").and_then(Value::as_str)
}

/// Server: the answer names what was revoked and how many connections
/// were closed.
pub fn respond(request: &Message, name: &str, key: &str) -> Message {
    let mut response = request.response();
    response.body.push(BodyPart::Json(serde_json::json!({"name": name, "public_key": key})));
    response
}
