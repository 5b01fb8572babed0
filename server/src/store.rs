//! The server's embedded store: SQLite (`rusqlite`, bundled) in WAL mode at
//! `root_dir/pantry.db`.
//!
//! Writes never happen on the message path: actors hand [`Write`]s to one
//! writer thread, which applies whatever has queued up in one transaction
//! (at most [`BATCH_WINDOW`] after the first), so a burst costs one commit
//! and a write is on disk within that window. Reads (at start, and for
//! queries) use their own connection: WAL lets them run beside the writer.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{mpsc, Arc};
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime};

use pantry_shared::commands::client_pending::PendingKey;
use pantry_shared::commands::jobs::{AgentRecord, BatchRecord, JobAnswer, JobDetail, JobSummary};
use pantry_shared::commands::rollout::{AgentState, JobState, RolloutPlan};
use pantry_shared::facts::Facts;
use pantry_shared::filter::ClientFilter;
use rusqlite::{params, Connection, OptionalExtension};
use slog::{error, info, Logger};

pub use crate::answers::AnswerRow;
use crate::answers::RawAnswer;

pub const DB_FILE: &str = "pantry.db";

/// How long the writer collects writes before it commits them.
pub const BATCH_WINDOW: Duration = Duration::from_millis(100);

/// The schema, one statement per version; the database's `user_version` says
/// how many have run.
const MIGRATIONS: &[&str] = &[
    "CREATE TABLE pending_keys (
        public_key TEXT PRIMARY KEY,
        address TEXT NOT NULL,
        first_seen TEXT NOT NULL,
        last_seen TEXT NOT NULL,
        attempts INTEGER NOT NULL,
        identity TEXT
    )",
    "CREATE TABLE clients (
        identity TEXT PRIMARY KEY,
        application TEXT,
        environment TEXT,
        roles TEXT NOT NULL,
        key TEXT,
        last_seen INTEGER NOT NULL,
        heartbeat INTEGER NOT NULL
    )",
    "CREATE TABLE jobs (
        id TEXT PRIMARY KEY,
        created INTEGER NOT NULL,
        who TEXT NOT NULL,
        role TEXT NOT NULL,
        key TEXT NOT NULL,
        address TEXT NOT NULL,
        command TEXT NOT NULL,
        target TEXT NOT NULL,
        identities TEXT,
        arguments TEXT NOT NULL,
        sent_to TEXT NOT NULL,
        sent_count INTEGER NOT NULL,
        offline TEXT NOT NULL,
        offline_count INTEGER NOT NULL,
        result TEXT
    );
    CREATE INDEX jobs_by_time ON jobs (created);
    CREATE TABLE answers (
        job_id TEXT NOT NULL,
        identity TEXT NOT NULL,
        received INTEGER NOT NULL,
        outcome TEXT NOT NULL,
        error TEXT,
        body TEXT,
        PRIMARY KEY (job_id, identity)
    )",
    // Jobs are numbered as they come: answers point at their job by that
    // number, so recording one appends to the answers' end rather than
    // writing into the middle of an index at a random uuid's place (twice
    // the writer's time per answer); the number orders jobs by time, so no
    // index on time is kept up either.
    "CREATE TABLE jobs_v4 (
        seq INTEGER PRIMARY KEY,
        id TEXT NOT NULL UNIQUE,
        created INTEGER NOT NULL,
        who TEXT NOT NULL,
        role TEXT NOT NULL,
        key TEXT NOT NULL,
        address TEXT NOT NULL,
        command TEXT NOT NULL,
        target TEXT NOT NULL,
        identities TEXT,
        arguments TEXT NOT NULL,
        sent_to TEXT NOT NULL,
        sent_count INTEGER NOT NULL,
        offline TEXT NOT NULL,
        offline_count INTEGER NOT NULL,
        result TEXT
    );
    INSERT INTO jobs_v4 (id, created, who, role, key, address, command, target, identities, arguments, sent_to,
            sent_count, offline, offline_count, result)
        SELECT id, created, who, role, key, address, command, target, identities, arguments, sent_to, sent_count,
            offline, offline_count, result
        FROM jobs ORDER BY created;
    CREATE TABLE answers_v4 (
        job INTEGER NOT NULL,
        identity TEXT NOT NULL,
        received INTEGER NOT NULL,
        outcome TEXT NOT NULL,
        error TEXT,
        body TEXT,
        PRIMARY KEY (job, identity)
    ) WITHOUT ROWID;
    INSERT INTO answers_v4 (job, identity, received, outcome, error, body)
        SELECT j.seq, a.identity, a.received, a.outcome, a.error, a.body
        FROM answers a JOIN jobs_v4 j ON j.id = a.job_id;
    DROP TABLE answers;
    DROP TABLE jobs;
    ALTER TABLE jobs_v4 RENAME TO jobs;
    ALTER TABLE answers_v4 RENAME TO answers;",
    // Every agent a job targets ends in one state: a rollout's agents are
    // kept with their batch and state (the job's request too, to send the
    // next batch after a restart); a plain job's follow from whom it was
    // sent to, its answers and its deadline.
    "ALTER TABLE jobs ADD COLUMN state TEXT;
    ALTER TABLE jobs ADD COLUMN deadline INTEGER;
    ALTER TABLE jobs ADD COLUMN rollout TEXT;
    ALTER TABLE jobs ADD COLUMN request TEXT;
    ALTER TABLE jobs ADD COLUMN rerun_of TEXT;
    CREATE TABLE job_agents (
        job INTEGER NOT NULL,
        identity TEXT NOT NULL,
        batch INTEGER NOT NULL,
        state TEXT NOT NULL,
        PRIMARY KEY (job, identity)
    ) WITHOUT ROWID;
    CREATE TABLE job_batches (
        job INTEGER NOT NULL,
        number INTEGER NOT NULL,
        size INTEGER NOT NULL,
        started INTEGER,
        ended INTEGER,
        PRIMARY KEY (job, number)
    ) WITHOUT ROWID;
    UPDATE answers SET outcome = 'timeout' WHERE outcome = 'timed out';
    UPDATE answers SET outcome = 'failed' WHERE outcome = 'error';",
    // Each client's facts, with when it gathered them and how often it
    // does: they survive a restart.
    "ALTER TABLE clients ADD COLUMN facts TEXT;
    ALTER TABLE clients ADD COLUMN facts_hash TEXT;
    ALTER TABLE clients ADD COLUMN facts_gathered INTEGER;
    ALTER TABLE clients ADD COLUMN facts_interval INTEGER;",
];

