//! Presence under CURVE, against fresh real `pantry-server`s that know the
//! bench's admin key and the agents' keys.
//!
//! 1. **Offline agents are named at once**: N agents (the real agent's
//!    behaviour: a heartbeat and a registration on every reconnection),
//!    K of them killed (their sockets dropped with linger 0, so the server
//!    sees the TCP connections close); after a wait, the admin's `echo` to
//!    every agent. Figures: the time until the last answer of the N − K,
//!    and whether the server's list named exactly the K offline
//!    (`custom.offline`). Before presence, the admin waited for the K for
//!    its whole `--timeout`. The real `pantry-admin echo` is run once too.
//! 2. **SIGKILL → offline**: a real `pantry-client` online, SIGKILLed; a
//!    raw `Status` request every 10 ms until it says `offline`.
//! 3. **Server restart**: N agents registered; the server stopped (SIGTERM)
//!    and started again on the same root_dir and ports. Figures: what
//!    `status` lists right after the start (every agent, offline until it
//!    checks in), and the time until all are online again. Before that, the
//!    server's RSS and idle CPU per registered agent.
//!
//! Every wait is bounded.

use std::time::{Duration, Instant};

use anyhow::{bail, Context as _, Result};
use pantry_shared::commands::status::{self, ClientStatus, OFFLINE, ONLINE};
use pantry_shared::commands::{echo, recipients};
use pantry_shared::filter::ClientFilter;
use pantry_shared::keys::{KnownKey, Role};

use crate::agents::{group_streams, identity, AgentOptions, Kind, Pool};
use crate::enrollment::{Admin, Setup};
use crate::keys::{self, Pair};
use crate::procs::{cpu_ns, run_bounded, PantryServer};
use crate::requesters::{fanout, wait_until_reachable, Requester};
use crate::stats::median;

/// What the presence scenario does.
#[derive(Debug, Clone, Copy)]
pub struct PresenceSettings {
    /// Part 1: agents, of which `killed` are killed `kill_wait` before
    /// `echoes` echoes to all.
    pub agents: usize,
    pub killed: usize,
    pub kill_wait: Duration,
    pub echoes: usize,
    /// Part 2: SIGKILL → offline runs with the real `pantry-client`.
    pub kill_repeats: usize,
    /// Part 3: agents across a server restart.
    pub restart_agents: usize,
    /// The simulated agents' heartbeat (whole seconds).
    pub heartbeat: Duration,
    /// How long the idle server's CPU is measured with the part 3 agents
    /// registered.
    pub idle_window: Duration,
    /// `pantry-admin --timeout` (its default, 10 s): how long an admin
    /// waited for an offline client before presence.
    pub admin_timeout: Duration,
    /// Longest wait for a pool to be reachable.
    pub reachable_timeout: Duration,
}

/// One echo to every agent, some of them killed.
#[derive(Debug, Clone, Default)]
pub struct EchoRun {
    /// From sending to the last answer (to the list when none was expected).
    pub last_answer_ms: f64,
    pub answers: usize,
    /// Online clients the server listed.
    pub listed: usize,
    /// The clients the server named offline.
    pub offline: Vec<String>,
}

/// The real `pantry-admin echo`, once.
#[derive(Debug, Clone, Default)]
pub struct AdminEcho {
    pub wall_ms: f64,
    pub exit_code: Option<i32>,
    /// Output lines naming an offline client.
    pub offline_lines: usize,
    /// Its last line (`90 of 100 clients answered...`).
    pub last_line: String,
}

/// Part 1.
#[derive(Debug, Clone, Default)]
pub struct OfflineEcho {
    pub agents: usize,
    pub killed: Vec<String>,
    pub kill_wait_s: f64,
    pub runs: Vec<EchoRun>,
    pub admin_timeout_s: f64,
    pub cli: Option<AdminEcho>,
}

impl OfflineEcho {
    pub fn median_ms(&self) -> Option<f64> {
        median(&self.times())
    }

    pub fn max_ms(&self) -> Option<f64> {
        self.times().into_iter().reduce(f64::max)
    }

    fn times(&self) -> Vec<f64> {
        self.runs.iter().map(|r| r.last_answer_ms).collect()
    }

    /// Echoes that got every live agent's answer and named exactly the
    /// killed ones offline.
    pub fn correct_runs(&self) -> usize {
        let live = self.agents - self.killed.len();
        self.runs.iter().filter(|r| r.answers == live && r.listed == live && r.offline == self.killed).count()
    }
}

