//! The command dispatcher: every decoded message from the ROUTER ends here.
//!
//! - Under CURVE, the sender is who its key says (the ZAP handler's user id
//!   and properties), never what `from` claims: a client key claiming
//!   another name is dropped; revoked keys are dropped; commands that need
//!   an admin key are refused for client keys.
//! - An answer from a client to a request the server forwarded goes back to
//!   the requester's ROUTER connection.
//! - Server commands (`RegisterClient`, `Status`, `CreateClient`, key
//!   management, application configs) run here.
//! - Every other type is forwarded: the requester first gets the list of the
//!   clients that will answer, then the request is published to them.
//!
//! Responses to a requester never go over PUB: any subscriber can read any
//! topic.

use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use actix::prelude::*;
use pantry_shared::commands::{
    self, app_config, client_list, client_revoke, create_client, register_client, status, RunsOn,
};
use pantry_shared::keys::Role;
use pantry_shared::{BodyPart, Message};
use serde_json::Value;
use slog::{debug, info, warn, Logger};

use crate::client_registry::{ClientRegistry, Forget, Query, Recipients, Register, Registered};
use crate::connections::{PeerAuth, Presence};
use crate::socket_listener::{CutOff, Hex, Publish, SendToPeer, SocketListener};
use crate::zap_handler::{CreateKey, ListKeys, RevokeKey, ZapHandler};

/// How long the answers to a forwarded request are awaited before the
/// server forgets the request (the requester has its own, shorter timeout).
const PENDING_TTL: Duration = Duration::from_secs(600);
const SWEEP_EVERY: Duration = Duration::from_secs(30);

/// A request forwarded to clients, awaiting their answers.
struct Pending {
    requester: Vec<u8>,
    waiting_for: HashSet<String>,
    since: Instant,
}

pub struct CommandDispatcher {
    listener: Addr<SocketListener>,
    registry: Addr<ClientRegistry>,
    /// Present under CURVE only.
    keys: Option<Addr<ZapHandler>>,
    pending: HashMap<String, Pending>,
    /// Where application configs live.
    root_dir: PathBuf,
    /// Keys revoked since start: their open connections may still deliver
    /// a message or two before the cut-off lands.
    revoked: HashSet<String>,
    /// Key → when it last sent something, and how many connections it has.
    seen: HashMap<String, SystemTime>,
    connected: HashSet<String>,
    log: Logger,
}

impl CommandDispatcher {
    pub fn new(
        listener: Addr<SocketListener>,
        registry: Addr<ClientRegistry>,
        keys: Option<Addr<ZapHandler>>,
        root_dir: PathBuf,
        log: Logger,
    ) -> Self {
        CommandDispatcher {
            listener,
            registry,
            keys,
            pending: HashMap::new(),
            root_dir,
            revoked: HashSet::new(),
            seen: HashMap::new(),
            connected: HashSet::new(),
            log,
        }
    }

    fn reply(&self, peer: Vec<u8>, message: Message) {
        self.listener.do_send(SendToPeer { peer, message });
    }

    /// Routes a client's answer to whoever asked. Returns false if the
    /// message is not an awaited answer.
    fn route_answer(&mut self, incoming: &Incoming) -> bool {
        let message = &incoming.message;
        if message.metadata.requires_response {
            return false;
        }
        let Some(pending) = self.pending.get_mut(message.uuid()) else {
            return false;
        };
        if !pending.waiting_for.remove(&message.metadata.from) {
            return false;
        }
        let mut answer = message.clone();
        answer.metadata.forwarded = true;
        let requester = pending.requester.clone();
        if pending.waiting_for.is_empty() {
            self.pending.remove(message.uuid());
        }
        debug!(self.log, "answer routed to requester";
            "type" => message.message_type(), "from" => &message.metadata.from,
            "to" => &message.metadata.to, "uuid" => message.uuid(), "requester" => Hex(&requester));
        self.reply(requester, answer);
        true
    }

