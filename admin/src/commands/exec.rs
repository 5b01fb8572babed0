//! `exec -- PROGRAM ARGS...`: run a program on every matching client and print each one's output under a header line.

use crate::connection::unsupported;
use crate::session::{print_json_summary, report_offline, Outcome, Session};
use anyhow::Context as _;
use pantry_shared::commands::exec::*;
use std::io::Write as _;

use crate::session::Admin;

/// Run PROGRAM with ARGS on every matching client: `exec -- uname -a`.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// Seconds each client lets the program run before killing its
    /// process group.
    #[arg(long, default_value_t = 60.0, value_name = "SECONDS")]
    pub timeout: f64,
    /// Run through `sh -c` (PROGRAM ARGS joined by spaces).
    #[arg(long)]
    pub shell: bool,
    /// Print JSON for scripts.
    #[arg(long)]
    pub json: bool,
    /// Print the job id and return at once; `pantry-admin job ID` shows
    /// the answers.
    #[arg(long = "async")]
    pub detach: bool,
    /// The program and its arguments.
    #[arg(required = true, trailing_var_arg = true, allow_hyphen_values = true, value_name = "PROGRAM")]
    pub command: Vec<String>,
}

impl Admin for Args {
    /// The clients' time limit, plus the usual wait for the answers.
    fn wait(&self, global: f64) -> f64 {
        self.timeout + global
    }

    /// Admin: prints each answer as it arrives (or, with `--json`, all of
    /// them at the end), then the summary; a program that failed anywhere
    /// fails the command.
    fn run(self, session: &mut Session) -> anyhow::Result<Outcome> {
        let (program, args) = self.command.split_first().context("no program given")?;
        let exec =
            ExecRequest { program: program.clone(), args: args.to_vec(), shell: self.shell, timeout: self.timeout };
        let target = session.target()?;
        let request = session.to_clients(request(&exec), &target);
        if self.detach {
            return session.start_async(&request);
        }
        let (json, online_only) = (self.json, session.online_only);
        let mut answers = Vec::new();
        let result = session.ask_clients(
            &request,
            None,
            |_, offline| report_offline(offline, online_only, json),
            |answer| {
                let Some(ran) = result(answer) else {
                    eprintln!("{}: {}", answer.metadata.from, unsupported(TYPE));
                    return false;
                };
                if json {
                    answers.push(serde_json::json!({"identity": answer.metadata.from, "result": ran}));
                } else {
                    print!("{}", format_answer(&answer.metadata.from, &ran, exec.timeout));
                    let _ = std::io::stdout().flush();
                }
                ran.succeeded()
            },
        )?;
        print_json_summary(json, answers, &result)?;
        Ok(session.report(&result, &target))
    }
}

/// Admin: a header line with the identity and status, then the output.
pub fn format_answer(identity: &str, result: &ExecResult, timeout: f64) -> String {
    let mut out = format!("==> {identity}: {}\n", result.status_text(timeout));
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
        };
        let text = format_answer("h", &result, 10.0);
        assert!(text.starts_with("==> h: exit 0\nx\n") && text.contains("[output cut at 1 MiB]"), "{text}");
    }
}