/// Part 2: one SIGKILL.
#[derive(Debug, Clone, Copy, Default)]
pub struct KillRun {
    /// From SIGKILL to the first `Status` answer saying offline.
    pub offline_ms: f64,
    /// `Status` requests sent until then.
    pub polls: usize,
}

/// Part 3.
#[derive(Debug, Clone, Default)]
pub struct Restart {
    pub agents: usize,
    pub heartbeat_s: u64,
    /// Server RSS before the agents connected, and with all registered.
    pub rss0_kib: Option<u64>,
    pub rss_kib: Option<u64>,
    /// Server CPU while idle (nothing asked), ms per second, with no agent
    /// and with every agent registered.
    pub idle_cpu_ms_per_s_empty: Option<f64>,
    pub idle_cpu_ms_per_s: Option<f64>,
    /// The growth between the two per agent, µs per second.
    pub idle_cpu_us_per_agent_s: Option<f64>,
    pub idle_window_s: f64,
    /// SIGTERM → exited, and exec → `pantry-server started`, seconds.
    pub stop_s: f64,
    pub start_s: f64,
    /// The first `status` after the start: clients listed, how many
    /// offline, and when it was answered (ms after the start).
    pub gap_listed: usize,
    pub gap_offline: usize,
    pub gap_status_ms: f64,
    /// When every agent was online again, seconds after the new server
    /// started, and after SIGTERM.
    pub all_online_s: Option<f64>,
    pub all_online_since_term_s: Option<f64>,
    /// Online at the last look (all, unless the wait ran out).
    pub online_at_end: usize,
    /// An echo to every agent once they were back: answers, ms.
    pub echo_answers: Option<usize>,
    pub echo_ms: Option<f64>,
}

impl Restart {
    /// Server RSS growth per registered agent, KiB.
    pub fn kib_per_agent(&self) -> Option<f64> {
        let (zero, at) = (self.rss0_kib?, self.rss_kib?);
        (self.agents > 0).then(|| (at as f64 - zero as f64) / self.agents as f64)
    }

    /// The idle CPU growth per heartbeat registration (N / heartbeat of
    /// them per second), µs.
    pub fn cpu_us_per_heartbeat(&self) -> Option<f64> {
        let per_agent_s = self.idle_cpu_us_per_agent_s?;
        Some(per_agent_s * self.heartbeat_s as f64)
    }

    /// Back within two heartbeat intervals of the new server's start.
    pub fn back_in_time(&self) -> Option<bool> {
        self.all_online_s.map(|s| s < 2.0 * self.heartbeat_s as f64)
    }
}

#[derive(Debug, Clone, Default)]
pub struct PresenceResult {
    pub echo: Option<OfflineEcho>,
    pub kills: Vec<KillRun>,
    pub kill_repeats: usize,
    pub restart: Option<Restart>,
    /// Parts or runs that failed, and why.
    pub failures: Vec<String>,
}

impl PresenceResult {
    pub fn median_kill_ms(&self) -> Option<f64> {
        median(&self.kills.iter().map(|k| k.offline_ms).collect::<Vec<_>>())
    }

    pub fn max_kill_ms(&self) -> Option<f64> {
        self.kills.iter().map(|k| k.offline_ms).reduce(f64::max)
    }
}

/// The `pantry-client` identity of SIGKILL run `r`.
fn killed_client(r: usize) -> String {
    format!("presence-kill-{r:02}")
}

