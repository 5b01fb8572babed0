//! `job pause|resume|abort|cancel ID`: what the server does to a running
//! job. A rollout is this server's to change ([`super::rollouts`]); a plain
//! job went to every agent at once, so it can be cancelled on the agents
//! still running it, or aborted (which only records it: nothing is left to
//! start), but not paused. A job that is over is refused as finished, an
//! unknown one as unknown.

use std::collections::BTreeMap;
use std::time::Duration;

use actix::prelude::*;
use pantry_shared::commands::cancel;
use pantry_shared::commands::job_control::{self, Action, Control, Done};
use pantry_shared::commands::rollout::JobState;
use pantry_shared::filter::Identities;
use pantry_shared::signing::SIGNATURE_FIELD;
use serde_json::Value;
use slog::info;

use crate::client_registry::Recipients;
use crate::jobs::ShowJob;
use crate::store::Write;

use super::{CommandDispatcher, Refused, Request};

impl CommandDispatcher {
    /// Carries out a `JobControl` request.
    pub(super) fn control(&mut self, request: Request, ctx: &mut Context<Self>) {
        let control = match job_control::parse(&request.message) {
            Ok(control) => control,
            Err(e) => return self.refuse(&request, e.to_string()),
        };
        let only = match Identities::parse(&control.identities) {
            Ok(only) => only,
            Err(e) => return self.refuse(&request, e.to_string()),
        };
        let matches = |identity: &str| only.as_ref().is_none_or(|o| o.matches(identity));
        let signature = request.message.metadata.custom.get(SIGNATURE_FIELD).cloned();
        let outcome = if self.rollouts.contains_key(&control.job) {
            self.control_rollout(&control, matches, signature, ctx)
        } else if self.forwarder.routes().is_pending(&control.job) {
            self.control_plain(&control, matches, signature, ctx)
        } else {
            return self.control_recorded(request, control, ctx);
        };
        info!(self.log, "job control"; "job" => &control.job, "action" => control.action.name(),
            "key" => request.key(), "outcome" => outcome.as_ref().map_or_else(|e| e.to_string(), |d| d.note.clone()));
        match outcome {
            Ok(done) => {
                let answer = job_control::respond(&request.message, &done);
                self.reply(request.peer, answer);
            }
            Err(reason) => self.refuse(&request, reason.to_string()),
        }
    }

    fn control_rollout(
        &mut self,
        control: &Control,
        matches: impl Fn(&str) -> bool,
        signature: Option<Value>,
        ctx: &mut Context<Self>,
    ) -> Result<Done, Refused> {
        let id = control.job.clone();
        let Some(r) = self.rollouts.get_mut(&id) else { return Err("no such job".into()) };
        let done = match control.action {
            Action::Pause => {
                if r.state == JobState::Running {
                    r.state = JobState::Paused;
                    self.jobs.write(Write::JobState { id: id.clone(), state: JobState::Paused });
                }
                let running = r.running().len();
                Done {
                    state: r.state,
                    agents: running,
                    note: format!("paused: no batch starts; {running} agents running go on"),
                }
            }
            Action::Resume => {
                if r.state != JobState::Paused {
                    return Err(format!("job {id} is not paused (it is {})", r.state).into());
                }
                r.resume();
                self.jobs.write(Write::JobState { id: id.clone(), state: JobState::Running });
                let done = Done { state: JobState::Running, agents: 0, note: "resumed: the next batch starts".into() };
                self.next_batch(id, ctx);
                done
            }
            Action::Abort => {
                r.state = JobState::Aborted;
                let skipped = r.skip(|_| true).len();
                let running = r.running().len();
                let note = format!("aborted: {skipped} agents skipped; {running} agents running finish");
                if r.is_between_batches() {
                    self.finish(&id, JobState::Aborted);
                }
                Done { state: JobState::Aborted, agents: skipped, note }
            }
            Action::Cancel => {
                let whole = control.identities.is_empty();
                let running: Vec<String> = r.running().into_iter().filter(|i| matches(i)).collect();
                let skipped = r.skip(&matches).len();
                if whole {
                    r.state = JobState::Cancelled;
                }
                let (state, between) = (r.state, r.is_between_batches());
                let batch = r.current_batch();
                self.cancel_running(&id, batch, running.clone(), control.grace(), signature, ctx);
                if whole && between {
                    self.finish(&id, JobState::Cancelled);
                }
                let note = format!("cancelled on {} running agents; {skipped} agents skipped", running.len());
                Done { state, agents: running.len(), note }
            }
        };
        Ok(done)
    }

