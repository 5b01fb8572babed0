//! Scale (issue 27, CURVE): N simulated agents with one connection each,
//! in child processes of the bench (one process holds only a few thousand:
//! [`Children`]), at each N (1,000, 4,000 and the largest this machine
//! allows) against a fresh relay and then a fresh release `pantry-server`:
//! server memory and descriptors per agent, the fan-out echo to all N
//! (every answer counted) and the server CPU per answer, Pantry against
//! the relay at the same N; then a server restart, the agents coming back
//! as the real agent does (after a random delay within `reconnect_spread`),
//! with `status` asked throughout until all N are online. The systems run
//! one after the other, so that neither's idle agents share the machine
//! with the other's measurement. Every wait is bounded.

use std::fmt::Write as _;
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result};
use pantry_shared::commands::status::ONLINE;
use pantry_shared::filter::ClientFilter;
use pantry_shared::keys::{KnownKey, Role};
use serde::{Deserialize, Serialize};

use crate::common::admin::Admin;
use crate::common::agents::children::Children;
use crate::common::agents::{group_streams, identity, AgentOptions, Kind};
use crate::common::compare::fanouts;
use crate::common::env::{seconds, Env, Measure, Parts};
use crate::common::keys::{self, Pair};
use crate::common::limits::{FDS_PER_MONITORED_AGENT, RESERVED_FDS};
use crate::common::markdown::{
    compared, count, failures, group, kib, ms_pair, num, ratio, secs, targets_table, Previous, Target,
};
use crate::common::procs::{open_fds, rss_kib, stat_cpu_ns, Endpoints, PantryServer, Relay};
use crate::common::requesters::{fanout, wait_until_reachable, Requester};
use crate::common::ring::{KeyRing, ADMIN_NAME};
use crate::common::stats::{median, percentile, Both};

/// Issue 27's targets.
const KIB_PER_AGENT_TARGET: f64 = 60.0;
/// One descriptor per agent: the few the server opens besides (a log
/// rotation, a database page) may not make it more.
const FDS_PER_AGENT_TARGET: f64 = 1.01;
const FANOUT_RATIO_TARGET: f64 = 1.2;
const FANOUT_RATIO_N: usize = 1000;
const CPU_RATIO_TARGET: f64 = 1.3;
const ONLINE_TARGET_S: f64 = 20.0;
const STATUS_TARGET_MS: f64 = 1000.0;
const FANOUT_P50_TARGET_MS: f64 = 1000.0;

/// The share of its open-file limit at which `pantry-server` warns
/// (`server/src/limits.rs`: 80%); at 90% it sheds connections still in
/// their handshake.
const SERVER_FD_WARN: f64 = 0.8;

/// How long a `status` may take before it counts as unanswered.
const STATUS_TIMEOUT: Duration = Duration::from_secs(5);

/// What the scale scenario does.
#[derive(Debug, Clone, clap::Args, Serialize, Deserialize)]
pub struct Settings {
    /// Agent counts; those over what the descriptors allow are skipped.
    #[arg(long, value_delimiter = ',', default_value = "1000,4000,9000")]
    pub sizes: Vec<usize>,
    /// Agents per child process (at most what its open-file limit holds).
    #[arg(long, default_value_t = 3000)]
    pub per_process: usize,
    /// Fan-out echoes per round (`--rounds` rounds) on each system.
    #[arg(long, default_value_t = 10)]
    pub echoes: usize,
    /// The agents' `reconnect_spread`: after losing the server an agent
    /// connects again after a random delay below it, seconds.
    #[arg(long, value_parser = seconds, default_value = "10")]
    pub reconnect_spread: Duration,
    /// The agents' heartbeat (the real agent's default), seconds.
    #[arg(long, value_parser = seconds, default_value = "300")]
    pub heartbeat: Duration,
    /// Longest wait for every agent to be online after the restart, seconds.
    #[arg(long, value_parser = seconds, default_value = "60")]
    pub online_timeout: Duration,
    /// How often `status` is asked during the restart, seconds.
    #[arg(long, value_parser = seconds, default_value = "0.25")]
    pub status_every: Duration,
}

impl Settings {
    /// The most agent keys the scenario needs (it makes its own).
    pub fn max_agents(&self) -> usize {
        self.sizes.iter().copied().max().unwrap_or(0)
    }
}

