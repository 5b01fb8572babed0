//! The whole benchmark: for each security mode, a real `pantry-server` and a
//! baseline relay side by side; for each N, an agent pool per system,
//! alternating Pantry and baseline rounds; then handshake rates with 100
//! and 100,000 known keys; then enrollment (one token for many agents, and
//! `client:token` → echo with the real binaries); then presence (killed
//! agents named offline, SIGKILL → offline, a server restart) and the job
//! store (on vs off, `jobs` over a full store, database size per job);
//! then metrics (on vs off, a scrape of `/metrics` with 4,000 agents);
//! then a cluster of three servers on one etcd against one server (fan-out
//! across servers, SIGKILL of one, revocation on one seen on another,
//! handshake rate); then the report, with server memory and CPU per agent
//! compared with the previous report's.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result};

use pantry_shared::keys::{KnownKey, Role};

use crate::agents::{identity, Kind, Pool};
use crate::cluster::{ClusterResult, ClusterSettings};
use crate::enrollment::{EnrollmentResult, EnrollmentSettings};
use crate::handshake::{handshake_rate, HandshakeSettings};
use crate::jobs::{JobsResult, JobsSettings};
use crate::keys::{self, Pair};
use crate::limits::{self, FdLimits};
use crate::metrics::{MetricsResult, MetricsSettings};
use crate::presence::{PresenceResult, PresenceSettings};
use crate::previous::Previous;
use crate::procs::{Endpoints, PantryServer, Relay};
use crate::requesters::{fanout, throughput, wait_until_reachable, Requester, ThroughputSettings};
use crate::stats::{median, percentile};

/// What to run and where.
#[derive(Debug, Clone)]
pub struct Config {
    /// The `pantry-server` and `pantry-client` binaries.
    pub server_bin: PathBuf,
    pub client_bin: PathBuf,
    /// The `pantry-bench` binary, started as `pantry-bench relay`.
    pub relay_exe: PathBuf,
    /// Where `latest.md` and `fanout.svg` go.
    pub out_dir: PathBuf,
    /// Agent counts, ascending.
    pub sizes: Vec<usize>,
    /// Pantry/baseline alternations per N; figures are medians over rounds.
    pub rounds: usize,
    /// Fan-out echoes per N per round.
    pub fanout_requests: usize,
    pub fanout_timeout: Duration,
    /// Concurrent requesters in the throughput scenario.
    pub requesters: usize,
    pub throughput: ThroughputSettings,
    /// Known-key counts of the handshake scenario.
    pub handshake_keys: Vec<usize>,
    pub handshake: HandshakeSettings,
    /// Security modes to run, in order (true: CURVE).
    pub curve_modes: Vec<bool>,
    /// Longest wait for a pool's agents to be registered and subscribed.
    pub reachable_timeout: Duration,
    /// The server's log level (`info` is the production default).
    pub log_level: String,
    /// The `pantry-admin` binary (the enrollment scenario runs
    /// `client:token` with it) [default: next to `client_bin`].
    pub admin_bin: PathBuf,
    /// The enrollment scenario (CURVE only); `None`: skipped.
    pub enrollment: Option<EnrollmentSettings>,
    /// The presence scenario (CURVE only); `None`: skipped.
    pub presence: Option<PresenceSettings>,
    /// The job-store scenario (CURVE only); `None`: skipped.
    pub jobs: Option<JobsSettings>,
    /// The metrics scenario (CURVE only); `None`: skipped.
    pub metrics: Option<MetricsSettings>,
    /// The cluster scenario (CURVE only; needs etcd); `None`: skipped.
    pub cluster: Option<ClusterSettings>,
}