/// Runs the three parts; a part that fails is recorded, the others run.
pub fn run(setup: &Setup, s: PresenceSettings, say: &dyn Fn(String)) -> Result<PresenceResult> {
    let mut result = PresenceResult { kill_repeats: s.kill_repeats, ..Default::default() };
    let agents = s.agents.max(s.killed);
    let pairs = keys::generate(agents)?;
    let client_pairs = keys::generate(s.kill_repeats)?;
    let mut known: Vec<KnownKey> =
        pairs.iter().enumerate().map(|(i, p)| keys::known(p.public_z85(), identity(i), Role::Client)).collect();
    known.extend(
        client_pairs.iter().enumerate().map(|(r, p)| keys::known(p.public_z85(), killed_client(r), Role::Client)),
    );
    known.push(keys::known(setup.admin.public_z85(), setup.admin_name.into(), Role::Admin));
    {
        let server = PantryServer::start(&setup.server_bin, Some((setup.server, &known)), setup.log_level)?;
        say(format!("presence: pantry-server pid {} for the offline echo and SIGKILL runs", server.process.pid));
        match offline_echo(&server, setup, s, &pairs, say) {
            Ok(e) => result.echo = Some(e),
            Err(e) => {
                say(format!("presence: offline echo failed: {e:#}"));
                result.failures.push(format!("offline echo: {e:#}"));
            }
        }
        match Admin::connect(&server, setup.admin, setup.admin_name) {
            Ok(admin) => {
                for (r, pair) in client_pairs.iter().enumerate() {
                    match kill_run(&server, setup, &admin, r, pair) {
                        Ok(k) => {
                            say(format!(
                                "presence: pantry-client SIGKILL → offline in status {:.1} ms ({} polls)",
                                k.offline_ms, k.polls
                            ));
                            result.kills.push(k);
                        }
                        Err(e) => {
                            say(format!("presence: SIGKILL run {} failed: {e:#}", r + 1));
                            result.failures.push(format!("SIGKILL run {}: {e:#}", r + 1));
                        }
                    }
                }
            }
            Err(e) => result.failures.push(format!("SIGKILL runs: {e:#}")),
        }
    }
    if s.restart_agents > 0 {
        match restart(setup, s, say) {
            Ok(r) => result.restart = Some(r),
            Err(e) => {
                say(format!("presence: restart failed: {e:#}"));
                result.failures.push(format!("restart: {e:#}"));
            }
        }
    }
    Ok(result)
}

/// The clients `status` lists for `filter`.
pub(crate) fn status(admin: &Admin, filter: &ClientFilter, timeout: Duration) -> Result<Vec<ClientStatus>> {
    let uuid = admin.send(status::request(filter))?;
    let answer = admin
        .recv(&uuid, Instant::now() + timeout)
        .with_context(|| format!("no answer to Status within {timeout:?}"))?;
    if let Some(error) = answer.error() {
        bail!("Status refused: {error}");
    }
    Ok(status::clients(&answer))
}

/// Listed and online clients.
pub(crate) fn counts(list: &[ClientStatus]) -> (usize, usize) {
    (list.len(), list.iter().filter(|c| c.state == ONLINE).count())
}

/// Asks `status` every `every` until `n` clients are online or `deadline`
/// passed. Returns when they were (`None`: not by the deadline) and how
/// many were online at the last look.
pub(crate) fn wait_online(
    admin: &Admin,
    n: usize,
    deadline: Instant,
    every: Duration,
) -> Result<(Option<Instant>, usize)> {
    loop {
        let asked = Instant::now();
        let left = deadline.saturating_duration_since(asked).max(Duration::from_millis(500));
        let (_, online) = counts(&status(admin, &ClientFilter::default(), left.min(Duration::from_secs(10)))?);
        if online >= n {
            return Ok((Some(Instant::now()), online));
        }
        if Instant::now() >= deadline {
            return Ok((None, online));
        }
        std::thread::sleep(every.saturating_sub(asked.elapsed()));
    }
}

/// The server's CPU time (all threads) over `window`, ms per second.
fn idle_cpu_ms_per_s(pid: u32, window: Duration) -> Option<f64> {
    let before = cpu_ns(pid)?;
    let from = Instant::now();
    std::thread::sleep(window);
    let after = cpu_ns(pid)?;
    Some(after.saturating_sub(before) as f64 / 1e6 / from.elapsed().as_secs_f64())
}

fn ms(since: Instant) -> f64 {
    since.elapsed().as_secs_f64() * 1000.0
}

/// An echo to every client: the list first (who will answer, who is
/// offline), then the answers.
pub(crate) fn echo_all(admin: &Admin, timeout: Duration) -> Result<EchoRun> {
    let start = Instant::now();
    let uuid = admin.send(echo::request("pantry-bench"))?;
    let end = start + timeout;
    let mut run = EchoRun::default();
    let mut expected = None;
    while expected.map_or(true, |e| run.answers < e) {
        let Some(m) = admin.recv(&uuid, end) else { break };
        if m.is_client_response_list() {
            let online = recipients::online(&m);
            run.listed = online.len();
            run.offline = recipients::offline(&m).into_iter().map(|o| o.identity).collect();
            run.offline.sort();
            expected = Some(run.listed);
        } else if let Some(error) = m.error().filter(|_| expected.is_none()) {
            bail!("echo refused: {error}");
        } else {
            run.answers += 1;
        }
        run.last_answer_ms = ms(start);
    }
    if expected.is_none() {
        bail!("no recipient list within {timeout:?}");
    }
    Ok(run)
}

