//! `client:create [--name NAME] [--admin]`: the server makes a new key
//! pair, stores its public key as known under NAME with the role `client`
//! (or `admin`), on disk before answering, and returns the credentials. The
//! answer goes back only over the requester's own ROUTER connection, never
//! over PUB: it holds a private key. Only admin keys may ask.

use serde_json::json;

use crate::error::DecodeError;
use crate::keys::{KeyPair, Role};
use crate::message::{BodyPart, Message};
use crate::signing::{SigningPair, TrustList};

use crate::rule::{Rule, RunsOn, Senders};

pub const TYPE: &str = "CreateClient";

pub const RULE: Rule =
    Rule { wire: TYPE, runs_on: RunsOn::Server, senders: Senders::Admins, may_block: false, job: true };

/// Admin: the name and role go in `custom`; no body.
pub fn request(name: Option<&str>, role: Role) -> Message {
    let mut m = Message::new(TYPE);
    m.metadata.requires_response = true;
    if let Some(name) = name {
        m.metadata.custom.insert("name".into(), name.into());
    }
    m.metadata.custom.insert("role".into(), role.as_str().into());
    m
}

/// Server: the requested name (None: the server picks one) and role.
pub fn parse(request: &Message) -> Result<(Option<String>, Role), DecodeError> {
    let custom = &request.metadata.custom;
    let name = custom.get("name").and_then(|v| v.as_str()).map(str::to_owned);
    let role = match custom.get("role").and_then(|v| v.as_str()) {
        None => Role::Client,
        Some(text) => Role::parse(text)
            .ok_or_else(|| DecodeError::Body { message_type: TYPE.into(), reason: format!("unknown role `{text}`") })?,
    };
    Ok((name, role))
}

/// Server: the response carrying `{server_public_key, public_key,
/// private_key}` and the key's `name` when it has one. The caller has
/// already stored `pair.public_key`.
/// An admin's credentials carry its signing key pair; an agent's, the
/// trust list it starts with.
pub fn respond(
    request: &Message,
    server_public_key: &str,
    pair: &KeyPair,
    name: Option<&str>,
    signing: Option<&SigningPair>,
    trusted_admins: Option<&TrustList>,
) -> Message {
    let mut response = request.response();
    let mut credentials = json!({
        "server_public_key": server_public_key,
        "public_key": pair.public_key,
        "private_key": pair.private_key,
    });
    if let Some(name) = name {
        credentials["name"] = name.into();
    }
    if let Some(signing) = signing {
        credentials["signing_public_key"] = signing.public.clone().into();
        credentials["signing_private_key"] = signing.private.clone().into();
    }
    if let Some(list) = trusted_admins {
        credentials["trusted_admins"] = serde_json::to_value(list).unwrap_or_default();
    }
    response.body.push(BodyPart::Json(credentials));
    response
}