impl Config {
    /// The full benchmark of `make bench`.
    pub fn full(server_bin: PathBuf, client_bin: PathBuf, relay_exe: PathBuf, out_dir: PathBuf) -> Config {
        Config {
            admin_bin: client_bin.with_file_name("pantry-admin"),
            server_bin,
            client_bin,
            relay_exe,
            out_dir,
            sizes: vec![1, 100, 1000, 4000],
            rounds: 3,
            fanout_requests: 20,
            fanout_timeout: Duration::from_secs(10),
            requesters: 4,
            throughput: ThroughputSettings {
                window: 16,
                warmup: Duration::from_millis(300),
                duration: Duration::from_millis(1500),
            },
            handshake_keys: vec![100, 100_000],
            handshake: HandshakeSettings {
                slots: 32,
                warmup: Duration::from_millis(300),
                duration: Duration::from_millis(1500),
            },
            curve_modes: vec![true, false],
            reachable_timeout: Duration::from_secs(90),
            log_level: "info".into(),
            enrollment: Some(EnrollmentSettings { agents: 1000, repeats: 5, crowd_timeout: Duration::from_secs(120) }),
            presence: Some(PresenceSettings {
                agents: 100,
                killed: 10,
                kill_wait: Duration::from_secs(5),
                echoes: 5,
                kill_repeats: 5,
                restart_agents: 1000,
                heartbeat: Duration::from_secs(5),
                idle_window: Duration::from_secs(10),
                admin_timeout: Duration::from_secs(10),
                reachable_timeout: Duration::from_secs(90),
            }),
            jobs: Some(JobsSettings {
                sizes: vec![1, 1000],
                fill: 100_000,
                fill_timeout: Duration::from_secs(300),
                list_requests: 20,
                db_agents: 1000,
                db_echoes: 20,
                heartbeat: Duration::from_secs(5),
            }),
            metrics: Some(MetricsSettings {
                sizes: vec![1, 1000],
                scrape_every: Duration::from_secs(1),
                scrape_agents: 4000,
                scrapes: 20,
            }),
            cluster: Some(ClusterSettings {
                agents_per_server: 1000,
                failover_agents_per_server: 1000,
                // As the presence scenario's agents (the default, 300 s,
                // would make "within 3 heartbeat intervals" 15 minutes).
                heartbeat: Duration::from_secs(5),
                lease: Duration::from_secs(2),
                revocations: 20,
                echo_every: Duration::from_millis(100),
                failover_timeout: Duration::from_secs(30),
            }),
        }
    }

    /// N = 2, one iteration of everything, 20 agents enrolling, a few
    /// seconds: keeps the harness from rotting (`make test`).
    pub fn smoke(server_bin: PathBuf, client_bin: PathBuf, relay_exe: PathBuf, out_dir: PathBuf) -> Config {
        Config {
            sizes: vec![2],
            rounds: 1,
            fanout_requests: 1,
            fanout_timeout: Duration::from_secs(5),
            requesters: 2,
            throughput: ThroughputSettings {
                window: 4,
                warmup: Duration::from_millis(50),
                duration: Duration::from_millis(200),
            },
            handshake_keys: vec![10, 100],
            handshake: HandshakeSettings {
                slots: 4,
                warmup: Duration::from_millis(50),
                duration: Duration::from_millis(200),
            },
            reachable_timeout: Duration::from_secs(20),
            enrollment: Some(EnrollmentSettings { agents: 20, repeats: 1, crowd_timeout: Duration::from_secs(30) }),
            presence: Some(PresenceSettings {
                agents: 10,
                killed: 2,
                kill_wait: Duration::from_secs(1),
                echoes: 2,
                kill_repeats: 1,
                restart_agents: 20,
                heartbeat: Duration::from_secs(2),
                idle_window: Duration::from_secs(1),
                admin_timeout: Duration::from_secs(10),
                reachable_timeout: Duration::from_secs(20),
            }),
            jobs: Some(JobsSettings {
                sizes: vec![2],
                fill: 300,
                fill_timeout: Duration::from_secs(30),
                list_requests: 5,
                db_agents: 10,
                db_echoes: 3,
                heartbeat: Duration::from_secs(2),
            }),
            metrics: Some(MetricsSettings {
                sizes: vec![2],
                scrape_every: Duration::from_millis(100),
                scrape_agents: 10,
                scrapes: 3,
            }),
            cluster: Some(ClusterSettings {
                agents_per_server: 3,
                failover_agents_per_server: 3,
                heartbeat: Duration::from_secs(1),
                lease: Duration::from_secs(2),
                revocations: 2,
                echo_every: Duration::from_millis(100),
                failover_timeout: Duration::from_secs(20),
            }),
            ..Config::full(server_bin, client_bin, relay_exe, out_dir)
        }
    }
}

/// A figure for Pantry and for the baseline.
#[derive(Debug, Clone, Copy, Default)]
pub struct Both<T> {
    pub pantry: T,
    pub baseline: T,
}

impl<T> Both<T> {
    pub fn get_mut(&mut self, kind: Kind) -> &mut T {
        match kind {
            Kind::Pantry => &mut self.pantry,
            Kind::Baseline => &mut self.baseline,
        }
    }

    /// 0: `pantry`, otherwise `baseline` (the order of `run_size`'s
    /// systems).
    pub fn at_mut(&mut self, i: usize) -> &mut T {
        if i == 0 {
            &mut self.pantry
        } else {
            &mut self.baseline
        }
    }
}

impl Both<Option<f64>> {
    /// Pantry / baseline.
    pub fn ratio(&self) -> Option<f64> {
        match (self.pantry, self.baseline) {
            (Some(p), Some(b)) if b > 0.0 => Some(p / b),
            _ => None,
        }
    }
}

