//! Pantry against the baseline relay, for each security mode (CURVE, then
//! null): a real `pantry-server` and a relay side by side; for each N, a
//! pool of agents on each, rounds alternating: fan-out latency,
//! throughput, server memory and CPU per answer and per request, set-up
//! time; the idle real `pantry-client`'s memory. Server memory and CPU per
//! agent are compared with the previous run's.

use std::fmt::Write as _;
use std::path::Path;
use std::time::Duration;

use anyhow::Result;
use pantry_shared::keys::Role;
use plotters::prelude::*;
use serde::{Deserialize, Serialize};

use crate::common::agents::{Kind, GROUP_SIZE};
use crate::common::compare::{run_size, SizeRow, System};
use crate::common::env::{Env, Measure};
use crate::common::keys::{self, Pair};
use crate::common::markdown::{change, compared, count, kib, num, pct, ratio, targets_table, Previous, Target};
use crate::common::procs::{peak_rss_kib, PantryServer, Relay};
use crate::common::ring::KeyRing;
use crate::common::stats::Both;

/// Targets of issue 4.
const FANOUT_TARGET_N: usize = 1000;
const FANOUT_TARGET_MS: f64 = 50.0;
const THROUGHPUT_TARGET: f64 = 0.5;
const KIB_PER_AGENT_TARGET: f64 = 30.0;
const IDLE_AGENT_TARGET_KIB: u64 = 10 * 1024;
/// Server memory and CPU per agent within 10% of the previous run's.
const PER_AGENT_TOLERANCE: f64 = 1.10;

/// What issue 15's targets compare, each against the relay in the same run.
#[derive(Debug, Clone, Copy)]
enum RelayTarget {
    /// Pantry / baseline throughput at (CURVE?, N), at least this.
    Throughput { curve: bool, n: usize, at_least: f64 },
    /// Pantry / baseline fan-out p50 at N (CURVE), at most this.
    Fanout { n: usize, at_most: f64 },
}

const RELAY_TARGETS: [RelayTarget; 5] = [
    RelayTarget::Throughput { curve: true, n: 1, at_least: 0.80 },
    RelayTarget::Throughput { curve: true, n: 1000, at_least: 0.85 },
    RelayTarget::Throughput { curve: false, n: 1, at_least: 0.60 },
    RelayTarget::Fanout { n: 1000, at_most: 1.15 },
    RelayTarget::Fanout { n: 4000, at_most: 1.15 },
];

/// The idle real agent's identity.
const IDLE_CLIENT: &str = "bench-idle";

/// What the comparison with the relay does.
#[derive(Debug, Clone, clap::Args, Serialize, Deserialize)]
#[group(id = "fanout_throughput")]
pub struct Settings {
    /// Agent counts.
    #[arg(long, value_delimiter = ',', default_value = "1,100,1000,4000")]
    pub sizes: Vec<usize>,
    /// Only CURVE (skip the null-security pass).
    #[arg(long)]
    pub curve_only: bool,
}

impl Settings {
    /// The most agent keys the scenario needs.
    pub fn max_agents(&self) -> usize {
        self.sizes.iter().copied().max().unwrap_or(0)
    }
}

/// One security mode.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Mode {
    pub curve: bool,
    /// Server RSS right after start, no agent connected.
    pub rss0_kib: Both<Option<u64>>,
    pub rows: Vec<SizeRow>,
    /// The real `pantry-client` after it registered, idle.
    pub idle_client_rss_kib: Option<u64>,
    /// Peak server RSS over the whole mode.
    pub peak_rss_kib: Both<Option<u64>>,
}

