//! `latest.md` (every figure, Pantry / baseline ratios, the targets) and
//! `fanout.svg` (fan-out p50 and p99 against N).

use std::fmt::Write as _;
use std::path::Path;

use anyhow::{Context as _, Result};
use plotters::prelude::*;

use crate::cluster::{ClusterResult, GapEcho};
use crate::enrollment::EnrollmentResult;
use crate::harness::{Both, ModeResult, Results};
use crate::jobs::JobsResult;
use crate::metrics::MetricsResult;
use crate::presence::PresenceResult;
use crate::previous::Previous;

/// The head of a targets table.
pub const TARGETS_HEADER: &str = "| target | measured | status |\n|---|---|---|\n";

pub const MARKDOWN: &str = "latest.md";
pub const CHART: &str = "fanout.svg";

/// Targets of issue 4 (reported, never asserted).
const FANOUT_TARGET_N: usize = 1000;
const FANOUT_TARGET_MS: f64 = 50.0;
const THROUGHPUT_TARGET: f64 = 0.5;
const HANDSHAKE_TARGET: f64 = 0.8;
/// "The same" rate with many keys: within 10%.
const SAME_RATE: f64 = 0.9;
const KIB_PER_AGENT_TARGET: f64 = 30.0;
const IDLE_AGENT_TARGET_KIB: u64 = 10 * 1024;
/// Enrollment targets: a crowd with one token, and one agent end to end.
const CROWD_TARGET_S: f64 = 30.0;
const END_TO_END_TARGET_S: f64 = 1.0;
/// Presence targets: offline clients named at once, a killed agent offline
/// within a second, within 10% of the previous memory and CPU per agent.
const OFFLINE_ECHO_TARGET_MS: f64 = 100.0;
const KILL_TARGET_MS: f64 = 1000.0;
const PER_AGENT_TOLERANCE: f64 = 1.10;
/// Job-store targets: on within 5% of off, `jobs` over a full store.
const JOBS_ON_OFF_TOLERANCE: f64 = 0.05;
const LIST_JOBS_TARGET_MS: f64 = 50.0;
/// Metrics targets (issue 14): on within 2% of off; a scrape with 4,000
/// agents under 10 ms and 64 KiB.
const METRICS_ON_OFF_TOLERANCE: f64 = 0.02;
const SCRAPE_TARGET_MS: f64 = 10.0;
const SCRAPE_TARGET_BYTES: usize = 64 * 1024;

pub fn write(results: &Results, dir: &Path) -> Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let md = markdown(results);
    std::fs::write(dir.join(MARKDOWN), md).with_context(|| format!("cannot write {}", dir.display()))?;
    chart(results, &dir.join(CHART))?;
    Ok(())
}

fn num(v: Option<f64>) -> String {
    match v {
        None => "–".into(),
        Some(v) if v.is_infinite() => "lost".into(),
        Some(v) if v >= 1000.0 => group(v.round() as u64),
        Some(v) if v >= 100.0 => format!("{v:.0}"),
        Some(v) if v >= 10.0 => format!("{v:.1}"),
        Some(v) => format!("{v:.2}"),
    }
}

/// 12345 → "12,345".
fn group(v: u64) -> String {
    let digits = v.to_string();
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(c);
    }
    out
}

fn kib(v: Option<u64>) -> String {
    v.map(group).unwrap_or_else(|| "–".into())
}

fn pct(v: Option<f64>) -> String {
    v.map(|r| format!("{:.0}%", r * 100.0)).unwrap_or_else(|| "–".into())
}

fn ratio(v: Option<f64>) -> String {
    v.filter(|r| r.is_finite()).map(|r| format!("{r:.2}×")).unwrap_or_else(|| "–".into())
}

fn status(ok: Option<bool>) -> &'static str {
    match ok {
        Some(true) => "met",
        Some(false) => "**not met**",
        None => "not measured",
    }
}

/// Server growth per connected agent between 0 and the largest N.
pub fn kib_per_agent(mode: &ModeResult) -> Both<Option<f64>> {
    let last = mode.rows.iter().rev().find(|r| r.n > 0);
    let per = |zero: Option<u64>, at: Option<u64>, n: usize| match (zero, at) {
        (Some(z), Some(a)) => Some((a as f64 - z as f64) / n as f64),
        _ => None,
    };
    match last {
        Some(r) => Both {
            pantry: per(mode.rss0_kib.pantry, r.rss_kib.pantry, r.n),
            baseline: per(mode.rss0_kib.baseline, r.rss_kib.baseline, r.n),
        },
        None => Both::default(),
    }
}

fn curve_mode(results: &Results) -> Option<&ModeResult> {
    results.modes.iter().find(|m| m.curve)
}

fn min_opt(values: impl Iterator<Item = Option<f64>>) -> Option<f64> {
    values.flatten().fold(None, |acc: Option<f64>, v| Some(acc.map_or(v, |a| a.min(v))))
}

fn targets(results: &Results, out: &mut String) {
    let curve = curve_mode(results);
    let _ = write!(out, "## Targets\n\n{TARGETS_HEADER}");
    let fan_row = curve.and_then(|m| m.rows.iter().find(|r| r.n == FANOUT_TARGET_N));
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
    let _ = writeln!(
        out,
        "| fan-out echo to {} CURVE agents: p50 < {FANOUT_TARGET_MS} ms, every answer delivered | {fan_text} | {} |",
        group(FANOUT_TARGET_N as u64),
        status(fan.map(|v| v < FANOUT_TARGET_MS && complete))
    );
    let worst = curve.and_then(|m| min_opt(m.rows.iter().map(|r| r.throughput.ratio())));
    let _ = writeln!(
        out,
        "| throughput ≥ {} of the baseline (CURVE, lowest over N) | {} | {} |",
        pct(Some(THROUGHPUT_TARGET)),
        pct(worst),
        status(worst.map(|r| r >= THROUGHPUT_TARGET))
    );
    let hs = min_opt(results.handshakes.iter().map(|h| h.rate.ratio()));
    let _ = writeln!(
        out,
        "| handshake rate ≥ {} of the baseline (lowest over key counts) | {} | {} |",
        pct(Some(HANDSHAKE_TARGET)),
        pct(hs),
        status(hs.map(|r| r >= HANDSHAKE_TARGET))
    );
    let same = match (results.handshakes.first(), results.handshakes.last()) {
        (Some(a), Some(b)) if results.handshakes.len() > 1 => {
            Both { pantry: b.rate.pantry, baseline: a.rate.pantry }.ratio().map(|r| (r, a.known_keys, b.known_keys))
        }
        _ => None,
    };
    let _ = writeln!(
        out,
        "| the same handshake rate with many known keys (Pantry, {} vs {} keys) | {} | {} |",
        same.map(|s| group(s.2 as u64)).unwrap_or_else(|| "–".into()),
        same.map(|s| group(s.1 as u64)).unwrap_or_else(|| "–".into()),
        pct(same.map(|s| s.0)),
        status(same.map(|s| s.0 >= SAME_RATE))
    );
    let per = curve.map(kib_per_agent).and_then(|b| b.pantry);
    let last_n = curve.and_then(|m| m.rows.last()).map(|r| r.n).unwrap_or(0);
    let _ = writeln!(
        out,
        "| server memory < {KIB_PER_AGENT_TARGET} KiB per connected agent (CURVE, 0 → {} agents) | {} KiB | {} |",
        group(last_n as u64),
        num(per),
        status(per.map(|v| v < KIB_PER_AGENT_TARGET))
    );
    let idle = curve.and_then(|m| m.idle_client_rss_kib);
    let _ = writeln!(
        out,
        "| idle agent (`pantry-client`, CURVE) < 10 MiB RSS | {} KiB | {} |",
        kib(idle),
        status(idle.map(|v| v < IDLE_AGENT_TARGET_KIB))
    );
    relay_targets(results, out);
    if let Some(e) = &results.enrollment {
        enrollment_targets(e, out);
    }
    if let Some(p) = &results.presence {
        presence_targets(p, &results.modes, results.previous.as_ref(), results.jobs.as_ref(), out);
    }
    if let Some(j) = &results.jobs {
        jobs_targets(j, out);
    }
    if let Some(m) = &results.metrics {
        metrics_targets(m, out);
    }
    if let Some(c) = &results.cluster {
        cluster_targets(c, out);
    }
    let _ = writeln!(out);
}

/// What a target of issue 15 compares.
#[derive(Debug, Clone, Copy)]
enum Relay {
    /// Pantry / baseline throughput at (CURVE?, N), at least this.
    Throughput { curve: bool, n: usize, at_least: f64 },
    /// Pantry / baseline fan-out p50 at N (CURVE), at most this.
    Fanout { n: usize, at_most: f64 },
    /// The lowest Pantry / baseline handshake rate, at least this.
    Handshake { at_least: f64 },
}

/// Issue 15's targets, each against the raw relay in the same run.
const RELAY_TARGETS: [Relay; 6] = [
    Relay::Throughput { curve: true, n: 1, at_least: 0.80 },
    Relay::Throughput { curve: true, n: 1000, at_least: 0.85 },
    Relay::Throughput { curve: false, n: 1, at_least: 0.60 },
    Relay::Fanout { n: 1000, at_most: 1.15 },
    Relay::Fanout { n: 4000, at_most: 1.15 },
    Relay::Handshake { at_least: 0.95 },
];

/// One target of issue 15: what it says, this run's figure (with why
/// it is missing, or a remark), the previous report's, whether it is met.
#[derive(Debug, Clone)]
pub struct RelayTarget {
    pub what: String,
    pub now: String,
    pub before: String,
    pub met: Option<bool>,
}

