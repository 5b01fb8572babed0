//! How an agent's answer to `echo`, `exec` or `upload` is printed: as it
//! arrives (each command's own format), or with `--group`, the agents
//! with identical output and state once, identities folded into ranges
//! (`==> web-[001-340],db-2 (341): exit 0`, as ClusterShell's clubak
//! prints), then the output.

use std::collections::BTreeMap;

use pantry_shared::commands::rollout::AgentState;
use pantry_shared::commands::{exec, upload};
use pantry_shared::message::{BodyPart, Message};

use crate::commands::{echo as echo_admin, exec as exec_admin, upload as upload_admin};
use crate::connection::unsupported;
use crate::fold::fold;

/// One answer, as its command prints it.
pub fn answer_text(command: &str, identity: &str, answer: &Message, timeout: f64) -> String {
    match (answer.error(), command) {
        (Some(error), _) => format!("{identity}: error: {error}\n"),
        (None, exec::TYPE) => match exec::result(answer) {
            Some(result) => exec_admin::format_answer(identity, &result, timeout),
            None => format!("{identity}: {}\n", unsupported(command)),
        },
        (None, upload::TYPE) => match upload::result(answer) {
            Some(result) => format!("{}\n", upload_admin::format_answer(identity, &result)),
            None => format!("{identity}: {}\n", unsupported(command)),
        },
        (None, _) => format!("{identity}: {}\n", answer.body.first().and_then(BodyPart::as_text).unwrap_or_default()),
    }
}

/// An answer's header status and output, as `--group` compares them.
fn status_and_output(command: &str, answer: &Message, timeout: f64) -> (String, String) {
    if let Some(error) = answer.error() {
        return (format!("error: {error}"), String::new());
    }
    match command {
        exec::TYPE => match exec::result(answer) {
            Some(result) => (result.status_text(timeout), exec_admin::format_output(&result)),
            None => (unsupported(command), String::new()),
        },
        upload::TYPE => match upload::result(answer) {
            Some(r) => (format!("wrote {} bytes to {} (sha256 {})", r.bytes, r.path, r.sha256), String::new()),
            None => (unsupported(command), String::new()),
        },
        _ => {
            let text = echo_admin::format_answer(answer);
            let text = text.split_once(": ").map_or(text.as_str(), |(_, t)| t);
            ("ok".into(), format!("{text}\n"))
        }
    }
}

/// The agents grouped by identical state and output: answers, then the
/// agents that never answered (offline, no-answer, skipped...).
pub fn grouped(
    command: &str,
    timeout: f64,
    answers: &[(String, Message, AgentState)],
    others: &[(String, AgentState)],
) -> String {
    let mut groups: BTreeMap<(AgentState, String, String), Vec<&str>> = BTreeMap::new();
    for (identity, answer, state) in answers {
        let (status, output) = status_and_output(command, answer, timeout);
        groups.entry((*state, status, output)).or_default().push(identity);
    }
    for (identity, state) in others {
        groups.entry((*state, state.name().to_owned(), String::new())).or_default().push(identity);
    }
    // The biggest groups first: the odd ones out are what an operator
    // looks for, at the end, beside the summary.
    let mut groups: Vec<_> = groups.into_iter().collect();
    groups.sort_by(|a, b| b.1.len().cmp(&a.1.len()).then_with(|| a.0.cmp(&b.0)));
    let mut out = String::new();
    for ((_, status, output), identities) in groups {
        out.push_str(&format!("==> {} ({}): {status}\n{output}", fold(identities.iter().copied()), identities.len()));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use pantry_shared::commands::echo;

    #[test]
    fn identical_answers_are_printed_once() {
        let answer = |from: &str, text: &str| {
            let mut m = echo::handle(&echo::request(text));
            m.metadata.from = from.into();
            (from.to_owned(), m, AgentState::Ok)
        };
        let answers: Vec<_> =
            (1..=3).map(|i| answer(&format!("web-{i}"), "hi")).chain([answer("db-2", "ho")]).collect();
        let text = grouped(echo::TYPE, 0.0, &answers, &[("web-9".into(), AgentState::Offline)]);
        assert_eq!(text, "==> web-[1-3] (3): ok\nhi\n==> db-2 (1): ok\nho\n==> web-9 (1): offline\n");
    }
}
