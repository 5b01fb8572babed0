//! `client:pending`, `client:accept` and `client:reject`: keys that tried
//! to connect and are not known (CURVE).

use pantry_shared::commands::client_pending;
use pantry_shared::Message;

use crate::key_store::{AcceptPending, ListPending, RejectPending};

use super::{reply, Done, Effect, Reply, Services};
use crate::dispatch::Refused;

pub async fn list(s: Services, m: Message) -> Done {
    let result: Result<_, Refused> = async {
        let listed = s.keys()?.send(ListPending).await.unwrap_or_default();
        Ok(client_pending::respond_list(&m, &listed))
    }
    .await;
    reply(&m, result)
}

pub async fn accept(s: Services, m: Message) -> Done {
    let result: Result<_, Refused> = async {
        let keys = s.keys()?;
        let target = client_pending::target(&m).ok_or("client:accept needs a key or an identity")?.to_owned();
        let name = client_pending::name(&m).map(str::to_owned);
        match keys.send(AcceptPending { target, name }).await {
            Ok(Ok(known)) => Ok(known),
            Ok(Err(e)) => Err(e.into()),
            Err(e) => Err(Refused::from(format!("key store unavailable: {e}"))),
        }
    }
    .await;
    match result {
        Ok(known) => {
            let response = client_pending::respond_done(&m, &known.public_key, known.name.as_deref());
            // A key revoked a moment ago and accepted again speaks again.
            Done { reply: Reply::Message(response), effects: vec![Effect::Accepted(known.public_key)] }
        }
        Err(reason) => reply(&m, Err(reason)),
    }
}

pub async fn reject(s: Services, m: Message) -> Done {
    let result: Result<_, Refused> = async {
        let keys = s.keys()?;
        let target = client_pending::target(&m).ok_or("client:reject needs a key or an identity")?.to_owned();
        match keys.send(RejectPending { target }).await {
            Ok(Ok(gone)) => Ok(client_pending::respond_done(&m, &gone.public_key, None)),
            Ok(Err(e)) => Err(e.into()),
            Err(e) => Err(Refused::from(format!("key store unavailable: {e}"))),
        }
    }
    .await;
    reply(&m, result)
}