/// The server restart at one N.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Restart {
    /// SIGTERM → exited, and exec → `pantry-server started`, seconds.
    pub stop_s: f64,
    pub start_s: f64,
    /// When all N were online again, seconds after the new server started
    /// and after SIGTERM.
    pub all_online_s: Option<f64>,
    pub all_online_since_term_s: Option<f64>,
    /// Online at the last `status`.
    pub online_at_end: usize,
    /// Each answered `status`'s time, from sending to its answer decoded
    /// (ms), and those unanswered within 5 s.
    pub status_ms: Vec<f64>,
    pub status_unanswered: usize,
    /// The agents' own count: connections made again, and registered at
    /// the end.
    pub reconnects: u64,
    pub registered_at_end: u64,
    /// An echo to all once they were back: answers, ms.
    pub echo_answers: Option<usize>,
    pub echo_ms: Option<f64>,
}

impl Restart {
    pub fn status_p50_ms(&self) -> Option<f64> {
        median(&self.status_ms)
    }

    pub fn status_max_ms(&self) -> Option<f64> {
        self.status_ms.iter().copied().reduce(f64::max)
    }

    /// All online within the target, every `status` answered within it.
    fn met(&self) -> bool {
        self.all_online_s.is_some_and(|s| s <= ONLINE_TARGET_S)
            && self.status_unanswered == 0
            && self.status_max_ms().is_some_and(|ms| ms < STATUS_TARGET_MS)
    }
}

/// Everything measured at one N (`pantry`: the server, `baseline`: the
/// relay).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Row {
    pub n: usize,
    /// Child processes holding the agents, for each system.
    pub processes: usize,
    /// Server RSS (KiB) and open descriptors with no agent (the admin's
    /// connection up), and with all N registered.
    pub rss0_kib: Both<Option<u64>>,
    pub rss_kib: Both<Option<u64>>,
    pub fds0: Both<Option<usize>>,
    pub fds: Both<Option<usize>>,
    /// Seconds from the first child's start until every agent answered
    /// its group's echo.
    pub setup_s: Both<Option<f64>>,
    /// Pantry agents registered with their requests on the DEALER, by
    /// their own count, before the fan-outs.
    pub registered: Option<u64>,
    /// Fan-outs sent, those that lost answers, and the answers missing
    /// over all of them.
    pub fanouts: Both<usize>,
    pub incomplete: Both<usize>,
    pub missing: Both<u64>,
    /// Over every fan-out; one that lost answers counts as infinitely slow
    /// (`None` once read back from JSON, which has no infinity).
    pub p50_ms: Both<Option<f64>>,
    pub p99_ms: Both<Option<f64>>,
    /// Server CPU (`/proc/PID/stat` utime + stime, all threads) over the
    /// fan-outs per answer received, µs.
    pub cpu_us_per_answer: Both<Option<f64>>,
    pub restart: Option<Restart>,
}

impl Row {
    /// Server RSS growth per agent, KiB.
    pub fn kib_per_agent(&self) -> Both<Option<f64>> {
        let per = |zero: Option<u64>, at: Option<u64>| Some((at? as f64 - zero? as f64) / self.n.max(1) as f64);
        Both {
            pantry: per(self.rss0_kib.pantry, self.rss_kib.pantry),
            baseline: per(self.rss0_kib.baseline, self.rss_kib.baseline),
        }
    }

    /// Server descriptors per agent.
    pub fn fds_per_agent(&self) -> Both<Option<f64>> {
        let per = |zero: Option<usize>, at: Option<usize>| Some((at? as f64 - zero? as f64) / self.n.max(1) as f64);
        Both { pantry: per(self.fds0.pantry, self.fds.pantry), baseline: per(self.fds0.baseline, self.fds.baseline) }
    }

    /// Every fan-out to every agent answered by all, on `i` (0: Pantry).
    fn all_answered(&self, i: usize) -> bool {
        *self.fanouts.at(i) > 0 && *self.incomplete.at(i) == 0 && *self.missing.at(i) == 0
    }
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Figures {
    pub measure: Measure,
    pub settings: Option<Settings>,
    /// Agents per child process, as run.
    pub per_process: usize,
    /// The hard open-file limit (every process's: it cannot be raised), and
    /// the most agents it allows the server: its warning threshold (80%)
    /// less what it holds with none.
    pub hard_limit: u64,
    pub fd_bound: Option<usize>,
    /// Sizes not run (over `fd_bound`).
    pub skipped: Vec<usize>,
    pub rows: Vec<Row>,
    pub failures: Vec<String>,
}

impl Figures {
    fn row(&self, n: usize) -> Option<&Row> {
        self.rows.iter().find(|r| r.n == n)
    }

