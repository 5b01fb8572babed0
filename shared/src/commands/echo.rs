//! `echo MESSAGE`: every matching client answers with MESSAGE. The simplest
//! round trip through the server to clients and back.
//!
//! admin → server (ROUTER) → PUB to the target stream → each client →
//! server (ROUTER) → the admin's connection.

use crate::message::{BodyPart, Message};

use crate::rule::{Rule, RunsOn, Senders};

pub const TYPE: &str = "Echo";

pub const RULE: Rule =
    Rule { wire: TYPE, runs_on: RunsOn::Clients, senders: Senders::Admins, may_block: false, job: true };

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
