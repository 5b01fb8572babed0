//! What a simulated agent sends and when it moves to another server, from
//! what its sockets saw: the part of the real agent's protocol the bench
//! imitates (registration, heartbeat, the SUB connected once a
//! registration is answered, failover). No sockets and no clock of its
//! own (`now` is given), so that a sans-IO core of the real agent can take
//! its place.

use std::time::{Duration, Instant};

use pantry_shared::commands::register_client;
use pantry_shared::filter::ClientFilter;
use pantry_shared::monitor::SocketEvent;
use pantry_shared::Message;

/// Heartbeat intervals a failing-over agent waits for a pending handshake
/// before it moves on (the real agent's `HANDSHAKE_GRACE`).
const HANDSHAKE_GRACE: u32 = 3;

/// One agent's protocol state.
pub struct Session {
    filter: ClientFilter,
    /// `heartbeat_interval` of its registrations, whole seconds.
    heartbeat_s: Option<u64>,
    /// The SUB connects only once a registration is answered (CURVE with
    /// failover, as the real agent); until then registrations ask for an
    /// answer.
    sub_waits: bool,
    subscribed: bool,
    /// With failover: how long the DEALER may be without a connection
    /// before the agent moves on.
    failover_after: Option<Duration>,
    /// The servers in the order it moves along, as the real agent's
    /// (`pantry_shared::config::failover_order`): its first one first, the
    /// others rotated by its identity.
    order: Vec<usize>,
    /// The server it is on (an index into the pool's servers).
    server: usize,
    /// Since when the DEALER has had no connection (since a disconnection,
    /// or since a move until the handshake).
    down_since: Option<Instant>,
    /// A TCP connection is up and its handshake pending.
    handshaking: bool,
}

impl Session {
    /// An agent described by `filter`, on server `first` of `servers`.
    pub fn new(
        filter: ClientFilter,
        heartbeat: Option<Duration>,
        sub_waits: bool,
        failover_after: Option<Duration>,
        servers: usize,
        first: usize,
    ) -> Session {
        let rotated: Vec<usize> = (0..servers).map(|k| (first + k) % servers).collect();
        let order = pantry_shared::config::failover_order(&rotated, filter.identity.as_deref().unwrap_or_default());
        Session {
            filter,
            heartbeat_s: heartbeat.map(|h| h.as_secs().max(1)),
            sub_waits,
            subscribed: !sub_waits,
            failover_after,
            order,
            server: first,
            down_since: None,
            handshaking: false,
        }
    }

    /// Whether it registers on connecting (a failing-over agent registers
    /// at its handshake instead).
    pub fn registers_at_once(&self) -> bool {
        self.failover_after.is_none()
    }

    /// A registration (the heartbeat's, a reconnection's, the first).
    pub fn registration(&self) -> Message {
        let mut request = match self.heartbeat_s {
            Some(seconds) => register_client::request_every(&self.filter, seconds),
            None => register_client::request(&self.filter),
        };
        request.metadata.requires_response = !self.subscribed;
        request
    }

    /// Its sockets are being connected to its server: whether the SUB
    /// connects now.
    pub fn connecting(&mut self) -> bool {
        self.subscribed = !self.sub_waits;
        self.subscribed
    }

    /// What its DEALER's monitor saw: whether to register now (a handshake
    /// completed: a restarted or new server may not know it).
    pub fn on_monitor(&mut self, event: SocketEvent, now: Instant) -> bool {
        self.handshaking = event == SocketEvent::Connected;
        match event {
            SocketEvent::HandshakeSucceeded => {
                self.down_since = None;
                true
            }
            SocketEvent::Disconnected => {
                self.down_since.get_or_insert(now);
                false
            }
            _ => false,
        }
    }

    /// Whether its SUB still waits for an answered registration.
    pub fn waiting(&self) -> bool {
        !self.subscribed
    }

    /// Whether `answer` accepts a registration the SUB waits for: the
    /// caller connects it, then calls [`Session::subscribed`].
    pub fn accepted(&self, answer: &Message) -> bool {
        !self.subscribed && answer.message_type() == register_client::TYPE && answer.error().is_none()
    }

    pub fn subscribed(&mut self) {
        self.subscribed = true;
    }

    /// The server to move to, once its DEALER has been without a
    /// connection for long enough (longer while a handshake is pending).
    pub fn move_due(&self, now: Instant) -> Option<usize> {
        let after = self.failover_after?;
        let wait = if self.handshaking { after * HANDSHAKE_GRACE } else { after };
        let since = self.down_since?;
        (now >= since + wait).then(|| {
            let at = self.order.iter().position(|&s| s == self.server).unwrap_or(0);
            self.order[(at + 1) % self.order.len()]
        })
    }

    /// Its sockets were closed for a move.
    pub fn closed(&mut self) {
        self.subscribed = false;
    }

    /// Its new sockets are for server `to`: down until their handshake.
    pub fn moved(&mut self, to: usize, now: Instant) {
        self.server = to;
        self.down_since = Some(now);
        self.handshaking = false;
    }

    pub fn server(&self) -> usize {
        self.server
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn agent(failover: bool) -> Session {
        let filter = ClientFilter { identity: Some("agent-00001".into()), ..Default::default() };
        let after = failover.then_some(Duration::from_secs(1));
        Session::new(filter, Some(Duration::from_secs(5)), failover, after, 3, 1)
    }

    #[test]
    fn a_failing_over_agent_registers_at_its_handshake_and_moves_after_a_heartbeat() {
        let mut s = agent(true);
        let t0 = Instant::now();
        assert!(!s.registers_at_once() && !s.connecting() && s.waiting());
        assert!(s.registration().metadata.requires_response, "asks for an answer until subscribed");
        assert!(s.on_monitor(SocketEvent::HandshakeSucceeded, t0));
        assert!(s.accepted(&s.registration().response()));
        s.subscribed();
        assert!(!s.registration().metadata.requires_response);
        assert!(!s.on_monitor(SocketEvent::Disconnected, t0));
        assert_eq!(s.move_due(t0 + Duration::from_millis(500)), None);
        let to = s.move_due(t0 + Duration::from_secs(1)).expect("a move after one heartbeat interval");
        assert_ne!(to, 1);
        s.closed();
        s.moved(to, t0);
        assert!(!s.on_monitor(SocketEvent::Connected, t0));
        assert_eq!(s.move_due(t0 + Duration::from_secs(2)), None, "a pending handshake gets three intervals");
        assert!(s.move_due(t0 + Duration::from_secs(3)).is_some());
    }

    #[test]
    fn an_agent_without_failover_never_moves() {
        let mut s = agent(false);
        assert!(s.registers_at_once() && s.connecting() && !s.waiting());
        s.on_monitor(SocketEvent::Disconnected, Instant::now());
        assert_eq!(s.move_due(Instant::now() + Duration::from_secs(3600)), None);
    }
}
