//! What a simulated agent sends and when it connects again or moves to
//! another server, from what its socket saw: the part of the real agent's
//! protocol the bench imitates (registration asking for its requests on
//! its DEALER, heartbeat, coming back after a random delay when its
//! connection is lost, failover). No sockets and no clock or randomness of
//! its own (`now` and draws are given), so that a sans-IO core of the real
//! agent can take its place.

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
    /// Its latest registration on this connection was accepted, and the
    /// server sends its requests over its DEALER.
    registered: bool,
    /// With failover: how long the DEALER may be without a connection
    /// before the agent moves on.
    failover_after: Option<Duration>,
    /// On losing its connection the agent disconnects and connects again
    /// after a random delay below this (the real agent's
    /// `reconnect_spread`), rather than at once by libzmq's reconnection.
    reconnect_spread: Option<Duration>,
    /// When it connects again, after a lost connection.
    reconnect_at: Option<Instant>,
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

/// What the agent does after its DEALER's monitor spoke.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    Nothing,
    /// A handshake completed (a restarted or new server may not know it):
    /// register now.
    Register,
    /// Its connection was lost: disconnect the DEALER (no reconnection by
    /// libzmq) until [`Session::reconnect_due`].
    Disconnect,
}

/// What the server said to a registration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Registration {
    Accepted,
    /// Refused, with the server's reason, or accepted without
    /// `requests_on_dealer` (a server that would publish to a SUB this agent
    /// does not have).
    Refused(String),
}

