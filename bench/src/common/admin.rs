//! An admin's CURVE DEALER speaking Pantry's protocol (raw requests, as
//! `pantry-admin` sends them), and what several scenarios ask with it:
//! `status`, waiting for agents to be online, an echo to every client.

use std::time::{Duration, Instant};

use anyhow::{bail, Context as _, Result};
use pantry_shared::commands::status::{self, ClientStatus, ONLINE};
use pantry_shared::commands::{echo, recipients};
use pantry_shared::filter::ClientFilter;
use pantry_shared::Message;
use serde::{Deserialize, Serialize};

use crate::common::agents::client_security;
use crate::common::keys::Pair;
use crate::common::procs::PantryServer;

/// The admin's DEALER, with the bench admin's key.
pub struct Admin {
    socket: zmq::Socket,
    name: String,
    _ctx: zmq::Context,
}

impl Admin {
    pub fn connect(server: &PantryServer, pair: &Pair, name: &str) -> Result<Admin> {
        let ctx = zmq::Context::new();
        let socket = client_security(&server.endpoints, Some(pair))?.socket(&ctx, zmq::DEALER)?;
        socket.set_linger(0)?;
        socket.connect(&server.endpoints.receive)?;
        Ok(Admin { socket, name: name.to_owned(), _ctx: ctx })
    }

    /// Its DEALER, to poll along with other sockets.
    pub fn socket(&self) -> &zmq::Socket {
        &self.socket
    }

    /// Sends `request` from this admin; returns its uuid.
    pub fn send(&self, mut request: Message) -> Result<String> {
        request.metadata.from = self.name.clone();
        self.socket.send_multipart(request.to_frames(), zmq::DONTWAIT)?;
        Ok(request.uuid().to_owned())
    }

    /// The next message about `uuid` until `end`.
    pub fn recv(&self, uuid: &str, end: Instant) -> Option<Message> {
        self.recv_any(&[uuid.to_owned()], end)
    }

    /// The next message about any of `uuids` until `end`.
    pub fn recv_any(&self, uuids: &[String], end: Instant) -> Option<Message> {
        loop {
            let left = end.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return None;
            }
            if self.socket.poll(zmq::POLLIN, left.as_millis().max(1) as i64).unwrap_or(0) == 0 {
                continue;
            }
            while let Ok(frames) = self.socket.recv_multipart(zmq::DONTWAIT) {
                match Message::from_frames(&frames) {
                    Ok(m) if uuids.iter().any(|u| u == m.uuid()) => return Some(m),
                    _ => {}
                }
            }
        }
    }

    /// The answer to `request` within `timeout`, refused if it carries an
    /// error (`what` names the request in errors).
    pub fn ask(&self, request: Message, what: &str, timeout: Duration) -> Result<Message> {
        let uuid = self.send(request)?;
        let answer = self
            .recv(&uuid, Instant::now() + timeout)
            .with_context(|| format!("no answer to {what} within {timeout:?}"))?;
        if let Some(error) = answer.error() {
            bail!("{what} refused: {error}");
        }
        Ok(answer)
    }

    /// The clients `status` lists for `filter`.
    pub fn status(&self, filter: &ClientFilter, timeout: Duration) -> Result<Vec<ClientStatus>> {
        Ok(status::clients(&self.ask(status::request(filter), "Status", timeout)?))
    }

    /// Asks `status` every `every` until `n` clients are online or
    /// `deadline` passed. Returns when they were (`None`: not by the
    /// deadline) and how many were online at the last look.
    pub fn wait_online(&self, n: usize, deadline: Instant, every: Duration) -> Result<(Option<Instant>, usize)> {
        loop {
            let asked = Instant::now();
            let left = deadline.saturating_duration_since(asked).max(Duration::from_millis(500));
            let (_, online) = counts(&self.status(&ClientFilter::default(), left.min(Duration::from_secs(10)))?);
            if online >= n {
                return Ok((Some(Instant::now()), online));
            }
            if Instant::now() >= deadline {
                return Ok((None, online));
            }
            std::thread::sleep(every.saturating_sub(asked.elapsed()));
        }
    }

    /// An echo to every client: the list first (who will answer, who is
    /// offline), then the answers.
    pub fn echo_all(&self, timeout: Duration) -> Result<EchoRun> {
        let start = Instant::now();
        let uuid = self.send(echo::request("pantry-bench"))?;
        let end = start + timeout;
        let mut run = EchoRun::default();
        let mut expected = None;
        while expected.map_or(true, |e| run.answers < e) {
            let Some(m) = self.recv(&uuid, end) else { break };
            if m.is_client_response_list() {
                run.listed = recipients::online(&m).len();
                run.offline = recipients::offline(&m).into_iter().map(|o| o.identity).collect();
                run.offline.sort();
                expected = Some(run.listed);
            } else if let Some(error) = m.error().filter(|_| expected.is_none()) {
                bail!("echo refused: {error}");
            } else {
                run.answers += 1;
            }
            run.last_answer_ms = start.elapsed().as_secs_f64() * 1000.0;
        }
        if expected.is_none() {
            bail!("no recipient list within {timeout:?}");
        }
        Ok(run)
    }
}

/// Listed and online clients.
pub fn counts(list: &[ClientStatus]) -> (usize, usize) {
    (list.len(), list.iter().filter(|c| c.state == ONLINE).count())
}

/// One echo to every client.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct EchoRun {
    /// From sending to the last answer (to the list when none was expected).
    pub last_answer_ms: f64,
    pub answers: usize,
    /// Online clients the server listed.
    pub listed: usize,
    /// The clients the server named offline.
    pub offline: Vec<String>,
}
