//! Jobs: what the dispatcher records about requests (in summary, never a
//! private key or a token) and answers (output capped at
//! `jobs.max_output`), and the reader that answers `jobs` and `job ID` from
//! its own database connection on a thread of its own, so a query never
//! holds up message routing.

use std::collections::HashSet;
use std::time::{Duration, SystemTime};

use actix::prelude::*;
use pantry_shared::commands::jobs::{JobDetail, JobSummary};
use pantry_shared::commands::{
    cancel, client_forget, client_pending, client_revoke, client_token, create_client, enroll, exec, facts,
    job_control, jobs, status, trust, upload, Kind,
};
use pantry_shared::{BodyPart, Message};
use rusqlite::Connection;
use serde_json::{json, Value};
use sha2::{Digest, Sha256};

use crate::store::{self, Writer};

/// Longest text kept of an `echo` in a job's or an audit line's arguments.
const TEXT_KEPT: usize = 200;

fn cut(text: &str, at: usize) -> &str {
    match text.char_indices().nth(at) {
        Some((i, _)) => &text[..i],
        None => text,
    }
}

/// What a request asked, in summary, for the job store and the audit log.
pub fn arguments(kind: Kind, m: &Message) -> Value {
    let custom = |field: &str| m.metadata.custom.get(field).cloned().unwrap_or(Value::Null);
    match kind {
        Kind::Echo => json!({"text": cut(m.body.first().and_then(BodyPart::as_text).unwrap_or_default(), TEXT_KEPT)}),
        Kind::Exec => exec::parse(m).ok().and_then(|e| serde_json::to_value(e).ok()).unwrap_or(Value::Null),
        Kind::Upload => upload::parse(m)
            .map(|u| json!({"remote_path": u.remote_path, "size": u.size, "sha256": u.sha256}))
            .unwrap_or(Value::Null),
        Kind::CreateClient => match create_client::parse(m) {
            Ok((name, role)) => json!({"name": name, "role": role.as_str()}),
            Err(_) => Value::Null,
        },
        Kind::RevokeClient => json!({"target": client_revoke::target(m)}),
        Kind::CreateToken => match client_token::parse(m) {
            Ok(t) => json!({"name": t.name, "uses": t.uses, "ttl_seconds": t.ttl.as_secs()}),
            Err(_) => Value::Null,
        },
        Kind::ForgetClient => json!({"identity": client_forget::identity(m)}),
        Kind::RevokeToken => json!({"id": client_token::revoked_id(m)}),
        Kind::AcceptPendingKey => json!({"target": client_pending::target(m), "name": client_pending::name(m)}),
        Kind::RejectPendingKey => json!({"target": client_pending::target(m)}),
        Kind::EditApplication => {
            let text = m.body.first().and_then(BodyPart::as_text).unwrap_or_default();
            let sha256: String = Sha256::digest(text.as_bytes()).iter().map(|b| format!("{b:02x}")).collect();
            json!({"application": custom("application"), "bytes": text.len(), "sha256": sha256})
        }
        Kind::ShowApplication => json!({"application": custom("application")}),
        Kind::Status => status::parse(m).ok().and_then(|f| serde_json::to_value(f).ok()).unwrap_or(Value::Null),
        Kind::ListJobs => json!({"limit": custom("limit")}),
        Kind::ShowJob => json!({"id": jobs::id(m)}),
        Kind::RegisterSigningKey => trust::parse_register(m).map(|k| json!({"signing_key": k})).unwrap_or(Value::Null),
        Kind::SetTrustList => trust::parse_list(m)
            .map(|l| json!({"version": l.version, "admins": l.admins.iter().map(|a| a.name.clone()).collect::<Vec<_>>()}))
            .unwrap_or(Value::Null),
        Kind::ShowTrustList | Kind::TrustList => json!({}),
        Kind::ListFacts => facts::parse_list(m).map(|(_, keys)| json!({"keys": keys})).unwrap_or(Value::Null),
        // An agent's own report: its size only.
        Kind::Facts => json!({"bytes": m.wire_size()}),
        Kind::Enroll => match enroll::parse(m) {
            Ok(e) => json!({"identity": e.claimed(), "with_token": e.token.is_some()}),
            Err(_) => Value::Null,
        },
        Kind::JobControl => {
            job_control::parse(m).ok().and_then(|c| serde_json::to_value(c).ok()).unwrap_or(Value::Null)
        }
        Kind::Cancel => cancel::parse(m).and_then(|c| serde_json::to_value(c).ok()).unwrap_or(Value::Null),
        Kind::RegisterClient | Kind::ListClients | Kind::ListPendingKeys | Kind::ListTokens => json!({}),
    }
}

/// Answers `jobs` and `job ID` from its own connection, after the writer
/// has committed what was queued (a job started a moment ago is there).
pub struct JobReader {
    /// `None` when the database could not be opened (logged).
    conn: Option<Connection>,
    writer: Writer,
    started: SystemTime,
}