/// Everything measured at one N in one security mode (medians over rounds).
#[derive(Debug, Clone, Default)]
pub struct SizeRow {
    pub n: usize,
    /// Both pools did not fit at once: each round built and dropped them in turn.
    pub sequential: bool,
    pub fanout_p50_ms: Both<Option<f64>>,
    pub fanout_p99_ms: Both<Option<f64>>,
    /// Fan-outs that did not get every answer within the timeout.
    pub fanout_incomplete: Both<usize>,
    /// Fan-outs attempted (a round gives up after a few incomplete ones).
    pub fanout_attempted: Both<usize>,
    /// Share of the expected fan-out answers that arrived.
    pub fanout_delivered: Both<Option<f64>>,
    /// Server CPU time (all threads) per completed request in the
    /// throughput runs, microseconds.
    pub cpu_us_per_request: Both<Option<f64>>,
    /// Server CPU time per answer in the fan-out runs, microseconds.
    pub cpu_us_per_answer: Both<Option<f64>>,
    pub throughput: Both<Option<f64>>,
    pub lost: Both<u64>,
    /// Server RSS with N agents connected and registered.
    pub rss_kib: Both<Option<u64>>,
    /// Seconds from the first connect until every agent answered a broadcast.
    pub setup_s: Both<Option<f64>>,
}

/// One security mode.
#[derive(Debug, Clone, Default)]
pub struct ModeResult {
    pub curve: bool,
    /// Server RSS right after start, no agent connected.
    pub rss0_kib: Both<Option<u64>>,
    pub rows: Vec<SizeRow>,
    /// The real `pantry-client` after it registered, idle.
    pub idle_client_rss_kib: Option<u64>,
    /// Peak server RSS over the whole mode.
    pub peak_rss_kib: Both<Option<u64>>,
}

impl ModeResult {
    pub fn name(&self) -> &'static str {
        if self.curve {
            "CURVE"
        } else {
            "null"
        }
    }
}

/// Handshake rate with a given number of known keys (CURVE).
#[derive(Debug, Clone, Default)]
pub struct HandshakeRow {
    pub known_keys: usize,
    pub rate: Both<Option<f64>>,
    pub failed: Both<u64>,
    /// Server CPU time (all threads) per successful handshake, microseconds.
    pub cpu_us: Both<Option<f64>>,
}

#[derive(Debug, Clone)]
pub struct Results {
    pub cores: usize,
    pub libzmq: String,
    pub limits: FdLimits,
    pub max_agents: usize,
    pub sizes_skipped: Vec<usize>,
    pub modes: Vec<ModeResult>,
    pub handshakes: Vec<HandshakeRow>,
    /// CURVE enrollment; `None` when not run.
    pub enrollment: Option<EnrollmentResult>,
    /// CURVE presence; `None` when not run.
    pub presence: Option<PresenceResult>,
    /// CURVE job store; `None` when not run.
    pub jobs: Option<JobsResult>,
    /// CURVE metrics on vs off and the scrape; `None` when not run.
    pub metrics: Option<MetricsResult>,
    /// Three servers on etcd against one; `None` when not run.
    pub cluster: Option<ClusterResult>,
    /// The earlier report's figures (server memory and CPU per agent are
    /// compared with them); `None` when there is none.
    pub previous: Option<Previous>,
    pub elapsed: Duration,
    pub config: Config,
}

pub(crate) const ADMIN_NAME: &str = "bench-admin";
const IDLE_CLIENT: &str = "bench-idle";

fn requester_name(k: usize) -> String {
    format!("bench-requester-{k}")
}

/// Keys of everyone who connects under CURVE.
pub(crate) struct KeyRing {
    pub(crate) server: Pair,
    pub(crate) agents: Vec<Pair>,
    pub(crate) admin: Pair,
    pub(crate) requesters: Vec<Pair>,
    idle_client: Pair,
    pub(crate) handshake: Vec<Pair>,
}

impl KeyRing {
    pub(crate) fn generate(agents: usize, cfg: &Config) -> Result<KeyRing> {
        Ok(KeyRing {
            server: Pair::generate()?,
            agents: keys::generate(agents)?,
            admin: Pair::generate()?,
            requesters: keys::generate(cfg.requesters)?,
            idle_client: Pair::generate()?,
            handshake: keys::generate(cfg.handshake.slots.min(100))?,
        })
    }

    /// Keys enrolled in the main servers' key store: each agent's under its
    /// identity, the admin and the requesters as admins.
    pub(crate) fn enrolled(&self) -> Vec<KnownKey> {
        let mut all: Vec<KnownKey> = self
            .agents
            .iter()
            .enumerate()
            .map(|(i, p)| keys::known(p.public_z85(), identity(i), Role::Client))
            .collect();
        all.push(keys::known(self.admin.public_z85(), ADMIN_NAME.into(), Role::Admin));
        all.extend(
            self.requesters
                .iter()
                .enumerate()
                .map(|(k, p)| keys::known(p.public_z85(), requester_name(k), Role::Admin)),
        );
        all.push(keys::known(self.idle_client.public_z85(), IDLE_CLIENT.into(), Role::Client));
        all
    }
}

