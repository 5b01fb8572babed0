//! How `echo`, `exec` and `upload` run once their request is built: at once
//! on every target, answers printed as they arrive (the live wait), or as a
//! rollout the server runs in batches, followed in the job store. Either
//! way each targeted agent ends in one state, counted in the summary line,
//! and Ctrl-C asks whether to cancel the job.

use std::cell::Cell;
use std::collections::HashSet;

use anyhow::Result;
use pantry_shared::commands::recipients::{self, Offline};
use pantry_shared::commands::rollout::{self, AgentState, RolloutPlan};
use pantry_shared::commands::Kind;
use pantry_shared::message::Message;

use crate::connection::SideTask;
use crate::follow::{self, How};
use crate::interrupt::{self, Interrupted};
use crate::output::{answer_text, grouped};
use crate::session::{print_json_summary, report_offline, Outcome, Session, Target};

/// A request for clients, ready to go, and how to print its answers.
pub struct Job<'a> {
    pub request: Message,
    pub target: &'a Target,
    pub plan: &'a RolloutPlan,
    /// exec's `--timeout`, for its status lines.
    pub timeout: f64,
    pub json: bool,
    pub group: bool,
    /// Answers go to stderr (upload's, beside its progress bar).
    pub to_stderr: bool,
}

impl Job<'_> {
    fn print(&self, text: &str) {
        if self.to_stderr {
            eprint!("{text}");
        } else {
            print!("{text}");
            use std::io::Write as _;
            let _ = std::io::stdout().flush();
        }
    }
}

/// Sends the job and waits for it (live, or following a rollout);
/// `on_list` hears whom the server sent it to.
pub fn run(
    session: &mut Session,
    job: Job<'_>,
    mut side: Option<&mut (dyn SideTask + '_)>,
    on_list: impl FnOnce(&[String], &[Offline]),
) -> Result<Outcome> {
    interrupt::install()?;
    let id = job.request.uuid().to_owned();
    let mut how = How::new(true, job.json, job.group);
    how.to_stderr = job.to_stderr;
    if job.plan.is_rollout() {
        let list = session.start_job(&job.request, side.as_deref_mut())?;
        let (online, offline) = (recipients::online(&list), recipients::offline(&list));
        if online.is_empty() && offline.is_empty() {
            eprintln!("no clients match {}", job.target);
            return Ok(Outcome::NoMatch);
        }
        on_list(&online, &offline);
        let targeted = online.len() + offline.len();
        let batches = job.plan.batches(targeted).len();
        eprintln!(
            "job {id}: {} targeted ({} offline now), in {batches} batches; Ctrl-C to cancel or detach",
            rollout::thousands(targeted),
            offline.len()
        );
        return follow::follow(session, &id, how, side);
    }

    let kind = Kind::from_wire(job.request.message_type());
    let (online_only, json, group) = (session.online_only, job.json, job.group);
    let listed = Cell::new(0usize);
    let mut shown: HashSet<String> = HashSet::new();
    let mut kept: Vec<(String, Message, AgentState)> = Vec::new();
    let answers = session.ask_clients(
        &job.request,
        side.as_deref_mut(),
        |online, offline| {
            listed.set(online.len());
            if !group {
                report_offline(offline, online_only, json);
            }
            on_list(online, offline);
        },
        |answer| {
            let from = answer.metadata.from.clone();
            let state = kind.map_or(AgentState::Ok, |k| rollout::state_of(k, answer));
            if json || group {
                kept.push((from.clone(), answer.clone(), state));
            } else {
                let text = answer_text(answer.message_type(), &from, answer, job.timeout);
                // An agent that does not run the command is said where errors are.
                if state == AgentState::Refused {
                    eprint!("{text}");
                } else {
                    job.print(&text);
                }
            }
            shown.insert(from);
            state == AgentState::Ok
        },
    );
    let answers = match answers {
        Ok(answers) => answers,
        Err(e) if e.is::<Interrupted>() => {
            let running = listed.get().saturating_sub(shown.len());
            if let Some(outcome) = follow::interrupted(session, &id, Some(running)) {
                return Ok(outcome);
            }
            // Cancelled, or waiting on: the job store has the rest.
            how.shown = shown;
            return follow::follow(session, &id, how, side);
        }
        Err(e) => return Err(e),
    };
    if group {
        let mut others: Vec<(String, AgentState)> =
            answers.missing.iter().map(|m| (m.clone(), AgentState::NoAnswer)).collect();
        if !online_only {
            others.extend(answers.offline.iter().map(|o| (o.identity.clone(), AgentState::Offline)));
        }
        // Errors were said on stderr as they came: grouped by state here.
        let errors = answers.states.iter().filter(|(i, _)| !kept.iter().any(|k| &k.0 == i));
        others.extend(errors.cloned());
        job.print(&grouped(job.request.message_type(), job.timeout, &kept, &others));
    }
    if json {
        let values = kept.iter().map(|(identity, answer, _)| json_answer(identity, answer)).collect();
        print_json_summary(true, values, &answers)?;
    }
    Ok(session.report(&answers, job.target))
}

/// An answer in `--json`: echo's text, exec's and upload's result.
fn json_answer(identity: &str, answer: &Message) -> serde_json::Value {
    use pantry_shared::commands::{exec, upload};
    match answer.message_type() {
        exec::TYPE => serde_json::json!({"identity": identity, "result": exec::result(answer)}),
        upload::TYPE => serde_json::json!({"identity": identity, "result": upload::result(answer)}),
        _ => serde_json::json!({
            "identity": identity,
            "message": answer.body.first().and_then(|b| b.as_text()),
        }),
    }
}