    fn control_plain(
        &mut self,
        control: &Control,
        matches: impl Fn(&str) -> bool,
        signature: Option<Value>,
        ctx: &mut Context<Self>,
    ) -> Result<Done, Refused> {
        let id = &control.job;
        match control.action {
            Action::Pause | Action::Resume => Err(format!(
                "job {id} is not a rollout: it went to every agent at once, so there is nothing to {}",
                control.action.name()
            )
            .into()),
            Action::Abort => {
                self.jobs.write(Write::JobState { id: id.clone(), state: JobState::Aborted });
                let running = self.forwarder.routes().waiting(id).len();
                let note = format!("aborted: every agent had started; {running} agents running finish");
                Ok(Done { state: JobState::Aborted, agents: 0, note })
            }
            Action::Cancel => {
                let running: Vec<String> =
                    self.forwarder.routes().waiting(id).into_iter().filter(|i| matches(i)).collect();
                self.cancel_running(id, None, running.clone(), control.grace(), signature, ctx);
                let state = if control.identities.is_empty() { JobState::Cancelled } else { JobState::Running };
                if state == JobState::Cancelled {
                    self.jobs.write(Write::JobState { id: id.clone(), state });
                }
                Ok(Done {
                    state,
                    agents: running.len(),
                    note: format!("cancelled on {} running agents", running.len()),
                })
            }
        }
    }

    /// Sends the cancel of `job` to `identities` where they are: here, or
    /// through the server of the cluster they are on (a rollout's batch
    /// went there under an alias of its own, `JOB~BATCH`).
    fn cancel_running(
        &mut self,
        job: &str,
        batch: Option<usize>,
        identities: Vec<String>,
        grace: Duration,
        signature: Option<Value>,
        ctx: &mut Context<Self>,
    ) {
        if identities.is_empty() {
            return;
        }
        let Ok(Some(only)) = Identities::parse(&identities) else {
            return self.forwarder.cancel_on(job, &identities, grace, signature.as_ref());
        };
        let job = job.to_owned();
        let ask = Recipients { stream: String::new(), identities: Some(only), facts: None, local_only: false };
        self.registry
            .send(ask)
            .into_actor(self)
            .map(move |reached, act, _| {
                let Ok(reached) = reached else {
                    // The registry is gone: the agents here are the ones
                    // this server can still reach.
                    return act.forwarder.cancel_on(&job, &identities, grace, signature.as_ref());
                };
                let mut elsewhere: BTreeMap<String, Vec<String>> = BTreeMap::new();
                let mut here = Vec::new();
                for r in reached.online.into_iter().filter(|r| identities.contains(&r.identity)) {
                    match r.server {
                        Some(server) => elsewhere.entry(server).or_default().push(r.identity),
                        None => here.push(r.identity),
                    }
                }
                act.forwarder.cancel_on(&job, &here, grace, signature.as_ref());
                let there = batch.map_or_else(|| job.clone(), |b| super::rollouts::alias(&job, b));
                for (server, identities) in elsewhere {
                    act.forwarder.cancel_via(server, &there, identities, grace, signature.as_ref());
                }
            })
            .spawn(ctx);
    }

    /// Another server of the cluster passes on a job's cancel for agents
    /// of this one; from anyone else a Cancel is refused.
    pub(super) fn relay_cancel(&mut self, request: Request) {
        if !super::forwarder::from_peer(&request) {
            return self
                .refuse(&request, "Cancel is sent by the server; use JobControl (`pantry-admin job cancel ID`)");
        }
        match cancel::parse(&request.message) {
            Some(asked) => {
                info!(self.log, "job cancel passed on by another server"; "job" => &asked.job,
                    "agents" => asked.identities.len(), "key" => request.key());
                let signature = request.message.metadata.custom.get(SIGNATURE_FIELD);
                self.forwarder.cancel_on(&asked.job, &asked.identities, asked.grace(), signature);
            }
            None => self.refuse(&request, "a Cancel without its job"),
        }
    }

    /// A job that is not running here: finished, or unknown.
    fn control_recorded(&mut self, request: Request, control: Control, ctx: &mut Context<Self>) {
        let id = control.job.clone();
        self.services
            .job_reader
            .send(ShowJob { id: id.clone() })
            .into_actor(self)
            .map(move |found, act, _| {
                let reason = match found {
                    Ok(Ok(Some(job))) => format!(
                        "job {id} is finished ({}); nothing to {}",
                        if job.state.is_final() { job.state } else { JobState::Done },
                        control.action.name()
                    ),
                    Ok(Ok(None)) => format!("no job {id} on this server"),
                    Ok(Err(e)) => format!("cannot read the job store: {e}"),
                    Err(e) => format!("job store unavailable: {e}"),
                };
                info!(act.log, "job control refused: {}", reason; "job" => &id, "action" => control.action.name(),
                    "key" => request.key());
                act.refuse(&request, reason);
            })
            .spawn(ctx);
    }
}