/// Progress on stderr, with the time since the start.
pub(crate) struct Progress(pub(crate) Instant);

impl Progress {
    pub(crate) fn say(&self, text: impl AsRef<str>) {
        eprintln!("[{:>6.1}s] {}", self.0.elapsed().as_secs_f64(), text.as_ref());
    }
}

/// Runs everything and writes the report. Returns the figures.
pub fn run(cfg: &Config) -> Result<Results> {
    let started = Instant::now();
    let progress = Progress(started);
    let limits = limits::raise_nofile().context("cannot raise the open-file limit")?;
    let max_agents = limits.max_agents();
    let mut sizes: Vec<usize> = cfg.sizes.clone();
    sizes.sort_unstable();
    let sizes_skipped: Vec<usize> = sizes.iter().copied().filter(|&n| n > max_agents).collect();
    sizes.retain(|&n| n <= max_agents);
    let (major, minor, patch) = zmq::version();
    let libzmq = format!("{major}.{minor}.{patch}");
    let cores = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1);
    progress.say(format!(
        "open files: soft limit {} (was {}), hard {}: up to {max_agents} agents per pool ({} descriptors each); \
         both pools at once up to N = {}{}",
        limits.soft,
        limits.soft_before,
        limits.hard,
        limits::FDS_PER_AGENT,
        max_agents / 2,
        if sizes_skipped.is_empty() { String::new() } else { format!("; skipping N = {sizes_skipped:?}") }
    ));
    progress.say(format!("libzmq {libzmq}, {cores} cores, sizes {sizes:?}, {} rounds", cfg.rounds));
    let previous = crate::previous::load(&cfg.out_dir);
    let jobs_agents = cfg.jobs.as_ref().map_or(0, |j| j.max_agents().min(max_agents));
    let metrics_agents = cfg.metrics.as_ref().map_or(0, |m| m.max_agents().min(max_agents));
    let cluster_agents = cfg.cluster.as_ref().map_or(0, |c| c.max_agents().min(max_agents));
    let most = sizes.last().copied().unwrap_or(0).max(jobs_agents).max(metrics_agents).max(cluster_agents);
    let ring = KeyRing::generate(most, cfg)?;

    let mut modes = Vec::new();
    for &curve in &cfg.curve_modes {
        modes.push(run_mode(cfg, curve, &sizes, &limits, &ring, &progress)?);
    }
    let handshakes = if cfg.curve_modes.contains(&true) { run_handshakes(cfg, &ring, &progress)? } else { Vec::new() };
    let enrollment = match cfg.enrollment {
        Some(settings) if cfg.curve_modes.contains(&true) => {
            Some(run_enrollment(cfg, settings, &ring.server, &ring.admin, &progress)?)
        }
        _ => None,
    };
    let presence = match cfg.presence {
        Some(settings) if cfg.curve_modes.contains(&true) => {
            Some(run_presence(cfg, fit_presence(settings, &limits), &ring.server, &ring.admin, &progress)?)
        }
        _ => None,
    };
    let jobs = match &cfg.jobs {
        Some(settings) if cfg.curve_modes.contains(&true) => {
            Some(crate::jobs::run(cfg, settings, &ring, &limits, &progress)?)
        }
        _ => None,
    };
    let metrics = match &cfg.metrics {
        Some(settings) if cfg.curve_modes.contains(&true) => {
            Some(crate::metrics::run(cfg, settings, &ring, &limits, &progress)?)
        }
        _ => None,
    };
    let cluster = match &cfg.cluster {
        Some(settings) if cfg.curve_modes.contains(&true) => {
            Some(crate::cluster::run(cfg, settings, &ring, &limits, &progress)?)
        }
        _ => None,
    };

    let results = Results {
        cores,
        libzmq,
        limits,
        max_agents,
        sizes_skipped,
        modes,
        handshakes,
        enrollment,
        presence,
        jobs,
        metrics,
        cluster,
        previous,
        elapsed: started.elapsed(),
        config: cfg.clone(),
    };
    crate::report::write(&results, &cfg.out_dir)?;
    progress.say(format!("report written to {}", cfg.out_dir.display()));
    Ok(results)
}

/// The requesting side for one system: an admin for fan-outs and the
/// concurrent requesters for throughput.
pub(crate) struct Clients {
    pub(crate) admin: Requester,
    pub(crate) requesters: Vec<Requester>,
}