fn offline_echo(
    server: &PantryServer,
    setup: &Setup,
    s: PresenceSettings,
    pairs: &[Pair],
    say: &dyn Fn(String),
) -> Result<OfflineEcho> {
    let n = s.agents.max(s.killed);
    let live_n = n - s.killed;
    let options = AgentOptions::like_the_real_agent(s.heartbeat);
    let live = Pool::start_with(Kind::Pantry, &server.endpoints, pairs, 0..live_n, options)?;
    let doomed = Pool::start_with(Kind::Pantry, &server.endpoints, pairs, live_n..n, options)?;
    let mut requester = Requester::connect(Kind::Pantry, &server.endpoints, Some(setup.admin), setup.admin_name)?;
    wait_until_reachable(&mut requester, &group_streams(n), s.reachable_timeout)?;
    let admin = Admin::connect(server, setup.admin, setup.admin_name)?;
    let (listed, online) = counts(&status(&admin, &ClientFilter::default(), Duration::from_secs(10))?);
    if online < n {
        bail!("{online} of {n} agents online ({listed} listed) before the kill");
    }
    drop(doomed);
    let killed_at = Instant::now();
    let killed: Vec<String> = (live_n..n).map(identity).collect();
    say(format!("presence: {} of {n} agents killed; echo to all in {:.1} s", killed.len(), s.kill_wait.as_secs_f64()));
    std::thread::sleep(s.kill_wait.saturating_sub(killed_at.elapsed()));
    let mut result = OfflineEcho {
        agents: n,
        killed,
        kill_wait_s: s.kill_wait.as_secs_f64(),
        admin_timeout_s: s.admin_timeout.as_secs_f64(),
        ..Default::default()
    };
    for _ in 0..s.echoes.max(1) {
        let run = echo_all(&admin, s.admin_timeout)?;
        say(format!(
            "presence: echo to {n}: last of {} answers at {:.2} ms, {} named offline",
            run.answers,
            run.last_answer_ms,
            run.offline.len()
        ));
        result.runs.push(run);
        std::thread::sleep(Duration::from_millis(100));
    }
    // The real admin, as an operator runs it.
    let mut command = server.admin_command(&setup.admin_bin, setup.admin)?;
    command.args(["--timeout", &s.admin_timeout.as_secs().max(1).to_string(), "echo", "pantry-bench"]);
    let started = Instant::now();
    let out = run_bounded(&mut command, s.admin_timeout + Duration::from_secs(10))?;
    let lines: Vec<&str> = out.stdout.lines().chain(out.stderr.lines()).filter(|l| !l.trim().is_empty()).collect();
    result.cli = Some(AdminEcho {
        wall_ms: ms(started),
        exit_code: out.status.and_then(|s| s.code()),
        offline_lines: lines.iter().filter(|l| l.contains(": offline")).count(),
        last_line: lines.iter().rev().find(|l| l.contains("answered")).unwrap_or(&"").trim().to_owned(),
    });
    drop(live);
    Ok(result)
}

