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

use std::fs::File;
use std::io::{Read, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use sha2::{Digest, Sha256};

use crate::connection::SideTask;
use crate::error::DecodeError;
use crate::message::{BodyPart, Message};
use crate::monitor::{self, SocketEvent};
use crate::security::SocketSecurity;
use crate::session::{print_json_summary, report_offline, unsupported, Outcome, Session};

use super::{Admin, Rule, RunsOn, Senders, Wait};

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

/// Copy LOCAL_FILE to REMOTE_PATH (absolute) on every matching client.
#[derive(clap::Args, Debug)]
pub struct Args {
    pub local_file: PathBuf,
    pub remote_path: String,
    /// Print JSON for scripts.
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub wait: Wait,
}

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

/// Admin, step 1: size and SHA-256 of the local file, read in chunks.
pub fn describe(local: &Path) -> std::io::Result<(u64, String)> {
    let mut file = File::open(local)?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; CHUNK_SIZE as usize];
    let mut size = 0u64;
    loop {
        let n = file.read(&mut buf)?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
        size += n as u64;
    }
    Ok((size, hex(&hasher.finalize())))
}

fn hex(bytes: &[u8]) -> String {
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
pub fn await_offered(socket: &zmq::Socket, timeout: Duration) -> Result<String, String> {
    let end = Instant::now() + timeout;
    loop {
        let left = end.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(format!("the file service did not confirm the upload within {} s", timeout.as_secs_f64()));
        }
        let mut items = [socket.as_poll_item(zmq::POLLIN)];
        zmq::poll(&mut items, left.as_millis().max(1) as i64).map_err(|e| e.to_string())?;
        while let Ok(frames) = socket.recv_multipart(zmq::DONTWAIT) {
            match frames.first().map(Vec::as_slice) {
                Some(OFFERED) if frames.len() == 2 => return Ok(String::from_utf8_lossy(&frames[1]).into_owned()),
                Some(ERROR) => {
                    let text = frames.last().map(|t| String::from_utf8_lossy(t).into_owned()).unwrap_or_default();
                    return Err(format!("the server refused the upload: {text}"));
                }
                _ => {}
            }
        }
    }
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

/// How an agent reaches the file service.
#[derive(Clone)]
pub struct FileService {
    pub ctx: zmq::Context,
    pub security: SocketSecurity,
    pub endpoint: String,
}

/// In a cluster, the file service holding the upload, when it is another
/// server's than the agent's: the server the admin used.
pub const FILE_SERVICE_FIELD: &str = "file_service";

/// Agent, steps 2 and 5: fetch, check, rename; build the answer. Blocking:
/// run it on a worker thread.
pub fn handle(request: &Message, service: &FileService) -> Message {
    let mut response = request.response();
    // The agent's own server's key still authenticates the other server:
    // every server of a cluster has the same key pair.
    let elsewhere = request.metadata.custom.get(FILE_SERVICE_FIELD).and_then(Value::as_str);
    let service = match elsewhere {
        Some(endpoint) => &FileService { endpoint: endpoint.to_owned(), ..service.clone() },
        None => service,
    };
    let result = parse(request).map_err(|e| e.to_string()).and_then(|upload| receive(&upload, service));
    match result {
        Ok(done) => response.body.push(BodyPart::Json(serde_json::to_value(done).unwrap_or(Value::Null))),
        Err(e) => response.set_error(e),
    }
    response
}

fn receive(upload: &UploadRequest, service: &FileService) -> Result<UploadResult, String> {
    let target = PathBuf::from(&upload.remote_path);
    let dir = target.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("/"));
    let name = target.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    // Dropped (and so deleted) on every early return.
    let mut tmp = tempfile::Builder::new()
        .prefix(&format!(".{name}.pantry-upload-"))
        .tempfile_in(dir)
        .map_err(|e| format!("cannot create a temporary file in {}: {e}", dir.display()))?;

    let socket = service.security.socket(&service.ctx, zmq::DEALER).map_err(|e| e.to_string())?;
    let events = monitor::monitor(&service.ctx, &socket, monitor::CLIENT_EVENTS).map_err(|e| e.to_string())?;
    socket.connect(&service.endpoint).map_err(|e| format!("cannot connect to {}: {e}", service.endpoint))?;

    let id = upload.transfer_id.as_bytes();
    let mut hasher = Sha256::new();
    let (mut requested, mut received) = (0u64, 0u64);
    let mut last_progress = Instant::now();
    while received < upload.size {
        while requested < upload.size && requested - received < CREDIT * CHUNK_SIZE {
            let len = CHUNK_SIZE.min(upload.size - requested);
            let frames = [FETCH, id, &requested.to_be_bytes(), &(len as u32).to_be_bytes()];
            socket.send_multipart(frames, 0).map_err(|e| e.to_string())?;
            requested += len;
        }
        let left = STALL_TIMEOUT.saturating_sub(last_progress.elapsed());
        if left.is_zero() {
            return Err(format!("transfer stalled: no data for {} s", STALL_TIMEOUT.as_secs()));
        }
        let mut items = [socket.as_poll_item(zmq::POLLIN), events.as_poll_item(zmq::POLLIN)];
        zmq::poll(&mut items, left.as_millis() as i64).map_err(|e| e.to_string())?;
        if items[1].is_readable() {
            while let Some(event) = monitor::read(&events) {
                if event.event == SocketEvent::Disconnected {
                    return Err("the connection to the file service was lost".into());
                }
            }
        }
        if !items[0].is_readable() {
            continue;
        }
        while let Ok(frames) = socket.recv_multipart(zmq::DONTWAIT) {
            match frames.first().map(Vec::as_slice) {
                Some(CHUNK) if frames.len() == 4 && frames[1] == id => {
                    let offset = frames[2].as_slice().try_into().map(u64::from_be_bytes).unwrap_or(u64::MAX);
                    if offset != received {
                        return Err(format!("chunk at {offset} arrived while expecting {received}"));
                    }
                    let data = &frames[3];
                    tmp.write_all(data).map_err(|e| format!("cannot write {}: {e}", tmp.path().display()))?;
                    hasher.update(data);
                    received += data.len() as u64;
                    last_progress = Instant::now();
                }
                Some(ERROR) => {
                    let text = frames.get(2).map(|t| String::from_utf8_lossy(t).into_owned()).unwrap_or_default();
                    return Err(format!("file service: {text}"));
                }
                _ => {}
            }
        }
    }
    let sha256 = hex(&hasher.finalize());
    if sha256 != upload.sha256 {
        return Err(format!("SHA-256 mismatch: got {sha256}, expected {}", upload.sha256));
    }
    if let Some(mode) = upload.mode {
        use std::os::unix::fs::PermissionsExt;
        let perms = std::fs::Permissions::from_mode(mode & 0o7777);
        tmp.as_file().set_permissions(perms).map_err(|e| e.to_string())?;
    }
    tmp.as_file().sync_all().map_err(|e| e.to_string())?;
    tmp.persist(&target).map_err(|e| format!("cannot rename into {}: {}", target.display(), e.error))?;
    Ok(UploadResult { path: upload.remote_path.clone(), bytes: received, sha256 })
}

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