/// A rollout agent not started yet, and one whose request went out: the
/// other values of `job_agents.state` are final states.
pub const PENDING: &str = "pending";
pub const STARTED: &str = "started";

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("database {path}: {source}")]
    Sqlite { path: PathBuf, source: rusqlite::Error },
    #[error("cannot start the database writer: {0}")]
    Thread(std::io::Error),
}

/// One change to the store.
#[derive(Debug)]
pub enum Write {
    PendingKey(PendingKey),
    ForgetPendingKey(String),
    Client(StoredClient),
    /// A client seen again: only its last check-in changes.
    ClientSeen {
        identity: String,
        last_seen: SystemTime,
    },
    ForgetClient(String),
    /// A client reported new facts.
    ClientFacts {
        identity: String,
        facts: Arc<StoredFacts>,
    },
    /// A client gathered the same facts again.
    ClientFactsSeen {
        identity: String,
        gathered: SystemTime,
    },
    Job(Box<JobRow>),
    Answer(AnswerRow),
    /// An answer as it arrived, decoded here rather than on the socket
    /// thread.
    RawAnswer(RawAnswer),
    /// The outcome of a change the server made itself.
    JobResult {
        id: String,
        result: String,
    },
    /// A job's state changed (`job pause`, a rollout's end...).
    JobState {
        id: String,
        state: JobState,
    },
    /// A rollout's agents: their batch and state ([`PENDING`], [`STARTED`]
    /// or a final state).
    JobAgents {
        id: String,
        agents: Vec<(String, u32, String)>,
    },
    /// A rollout's batch started or ended.
    Batch {
        id: String,
        number: u32,
        size: u32,
        started: Option<SystemTime>,
        ended: Option<SystemTime>,
    },
    /// Jobs created before this go, with their answers.
    PruneJobs {
        before: SystemTime,
    },
    /// Commit now, then say so: a reader that waits for it sees every
    /// write queued before.
    Barrier(Then),
}

/// What a barrier does once everything queued before it is committed.
pub struct Then(Box<dyn FnOnce() + Send>);

impl std::fmt::Debug for Then {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Then")
    }
}

/// A registered client as the store keeps it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredClient {
    pub client: ClientFilter,
    pub key: Option<String>,
    pub last_seen: SystemTime,
    pub heartbeat: Duration,
    pub facts: Option<Arc<StoredFacts>>,
}

/// A client's facts as it reported them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredFacts {
    pub facts: Facts,
    pub hash: String,
    /// When the agent last gathered them (they may be the same as before).
    pub gathered: SystemTime,
    /// How often it gathers them.
    pub interval: Duration,
}

/// A job as recorded.
#[derive(Debug, Clone, PartialEq)]
pub struct JobRow {
    pub id: String,
    pub created: SystemTime,
    pub who: String,
    pub role: String,
    pub key: String,
    pub address: String,
    pub command: String,
    pub target: String,
    pub identities: Option<serde_json::Value>,
    pub arguments: serde_json::Value,
    pub sent_to: Vec<String>,
    pub offline: Vec<String>,
    pub result: Option<String>,
    /// A rollout's (running) or one set by `job` control; `None`: follows
    /// from the answers and the deadline.
    pub state: Option<JobState>,
    /// When agents that have not answered are `no-answer`.
    pub deadline: Option<SystemTime>,
    pub rollout: Option<RolloutPlan>,
    /// A rollout's request, to send each batch (after a restart too).
    pub request: Option<String>,
    pub rerun_of: Option<String>,
}

fn millis(t: SystemTime) -> i64 {
    t.duration_since(SystemTime::UNIX_EPOCH).map(|d| d.as_millis() as i64).unwrap_or(0)
}

fn from_millis(ms: i64) -> SystemTime {
    SystemTime::UNIX_EPOCH + Duration::from_millis(ms.max(0) as u64)
}

fn rfc3339_millis(ms: i64) -> String {
    humantime::format_rfc3339_millis(from_millis(ms)).to_string()
}

/// The columns of a job's summary, with its answer counts.
const SUMMARY: &str = "SELECT id, created, who, command, target, identities, sent_count, offline_count,
        (SELECT COUNT(*) FROM answers a WHERE a.job = j.seq),
        (SELECT COUNT(*) FROM answers a WHERE a.job = j.seq AND a.outcome != 'ok'),
        state, deadline, rollout IS NOT NULL,
        (SELECT COUNT(*) FROM job_agents g WHERE g.job = j.seq AND (g.state = 'pending' OR (g.state = 'started'
            AND NOT EXISTS (SELECT 1 FROM answers a WHERE a.job = g.job AND a.identity = g.identity)))),
        (SELECT COUNT(*) FROM job_agents g WHERE g.job = j.seq AND g.state = 'offline')
     FROM jobs j";

/// A job's state: as recorded (a rollout's, or one `job` control set), or
/// for a plain job from its answers: done once every agent answered or its
/// deadline passed; interrupted when the server stopped while it ran.
fn job_state(
    recorded: Option<&str>,
    pending: i64,
    deadline: Option<i64>,
    created: i64,
    started: SystemTime,
) -> JobState {
    if let Some(state) = recorded.and_then(JobState::parse) {
        return state;
    }
    let now = millis(SystemTime::now());
    if pending <= 0 || deadline.is_some_and(|d| d <= now) {
        JobState::Done
    } else if from_millis(created) < started {
        JobState::Interrupted
    } else {
        JobState::Running
    }
}

