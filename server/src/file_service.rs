//! The file service: relays uploads between the admin that offers a file
//! and the agents that fetch it, on `file_service_port` (ROUTER, same
//! security as the other sockets).
//!
//! It holds no file data: each agent asks for chunks (`FETCH`, a few in
//! flight), the request goes to the sender with the agent's routing id, and
//! the sender's `CHUNK` comes back to that agent. See
//! `pantry_shared::commands::upload` for the whole story.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use actix::prelude::*;
use pantry_shared::commands::upload::Relay;
use pantry_shared::keys::Role;
use slog::{debug, warn, Logger};

use crate::connections::PeerAuth;

use crate::socket_listener::{Hex, SendFileFrames, SocketListener};

/// A transfer nobody touched for this long is forgotten.
const IDLE_TTL: Duration = Duration::from_secs(600);

struct Transfer {
    sender: Vec<u8>,
    last_used: Instant,
}

pub struct FileService {
    listener: Addr<SocketListener>,
    curve: bool,
    transfers: HashMap<Vec<u8>, Transfer>,
    log: Logger,
}

impl FileService {
    pub fn new(listener: Addr<SocketListener>, curve: bool, log: Logger) -> Self {
        FileService { listener, curve, transfers: HashMap::new(), log }
    }

    fn send(&self, frames: Vec<Vec<u8>>) {
        self.listener.do_send(SendFileFrames { frames });
    }
}

impl Actor for FileService {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        ctx.run_interval(Duration::from_secs(60), |act, _| {
            act.transfers.retain(|_, t| t.last_used.elapsed() < IDLE_TTL);
        });
    }
}

/// Frames from a peer of the file service socket.
#[derive(Message)]
#[rtype(result = "()")]
pub struct FileFrames {
    pub peer: Vec<u8>,
    /// Who sent them, by key (CURVE only).
    pub auth: Option<Arc<PeerAuth>>,
    pub frames: Vec<Vec<u8>>,
}

impl Handler<FileFrames> for FileService {
    type Result = ();

    fn handle(&mut self, msg: FileFrames, _: &mut Context<Self>) {
        let FileFrames { peer, auth, frames } = msg;
        let Some(relay) = Relay::parse(frames) else {
            debug!(self.log, "malformed file service message dropped"; "peer" => Hex(&peer));
            return;
        };
        match relay {
            // Under CURVE only an admin key may offer files to clients.
            Relay::Offer { .. } if self.curve && auth.as_ref().is_none_or(|a| a.role != Role::Admin) => {
                warn!(self.log, "upload offer refused: it needs an admin key"; "peer" => Hex(&peer),
                    "key" => auth.as_ref().map(|a| a.key.as_str()).unwrap_or("-"));
            }
            Relay::Offer { transfer_id } => {
                debug!(self.log, "upload offered"; "transfer" => String::from_utf8_lossy(&transfer_id).as_ref(), "peer" => Hex(&peer));
                self.transfers
                    .insert(transfer_id.clone(), Transfer { sender: peer.clone(), last_used: Instant::now() });
                self.send(Relay::offered(peer, transfer_id));
            }
            Relay::Done { transfer_id } => {
                if self.transfers.get(&transfer_id).is_some_and(|t| t.sender == peer) {
                    self.transfers.remove(&transfer_id);
                }
            }
            Relay::Fetch { transfer_id, offset, len } => match self.transfers.get_mut(&transfer_id) {
                Some(t) => {
                    t.last_used = Instant::now();
                    let frames = Relay::fetch_for_sender(t.sender.clone(), transfer_id, offset, len, peer);
                    self.send(frames);
                }
                None => self.send(Relay::error_for(peer, transfer_id, "unknown transfer (the sender is gone)")),
            },
            Relay::Chunk { transfer_id, offset, receiver, data } => match self.transfers.get_mut(&transfer_id) {
                // Only the sender of a transfer may answer for it.
                Some(t) if t.sender == peer => {
                    t.last_used = Instant::now();
                    self.send(Relay::chunk_for_receiver(receiver, transfer_id, offset, data));
                }
                _ => debug!(self.log, "chunk for an unknown transfer dropped"; "peer" => Hex(&peer)),
            },
        }
    }
}
