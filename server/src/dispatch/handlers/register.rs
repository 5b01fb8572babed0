//! `RegisterClient`: an agent checks in. An unbound key is bound to the
//! identity first (in the key store, on disk, before the registration is
//! accepted); then the registry decides. Under CURVE the client's streams
//! become its PUB grants. An agent that asked for a response hears the
//! outcome (and that this server grants exact topics).

use std::sync::Arc;
use std::time::Duration;

use pantry_shared::commands::{facts, register_client, trust};
use pantry_shared::Message;
use slog::{info, warn};

use crate::client_registry::{Register, Registered};
use crate::key_store::BindKey;
use crate::messages::{Grant, Hex, PeerAuth};
use crate::metrics::Refusal;

use super::{Done, Effect, Reply, Services};

pub async fn run(s: Services, auth: Option<Arc<PeerAuth>>, peer: Vec<u8>, m: Message) -> Done {
    let key = auth.as_ref().map(|a| a.key.as_str()).unwrap_or("-");
    let address = auth.as_ref().map(|a| a.address.as_str()).unwrap_or("-");
    let (client, heartbeat) = match register_client::parse(&m) {
        Ok(r) => (r.client, r.heartbeat_interval.map(Duration::from_secs)),
        Err(e) => {
            info!(s.log, "registration refused: {}", e; "identity" => &m.metadata.from, "key" => key, "address" => address);
            return Reply::Refused(m.refusal(e.to_string())).into();
        }
    };
    let identity = client.identity.clone().unwrap_or_default();
    // Its key's name already (credentials, a token, an accept). Not a name
    // this registration binds: an unbound key could then take any
    // application's name and push its clients out.
    let owns_identity = auth.as_ref().is_some_and(|a| a.name.as_deref() == Some(identity.as_str()));
    let binds = matches!((&s.keys, &auth), (Some(_), Some(a)) if a.name.is_none());
    if let (true, Some(keys), Some(auth)) = (binds, &s.keys, &auth) {
        let bound = keys.send(BindKey { key: auth.key.clone(), identity: identity.clone() }).await;
        let failed = match bound {
            Ok(Ok(_)) => None,
            Ok(Err(e)) => Some(format!("cannot bind this key to `{identity}`: {e}")),
            Err(e) => Some(format!("key store unavailable: {e}")),
        };
        if let Some(reason) = failed {
            return refused(&s, &m, key, address, reason);
        }
    }
    let register = Register {
        client: client.clone(),
        key: auth.as_ref().map(|a| a.key.clone()),
        peer: peer.clone(),
        heartbeat,
        owns_identity,
        facts_seen: facts::freshness(&m).and_then(|(hash, gathered, _)| {
            humantime::parse_rfc3339_weak(&gathered).ok().map(|at| (hash, at.min(std::time::SystemTime::now())))
        }),
        direct: register_client::wants_requests_on_dealer(&m),
    };
    let registered = s.registry.send(register).await.unwrap_or(Registered::Refused("registry unavailable".into()));
    let mut effects = Vec::new();
    match registered {
        Registered::New => {
            if binds {
                info!(s.log, "key bound to the identity of its first registration";
                    "identity" => &m.metadata.from, "key" => key, "address" => address);
            }
            info!(s.log, "client registered"; "identity" => &m.metadata.from, "key" => key,
                "streams" => client.streams().join(" "), "peer" => Hex(&peer));
            if let Some(auth) = &auth {
                effects.push(Effect::Grant(Grant::of(&auth.key, &client)));
            }
        }
        Registered::Again => {}
        Registered::Refused(reason) => return refused(&s, &m, key, address, reason),
    }
    let reply = if m.metadata.requires_response {
        let mut answer = register_client::respond(&m);
        // An agent with an older list (or none) gets the current one.
        s.carry_trust_list(&mut answer, trust::version_of(&m));
        Reply::Message(answer)
    } else {
        Reply::Nothing
    };
    Done { reply, effects }
}

fn refused(s: &Services, m: &Message, key: &str, address: &str, reason: String) -> Done {
    s.metrics.refused(Refusal::RegistrationRefused);
    warn!(s.log, "registration refused: {}", reason; "identity" => &m.metadata.from, "key" => key, "address" => address);
    Reply::Refused(m.refusal(reason)).into()
}
