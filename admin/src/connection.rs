//! The admin's connection to the server: one DEALER socket, watched by a
//! socket monitor so that a refused or impossible CURVE handshake is reported
//! at once and in plain words instead of as a silent timeout.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Result};
use pantry_shared::commands::recipients::{self, Offline};
use pantry_shared::commands::rollout::{self, AgentState};
use pantry_shared::commands::Kind;
use pantry_shared::keys::ClientKeys;
use pantry_shared::message::Message;
use pantry_shared::monitor::{self, SocketEvent};
use pantry_shared::security::SocketSecurity;

/// How the server's refusal of an unknown key begins.
const UNKNOWN_CLIENT: &str = "unknown client";

pub struct Connection {
    dealer: zmq::Socket,
    monitor: zmq::Socket,
    server: String,
    /// Servers tried before this one that completed no handshake in time,
    /// named when this one does not answer either.
    skipped: Vec<String>,
    keys: Option<ClientKeys>,
    handshake_done: bool,
    handshake_failures: u32,
    /// Whether TCP connected at all.
    connected: bool,
    // Dropped last: sockets first.
    _ctx: zmq::Context,
}

/// Work the admin does while it waits for answers (serving an upload's
/// chunks). `ready` returns whether it made progress, which pushes the
/// deadline back: a long transfer is fine as long as it moves.
pub trait SideTask {
    fn socket(&self) -> &zmq::Socket;
    fn ready(&mut self) -> Result<bool>;
}

/// When to give up: `at`, moved to `now + idle` on every bit of progress.
pub struct Deadline {
    pub at: Instant,
    pub idle: Duration,
}

impl Deadline {
    pub fn after(idle: Duration) -> Deadline {
        Deadline { at: Instant::now() + idle, idle }
    }

    fn progress(&mut self) {
        self.at = self.at.max(Instant::now() + self.idle);
    }

    /// Starts the wait over: local work (hashing a big file, an editor
    /// session) may have used it up before anything was sent.
    pub fn restart(&mut self) {
        self.at = Instant::now() + self.idle;
    }
}

/// How a command sent to clients ended.
pub struct ClientAnswers {
    pub expected: usize,
    pub answered: usize,
    pub failed: Vec<String>,
    pub missing: Vec<String>,
    /// Targeted clients that are offline: the server did not send them the
    /// request.
    pub offline: Vec<Offline>,
    /// Each answer's agent state ([`rollout::state_of`]).
    pub states: Vec<(String, AgentState)>,
}

impl ClientAnswers {
    /// Every targeted agent's state, by identity: its answer's, `no-answer`
    /// for the silent, `offline` (unless left out).
    pub fn agent_states(&self, online_only: bool) -> Vec<(String, AgentState)> {
        let mut states = self.states.clone();
        states.extend(self.missing.iter().map(|m| (m.clone(), AgentState::NoAnswer)));
        if !online_only {
            states.extend(self.offline.iter().map(|o| (o.identity.clone(), AgentState::Offline)));
        }
        states.sort();
        states
    }
}

impl Connection {
    pub fn open(server: String, security: &SocketSecurity, keys: Option<ClientKeys>) -> Result<Self> {
        let ctx = zmq::Context::new();
        let dealer = security.socket(&ctx, zmq::DEALER)?;
        let monitor = monitor::monitor(&ctx, &dealer, monitor::CLIENT_EVENTS)?;
        dealer.connect(&server).map_err(|e| anyhow!("cannot connect to {server}: {e}"))?;
        Ok(Connection {
            dealer,
            monitor,
            server,
            skipped: Vec::new(),
            keys,
            handshake_done: false,
            handshake_failures: 0,
            connected: false,
            _ctx: ctx,
        })
    }

    /// Connects to the first of `servers` that completes a handshake within
    /// `budget` (at most until `deadline`); the last one is taken without
    /// waiting, so that its failure is reported the way a single server's
    /// is. Nothing is sent before a server is chosen: a request sent to a
    /// server that then goes silent might still run there, and sending it
    /// again elsewhere would run it twice.
    pub fn open_first_answering(
        servers: &[String],
        security: &SocketSecurity,
        keys: Option<ClientKeys>,
        budget: Duration,
        deadline: &Deadline,
        mut on_skip: impl FnMut(&str, &str, &str),
    ) -> Result<Self> {
        let Some((last, earlier)) = servers.split_last() else { bail!("no server to connect to") };
        let mut skipped = Vec::new();
        for (index, server) in earlier.iter().enumerate() {
            let wait = budget.min(deadline.at.saturating_duration_since(Instant::now()));
            if wait.is_zero() {
                break;
            }
            let why = match Connection::open(server.clone(), security, keys.clone()) {
                Ok(mut conn) => {
                    if conn.wait_for_handshake(wait)? {
                        conn.skipped = skipped;
                        return Ok(conn);
                    }
                    format!("no handshake within {} s", wait.as_secs_f64())
                }
                Err(e) => e.to_string(),
            };
            on_skip(server, &servers[index + 1], &why);
            skipped.push(server.clone());
        }
        let mut conn = Connection::open(last.clone(), security, keys)?;
        conn.skipped = skipped;
        Ok(conn)
    }

