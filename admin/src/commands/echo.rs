//! `echo MESSAGE`: every matching client answers with MESSAGE.

use crate::session::{print_json_summary, report_offline, Outcome, Session};
use pantry_shared::commands::echo::*;
use pantry_shared::message::{BodyPart, Message};
use std::io::Write as _;

use crate::session::{Admin, Wait};

/// Every matching client answers with MESSAGE.
#[derive(clap::Args, Debug)]
pub struct Args {
    pub message: String,
    /// Print JSON for scripts.
    #[arg(long)]
    pub json: bool,
    /// Print the job id and return at once; `pantry-admin job ID` shows
    /// the answers.
    #[arg(long = "async")]
    pub detach: bool,
    #[command(flatten)]
    pub wait: Wait,
}

impl Admin for Args {
    fn wait(&self, global: f64) -> f64 {
        self.wait.or(global)
    }

    /// Admin: prints each answer as it arrives (or, with `--json`, all of
    /// them at the end), then the summary.
    fn run(self, session: &mut Session) -> anyhow::Result<Outcome> {
        let target = session.target()?;
        let request = session.to_clients(request(&self.message), &target);
        if self.detach {
            return session.start_async(&request);
        }
        let (json, online_only) = (self.json, session.online_only);
        let mut answers = Vec::new();
        let result = session.ask_clients(
            &request,
            None,
            |_, offline| report_offline(offline, online_only, json),
            |answer| {
                if json {
                    answers.push(serde_json::json!({
                        "identity": answer.metadata.from,
                        "message": answer.body.first().and_then(|b| b.as_text()),
                    }));
                } else {
                    println!("{}", format_answer(answer));
                    let _ = std::io::stdout().flush();
                }
                true
            },
        )?;
        print_json_summary(json, answers, &result)?;
        Ok(session.report(&result, &target))
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
