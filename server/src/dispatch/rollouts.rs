//! Rollouts: a request for clients run in batches by the server, as one
//! job. In the order a rollout travels:
//!
//! - [`CommandDispatcher::start_rollout`]: the targets are resolved once,
//!   ordered (`--order`, the seed recorded), cut into batches and recorded,
//!   every agent `pending`; the requester hears who is targeted and may
//!   leave;
//! - [`CommandDispatcher::next_batch`]: the batch's agents that are online
//!   are recorded `started` (committed before anything is sent, so a server
//!   killed now never sends an agent the request twice), then sent the
//!   request; the offline ones are `offline`;
//! - each answer comes from the socket thread, judged ([`RolloutAnswer`]);
//!   an agent still silent at the batch's deadline is `no-answer`;
//! - [`CommandDispatcher::batch_done`]: once every agent of the batch is in
//!   a final state, the failure budget is checked: past it, no agent starts
//!   again (`abort`: the rest are `skipped`; `pause`: the job waits for
//!   `job resume`); otherwise the next batch starts after `--batch-wait`.
//!
//! A server that restarts resumes its unfinished rollouts from the next
//! batch ([`CommandDispatcher::resume_rollouts`]). Control (`job pause`,
//! `resume`, `abort`, `cancel`) is in [`super::control`].

use std::collections::{BTreeMap, HashMap};
use std::ops::Range;
use std::time::{Duration, Instant, SystemTime};

use actix::prelude::*;
use pantry_shared::commands::recipients;
use pantry_shared::commands::rollout::{self, AgentState, JobState, Order, RolloutPlan};
use pantry_shared::commands::Kind;
use pantry_shared::filter::Identities;
use pantry_shared::Message;
use serde_json::Value;
use slog::{error, info, warn};

use crate::client_registry::Recipients;
use crate::jobs::UnfinishedRollouts;
use crate::messages::RolloutAnswer;
use crate::store::{StoredRollout, Write, STARTED};

use super::job_log::stored_message;
use super::{CommandDispatcher, Request};

/// How long each agent of a batch is waited for when the request does not
/// say (an admin older than rollouts).
const DEFAULT_WAIT: Duration = Duration::from_secs(60);

/// After a restart, how long a batch waits for its agents to connect again
/// before the ones still away are `offline`.
const RESUME_WAIT: Duration = Duration::from_secs(20);
const RESUME_RETRY: Duration = Duration::from_millis(250);

/// One agent of a rollout.
struct Agent {
    identity: String,
    /// Its final state, once it has one.
    state: Option<AgentState>,
    /// Its request went out (or was about to).
    started: bool,
}

/// The batch running now.
struct Batch {
    number: usize,
    /// Agents started and not yet in a final state.
    outstanding: usize,
}

/// A rollout the server is running (or holding paused).
pub struct Rollout {
    kind: Kind,
    /// The request, as each batch is sent it.
    request: Message,
    plan: RolloutPlan,
    /// How long each agent of a batch is waited for.
    wait: Duration,
    /// In rollout order.
    agents: Vec<Agent>,
    by_identity: HashMap<String, usize>,
    /// Each batch's agents (indexes into `agents`), in order.
    batches: Vec<Range<usize>>,
    /// The batch to start next.
    next: usize,
    current: Option<Batch>,
    pub state: JobState,
    /// Failures allowed; `None`: no budget.
    budget: Option<usize>,
    /// Failures counted before the last `job resume` (the budget applies
    /// afresh after it).
    forgiven: usize,
    /// After a restart: until when a batch waits for its agents.
    resumed_until: Option<Instant>,
}