/// Issue 15's targets: this run against the relay, and the same figure in
/// the previous report ("before").
pub fn relay_target_rows(results: &Results) -> Vec<RelayTarget> {
    let previous = results.previous.as_ref();
    let mode = |curve: bool| results.modes.iter().find(|m| m.curve == curve);
    let before = |v: Option<f64>, show: fn(Option<f64>) -> String| match v {
        Some(v) => show(Some(v)),
        None => "n/a".to_owned(),
    };
    RELAY_TARGETS
        .iter()
        .map(|&t| match t {
            Relay::Throughput { curve, n, at_least } => {
                let security = if curve { "CURVE" } else { "null" };
                let row = mode(curve).and_then(|m| m.rows.iter().find(|r| r.n == n));
                let now = row.and_then(|r| r.throughput.ratio());
                RelayTarget {
                    what: format!(
                        "throughput with {} {security} {} ≥ {} of the relay",
                        group(n as u64),
                        if n == 1 { "agent" } else { "agents" },
                        pct(Some(at_least))
                    ),
                    now: match (row, now) {
                        (None, _) => format!("not run ({security}, N = {})", group(n as u64)),
                        (Some(_), r) => pct(r),
                    },
                    before: before(previous.and_then(|p| p.throughput(security, n)), pct),
                    met: now.map(|r| r >= at_least),
                }
            }
            Relay::Fanout { n, at_most } => {
                let row = mode(true).and_then(|m| m.rows.iter().find(|r| r.n == n));
                let p50 = row.map(|r| r.fanout_p50_ms);
                let lost = p50.is_some_and(|b| b.pantry.is_some_and(f64::is_infinite));
                let now = p50.and_then(|b| b.ratio()).filter(|r| r.is_finite());
                RelayTarget {
                    what: format!(
                        "fan-out p50 with {} CURVE agents ≤ {} the relay's",
                        group(n as u64),
                        ratio(Some(at_most))
                    ),
                    now: match (row, now) {
                        (None, _) => format!("not run (CURVE, N = {})", group(n as u64)),
                        (Some(_), _) if lost => "answers lost".into(),
                        (Some(r), Some(v)) => format!(
                            "{} ({} / {} ms)",
                            ratio(Some(v)),
                            num(r.fanout_p50_ms.pantry),
                            num(r.fanout_p50_ms.baseline)
                        ),
                        (Some(_), None) => "–".into(),
                    },
                    before: before(previous.and_then(|p| p.fanout_p50("CURVE", n)), ratio),
                    met: if lost { Some(false) } else { now.map(|r| r <= at_most) },
                }
            }
            Relay::Handshake { at_least } => {
                let now = min_opt(results.handshakes.iter().map(|h| h.rate.ratio()));
                RelayTarget {
                    what: format!("handshake rate ≥ {} of the relay (lowest over key counts)", pct(Some(at_least))),
                    now: if results.handshakes.is_empty() { "not run".into() } else { pct(now) },
                    before: before(previous.and_then(|p| p.lowest_handshake()), pct),
                    met: now.map(|r| r >= at_least),
                }
            }
        })
        .collect()
}

/// The rows of issue 15's targets in the targets table.
fn relay_targets(results: &Results, out: &mut String) {
    for t in relay_target_rows(results) {
        let _ = writeln!(out, "| issue 15: {} | {} (before: {}) | {} |", t.what, t.now, t.before, status(t.met));
    }
}

/// The enrollment rows of the targets table.
fn enrollment_targets(e: &EnrollmentResult, out: &mut String) {
    let c = &e.crowd;
    let crowd = match c.wall_s {
        Some(s) => {
            format!("{} s, {} of {} registered", num(Some(s)), group(c.succeeded as u64), group(c.agents as u64))
        }
        None => format!("none of {} registered", group(c.agents as u64)),
    };
    let _ = writeln!(
        out,
        "| {} agents enroll with one token and register (CURVE) < {CROWD_TARGET_S} s, every one | {crowd} | {} |",
        group(c.agents as u64),
        status((c.agents > 0).then(|| c.complete() && c.wall_s.is_some_and(|s| s < CROWD_TARGET_S)))
    );
    let (median, max) = (e.median_total_s(), e.max_total_s());
    let measured = match (median, max) {
        (Some(m), Some(x)) => {
            format!("median {} s, max {} s ({} of {} runs answered)", secs(m), secs(x), e.runs.len(), e.repeats)
        }
        _ => format!("no run answered ({} tried)", e.repeats),
    };
    let _ = writeln!(
        out,
        "| `client:token` → one agent answering `echo` < {END_TO_END_TARGET_S} s (real binaries, median) | {measured} | {} |",
        status((e.repeats > 0).then(|| e.failed_runs.is_empty() && median.is_some_and(|m| m < END_TO_END_TARGET_S)))
    );
}

fn secs(v: f64) -> String {
    format!("{v:.3}")
}

fn ms_pair(a: Option<f64>, b: Option<f64>) -> String {
    format!("{} / {}", num(a), num(b))
}

/// The `## Enrollment` section: the crowd and the end-to-end runs.
pub fn enrollment_section(e: &EnrollmentResult) -> String {
    let mut out = String::new();
    let c = &e.crowd;
    let _ = writeln!(
        out,
        "## Enrollment\n\nCURVE, each part against a fresh `pantry-server` that knows only the bench's admin key.\n\n\
         **One token, {} agents.** The admin asks for one token of {} uses (`CreateToken` over its CURVE DEALER); \
         then {} simulated agents (several ZeroMQ contexts, connects paced at about 650 per second) each make \
         a key pair, connect a DEALER with it, send `Enroll` with the token and their own identity and, once \
         accepted, `RegisterClient` asking for an answer on the same connection. Wall time: from the first \
         connect to the last registration answer. An agent that hears nothing for 10 s gives up, as \
         `pantry-client enroll` does. Per agent: from making its key pair and connecting to its enrollment \
         answer, and from that answer to its registration answer (ms).\n",
        group(c.agents as u64),
        group(c.agents as u64),
        group(c.agents as u64),
    );
    let _ = writeln!(
        out,
        "| agents | registered | wall time (s) | `CreateToken` (ms) | enrollment answer p50 / max | \
         registration answer p50 / max | server CPU ms per agent |\n|---:|---:|---:|---:|---:|---:|---:|"
    );
    let _ = writeln!(
        out,
        "| {} | {} | {} | {} | {} | {} | {} |",
        group(c.agents as u64),
        group(c.succeeded as u64),
        num(c.wall_s),
        num(c.token_ms),
        ms_pair(c.enroll_p50_ms, c.enroll_max_ms),
        ms_pair(c.register_p50_ms, c.register_max_ms),
        num(c.server_cpu_ms_per_agent)
    );
    if !c.failures.is_empty() {
        let reasons: Vec<String> = c.failures.iter().map(|(r, n)| format!("{n} × {r}")).collect();
        let _ = writeln!(out, "\nFailed agents: {}.", reasons.join("; "));
    }
    let _ = writeln!(
        out,
        "\n**`client:token` → one agent answering, real binaries**, {} {}: `pantry-admin client:token`, \
         `pantry-client enroll --token T --server-public-key K` for a fresh agent directory, `pantry-client` \
         started, and an `echo` to its identity (as `pantry-admin -i IDENTITY echo` sends it, from an admin \
         connection already open) repeated until it is answered. Seconds.\n",
        e.repeats,
        if e.repeats == 1 { "run" } else { "runs" }
    );
    let _ = writeln!(
        out,
        "| run | `client:token` → echo answer | `client:token` | `enroll` | start → echo answer |\n|---:|---:|---:|---:|---:|"
    );
    for (i, r) in e.runs.iter().enumerate() {
        let _ = writeln!(
            out,
            "| {} | {} | {} | {} | {} |",
            i + 1,
            secs(r.total_s),
            secs(r.token_s),
            secs(r.enroll_s),
            secs(r.answer_s)
        );
    }
    let _ = writeln!(
        out,
        "| median | {} | | | |\n| max | {} | | | |",
        e.median_total_s().map(secs).unwrap_or_else(|| "–".into()),
        e.max_total_s().map(secs).unwrap_or_else(|| "–".into())
    );
    for why in &e.failed_runs {
        let _ = writeln!(out, "\nFailed: {}", why.lines().next().unwrap_or_default());
    }
    out
}

