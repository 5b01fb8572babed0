//! `Status`: the registered clients a filter selects.

use pantry_shared::commands::status;
use std::sync::Arc;

use pantry_shared::facts::FactFilter;
use pantry_shared::filter::Identities;
use pantry_shared::Message;

use crate::client_registry::{Listed, Query};

use super::{reply, Done, Services};
use crate::dispatch::Refused;

pub async fn run(s: Services, m: Message) -> Done {
    let result: Result<_, Refused> = async {
        let (filter, identities) = (status::parse(&m)?, Identities::of(&m)?);
        let facts = FactFilter::of(&m)?.map(Arc::new);
        match s.registry.send(Query { filter, identities, facts, with_facts: false }).await {
            Ok(clients) => Ok(status::respond(&m, clients.iter().map(Listed::record))),
            Err(e) => Err(Refused::from(format!("registry unavailable: {e}"))),
        }
    }
    .await;
    reply(&m, result)
}
