//! `client:forget`: a client leaves the registry now.

use pantry_shared::commands::client_forget;
use pantry_shared::Message;
use slog::info;

use crate::client_registry::ForgetIdentity;

use super::{reply, Done, Services};
use crate::dispatch::Refused;

pub async fn run(s: Services, m: Message) -> Done {
    let result: Result<_, Refused> = async {
        let identity = client_forget::identity(&m).ok_or("client:forget needs an identity")?.to_owned();
        match s.registry.send(ForgetIdentity { identity: identity.clone() }).await {
            Ok(Ok(())) => {
                info!(s.log, "client forgotten"; "identity" => &identity, "by" => &m.metadata.from);
                Ok(m.response())
            }
            Ok(Err(e)) => Err(e.into()),
            Err(e) => Err(Refused::from(format!("registry unavailable: {e}"))),
        }
    }
    .await;
    reply(&m, result)
}
