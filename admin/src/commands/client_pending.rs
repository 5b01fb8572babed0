//! `client:pending`, `client:accept`, `client:reject`: the keys waiting to be enrolled.

use crate::session::{Outcome, Session};
use pantry_shared::commands::client_pending::*;
use pantry_shared::message::{BodyPart, Message};
use std::time::SystemTime;

use crate::session::{Admin, Wait};

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
            crate::session::ago(&k.last_seen, now),
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
