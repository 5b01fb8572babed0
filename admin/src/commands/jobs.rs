//! `jobs` and `job ID`: the job store's record of commands and their answers.

use super::{echo as echo_admin, exec as exec_admin, upload as upload_admin};
use crate::connection::unsupported;
use crate::session::{Outcome, Session};
use anyhow::Context as _;
use pantry_shared::commands::jobs::*;
use pantry_shared::commands::{exec, upload};
use pantry_shared::filter::Identities;
use serde_json::Value;
use std::time::{Duration, Instant};

use crate::session::{Admin, Wait};

/// Recent jobs, newest first: commands sent to clients and key or config
/// changes, with answered / failed / pending / offline counts. -a/-e/-r
/// select jobs sent to that stream, -i jobs sent to those identities.
#[derive(clap::Args, Debug)]
pub struct ListArgs {
    /// How many.
    #[arg(long, default_value_t = DEFAULT_LIMIT, value_name = "N")]
    pub limit: u32,
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
        let mut request = list_request(self.limit, &session.filter);
        Identities::attach(&mut request, &session.identities);
        let response = session.ask_server(request)?;
        let list = jobs(&response);
        if self.json {
            println!("{}", serde_json::to_string_pretty(&list)?);
        } else {
            print!("{}", format_table(&list));
        }
        Ok(Outcome::Done)
    }
}

/// Admin: a table.
pub fn format_table(jobs: &[JobSummary]) -> String {
    if jobs.is_empty() {
        return "no jobs\n".into();
    }
    let mut out = format!(
        "{:<36}  {:<23}  {:<16}  {:<14}  {:<24}  {:>8} {:>6} {:>7} {:>7}\n",
        "ID", "CREATED", "WHO", "COMMAND", "TARGET", "ANSWERED", "FAILED", "PENDING", "OFFLINE"
    );
    for j in jobs {
        let target = if j.target.is_empty() { "(every client)" } else { j.target.as_str() };
        out.push_str(&format!(
            "{:<36}  {:<23}  {:<16}  {:<14}  {:<24}  {:>8} {:>6} {:>7} {:>7}\n",
            j.id, j.created, j.who, j.command, target, j.answered, j.failed, j.pending, j.offline
        ));
    }
    out
}

/// One job's results, printed as the command printed them.
#[derive(clap::Args, Debug)]
pub struct ShowArgs {
    pub id: String,
    /// Print JSON for scripts.
    #[arg(long)]
    pub json: bool,
    /// Wait (up to --timeout) until every client sent the request has
    /// answered.
    #[arg(long = "wait")]
    pub until_done: bool,
    #[command(flatten)]
    pub wait: Wait,
}

impl Admin for ShowArgs {
    fn wait(&self, global: f64) -> f64 {
        self.wait.or(global)
    }

    /// Admin: the job as its command printed it; `--wait` polls until every
    /// client sent the request answered, or the deadline. It fails unless
    /// every answer succeeded and every client answered.
    fn run(self, session: &mut Session) -> anyhow::Result<Outcome> {
        let shown = loop {
            let response = session.ask_server(show_request(&self.id))?;
            let shown = job(&response).context("the server's answer holds no job")?;
            if !self.until_done || shown.summary.pending == 0 || shown.lost.len() as u32 >= shown.summary.pending {
                break shown;
            }
            if Instant::now() + Duration::from_millis(500) >= session.deadline.at {
                eprintln!("still waiting for {} clients", shown.summary.pending);
                break shown;
            }
            std::thread::sleep(Duration::from_millis(500));
        };
        if self.json {
            println!("{}", serde_json::to_string_pretty(&shown)?);
        } else {
            print!("{}", format_job(&shown));
        }
        let answered_ok = shown.answers.iter().all(|a| a.outcome == "ok");
        let complete = shown.summary.pending == 0 && shown.offline.is_empty() && shown.lost.is_empty();
        let changed_ok = shown.result.as_deref().is_none_or(|r| r == "ok");
        Ok((answered_ok && complete && changed_ok).into())
    }
}

/// Admin: a job's answers as its command printed them, then who did not
/// answer.
fn format_job(job: &JobDetail) -> String {
    let mut out = String::new();
    let command = job.summary.command.as_str();
    let timeout = job.arguments.get("timeout").and_then(Value::as_f64).unwrap_or(0.0);
    for answer in &job.answers {
        let m = answer.as_message(command);
        let line = match (m.error(), command) {
            (Some(error), _) => format!("{}: error: {error}\n", answer.identity),
            (None, exec::TYPE) => match exec::result(&m) {
                Some(result) => exec_admin::format_answer(&answer.identity, &result, timeout),
                None => format!("{}: {}\n", answer.identity, unsupported(command)),
            },
            (None, upload::TYPE) => match upload::result(&m) {
                Some(result) => format!("{}\n", upload_admin::format_answer(&answer.identity, &result)),
                None => format!("{}: {}\n", answer.identity, unsupported(command)),
            },
            (None, _) => format!("{}\n", echo_admin::format_answer(&m)),
        };
        out.push_str(&line);
    }
    for identity in &job.offline {
        out.push_str(&format!("{identity}: offline\n"));
    }
    for identity in &job.lost {
        out.push_str(&format!("{identity}: no answer (server restarted)\n"));
    }
    let answered: Vec<&str> = job.answers.iter().map(|a| a.identity.as_str()).collect();
    for identity in job.sent_to.iter().filter(|s| !answered.contains(&s.as_str()) && !job.lost.contains(s)) {
        out.push_str(&format!("{identity}: no answer yet\n"));
    }
    if let Some(result) = &job.result {
        out.push_str(&format!("{command} {}: {result}\n", job.arguments));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use pantry_shared::filter::ClientFilter;
    use pantry_shared::Message;

    #[test]
    fn list_and_show_round_trip() {
        let filter = ClientFilter { application: Some("shop".into()), ..Default::default() };
        let m = Message::from_frames(&list_request(5, &filter).to_frames()).unwrap();
        assert_eq!(parse_list(&m).unwrap(), (5, filter));
        let summary = JobSummary {
            id: "u".into(),
            created: "2026-01-01T00:00:00.000Z".into(),
            who: "admin".into(),
            command: "Exec".into(),
            target: "shop".into(),
            answered: 2,
            failed: 1,
            pending: 0,
            offline: 1,
        };
        let listed = jobs(&respond_list(&m, std::slice::from_ref(&summary)));
        assert_eq!(listed, std::slice::from_ref(&summary));
        assert!(format_table(&listed).contains("Exec"));
        let detail = JobDetail {
            summary,
            role: "admin".into(),
            key: "k".into(),
            address: "127.0.0.1".into(),
            arguments: serde_json::json!({"program": "true"}),
            sent_to: vec!["web-1".into()],
            offline: vec![],
            result: None,
            answers: vec![JobAnswer {
                identity: "web-1".into(),
                received: "2026-01-01T00:00:01.000Z".into(),
                outcome: "ok".into(),
                error: None,
                body: Some(Value::String("hi".into())),
            }],
            lost: vec![],
        };
        let back = job(&respond_show(&show_request("u"), &detail)).unwrap();
        assert_eq!(back, detail);
        assert_eq!(echo_admin::format_answer(&back.answers[0].as_message("Echo")), "web-1: hi");
    }
}