pub fn markdown(results: &Results) -> String {
    let cfg = &results.config;
    let mut out = String::new();
    let _ = writeln!(out, "# Pantry benchmark: latest run\n");
    let sequential: Vec<String> = results
        .modes
        .first()
        .map(|m| m.rows.iter().filter(|r| r.sequential).map(|r| group(r.n as u64)).collect())
        .unwrap_or_default();
    let _ = writeln!(
        out,
        "`make bench` (`pantry-bench`), {:.0} s in all. Machine: **{} cores**, **libzmq {}**. \
         Open files: soft limit {} (was {}), hard {}, so up to {} simulated agents per pool \
         ({} descriptors each) and both pools at once up to N = {}{}{}.\n",
        results.elapsed.as_secs_f64(),
        results.cores,
        results.libzmq,
        results.limits.soft,
        results.limits.soft_before,
        results.limits.hard,
        group(results.max_agents as u64),
        crate::limits::FDS_PER_AGENT,
        group(results.max_agents as u64 / 2),
        if sequential.is_empty() {
            String::new()
        } else {
            format!("; N = {} ran one pool at a time", sequential.join(", "))
        },
        if results.sizes_skipped.is_empty() {
            String::new()
        } else {
            format!("; N = {:?} skipped (over the limit)", results.sizes_skipped)
        },
    );
    let _ = writeln!(
        out,
        "Pantry is the release `pantry-server` in its own process; the baseline is a raw-libzmq \
         ROUTER-in / PUB-out relay (`pantry-bench relay`, its own process, CURVE with an accept-all ZAP \
         handler). Agents, admin and requesters are simulated in the bench process (own SUB + DEALER and \
         own CURVE key pair per agent, all keys enrolled). Every figure is the median of {} rounds that \
         alternate Pantry and the baseline; ratios are Pantry / baseline.\n",
        cfg.rounds
    );
    targets(results, &mut out);

    let _ = writeln!(
        out,
        "## Fan-out latency\n\nAn admin-side `echo` to every agent (stream `\"\"`), time until the last answer \
         arrived; {} requests per N and round, p50 and p99 per round, median over rounds (ms; ratio > 1: \
         Pantry slower). \
         A fan-out that lost answers (no answer for 1 s) is incomplete and counts as infinitely slow \
         (`lost`); a round stops after 4 incomplete ones.\n",
        cfg.fanout_requests
    );
    let _ = writeln!(
        out,
        "| security | N | Pantry p50 | baseline p50 | ratio p50 | Pantry p99 | baseline p99 | ratio p99 | \
         incomplete Pantry | incomplete baseline | answers delivered (P/B) |\n\
         |---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
    );
    for m in &results.modes {
        for r in &m.rows {
            let _ = writeln!(
                out,
                "| {} | {} | {} | {} | {} | {} | {} | {} | {} of {} | {} of {} | {} / {} |",
                m.name(),
                group(r.n as u64),
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
    }

    let t = &cfg.throughput;
    let _ = writeln!(
        out,
        "\n## Throughput\n\nEcho request/response pairs per second: {} concurrent requesters, each keeping {} \
         requests in flight, each request to one agent by identity (round robin over the N agents); {:.1} s \
         measured after {:.1} s of warm-up.\n",
        cfg.requesters,
        t.window,
        t.duration.as_secs_f64(),
        t.warmup.as_secs_f64()
    );
    let _ = writeln!(
        out,
        "| security | N | Pantry | baseline | Pantry / baseline | lost (P/B) | server CPU µs per request (P/B) |\n\
         |---|---:|---:|---:|---:|---:|---:|"
    );
    for m in &results.modes {
        for r in &m.rows {
            let _ = writeln!(
                out,
                "| {} | {} | {} | {} | {} | {}/{} | {} / {} |",
                m.name(),
                group(r.n as u64),
                num(r.throughput.pantry),
                num(r.throughput.baseline),
                pct(r.throughput.ratio()),
                r.lost.pantry,
                r.lost.baseline,
                num(r.cpu_us_per_request.pantry),
                num(r.cpu_us_per_request.baseline)
            );
        }
    }

    if !results.handshakes.is_empty() {
        let h = &cfg.handshake;
        let _ = writeln!(
            out,
            "\n## Handshake rate\n\nNew CURVE connections per second through the ZAP handler (client-side \
             HANDSHAKE_SUCCEEDED from socket monitors): {} connections in progress at a time, each reconnecting \
             as soon as it succeeded; {:.1} s measured. Known keys: the connecting clients' keys plus random \
             filler keys.\n",
            h.slots,
            h.duration.as_secs_f64()
        );
        let _ = writeln!(
            out,
            "| known keys | Pantry | baseline | Pantry / baseline | failed (P/B) | server CPU µs per handshake (P/B) |\n\
             |---:|---:|---:|---:|---:|---:|"
        );
        for row in &results.handshakes {
            let _ = writeln!(
                out,
                "| {} | {} | {} | {} | {}/{} | {} / {} |",
                group(row.known_keys as u64),
                num(row.rate.pantry),
                num(row.rate.baseline),
                pct(row.rate.ratio()),
                row.failed.pantry,
                row.failed.baseline,
                num(row.cpu_us.pantry),
                num(row.cpu_us.baseline)
            );
        }
    }

    let _ = writeln!(
        out,
        "\n## Memory\n\nServer VmRSS (KiB, `/proc/PID/status`) right after start and with N agents connected \
         and registered.\n"
    );
    let _ = writeln!(out, "| security | agents | Pantry server | baseline relay |\n|---|---:|---:|---:|");
    for m in &results.modes {
        let _ = writeln!(out, "| {} | 0 | {} | {} |", m.name(), kib(m.rss0_kib.pantry), kib(m.rss0_kib.baseline));
        for r in &m.rows {
            let _ = writeln!(
                out,
                "| {} | {} | {} | {} |",
                m.name(),
                group(r.n as u64),
                kib(r.rss_kib.pantry),
                kib(r.rss_kib.baseline)
            );
        }
        let per = kib_per_agent(m);
        let _ = writeln!(
            out,
            "| {} | KiB per agent (0 → {}) | {} | {} |",
            m.name(),
            m.rows.last().map(|r| group(r.n as u64)).unwrap_or_default(),
            num(per.pantry),
            num(per.baseline)
        );
        let _ = writeln!(
            out,
            "| {} | peak (VmHWM) | {} | {} |",
            m.name(),
            kib(m.peak_rss_kib.pantry),
            kib(m.peak_rss_kib.baseline)
        );
    }
    let idle: Vec<String> =
        results.modes.iter().map(|m| format!("{} {} KiB", m.name(), kib(m.idle_client_rss_kib))).collect();
    let _ = writeln!(out, "\nIdle `pantry-client` (release, registered, VmRSS): {}.\n", idle.join(", "));

    let _ = writeln!(
        out,
        "## Set-up\n\nSeconds from the first connect until every agent of a new pool answered an echo sent to \
         its group of {} (CURVE: two handshakes per agent; connects paced at about 650 agents per second).\n",
        crate::agents::GROUP_SIZE
    );
    let _ = writeln!(out, "| security | N | Pantry | baseline |\n|---|---:|---:|---:|");
    for m in &results.modes {
        for r in &m.rows {
            let _ = writeln!(
                out,
                "| {} | {} | {} | {} |",
                m.name(),
                group(r.n as u64),
                num(r.setup_s.pantry),
                num(r.setup_s.baseline)
            );
        }
    }
    let _ = writeln!(
        out,
        "\n## Server CPU per fan-out answer\n\nServer CPU time (all threads, `/proc/PID/task/*/schedstat`) during \
         the fan-out runs divided by the answers that reached the admin, microseconds.\n"
    );
    let _ = writeln!(out, "| security | N | Pantry | baseline | Pantry / baseline |\n|---|---:|---:|---:|---:|");
    for m in &results.modes {
        for r in &m.rows {
            let _ = writeln!(
                out,
                "| {} | {} | {} | {} | {} |",
                m.name(),
                group(r.n as u64),
                num(r.cpu_us_per_answer.pantry),
                num(r.cpu_us_per_answer.baseline),
                ratio(r.cpu_us_per_answer.ratio())
            );
        }
    }
    if let Some(e) = &results.enrollment {
        let _ = writeln!(out, "\n{}", enrollment_section(e).trim_end());
    }
    if let Some(p) = &results.presence {
        let section = presence_section(p, &results.modes, results.previous.as_ref(), results.jobs.as_ref());
        let _ = writeln!(out, "\n{}", section.trim_end());
    }
    if let Some(j) = &results.jobs {
        let _ = writeln!(out, "\n{}", jobs_section(j, cfg).trim_end());
    }
    if let Some(m) = &results.metrics {
        let _ = writeln!(out, "\n{}", metrics_section(m, cfg).trim_end());
    }
    if let Some(c) = &results.cluster {
        let _ = writeln!(out, "\n{}", cluster_section(c, cfg).trim_end());
    }
    let _ = writeln!(out, "\n![fan-out latency against N]({CHART})");
    out
}

/// "+3%", "−12%".
fn change(v: Option<f64>) -> String {
    match v.filter(|r| r.is_finite()) {
        Some(r) => {
            let p = (r - 1.0) * 100.0;
            if p < 0.0 {
                format!("−{:.0}%", -p)
            } else {
                format!("+{p:.0}%")
            }
        }
        None => "–".into(),
    }
}

/// One per-agent figure of this run next to the previous report's.
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
/// growth per agent and CPU per fan-out answer and per request at each N
/// of 100 or more (judged at the largest N, CURVE), and the presence
/// scenario's fresh server with registered agents (judged when the main
/// scenarios did not run).
pub fn per_agent_comparison(
    modes: &[ModeResult],
    presence: Option<&PresenceResult>,
    previous: Option<&Previous>,
) -> Vec<Compared> {
    let mut rows = Vec::new();
    for m in modes {
        let largest = m.rows.iter().map(|r| r.n).max().unwrap_or(0);
        let sec = m.name();
        let key = |n: usize| (sec.to_owned(), n);
        for r in m.rows.iter().filter(|r| r.n >= 100) {
            let judged = m.curve && r.n == largest;
            let now = match (m.rss0_kib.pantry, r.rss_kib.pantry) {
                (Some(z), Some(a)) => Some((a as f64 - z as f64) / r.n as f64),
                _ => None,
            };
            rows.push(Compared {
                what: format!("RSS per agent, KiB ({sec}, 0 → {})", group(r.n as u64)),
                now,
                before: previous.and_then(|p| p.kib_per_agent(sec, r.n)),
                judged,
            });
            if m.curve {
                rows.push(Compared {
                    what: format!("CPU per fan-out answer, µs ({sec}, N = {})", group(r.n as u64)),
                    now: r.cpu_us_per_answer.pantry,
                    before: previous.and_then(|p| p.cpu_us_per_answer.get(&key(r.n)).copied()),
                    judged,
                });
                rows.push(Compared {
                    what: format!("CPU per request (throughput), µs ({sec}, N = {})", group(r.n as u64)),
                    now: r.cpu_us_per_request.pantry,
                    before: previous.and_then(|p| p.cpu_us_per_request.get(&key(r.n)).copied()),
                    judged,
                });
            }
        }
    }
    if let Some(restart) = presence.and_then(|p| p.restart.as_ref()) {
        rows.push(Compared {
            what: format!(
                "RSS per registered agent, KiB (CURVE, fresh server, 0 → {} agents with a heartbeat)",
                group(restart.agents as u64)
            ),
            now: restart.kib_per_agent(),
            before: previous.and_then(|p| p.kib_per_agent("CURVE", restart.agents)),
            judged: modes.is_empty(),
        });
        rows.push(Compared {
            what: format!(
                "idle server CPU per registered agent, µs per second (CURVE, {} agents, heartbeat {} s; {} ms/s with \
                 none, {} ms/s with all: {} µs per heartbeat registration)",
                group(restart.agents as u64),
                restart.heartbeat_s,
                num(restart.idle_cpu_ms_per_s_empty),
                num(restart.idle_cpu_ms_per_s),
                num(restart.cpu_us_per_heartbeat())
            ),
            now: restart.idle_cpu_us_per_agent_s,
            before: None,
            judged: false,
        });
    }
    rows
}

/// The presence rows of the targets table.
fn presence_targets(
    p: &PresenceResult,
    modes: &[ModeResult],
    previous: Option<&Previous>,
    jobs: Option<&JobsResult>,
    out: &mut String,
) {
    if let Some(e) = &p.echo {
        let measured = match (e.median_ms(), e.max_ms()) {
            (Some(m), Some(x)) => format!(
                "median {} ms, max {} ms; exactly the {} named offline in {} of {} echoes (before: {} s)",
                num(Some(m)),
                num(Some(x)),
                e.killed.len(),
                e.correct_runs(),
                e.runs.len(),
                e.admin_timeout_s
            ),
            _ => "no echo answered".into(),
        };
        let _ = writeln!(
            out,
            "| `echo` to {} agents, {} killed {} s before: last answer < {OFFLINE_ECHO_TARGET_MS} ms (median), the {} \
             named offline (before: the admin's whole `--timeout`) | {measured} | {} |",
            group(e.agents as u64),
            e.killed.len(),
            e.kill_wait_s,
            e.killed.len(),
            status(e.median_ms().map(|m| m < OFFLINE_ECHO_TARGET_MS && e.correct_runs() == e.runs.len()))
        );
    } else {
        let _ = writeln!(out, "| `echo` with killed agents: offline ones named at once | failed | {} |", status(None));
    }
    let (median, max) = (p.median_kill_ms(), p.max_kill_ms());
    let _ = writeln!(
        out,
        "| SIGKILL of `pantry-client` → `offline` in `status` < 1 s (median of {}) | {} | {} |",
        p.kill_repeats,
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
        status(
            (p.kill_repeats > 0).then(|| p.kills.len() == p.kill_repeats && median.is_some_and(|m| m < KILL_TARGET_MS))
        )
    );
    match &p.restart {
        Some(r) => {
            let _ = writeln!(
                out,
                "| server restart with {} agents: all online again within 2 heartbeat intervals ({} s) | {} | {} |",
                group(r.agents as u64),
                2 * r.heartbeat_s,
                match (r.all_online_s, r.all_online_since_term_s) {
                    (Some(a), Some(t)) =>
                        format!("{} s after the new server started ({} s after SIGTERM)", secs(a), secs(t)),
                    _ => format!("not all: {} of {} online", group(r.online_at_end as u64), group(r.agents as u64)),
                },
                status(Some(r.back_in_time() == Some(true)))
            );
            let _ = writeln!(
                out,
                "| `status` right after the restart lists all {} (offline until they check in) | {} listed, {} offline, \
                 {} ms after the start | {} |",
                group(r.agents as u64),
                group(r.gap_listed as u64),
                group(r.gap_offline as u64),
                num(Some(r.gap_status_ms)),
                status(Some(r.gap_listed == r.agents))
            );
        }
        None => {
            let _ = writeln!(
                out,
                "| server restart: every agent online again within 2 heartbeat intervals | failed | {} |",
                status(None)
            );
        }
    }
    let compared = per_agent_comparison(modes, Some(p), previous);
    let judged: Vec<&Compared> = compared.iter().filter(|c| c.judged && c.ratio().is_some()).collect();
    let measured = if judged.is_empty() {
        match previous {
            None => "no previous results to compare with".into(),
            Some(_) => "nothing comparable in the previous results".into(),
        }
    } else {
        judged
            .iter()
            .map(|c| format!("{}: {} vs {} ({})", c.what, num(c.now), num(c.before), change(c.ratio())))
            .collect::<Vec<_>>()
            .join("; ")
    };
    let _ = writeln!(
        out,
        "| server memory and CPU per agent within 10% of the previous results | {measured}{} | {} |",
        job_store_note(jobs).map(|n| format!(" ({n})")).unwrap_or_default(),
        status(
            (!judged.is_empty()).then(|| judged.iter().all(|c| c.ratio().is_some_and(|r| r <= PER_AGENT_TOLERANCE)))
        )
    );
}

/// The `## Presence` section.
/// What the job store adds to the CPU per request (the previous results
/// had no job store), from the on/off comparison at its largest N.
fn job_store_note(jobs: Option<&JobsResult>) -> Option<String> {
    let row = jobs?.rows.iter().max_by_key(|r| r.n)?;
    let (on, off) = (row.cpu_us_per_request.pantry?, row.cpu_us_per_request.baseline?);
    Some(format!(
        "the job store, absent from the previous results, is part of the CPU per request: {} µs with it, {} µs \
         without, at N = {} in `## Jobs`",
        num(Some(on)),
        num(Some(off)),
        group(row.n as u64)
    ))
}

/// The `## Presence` section (`jobs`: for what the job store adds to the
/// CPU per request).
pub fn presence_section(
    p: &PresenceResult,
    modes: &[ModeResult],
    previous: Option<&Previous>,
    jobs: Option<&JobsResult>,
) -> String {
    let mut out = String::new();
    let heartbeat = p.restart.as_ref().map(|r| r.heartbeat_s);
    let _ = writeln!(
        out,
        "## Presence\n\nCURVE, against fresh `pantry-server`s that know the bench's admin key and the agents' keys. \
         Here the simulated agents behave like the real one: a `RegisterClient` with `heartbeat_interval` every \
         heartbeat{}, and another whenever their DEALER completes a handshake (a socket monitor per agent).\n",
        heartbeat.map(|h| format!(" ({h} s)")).unwrap_or_default()
    );
    if let Some(e) = &p.echo {
        let _ = writeln!(
            out,
            "**Offline clients are named at once.** {} agents; {} of them killed (their SUB and DEALER closed with \
             linger 0, so the server sees the TCP connections close) {} s before an admin's `echo` to every agent, \
             sent {} times from a CURVE DEALER. Time from sending to the last answer; the server's recipient list \
             names the offline ones (`custom.offline`). Before presence the admin waited for the killed agents until \
             its `--timeout` ({} s by default) and then named them as not answering.\n",
            group(e.agents as u64),
            e.killed.len(),
            e.kill_wait_s,
            e.runs.len(),
            e.admin_timeout_s
        );
        let _ = writeln!(
            out,
            "| echo | answers | listed online | named offline | exactly the killed ones | last answer (ms) |\n\
             |---:|---:|---:|---:|---|---:|"
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
            group((e.admin_timeout_s * 1000.0) as u64)
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
            group(r.agents as u64)
        );
        let _ = writeln!(
            out,
            "| agents | heartbeat (s) | SIGTERM → exited (s) | start → `started` (s) | first `status`: listed / offline (ms after the start) | all online again after the start (s) | after SIGTERM (s) | echo to all afterwards: answers (ms) |\n\
             |---:|---:|---:|---:|---:|---:|---:|---:|"
        );
        let _ = writeln!(
            out,
            "| {} | {} | {} | {} | {} / {} ({}) | {} | {} | {} |",
            group(r.agents as u64),
            r.heartbeat_s,
            secs(r.stop_s),
            secs(r.start_s),
            group(r.gap_listed as u64),
            group(r.gap_offline as u64),
            num(Some(r.gap_status_ms)),
            r.all_online_s.map(secs).unwrap_or_else(|| format!("not all ({} online)", r.online_at_end)),
            r.all_online_since_term_s.map(secs).unwrap_or_else(|| "–".into()),
            match (r.echo_answers, r.echo_ms) {
                (Some(a), Some(ms)) => format!("{} ({})", group(a as u64), num(Some(ms))),
                (Some(a), None) => group(a as u64),
                _ => "–".into(),
            }
        );
        let _ = writeln!(out);
    }
    let compared = per_agent_comparison(modes, Some(p), previous);
    let _ = writeln!(
        out,
        "**Server memory and CPU per registered agent** against {}. RSS per agent: server VmRSS growth from no \
         agent to N registered agents; CPU: server CPU time (all threads) per fan-out answer and per throughput \
         request, as in the tables above; idle CPU: the growth of the server's CPU time with nothing asked, from no \
         agent to every agent registered, over {} s each. \
         Judged (within 10%, CURVE): the largest N{}.\n",
        previous.map_or("no previous results".to_owned(), |p| format!("the previous results ({})", p.source)),
        p.restart.as_ref().map_or("–".into(), |r| num(Some(r.idle_window_s))),
        if modes.is_empty() { " (here: the fresh server's RSS per registered agent)" } else { "" }
    );
    if !modes.is_empty() {
        let _ = writeln!(
            out,
            "At small N the RSS per agent is mostly fixed growth divided by few agents (allocator arenas, the job \
             store's SQLite page cache filled by the throughput runs before), hence the judgement at the largest N.{}\n",
            job_store_note(jobs).map(|n| format!(" Note: {n}.")).unwrap_or_default()
        );
    }
    let _ = writeln!(out, "| figure | this run | previous | change | judged |\n|---|---:|---:|---:|---|");
    for c in &compared {
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
    for why in &p.failures {
        let _ = writeln!(out, "\nFailed: {}", why.lines().next().unwrap_or_default());
    }
    out
}

/// The job-store rows of the targets table.
fn jobs_targets(j: &JobsResult, out: &mut String) {
    let throughput: Vec<(usize, Option<f64>)> = j.rows.iter().map(|r| (r.n, r.throughput.ratio())).collect();
    let fan = j.rows.iter().max_by_key(|r| r.n).map(|r| (r.n, r.fanout_p50_ms.ratio()));
    let mut parts: Vec<String> =
        throughput.iter().map(|(n, r)| format!("throughput N = {}: {}", group(*n as u64), pct(*r))).collect();
    if let Some((n, r)) = fan {
        parts.push(format!("fan-out p50 N = {}: {}", group(n as u64), ratio(r)));
    }
    let ok = (!j.rows.is_empty()).then(|| {
        throughput.iter().all(|(_, r)| r.is_some_and(|r| r >= 1.0 - JOBS_ON_OFF_TOLERANCE))
            && fan.is_some_and(|(_, r)| r.is_some_and(|r| r <= 1.0 + JOBS_ON_OFF_TOLERANCE))
    });
    let _ = writeln!(
        out,
        "| job store on: throughput and fan-out latency within 5% of off (on / off, CURVE) | {} | {} |",
        if parts.is_empty() { "–".into() } else { parts.join("; ") },
        status(ok)
    );
    match &j.fill {
        Some(f) => {
            let _ = writeln!(
                out,
                "| `jobs` (raw `ListJobs`, the 20 most recent) over {} jobs < {LIST_JOBS_TARGET_MS} ms (median of {}) | {} ms (max {} ms) | {} |",
                group(f.jobs),
                f.list_ms.len(),
                num(f.median_list_ms()),
                num(f.max_list_ms()),
                status(f.median_list_ms().map(|m| m < LIST_JOBS_TARGET_MS && f.written_s.is_some()))
            );
        }
        None => {
            let _ =
                writeln!(out, "| `jobs` over a full store < {LIST_JOBS_TARGET_MS} ms | failed | {} |", status(None));
        }
    }
}

/// The `## Jobs` section.
pub fn jobs_section(j: &JobsResult, cfg: &crate::harness::Config) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "## Jobs\n\nCURVE. **Job store on vs off**: two `pantry-server`s at once, one with the default `jobs:` \
         (every echo a job, each answer recorded) and one with `jobs: enabled: false`; the benchmark's fan-out and \
         throughput measurements ({} fan-outs, {} requesters × {} in flight for {:.1} s) at each N, {} rounds \
         alternating between them, medians. Ratios: on / off.\n",
        cfg.fanout_requests,
        cfg.requesters,
        cfg.throughput.window,
        cfg.throughput.duration.as_secs_f64(),
        cfg.rounds
    );
    let _ = writeln!(
        out,
        "| N | fan-out p50 on / off (ms) | ratio | fan-out p99 on / off (ms) | incomplete on / off | throughput on / off (per s) | on / off | lost on / off | server CPU µs per request on / off |\n\
         |---:|---:|---:|---:|---:|---:|---:|---:|---:|"
    );
    for r in &j.rows {
        let _ = writeln!(
            out,
            "| {} | {} | {} | {} | {} of {} / {} of {} | {} | {} | {} / {} | {} |",
            group(r.n as u64),
            ms_pair(r.fanout_p50_ms.pantry, r.fanout_p50_ms.baseline),
            ratio(r.fanout_p50_ms.ratio()),
            ms_pair(r.fanout_p99_ms.pantry, r.fanout_p99_ms.baseline),
            r.fanout_incomplete.pantry,
            r.fanout_attempted.pantry,
            r.fanout_incomplete.baseline,
            r.fanout_attempted.baseline,
            ms_pair(r.throughput.pantry, r.throughput.baseline),
            pct(r.throughput.ratio()),
            r.lost.pantry,
            r.lost.baseline,
            ms_pair(r.cpu_us_per_request.pantry, r.cpu_us_per_request.baseline)
        );
    }
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
            cfg.requesters,
            cfg.throughput.window,
            group(f.jobs),
            f.lost,
            num(Some(f.seconds)),
            num((f.seconds > 0.0).then(|| f.jobs as f64 / f.seconds)),
            f.written_s.map_or("–".into(), |s| num(Some(s))),
            pantry_shared::commands::jobs::DEFAULT_LIMIT,
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
            group(d.agents as u64),
            d.echoes,
            group(d.agents as u64),
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
            group(d.agents as u64),
            d.per_job_bytes().map_or("–".into(), |b| group(b.max(0.0).round() as u64)),
            num(d.per_job_bytes().map(|b| b / d.agents.max(1) as f64))
        );
    }
    for why in &j.failures {
        let _ = writeln!(out, "\nFailed: {}", why.lines().next().unwrap_or_default());
    }
    out
}

