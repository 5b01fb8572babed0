//! `client:forget IDENTITY`: drop a client from the registry now.

use crate::session::{Outcome, Session};
use pantry_shared::commands::client_forget::*;

use crate::session::{Admin, Wait};

/// Drop a client from the registry now (offline clients leave by
/// themselves after registry.forget_after).
#[derive(clap::Args, Debug)]
pub struct Args {
    pub identity: String,
    #[command(flatten)]
    pub wait: Wait,
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
