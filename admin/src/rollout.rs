//! The options `echo`, `exec` and `upload` share to roll a command out
//! safely: batches and a failure budget (run by the server as one job),
//! re-running a job on the agents that did not succeed (`--from-job`), and
//! grouped output (`--group`).

use std::collections::BTreeSet;
use std::time::Duration;

use anyhow::{bail, Context as _, Result};
use pantry_shared::commands::jobs::{self, JobDetail};
use pantry_shared::commands::rollout::{
    self, parse_size, AgentState, OnFail, Order, RolloutPlan, Size, SizeError, RERUN_FIELD, WAIT_FIELD,
};
use pantry_shared::filter::Identities;
use pantry_shared::message::Message;
use serde_json::Value;

use crate::session::{Outcome, Session, Target};
use pantry_shared::commands::facts;
use pantry_shared::facts::FactFilter;

/// Batches, a failure budget, a re-run, grouped output.
#[derive(clap::Args, Debug, Clone, Default)]
pub struct RolloutArgs {
    /// Run on this many agents at a time (or this share of the targets,
    /// rounded up): a batch starts once every agent of the one before is
    /// done. The server runs the rollout as one job.
    #[arg(short = 'b', long, value_name = "N|N%", value_parser = batch_size)]
    pub batch: Option<Size>,
    /// A first batch of N agents on their own.
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..))]
    pub canary: Option<u32>,
    /// A pause between batches (30s, 2m).
    #[arg(long, value_name = "DURATION", value_parser = humantime::parse_duration)]
    pub batch_wait: Option<Duration>,
    /// The failure budget (failed, timeout, no-answer, refused): once more
    /// agents failed, no agent starts after that batch.
    #[arg(long, value_name = "N|N%", value_parser = budget_size, allow_hyphen_values = true)]
    pub max_fail: Option<Size>,
    /// Past the budget: skip the rest (abort), or wait for `job resume`
    /// (pause) [default: abort].
    #[arg(long, value_enum, value_name = "abort|pause")]
    pub on_fail: Option<OnFail>,
    /// The order agents are taken in; random's seed is recorded with the
    /// job [default: identity].
    #[arg(long, value_enum, value_name = "identity|random")]
    pub order: Option<Order>,
    /// Offline agents count against the budget.
    #[arg(long)]
    pub offline_fails: bool,
    /// Run job ID's command again (same arguments, timeout and batches
    /// unless given) on its agents in --state.
    #[arg(long, value_name = "ID")]
    pub from_job: Option<String>,
    /// With --from-job: the states to re-run [default: every state but ok].
    #[arg(long, value_name = "STATE[,STATE...]", value_delimiter = ',', requires = "from_job")]
    pub state: Vec<AgentState>,
    /// Print the agents with identical output and state once, identities
    /// folded (web-[001-340],db-2).
    #[arg(long)]
    pub group: bool,
    /// Print the agents that would be targeted and their count; send
    /// nothing.
    #[arg(long)]
    pub dry_run: bool,
}

fn batch_size(text: &str) -> Result<Size, SizeError> {
    parse_size(text, false)
}

fn budget_size(text: &str) -> Result<Size, SizeError> {
    parse_size(text, true)
}

/// A job run again (`--from-job`): its record and the agents chosen.
pub struct Rerun {
    pub job: JobDetail,
    pub identities: Vec<String>,
}

impl Rerun {
    /// A recorded argument of the job (`program`, `timeout`, `text`...).
    pub fn argument(&self, name: &str) -> Option<&Value> {
        self.job.arguments.get(name)
    }
}

/// What the options say a command for clients is: whom for, in what
/// batches, re-running what.
pub struct Prepared {
    pub rerun: Option<Rerun>,
    pub target: Target,
    pub plan: RolloutPlan,
}

impl Prepared {
    /// `message`, addressed to the target (and signed) by the session,
    /// then stamped: how long each agent is waited for, the plan when it
    /// is a rollout, the job it re-runs.
    pub fn request(&self, session: &Session, message: Message, wait: Duration) -> Message {
        let mut request = session.to_clients(message, &self.target);
        self.stamp(&mut request, wait);
        request
    }

    fn stamp(&self, request: &mut Message, wait: Duration) {
        request.metadata.custom.insert(WAIT_FIELD.into(), Value::from(wait.as_millis() as u64));
        if self.plan.is_rollout() {
            rollout::attach(request, &self.plan);
        }
        if let Some(r) = &self.rerun {
            request.metadata.custom.insert(RERUN_FIELD.into(), Value::String(r.job.summary.id.clone()));
        }
    }

    /// A recorded argument of the re-run job, if any.
    pub fn argument(&self, name: &str) -> Option<&Value> {
        self.rerun.as_ref().and_then(|r| r.argument(name))
    }
}

impl RolloutArgs {
    /// The target, plan and re-run of a `command`; `None` when `--from-job`
    /// leaves no agent (said on stderr: the command exits 2).
    pub fn prepare(&self, session: &mut Session, command: &str) -> Result<Option<Prepared>> {
        let rerun = self.rerun(session, command)?;
        if let Some(r) = rerun.as_ref().filter(|r| r.identities.is_empty()) {
            eprintln!("no agents of job {} are in the states asked for", r.job.summary.id);
            return Ok(None);
        }
        let target = self.target(session, rerun.as_ref())?;
        let plan = self.plan(rerun.as_ref());
        let identities = rerun.as_ref().map(|r| r.identities.clone()).unwrap_or_default();
        session.say_unknown(&identities)?;
        Ok(Some(Prepared { rerun, target, plan }))
    }

