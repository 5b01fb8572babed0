//! `client:tokens`: the outstanding enrollment tokens, by id (the start of
//! the token's SHA-256), with their name, uses left and expiry; never a
//! token. `client:token --revoke ID` withdraws one. Admin keys only.

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::keys::Token;
use crate::message::{BodyPart, Message};

use crate::rule::{Rule, RunsOn, Senders};

pub const TYPE: &str = "ListTokens";

pub const RULE: Rule =
    Rule { wire: TYPE, runs_on: RunsOn::Server, senders: Senders::Admins, may_block: false, job: false };

/// Admin: no body.
pub fn request() -> Message {
    let mut m = Message::new(TYPE);
    m.metadata.requires_response = true;
    m
}

/// One token as the admin sees it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TokenStatus {
    pub id: String,
    /// The identity it enrolls as; `None`: the agent's own.
    pub name: Option<String>,
    pub uses_left: u32,
    pub expires: String,
    pub created: Option<String>,
}

/// Server: one body part per token, soonest to expire first.
pub fn respond(request: &Message, tokens: &[Token]) -> Message {
    let mut listed: Vec<TokenStatus> = tokens
        .iter()
        .map(|t| TokenStatus {
            id: t.id().to_owned(),
            name: t.name.clone(),
            uses_left: t.uses_left,
            expires: t.expires.clone(),
            created: t.created.clone(),
        })
        .collect();
    listed.sort_by(|a, b| a.expires.cmp(&b.expires));
    let mut response = request.response();
    response.body.extend(listed.iter().map(|t| BodyPart::Json(serde_json::to_value(t).unwrap_or(Value::Null))));
    response
}

/// Admin: the tokens in the response.
pub fn tokens(response: &Message) -> Vec<TokenStatus> {
    response.body.iter().filter_map(BodyPart::as_json).filter_map(|v| serde_json::from_value(v.clone()).ok()).collect()
}
