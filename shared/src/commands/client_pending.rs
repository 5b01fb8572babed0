//! `client:pending`, `client:accept`, `client:reject`: the keys the server
//! saw but does not know, the way salt-key users know them.
//!
//! The server remembers the most recent unknown keys that tried to connect
//! (at most 1,000): where from, when first and last, how often, and the
//! identity the agent claims when it asks to be enrolled without a token.
//! `client:accept KEY|IDENTITY [--name NAME]` makes one a client key bound
//! to NAME (default: its claimed identity); `client:reject` forgets it. The
//! list survives a restart. Admin keys only.

use std::time::SystemTime;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::message::{BodyPart, Message};
use crate::session::{Outcome, Session};

use super::{Admin, Rule, RunsOn, Senders, Wait};

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

/// List the keys that tried to connect but are not known: key, claimed
/// identity, address, when last seen, attempts.
#[derive(clap::Args, Debug)]
pub struct ListArgs {
    /// Print JSON for scripts.
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub wait: Wait,
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

impl Admin for ListArgs {
    fn wait(&self, global: f64) -> f64 {
        self.wait.or(global)
    }

    fn run(self, session: &mut Session) -> anyhow::Result<Outcome> {
        let response = session.ask_server(list_request())?;
        let keys = keys(&response);
        if self.json {
            println!("{}", serde_json::to_string_pretty(&keys)?);
        } else {
            print!("{}", format_table(&keys, SystemTime::now()));
        }
        Ok(Outcome::Done)
    }
}

/// Admin: the keys in the answer.
pub fn keys(response: &Message) -> Vec<PendingKey> {
    response.body.iter().filter_map(BodyPart::as_json).filter_map(|v| serde_json::from_value(v.clone()).ok()).collect()
}

/// Admin: a table.
pub fn format_table(keys: &[PendingKey], now: SystemTime) -> String {
    if keys.is_empty() {
        return "no pending keys\n".into();
    }
    let mut out = format!("{:<40} {:<24} {:<18} {:<16} {:>8}\n", "KEY", "IDENTITY", "ADDRESS", "LAST SEEN", "ATTEMPTS");
    for k in keys {
        out.push_str(&format!(
            "{:<40} {:<24} {:<18} {:<16} {:>8}\n",
            k.public_key,
            k.identity.as_deref().unwrap_or("-"),
            k.address,
            super::status::ago(&k.last_seen, now),
            k.attempts
        ));
    }
    out
}

/// Make a pending key a client key, bound to NAME (default: the
/// identity it claimed).
#[derive(clap::Args, Debug)]
pub struct AcceptArgs {
    /// The pending key (Z85, which may begin with `-`) or the identity it
    /// claimed.
    #[arg(value_name = "KEY|IDENTITY", allow_hyphen_values = true)]
    pub target: String,
    #[arg(long, value_name = "NAME")]
    pub name: Option<String>,
    #[command(flatten)]
    pub wait: Wait,
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

/// Forget a pending key.
#[derive(clap::Args, Debug)]
pub struct RejectArgs {
    /// The pending key (Z85, which may begin with `-`) or the identity it
    /// claimed.
    #[arg(value_name = "KEY|IDENTITY", allow_hyphen_values = true)]
    pub target: String,
    #[command(flatten)]
    pub wait: Wait,
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

impl Admin for AcceptArgs {
    fn wait(&self, global: f64) -> f64 {
        self.wait.or(global)
    }

    fn run(self, session: &mut Session) -> anyhow::Result<Outcome> {
        let response = session.ask_server(accept_request(&self.target, self.name.as_deref()))?;
        println!("{}", format_done(&response, "accepted"));
        Ok(Outcome::Done)
    }
}

impl Admin for RejectArgs {
    fn wait(&self, global: f64) -> f64 {
        self.wait.or(global)
    }

    fn run(self, session: &mut Session) -> anyhow::Result<Outcome> {
        let response = session.ask_server(reject_request(&self.target))?;
        println!("{}", format_done(&response, "rejected"));
        Ok(Outcome::Done)
    }
}

/// Admin: one line.
pub fn format_done(response: &Message, verb: &str) -> String {
    let body = response.body.first().and_then(BodyPart::as_json);
    let key = body.and_then(|b| b["public_key"].as_str()).unwrap_or("?");
    match body.and_then(|b| b["name"].as_str()) {
        Some(name) => format!("{verb} {key} as {name}"),
        None => format!("{verb} {key}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn list_round_trip() {
        let k = PendingKey {
            public_key: "k".repeat(40),
            address: "10.0.0.7".into(),
            first_seen: "2026-01-01T00:00:00Z".into(),
            last_seen: "2026-01-01T00:01:00Z".into(),
            attempts: 3,
            identity: Some("web-3".into()),
        };
        let back =
            keys(&Message::from_frames(&respond_list(&list_request(), std::slice::from_ref(&k)).to_frames()).unwrap());
        assert_eq!(back, [k]);
        assert!(format_table(&back, SystemTime::now()).contains("web-3"));
        let accept = accept_request("web-3", Some("web-03"));
        assert_eq!((target(&accept), name(&accept)), (Some("web-3"), Some("web-03")));
        let done = respond_done(&accept, "KEY", Some("web-03"));
        assert_eq!(format_done(&done, "accepted"), "accepted KEY as web-03");
    }
}
