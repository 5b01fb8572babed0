//! The job store (CURVE): two servers with the store on and off compared
//! side by side, `jobs` timed over a store filled through the server, and
//! the database's growth per echo job. The section says how each is timed.

use std::fmt::Write as _;
use std::time::{Duration, Instant};

use anyhow::{bail, Result};
use pantry_shared::commands::jobs as jobs_command;
use pantry_shared::filter::ClientFilter;
use serde::{Deserialize, Serialize};

use crate::common::admin::Admin;
use crate::common::agents::{group_streams, AgentOptions, Kind, Pool};
use crate::common::compare::{compare_servers, on_off_table, on_off_target, Clients, SizeRow};
use crate::common::env::{seconds, Env, Measure, Parts};
use crate::common::markdown::{compared, count, failures, group, num, pct, ratio, targets_table, Previous, Target};
use crate::common::procs::run_bounded;
use crate::common::requesters::{fanout, pipelined, uuid_of, wait_until_reachable, Requester};
use crate::common::ring::{KeyRing, ADMIN_NAME};
use crate::common::stats::median;

/// server.yml with the job store off.
pub const JOBS_OFF: &str = "jobs:\n  enabled: false\n";

/// The store on within 5% of off; `jobs` over a full store.
const ON_OFF_TOLERANCE: f64 = 0.05;
const LIST_JOBS_TARGET_MS: f64 = 50.0;

/// What the job-store scenario does.
#[derive(Debug, Clone, clap::Args, Serialize, Deserialize)]
pub struct Settings {
    /// N at which fan-out and throughput are compared with the store on
    /// and off.
    #[arg(long, value_delimiter = ',', default_value = "1,1000")]
    pub sizes: Vec<usize>,
    /// Jobs put in the store before `jobs` is timed.
    #[arg(long, default_value_t = 100_000)]
    pub fill: u64,
    /// Longest the fill may take, seconds.
    #[arg(long, value_parser = seconds, default_value = "300")]
    pub fill_timeout: Duration,
    /// `ListJobs` requests timed.
    #[arg(long, default_value_t = 20)]
    pub list_requests: usize,
    /// Agents and echoes of the database-size measurement.
    #[arg(long, default_value_t = 1000)]
    pub db_agents: usize,
    #[arg(long, default_value_t = 20)]
    pub db_echoes: usize,
    /// Those agents' heartbeat (they come back after the restart), seconds.
    #[arg(long, value_parser = seconds, default_value = "5")]
    pub heartbeat: Duration,
}

impl Settings {
    /// The most agent keys the scenario needs.
    pub fn max_agents(&self) -> usize {
        self.sizes.iter().copied().chain([self.db_agents, 1]).max().unwrap_or(1)
    }
}

/// The store filled, then `jobs` timed.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
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
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
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

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Figures {
    pub measure: Measure,
    /// Per N: `pantry` = the store on, `baseline` = off.
    pub rows: Vec<SizeRow>,
    pub fill: Option<Fill>,
    pub db: Option<DbSize>,
    /// Parts that failed, and why.
    pub failures: Vec<String>,
}

/// Runs the three parts; a part that fails is recorded, the others run.
pub fn run(env: &Env, ring: &KeyRing, s: &Settings) -> Result<Figures> {
    let mut parts = Parts::new(env, "jobs");
    let rows = parts.part("on/off", on_off(env, ring, s)).unwrap_or_default();
    let fill = parts.part("filled store", fill(env, ring, s));
    let db = if s.db_agents > 0 && s.db_echoes > 0 { parts.part("database size", db_size(env, ring, s)) } else { None };
    Ok(Figures { measure: env.measure, rows, fill, db, failures: parts.failures })
}

fn on_off(env: &Env, ring: &KeyRing, s: &Settings) -> Result<Vec<SizeRow>> {
    let on = env.server_for(ring, "")?;
    let off = env.server_for(ring, JOBS_OFF)?;
    env.say(format!("jobs: store on: pid {}, off: pid {}", on.process.pid, off.process.pid));
    compare_servers(env, ring, "jobs", [&on, &off], ["store on", "store off"], &s.sizes)
}