impl Clients {
    pub(crate) fn connect(kind: Kind, endpoints: &Endpoints, ring: &KeyRing, curve: bool) -> Result<Clients> {
        let pick = |p: &Pair| if curve { Some(p.clone()) } else { None };
        let admin = Requester::connect(kind, endpoints, pick(&ring.admin).as_ref(), ADMIN_NAME)?;
        let requesters = ring
            .requesters
            .iter()
            .enumerate()
            .map(|(k, p)| Requester::connect(kind, endpoints, pick(p).as_ref(), &requester_name(k)))
            .collect::<Result<_>>()?;
        Ok(Clients { admin, requesters })
    }
}

/// Per-round figures of one system at one N.
#[derive(Default)]
pub(crate) struct Samples {
    p50: Vec<f64>,
    p99: Vec<f64>,
    incomplete: usize,
    attempted: usize,
    throughput: Vec<f64>,
    lost: u64,
    cpu_us_per_request: Vec<f64>,
    cpu_us_per_answer: Vec<f64>,
    delivered: Vec<f64>,
}

/// A round stops its fan-outs after this many incomplete ones (each costs
/// the idle timeout).
pub(crate) const MAX_INCOMPLETE_PER_ROUND: usize = 4;

/// How long a fan-out waits with no answer before it counts as incomplete
/// (answers were dropped: they will never come).
pub(crate) const FANOUT_IDLE: Duration = Duration::from_secs(1);

pub(crate) fn cpu_us_per(pid: u32, before: Option<u64>, count: u64) -> Option<f64> {
    let (before, after) = (before?, crate::procs::cpu_ns(pid)?);
    (count > 0).then(|| after.saturating_sub(before) as f64 / 1000.0 / count as f64)
}

pub(crate) struct System<'a> {
    pub(crate) kind: Kind,
    /// What progress lines call it (`Pantry`, `baseline`, `jobs on`...).
    pub(crate) name: &'static str,
    pub(crate) endpoints: &'a Endpoints,
    pub(crate) clients: Clients,
    pub(crate) pid: u32,
}

fn run_mode(
    cfg: &Config,
    curve: bool,
    sizes: &[usize],
    limits: &FdLimits,
    ring: &KeyRing,
    progress: &Progress,
) -> Result<ModeResult> {
    let mode = if curve { "CURVE" } else { "null" };
    let enrolled = ring.enrolled();
    let mut server =
        PantryServer::start(&cfg.server_bin, curve.then_some((&ring.server, &enrolled[..])), &cfg.log_level)?;
    let relay = Relay::start(&cfg.relay_exe, curve.then_some(&ring.server))?;
    progress.say(format!("{mode}: pantry-server pid {}, relay pid {}", server.process.pid, relay.process.pid));
    // Both idle, nothing connected yet.
    std::thread::sleep(Duration::from_millis(200));
    let mut result = ModeResult {
        curve,
        rss0_kib: Both { pantry: server.process.rss_kib(), baseline: relay.process.rss_kib() },
        ..Default::default()
    };
    let mut systems = [
        System {
            kind: Kind::Pantry,
            name: Kind::Pantry.name(),
            endpoints: &server.endpoints,
            clients: Clients::connect(Kind::Pantry, &server.endpoints, ring, curve)?,
            pid: server.process.pid,
        },
        System {
            kind: Kind::Baseline,
            name: Kind::Baseline.name(),
            endpoints: &relay.endpoints,
            clients: Clients::connect(Kind::Baseline, &relay.endpoints, ring, curve)?,
            pid: relay.process.pid,
        },
    ];
    for &n in sizes {
        let row = run_size(cfg, n, !limits.both_pools_fit(n), &mut systems, ring, curve, progress)?;
        progress.say(format!(
            "{mode} N={n}: fan-out p50 {} / {} ms, p99 {} / {} ms; throughput {} / {} per s (Pantry / baseline)",
            fmt(row.fanout_p50_ms.pantry),
            fmt(row.fanout_p50_ms.baseline),
            fmt(row.fanout_p99_ms.pantry),
            fmt(row.fanout_p99_ms.baseline),
            fmt(row.throughput.pantry),
            fmt(row.throughput.baseline),
        ));
        result.rows.push(row);
    }
    drop(systems);
    result.peak_rss_kib = Both {
        pantry: crate::procs::peak_rss_kib(server.process.pid),
        baseline: crate::procs::peak_rss_kib(relay.process.pid),
    };

    // The real agent, idle after registering.
    let client = server.start_client(&cfg.client_bin, IDLE_CLIENT, curve.then_some(&ring.idle_client))?;
    server.wait_registered(IDLE_CLIENT, Duration::from_secs(20))?;
    std::thread::sleep(Duration::from_millis(500));
    result.idle_client_rss_kib = client.rss_kib();
    progress.say(format!("{mode}: idle pantry-client RSS {:?} KiB", result.idle_client_rss_kib));
    drop(client);
    Ok(result)
}