/// Admin, step 4: answers the server's `FETCH` requests from the local file.
pub struct Sender {
    file: File,
    transfer_id: Vec<u8>,
    size: u64,
    /// Bytes sent, over all receivers.
    pub sent: u64,
}

impl Sender {
    pub fn new(local: &Path, transfer_id: &str, size: u64) -> std::io::Result<Sender> {
        Ok(Sender { file: File::open(local)?, transfer_id: transfer_id.as_bytes().to_vec(), size, sent: 0 })
    }

    /// Serves every `FETCH` waiting on `socket`. Returns the bytes sent.
    pub fn serve(&mut self, socket: &zmq::Socket) -> std::io::Result<u64> {
        let mut sent = 0;
        while let Ok(frames) = socket.recv_multipart(zmq::DONTWAIT) {
            if frames.len() != 5 || frames[0] != FETCH || frames[1] != self.transfer_id {
                continue;
            }
            let offset = frames[2].as_slice().try_into().map(u64::from_be_bytes).unwrap_or(u64::MAX);
            let len = frames[3].as_slice().try_into().map(u32::from_be_bytes).unwrap_or(0) as u64;
            if offset >= self.size || len == 0 || len > CHUNK_SIZE {
                continue;
            }
            let mut data = vec![0u8; len.min(self.size - offset) as usize];
            self.file.read_exact_at(&mut data, offset)?;
            sent += data.len() as u64;
            let reply = [CHUNK, &self.transfer_id, &frames[2], &frames[4], &data];
            socket.send_multipart(reply, 0).map_err(std::io::Error::other)?;
        }
        self.sent += sent;
        Ok(sent)
    }

    pub fn done_frames(&self) -> Vec<Vec<u8>> {
        vec![DONE.to_vec(), self.transfer_id.clone()]
    }
}

impl Admin for Args {
    fn wait(&self, global: f64) -> f64 {
        self.wait.or(global)
    }

