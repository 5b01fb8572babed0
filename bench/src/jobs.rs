//! The job store (CURVE), against real `pantry-server`s:
//!
//! - **On vs off**: two servers at once, one with the default `jobs:` and
//!   one with `jobs: enabled: false`; the benchmark's own fan-out and
//!   throughput measurements at a few N, rounds alternating between them.
//! - **`jobs` over a full store**: a fresh server filled through its front
//!   door (pipelined echoes to one agent, each a job with its answer);
//!   once the writer has committed the last one, a raw `ListJobs` (the
//!   20 most recent) timed over the admin's CURVE DEALER, one after the
//!   other; and the real `pantry-admin jobs` once.
//! - **Database size per job**: N agents that behave like the real one
//!   (heartbeat, registration on reconnection); the server stopped (the
//!   files measured: `pantry.db` and `pantry.db-wal`), started again, K
//!   echoes to all N, stopped again and measured again.

use std::time::{Duration, Instant};

use anyhow::{bail, Context as _, Result};
use pantry_shared::commands::jobs as jobs_command;
use pantry_shared::filter::ClientFilter;

use crate::agents::{group_streams, AgentOptions, Kind, Pool};
use crate::enrollment::Admin;
use crate::harness::{compare_servers, Clients, Config, KeyRing, Progress, SizeRow, ADMIN_NAME};
use crate::limits::FdLimits;
use crate::presence::wait_online;
use crate::procs::{run_bounded, PantryServer};
use crate::requesters::{fanout, pipelined, uuid_of, wait_until_reachable, Requester};
use crate::stats::median;

/// server.yml with the job store off.
pub const JOBS_OFF: &str = "jobs:\n  enabled: false\n";

/// What the job-store scenario does.
#[derive(Debug, Clone)]
pub struct JobsSettings {
    /// N at which fan-out and throughput are measured with the store on
    /// and off.
    pub sizes: Vec<usize>,
    /// Jobs put in the store before `jobs` is timed.
    pub fill: u64,
    pub fill_timeout: Duration,
    /// `ListJobs` requests timed.
    pub list_requests: usize,
    /// Agents and echoes of the database-size measurement.
    pub db_agents: usize,
    pub db_echoes: usize,
    /// Those agents' heartbeat (they come back after the restart).
    pub heartbeat: Duration,
}

impl JobsSettings {
    /// The most agent keys the scenario needs.
    pub fn max_agents(&self) -> usize {
        self.sizes.iter().copied().chain([self.db_agents, 1]).max().unwrap_or(1)
    }
}

/// The store filled, then `jobs` timed.
#[derive(Debug, Clone, Default)]
pub struct Fill {
    /// Echoes answered (each a job), and lost.
    pub jobs: u64,
    pub lost: u64,
    pub seconds: f64,
    /// From the last answer until `job ID` showed the last job with its
    /// answer (the writer had committed everything).
    pub written_s: Option<f64>,
    /// Each raw `ListJobs` round trip, ms.
    pub list_ms: Vec<f64>,
    /// Jobs in each answer (the limit, 20).
    pub listed: usize,
    /// `pantry-admin jobs`, wall time (process start and CURVE handshake
    /// included), ms.
    pub cli_ms: Option<f64>,
}

impl Fill {
    pub fn median_list_ms(&self) -> Option<f64> {
        median(&self.list_ms)
    }

    pub fn max_list_ms(&self) -> Option<f64> {
        self.list_ms.iter().copied().reduce(f64::max)
    }
}

/// Database growth over K echoes to N agents.
#[derive(Debug, Clone, Default)]
pub struct DbSize {
    pub agents: usize,
    pub echoes: usize,
    /// Echoes that every agent answered.
    pub complete: usize,
    /// `pantry.db` and `pantry.db-wal` bytes after the first stop and
    /// after the last.
    pub before: (u64, u64),
    pub after: (u64, u64),
}

