//! What the job store keeps of a client's answer: its outcome, its error and
//! its body, output capped at `jobs.max_output`. The socket thread hands
//! answers over as received ([`RawAnswer`]); the store's writer thread
//! decodes them, off the routing path.

use std::time::SystemTime;

use pantry_shared::commands::{exec, rollout, Kind};
use pantry_shared::{BodyPart, Message};
use serde_json::Value;

/// One client's answer to a job.
#[derive(Debug, Clone, PartialEq)]
pub struct AnswerRow {
    pub job_id: String,
    pub identity: String,
    pub received: SystemTime,
    pub outcome: String,
    pub error: Option<String>,
    pub body: Option<Value>,
}

/// An answer's frames as they arrived (without the routing id).
#[derive(Debug)]
pub struct RawAnswer {
    pub kind: Kind,
    pub frames: Vec<Vec<u8>>,
    pub received: SystemTime,
    pub max_output: usize,
}

impl RawAnswer {
    /// `None` when the frames do not decode (the requester got them
    /// anyway, as the client sent them).
    pub fn row(&self) -> Option<AnswerRow> {
        let answer = Message::from_frames(&self.frames).ok()?;
        Some(row(self.kind, &answer, self.max_output, self.received))
    }
}

/// One client's answer, as the job store keeps it.
///
/// Every stored part counts against `max_output`, however the agent
/// encoded it: the error, a plain body, a structured body (cut to a note of
/// its size and start when its JSON is longer), and an exec's stdout and
/// stderr (each).
pub fn row(kind: Kind, answer: &Message, max_output: usize, received: SystemTime) -> AnswerRow {
    let error = answer.error().map(|e| cut_to_bytes(e, max_output).to_owned());
    let mut body = answer.body.first().map(|part| match part {
        BodyPart::Json(v) => capped_json(v, max_output),
        BodyPart::Text(t) => Value::String(cut_to_bytes(t, max_output).to_owned()),
        BodyPart::Bytes(b) => Value::String(format!("({} bytes of binary data)", b.len())),
    });
    if let (Kind::Exec, Some(mut result)) = (kind, exec::result(answer)) {
        for (text, cut_flag) in
            [(&mut result.stdout, &mut result.stdout_truncated), (&mut result.stderr, &mut result.stderr_truncated)]
        {
            if text.len() > max_output {
                let kept = cut_to_bytes(text, max_output).len();
                text.truncate(kept);
                *cut_flag = true;
            }
        }
        if let Some(e) = &mut result.error {
            let kept = cut_to_bytes(e, max_output).len();
            e.truncate(kept);
        }
        body = serde_json::to_value(&result).ok();
    }
    // The agent's state, as every job names it.
    let outcome = rollout::state_of(kind, answer).name();
    AnswerRow {
        job_id: answer.uuid().to_owned(),
        identity: answer.metadata.from.clone(),
        received,
        outcome: outcome.into(),
        error,
        body,
    }
}

/// `value`, or, when its JSON is longer than `max` bytes, a note of its
/// size with the start of that JSON.
fn capped_json(value: &Value, max: usize) -> Value {
    let text = value.to_string();
    if text.len() <= max {
        return value.clone();
    }
    serde_json::json!({"cut": true, "bytes": text.len(), "start": cut_to_bytes(&text, max)})
}

/// The longest prefix of `text` of at most `bytes` bytes that ends on a
/// character boundary.
fn cut_to_bytes(text: &str, bytes: usize) -> &str {
    let mut end = bytes.min(text.len());
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    &text[..end]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers_are_judged_and_capped() {
        let now = SystemTime::now();
        let req = exec::request(&exec::ExecRequest { program: "x".into(), args: vec![], shell: false, timeout: 1.0 });
        let mut answer = req.response();
        answer.metadata.from = "web-1".into();
        let result = exec::ExecResult {
            exit_code: Some(2),
            signal: None,
            timed_out: false,
            stdout: "é".repeat(100),
            stderr: String::new(),
            stdout_truncated: false,
            stderr_truncated: false,
            duration_ms: 3,
            error: None,
            cancelled: false,
        };
        answer.body.push(BodyPart::Json(serde_json::to_value(&result).unwrap()));
        let kept = row(Kind::Exec, &answer, 11, now);
        assert_eq!((kept.outcome.as_str(), kept.identity.as_str()), ("failed", "web-1"));
        let stored: exec::ExecResult = serde_json::from_value(kept.body.unwrap()).unwrap();
        assert_eq!((stored.stdout.len(), stored.stdout_truncated), (10, true));
        let mut refused = req.response();
        refused.set_error("exec is disabled on this client (allow_exec: false in its client.yml)");
        assert_eq!(row(Kind::Exec, &refused, 100, now).outcome, "refused");
        refused.set_error("No such file");
        assert_eq!(row(Kind::Exec, &refused, 100, now).outcome, "failed");
        let echo_answer = pantry_shared::commands::echo::handle(&pantry_shared::commands::echo::request("hi"));
        let raw = RawAnswer { kind: Kind::Echo, frames: echo_answer.to_frames(), received: now, max_output: 1 };
        assert_eq!(raw.row().unwrap().body, Some(Value::String("h".into())));
        // A malicious agent's structured body and error count too.
        let mut hostile = req.response();
        hostile.set_error("e".repeat(3 << 20));
        hostile.body.push(BodyPart::Json(serde_json::json!({"junk": "j".repeat(3 << 20)})));
        let kept = row(Kind::Echo, &hostile, 1000, now);
        assert_eq!(kept.error.as_deref().map(str::len), Some(1000));
        let body = kept.body.unwrap();
        assert!(body.to_string().len() < 1200 && body["cut"] == true, "{body}");
        let garbage = RawAnswer { kind: Kind::Echo, frames: vec![vec![0xff]], received: now, max_output: 1 };
        assert!(garbage.row().is_none());
    }
}
