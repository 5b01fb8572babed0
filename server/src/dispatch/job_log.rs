//! Job recording beside the dispatch: every request sent to clients (whom
//! it went to, who was offline) and every change the server makes (its
//! result comes with its answer), each under its uuid, which is never used
//! again ([`UsedUuids`]).

use std::collections::HashSet;
use std::time::{Duration, SystemTime};

use pantry_shared::commands::rollout::{self, JobState, RolloutPlan};
use pantry_shared::commands::{Kind, RunsOn};
use pantry_shared::Message;
use serde_json::Value;

use crate::answers;
use crate::jobs::UsedUuids;
use crate::store::{JobRow, Write, Writer, PENDING};

use super::Request;

/// `jobs:` in server.yml.
#[derive(Debug, Clone, Copy)]
pub struct JobSettings {
    pub max_output: usize,
    pub keep: Duration,
}

pub struct JobLog {
    /// `None`: `jobs.enabled: false`.
    settings: Option<JobSettings>,
    db: Writer,
    used: UsedUuids,
    /// Changes the server is making: their jobs' results come with the
    /// answer.
    changes: HashSet<String>,
}

impl JobLog {
    pub fn new(settings: Option<JobSettings>, db: Writer, used: UsedUuids) -> JobLog {
        JobLog { settings, db, used, changes: HashSet::new() }
    }

    pub fn settings(&self) -> Option<JobSettings> {
        self.settings
    }

    /// Whether a request of `kind` would rewrite a recorded job: its uuid
    /// is a recorded job's.
    pub fn reuses_a_job(&self, kind: Kind, uuid: &str) -> rusqlite::Result<bool> {
        if self.settings.is_none() || !kind.is_job() {
            return Ok(false);
        }
        self.used.is_used(uuid)
    }

    /// Records a job: a request sent to clients (with whom it went to and
    /// who was offline), or a change the server makes.
    pub fn record(
        &mut self,
        request: &Request,
        kind: Kind,
        arguments: Value,
        sent_to: Vec<String>,
        offline: Vec<String>,
    ) {
        if self.settings.is_none() {
            return;
        }
        if kind.runs_on() == RunsOn::Server {
            self.changes.insert(request.message.uuid().to_owned());
        }
        let row = self.row(request, arguments, sent_to, offline);
        self.db.write(Write::Job(Box::new(row)));
    }

    /// Records a rollout: every target (in `agents`, with its batch, all
    /// pending), the plan and the request to send each batch.
    pub fn record_rollout(
        &mut self,
        request: &Request,
        arguments: Value,
        plan: &RolloutPlan,
        agents: &[(String, u32)],
    ) {
        let targets = agents.iter().map(|(identity, _)| identity.clone()).collect();
        let mut row = self.row(request, arguments, targets, Vec::new());
        row.state = Some(JobState::Running);
        row.rollout = Some(plan.clone());
        row.request = Some(stored_request(&request.message));
        let id = row.id.clone();
        self.db.write(Write::Job(Box::new(row)));
        // Every batch is listed from the start, each with its size; its
        // start and end are filled in as it runs.
        let mut sizes: std::collections::BTreeMap<u32, u32> = std::collections::BTreeMap::new();
        for (_, batch) in agents {
            *sizes.entry(*batch).or_default() += 1;
        }
        let agents = agents.iter().map(|(identity, batch)| (identity.clone(), *batch, PENDING.to_owned())).collect();
        self.db.write(Write::JobAgents { id: id.clone(), agents });
        for (number, size) in sizes {
            self.db.write(Write::Batch { id: id.clone(), number, size, started: None, ended: None });
        }
    }

    fn row(&mut self, request: &Request, arguments: Value, sent_to: Vec<String>, offline: Vec<String>) -> JobRow {
        let m = &request.message;
        let auth = request.auth.as_deref();
        self.used.record(m.uuid());
        let created = SystemTime::now();
        JobRow {
            id: m.uuid().to_owned(),
            created,
            who: auth.map_or(m.metadata.from.clone(), |a| a.name_or_dash().to_owned()),
            role: auth.map_or("-", |a| a.standing.name()).to_owned(),
            key: request.key().to_owned(),
            address: request.address().to_owned(),
            command: m.message_type().to_owned(),
            target: m.stream.clone(),
            identities: m.metadata.custom.get(pantry_shared::filter::IDENTITIES_FIELD).cloned(),
            arguments,
            sent_to,
            offline,
            result: None,
            state: None,
            deadline: rollout::wait(m).map(|wait| created + wait),
            rollout: None,
            request: None,
            rerun_of: m.metadata.custom.get(rollout::RERUN_FIELD).and_then(Value::as_str).map(str::to_owned),
        }
    }

    /// Writes `write` (when jobs are kept).
    pub fn write(&self, write: Write) {
        if self.settings.is_some() {
            self.db.write(write);
        }
    }

    /// Resolves once everything written so far is committed.
    pub fn committed(&self) -> tokio::sync::oneshot::Receiver<()> {
        self.db.committed()
    }

    /// An answer the server sends: when it is the answer to a change the
    /// server made, it is that job's result.
    pub fn replying(&mut self, message: &Message) {
        if !self.changes.is_empty() && self.changes.remove(message.uuid()) {
            let result = message.error().map_or_else(|| "ok".to_owned(), str::to_owned);
            self.db.write(Write::JobResult { id: message.uuid().to_owned(), result });
        }
    }

    /// An answer given on a client's behalf (it was not sent the request).
    pub fn answered_for(&self, kind: Kind, answer: &Message) {
        if let Some(settings) = &self.settings {
            self.db.write(Write::Answer(answers::row(kind, answer, settings.max_output, SystemTime::now())));
        }
    }

    /// Jobs older than `jobs.keep` go.
    pub fn prune(&self) {
        if let Some(settings) = &self.settings {
            let before = SystemTime::now().checked_sub(settings.keep).unwrap_or(SystemTime::UNIX_EPOCH);
            self.db.write(Write::PruneJobs { before });
        }
    }
}

/// A request as the job store keeps it to send again: its frames, hex.
pub fn stored_request(m: &Message) -> String {
    let frames: Vec<String> = m.to_frames().iter().map(hex::encode).collect();
    serde_json::to_string(&frames).unwrap_or_default()
}

/// The request [`stored_request`] kept.
pub fn stored_message(text: &str) -> Option<Message> {
    let frames: Vec<String> = serde_json::from_str(text).ok()?;
    let frames: Vec<Vec<u8>> = frames.iter().map(hex::decode).collect::<Result<_, _>>().ok()?;
    Message::from_frames(&frames).ok()
}