impl Rollout {
    fn new(kind: Kind, request: Message, plan: RolloutPlan, agents: Vec<(String, u32, Option<AgentState>)>) -> Rollout {
        let wait = rollout::wait(&request).unwrap_or(DEFAULT_WAIT);
        let mut batches: Vec<Range<usize>> = Vec::new();
        let mut last_batch = None;
        for (i, (_, batch, _)) in agents.iter().enumerate() {
            if last_batch != Some(*batch) {
                batches.push(i..i + 1);
                last_batch = Some(*batch);
            } else if let Some(range) = batches.last_mut() {
                range.end = i + 1;
            }
        }
        let budget = plan.budget(agents.len());
        let agents: Vec<Agent> = agents
            .into_iter()
            .map(|(identity, _, state)| Agent { identity, started: state.is_some(), state })
            .collect();
        let by_identity = agents.iter().enumerate().map(|(i, a)| (a.identity.clone(), i)).collect();
        let next =
            batches.iter().position(|b| agents[b.clone()].iter().any(|a| a.state.is_none())).unwrap_or(batches.len());
        Rollout {
            kind,
            request,
            plan,
            wait,
            agents,
            by_identity,
            batches,
            next,
            current: None,
            state: JobState::Running,
            budget,
            forgiven: 0,
            resumed_until: None,
        }
    }

    /// Agents in a state that counts against the budget.
    fn failures(&self) -> usize {
        let offline_fails = self.plan.offline_fails;
        self.agents.iter().filter(|a| a.state.is_some_and(|s| s.fails(offline_fails))).count()
    }

    fn over_budget(&self) -> bool {
        self.budget.is_some_and(|b| self.failures().saturating_sub(self.forgiven) > b)
    }

    /// The agents of the running batch that have not answered.
    pub fn running(&self) -> Vec<String> {
        let Some(batch) = &self.current else { return Vec::new() };
        self.agents[self.batches[batch.number].clone()]
            .iter()
            .filter(|a| a.started && a.state.is_none())
            .map(|a| a.identity.clone())
            .collect()
    }

    /// Sets the agents not started yet that `matching` selects to
    /// `skipped`; how many. The caller records them.
    pub fn skip(&mut self, matching: impl Fn(&str) -> bool) -> Vec<String> {
        let mut skipped = Vec::new();
        for agent in self.agents.iter_mut().filter(|a| !a.started && a.state.is_none()) {
            if matching(&agent.identity) {
                agent.state = Some(AgentState::Skipped);
                skipped.push(agent.identity.clone());
            }
        }
        skipped
    }

    /// The batch running now (from 0).
    pub fn current_batch(&self) -> Option<usize> {
        self.current.as_ref().map(|b| b.number)
    }

    pub fn is_between_batches(&self) -> bool {
        self.current.is_none()
    }

    /// `job resume`: the budget applies afresh from here.
    pub fn resume(&mut self) {
        self.forgiven = self.failures();
        self.state = JobState::Running;
    }

    fn summary(&self) -> String {
        rollout::summary(self.agents.iter().map(|a| a.state.unwrap_or(AgentState::Skipped)))
    }
}

/// Records `identities` of rollout `id` in `state` (a final state, or
/// [`STARTED`]).
fn agents_write(id: &str, identities: &[String], batch: usize, state: &str) -> Write {
    let agents = identities.iter().map(|i| (i.clone(), batch as u32 + 1, state.to_owned())).collect();
    Write::JobAgents { id: id.to_owned(), agents }
}

fn batch_write(id: &str, number: usize, size: usize, started: bool) -> Write {
    let now = Some(SystemTime::now());
    Write::Batch {
        id: id.to_owned(),
        number: number as u32 + 1,
        size: size as u32,
        started: if started { now } else { None },
        ended: if started { None } else { now },
    }
}

/// The uuid batch `number` (from 0) of rollout `id` goes to another
/// server's agents under: its answers come back as the rollout's.
pub(super) fn alias(id: &str, number: usize) -> String {
    format!("{id}~{}", number + 1)
}

/// A seed for `--order random` when the admin gave none.
fn fresh_seed(uuid: &str) -> u64 {
    let nanos = SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).map_or(0, |d| d.as_nanos() as u64);
    uuid.bytes().fold(nanos, |h, b| h.rotate_left(5) ^ u64::from(b)).max(1)
}

