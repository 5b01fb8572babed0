//! `client:tokens`: the outstanding enrollment tokens, by id (the start of
//! the token's SHA-256), with their name, uses left and expiry; never a
//! token. `client:token --revoke ID` withdraws one. Admin keys only.

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::keys::Token;
use crate::message::{BodyPart, Message};
use crate::session::{Outcome, Session};

use super::{Admin, Rule, RunsOn, Senders, Wait};

pub const TYPE: &str = "ListTokens";

pub const RULE: Rule =
    Rule { wire: TYPE, runs_on: RunsOn::Server, senders: Senders::Admins, may_block: false, job: false };

/// List the outstanding enrollment tokens: id, name, uses left, expiry.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// Print JSON for scripts.
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub wait: Wait,
}

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

impl Admin for Args {
    fn wait(&self, global: f64) -> f64 {
        self.wait.or(global)
    }

    fn run(self, session: &mut Session) -> anyhow::Result<Outcome> {
        let response = session.ask_server(request())?;
        let tokens = tokens(&response);
        if self.json {
            println!("{}", serde_json::to_string_pretty(&tokens)?);
        } else {
            print!("{}", format_table(&tokens));
        }
        Ok(Outcome::Done)
    }
}

/// Admin: the tokens in the response.
pub fn tokens(response: &Message) -> Vec<TokenStatus> {
    response.body.iter().filter_map(BodyPart::as_json).filter_map(|v| serde_json::from_value(v.clone()).ok()).collect()
}

/// Admin: a table.
pub fn format_table(tokens: &[TokenStatus]) -> String {
    if tokens.is_empty() {
        return "no outstanding tokens\n".into();
    }
    let mut out = format!("{:<14} {:<24} {:>9} {}\n", "ID", "NAME", "USES LEFT", "EXPIRES");
    for t in tokens {
        let name = t.name.as_deref().unwrap_or("(agent's identity)");
        out.push_str(&format!("{:<14} {:<24} {:>9} {}\n", t.id, name, t.uses_left, t.expires));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn list_round_trip_never_holds_a_token() {
        let token = Token {
            hash: crate::keys::token_hash("s3cr3t"),
            name: Some("web-3".into()),
            uses_left: 1,
            expires: "2030-01-01T00:00:00Z".into(),
            created: None,
        };
        let response = respond(&request(), std::slice::from_ref(&token));
        let text = String::from_utf8_lossy(&response.to_frames().concat()).into_owned();
        assert!(!text.contains("s3cr3t") && !text.contains(&token.hash), "{text}");
        let back = tokens(&Message::from_frames(&response.to_frames()).unwrap());
        assert_eq!(back[0].id, token.id());
        assert!(format_table(&back).contains("web-3"));
    }
}
