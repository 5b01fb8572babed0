//! `jobs` and `job ID`: the job store's record of commands and their answers.

use crate::follow::{self, How};
use crate::interrupt;
use crate::session::{Outcome, Session};
use anyhow::{bail, Context as _};
use pantry_shared::commands::job_control::{self, Action, Control};
use pantry_shared::commands::jobs::*;
use pantry_shared::filter::Identities;
use std::time::Duration;

use crate::session::{Admin, Wait};

/// Recent jobs, newest first: commands sent to clients and key or config
/// changes, with answered / failed / pending / offline counts. -a/-e/-r
/// select jobs sent to that stream, -i jobs sent to those identities.
#[derive(clap::Args, Debug)]
pub struct ListArgs {
    /// How many.
    #[arg(long, default_value_t = DEFAULT_LIMIT, value_name = "N")]
    pub limit: u32,
    /// Print JSON for scripts.
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub wait: Wait,
}

impl Admin for ListArgs {
    fn wait(&self, global: f64) -> f64 {
        self.wait.or(global)
    }

    fn run(self, session: &mut Session) -> anyhow::Result<Outcome> {
        let mut request = list_request(self.limit, &session.filter);
        Identities::attach(&mut request, &session.identities);
        let response = session.ask_server(request)?;
        let list = jobs(&response);
        if self.json {
            println!("{}", serde_json::to_string_pretty(&list)?);
        } else {
            print!("{}", format_table(&list));
        }
        Ok(Outcome::Done)
    }
}

/// Admin: a table.
pub fn format_table(jobs: &[JobSummary]) -> String {
    if jobs.is_empty() {
        return "no jobs\n".into();
    }
    let mut out = format!(
        "{:<36}  {:<23}  {:<16}  {:<14}  {:<24}  {:<11}  {:>8} {:>6} {:>7} {:>7}\n",
        "ID", "CREATED", "WHO", "COMMAND", "TARGET", "STATE", "ANSWERED", "FAILED", "PENDING", "OFFLINE"
    );
    for j in jobs {
        let target = if j.target.is_empty() { "(every client)" } else { j.target.as_str() };
        out.push_str(&format!(
            "{:<36}  {:<23}  {:<16}  {:<14}  {:<24}  {:<11}  {:>8} {:>6} {:>7} {:>7}\n",
            j.id,
            j.created,
            j.who,
            j.command,
            target,
            j.state.name(),
            j.answered,
            j.failed,
            j.pending,
            j.offline
        ));
    }
    out
}

/// One job: its answers as its command printed them, every agent's state
/// (a rollout's batches too); or, with an action word first, control it:
/// `job pause|resume|abort ID`, `job cancel ID [-i GLOB] [--grace 5s]`.
#[derive(clap::Args, Debug)]
pub struct ShowArgs {
    /// `ID`, or `pause|resume|abort|cancel ID`.
    #[arg(required = true, num_args = 1..=2, value_name = "[ACTION] ID")]
    pub words: Vec<String>,
    /// Print JSON for scripts.
    #[arg(long)]
    pub json: bool,
    /// Follow the job until it is over (a rollout batch by batch); Ctrl-C
    /// asks whether to cancel it.
    #[arg(long = "wait")]
    pub until_done: bool,
    /// Print the agents with identical output and state once.
    #[arg(long)]
    pub group: bool,
    /// `cancel`: between SIGTERM and SIGKILL of the command's processes.
    #[arg(long, value_name = "DURATION", value_parser = humantime::parse_duration)]
    pub grace: Option<Duration>,
    #[command(flatten)]
    pub wait: Wait,
}

impl Admin for ShowArgs {
    fn wait(&self, global: f64) -> f64 {
        self.wait.or(global)
    }

    /// Admin: control the job (the server says what it did), or show it;
    /// `--wait` follows it until it is over. It fails unless every targeted
    /// agent is `ok`.
    fn run(self, session: &mut Session) -> anyhow::Result<Outcome> {
        let (action, id) = match self.words.as_slice() {
            [id] => (None, id.clone()),
            [word, id] => match Action::parse(word) {
                Some(action) => (Some(action), id.clone()),
                None => bail!("`{word}` is not an action (pause, resume, abort, cancel): `job ACTION ID` or `job ID`"),
            },
            _ => bail!("give a job id"),
        };
        let Some(action) = action else {
            if self.until_done {
                interrupt::install()?;
            }
            let how = How::new(self.until_done, self.json, self.group);
            return follow::follow(session, &id, how, None);
        };
        if self.grace.is_some() && action != Action::Cancel {
            bail!("--grace is for `job cancel`");
        }
        if !session.identities.is_empty() && action != Action::Cancel {
            bail!("-i is for `job cancel`: pause, resume and abort act on the whole job");
        }
        let control = Control {
            job: id.clone(),
            action,
            identities: session.identities.clone(),
            grace_ms: self.grace.map_or(0, |g| g.as_millis().max(1) as u64),
        };
        let mut request = job_control::request(&control);
        if let (Action::Cancel, Some(signer)) = (action, &session.signer) {
            signer.sign_cancel(&mut request, &id, &control.identities);
        }
        let response = session.ask_server(request)?;
        let done = job_control::done(&response).context("the server's answer says nothing")?;
        if self.json {
            println!("{}", serde_json::to_string_pretty(&done)?);
        } else {
            println!("job {id} {}: {}", done.state, done.note);
        }
        Ok(Outcome::Done)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use pantry_shared::filter::ClientFilter;
    use pantry_shared::Message;

    #[test]
    fn list_and_show_round_trip() {
        let filter = ClientFilter { application: Some("shop".into()), ..Default::default() };
        let m = Message::from_frames(&list_request(5, &filter).to_frames()).unwrap();
        assert_eq!(parse_list(&m).unwrap(), (5, filter));
        let summary = JobSummary {
            id: "u".into(),
            created: "2026-01-01T00:00:00.000Z".into(),
            who: "admin".into(),
            command: "Exec".into(),
            target: "shop".into(),
            answered: 2,
            failed: 1,
            pending: 0,
            offline: 1,
            state: pantry_shared::commands::rollout::JobState::Done,
        };
        let listed = jobs(&respond_list(&m, std::slice::from_ref(&summary)));
        assert_eq!(listed, std::slice::from_ref(&summary));
        assert!(format_table(&listed).contains("Exec"));
        let detail = JobDetail {
            summary,
            role: "admin".into(),
            key: "k".into(),
            address: "127.0.0.1".into(),
            arguments: serde_json::json!({"program": "true"}),
            sent_to: vec!["web-1".into()],
            offline: vec![],
            result: None,
            answers: vec![JobAnswer {
                identity: "web-1".into(),
                received: "2026-01-01T00:00:01.000Z".into(),
                outcome: "ok".into(),
                error: None,
                body: Some(serde_json::Value::String("hi".into())),
            }],
            lost: vec![],
            state: pantry_shared::commands::rollout::JobState::Done,
            agents: vec![],
            batches: vec![],
            rollout: None,
            rerun_of: None,
        };
        let back = job(&respond_show(&show_request("u"), &detail)).unwrap();
        assert_eq!(back, detail);
        assert_eq!(super::super::echo::format_answer(&back.answers[0].as_message("Echo")), "web-1: hi");
    }
}