    /// `--dry-run`: the agents the command would target (the server's
    /// registry says), and how many; nothing is sent to them.
    pub fn dry_run(&self, session: &mut Session, job: &Prepared) -> Result<Outcome> {
        let mut request = facts::list_request(&session.filter, &["-".to_owned()]);
        Identities::attach(&mut request, job.target.identities());
        FactFilter::attach(&mut request, &session.facts);
        let agents = facts::agents(&session.ask_server(request)?);
        let offline = agents.iter().filter(|a| !a.online).count();
        for a in &agents {
            println!("{}{}", a.identity, if a.online { "" } else { " (offline)" });
        }
        eprintln!("{} targeted ({offline} offline); nothing sent (--dry-run)", rollout::thousands(agents.len()));
        Ok(if agents.is_empty() { Outcome::NoMatch } else { Outcome::Done })
    }

    /// `--from-job ID`: the job (which must have been a `command`) and its
    /// agents in the states asked for, within `-i` when given.
    pub fn rerun(&self, session: &mut Session, command: &str) -> Result<Option<Rerun>> {
        let Some(id) = &self.from_job else { return Ok(None) };
        let response = session.ask_server(jobs::show_request(id))?;
        let job = jobs::job(&response).context("the server's answer holds no job")?;
        if job.summary.command != command {
            bail!("--from-job {id}: that job ran {}, not {command}", job.summary.command);
        }
        let wanted: BTreeSet<AgentState> = if self.state.is_empty() {
            AgentState::ALL.into_iter().filter(|s| *s != AgentState::Ok).collect()
        } else {
            self.state.iter().copied().collect()
        };
        let within = Identities::parse(&session.identities).map_err(anyhow::Error::msg)?;
        let identities = job
            .agents
            .iter()
            .filter(|a| a.state.is_some_and(|s| wanted.contains(&s)))
            .filter(|a| within.as_ref().is_none_or(|w| w.matches(&a.identity)))
            .map(|a| a.identity.clone())
            .collect();
        Ok(Some(Rerun { job, identities }))
    }

    /// The rollout plan: the options given, else the re-run job's.
    pub fn plan(&self, rerun: Option<&Rerun>) -> RolloutPlan {
        let before = rerun.and_then(|r| r.job.rollout.clone()).unwrap_or_default();
        RolloutPlan {
            batch: self.batch.or(before.batch),
            canary: self.canary.or(before.canary),
            batch_wait_ms: self.batch_wait.map_or(before.batch_wait_ms, |w| w.as_millis() as u64),
            max_fail: self.max_fail.or(before.max_fail),
            on_fail: self.on_fail.unwrap_or(before.on_fail),
            order: self.order.unwrap_or(before.order),
            // A new random order each run, unless the seed is the point.
            seed: 0,
            offline_fails: self.offline_fails || before.offline_fails,
        }
    }

    /// Whom the command is for: `-a/-e/-r/-i`, or the re-run's agents.
    pub fn target(&self, session: &Session, rerun: Option<&Rerun>) -> Result<Target> {
        let target = session.target()?;
        Ok(match rerun {
            Some(r) => target.only(r.identities.clone()),
            None => target,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(clap::Parser, Debug)]
    struct Cli {
        #[command(flatten)]
        rollout: RolloutArgs,
    }

    fn parse(args: &[&str]) -> Result<RolloutArgs, clap::Error> {
        use clap::Parser as _;
        Cli::try_parse_from(std::iter::once("t").chain(args.iter().copied())).map(|c| c.rollout)
    }

    #[test]
    fn bad_sizes_name_the_option() {
        for (args, option) in [
            (&["--batch", "0"][..], "--batch"),
            (&["--batch", "0%"], "--batch"),
            (&["--max-fail", "-1"], "--max-fail"),
            (&["--batch-wait", "soon"], "--batch-wait"),
            (&["--canary", "0"], "--canary"),
        ] {
            let e = parse(args).unwrap_err();
            assert_eq!(e.exit_code(), 2, "{args:?}");
            assert!(e.to_string().contains(option), "{args:?}: {e}");
        }
        let r = parse(&["-b", "10%", "--max-fail", "0", "--batch-wait", "2m", "--on-fail", "pause"]).unwrap();
        let plan = r.plan(None);
        assert_eq!(
            (plan.batch, plan.max_fail, plan.batch_wait_ms),
            (Some(Size::Percent(10)), Some(Size::Count(0)), 120_000)
        );
        assert_eq!(plan.on_fail, OnFail::Pause);
        assert!(parse(&["--state", "failed"]).is_err(), "--state needs --from-job");
        let states = parse(&["--from-job", "j", "--state", "failed,no-answer"]).unwrap().state;
        assert_eq!(states, [AgentState::Failed, AgentState::NoAnswer]);
    }
}
