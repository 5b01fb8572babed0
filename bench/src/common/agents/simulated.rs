//! The bench's own `exec` ([`AgentOptions::simulated_exec`](super::AgentOptions)):
//! a simulated agent answers an `Exec` of [`PROGRAM`] itself, spawning
//! nothing, so that a rollout over a thousand agents costs no processes.
//! What it answers, from the request alone (no sockets, no clock):
//!
//! - `pantry-bench-exec fail ID...`: exit 1 on the agents named, exit 0 on
//!   the others, at once;
//! - `pantry-bench-exec hold`: no answer until a `Cancel` of its job (the
//!   request's uuid) comes; then a `cancelled` answer, as the real agent
//!   gives for a killed command.
//!
//! The answers are built as the real agent's (`client/src/work/exec.rs`):
//! the request's response, with an [`ExecResult`] body and, when
//! cancelled, `custom.cancelled: true`.

use pantry_shared::commands::exec::{self, ExecResult};
use pantry_shared::commands::rollout::CANCELLED_FIELD;
use pantry_shared::commands::{cancel, Kind};
use pantry_shared::message::BodyPart;
use pantry_shared::Message;
use serde_json::Value;

/// The program the simulated agents run themselves.
pub const PROGRAM: &str = "pantry-bench-exec";
/// `fail ID...` and `hold`.
pub const FAIL: &str = "fail";
pub const HOLD: &str = "hold";

/// What a simulated agent does with a request.
#[derive(Debug, PartialEq)]
pub enum Step {
    /// An `Exec` of [`PROGRAM`]: answer this now.
    Answer(Message),
    /// An `Exec` of [`PROGRAM`] `hold`: keep it until its job is cancelled.
    Hold,
    /// A `Cancel` of this job (the uuid of the request it ran).
    Cancel(String),
    /// Anything else: the agent's usual work (`run_on_client`).
    Other,
}

/// What `identity` does with `request`.
pub fn step(request: &Message, identity: &str) -> Step {
    match Kind::from_wire(request.message_type()) {
        Some(Kind::Exec) => {
            let Ok(asked) = exec::parse(request) else { return Step::Other };
            if asked.program != PROGRAM {
                return Step::Other;
            }
            match asked.args.split_first() {
                Some((verb, _)) if verb == HOLD => Step::Hold,
                Some((verb, failing)) if verb == FAIL => {
                    let code = if failing.iter().any(|f| f == identity) { 1 } else { 0 };
                    Step::Answer(answer(request, identity, Some(code), false))
                }
                _ => Step::Answer(answer(request, identity, Some(2), false)),
            }
        }
        Some(Kind::Cancel) => cancel::parse(request).map_or(Step::Other, |c| Step::Cancel(c.job)),
        _ => Step::Other,
    }
}

/// `identity`'s answer to `request`: exited with `code`, or killed by a
/// cancel (SIGTERM, as the real agent's command would be).
pub fn answer(request: &Message, identity: &str, code: Option<i32>, cancelled: bool) -> Message {
    let mut response = request.response();
    let result = ExecResult {
        exit_code: if cancelled { None } else { code },
        signal: cancelled.then_some(libc::SIGTERM),
        timed_out: false,
        stdout: String::new(),
        stderr: String::new(),
        stdout_truncated: false,
        stderr_truncated: false,
        duration_ms: 0,
        error: None,
        cancelled,
    };
    if cancelled {
        response.metadata.custom.insert(CANCELLED_FIELD.into(), Value::Bool(true));
    }
    response.body.push(BodyPart::Json(serde_json::to_value(result).unwrap_or(Value::Null)));
    response.metadata.from = identity.to_owned();
    response
}

/// The `Exec` request for `args` (`fail ID...` or `hold`).
pub fn request(args: Vec<String>, timeout_s: f64) -> Message {
    exec::request(&exec::ExecRequest { program: PROGRAM.into(), args, shell: false, timeout: timeout_s })
}

#[cfg(test)]
mod tests {
    use super::*;
    use pantry_shared::commands::rollout::{state_of, AgentState};

    fn args(a: &[&str]) -> Vec<String> {
        a.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn fail_hold_and_cancel_answer_as_the_real_agent() {
        let fail = request(args(&[FAIL, "agent-00001", "agent-00003"]), 30.0);
        let wire = |m: &Message| Message::from_frames(&m.to_frames()).unwrap();
        let state = |who: &str| match step(&wire(&fail), who) {
            Step::Answer(a) => state_of(Kind::Exec, &wire(&a)),
            other => panic!("{other:?}"),
        };
        assert_eq!((state("agent-00001"), state("agent-00002")), (AgentState::Failed, AgentState::Ok));
        let hold = request(args(&[HOLD]), 30.0);
        assert_eq!(step(&hold, "agent-00001"), Step::Hold);
        let cancelling: cancel::CancelRequest =
            serde_json::from_value(serde_json::json!({"job": hold.uuid(), "grace_ms": 0})).unwrap();
        assert_eq!(
            step(&wire(&cancel::request(&cancelling, "agent-00001", "s")), "x"),
            Step::Cancel(hold.uuid().into())
        );
        let cancelled = wire(&answer(&hold, "agent-00001", None, true));
        assert_eq!(state_of(Kind::Exec, &cancelled), AgentState::Cancelled);
        assert_eq!(cancelled.metadata.from, "agent-00001");
        let other =
            exec::request(&exec::ExecRequest { program: "true".into(), args: vec![], shell: false, timeout: 1.0 });
        assert_eq!(step(&other, "agent-00001"), Step::Other);
    }
}