impl Mode {
    pub fn name(&self) -> &'static str {
        if self.curve {
            "CURVE"
        } else {
            "null"
        }
    }

    /// Server RSS growth per connected agent from 0 to `row`'s N, KiB.
    fn kib_per_agent(&self, row: &SizeRow) -> Both<Option<f64>> {
        let per = |zero: Option<u64>, at: Option<u64>| match (zero, at) {
            (Some(z), Some(a)) if row.n > 0 => Some((a as f64 - z as f64) / row.n as f64),
            _ => None,
        };
        Both {
            pantry: per(self.rss0_kib.pantry, row.rss_kib.pantry),
            baseline: per(self.rss0_kib.baseline, row.rss_kib.baseline),
        }
    }

    /// From 0 to the largest N.
    pub fn kib_per_largest(&self) -> Both<Option<f64>> {
        self.rows.last().map(|r| self.kib_per_agent(r)).unwrap_or_default()
    }

    fn row(&self, n: usize) -> Option<&SizeRow> {
        self.rows.iter().find(|r| r.n == n)
    }
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Figures {
    pub measure: Measure,
    /// Sizes over the open-file limit, not run.
    pub sizes_skipped: Vec<usize>,
    pub modes: Vec<Mode>,
}

impl Figures {
    fn mode(&self, curve: bool) -> Option<&Mode> {
        self.modes.iter().find(|m| m.curve == curve)
    }
}

/// Runs each security mode at each N that fits the open-file limit.
pub fn run(env: &Env, ring: &KeyRing, s: &Settings) -> Result<Figures> {
    let max_agents = env.limits.max_agents();
    let mut sizes = s.sizes.clone();
    sizes.sort_unstable();
    let sizes_skipped: Vec<usize> = sizes.iter().copied().filter(|&n| n > max_agents).collect();
    sizes.retain(|&n| n <= max_agents);
    let mut figures = Figures { measure: env.measure, sizes_skipped, modes: Vec::new() };
    for curve in if s.curve_only { vec![true] } else { vec![true, false] } {
        figures.modes.push(run_mode(env, ring, curve, &sizes)?);
    }
    Ok(figures)
}

fn run_mode(env: &Env, ring: &KeyRing, curve: bool, sizes: &[usize]) -> Result<Mode> {
    let mode = if curve { "CURVE" } else { "null" };
    let idle = Pair::generate()?;
    let mut known = ring.enrolled();
    known.push(keys::known(idle.public_z85(), IDLE_CLIENT.into(), Role::Client));
    let mut server = env.server(curve.then_some((&ring.server, &known[..])), "")?;
    let relay = Relay::start(&env.bins.bench, curve.then_some(&ring.server))?;
    env.say(format!("{mode}: pantry-server pid {}, relay pid {}", server.process.pid, relay.process.pid));
    // Both idle, nothing connected yet.
    std::thread::sleep(Duration::from_millis(200));
    let mut result = Mode {
        curve,
        rss0_kib: Both { pantry: server.process.rss_kib(), baseline: relay.process.rss_kib() },
        ..Default::default()
    };
    let (pantry, baseline) = (Kind::Pantry, Kind::Baseline);
    let mut systems = [
        System::connect(pantry, pantry.name(), &server.endpoints, server.process.pid, ring, curve)?,
        System::connect(baseline, baseline.name(), &relay.endpoints, relay.process.pid, ring, curve)?,
    ];
    for &n in sizes {
        let row = run_size(env, ring, n, !env.limits.both_pools_fit(n), &mut systems, curve)?;
        env.say(format!(
            "{mode} N={n}: fan-out p50 {} / {} ms, p99 {} / {} ms; throughput {} / {} per s (Pantry / baseline)",
            num(row.fanout_p50_ms.pantry),
            num(row.fanout_p50_ms.baseline),
            num(row.fanout_p99_ms.pantry),
            num(row.fanout_p99_ms.baseline),
            num(row.throughput.pantry),
            num(row.throughput.baseline),
        ));
        result.rows.push(row);
    }
    drop(systems);
    result.peak_rss_kib = Both { pantry: peak_rss_kib(server.process.pid), baseline: peak_rss_kib(relay.process.pid) };
    result.idle_client_rss_kib = idle_client_rss(env, &mut server, curve.then_some(&idle))?;
    env.say(format!("{mode}: idle pantry-client RSS {} KiB", kib(result.idle_client_rss_kib)));
    Ok(result)
}

