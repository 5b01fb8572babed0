//! Several servers, one fleet (issue 16): CURVE, three real
//! `pantry-server`s with `cluster:` on one real etcd (Debian's
//! `etcd-server` on loopback, a temporary data directory), against a
//! single server without `cluster:` in the same run.
//!
//! Set-up: server A starts with every key of the scenario in its
//! `server_keys.yml`; `pantry-server -c server.yml keys:import` copies them
//! into etcd (timed; A's watch brings them to A). Servers B and C start
//! with a copy of A's `server_keys.yml` (the cluster's key pair). The
//! single server S has the same keys in its file. Every server has
//! `cluster.lease` 2 s (the default is 5 s).
//!
//! 1. **Handshake rate**: the handshake scenario against A (its keys are
//!    etcd's, held in memory) and S, rounds alternating.
//! 2. **Fan-out across servers**: an admin on A echoes to 3 × N agents (N
//!    connected to each server); the same admin against S with 3N agents.
//!    Time until the last answer, p50 and p99 per round, medians over the
//!    rounds. Pools are built anew each round when both do not fit the
//!    open-file limit at once.
//! 3. **Revocation A → C**: agents with keys of their own, registered on
//!    C; each revoked in turn by a raw `RevokeClient` to A; time until its
//!    DEALER's or SUB's monitor on C's connections sees the disconnection.
//! 4. **Failover**: N agents per server checking in every heartbeat
//!    (5 s). B's behave like the real agent with the three servers as
//!    hosts: once its DEALER has been disconnected for a heartbeat
//!    interval (three while a handshake is pending) an agent moves to the
//!    next server in its own order, which spreads B's agents over A and C.
//!    A's and C's agents, which never lose their server here, go without
//!    that machinery (it costs the bench process descriptors). B is
//!    SIGKILLed; from A, an echo to B's agents every 100 ms until each has
//!    answered once (through A or C); what each echo said about them
//!    (answered, named offline, silent); then `status` on A and an echo to
//!    all.
//!
//! Every wait is bounded; a part that fails is recorded and the others
//! run.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::ops::Range;
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _, Result};
use pantry_shared::commands::status::ONLINE;
use pantry_shared::commands::{client_revoke, echo, recipients, register_client};
use pantry_shared::filter::{ClientFilter, Identities, TopicForm, BROADCAST_TOPIC};
use pantry_shared::keys::{KnownKey, Role};
use pantry_shared::monitor::{self, SocketEvent};
use pantry_shared::Message;

use crate::agents::{
    client_security, group_streams, identity, AgentOptions, Kind, Pool, ENVIRONMENT, GROUP_SIZE, ROLE,
};
use crate::enrollment::Admin;
use crate::etcd::{self, Etcd};
use crate::handshake::handshake_rate;
use crate::harness::{
    cpu_us_per, order, Both, Config, KeyRing, Progress, ADMIN_NAME, FANOUT_IDLE, MAX_INCOMPLETE_PER_ROUND,
};
use crate::keys::{self, Pair};
use crate::limits::FdLimits;
use crate::presence::{counts, echo_all, status, EchoRun};
use crate::procs::{cpu_ns, run_bounded, Endpoints, PantryServer};
use crate::requesters::{fanout, wait_until_reachable, Requester};
use crate::stats::{median, percentile};

/// Servers of the cluster (`a`, `b`, `c`).
pub const SERVERS: usize = 3;
const SERVER_IDS: [&str; SERVERS] = ["a", "b", "c"];
/// The server that is killed in the failover, and the one its agents move
/// to (the next in their list of hosts).
const KILLED: usize = 1;
/// The application of the agents that are revoked.
const REVOKED_APP: &str = "revoked";
/// The identity of revoked agent `k` is this and `k`.
const REVOKED_PREFIX: &str = "revoked-";
/// Longest wait for one revocation to cut its agent off.
const CUT_TIMEOUT: Duration = Duration::from_secs(5);
/// Longest wait for the fan-out's agents to be reachable.
pub const REACHABLE_CAP: Duration = Duration::from_secs(30);
/// How long an echo of the failover is waited for after the last one.
const ECHO_GRACE: Duration = Duration::from_secs(1);

/// What the cluster scenario does.
#[derive(Debug, Clone, Copy)]
pub struct ClusterSettings {
    /// Agents connected to each of the three servers in the fan-out (the
    /// single server gets three times as many).
    pub agents_per_server: usize,
    /// Agents on each server in the failover.
    pub failover_agents_per_server: usize,
    /// The failover agents' heartbeat (whole seconds).
    pub heartbeat: Duration,
    /// `cluster.lease` of every server (whole seconds, at least 2: the
    /// server's minimum).
    pub lease: Duration,
    /// Revocations timed.
    pub revocations: usize,
    /// Between two echoes to the killed server's agents.
    pub echo_every: Duration,
    /// Longest wait, after the kill, for all of them to answer.
    pub failover_timeout: Duration,
}

impl ClusterSettings {
    /// The most agent keys the scenario needs.
    pub fn max_agents(&self) -> usize {
        SERVERS * self.agents_per_server.max(self.failover_agents_per_server).max(1)
    }
}

/// `keys:import` on server A.
#[derive(Debug, Clone, Default)]
pub struct Import {
    pub keys: usize,
    pub seconds: f64,
    /// What it printed.
    pub said: String,
}

/// The handshake rate against a cluster server (`pantry`) and a single
/// one (`baseline`).
#[derive(Debug, Clone, Default)]
pub struct HandshakeCompare {
    pub known_keys: usize,
    pub rate: Both<Option<f64>>,
    pub failed: Both<u64>,
    /// Server CPU time per successful handshake, µs.
    pub cpu_us: Both<Option<f64>>,
}

