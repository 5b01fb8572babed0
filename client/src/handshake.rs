//! What the agent tells the operator about its connection to the server:
//! handshake failures at warn (rate-limited, libzmq retries on its own with
//! backoff), recovery at info.

use std::time::{Duration, Instant};

use pantry_shared::keys::ClientKeys;
use pantry_shared::monitor::{self, MonitorEvent, SocketEvent};
use slog::{info, warn, Logger};

/// The same warning at most this often.
const WARN_EVERY: Duration = Duration::from_secs(30);

pub struct HandshakeWatch {
    server: String,
    keys: Option<ClientKeys>,
    failing: bool,
    last_warning: Option<(String, Instant)>,
    suppressed: u64,
    log: Logger,
}

impl HandshakeWatch {
    pub fn new(server: String, keys: Option<ClientKeys>, log: Logger) -> Self {
        HandshakeWatch { server, keys, failing: false, last_warning: None, suppressed: 0, log }
    }

    pub fn observe(&mut self, event: &MonitorEvent) {
        match &event.event {
            SocketEvent::HandshakeSucceeded => {
                if std::mem::take(&mut self.failing) {
                    info!(self.log, "handshake with the server succeeded"; "server" => &self.server);
                } else {
                    info!(self.log, "connected to the server"; "server" => &self.server);
                }
                self.last_warning = None;
            }
            SocketEvent::HandshakeFailedAuth(status) => {
                let key = self.keys.as_ref().map(|k| k.keys.public_key.as_str()).unwrap_or("-");
                let text = monitor::rejected_key_text(*status, key);
                self.warn(text);
            }
            SocketEvent::HandshakeFailedNoDetail | SocketEvent::HandshakeFailedProtocol(_) => {
                let text = match &self.keys {
                    Some(keys) => monitor::no_handshake_text(&self.server, &keys.path),
                    None => format!("handshake with {} failed (is the server using CURVE?)", self.server),
                };
                self.warn(text);
            }
            SocketEvent::Disconnected => {
                if !self.failing {
                    info!(self.log, "disconnected from the server; reconnecting"; "server" => &self.server);
                }
            }
            _ => {}
        }
    }

    fn warn(&mut self, text: String) {
        self.failing = true;
        let repeat = matches!(&self.last_warning, Some((last, at)) if *last == text && at.elapsed() < WARN_EVERY);
        if repeat {
            self.suppressed += 1;
            return;
        }
        warn!(self.log, "{}", text; "server" => &self.server, "repeats_since_last_warning" => self.suppressed);
        self.suppressed = 0;
        self.last_warning = Some((text, Instant::now()));
    }
}
