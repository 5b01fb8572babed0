//! `client:token [--name NAME] [--uses N] [--ttl DURATION]`: the server
//! makes an enrollment token and keeps only its SHA-256, how many uses are
//! left and when it expires (in `server_keys.yml`, or etcd). An agent
//! enrolls with it (`pantry-client enroll --token`) and its private key
//! never leaves it. `client:token --revoke ID` withdraws an outstanding one
//! (`client:tokens` lists their ids): it enrolls nothing from then on, on
//! every server of a cluster. Admin keys only.

use std::time::Duration;

use serde_json::{json, Value};

use crate::error::DecodeError;
use crate::message::{BodyPart, Message};

use crate::rule::{Rule, RunsOn, Senders};

pub const TYPE: &str = "CreateToken";

pub const RULE: Rule =
    Rule { wire: TYPE, runs_on: RunsOn::Server, senders: Senders::Admins, may_block: false, job: true };

pub const REVOKE_TYPE: &str = "RevokeToken";

pub const REVOKE_RULE: Rule =
    Rule { wire: REVOKE_TYPE, runs_on: RunsOn::Server, senders: Senders::Admins, may_block: false, job: true };

/// Defaults: one use, one hour.
pub const DEFAULT_USES: u32 = 1;
pub const DEFAULT_TTL: Duration = Duration::from_secs(3600);
const MAX_USES: u32 = 1_000_000;
const MAX_TTL: Duration = Duration::from_secs(366 * 24 * 3600);

/// Admin: withdraw the token `id`.
pub fn revoke_request(id: &str) -> Message {
    let mut m = Message::new(REVOKE_TYPE);
    m.metadata.requires_response = true;
    m.metadata.custom.insert("id".into(), id.into());
    m
}

/// Server: the id a revocation names.
pub fn revoked_id(request: &Message) -> Option<&str> {
    request.metadata.custom.get("id").and_then(Value::as_str).filter(|id| !id.trim().is_empty())
}

/// What the admin asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenRequest {
    /// The name each enrolled key gets; with a name, one use only makes
    /// sense (names are unique).
    pub name: Option<String>,
    pub uses: u32,
    pub ttl: Duration,
}

/// Admin: the request; the options go in `custom`.
pub fn request(token: &TokenRequest) -> Message {
    let mut m = Message::new(TYPE);
    m.metadata.requires_response = true;
    if let Some(name) = &token.name {
        m.metadata.custom.insert("name".into(), name.as_str().into());
    }
    m.metadata.custom.insert("uses".into(), token.uses.into());
    m.metadata.custom.insert("ttl_seconds".into(), token.ttl.as_secs().into());
    m
}

/// Server: the options, checked.
pub fn parse(request: &Message) -> Result<TokenRequest, DecodeError> {
    let bad = |reason: String| DecodeError::Body { message_type: TYPE.into(), reason };
    let custom = &request.metadata.custom;
    let name = match custom.get("name") {
        None | Some(Value::Null) => None,
        Some(Value::String(name)) => Some(name.clone()),
        Some(_) => return Err(bad("`name` must be a string".into())),
    };
    let uses = custom
        .get("uses")
        .map_or(Some(u64::from(DEFAULT_USES)), Value::as_u64)
        .ok_or_else(|| bad("`uses` must be a number".into()))?;
    if uses == 0 || uses > u64::from(MAX_USES) {
        return Err(bad(format!("uses must be between 1 and {MAX_USES}")));
    }
    if name.is_some() && uses > 1 {
        return Err(bad("a token with a name enrolls one key (names are unique): --uses 1".into()));
    }
    let ttl = custom
        .get("ttl_seconds")
        .map_or(Some(DEFAULT_TTL.as_secs()), Value::as_u64)
        .map(Duration::from_secs)
        .ok_or_else(|| bad("`ttl_seconds` must be a number".into()))?;
    if ttl.is_zero() || ttl > MAX_TTL {
        return Err(bad("the time to live must be between 1 s and 366 days".into()));
    }
    Ok(TokenRequest { name, uses: uses as u32, ttl })
}

/// Server: a new token, 256 random bits as 64 hex digits.
pub fn new_token() -> Result<String, getrandom::Error> {
    let mut bytes = [0u8; 32];
    getrandom::fill(&mut bytes)?;
    Ok(bytes.iter().map(|b| format!("{b:02x}")).collect())
}

/// Server: the answer carries the token (once: the server keeps only its
/// hash) and when it expires.
pub fn respond(request: &Message, token: &str, expires: &str) -> Message {
    let mut response = request.response();
    response.body.push(BodyPart::Json(json!({"token": token, "expires": expires})));
    response
}

/// Admin: the token in the answer.
pub fn token(response: &Message) -> Option<&str> {
    response.body.first().and_then(BodyPart::as_json).and_then(|b| b["token"].as_str())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn options_round_trip_and_are_checked() {
        let asked = TokenRequest { name: None, uses: 1000, ttl: Duration::from_secs(600) };
        let m = Message::from_frames(&request(&asked).to_frames()).unwrap();
        assert_eq!(parse(&m).unwrap(), asked);
        let named = TokenRequest { name: Some("web-3".into()), uses: 2, ttl: DEFAULT_TTL };
        assert!(parse(&request(&named)).is_err(), "a named token with two uses");
        let mut bare = Message::new(TYPE);
        bare.metadata.requires_response = true;
        assert_eq!(parse(&bare).unwrap(), TokenRequest { name: None, uses: 1, ttl: DEFAULT_TTL });
        let token = new_token().unwrap();
        assert_eq!(token.len(), 64);
        assert_ne!(token, new_token().unwrap());
        let answer = respond(&m, &token, "2030-01-01T00:00:00Z");
        assert_eq!(super::token(&answer), Some(token.as_str()));
    }
}