/// The real agent's RSS, idle after registering.
fn idle_client_rss(env: &Env, server: &mut PantryServer, pair: Option<&Pair>) -> Result<Option<u64>> {
    let client = server.start_client(&env.bins.client, IDLE_CLIENT, pair)?;
    server.wait_registered(IDLE_CLIENT, Duration::from_secs(20))?;
    std::thread::sleep(Duration::from_millis(500));
    Ok(client.rss_kib())
}

/// One per-agent figure of this run next to the previous run's.
#[derive(Debug, Clone)]
pub struct Compared {
    pub what: String,
    pub now: Option<f64>,
    pub before: Option<f64>,
    /// Counts for the target.
    pub judged: bool,
}

impl Compared {
    /// This run / previous.
    pub fn ratio(&self) -> Option<f64> {
        Both { pantry: self.now, baseline: self.before }.ratio()
    }
}

/// Server memory and CPU per agent, this run against `previous`: RSS
/// growth per agent, and (CURVE) CPU per fan-out answer and per request,
/// at each N of 100 or more; judged at the largest N, CURVE.
pub fn per_agent(f: &Figures, previous: Option<&Figures>) -> Vec<Compared> {
    let mut rows = Vec::new();
    for m in &f.modes {
        let largest = m.rows.iter().map(|r| r.n).max().unwrap_or(0);
        let sec = m.name();
        let before_mode = previous.and_then(|p| p.mode(m.curve));
        for r in m.rows.iter().filter(|r| r.n >= 100) {
            let judged = m.curve && r.n == largest;
            let before = before_mode.and_then(|b| b.row(r.n).map(|row| (b, row)));
            rows.push(Compared {
                what: format!("RSS per agent, KiB ({sec}, 0 → {})", count(r.n)),
                now: m.kib_per_agent(r).pantry,
                before: before.and_then(|(b, row)| b.kib_per_agent(row).pantry),
                judged,
            });
            if m.curve {
                rows.push(Compared {
                    what: format!("CPU per fan-out answer, µs ({sec}, N = {})", count(r.n)),
                    now: r.cpu_us_per_answer.pantry,
                    before: before.and_then(|(_, row)| row.cpu_us_per_answer.pantry),
                    judged,
                });
                rows.push(Compared {
                    what: format!("CPU per request (throughput), µs ({sec}, N = {})", count(r.n)),
                    now: r.cpu_us_per_request.pantry,
                    before: before.and_then(|(_, row)| row.cpu_us_per_request.pantry),
                    judged,
                });
            }
        }
    }
    rows
}

fn min_opt(values: impl Iterator<Item = Option<f64>>) -> Option<f64> {
    values.flatten().reduce(f64::min)
}

/// Issue 4's and issue 15's targets with the previous run's, and server
/// memory and CPU per agent against the previous run.
pub fn targets(f: &Figures, previous: Previous<Figures>) -> Vec<Target> {
    let mut targets = compared(measured(f), previous.figures.map(measured));
    let compared = per_agent(f, previous.figures);
    let judged: Vec<&Compared> = compared.iter().filter(|c| c.judged && c.ratio().is_some()).collect();
    let measured = if judged.is_empty() {
        match previous.figures {
            None => previous.said.to_owned(),
            Some(_) => "nothing comparable in the previous results".into(),
        }
    } else {
        let each: Vec<String> = judged
            .iter()
            .map(|c| format!("{}: {} vs {} ({})", c.what, num(c.now), num(c.before), change(c.ratio())))
            .collect();
        each.join("; ")
    };
    targets.push(Target::new(
        "server memory and CPU per agent within 10% of the previous results".into(),
        measured,
        (!judged.is_empty()).then(|| judged.iter().all(|c| c.ratio().is_some_and(|r| r <= PER_AGENT_TOLERANCE))),
    ));
    targets
}