impl JobReader {
    pub fn new(conn: Option<Connection>, writer: Writer, started: SystemTime) -> Self {
        JobReader { conn, writer, started }
    }

    fn conn(&self) -> Result<&Connection, ReadError> {
        self.writer.sync(Duration::from_secs(2));
        self.conn.as_ref().ok_or(ReadError::NoDatabase)
    }
}

/// Why the job store could not be read.
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    #[error("the server cannot read its database (see its log)")]
    NoDatabase,
    #[error(transparent)]
    Sqlite(#[from] rusqlite::Error),
}

impl Actor for JobReader {
    type Context = SyncContext<Self>;
}

/// The most recent jobs matching a stream and identity patterns.
#[derive(Message)]
#[rtype(result = "Result<Vec<JobSummary>, ReadError>")]
pub struct ListJobs {
    pub limit: u32,
    pub stream: Option<String>,
    pub patterns: Vec<String>,
}

impl Handler<ListJobs> for JobReader {
    type Result = Result<Vec<JobSummary>, ReadError>;

    fn handle(&mut self, msg: ListJobs, _: &mut SyncContext<Self>) -> Self::Result {
        Ok(store::list_jobs(self.conn()?, msg.limit, msg.stream.as_deref(), &msg.patterns, self.started)?)
    }
}

/// One job.
#[derive(Message)]
#[rtype(result = "Result<Option<JobDetail>, ReadError>")]
pub struct ShowJob {
    pub id: String,
}

impl Handler<ShowJob> for JobReader {
    type Result = Result<Option<JobDetail>, ReadError>;

    fn handle(&mut self, msg: ShowJob, _: &mut SyncContext<Self>) -> Self::Result {
        Ok(store::show_job(self.conn()?, &msg.id, self.started)?)
    }
}

/// The rollouts this server was running (or holding paused) when it
/// stopped, to resume.
#[derive(Message)]
#[rtype(result = "Result<Vec<store::StoredRollout>, ReadError>")]
pub struct UnfinishedRollouts;

impl Handler<UnfinishedRollouts> for JobReader {
    type Result = Result<Vec<store::StoredRollout>, ReadError>;

    fn handle(&mut self, _: UnfinishedRollouts, _: &mut SyncContext<Self>) -> Self::Result {
        Ok(store::unfinished_rollouts(self.conn()?)?)
    }
}

/// The uuids jobs were recorded under, for the dispatcher: a job's uuid is
/// never used again (a request reusing one is refused), so no admin can
/// rewrite a recorded job. The recent ones are in memory (two generations:
/// some are not committed yet); older ones are looked up in the database,
/// on a connection of the dispatcher's own (a point look-up, a few µs).
pub struct UsedUuids {
    current: HashSet<String>,
    previous: HashSet<String>,
    /// `None` when the database could not be opened (logged at start).
    conn: Option<Connection>,
}

impl UsedUuids {
    /// Jobs per generation: far more than one batch window's worth, so a
    /// uuid that left memory is committed.
    const GENERATION: usize = 20_000;

    pub fn new(conn: Option<Connection>) -> UsedUuids {
        UsedUuids { current: HashSet::new(), previous: HashSet::new(), conn }
    }

    /// Whether a job was recorded under `uuid`.
    pub fn is_used(&self, uuid: &str) -> rusqlite::Result<bool> {
        if self.current.contains(uuid) || self.previous.contains(uuid) {
            return Ok(true);
        }
        let Some(conn) = &self.conn else { return Ok(false) };
        conn.prepare_cached("SELECT 1 FROM jobs WHERE id = ?1")?.exists([uuid])
    }

    /// A job is being recorded under `uuid`.
    pub fn record(&mut self, uuid: &str) {
        if self.current.len() >= Self::GENERATION {
            self.previous = std::mem::take(&mut self.current);
        }
        self.current.insert(uuid.to_owned());
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use pantry_shared::commands::app_config;

    #[test]
    fn arguments_never_hold_secrets() {
        // An application config edit carries the whole file: only its size
        // and hash are kept.
        let edit = app_config::edit_request("shop", "password: hunter2\n");
        let summary = arguments(Kind::EditApplication, &edit);
        assert_eq!(summary["bytes"], 18);
        assert!(!summary.to_string().contains("hunter2"));
        let token = enroll::request(&enroll::EnrollRequest {
            token: Some("s3cr3t".into()),
            identity: None,
            hostname: "h".into(),
        });
        assert!(!arguments(Kind::Enroll, &token).to_string().contains("s3cr3t"));
        let long = pantry_shared::commands::echo::request(&"x".repeat(1000));
        assert_eq!(arguments(Kind::Echo, &long)["text"].as_str().unwrap().len(), TEXT_KEPT);
    }
}