/// "99.4%": on / off ratios are judged within a few percent.
fn pct1(v: Option<f64>) -> String {
    v.filter(|r| r.is_finite()).map(|r| format!("{:.1}%", r * 100.0)).unwrap_or_else(|| "–".into())
}

/// "1.012×".
fn ratio3(v: Option<f64>) -> String {
    v.filter(|r| r.is_finite()).map(|r| format!("{r:.3}×")).unwrap_or_else(|| "–".into())
}

/// The metrics rows of the targets table.
pub fn metrics_targets(m: &MetricsResult, out: &mut String) {
    let throughput: Vec<(usize, Option<f64>)> = m.rows.iter().map(|r| (r.n, r.throughput.ratio())).collect();
    let fan = m.rows.iter().max_by_key(|r| r.n).map(|r| (r.n, r.fanout_p50_ms.ratio()));
    let mut parts: Vec<String> =
        throughput.iter().map(|(n, r)| format!("throughput N = {}: {}", group(*n as u64), pct1(*r))).collect();
    if let Some((n, r)) = fan {
        parts.push(format!("fan-out p50 N = {}: {}", group(n as u64), ratio3(r)));
    }
    let ok = (!m.rows.is_empty()).then(|| {
        throughput.iter().all(|(_, r)| r.is_some_and(|r| r >= 1.0 - METRICS_ON_OFF_TOLERANCE))
            && fan.is_some_and(|(_, r)| r.is_some_and(|r| r <= 1.0 + METRICS_ON_OFF_TOLERANCE))
    });
    let _ = writeln!(
        out,
        "| metrics on: throughput and fan-out within 2% of off (on / off, CURVE, same run) | {} | {} |",
        if parts.is_empty() { "–".into() } else { parts.join("; ") },
        status(ok)
    );
    match &m.scrape {
        Some(sc) => {
            let measured = format!(
                "p50 {} ms, max {} ms; {} bytes; {ONLINE} {}{}",
                num(sc.p50_ms()),
                num(sc.max_ms()),
                sc.max_body_bytes().map_or("–".into(), |b| group(b as u64)),
                sc.online.map_or("missing".into(), group),
                if sc.agents < sc.wanted {
                    format!(" (only {} agents: open-file limit)", group(sc.agents as u64))
                } else {
                    String::new()
                }
            );
            let ok = sc.p50_ms().map(|ms| {
                ms < SCRAPE_TARGET_MS
                    && sc.max_body_bytes().is_some_and(|b| b < SCRAPE_TARGET_BYTES)
                    && sc.online == Some(sc.agents as u64)
            });
            let _ = writeln!(
                out,
                "| `GET /metrics` with {} CURVE agents connected and registered < {SCRAPE_TARGET_MS} ms (p50 of {}), \
                 < 64 KiB, showing {ONLINE} {} | {measured} | {} |",
                group(sc.agents as u64),
                sc.ms.len(),
                group(sc.agents as u64),
                status(ok)
            );
        }
        None => {
            let _ = writeln!(
                out,
                "| `GET /metrics` with 4,000 agents connected < {SCRAPE_TARGET_MS} ms, < 64 KiB | failed | {} |",
                status(None)
            );
        }
    }
}