impl CommandDispatcher {
    /// A request for clients that asked for batches: resolved, recorded and
    /// started as a rollout.
    pub(super) fn start_rollout(
        &mut self,
        kind: Kind,
        mut request: Request,
        arguments: Value,
        mut plan: RolloutPlan,
        ctx: &mut Context<Self>,
    ) {
        if self.jobs.settings().is_none() {
            return self.refuse(&request, "a rollout is recorded as it goes: it needs the job store (jobs.enabled)");
        }
        let forwarded = match self.forwarder.plan(kind, &mut request) {
            Ok(forwarded) => forwarded,
            Err(reason) => return self.refuse(&request, reason.to_string()),
        };
        let work = self.resolve(forwarded);
        work.into_actor(self)
            .map(move |outcome, act, ctx| {
                let reached = match outcome {
                    Ok(reached) => reached,
                    Err(reason) => {
                        let reason = reason.to_string();
                        act.forwarder.abandon(&request, &reason);
                        return act.forwarder.refuse(&request, reason);
                    }
                };
                let uuid = request.message.uuid().to_owned();
                let online: Vec<String> = reached.online.iter().map(|r| r.identity.clone()).collect();
                let targets: Vec<String> =
                    online.iter().cloned().chain(reached.offline.iter().map(|o| o.identity.clone())).collect();
                if targets.is_empty() {
                    act.forwarder.routes().cancel(&uuid);
                    act.jobs.record(&request, kind, arguments, Vec::new(), Vec::new());
                    let list = recipients::respond(&request.message, &[], &[]);
                    return act.outbox.to_peer(request.peer, list);
                }
                if plan.order == Order::Random && plan.seed == 0 {
                    plan.seed = fresh_seed(&uuid);
                }
                let ordered = plan.order_targets(targets);
                let total = ordered.len();
                let mut numbered = Vec::with_capacity(total);
                let mut rest = ordered.into_iter();
                for (batch, size) in plan.batches(total).into_iter().enumerate() {
                    numbered.extend(rest.by_ref().take(size).map(|identity| (identity, batch as u32 + 1)));
                }
                // The plan as it runs (with its seed) is what the job keeps.
                rollout::attach(&mut request.message, &plan);
                act.jobs.record_rollout(&request, arguments, &plan, &numbered);
                act.forwarder.routes().follow_rollout(&uuid);
                let list = recipients::respond(&request.message, &online, &reached.offline);
                act.outbox.to_peer(request.peer.clone(), list);
                let agents = numbered.into_iter().map(|(identity, batch)| (identity, batch, None)).collect();
                let r = Rollout::new(kind, request.message, plan, agents);
                info!(act.log, "rollout started";
                    "job" => &uuid, "type" => kind.wire(), "targets" => r.agents.len(), "batches" => r.batches.len(),
                    "max_fail" => r.budget.map_or_else(|| "-".to_owned(), |b| b.to_string()),
                    "on_fail" => ?r.plan.on_fail, "key" => request.auth.as_ref().map_or("-", |a| a.key.as_str()));
                act.rollouts.insert(uuid.clone(), r);
                act.next_batch(uuid, ctx);
            })
            .spawn(ctx);
    }