pub(crate) fn fmt(v: Option<f64>) -> String {
    v.map(|v| if v >= 100.0 { format!("{v:.0}") } else { format!("{v:.2}") }).unwrap_or_else(|| "-".into())
}

/// Builds a pool and waits until every agent answered a broadcast.
pub(crate) fn start_pool(
    system: &mut System,
    n: usize,
    ring: &KeyRing,
    curve: bool,
    timeout: Duration,
) -> Result<(Pool, f64)> {
    let started = Instant::now();
    let pairs: &[Pair] = if curve { &ring.agents } else { &[] };
    let pool = Pool::start(system.kind, system.endpoints, pairs, n)?;
    wait_until_reachable(&mut system.clients.admin, &crate::agents::group_streams(n), timeout)
        .with_context(|| format!("{} pool of {n}", system.name))?;
    Ok((pool, started.elapsed().as_secs_f64()))
}

/// Fan-outs then a throughput run on one system. An incomplete fan-out
/// (answers lost) counts as infinitely slow in the percentiles.
fn measure(cfg: &Config, system: &mut System, n: usize, samples: &mut Samples, progress: &Progress) -> Result<()> {
    let started = Instant::now();
    let mut times = Vec::with_capacity(cfg.fanout_requests);
    let (mut incomplete, mut answers) = (0, 0u64);
    let cpu = crate::procs::cpu_ns(system.pid);
    for _ in 0..cfg.fanout_requests {
        if incomplete >= MAX_INCOMPLETE_PER_ROUND {
            break;
        }
        let f = fanout(&mut system.clients.admin, n, cfg.fanout_timeout, FANOUT_IDLE)?;
        answers += f.answers as u64;
        if f.complete(n) {
            times.push(f.elapsed.as_secs_f64() * 1000.0);
        } else {
            incomplete += 1;
            times.push(f64::INFINITY);
        }
    }
    samples.cpu_us_per_answer.extend(cpu_us_per(system.pid, cpu, answers));
    if !times.is_empty() {
        samples.delivered.push(answers as f64 / (times.len() * n) as f64);
    }
    samples.incomplete += incomplete;
    samples.attempted += times.len();
    samples.p50.extend(percentile(&times, 50.0));
    samples.p99.extend(percentile(&times, 99.0));
    let cpu = crate::procs::cpu_ns(system.pid);
    let t = throughput(&mut system.clients.requesters, n, cfg.throughput)?;
    samples.cpu_us_per_request.extend(cpu_us_per(system.pid, cpu, t.total_completed));
    samples.throughput.push(t.per_second);
    samples.lost += t.lost;
    progress.say(format!(
        "  N={n} {}: fan-out p50 {} ms ({incomplete} incomplete), throughput {}/s ({} lost) in {:.1} s",
        system.name,
        fmt(samples.p50.last().copied()),
        fmt(Some(t.per_second)),
        t.lost,
        started.elapsed().as_secs_f64()
    ));
    Ok(())
}

/// Two Pantry servers that differ in one setting (`label`: "metrics",
/// "jobs"; `names`: what the two rows are called, `[on, off]`), compared
/// at each of `sizes` with [`run_size`]; sizes that do not fit are skipped.
#[allow(clippy::too_many_arguments)]
pub(crate) fn compare_servers(
    cfg: &Config,
    label: &str,
    servers: [&PantryServer; 2],
    names: [&'static str; 2],
    sizes: &[usize],
    ring: &KeyRing,
    limits: &FdLimits,
    progress: &Progress,
) -> Result<Vec<SizeRow>> {
    let system = |k: usize| -> Result<System<'_>> {
        Ok(System {
            kind: Kind::Pantry,
            name: names[k],
            endpoints: &servers[k].endpoints,
            clients: Clients::connect(Kind::Pantry, &servers[k].endpoints, ring, true)?,
            pid: servers[k].process.pid,
        })
    };
    let mut systems = [system(0)?, system(1)?];
    let mut rows = Vec::new();
    for &n in sizes {
        if n == 0 || n > ring.agents.len() || n > limits.max_agents() {
            progress.say(format!("{label}: N={n} skipped (keys or open files)"));
            continue;
        }
        let row = run_size(cfg, n, !limits.both_pools_fit(n), &mut systems, ring, true, progress)?;
        progress.say(format!(
            "{label} N={n}: fan-out p50 {} / {} ms, throughput {} / {} per s ({} / {})",
            fmt(row.fanout_p50_ms.pantry),
            fmt(row.fanout_p50_ms.baseline),
            fmt(row.throughput.pantry),
            fmt(row.throughput.baseline),
            names[0],
            names[1]
        ));
        rows.push(row);
    }
    Ok(rows)
}

