//! `echo MESSAGE`: every matching client answers with MESSAGE. The simplest
//! round trip through the server to clients and back.
//!
//! admin → server (ROUTER) → PUB to the target stream → each client →
//! server (ROUTER) → the admin's connection.

use crate::message::{BodyPart, Message};

pub const TYPE: &str = "Echo";

/// Admin: the request carries the text as its one body part.
pub fn request(text: &str) -> Message {
    let mut m = Message::new(TYPE);
    m.metadata.requires_response = true;
    m.body.push(BodyPart::from(text));
    m
}

/// Client: answer with the same body.
pub fn handle(request: &Message) -> Message {
    let mut response = request.response();
    response.body = request.body.clone();
    response
}

/// Admin: one line per answer, `host-1: MESSAGE`.
pub fn format_answer(response: &Message) -> String {
    let text = response.body.first().and_then(BodyPart::as_text).unwrap_or_default();
    format!("{}: {}", response.metadata.from, text)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_answer_is_the_request_text() {
        let mut req = request("hi there");
        req.metadata.from = "admin".into();
        let mut resp = handle(&req);
        resp.metadata.from = "host-1".into();
        assert_eq!(resp.uuid(), req.uuid());
        assert_eq!(resp.metadata.to, "admin");
        assert_eq!(format_answer(&resp), "host-1: hi there");
    }
}
