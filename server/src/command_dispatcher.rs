//! The command dispatcher: every decoded message from the ROUTER ends here.
//!
//! - An answer from a client to a request the server forwarded goes back to
//!   the requester's ROUTER connection.
//! - Server commands (`RegisterClient`, `Status`, `CreateClient`) run here.
//! - Every other type is forwarded: the requester first gets the list of the
//!   clients that will answer, then the request is published to them.
//!
//! Responses to a requester never go over PUB: any subscriber can read any
//! topic.

use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use actix::prelude::*;
use pantry_shared::commands::{self, app_config, create_client, register_client, status, RunsOn};
use pantry_shared::{BodyPart, Message};
use serde_json::Value;
use slog::{debug, info, warn, Logger};

use crate::client_registry::{ClientRegistry, Query, Recipients, Register};
use crate::socket_listener::{Hex, Publish, SendToPeer, SocketListener};
use crate::zap_handler::{CreateClientKey, ZapHandler};

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
        CommandDispatcher { listener, registry, keys, pending: HashMap::new(), root_dir, log }
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
        let Incoming { peer, message, .. } = incoming;
        match message.message_type() {
            register_client::TYPE => match register_client::parse(&message) {
                Ok(client) => {
                    let log = self.log.clone();
                    let identity = message.metadata.from.clone();
                    self.registry
                        .send(Register { client })
                        .into_actor(self)
                        .map(move |first, _, _| {
                            if first.unwrap_or(false) {
                                info!(log, "client registered"; "identity" => identity, "peer" => Hex(&peer));
                            }
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
            create_client::TYPE => match &self.keys {
                None => self.reply_error(peer, &message, "client:create needs `security: curve` on the server".into()),
                Some(keys) => {
                    keys.send(CreateClientKey)
                        .into_actor(self)
                        .map(move |created, act, _| match created {
                            Ok(Ok((server_key, pair))) => {
                                act.reply(peer, create_client::respond(&message, &server_key, &pair));
                            }
                            Ok(Err(e)) => {
                                warn!(act.log, "client:create failed"; "error" => %e);
                                act.reply_error(peer, &message, format!("cannot create a client key: {e}"));
                            }
                            Err(e) => act.reply_error(peer, &message, format!("key store unavailable: {e}")),
                        })
                        .spawn(ctx);
                }
            },
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
    /// The Z85 public key of the sender (CURVE only).
    pub user_id: Option<String>,
    pub message: Message,
}

impl Handler<Incoming> for CommandDispatcher {
    type Result = ();

    fn handle(&mut self, incoming: Incoming, ctx: &mut Context<Self>) {
        let m = &incoming.message;
        debug!(self.log, "message received";
            "type" => m.message_type(), "from" => &m.metadata.from, "to" => &m.stream,
            "uuid" => m.uuid(), "peer" => Hex(&incoming.peer), "key" => incoming.user_id.as_deref().unwrap_or("-"));
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
