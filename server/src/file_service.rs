//! The file service: relays uploads between the admin that offers a file
//! and the agents that fetch it, on `file_service_port` (ROUTER, same
//! security as the other sockets).
//!
//! It holds no file data: each agent asks for chunks (`FETCH`, a few in
//! flight), the request goes to the sender with the agent's routing id, and
//! the sender's `CHUNK` comes back to that agent. See
//! `pantry_shared::commands::upload` for the whole story.
//!
//! Who may do what (CURVE):
//! - only an admin key offers; the transfer id is the server's, random and
//!   unguessable (128 bits), and an offer nobody uses soon expires;
//! - the `Upload` request naming a transfer must come from the key that
//!   offered it; the dispatcher then tells the service which client keys
//!   the request went to;
//! - only those keys fetch, and only while not revoked; only the sender
//!   answers with chunks.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use actix::prelude::*;
use pantry_shared::commands::upload::Relay;
use slog::{debug, warn, Logger};

use crate::messages::{FileFrames, Hex, PeerAuth};
use crate::metrics::Metrics;
use crate::outbox::{Outbound, Outbox};

/// An offer no `Upload` request names within this long is forgotten.
const OFFER_TTL: Duration = Duration::from_secs(60);
/// A transfer nobody touched for this long is forgotten.
const IDLE_TTL: Duration = Duration::from_secs(600);

struct Transfer {
    sender: Vec<u8>,
    /// The offering key (CURVE).
    sender_key: Option<String>,
    /// Client keys allowed to fetch, once an `Upload` request named it.
    /// Under null security, anyone: `Some(empty)`.
    recipients: Option<HashSet<String>>,
    last_used: Instant,
}

impl Transfer {
    fn expired(&self) -> bool {
        let ttl = if self.recipients.is_some() { IDLE_TTL } else { OFFER_TTL };
        self.last_used.elapsed() >= ttl
    }
}

pub struct FileService {
    outbox: Outbox,
    curve: bool,
    transfers: HashMap<Vec<u8>, Transfer>,
    metrics: Arc<Metrics>,
    log: Logger,
}

impl FileService {
    pub fn new(outbox: Outbox, curve: bool, metrics: Arc<Metrics>, log: Logger) -> Self {
        FileService { outbox, curve, transfers: HashMap::new(), metrics, log }
    }

    fn send(&self, frames: Vec<Vec<u8>>) {
        self.outbox.send(Outbound::ToFilePeer(frames));
    }

    fn may_fetch(&self, transfer: &Transfer, auth: Option<&PeerAuth>) -> bool {
        match &transfer.recipients {
            None => false,
            Some(_) if !self.curve => true,
            Some(keys) => auth.is_some_and(|a| keys.contains(&a.key)),
        }
    }
}

impl Actor for FileService {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        ctx.run_interval(Duration::from_secs(10), |act, _| {
            act.transfers.retain(|_, t| !t.expired());
        });
    }
}

impl Handler<FileFrames> for FileService {
    type Result = ();

