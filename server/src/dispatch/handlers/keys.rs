//! `client:create`, `client:list` and `client:revoke`: the key store's
//! keys (CURVE).

use pantry_shared::commands::{client_list, client_revoke, create_client};
use pantry_shared::keys::Role;
use pantry_shared::signing::SigningPair;
use pantry_shared::Message;
use slog::warn;

use crate::key_store::{CreateKey, ListKeys, RevokeKey};

use super::{reply, Done, Effect, Reply, Services};
use crate::dispatch::KeyActivity;
use crate::dispatch::Refused;

pub async fn create(s: Services, m: Message) -> Done {
    let result: Result<_, Refused> = async {
        let keys = s.keys()?;
        let (name, role) = create_client::parse(&m).map_err(|e| format!("invalid client:create request: {e}"))?;
        match keys.send(CreateKey { name, role }).await {
            Ok(Ok((server_key, pair, known))) => {
                let name = known.name.as_deref();
                let (signing, trusted) = match (&s.trust, known.role) {
                    (Some(trust), Role::Admin) => {
                        let signing = SigningPair::generate().map_err(|e| format!("cannot make a signing key: {e}"))?;
                        let mut store = trust.lock().map_err(|_| Refused::from("trust store unavailable"))?;
                        store.register(name.unwrap_or_default(), &signing.public)?;
                        (Some(signing), None)
                    }
                    (Some(trust), _) => (None, trust.lock().ok().and_then(|t| t.list().cloned())),
                    (None, _) => (None, None),
                };
                Ok(create_client::respond(&m, &server_key, &pair, name, signing.as_ref(), trusted.as_ref()))
            }
            Ok(Err(e)) => {
                warn!(s.log, "client:create failed"; "error" => %e);
                Err(Refused::from(format!("cannot create a key: {e}")))
            }
            Err(e) => Err(Refused::from(format!("key store unavailable: {e}"))),
        }
    }
    .await;
    reply(&m, result)
}

pub async fn list(s: Services, m: Message, activity: KeyActivity) -> Done {
    let result: Result<_, Refused> = async {
        match s.keys()?.send(ListKeys).await {
            Ok(Ok(known)) => Ok(client_list::respond(&m, &known, |key| activity.of(key))),
            Ok(Err(e)) => Err(Refused::from(format!("cannot read the key store: {e}"))),
            Err(e) => Err(Refused::from(format!("key store unavailable: {e}"))),
        }
    }
    .await;
    reply(&m, result)
}

/// Removes the key, then cuts it off: its messages are dropped from now
/// on, its connections are shut down (by the socket thread, on the key
/// store's update), it leaves the registry and fetches no file.
pub async fn revoke(s: Services, m: Message) -> Done {
    let result: Result<_, Refused> = async {
        let keys = s.keys()?;
        let target = client_revoke::target(&m).ok_or("client:revoke needs a name or key")?.to_owned();
        match keys.send(RevokeKey { name_or_key: target }).await {
            Ok(Ok(known)) => Ok(known),
            Ok(Err(e)) => Err(Refused::from(format!("cannot revoke: {e}"))),
            Err(e) => Err(Refused::from(format!("key store unavailable: {e}"))),
        }
    }
    .await;
    match result {
        Ok(known) => {
            let key = known.public_key.clone();
            let name = known.name.as_deref().unwrap_or("(unbound)");
            warn!(s.log, "key revoked and cut off"; "name" => name, "key" => &key, "by" => &m.metadata.from);
            Done { reply: Reply::Message(client_revoke::respond(&m, name, &key)), effects: vec![Effect::CutOff(key)] }
        }
        Err(reason) => reply(&m, Err(reason)),
    }
}
