//! `client:trust NAME`: agents trust the signed requests of admin NAME
//! (one `pantry-server keys:create-admin` made, or whose key the agents'
//! list lacks): a new trust list, signed by this admin, goes to every
//! agent.

use crate::session::{Admin, Outcome, Session, Wait};

/// Put admin NAME's signing key on every agent's trust list.
#[derive(clap::Args, Debug)]
pub struct Args {
    pub name: String,
    #[command(flatten)]
    pub wait: Wait,
}

impl Admin for Args {
    fn wait(&self, global: f64) -> f64 {
        self.wait.or(global)
    }

    fn run(self, session: &mut Session) -> anyhow::Result<Outcome> {
        crate::signing::trust_admin(session, &self.name)?;
        Ok(Outcome::Done)
    }
}