    /// Admin, steps 1 and 4: offer the file on the file service, ask the
    /// clients to fetch it, serve their chunks while a progress bar runs;
    /// each answer goes to stderr (or, with `--json`, all of them to stdout
    /// at the end), then the summary.
    fn run(self, session: &mut Session) -> anyhow::Result<Outcome> {
        use std::os::unix::fs::PermissionsExt;
        let target = session.target()?;
        let (local, remote, json) = (self.local_file.as_path(), self.remote_path.as_str(), self.json);
        if !remote.starts_with('/') {
            bail!("REMOTE_PATH must be absolute: {remote}");
        }
        let (size, sha256) = describe(local).with_context(|| format!("cannot read {}", local.display()))?;
        // Hashing a big file takes a while: the wait for the server starts now.
        session.deadline.restart();
        let mode = std::fs::metadata(local).map(|m| m.permissions().mode() & 0o7777).ok();
        let ctx = zmq::Context::new();
        let endpoint = session.net.networking.endpoint(session.net.networking.file_service_port);
        let socket = session.security.socket(&ctx, zmq::DEALER)?;
        socket.connect(&endpoint).with_context(|| format!("cannot connect to {endpoint}"))?;
        socket.send_multipart(offer_frames(), 0)?;
        let transfer_id = await_offered(&socket, session.deadline.idle).map_err(anyhow::Error::msg)?;

        // Its length is known once the server says how many clients will fetch.
        let bar = indicatif::ProgressBar::new(0);
        bar.set_style(
            indicatif::ProgressStyle::with_template("{bytes}/{total_bytes} {wide_bar} {binary_bytes_per_sec} {eta}")
                .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
        );
        let mut side = UploadSide { socket, sender: Sender::new(local, &transfer_id, size)?, bar: bar.clone() };
        let upload = UploadRequest { transfer_id, remote_path: remote.to_owned(), size, sha256, mode };
        let request = session.to_clients(request(&upload), &target);
        let online_only = session.online_only;
        let mut answers = Vec::new();
        let result = session.ask_clients(
            &request,
            Some(&mut side),
            |ids, offline| {
                bar.suspend(|| report_offline(offline, online_only, json));
                bar.set_length(size * ids.len() as u64)
            },
            |answer| {
                let Some(done) = result(answer) else {
                    bar.suspend(|| eprintln!("{}: {}", answer.metadata.from, unsupported(TYPE)));
                    return false;
                };
                if json {
                    answers.push(serde_json::json!({"identity": answer.metadata.from, "result": done}));
                } else {
                    bar.suspend(|| eprintln!("{}", format_answer(&answer.metadata.from, &done)));
                }
                true
            },
        );
        bar.finish_and_clear();
        let _ = side.socket.send_multipart(side.sender.done_frames(), zmq::DONTWAIT);
        let result = result?;
        print_json_summary(json, answers, &result)?;
        Ok(session.report(&result, &target))
    }
}

/// Admin, step 4: serves chunk requests while the admin waits for the
/// clients' answers.
struct UploadSide {
    socket: zmq::Socket,
    sender: Sender,
    bar: indicatif::ProgressBar,
}

impl SideTask for UploadSide {
    fn socket(&self) -> &zmq::Socket {
        &self.socket
    }

    fn ready(&mut self) -> anyhow::Result<bool> {
        let sent = self.sender.serve(&self.socket).context("cannot read the local file")?;
        self.bar.set_position(self.sender.sent);
        Ok(sent > 0)
    }
}

/// Admin, after step 5: the result in an answer, if it carries one.
pub fn result(response: &Message) -> Option<UploadResult> {
    response.body.first().and_then(BodyPart::as_json).and_then(|v| serde_json::from_value(v.clone()).ok())
}

/// Admin: one line per client.
pub fn format_answer(identity: &str, result: &UploadResult) -> String {
    format!("{identity}: wrote {} bytes to {} (sha256 {})", result.bytes, result.path, result.sha256)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn describe_hashes_in_chunks() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        std::fs::write(&path, b"abc").unwrap();
        let (size, sha) = describe(&path).unwrap();
        assert_eq!(size, 3);
        assert_eq!(sha, "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
    }

    #[test]
    fn relay_frames_parse() {
        let f = |parts: &[&[u8]]| parts.iter().map(|p| p.to_vec()).collect::<Vec<_>>();
        assert!(matches!(Relay::parse(f(&[OFFER])), Some(Relay::Offer)));
        assert!(matches!(Relay::parse(f(&[FETCH, b"t", b"o", b"l"])), Some(Relay::Fetch { .. })));
        assert!(matches!(Relay::parse(f(&[CHUNK, b"t", b"o", b"r", b"d"])), Some(Relay::Chunk { .. })));
        assert!(Relay::parse(f(&[FETCH, b"t"])).is_none());
        assert!(Relay::parse(f(&[b"NOPE"])).is_none());
        assert!(Relay::parse(Vec::new()).is_none());
    }

    #[test]
    fn relative_remote_paths_are_refused() {
        let req = request(&UploadRequest {
            transfer_id: "t".into(),
            remote_path: "relative/x".into(),
            size: 0,
            sha256: String::new(),
            mode: None,
        });
        assert!(parse(&req).is_err());
    }
}