/// Both systems at N (`systems[0]`'s figures go to `Both::pantry`,
/// `systems[1]`'s to `Both::baseline`), each round in turn, both pools at
/// once unless `sequential`.
pub(crate) fn run_size(
    cfg: &Config,
    n: usize,
    sequential: bool,
    systems: &mut [System; 2],
    ring: &KeyRing,
    curve: bool,
    progress: &Progress,
) -> Result<SizeRow> {
    let mut row = SizeRow { n, sequential, ..Default::default() };
    let mut samples: [Samples; 2] = Default::default();
    if sequential {
        progress.say(format!("N={n}: both pools do not fit the open-file limit at once: one at a time"));
        for round in 0..cfg.rounds {
            for i in order(round) {
                let system = &mut systems[i];
                let (pool, setup) = start_pool(system, n, ring, curve, cfg.reachable_timeout)?;
                progress.say(format!("  N={n} {}: pool reachable in {setup:.1} s", system.name));
                if round == 0 {
                    *row.setup_s.at_mut(i) = Some(setup);
                    *row.rss_kib.at_mut(i) = crate::procs::rss_kib(system.pid);
                }
                measure(cfg, system, n, &mut samples[i], progress)?;
                drop(pool);
            }
        }
    } else {
        let mut pools = Vec::new();
        for (i, system) in systems.iter_mut().enumerate() {
            let (pool, setup) = start_pool(system, n, ring, curve, cfg.reachable_timeout)?;
            *row.setup_s.at_mut(i) = Some(setup);
            pools.push(pool);
        }
        for (i, system) in systems.iter().enumerate() {
            *row.rss_kib.at_mut(i) = crate::procs::rss_kib(system.pid);
        }
        for round in 0..cfg.rounds {
            for i in order(round) {
                measure(cfg, &mut systems[i], n, &mut samples[i], progress)?;
            }
        }
        drop(pools);
    }
    for (i, s) in samples.iter().enumerate() {
        *row.fanout_p50_ms.at_mut(i) = median(&s.p50);
        *row.fanout_p99_ms.at_mut(i) = median(&s.p99);
        *row.fanout_incomplete.at_mut(i) = s.incomplete;
        *row.fanout_attempted.at_mut(i) = s.attempted;
        *row.fanout_delivered.at_mut(i) = median(&s.delivered);
        *row.cpu_us_per_request.at_mut(i) = median(&s.cpu_us_per_request);
        *row.cpu_us_per_answer.at_mut(i) = median(&s.cpu_us_per_answer);
        *row.throughput.at_mut(i) = median(&s.throughput);
        *row.lost.at_mut(i) = s.lost;
    }
    Ok(row)
}

/// Pantry first in even rounds, the baseline first in odd ones.
pub(crate) fn order(round: usize) -> [usize; 2] {
    if round % 2 == 0 {
        [0, 1]
    } else {
        [1, 0]
    }
}

fn run_handshakes(cfg: &Config, ring: &KeyRing, progress: &Progress) -> Result<Vec<HandshakeRow>> {
    let relay = Relay::start(&cfg.relay_exe, Some(&ring.server))?;
    let mut rows = Vec::new();
    for &known in &cfg.handshake_keys {
        let mut keys: Vec<KnownKey> = ring
            .handshake
            .iter()
            .enumerate()
            .map(|(i, p)| keys::known(p.public_z85(), format!("handshake-{i}"), Role::Client))
            .collect();
        keys.extend(keys::filler(known.saturating_sub(keys.len()))?);
        let load = Instant::now();
        let server = PantryServer::start(&cfg.server_bin, Some((&ring.server, &keys)), &cfg.log_level)?;
        progress.say(format!(
            "handshakes: server with {} known keys up in {:.2} s",
            keys.len(),
            load.elapsed().as_secs_f64()
        ));
        let mut row = HandshakeRow { known_keys: keys.len(), ..Default::default() };
        let mut rates: [Vec<f64>; 2] = Default::default();
        let mut cpu: [Vec<f64>; 2] = Default::default();
        for round in 0..cfg.rounds {
            for i in order(round) {
                let (endpoints, pid) = if i == 0 {
                    (&server.endpoints, server.process.pid)
                } else {
                    (&relay.endpoints, relay.process.pid)
                };
                let before = crate::procs::cpu_ns(pid);
                let r = handshake_rate(endpoints, &ring.handshake, cfg.handshake)?;
                cpu[i].extend(cpu_us_per(pid, before, r.total_succeeded));
                rates[i].push(r.per_second);
                if i == 0 {
                    row.failed.pantry += r.failed;
                } else {
                    row.failed.baseline += r.failed;
                }
            }
        }
        row.rate = Both { pantry: median(&rates[0]), baseline: median(&rates[1]) };
        row.cpu_us = Both { pantry: median(&cpu[0]), baseline: median(&cpu[1]) };
        progress.say(format!(
            "handshakes with {} known keys: {} / {} per s (Pantry / baseline)",
            row.known_keys,
            fmt(row.rate.pantry),
            fmt(row.rate.baseline)
        ));
        rows.push(row);
    }
    Ok(rows)
}

