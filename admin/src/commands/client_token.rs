//! `client:token`: make an enrollment token (or `--revoke ID` one).

use crate::session::{Outcome, Session};
use anyhow::Context as _;
use pantry_shared::commands::client_token::*;
use std::time::Duration;

use crate::session::{Admin, Wait};

/// Make an enrollment token for `pantry-client enroll --token` and print
/// it (one line); the server keeps only its hash.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// The identity the enrolled agent gets (default: its own).
    #[arg(long, value_name = "NAME")]
    pub name: Option<String>,
    /// How many agents may enroll with it.
    #[arg(long, default_value_t = DEFAULT_USES, value_name = "N")]
    pub uses: u32,
    /// How long it is valid (e.g. 30m, 1h, 7d).
    #[arg(long, default_value = "1h", value_name = "DURATION", value_parser = humantime::parse_duration)]
    pub ttl: Duration,
    /// Withdraw the outstanding token with this id (`client:tokens`)
    /// instead of making one.
    #[arg(long, value_name = "ID", conflicts_with_all = ["name", "uses", "ttl"])]
    pub revoke: Option<String>,
    #[command(flatten)]
    pub wait: Wait,
}

impl Admin for Args {
    fn wait(&self, global: f64) -> f64 {
        self.wait.or(global)
    }

    /// Admin: prints the token, the one time anyone sees it (or, with
    /// `--revoke`, that it is withdrawn).
    fn run(self, session: &mut Session) -> anyhow::Result<Outcome> {
        if let Some(id) = &self.revoke {
            session.ask_server(revoke_request(id))?;
            println!("token {id} revoked: it enrolls nothing from now on");
            return Ok(Outcome::Done);
        }
        let asked = TokenRequest { name: self.name, uses: self.uses, ttl: self.ttl };
        let response = session.ask_server(request(&asked))?;
        println!("{}", token(&response).context("the server's answer holds no token")?);
        Ok(Outcome::Done)
    }
}
