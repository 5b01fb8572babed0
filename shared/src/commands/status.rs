//! `status`: the server lists the checked-in clients that match a filter:
//! when each last checked in, identity, application, environment, roles.

use std::time::SystemTime;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::error::DecodeError;
use crate::filter::ClientFilter;
use crate::message::{BodyPart, Message};

use crate::rule::{Rule, RunsOn, Senders};

pub const TYPE: &str = "Status";

pub const RULE: Rule =
    Rule { wire: TYPE, runs_on: RunsOn::Server, senders: Senders::Admins, may_block: false, job: false };

/// Admin: the body is the filter `{application, environment, roles,
/// identity}`; nulls and `[]` mean any.
pub fn request(filter: &ClientFilter) -> Message {
    let mut m = Message::new(TYPE);
    m.metadata.requires_response = true;
    m.body.push(BodyPart::Json(serde_json::to_value(filter).unwrap_or(Value::Null)));
    m
}

/// One line of the answer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ClientStatus {
    pub identity: String,
    pub application: Option<String>,
    pub environment: Option<String>,
    pub roles: Vec<String>,
    /// RFC 3339, UTC (the same as `last_seen`; kept for older readers).
    pub last_checked_in: String,
    /// `online` or `offline`.
    #[serde(default = "online")]
    pub state: String,
    /// RFC 3339, UTC: the last check-in.
    #[serde(default)]
    pub last_seen: String,
    /// In a cluster: the server the client is connected to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub server: Option<String>,
}

fn online() -> String {
    ONLINE.into()
}

pub const ONLINE: &str = "online";
pub const OFFLINE: &str = "offline";

/// One registered client as the server knows it.
pub struct ClientRecord<'a> {
    pub client: &'a ClientFilter,
    pub last_seen: SystemTime,
    pub online: bool,
    /// In a cluster: the server it is on.
    pub server: Option<&'a str>,
}

/// Server: read the filter (an absent body selects everyone).
pub fn parse(request: &Message) -> Result<ClientFilter, DecodeError> {
    match request.body.first() {
        None => Ok(ClientFilter::default()),
        Some(BodyPart::Json(v)) => serde_json::from_value(v.clone())
            .map_err(|e| DecodeError::Body { message_type: TYPE.into(), reason: e.to_string() }),
        Some(_) => Err(DecodeError::Body { message_type: TYPE.into(), reason: "filter is not a JSON object".into() }),
    }
}

/// Server: the response, one body part per matching client.
pub fn respond<'a>(request: &Message, clients: impl Iterator<Item = ClientRecord<'a>>) -> Message {
    let mut response = request.response();
    response.metadata.custom.insert("client_response_list".into(), Value::Bool(false));
    for record in clients {
        let client = record.client;
        let seen = humantime::format_rfc3339_seconds(record.last_seen).to_string();
        let line = ClientStatus {
            identity: client.identity.clone().unwrap_or_default(),
            application: client.application.clone(),
            environment: client.environment.clone(),
            roles: client.roles.clone(),
            last_checked_in: seen.clone(),
            state: if record.online { ONLINE } else { OFFLINE }.into(),
            last_seen: seen,
            server: record.server.map(str::to_owned),
        };
        response.body.push(BodyPart::Json(serde_json::to_value(line).unwrap_or(Value::Null)));
    }
    response
}

/// Admin: the clients in the response, sorted by identity. Parts that do not
/// read as a client are skipped.
pub fn clients(response: &Message) -> Vec<ClientStatus> {
    let mut list: Vec<ClientStatus> = response
        .body
        .iter()
        .filter_map(BodyPart::as_json)
        .filter_map(|v| serde_json::from_value(v.clone()).ok())
        .collect();
    list.sort_by(|a, b| a.identity.cmp(&b.identity));
    list
}
