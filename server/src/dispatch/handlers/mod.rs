//! The server commands, one file each, and the one place that says what
//! becomes of every kind of request: [`start`] matches [`Kind`] with no
//! wildcard, so a kind added to the registry without a handler (or a
//! decision to forward it) does not compile.
//!
//! A handler gets the request and the [`Services`] it may call, and
//! returns what the requester hears ([`Reply`]) and what the dispatcher
//! must change ([`Effect`]); it never touches the dispatcher's state.

mod app_config;
mod enroll;
mod facts;
mod forget;
mod jobs;
mod keys;
mod pending;
mod register;
mod status;
mod tokens;
mod trust;

use std::future::Future;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::{Arc, Mutex};

use actix::Addr;
use pantry_shared::commands::Kind;
use pantry_shared::Message;
use slog::Logger;

use crate::client_registry::ClientRegistry;
use crate::jobs::JobReader;
use crate::key_store::KeyStore;
use crate::messages::Grant;
use crate::metrics::Metrics;
use crate::trust::TrustStore;

use super::{KeyActivity, Refused, Request};

/// What server commands may call.
#[derive(Clone)]
pub struct Services {
    pub registry: Addr<ClientRegistry>,
    /// Present under CURVE only.
    pub keys: Option<Addr<KeyStore>>,
    pub job_reader: Addr<JobReader>,
    /// Where application configs live.
    pub root_dir: PathBuf,
    pub metrics: Arc<Metrics>,
    /// The admins' signing keys and the agents' trust list (CURVE only).
    pub trust: Option<Arc<Mutex<TrustStore>>>,
    pub log: Logger,
}

impl Services {
    /// Puts the current trust list in `answer` when it is newer than
    /// `version` (the one the agent has).
    fn carry_trust_list(&self, answer: &mut Message, version: u64) {
        // Every registration asks: the list is copied only for an agent
        // whose list is older.
        let Some(store) = self.trust.as_ref().and_then(|t| t.lock().ok()) else { return };
        if let Some(list) = store.list().filter(|l| l.version > version) {
            let value = serde_json::to_value(list).unwrap_or_default();
            answer.metadata.custom.insert(pantry_shared::commands::trust::LIST_FIELD.into(), value);
        }
    }

    /// The trust store, or why signing needs CURVE.
    fn trust(&self) -> Result<&Arc<Mutex<TrustStore>>, Refused> {
        self.trust.as_ref().ok_or_else(|| "signed requests need `security: curve` on the server".into())
    }

    /// The key store, or why key commands cannot run.
    fn keys(&self) -> Result<&Addr<KeyStore>, Refused> {
        self.keys.as_ref().ok_or_else(|| "key management needs `security: curve` on the server".into())
    }
}

/// What the requester hears.
pub enum Reply {
    Message(Message),
    /// Why it was not carried out (sent only if it asked for a response).
    Refused(Message),
    /// Nothing (a registration that asked for no answer).
    Nothing,
}

/// What the dispatcher changes once a command is done.
pub enum Effect {
    /// A key was revoked: cut it off.
    CutOff(String),
    /// A key became known again (accepted): it speaks again.
    Accepted(String),
    /// A client registered streams: its PUB grants.
    Grant(Grant),
    /// A message for every agent (a new trust list).
    Publish(Message),
}

pub struct Done {
    pub reply: Reply,
    pub effects: Vec<Effect>,
}

impl From<Reply> for Done {
    fn from(reply: Reply) -> Done {
        Done { reply, effects: Vec::new() }
    }
}

pub type Work = Pin<Box<dyn Future<Output = Done>>>;

/// Who waits for a server command's reply.
pub struct Asker {
    pub peer: Vec<u8>,
    pub requires_response: bool,
}

/// What becomes of a request.
pub enum Started {
    /// A command for clients: the forwarder's.
    Forward(Box<Request>),
    /// `job pause|resume|abort|cancel`: the dispatcher's, whose jobs run.
    Control(Box<Request>),
    /// Another server of the cluster cancelling a job on agents here.
    Cancel(Box<Request>),
    /// A server command, running.
    Server(Asker, Work),
}