    fn run_on_server(&mut self, incoming: Incoming, ctx: &mut Context<Self>) {
        let Incoming { peer, message, auth } = incoming;
        match message.message_type() {
            register_client::TYPE => match register_client::parse(&message) {
                Ok(client) => {
                    let log = self.log.clone();
                    let identity = message.metadata.from.clone();
                    let key = auth.as_ref().map(|a| a.key.clone());
                    self.registry
                        .send(Register { client, key: key.clone() })
                        .into_actor(self)
                        .map(move |outcome, _, _| match outcome {
                            Ok(Registered::New) => {
                                info!(log, "client registered"; "identity" => identity, "peer" => Hex(&peer))
                            }
                            Ok(Registered::Refused { bound_to }) => warn!(log,
                                "registration refused: the identity is bound to another key";
                                "identity" => identity, "key" => key.unwrap_or_default(), "bound_to" => bound_to),
                            Ok(Registered::Again) | Err(_) => {}
                        })
                        .spawn(ctx);
                }
                Err(e) => debug!(self.log, "registration dropped";
                    "from" => &message.metadata.from, "peer" => Hex(&peer), "error" => %e),
            },
            status::TYPE => match status::parse(&message) {
                Ok(filter) => {
                    self.registry
                        .send(Query { filter })
                        .into_actor(self)
                        .map(move |clients, act, _| {
                            let clients = clients.unwrap_or_default();
                            let response = status::respond(&message, clients.iter().map(|(c, t)| (c, *t)));
                            act.reply(peer, response);
                        })
                        .spawn(ctx);
                }
                Err(e) => self.reply_error(peer, &message, e.to_string()),
            },
            create_client::TYPE | client_list::TYPE | client_revoke::TYPE if self.keys.is_none() => {
                self.reply_error(peer, &message, "key management needs `security: curve` on the server".into())
            }
            create_client::TYPE => self.create_key(peer, message, ctx),
            client_list::TYPE => self.list_keys(peer, message, ctx),
            client_revoke::TYPE => self.revoke_key(peer, message, ctx),
            app_config::SHOW_TYPE => self.reply(peer, app_config::respond_show(&message, &self.root_dir)),
            app_config::EDIT_TYPE => {
                let response = app_config::respond_edit(&message, &self.root_dir);
                match response.error() {
                    None => info!(self.log, "application config saved";
                        "application" => app_config::application(&message).unwrap_or_default(),
                        "from" => &message.metadata.from),
                    Some(e) => warn!(self.log, "application config not saved"; "error" => e),
                }
                self.reply(peer, response);
            }
            _ => {}
        }
    }

    fn create_key(&mut self, peer: Vec<u8>, message: Message, ctx: &mut Context<Self>) {
        let (Some(keys), Ok((name, role))) = (&self.keys, create_client::parse(&message)) else {
            return self.reply_error(peer, &message, "invalid client:create request".into());
        };
        keys.send(CreateKey { name, role })
            .into_actor(self)
            .map(move |created, act, _| match created {
                Ok(Ok((server_key, pair, _))) => act.reply(peer, create_client::respond(&message, &server_key, &pair)),
                Ok(Err(e)) => {
                    warn!(act.log, "client:create failed"; "error" => %e);
                    act.reply_error(peer, &message, format!("cannot create a key: {e}"));
                }
                Err(e) => act.reply_error(peer, &message, format!("key store unavailable: {e}")),
            })
            .spawn(ctx);
    }

