//! `client:list`: every known key with its name, role, creation time, when
//! it was last seen and whether it is connected now. Admin keys only.

use serde::{Deserialize, Serialize};
use serde_json::Value;

use std::time::SystemTime;

use crate::keys::KnownKey;
use crate::message::{BodyPart, Message};
use crate::session::{Outcome, Session};

use super::{Admin, Rule, RunsOn, Senders, Wait};

pub const TYPE: &str = "ListClients";

pub const RULE: Rule =
    Rule { wire: TYPE, runs_on: RunsOn::Server, senders: Senders::Admins, may_block: false, job: false };

/// List the server's known keys: name, role, key, created, last seen,
/// connected.
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

impl Admin for Args {
    fn wait(&self, global: f64) -> f64 {
        self.wait.or(global)
    }

    fn run(self, session: &mut Session) -> anyhow::Result<Outcome> {
        let response = session.ask_server(request())?;
        let keys = keys(&response);
        if self.json {
            println!("{}", serde_json::to_string_pretty(&keys)?);
        } else {
            print!("{}", format_table(&keys, SystemTime::now()));
        }
        Ok(Outcome::Done)
    }
}

/// Admin: the keys in the response.
pub fn keys(response: &Message) -> Vec<KeyStatus> {
    response.body.iter().filter_map(BodyPart::as_json).filter_map(|v| serde_json::from_value(v.clone()).ok()).collect()
}

/// Admin: a table.
pub fn format_table(keys: &[KeyStatus], now: SystemTime) -> String {
    if keys.is_empty() {
        return "no known keys\n".into();
    }
    let mut out =
        format!("{:<20} {:<6} {:<40} {:<20} {:<16} {}\n", "NAME", "ROLE", "KEY", "CREATED", "LAST SEEN", "CONNECTED");
    for k in keys {
        let seen = k.last_seen.as_deref().map(|t| super::status::ago(t, now)).unwrap_or_else(|| "never".into());
        let created = k.created.as_deref().unwrap_or("-");
        let connected = if k.connected { "yes" } else { "no" };
        out.push_str(&format!(
            "{:<20} {:<6} {:<40} {:<20} {:<16} {}\n",
            k.name.as_deref().unwrap_or("(unbound)"),
            k.role,
            k.public_key,
            created,
            seen,
            connected
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::keys::Role;

    #[test]
    fn list_round_trip() {
        let known = vec![KnownKey {
            public_key: "k".repeat(40),
            name: Some("web-1".into()),
            role: Role::Client,
            created: None,
        }];
        let resp = respond(&request(), &known, |_| (None, true));
        let back = keys(&Message::from_frames(&resp.to_frames()).unwrap());
        assert_eq!(back.len(), 1);
        assert!(back[0].connected);
        assert!(format_table(&back, SystemTime::now()).contains("web-1"));
    }
}
