//! `RegisterClient`: an agent tells the server who it is (application,
//! environment, roles) at start and every `heartbeat_interval` seconds. No
//! response. The server's registry keeps the latest and the check-in time.

use serde_json::json;

use crate::error::DecodeError;
use crate::filter::ClientFilter;
use crate::message::{BodyPart, Message};

use crate::rule::{Rule, RunsOn, Senders};

pub const TYPE: &str = "RegisterClient";

pub const RULE: Rule =
    Rule { wire: TYPE, runs_on: RunsOn::Server, senders: Senders::Clients, may_block: false, job: false };

/// `custom.exact_topics: true` in the server's answer to a registration:
/// it grants PUB topics in the exact form ([`crate::filter::TopicForm`]).
/// An agent that hears nothing of it talks to an older server, and
/// subscribes in the bare form instead.
pub const EXACT_TOPICS_FIELD: &str = "exact_topics";

/// `custom.requests_on_dealer: true` in a registration: the agent takes
/// its requests over the connection the registration came on (its DEALER)
/// and opens no SUB. The server's answer carries the field back when it
/// will send them there; an agent whose answer lacks it talks to an older
/// server, and subscribes instead. Agents that do not ask (the original
/// one, SPEC-only ones) are published to as before.
pub const REQUESTS_ON_DEALER_FIELD: &str = "requests_on_dealer";

/// Server: the answer to an accepted registration.
pub fn respond(request: &Message) -> Message {
    let mut response = request.response();
    response.metadata.custom.insert(EXACT_TOPICS_FIELD.into(), true.into());
    if wants_requests_on_dealer(request) {
        response.metadata.custom.insert(REQUESTS_ON_DEALER_FIELD.into(), true.into());
    }
    response
}

/// Agent: asks for its requests over the registration's connection.
pub fn ask_requests_on_dealer(request: &mut Message) {
    request.metadata.custom.insert(REQUESTS_ON_DEALER_FIELD.into(), true.into());
}

/// Server: whether a registration asks for its requests on its connection.
pub fn wants_requests_on_dealer(request: &Message) -> bool {
    request.metadata.custom.get(REQUESTS_ON_DEALER_FIELD) == Some(&serde_json::Value::Bool(true))
}

/// Agent: whether the server's answer says it sends requests on the
/// DEALER (the same field, carried back).
pub fn sends_requests_on_dealer(answer: &Message) -> bool {
    wants_requests_on_dealer(answer)
}

/// Agent: whether the server's answer says it grants the exact form.
pub fn grants_exact_topics(answer: &Message) -> bool {
    answer.metadata.custom.get(EXACT_TOPICS_FIELD) == Some(&serde_json::Value::Bool(true))
}

/// The body is `{application, environment, roles}`, as the original agent
/// sends it; the identity is the message's `from`.
pub fn request(me: &ClientFilter) -> Message {
    request_with(me, None)
}

/// Agent: the registration with `heartbeat_interval` (seconds) in the body,
/// which tells the server when the agent is overdue.
pub fn request_every(me: &ClientFilter, heartbeat_interval: u64) -> Message {
    request_with(me, Some(heartbeat_interval))
}

fn request_with(me: &ClientFilter, heartbeat_interval: Option<u64>) -> Message {
    let mut m = Message::new(TYPE);
    m.metadata.from = me.identity.clone().unwrap_or_default();
    let mut body = json!({
        "application": me.application,
        "environment": me.environment,
        "roles": me.roles,
    });
    if let Some(seconds) = heartbeat_interval {
        body["heartbeat_interval"] = seconds.into();
    }
    m.body.push(BodyPart::Json(body));
    m
}

/// Who registered, and how often it checks in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Registration {
    pub client: ClientFilter,
    pub heartbeat_interval: Option<u64>,
}

/// Server: who registered. The identity comes from `from`.
pub fn parse(request: &Message) -> Result<Registration, DecodeError> {
    let bad = |reason: String| DecodeError::Body { message_type: TYPE.into(), reason };
    let body = request.body.first().and_then(BodyPart::as_json).ok_or_else(|| bad("no JSON body part".into()))?;
    let heartbeat_interval = match body.get("heartbeat_interval") {
        None | Some(serde_json::Value::Null) => None,
        Some(v) => Some(v.as_u64().filter(|s| *s > 0).ok_or_else(|| bad("heartbeat_interval: seconds".into()))?),
    };
    let mut fields = body.clone();
    if let Some(map) = fields.as_object_mut() {
        map.remove("heartbeat_interval");
    }
    let mut client: ClientFilter = serde_json::from_value(fields).map_err(|e| bad(e.to_string()))?;
    client.identity = Some(request.metadata.from.clone());
    client.validate().map_err(|e| bad(e.to_string()))?;
    Ok(Registration { client, heartbeat_interval })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn registration_round_trip() {
        let me = ClientFilter {
            identity: Some("host-1".into()),
            application: Some("pantry".into()),
            environment: None,
            roles: vec!["web".into()],
        };
        let m = Message::from_frames(&request_every(&me, 30).to_frames()).unwrap();
        assert_eq!(parse(&m).unwrap(), Registration { client: me.clone(), heartbeat_interval: Some(30) });
        assert_eq!(parse(&request(&me)).unwrap().heartbeat_interval, None);
    }

    #[test]
    fn bad_registrations_are_errors() {
        let mut m = request(&ClientFilter { identity: Some("h".into()), ..Default::default() });
        m.body.clear();
        assert!(parse(&m).is_err());
        m.body.push(BodyPart::Json(json!({"roles": "web"})));
        assert!(parse(&m).is_err());
        m.body[0] = BodyPart::Json(json!({}));
        m.metadata.from = String::new();
        assert!(parse(&m).is_err(), "an empty identity cannot register");
    }
}
