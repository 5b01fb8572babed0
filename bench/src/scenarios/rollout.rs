//! Rollouts (issue 24, CURVE): a rollout over a thousand simulated agents
//! with a failure budget, stopping after the batch that crossed it; the
//! server's dispatch gap between batches; and `job cancel` of a job
//! running on a thousand agents. The agents run the bench's own `exec`
//! (`common::agents::simulated`), spawning nothing. The section says how
//! each figure is taken.

use std::collections::{BTreeSet, HashSet};
use std::fmt::Write as _;
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _, Result};
use pantry_shared::commands::job_control::{self, Action, Control};
use pantry_shared::commands::jobs::{self as jobs_command, JobDetail};
use pantry_shared::commands::rollout::{self, AgentState, JobState, RolloutPlan, Size, WAIT_FIELD};
use pantry_shared::commands::{recipients, Kind};
use pantry_shared::Message;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::common::admin::Admin;
use crate::common::agents::{identity, simulated, AgentOptions, ExecRecord, Kind as System, Pool};
use crate::common::env::{seconds, Env, Parts};
use crate::common::markdown::{compared, count, failures, ms_pair, num, targets_table, Previous, Target};
use crate::common::procs::PantryServer;
use crate::common::ring::{KeyRing, ADMIN_NAME};
use crate::common::stats::percentile;

/// The server's dispatch gap between batches, p50; every `cancelled`
/// answer after `job cancel` within this.
const GAP_TARGET_MS: f64 = 5.0;
const CANCEL_TARGET_MS: f64 = 2000.0;

/// How long the store is polled for what it says once a job is over (it
/// commits asynchronously).
const STORE_WAIT: Duration = Duration::from_secs(10);
/// After a rollout is over: how long a batch that should not start is
/// given to show up at the agents anyway.
const STRAGGLERS: Duration = Duration::from_millis(300);

/// What the rollout scenario does.
#[derive(Debug, Clone, Copy, clap::Args, Serialize, Deserialize)]
pub struct Settings {
    /// Agents the rollout targets (all of the pool).
    #[arg(long, default_value_t = 1000)]
    pub agents: usize,
    /// `--batch`, a percentage of the agents.
    #[arg(long, default_value_t = 10)]
    pub batch_percent: u32,
    /// Agents failing (exit 1) in each run, a percentage (rounded up).
    #[arg(long, default_value_t = 3)]
    pub failing_percent: u32,
    /// `--max-fail`, a percentage of the agents (`--on-fail abort`).
    #[arg(long, default_value_t = 1)]
    pub max_fail_percent: u32,
    /// Rollouts, each with its own failing agents.
    #[arg(long, default_value_t = 3)]
    pub runs: usize,
    /// Agents running the job that is cancelled.
    #[arg(long, default_value_t = 1000)]
    pub cancel_agents: usize,
    /// How long each agent is waited for (`wait_ms`), and the exec's
    /// `--timeout`, seconds.
    #[arg(long, value_parser = seconds, default_value = "60")]
    pub wait: Duration,
}

impl Settings {
    /// The most agent keys the scenario needs.
    pub fn max_agents(&self) -> usize {
        self.agents.max(self.cancel_agents).max(1)
    }

    fn plan(&self) -> RolloutPlan {
        RolloutPlan {
            batch: Some(Size::Percent(self.batch_percent)),
            max_fail: Some(Size::Percent(self.max_fail_percent)),
            ..RolloutPlan::default()
        }
    }
}