/// Starts the server command a request is, or hands it back to forward.
/// `activity` is read by `client:list` only.
pub fn start(kind: Kind, s: &Services, request: Request, activity: impl FnOnce() -> KeyActivity) -> Started {
    let Request { peer, auth, message: m } = request;
    let asker = Asker { peer: peer.clone(), requires_response: m.metadata.requires_response };
    let s = s.clone();
    let work: Work = match kind {
        Kind::Echo | Kind::Exec | Kind::Upload => {
            return Started::Forward(Box::new(Request { peer, auth, message: m }))
        }
        Kind::JobControl => return Started::Control(Box::new(Request { peer, auth, message: m })),
        // The server's own message to agents: another server's is relayed
        // to the agents here, an admin's refused.
        Kind::Cancel => return Started::Cancel(Box::new(Request { peer, auth, message: m })),
        Kind::RegisterClient => Box::pin(register::run(s, auth, peer, m)),
        Kind::Facts => Box::pin(facts::report(s, auth, m)),
        Kind::RegisterSigningKey => Box::pin(trust::register(s, auth, m)),
        Kind::ShowTrustList => Box::pin(trust::show(s, m)),
        Kind::SetTrustList => Box::pin(trust::set(s, auth, m)),
        // The server's own message to agents.
        Kind::TrustList => Box::pin(std::future::ready(Done::from(Reply::Refused(
            m.refusal("TrustList is sent by the server; use SetTrustList"),
        )))),
        Kind::ListFacts => Box::pin(facts::list(s, m)),
        Kind::Status => Box::pin(status::run(s, m)),
        Kind::ShowApplication => Box::pin(app_config::show(s, m)),
        Kind::EditApplication => Box::pin(app_config::edit(s, m)),
        Kind::ListJobs => Box::pin(jobs::list(s, m)),
        Kind::ShowJob => Box::pin(jobs::show(s, m)),
        Kind::ForgetClient => Box::pin(forget::run(s, m)),
        Kind::CreateClient => Box::pin(keys::create(s, m)),
        Kind::ListClients => Box::pin(keys::list(s, m, activity())),
        Kind::RevokeClient => Box::pin(keys::revoke(s, m)),
        Kind::CreateToken => Box::pin(tokens::create(s, m)),
        Kind::RevokeToken => Box::pin(tokens::revoke(s, m)),
        Kind::ListTokens => Box::pin(tokens::list(s, m)),
        Kind::Enroll => Box::pin(enroll::run(s, auth, m)),
        Kind::ListPendingKeys => Box::pin(pending::list(s, m)),
        Kind::AcceptPendingKey => Box::pin(pending::accept(s, m)),
        Kind::RejectPendingKey => Box::pin(pending::reject(s, m)),
    };
    Started::Server(asker, work)
}

/// The reply to `request`: `result`'s message, or a refusal with its
/// reason.
fn reply(request: &Message, result: Result<Message, Refused>) -> Done {
    match result {
        Ok(message) => Reply::Message(message).into(),
        Err(reason) => Reply::Refused(request.refusal(reason.to_string())).into(),
    }
}

#[cfg(test)]
mod tests {
    use pantry_shared::commands::{Kind, RunsOn};

    /// The registry's `runs_on` and the match above agree (the match is
    /// what runs; this keeps the rule honest).
    #[test]
    fn forwarded_kinds_are_the_client_kinds() {
        let forwarded = [Kind::Echo, Kind::Exec, Kind::Upload];
        // Cancel and TrustList are for clients, but only the server sends them.
        for &kind in Kind::ALL.iter().filter(|k| !matches!(k, Kind::Cancel | Kind::TrustList)) {
            assert_eq!(kind.runs_on() == RunsOn::Clients, forwarded.contains(&kind), "{kind:?}");
        }
    }
}