    /// Starts the rollout's next batch (if it is running and between
    /// batches), or ends it when none is left.
    pub(super) fn next_batch(&mut self, id: String, ctx: &mut Context<Self>) {
        let Some(r) = self.rollouts.get_mut(&id) else { return };
        if r.state != JobState::Running || r.current.is_some() {
            return;
        }
        while r.next < r.batches.len() && r.agents[r.batches[r.next].clone()].iter().all(|a| a.state.is_some()) {
            r.next += 1;
        }
        if r.next >= r.batches.len() {
            return self.finish(&id, JobState::Done);
        }
        let number = r.next;
        let wanted: Vec<String> = r.agents[r.batches[number].clone()]
            .iter()
            .filter(|a| a.state.is_none())
            .map(|a| a.identity.clone())
            .collect();
        let identities = Identities::parse(&wanted).ok().flatten();
        let ask = Recipients { stream: r.request.stream.clone(), identities, facts: None, local_only: false };
        self.registry
            .send(ask)
            .into_actor(self)
            .map(move |reached, act, ctx| {
                let Ok(reached) = reached else {
                    error!(act.log, "rollout: the registry is unavailable; the job stops"; "job" => &id);
                    return act.finish(&id, JobState::Interrupted);
                };
                let Some(r) = act.rollouts.get_mut(&id) else { return };
                match r.state {
                    JobState::Running => {}
                    // Paused before the batch started: `resume` starts it.
                    JobState::Paused => return,
                    state => return act.finish(&id, state),
                }
                let online: HashMap<&str, Option<&str>> =
                    reached.online.iter().map(|o| (o.identity.as_str(), o.server.as_deref())).collect();
                let away: Vec<String> = wanted.iter().filter(|w| !online.contains_key(w.as_str())).cloned().collect();
                if !away.is_empty() && r.resumed_until.is_some_and(|until| Instant::now() < until) {
                    ctx.run_later(RESUME_RETRY, move |act, ctx| act.next_batch(id, ctx));
                    return;
                }
                r.resumed_until = None;
                let mut here = Vec::new();
                let mut elsewhere: BTreeMap<String, Vec<String>> = BTreeMap::new();
                for w in wanted.iter().filter(|w| online.contains_key(w.as_str())) {
                    match online[w.as_str()] {
                        Some(server) => elsewhere.entry(server.to_owned()).or_default().push(w.clone()),
                        None => here.push(w.clone()),
                    }
                }
                let started: Vec<String> = here.iter().chain(elsewhere.values().flatten()).cloned().collect();
                for identity in &away {
                    r.agents[r.by_identity[identity]].state = Some(AgentState::Offline);
                }
                for identity in &started {
                    r.agents[r.by_identity[identity]].started = true;
                }
                r.current = Some(Batch { number, outstanding: started.len() });
                r.next = number + 1;
                info!(act.log, "rollout batch started";
                    "job" => &id, "batch" => number + 1, "of" => r.batches.len(), "agents" => started.len(),
                    "offline" => away.len());
                act.jobs.write(agents_write(&id, &away, number, AgentState::Offline.name()));
                act.jobs.write(agents_write(&id, &started, number, STARTED));
                act.jobs.write(batch_write(&id, number, wanted.len(), true));
                if started.is_empty() {
                    return act.batch_done(&id, ctx);
                }
                // Sent only once recorded as started: after a crash, an
                // agent is never sent it again.
                act.jobs
                    .committed()
                    .into_actor(act)
                    .map(move |_, act, ctx| act.publish_batch(&id, number, here, elsewhere, ctx))
                    .spawn(ctx);
            })
            .spawn(ctx);
    }

    fn publish_batch(
        &mut self,
        id: &str,
        number: usize,
        here: Vec<String>,
        elsewhere: BTreeMap<String, Vec<String>>,
        ctx: &mut Context<Self>,
    ) {
        let Some(r) = self.rollouts.get_mut(id) else { return };
        let all: Vec<String> = here.iter().chain(elsewhere.values().flatten()).cloned().collect();
        let not_reading = match self.forwarder.routes().await_batch(id, &all, r.request.wire_size()) {
            Ok(not_reading) => not_reading,
            Err(e) => {
                warn!(self.log, "rollout batch not sent: {}", e; "job" => id, "batch" => number + 1);
                all
            }
        };
        for identity in &not_reading {
            r.agents[r.by_identity[identity]].state = Some(AgentState::NoAnswer);
        }
        let here: Vec<String> = here.into_iter().filter(|h| !not_reading.contains(h)).collect();
        let alias = alias(id, number);
        if !elsewhere.is_empty() {
            self.forwarder.routes().alias(id, &alias);
        }
        self.forwarder.publish_batch(r.kind, &r.request, &here, elsewhere, &alias);
        let wait = r.wait;
        self.jobs.write(agents_write(id, &not_reading, number, AgentState::NoAnswer.name()));
        if let Some(batch) = &mut r.current {
            batch.outstanding = batch.outstanding.saturating_sub(not_reading.len());
            if batch.outstanding == 0 {
                return self.batch_done(id, ctx);
            }
        }
        let id = id.to_owned();
        ctx.run_later(wait, move |act, ctx| act.batch_deadline(&id, number, ctx));
    }