/// One rollout.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct RolloutRun {
    /// The failing agents' identities.
    pub failing: Vec<String>,
    /// Failures allowed, and the batch sizes the plan cuts.
    pub budget: usize,
    pub batches: usize,
    /// The batch whose failures crossed the budget (from 1), as the failing
    /// set says; `None`: none does.
    pub crossing: Option<usize>,
    /// Agents the server listed as targeted.
    pub listed: usize,
    /// Agents that received the request, and how many should have (those of
    /// batches 1 to `crossing`).
    pub received: usize,
    pub expected: usize,
    /// Agents that received it but should not have, and that should have
    /// but did not.
    pub extra: usize,
    pub missing: usize,
    /// The batches the agents that received it are in.
    pub batches_run: usize,
    /// `job ID` once the job was over: its state, the agents `skipped`
    /// (and how many should be), and those that ran in the wrong state
    /// (`failed` for an agent that exited 0 or the reverse).
    pub state: Option<String>,
    pub skipped: usize,
    pub expected_skipped: usize,
    pub wrong_state: usize,
    /// From sending to `job ID` saying the job was over, seconds.
    pub seconds: Option<f64>,
    /// Each batch transition: the last answer of one batch leaving its
    /// agent → the first request of the next arriving at one, ms.
    pub gaps_ms: Vec<f64>,
    pub stopped_right: bool,
}

/// `job cancel` of a plain job.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct CancelRun {
    pub agents: usize,
    pub listed: usize,
    /// Agents that received the request and held it.
    pub held: usize,
    /// What the server said it did (`JobControl`'s answer).
    pub control_state: Option<String>,
    pub control_agents: Option<usize>,
    pub control_note: Option<String>,
    /// Agents that answered `cancelled`, and from sending the cancel until
    /// each answer left its agent, ms.
    pub cancelled: usize,
    pub agent_p50_ms: Option<f64>,
    pub agent_max_ms: Option<f64>,
    /// `cancelled` answers the admin received (the server forwards a plain
    /// job's answers to its requester), and when, ms after the cancel.
    pub admin_cancelled: usize,
    pub admin_other: usize,
    pub admin_p50_ms: Option<f64>,
    pub admin_max_ms: Option<f64>,
    /// `job ID` afterwards: the agents `cancelled`, the job's state, and
    /// when it said so for all (s after the cancel).
    pub store_cancelled: usize,
    pub store_state: Option<String>,
    pub store_s: Option<f64>,
}

