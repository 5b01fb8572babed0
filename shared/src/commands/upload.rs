//! `upload LOCAL_FILE REMOTE_PATH`: copy a file to every matching client,
//! through the server, without holding it in memory anywhere.
//!
//! 1. The admin hashes the file (SHA-256), connects to the server's file
//!    service and offers a transfer (`OFFER`); the server answers with an
//!    unguessable transfer id (`OFFERED id`), or `ERROR` when the key may not
//!    upload. The admin then sends an `Upload` request with that id to the
//!    clients like any other command; the server lets only those clients
//!    fetch it.
//! 2. Each agent connects to the file service and pulls the file in chunks,
//!    keeping a few requests in flight (credit-based flow, after the ZeroMQ
//!    guide's file transfer): `FETCH offset len`. A slow receiver asks for
//!    less, so nobody floods it.
//! 3. The server's file service relays each `FETCH` to the sender with the
//!    receiver's routing id, and each `CHUNK` back to that receiver.
//! 4. The admin reads each chunk from disk when asked and answers it.
//! 5. The agent writes chunks to a temporary file beside REMOTE_PATH, checks
//!    the SHA-256, and renames it into place; a failed or cut transfer
//!    leaves nothing at REMOTE_PATH. Its answer carries bytes and hash.

use std::path::Path;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::error::DecodeError;
use crate::message::{BodyPart, Message};

use crate::rule::{Rule, RunsOn, Senders};

pub const TYPE: &str = "Upload";

pub const RULE: Rule =
    Rule { wire: TYPE, runs_on: RunsOn::Clients, senders: Senders::Admins, may_block: true, job: true };

/// File-service frame names (first frame after the routing id).
pub const OFFER: &[u8] = b"OFFER";
pub const OFFERED: &[u8] = b"OFFERED";
pub const FETCH: &[u8] = b"FETCH";
pub const CHUNK: &[u8] = b"CHUNK";
pub const DONE: &[u8] = b"DONE";
pub const ERROR: &[u8] = b"ERROR";

pub const CHUNK_SIZE: u64 = 256 * 1024;
/// Chunk requests a receiver keeps in flight.
pub const CREDIT: u64 = 8;
/// A receiver gives up when no chunk arrives for this long.
pub const STALL_TIMEOUT: Duration = Duration::from_secs(15);

/// What the clients are asked to fetch.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct UploadRequest {
    pub transfer_id: String,
    pub remote_path: String,
    pub size: u64,
    /// Lowercase hex.
    pub sha256: String,
    /// Permission bits of the local file, given to the copies.
    #[serde(default)]
    pub mode: Option<u32>,
}

/// What each client reports.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct UploadResult {
    pub path: String,
    pub bytes: u64,
    pub sha256: String,
}

pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Admin, step 1: the request sent to the clients.
pub fn request(upload: &UploadRequest) -> Message {
    let mut m = Message::new(TYPE);
    m.metadata.requires_response = true;
    m.body.push(BodyPart::Json(serde_json::to_value(upload).unwrap_or(Value::Null)));
    m
}

/// Admin, step 1: the frames that register us as the sender.
pub fn offer_frames() -> Vec<Vec<u8>> {
    vec![OFFER.to_vec()]
}

/// Admin, step 1: waits for the transfer id the server gives the offer (so
/// that no client asks for a transfer the server does not know yet), or
/// the server's refusal.
pub fn await_offered(socket: &zmq::Socket, timeout: Duration) -> Result<String, OfferError> {
    let end = Instant::now() + timeout;
    loop {
        let left = end.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(OfferError::NoAnswer(timeout));
        }
        let mut items = [socket.as_poll_item(zmq::POLLIN)];
        zmq::poll(&mut items, left.as_millis().max(1) as i64)?;
        while let Ok(frames) = socket.recv_multipart(zmq::DONTWAIT) {
            match frames.first().map(Vec::as_slice) {
                Some(OFFERED) if frames.len() == 2 => return Ok(String::from_utf8_lossy(&frames[1]).into_owned()),
                Some(ERROR) => {
                    let text = frames.last().map(|t| String::from_utf8_lossy(t).into_owned()).unwrap_or_default();
                    return Err(OfferError::Refused(text));
                }
                _ => {}
            }
        }
    }
}

