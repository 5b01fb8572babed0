//! `exec -- PROGRAM ARGS...`: run a program on every matching client and print each one's output under a header line.

use crate::for_clients::{self, Job};
use crate::rollout::RolloutArgs;
use crate::session::{Admin, Outcome, Session};
use anyhow::Context as _;
use pantry_shared::commands::exec::*;

/// Run PROGRAM with ARGS on every matching client: `exec -- uname -a`.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// Seconds each client lets the program run before killing its
    /// process group [default: 60, or with --from-job the job's].
    #[arg(long, value_name = "SECONDS")]
    pub timeout: Option<f64>,
    /// Run through `sh -c` (PROGRAM ARGS joined by spaces).
    #[arg(long)]
    pub shell: bool,
    /// Print JSON for scripts (each agent's state included).
    #[arg(long)]
    pub json: bool,
    /// Print the job id and return at once; `pantry-admin job ID` shows
    /// the answers.
    #[arg(long = "async")]
    pub detach: bool,
    #[command(flatten)]
    pub rollout: RolloutArgs,
    /// The program and its arguments [with --from-job: the job's].
    #[arg(
        required_unless_present = "from_job",
        trailing_var_arg = true,
        allow_hyphen_values = true,
        value_name = "PROGRAM"
    )]
    pub command: Vec<String>,
}

/// Without `--timeout` (nor a job to take it from).
const DEFAULT_TIMEOUT: f64 = 60.0;

impl Admin for Args {
    /// The clients' time limit, plus the usual wait for the answers.
    fn wait(&self, global: f64) -> f64 {
        self.timeout.unwrap_or(DEFAULT_TIMEOUT) + global
    }

    /// Admin: prints each answer as it arrives (or, with `--json` or
    /// `--group`, all of them at the end), then the summary; in batches
    /// when asked, the server running the rollout.
    fn run(self, session: &mut Session) -> anyhow::Result<Outcome> {
        let Some(job) = self.rollout.prepare(session, TYPE)? else { return Ok(Outcome::NoMatch) };
        if self.rollout.dry_run {
            return self.rollout.dry_run(session, &job);
        }
        let exec = match (self.command.split_first(), &job.rerun) {
            (Some((program, args)), _) => ExecRequest {
                program: program.clone(),
                args: args.to_vec(),
                shell: self.shell,
                timeout: self.timeout.unwrap_or(DEFAULT_TIMEOUT),
            },
            (None, Some(rerun)) => {
                let mut exec: ExecRequest = serde_json::from_value(rerun.job.arguments.clone())
                    .context("the job's recorded command cannot be read back")?;
                exec.shell |= self.shell;
                exec.timeout = self.timeout.unwrap_or(exec.timeout);
                exec
            }
            (None, None) => anyhow::bail!("no program given"),
        };
        // The wait was reckoned from --timeout: a re-run's own timeout counts.
        let wait = session.deadline.idle + std::time::Duration::from_secs_f64(exec.timeout)
            - std::time::Duration::from_secs_f64(self.timeout.unwrap_or(DEFAULT_TIMEOUT));
        session.deadline.idle = wait;
        session.deadline.restart();
        let request = job.request(session, request(&exec), wait);
        if self.detach {
            return session.start_async(&request);
        }
        let (json, group, timeout) = (self.json, self.rollout.group, exec.timeout);
        let job = Job { request, target: &job.target, plan: &job.plan, timeout, json, group, to_stderr: false };
        for_clients::run(session, job, None, |_, _| {})
    }
}

/// Admin: a header line with the identity and status, then the output.
pub fn format_answer(identity: &str, result: &ExecResult, timeout: f64) -> String {
    format!("==> {identity}: {}\n{}", result.status_text(timeout), format_output(result))
}

/// Admin: the output, stderr's lines marked.
pub fn format_output(result: &ExecResult) -> String {
    let mut out = String::new();
    for (name, text, cut) in
        [("", &result.stdout, result.stdout_truncated), ("stderr: ", &result.stderr, result.stderr_truncated)]
    {
        for line in text.lines() {
            out.push_str(&format!("{name}{line}\n"));
        }
        if cut {
            out.push_str(&format!("{name}[output cut at {} MiB]\n", OUTPUT_CAP / (1024 * 1024)));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_cut_output_says_so() {
        let result = ExecResult {
            exit_code: Some(0),
            signal: None,
            timed_out: false,
            stdout: "x\n".into(),
            stderr: String::new(),
            stdout_truncated: true,
            stderr_truncated: false,
            duration_ms: 1,
            error: None,
            cancelled: false,
        };
        let text = format_answer("h", &result, 10.0);
        assert!(text.starts_with("==> h: exit 0\nx\n") && text.contains("[output cut at 1 MiB]"), "{text}");
    }
}
