//! `client:forget IDENTITY`: the server drops a client from its registry
//! now (offline clients also leave by themselves after
//! `registry.forget_after`). A client still running comes back at its next
//! check-in. Admin keys only.

use serde_json::Value;

use crate::message::Message;
use crate::session::{Outcome, Session};

use super::{Admin, Rule, RunsOn, Senders, Wait};

pub const TYPE: &str = "ForgetClient";

pub const RULE: Rule =
    Rule { wire: TYPE, runs_on: RunsOn::Server, senders: Senders::Admins, may_block: false, job: true };

/// Drop a client from the registry now (offline clients leave by
/// themselves after registry.forget_after).
#[derive(clap::Args, Debug)]
pub struct Args {
    pub identity: String,
    #[command(flatten)]
    pub wait: Wait,
}

/// Admin: the identity in `custom.identity`.
pub fn request(identity: &str) -> Message {
    let mut m = Message::new(TYPE);
    m.metadata.requires_response = true;
    m.metadata.custom.insert("identity".into(), Value::String(identity.into()));
    m
}

/// Server: the identity to forget.
pub fn identity(request: &Message) -> Option<&str> {
    request.metadata.custom.get("identity").and_then(Value::as_str)
}

impl Admin for Args {
    fn wait(&self, global: f64) -> f64 {
        self.wait.or(global)
    }

    fn run(self, session: &mut Session) -> anyhow::Result<Outcome> {
        session.ask_server(request(&self.identity))?;
        println!("{}", format_answer(&self.identity));
        Ok(Outcome::Done)
    }
}

/// Admin: one line.
pub fn format_answer(identity: &str) -> String {
    format!("forgot {identity}")
}
