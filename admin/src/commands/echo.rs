//! `echo MESSAGE`: every matching client answers with MESSAGE.

use crate::for_clients::{self, Job};
use crate::rollout::RolloutArgs;
use crate::session::{Admin, Outcome, Session, Wait};
use anyhow::Context as _;
use pantry_shared::commands::echo::*;
use pantry_shared::message::{BodyPart, Message};

/// Every matching client answers with MESSAGE.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// The text [with --from-job: the job's].
    #[arg(required_unless_present = "from_job")]
    pub message: Option<String>,
    /// Print JSON for scripts (each agent's state included).
    #[arg(long)]
    pub json: bool,
    /// Print the job id and return at once; `pantry-admin job ID` shows
    /// the answers.
    #[arg(long = "async")]
    pub detach: bool,
    #[command(flatten)]
    pub rollout: RolloutArgs,
    #[command(flatten)]
    pub wait: Wait,
}

impl Admin for Args {
    fn wait(&self, global: f64) -> f64 {
        self.wait.or(global)
    }

    /// Admin: prints each answer as it arrives (or, with `--json` or
    /// `--group`, all of them at the end), then the summary; in batches
    /// when asked, the server running the rollout.
    fn run(self, session: &mut Session) -> anyhow::Result<Outcome> {
        let Some(job) = self.rollout.prepare(session, TYPE)? else { return Ok(Outcome::NoMatch) };
        if self.rollout.dry_run {
            return self.rollout.dry_run(session, &job);
        }
        let text = match (&self.message, job.argument("text")) {
            (Some(text), _) => text.clone(),
            (None, Some(text)) => text.as_str().context("the job's text is not text")?.to_owned(),
            (None, None) => anyhow::bail!("no MESSAGE given, and the job holds none"),
        };
        let request = job.request(session, request(&text), session.deadline.idle);
        if self.detach {
            return session.start_async(&request);
        }
        let (json, group) = (self.json, self.rollout.group);
        let job = Job { request, target: &job.target, plan: &job.plan, timeout: 0.0, json, group, to_stderr: false };
        for_clients::run(session, job, None, |_, _| {})
    }
}

/// Admin: one line per answer, `host-1: MESSAGE`.
pub fn format_answer(response: &Message) -> String {
    let text = response.body.first().and_then(BodyPart::as_text).unwrap_or_default();
    format!("{}: {}", response.metadata.from, text)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_answer_is_the_request_text() {
        let mut req = request("hi there");
        req.metadata.from = "admin".into();
        let mut resp = handle(&req);
        resp.metadata.from = "host-1".into();
        assert_eq!(resp.uuid(), req.uuid());
        assert_eq!(resp.metadata.to, "admin");
        assert_eq!(format_answer(&resp), "host-1: hi there");
    }
}
