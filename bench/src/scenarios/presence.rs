//! Presence (CURVE), against fresh servers that know the admin's and the
//! agents' keys: killed agents named offline by an echo at once (the
//! admin used to wait for its whole `--timeout`), a SIGKILLed real
//! `pantry-client` offline in `status`, and a server restart with every
//! agent back within two heartbeats. The section says how each is timed.
//! Every wait is bounded.

use std::fmt::Write as _;
use std::time::{Duration, Instant};

use anyhow::{bail, Result};
use pantry_shared::commands::status::{OFFLINE, ONLINE};
use pantry_shared::filter::ClientFilter;
use pantry_shared::keys::{KnownKey, Role};
use serde::{Deserialize, Serialize};

use crate::common::admin::{counts, Admin, EchoRun};
use crate::common::agents::{identity, AgentOptions, Kind, Pool};
use crate::common::env::{seconds, Env, Parts};
use crate::common::keys::{self, Pair};
use crate::common::markdown::{change, compared, count, failures, num, secs, targets_table, Previous, Target};
use crate::common::procs::{cpu_ns, run_bounded, PantryServer};
use crate::common::requesters::{fanout, Requester};
use crate::common::ring::{KeyRing, ADMIN_NAME};
use crate::common::stats::{median, Both};

/// Offline clients named at once, a killed agent offline within a second.
const OFFLINE_ECHO_TARGET_MS: f64 = 100.0;
const KILL_TARGET_MS: f64 = 1000.0;

/// What the presence scenario does.
#[derive(Debug, Clone, Copy, clap::Args, Serialize, Deserialize)]
pub struct Settings {
    /// Agents the admin echoes to, of which --killed are killed first.
    #[arg(long, default_value_t = 100)]
    pub agents: usize,
    #[arg(long, default_value_t = 10)]
    pub killed: usize,
    /// Seconds between the kill and the echoes.
    #[arg(long, value_parser = seconds, default_value = "5")]
    pub kill_wait: Duration,
    /// Echoes to the agents, some of them killed.
    #[arg(long, default_value_t = 5)]
    pub echoes: usize,
    /// SIGKILL → offline runs with the real `pantry-client`.
    #[arg(long, default_value_t = 5)]
    pub kill_repeats: usize,
    /// Agents across a server restart.
    #[arg(long, default_value_t = 1000)]
    pub restart_agents: usize,
    /// The simulated agents' heartbeat, seconds.
    #[arg(long, value_parser = seconds, default_value = "5")]
    pub heartbeat: Duration,
    /// How long the idle server's CPU is measured, with no agent and with
    /// the restart's agents registered, seconds.
    #[arg(long, value_parser = seconds, default_value = "10")]
    pub idle_window: Duration,
    /// `pantry-admin --timeout` (its default): how long an admin waited for
    /// an offline client before presence, seconds.
    #[arg(long, value_parser = seconds, default_value = "10")]
    pub admin_timeout: Duration,
}

/// The real `pantry-admin echo`, once.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct AdminEcho {
    pub wall_ms: f64,
    pub exit_code: Option<i32>,
    /// Output lines naming an offline client.
    pub offline_lines: usize,
    /// Its last line (`90 of 100 clients answered...`).
    pub last_line: String,
}

/// Part 1.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
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
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize)]
pub struct KillRun {
    /// From SIGKILL to the first `Status` answer saying offline.
    pub offline_ms: f64,
    /// `Status` requests sent until then.
    pub polls: usize,
}

/// Part 3.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
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

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Figures {
    pub echo: Option<OfflineEcho>,
    pub kills: Vec<KillRun>,
    pub kill_repeats: usize,
    pub restart: Option<Restart>,
    /// Parts or runs that failed, and why.
    pub failures: Vec<String>,
}

