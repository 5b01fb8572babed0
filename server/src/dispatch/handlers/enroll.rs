//! `Enroll`: a key the server does not know (or one accepted while it
//! waited) asks to be enrolled, with a token or onto the pending list.

use std::sync::Arc;

use pantry_shared::commands::enroll::{self, Enrolled};
use pantry_shared::Message;

use crate::key_store::EnrollKey;
use crate::messages::PeerAuth;

use super::{reply, Done, Reply, Services};

pub async fn run(s: Services, auth: Option<Arc<PeerAuth>>, m: Message) -> Done {
    let keys = match s.keys() {
        Ok(keys) => keys,
        Err(e) => return reply(&m, Err(e)),
    };
    let (Some(auth), Ok(asked)) = (auth, enroll::parse(&m)) else {
        return reply(&m, Err("invalid enrollment request".into()));
    };
    let response =
        match keys.send(EnrollKey { key: auth.key.clone(), request: asked, address: auth.address.clone() }).await {
            Ok(Ok(Enrolled::Accepted { name })) => {
                let mut accepted = enroll::respond_accepted(&m, &name);
                s.carry_trust_list(&mut accepted, 0);
                accepted
            }
            Ok(Ok(Enrolled::Waiting)) => enroll::respond_waiting(&m),
            Ok(Err(reason)) => m.refusal(reason.to_string()),
            Err(e) => m.refusal(format!("key store unavailable: {e}")),
        };
    // The agent reads the outcome (refusals included) from this answer.
    Reply::Message(response).into()
}
