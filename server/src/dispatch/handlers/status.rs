//! `Status`: the registered clients a filter selects.

use pantry_shared::commands::status;
use pantry_shared::filter::Identities;
use pantry_shared::Message;

use crate::client_registry::{Listed, Query};

use super::{reply, Done, Services};

pub async fn run(s: Services, m: Message) -> Done {
    let asked = status::parse(&m).map_err(|e| e.to_string()).and_then(|filter| Ok((filter, Identities::of(&m)?)));
    let result = match asked {
        Ok((filter, identities)) => match s.registry.send(Query { filter, identities }).await {
            Ok(clients) => Ok(status::respond(&m, clients.iter().map(Listed::record))),
            Err(e) => Err(format!("registry unavailable: {e}")),
        },
        Err(e) => Err(e),
    };
    reply(&m, result)
}
