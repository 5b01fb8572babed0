//! The server's first answer to a request it forwards to clients: who will
//! answer (`custom.client_response_list: true`, one body part per identity,
//! `from` = `""`), and which clients the request would have reached but are
//! offline (`custom.offline`: identity and when last seen). The requester
//! waits for the first and reports the second at once.

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::message::{BodyPart, Message};

/// A targeted client that is offline: the request was not sent to it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Offline {
    pub identity: String,
    /// RFC 3339.
    pub last_seen: String,
}

/// Server: the list for `request`.
pub fn respond(request: &Message, online: &[String], offline: &[Offline]) -> Message {
    let mut list = request.response();
    list.metadata.from = String::new();
    list.metadata.custom.insert("client_response_list".into(), Value::Bool(true));
    if !offline.is_empty() {
        list.metadata.custom.insert("offline".into(), serde_json::to_value(offline).unwrap_or(Value::Null));
    }
    list.body = online.iter().map(|id| BodyPart::Text(id.clone())).collect();
    list
}

/// Requester: the identities that will answer.
pub fn online(list: &Message) -> Vec<String> {
    list.body.iter().filter_map(BodyPart::as_text).map(str::to_owned).collect()
}

/// Requester: the targeted clients that are offline.
pub fn offline(list: &Message) -> Vec<Offline> {
    list.metadata.custom.get("offline").and_then(|v| serde_json::from_value(v.clone()).ok()).unwrap_or_default()
}
