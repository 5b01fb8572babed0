//! `upload LOCAL REMOTE`: offer a file on the file service and have every matching client fetch it.

use crate::connection::SideTask;
use crate::for_clients::{self, Job};
use crate::rollout::RolloutArgs;
use crate::session::{Outcome, Session};
use anyhow::{bail, Context as _};
use pantry_shared::commands::upload::*;
use sha2::{Digest, Sha256};
use std::fs::File;
use std::io::Read;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use crate::session::{Admin, Wait};

/// Copy LOCAL_FILE to REMOTE_PATH (absolute) on every matching client.
#[derive(clap::Args, Debug)]
pub struct Args {
    pub local_file: PathBuf,
    /// Where [with --from-job: the job's].
    #[arg(required_unless_present = "from_job")]
    pub remote_path: Option<String>,
    /// Print JSON for scripts (each agent's state included).
    #[arg(long)]
    pub json: bool,
    /// A rollout keeps this admin connected: it serves the file to each
    /// batch.
    #[command(flatten)]
    pub rollout: RolloutArgs,
    #[command(flatten)]
    pub wait: Wait,
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
        let Some(job) = self.rollout.prepare(session, TYPE)? else { return Ok(Outcome::NoMatch) };
        if self.rollout.dry_run {
            return self.rollout.dry_run(session, &job);
        }
        let remote = match (&self.remote_path, job.argument("remote_path")) {
            (Some(remote), _) => remote.clone(),
            (None, Some(remote)) => remote.as_str().context("the job's remote path is not text")?.to_owned(),
            (None, None) => bail!("no REMOTE_PATH given, and the job holds none"),
        };
        let (local, json) = (self.local_file.as_path(), self.json);
        if !remote.starts_with('/') {
            bail!("REMOTE_PATH must be absolute: {remote}");
        }
        let (size, sha256) = describe(local).with_context(|| format!("cannot read {}", local.display()))?;
        if let Some(before) = job.argument("sha256").and_then(|s| s.as_str()).filter(|b| *b != sha256) {
            eprintln!("note: {} is not the file job ran (sha256 {before}, now {sha256})", local.display());
        }
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
        if job.plan.is_rollout() {
            // Batch by batch, the bar would only mislead.
            bar.set_draw_target(indicatif::ProgressDrawTarget::hidden());
        }
        let mut side = UploadSide { socket, sender: Sender::new(local, &transfer_id, size)?, bar: bar.clone() };
        let upload = UploadRequest { transfer_id, remote_path: remote, size, sha256, mode };
        let request = job.request(session, request(&upload), session.deadline.idle);
        let group = self.rollout.group;
        let run = Job { request, target: &job.target, plan: &job.plan, timeout: 0.0, json, group, to_stderr: true };
        let outcome = for_clients::run(session, run, Some(&mut side), |ids, _| bar.set_length(size * ids.len() as u64));
        bar.finish_and_clear();
        let _ = side.socket.send_multipart(side.sender.done_frames(), zmq::DONTWAIT);
        outcome
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
