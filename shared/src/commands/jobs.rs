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

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::error::DecodeError;
use crate::filter::ClientFilter;
use crate::message::{BodyPart, Message};

use crate::rule::{Rule, RunsOn, Senders};

use super::rollout::{AgentState, JobState, RolloutPlan};

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
    #[serde(default = "done")]
    pub state: JobState,
}

fn done() -> JobState {
    JobState::Done
}

/// One agent a job targets.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AgentRecord {
    pub identity: String,
    /// Its final state; `None` while it runs or waits for its batch.
    pub state: Option<AgentState>,
    /// A rollout's batch it is in (from 1).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub batch: Option<u32>,
}

/// One batch of a rollout.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BatchRecord {
    /// From 1.
    pub number: u32,
    pub size: u32,
    /// RFC 3339, with milliseconds; `None`: not started.
    pub started: Option<String>,
    pub ended: Option<String>,
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
    #[serde(default = "done")]
    pub state: JobState,
    /// Every agent the job targets, with its state.
    #[serde(default)]
    pub agents: Vec<AgentRecord>,
    /// A rollout's batches.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub batches: Vec<BatchRecord>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rollout: Option<RolloutPlan>,
    /// The job this one re-ran (`--from-job`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rerun_of: Option<String>,
}

impl JobDetail {
    /// The agents in `state`.
    pub fn in_state(&self, state: AgentState) -> impl Iterator<Item = &AgentRecord> {
        self.agents.iter().filter(move |a| a.state == Some(state))
    }
}

/// One client's answer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct JobAnswer {
    pub identity: String,
    /// RFC 3339, with milliseconds.
    pub received: String,
    /// The agent's state its answer put it in (`ok`, `failed`, `timeout`,
    /// `refused`, `cancelled`).
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

/// Admin: the jobs in the answer.
pub fn jobs(response: &Message) -> Vec<JobSummary> {
    response.body.iter().filter_map(BodyPart::as_json).filter_map(|v| serde_json::from_value(v.clone()).ok()).collect()
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