/// The enrollment scenario against fresh CURVE servers that know only the
/// bench's admin key.
fn run_enrollment(
    cfg: &Config,
    settings: EnrollmentSettings,
    server: &Pair,
    admin: &Pair,
    progress: &Progress,
) -> Result<EnrollmentResult> {
    crate::enrollment::run(&enrollment_setup(cfg, server, admin), settings, &|text| progress.say(text))
}

/// Only the enrollment scenario (`pantry-bench enrollment`): fresh keys,
/// progress on stderr; the report is the caller's.
pub fn run_enrollment_only(cfg: &Config, settings: EnrollmentSettings) -> Result<EnrollmentResult> {
    let progress = Progress(Instant::now());
    limits::raise_nofile().context("cannot raise the open-file limit")?;
    run_enrollment(cfg, settings, &Pair::generate()?, &Pair::generate()?, &progress)
}

fn enrollment_setup<'a>(cfg: &'a Config, server: &'a Pair, admin: &'a Pair) -> crate::enrollment::Setup<'a> {
    crate::enrollment::Setup {
        server_bin: cfg.server_bin.clone(),
        client_bin: cfg.client_bin.clone(),
        admin_bin: cfg.admin_bin.clone(),
        log_level: &cfg.log_level,
        server,
        admin,
        admin_name: ADMIN_NAME,
    }
}

/// The presence scenario against fresh CURVE servers.
fn run_presence(
    cfg: &Config,
    settings: PresenceSettings,
    server: &Pair,
    admin: &Pair,
    progress: &Progress,
) -> Result<PresenceResult> {
    crate::presence::run(&enrollment_setup(cfg, server, admin), settings, &|text| progress.say(text))
}

/// The presence scenario's agent counts within the open-file limit.
fn fit_presence(mut settings: PresenceSettings, limits: &FdLimits) -> PresenceSettings {
    settings.restart_agents = settings.restart_agents.min(limits.max_monitored_agents());
    settings.agents = settings.agents.min(limits.max_monitored_agents());
    settings.killed = settings.killed.min(settings.agents);
    settings
}

/// Only the presence scenario (`pantry-bench presence`): fresh keys,
/// progress on stderr; the report is the caller's.
pub fn run_presence_only(cfg: &Config, settings: PresenceSettings) -> Result<(PresenceResult, Option<Previous>)> {
    let progress = Progress(Instant::now());
    let limits = limits::raise_nofile().context("cannot raise the open-file limit")?;
    let settings = fit_presence(settings, &limits);
    let result = run_presence(cfg, settings, &Pair::generate()?, &Pair::generate()?, &progress)?;
    Ok((result, crate::previous::load(&cfg.out_dir)))
}

/// Only the job-store scenario (`pantry-bench jobs`): fresh keys,
/// progress on stderr; the report is the caller's.
pub fn run_jobs_only(cfg: &Config, settings: &JobsSettings) -> Result<JobsResult> {
    let progress = Progress(Instant::now());
    let limits = limits::raise_nofile().context("cannot raise the open-file limit")?;
    let ring = KeyRing::generate(settings.max_agents().min(limits.max_agents()), cfg)?;
    crate::jobs::run(cfg, settings, &ring, &limits, &progress)
}

/// Only the metrics scenario (`pantry-bench metrics`): fresh keys,
/// progress on stderr; the report is the caller's.
pub fn run_metrics_only(cfg: &Config, settings: &MetricsSettings) -> Result<MetricsResult> {
    let progress = Progress(Instant::now());
    let limits = limits::raise_nofile().context("cannot raise the open-file limit")?;
    let ring = KeyRing::generate(settings.max_agents().min(limits.max_agents()), cfg)?;
    crate::metrics::run(cfg, settings, &ring, &limits, &progress)
}

/// Only the cluster scenario (`pantry-bench cluster`): fresh keys,
/// progress on stderr; the report is the caller's.
pub fn run_cluster_only(cfg: &Config, settings: &ClusterSettings) -> Result<ClusterResult> {
    let progress = Progress(Instant::now());
    let limits = limits::raise_nofile().context("cannot raise the open-file limit")?;
    let ring = KeyRing::generate(settings.max_agents().min(limits.max_agents()), cfg)?;
    crate::cluster::run(cfg, settings, &ring, &limits, &progress)
}
