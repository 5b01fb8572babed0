//! `client:pending`, `client:accept`, `client:reject`: the keys the server
//! saw but does not know, the way salt-key users know them.
//!
//! The server remembers the most recent unknown keys that tried to connect
//! (at most 1,000): where from, when first and last, how often, and the
//! identity the agent claims when it asks to be enrolled without a token.
//! `client:accept KEY|IDENTITY [--name NAME]` makes one a client key bound
//! to NAME (default: its claimed identity); `client:reject` forgets it. The
//! list survives a restart. Admin keys only.

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::message::{BodyPart, Message};

use crate::rule::{Rule, RunsOn, Senders};

pub const LIST_TYPE: &str = "ListPendingKeys";
pub const ACCEPT_TYPE: &str = "AcceptPendingKey";
pub const REJECT_TYPE: &str = "RejectPendingKey";

pub const LIST_RULE: Rule =
    Rule { wire: LIST_TYPE, runs_on: RunsOn::Server, senders: Senders::Admins, may_block: false, job: false };

pub const ACCEPT_RULE: Rule =
    Rule { wire: ACCEPT_TYPE, runs_on: RunsOn::Server, senders: Senders::Admins, may_block: false, job: true };

pub const REJECT_RULE: Rule =
    Rule { wire: REJECT_TYPE, runs_on: RunsOn::Server, senders: Senders::Admins, may_block: false, job: true };

/// One unknown key the server saw.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PendingKey {
    pub public_key: String,
    pub address: String,
    /// RFC 3339.
    pub first_seen: String,
    pub last_seen: String,
    pub attempts: u64,
    /// The identity it asked to be enrolled as, if it asked.
    pub identity: Option<String>,
}

/// Admin: list them.
pub fn list_request() -> Message {
    let mut m = Message::new(LIST_TYPE);
    m.metadata.requires_response = true;
    m
}

/// Server: one body part per key, most recent first.
pub fn respond_list(request: &Message, keys: &[PendingKey]) -> Message {
    let mut response = request.response();
    response.body = keys.iter().map(|k| BodyPart::Json(serde_json::to_value(k).unwrap_or(Value::Null))).collect();
    response
}

/// Admin: the keys in the answer.
pub fn keys(response: &Message) -> Vec<PendingKey> {
    response.body.iter().filter_map(BodyPart::as_json).filter_map(|v| serde_json::from_value(v.clone()).ok()).collect()
}

/// Admin: accept the key (by Z85 key or claimed identity), bound to `name`
/// or to its claimed identity.
pub fn accept_request(target: &str, name: Option<&str>) -> Message {
    let mut m = Message::new(ACCEPT_TYPE);
    m.metadata.requires_response = true;
    m.metadata.custom.insert("target".into(), target.into());
    if let Some(name) = name {
        m.metadata.custom.insert("name".into(), name.into());
    }
    m
}

/// Admin: forget the key.
pub fn reject_request(target: &str) -> Message {
    let mut m = Message::new(REJECT_TYPE);
    m.metadata.requires_response = true;
    m.metadata.custom.insert("target".into(), target.into());
    m
}

/// Server: the key or identity a request names.
pub fn target(request: &Message) -> Option<&str> {
    request.metadata.custom.get("target").and_then(Value::as_str)
}

/// Server: the name `client:accept` gives.
pub fn name(request: &Message) -> Option<&str> {
    request.metadata.custom.get("name").and_then(Value::as_str)
}

/// Server: what was accepted or rejected.
pub fn respond_done(request: &Message, public_key: &str, name: Option<&str>) -> Message {
    let mut response = request.response();
    response.body.push(BodyPart::Json(serde_json::json!({"public_key": public_key, "name": name})));
    response
}