fn measured(f: &Figures) -> Vec<Target> {
    let curve = f.mode(true);
    let fan_row = curve.and_then(|m| m.row(FANOUT_TARGET_N));
    let fan = fan_row.and_then(|r| r.fanout_p50_ms.pantry);
    let fan_text = match (fan, fan_row) {
        (Some(v), Some(r)) if v.is_infinite() => {
            format!("answers lost: {} of {} fan-outs incomplete", r.fanout_incomplete.pantry, r.fanout_attempted.pantry)
        }
        (Some(v), Some(r)) if r.fanout_incomplete.pantry > 0 => format!(
            "{} ms, but {} of {} fan-outs lost answers",
            num(Some(v)),
            r.fanout_incomplete.pantry,
            r.fanout_attempted.pantry
        ),
        (Some(v), _) => format!("{} ms", num(Some(v))),
        _ => "–".into(),
    };
    let complete = fan_row.is_some_and(|r| r.fanout_incomplete.pantry == 0);
    let worst = curve.and_then(|m| min_opt(m.rows.iter().map(|r| r.throughput.ratio())));
    let per = curve.and_then(|m| m.kib_per_largest().pantry);
    let last_n = curve.and_then(|m| m.rows.last()).map_or(0, |r| r.n);
    let idle = curve.and_then(|m| m.idle_client_rss_kib);
    let mut targets = vec![
        Target::new(
            format!(
                "fan-out echo to {} CURVE agents: p50 < {FANOUT_TARGET_MS} ms, every answer delivered",
                count(FANOUT_TARGET_N)
            ),
            fan_text,
            fan.map(|v| v < FANOUT_TARGET_MS && complete),
        ),
        Target::new(
            format!("throughput ≥ {} of the baseline (CURVE, lowest over N)", pct(Some(THROUGHPUT_TARGET))),
            pct(worst),
            worst.map(|r| r >= THROUGHPUT_TARGET),
        ),
        Target::new(
            format!(
                "server memory < {KIB_PER_AGENT_TARGET} KiB per connected agent (CURVE, 0 → {} agents)",
                count(last_n)
            ),
            format!("{} KiB", num(per)),
            per.map(|v| v < KIB_PER_AGENT_TARGET),
        ),
        Target::new(
            "idle agent (`pantry-client`, CURVE) < 10 MiB RSS".into(),
            format!("{} KiB", kib(idle)),
            idle.map(|v| v < IDLE_AGENT_TARGET_KIB),
        ),
    ];
    targets.extend(RELAY_TARGETS.iter().map(|&t| relay_target(f, t)));
    targets
}

/// One of issue 15's targets.
fn relay_target(f: &Figures, target: RelayTarget) -> Target {
    match target {
        RelayTarget::Throughput { curve, n, at_least } => {
            let security = if curve { "CURVE" } else { "null" };
            let row = f.mode(curve).and_then(|m| m.row(n));
            let now = row.and_then(|r| r.throughput.ratio());
            Target::new(
                format!(
                    "issue 15: throughput with {} {security} {} ≥ {} of the relay",
                    count(n),
                    if n == 1 { "agent" } else { "agents" },
                    pct(Some(at_least))
                ),
                match row {
                    None => format!("not run ({security}, N = {})", count(n)),
                    Some(_) => pct(now),
                },
                now.map(|r| r >= at_least),
            )
        }
        RelayTarget::Fanout { n, at_most } => {
            let row = f.mode(true).and_then(|m| m.row(n));
            let lost = row.is_some_and(|r| r.fanout_p50_ms.pantry.is_some_and(f64::is_infinite));
            let now = row.and_then(|r| r.fanout_p50_ms.ratio()).filter(|r| r.is_finite());
            Target::new(
                format!("issue 15: fan-out p50 with {} CURVE agents ≤ {} the relay's", count(n), ratio(Some(at_most))),
                match (row, now) {
                    (None, _) => format!("not run (CURVE, N = {})", count(n)),
                    (Some(_), _) if lost => "answers lost".into(),
                    (Some(r), Some(v)) => format!(
                        "{} ({} / {} ms)",
                        ratio(Some(v)),
                        num(r.fanout_p50_ms.pantry),
                        num(r.fanout_p50_ms.baseline)
                    ),
                    (Some(_), None) => "–".into(),
                },
                if lost { Some(false) } else { now.map(|r| r <= at_most) },
            )
        }
    }
}

