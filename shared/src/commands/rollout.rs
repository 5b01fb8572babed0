//! Rollouts: `echo`, `exec` and `upload` in batches (`--batch`, `--canary`,
//! `--batch-wait`), with a failure budget (`--max-fail`, `--on-fail`), run
//! by the server as one job; and the one final state every targeted agent
//! ends in, rollout or not.
//!
//! The admin puts the plan in the request's `custom.rollout`; the server
//! resolves the targets, orders them (`--order`, the random seed recorded
//! with the job), and starts a batch only when every agent of the one
//! before is in a final state. Once more agents have failed than the budget
//! allows, no agent starts after that batch: the rest are `skipped`
//! (`abort`) or wait for `job resume` (`pause`).

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::message::Message;

/// Where a request carries its rollout plan.
pub const ROLLOUT_FIELD: &str = "rollout";

/// How long each agent of a request is waited for (milliseconds): after
/// that it is `no-answer`.
pub const WAIT_FIELD: &str = "wait_ms";

/// The job a request re-runs (`--from-job`).
pub const RERUN_FIELD: &str = "rerun_of";

/// The one final state of every agent a job targets.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum AgentState {
    Ok,
    /// Answered with a non-zero exit or an error.
    Failed,
    /// Killed at its `--timeout`.
    Timeout,
    /// Nothing before the job's deadline.
    NoAnswer,
    /// Offline when its turn came.
    Offline,
    /// The agent refused (`allow_exec: false`, a type it does not run).
    Refused,
    Cancelled,
    /// Never started: the job was aborted or its budget spent.
    Skipped,
}

impl AgentState {
    pub const ALL: [AgentState; 8] = [
        AgentState::Ok,
        AgentState::Failed,
        AgentState::Timeout,
        AgentState::NoAnswer,
        AgentState::Offline,
        AgentState::Refused,
        AgentState::Cancelled,
        AgentState::Skipped,
    ];

    pub fn name(self) -> &'static str {
        match self {
            AgentState::Ok => "ok",
            AgentState::Failed => "failed",
            AgentState::Timeout => "timeout",
            AgentState::NoAnswer => "no-answer",
            AgentState::Offline => "offline",
            AgentState::Refused => "refused",
            AgentState::Cancelled => "cancelled",
            AgentState::Skipped => "skipped",
        }
    }

    /// Whether it counts against the failure budget (`offline` only with
    /// `--offline-fails`).
    pub fn fails(self, offline_fails: bool) -> bool {
        match self {
            AgentState::Failed | AgentState::Timeout | AgentState::NoAnswer | AgentState::Refused => true,
            AgentState::Offline => offline_fails,
            AgentState::Ok | AgentState::Cancelled | AgentState::Skipped => false,
        }
    }
}

impl fmt::Display for AgentState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A word that names no [`AgentState`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("`{0}` is not a state (ok, failed, timeout, no-answer, offline, refused, cancelled, skipped)")]
pub struct NotAState(pub String);

impl FromStr for AgentState {
    type Err = NotAState;

    fn from_str(s: &str) -> Result<AgentState, NotAState> {
        AgentState::ALL.into_iter().find(|a| a.name() == s.trim()).ok_or_else(|| NotAState(s.to_owned()))
    }
}

/// A job as a whole.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum JobState {
    Running,
    /// A rollout waiting for `job resume` (or `job abort`).
    Paused,
    Done,
    Aborted,
    Cancelled,
    /// The server stopped while it ran: it was not resumed.
    Interrupted,
}

impl JobState {
    pub fn name(self) -> &'static str {
        match self {
            JobState::Running => "running",
            JobState::Paused => "paused",
            JobState::Done => "done",
            JobState::Aborted => "aborted",
            JobState::Cancelled => "cancelled",
            JobState::Interrupted => "interrupted",
        }
    }

    pub fn parse(s: &str) -> Option<JobState> {
        [
            JobState::Running,
            JobState::Paused,
            JobState::Done,
            JobState::Aborted,
            JobState::Cancelled,
            JobState::Interrupted,
        ]
        .into_iter()
        .find(|j| j.name() == s)
    }

    /// Whether nothing more happens to the job.
    pub fn is_final(self) -> bool {
        !matches!(self, JobState::Running | JobState::Paused)
    }
}

impl fmt::Display for JobState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A count of agents, or a share of the targets (rounded up).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Size {
    Count(u32),
    Percent(u32),
}

impl Size {
    /// How many of `total` agents, at least `min`.
    pub fn of(self, total: usize, min: usize) -> usize {
        let n = match self {
            Size::Count(n) => n as usize,
            Size::Percent(p) => (total * p as usize).div_ceil(100),
        };
        n.max(min)
    }
}

