//! Facts on the wire: an agent's `Facts` report (sent when their hash
//! changes, and on each new connection), the freshness its every
//! registration carries, and `ListFacts`, the admin's `facts` query.
//!
//! A registration says which facts the agent has (`custom.facts_hash`)
//! and when it last gathered them (`custom.facts_gathered`, RFC 3339) every
//! `facts_interval` (`custom.facts_interval`, seconds): the server keeps the
//! facts fresh without receiving them at each heartbeat.

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::error::DecodeError;
use crate::facts::{Facts, MAX_FACTS_BYTES};
use crate::filter::ClientFilter;
use crate::message::{BodyPart, Message};
use crate::rule::{Rule, RunsOn, Senders};

pub const TYPE: &str = "Facts";
pub const LIST_TYPE: &str = "ListFacts";

pub const RULE: Rule =
    Rule { wire: TYPE, runs_on: RunsOn::Server, senders: Senders::Clients, may_block: false, job: false };
pub const LIST_RULE: Rule =
    Rule { wire: LIST_TYPE, runs_on: RunsOn::Server, senders: Senders::Admins, may_block: false, job: false };

pub const HASH_FIELD: &str = "facts_hash";
pub const GATHERED_FIELD: &str = "facts_gathered";
pub const INTERVAL_FIELD: &str = "facts_interval";

/// What an agent reports.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Report {
    pub facts: Facts,
    /// RFC 3339: when the agent gathered them.
    pub gathered: String,
    /// Seconds between two gatherings.
    pub interval: u64,
    pub hash: String,
}

/// Agent: the report, from `identity`; it asks for an answer (the server
/// says when it refuses them, and why).
pub fn request(identity: &str, report: &Report) -> Message {
    let mut m = Message::new(TYPE);
    m.metadata.from = identity.to_owned();
    m.metadata.requires_response = true;
    m.body.push(BodyPart::Json(serde_json::to_value(report).unwrap_or(Value::Null)));
    m
}

/// Agent: a registration says which facts it has and since when.
pub fn stamp_registration(registration: &mut Message, hash: &str, gathered: &str, interval: u64) {
    let custom = &mut registration.metadata.custom;
    custom.insert(HASH_FIELD.into(), hash.into());
    custom.insert(GATHERED_FIELD.into(), gathered.into());
    custom.insert(INTERVAL_FIELD.into(), interval.into());
}

/// Server: the freshness a registration carries: hash, gathered, interval.
pub fn freshness(registration: &Message) -> Option<(String, String, u64)> {
    let custom = &registration.metadata.custom;
    let hash = custom.get(HASH_FIELD)?.as_str()?.to_owned();
    let gathered = custom.get(GATHERED_FIELD)?.as_str()?.to_owned();
    Some((hash, gathered, custom.get(INTERVAL_FIELD).and_then(Value::as_u64).unwrap_or(600)))
}

/// Why a report is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ReportError {
    #[error(
        "facts of {0} bytes are more than the {MAX_FACTS_BYTES} bytes an agent may report; the previous ones are kept"
    )]
    TooBig(usize),
    #[error(transparent)]
    Bad(#[from] DecodeError),
}

/// Server: the report, refused when it is bigger than
/// [`MAX_FACTS_BYTES`] (measured before it is decoded).
pub fn parse(request: &Message) -> Result<Report, ReportError> {
    let bad = |reason: String| DecodeError::Body { message_type: TYPE.into(), reason };
    let body = request.body.first().and_then(BodyPart::as_json).ok_or_else(|| bad("no JSON body".into()))?;
    let size = body.get("facts").map_or(0, |f| f.to_string().len());
    if size > MAX_FACTS_BYTES {
        return Err(ReportError::TooBig(size));
    }
    Ok(serde_json::from_value(body.clone()).map_err(|e| bad(e.to_string()))?)
}

/// One agent in `ListFacts`' answer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AgentFacts {
    pub identity: String,
    pub online: bool,
    /// RFC 3339; `None`: it reported none.
    pub gathered: Option<String>,
    /// Whether they are recent enough to be matched by `-F`.
    pub fresh: bool,
    /// All of them, or the keys asked for.
    pub facts: Facts,
}

/// Admin: the facts of the agents `filter` (and `-i`, `-F` in `custom`)
/// select; only `keys` (all when empty).
pub fn list_request(filter: &ClientFilter, keys: &[String]) -> Message {
    let mut m = Message::new(LIST_TYPE);
    m.metadata.requires_response = true;
    m.body.push(BodyPart::Json(serde_json::json!({"filter": filter, "keys": keys})));
    m
}

/// Server: the filter and the keys.
pub fn parse_list(request: &Message) -> Result<(ClientFilter, Vec<String>), DecodeError> {
    let bad = |reason: String| DecodeError::Body { message_type: LIST_TYPE.into(), reason };
    let body = request.body.first().and_then(BodyPart::as_json).ok_or_else(|| bad("no JSON body".into()))?;
    let filter = serde_json::from_value(body.get("filter").cloned().unwrap_or(Value::Null)).unwrap_or_default();
    let keys = serde_json::from_value(body.get("keys").cloned().unwrap_or(Value::Null)).unwrap_or_default();
    Ok((filter, keys))
}

/// Server: the answer.
pub fn respond_list(request: &Message, agents: &[AgentFacts]) -> Message {
    let mut response = request.response();
    response.body.push(BodyPart::Json(serde_json::to_value(agents).unwrap_or(Value::Null)));
    response
}

/// Admin: the agents in the answer.
pub fn agents(response: &Message) -> Vec<AgentFacts> {
    response
        .body
        .first()
        .and_then(BodyPart::as_json)
        .and_then(|v| serde_json::from_value(v.clone()).ok())
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reports_round_trip_and_big_ones_are_refused() {
        let mut facts = Facts::new();
        facts.insert("os.id".into(), "debian".into());
        let report = Report { facts, gathered: "2026-12-07T10:00:00Z".into(), interval: 600, hash: "h".into() };
        let m = Message::from_frames(&request("web-1", &report).to_frames()).unwrap();
        assert_eq!(parse(&m).unwrap(), report);
        let mut big = report.clone();
        big.facts.insert("blob".into(), "x".repeat(MAX_FACTS_BYTES).into());
        assert!(matches!(parse(&request("web-1", &big)), Err(ReportError::TooBig(_))));
        let mut reg = crate::commands::register_client::request(&ClientFilter::default());
        stamp_registration(&mut reg, "h", "2026-12-07T10:00:00Z", 60);
        assert_eq!(freshness(&reg), Some(("h".into(), "2026-12-07T10:00:00Z".into(), 60)));
    }
}
