//! Following a job in the server's job store: a rollout batch by batch
//! (`exec --batch`, `job ID --wait`), or a plain job the admin stopped
//! listening to live (after Ctrl-C). Answers are printed as they are
//! recorded, then the agents that never answered, each agent's final
//! state counted in the summary line; the exit status says whether every
//! targeted agent is `ok`.
//!
//! Ctrl-C (SIGINT) or SIGTERM while following asks what to do with the
//! job ([`crate::interrupt`]).

use std::collections::HashSet;
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result};
use pantry_shared::commands::job_control::{self, Action, Control};
use pantry_shared::commands::jobs::{self, JobDetail};
use pantry_shared::commands::rollout::{self, AgentState, JobState};
use serde_json::Value;

use crate::connection::SideTask;
use crate::interrupt::{self, Choice, Interrupted};
use crate::output::{answer_text, grouped};
use crate::session::{Outcome, Session};

/// Between two looks at the job.
const POLL: Duration = Duration::from_millis(200);

/// How a job is followed and printed.
pub struct How {
    /// Until the job is over (else: one look).
    pub wait: bool,
    pub json: bool,
    pub group: bool,
    /// Answers go to stderr (upload's, beside its progress bar).
    pub to_stderr: bool,
    /// Agents whose answer is already printed (the live wait did).
    pub shown: HashSet<String>,
}

impl How {
    pub fn new(wait: bool, json: bool, group: bool) -> How {
        How { wait, json, group, to_stderr: false, shown: HashSet::new() }
    }
}