    /// The batch's deadline: its agents still silent are `no-answer`.
    fn batch_deadline(&mut self, id: &str, number: usize, ctx: &mut Context<Self>) {
        let Some(r) = self.rollouts.get_mut(id) else { return };
        if r.current.as_ref().is_none_or(|b| b.number != number) {
            return;
        }
        let silent = r.running();
        for identity in &silent {
            r.agents[r.by_identity[identity]].state = Some(AgentState::NoAnswer);
        }
        warn!(self.log, "rollout batch: agents did not answer in time"; "job" => id, "batch" => number + 1,
            "agents" => silent.len(), "waited_seconds" => r.wait.as_secs_f64());
        self.forwarder.routes().give_up(id, &silent);
        self.jobs.write(agents_write(id, &silent, number, AgentState::NoAnswer.name()));
        self.batch_done(id, ctx);
    }

    /// Every agent of the batch is in a final state: the budget says
    /// whether another starts.
    fn batch_done(&mut self, id: &str, ctx: &mut Context<Self>) {
        let Some(r) = self.rollouts.get_mut(id) else { return };
        let Some(batch) = r.current.take() else { return };
        let size = r.batches[batch.number].len();
        self.jobs.write(batch_write(id, batch.number, size, false));
        let failures = r.failures();
        info!(self.log, "rollout batch ended"; "job" => id, "batch" => batch.number + 1, "of" => r.batches.len(),
            "failures" => failures, "max_fail" => r.budget.map_or_else(|| "-".to_owned(), |b| b.to_string()));
        match r.state {
            JobState::Running => {}
            JobState::Paused => return,
            state => return self.finish(id, state),
        }
        if r.over_budget() {
            warn!(self.log, "rollout: failure budget spent; no agent starts after this batch";
                "job" => id, "failures" => failures, "max_fail" => r.budget.unwrap_or(0),
                "on_fail" => ?r.plan.on_fail);
            return match r.plan.on_fail {
                rollout::OnFail::Abort => self.finish(id, JobState::Aborted),
                rollout::OnFail::Pause => {
                    r.state = JobState::Paused;
                    self.jobs.write(Write::JobState { id: id.to_owned(), state: JobState::Paused });
                }
            };
        }
        let id = id.to_owned();
        match Duration::from_millis(r.plan.batch_wait_ms) {
            wait if wait.is_zero() || r.next >= r.batches.len() => self.next_batch(id, ctx),
            wait => {
                ctx.run_later(wait, move |act, ctx| act.next_batch(id, ctx));
            }
        }
    }

    /// The rollout is over: the agents that never started are `skipped`.
    pub(super) fn finish(&mut self, id: &str, state: JobState) {
        let Some(mut r) = self.rollouts.remove(id) else { return };
        let skipped = r.skip(|_| true);
        for batch in 0..r.batches.len() {
            let range = r.batches[batch].clone();
            let in_batch: Vec<String> =
                skipped.iter().filter(|s| range.contains(&r.by_identity[s.as_str()])).cloned().collect();
            if !in_batch.is_empty() {
                self.jobs.write(agents_write(id, &in_batch, batch, AgentState::Skipped.name()));
            }
        }
        self.jobs.write(Write::JobState { id: id.to_owned(), state });
        self.forwarder.routes().cancel(id);
        info!(self.log, "rollout ended"; "job" => id, "state" => state.name(), "agents" => r.summary());
    }