const ONLINE: &str = "`pantry_clients{state=\"online\"}`";

/// The `## Metrics` section.
pub fn metrics_section(m: &MetricsResult, cfg: &crate::harness::Config) -> String {
    let mut out = String::new();
    let every = cfg.metrics.as_ref().map_or(1.0, |s| s.scrape_every.as_secs_f64());
    let _ = writeln!(
        out,
        "## Metrics\n\nCURVE. **Metrics on vs off**: two `pantry-server`s at once, one with `metrics: listen:` \
         (scraped over HTTP every {} s all the while: {} scrapes, {} failed) and one without (the server keeps \
         its counters either way; off, nothing serves them); the benchmark's fan-out and throughput measurements \
         ({} fan-outs, {} requesters × {} in flight for {:.1} s) at each N, {} rounds alternating between them, \
         medians. Ratios: on / off.\n",
        num(Some(every)),
        m.background_scrapes,
        m.background_failed,
        cfg.fanout_requests,
        cfg.requesters,
        cfg.throughput.window,
        cfg.throughput.duration.as_secs_f64(),
        cfg.rounds
    );
    let _ = writeln!(
        out,
        "| N | fan-out p50 on / off (ms) | ratio | fan-out p99 on / off (ms) | incomplete on / off | throughput on / off (per s) | on / off | lost on / off | server CPU µs per request on / off |\n\
         |---:|---:|---:|---:|---:|---:|---:|---:|---:|"
    );
    for r in &m.rows {
        let _ = writeln!(
            out,
            "| {} | {} | {} | {} | {} of {} / {} of {} | {} | {} | {} / {} | {} |",
            group(r.n as u64),
            ms_pair(r.fanout_p50_ms.pantry, r.fanout_p50_ms.baseline),
            ratio3(r.fanout_p50_ms.ratio()),
            ms_pair(r.fanout_p99_ms.pantry, r.fanout_p99_ms.baseline),
            r.fanout_incomplete.pantry,
            r.fanout_attempted.pantry,
            r.fanout_incomplete.baseline,
            r.fanout_attempted.baseline,
            ms_pair(r.throughput.pantry, r.throughput.baseline),
            pct1(r.throughput.ratio()),
            r.lost.pantry,
            r.lost.baseline,
            ms_pair(r.cpu_us_per_request.pantry, r.cpu_us_per_request.baseline)
        );
    }
    if let Some(sc) = &m.scrape {
        let _ = writeln!(
            out,
            "\n**A scrape with {} agents.** A fresh server with metrics on; {} {} agents connected and registered \
             (every one answered an echo {} s after the first connect; {ONLINE} showed them all {} s later){}; \
             `GET /healthz`: {}. Then {} `GET /metrics` over HTTP/1.0 (std::net, a new TCP connection each), one \
             after the other with 20 ms between them, each timed from the connect to the last byte. Server CPU: its \
             CPU time over the scrapes divided by their number (its idle work in that time included).\n",
            group(sc.agents as u64),
            group(sc.agents as u64),
            if sc.curve { "CURVE" } else { "null-security" },
            num(Some(sc.setup_s)),
            sc.online_wait_s.map_or("–".into(), |s| num(Some(s))),
            if sc.agents < sc.wanted {
                format!(" (not {}: the open-file limit)", group(sc.wanted as u64))
            } else {
                String::new()
            },
            sc.healthz.map_or("no answer".into(), |c| c.to_string()),
            sc.ms.len()
        );
        let _ = writeln!(
            out,
            "| agents | scrapes | p50 (ms) | max (ms) | body (bytes) | whole answer (bytes) | samples | {ONLINE} | server CPU per scrape (ms) |\n\
             |---:|---:|---:|---:|---:|---:|---:|---:|---:|"
        );
        let _ = writeln!(
            out,
            "| {} | {} | {} | {} | {} | {} | {} | {} | {} |",
            group(sc.agents as u64),
            sc.ms.len(),
            num(sc.p50_ms()),
            num(sc.max_ms()),
            sc.max_body_bytes().map_or("–".into(), |b| group(b as u64)),
            sc.response_bytes.iter().copied().max().map_or("–".into(), |b| group(b as u64)),
            group(sc.samples as u64),
            sc.online.map_or("missing".into(), group),
            num(sc.cpu_ms_per_scrape)
        );
    }
    for why in &m.failures {
        let _ = writeln!(out, "\nFailed: {}", why.lines().next().unwrap_or_default());
    }
    out
}