/// Fan-out from an admin on one server of three (`pantry`) against one
/// server with all the agents (`baseline`).
#[derive(Debug, Clone, Default)]
pub struct FanoutCompare {
    /// Agents per server asked for, and connected (fewer when the
    /// open-file limit says so).
    pub wanted_per_server: usize,
    pub per_server: usize,
    /// Pools built anew each round (both did not fit at once).
    pub sequential: bool,
    pub p50_ms: Both<Option<f64>>,
    pub p99_ms: Both<Option<f64>>,
    /// The time until the last answer of the agents the server listed,
    /// p50 (medians over rounds): the same as `p50_ms` when every agent
    /// was listed; and the fewest agents listed by one echo.
    pub p50_listed_ms: Both<Option<f64>>,
    pub fewest_listed: Both<Option<usize>>,
    pub incomplete: Both<usize>,
    pub attempted: Both<usize>,
    /// From the first connect until every agent answered, s (first build).
    pub setup_s: Both<Option<f64>>,
    /// All servers' CPU time per answer, µs.
    pub cpu_us_per_answer: Both<Option<f64>>,
    /// Each cluster server's (a, b, c) CPU time per answer, µs.
    pub cpu_us_per_answer_by_server: Vec<Option<f64>>,
    /// Groups of agents the admin could not get every answer from before
    /// the echoes were timed, with what the servers said about them (the
    /// echoes were timed anyway, and lost answers).
    pub unreachable: Vec<String>,
}

impl FanoutCompare {
    pub fn agents(&self) -> usize {
        SERVERS * self.per_server
    }
}

/// Revocations on A of keys whose agents are on C.
#[derive(Debug, Clone, Default)]
pub struct Revocation {
    pub tries: usize,
    /// From sending `RevokeClient` to A until the agent's connection to C
    /// closed, ms (tries that were cut off).
    pub cut_ms: Vec<f64>,
    /// From sending until A's answer, ms.
    pub answer_ms: Vec<f64>,
    /// Tries not cut off within 5 s.
    pub not_cut: usize,
    /// `cut off a revoked key` lines in C's log.
    pub log_lines: usize,
    /// The revoked agents `status` still lists afterwards, on A and on C
    /// (a single server forgets a revoked key's clients).
    pub listed_after: [usize; 2],
}

impl Revocation {
    pub fn p50_ms(&self) -> Option<f64> {
        median(&self.cut_ms)
    }

    pub fn max_ms(&self) -> Option<f64> {
        self.cut_ms.iter().copied().reduce(f64::max)
    }
}

/// What one echo of the failover said about the killed server's agents.
#[derive(Debug, Clone, Default)]
pub struct GapEcho {
    /// Sent this long after the kill, s.
    pub sent_s: f64,
    /// The agents it was sent to: those that had not answered an earlier
    /// one.
    pub asked: usize,
    /// Of those: listed online in the recipient list, answered, named
    /// offline; the rest were silent (no answer, not named offline).
    pub listed: usize,
    pub answered: usize,
    pub offline: usize,
    pub silent: usize,
    /// Answers that were the agent's first since the kill (an agent may
    /// answer two echoes sent before its first answer arrived).
    pub first: usize,
}

/// SIGKILL of one server of three.
#[derive(Debug, Clone, Default)]
pub struct Failover {
    pub wanted_per_server: usize,
    pub per_server: usize,
    pub heartbeat_s: u64,
    pub lease_s: u64,
    pub killed: String,
    pub moved_to: String,
    /// Between two echoes to the moving agents, ms.
    pub echo_every_ms: f64,
    /// The killed server's agents that answered an echo after the kill.
    pub answered: usize,
    /// When the last of them first answered, s after the kill.
    pub all_answered_s: Option<f64>,
    /// The median agent's first answer, s after the kill.
    pub first_answer_p50_s: Option<f64>,
    /// Moves to another server the agents of each server (a, b, c) made
    /// (more than the killed server's agents: some moved again, or agents
    /// of a live server moved), and those that could not make their
    /// sockets (all).
    pub moves: Vec<u64>,
    pub failed_moves: u64,
    /// Why the first failed move failed.
    pub move_error: Option<String>,
    pub echoes: Vec<GapEcho>,
    /// `status` on A afterwards: the failover's agents listed and online,
    /// and the other clients listed (offline: the revoked agents of part 3
    /// and the fan-out's agents the failover did not use).
    pub status_listed: usize,
    pub status_online: usize,
    pub status_others: usize,
    /// An echo from A to every agent afterwards, and the bench's agents it
    /// named offline.
    pub echo_all: Option<EchoRun>,
    pub echo_offline_agents: usize,
}

impl Failover {
    pub fn agents(&self) -> usize {
        SERVERS * self.per_server
    }

    /// Within `intervals` heartbeat intervals, every agent answering and
    /// listed online afterwards.
    pub fn met(&self, intervals: f64) -> bool {
        let total = self.agents();
        self.all_answered_s.is_some_and(|s| s <= intervals * self.heartbeat_s as f64)
            && self.answered == self.per_server
            && self.status_online == total
            && self.echo_offline_agents == 0
            && self.echo_all.as_ref().is_some_and(|e| e.answers == total)
    }

    /// Echoes that named some of the moving agents offline, and echoes in
    /// which some were silent.
    pub fn named_offline_echoes(&self) -> usize {
        self.echoes.iter().filter(|e| e.offline > 0).count()
    }
}

#[derive(Debug, Clone, Default)]
pub struct ClusterResult {
    /// Why the scenario did not run (no etcd).
    pub skipped: Option<String>,
    pub etcd_version: Option<String>,
    pub lease_s: u64,
    /// The bench process's open-file limit (soft), which bounds the agents.
    pub open_files: u64,
    pub import: Option<Import>,
    pub handshake: Option<HandshakeCompare>,
    pub fanout: Option<FanoutCompare>,
    pub revocation: Option<Revocation>,
    pub failover: Option<Failover>,
    /// Parts that failed, and why.
    pub failures: Vec<String>,
}

/// Whether `identity` is one of the first `n` agents ([`identity`]).
fn is_agent(identity: &str, n: usize) -> bool {
    agent_number(identity).is_some_and(|i| i < n)
}

/// The identity of revoked agent `k`.
fn revoked_identity(k: usize) -> String {
    format!("{REVOKED_PREFIX}{k:03}")
}