    /// Resumes the rollouts a stopped server left: an agent whose request
    /// went out and that never answered is `no-answer`; the rest start
    /// from the next batch.
    pub(super) fn resume_rollouts(&mut self, ctx: &mut Context<Self>) {
        self.services
            .job_reader
            .send(UnfinishedRollouts)
            .into_actor(self)
            .map(|found, act, ctx| match found {
                Ok(Ok(stored)) => {
                    for s in stored {
                        act.resume(s, ctx);
                    }
                }
                Ok(Err(e)) => error!(act.log, "cannot read unfinished rollouts; they stay as they are"; "error" => %e),
                Err(e) => error!(act.log, "cannot read unfinished rollouts; they stay as they are"; "error" => %e),
            })
            .spawn(ctx);
    }

    fn resume(&mut self, s: StoredRollout, ctx: &mut Context<Self>) {
        let (Some(kind), Some(request)) = (Kind::from_wire(&s.kind), stored_message(&s.request)) else {
            warn!(self.log, "an unfinished rollout cannot be read back; it is over"; "job" => &s.id);
            return self.jobs.write(Write::JobState { id: s.id, state: JobState::Interrupted });
        };
        let mut silent: BTreeMap<u32, Vec<String>> = BTreeMap::new();
        let agents: Vec<(String, u32, Option<AgentState>)> = s
            .agents
            .into_iter()
            .map(|(identity, batch, recorded)| {
                let state = match recorded.as_str() {
                    STARTED => Some(s.answered.get(&identity).copied().unwrap_or_else(|| {
                        silent.entry(batch).or_default().push(identity.clone());
                        AgentState::NoAnswer
                    })),
                    crate::store::PENDING => None,
                    other => other.parse().ok(),
                };
                (identity, batch, state)
            })
            .collect();
        for (batch, identities) in &silent {
            self.jobs.write(agents_write(&s.id, identities, *batch as usize - 1, AgentState::NoAnswer.name()));
        }
        let mut r = Rollout::new(kind, request, s.plan, agents);
        r.state = s.state;
        if let Some(wait) = s.wait {
            r.wait = wait;
        }
        // Answers to it are the server's again; its requester is gone.
        if let Err(e) = self.forwarder.routes().reserve(&s.id, kind, b"", &s.key) {
            warn!(self.log, "an unfinished rollout cannot be resumed: {}", e; "job" => &s.id);
            return self.jobs.write(Write::JobState { id: s.id, state: JobState::Interrupted });
        }
        self.forwarder.routes().follow_rollout(&s.id);
        r.resumed_until = Some(Instant::now() + RESUME_WAIT);
        info!(self.log, "rollout resumed after a restart";
            "job" => &s.id, "state" => r.state.name(), "next_batch" => r.next + 1, "of" => r.batches.len(),
            "no_answer" => silent.values().map(Vec::len).sum::<usize>());
        let id = s.id.clone();
        self.rollouts.insert(s.id, r);
        self.next_batch(id, ctx);
    }
}

impl Handler<RolloutAnswer> for CommandDispatcher {
    type Result = ();

    fn handle(&mut self, answer: RolloutAnswer, ctx: &mut Context<Self>) {
        let Some(r) = self.rollouts.get_mut(&answer.job) else { return };
        let Some(&index) = r.by_identity.get(&answer.identity) else { return };
        let agent = &mut r.agents[index];
        if agent.state.is_some() {
            return;
        }
        agent.state = Some(answer.state);
        let in_batch = r.current.as_ref().is_some_and(|b| r.batches[b.number].contains(&index));
        if let Some(batch) = r.current.as_mut().filter(|_| in_batch) {
            batch.outstanding = batch.outstanding.saturating_sub(1);
            if batch.outstanding == 0 {
                self.batch_done(&answer.job, ctx);
            }
        }
    }
}