/// The section: the targets, then fan-out latency, throughput, memory,
/// set-up, server CPU per answer, and per agent against the previous run.
pub fn report(f: &Figures, previous: Previous<Figures>) -> String {
    let m = &f.measure;
    let mut out = String::new();
    let sequential: Vec<String> = f
        .modes
        .first()
        .map(|m| m.rows.iter().filter(|r| r.sequential).map(|r| count(r.n)).collect())
        .unwrap_or_default();
    let _ = writeln!(
        out,
        "## Pantry against the relay\n\nPantry is the release `pantry-server` in its own process; the baseline is a \
         raw-libzmq ROUTER relay (`pantry-bench relay`, its own process, CURVE with an accept-all ZAP handler). \
         Since issue 27 both hold one connection per agent: agents, admin and requesters are simulated in the \
         bench process, each agent with one DEALER (its requests come over it: Pantry's after a registration \
         with `requests_on_dealer`, the relay's after a hello with its topics) and its own CURVE key pair, all \
         keys enrolled. Every figure is the median of {} rounds that alternate Pantry and \
         the baseline; ratios are Pantry / baseline.{}{}\n\n{}",
        m.rounds,
        if sequential.is_empty() {
            String::new()
        } else {
            format!(
                " N = {} ran one pool at a time (both do not fit the open-file limit at once).",
                sequential.join(", ")
            )
        },
        if f.sizes_skipped.is_empty() {
            String::new()
        } else {
            format!(" N = {:?} skipped (over the open-file limit).", f.sizes_skipped)
        },
        targets_table(&targets(f, previous), previous.said)
    );
    let rows = || f.modes.iter().flat_map(|m| m.rows.iter().map(move |r| (m, r)));
    let _ = writeln!(
        out,
        "### Fan-out latency\n\nAn admin-side `echo` to every agent (stream `\"\"`), time until the last answer \
         arrived; {} requests per N and round, p50 and p99 per round, median over rounds (ms; ratio > 1: Pantry \
         slower). A fan-out that lost answers (no answer for 1 s) is incomplete and counts as infinitely slow \
         (`lost`); a round stops after 4 incomplete ones.\n\n\
         | security | N | Pantry p50 | baseline p50 | ratio p50 | Pantry p99 | baseline p99 | ratio p99 | \
         incomplete Pantry | incomplete baseline | answers delivered (P/B) |\n\
         |---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
        m.fanout_requests
    );
    for (mode, r) in rows() {
        let _ = writeln!(
            out,
            "| {} | {} | {} | {} | {} | {} | {} | {} | {} of {} | {} of {} | {} / {} |",
            mode.name(),
            count(r.n),
            num(r.fanout_p50_ms.pantry),
            num(r.fanout_p50_ms.baseline),
            ratio(r.fanout_p50_ms.ratio()),
            num(r.fanout_p99_ms.pantry),
            num(r.fanout_p99_ms.baseline),
            ratio(r.fanout_p99_ms.ratio()),
            r.fanout_incomplete.pantry,
            r.fanout_attempted.pantry,
            r.fanout_incomplete.baseline,
            r.fanout_attempted.baseline,
            pct(r.fanout_delivered.pantry),
            pct(r.fanout_delivered.baseline)
        );
    }
    let t = &m.throughput;
    let _ = writeln!(
        out,
        "\n### Throughput\n\nEcho request/response pairs per second: {} concurrent requesters, each keeping {} \
         requests in flight, each request to one agent by identity (round robin over the N agents); {:.1} s \
         measured after {:.1} s of warm-up.\n\n\
         | security | N | Pantry | baseline | Pantry / baseline | lost (P/B) | server CPU µs per request (P/B) |\n\
         |---|---:|---:|---:|---:|---:|---:|",
        m.requesters,
        t.window,
        t.duration.as_secs_f64(),
        t.warmup.as_secs_f64()
    );
    for (mode, r) in rows() {
        let _ = writeln!(
            out,
            "| {} | {} | {} | {} | {} | {}/{} | {} / {} |",
            mode.name(),
            count(r.n),
            num(r.throughput.pantry),
            num(r.throughput.baseline),
            pct(r.throughput.ratio()),
            r.lost.pantry,
            r.lost.baseline,
            num(r.cpu_us_per_request.pantry),
            num(r.cpu_us_per_request.baseline)
        );
    }
    out.push_str(
        "\n### Memory\n\nServer VmRSS (KiB, `/proc/PID/status`) right after start and with N agents connected \
         and registered.\n\n| security | agents | Pantry server | baseline relay |\n|---|---:|---:|---:|\n",
    );
    for mode in &f.modes {
        let name = mode.name();
        let _ = writeln!(out, "| {name} | 0 | {} | {} |", kib(mode.rss0_kib.pantry), kib(mode.rss0_kib.baseline));
        for r in &mode.rows {
            let _ =
                writeln!(out, "| {name} | {} | {} | {} |", count(r.n), kib(r.rss_kib.pantry), kib(r.rss_kib.baseline));
        }
        let per = mode.kib_per_largest();
        let _ = writeln!(
            out,
            "| {name} | KiB per agent (0 → {}) | {} | {} |\n| {name} | peak (VmHWM) | {} | {} |",
            mode.rows.last().map(|r| count(r.n)).unwrap_or_default(),
            num(per.pantry),
            num(per.baseline),
            kib(mode.peak_rss_kib.pantry),
            kib(mode.peak_rss_kib.baseline)
        );
    }
    let idle: Vec<String> =
        f.modes.iter().map(|m| format!("{} {} KiB", m.name(), kib(m.idle_client_rss_kib))).collect();
    let _ = writeln!(out, "\nIdle `pantry-client` (release, registered, VmRSS): {}.", idle.join(", "));
    let _ = writeln!(
        out,
        "\n### Set-up\n\nSeconds from the first connect until every agent of a new pool answered an echo sent to \
         its group of {GROUP_SIZE} (CURVE: one handshake per agent; connects paced at about 650 agents per \
         second).\n\n| security | N | Pantry | baseline |\n|---|---:|---:|---:|"
    );
    for (mode, r) in rows() {
        let _ = writeln!(
            out,
            "| {} | {} | {} | {} |",
            mode.name(),
            count(r.n),
            num(r.setup_s.pantry),
            num(r.setup_s.baseline)
        );
    }
    out.push_str(
        "\n### Server CPU per fan-out answer\n\nServer CPU time (all threads, `/proc/PID/task/*/schedstat`) during \
         the fan-out runs divided by the answers that reached the admin, microseconds.\n\n\
         | security | N | Pantry | baseline | Pantry / baseline |\n|---|---:|---:|---:|---:|\n",
    );
    for (mode, r) in rows() {
        let _ = writeln!(
            out,
            "| {} | {} | {} | {} | {} |",
            mode.name(),
            count(r.n),
            num(r.cpu_us_per_answer.pantry),
            num(r.cpu_us_per_answer.baseline),
            ratio(r.cpu_us_per_answer.ratio())
        );
    }
    let compared = per_agent(f, previous.figures);
    let _ = writeln!(
        out,
        "\n### Server memory and CPU per agent against the previous run\n\nAgainst {}: server VmRSS growth per \
         agent from no agent to N, and server CPU time (all threads) per fan-out answer and per throughput request, \
         as in the tables above, at each N of 100 or more{}. Judged (within 10%, CURVE): the largest N, since at \
         small N the RSS per agent is mostly fixed growth divided by few agents (allocator arenas, the job store's \
         SQLite page cache filled by the throughput runs before).",
        previous.said,
        if compared.is_empty() { " (none in this run)" } else { "" }
    );
    if !compared.is_empty() {
        out.push_str("\n| figure | this run | previous | change | judged |\n|---|---:|---:|---:|---|\n");
    }
    for c in compared {
        let _ = writeln!(
            out,
            "| {} | {} | {} | {} | {} |",
            c.what,
            num(c.now),
            num(c.before),
            change(c.ratio()),
            if c.judged { "yes" } else { "" }
        );
    }
    out
}

