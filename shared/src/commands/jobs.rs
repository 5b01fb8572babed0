//! `jobs` and `job ID`: the server's record of every command sent to clients
//! (`echo`, `exec`, `upload`) and every key or config change
//! (`client:create`, `client:revoke`, `client:token`, `client:forget`,
//! `client:accept`, `client:reject`, `edit`): who asked, from where, what,
//! for whom, and each client's answer as it arrived. Kept in the server's
//! database for `jobs.keep` (30 days by default).
//!
//! `jobs [--limit N] [-a/-e/-r/-i]` lists recent jobs, newest first, with
//! answered / failed / pending / offline counts; `job ID [--wait]` prints one
//! job's results the way the command printed them. `exec --async` and
//! `echo --async` print the job id and return at once; the server keeps
//! collecting the answers. Admin keys only.

use std::time::{Duration, Instant};

use anyhow::Context as _;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::error::DecodeError;
use crate::filter::{ClientFilter, Identities};
use crate::message::{BodyPart, Message};
use crate::session::{unsupported, Outcome, Session};

use super::{echo, exec, upload, Admin, Rule, RunsOn, Senders, Wait};

pub const LIST_TYPE: &str = "ListJobs";
pub const SHOW_TYPE: &str = "ShowJob";

pub const LIST_RULE: Rule =
    Rule { wire: LIST_TYPE, runs_on: RunsOn::Server, senders: Senders::Admins, may_block: false, job: false };

pub const SHOW_RULE: Rule =
    Rule { wire: SHOW_TYPE, runs_on: RunsOn::Server, senders: Senders::Admins, may_block: false, job: false };

/// `jobs` shows this many by default.
pub const DEFAULT_LIMIT: u32 = 20;

/// One job in the list.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JobSummary {
    pub id: String,
    /// RFC 3339, with milliseconds.
    pub created: String,
    /// The requester's key name.
    pub who: String,
    /// The wire type (`Exec`, `CreateClient`...).
    pub command: String,
    /// The stream it was sent to (`""`: every client), with identity
    /// patterns when given.
    pub target: String,
    pub answered: u32,
    pub failed: u32,
    pub pending: u32,
    pub offline: u32,
}

/// A job with everything recorded.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct JobDetail {
    pub summary: JobSummary,
    /// The requester's role, key and address.
    pub role: String,
    pub key: String,
    pub address: String,
    /// What was asked, in summary (never a private key or a token).
    pub arguments: Value,
    /// The clients the request was sent to, and those reported offline.
    pub sent_to: Vec<String>,
    pub offline: Vec<String>,
    /// For a change the server made itself: `ok` or the error.
    pub result: Option<String>,
    pub answers: Vec<JobAnswer>,
    /// Clients sent the request that never answered before the server
    /// restarted: they never will.
    pub lost: Vec<String>,
}

/// One client's answer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct JobAnswer {
    pub identity: String,
    /// RFC 3339, with milliseconds.
    pub received: String,
    /// `ok`, `failed`, `error` or `timed out`.
    pub outcome: String,
    pub error: Option<String>,
    /// The answer's first body part (exec: its result; echo: the text),
    /// output capped at `jobs.max_output`.
    pub body: Option<Value>,
}

impl JobAnswer {
    /// The answer as the client sent it, for the command's own printing.
    pub fn as_message(&self, command: &str) -> Message {
        let mut m = Message::new(command);
        m.metadata.from = self.identity.clone();
        if let Some(error) = &self.error {
            m.set_error(error.clone());
        }
        if let Some(body) = &self.body {
            m.body.push(BodyPart::from(body.clone()));
        }
        m
    }
}

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

/// Admin: the list, `filter` (stream) and identity patterns selecting jobs.
pub fn list_request(limit: u32, filter: &ClientFilter) -> Message {
    let mut m = Message::new(LIST_TYPE);
    m.metadata.requires_response = true;
    m.metadata.custom.insert("limit".into(), limit.into());
    m.body.push(BodyPart::Json(serde_json::to_value(filter).unwrap_or(Value::Null)));
    m
}

/// Server: how many jobs, and the filter.
pub fn parse_list(request: &Message) -> Result<(u32, ClientFilter), DecodeError> {
    let bad = |reason: String| DecodeError::Body { message_type: LIST_TYPE.into(), reason };
    let limit = request.metadata.custom.get("limit").map_or(Some(u64::from(DEFAULT_LIMIT)), Value::as_u64);
    let limit = limit.filter(|l| (1..=100_000).contains(l)).ok_or_else(|| bad("limit: 1 to 100000".into()))?;
    let filter = match request.body.first() {
        Some(BodyPart::Json(v)) => serde_json::from_value(v.clone()).map_err(|e| bad(e.to_string()))?,
        _ => ClientFilter::default(),
    };
    Ok((limit as u32, filter))
}

/// Server: one body part per job, newest first.
pub fn respond_list(request: &Message, jobs: &[JobSummary]) -> Message {
    let mut response = request.response();
    response.body = jobs.iter().map(|j| BodyPart::Json(serde_json::to_value(j).unwrap_or(Value::Null))).collect();
    response
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

/// Admin: the jobs in the answer.
pub fn jobs(response: &Message) -> Vec<JobSummary> {
    response.body.iter().filter_map(BodyPart::as_json).filter_map(|v| serde_json::from_value(v.clone()).ok()).collect()
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

/// Admin: one job.
pub fn show_request(id: &str) -> Message {
    let mut m = Message::new(SHOW_TYPE);
    m.metadata.requires_response = true;
    m.metadata.custom.insert("id".into(), id.into());
    m
}

/// Server: the job id asked for.
pub fn id(request: &Message) -> Option<&str> {
    request.metadata.custom.get("id").and_then(Value::as_str)
}

/// Server: the job.
pub fn respond_show(request: &Message, job: &JobDetail) -> Message {
    let mut response = request.response();
    response.body.push(BodyPart::Json(serde_json::to_value(job).unwrap_or(Value::Null)));
    response
}

/// Admin: the job in the answer.
pub fn job(response: &Message) -> Option<JobDetail> {
    response.body.first().and_then(BodyPart::as_json).and_then(|v| serde_json::from_value(v.clone()).ok())
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
                Some(result) => exec::format_answer(&answer.identity, &result, timeout),
                None => format!("{}: {}\n", answer.identity, unsupported(command)),
            },
            (None, upload::TYPE) => match upload::result(&m) {
                Some(result) => format!("{}\n", upload::format_answer(&answer.identity, &result)),
                None => format!("{}: {}\n", answer.identity, unsupported(command)),
            },
            (None, _) => format!("{}\n", echo::format_answer(&m)),
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
        assert_eq!(crate::commands::echo::format_answer(&back.answers[0].as_message("Echo")), "web-1: hi");
    }
}
