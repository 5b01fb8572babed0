//! `RegisterClient`: an agent tells the server who it is (application,
//! environment, roles) at start and every `heartbeat_interval` seconds. No
//! response. The server's registry keeps the latest and the check-in time.

use serde_json::json;

use crate::error::DecodeError;
use crate::filter::ClientFilter;
use crate::message::{BodyPart, Message};

pub const TYPE: &str = "RegisterClient";

/// Agent: the body is `{application, environment, roles}`; the identity is
/// the message's `from`.
pub fn request(me: &ClientFilter) -> Message {
    let mut m = Message::new(TYPE);
    m.metadata.from = me.identity.clone().unwrap_or_default();
    m.body.push(BodyPart::Json(json!({
        "application": me.application,
        "environment": me.environment,
        "roles": me.roles,
    })));
    m
}

/// Server: who registered. The identity comes from `from`.
pub fn parse(request: &Message) -> Result<ClientFilter, DecodeError> {
    let bad = |reason: String| DecodeError::Body { message_type: TYPE.into(), reason };
    let body = request.body.first().and_then(BodyPart::as_json).ok_or_else(|| bad("no JSON body part".into()))?;
    let mut filter: ClientFilter = serde_json::from_value(body.clone()).map_err(|e| bad(e.to_string()))?;
    filter.identity = Some(request.metadata.from.clone());
    filter.validate().map_err(bad)?;
    Ok(filter)
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
        let m = Message::from_frames(&request(&me).to_frames()).unwrap();
        assert_eq!(parse(&m).unwrap(), me);
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