impl fmt::Display for Size {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Size::Count(n) => write!(f, "{n}"),
            Size::Percent(p) => write!(f, "{p}%"),
        }
    }
}

/// Why a size does not parse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SizeError {
    #[error("`{0}` is not a number of agents or a percentage (e.g. 10, 5%)")]
    NotASize(String),
    #[error("a batch of {0} agents runs none: give at least 1 (or 1%)")]
    Zero(String),
    #[error("a percentage is at most 100% (`{0}`)")]
    OverHundred(String),
}

/// `N` or `N%`: `zero_ok` for a failure budget (`--max-fail 0` stops at
/// the first failure), not for a batch.
pub fn parse_size(text: &str, zero_ok: bool) -> Result<Size, SizeError> {
    let t = text.trim();
    let (digits, percent) = match t.strip_suffix('%') {
        Some(d) => (d.trim(), true),
        None => (t, false),
    };
    let n: u32 = digits.parse().map_err(|_| SizeError::NotASize(text.to_owned()))?;
    if n == 0 && !zero_ok {
        return Err(SizeError::Zero(text.to_owned()));
    }
    if percent && n > 100 {
        return Err(SizeError::OverHundred(text.to_owned()));
    }
    Ok(if percent { Size::Percent(n) } else { Size::Count(n) })
}

/// `--on-fail`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum OnFail {
    /// The rest are skipped.
    #[default]
    Abort,
    /// The job waits for `job resume` or `job abort`.
    Pause,
}

/// `--order`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Order {
    #[default]
    Identity,
    Random,
}

/// A rollout's settings, as the admin gave them and the job records them.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct RolloutPlan {
    /// Agents per batch (after the canary); `None`: the rest in one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub batch: Option<Size>,
    /// A first batch of this many agents on their own.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub canary: Option<u32>,
    /// Pause between batches, milliseconds.
    #[serde(default)]
    pub batch_wait_ms: u64,
    /// The failure budget; `None`: none (every agent runs).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_fail: Option<Size>,
    #[serde(default)]
    pub on_fail: OnFail,
    #[serde(default)]
    pub order: Order,
    /// The random order's seed (recorded with the job).
    #[serde(default)]
    pub seed: u64,
    /// `offline` counts against the budget.
    #[serde(default)]
    pub offline_fails: bool,
}

impl RolloutPlan {
    /// The batch sizes for `total` agents, in order; they add up to it.
    pub fn batches(&self, total: usize) -> Vec<usize> {
        let mut sizes = Vec::new();
        let mut left = total;
        if let Some(canary) = self.canary.map(|c| (c as usize).min(left)).filter(|c| *c > 0) {
            sizes.push(canary);
            left -= canary;
        }
        let size = self.batch.map_or(left.max(1), |b| b.of(total, 1));
        while left > 0 {
            let n = size.min(left);
            sizes.push(n);
            left -= n;
        }
        sizes
    }

    /// Failures allowed among `total` agents before the rollout stops;
    /// `None`: no budget.
    pub fn budget(&self, total: usize) -> Option<usize> {
        self.max_fail.map(|m| m.of(total, 0))
    }

    /// `targets` in the plan's order (identity order, or shuffled by the
    /// seed: the same seed gives the same order).
    pub fn order_targets(&self, mut targets: Vec<String>) -> Vec<String> {
        targets.sort();
        if self.order == Order::Random {
            // A splitmix64 stream from the seed: Fisher–Yates.
            let mut state = self.seed;
            let mut next = move || {
                state = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
                let mut z = state;
                z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
                z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
                z ^ (z >> 31)
            };
            for i in (1..targets.len()).rev() {
                let j = (next() % (i as u64 + 1)) as usize;
                targets.swap(i, j);
            }
        }
        targets
    }

    /// Whether the request asked for a rollout at all.
    pub fn is_rollout(&self) -> bool {
        self.batch.is_some() || self.canary.is_some() || self.max_fail.is_some() || self.batch_wait_ms > 0
    }
}

/// The plan a request carries, if any.
pub fn plan(request: &Message) -> Option<RolloutPlan> {
    request.metadata.custom.get(ROLLOUT_FIELD).and_then(|v| serde_json::from_value(v.clone()).ok())
}

/// Puts `plan` in a request.
pub fn attach(request: &mut Message, plan: &RolloutPlan) {
    request.metadata.custom.insert(ROLLOUT_FIELD.into(), serde_json::to_value(plan).unwrap_or(Value::Null));
}

/// How long each agent is waited for, as the request says.
pub fn wait(request: &Message) -> Option<Duration> {
    request.metadata.custom.get(WAIT_FIELD).and_then(Value::as_u64).map(Duration::from_millis)
}

/// Set in an answer to a request that was cancelled while it ran.
pub const CANCELLED_FIELD: &str = "cancelled";

