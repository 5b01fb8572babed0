//! `client:revoke NAME|KEY`: remove a key and cut it off.

use crate::session::{Outcome, Session};
use pantry_shared::commands::client_revoke::*;
use pantry_shared::message::{BodyPart, Message};

use crate::session::{Admin, Wait};

/// Remove a key (by name or Z85 key) and cut its connections off.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// The key's name, or the key (Z85, which may begin with `-`).
    #[arg(value_name = "NAME|KEY", allow_hyphen_values = true)]
    pub target: String,
    #[command(flatten)]
    pub wait: Wait,
}

impl Admin for Args {
    fn wait(&self, global: f64) -> f64 {
        self.wait.or(global)
    }

    fn run(self, session: &mut Session) -> anyhow::Result<Outcome> {
        let response = session.ask_server(request(&self.target))?;
        println!("{}", format_answer(&response));
        // An admin: its signature goes from the agents' trust list.
        let body = response.body.first().and_then(BodyPart::as_json);
        let name = body.and_then(|b| b["name"].as_str()).map(str::to_owned);
        if let (Some(name), true) = (name, session.signer.is_some()) {
            if let Err(e) = crate::signing::distrust_admin(session, &name) {
                eprintln!("the agents' trust list is unchanged: {e:#}");
            }
        }
        Ok(Outcome::Done)
    }
}

/// Admin: one line.
pub fn format_answer(response: &Message) -> String {
    let body = response.body.first().and_then(BodyPart::as_json);
    let field = |f: &str| body.and_then(|b| b[f].as_str()).unwrap_or("?").to_owned();
    format!("revoked {} ({})", field("name"), field("public_key"))
}
