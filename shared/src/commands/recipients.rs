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

/// `web-3: offline (last seen 12 minutes ago)`.
pub fn format_offline(client: &Offline, now: std::time::SystemTime) -> String {
    format!("{}: offline (last seen {})", client.identity, super::status::ago(&client.last_seen, now))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lists_round_trip() {
        let mut request = crate::commands::echo::request("x");
        request.metadata.from = "admin".into();
        let gone = Offline { identity: "web-3".into(), last_seen: "2026-01-01T00:00:00Z".into() };
        let list = respond(&request, &["web-1".into()], std::slice::from_ref(&gone));
        let back = Message::from_frames(&list.to_frames()).unwrap();
        assert!(back.is_client_response_list() && back.metadata.from.is_empty());
        assert_eq!((online(&back), offline(&back)), (vec!["web-1".to_owned()], vec![gone]));
        let line = format_offline(&offline(&back)[0], humantime::parse_rfc3339("2026-01-01T00:12:00Z").unwrap());
        assert_eq!(line, "web-3: offline (last seen 12 minutes ago)");
    }
}