fn summary(r: &rusqlite::Row, started: SystemTime) -> rusqlite::Result<JobSummary> {
    let identities: Option<String> = r.get(5)?;
    let (sent, answered): (i64, i64) = (r.get(6)?, r.get(8)?);
    let state: Option<String> = r.get(10)?;
    let job_state = job_state(state.as_deref(), sent - answered, r.get(11)?, r.get(1)?, started);
    // A rollout's agents wait for their batch: pending until they end in
    // a state (none once the rollout is over), offline as their turn found
    // them.
    let (pending, offline) = match r.get::<_, bool>(12)? {
        true if job_state.is_final() => (0, r.get::<_, i64>(14)?),
        true => (r.get::<_, i64>(13)?, r.get::<_, i64>(14)?),
        false => ((sent - answered).max(0), r.get::<_, i64>(7)?),
    };
    Ok(JobSummary {
        id: r.get(0)?,
        created: rfc3339_millis(r.get(1)?),
        who: r.get(2)?,
        command: r.get(3)?,
        target: describe_target(&r.get::<_, String>(4)?, identities.as_deref()),
        answered: answered as u32,
        failed: r.get::<_, i64>(9)? as u32,
        pending: pending as u32,
        offline: offline as u32,
        state: job_state,
    })
}

/// The most recent jobs, newest first: those sent to `stream` when given,
/// and to an identity matching one of `patterns` (shell globs) when given.
pub fn list_jobs(
    conn: &Connection,
    limit: u32,
    stream: Option<&str>,
    patterns: &[String],
    started: SystemTime,
) -> rusqlite::Result<Vec<JobSummary>> {
    let mut sql = format!("{SUMMARY} WHERE 1 = 1");
    let mut args: Vec<Box<dyn rusqlite::ToSql>> = Vec::new();
    if let Some(stream) = stream {
        args.push(Box::new(stream.to_owned()));
        sql.push_str(&format!(" AND target = ?{}", args.len()));
    }
    if !patterns.is_empty() {
        let mut any = Vec::new();
        for p in patterns {
            args.push(Box::new(p.clone()));
            let n = args.len();
            any.push(format!(
                "EXISTS (SELECT 1 FROM json_each(j.sent_to) WHERE value GLOB ?{n})
                 OR EXISTS (SELECT 1 FROM json_each(j.offline) WHERE value GLOB ?{n})"
            ));
        }
        sql.push_str(&format!(" AND ({})", any.join(" OR ")));
    }
    args.push(Box::new(i64::from(limit)));
    sql.push_str(&format!(" ORDER BY seq DESC LIMIT ?{}", args.len()));
    let mut statement = conn.prepare(&sql)?;
    let rows =
        statement.query_map(rusqlite::params_from_iter(args.iter().map(|a| a.as_ref())), |r| summary(r, started))?;
    rows.collect()
}

/// `shop`, `identity web-*`, `identity web-* in shop`.
fn describe_target(stream: &str, identities: Option<&str>) -> String {
    let patterns: Vec<String> = identities.and_then(|i| serde_json::from_str(i).ok()).unwrap_or_default();
    match (stream, patterns.is_empty()) {
        (stream, true) => stream.to_owned(),
        ("", false) => format!("identity {}", patterns.join(",")),
        (stream, false) => format!("identity {} in {stream}", patterns.join(",")),
    }
}

/// What `show_job` reads beside the summary.
struct JobExtra {
    seq: i64,
    role: String,
    key: String,
    address: String,
    arguments: String,
    sent_to: String,
    offline: String,
    result: Option<String>,
    created: i64,
    rollout: Option<String>,
    rerun_of: Option<String>,
    deadline: Option<i64>,
}

/// One job with its answers, and every targeted agent's state. Agents that
/// did not answer a job the server stopped during (before
/// `server_started`) never will: `lost`, and `no-answer`.
pub fn show_job(conn: &Connection, id: &str, server_started: SystemTime) -> rusqlite::Result<Option<JobDetail>> {
    let Some(summary) =
        conn.query_row(&format!("{SUMMARY} WHERE id = ?1"), params![id], |r| summary(r, server_started)).optional()?
    else {
        return Ok(None);
    };
    let extra = conn.query_row(
        "SELECT seq, role, key, address, arguments, sent_to, offline, result, created, rollout, rerun_of, deadline
         FROM jobs WHERE id = ?1",
        params![id],
        |r| {
            Ok(JobExtra {
                seq: r.get(0)?,
                role: r.get(1)?,
                key: r.get(2)?,
                address: r.get(3)?,
                arguments: r.get(4)?,
                sent_to: r.get(5)?,
                offline: r.get(6)?,
                result: r.get(7)?,
                created: r.get(8)?,
                rollout: r.get(9)?,
                rerun_of: r.get(10)?,
                deadline: r.get(11)?,
            })
        },
    )?;
    let mut statement =
        conn.prepare("SELECT identity, received, outcome, error, body FROM answers WHERE job = ?1 ORDER BY identity")?;
    let answers: Vec<JobAnswer> = statement
        .query_map(params![extra.seq], |r| {
            let body: Option<String> = r.get(4)?;
            Ok(JobAnswer {
                identity: r.get(0)?,
                received: rfc3339_millis(r.get(1)?),
                outcome: r.get(2)?,
                error: r.get(3)?,
                body: body.and_then(|b| serde_json::from_str(&b).ok()),
            })
        })?
        .collect::<rusqlite::Result<_>>()?;
    let answered: HashMap<&str, AgentState> = answers
        .iter()
        .map(|a| (a.identity.as_str(), a.outcome.parse::<AgentState>().unwrap_or(AgentState::Failed)))
        .collect();
    let sent_to: Vec<String> = serde_json::from_str(&extra.sent_to).unwrap_or_default();
    let offline: Vec<String> = serde_json::from_str(&extra.offline).unwrap_or_default();
    let interrupted = from_millis(extra.created) < server_started;
    let over = summary.state.is_final();
    let rollout: Option<RolloutPlan> = extra.rollout.as_deref().and_then(|r| serde_json::from_str(r).ok());
    let lost: Vec<String> = if interrupted && rollout.is_none() {
        sent_to.iter().filter(|s| !answered.contains_key(s.as_str())).cloned().collect()
    } else {
        Vec::new()
    };
    // A plain job cancelled or aborted still hears from the agents running
    // it until its deadline.
    let deadline_passed = extra.deadline.is_some_and(|d| d <= millis(SystemTime::now()));
    let silent_for_good = interrupted || summary.pending == 0 || deadline_passed || (over && extra.deadline.is_none());
    let (agents, batches) = if rollout.is_some() {
        (rollout_agents(conn, extra.seq, &answered, over)?, rollout_batches(conn, extra.seq)?)
    } else {
        let mut agents: Vec<AgentRecord> = sent_to
            .iter()
            .map(|identity| {
                let state =
                    answered.get(identity.as_str()).copied().or(silent_for_good.then_some(AgentState::NoAnswer));
                AgentRecord { identity: identity.clone(), state, batch: None }
            })
            .chain(offline.iter().map(|identity| AgentRecord {
                identity: identity.clone(),
                state: Some(AgentState::Offline),
                batch: None,
            }))
            .collect();
        agents.sort_by(|a, b| a.identity.cmp(&b.identity));
        (agents, Vec::new())
    };
    Ok(Some(JobDetail {
        state: summary.state,
        summary,
        role: extra.role,
        key: extra.key,
        address: extra.address,
        arguments: serde_json::from_str(&extra.arguments).unwrap_or(serde_json::Value::Null),
        sent_to,
        offline,
        result: extra.result,
        answers,
        lost,
        agents,
        batches,
        rollout,
        rerun_of: extra.rerun_of,
    }))
}