/// Issue 16's targets: fan-out across 3 servers within 1.3× of one
/// server's, failover within 3 heartbeat intervals, revocation on one
/// server cutting the key off on another within a second (the integration
/// test's bound), and the handshake rate with the keys from etcd ≥ 95% of
/// a single server's.
const CLUSTER_FANOUT_RATIO: f64 = 1.3;
const FAILOVER_INTERVALS: f64 = 3.0;
const REVOCATION_TARGET_MS: f64 = 1000.0;
const CLUSTER_HANDSHAKE_RATIO: f64 = 0.95;

/// The cluster rows of the targets table.
pub fn cluster_targets(c: &ClusterResult, out: &mut String) {
    let why_not = |part: &str| match &c.skipped {
        Some(why) => format!("not run: {why}"),
        None => c
            .failures
            .iter()
            .find(|f| f.starts_with(part))
            .map_or_else(|| "not run".into(), |f| format!("failed: {}", first_line(f))),
    };
    match &c.fanout {
        Some(f) => {
            let ratio_p50 = f.p50_ms.ratio().filter(|r| r.is_finite());
            let lost = f.incomplete.pantry + f.incomplete.baseline + f.unreachable.len();
            let measured = format!(
                "{} ({} / {} ms; p99 {} / {} ms){}{}",
                ratio(ratio_p50),
                num(f.p50_ms.pantry),
                num(f.p50_ms.baseline),
                num(f.p99_ms.pantry),
                num(f.p99_ms.baseline),
                if lost > 0 {
                    format!(
                        "; incomplete: {} of {} / {} of {}{}{}",
                        f.incomplete.pantry,
                        f.attempted.pantry,
                        f.incomplete.baseline,
                        f.attempted.baseline,
                        if f.unreachable.is_empty() {
                            String::new()
                        } else {
                            format!("; {} groups never all reachable (see `## Cluster`)", f.unreachable.len())
                        },
                        match (f.p50_listed_ms.pantry, f.fewest_listed.pantry) {
                            (Some(ms), Some(listed)) if listed < f.agents() => format!(
                                "; the admin's server listed as few as {} of {}, whose answers took p50 {} ms",
                                group(listed as u64),
                                group(f.agents() as u64),
                                num(Some(ms))
                            ),
                            _ => String::new(),
                        }
                    )
                } else {
                    String::new()
                },
                fewer_per_server(f.per_server, f.wanted_per_server)
            );
            let _ = writeln!(
                out,
                "| issue 16: fan-out echo to 3 × {} CURVE agents on 3 servers (admin on one) ≤ {} of {} on one server \
                 (p50, same run), every answer delivered | {measured} | {} |",
                group(f.per_server as u64),
                ratio(Some(CLUSTER_FANOUT_RATIO)),
                group(f.agents() as u64),
                status(Some(lost == 0 && ratio_p50.is_some_and(|r| r <= CLUSTER_FANOUT_RATIO)))
            );
        }
        None => {
            let _ = writeln!(
                out,
                "| issue 16: fan-out echo to 3 × 1,000 agents on 3 servers ≤ {} of 3,000 on one server | {} | {} |",
                ratio(Some(CLUSTER_FANOUT_RATIO)),
                why_not("fan-out"),
                status(None)
            );
        }
    }
    match &c.failover {
        Some(f) => {
            let total = f.agents();
            let echo = f.echo_all.as_ref();
            let measured = format!(
                "{} s (median agent {} s); {} of {} answered; `status` on a: {} of {} online; echo to all: {} of {} answered{}",
                f.all_answered_s.map_or("not all".into(), secs),
                f.first_answer_p50_s.map_or("–".into(), secs),
                group(f.answered as u64),
                group(f.per_server as u64),
                group(f.status_online as u64),
                group(total as u64),
                echo.map_or("–".into(), |e| group(e.answers as u64)),
                group(total as u64),
                fewer_per_server(f.per_server, f.wanted_per_server)
            );
            let _ = writeln!(
                out,
                "| issue 16: SIGKILL of 1 of 3 servers with {} agents each: every agent of it answers through another \
                 within {FAILOVER_INTERVALS} heartbeat intervals ({} s), nothing lost (all answer; `status` on a \
                 survivor lists all {} online) | {measured} | {} |",
                group(f.per_server as u64),
                num(Some(FAILOVER_INTERVALS * f.heartbeat_s as f64)),
                group(total as u64),
                status(Some(f.met(FAILOVER_INTERVALS)))
            );
        }
        None => {
            let _ = writeln!(
                out,
                "| issue 16: SIGKILL of 1 of 3 servers: its agents answer through another within {FAILOVER_INTERVALS} \
                 heartbeat intervals, nothing lost | {} | {} |",
                why_not("failover"),
                status(None)
            );
        }
    }
    match &c.revocation {
        Some(r) => {
            let _ = writeln!(
                out,
                "| issue 16: revocation on server a cuts the agent off on server c < {} ms (p50 / max of {}) | \
                 p50 {} ms, max {} ms{} | {} |",
                num(Some(REVOCATION_TARGET_MS)),
                r.tries,
                num(r.p50_ms()),
                num(r.max_ms()),
                if r.not_cut > 0 {
                    format!("; {} of {} not cut off within 5 s", r.not_cut, r.tries)
                } else {
                    String::new()
                },
                status((r.tries > 0).then(|| r.not_cut == 0 && r.max_ms().is_some_and(|ms| ms < REVOCATION_TARGET_MS)))
            );
        }
        None => {
            let _ = writeln!(
                out,
                "| issue 16: revocation on server a cuts the agent off on server c < {} ms | {} | {} |",
                num(Some(REVOCATION_TARGET_MS)),
                why_not("revocation"),
                status(None)
            );
        }
    }
    match &c.handshake {
        Some(h) => {
            let r = h.rate.ratio();
            let _ = writeln!(
                out,
                "| issue 16: handshake rate with the etcd-backed key snapshot ≥ {} of a single server's ({} known keys) \
                 | {} ({} / {} per s) | {} |",
                pct(Some(CLUSTER_HANDSHAKE_RATIO)),
                group(h.known_keys as u64),
                pct(r),
                num(h.rate.pantry),
                num(h.rate.baseline),
                status(r.map(|r| r >= CLUSTER_HANDSHAKE_RATIO))
            );
        }
        None => {
            let _ = writeln!(
                out,
                "| issue 16: handshake rate with the etcd-backed key snapshot ≥ {} of a single server's | {} | {} |",
                pct(Some(CLUSTER_HANDSHAKE_RATIO)),
                why_not("handshake rate"),
                status(None)
            );
        }
    }
}

fn first_line(text: &str) -> &str {
    text.lines().next().unwrap_or_default()
}

/// The failover's echoes are shown by windows of this many seconds.
const ECHO_WINDOW_S: f64 = 0.5;

