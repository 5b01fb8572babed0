//! `upload` on the agent: the file is fetched from the file service in
//! chunks with credit-based flow, written beside its target, checked
//! against its SHA-256 and renamed into place.

use pantry_shared::commands::rollout::CANCELLED_FIELD;
use pantry_shared::commands::upload::*;

use super::running::{Running, Started};
use pantry_shared::message::{BodyPart, Message};
use pantry_shared::monitor::{self, SocketEvent};
use pantry_shared::security::SocketSecurity;
use serde_json::Value;
use sha2::{Digest, Sha256};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Instant;

/// How an agent reaches the file service.
#[derive(Clone)]
pub struct FileService {
    pub ctx: zmq::Context,
    pub security: SocketSecurity,
    pub endpoint: String,
}

/// Agent, steps 2 and 5: fetch, check, rename; build the answer. Blocking:
/// run it on a worker thread.
pub fn handle(request: &Message, service: &FileService, running: &Running) -> Message {
    let job = running.start(request.uuid());
    let mut response = request.response();
    // The agent's own server's key still authenticates the other server:
    // every server of a cluster has the same key pair.
    let elsewhere = request.metadata.custom.get(FILE_SERVICE_FIELD).and_then(Value::as_str);
    let service = match elsewhere {
        Some(endpoint) => &FileService { endpoint: endpoint.to_owned(), ..service.clone() },
        None => service,
    };
    let result = parse(request)
        .map_err(|e| e.to_string())
        .and_then(|upload| receive(&upload, service, &job).map_err(|e| e.to_string()));
    match result {
        Ok(done) => response.body.push(BodyPart::Json(serde_json::to_value(done).unwrap_or(Value::Null))),
        Err(e) => {
            if job.is_cancelled() {
                response.metadata.custom.insert(CANCELLED_FIELD.into(), Value::Bool(true));
            }
            response.set_error(e)
        }
    }
    response
}

/// Why a file was not received (nothing is left at its target).
#[derive(Debug, thiserror::Error)]
enum ReceiveError {
    #[error("{what}: {source}")]
    File { what: String, source: std::io::Error },
    #[error("file service connection: {0}")]
    Socket(#[from] zmq::Error),
    #[error("transfer stalled: no data for {} s", STALL_TIMEOUT.as_secs())]
    Stalled,
    #[error("the connection to the file service was lost")]
    Lost,
    #[error("chunk at {offset} arrived while expecting {expected}")]
    OutOfOrder { offset: u64, expected: u64 },
    #[error("file service: {0}")]
    Refused(String),
    #[error("cancelled")]
    Cancelled,
    #[error("SHA-256 mismatch: got {got}, expected {expected}")]
    Mismatch { got: String, expected: String },
}

fn receive(upload: &UploadRequest, service: &FileService, job: &Started) -> Result<UploadResult, ReceiveError> {
    let target = PathBuf::from(&upload.remote_path);
    let dir = target.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("/"));
    let name = target.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    // Dropped (and so deleted) on every early return.
    let mut tmp =
        tempfile::Builder::new().prefix(&format!(".{name}.pantry-upload-")).tempfile_in(dir).map_err(|e| {
            ReceiveError::File { what: format!("cannot create a temporary file in {}", dir.display()), source: e }
        })?;

    let socket = service.security.socket(&service.ctx, zmq::DEALER)?;
    let events = monitor::monitor(&service.ctx, &socket, monitor::CLIENT_EVENTS)?;
    socket.connect(&service.endpoint)?;

    let id = upload.transfer_id.as_bytes();
    let mut hasher = Sha256::new();
    let (mut requested, mut received) = (0u64, 0u64);
    let mut last_progress = Instant::now();
    while received < upload.size {
        if job.is_cancelled() {
            return Err(ReceiveError::Cancelled);
        }
        while requested < upload.size && requested - received < CREDIT * CHUNK_SIZE {
            let len = CHUNK_SIZE.min(upload.size - requested);
            let frames = [FETCH, id, &requested.to_be_bytes(), &(len as u32).to_be_bytes()];
            socket.send_multipart(frames, 0)?;
            requested += len;
        }
        let left = STALL_TIMEOUT.saturating_sub(last_progress.elapsed());
        if left.is_zero() {
            return Err(ReceiveError::Stalled);
        }
        let mut items = [socket.as_poll_item(zmq::POLLIN), events.as_poll_item(zmq::POLLIN)];
        zmq::poll(&mut items, left.as_millis() as i64)?;
        if items[1].is_readable() {
            while let Some(event) = monitor::read(&events) {
                if event.event == SocketEvent::Disconnected {
                    return Err(ReceiveError::Lost);
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
                        return Err(ReceiveError::OutOfOrder { offset, expected: received });
                    }
                    let data = &frames[3];
                    tmp.write_all(data).map_err(|e| ReceiveError::File {
                        what: format!("cannot write {}", tmp.path().display()),
                        source: e,
                    })?;
                    hasher.update(data);
                    received += data.len() as u64;
                    last_progress = Instant::now();
                }
                Some(ERROR) => {
                    let text = frames.get(2).map(|t| String::from_utf8_lossy(t).into_owned()).unwrap_or_default();
                    return Err(ReceiveError::Refused(text));
                }
                _ => {}
            }
        }
    }
    let sha256 = hex(&hasher.finalize());
    if sha256 != upload.sha256 {
        return Err(ReceiveError::Mismatch { got: sha256, expected: upload.sha256.clone() });
    }
    if let Some(mode) = upload.mode {
        use std::os::unix::fs::PermissionsExt;
        let perms = std::fs::Permissions::from_mode(mode & 0o7777);
        tmp.as_file()
            .set_permissions(perms)
            .map_err(|e| ReceiveError::File { what: "cannot set the file's mode".into(), source: e })?;
    }
    tmp.as_file().sync_all().map_err(|e| ReceiveError::File { what: "cannot sync the file".into(), source: e })?;
    tmp.persist(&target).map_err(|e| ReceiveError::File {
        what: format!("cannot rename into {}", target.display()),
        source: e.error,
    })?;
    Ok(UploadResult { path: upload.remote_path.clone(), bytes: received, sha256 })
}