impl Figures {
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
pub fn run(env: &Env, ring: &KeyRing, s: &Settings) -> Result<Figures> {
    // Agents with a DEALER monitor each, within the open-file limit.
    let most = env.limits.max_monitored_agents();
    let agents = s.agents.max(s.killed).min(most);
    let s = Settings { agents, killed: s.killed.min(agents), restart_agents: s.restart_agents.min(most), ..*s };
    let mut parts = Parts::new(env, "presence");
    let pairs = keys::generate(agents)?;
    let client_pairs = keys::generate(s.kill_repeats)?;
    let mut known: Vec<KnownKey> =
        pairs.iter().enumerate().map(|(i, p)| keys::known(p.public_z85(), identity(i), Role::Client)).collect();
    known.extend(
        client_pairs.iter().enumerate().map(|(r, p)| keys::known(p.public_z85(), killed_client(r), Role::Client)),
    );
    known.push(keys::known(ring.admin.public_z85(), ADMIN_NAME.into(), Role::Admin));
    let server = env.server(Some((&ring.server, &known)), "")?;
    env.say(format!("presence: pantry-server pid {} for the offline echo and SIGKILL runs", server.process.pid));
    let echo = parts.part("offline echo", offline_echo(env, ring, &server, s, &pairs));
    let mut kills = Vec::new();
    if let Some(admin) = parts.part("SIGKILL runs", Admin::connect(&server, &ring.admin, ADMIN_NAME)) {
        for (r, pair) in client_pairs.iter().enumerate() {
            let run = parts.part(&format!("SIGKILL run {}", r + 1), kill_run(env, &server, &admin, r, pair));
            if let Some(k) = run {
                env.say(format!(
                    "presence: pantry-client SIGKILL → offline in {:.1} ms ({} polls)",
                    k.offline_ms, k.polls
                ));
                kills.push(k);
            }
        }
    }
    drop(server);
    let restart = if s.restart_agents > 0 { parts.part("restart", restart(env, ring, s)) } else { None };
    Ok(Figures { echo, kills, kill_repeats: s.kill_repeats, restart, failures: parts.failures })
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

fn offline_echo(env: &Env, ring: &KeyRing, server: &PantryServer, s: Settings, pairs: &[Pair]) -> Result<OfflineEcho> {
    let n = s.agents.max(s.killed);
    let live_n = n - s.killed;
    let options = AgentOptions::like_the_real_agent(s.heartbeat);
    let live = Pool::start_with(Kind::Pantry, &server.endpoints, pairs, 0..live_n, options.clone())?;
    let doomed = Pool::start_with(Kind::Pantry, &server.endpoints, pairs, live_n..n, options)?;
    env.reach(&server.endpoints, ring, n)?;
    let admin = Admin::connect(server, &ring.admin, ADMIN_NAME)?;
    let (listed, online) = counts(&admin.status(&ClientFilter::default(), Duration::from_secs(10))?);
    if online < n {
        bail!("{online} of {n} agents online ({listed} listed) before the kill");
    }
    drop(doomed);
    let killed_at = Instant::now();
    let killed: Vec<String> = (live_n..n).map(identity).collect();
    env.say(format!(
        "presence: {} of {n} agents killed; echo to all in {:.1} s",
        killed.len(),
        s.kill_wait.as_secs_f64()
    ));
    std::thread::sleep(s.kill_wait.saturating_sub(killed_at.elapsed()));
    let mut result = OfflineEcho {
        agents: n,
        killed,
        kill_wait_s: s.kill_wait.as_secs_f64(),
        admin_timeout_s: s.admin_timeout.as_secs_f64(),
        ..Default::default()
    };
    for _ in 0..s.echoes.max(1) {
        let run = admin.echo_all(s.admin_timeout)?;
        env.say(format!(
            "presence: echo to {n}: last of {} answers at {:.2} ms, {} named offline",
            run.answers,
            run.last_answer_ms,
            run.offline.len()
        ));
        result.runs.push(run);
        std::thread::sleep(Duration::from_millis(100));
    }
    // The real admin, as an operator runs it.
    let mut command = server.admin_command(&env.bins.admin, &ring.admin)?;
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

fn kill_run(env: &Env, server: &PantryServer, admin: &Admin, r: usize, pair: &Pair) -> Result<KillRun> {
    let identity = killed_client(r);
    let filter = ClientFilter { identity: Some(identity.clone()), ..Default::default() };
    let mut client = server.start_client(&env.bins.client, &identity, Some(pair))?;
    let end = Instant::now() + Duration::from_secs(20);
    loop {
        if admin.status(&filter, Duration::from_secs(5))?.iter().any(|c| c.state == ONLINE) {
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
        let list = admin.status(&filter, Duration::from_secs(2))?;
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
fn restart(env: &Env, ring: &KeyRing, s: Settings) -> Result<Restart> {
    let n = s.restart_agents;
    let pairs = keys::generate(n)?;
    let mut known: Vec<KnownKey> =
        pairs.iter().enumerate().map(|(i, p)| keys::known(p.public_z85(), identity(i), Role::Client)).collect();
    known.push(keys::known(ring.admin.public_z85(), ADMIN_NAME.into(), Role::Admin));
    let mut server = env.server(Some((&ring.server, &known)), "")?;
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
    env.reach(&server.endpoints, ring, n)?;
    let admin = Admin::connect(&server, &ring.admin, ADMIN_NAME)?;
    let (all, online) = admin.wait_online(n, Instant::now() + Duration::from_secs(30), Duration::from_millis(100))?;
    if all.is_none() {
        bail!("only {online} of {n} agents online before the restart");
    }
    std::thread::sleep(Duration::from_millis(500));
    result.rss_kib = server.process.rss_kib();
    result.idle_cpu_ms_per_s = idle_cpu_ms_per_s(pid, s.idle_window);
    if let (Some(empty), Some(loaded)) = (result.idle_cpu_ms_per_s_empty, result.idle_cpu_ms_per_s) {
        result.idle_cpu_us_per_agent_s = Some((loaded - empty) * 1000.0 / n.max(1) as f64);
    }
    env.say(format!(
        "presence: {n} agents registered (heartbeat {heartbeat_s} s): {} KiB RSS per agent, idle server CPU {} µs \
         per agent per second; restarting the server",
        result.kib_per_agent().map_or("-".into(), |v| format!("{v:.1}")),
        result.idle_cpu_us_per_agent_s.map_or("-".into(), |v| format!("{v:.2}"))
    ));
    drop(admin);

    let restarted = server.restart()?;
    result.stop_s = restarted.stopped.duration_since(restarted.stopping).as_secs_f64();
    result.start_s = restarted.started.duration_since(restarted.stopped).as_secs_f64();
    let admin = Admin::connect(&server, &ring.admin, ADMIN_NAME)?;
    let gap = admin.status(&ClientFilter::default(), Duration::from_secs(10))?;
    result.gap_status_ms = restarted.started.elapsed().as_secs_f64() * 1000.0;
    result.gap_listed = gap.len();
    result.gap_offline = gap.iter().filter(|c| c.state == OFFLINE).count();
    let deadline = restarted.started + 2 * Duration::from_secs(heartbeat_s) + Duration::from_secs(30);
    let (all, online) = admin.wait_online(n, deadline, Duration::from_millis(100))?;
    result.online_at_end = online;
    result.all_online_s = all.map(|at| at.duration_since(restarted.started).as_secs_f64());
    result.all_online_since_term_s = all.map(|at| at.duration_since(restarted.stopping).as_secs_f64());
    env.say(format!(
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
        let mut requester = Requester::connect(Kind::Pantry, &server.endpoints, Some(&ring.admin), ADMIN_NAME)?;
        let f = fanout(&mut requester, n, Duration::from_secs(10), Duration::from_secs(1))?;
        result.echo_answers = Some(f.answers);
        result.echo_ms = (f.answers > 0).then_some(f.elapsed.as_secs_f64() * 1000.0);
    }
    drop(pool);
    Ok(result)
}

/// The echo with killed agents, SIGKILL → offline, the restart; with the
/// previous run's.
pub fn targets(p: &Figures, previous: Previous<Figures>) -> Vec<Target> {
    compared(measured(p), previous.figures.map(measured))
}

fn measured(p: &Figures) -> Vec<Target> {
    let mut targets = Vec::new();
    targets.push(match &p.echo {
        Some(e) => Target::new(
            format!(
                "`echo` to {} agents, {} killed {} s before: last answer < {OFFLINE_ECHO_TARGET_MS} ms (median), the \
                 {} named offline (before presence: the admin's whole `--timeout`)",
                count(e.agents),
                e.killed.len(),
                e.kill_wait_s,
                e.killed.len()
            ),
            match (e.median_ms(), e.max_ms()) {
                (Some(m), Some(x)) => format!(
                    "median {} ms, max {} ms; exactly the {} named offline in {} of {} echoes (before presence: {} s)",
                    num(Some(m)),
                    num(Some(x)),
                    e.killed.len(),
                    e.correct_runs(),
                    e.runs.len(),
                    e.admin_timeout_s
                ),
                _ => "no echo answered".into(),
            },
            e.median_ms().map(|m| m < OFFLINE_ECHO_TARGET_MS && e.correct_runs() == e.runs.len()),
        ),
        None => Target::new("`echo` with killed agents: offline ones named at once".into(), "failed".into(), None),
    });
    let (median, max) = (p.median_kill_ms(), p.max_kill_ms());
    targets.push(Target::new(
        format!("SIGKILL of `pantry-client` → `offline` in `status` < 1 s (median of {})", p.kill_repeats),
        match (median, max) {
            (Some(m), Some(x)) => format!(
                "median {} ms, max {} ms ({} of {} runs)",
                num(Some(m)),
                num(Some(x)),
                p.kills.len(),
                p.kill_repeats
            ),
            _ => format!("no run ({} tried)", p.kill_repeats),
        },
        (p.kill_repeats > 0).then(|| p.kills.len() == p.kill_repeats && median.is_some_and(|m| m < KILL_TARGET_MS)),
    ));
    match &p.restart {
        Some(r) => {
            targets.push(Target::new(
                format!(
                    "server restart with {} agents: all online again within 2 heartbeat intervals ({} s)",
                    count(r.agents),
                    2 * r.heartbeat_s
                ),
                match (r.all_online_s, r.all_online_since_term_s) {
                    (Some(a), Some(t)) => {
                        format!("{} s after the new server started ({} s after SIGTERM)", secs(a), secs(t))
                    }
                    _ => format!("not all: {} of {} online", count(r.online_at_end), count(r.agents)),
                },
                Some(r.back_in_time() == Some(true)),
            ));
            targets.push(Target::new(
                format!("`status` right after the restart lists all {} (offline until they check in)", count(r.agents)),
                format!(
                    "{} listed, {} offline, {} ms after the start",
                    count(r.gap_listed),
                    count(r.gap_offline),
                    num(Some(r.gap_status_ms))
                ),
                Some(r.gap_listed == r.agents),
            ));
        }
        None => targets.push(Target::new(
            "server restart: every agent online again within 2 heartbeat intervals".into(),
            "failed".into(),
            None,
        )),
    }
    targets
}

/// The `## Presence` section.
pub fn report(p: &Figures, previous: Previous<Figures>) -> String {
    let mut out = String::new();
    let heartbeat = p.restart.as_ref().map(|r| r.heartbeat_s);
    let _ = writeln!(
        out,
        "## Presence\n\nCURVE, against fresh `pantry-server`s that know the bench's admin key and the agents' keys. \
         Here the simulated agents behave like the real one: a `RegisterClient` with `heartbeat_interval` every \
         heartbeat{}, and another whenever their DEALER (their one connection) completes a handshake (a socket \
         monitor per agent). They reconnect as libzmq does, at once, without the real agent's \
         `reconnect_spread` (the scale scenario's restart has it).\n\n{}",
        heartbeat.map(|h| format!(" ({h} s)")).unwrap_or_default(),
        targets_table(&targets(p, previous), previous.said)
    );
    if let Some(e) = &p.echo {
        let _ = writeln!(
            out,
            "**Offline clients are named at once.** {} agents; {} of them killed (their DEALERs closed with \
             linger 0, so the server sees the TCP connections close) {} s before an admin's `echo` to every agent, \
             sent {} times from a CURVE DEALER. Time from sending to the last answer; the server's recipient list \
             names the offline ones (`custom.offline`). Before presence the admin waited for the killed agents until \
             its `--timeout` ({} s by default) and then named them as not answering.\n",
            count(e.agents),
            e.killed.len(),
            e.kill_wait_s,
            e.runs.len(),
            e.admin_timeout_s
        );
        out.push_str(
            "| echo | answers | listed online | named offline | exactly the killed ones | last answer (ms) |\n\
             |---:|---:|---:|---:|---|---:|\n",
        );
        for (i, r) in e.runs.iter().enumerate() {
            let _ = writeln!(
                out,
                "| {} | {} | {} | {} | {} | {} |",
                i + 1,
                r.answers,
                r.listed,
                r.offline.len(),
                if r.offline == e.killed { "yes" } else { "**no**" },
                num(Some(r.last_answer_ms))
            );
        }
        let _ = writeln!(
            out,
            "| median | | | | | {} |\n| max | | | | | {} |\n| before presence | | | | | {} (the whole `--timeout`) |",
            num(e.median_ms()),
            num(e.max_ms()),
            count((e.admin_timeout_s * 1000.0) as usize)
        );
        if let Some(cli) = &e.cli {
            let _ = writeln!(
                out,
                "\nThe real `pantry-admin --timeout {} echo` against the same agents: exit status {}, {} ms wall time \
                 (process start and CURVE handshake included), {} lines naming an offline client, `{}`.",
                e.admin_timeout_s,
                cli.exit_code.map_or("–".into(), |c| c.to_string()),
                num(Some(cli.wall_ms)),
                cli.offline_lines,
                cli.last_line
            );
        }
        let _ = writeln!(out);
    }
    let _ = writeln!(
        out,
        "**SIGKILL → offline.** A real `pantry-client` (release, CURVE) started and online in `status`, then \
         SIGKILLed; a raw `Status` request for its identity every 10 ms until the answer says `offline`. Time from \
         the SIGKILL to that answer, {} runs.\n",
        p.kill_repeats
    );
    let _ = writeln!(out, "| run | SIGKILL → offline (ms) | `Status` requests |\n|---:|---:|---:|");
    for (i, k) in p.kills.iter().enumerate() {
        let _ = writeln!(out, "| {} | {} | {} |", i + 1, num(Some(k.offline_ms)), k.polls);
    }
    let _ = writeln!(out, "| median | {} | |\n| max | {} | |\n", num(p.median_kill_ms()), num(p.max_kill_ms()));
    if let Some(r) = &p.restart {
        let _ = writeln!(
            out,
            "**Server restart.** {} agents registered and reachable; the server stopped with SIGTERM and started \
             again on the same root_dir and ports. A `status` from a fresh admin connection as soon as the new \
             server logged that it started, then one every 100 ms until every agent is online again; then an \
             `echo` to all.\n",
            count(r.agents)
        );
        out.push_str("| agents | heartbeat (s) | SIGTERM → exited (s) | start → `started` (s) | first `status`: listed / offline (ms after the start) | all online again after the start (s) | after SIGTERM (s) | echo to all afterwards: answers (ms) |\n\
             |---:|---:|---:|---:|---:|---:|---:|---:|\n");
        let _ = writeln!(
            out,
            "| {} | {} | {} | {} | {} / {} ({}) | {} | {} | {} |\n",
            count(r.agents),
            r.heartbeat_s,
            secs(r.stop_s),
            secs(r.start_s),
            count(r.gap_listed),
            count(r.gap_offline),
            num(Some(r.gap_status_ms)),
            r.all_online_s.map_or_else(|| format!("not all ({} online)", r.online_at_end), secs),
            r.all_online_since_term_s.map_or_else(|| "–".into(), secs),
            match (r.echo_answers, r.echo_ms) {
                (Some(a), Some(ms)) => format!("{} ({})", count(a), num(Some(ms))),
                (Some(a), None) => count(a),
                _ => "–".into(),
            }
        );
        let before = previous.figures.and_then(|p| p.restart.as_ref()).filter(|b| b.agents == r.agents);
        let _ = writeln!(
            out,
            "**Server memory and idle CPU per registered agent**, before the restart, against the previous run \
             ({}): server VmRSS growth from no agent to {} registered agents; the growth of the server's CPU time \
             with nothing asked, from no agent to every agent registered, over {} s each.\n",
            previous.said,
            count(r.agents),
            num(Some(r.idle_window_s))
        );
        let _ = writeln!(out, "| figure | this run | previous | change |\n|---|---:|---:|---:|");
        let rows = [
            (
                format!(
                    "RSS per registered agent, KiB (CURVE, fresh server, 0 → {} agents with a heartbeat)",
                    count(r.agents)
                ),
                Both { pantry: r.kib_per_agent(), baseline: before.and_then(Restart::kib_per_agent) },
            ),
            (
                format!(
                    "idle server CPU per registered agent, µs per second (CURVE, {} agents, heartbeat {} s; {} ms/s \
                     with none, {} ms/s with all: {} µs per heartbeat registration)",
                    count(r.agents),
                    r.heartbeat_s,
                    num(r.idle_cpu_ms_per_s_empty),
                    num(r.idle_cpu_ms_per_s),
                    num(r.cpu_us_per_heartbeat())
                ),
                Both { pantry: r.idle_cpu_us_per_agent_s, baseline: before.and_then(|b| b.idle_cpu_us_per_agent_s) },
            ),
        ];
        for (what, v) in rows {
            let _ = writeln!(out, "| {what} | {} | {} | {} |", num(v.pantry), num(v.baseline), change(v.ratio()));
        }
    }
    failures(&mut out, &p.failures);
    out
}