/// Why the file service took no offer.
#[derive(Debug, thiserror::Error)]
pub enum OfferError {
    #[error("the file service did not confirm the upload within {} s", .0.as_secs_f64())]
    NoAnswer(Duration),
    #[error("the server refused the upload: {0}")]
    Refused(String),
    #[error("cannot wait for the file service: {0}")]
    Socket(#[from] zmq::Error),
}

/// Agent, step 2: read the request.
pub fn parse(request: &Message) -> Result<UploadRequest, DecodeError> {
    let bad = |reason: String| DecodeError::Body { message_type: TYPE.into(), reason };
    let body = request.body.first().and_then(BodyPart::as_json).ok_or_else(|| bad("no JSON body".into()))?;
    let upload: UploadRequest = serde_json::from_value(body.clone()).map_err(|e| bad(e.to_string()))?;
    if !Path::new(&upload.remote_path).is_absolute() {
        return Err(bad(format!("remote path `{}` is not absolute", upload.remote_path)));
    }
    Ok(upload)
}

/// In a cluster, the file service holding the upload, when it is another
/// server's than the agent's: the server the admin used.
pub const FILE_SERVICE_FIELD: &str = "file_service";

/// Server, step 3: what the file service does with one frame set from a
/// peer. The caller keeps the table of transfers (transfer id → sender).
pub enum Relay {
    /// `peer` offers a file; the server picks the transfer id.
    Offer,
    /// The sender is finished with `transfer_id`.
    Done { transfer_id: Vec<u8> },
    /// Ask the sender of `transfer_id` for a chunk on behalf of the peer.
    Fetch { transfer_id: Vec<u8>, offset: Vec<u8>, len: Vec<u8> },
    /// A chunk from the sender for `receiver`.
    Chunk { transfer_id: Vec<u8>, offset: Vec<u8>, receiver: Vec<u8>, data: Vec<u8> },
}

impl Relay {
    /// Reads the frames after the routing id.
    pub fn parse(mut frames: Vec<Vec<u8>>) -> Option<Relay> {
        let name = frames.first()?.clone();
        let count = frames.len();
        let mut take = |i: usize| frames.get_mut(i).map(std::mem::take);
        let relay = match (name.as_slice(), count) {
            (OFFER, 1) => Relay::Offer,
            (DONE, 2) => Relay::Done { transfer_id: take(1)? },
            (FETCH, 4) => Relay::Fetch { transfer_id: take(1)?, offset: take(2)?, len: take(3)? },
            (CHUNK, 5) => Relay::Chunk { transfer_id: take(1)?, offset: take(2)?, receiver: take(3)?, data: take(4)? },
            _ => return None,
        };
        Some(relay)
    }

    /// To the sender: `[sender, FETCH, id, offset, len, receiver]`.
    pub fn fetch_for_sender(
        sender: Vec<u8>,
        id: Vec<u8>,
        offset: Vec<u8>,
        len: Vec<u8>,
        receiver: Vec<u8>,
    ) -> Vec<Vec<u8>> {
        vec![sender, FETCH.to_vec(), id, offset, len, receiver]
    }

    /// To the receiver: `[receiver, CHUNK, id, offset, data]`.
    pub fn chunk_for_receiver(receiver: Vec<u8>, id: Vec<u8>, offset: Vec<u8>, data: Vec<u8>) -> Vec<Vec<u8>> {
        vec![receiver, CHUNK.to_vec(), id, offset, data]
    }

    /// To the sender: `[sender, OFFERED, id]`.
    pub fn offered(sender: Vec<u8>, id: Vec<u8>) -> Vec<Vec<u8>> {
        vec![sender, OFFERED.to_vec(), id]
    }

    /// To a receiver whose transfer is unknown.
    pub fn error_for(peer: Vec<u8>, id: Vec<u8>, text: &str) -> Vec<Vec<u8>> {
        vec![peer, ERROR.to_vec(), id, text.as_bytes().to_vec()]
    }
}

/// Admin, after step 5: the result in an answer, if it carries one.
pub fn result(response: &Message) -> Option<UploadResult> {
    response.body.first().and_then(BodyPart::as_json).and_then(|v| serde_json::from_value(v.clone()).ok())
}
