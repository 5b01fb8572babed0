//! Enrollment where the private key never leaves the agent.
//!
//! The agent makes its own key pair and connects with it. The server admits
//! an unknown key on its receive port only, for nothing but this message,
//! for a few seconds. With a token (`pantry-client enroll --token`), the
//! server stores the key at once, bound to the token's name, the identity
//! `client.yml` sets, or else the host name, and answers with the name. A
//! named token and a different configured identity are refused, naming
//! both. Without a token, the key joins the server's pending list (with the
//! identity the agent claims) until an admin runs `client:accept`; the
//! answer says it waits.

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::error::DecodeError;

use crate::message::{BodyPart, Message};
use crate::rule::{Rule, RunsOn, Senders};

pub const TYPE: &str = "Enroll";

pub const RULE: Rule =
    Rule { wire: TYPE, runs_on: RunsOn::Server, senders: Senders::Enrollees, may_block: false, job: false };

/// What the agent sends.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EnrollRequest {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token: Option<String>,
    /// `client.identity` when client.yml sets it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub identity: Option<String>,
    /// The host name: the identity of an agent that sets none.
    pub hostname: String,
}

impl EnrollRequest {
    /// The identity the agent will use.
    pub fn claimed(&self) -> &str {
        self.identity.as_deref().unwrap_or(&self.hostname)
    }
}

/// Agent: the request.
pub fn request(enroll: &EnrollRequest) -> Message {
    let mut m = Message::new(TYPE);
    m.metadata.requires_response = true;
    m.metadata.from = enroll.claimed().to_owned();
    m.body.push(BodyPart::Json(serde_json::to_value(enroll).unwrap_or(Value::Null)));
    m
}

/// Server: the request, checked.
pub fn parse(request: &Message) -> Result<EnrollRequest, DecodeError> {
    let bad = |reason: String| DecodeError::Body { message_type: TYPE.into(), reason };
    let body = request.body.first().and_then(BodyPart::as_json).ok_or_else(|| bad("no JSON body".into()))?;
    let enroll: EnrollRequest = serde_json::from_value(body.clone()).map_err(|e| bad(e.to_string()))?;
    crate::filter::ClientFilter::check_identity(enroll.claimed()).map_err(|e| bad(e.to_string()))?;
    if enroll.token.as_ref().is_some_and(|t| t.len() > 256) {
        return Err(bad("token too long".into()));
    }
    Ok(enroll)
}

/// How an enrollment ended, as the agent reads it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Enrolled {
    /// The key is known now, bound to `name`.
    Accepted { name: String },
    /// Without a token: waiting for an admin's `client:accept`.
    Waiting,
}

/// Server: the key is known, bound to `name`.
pub fn respond_accepted(request: &Message, name: &str) -> Message {
    let mut response = request.response();
    response.body.push(BodyPart::Json(serde_json::json!({"name": name})));
    response
}

/// Server: the key is on the pending list.
pub fn respond_waiting(request: &Message) -> Message {
    let mut response = request.response();
    response.metadata.custom.insert("pending".into(), Value::Bool(true));
    response
}

/// Agent: what the answer says; an error is the server's reason.
pub fn outcome(response: &Message) -> Result<Enrolled, NotEnrolled> {
    if let Some(error) = response.error() {
        return Err(NotEnrolled::Refused(error.to_owned()));
    }
    if response.metadata.custom.get("pending") == Some(&Value::Bool(true)) {
        return Ok(Enrolled::Waiting);
    }
    let name = response.body.first().and_then(BodyPart::as_json).and_then(|b| b["name"].as_str());
    name.map(|n| Enrolled::Accepted { name: n.to_owned() }).ok_or(NotEnrolled::NoName)
}

/// Why an enrollment answer is no enrollment.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NotEnrolled {
    /// The server's reason.
    #[error("{0}")]
    Refused(String),
    #[error("the server's answer names no identity")]
    NoName,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_and_outcomes() {
        let asked = EnrollRequest { token: Some("t".into()), identity: None, hostname: "web1.example.com".into() };
        let m = Message::from_frames(&request(&asked).to_frames()).unwrap();
        assert_eq!(parse(&m).unwrap(), asked);
        assert_eq!(m.metadata.from, "web1.example.com");
        assert_eq!(outcome(&respond_accepted(&m, "web-1")), Ok(Enrolled::Accepted { name: "web-1".into() }));
        assert_eq!(outcome(&respond_waiting(&m)), Ok(Enrolled::Waiting));
        assert_eq!(
            outcome(&m.refusal("unknown enrollment token")),
            Err(NotEnrolled::Refused("unknown enrollment token".into()))
        );
        let bad = EnrollRequest { token: None, identity: Some("a b".into()), hostname: "h".into() };
        assert!(parse(&request(&bad)).is_err());
    }
}
