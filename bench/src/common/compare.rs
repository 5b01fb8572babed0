//! Two systems side by side at N agents: a pool of agents on each, then,
//! round after round (alternating which goes first), fan-outs and a
//! throughput run on each; figures are medians over rounds. Pantry against
//! the relay uses it, and the on/off comparisons of two Pantry servers
//! (the job store, metrics), whose table and target are here too.

use std::fmt::Write as _;
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result};
use serde::{Deserialize, Serialize};

use crate::common::agents::{group_streams, Kind, Pool};
use crate::common::env::{Env, Measure};
use crate::common::keys::Pair;
use crate::common::markdown::{group, ms_pair, num, Target};
use crate::common::procs::{cpu_ns, cpu_us_per, rss_kib, Endpoints, PantryServer};
use crate::common::requesters::{fanout, throughput, wait_until_reachable, Requester};
use crate::common::ring::{requester_name, KeyRing, ADMIN_NAME};
use crate::common::stats::{median, order, percentile, Both};

/// A round stops its fan-outs after this many incomplete ones (each costs
/// the idle timeout).
const MAX_INCOMPLETE_PER_ROUND: usize = 4;

/// How long a fan-out waits with no answer before it counts as incomplete
/// (answers were dropped: they will never come).
const FANOUT_IDLE: Duration = Duration::from_secs(1);

/// Everything measured at one N (medians over rounds).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct SizeRow {
    pub n: usize,
    /// Both pools did not fit at once: each round built and dropped them in turn.
    pub sequential: bool,
    /// An incomplete fan-out counts as infinitely slow (`None` once read
    /// back from JSON, which has no infinity).
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

/// The requesting side for one system: an admin for fan-outs and the
/// concurrent requesters for throughput.
pub struct Clients {
    pub admin: Requester,
    pub requesters: Vec<Requester>,
}

impl Clients {
    pub fn connect(kind: Kind, endpoints: &Endpoints, ring: &KeyRing, curve: bool) -> Result<Clients> {
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

/// One of the two systems.
pub struct System<'a> {
    kind: Kind,
    /// What progress lines call it (`Pantry`, `baseline`, `jobs on`...).
    name: &'static str,
    endpoints: &'a Endpoints,
    clients: Clients,
    pid: u32,
}

impl<'a> System<'a> {
    /// `kind` at `endpoints` (process `pid`), its clients connected (with
    /// the ring's keys under CURVE).
    pub fn connect(
        kind: Kind,
        name: &'static str,
        endpoints: &'a Endpoints,
        pid: u32,
        ring: &KeyRing,
        curve: bool,
    ) -> Result<System<'a>> {
        Ok(System { kind, name, endpoints, clients: Clients::connect(kind, endpoints, ring, curve)?, pid })
    }
}

