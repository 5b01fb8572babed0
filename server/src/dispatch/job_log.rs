//! Job recording beside the dispatch: every request sent to clients (whom
//! it went to, who was offline) and every change the server makes (its
//! result comes with its answer), each under its uuid, which is never used
//! again ([`UsedUuids`]).

use std::collections::HashSet;
use std::time::{Duration, SystemTime};

use pantry_shared::commands::{Kind, RunsOn};
use pantry_shared::Message;
use serde_json::Value;

use crate::answers;
use crate::jobs::UsedUuids;
use crate::store::{JobRow, Write, Writer};

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
        let m = &request.message;
        let auth = request.auth.as_deref();
        if kind.runs_on() == RunsOn::Server {
            self.changes.insert(m.uuid().to_owned());
        }
        self.used.record(m.uuid());
        let row = JobRow {
            id: m.uuid().to_owned(),
            created: SystemTime::now(),
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
        };
        self.db.write(Write::Job(Box::new(row)));
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
