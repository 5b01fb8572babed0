//! Admins' signing keys and the agents' trust list on the wire:
//!
//! - `RegisterSigningKey` (admin): the public half of the admin's signing
//!   key, made at its first use; the server keeps only public halves;
//! - `ShowTrustList` (admin): the server's copy of the signed list, and the
//!   signing keys of every admin it knows (for `client:trust NAME`);
//! - `SetTrustList` (admin): a new list, signed by an admin on the current
//!   one (or, when there is none yet, by the admin it names alone: the
//!   first admin);
//! - `TrustList` (the server to every agent): the list, published when it
//!   changes; an agent takes it only when it is newer and signed by a key
//!   it already trusts.

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::error::DecodeError;
use crate::message::{BodyPart, Message};
use crate::rule::{Rule, RunsOn, Senders};
use crate::signing::{TrustList, TrustedAdmin};

pub const REGISTER_TYPE: &str = "RegisterSigningKey";
pub const SHOW_TYPE: &str = "ShowTrustList";
pub const SET_TYPE: &str = "SetTrustList";
pub const LIST_TYPE: &str = "TrustList";

pub const REGISTER_RULE: Rule =
    Rule { wire: REGISTER_TYPE, runs_on: RunsOn::Server, senders: Senders::Admins, may_block: false, job: true };
pub const SHOW_RULE: Rule =
    Rule { wire: SHOW_TYPE, runs_on: RunsOn::Server, senders: Senders::Admins, may_block: false, job: false };
pub const SET_RULE: Rule =
    Rule { wire: SET_TYPE, runs_on: RunsOn::Server, senders: Senders::Admins, may_block: false, job: true };
/// Only the server sends it (an admin's is refused).
pub const LIST_RULE: Rule =
    Rule { wire: LIST_TYPE, runs_on: RunsOn::Clients, senders: Senders::Admins, may_block: false, job: false };

/// Where a registration says which version of the list the agent has, and
/// where the server's answer carries a newer one.
pub const VERSION_FIELD: &str = "trust_version";
pub const LIST_FIELD: &str = "trust_list";

fn json_body<T: for<'de> Deserialize<'de>>(m: &Message, kind: &str) -> Result<T, DecodeError> {
    let bad = |reason: String| DecodeError::Body { message_type: kind.into(), reason };
    let body = m.body.first().and_then(BodyPart::as_json).ok_or_else(|| bad("no JSON body".into()))?;
    serde_json::from_value(body.clone()).map_err(|e| bad(e.to_string()))
}

fn with_json(kind: &str, value: Value) -> Message {
    let mut m = Message::new(kind);
    m.metadata.requires_response = true;
    m.body.push(BodyPart::Json(value));
    m
}

/// Admin: registers `signing_key` (hex) for the admin's own key.
pub fn register_request(signing_key: &str) -> Message {
    with_json(REGISTER_TYPE, serde_json::json!({ "signing_key": signing_key }))
}

pub fn parse_register(m: &Message) -> Result<String, DecodeError> {
    #[derive(Deserialize)]
    struct Body {
        signing_key: String,
    }
    Ok(json_body::<Body>(m, REGISTER_TYPE)?.signing_key)
}

pub fn show_request() -> Message {
    let mut m = Message::new(SHOW_TYPE);
    m.metadata.requires_response = true;
    m
}

/// What `ShowTrustList` answers.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Shown {
    /// The current list; `None` before the first admin made one.
    pub list: Option<TrustList>,
    /// Every admin the server knows a signing key of.
    pub admins: Vec<TrustedAdmin>,
}

pub fn respond_show(request: &Message, shown: &Shown) -> Message {
    let mut response = request.response();
    response.body.push(BodyPart::Json(serde_json::to_value(shown).unwrap_or(Value::Null)));
    response
}

pub fn shown(response: &Message) -> Result<Shown, DecodeError> {
    json_body(response, SHOW_TYPE)
}

pub fn set_request(list: &TrustList) -> Message {
    with_json(SET_TYPE, serde_json::to_value(list).unwrap_or(Value::Null))
}

pub fn parse_list(m: &Message) -> Result<TrustList, DecodeError> {
    json_body(m, m.message_type())
}

/// Server: the list, to every agent (stream `""`), no answer asked.
pub fn publish(list: &TrustList) -> Message {
    let mut m = Message::new(LIST_TYPE);
    m.metadata.from = "pantry-server".into();
    m.body.push(BodyPart::Json(serde_json::to_value(list).unwrap_or(Value::Null)));
    m
}

/// The list a registration's answer carries, if any.
pub fn carried(answer: &Message) -> Option<TrustList> {
    answer.metadata.custom.get(LIST_FIELD).and_then(|v| serde_json::from_value(v.clone()).ok())
}

/// The version a registration says the agent has (0: none).
pub fn version_of(registration: &Message) -> u64 {
    registration.metadata.custom.get(VERSION_FIELD).and_then(Value::as_u64).unwrap_or(0)
}