fn fill(env: &Env, ring: &KeyRing, s: &Settings) -> Result<Fill> {
    let server = env.server_for(ring, "")?;
    let mut clients = Clients::connect(Kind::Pantry, &server.endpoints, ring, true)?;
    let pool = Pool::start(Kind::Pantry, &server.endpoints, &ring.agents, 1)?;
    wait_until_reachable(&mut clients.admin, &group_streams(1), env.measure.reachable_timeout)?;
    env.say(format!("jobs: filling a fresh store with {} echo jobs (pid {})", s.fill, server.process.pid));
    let p = pipelined(&mut clients.requesters, 1, s.fill, env.measure.throughput.window, s.fill_timeout)?;
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
    env.say(format!(
        "jobs: {} jobs in {:.1} s ({} lost), all committed {} s after the last answer",
        result.jobs,
        result.seconds,
        result.lost,
        result.written_s.map_or("-".into(), |v| format!("{v:.2}"))
    ));
    for _ in 0..s.list_requests {
        let asked = Instant::now();
        let request = jobs_command::list_request(jobs_command::DEFAULT_LIMIT, &ClientFilter::default());
        let answer = admin.ask(request, "ListJobs", Duration::from_secs(10))?;
        result.list_ms.push(asked.elapsed().as_secs_f64() * 1000.0);
        result.listed = jobs_command::jobs(&answer).len();
    }
    let mut command = server.admin_command(&env.bins.admin, &ring.admin)?;
    command.arg("jobs");
    let started = Instant::now();
    let out = run_bounded(&mut command, Duration::from_secs(30))?;
    if out.success() {
        result.cli_ms = Some(started.elapsed().as_secs_f64() * 1000.0);
    } else {
        env.say(format!("jobs: pantry-admin jobs failed ({:?}): {}", out.status, out.stderr.trim()));
    }
    env.say(format!(
        "jobs: ListJobs over the filled store: median {} ms, max {} ms ({} listed); pantry-admin jobs {} ms",
        num(result.median_list_ms()),
        num(result.max_list_ms()),
        result.listed,
        num(result.cli_ms)
    ));
    drop(pool);
    Ok(result)
}

fn db_size(env: &Env, ring: &KeyRing, s: &Settings) -> Result<DbSize> {
    let n = s.db_agents.min(ring.agents.len()).min(env.limits.max_monitored_agents());
    let mut server = env.server_for(ring, "")?;
    let heartbeat = Duration::from_secs(s.heartbeat.as_secs().max(1));
    let pool = Pool::start_with(
        Kind::Pantry,
        &server.endpoints,
        &ring.agents,
        0..n,
        AgentOptions::like_the_real_agent(heartbeat),
    )?;
    env.reach(&server.endpoints, ring, n)?;
    server.process.stop();
    let before = server.db_bytes();
    let started = server.start_again()?;
    let admin = Admin::connect(&server, &ring.admin, ADMIN_NAME)?;
    let (all, online) =
        admin.wait_online(n, started + 2 * heartbeat + Duration::from_secs(30), Duration::from_millis(200))?;
    if all.is_none() {
        bail!("only {online} of {n} agents online again after the restart");
    }
    let mut requester = Requester::connect(Kind::Pantry, &server.endpoints, Some(&ring.admin), ADMIN_NAME)?;
    let mut result = DbSize { agents: n, echoes: s.db_echoes, before, ..Default::default() };
    for _ in 0..s.db_echoes {
        let f = fanout(&mut requester, n, env.measure.fanout_timeout, Duration::from_secs(1))?;
        result.complete += usize::from(f.complete(n));
    }
    server.process.stop();
    result.after = server.db_bytes();
    env.say(format!(
        "jobs: {} echoes to {n} agents ({} complete): pantry.db {} → {} bytes, -wal {} → {}: {} bytes per job",
        result.echoes,
        result.complete,
        result.before.0,
        result.after.0,
        result.before.1,
        result.after.1,
        num(result.per_job_bytes())
    ));
    drop(pool);
    Ok(result)
}

/// The on/off target and `jobs` over a full store, with the previous run's.
pub fn targets(j: &Figures, previous: Previous<Figures>) -> Vec<Target> {
    compared(measured(j), previous.figures.map(measured))
}