    fn list_keys(&mut self, peer: Vec<u8>, message: Message, ctx: &mut Context<Self>) {
        let Some(keys) = &self.keys else { return };
        keys.send(ListKeys)
            .into_actor(self)
            .map(move |listed, act, _| match listed {
                Ok(Ok(known)) => {
                    let response = client_list::respond(&message, &known, |key| {
                        let last = act.seen.get(key).map(|t| humantime::format_rfc3339_seconds(*t).to_string());
                        (last, act.connected.contains(key))
                    });
                    act.reply(peer, response);
                }
                Ok(Err(e)) => act.reply_error(peer, &message, format!("cannot read the key store: {e}")),
                Err(e) => act.reply_error(peer, &message, format!("key store unavailable: {e}")),
            })
            .spawn(ctx);
    }

    /// Removes the key, then cuts it off: its messages are dropped from now
    /// on, its connections are shut down, it leaves the registry.
    fn revoke_key(&mut self, peer: Vec<u8>, message: Message, ctx: &mut Context<Self>) {
        let (Some(keys), Some(target)) = (&self.keys, client_revoke::target(&message)) else {
            return self.reply_error(peer, &message, "client:revoke needs a name or key".into());
        };
        keys.send(RevokeKey { name_or_key: target.to_owned() })
            .into_actor(self)
            .map(move |revoked, act, _| match revoked {
                Ok(Ok(known)) => {
                    act.revoked.insert(known.public_key.clone());
                    act.connected.remove(&known.public_key);
                    act.listener.do_send(CutOff { key: known.public_key.clone() });
                    act.registry.do_send(Forget { key: known.public_key.clone() });
                    warn!(act.log, "key revoked and cut off";
                        "name" => &known.name, "key" => &known.public_key, "by" => &message.metadata.from);
                    act.reply(peer, client_revoke::respond(&message, &known.name, &known.public_key));
                }
                Ok(Err(e)) => act.reply_error(peer, &message, format!("cannot revoke: {e}")),
                Err(e) => act.reply_error(peer, &message, format!("key store unavailable: {e}")),
            })
            .spawn(ctx);
    }

    /// Under CURVE: who sent the message, by key. Drops (returns false) what
    /// a revoked key, a client key claiming another name, or a client key
    /// asking for an admin command sent; rewrites an admin's `from` to its
    /// key's name.
    fn authorize(&mut self, incoming: &mut Incoming) -> bool {
        if self.keys.is_none() {
            return true;
        }
        let m = &incoming.message;
        let Some(auth) = incoming.auth.clone() else {
            warn!(self.log, "message without an authenticated key dropped"; "type" => m.message_type(),
                "peer" => Hex(&incoming.peer));
            return false;
        };
        if self.revoked.contains(&auth.key) {
            debug!(self.log, "message from a revoked key dropped";
                "type" => m.message_type(), "name" => &auth.name, "key" => &auth.key);
            return false;
        }
        // Per message: no allocation once the key has been seen.
        match self.seen.get_mut(&auth.key) {
            Some(seen) => *seen = SystemTime::now(),
            None => {
                self.seen.insert(auth.key.clone(), SystemTime::now());
            }
        }
        // A request (not an answer, which keeps its request's type) that
        // needs an admin key: refused with an answer, whatever `from` says.
        if auth.role == Role::Client && m.metadata.requires_response && commands::needs_admin(m.message_type()) {
            warn!(self.log, "unauthorized command refused: it needs an admin key";
                "type" => m.message_type(), "name" => &auth.name, "key" => &auth.key, "uuid" => m.uuid());
            let error = format!("not authorized: {} needs an admin key", m.message_type());
            self.reply_error(incoming.peer.clone(), m, error);
            return false;
        }
        if m.metadata.from != auth.name {
            if auth.role == Role::Client {
                warn!(self.log, "message with a spoofed sender dropped";
                    "claimed" => &m.metadata.from, "name" => &auth.name, "key" => &auth.key,
                    "type" => m.message_type(), "uuid" => m.uuid());
                return false;
            }
            // Admins do not register as clients: their name is their key's.
            incoming.message.metadata.from = auth.name.clone();
        }
        true
    }

