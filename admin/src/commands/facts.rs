//! `facts [KEY...]`: what the targeted agents are, as they reported it
//! (all their facts, or the keys named); `--count KEY`: each value of KEY
//! with how many agents have it, and how many lack it. Admin only.

use std::collections::BTreeMap;

use crate::session::{Admin, Outcome, Session, Wait};
use pantry_shared::commands::facts::*;
use serde_json::Value;

/// The facts of the agents -a/-e/-r/-i/-F select: all, or KEY...
#[derive(clap::Args, Debug)]
pub struct Args {
    /// Only these facts.
    #[arg(value_name = "KEY")]
    pub keys: Vec<String>,
    /// Each value of KEY with how many agents have it, and how many lack it.
    #[arg(long, value_name = "KEY", conflicts_with = "keys")]
    pub count: Option<String>,
    /// Print JSON for scripts.
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub wait: Wait,
}

impl Admin for Args {
    fn wait(&self, global: f64) -> f64 {
        self.wait.or(global)
    }

    /// Admin: asks the server for the facts it keeps, and prints them; no
    /// agent is asked anything.
    fn run(self, session: &mut Session) -> anyhow::Result<Outcome> {
        let keys = self.count.clone().map_or(self.keys.clone(), |k| vec![k]);
        let request = session.selecting(list_request(&session.filter, &keys));
        let agents = agents(&session.ask_server(request)?);
        session.say_unknown(&[])?;
        if agents.is_empty() {
            eprintln!("no clients match");
            return Ok(Outcome::NoMatch);
        }
        match (&self.count, self.json) {
            (Some(key), true) => println!("{}", serde_json::to_string_pretty(&counts(&agents, key))?),
            (Some(key), false) => print!("{}", format_counts(&agents, key)),
            (None, true) => println!("{}", serde_json::to_string_pretty(&agents)?),
            (None, false) => print!("{}", format_facts(&agents)),
        }
        Ok(Outcome::Done)
    }
}

/// A fact's value as printed: strings as they are, the rest as JSON.
fn text(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// Admin: each agent, then its facts, one per line.
pub fn format_facts(agents: &[AgentFacts]) -> String {
    let mut out = String::new();
    for a in agents {
        let when = match (&a.gathered, a.fresh) {
            (None, _) => "no facts reported".to_owned(),
            (Some(at), true) => format!("gathered {at}"),
            (Some(at), false) => format!("gathered {at}, stale"),
        };
        out.push_str(&format!("{}{}: {when}\n", a.identity, if a.online { "" } else { " (offline)" }));
        for (key, value) in &a.facts {
            out.push_str(&format!("  {key}: {}\n", text(value)));
        }
    }
    out
}

/// How many agents have each value of `key` (a list counts each of its
/// elements), and how many lack it.
pub fn counts(agents: &[AgentFacts], key: &str) -> serde_json::Value {
    let mut by_value: BTreeMap<String, usize> = BTreeMap::new();
    let mut lacking = 0;
    for a in agents {
        match a.facts.get(key) {
            None => lacking += 1,
            Some(Value::Array(items)) => {
                for item in items {
                    *by_value.entry(text(item)).or_default() += 1;
                }
            }
            Some(v) => *by_value.entry(text(v)).or_default() += 1,
        }
    }
    serde_json::json!({"key": key, "values": by_value, "lacking": lacking})
}

/// Admin: `COUNT  VALUE` lines, most common first, then those lacking it.
pub fn format_counts(agents: &[AgentFacts], key: &str) -> String {
    let counted = counts(agents, key);
    let mut values: Vec<(String, u64)> = counted["values"]
        .as_object()
        .map(|m| m.iter().map(|(k, v)| (k.clone(), v.as_u64().unwrap_or(0))).collect())
        .unwrap_or_default();
    values.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
    let mut out = String::new();
    for (value, n) in values {
        out.push_str(&format!("{n:>7}  {value}\n"));
    }
    out.push_str(&format!("{:>7}  (no {key})\n", counted["lacking"].as_u64().unwrap_or(0)));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn agent(identity: &str, os: Option<&str>) -> AgentFacts {
        let mut facts = pantry_shared::facts::Facts::new();
        if let Some(os) = os {
            facts.insert("os.id".into(), os.into());
        }
        AgentFacts { identity: identity.into(), online: true, gathered: None, fresh: true, facts }
    }

    #[test]
    fn values_are_counted_with_those_lacking_the_key() {
        let agents =
            [agent("a", Some("debian")), agent("b", Some("debian")), agent("c", Some("alpine")), agent("d", None)];
        assert_eq!(format_counts(&agents, "os.id"), "      2  debian\n      1  alpine\n      1  (no os.id)\n");
        assert!(format_facts(&agents[..1]).contains("  os.id: debian\n"));
    }
}