/// A line of the chart: label, colour, dashed, the value of a row.
type Series = (&'static str, RGBColor, bool, Box<dyn Fn(&SizeRow) -> Option<f64>>);

/// `fanout.svg`: fan-out p50 and p99 against N, log-log, one panel per
/// security mode.
pub fn chart(f: &Figures, path: &Path) -> Result<()> {
    let modes: Vec<&Mode> = f.modes.iter().filter(|m| !m.rows.is_empty()).collect();
    let width = 480 * modes.len().max(1) as u32;
    let root = SVGBackend::new(path, (width, 400)).into_drawing_area();
    let draw = || -> Result<(), Box<dyn std::error::Error + '_>> {
        root.fill(&WHITE)?;
        let panels = root.split_evenly((1, modes.len().max(1)));
        for (panel, mode) in panels.iter().zip(&modes) {
            let ns: Vec<f64> = mode.rows.iter().map(|r| r.n as f64).collect();
            let values: Vec<f64> = mode
                .rows
                .iter()
                .flat_map(|r| [r.fanout_p50_ms, r.fanout_p99_ms])
                .flat_map(|b| [b.pantry, b.baseline])
                .flatten()
                .filter(|v| v.is_finite())
                .collect();
            let (x0, x1) = (ns.iter().copied().fold(f64::MAX, f64::min), ns.iter().copied().fold(0.0, f64::max));
            let (y0, y1) =
                (values.iter().copied().fold(f64::MAX, f64::min), values.iter().copied().fold(0.0, f64::max));
            let (y0, y1) = if values.is_empty() { (0.1, 10.0) } else { (y0.max(0.01) / 1.5, y1 * 1.5) };
            let mut chart = ChartBuilder::on(panel)
                .caption(format!("Fan-out echo latency, {}", mode.name()), ("sans-serif", 18))
                .margin(12)
                .x_label_area_size(36)
                .y_label_area_size(52)
                .build_cartesian_2d((x0.max(0.5) / 1.5..x1 * 1.5).log_scale(), (y0..y1).log_scale())?;
            chart
                .configure_mesh()
                .x_desc("agents (N); × at the top: answers lost")
                .y_desc("ms")
                .x_label_formatter(&|x| format!("{x:.0}"))
                .y_label_formatter(&|y| format!("{y}"))
                .draw()?;
            let series: [Series; 4] = [
                ("Pantry p50", RGBColor(31, 119, 180), false, Box::new(|r| r.fanout_p50_ms.pantry)),
                ("Pantry p99", RGBColor(31, 119, 180), true, Box::new(|r| r.fanout_p99_ms.pantry)),
                ("baseline p50", RGBColor(214, 39, 40), false, Box::new(|r| r.fanout_p50_ms.baseline)),
                ("baseline p99", RGBColor(214, 39, 40), true, Box::new(|r| r.fanout_p99_ms.baseline)),
            ];
            for (_, color, _, value) in &series {
                let lost = mode.rows.iter().filter(|r| value(r).is_some_and(f64::is_infinite));
                chart.draw_series(lost.map(|r| Cross::new((r.n as f64, y1 / 1.3), 5, color.stroke_width(2))))?;
            }
            for (label, color, dashed, value) in series {
                let points: Vec<(f64, f64)> = mode
                    .rows
                    .iter()
                    .filter_map(|r| value(r).filter(|v| v.is_finite()).map(|v| (r.n as f64, v)))
                    .collect();
                let style = color.stroke_width(2);
                if dashed {
                    chart
                        .draw_series(DashedLineSeries::new(points.clone(), 6, 4, style))?
                        .label(label)
                        .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 18, y)], color.stroke_width(1)));
                    chart.draw_series(points.iter().map(|&p| TriangleMarker::new(p, 4, color.filled())))?;
                } else {
                    chart
                        .draw_series(LineSeries::new(points.clone(), style))?
                        .label(label)
                        .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 18, y)], color.stroke_width(3)));
                    chart.draw_series(points.iter().map(|&p| Circle::new(p, 3, color.filled())))?;
                }
            }
            chart
                .configure_series_labels()
                .position(SeriesLabelPosition::UpperLeft)
                .background_style(WHITE.mix(0.8))
                .border_style(BLACK)
                .draw()?;
        }
        root.present()?;
        Ok(())
    };
    draw().map_err(|e| anyhow::anyhow!("cannot draw {}: {e}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(n: usize, throughput: (f64, f64), fanout: (f64, f64), rss: u64, cpu: f64) -> SizeRow {
        SizeRow {
            n,
            throughput: Both { pantry: Some(throughput.0), baseline: Some(throughput.1) },
            fanout_p50_ms: Both { pantry: Some(fanout.0), baseline: Some(fanout.1) },
            rss_kib: Both { pantry: Some(rss), baseline: None },
            cpu_us_per_answer: Both { pantry: Some(cpu), baseline: None },
            cpu_us_per_request: Both { pantry: Some(cpu), baseline: None },
            ..Default::default()
        }
    }

    fn curve(rows: Vec<SizeRow>) -> Figures {
        let mode = Mode { curve: true, rss0_kib: Both { pantry: Some(0), baseline: None }, rows, ..Default::default() };
        Figures { modes: vec![mode], ..Default::default() }
    }

    #[test]
    fn the_relay_targets_and_the_memory_per_agent_show_the_previous_run() {
        let now = curve(vec![
            row(1, (82.0, 100.0), (1.0, 1.0), 100, 1.0),
            row(1000, (84.0, 100.0), (40.0, 36.0), 100_000, 10.0),
            row(4000, (1.0, 1.0), (f64::INFINITY, 150.0), 420_000, 10.0),
        ]);
        let before =
            curve(vec![row(1, (46.0, 100.0), (1.0, 1.0), 100, 1.0), row(4000, (1.0, 1.0), (1.0, 1.0), 400_000, 10.0)]);
        let targets = targets(&now, Previous { figures: Some(&before), said: "t" });
        let relay: Vec<(&str, Option<&str>, Option<bool>)> = targets
            .iter()
            .filter(|t| t.what.starts_with("issue 15"))
            .map(|t| (t.measured.as_str(), t.before.as_deref(), t.met))
            .collect();
        assert_eq!(
            relay,
            [
                ("82%", Some("46%"), Some(true)),
                ("84%", Some("not run (CURVE, N = 1,000)"), Some(false)),
                ("not run (null, N = 1)", Some("not run (null, N = 1)"), None),
                ("1.11× (40.0 / 36.0 ms)", Some("not run (CURVE, N = 1,000)"), Some(true)),
                ("answers lost", Some("1.00× (1.00 / 1.00 ms)"), Some(false)),
            ]
        );
        let per_agent = targets.last().expect("the per-agent target");
        assert_eq!(per_agent.met, Some(true), "{per_agent:?}");
        assert!(
            per_agent.measured.starts_with("RSS per agent, KiB (CURVE, 0 → 4,000): 105 vs 100 (+5%)"),
            "{per_agent:?}"
        );
        let none = super::targets(&now, Previous { figures: None, said: "no previous results (latest.json missing)" });
        assert_eq!(none.last().map(|t| t.measured.as_str()), Some("no previous results (latest.json missing)"));
    }
}
