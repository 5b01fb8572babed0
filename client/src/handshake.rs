//! What the agent tells the operator about its connection to the server:
//! handshake failures at warn (rate-limited), recovery at info; and the
//! backoff between attempts after a failed handshake.

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

    /// The agent moved to another server: what follows is about that one.
    pub fn set_server(&mut self, server: String) {
        self.server = server;
        self.failing = false;
        self.last_warning = None;
        self.suppressed = 0;
    }

    /// Logs what `event` means. Returns true when a handshake failed.
    pub fn observe(&mut self, event: &MonitorEvent) -> bool {
        match &event.event {
            SocketEvent::HandshakeSucceeded => {
                if std::mem::take(&mut self.failing) {
                    info!(self.log, "handshake with the server succeeded"; "server" => &self.server);
                } else {
                    info!(self.log, "connected to the server"; "server" => &self.server);
                }
                self.last_warning = None;
                false
            }
            SocketEvent::HandshakeFailedAuth(status) => {
                let key = self.keys.as_ref().map(|k| k.keys.public_key.as_str()).unwrap_or("-");
                let text = monitor::rejected_key_text(*status, key);
                self.warn(text);
                true
            }
            SocketEvent::HandshakeFailedNoDetail | SocketEvent::HandshakeFailedProtocol(_) => {
                let text = match &self.keys {
                    Some(keys) => monitor::no_handshake_text(&self.server, &keys.path),
                    None => format!("handshake with {} failed (is the server using CURVE?)", self.server),
                };
                self.warn(text);
                true
            }
            SocketEvent::Disconnected => {
                if !self.failing {
                    info!(self.log, "disconnected from the server; reconnecting"; "server" => &self.server);
                }
                false
            }
            _ => false,
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

/// Delay before the next connection attempt after a failed handshake:
/// libzmq itself would retry about 8 times a second forever (its reconnect
/// backoff does not apply once TCP connected), or never after a ZAP refusal.
pub struct Backoff {
    delay: Duration,
}

impl Default for Backoff {
    fn default() -> Self {
        Backoff::new()
    }
}

impl Backoff {
    const FIRST: Duration = Duration::from_secs(1);
    const MAX: Duration = Duration::from_secs(60);

    pub fn new() -> Self {
        Backoff { delay: Self::FIRST }
    }

    /// The delay to wait now; the next one doubles, up to a minute.
    pub fn next_delay(&mut self) -> Duration {
        let now = self.delay;
        self.delay = (self.delay * 2).min(Self::MAX);
        now
    }

    pub fn reset(&mut self) {
        self.delay = Self::FIRST;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_up_to_a_minute() {
        let mut b = Backoff::new();
        let delays: Vec<u64> = (0..9).map(|_| b.next_delay().as_secs()).collect();
        assert_eq!(delays, [1, 2, 4, 8, 16, 32, 60, 60, 60]);
        b.reset();
        assert_eq!(b.next_delay().as_secs(), 1);
    }
}
