//! `RegisterSigningKey`, `ShowTrustList`, `SetTrustList`: the admins'
//! signing keys and the list of them the agents trust. The server keeps
//! public halves and the latest signed list; a new list goes to every agent
//! at once (and to the others when they register).

use std::sync::Arc;

use pantry_shared::commands::trust::{self, Shown};
use pantry_shared::Message;
use slog::{info, warn};

use crate::messages::PeerAuth;

use super::{reply, Done, Effect, Reply, Services};
use crate::dispatch::Refused;

/// The admin's name, or why signing keys need CURVE.
fn admin_name(auth: &Option<Arc<PeerAuth>>) -> Result<String, Refused> {
    auth.as_ref()
        .and_then(|a| a.name.clone())
        .ok_or_else(|| Refused::from("signing keys need `security: curve` and a named admin key"))
}

pub async fn register(s: Services, auth: Option<Arc<PeerAuth>>, m: Message) -> Done {
    let result: Result<_, Refused> = (|| {
        let name = admin_name(&auth)?;
        let key = trust::parse_register(&m)?;
        if key.len() != 64 || !key.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(Refused::from("signing_key: 64 hex digits"));
        }
        s.trust()?.lock().map_err(|_| Refused::from("trust store unavailable"))?.register(&name, &key)?;
        info!(s.log, "admin signing key registered"; "name" => &name, "signing_key" => &key);
        Ok(m.response())
    })();
    reply(&m, result)
}

pub async fn show(s: Services, m: Message) -> Done {
    let result: Result<_, Refused> = (|| {
        let mut store = s.trust()?.lock().map_err(|_| Refused::from("trust store unavailable"))?;
        let admins = store.admins()?;
        Ok(trust::respond_show(&m, &Shown { list: store.list().cloned(), admins }))
    })();
    reply(&m, result)
}

pub async fn set(s: Services, auth: Option<Arc<PeerAuth>>, m: Message) -> Done {
    let outcome: Result<_, Refused> = (|| {
        let name = admin_name(&auth)?;
        let list = trust::parse_list(&m)?;
        let mut store = s.trust()?.lock().map_err(|_| Refused::from("trust store unavailable"))?;
        if let Err(e) = store.set(list.clone(), &name) {
            warn!(s.log, "trust list refused: {}", e; "name" => &name, "version" => list.version);
            return Err(Refused::from(format!("trust list refused: {e}")));
        }
        info!(s.log, "trust list replaced: sent to every agent"; "name" => &name, "version" => list.version,
            "admins" => list.admins.iter().map(|a| a.name.as_str()).collect::<Vec<_>>().join(" "));
        Ok(list)
    })();
    match outcome {
        Ok(list) => Done { reply: Reply::Message(m.response()), effects: vec![Effect::Publish(trust::publish(&list))] },
        Err(e) => reply(&m, Err::<Message, _>(e)),
    }
}