/// `cluster:` for server `id` on `etcd`.
fn cluster_yaml(etcd: &Etcd, id: &str, lease: Duration) -> String {
    format!(
        "cluster:\n  etcd: [{}]\n  server_id: {id}\n  advertise: 127.0.0.1\n  lease: {}s\n",
        etcd.endpoint(),
        lease.as_secs().max(2)
    )
}

/// Runs the four parts (fewer agents when the open-file limit says so);
/// without etcd, says so and runs nothing.
pub(crate) fn run(
    cfg: &Config,
    s: &ClusterSettings,
    ring: &KeyRing,
    limits: &FdLimits,
    progress: &Progress,
) -> Result<ClusterResult> {
    let mut result = ClusterResult { lease_s: s.lease.as_secs().max(2), open_files: limits.soft, ..Default::default() };
    let Some(binary) = etcd::binary() else {
        let why = "etcd is not installed (Debian's etcd-server; `make deps` installs it)";
        progress.say(format!("cluster: skipped: {why}"));
        result.skipped = Some(why.into());
        return Ok(result);
    };
    result.etcd_version = etcd::version(&binary);
    let etcd = match Etcd::start(&binary) {
        Ok(etcd) => etcd,
        Err(e) => {
            progress.say(format!("cluster: skipped: etcd did not start: {e:#}"));
            result.skipped = Some(format!("etcd did not start: {}", first_line(&format!("{e:#}"))));
            return Ok(result);
        }
    };
    let fan_per = fit(s.agents_per_server, ring.agents.len(), limits.max_agents(), "fan-out", progress);
    let fail_max = SERVERS * limits.max_failover_agents_per_server(SERVERS);
    let fail_per = fit(s.failover_agents_per_server, ring.agents.len(), fail_max, "failover", progress);
    let revoked = keys::generate(s.revocations)?;
    let known = known_keys(ring, SERVERS * fan_per.max(fail_per), &revoked);
    progress.say(format!(
        "cluster: etcd pid {} at {} ({}); {} keys",
        etcd.process.pid,
        etcd.endpoint(),
        result.etcd_version.as_deref().unwrap_or("version unknown"),
        known.len()
    ));
    let extra = |id: &str| cluster_yaml(&etcd, id, s.lease);
    let a = PantryServer::start_with(&cfg.server_bin, Some((&ring.server, &known)), &cfg.log_level, &extra("a"))?;
    result.import = Some(import(cfg, &a, known.len())?);
    progress.say(format!(
        "cluster: keys:import of {} keys in {:.2} s: {}",
        known.len(),
        result.import.as_ref().map_or(0.0, |i| i.seconds),
        result.import.as_ref().map_or("", |i| i.said.as_str())
    ));
    let mut servers = vec![a];
    for id in &SERVER_IDS[1..] {
        let server = PantryServer::start_like(&cfg.server_bin, &servers[0], &cfg.log_level, &extra(id))?;
        servers.push(server);
    }
    let single = PantryServer::start(&cfg.server_bin, Some((&ring.server, &known)), &cfg.log_level)?;
    progress.say(format!(
        "cluster: servers a, b, c: pids {}; single server pid {}",
        servers.iter().map(|s| s.process.pid.to_string()).collect::<Vec<_>>().join(", "),
        single.process.pid
    ));
    // Every server knows the admin (its key came from etcd).
    for (server, id) in servers.iter().zip(SERVER_IDS) {
        admin_ready(server, ring).with_context(|| format!("server {id}"))?;
    }

    match handshakes(cfg, &servers[0], &single, ring, known.len(), progress) {
        Ok(h) => result.handshake = Some(h),
        Err(e) => fail(&mut result, "handshake rate", e, progress),
    }
    if fan_per > 0 {
        match fanout_compare(cfg, s.agents_per_server, fan_per, &servers, &single, ring, limits, progress) {
            Ok(f) => result.fanout = Some(f),
            Err(e) => fail(&mut result, "fan-out", e, progress),
        }
    }
    drop(single);
    if s.revocations > 0 {
        match revocations(&servers, ring, &revoked, progress) {
            Ok(r) => result.revocation = Some(r),
            Err(e) => fail(&mut result, "revocation", e, progress),
        }
    }
    if fail_per > 0 {
        match failover(cfg, s, fail_per, &mut servers, ring, progress) {
            Ok(f) => result.failover = Some(f),
            Err(e) => fail(&mut result, "failover", e, progress),
        }
    }
    drop(servers);
    drop(etcd);
    Ok(result)
}

fn first_line(text: &str) -> &str {
    text.lines().next().unwrap_or_default()
}

fn fail(result: &mut ClusterResult, part: &str, e: anyhow::Error, progress: &Progress) {
    progress.say(format!("cluster: {part} failed: {e:#}"));
    result.failures.push(format!("{part}: {e:#}"));
}

/// Agents per server within the keys and the open-file limit (`max`
/// agents in the bench process at once).
fn fit(wanted: usize, keys: usize, max: usize, part: &str, progress: &Progress) -> usize {
    let per = wanted.min(keys / SERVERS).min(max / SERVERS);
    if per < wanted {
        progress.say(format!(
            "cluster: {part} with {per} agents per server, not {wanted} (keys or the open-file limit: {max} agents)"
        ));
    }
    per
}

/// The agents' keys (the first `agents`), the admin's, the handshake
/// slots' and the revoked agents'.
fn known_keys(ring: &KeyRing, agents: usize, revoked: &[Pair]) -> Vec<KnownKey> {
    let mut known: Vec<KnownKey> = ring.agents[..agents.min(ring.agents.len())]
        .iter()
        .enumerate()
        .map(|(i, p)| keys::known(p.public_z85(), identity(i), Role::Client))
        .collect();
    known.push(keys::known(ring.admin.public_z85(), ADMIN_NAME.into(), Role::Admin));
    known.extend(
        ring.handshake
            .iter()
            .enumerate()
            .map(|(i, p)| keys::known(p.public_z85(), format!("handshake-{i}"), Role::Client)),
    );
    known.extend(
        revoked.iter().enumerate().map(|(k, p)| keys::known(p.public_z85(), revoked_identity(k), Role::Client)),
    );
    known
}