/// Follows job `id`, serving `side` meanwhile (an upload's chunks), and
/// prints it. A plain job whose agents send nothing for the session's wait
/// is left (its answers may come later: `pantry-admin job ID`).
pub fn follow(
    session: &mut Session,
    id: &str,
    mut how: How,
    mut side: Option<&mut (dyn SideTask + '_)>,
) -> Result<Outcome> {
    let mut batches_said = (0usize, 0usize);
    let mut last_change = (Instant::now(), usize::MAX);
    let job = loop {
        session.deadline.restart();
        let job = match session.ask_server_beside(jobs::show_request(id), side.as_deref_mut()) {
            Ok(response) => jobs::job(&response).context("the server's answer holds no job")?,
            Err(e) if e.is::<Interrupted>() => match interrupted(session, id, None) {
                Some(outcome) => return Ok(outcome),
                None => continue,
            },
            Err(e) => return Err(e),
        };
        if !how.wait {
            break job;
        }
        if !(how.json || how.group) {
            print_progress(&job, &mut how, &mut batches_said);
        }
        let settled = job.agents.iter().filter(|a| a.state.is_some()).count();
        if job.state.is_final() && settled == job.agents.len() {
            break job;
        }
        if job.state == JobState::Paused && !batch_open(&job) {
            break job;
        }
        let progress = settled + job.answers.len();
        if progress != last_change.1 {
            last_change = (Instant::now(), progress);
        } else if job.rollout.is_none() && last_change.0.elapsed() >= session.deadline.idle {
            eprintln!("still waiting for {} clients", job.agents.len() - settled);
            break job;
        }
        if let Some(outcome) = pause(session, id, &job, side.as_deref_mut())? {
            return Ok(outcome);
        }
    };
    print_job(&job, &how);
    Ok(outcome(&job, session.online_only))
}

/// Waits [`POLL`], serving `side`; a signal meanwhile is asked about.
fn pause(
    session: &mut Session,
    id: &str,
    job: &JobDetail,
    side: Option<&mut (dyn SideTask + '_)>,
) -> Result<Option<Outcome>> {
    let end = Instant::now() + POLL;
    match side {
        Some(task) => {
            while Instant::now() < end && !interrupt::pending() {
                let mut items = [task.socket().as_poll_item(zmq::POLLIN)];
                let left = end.saturating_duration_since(Instant::now()).as_millis().max(1) as i64;
                if zmq::poll(&mut items, left).is_ok() && items[0].is_readable() {
                    task.ready()?;
                }
            }
        }
        None => {
            while Instant::now() < end && !interrupt::pending() {
                std::thread::sleep(Duration::from_millis(20));
            }
        }
    }
    if interrupt::pending() {
        return Ok(interrupted(session, id, Some(running(job))));
    }
    Ok(None)
}

/// Agents started and not yet in a final state (as far as the record
/// tells: a rollout's open batch, or a plain job's silent agents).
fn running(job: &JobDetail) -> usize {
    match job.batches.iter().find(|b| b.started.is_some() && b.ended.is_none()) {
        Some(open) => job.agents.iter().filter(|a| a.batch == Some(open.number) && a.state.is_none()).count(),
        None if job.rollout.is_some() => 0,
        None => job.agents.iter().filter(|a| a.state.is_none()).count(),
    }
}

fn batch_open(job: &JobDetail) -> bool {
    job.batches.iter().any(|b| b.started.is_some() && b.ended.is_none())
}

/// A signal arrived while waiting for job `id`: what the operator chose
/// (on a terminal) or the signal says. `Some`: the admin leaves.
pub fn interrupted(session: &mut Session, id: &str, running: Option<usize>) -> Option<Outcome> {
    let signal = interrupt::take()?;
    let running = running.unwrap_or_else(|| {
        let response = session.ask_server(jobs::show_request(id)).ok();
        response.as_ref().and_then(jobs::job).map_or(0, |j| self::running(&j))
    });
    match interrupt::choose(signal, id, running) {
        Choice::Cancel => {
            let control = Control { job: id.to_owned(), action: Action::Cancel, identities: Vec::new(), grace_ms: 0 };
            let mut request = job_control::request(&control);
            if let Some(signer) = &session.signer {
                signer.sign_cancel(&mut request, id, &[]);
            }
            match session.ask_server(request) {
                Ok(response) => {
                    let note = job_control::done(&response).map_or_else(|| "cancelled".to_owned(), |d| d.note);
                    eprintln!("job {id}: {note}");
                }
                Err(e) => eprintln!("job {id}: cannot cancel: {e:#}"),
            }
            None
        }
        Choice::Wait => None,
        Choice::Detach => {
            println!("{id}");
            eprintln!("detached from job {id}: it goes on; `pantry-admin job {id} --wait` follows it");
            Some(Outcome::Done)
        }
    }
}

/// What is new since the last look: batches started and ended, answers.
fn print_progress(job: &JobDetail, how: &mut How, batches_said: &mut (usize, usize)) {
    // Batches are recorded as they start: the agents say how many in all.
    let total = job.agents.iter().filter_map(|a| a.batch).max().unwrap_or(0);
    let said = *batches_said;
    for b in job.batches.iter().filter(|b| b.started.is_some() && b.number as usize > said.0) {
        eprintln!("batch {}/{total}: {} agents", b.number, b.size);
        batches_said.0 = b.number as usize;
    }
    let timeout = timeout(job);
    let command = job.summary.command.as_str();
    for answer in job.answers.iter() {
        if how.shown.contains(&answer.identity) {
            continue;
        }
        let text = answer_text(command, &answer.identity, &answer.as_message(command), timeout);
        if how.to_stderr {
            eprint!("{text}");
        } else {
            print!("{text}");
        }
        how.shown.insert(answer.identity.clone());
    }
    for b in job.batches.iter().filter(|b| b.ended.is_some() && b.number as usize > said.1) {
        let states = job.agents.iter().filter(|a| a.batch == Some(b.number)).filter_map(|a| a.state);
        let counted = rollout::summary(states);
        let counted = counted.split_once(": ").map_or(counted.as_str(), |(_, c)| c);
        eprintln!("batch {}/{total} done: {counted}", b.number);
        batches_said.1 = b.number as usize;
    }
}

fn timeout(job: &JobDetail) -> f64 {
    job.arguments.get("timeout").and_then(Value::as_f64).unwrap_or(0.0)
}

/// The job as a whole: its answers (those not printed yet), the agents
/// that never answered, how the job ended and the summary line.
pub fn print_job(job: &JobDetail, how: &How) {
    if how.json {
        match serde_json::to_string_pretty(job) {
            Ok(text) => println!("{text}"),
            Err(e) => eprintln!("cannot print the job as JSON: {e}"),
        }
        return;
    }
    let command = job.summary.command.as_str();
    let timeout = timeout(job);
    let answered: HashSet<&str> = job.answers.iter().map(|a| a.identity.as_str()).collect();
    let unanswered: Vec<(String, AgentState)> = job
        .agents
        .iter()
        .filter(|a| !answered.contains(a.identity.as_str()))
        .filter_map(|a| a.state.map(|s| (a.identity.clone(), s)))
        .collect();
    let mut out = String::new();
    if how.group {
        let state = |identity: &str| {
            job.agents.iter().find(|a| a.identity == identity).and_then(|a| a.state).unwrap_or(AgentState::Failed)
        };
        let answers: Vec<_> =
            job.answers.iter().map(|a| (a.identity.clone(), a.as_message(command), state(&a.identity))).collect();
        out.push_str(&grouped(command, timeout, &answers, &unanswered));
    } else {
        for answer in job.answers.iter().filter(|a| !how.shown.contains(&a.identity)) {
            out.push_str(&answer_text(command, &answer.identity, &answer.as_message(command), timeout));
        }
        for (identity, state) in &unanswered {
            let said = match state {
                AgentState::NoAnswer if job.lost.contains(identity) => "no answer (server restarted)".to_owned(),
                state => state.name().to_owned(),
            };
            out.push_str(&format!("{identity}: {said}\n"));
        }
        for agent in job.agents.iter().filter(|a| a.state.is_none() && !answered.contains(a.identity.as_str())) {
            out.push_str(&format!("{}: no answer yet\n", agent.identity));
        }
    }
    if how.to_stderr {
        eprint!("{out}");
    } else {
        print!("{out}");
    }
    if let Some(result) = &job.result {
        println!("{command} {}: {result}", job.arguments);
    }
    if job.agents.is_empty() {
        return;
    }
    let id = &job.summary.id;
    match job.state {
        JobState::Done | JobState::Running => {}
        JobState::Paused => eprintln!("job {id} is paused: `pantry-admin job resume {id}` or `job abort {id}`"),
        state => eprintln!("job {id} {state}"),
    }
    let waiting = job.agents.iter().filter(|a| a.state.is_none()).count();
    let mut summary = rollout::summary(job.agents.iter().filter_map(|a| a.state));
    if waiting > 0 {
        summary = format!(
            "{} targeted: {summary_rest}, {waiting} not done",
            rollout::thousands(job.agents.len()),
            summary_rest = summary.split_once(": ").map_or("0 done", |(_, rest)| rest)
        );
    }
    eprintln!("{summary}");
}

/// 0 when every targeted agent is `ok` (offline ones left out with
/// `--online-only`), 2 when none was targeted, 1 otherwise; a job that
/// changed something on the server, by its result.
pub fn outcome(job: &JobDetail, online_only: bool) -> Outcome {
    if job.agents.is_empty() {
        let changed_ok = job.result.as_deref().is_none_or(|r| r == "ok");
        let for_clients = job.summary.answered + job.summary.pending + job.summary.offline > 0;
        return if job.result.is_some() || for_clients { changed_ok.into() } else { Outcome::NoMatch };
    }
    let counted = job.agents.iter().filter(|a| !(online_only && a.state == Some(AgentState::Offline)));
    counted.into_iter().all(|a| a.state == Some(AgentState::Ok)).into()
}