/// A rollout's agents: their recorded state, or their answer's; a started
/// agent of a job that is over never answered, a pending one never
/// started.
fn rollout_agents(
    conn: &Connection,
    seq: i64,
    answered: &HashMap<&str, AgentState>,
    over: bool,
) -> rusqlite::Result<Vec<AgentRecord>> {
    let mut statement =
        conn.prepare_cached("SELECT identity, batch, state FROM job_agents WHERE job = ?1 ORDER BY batch, identity")?;
    let rows = statement.query_map(params![seq], |r| {
        let (identity, batch, recorded): (String, u32, String) = (r.get(0)?, r.get(1)?, r.get(2)?);
        Ok((identity, batch, recorded))
    })?;
    let mut agents = Vec::new();
    for row in rows {
        let (identity, batch, recorded) = row?;
        let state = match recorded.as_str() {
            PENDING => over.then_some(AgentState::Skipped),
            STARTED => answered.get(identity.as_str()).copied().or(over.then_some(AgentState::NoAnswer)),
            other => other.parse().ok(),
        };
        agents.push(AgentRecord { identity, state, batch: Some(batch) });
    }
    Ok(agents)
}

fn rollout_batches(conn: &Connection, seq: i64) -> rusqlite::Result<Vec<BatchRecord>> {
    let mut statement =
        conn.prepare_cached("SELECT number, size, started, ended FROM job_batches WHERE job = ?1 ORDER BY number")?;
    let rows = statement.query_map(params![seq], |r| {
        let (started, ended): (Option<i64>, Option<i64>) = (r.get(2)?, r.get(3)?);
        Ok(BatchRecord {
            number: r.get(0)?,
            size: r.get(1)?,
            started: started.map(rfc3339_millis),
            ended: ended.map(rfc3339_millis),
        })
    })?;
    rows.collect()
}

/// A rollout the server was running (or holding paused) when it stopped.
#[derive(Debug, Clone)]
pub struct StoredRollout {
    pub id: String,
    pub kind: String,
    /// The requester's key: the rollout's pending answers count as its.
    pub key: String,
    pub state: JobState,
    pub plan: RolloutPlan,
    /// The request as it was sent, to send the next batches.
    pub request: String,
    /// Every agent with its batch and recorded state, in rollout order.
    pub agents: Vec<(String, u32, String)>,
    /// Those that answered, with the state their answer put them in.
    pub answered: HashMap<String, AgentState>,
    /// Milliseconds each agent is waited for.
    pub wait: Option<Duration>,
}

/// The rollouts to resume.
pub fn unfinished_rollouts(conn: &Connection) -> rusqlite::Result<Vec<StoredRollout>> {
    let mut statement = conn.prepare(
        "SELECT seq, id, state, rollout, request, deadline, created, command, key FROM jobs
         WHERE rollout IS NOT NULL AND state IN ('running', 'paused') ORDER BY seq",
    )?;
    type Row = (i64, String, String, String, Option<String>, Option<i64>, i64, String, String);
    let jobs: Vec<Row> = statement
        .query_map([], |r| {
            Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?, r.get(5)?, r.get(6)?, r.get(7)?, r.get(8)?))
        })?
        .collect::<rusqlite::Result<_>>()?;
    let mut out = Vec::new();
    for (seq, id, state, plan, request, deadline, created, kind, key) in jobs {
        let (Some(plan), Some(request)) = (serde_json::from_str(&plan).ok(), request) else { continue };
        // Within a batch the order does not matter: every agent of it
        // starts at once.
        let agents: Vec<(String, u32, String)> = conn
            .prepare_cached("SELECT identity, batch, state FROM job_agents WHERE job = ?1 ORDER BY batch, identity")?
            .query_map(params![seq], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?
            .collect::<rusqlite::Result<_>>()?;
        let answered: HashMap<String, AgentState> = conn
            .prepare_cached("SELECT identity, outcome FROM answers WHERE job = ?1")?
            .query_map(params![seq], |r| Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?)))?
            .filter_map(Result::ok)
            .map(|(identity, outcome)| (identity, outcome.parse().unwrap_or(AgentState::Failed)))
            .collect();
        out.push(StoredRollout {
            id,
            kind,
            key,
            state: JobState::parse(&state).unwrap_or(JobState::Running),
            plan,
            request,
            agents,
            answered,
            wait: deadline.map(|d| Duration::from_millis((d - created).max(0) as u64)),
        });
    }
    Ok(out)
}

fn unix(t: SystemTime) -> i64 {
    t.duration_since(SystemTime::UNIX_EPOCH).map(|d| d.as_secs() as i64).unwrap_or(0)
}

fn from_unix(secs: i64) -> SystemTime {
    SystemTime::UNIX_EPOCH + Duration::from_secs(secs.max(0) as u64)
}