impl DbSize {
    pub fn per_job_bytes(&self) -> Option<f64> {
        let total = |(db, wal): (u64, u64)| (db + wal) as f64;
        (self.echoes > 0).then(|| (total(self.after) - total(self.before)) / self.echoes as f64)
    }
}

#[derive(Debug, Clone, Default)]
pub struct JobsResult {
    /// Per N: `pantry` = the store on, `baseline` = off.
    pub rows: Vec<SizeRow>,
    pub fill: Option<Fill>,
    pub db: Option<DbSize>,
    /// Parts that failed, and why.
    pub failures: Vec<String>,
}

/// Runs the three parts; a part that fails is recorded, the others run.
pub(crate) fn run(
    cfg: &Config,
    s: &JobsSettings,
    ring: &KeyRing,
    limits: &FdLimits,
    progress: &Progress,
) -> Result<JobsResult> {
    let mut result = JobsResult::default();
    match on_off(cfg, s, ring, limits, progress) {
        Ok(rows) => result.rows = rows,
        Err(e) => {
            progress.say(format!("jobs: on/off failed: {e:#}"));
            result.failures.push(format!("on/off: {e:#}"));
        }
    }
    match fill(cfg, s, ring, progress) {
        Ok(f) => result.fill = Some(f),
        Err(e) => {
            progress.say(format!("jobs: filled store failed: {e:#}"));
            result.failures.push(format!("filled store: {e:#}"));
        }
    }
    if s.db_agents > 0 && s.db_echoes > 0 {
        match db_size(cfg, s, ring, limits, progress) {
            Ok(d) => result.db = Some(d),
            Err(e) => {
                progress.say(format!("jobs: database size failed: {e:#}"));
                result.failures.push(format!("database size: {e:#}"));
            }
        }
    }
    Ok(result)
}

fn start(cfg: &Config, ring: &KeyRing, extra: &str) -> Result<PantryServer> {
    let enrolled = ring.enrolled();
    PantryServer::start_with(&cfg.server_bin, Some((&ring.server, &enrolled)), &cfg.log_level, extra)
}

fn on_off(
    cfg: &Config,
    s: &JobsSettings,
    ring: &KeyRing,
    limits: &FdLimits,
    progress: &Progress,
) -> Result<Vec<SizeRow>> {
    let on = start(cfg, ring, "")?;
    let off = start(cfg, ring, JOBS_OFF)?;
    progress.say(format!("jobs: store on: pid {}, off: pid {}", on.process.pid, off.process.pid));
    compare_servers(cfg, "jobs", [&on, &off], ["store on", "store off"], &s.sizes, ring, limits, progress)
}