    pub fn largest(&self) -> Option<&Row> {
        self.rows.iter().max_by_key(|r| r.n)
    }
}

/// Runs each N in turn; an N that fails is recorded and the next runs.
pub fn run(env: &Env, ring: &KeyRing, s: &Settings) -> Result<Figures> {
    let mut sizes = s.sizes.clone();
    sizes.sort_unstable();
    sizes.dedup();
    sizes.retain(|&n| n > 0);
    let hard = env.limits.hard;
    // A child's agents each hold a DEALER and its monitor.
    let per_child = (hard.saturating_sub(RESERVED_FDS) / FDS_PER_MONITORED_AGENT) as usize;
    let per_process = s.per_process.clamp(1, per_child.max(1));
    let mut figures = Figures {
        measure: env.measure,
        settings: Some(s.clone()),
        per_process,
        hard_limit: hard,
        ..Default::default()
    };
    let pairs = keys::generate(s.max_agents())?;
    let mut parts = Parts::new(env, "scale");
    for &n in &sizes {
        if let Some(bound) = figures.fd_bound.filter(|&b| n > b) {
            env.say(format!("scale: N={n} skipped (the server's descriptors allow {bound})"));
            figures.skipped.push(n);
            continue;
        }
        let Some(row) = parts.part(&format!("N = {}", count(n)), run_size(env, ring, s, &pairs, n, per_process)) else {
            continue;
        };
        if figures.fd_bound.is_none() {
            figures.fd_bound = row.fds0.pantry.map(|fds| ((hard as f64 * SERVER_FD_WARN) as usize).saturating_sub(fds));
        }
        figures.rows.push(row);
    }
    figures.failures = parts.failures;
    Ok(figures)
}

/// One system's fan-outs at N.
#[derive(Default)]
struct Echoes {
    times_ms: Vec<f64>,
    incomplete: usize,
    answers: u64,
    cpu_us_per_answer: Option<f64>,
}

/// `rounds × echoes` fan-outs to all `n` from `admin`, with the CPU of
/// server `pid` over them.
fn echoes(env: &Env, s: &Settings, admin: &mut Requester, pid: u32, n: usize) -> Result<Echoes> {
    let m = Measure { fanout_requests: s.echoes.max(1), ..env.measure };
    let mut e = Echoes::default();
    let before = stat_cpu_ns(pid);
    for _ in 0..env.measure.rounds {
        let f = fanouts(admin, n, &m)?;
        e.times_ms.extend(f.times_ms);
        e.incomplete += f.incomplete;
        e.answers += f.answers;
    }
    e.cpu_us_per_answer = match (before, stat_cpu_ns(pid)) {
        (Some(b), Some(a)) if e.answers > 0 => Some(a.saturating_sub(b) as f64 / 1000.0 / e.answers as f64),
        _ => None,
    };
    Ok(e)
}

impl Row {
    /// System `i`'s fan-outs.
    fn put(&mut self, i: usize, e: &Echoes) {
        let n = self.n as u64;
        *self.fanouts.at_mut(i) = e.times_ms.len();
        *self.incomplete.at_mut(i) = e.incomplete;
        *self.missing.at_mut(i) = (e.times_ms.len() as u64 * n).saturating_sub(e.answers);
        *self.p50_ms.at_mut(i) = percentile(&e.times_ms, 50.0);
        *self.p99_ms.at_mut(i) = percentile(&e.times_ms, 99.0);
        *self.cpu_us_per_answer.at_mut(i) = e.cpu_us_per_answer;
    }
}

/// Memory and descriptors of `pid` now.
fn footprint(pid: u32) -> (Option<u64>, Option<usize>) {
    (rss_kib(pid), open_fds(pid))
}

/// Starts `n` agents in children and waits until each group answered an
/// echo from `admin`; the seconds that took.
#[allow(clippy::too_many_arguments)]
fn start_agents(
    env: &Env,
    kind: Kind,
    endpoints: &Endpoints,
    pairs: &[Pair],
    n: usize,
    per_process: usize,
    options: &AgentOptions,
    admin: &mut Requester,
) -> Result<(Children, f64)> {
    let started = Instant::now();
    let children = Children::start(&env.bins.bench, kind, endpoints, pairs, 0..n, per_process, options)?;
    wait_until_reachable(admin, &group_streams(n), env.measure.reachable_timeout)
        .with_context(|| format!("{} agents of {n}", kind.name()))?;
    Ok((children, started.elapsed().as_secs_f64()))
}

/// The relay, then Pantry with its restart, at N.
fn run_size(env: &Env, ring: &KeyRing, s: &Settings, pairs: &[Pair], n: usize, per_process: usize) -> Result<Row> {
    let settle = Duration::from_millis(500);
    let mut row = Row { n, processes: n.div_ceil(per_process), ..Default::default() };

    let relay = Relay::start(&env.bins.bench, Some(&ring.server))?;
    let mut admin = Requester::connect(Kind::Baseline, &relay.endpoints, Some(&ring.admin), ADMIN_NAME)?;
    std::thread::sleep(settle);
    (row.rss0_kib.baseline, row.fds0.baseline) = footprint(relay.process.pid);
    let (agents, setup) = start_agents(
        env,
        Kind::Baseline,
        &relay.endpoints,
        pairs,
        n,
        per_process,
        &AgentOptions::default(),
        &mut admin,
    )?;
    row.setup_s.baseline = Some(setup);
    std::thread::sleep(2 * settle);
    (row.rss_kib.baseline, row.fds.baseline) = footprint(relay.process.pid);
    let e = echoes(env, s, &mut admin, relay.process.pid, n)?;
    row.put(1, &e);
    env.say(format!(
        "scale N={n} relay: {} KiB and {} descriptors per agent; fan-out p50 {} ms, p99 {} ms ({} of {} incomplete); \
         {} µs server CPU per answer",
        num(row.kib_per_agent().baseline),
        num(row.fds_per_agent().baseline),
        num(row.p50_ms.baseline),
        num(row.p99_ms.baseline),
        e.incomplete,
        e.times_ms.len(),
        num(e.cpu_us_per_answer)
    ));
    drop((agents, admin, relay));

    let mut known: Vec<KnownKey> =
        pairs[..n].iter().enumerate().map(|(i, p)| keys::known(p.public_z85(), identity(i), Role::Client)).collect();
    known.push(keys::known(ring.admin.public_z85(), ADMIN_NAME.into(), Role::Admin));
    let mut server = env.server(Some((&ring.server, &known)), "")?;
    let pid = server.process.pid;
    let mut admin = Requester::connect(Kind::Pantry, &server.endpoints, Some(&ring.admin), ADMIN_NAME)?;
    std::thread::sleep(settle);
    (row.rss0_kib.pantry, row.fds0.pantry) = footprint(pid);
    let options = AgentOptions::reconnecting(s.heartbeat, s.reconnect_spread);
    let (mut agents, setup) =
        start_agents(env, Kind::Pantry, &server.endpoints, pairs, n, per_process, &options, &mut admin)?;
    row.setup_s.pantry = Some(setup);
    std::thread::sleep(2 * settle);
    (row.rss_kib.pantry, row.fds.pantry) = footprint(pid);
    row.registered = Some(agents.counts(Duration::from_secs(10))?.registered);
    let e = echoes(env, s, &mut admin, pid, n)?;
    row.put(0, &e);
    env.say(format!(
        "scale N={n} Pantry ({} processes of agents, {} registered): {} KiB and {} descriptors per agent; fan-out p50 \
         {} ms, p99 {} ms ({} of {} incomplete, {} answers missing); {} µs server CPU per answer",
        row.processes,
        row.registered.map_or("–".into(), |r| count(r as usize)),
        num(row.kib_per_agent().pantry),
        num(row.fds_per_agent().pantry),
        num(row.p50_ms.pantry),
        num(row.p99_ms.pantry),
        e.incomplete,
        e.times_ms.len(),
        row.missing.pantry,
        num(e.cpu_us_per_answer)
    ));
    drop(admin);
    row.restart = Some(restart(env, ring, s, &mut server, &mut agents, n)?);
    Ok(row)
}

/// SIGTERM, the same server started again on the same root_dir and keys,
/// `status` every `status_every` from a fresh admin connection until all
/// `n` are online (or `online_timeout`), then an echo to all.
fn restart(
    env: &Env,
    ring: &KeyRing,
    s: &Settings,
    server: &mut PantryServer,
    agents: &mut Children,
    n: usize,
) -> Result<Restart> {
    let before = agents.counts(Duration::from_secs(10))?;
    let restarted = server.restart()?;
    let mut r = Restart {
        stop_s: restarted.stopped.duration_since(restarted.stopping).as_secs_f64(),
        start_s: restarted.started.duration_since(restarted.stopped).as_secs_f64(),
        ..Default::default()
    };
    let admin = Admin::connect(server, &ring.admin, ADMIN_NAME)?;
    let deadline = restarted.started + s.online_timeout;
    let all = loop {
        let asked = Instant::now();
        match admin.status(&ClientFilter::default(), STATUS_TIMEOUT) {
            Ok(list) => {
                r.status_ms.push(asked.elapsed().as_secs_f64() * 1000.0);
                r.online_at_end = list.iter().filter(|c| c.state == ONLINE).count();
            }
            Err(e) => {
                r.status_unanswered += 1;
                env.say(format!("scale N={n}: a status after the restart: {e:#}"));
            }
        }
        if r.online_at_end >= n {
            break Some(Instant::now());
        }
        if Instant::now() >= deadline {
            break None;
        }
        std::thread::sleep(s.status_every.saturating_sub(asked.elapsed()));
    };
    r.all_online_s = all.map(|at| at.duration_since(restarted.started).as_secs_f64());
    r.all_online_since_term_s = all.map(|at| at.duration_since(restarted.stopping).as_secs_f64());
    let after = agents.counts(Duration::from_secs(10))?;
    r.reconnects = after.reconnects.saturating_sub(before.reconnects);
    r.registered_at_end = after.registered;
    env.say(format!(
        "scale N={n}: restart (stop {:.2} s, start {:.2} s): all {} online {} s after the start; status p50 {} ms, \
         max {} ms ({} asked, {} unanswered); {} reconnections",
        r.stop_s,
        r.start_s,
        count(n),
        r.all_online_s.map_or_else(|| format!("not ({} online)", r.online_at_end), secs),
        num(r.status_p50_ms()),
        num(r.status_max_ms()),
        r.status_ms.len() + r.status_unanswered,
        r.status_unanswered,
        r.reconnects
    ));
    if all.is_some() {
        // A check that they answer again, not a measurement: the server,
        // just restarted, may take more than the fan-outs' idle second to
        // send its first reply.
        let mut requester = Requester::connect(Kind::Pantry, &server.endpoints, Some(&ring.admin), ADMIN_NAME)?;
        let timeout = env.measure.fanout_timeout;
        let f = fanout(&mut requester, n, timeout, timeout)?;
        r.echo_answers = Some(f.answers);
        r.echo_ms = (f.answers > 0).then_some(f.elapsed.as_secs_f64() * 1000.0);
    }
    Ok(r)
}

/// Issue 27's targets, with the previous run's.
pub fn targets(f: &Figures, previous: Previous<Figures>) -> Vec<Target> {
    compared(measured(f), previous.figures.map(measured))
}

/// `a / b` as "1.05× (a / b unit)".
fn versus(v: Both<Option<f64>>, unit: &str) -> String {
    format!("{} ({} {unit})", ratio(v.ratio()), ms_pair(v.pantry, v.baseline))
}

fn measured(f: &Figures) -> Vec<Target> {
    let Some(largest) = f.largest() else {
        return vec![Target::new("issue 27: the scale scenario".into(), "not run".into(), None)];
    };
    let big = count(largest.n);
    let mut targets = Vec::new();
    let (kib, fds) = (largest.kib_per_agent(), largest.fds_per_agent());
    targets.push(Target::new(
        format!(
            "issue 27: server memory ≤ {KIB_PER_AGENT_TARGET} KiB per agent (CURVE, 0 → {big}) and one descriptor per \
             Pantry agent"
        ),
        format!(
            "{} KiB and {} descriptors per agent (relay: {} KiB, {})",
            num(kib.pantry),
            num(fds.pantry),
            num(kib.baseline),
            num(fds.baseline)
        ),
        match (kib.pantry, fds.pantry) {
            (Some(k), Some(d)) => Some(k <= KIB_PER_AGENT_TARGET && d <= FDS_PER_AGENT_TARGET),
            _ => None,
        },
    ));
    let mut fanout_ns = vec![FANOUT_RATIO_N];
    if largest.n != FANOUT_RATIO_N {
        fanout_ns.push(largest.n);
    }
    for n in fanout_ns {
        let row = f.row(n);
        let lost = row.is_some_and(|r| !r.all_answered(0));
        let v = row.map(|r| r.p50_ms).unwrap_or_default();
        targets.push(Target::new(
            format!(
                "issue 27: fan-out p50 with {} CURVE agents ≤ {} the relay's (one connection per agent on both)",
                count(n),
                ratio(Some(FANOUT_RATIO_TARGET))
            ),
            match row {
                None => format!("not run (N = {})", count(n)),
                Some(_) if lost => format!("answers lost ({})", versus(v, "ms")),
                Some(_) => versus(v, "ms"),
            },
            row.map(|_| !lost && v.ratio().is_some_and(|r| r <= FANOUT_RATIO_TARGET)),
        ));
    }
    let cpu: Vec<(usize, Both<Option<f64>>)> = f.rows.iter().map(|r| (r.n, r.cpu_us_per_answer)).collect();
    targets.push(Target::new(
        format!("issue 27: server CPU per fan-out answer ≤ {} the relay's (each N)", ratio(Some(CPU_RATIO_TARGET))),
        cpu.iter().map(|(n, v)| format!("{}: {}", count(*n), versus(*v, "µs"))).collect::<Vec<_>>().join("; "),
        Some(cpu.iter().all(|(_, v)| v.ratio().is_some_and(|r| r <= CPU_RATIO_TARGET))),
    ));
    let spread = f.settings.as_ref().map_or(0.0, |s| s.reconnect_spread.as_secs_f64());
    targets.push(Target::new(
        format!(
            "issue 27: server restart with {big} agents (reconnect spread {} s): all online again ≤ {ONLINE_TARGET_S} \
             s, `status` < 1 s throughout",
            num(Some(spread))
        ),
        match &largest.restart {
            None => "not run".into(),
            Some(r) => format!(
                "{}; `status` p50 {} ms, max {} ms ({} asked, {} unanswered)",
                match (r.all_online_s, r.all_online_since_term_s) {
                    (Some(a), Some(t)) =>
                        format!("all online {} s after the new server started ({} s after SIGTERM)", secs(a), secs(t)),
                    _ => format!("not all online: {} of {big}", count(r.online_at_end)),
                },
                num(r.status_p50_ms()),
                num(r.status_max_ms()),
                r.status_ms.len() + r.status_unanswered,
                r.status_unanswered
            ),
        },
        largest.restart.as_ref().map(Restart::met),
    ));
    targets.push(Target::new(
        format!("issue 27: echo to every one of the {big} agents answered every time, p50 < {FANOUT_P50_TARGET_MS} ms"),
        format!(
            "{} of {} fan-outs complete, {} answers missing; p50 {} ms",
            largest.fanouts.pantry - largest.incomplete.pantry,
            largest.fanouts.pantry,
            count(largest.missing.pantry as usize),
            num(largest.p50_ms.pantry)
        ),
        Some(largest.all_answered(0) && largest.p50_ms.pantry.is_some_and(|ms| ms < FANOUT_P50_TARGET_MS)),
    ));
    targets
}

/// The `## Scale` section.
pub fn report(f: &Figures, previous: Previous<Figures>) -> String {
    let mut out = String::new();
    let spread = f.settings.as_ref().map_or(0.0, |s| s.reconnect_spread.as_secs_f64());
    let heartbeat = f.settings.as_ref().map_or(0.0, |s| s.heartbeat.as_secs_f64());
    let _ = writeln!(
        out,
        "## Scale\n\nCURVE, issue 27: every simulated agent holds one connection, a DEALER with its own key pair, \
         on Pantry (it registers with `requests_on_dealer`, and the server sends its requests over that \
         connection) as on the relay (its baseline since issue 27: agents say hello over a DEALER and the relay \
         sends each request over its ROUTER to the agents holding its topic). The agents run in child processes \
         of the bench, up to {} each (the hard open-file limit, {}, bounds every process; an agent costs its \
         process a descriptor for its connection and one for its socket's mailbox, two more for the monitor a \
         Pantry agent has to come back after a restart). At each N a fresh relay, then a fresh release \
         `pantry-server`, one after the other (neither system's idle agents share the machine with the other's \
         measurement), each with the bench admin's connection up: server VmRSS and `/proc/PID/fd` with no agent \
         and once all N answered their group's echo; {} rounds of {} fan-out echoes to all (an admin-side \
         `echo` to `\"\"`, timed until the last answer; one that lost answers counts as infinitely slow), with \
         the server's CPU (`/proc/PID/stat` utime + stime) over them per answer received. Then the Pantry server \
         is stopped with SIGTERM and started again on the same root_dir and keys; each agent, seeing its \
         connection lost, disconnects and connects again after a random delay below its `reconnect_spread` \
         ({} s; the real agent's default is 10 s), then registers at the handshake (heartbeat {} s); a fresh admin asks \
         `status` every {} ms until all N are online. Ratios are Pantry / relay.\n\n{}",
        count(f.per_process),
        group(f.hard_limit),
        f.measure.rounds,
        f.settings.as_ref().map_or(0, |s| s.echoes),
        num(Some(spread)),
        num(Some(heartbeat)),
        num(f.settings.as_ref().map(|s| s.status_every.as_secs_f64() * 1000.0)),
        targets_table(&targets(f, previous), previous.said)
    );
    if let Some(largest) = f.largest() {
        let _ = writeln!(
            out,
            "**The largest N.** {} agents{}, the issue's aim. Descriptors would allow the server up to {} (the \
             warning threshold of its open-file limit, 80% of {}, less the {} it holds with none; at 90% it sheds \
             connections still in their handshake), the relay more, and the bench as many as it starts child \
             processes for. What holds N there is the machine's {} cores, not its descriptors: they run the \
             server, the relay and every agent, and the restart brings all N's CURVE handshakes (about 0.5 ms of \
             server CPU each) and registrations within the spread; in a trial run at 15,000 (`--sizes 15000`) the \
             restart and the fan-outs no longer met their targets (all online after more than 20 s, `status` \
             over 1 s, a fan-out over 1 s).\n",
            count(largest.n),
            if f.skipped.is_empty() {
                String::new()
            } else {
                format!(" (N = {:?} skipped: over the descriptors' bound)", f.skipped)
            },
            f.fd_bound.map_or("–".into(), count),
            group(f.hard_limit),
            f.rows.first().and_then(|r| r.fds0.pantry).map_or("–".into(), count),
            std::thread::available_parallelism().map_or(1, |n| n.get())
        );
    }
    out.push_str(
        "**Memory and descriptors.** Server VmRSS (KiB) and open descriptors with no agent and with all N \
         registered; per agent: the growth over N. Set-up: seconds from the first child's start (connects paced at \
         about 650 agents per second) until every agent answered its group's echo.\n\n\
         | N | processes | Pantry RSS 0 → N | KiB per agent | relay RSS 0 → N | KiB per agent | Pantry descriptors \
         0 → N | per agent | relay descriptors 0 → N | per agent | registered (agents' count) | set-up P / R (s) |\n\
         |---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n",
    );
    let arrow = |a: Option<u64>, b: Option<u64>| format!("{} → {}", kib(a), kib(b));
    let fds = |a: Option<usize>, b: Option<usize>| {
        format!("{} → {}", a.map_or("–".into(), count), b.map_or("–".into(), count))
    };
    for r in &f.rows {
        let (k, d) = (r.kib_per_agent(), r.fds_per_agent());
        let _ = writeln!(
            out,
            "| {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} |",
            count(r.n),
            r.processes,
            arrow(r.rss0_kib.pantry, r.rss_kib.pantry),
            num(k.pantry),
            arrow(r.rss0_kib.baseline, r.rss_kib.baseline),
            num(k.baseline),
            fds(r.fds0.pantry, r.fds.pantry),
            num(d.pantry),
            fds(r.fds0.baseline, r.fds.baseline),
            num(d.baseline),
            r.registered.map_or("–".into(), |v| count(v as usize)),
            ms_pair(r.setup_s.pantry, r.setup_s.baseline)
        );
    }
    out.push_str(
        "\n**Fan-out.** p50 and p99 over every fan-out of the N (ms), fan-outs that lost answers and the answers \
         missing over all of them, and the server's CPU per answer (µs).\n\n\
         | N | fan-outs P / R | Pantry p50 / p99 | relay p50 / p99 | p50 ratio | incomplete P / R | answers missing \
         P / R | server CPU per answer P / R | ratio |\n|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n",
    );
    for r in &f.rows {
        let _ = writeln!(
            out,
            "| {} | {} / {} | {} | {} | {} | {} / {} | {} / {} | {} | {} |",
            count(r.n),
            r.fanouts.pantry,
            r.fanouts.baseline,
            ms_pair(r.p50_ms.pantry, r.p99_ms.pantry),
            ms_pair(r.p50_ms.baseline, r.p99_ms.baseline),
            ratio(r.p50_ms.ratio()),
            r.incomplete.pantry,
            r.incomplete.baseline,
            r.missing.pantry,
            r.missing.baseline,
            ms_pair(r.cpu_us_per_answer.pantry, r.cpu_us_per_answer.baseline),
            ratio(r.cpu_us_per_answer.ratio())
        );
    }
    out.push_str(
        "\n**Server restart.** SIGTERM → exited and exec → `started` (s); when all N were online again, after the \
         new server started and after SIGTERM (s); every `status` asked until then, from sending to its answer \
         decoded (ms; unanswered: none within 5 s); the agents' own count of connections made again, and of \
         those registered at the end; an echo to all afterwards.\n\n\
         | N | stop / start (s) | all online after the start | after SIGTERM | `status` p50 / max (ms) | asked \
         (unanswered) | reconnections | registered | echo afterwards: answers (ms) |\n\
         |---:|---:|---:|---:|---:|---:|---:|---:|---:|\n",
    );
    for r in &f.rows {
        let Some(x) = &r.restart else { continue };
        let _ = writeln!(
            out,
            "| {} | {} / {} | {} | {} | {} | {} ({}) | {} | {} | {} |",
            count(r.n),
            secs(x.stop_s),
            secs(x.start_s),
            x.all_online_s.map_or_else(|| format!("not all ({} online)", count(x.online_at_end)), secs),
            x.all_online_since_term_s.map_or_else(|| "–".into(), secs),
            ms_pair(x.status_p50_ms(), x.status_max_ms()),
            x.status_ms.len() + x.status_unanswered,
            x.status_unanswered,
            count(x.reconnects as usize),
            count(x.registered_at_end as usize),
            match (x.echo_answers, x.echo_ms) {
                (Some(a), Some(ms)) => format!("{} ({})", count(a), num(Some(ms))),
                (Some(a), None) => count(a),
                _ => "–".into(),
            }
        );
    }
    failures(&mut out, &f.failures);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(n: usize, p50: (f64, f64), cpu: (f64, f64), fds: usize) -> Row {
        let both = |(p, b): (f64, f64)| Both { pantry: Some(p), baseline: Some(b) };
        Row {
            n,
            rss0_kib: Both { pantry: Some(50_000), baseline: Some(8_000) },
            rss_kib: Both { pantry: Some(50_000 + 50 * n as u64), baseline: Some(8_000 + 40 * n as u64) },
            fds0: Both { pantry: Some(60), baseline: Some(12) },
            fds: Both { pantry: Some(60 + fds), baseline: Some(12 + n) },
            fanouts: Both { pantry: 30, baseline: 30 },
            p50_ms: both(p50),
            cpu_us_per_answer: both(cpu),
            restart: Some(Restart {
                all_online_s: Some(11.0),
                all_online_since_term_s: Some(11.5),
                status_ms: vec![20.0, 400.0],
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    #[test]
    fn the_targets_judge_the_largest_n_and_each_ratio() {
        let f = Figures {
            rows: vec![row(1000, (30.0, 27.0), (30.0, 25.0), 1000), row(9000, (400.0, 300.0), (30.0, 24.0), 9001)],
            ..Default::default()
        };
        let t = targets(&f, Previous { figures: None, said: "none" });
        let met: Vec<(&str, Option<bool>)> = t.iter().map(|t| (t.what.as_str(), t.met)).collect();
        assert_eq!(met.len(), 6, "{met:?}");
        assert_eq!(t[0].met, Some(true), "50 KiB and 1.00 descriptors per agent: {:?}", t[0]);
        assert_eq!((t[1].met, t[2].met), (Some(true), Some(false)), "1.11× at 1,000, 1.33× at 9,000");
        assert!(t[2].what.contains("9,000") && t[2].measured.starts_with("1.33× (400 / 300 ms)"), "{:?}", t[2]);
        assert_eq!(t[3].met, Some(true), "1.20× and 1.25×: {:?}", t[3]);
        assert_eq!((t[4].met, t[5].met), (Some(true), Some(true)), "{t:?}");
        let mut lost = f.clone();
        lost.rows[1].incomplete.pantry = 1;
        lost.rows[1].missing.pantry = 3;
        let t = targets(&lost, Previous { figures: None, said: "none" });
        assert_eq!((t[2].met, t[5].met), (Some(false), Some(false)), "{t:?}");
        assert!(t[5].measured.starts_with("29 of 30 fan-outs complete, 3 answers missing"), "{:?}", t[5]);
    }
}