/// Every registered client the store remembers.
pub fn clients(conn: &Connection) -> rusqlite::Result<Vec<StoredClient>> {
    let mut statement = conn.prepare(
        "SELECT identity, application, environment, roles, key, last_seen, heartbeat,
            facts, facts_hash, facts_gathered, facts_interval FROM clients",
    )?;
    let rows = statement.query_map([], |r| {
        let roles: String = r.get(3)?;
        let facts: Option<String> = r.get(7)?;
        let facts = match (facts.and_then(|f| serde_json::from_str::<Facts>(&f).ok()), r.get::<_, Option<String>>(8)?) {
            (Some(facts), Some(hash)) => Some(Arc::new(StoredFacts {
                facts,
                hash,
                gathered: from_unix(r.get::<_, Option<i64>>(9)?.unwrap_or(0)),
                interval: Duration::from_secs(r.get::<_, Option<i64>>(10)?.unwrap_or(600).max(1) as u64),
            })),
            _ => None,
        };
        Ok(StoredClient {
            client: ClientFilter {
                identity: Some(r.get(0)?),
                application: r.get(1)?,
                environment: r.get(2)?,
                roles: serde_json::from_str(&roles).unwrap_or_default(),
            },
            key: r.get(4)?,
            last_seen: from_unix(r.get(5)?),
            heartbeat: Duration::from_secs(r.get::<_, i64>(6)?.max(1) as u64),
            facts,
        })
    })?;
    rows.collect()
}

/// Opens (creating and migrating) the database.
pub fn open(path: &Path) -> Result<Connection, StoreError> {
    open_with(path, None)
}

/// [`open`], saying first when it converts an existing database (about 8 s
/// per million jobs), so that an operator knows what a slow start waits on.
pub fn open_logged(path: &Path, log: &Logger) -> Result<Connection, StoreError> {
    open_with(path, Some(log))
}

fn open_with(path: &Path, log: Option<&Logger>) -> Result<Connection, StoreError> {
    let err = |source| StoreError::Sqlite { path: path.to_owned(), source };
    let mut conn = Connection::open(path).map_err(err)?;
    conn.pragma_update(None, "journal_mode", "WAL").map_err(err)?;
    // WAL with synchronous=NORMAL: a committed transaction survives a crash
    // of the process (what SIGKILL tests), and fsyncs happen at checkpoints.
    conn.pragma_update(None, "synchronous", "NORMAL").map_err(err)?;
    conn.busy_timeout(Duration::from_secs(5)).map_err(err)?;
    let version: usize = conn.pragma_query_value(None, "user_version", |r| r.get(0)).map_err(err)?;
    if let Some(log) = log.filter(|_| (1..MIGRATIONS.len()).contains(&version)) {
        info!(log, "converting the database to this version's layout";
            "file" => %path.display(), "from" => version, "to" => MIGRATIONS.len());
    }
    for (i, migration) in MIGRATIONS.iter().enumerate().skip(version) {
        // All of a migration or none of it, whenever the process stops.
        let tx = conn.transaction().map_err(err)?;
        tx.execute_batch(migration).map_err(err)?;
        tx.pragma_update(None, "user_version", i + 1).map_err(err)?;
        tx.commit().map_err(err)?;
    }
    Ok(conn)
}

/// Every pending key, most recently seen first.
pub fn pending_keys(conn: &Connection) -> rusqlite::Result<Vec<PendingKey>> {
    let mut statement = conn.prepare(
        "SELECT public_key, address, first_seen, last_seen, attempts, identity FROM pending_keys
         ORDER BY last_seen DESC",
    )?;
    let rows = statement.query_map([], |r| {
        Ok(PendingKey {
            public_key: r.get(0)?,
            address: r.get(1)?,
            first_seen: r.get(2)?,
            last_seen: r.get(3)?,
            attempts: r.get::<_, i64>(4)? as u64,
            identity: r.get(5)?,
        })
    })?;
    rows.collect()
}

/// The sending end of the writer thread.
#[derive(Clone)]
pub struct Writer {
    tx: mpsc::Sender<Write>,
    /// The writer thread, woken for a barrier.
    thread: std::thread::Thread,
}

impl Writer {
    /// Queues a write; it is committed within [`BATCH_WINDOW`].
    pub fn write(&self, write: Write) {
        // The writer only stops when every sender is gone.
        let _ = self.tx.send(write);
    }

    /// Waits (at most `timeout`) until every write queued so far is
    /// committed. Blocking: for the job reader's thread.
    pub fn sync(&self, timeout: Duration) -> bool {
        let (done, committed) = mpsc::channel();
        self.barrier(move || {
            let _ = done.send(());
        });
        committed.recv_timeout(timeout).is_ok()
    }

    /// Resolves once every write queued so far is committed: for actors,
    /// which must not block (a rollout's batch goes out only once its
    /// agents are recorded as started).
    pub fn committed(&self) -> tokio::sync::oneshot::Receiver<()> {
        let (done, committed) = tokio::sync::oneshot::channel();
        self.barrier(move || {
            let _ = done.send(());
        });
        committed
    }

    fn barrier(&self, then: impl FnOnce() + Send + 'static) {
        self.write(Write::Barrier(Then(Box::new(then))));
        self.thread.unpark();
    }
}

/// Starts the writer thread on its own connection to `path`. It ends when
/// every [`Writer`] is dropped, after committing what was queued.
pub fn start_writer(path: &Path, log: Logger) -> Result<(Writer, JoinHandle<()>), StoreError> {
    let conn = open(path)?;
    let (tx, rx) = mpsc::channel();
    let path = path.to_owned();
    let thread = std::thread::Builder::new()
        .name("pantry-store".into())
        .spawn(move || write_loop(conn, &path, rx, log))
        .map_err(StoreError::Thread)?;
    Ok((Writer { tx, thread: thread.thread().clone() }, thread))
}

/// The sequence numbers of recent jobs, by uuid, for their answers: two
/// generations, so memory stays bounded and a job's answers find it
/// without a look-up for at least [`Seqs::GENERATION`] jobs after it.
#[derive(Default)]
struct Seqs {
    current: HashMap<String, i64>,
    previous: HashMap<String, i64>,
}

impl Seqs {
    const GENERATION: usize = 20_000;

    fn insert(&mut self, id: &str, seq: i64) {
        if self.current.len() >= Self::GENERATION {
            self.previous = std::mem::take(&mut self.current);
        }
        self.current.insert(id.to_owned(), seq);
    }

    fn get(&self, tx: &rusqlite::Transaction, id: &str) -> rusqlite::Result<Option<i64>> {
        match self.current.get(id).or_else(|| self.previous.get(id)) {
            Some(seq) => Ok(Some(*seq)),
            None => tx.prepare_cached("SELECT seq FROM jobs WHERE id = ?1")?.query_row([id], |r| r.get(0)).optional(),
        }
    }