/// The failover's echoes sent in one window of time.
#[derive(Debug, Clone, Default, PartialEq)]
struct EchoWindow {
    from: f64,
    to: f64,
    echoes: usize,
    /// Sent to (not answered yet) by the first echo of the window.
    asked: usize,
    /// Agents that answered for the first time, named offline by the last
    /// echo, silent at most.
    answered: usize,
    offline: usize,
    silent: usize,
}

/// The echoes by windows of `width` seconds (after the kill); windows
/// without an echo are left out.
fn echo_windows(echoes: &[GapEcho], width: f64) -> Vec<EchoWindow> {
    let mut windows: Vec<(i64, EchoWindow)> = Vec::new();
    for e in echoes {
        let slot = (e.sent_s / width).floor() as i64;
        match windows.last_mut() {
            Some((s, w)) if *s == slot => {
                w.to = e.sent_s;
                w.echoes += 1;
                w.answered += e.first;
                w.offline = e.offline;
                w.silent = w.silent.max(e.silent);
            }
            _ => windows.push((
                slot,
                EchoWindow {
                    from: e.sent_s,
                    to: e.sent_s,
                    echoes: 1,
                    asked: e.asked,
                    answered: e.first,
                    offline: e.offline,
                    silent: e.silent,
                },
            )),
        }
    }
    windows.into_iter().map(|(_, w)| w).collect()
}

/// The `## Cluster` section.
pub fn cluster_section(c: &ClusterResult, cfg: &crate::harness::Config) -> String {
    let mut out = String::new();
    if let Some(why) = &c.skipped {
        let _ = writeln!(
            out,
            "## Cluster\n\nNot run: {why}. The cluster scenario (three `pantry-server`s with `cluster:` on one etcd \
             against one server: fan-out across servers, SIGKILL of one, revocation, handshake rate) needs `etcd` \
             on the PATH or at /usr/bin/etcd."
        );
        return out;
    }
    let _ = writeln!(
        out,
        "## Cluster\n\nCURVE. Three `pantry-server`s (a, b, c) with `cluster:` on one etcd ({}, one member on \
         loopback, its data in a temporary directory on disk), `cluster.lease` {} s, against one `pantry-server` \
         without `cluster:`, in the same run on the same machine. {}Servers b and c started with a copy of a's \
         `server_keys.yml` (the cluster's key pair) and read the keys from etcd; the single server has the same \
         keys in its file.\n",
        c.etcd_version.as_deref().unwrap_or("version unknown"),
        c.lease_s,
        match &c.import {
            Some(i) => format!(
                "Keys: server a started with every key of the scenario ({}: the agents', the admin's, the handshake \
                 slots', the revoked agents') in its `server_keys.yml`; `pantry-server -c server.yml keys:import` \
                 copied them into etcd in {} s (one transaction per key: `{}`), and a's watch brought them to a. ",
                group(i.keys as u64),
                num(Some(i.seconds)),
                i.said
            ),
            None => String::new(),
        }
    );
    if let Some(f) = &c.fanout {
        let _ = writeln!(
            out,
            "**Fan-out across servers.** An admin (CURVE DEALER) connected to a sends `echo` to every agent: {} \
             agents connected to each of a, b and c (a publishes to its own and sends the request over its links to \
             b and c, which publish to theirs and route the answers back over the links), against {} agents on the \
             single server. {} echoes per round, time until the last answer; p50 and p99 per round, medians over {} \
             rounds alternating between the two{}. Server CPU: all servers' CPU time during the echoes per answer.{}\n",
            group(f.per_server as u64),
            group(f.agents() as u64),
            cfg.fanout_requests,
            cfg.rounds,
            if f.sequential {
                "; both sets of agents do not fit the open-file limit at once, so each round connects them anew"
            } else {
                ""
            },
            if f.per_server < f.wanted_per_server {
                format!(
                    " Not {} per server: the open-file limit ({}) allows {} agents of {} descriptors each in the bench.",
                    group(f.wanted_per_server as u64),
                    group(c.open_files),
                    group(f.agents() as u64),
                    crate::limits::FDS_PER_AGENT
                )
            } else {
                String::new()
            }
        );
        let _ = writeln!(
            out,
            "| | agents | p50 (ms) | p99 (ms) | incomplete | listed by the admin's server, fewest | p50 of the listed ones' answers (ms) | set-up (s) | server CPU µs per answer |\n\
             |---|---:|---:|---:|---:|---:|---:|---:|---:|"
        );
        for (i, name, agents) in [
            (0, "3 servers, admin on a", format!("3 × {}", group(f.per_server as u64))),
            (1, "1 server", group(f.agents() as u64)),
        ] {
            let pick = |b: &Both<Option<f64>>| if i == 0 { b.pantry } else { b.baseline };
            let (incomplete, attempted) = if i == 0 {
                (f.incomplete.pantry, f.attempted.pantry)
            } else {
                (f.incomplete.baseline, f.attempted.baseline)
            };
            let fewest = if i == 0 { f.fewest_listed.pantry } else { f.fewest_listed.baseline };
            let _ = writeln!(
                out,
                "| {name} | {agents} | {} | {} | {incomplete} of {attempted} | {} | {} | {} | {} |",
                num(pick(&f.p50_ms)),
                num(pick(&f.p99_ms)),
                fewest.map_or("–".into(), |l| group(l as u64)),
                num(pick(&f.p50_listed_ms)),
                num(pick(&f.setup_s)),
                num(pick(&f.cpu_us_per_answer))
            );
        }
        let _ = writeln!(
            out,
            "| 3 servers / 1 server | | {} | {} | | | {} | | {} |\n",
            ratio(f.p50_ms.ratio()),
            ratio(f.p99_ms.ratio()),
            ratio(f.p50_listed_ms.ratio()),
            ratio(f.cpu_us_per_answer.ratio())
        );
        if !f.cpu_us_per_answer_by_server.is_empty() {
            let each: Vec<String> = f
                .cpu_us_per_answer_by_server
                .iter()
                .zip(["a", "b", "c"])
                .map(|(v, id)| format!("{id} {}", num(*v)))
                .collect();
            let _ =
                writeln!(out, "Server CPU µs per answer of the cluster's fan-outs, by server: {}.\n", each.join(", "));
        }
        if !f.unreachable.is_empty() {
            let _ = writeln!(
                out,
                "Not every agent answered before the echoes were timed (echoes to each group of {} until all \
                 answered, {} s at most); the echoes were timed anyway:\n",
                crate::agents::GROUP_SIZE,
                num(Some(cfg.reachable_timeout.min(crate::cluster::REACHABLE_CAP).as_secs_f64()))
            );
            for why in &f.unreachable {
                let _ = writeln!(out, "- {why}");
            }
            let _ = writeln!(out);
        }
    }
    if let Some(f) = &c.failover {
        let total = f.agents();
        let _ = writeln!(
            out,
            "**Failover.** {} agents on each server, each sending a `RegisterClient` every heartbeat ({} s). Those \
             of the server to be killed behave like the real agent with the three servers as hosts: they also \
             register on every handshake, and once its DEALER has been disconnected for a heartbeat interval \
             (socket monitor; three while a TCP connection is up and its handshake pending) an agent closes both \
             sockets and connects new ones to the next server in its own order (the others rotated by its \
             identity, as the real agent's, so one server's agents spread over the others), registers first and \
             connects its SUB once the registration is answered (the other servers' agents, which never lose their \
             server here, go without that machinery: it costs the bench process two descriptors per agent). Server {} SIGKILLed; \
             from the admin on a, an echo every {} ms to those of {}'s agents that had not answered one yet (by \
             identity patterns) until each had answered once, through {}; then `status` on a until all {} were \
             online, and an echo to all. Times in seconds after the SIGKILL.{}\n",
            group(f.per_server as u64),
            f.heartbeat_s,
            f.killed,
            num(Some(f.echo_every_ms)),
            f.killed,
            f.moved_to,
            group(total as u64),
            if f.per_server < f.wanted_per_server {
                format!(
                    " Not {} per server: the open-file limit ({}) allows {}: {} descriptors per failing-over agent (SUB, \
                     DEALER, the DEALER's monitor: sockets and their libzmq mailboxes) plus {} while it moves, {} per \
                     agent of the other servers.",
                    group(f.wanted_per_server as u64),
                    group(c.open_files),
                    group(f.per_server as u64),
                    crate::limits::FDS_PER_MONITORED_AGENT,
                    crate::limits::FDS_PER_MOVING_AGENT,
                    crate::limits::FDS_PER_AGENT
                )
            } else {
                String::new()
            }
        );
        let _ = writeln!(
            out,
            "| agents | moves by the agents of a / b / c (failed) | all of {}'s answered again (s) | median agent (s) | `status` on a afterwards: agents listed / online | echo to all afterwards: answers / listed online / agents named offline |\n\
             |---:|---:|---:|---:|---:|---:|",
            f.killed
        );
        let _ = writeln!(
            out,
            "| 3 × {} | {} ({}) | {} | {} | {} / {} | {} |",
            group(f.per_server as u64),
            f.moves.iter().map(|&m| group(m)).collect::<Vec<_>>().join(" / "),
            f.failed_moves,
            f.all_answered_s.map_or_else(|| format!("not all ({} answered)", f.answered), secs),
            f.first_answer_p50_s.map_or("–".into(), secs),
            group(f.status_listed as u64),
            group(f.status_online as u64),
            f.echo_all.as_ref().map_or("–".into(), |e| format!(
                "{} / {} / {}",
                group(e.answers as u64),
                group(e.listed as u64),
                f.echo_offline_agents
            ))
        );
        if let Some(e) = &f.move_error {
            let _ = writeln!(
                out,
                "\n{} moves could not make their sockets (tried again a heartbeat interval later); the first said: {e}.",
                group(f.failed_moves)
            );
        }
        if f.status_others > 0 {
            let _ = writeln!(
                out,
                "\n`status` on a also listed {} other clients, offline (the revoked agents below, and the fan-out's \
                 agents the failover did not use), and the echo to all named them offline.",
                f.status_others
            );
        }
        let _ = writeln!(
            out,
            "\nWhat the echoes said about the moving agents they were sent to (those of the {} that had not \
             answered an earlier one), by windows of {} s: agents answering for the first time, the agents named \
             offline (`custom.offline`) by \
             the window's last echo, and the most agents one echo left silent (neither answered nor named offline: \
             an admin would wait for its `--timeout` for them). {} of {} echoes named some offline; {} left some \
             silent.\n",
            group(f.per_server as u64),
            num(Some(ECHO_WINDOW_S)),
            f.named_offline_echoes(),
            f.echoes.len(),
            f.echoes.iter().filter(|e| e.silent > 0).count()
        );
        let _ = writeln!(
            out,
            "| sent (s after the kill) | echoes | not answered yet at the first | answered (first time) | named offline at the last | silent, most in one echo |\n\
             |---|---:|---:|---:|---:|---:|"
        );
        for w in echo_windows(&f.echoes, ECHO_WINDOW_S) {
            let when = if w.echoes == 1 { secs(w.from) } else { format!("{} – {}", secs(w.from), secs(w.to)) };
            let _ = writeln!(
                out,
                "| {when} | {} | {} | {} | {} | {} |",
                w.echoes, w.asked, w.answered, w.offline, w.silent
            );
        }
        let _ = writeln!(out);
    }
    if let Some(r) = &c.revocation {
        let _ = writeln!(
            out,
            "**Revocation a → c.** {} agents with keys of their own (in etcd), registered on c (the SUB connected \
             after the registration answer); each revoked in turn by a raw `RevokeClient` from the admin on a. Time \
             from sending it to the first disconnection of the agent's DEALER or SUB seen by their socket monitors (c \
             shuts the key's connections when its watch sees the key go), and to a's answer; c logged `cut off a \
             revoked key` {} times.\n",
            r.tries, r.log_lines
        );
        let _ = writeln!(
            out,
            "| revocations | cut off on c: p50 / max (ms) | not cut off within 5 s | a's answer: p50 / max (ms) |\n|---:|---:|---:|---:|"
        );
        let _ = writeln!(
            out,
            "| {} | {} | {} | {} |\n",
            r.tries,
            ms_pair(r.p50_ms(), r.max_ms()),
            r.not_cut,
            ms_pair(crate::stats::median(&r.answer_ms), r.answer_ms.iter().copied().reduce(f64::max))
        );
        let _ = writeln!(
            out,
            "Afterwards `status` on c lists {} of the {} revoked agents and `status` on a {}{}.\n",
            r.listed_after[1],
            r.tries,
            r.listed_after[0],
            if r.listed_after.iter().any(|&n| n > 0) {
                " (every server should list none: a revoked key's clients leave the registry of every server of the \
                 cluster, as they leave a single server's)"
            } else {
                ""
            }
        );
    }
    if let Some(h) = &c.handshake {
        let _ = writeln!(
            out,
            "**Handshake rate with the etcd-backed key snapshot.** The handshake scenario ({} connections at a time, \
             {:.1} s measured, {} rounds alternating, medians) against server a (its keys read from etcd and kept in \
             memory, fed by the watch) and the single server (the same {} keys from its file).\n",
            cfg.handshake.slots,
            cfg.handshake.duration.as_secs_f64(),
            cfg.rounds,
            group(h.known_keys as u64)
        );
        let _ = writeln!(
            out,
            "| | handshakes per s | failed | server CPU µs per handshake |\n|---|---:|---:|---:|\n\
             | server a (cluster) | {} | {} | {} |\n| single server | {} | {} | {} |\n| a / single | {} | | {} |",
            num(h.rate.pantry),
            h.failed.pantry,
            num(h.cpu_us.pantry),
            num(h.rate.baseline),
            h.failed.baseline,
            num(h.cpu_us.baseline),
            pct(h.rate.ratio()),
            ratio(h.cpu_us.ratio())
        );
    }
    for why in &c.failures {
        let _ = writeln!(out, "\nFailed: {}", first_line(why));
    }
    out
}