    fn reply_error(&self, peer: Vec<u8>, request: &Message, error: String) {
        if !request.metadata.requires_response {
            return;
        }
        let mut response = request.response();
        response.set_error(error);
        self.reply(peer, response);
    }

    /// Tells the requester who will answer, then publishes the request.
    fn forward(&mut self, incoming: Incoming, ctx: &mut Context<Self>) {
        let Incoming { peer, message, .. } = incoming;
        self.registry
            .send(Recipients { stream: message.stream.clone() })
            .into_actor(self)
            .map(move |recipients, act, _| {
                let recipients = recipients.unwrap_or_default();
                debug!(act.log, "request forwarded";
                    "type" => message.message_type(), "from" => &message.metadata.from,
                    "to" => &message.stream, "uuid" => message.uuid(), "clients" => recipients.len());
                let mut list = message.response();
                list.metadata.custom.insert("client_response_list".into(), Value::Bool(true));
                list.body = recipients.iter().map(|id| BodyPart::Text(id.clone())).collect();
                act.reply(peer.clone(), list);
                if !recipients.is_empty() {
                    let waiting_for = recipients.into_iter().collect();
                    let pending = Pending { requester: peer, waiting_for, since: Instant::now() };
                    act.pending.insert(message.uuid().to_owned(), pending);
                }
                let mut out = message;
                out.metadata.forwarded = true;
                act.listener.do_send(Publish { message: out });
            })
            .spawn(ctx);
    }
}

impl Actor for CommandDispatcher {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        ctx.run_interval(SWEEP_EVERY, |act, _| {
            let before = act.pending.len();
            act.pending.retain(|_, p| p.since.elapsed() < PENDING_TTL);
            let expired = before - act.pending.len();
            if expired > 0 {
                debug!(act.log, "forgot forwarded requests whose clients never answered"; "count" => expired);
            }
        });
    }
}

/// A decoded message from a peer of the ROUTER socket.
#[derive(Message)]
#[rtype(result = "()")]
pub struct Incoming {
    /// ROUTER routing id of the connection it came from.
    pub peer: Vec<u8>,
    /// Who sent it, by key (CURVE only).
    pub auth: Option<Arc<PeerAuth>>,
    pub message: Message,
}

/// A key's first connection opened or its last one closed.
#[derive(Message)]
#[rtype(result = "()")]
pub struct PeerPresence(pub Presence);

impl Handler<PeerPresence> for CommandDispatcher {
    type Result = ();

    fn handle(&mut self, msg: PeerPresence, _: &mut Context<Self>) {
        match msg.0 {
            Presence::Connected(key) => {
                self.seen.insert(key.clone(), SystemTime::now());
                self.connected.insert(key);
            }
            Presence::Disconnected(key) => {
                self.connected.remove(&key);
            }
        }
    }
}

impl Handler<Incoming> for CommandDispatcher {
    type Result = ();

    fn handle(&mut self, mut incoming: Incoming, ctx: &mut Context<Self>) {
        let m = &incoming.message;
        debug!(self.log, "message received";
            "type" => m.message_type(), "from" => &m.metadata.from, "to" => &m.stream, "uuid" => m.uuid(),
            "peer" => Hex(&incoming.peer), "key" => incoming.auth.as_ref().map(|a| a.key.as_str()).unwrap_or("-"));
        if !self.authorize(&mut incoming) {
            return;
        }
        let m = &incoming.message;
        if self.route_answer(&incoming) {
            return;
        }
        match commands::runs_on(m.message_type()) {
            RunsOn::Server => self.run_on_server(incoming, ctx),
            RunsOn::Clients if m.metadata.requires_response => self.forward(incoming, ctx),
            // Not awaited: a late answer, a duplicate, or an answer to nobody.
            RunsOn::Clients => debug!(self.log, "answer to no pending request dropped";
                "type" => m.message_type(), "from" => &m.metadata.from, "uuid" => m.uuid()),
        }
    }
}