fn measured(j: &Figures) -> Vec<Target> {
    let on_off = on_off_target(
        "job store on: throughput and fan-out latency within 5% of off (on / off, CURVE)".into(),
        &j.rows,
        ON_OFF_TOLERANCE,
        pct,
        ratio,
    );
    let list = match &j.fill {
        Some(f) => Target::new(
            format!(
                "`jobs` (raw `ListJobs`, the 20 most recent) over {} jobs < {LIST_JOBS_TARGET_MS} ms (median of {})",
                group(f.jobs),
                f.list_ms.len()
            ),
            format!("{} ms (max {} ms)", num(f.median_list_ms()), num(f.max_list_ms())),
            f.median_list_ms().map(|m| m < LIST_JOBS_TARGET_MS && f.written_s.is_some()),
        ),
        None => Target::new(format!("`jobs` over a full store < {LIST_JOBS_TARGET_MS} ms"), "failed".into(), None),
    };
    vec![on_off, list]
}

/// The `## Jobs` section.
pub fn report(j: &Figures, previous: Previous<Figures>) -> String {
    let m = &j.measure;
    let mut out = String::new();
    let _ = write!(
        out,
        "## Jobs\n\nCURVE. **Job store on vs off**: two `pantry-server`s at once, one with the default `jobs:` \
         (every echo a job, each answer recorded) and one with `jobs: enabled: false`; the benchmark's fan-out and \
         throughput measurements ({} fan-outs, {} requesters × {} in flight for {:.1} s) at each N, {} rounds \
         alternating between them, medians. Ratios: on / off.\n\n{}\n{}",
        m.fanout_requests,
        m.requesters,
        m.throughput.window,
        m.throughput.duration.as_secs_f64(),
        m.rounds,
        targets_table(&targets(j, previous), previous.said),
        on_off_table(&j.rows, pct, ratio)
    );
    if let Some(f) = &j.fill {
        let _ = writeln!(
            out,
            "\n**`jobs` over a full store.** A fresh server's store filled through the server: {} echoes to one \
             agent, pipelined ({} requesters × {} in flight), each a job with its answer: {} answered ({} lost) in \
             {} s ({} per s); the writer had committed the last one {} s after its answer (`job ID` showed it). \
             Then a raw `ListJobs` (the {} most recent, no filter) from the admin's CURVE DEALER, {} times one \
             after the other: median {} ms, max {} ms, {} jobs in each answer. The real `pantry-admin jobs` \
             (process start and CURVE handshake included): {} ms.",
            group(f.jobs + f.lost),
            m.requesters,
            m.throughput.window,
            group(f.jobs),
            f.lost,
            num(Some(f.seconds)),
            num((f.seconds > 0.0).then(|| f.jobs as f64 / f.seconds)),
            num(f.written_s),
            jobs_command::DEFAULT_LIMIT,
            f.list_ms.len(),
            num(f.median_list_ms()),
            num(f.max_list_ms()),
            f.listed,
            num(f.cli_ms)
        );
    }
    if let Some(d) = &j.db {
        let _ = writeln!(
            out,
            "\n**Database size per job.** {} agents registered (heartbeat, registration on reconnection); the \
             server stopped (SIGTERM) and `pantry.db` + `pantry.db-wal` measured, started again, {} echoes to all \
             {} ({} answered by every agent), stopped and measured again.\n",
            count(d.agents),
            d.echoes,
            count(d.agents),
            d.complete
        );
        let _ = writeln!(
            out,
            "| | `pantry.db` (bytes) | `pantry.db-wal` (bytes) |\n|---|---:|---:|\n| before | {} | {} |\n| after | {} | {} |\n\
             | **per {}-agent echo job** | **{} bytes** ({} per answer) | |",
            group(d.before.0),
            group(d.before.1),
            group(d.after.0),
            group(d.after.1),
            count(d.agents),
            d.per_job_bytes().map_or("–".into(), |b| group(b.max(0.0).round() as u64)),
            num(d.per_job_bytes().map(|b| b / d.agents.max(1) as f64))
        );
    }
    failures(&mut out, &j.failures);
    out
}