/// A line of the chart: label, colour, dashed, the value of a row.
type Series = (&'static str, RGBColor, bool, Box<dyn Fn(&crate::harness::SizeRow) -> Option<f64>>);

/// Fan-out p50 and p99 against N, log-log, one panel per security mode.
fn chart(results: &Results, path: &Path) -> Result<()> {
    let modes: Vec<&ModeResult> = results.modes.iter().filter(|m| !m.rows.is_empty()).collect();
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

/// ` (only N per server: open-file limit)` when the cluster scenario ran
/// fewer agents per server than asked.
fn fewer_per_server(per_server: usize, wanted: usize) -> String {
    if per_server < wanted {
        format!(" (only {} per server: open-file limit)", group(per_server as u64))
    } else {
        String::new()
    }
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;
    use std::time::Duration;

    use super::*;
    use crate::harness::{HandshakeRow, SizeRow};

    #[test]
    fn failover_echoes_are_shown_by_windows() {
        let echo = |sent_s: f64, asked: usize, answered: usize, offline: usize| GapEcho {
            sent_s,
            asked,
            listed: answered,
            answered,
            offline,
            silent: asked - answered - offline,
            first: answered,
        };
        let echoes = [echo(0.1, 10, 0, 10), echo(0.2, 10, 0, 9), echo(1.1, 10, 4, 6), echo(1.2, 6, 6, 0)];
        let windows = echo_windows(&echoes, 0.5);
        assert_eq!(windows.len(), 2);
        assert_eq!((windows[0].echoes, windows[0].asked, windows[0].answered, windows[0].offline), (2, 10, 0, 9));
        assert_eq!((windows[0].silent, windows[0].from, windows[0].to), (1, 0.1, 0.2));
        assert_eq!((windows[1].echoes, windows[1].asked, windows[1].answered, windows[1].offline), (2, 10, 10, 0));
    }

    #[test]
    fn without_etcd_the_cluster_section_says_why() {
        let c = ClusterResult {
            skipped: Some("etcd is not installed (Debian's etcd-server; `make deps` installs it)".into()),
            ..Default::default()
        };
        let p = PathBuf::from("/nonexistent");
        let section = cluster_section(&c, &crate::harness::Config::smoke(p.clone(), p.clone(), p.clone(), p));
        assert!(section.starts_with("## Cluster\n\nNot run: etcd is not installed"), "{section}");
        let mut rows = String::new();
        cluster_targets(&c, &mut rows);
        assert_eq!(rows.lines().count(), 4, "{rows}");
        assert!(rows
            .lines()
            .all(|l| l.contains("| not run: etcd is not installed") && l.ends_with("| not measured |")));
    }

    fn row(n: usize, throughput: (f64, f64), fanout: (f64, f64)) -> SizeRow {
        SizeRow {
            n,
            throughput: Both { pantry: Some(throughput.0), baseline: Some(throughput.1) },
            fanout_p50_ms: Both { pantry: Some(fanout.0), baseline: Some(fanout.1) },
            ..Default::default()
        }
    }

    #[test]
    fn issue_15_rows_show_this_run_and_the_previous_report() {
        let p = PathBuf::from("/nonexistent");
        let previous = crate::previous::parse(
            "## Throughput\n\n| CURVE | 1 | 29,379 | 63,937 | 46% | 0/0 | 30.9 / 11.5 |\n\n## Handshake rate\n\n\
             | 100 | 1,213 | 1,402 | 86% | 0/0 | 813 / 678 |\n",
            "t".into(),
        );
        let curve = ModeResult {
            curve: true,
            rows: vec![
                row(1, (82.0, 100.0), (1.0, 1.0)),
                row(1000, (84.0, 100.0), (40.0, 36.0)),
                row(4000, (1.0, 1.0), (f64::INFINITY, 150.0)),
            ],
            ..Default::default()
        };
        let results = Results {
            cores: 2,
            libzmq: "4.3.4".into(),
            limits: crate::limits::FdLimits { soft_before: 20000, soft: 20000, hard: 20000 },
            max_agents: 4850,
            sizes_skipped: Vec::new(),
            modes: vec![curve],
            handshakes: vec![HandshakeRow {
                known_keys: 100,
                rate: Both { pantry: Some(96.0), baseline: Some(100.0) },
                ..Default::default()
            }],
            enrollment: None,
            presence: None,
            jobs: None,
            metrics: None,
            cluster: None,
            previous,
            elapsed: Duration::from_secs(1),
            config: crate::harness::Config::smoke(p.clone(), p.clone(), p.clone(), p),
        };
        let rows: Vec<(String, String, Option<bool>)> =
            relay_target_rows(&results).into_iter().map(|t| (t.now, t.before, t.met)).collect();
        let expected = [
            ("82%", "46%", Some(true)),
            ("84%", "n/a", Some(false)),
            ("not run (null, N = 1)", "n/a", None),
            ("1.11× (40.0 / 36.0 ms)", "n/a", Some(true)),
            ("answers lost", "n/a", Some(false)),
            ("96%", "86%", Some(true)),
        ];
        for (got, want) in rows.iter().zip(expected) {
            assert_eq!((got.0.as_str(), got.1.as_str(), got.2), want);
        }
        let md = markdown(&results);
        assert!(
            md.contains("| issue 15: throughput with 1 CURVE agent ≥ 80% of the relay | 82% (before: 46%) | met |"),
            "{md}"
        );
    }
}