impl CancelRun {
    pub fn met(&self) -> bool {
        let within = |v: Option<f64>| v.is_some_and(|ms| ms <= CANCEL_TARGET_MS);
        self.agents > 0
            && self.cancelled == self.agents
            && self.admin_cancelled == self.agents
            && within(self.agent_max_ms)
            && within(self.admin_max_ms)
            && self.store_cancelled == self.agents
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Figures {
    pub settings: Settings,
    /// Agents of the rollouts (the settings', unless the open-file limit
    /// says fewer).
    pub agents: usize,
    pub runs: Vec<RolloutRun>,
    pub cancel: Option<CancelRun>,
    /// Parts that failed, and why.
    pub failures: Vec<String>,
}

impl Figures {
    pub fn stopped_right(&self) -> usize {
        self.runs.iter().filter(|r| r.stopped_right).count()
    }

    /// Every batch transition of every run, ms.
    pub fn gaps_ms(&self) -> Vec<f64> {
        self.runs.iter().flat_map(|r| r.gaps_ms.iter().copied()).collect()
    }

    pub fn gap_p50_ms(&self) -> Option<f64> {
        percentile(&self.gaps_ms(), 50.0)
    }

    pub fn gap_max_ms(&self) -> Option<f64> {
        self.gaps_ms().into_iter().reduce(f64::max)
    }
}

/// Runs the rollouts, then the cancel; a part that fails is recorded, the
/// other runs.
pub fn run(env: &Env, ring: &KeyRing, s: &Settings) -> Result<Figures> {
    let mut parts = Parts::new(env, "rollout");
    let n = s.agents.min(ring.agents.len()).min(env.limits.max_agents());
    let runs = parts.part("rollouts", rollouts(env, ring, s, n)).unwrap_or_default();
    let cancel = if s.cancel_agents > 0 { parts.part("job cancel", cancel(env, ring, s)) } else { None };
    Ok(Figures { settings: *s, agents: n, runs, cancel, failures: parts.failures })
}

/// A fresh server and `n` simulated agents that run the bench's exec,
/// reachable; the admin connected.
fn start(env: &Env, ring: &KeyRing, n: usize) -> Result<(PantryServer, Pool, Admin)> {
    let server = env.server_for(ring, "")?;
    let options = AgentOptions { simulated_exec: true, ..AgentOptions::default() };
    let pool = Pool::start_with(System::Pantry, &server.endpoints, &ring.agents, 0..n, options)?;
    env.reach(&server.endpoints, ring, n)?;
    let admin = Admin::connect(&server, &ring.admin, ADMIN_NAME)?;
    Ok((server, pool, admin))
}

/// A request for every agent (stream `""`), stamped as `pantry-admin`
/// stamps one: the wait, and the plan when there is one.
fn stamped(args: Vec<String>, s: &Settings, plan: Option<&RolloutPlan>) -> Message {
    let mut request = simulated::request(args, s.wait.as_secs_f64());
    request.metadata.custom.insert(WAIT_FIELD.into(), Value::from(s.wait.as_millis() as u64));
    if let Some(plan) = plan {
        rollout::attach(&mut request, plan);
    }
    request
}

/// The server's list of who is targeted: how many are online.
fn listed(admin: &Admin, uuid: &str, timeout: Duration) -> Result<usize> {
    let end = Instant::now() + timeout;
    loop {
        let m = admin.recv(uuid, end).with_context(|| format!("no recipient list within {timeout:?}"))?;
        if m.is_client_response_list() {
            return Ok(recipients::online(&m).len());
        }
        if let Some(error) = m.error() {
            bail!("refused: {error}");
        }
    }
}

/// `job ID` until `done` says so of it, or `wait` passed: the last one seen.
fn show_until(admin: &Admin, id: &str, wait: Duration, done: impl Fn(&JobDetail) -> bool) -> Option<JobDetail> {
    let end = Instant::now() + wait;
    let mut last = None;
    loop {
        if let Ok(uuid) = admin.send(jobs_command::show_request(id)) {
            let shown = admin.recv(&uuid, Instant::now() + Duration::from_secs(10)).and_then(|m| jobs_command::job(&m));
            if let Some(job) = shown {
                let over = done(&job);
                last = Some(job);
                if over {
                    return last;
                }
            }
        }
        if Instant::now() >= end {
            return last;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn rollouts(env: &Env, ring: &KeyRing, s: &Settings, n: usize) -> Result<Vec<RolloutRun>> {
    if n == 0 || s.runs == 0 {
        return Ok(Vec::new());
    }
    let (server, pool, admin) = start(env, ring, n)?;
    env.say(format!(
        "rollout: {n} agents on pid {}; {} rollouts, --batch {}% --max-fail {}%, {}% failing",
        server.process.pid, s.runs, s.batch_percent, s.max_fail_percent, s.failing_percent
    ));
    let mut runs = Vec::with_capacity(s.runs);
    for run in 0..s.runs {
        let r = rollout_run(&admin, &pool, s, n, run)?;
        env.say(format!(
            "rollout: run {}: {} failing, budget {}, crossing batch {} of {}; {} agents received it ({} expected) \
             in {} batches, {} skipped, job {}: {}; dispatch gaps p50 {} ms, max {} ms",
            run + 1,
            r.failing.len(),
            r.budget,
            r.crossing.map_or("-".into(), |c| c.to_string()),
            r.batches,
            r.received,
            r.expected,
            r.batches_run,
            r.skipped,
            r.state.as_deref().unwrap_or("-"),
            if r.stopped_right { "stopped right" } else { "NOT stopped right" },
            num(percentile(&r.gaps_ms, 50.0)),
            num(r.gaps_ms.iter().copied().reduce(f64::max)),
        ));
        runs.push(r);
    }
    drop(pool);
    Ok(runs)
}

fn rollout_run(admin: &Admin, pool: &Pool, s: &Settings, n: usize, run: usize) -> Result<RolloutRun> {
    let plan = s.plan();
    let sizes = plan.batches(n);
    let budget = plan.budget(n).unwrap_or(n);
    // Identity order: the plan's default, and the server's.
    let mut order: Vec<usize> = (0..n).collect();
    order.sort_by_key(|&i| identity(i));
    let failing = failing_set(n, Size::Percent(s.failing_percent).of(n, 0), run as u64 + 1);
    let fails: Vec<bool> = order.iter().map(|i| failing.contains(i)).collect();
    let crossing = crossing_batch(&sizes, &fails, budget);
    let ran_count = crossing.map_or(n, |c| sizes[..c].iter().sum());
    let should_run: Vec<usize> = order[..ran_count].to_vec();

    let mut failing_ids: Vec<String> = failing.iter().map(|&i| identity(i)).collect();
    failing_ids.sort();
    let args = std::iter::once(simulated::FAIL.to_owned()).chain(failing_ids.iter().cloned()).collect();
    let sent = Instant::now();
    let uuid = admin.send(stamped(args, s, Some(&plan)))?;
    let listed = listed(admin, &uuid, Duration::from_secs(10))?;
    let over = |j: &JobDetail| j.state.is_final() && j.agents.len() == n && j.agents.iter().all(|a| a.state.is_some());
    let job = show_until(admin, &uuid, s.wait + Duration::from_secs(60), over);
    let seconds = job.as_ref().filter(|j| j.state.is_final()).map(|_| sent.elapsed().as_secs_f64());
    std::thread::sleep(STRAGGLERS);
    let records = pool.execs(&uuid);

    // Where each agent is in the order, and which batch that is.
    let mut position = vec![0; n];
    for (p, &i) in order.iter().enumerate() {
        position[i] = p;
    }
    let batch_of = batch_index(&sizes);
    let mut received: Vec<usize> = records.iter().map(|r| r.agent).collect();
    received.sort_unstable();
    received.dedup();
    let mut expected = should_run.clone();
    expected.sort_unstable();
    let extra = received.iter().filter(|i| expected.binary_search(i).is_err()).count();
    let missing = expected.iter().filter(|i| received.binary_search(i).is_err()).count();
    let batches_run =
        received.iter().filter(|&&i| i < n).map(|&i| batch_of[position[i]]).collect::<BTreeSet<_>>().len();
    let gaps_ms = dispatch_gaps_ms(&per_batch(&records, sent, &position, &batch_of, sizes.len()));

    let mut r = RolloutRun {
        failing: failing_ids,
        budget,
        batches: sizes.len(),
        crossing,
        listed,
        received: received.len(),
        expected: expected.len(),
        extra,
        missing,
        batches_run,
        expected_skipped: n - ran_count,
        seconds,
        gaps_ms,
        ..RolloutRun::default()
    };
    if let Some(job) = &job {
        r.state = Some(job.state.name().to_owned());
        r.skipped = job.in_state(AgentState::Skipped).count();
        let ran: HashSet<String> = should_run.iter().map(|&i| identity(i)).collect();
        let fail_ids: HashSet<String> = r.failing.iter().cloned().collect();
        r.wrong_state = job
            .agents
            .iter()
            .filter(|a| {
                let want = match (ran.contains(&a.identity), fail_ids.contains(&a.identity)) {
                    (false, _) => AgentState::Skipped,
                    (true, true) => AgentState::Failed,
                    (true, false) => AgentState::Ok,
                };
                a.state != Some(want)
            })
            .count();
    }
    let want_state = if crossing.is_some() { JobState::Aborted } else { JobState::Done };
    r.stopped_right = listed == n
        && extra == 0
        && missing == 0
        && r.skipped == r.expected_skipped
        && r.wrong_state == 0
        && r.state.as_deref() == Some(want_state.name())
        && job.is_some_and(|j| j.agents.len() == n);
    Ok(r)
}

/// Each batch's records as (received, answered) ms after `origin`.
fn per_batch(
    records: &[ExecRecord],
    origin: Instant,
    position: &[usize],
    batch_of: &[usize],
    batches: usize,
) -> Vec<Vec<(f64, Option<f64>)>> {
    let ms = |t: Instant| t.saturating_duration_since(origin).as_secs_f64() * 1000.0;
    let mut out = vec![Vec::new(); batches];
    for r in records.iter().filter(|r| r.agent < position.len()) {
        out[batch_of[position[r.agent]]].push((ms(r.received), r.answered.map(ms)));
    }
    out
}

/// The batch (from 0) of each position in the order, for batches of
/// `sizes`.
fn batch_index(sizes: &[usize]) -> Vec<usize> {
    sizes.iter().enumerate().flat_map(|(b, &size)| std::iter::repeat(b).take(size)).collect()
}

/// The batch (from 1) after which the rollout stops: the first whose
/// failures bring the total past `budget`. `failing` is each agent's, in
/// rollout order; `None`: the total never passes it.
pub fn crossing_batch(sizes: &[usize], failing: &[bool], budget: usize) -> Option<usize> {
    let mut start = 0;
    let mut failures = 0;
    for (b, &size) in sizes.iter().enumerate() {
        let end = (start + size).min(failing.len());
        failures += failing[start..end].iter().filter(|&&f| f).count();
        if failures > budget {
            return Some(b + 1);
        }
        start = end;
    }
    None
}

/// The dispatch gap of each transition between consecutive batches that
/// both ran: the first receipt of the later one − the last answer of the
/// earlier one (ms, as given). A transition from a batch with an agent
/// that never answered has none (the server waited for its deadline).
pub fn dispatch_gaps_ms(batches: &[Vec<(f64, Option<f64>)>]) -> Vec<f64> {
    let mut gaps = Vec::new();
    for pair in batches.windows(2) {
        let (before, after) = (&pair[0], &pair[1]);
        if before.is_empty() || after.is_empty() {
            continue;
        }
        let last_answer = before.iter().map(|(_, a)| *a).try_fold(f64::NEG_INFINITY, |m, a| a.map(|a| m.max(a)));
        let first_receipt = after.iter().map(|(r, _)| *r).fold(f64::INFINITY, f64::min);
        if let Some(last) = last_answer {
            gaps.push(first_receipt - last);
        }
    }
    gaps
}

/// `count` distinct agents of `n`, pseudo-random from `seed` (a splitmix64
/// stream, a partial Fisher–Yates): the same seed, the same agents.
pub fn failing_set(n: usize, count: usize, seed: u64) -> Vec<usize> {
    let mut state = seed.wrapping_mul(0x2545_f491_4f6c_dd1d);
    let mut next = move || {
        state = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = state;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    };
    let mut all: Vec<usize> = (0..n).collect();
    let count = count.min(n);
    for i in 0..count {
        let j = i + (next() % (n - i) as u64) as usize;
        all.swap(i, j);
    }
    all.truncate(count);
    all.sort_unstable();
    all
}

fn cancel(env: &Env, ring: &KeyRing, s: &Settings) -> Result<CancelRun> {
    let m = s.cancel_agents.min(ring.agents.len()).min(env.limits.max_agents());
    let (server, pool, admin) = start(env, ring, m)?;
    env.say(format!("rollout: job cancel of a plain exec held by {m} agents (pid {})", server.process.pid));
    let uuid = admin.send(stamped(vec![simulated::HOLD.to_owned()], s, None))?;
    let mut c = CancelRun { agents: m, listed: listed(&admin, &uuid, Duration::from_secs(10))?, ..Default::default() };
    let end = Instant::now() + Duration::from_secs(30);
    loop {
        let held = pool.execs(&uuid);
        c.held = held.len();
        if c.held >= m || Instant::now() >= end {
            break;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    if c.held < m {
        bail!("only {} of {m} agents received the request within 30 s", c.held);
    }
    let control = Control { job: uuid.clone(), action: Action::Cancel, identities: vec![], grace_ms: 0 };
    let cancelled_at = Instant::now();
    let control_uuid = admin.send(job_control::request(&control))?;
    let mut admin_ms = Vec::with_capacity(m);
    let mut answered_control = false;
    let end = cancelled_at + Duration::from_secs(10);
    let both = [uuid.clone(), control_uuid.clone()];
    while !(answered_control && admin_ms.len() + c.admin_other >= m) {
        let Some(message) = admin.recv_any(&both, end) else { break };
        if message.uuid() == control_uuid {
            answered_control = true;
            match job_control::done(&message) {
                Some(done) => {
                    c.control_state = Some(done.state.name().to_owned());
                    c.control_agents = Some(done.agents);
                    c.control_note = Some(done.note);
                }
                None => c.control_note = message.error().map(str::to_owned),
            }
        } else if !message.is_client_response_list() {
            if rollout::state_of(Kind::Exec, &message) == AgentState::Cancelled {
                admin_ms.push(cancelled_at.elapsed().as_secs_f64() * 1000.0);
            } else {
                c.admin_other += 1;
            }
        }
    }
    c.admin_cancelled = admin_ms.len();
    c.admin_p50_ms = percentile(&admin_ms, 50.0);
    c.admin_max_ms = admin_ms.iter().copied().reduce(f64::max);
    let agent_ms: Vec<f64> = pool
        .execs(&uuid)
        .iter()
        .filter(|r| r.cancelled)
        .filter_map(|r| r.answered)
        .map(|a| a.saturating_duration_since(cancelled_at).as_secs_f64() * 1000.0)
        .collect();
    c.cancelled = agent_ms.len();
    c.agent_p50_ms = percentile(&agent_ms, 50.0);
    c.agent_max_ms = agent_ms.iter().copied().reduce(f64::max);
    let all_cancelled = |j: &JobDetail| j.in_state(AgentState::Cancelled).count() >= m;
    if let Some(job) = show_until(&admin, &uuid, STORE_WAIT, all_cancelled) {
        c.store_cancelled = job.in_state(AgentState::Cancelled).count();
        c.store_state = Some(job.state.name().to_owned());
        if all_cancelled(&job) {
            c.store_s = Some(cancelled_at.elapsed().as_secs_f64());
        }
    }
    env.say(format!(
        "rollout: job cancel on {m} agents ({}: {}): {} answered cancelled, p50 / max {} ms at the agents; \
         the admin received {} ({} other), p50 / max {} ms; job ID: {} cancelled, job {}",
        c.control_state.as_deref().unwrap_or("-"),
        c.control_note.as_deref().unwrap_or("-"),
        c.cancelled,
        ms_pair(c.agent_p50_ms, c.agent_max_ms),
        c.admin_cancelled,
        c.admin_other,
        ms_pair(c.admin_p50_ms, c.admin_max_ms),
        c.store_cancelled,
        c.store_state.as_deref().unwrap_or("-")
    ));
    drop(pool);
    Ok(c)
}

/// The three targets of issue 24, with the previous run's.
pub fn targets(f: &Figures, previous: Previous<Figures>) -> Vec<Target> {
    compared(measured(f), previous.figures.map(measured))
}

fn measured(f: &Figures) -> Vec<Target> {
    let s = &f.settings;
    let stopped = Target::new(
        format!(
            "issue 24: a rollout over {} agents, `--batch {}%`, {}% of them failing, `--max-fail {}%`: stops after \
             the batch that crossed the budget, every time ({} runs)",
            count(f.agents),
            s.batch_percent,
            s.failing_percent,
            s.max_fail_percent,
            s.runs
        ),
        format!(
            "{} of {} runs (crossing batches {})",
            f.stopped_right(),
            f.runs.len(),
            f.runs.iter().map(|r| r.crossing.map_or("-".into(), |c| c.to_string())).collect::<Vec<_>>().join(", ")
        ),
        (!f.runs.is_empty()).then(|| f.stopped_right() == s.runs && f.runs.len() == s.runs),
    );
    let gaps = f.gaps_ms();
    let gap = Target::new(
        format!(
            "issue 24: the server's dispatch gap between the last answer of one batch and the first request of the \
             next, p50 ≤ {GAP_TARGET_MS} ms"
        ),
        format!("p50 {} ms, max {} ms ({} transitions)", num(f.gap_p50_ms()), num(f.gap_max_ms()), gaps.len()),
        f.gap_p50_ms().map(|p| p <= GAP_TARGET_MS),
    );
    let cancel = match &f.cancel {
        Some(c) => Target::new(
            format!(
                "issue 24: `job cancel` of a job running on {} agents: every `cancelled` answer within {} s \
                 (and `job ID` says `cancelled` for each)",
                count(c.agents),
                CANCEL_TARGET_MS / 1000.0
            ),
            format!(
                "{} of {} cancelled, the last {} ms after the cancel at the agents (p50 {}), {} ms at the admin \
                 ({} received); `job ID`: {} cancelled",
                count(c.cancelled),
                count(c.agents),
                num(c.agent_max_ms),
                num(c.agent_p50_ms),
                num(c.admin_max_ms),
                count(c.admin_cancelled),
                count(c.store_cancelled)
            ),
            Some(c.met()),
        ),
        None => Target::new(
            format!(
                "issue 24: `job cancel` of a job running on {} agents: every `cancelled` answer within {} s",
                count(s.cancel_agents),
                CANCEL_TARGET_MS / 1000.0
            ),
            "failed".into(),
            None,
        ),
    };
    vec![stopped, gap, cancel]
}

/// The `## Rollout` section.
pub fn report(f: &Figures, previous: Previous<Figures>) -> String {
    let s = &f.settings;
    let mut out = String::new();
    let _ = write!(
        out,
        "## Rollout\n\nCURVE, a fresh `pantry-server` (job store on) for each part, with simulated agents that run \
         the bench's own `exec` themselves, spawning nothing: `pantry-bench-exec fail ID...` exits 1 on the agents \
         named and 0 on the others, `pantry-bench-exec hold` answers only once a `Cancel` of its job arrives (then \
         `cancelled`, as the real agent's killed command). Each agent records when it received each such request \
         and when its answer left it (one process, one clock).\n\n{}\n",
        targets_table(&targets(f, previous), previous.said)
    );
    let _ = writeln!(
        out,
        "**Rollouts.** {} runs of an `Exec` to all {} agents (stream `\"\"`) with `--batch {}% --max-fail {}%` \
         (`--on-fail abort`, identity order), each with its own pseudo-random {}% of failing agents (seeded: the \
         same sets every run of the bench). From the set follows the batch whose failures bring the total past the \
         budget; a run **stopped right** when exactly the agents of batches 1 to that one received the request, \
         every other agent is `skipped` in `job ID`, each that ran is `failed` or `ok` as its exit says, and the \
         job is `aborted`. **Dispatch gap**: at each batch that followed another, from the last answer of the one \
         before leaving its agent to the first request of the batch arriving at one of its agents: the answer's \
         way to the server, the server's bookkeeping (the next batch recorded as started and committed before it \
         is sent) and the requests' way out.\n",
        s.runs,
        count(f.agents),
        s.batch_percent,
        s.max_fail_percent,
        s.failing_percent
    );
    if !f.runs.is_empty() {
        out.push_str(
            "| run | failing | budget | crossing batch | batches run | agents that received it (expected) | \
             skipped (expected) | job | stopped right | gap p50 / max (ms) |\n\
             |---:|---:|---:|---:|---:|---:|---:|---|---|---:|\n",
        );
        for (k, r) in f.runs.iter().enumerate() {
            let _ = writeln!(
                out,
                "| {} | {} | {} | {} of {} | {} | {} ({}) | {} ({}) | {} | {} | {} |",
                k + 1,
                r.failing.len(),
                r.budget,
                r.crossing.map_or("–".into(), |c| c.to_string()),
                r.batches,
                r.batches_run,
                count(r.received),
                count(r.expected),
                count(r.skipped),
                count(r.expected_skipped),
                r.state.as_deref().unwrap_or("–"),
                if r.stopped_right { "yes" } else { "**no**" },
                ms_pair(percentile(&r.gaps_ms, 50.0), r.gaps_ms.iter().copied().reduce(f64::max))
            );
        }
        let _ = writeln!(
            out,
            "\nAll {} transitions: dispatch gap p50 {} ms, max {} ms.",
            f.gaps_ms().len(),
            num(f.gap_p50_ms()),
            num(f.gap_max_ms())
        );
    }
    if let Some(c) = &f.cancel {
        let _ = writeln!(
            out,
            "\n**`job cancel`.** A plain `Exec` `pantry-bench-exec hold` to all {} agents (stream `\"\"`; {} listed), \
             held by each; once every agent had it ({} did), a `JobControl` cancel from the admin's DEALER (`job \
             cancel ID`); the server said `{}`: {}. Times from sending the cancel: each agent's `cancelled` answer \
             leaving it: {} of {}, p50 {} ms, max {} ms; the admin receiving them (the server forwards a plain job's \
             answers to its requester): {} (and {} other answers), p50 {} ms, max {} ms. Then `job ID`: {} agents \
             `cancelled`, the job `{}`{}.",
            count(c.agents),
            count(c.listed),
            count(c.held),
            c.control_state.as_deref().unwrap_or("–"),
            c.control_note.as_deref().unwrap_or("no answer"),
            count(c.cancelled),
            count(c.agents),
            num(c.agent_p50_ms),
            num(c.agent_max_ms),
            count(c.admin_cancelled),
            c.admin_other,
            num(c.admin_p50_ms),
            num(c.admin_max_ms),
            count(c.store_cancelled),
            c.store_state.as_deref().unwrap_or("–"),
            c.store_s.map_or(String::new(), |t| format!(", {t:.2} s after the cancel")),
        );
    }
    failures(&mut out, &f.failures);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_crossing_batch_is_the_first_past_the_budget() {
        let sizes = [3, 3, 3, 3];
        let f = |bits: &str| bits.chars().map(|c| c == '1').collect::<Vec<bool>>();
        // The integration test's case: r-04..r-07 fail, budget 2 → batch 2.
        assert_eq!(crossing_batch(&sizes, &f("000111100000"), 2), Some(2));
        // At the budget is not past it.
        assert_eq!(crossing_batch(&sizes, &f("100100000000"), 2), None);
        assert_eq!(crossing_batch(&sizes, &f("100100000001"), 2), Some(4));
        assert_eq!(crossing_batch(&sizes, &f("000000000000"), 0), None);
        assert_eq!(crossing_batch(&sizes, &f("000000100000"), 0), Some(3));
        // The plan's own batches: 1,000 agents at 10% are ten of 100.
        let plan = Settings { agents: 1000, ..crate::common::env::defaults() }.plan();
        let sizes = plan.batches(1000);
        assert_eq!((sizes.len(), sizes[0], plan.budget(1000)), (10, 100, Some(10)));
        let mut failing = vec![false; 1000];
        for i in [5, 50, 150, 160, 170, 250, 260, 270, 280, 290, 301, 399, 700] {
            failing[i] = true;
        }
        assert_eq!(crossing_batch(&sizes, &failing, 10), Some(4), "the 11th failure is in batch 4");
        assert_eq!(batch_index(&sizes)[399], 3);
    }

    #[test]
    fn gaps_run_from_the_last_answer_to_the_first_receipt() {
        let batches = vec![
            vec![(0.0, Some(1.0)), (0.5, Some(3.0))],
            vec![(5.5, Some(6.0)), (4.0, Some(4.5))],
            vec![(4.6, Some(7.0))],
            vec![],
        ];
        // A later batch's request before the earlier's last answer shows as
        // a negative gap (a server that did not wait).
        assert_eq!(dispatch_gaps_ms(&batches), vec![1.0, 4.6 - 6.0]);
        // An agent that never answered: no gap for that transition.
        let silent = vec![vec![(0.0, None), (0.1, Some(0.2))], vec![(9.0, Some(9.1))], vec![(9.5, Some(9.6))]];
        assert_eq!(dispatch_gaps_ms(&silent), vec![9.5 - 9.1]);
        assert!(dispatch_gaps_ms(&[]).is_empty());
    }

    #[test]
    fn failing_sets_are_exact_deterministic_and_differ_by_seed() {
        let a = failing_set(1000, 30, 1);
        assert_eq!(a.len(), 30);
        assert!(a.windows(2).all(|w| w[0] < w[1]) && a.iter().all(|&i| i < 1000), "distinct, in range");
        assert_eq!(a, failing_set(1000, 30, 1));
        assert_ne!(a, failing_set(1000, 30, 2));
        assert_eq!(failing_set(5, 10, 3), vec![0, 1, 2, 3, 4]);
        assert_eq!(Size::Percent(3).of(1000, 0), 30);
    }
}