/// Per-round figures of one system at one N.
#[derive(Default)]
struct Samples {
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

/// One round of fan-outs to `n` agents.
#[derive(Default)]
pub struct Fanouts {
    /// Each one's time until the last answer, ms; a fan-out that lost
    /// answers counts as infinitely slow.
    pub times_ms: Vec<f64>,
    pub incomplete: usize,
    pub answers: u64,
    /// Answers that carried an error (agents that refused the echo).
    pub refused: u64,
    /// The times of those that got every answer of the agents the server
    /// listed, and the fewest agents it listed (Pantry only).
    pub listed_ms: Vec<f64>,
    pub fewest_listed: Option<usize>,
}

/// `m.fanout_requests` fan-outs, one after the other; a round stops after
/// `MAX_INCOMPLETE_PER_ROUND` incomplete ones.
pub fn fanouts(admin: &mut Requester, n: usize, m: &Measure) -> Result<Fanouts> {
    let mut r = Fanouts::default();
    for _ in 0..m.fanout_requests {
        if r.incomplete >= MAX_INCOMPLETE_PER_ROUND {
            break;
        }
        let f = fanout(admin, n, m.fanout_timeout, FANOUT_IDLE)?;
        r.answers += f.answers as u64;
        r.refused += f.refused as u64;
        let ms = f.elapsed.as_secs_f64() * 1000.0;
        if let Some(listed) = f.listed {
            r.fewest_listed = Some(r.fewest_listed.map_or(listed, |l| l.min(listed)));
            if f.answers >= listed {
                r.listed_ms.push(ms);
            }
        }
        if f.complete(n) {
            r.times_ms.push(ms);
        } else {
            r.incomplete += 1;
            r.times_ms.push(f64::INFINITY);
        }
    }
    Ok(r)
}

/// Builds a pool and waits until every agent answered a broadcast; the
/// seconds that took.
fn start_pool(env: &Env, system: &mut System, n: usize, ring: &KeyRing, curve: bool) -> Result<(Pool, f64)> {
    let started = Instant::now();
    let pairs: &[Pair] = if curve { &ring.agents } else { &[] };
    let pool = Pool::start(system.kind, system.endpoints, pairs, n)?;
    wait_until_reachable(&mut system.clients.admin, &group_streams(n), env.measure.reachable_timeout)
        .with_context(|| format!("{} pool of {n}", system.name))?;
    Ok((pool, started.elapsed().as_secs_f64()))
}

/// Fan-outs then a throughput run on one system.
fn measure(env: &Env, system: &mut System, n: usize, samples: &mut Samples) -> Result<()> {
    let m = &env.measure;
    let started = Instant::now();
    let cpu = cpu_ns(system.pid);
    let Fanouts { times_ms: times, incomplete, answers, .. } = fanouts(&mut system.clients.admin, n, m)?;
    samples.cpu_us_per_answer.extend(cpu_us_per(system.pid, cpu, answers));
    if !times.is_empty() {
        samples.delivered.push(answers as f64 / (times.len() * n) as f64);
    }
    samples.incomplete += incomplete;
    samples.attempted += times.len();
    samples.p50.extend(percentile(&times, 50.0));
    samples.p99.extend(percentile(&times, 99.0));
    let cpu = cpu_ns(system.pid);
    let t = throughput(&mut system.clients.requesters, n, m.throughput)?;
    samples.cpu_us_per_request.extend(cpu_us_per(system.pid, cpu, t.total_completed));
    samples.throughput.push(t.per_second);
    samples.lost += t.lost;
    env.say(format!(
        "  N={n} {}: fan-out p50 {} ms ({incomplete} incomplete), throughput {}/s ({} lost) in {:.1} s",
        system.name,
        num(samples.p50.last().copied()),
        num(Some(t.per_second)),
        t.lost,
        started.elapsed().as_secs_f64()
    ));
    Ok(())
}

/// Both systems at N (`systems[0]`'s figures go to `Both::pantry`,
/// `systems[1]`'s to `Both::baseline`), each round in turn, both pools at
/// once unless `sequential`.
pub fn run_size(
    env: &Env,
    ring: &KeyRing,
    n: usize,
    sequential: bool,
    systems: &mut [System; 2],
    curve: bool,
) -> Result<SizeRow> {
    let mut row = SizeRow { n, sequential, ..Default::default() };
    let mut samples: [Samples; 2] = Default::default();
    let rounds = env.measure.rounds;
    if sequential {
        env.say(format!("N={n}: both pools do not fit the open-file limit at once: one at a time"));
        for round in 0..rounds {
            for i in order(round) {
                let system = &mut systems[i];
                let (pool, setup) = start_pool(env, system, n, ring, curve)?;
                env.say(format!("  N={n} {}: pool reachable in {setup:.1} s", system.name));
                if round == 0 {
                    *row.setup_s.at_mut(i) = Some(setup);
                    *row.rss_kib.at_mut(i) = rss_kib(system.pid);
                }
                measure(env, system, n, &mut samples[i])?;
                drop(pool);
            }
        }
    } else {
        let mut pools = Vec::new();
        for (i, system) in systems.iter_mut().enumerate() {
            let (pool, setup) = start_pool(env, system, n, ring, curve)?;
            *row.setup_s.at_mut(i) = Some(setup);
            pools.push(pool);
        }
        for (i, system) in systems.iter().enumerate() {
            *row.rss_kib.at_mut(i) = rss_kib(system.pid);
        }
        for round in 0..rounds {
            for i in order(round) {
                measure(env, &mut systems[i], n, &mut samples[i])?;
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

/// Two CURVE Pantry servers that differ in one setting (`label`:
/// "metrics", "jobs"; `names`: what the two are called, `[on, off]`),
/// compared at each of `sizes` with [`run_size`]; sizes that do not fit
/// are skipped.
pub fn compare_servers(
    env: &Env,
    ring: &KeyRing,
    label: &str,
    servers: [&PantryServer; 2],
    names: [&'static str; 2],
    sizes: &[usize],
) -> Result<Vec<SizeRow>> {
    let system =
        |k: usize| System::connect(Kind::Pantry, names[k], &servers[k].endpoints, servers[k].process.pid, ring, true);
    let mut systems = [system(0)?, system(1)?];
    let mut rows = Vec::new();
    for &n in sizes {
        if n == 0 || n > ring.agents.len() || n > env.limits.max_agents() {
            env.say(format!("{label}: N={n} skipped (keys or open files)"));
            continue;
        }
        let row = run_size(env, ring, n, !env.limits.both_pools_fit(n), &mut systems, true)?;
        env.say(format!(
            "{label} N={n}: fan-out p50 {} / {} ms, throughput {} / {} per s ({} / {})",
            num(row.fanout_p50_ms.pantry),
            num(row.fanout_p50_ms.baseline),
            num(row.throughput.pantry),
            num(row.throughput.baseline),
            names[0],
            names[1]
        ));
        rows.push(row);
    }
    Ok(rows)
}

/// The table of an on/off comparison (`pct` writes the throughput ratios,
/// `ratio` the fan-out's).
pub fn on_off_table(rows: &[SizeRow], pct: fn(Option<f64>) -> String, ratio: fn(Option<f64>) -> String) -> String {
    let mut out = String::from(
        "| N | fan-out p50 on / off (ms) | ratio | fan-out p99 on / off (ms) | incomplete on / off | \
         throughput on / off (per s) | on / off | lost on / off | server CPU µs per request on / off |\n\
         |---:|---:|---:|---:|---:|---:|---:|---:|---:|\n",
    );
    for r in rows {
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
    out
}

/// The target of an on/off comparison: throughput at every N at least
/// `1 - tolerance` of off, fan-out p50 at the largest N at most
/// `1 + tolerance` (`pct` and `ratio` write them).
pub fn on_off_target(
    what: String,
    rows: &[SizeRow],
    tolerance: f64,
    pct: fn(Option<f64>) -> String,
    ratio: fn(Option<f64>) -> String,
) -> Target {
    let throughput: Vec<(usize, Option<f64>)> = rows.iter().map(|r| (r.n, r.throughput.ratio())).collect();
    let fan = rows.iter().max_by_key(|r| r.n).map(|r| (r.n, r.fanout_p50_ms.ratio()));
    let mut parts: Vec<String> =
        throughput.iter().map(|(n, r)| format!("throughput N = {}: {}", group(*n as u64), pct(*r))).collect();
    if let Some((n, r)) = fan {
        parts.push(format!("fan-out p50 N = {}: {}", group(n as u64), ratio(r)));
    }
    let met = (!rows.is_empty()).then(|| {
        throughput.iter().all(|(_, r)| r.is_some_and(|r| r >= 1.0 - tolerance))
            && fan.is_some_and(|(_, r)| r.is_some_and(|r| r <= 1.0 + tolerance))
    });
    Target::new(what, if parts.is_empty() { "–".into() } else { parts.join("; ") }, met)
}