/// The state an agent's answer to a request of `kind` puts it in.
pub fn state_of(kind: super::Kind, answer: &Message) -> AgentState {
    if answer.metadata.custom.get(CANCELLED_FIELD) == Some(&Value::Bool(true)) {
        return AgentState::Cancelled;
    }
    if let Some(error) = answer.error() {
        let refused = super::says_unsupported(error, kind.wire()) || error.starts_with(super::exec::DISABLED);
        return if refused { AgentState::Refused } else { AgentState::Failed };
    }
    match kind {
        super::Kind::Exec => match super::exec::result(answer) {
            Some(r) if r.cancelled => AgentState::Cancelled,
            Some(r) if r.timed_out => AgentState::Timeout,
            Some(r) if r.succeeded() => AgentState::Ok,
            Some(_) => AgentState::Failed,
            // An answer without a result: an agent that does not run it.
            None => AgentState::Refused,
        },
        super::Kind::Upload if super::upload::result(answer).is_none() => AgentState::Refused,
        _ => AgentState::Ok,
    }
}

/// How many agents were in each state, in the order of [`AgentState::ALL`]:
/// `1,000 targeted: 962 ok, 30 failed, 8 skipped`.
pub fn summary(states: impl IntoIterator<Item = AgentState>) -> String {
    let mut counts = [0usize; 8];
    for s in states {
        counts[AgentState::ALL.iter().position(|a| *a == s).unwrap_or(0)] += 1;
    }
    let total: usize = counts.iter().sum();
    let parts: Vec<String> = AgentState::ALL
        .iter()
        .zip(counts)
        .filter(|(_, n)| *n > 0)
        .map(|(s, n)| format!("{} {s}", thousands(n)))
        .collect();
    if parts.is_empty() {
        return format!("{} targeted", thousands(total));
    }
    format!("{} targeted: {}", thousands(total), parts.join(", "))
}

/// `1234567` as `1,234,567`.
pub fn thousands(n: usize) -> String {
    let digits = n.to_string();
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_parse_and_refuse() {
        assert_eq!(parse_size("3", false), Ok(Size::Count(3)));
        assert_eq!(parse_size("10%", false), Ok(Size::Percent(10)));
        assert_eq!(parse_size("0", true), Ok(Size::Count(0)));
        assert!(matches!(parse_size("0", false), Err(SizeError::Zero(_))));
        assert!(matches!(parse_size("0%", false), Err(SizeError::Zero(_))));
        assert!(matches!(parse_size("-1", true), Err(SizeError::NotASize(_))));
        assert!(matches!(parse_size("150%", true), Err(SizeError::OverHundred(_))));
        assert_eq!(Size::Percent(10).of(1000, 1), 100);
        assert_eq!(Size::Percent(1).of(50, 1), 1, "rounded up");
        assert_eq!(Size::Percent(1).of(1000, 0), 10);
    }

    #[test]
    fn batches_cover_every_target_once() {
        let plan = RolloutPlan { batch: Some(Size::Count(3)), ..Default::default() };
        assert_eq!(plan.batches(12), [3, 3, 3, 3]);
        assert_eq!(plan.batches(10), [3, 3, 3, 1]);
        let canary = RolloutPlan { canary: Some(1), batch: Some(Size::Percent(50)), ..Default::default() };
        assert_eq!(canary.batches(10), [1, 5, 4]);
        assert_eq!(RolloutPlan::default().batches(7), [7]);
        assert!(RolloutPlan::default().batches(0).is_empty());
    }

    #[test]
    fn the_random_order_is_the_seeds() {
        let targets: Vec<String> = (0..20).map(|i| format!("web-{i:02}")).collect();
        let plan = RolloutPlan { order: Order::Random, seed: 42, ..Default::default() };
        let once = plan.order_targets(targets.clone());
        assert_eq!(once, plan.order_targets(targets.clone()));
        assert_ne!(once, RolloutPlan { seed: 43, ..plan.clone() }.order_targets(targets.clone()));
        let mut sorted = once.clone();
        sorted.sort();
        assert_eq!(sorted, targets);
        assert_eq!(RolloutPlan::default().order_targets(targets.clone()), targets);
    }

    #[test]
    fn summaries_count_every_state() {
        let states = std::iter::repeat_n(AgentState::Ok, 962)
            .chain(std::iter::repeat_n(AgentState::Failed, 30))
            .chain(std::iter::repeat_n(AgentState::Skipped, 8));
        assert_eq!(summary(states), "1,000 targeted: 962 ok, 30 failed, 8 skipped");
        assert_eq!("no-answer".parse::<AgentState>(), Ok(AgentState::NoAnswer));
        assert!(AgentState::Offline.fails(true) && !AgentState::Offline.fails(false));
    }
}