fn fill(cfg: &Config, s: &JobsSettings, ring: &KeyRing, progress: &Progress) -> Result<Fill> {
    let server = start(cfg, ring, "")?;
    let mut clients = Clients::connect(Kind::Pantry, &server.endpoints, ring, true)?;
    let pool = Pool::start(Kind::Pantry, &server.endpoints, &ring.agents, 1)?;
    wait_until_reachable(&mut clients.admin, &group_streams(1), cfg.reachable_timeout)?;
    progress.say(format!("jobs: filling a fresh store with {} echo jobs (pid {})", s.fill, server.process.pid));
    let p = pipelined(&mut clients.requesters, 1, s.fill, cfg.throughput.window, s.fill_timeout)?;
    let mut result = Fill { jobs: p.completed, lost: p.lost, seconds: p.elapsed.as_secs_f64(), ..Default::default() };
    let answered_at = Instant::now();
    let admin = Admin::connect(&server, &ring.admin, ADMIN_NAME)?;
    // The writer commits in order: once the last job shows its answer,
    // every earlier one is in the store.
    if let Some(token) = p.last_answered {
        let id = uuid_of(token);
        let end = answered_at + Duration::from_secs(60);
        while Instant::now() < end {
            let uuid = admin.send(jobs_command::show_request(&id))?;
            let shown = admin.recv(&uuid, Instant::now() + Duration::from_secs(10)).and_then(|m| jobs_command::job(&m));
            if shown.is_some_and(|j| j.summary.answered >= 1) {
                result.written_s = Some(answered_at.elapsed().as_secs_f64());
                break;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
    progress.say(format!(
        "jobs: {} jobs in {:.1} s ({} lost), all committed {} s after the last answer",
        result.jobs,
        result.seconds,
        result.lost,
        result.written_s.map_or("-".into(), |v| format!("{v:.2}"))
    ));
    for _ in 0..s.list_requests {
        let asked = Instant::now();
        let uuid = admin.send(jobs_command::list_request(jobs_command::DEFAULT_LIMIT, &ClientFilter::default()))?;
        let answer = admin.recv(&uuid, asked + Duration::from_secs(10)).context("no answer to ListJobs within 10 s")?;
        result.list_ms.push(asked.elapsed().as_secs_f64() * 1000.0);
        if let Some(error) = answer.error() {
            bail!("ListJobs refused: {error}");
        }
        result.listed = jobs_command::jobs(&answer).len();
    }
    let mut command = server.admin_command(&cfg.admin_bin, &ring.admin)?;
    command.arg("jobs");
    let started = Instant::now();
    let out = run_bounded(&mut command, Duration::from_secs(30))?;
    if out.success() {
        result.cli_ms = Some(started.elapsed().as_secs_f64() * 1000.0);
    } else {
        progress.say(format!("jobs: pantry-admin jobs failed ({:?}): {}", out.status, out.stderr.trim()));
    }
    progress.say(format!(
        "jobs: ListJobs over the filled store: median {} ms, max {} ms ({} listed); pantry-admin jobs {} ms",
        crate::harness::fmt(result.median_list_ms()),
        crate::harness::fmt(result.max_list_ms()),
        result.listed,
        crate::harness::fmt(result.cli_ms)
    ));
    drop(pool);
    Ok(result)
}

fn db_size(cfg: &Config, s: &JobsSettings, ring: &KeyRing, limits: &FdLimits, progress: &Progress) -> Result<DbSize> {
    let n = s.db_agents.min(ring.agents.len()).min(limits.max_monitored_agents());
    let mut server = start(cfg, ring, "")?;
    let heartbeat = Duration::from_secs(s.heartbeat.as_secs().max(1));
    let pool = Pool::start_with(
        Kind::Pantry,
        &server.endpoints,
        &ring.agents,
        0..n,
        AgentOptions::like_the_real_agent(heartbeat),
    )?;
    let mut requester = Requester::connect(Kind::Pantry, &server.endpoints, Some(&ring.admin), ADMIN_NAME)?;
    wait_until_reachable(&mut requester, &group_streams(n), cfg.reachable_timeout)?;
    drop(requester);
    server.process.stop();
    let before = server.db_bytes();
    let started = server.start_again()?;
    let admin = Admin::connect(&server, &ring.admin, ADMIN_NAME)?;
    let (all, online) =
        wait_online(&admin, n, started + 2 * heartbeat + Duration::from_secs(30), Duration::from_millis(200))?;
    if all.is_none() {
        bail!("only {online} of {n} agents online again after the restart");
    }
    let mut requester = Requester::connect(Kind::Pantry, &server.endpoints, Some(&ring.admin), ADMIN_NAME)?;
    let mut result = DbSize { agents: n, echoes: s.db_echoes, before, ..Default::default() };
    for _ in 0..s.db_echoes {
        let f = fanout(&mut requester, n, cfg.fanout_timeout, Duration::from_secs(1))?;
        result.complete += usize::from(f.complete(n));
    }
    server.process.stop();
    result.after = server.db_bytes();
    progress.say(format!(
        "jobs: {} echoes to {n} agents ({} complete): pantry.db {} → {} bytes, -wal {} → {}: {} bytes per job",
        result.echoes,
        result.complete,
        result.before.0,
        result.after.0,
        result.before.1,
        result.after.1,
        crate::harness::fmt(result.per_job_bytes())
    ));
    drop(pool);
    Ok(result)
}