fn kill_run(server: &PantryServer, setup: &Setup, admin: &Admin, r: usize, pair: &Pair) -> Result<KillRun> {
    let identity = killed_client(r);
    let filter = ClientFilter { identity: Some(identity.clone()), ..Default::default() };
    let mut client = server.start_client(&setup.client_bin, &identity, Some(pair))?;
    let end = Instant::now() + Duration::from_secs(20);
    loop {
        if status(admin, &filter, Duration::from_secs(5))?.iter().any(|c| c.state == ONLINE) {
            break;
        }
        if let Some(exit) = client.exited() {
            bail!("{identity} exited ({exit}) before it was online:\n{}", client.log());
        }
        if Instant::now() >= end {
            bail!("{identity} not online in status within 20 s:\n{}", client.log());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let killed = Instant::now();
    client.kill();
    let mut polls = 0;
    let end = killed + Duration::from_secs(10);
    loop {
        let asked = Instant::now();
        let list = status(admin, &filter, Duration::from_secs(2))?;
        polls += 1;
        if list.iter().any(|c| c.state == OFFLINE) {
            return Ok(KillRun { offline_ms: ms(killed), polls });
        }
        if Instant::now() >= end {
            bail!("{identity} still {:?} in status 10 s after SIGKILL", list.first().map(|c| c.state.clone()));
        }
        std::thread::sleep(Duration::from_millis(10).saturating_sub(asked.elapsed()));
    }
}

/// Part 3 on a fresh server, with the RSS and idle CPU per registered agent
/// before the restart.
fn restart(setup: &Setup, s: PresenceSettings, say: &dyn Fn(String)) -> Result<Restart> {
    let n = s.restart_agents;
    let pairs = keys::generate(n)?;
    let mut known: Vec<KnownKey> =
        pairs.iter().enumerate().map(|(i, p)| keys::known(p.public_z85(), identity(i), Role::Client)).collect();
    known.push(keys::known(setup.admin.public_z85(), setup.admin_name.into(), Role::Admin));
    let mut server = PantryServer::start(&setup.server_bin, Some((setup.server, &known)), setup.log_level)?;
    std::thread::sleep(Duration::from_millis(200));
    let heartbeat_s = s.heartbeat.as_secs().max(1);
    let pid = server.process.pid;
    let mut result = Restart {
        agents: n,
        heartbeat_s,
        rss0_kib: server.process.rss_kib(),
        idle_window_s: s.idle_window.as_secs_f64(),
        idle_cpu_ms_per_s_empty: idle_cpu_ms_per_s(pid, s.idle_window),
        ..Default::default()
    };
    let pool = Pool::start_with(
        Kind::Pantry,
        &server.endpoints,
        &pairs,
        0..n,
        AgentOptions::like_the_real_agent(Duration::from_secs(heartbeat_s)),
    )?;
    let mut requester = Requester::connect(Kind::Pantry, &server.endpoints, Some(setup.admin), setup.admin_name)?;
    wait_until_reachable(&mut requester, &group_streams(n), s.reachable_timeout)?;
    drop(requester);
    let admin = Admin::connect(&server, setup.admin, setup.admin_name)?;
    let (all, online) = wait_online(&admin, n, Instant::now() + Duration::from_secs(30), Duration::from_millis(100))?;
    if all.is_none() {
        bail!("only {online} of {n} agents online before the restart");
    }
    std::thread::sleep(Duration::from_millis(500));
    result.rss_kib = server.process.rss_kib();
    result.idle_cpu_ms_per_s = idle_cpu_ms_per_s(pid, s.idle_window);
    if let (Some(empty), Some(loaded)) = (result.idle_cpu_ms_per_s_empty, result.idle_cpu_ms_per_s) {
        result.idle_cpu_us_per_agent_s = Some((loaded - empty) * 1000.0 / n.max(1) as f64);
    }
    say(format!(
        "presence: {n} agents registered (heartbeat {heartbeat_s} s): {} KiB RSS per agent, idle server CPU {} µs \
         per agent per second; restarting the server",
        result.kib_per_agent().map_or("-".into(), |v| format!("{v:.1}")),
        result.idle_cpu_us_per_agent_s.map_or("-".into(), |v| format!("{v:.2}"))
    ));
    drop(admin);

    let restarted = server.restart()?;
    result.stop_s = restarted.stopped.duration_since(restarted.stopping).as_secs_f64();
    result.start_s = restarted.started.duration_since(restarted.stopped).as_secs_f64();
    let admin = Admin::connect(&server, setup.admin, setup.admin_name)?;
    let gap = status(&admin, &ClientFilter::default(), Duration::from_secs(10))?;
    result.gap_status_ms = restarted.started.elapsed().as_secs_f64() * 1000.0;
    result.gap_listed = gap.len();
    result.gap_offline = gap.iter().filter(|c| c.state == OFFLINE).count();
    let deadline = restarted.started + 2 * Duration::from_secs(heartbeat_s) + Duration::from_secs(30);
    let (all, online) = wait_online(&admin, n, deadline, Duration::from_millis(100))?;
    result.online_at_end = online;
    result.all_online_s = all.map(|at| at.duration_since(restarted.started).as_secs_f64());
    result.all_online_since_term_s = all.map(|at| at.duration_since(restarted.stopping).as_secs_f64());
    say(format!(
        "presence: restart (stop {:.2} s, start {:.2} s): status {:.0} ms after the start listed {} ({} offline); \
         all {n} online {} s after the start",
        result.stop_s,
        result.start_s,
        result.gap_status_ms,
        result.gap_listed,
        result.gap_offline,
        result.all_online_s.map_or_else(|| format!("not ({online} online)"), |v| format!("{v:.2}"))
    ));
    if all.is_some() {
        let mut requester = Requester::connect(Kind::Pantry, &server.endpoints, Some(setup.admin), setup.admin_name)?;
        let f = fanout(&mut requester, n, Duration::from_secs(10), Duration::from_secs(1))?;
        result.echo_answers = Some(f.answers);
        result.echo_ms = (f.answers > 0).then_some(f.elapsed.as_secs_f64() * 1000.0);
    }
    drop(pool);
    Ok(result)
}