impl Session {
    /// An agent described by `filter`, on server `first` of `servers`.
    pub fn new(
        filter: ClientFilter,
        heartbeat: Option<Duration>,
        failover_after: Option<Duration>,
        reconnect_spread: Option<Duration>,
        servers: usize,
        first: usize,
    ) -> Session {
        let rotated: Vec<usize> = (0..servers).map(|k| (first + k) % servers).collect();
        let order = pantry_shared::config::failover_order(&rotated, filter.identity.as_deref().unwrap_or_default());
        Session {
            filter,
            heartbeat_s: heartbeat.map(|h| h.as_secs().max(1)),
            registered: false,
            failover_after,
            reconnect_spread,
            reconnect_at: None,
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

    /// A registration (the heartbeat's, a reconnection's, the first): it
    /// asks for its requests on the DEALER, and for an answer, which says
    /// whether the server will send them there.
    pub fn registration(&self) -> Message {
        let mut request = match self.heartbeat_s {
            Some(seconds) => register_client::request_every(&self.filter, seconds),
            None => register_client::request(&self.filter),
        };
        register_client::ask_requests_on_dealer(&mut request);
        request.metadata.requires_response = true;
        request
    }

    /// The server's answer to a registration.
    pub fn on_answer(&mut self, answer: &Message) -> Registration {
        let said = match answer.error() {
            Some(why) => Registration::Refused(why.to_owned()),
            None if register_client::sends_requests_on_dealer(answer) => Registration::Accepted,
            None => Registration::Refused("accepted without `requests_on_dealer`".into()),
        };
        self.registered = said == Registration::Accepted;
        said
    }

    /// Whether the server has accepted it on this connection.
    pub fn registered(&self) -> bool {
        self.registered
    }

    /// What its DEALER's monitor saw; `draw` (in [0, 1)) places a
    /// reconnection within the spread.
    pub fn on_monitor(&mut self, event: SocketEvent, now: Instant, draw: f64) -> Step {
        self.handshaking = event == SocketEvent::Connected;
        match event {
            SocketEvent::HandshakeSucceeded => {
                self.down_since = None;
                Step::Register
            }
            SocketEvent::Disconnected => {
                self.down_since.get_or_insert(now);
                self.registered = false;
                match self.reconnect_spread {
                    Some(spread) if self.reconnect_at.is_none() => {
                        self.reconnect_at = Some(now + spread.mul_f64(draw.clamp(0.0, 1.0)));
                        Step::Disconnect
                    }
                    _ => Step::Nothing,
                }
            }
            _ => Step::Nothing,
        }
    }

    /// Whether it connects again now (after [`Step::Disconnect`]).
    pub fn reconnect_due(&mut self, now: Instant) -> bool {
        let due = self.reconnect_at.is_some_and(|at| now >= at);
        if due {
            self.reconnect_at = None;
        }
        due
    }

    /// The server to move to, once its DEALER has been without a
    /// connection for long enough (longer while a handshake is pending);
    /// not while it waits to connect again (the bench's agents fail over or
    /// spread their reconnections, never both).
    pub fn move_due(&self, now: Instant) -> Option<usize> {
        let after = self.failover_after?;
        if self.reconnect_at.is_some() {
            return None;
        }
        let wait = if self.handshaking { after * HANDSHAKE_GRACE } else { after };
        let since = self.down_since?;
        (now >= since + wait).then(|| {
            let at = self.order.iter().position(|&s| s == self.server).unwrap_or(0);
            self.order[(at + 1) % self.order.len()]
        })
    }

    /// Its socket was closed for a move.
    pub fn closed(&mut self) {
        self.registered = false;
    }

    /// Its new socket is for server `to`: down until its handshake.
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

    fn agent(failover: bool, spread: Option<Duration>) -> Session {
        let filter = ClientFilter { identity: Some("agent-00001".into()), ..Default::default() };
        let after = failover.then_some(Duration::from_secs(1));
        Session::new(filter, Some(Duration::from_secs(5)), after, spread, 3, 1)
    }

    fn accepted(s: &Session) -> Message {
        register_client::respond(&Message::from_frames(&s.registration().to_frames()).unwrap())
    }

    #[test]
    fn a_registration_asks_for_its_requests_on_the_dealer_and_an_answer() {
        let mut s = agent(false, None);
        let request = s.registration();
        assert!(request.metadata.requires_response && register_client::wants_requests_on_dealer(&request));
        assert_eq!(register_client::parse(&request).unwrap().heartbeat_interval, Some(5));
        assert_eq!(s.on_answer(&accepted(&s)), Registration::Accepted);
        assert!(s.registered());
        let mut refused = s.registration().response();
        refused.set_error("identity bound to another key");
        assert_eq!(s.on_answer(&refused), Registration::Refused("identity bound to another key".into()));
        assert!(!s.registered());
        let mut older = s.registration().response();
        older.metadata.custom.remove(register_client::REQUESTS_ON_DEALER_FIELD);
        assert!(matches!(s.on_answer(&older), Registration::Refused(_)), "no field: it would publish to a SUB");
    }

    #[test]
    fn a_lost_connection_comes_back_within_the_spread() {
        let mut s = agent(false, Some(Duration::from_secs(10)));
        let t0 = Instant::now();
        assert_eq!(s.on_monitor(SocketEvent::HandshakeSucceeded, t0, 0.5), Step::Register);
        s.on_answer(&accepted(&s));
        assert_eq!(s.on_monitor(SocketEvent::Disconnected, t0, 0.25), Step::Disconnect);
        assert!(!s.registered(), "a new connection registers again");
        assert_eq!(s.on_monitor(SocketEvent::Disconnected, t0, 0.9), Step::Nothing, "already disconnected");
        assert!(!s.reconnect_due(t0 + Duration::from_millis(2400)));
        assert!(s.reconnect_due(t0 + Duration::from_millis(2500)));
        assert!(!s.reconnect_due(t0 + Duration::from_secs(20)), "once");
        let mut plain = agent(false, None);
        assert_eq!(plain.on_monitor(SocketEvent::Disconnected, t0, 0.5), Step::Nothing, "libzmq reconnects");
    }

    #[test]
    fn a_failing_over_agent_registers_at_its_handshake_and_moves_after_a_heartbeat() {
        let mut s = agent(true, None);
        let t0 = Instant::now();
        assert!(!s.registers_at_once());
        assert_eq!(s.on_monitor(SocketEvent::HandshakeSucceeded, t0, 0.0), Step::Register);
        assert_eq!(s.on_monitor(SocketEvent::Disconnected, t0, 0.0), Step::Nothing);
        assert_eq!(s.move_due(t0 + Duration::from_millis(500)), None);
        let to = s.move_due(t0 + Duration::from_secs(1)).expect("a move after one heartbeat interval");
        assert_ne!(to, 1);
        s.closed();
        s.moved(to, t0);
        assert_eq!(s.on_monitor(SocketEvent::Connected, t0, 0.0), Step::Nothing);
        assert_eq!(s.move_due(t0 + Duration::from_secs(2)), None, "a pending handshake gets three intervals");
        assert!(s.move_due(t0 + Duration::from_secs(3)).is_some());
    }

    #[test]
    fn an_agent_without_failover_never_moves() {
        let mut s = agent(false, None);
        assert!(s.registers_at_once());
        s.on_monitor(SocketEvent::Disconnected, Instant::now(), 0.0);
        assert_eq!(s.move_due(Instant::now() + Duration::from_secs(3600)), None);
    }
}