/// `pantry-server -c server.yml keys:import` for `server`.
fn import(cfg: &Config, server: &PantryServer, keys: usize) -> Result<Import> {
    let started = Instant::now();
    let mut command = Command::new(&cfg.server_bin);
    command.arg("-c").arg(server.config_path()).arg("keys:import");
    let out = run_bounded(&mut command, Duration::from_secs(600))?;
    let seconds = started.elapsed().as_secs_f64();
    let said = out.stderr.lines().chain(out.stdout.lines()).find(|l| l.contains("imported")).unwrap_or("").trim();
    if !out.success() {
        bail!("keys:import failed ({:?}):\n{}{}", out.status, out.stdout, out.stderr);
    }
    Ok(Import { keys, seconds, said: said.to_owned() })
}

/// Waits until `server` answers the admin's `status` (its key is known).
fn admin_ready(server: &PantryServer, ring: &KeyRing) -> Result<()> {
    let end = Instant::now() + Duration::from_secs(20);
    let mut last = String::new();
    while Instant::now() < end {
        let admin = Admin::connect(server, &ring.admin, ADMIN_NAME)?;
        match status(&admin, &ClientFilter::default(), Duration::from_secs(2)) {
            Ok(_) => return Ok(()),
            Err(e) => last = format!("{e:#}"),
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    bail!("the admin's `status` not answered within 20 s ({last})")
}

/// Part 1.
fn handshakes(
    cfg: &Config,
    clustered: &PantryServer,
    single: &PantryServer,
    ring: &KeyRing,
    known_keys: usize,
    progress: &Progress,
) -> Result<HandshakeCompare> {
    let mut row = HandshakeCompare { known_keys, ..Default::default() };
    let mut rates: [Vec<f64>; 2] = Default::default();
    let mut cpu: [Vec<f64>; 2] = Default::default();
    for round in 0..cfg.rounds {
        for i in order(round) {
            let server = if i == 0 { clustered } else { single };
            let pid = server.process.pid;
            let before = cpu_ns(pid);
            let r = handshake_rate(&server.endpoints, &ring.handshake, cfg.handshake)?;
            cpu[i].extend(cpu_us_per(pid, before, r.total_succeeded));
            rates[i].push(r.per_second);
            *row.failed.at_mut(i) += r.failed;
        }
    }
    row.rate = Both { pantry: median(&rates[0]), baseline: median(&rates[1]) };
    row.cpu_us = Both { pantry: median(&cpu[0]), baseline: median(&cpu[1]) };
    progress.say(format!(
        "cluster: handshakes with {known_keys} known keys: {} / {} per s (server a, keys from etcd / single server)",
        crate::harness::fmt(row.rate.pantry),
        crate::harness::fmt(row.rate.baseline)
    ));
    Ok(row)
}

fn cpu_sum(pids: &[u32]) -> Option<u64> {
    pids.iter().map(|&p| cpu_ns(p)).sum()
}

/// Part 2: `pantry` is the cluster (admin on A), `baseline` the single
/// server.
#[allow(clippy::too_many_arguments)]
fn fanout_compare(
    cfg: &Config,
    wanted: usize,
    per: usize,
    cluster: &[PantryServer],
    single: &PantryServer,
    ring: &KeyRing,
    limits: &FdLimits,
    progress: &Progress,
) -> Result<FanoutCompare> {
    let total = SERVERS * per;
    let mut result = FanoutCompare {
        wanted_per_server: wanted,
        per_server: per,
        sequential: !limits.both_pools_fit(total),
        ..Default::default()
    };
    let names = ["3 servers", "1 server"];
    let mut admins = [
        Requester::connect(Kind::Pantry, &cluster[0].endpoints, Some(&ring.admin), ADMIN_NAME)?,
        Requester::connect(Kind::Pantry, &single.endpoints, Some(&ring.admin), ADMIN_NAME)?,
    ];
    let pids: [Vec<u32>; 2] = [cluster.iter().map(|s| s.process.pid).collect(), vec![single.process.pid]];
    let mut pools: [Vec<Pool>; 2] = Default::default();
    let mut p50: [Vec<f64>; 2] = Default::default();
    let mut p99: [Vec<f64>; 2] = Default::default();
    let mut p50_listed: [Vec<f64>; 2] = Default::default();
    let mut cpu: [Vec<f64>; 2] = Default::default();
    let mut by_server: Vec<Vec<f64>> = vec![Vec::new(); SERVERS];
    for round in 0..cfg.rounds {
        for i in order(round) {
            if pools[i].is_empty() {
                let started = Instant::now();
                let unreachable_before = result.unreachable.len();
                pools[i] = if i == 0 {
                    (0..SERVERS)
                        .map(|k| {
                            let range = k * per..(k + 1) * per;
                            Pool::start_with(
                                Kind::Pantry,
                                &cluster[k].endpoints,
                                &ring.agents,
                                range,
                                Default::default(),
                            )
                        })
                        .collect::<Result<_>>()?
                } else {
                    vec![Pool::start(Kind::Pantry, &single.endpoints, &ring.agents, total)?]
                };
                // A client whose record reached the other servers as offline
                // stays so until its state changes: waiting longer helps none.
                let end = Instant::now() + cfg.reachable_timeout.min(REACHABLE_CAP);
                for (g, group) in group_streams(total).into_iter().enumerate() {
                    let left = end.saturating_duration_since(Instant::now()).max(Duration::from_secs(5));
                    if let Err(e) = wait_until_reachable(&mut admins[i], std::slice::from_ref(&group), left) {
                        let on = if i == 0 { (g * GROUP_SIZE / per).min(SERVERS - 1) } else { 0 };
                        let seen =
                            diagnose(if i == 0 { cluster } else { std::slice::from_ref(single) }, on, ring, &group.0);
                        let why = format!("{} on {}: {}; {seen}", group.0, names[i], first_line(&format!("{e:#}")));
                        progress.say(format!("cluster: not reachable: {why}"));
                        result.unreachable.push(why);
                    }
                }
                let setup = started.elapsed().as_secs_f64();
                result.setup_s.at_mut(i).get_or_insert(setup);
                let unreachable = result.unreachable.len() - unreachable_before;
                progress.say(match unreachable {
                    0 => format!("cluster: {total} agents on {} reachable in {setup:.1} s", names[i]),
                    n => format!(
                        "cluster: {total} agents on {} connected in {setup:.1} s, {n} groups not all reachable",
                        names[i]
                    ),
                });
            }
            let before = cpu_sum(&pids[i]);
            let each: Vec<Option<u64>> = pids[i].iter().map(|&p| cpu_ns(p)).collect();
            let (mut times, mut incomplete, mut answers) = (Vec::new(), 0, 0u64);
            let mut listed_times = Vec::new();
            for _ in 0..cfg.fanout_requests {
                if incomplete >= MAX_INCOMPLETE_PER_ROUND {
                    break;
                }
                let f = fanout(&mut admins[i], total, cfg.fanout_timeout, FANOUT_IDLE)?;
                answers += f.answers as u64;
                if let Some(listed) = f.listed {
                    let fewest = result.fewest_listed.at_mut(i);
                    *fewest = Some(fewest.map_or(listed, |l| l.min(listed)));
                    if f.answers >= listed {
                        listed_times.push(f.elapsed.as_secs_f64() * 1000.0);
                    }
                }
                if f.complete(total) {
                    times.push(f.elapsed.as_secs_f64() * 1000.0);
                } else {
                    incomplete += 1;
                    times.push(f64::INFINITY);
                }
            }
            if let (Some(before), Some(after)) = (before, cpu_sum(&pids[i])) {
                if answers > 0 {
                    cpu[i].push(after.saturating_sub(before) as f64 / 1000.0 / answers as f64);
                }
            }
            if i == 0 {
                for (k, (&pid, before)) in pids[0].iter().zip(each).enumerate() {
                    by_server[k].extend(cpu_us_per(pid, before, answers));
                }
            }
            *result.incomplete.at_mut(i) += incomplete;
            *result.attempted.at_mut(i) += times.len();
            p50[i].extend(percentile(&times, 50.0));
            p50_listed[i].extend(percentile(&listed_times, 50.0));
            p99[i].extend(percentile(&times, 99.0));
            progress.say(format!(
                "cluster: fan-out to {total} on {}: p50 {} ms, p99 {} ms ({incomplete} incomplete), server CPU {} µs \
                 per answer",
                names[i],
                crate::harness::fmt(percentile(&times, 50.0)),
                crate::harness::fmt(percentile(&times, 99.0)),
                crate::harness::fmt(cpu[i].last().copied())
            ));
            if result.sequential {
                pools[i].clear();
            }
        }
    }
    for i in 0..2 {
        *result.p50_ms.at_mut(i) = median(&p50[i]);
        *result.p99_ms.at_mut(i) = median(&p99[i]);
        *result.p50_listed_ms.at_mut(i) = median(&p50_listed[i]);
        *result.cpu_us_per_answer.at_mut(i) = median(&cpu[i]);
    }
    result.cpu_us_per_answer_by_server = by_server.iter().map(|v| median(v)).collect();
    Ok(result)
}

/// What the servers say about a group an admin on the first of `servers`
/// could not reach: the first one's `status` and the group's own server's
/// (`on`), and an echo to the group from an admin on its own server.
fn diagnose(servers: &[PantryServer], on: usize, ring: &KeyRing, group: &str) -> String {
    let filter = ClientFilter { application: Some(group.to_owned()), ..Default::default() };
    let id = |k: usize| if servers.len() == 1 { "the server" } else { SERVER_IDS[k] };
    let mut said = Vec::new();
    let mut online_on: Vec<Option<BTreeSet<String>>> = Vec::new();
    for k in [0, on].into_iter().collect::<BTreeSet<_>>() {
        let seen = Admin::connect(&servers[k], &ring.admin, ADMIN_NAME)
            .and_then(|admin| status(&admin, &filter, Duration::from_secs(5)));
        match seen {
            Ok(list) => {
                let (listed, online) = counts(&list);
                said.push(format!("`status` on {} lists {online} online of {listed}", id(k)));
                online_on.push(Some(list.into_iter().filter(|c| c.state == ONLINE).map(|c| c.identity).collect()));
            }
            Err(e) => {
                said.push(format!("`status` on {}: {}", id(k), first_line(&format!("{e:#}"))));
                online_on.push(None);
            }
        }
    }
    if let [Some(first), Some(own)] = online_on.as_slice() {
        let missing: Vec<&String> = own.difference(first).take(5).collect();
        if !missing.is_empty() {
            said.push(format!(
                "online on {} but not on {}: {}",
                id(on),
                id(0),
                missing.iter().map(|m| m.as_str()).collect::<Vec<_>>().join(", ")
            ));
        }
    }
    let echo = Admin::connect(&servers[on], &ring.admin, ADMIN_NAME)
        .and_then(|admin| echo_stream(&admin, group, Duration::from_secs(3)));
    match echo {
        Ok((listed, answers)) => {
            said.push(format!("an echo from an admin on {}: {answers} answers of {listed} listed", id(on)))
        }
        Err(e) => said.push(format!("an echo from an admin on {}: {}", id(on), first_line(&format!("{e:#}")))),
    }
    said.join("; ")
}

/// An echo to `stream`: how many the server listed, how many answered
/// within `timeout`.
fn echo_stream(admin: &Admin, stream: &str, timeout: Duration) -> Result<(usize, usize)> {
    let mut request = echo::request("pantry-bench");
    request.stream = stream.to_owned();
    request.metadata.to = stream.to_owned();
    let uuid = admin.send(request)?;
    let end = Instant::now() + timeout;
    let (mut listed, mut answers) = (None, 0);
    while listed.map_or(true, |l| answers < l) {
        let Some(m) = admin.recv(&uuid, end) else { break };
        if m.is_client_response_list() {
            listed = Some(recipients::online(&m).len());
        } else if m.error().is_none() {
            answers += 1;
        }
    }
    Ok((listed.unwrap_or(0), answers))
}

/// An agent whose key is revoked: a DEALER and a SUB on C, each with a
/// monitor that reports the disconnection.
struct Watched {
    identity: String,
    _dealer: zmq::Socket,
    _sub: zmq::Socket,
    monitors: [zmq::Socket; 2],
}

const WATCHED_EVENTS: &[zmq::SocketEvent] = &[zmq::SocketEvent::HANDSHAKE_SUCCEEDED, zmq::SocketEvent::DISCONNECTED];

/// Registers (asking for an answer) and then connects the SUB, as the
/// real agent does under CURVE; returns once the SUB's handshake is done.
fn watched(ctx: &zmq::Context, endpoints: &Endpoints, pair: &Pair, k: usize, end: Instant) -> Result<Watched> {
    let identity = revoked_identity(k);
    let me = ClientFilter {
        identity: Some(identity.clone()),
        application: Some(REVOKED_APP.into()),
        environment: Some(ENVIRONMENT.into()),
        roles: vec![ROLE.into()],
    };
    let security = client_security(endpoints, Some(pair))?;
    let dealer = security.socket(ctx, zmq::DEALER)?;
    dealer.set_linger(0)?;
    let dealer_monitor = monitor::monitor(ctx, &dealer, WATCHED_EVENTS)?;
    dealer.connect(&endpoints.receive)?;
    let mut request = register_client::request(&me);
    request.metadata.requires_response = true;
    dealer.send_multipart(request.to_frames(), zmq::DONTWAIT)?;
    loop {
        let left = end.saturating_duration_since(Instant::now());
        if left.is_zero() {
            bail!("{identity}: no answer to its registration on C");
        }
        if dealer.poll(zmq::POLLIN, left.as_millis().max(1) as i64)? == 0 {
            continue;
        }
        let answer = Message::from_frames(&dealer.recv_multipart(0)?)?;
        if let Some(error) = answer.error() {
            bail!("{identity}: registration refused: {error}");
        }
        break;
    }
    let sub = security.socket(ctx, zmq::SUB)?;
    sub.set_linger(0)?;
    for stream in me.streams().iter().map(String::as_str).chain([BROADCAST_TOPIC]) {
        sub.set_subscribe(&TopicForm::Exact.topic(stream))?;
    }
    let sub_monitor = monitor::monitor(ctx, &sub, WATCHED_EVENTS)?;
    sub.connect(&endpoints.publish)?;
    loop {
        let left = end.saturating_duration_since(Instant::now());
        if left.is_zero() {
            bail!("{identity}: its SUB did not connect to C");
        }
        if sub_monitor.poll(zmq::POLLIN, left.as_millis().max(1) as i64)? == 0 {
            continue;
        }
        if std::iter::from_fn(|| monitor::read(&sub_monitor)).any(|e| e.event == SocketEvent::HandshakeSucceeded) {
            break;
        }
    }
    Ok(Watched { identity, _dealer: dealer, _sub: sub, monitors: [dealer_monitor, sub_monitor] })
}

/// Part 3: the revoked agents on C, each revoked in turn on A.
fn revocations(servers: &[PantryServer], ring: &KeyRing, revoked: &[Pair], progress: &Progress) -> Result<Revocation> {
    let (a, c) = (&servers[0], &servers[SERVERS - 1]);
    let ctx = zmq::Context::new();
    let end = Instant::now() + Duration::from_secs(30);
    let agents: Vec<Watched> =
        revoked.iter().enumerate().map(|(k, pair)| watched(&ctx, &c.endpoints, pair, k, end)).collect::<Result<_>>()?;
    let admin = Admin::connect(a, &ring.admin, ADMIN_NAME)?;
    let on_c = Admin::connect(c, &ring.admin, ADMIN_NAME)?;
    // Online on C (A's view may lag, or keep a record written out of
    // order: see the report).
    let filter = ClientFilter { application: Some(REVOKED_APP.into()), ..Default::default() };
    loop {
        let (_, online) = counts(&status(&on_c, &filter, Duration::from_secs(5))?);
        if online >= agents.len() {
            break;
        }
        if Instant::now() >= end {
            bail!("{online} of {} revoked agents online in c's status", agents.len());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let (_, online_on_a) = counts(&status(&admin, &filter, Duration::from_secs(5))?);
    progress.say(format!(
        "cluster: {} agents on c, online in c's status ({online_on_a} in a's); revoking each on a",
        agents.len()
    ));
    let log_before = c.process.log().matches("cut off a revoked key").count();
    let mut result = Revocation { tries: agents.len(), ..Default::default() };
    for agent in &agents {
        let (cut, answered) = revoke(&admin, agent)?;
        match cut {
            Some(ms) => result.cut_ms.push(ms),
            None => result.not_cut += 1,
        }
        result.answer_ms.extend(answered);
        std::thread::sleep(Duration::from_millis(100));
    }
    std::thread::sleep(Duration::from_millis(500));
    result.log_lines = c.process.log().matches("cut off a revoked key").count() - log_before;
    for (k, admin) in [&admin, &on_c].into_iter().enumerate() {
        let list = status(admin, &ClientFilter::default(), Duration::from_secs(10))?;
        result.listed_after[k] = list.iter().filter(|c| c.identity.starts_with(REVOKED_PREFIX)).count();
    }
    progress.say(format!(
        "cluster: revoked on a, cut off on c: p50 {} ms, max {} ms ({} not cut off; answer from a p50 {} ms; {} log \
         lines); status afterwards lists {} of them on a, {} on c",
        crate::harness::fmt(result.p50_ms()),
        crate::harness::fmt(result.max_ms()),
        result.not_cut,
        crate::harness::fmt(median(&result.answer_ms)),
        result.log_lines,
        result.listed_after[0],
        result.listed_after[1]
    ));
    Ok(result)
}

/// One revocation: when the agent's connection closed and when A answered
/// (ms after sending), each if it happened within [`CUT_TIMEOUT`].
fn revoke(admin: &Admin, agent: &Watched) -> Result<(Option<f64>, Option<f64>)> {
    for m in &agent.monitors {
        while monitor::read(m).is_some() {}
    }
    let start = Instant::now();
    let uuid = admin.send(client_revoke::request(&agent.identity))?;
    let end = start + CUT_TIMEOUT;
    let (mut cut, mut answered) = (None, None);
    while cut.is_none() || answered.is_none() {
        let left = end.saturating_duration_since(Instant::now());
        if left.is_zero() {
            break;
        }
        let mut items = [
            agent.monitors[0].as_poll_item(zmq::POLLIN),
            agent.monitors[1].as_poll_item(zmq::POLLIN),
            admin.socket().as_poll_item(zmq::POLLIN),
        ];
        zmq::poll(&mut items, left.as_millis().max(1) as i64)?;
        let admin_ready = items[2].is_readable();
        let at = start.elapsed().as_secs_f64() * 1000.0;
        for m in &agent.monitors {
            while let Some(event) = monitor::read(m) {
                if event.event == SocketEvent::Disconnected {
                    cut.get_or_insert(at);
                }
            }
        }
        if admin_ready && answered.is_none() {
            if let Some(answer) = admin.recv(&uuid, Instant::now() + Duration::from_millis(1)) {
                if let Some(error) = answer.error() {
                    bail!("RevokeClient {} refused: {error}", agent.identity);
                }
                answered = Some(at);
            }
        }
    }
    Ok((cut, answered))
}

/// The runs of consecutive agent numbers in `agents`.
fn runs(agents: &BTreeSet<usize>) -> Vec<Range<usize>> {
    let mut runs: Vec<Range<usize>> = Vec::new();
    for &i in agents {
        match runs.last_mut() {
            Some(run) if run.end == i => run.end += 1,
            _ => runs.push(i..i + 1),
        }
    }
    runs
}

/// The agent number of `identity` ([`identity`]).
fn agent_number(identity: &str) -> Option<usize> {
    identity.strip_prefix("agent-")?.parse().ok()
}

/// Glob patterns (`?` for a digit) that match exactly the identities of
/// agents `range`: `agent-01???` for 1000..2000.
pub fn identity_patterns(range: Range<usize>) -> Vec<String> {
    let mut patterns = Vec::new();
    let mut i = range.start;
    while i < range.end {
        let mut digits = 0;
        while digits < 5 && i % 10usize.pow(digits + 1) == 0 && i + 10usize.pow(digits + 1) <= range.end {
            digits += 1;
        }
        let mut pattern = identity(i);
        pattern.truncate(pattern.len() - digits as usize);
        pattern.extend(std::iter::repeat('?').take(digits as usize));
        patterns.push(pattern);
        i += 10usize.pow(digits);
    }
    patterns
}

/// One echo of the failover, as it is answered.
struct Track {
    uuid: String,
    sent_s: f64,
    asked: usize,
    listed: usize,
    offline: usize,
    answered: HashSet<String>,
    first: usize,
}

/// Asks `status` every 100 ms until `n` of the pools' agents are online or
/// `deadline` passed (a slow answer counts as none); how many were online
/// at the last answer.
fn agents_online(admin: &Admin, n: usize, deadline: Instant) -> usize {
    let mut online = 0;
    loop {
        let asked = Instant::now();
        if let Ok(list) = status(admin, &ClientFilter::default(), Duration::from_secs(5)) {
            online = list.iter().filter(|c| is_agent(&c.identity, n) && c.state == ONLINE).count();
        }
        if online >= n || Instant::now() >= deadline {
            return online;
        }
        std::thread::sleep(Duration::from_millis(100).saturating_sub(asked.elapsed()));
    }
}

/// Part 4 (the last: it kills B).
fn failover(
    cfg: &Config,
    s: &ClusterSettings,
    per: usize,
    servers: &mut [PantryServer],
    ring: &KeyRing,
    progress: &Progress,
) -> Result<Failover> {
    let total = SERVERS * per;
    let heartbeat = Duration::from_secs(s.heartbeat.as_secs().max(1));
    let endpoints: Vec<Endpoints> = servers.iter().map(|s| s.endpoints.clone()).collect();
    // Only the killed server's agents move: they fail over like the real
    // agent; the others check in every heartbeat without the machinery
    // (a DEALER monitor each), which leaves room for 1,000 per server
    // within the bench process's open-file limit.
    let staying = AgentOptions { heartbeat: Some(heartbeat), linger_zero: true, ..AgentOptions::default() };
    let started = Instant::now();
    let pools: Vec<Pool> = (0..SERVERS)
        .map(|k| {
            let options = if k == KILLED { AgentOptions::failing_over(heartbeat) } else { staying };
            Pool::start_on(Kind::Pantry, &endpoints, k, &ring.agents, k * per..(k + 1) * per, options)
        })
        .collect::<Result<_>>()?;
    let mut requester = Requester::connect(Kind::Pantry, &servers[0].endpoints, Some(&ring.admin), ADMIN_NAME)?;
    wait_until_reachable(&mut requester, &group_streams(total), cfg.reachable_timeout)
        .with_context(|| format!("{total} failing-over agents"))?;
    drop(requester);
    let admin = Admin::connect(&servers[0], &ring.admin, ADMIN_NAME)?;
    let online = agents_online(&admin, total, Instant::now() + Duration::from_secs(30));
    if online < total {
        bail!("only {online} of {total} agents online in a's status before the kill");
    }
    progress.say(format!(
        "cluster: {total} agents (heartbeat {} s, the three servers as hosts) online in {:.1} s; SIGKILL of server {}",
        heartbeat.as_secs(),
        started.elapsed().as_secs_f64(),
        SERVER_IDS[KILLED]
    ));
    let moving = KILLED * per..(KILLED + 1) * per;
    let targets: HashSet<String> = moving.clone().map(identity).collect();
    // Each echo goes to those that have not answered yet: an echo to
    // agents on another server carries the list of their identities, in
    // the request to each and in each answer (see the report), so echoing
    // all of them every time would load the servers with that alone.
    let mut remaining: BTreeSet<usize> = moving.collect();
    servers[KILLED].process.kill();
    let killed = Instant::now();
    let since = |at: Instant| at.duration_since(killed).as_secs_f64();
    let mut result = Failover {
        wanted_per_server: s.failover_agents_per_server,
        per_server: per,
        heartbeat_s: heartbeat.as_secs(),
        lease_s: s.lease.as_secs().max(2),
        killed: SERVER_IDS[KILLED].into(),
        moved_to: (1..SERVERS).map(|k| SERVER_IDS[(KILLED + k) % SERVERS]).collect::<Vec<_>>().join(" and "),
        echo_every_ms: s.echo_every.as_secs_f64() * 1000.0,
        ..Default::default()
    };
    let mut first: HashMap<String, f64> = HashMap::new();
    let mut tracks: Vec<Track> = Vec::new();
    let mut next_send = killed + s.echo_every;
    let deadline = killed + s.failover_timeout;
    // Sending stops once all answered or at the deadline; answers are
    // awaited a little longer.
    let mut stop_at: Option<Instant> = None;
    loop {
        let now = Instant::now();
        if stop_at.is_some_and(|at| now >= at) {
            break;
        }
        if stop_at.is_none() && now >= next_send && !remaining.is_empty() {
            let patterns: Vec<String> = runs(&remaining).into_iter().flat_map(identity_patterns).collect();
            let mut request = echo::request("pantry-bench");
            Identities::attach(&mut request, &patterns);
            let uuid = admin.send(request)?;
            let asked = remaining.len();
            tracks.push(Track {
                uuid,
                sent_s: since(now),
                asked,
                listed: 0,
                offline: 0,
                answered: HashSet::new(),
                first: 0,
            });
            next_send += s.echo_every;
        }
        if stop_at.is_none() && (remaining.is_empty() || now >= deadline) {
            stop_at = Some(now + ECHO_GRACE);
        }
        let uuids: Vec<String> = tracks.iter().map(|t| t.uuid.clone()).collect();
        let wait_until = stop_at.unwrap_or(next_send).min(Instant::now() + Duration::from_millis(50));
        let Some(m) = admin.recv_any(&uuids, wait_until) else { continue };
        let arrived = since(Instant::now());
        let Some(track) = tracks.iter_mut().find(|t| t.uuid == m.uuid()) else { continue };
        if m.is_client_response_list() {
            track.listed = recipients::online(&m).iter().filter(|id| targets.contains(*id)).count();
            track.offline = recipients::offline(&m).iter().filter(|o| targets.contains(&o.identity)).count();
        } else if m.error().is_none() && targets.contains(&m.metadata.from) {
            track.answered.insert(m.metadata.from.clone());
            if !first.contains_key(&m.metadata.from) {
                first.insert(m.metadata.from.clone(), arrived);
                track.first += 1;
            }
            if let Some(i) = agent_number(&m.metadata.from) {
                remaining.remove(&i);
            }
        }
    }
    result.answered = first.len();
    let times: Vec<f64> = first.values().copied().collect();
    result.first_answer_p50_s = percentile(&times, 50.0);
    result.all_answered_s = (first.len() >= per).then(|| times.iter().copied().fold(0.0, f64::max));
    result.echoes = tracks
        .iter()
        .map(|t| GapEcho {
            sent_s: t.sent_s,
            asked: t.asked,
            listed: t.listed,
            answered: t.answered.len(),
            offline: t.offline,
            silent: t.asked.saturating_sub(t.answered.len() + t.offline),
            first: t.first,
        })
        .collect();
    result.moves = pools.iter().map(Pool::moves).collect();
    result.failed_moves = pools.iter().map(Pool::failed_moves).sum();
    result.move_error = pools.iter().find_map(Pool::move_error);
    progress.say(format!(
        "cluster: {} of {per} agents of {} answered through {} by {} s after the kill (median agent {} s); {} echoes, \
         moves by the agents of a, b, c: {:?} ({} failed)",
        result.answered,
        result.killed,
        result.moved_to,
        result.all_answered_s.map_or("-".into(), |v| format!("{v:.2}")),
        result.first_answer_p50_s.map_or("-".into(), |v| format!("{v:.2}")),
        result.echoes.len(),
        result.moves,
        result.failed_moves
    ));
    // A moment for C's records to reach A, if they have not yet.
    agents_online(&admin, total, Instant::now() + Duration::from_secs(10));
    let list = status(&admin, &ClientFilter::default(), Duration::from_secs(10))?;
    let (agents, others): (Vec<_>, Vec<_>) = list.into_iter().partition(|c| is_agent(&c.identity, total));
    (result.status_listed, result.status_online) = counts(&agents);
    result.status_others = others.len();
    let run = echo_all(&admin, Duration::from_secs(10))?;
    result.echo_offline_agents = run.offline.iter().filter(|id| is_agent(id, total)).count();
    progress.say(format!(
        "cluster: status on a: {} agents listed, {} online ({} other clients listed); echo to all: {} answers, \
         {} listed, {} named offline ({} of them agents)",
        result.status_listed,
        result.status_online,
        result.status_others,
        run.answers,
        run.listed,
        run.offline.len(),
        result.echo_offline_agents
    ));
    result.echo_all = Some(run);
    drop(pools);
    Ok(result)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identity_patterns_cover_a_range_exactly() {
        assert_eq!(identity_patterns(1000..2000), ["agent-01???"]);
        assert_eq!(identity_patterns(3..6), ["agent-00003", "agent-00004", "agent-00005"]);
        assert_eq!(
            identity_patterns(995..1012),
            [
                "agent-00995",
                "agent-00996",
                "agent-00997",
                "agent-00998",
                "agent-00999",
                "agent-0100?",
                "agent-01010",
                "agent-01011"
            ]
        );
        assert_eq!(
            identity_patterns(0..250),
            ["agent-000??", "agent-001??", "agent-0020?", "agent-0021?", "agent-0022?", "agent-0023?", "agent-0024?"]
        );
        assert!(identity_patterns(5..5).is_empty());
    }

    #[test]
    fn runs_of_agent_numbers() {
        let set: BTreeSet<usize> = [3, 4, 5, 9, 11, 12].into_iter().collect();
        assert_eq!(runs(&set), [3..6, 9..10, 11..13]);
        assert_eq!(agent_number(&identity(1234)), Some(1234));
        assert_eq!(agent_number("revoked-001"), None);
    }
}
