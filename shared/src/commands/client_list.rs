//! `client:list`: every known key with its name, role, creation time, when
//! it was last seen and whether it is connected now. Admin keys only.

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::keys::KnownKey;
use crate::message::{BodyPart, Message};

use crate::rule::{Rule, RunsOn, Senders};

pub const TYPE: &str = "ListClients";

pub const RULE: Rule =
    Rule { wire: TYPE, runs_on: RunsOn::Server, senders: Senders::Admins, may_block: false, job: false };

/// Admin: no body.
pub fn request() -> Message {
    let mut m = Message::new(TYPE);
    m.metadata.requires_response = true;
    m
}

/// One known key as the admin sees it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct KeyStatus {
    /// `None`: an unbound client key (its first registration binds it).
    pub name: Option<String>,
    pub role: String,
    pub public_key: String,
    pub created: Option<String>,
    /// RFC 3339 of the last message from this key since the server started.
    pub last_seen: Option<String>,
    pub connected: bool,
}

/// Server: one body part per key.
pub fn respond(request: &Message, keys: &[KnownKey], seen: impl Fn(&str) -> (Option<String>, bool)) -> Message {
    let mut response = request.response();
    for known in keys {
        let (last_seen, connected) = seen(&known.public_key);
        let status = KeyStatus {
            name: known.name.clone(),
            role: known.role.as_str().into(),
            public_key: known.public_key.clone(),
            created: known.created.clone(),
            last_seen,
            connected,
        };
        response.body.push(BodyPart::Json(serde_json::to_value(status).unwrap_or(Value::Null)));
    }
    response
}

/// Admin: the keys in the response.
pub fn keys(response: &Message) -> Vec<KeyStatus> {
    response.body.iter().filter_map(BodyPart::as_json).filter_map(|v| serde_json::from_value(v.clone()).ok()).collect()
}
