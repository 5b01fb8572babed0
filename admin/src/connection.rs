//! The admin's connection to the server: one DEALER socket, watched by a
//! socket monitor so that a refused or impossible CURVE handshake is reported
//! at once and in plain words instead of as a silent timeout.

use std::collections::BTreeSet;
use std::time::Instant;

use anyhow::{anyhow, bail, Result};
use pantry_shared::keys::ClientKeys;
use pantry_shared::monitor::{self, SocketEvent};
use pantry_shared::security::SocketSecurity;
use pantry_shared::{BodyPart, Message};

pub struct Connection {
    dealer: zmq::Socket,
    monitor: zmq::Socket,
    server: String,
    keys: Option<ClientKeys>,
    handshake_done: bool,
    handshake_failures: u32,
    timeout_secs: f64,
    // Dropped last: sockets first.
    _ctx: zmq::Context,
}

/// How a command sent to clients ended.
pub struct ClientAnswers {
    pub expected: usize,
    pub answered: usize,
    pub failed: Vec<String>,
    pub missing: Vec<String>,
}

impl Connection {
    pub fn open(
        server: String,
        security: &SocketSecurity,
        keys: Option<ClientKeys>,
        timeout_secs: f64,
    ) -> Result<Self> {
        let ctx = zmq::Context::new();
        let dealer = security.socket(&ctx, zmq::DEALER)?;
        let monitor = monitor::monitor(&ctx, &dealer)?;
        dealer.connect(&server).map_err(|e| anyhow!("cannot connect to {server}: {e}"))?;
        Ok(Connection {
            dealer,
            monitor,
            server,
            keys,
            handshake_done: false,
            handshake_failures: 0,
            timeout_secs,
            _ctx: ctx,
        })
    }

    pub fn send(&self, message: &Message) -> Result<()> {
        self.dealer.send_multipart(message.to_frames(), 0)?;
        Ok(())
    }

    /// The next message for the request `uuid`, or an error that says why
    /// none came before `deadline`.
    pub fn recv(&mut self, uuid: &str, deadline: Instant) -> Result<Message> {
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(self.timeout_error());
            }
            let mut items = [self.dealer.as_poll_item(zmq::POLLIN), self.monitor.as_poll_item(zmq::POLLIN)];
            match zmq::poll(&mut items, left.as_millis().max(1) as i64) {
                Ok(_) | Err(zmq::Error::EINTR) => {}
                Err(e) => bail!("socket poll failed: {e}"),
            }
            let (message_ready, event_ready) = (items[0].is_readable(), items[1].is_readable());
            if event_ready {
                self.read_monitor()?;
            }
            if message_ready {
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

    fn timeout_error(&self) -> anyhow::Error {
        let secs = self.timeout_secs;
        match (&self.keys, self.handshake_done) {
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
    pub fn ask_server(&mut self, request: &Message, deadline: Instant) -> Result<Message> {
        self.send(request)?;
        let response = self.recv(request.uuid(), deadline)?;
        if let Some(error) = response.error() {
            bail!("the server refused {}: {error}", request.message_type());
        }
        Ok(response)
    }

    /// Sends a request the server forwards to clients. `on_answer` gets each
    /// client's answer as it arrives (an answer with `custom.error` counts as
    /// failed and is printed to stderr here).
    pub fn ask_clients(
        &mut self,
        request: &Message,
        deadline: Instant,
        mut on_answer: impl FnMut(&Message),
    ) -> Result<ClientAnswers> {
        self.send(request)?;
        let list = loop {
            let m = self.recv(request.uuid(), deadline)?;
            if let Some(error) = m.error() {
                bail!("the server refused {}: {error}", request.message_type());
            }
            if m.is_client_response_list() {
                break m;
            }
        };
        let mut waiting: BTreeSet<String> = list.body.iter().filter_map(BodyPart::as_text).map(str::to_owned).collect();
        let expected = waiting.len();
        let mut failed = Vec::new();
        while !waiting.is_empty() {
            let answer = match self.recv(request.uuid(), deadline) {
                Ok(answer) => answer,
                // Out of time: the clients still waited for are named below.
                Err(_) if Instant::now() >= deadline => break,
                Err(e) => return Err(e),
            };
            if !waiting.remove(&answer.metadata.from) {
                continue;
            }
            if let Some(error) = answer.error() {
                eprintln!("{}: error: {error}", answer.metadata.from);
                failed.push(answer.metadata.from.clone());
            } else {
                on_answer(&answer);
            }
        }
        let missing: Vec<String> = waiting.into_iter().collect();
        Ok(ClientAnswers { expected, answered: expected - missing.len(), failed, missing })
    }
}