    /// Whether the handshake completed within `wait`. A refused key is an
    /// error at once, as in [`Connection::recv`]: the server did answer.
    fn wait_for_handshake(&mut self, wait: Duration) -> Result<bool> {
        let end = Instant::now() + wait;
        while !self.handshake_done {
            let left = end.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Ok(false);
            }
            let mut items = [self.monitor.as_poll_item(zmq::POLLIN)];
            match zmq::poll(&mut items, left.as_millis().max(1) as i64) {
                Ok(_) | Err(zmq::Error::EINTR) => {}
                Err(e) => bail!("socket poll failed: {e}"),
            }
            self.read_monitor()?;
        }
        Ok(true)
    }

    /// The server this connection is to (`tcp://host:port`).
    pub fn server(&self) -> &str {
        &self.server
    }

    fn send(&self, message: &Message) -> Result<()> {
        self.dealer.send_multipart(message.to_frames(), 0)?;
        Ok(())
    }

    /// The next message for the request `uuid`, or an error that says why
    /// none came before the deadline.
    fn recv<'s>(
        &mut self,
        uuid: &str,
        deadline: &mut Deadline,
        mut side: Option<&mut (dyn SideTask + 's)>,
    ) -> Result<Message> {
        loop {
            if crate::interrupt::pending() {
                return Err(crate::interrupt::Interrupted.into());
            }
            let left = deadline.at.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(self.timeout_error(deadline.idle));
            }
            let mut items = vec![self.dealer.as_poll_item(zmq::POLLIN), self.monitor.as_poll_item(zmq::POLLIN)];
            if let Some(task) = side.as_deref() {
                items.push(task.socket().as_poll_item(zmq::POLLIN));
            }
            match zmq::poll(&mut items, left.as_millis().max(1) as i64) {
                Ok(_) | Err(zmq::Error::EINTR) => {}
                Err(e) => bail!("socket poll failed: {e}"),
            }
            let ready: Vec<bool> = items.iter().map(zmq::PollItem::is_readable).collect();
            if ready[1] {
                self.read_monitor()?;
            }
            if ready.get(2) == Some(&true) {
                if let Some(task) = side.as_deref_mut() {
                    if task.ready()? {
                        deadline.progress();
                    }
                }
            }
            if ready[0] {
                while let Ok(frames) = self.dealer.recv_multipart(zmq::DONTWAIT) {
                    match Message::from_frames(&frames) {
                        Ok(m) if m.uuid() == uuid => return Ok(m),
                        // Answers to an earlier request: not ours to print.
                        Ok(_) | Err(_) => continue,
                    }
                }
            }
        }
    }

    fn read_monitor(&mut self) -> Result<()> {
        while let Some(event) = monitor::read(&self.monitor) {
            match event.event {
                SocketEvent::HandshakeSucceeded => self.handshake_done = true,
                SocketEvent::Connected => self.connected = true,
                SocketEvent::HandshakeFailedAuth(status) => {
                    let key = self.keys.as_ref().map(|k| k.keys.public_key.as_str()).unwrap_or("-");
                    bail!("{}", monitor::rejected_key_text(status, key));
                }
                SocketEvent::HandshakeFailedNoDetail | SocketEvent::HandshakeFailedProtocol(_) => {
                    self.handshake_failures += 1
                }
                _ => {}
            }
        }
        Ok(())
    }

    fn timeout_error(&self, waited: Duration) -> anyhow::Error {
        let error = self.timeout_error_here(waited);
        if self.skipped.is_empty() {
            return error;
        }
        anyhow!("{error}; no handshake with {} either", self.skipped.join(", "))
    }

    fn timeout_error_here(&self, waited: Duration) -> anyhow::Error {
        let secs = waited.as_secs_f64();
        match (&self.keys, self.handshake_done) {
            // Connected, and the server neither finished nor failed the
            // handshake: it is not reading (overloaded, out of descriptors).
            (Some(_), false) if self.connected && self.handshake_failures == 0 => anyhow!(
                "connected to {} but the server did not answer the CURVE handshake within {secs} s: it may be \
                 overloaded or out of file descriptors (see its log)",
                self.server
            ),
            (Some(keys), false) => {
                anyhow!("{} (waited {secs} s)", monitor::no_handshake_text(&self.server, &keys.path))
            }
            (None, false) if self.handshake_failures > 0 => {
                anyhow!("the handshake with {} failed: is the server using CURVE? (waited {secs} s)", self.server)
            }
            (None, false) => anyhow!("cannot reach the server at {} (waited {secs} s)", self.server),
            (_, true) => anyhow!("no answer from the server at {} within {secs} s", self.server),
        }
    }

    /// The keys, if they were generated for this run and must be saved.
    pub fn keys_mut(&mut self) -> Option<&mut ClientKeys> {
        self.keys.as_mut()
    }

    /// Sends a request the server runs itself and returns its response;
    /// a response carrying `custom.error` is an error.
    pub fn ask_server(
        &mut self,
        request: &Message,
        deadline: &mut Deadline,
        side: Option<&mut (dyn SideTask + '_)>,
    ) -> Result<Message> {
        self.send(request)?;
        let response = self.recv(request.uuid(), deadline, side)?;
        if let Some(error) = response.error() {
            return Err(self.refused(request, error));
        }
        Ok(response)
    }

    /// The error for a refusal: a key the server does not know is said the
    /// way a refused handshake is.
    fn refused(&self, request: &Message, error: &str) -> anyhow::Error {
        if error.starts_with(UNKNOWN_CLIENT) {
            let key = self.keys.as_ref().map(|k| k.keys.public_key.as_str()).unwrap_or("-");
            return anyhow!("{}", monitor::rejected_key_text(400, key));
        }
        anyhow!("the server refused {}: {error}", request.message_type())
    }

    /// Sends a request the server forwards to clients and returns once the
    /// server listed who will answer (the job exists): `--async`.
    pub fn start_job(
        &mut self,
        request: &Message,
        deadline: &mut Deadline,
        mut side: Option<&mut (dyn SideTask + '_)>,
    ) -> Result<Message> {
        self.send(request)?;
        loop {
            let m = self.recv(request.uuid(), deadline, side.as_deref_mut())?;
            if let Some(error) = m.error() {
                return Err(self.refused(request, error));
            }
            if m.is_client_response_list() {
                return Ok(m);
            }
        }
    }

    /// Sends a request the server forwards to clients. `on_list` gets the
    /// identities that will answer; `on_answer` gets each answer as it
    /// arrives and says whether it succeeded (an answer with `custom.error`
    /// is printed to stderr here and counts as failed).
    pub fn ask_clients(
        &mut self,
        request: &Message,
        deadline: &mut Deadline,
        mut side: Option<&mut (dyn SideTask + '_)>,
        on_list: impl FnOnce(&[String], &[Offline]),
        mut on_answer: impl FnMut(&Message) -> bool,
    ) -> Result<ClientAnswers> {
        self.send(request)?;
        let list = loop {
            let m = self.recv(request.uuid(), deadline, side.as_deref_mut())?;
            if let Some(error) = m.error() {
                return Err(self.refused(request, error));
            }
            if m.is_client_response_list() {
                break m;
            }
        };
        let listed = recipients::online(&list);
        let offline = recipients::offline(&list);
        on_list(&listed, &offline);
        let mut waiting: BTreeSet<String> = listed.into_iter().collect();
        let expected = waiting.len();
        let mut failed = Vec::new();
        let mut states = Vec::new();
        let kind = Kind::from_wire(request.message_type());
        while !waiting.is_empty() {
            let answer = match self.recv(request.uuid(), deadline, side.as_deref_mut()) {
                Ok(answer) => answer,
                // Out of time: the clients still waited for are named below.
                Err(_) if Instant::now() >= deadline.at => break,
                Err(e) => return Err(e),
            };
            if !waiting.remove(&answer.metadata.from) {
                continue;
            }
            if let Some(kind) = kind {
                states.push((answer.metadata.from.clone(), rollout::state_of(kind, &answer)));
            }
            if let Some(error) = answer.error() {
                if pantry_shared::commands::says_unsupported(error, request.message_type()) {
                    let unsupported = unsupported(request.message_type());
                    eprintln!("{}: {unsupported}: {error}", answer.metadata.from);
                } else {
                    eprintln!("{}: error: {error}", answer.metadata.from);
                }
                failed.push(answer.metadata.from.clone());
            } else if !on_answer(&answer) {
                failed.push(answer.metadata.from.clone());
            }
        }
        let missing: Vec<String> = waiting.into_iter().collect();
        Ok(ClientAnswers { expected, answered: expected - missing.len(), failed, missing, offline, states })
    }
}

/// What the admin says of a client that answered without a result: an
/// agent (an older or the original one) that does not run the command.
pub fn unsupported(message_type: &str) -> String {
    format!("does not support the command type {message_type} (an older or the original agent?)")
}

#[cfg(test)]
mod tests {
    #[test]
    fn unsupported_types_are_told_apart_from_failures() {
        let ours = pantry_shared::commands::unknown_type_error("web-1", "Exec");
        assert!(pantry_shared::commands::says_unsupported(&ours, "Exec"));
        assert!(pantry_shared::commands::says_unsupported("Unknown message type: Exec", "Exec"));
        assert!(!pantry_shared::commands::says_unsupported("exec is disabled on this client", "Exec"));
        assert!(!pantry_shared::commands::says_unsupported("unknown program", "Upload"));
    }
}