    fn handle(&mut self, msg: FileFrames, _: &mut Context<Self>) {
        let FileFrames { peer, auth, frames } = msg;
        let Some(relay) = Relay::parse(frames) else {
            debug!(self.log, "malformed file service message dropped"; "peer" => Hex(&peer));
            return;
        };
        let key = || auth.as_ref().map(|a| a.key.as_str()).unwrap_or("-");
        match relay {
            Relay::Offer if self.curve && !auth.as_ref().is_some_and(|a| a.is_admin()) => {
                warn!(self.log, "upload offer refused: it needs an admin key"; "peer" => Hex(&peer), "key" => key(),
                    "name" => auth.as_ref().map(|a| a.name_or_dash()).unwrap_or("-"));
                self.send(Relay::error_for(peer, Vec::new(), "not authorized: upload needs an admin key"));
            }
            Relay::Offer => {
                let transfer_id = uuid::Uuid::new_v4().simple().to_string().into_bytes();
                debug!(self.log, "upload offered";
                    "transfer" => String::from_utf8_lossy(&transfer_id).as_ref(), "peer" => Hex(&peer), "key" => key());
                let transfer = Transfer {
                    sender: peer.clone(),
                    sender_key: auth.as_ref().map(|a| a.key.clone()),
                    recipients: None,
                    last_used: Instant::now(),
                };
                self.transfers.insert(transfer_id.clone(), transfer);
                self.send(Relay::offered(peer, transfer_id));
            }
            Relay::Done { transfer_id } => {
                if self.transfers.get(&transfer_id).is_some_and(|t| t.sender == peer) {
                    self.transfers.remove(&transfer_id);
                }
            }
            Relay::Fetch { transfer_id, offset, len } => {
                let allowed = self.transfers.get(&transfer_id).filter(|t| self.may_fetch(t, auth.as_deref()));
                let Some(sender) = allowed.map(|t| t.sender.clone()) else {
                    warn!(self.log, "file fetch refused: no such transfer for this key";
                        "transfer" => String::from_utf8_lossy(&transfer_id).as_ref(), "key" => key(),
                        "name" => auth.as_ref().map(|a| a.name_or_dash()).unwrap_or("-"), "peer" => Hex(&peer));
                    let text = "unknown transfer, or not one this key was asked to fetch (the sender may be gone)";
                    return self.send(Relay::error_for(peer, transfer_id, text));
                };
                if let Some(t) = self.transfers.get_mut(&transfer_id) {
                    t.last_used = Instant::now();
                }
                self.send(Relay::fetch_for_sender(sender, transfer_id, offset, len, peer));
            }
            Relay::Chunk { transfer_id, offset, receiver, data } => match self.transfers.get_mut(&transfer_id) {
                // Only the sender of a transfer may answer for it.
                Some(t) if t.sender == peer => {
                    t.last_used = Instant::now();
                    self.metrics.file_transfer_bytes.inc_by(data.len() as u64);
                    self.send(Relay::chunk_for_receiver(receiver, transfer_id, offset, data));
                }
                _ => debug!(self.log, "chunk for an unknown transfer dropped"; "peer" => Hex(&peer)),
            },
        }
    }
}

/// An `Upload` request names a transfer: it must be the requester's own
/// offer, not yet used; from now on `recipients` may fetch it.
#[derive(Message)]
#[rtype(result = "Result<(), NotOffered>")]
pub struct AuthorizeTransfer {
    pub transfer_id: String,
    /// The requester's key (CURVE).
    pub requester: Option<Arc<PeerAuth>>,
    /// The client keys the request goes to.
    pub recipients: Vec<String>,
}

/// An `Upload` named no transfer its requester offered.
#[derive(Debug, thiserror::Error)]
#[error("no such upload offered by this key (offer it on the file service first)")]
pub struct NotOffered;

impl Handler<AuthorizeTransfer> for FileService {
    type Result = Result<(), NotOffered>;

    fn handle(&mut self, msg: AuthorizeTransfer, _: &mut Context<Self>) -> Self::Result {
        let requester = msg.requester.as_ref().map(|a| a.key.clone());
        let transfer = self
            .transfers
            .get_mut(msg.transfer_id.as_bytes())
            .filter(|t| t.recipients.is_none() && t.sender_key == requester)
            .ok_or(NotOffered)?;
        transfer.recipients = Some(msg.recipients.into_iter().collect());
        transfer.last_used = Instant::now();
        Ok(())
    }
}

/// A key was revoked: it fetches nothing more, and its offers are gone.
#[derive(Message)]
#[rtype(result = "()")]
pub struct KeyRevoked {
    pub key: String,
}

impl Handler<KeyRevoked> for FileService {
    type Result = ();

    fn handle(&mut self, msg: KeyRevoked, _: &mut Context<Self>) {
        self.transfers.retain(|_, t| t.sender_key.as_deref() != Some(msg.key.as_str()));
        for t in self.transfers.values_mut() {
            if let Some(keys) = &mut t.recipients {
                keys.remove(&msg.key);
            }
        }
    }
}