    fn clear(&mut self) {
        self.current.clear();
        self.previous.clear();
    }
}

fn write_loop(mut conn: Connection, path: &Path, rx: mpsc::Receiver<Write>, log: Logger) {
    // Kept between batches: a busy server queues thousands per window.
    let mut batch = Vec::new();
    let mut seqs = Seqs::default();
    while let Ok(first) = rx.recv() {
        let mut barrier = matches!(first, Write::Barrier(_));
        batch.push(first);
        let until = Instant::now() + BATCH_WINDOW;
        // Asleep for the rest of the window rather than woken by every
        // write (tens of thousands a second under load); a barrier wakes
        // it to commit at once.
        while !barrier {
            for write in rx.try_iter() {
                barrier |= matches!(write, Write::Barrier(_));
                batch.push(write);
            }
            let left = until.saturating_duration_since(Instant::now());
            if barrier || left.is_zero() {
                break;
            }
            std::thread::park_timeout(left);
        }
        if let Err(e) = apply(&mut conn, &mut seqs, &batch) {
            // The sequence numbers given out in the rolled-back transaction
            // will be given again.
            seqs.clear();
            error!(log, "cannot write to the database; these changes are lost";
                "file" => %path.display(), "changes" => batch.len(), "error" => %e);
        }
        for write in batch.drain(..) {
            if let Write::Barrier(Then(then)) = write {
                then();
            }
        }
    }
}

/// Runs one statement, prepared once per connection.
fn run(tx: &rusqlite::Transaction, sql: &str, params: impl rusqlite::Params) -> rusqlite::Result<usize> {
    tx.prepare_cached(sql)?.execute(params)
}

/// An answer to a job the store does not have (pruned) is not kept.
fn insert_answer(tx: &rusqlite::Transaction, seqs: &Seqs, a: &AnswerRow) -> rusqlite::Result<()> {
    let Some(job) = seqs.get(tx, &a.job_id)? else { return Ok(()) };
    run(
        tx,
        "INSERT OR REPLACE INTO answers (job, identity, received, outcome, error, body)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
        params![job, a.identity, millis(a.received), a.outcome, a.error, a.body.as_ref().map(|b| b.to_string())],
    )?;
    Ok(())
}

const INSERT_JOB: &str = "INSERT INTO jobs (id, created, who, role, key, address, command, target, identities,
        arguments, sent_to, sent_count, offline, offline_count, result, state, deadline, rollout, request, rerun_of)
    VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16, ?17, ?18, ?19, ?20)
    ON CONFLICT (id) DO NOTHING";

fn insert_job(tx: &rusqlite::Transaction, seqs: &mut Seqs, job: &JobRow) -> rusqlite::Result<()> {
    let json = |v: &serde_json::Value| v.to_string();
    let insert = || {
        run(
            tx,
            INSERT_JOB,
            params![
                job.id,
                millis(job.created),
                job.who,
                job.role,
                job.key,
                job.address,
                job.command,
                job.target,
                job.identities.as_ref().map(json),
                json(&job.arguments),
                serde_json::to_string(&job.sent_to).unwrap_or_else(|_| "[]".into()),
                job.sent_to.len() as i64,
                serde_json::to_string(&job.offline).unwrap_or_else(|_| "[]".into()),
                job.offline.len() as i64,
                job.result,
                job.state.map(JobState::name),
                job.deadline.map(millis),
                job.rollout.as_ref().and_then(|r| serde_json::to_string(r).ok()),
                job.request,
                job.rerun_of,
            ],
        )
    };
    // A recorded job is never replaced: the dispatcher refuses a request
    // that reuses its uuid, and one that slips past (two at once) is not
    // recorded.
    if insert()? > 0 {
        seqs.insert(&job.id, tx.last_insert_rowid());
    }
    Ok(())
}

fn apply(conn: &mut Connection, seqs: &mut Seqs, batch: &[Write]) -> rusqlite::Result<()> {
    let tx = conn.transaction()?;
    for write in batch {
        match write {
            Write::PendingKey(k) => {
                run(
                    &tx,
                    "INSERT INTO pending_keys (public_key, address, first_seen, last_seen, attempts, identity)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6)
                     ON CONFLICT (public_key) DO UPDATE SET address = ?2, last_seen = ?4, attempts = ?5,
                         identity = COALESCE(?6, identity)",
                    params![k.public_key, k.address, k.first_seen, k.last_seen, k.attempts as i64, k.identity],
                )?;
            }
            Write::ForgetPendingKey(key) => {
                run(&tx, "DELETE FROM pending_keys WHERE public_key = ?1", params![key])?;
            }
            Write::Client(c) => {
                let roles = serde_json::to_string(&c.client.roles).unwrap_or_else(|_| "[]".into());
                run(
                    &tx,
                    "INSERT INTO clients (identity, application, environment, roles, key, last_seen, heartbeat)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)
                     ON CONFLICT (identity) DO UPDATE SET application = ?2, environment = ?3, roles = ?4, key = ?5,
                         last_seen = ?6, heartbeat = ?7",
                    params![
                        c.client.identity.as_deref().unwrap_or_default(),
                        c.client.application,
                        c.client.environment,
                        roles,
                        c.key,
                        unix(c.last_seen),
                        c.heartbeat.as_secs() as i64
                    ],
                )?;
            }
            Write::ClientSeen { identity, last_seen } => {
                run(&tx, "UPDATE clients SET last_seen = ?2 WHERE identity = ?1", params![identity, unix(*last_seen)])?;
            }
            Write::ForgetClient(identity) => {
                run(&tx, "DELETE FROM clients WHERE identity = ?1", params![identity])?;
            }
            Write::ClientFacts { identity, facts } => {
                let text = serde_json::to_string(&facts.facts).unwrap_or_else(|_| "{}".into());
                run(
                    &tx,
                    "UPDATE clients SET facts = ?2, facts_hash = ?3, facts_gathered = ?4, facts_interval = ?5
                     WHERE identity = ?1",
                    params![identity, text, facts.hash, unix(facts.gathered), facts.interval.as_secs() as i64],
                )?;
            }
            Write::ClientFactsSeen { identity, gathered } => {
                run(
                    &tx,
                    "UPDATE clients SET facts_gathered = ?2 WHERE identity = ?1",
                    params![identity, unix(*gathered)],
                )?;
            }
            Write::Job(job) => insert_job(&tx, seqs, job)?,
            Write::Answer(a) => insert_answer(&tx, seqs, a)?,
            Write::RawAnswer(raw) => {
                if let Some(a) = raw.row() {
                    insert_answer(&tx, seqs, &a)?;
                }
            }
            Write::JobResult { id, result } => {
                run(&tx, "UPDATE jobs SET result = ?2 WHERE id = ?1", params![id, result])?;
            }
            Write::JobState { id, state } => {
                run(&tx, "UPDATE jobs SET state = ?2 WHERE id = ?1", params![id, state.name()])?;
            }
            Write::JobAgents { id, agents } => {
                let Some(job) = seqs.get(&tx, id)? else { continue };
                for (identity, batch, state) in agents {
                    run(
                        &tx,
                        "INSERT INTO job_agents (job, identity, batch, state) VALUES (?1, ?2, ?3, ?4)
                         ON CONFLICT (job, identity) DO UPDATE SET batch = ?3, state = ?4",
                        params![job, identity, batch, state],
                    )?;
                }
            }
            Write::Batch { id, number, size, started, ended } => {
                let Some(job) = seqs.get(&tx, id)? else { continue };
                run(
                    &tx,
                    "INSERT INTO job_batches (job, number, size, started, ended) VALUES (?1, ?2, ?3, ?4, ?5)
                     ON CONFLICT (job, number) DO UPDATE SET started = COALESCE(?4, started), ended = COALESCE(?5, ended)",
                    params![job, number, size, started.map(millis), ended.map(millis)],
                )?;
            }
            Write::Barrier(_) => {}
            Write::PruneJobs { before } => {
                let before = millis(*before);
                // Jobs are numbered in the order they were recorded: the
                // walk from the oldest stops at the first one kept.
                let kept: Option<i64> = tx
                    .prepare_cached("SELECT seq FROM jobs WHERE created >= ?1 ORDER BY seq LIMIT 1")?
                    .query_row(params![before], |r| r.get(0))
                    .optional()?;
                let kept = kept.unwrap_or(i64::MAX);
                run(&tx, "DELETE FROM answers WHERE job < ?1", params![kept])?;
                run(&tx, "DELETE FROM job_agents WHERE job < ?1", params![kept])?;
                run(&tx, "DELETE FROM job_batches WHERE job < ?1", params![kept])?;
                if run(&tx, "DELETE FROM jobs WHERE seq < ?1", params![kept])? > 0 {
                    seqs.clear();
                }
            }
        }
    }
    tx.commit()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(name: &str, identity: Option<&str>) -> PendingKey {
        PendingKey {
            public_key: name.into(),
            address: "127.0.0.1".into(),
            first_seen: "2026-01-01T00:00:00Z".into(),
            last_seen: "2026-01-01T00:00:01Z".into(),
            attempts: 1,
            identity: identity.map(Into::into),
        }
    }

    #[test]
    fn writes_are_batched_committed_and_read_back() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(DB_FILE);
        let log = slog::Logger::root(slog::Discard, slog::o!());
        let (writer, thread) = start_writer(&path, log).unwrap();
        writer.write(Write::PendingKey(key("a", Some("web-1"))));
        writer.write(Write::PendingKey(key("b", None)));
        // A later attempt without a claimed identity keeps the one known.
        writer.write(Write::PendingKey(PendingKey { attempts: 2, ..key("a", None) }));
        writer.write(Write::ForgetPendingKey("b".into()));
        drop(writer);
        thread.join().unwrap();
        let conn = open(&path).unwrap();
        let all = pending_keys(&conn).unwrap();
        assert_eq!(all.len(), 1);
        assert_eq!((all[0].attempts, all[0].identity.as_deref()), (2, Some("web-1")));
        // Opening again does not migrate twice.
        drop(conn);
        assert_eq!(pending_keys(&open(&path).unwrap()).unwrap().len(), 1);
    }

    fn job(id: &str, created: SystemTime, target: &str, sent_to: &[&str]) -> JobRow {
        JobRow {
            id: id.into(),
            created,
            who: "admin".into(),
            role: "admin".into(),
            key: "k".into(),
            address: "127.0.0.1".into(),
            command: "Exec".into(),
            target: target.into(),
            identities: None,
            arguments: serde_json::json!({"program": "uptime"}),
            sent_to: sent_to.iter().map(|s| s.to_string()).collect(),
            offline: vec!["web-9".into()],
            result: None,
            state: None,
            deadline: None,
            rollout: None,
            request: None,
            rerun_of: None,
        }
    }

    #[test]
    fn jobs_are_listed_shown_and_pruned() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(DB_FILE);
        let log = slog::Logger::root(slog::Discard, slog::o!());
        let (writer, thread) = start_writer(&path, log).unwrap();
        let now = SystemTime::now();
        writer.write(Write::Job(Box::new(job("old", now - Duration::from_secs(3600), "shop", &["web-1"]))));
        writer.write(Write::Job(Box::new(job("a", now - Duration::from_secs(2), "shop", &["web-1", "web-2"]))));
        writer.write(Write::Job(Box::new(job("b", now - Duration::from_secs(1), "bank", &["db-1"]))));
        let answer = |id: &str, who: &str, outcome: &str| AnswerRow {
            job_id: id.into(),
            identity: who.into(),
            received: now,
            outcome: outcome.into(),
            error: None,
            body: Some(serde_json::json!({"exit_code": 0})),
        };
        writer.write(Write::Answer(answer("a", "web-1", "ok")));
        writer.write(Write::Answer(answer("a", "web-2", "failed")));
        writer.write(Write::PruneJobs { before: now - Duration::from_secs(60) });
        drop(writer);
        thread.join().unwrap();
        let conn = open(&path).unwrap();
        let all = list_jobs(&conn, 20, None, &[], SystemTime::UNIX_EPOCH).unwrap();
        assert_eq!(all.iter().map(|j| j.id.as_str()).collect::<Vec<_>>(), ["b", "a"], "newest first, old pruned");
        assert_eq!((all[1].answered, all[1].failed, all[1].pending, all[1].offline), (2, 1, 0, 1));
        assert_eq!((all[0].answered, all[0].pending), (0, 1));
        assert_eq!(list_jobs(&conn, 20, Some("shop"), &[], SystemTime::UNIX_EPOCH).unwrap().len(), 1);
        assert_eq!(list_jobs(&conn, 20, None, &["db-*".into()], SystemTime::UNIX_EPOCH).unwrap()[0].id, "b");
        assert_eq!(
            list_jobs(&conn, 20, None, &["web-9".into()], SystemTime::UNIX_EPOCH).unwrap().len(),
            2,
            "offline ones match too"
        );
        assert_eq!(list_jobs(&conn, 1, None, &[], SystemTime::UNIX_EPOCH).unwrap().len(), 1);
        // A restart after job b: db-1 never answered and never will.
        let shown = show_job(&conn, "b", now).unwrap().unwrap();
        assert_eq!((shown.lost, shown.offline), (vec!["db-1".to_owned()], vec!["web-9".to_owned()]));
        let shown = show_job(&conn, "a", now - Duration::from_secs(10)).unwrap().unwrap();
        assert!(shown.lost.is_empty());
        assert_eq!(shown.answers.len(), 2);
        assert!(show_job(&conn, "nope", now).unwrap().is_none());
    }

    #[test]
    fn a_uuid_used_again_never_replaces_its_job() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(DB_FILE);
        let log = slog::Logger::root(slog::Discard, slog::o!());
        let (writer, thread) = start_writer(&path, log).unwrap();
        let now = SystemTime::now();
        let answer = |who: &str| AnswerRow {
            job_id: "u".into(),
            identity: who.into(),
            received: now,
            outcome: "ok".into(),
            error: None,
            body: None,
        };
        writer.write(Write::Job(Box::new(job("u", now, "shop", &["web-1"]))));
        writer.write(Write::Answer(answer("web-1")));
        assert!(writer.sync(Duration::from_secs(5)));
        writer.write(Write::Job(Box::new(job("u", now, "bank", &["db-1"]))));
        drop(writer);
        thread.join().unwrap();
        let conn = open(&path).unwrap();
        let shown = show_job(&conn, "u", now).unwrap().unwrap();
        assert_eq!(shown.summary.target, "shop");
        assert_eq!(shown.answers.iter().map(|a| a.identity.as_str()).collect::<Vec<_>>(), ["web-1"]);
        assert_eq!(list_jobs(&conn, 20, None, &[], SystemTime::UNIX_EPOCH).unwrap().len(), 1);
        let used = crate::jobs::UsedUuids::new(Some(conn));
        assert!(used.is_used("u").unwrap() && !used.is_used("v").unwrap());
    }

    #[test]
    fn a_version_3_store_keeps_its_jobs_and_answers() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(DB_FILE);
        let conn = Connection::open(&path).unwrap();
        for (i, migration) in MIGRATIONS.iter().take(3).enumerate() {
            conn.execute_batch(migration).unwrap();
            conn.pragma_update(None, "user_version", i + 1).unwrap();
        }
        for (id, created) in [("new", 2_000), ("old", 1_000)] {
            conn.execute(
                "INSERT INTO jobs (id, created, who, role, key, address, command, target, identities, arguments,
                    sent_to, sent_count, offline, offline_count, result)
                 VALUES (?1, ?2, 'admin', 'admin', 'k', '127.0.0.1', 'Echo', '', NULL, '{}', '[\"web-1\"]', 1, '[]', 0, NULL)",
                params![id, created],
            )
            .unwrap();
            conn.execute(
                "INSERT INTO answers (job_id, identity, received, outcome, error, body)
                 VALUES (?1, 'web-1', ?2, 'ok', NULL, '\"hi\"')",
                params![id, created + 1],
            )
            .unwrap();
        }
        drop(conn);
        let conn = open(&path).unwrap();
        let version: usize = conn.pragma_query_value(None, "user_version", |r| r.get(0)).unwrap();
        assert_eq!(version, MIGRATIONS.len());
        let all = list_jobs(&conn, 20, None, &[], SystemTime::UNIX_EPOCH).unwrap();
        assert_eq!(all.iter().map(|j| (j.id.as_str(), j.answered)).collect::<Vec<_>>(), [("new", 1), ("old", 1)]);
        let shown = show_job(&conn, "old", SystemTime::UNIX_EPOCH).unwrap().unwrap();
        assert_eq!(shown.answers[0].body, Some(serde_json::json!("hi")));
    }

    #[test]
    fn clients_are_kept_seen_and_forgotten() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(DB_FILE);
        let log = slog::Logger::root(slog::Discard, slog::o!());
        let (writer, thread) = start_writer(&path, log).unwrap();
        let web = StoredClient {
            client: ClientFilter {
                identity: Some("web1.example.com".into()),
                application: Some("shop".into()),
                environment: None,
                roles: vec!["web".into(), "db".into()],
            },
            key: Some("k".into()),
            last_seen: from_unix(1_700_000_000),
            heartbeat: Duration::from_secs(30),
            facts: None,
        };
        writer.write(Write::Client(web.clone()));
        writer.write(Write::Client(StoredClient {
            client: ClientFilter { identity: Some("gone".into()), ..Default::default() },
            ..web.clone()
        }));
        writer.write(Write::ClientSeen { identity: "web1.example.com".into(), last_seen: from_unix(1_700_000_100) });
        writer.write(Write::ForgetClient("gone".into()));
        let mut facts = Facts::new();
        facts.insert("os.id".into(), "debian".into());
        let facts = Arc::new(StoredFacts {
            facts,
            hash: "h".into(),
            gathered: from_unix(1_700_000_050),
            interval: Duration::from_secs(60),
        });
        writer.write(Write::ClientFacts { identity: "web1.example.com".into(), facts: facts.clone() });
        writer
            .write(Write::ClientFactsSeen { identity: "web1.example.com".into(), gathered: from_unix(1_700_000_090) });
        // A registration again keeps them.
        writer.write(Write::Client(web.clone()));
        drop(writer);
        thread.join().unwrap();
        let all = clients(&open(&path).unwrap()).unwrap();
        let facts = Some(Arc::new(StoredFacts { gathered: from_unix(1_700_000_090), ..(*facts).clone() }));
        assert_eq!(all, [StoredClient { facts, ..web }]);
    }
}
