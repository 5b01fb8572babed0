//! The agent's loop: one thread owns the DEALER (registrations, requests
//! and answers), its monitor and the signal pipes, and blocks in
//! `zmq::poll` until one of them is ready or the next registration is due.
//! Long commands run on worker threads and hand their answers back through
//! an inproc PULL, so only this thread touches the DEALER.
//!
//! One connection: the agent registers over its DEALER as soon as the
//! handshake is done, asking for its requests on that connection
//! (`requests_on_dealer`); the server's answer says it will, and from then
//! on every request for the agent comes over the DEALER. A server older
//! than that does not say so: the agent then opens a SUB as agents did
//! before (exact topics, or bare ones from an even older server; under
//! null security it registers again once the SUB is up, so that it listens
//! before the server counts it online). It registers again on every
//! reconnection and every `heartbeat_interval`. Each registration asks for
//! an answer: a refusal (identity bound to another key, a name that is not
//! allowed) is logged at warn with the server's reason and retried with a
//! backoff until the operator fixes it.
//!
//! When its connection to the server is lost (a server restart), the agent
//! connects again only after a random delay up to `reconnect_spread`, so
//! that a fleet's handshakes are spread over that time instead of all
//! landing in the same second.
//!
//! With several hosts in `networking.server_host` (all serving the same
//! ports and key store), the agent talks to one at a time, the first one
//! first, and moves to the next (wrapping) when the DEALER's connection is
//! down for a whole heartbeat interval (three while a TCP connection is up
//! and its handshake pending: the server is there, only busy), or when two
//! registrations in a row went unanswered. The hosts after the first are
//! taken in an order of the agent's own (rotated by a hash of its
//! identity), so that when a server dies its agents spread over the others
//! instead of all landing on the next one. Moving replaces the sockets and
//! their monitors, then connects and registers as at start. With one host
//! it never moves.
//!
//! An agent whose key the server does not know (it made its key pair at its
//! first start, with only the server's public key configured) enrolls
//! itself: it asks on the DEALER, logs at warn that it waits to be
//! accepted, asks again with a backoff, and once an admin has run
//! `client:accept` it registers, without a restart.

use std::os::fd::AsRawFd;
use std::os::unix::net::UnixStream;
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result};
use pantry_shared::commands::enroll::{self, EnrollRequest, Enrolled};
use pantry_shared::commands::{facts, register_client, trust};

use crate::work::{self, upload, ClientContext};
use pantry_shared::config::{failover_order, Config, Networking};
use pantry_shared::filter::{TopicForm, BROADCAST_TOPIC};
use pantry_shared::keys::ClientKeys;
use pantry_shared::monitor::{self, SocketEvent};
use pantry_shared::security::SocketSecurity;
use pantry_shared::Message;
use slog::{debug, info, warn, Logger};

use crate::facts_report::FactsKeeper;
use crate::handshake::{Backoff, HandshakeWatch};
use crate::trust::Trust;

/// Signals arrive as bytes on pipes the main loop polls: one for stopping
/// (SIGINT, SIGTERM), one for reloading (SIGHUP).
pub struct Signals {
    stop: UnixStream,
    reload: UnixStream,
}

impl Signals {
    pub fn install() -> Result<Signals> {
        let (stop, stop_write) = UnixStream::pair()?;
        let (reload, reload_write) = UnixStream::pair()?;
        for sig in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
            signal_hook::low_level::pipe::register(sig, stop_write.try_clone()?)?;
        }
        signal_hook::low_level::pipe::register(signal_hook::consts::SIGHUP, reload_write)?;
        stop.set_nonblocking(true)?;
        reload.set_nonblocking(true)?;
        Ok(Signals { stop, reload })
    }

    /// Empties the reload pipe; true if a SIGHUP came.
    fn take_reload(&self) -> bool {
        use std::io::Read;
        let mut buf = [0u8; 64];
        let mut got = false;
        while let Ok(n) = (&self.reload).read(&mut buf) {
            if n == 0 {
                break;
            }
            got = true;
        }
        got
    }
}

/// Where the last registration stands.
enum Registration {
    /// Not yet answered (or not yet sent).
    Waiting,
    Accepted,
    /// Refused: sent again at `retry_at`.
    Refused {
        reason: String,
        retry_at: Instant,
    },
}

pub struct Agent {
    me: ClientContext,
    heartbeat: Duration,
    /// `networking.server_host`: the servers to fail over between.
    hosts: Vec<String>,
    /// The one in `hosts` the sockets are connected to.
    current: usize,
    pub_sub_port: u16,
    receive_port: u16,
    file_service_port: u16,
    /// For the sockets made when moving to another server.
    security: SocketSecurity,
    /// Since when the DEALER has had no working connection (from the start
    /// or a move until its first handshake, or since it was lost).
    down_since: Option<Instant>,
    /// A TCP connection is up and its handshake pending (the server is
    /// there): the move waits longer.
    handshaking: bool,
    /// Registrations sent since the server last answered one.
    unanswered: u32,
    dealer: zmq::Socket,
    dealer_monitor: zmq::Socket,
    /// Only against a server that does not send requests on the DEALER.
    subscriber: Option<Subscriber>,
    publish: String,
    /// `client.reconnect_spread`.
    spread: Duration,
    /// After a lost connection: when to connect again.
    spread_until: Option<Instant>,
    /// The DEALER's connection is up (its handshake done): a close is a
    /// lost connection, not a failed attempt.
    connected: bool,
    receive: String,
    watch: HandshakeWatch,
    backoff: Backoff,
    /// Set while disconnected after a failed handshake: when to try again.
    reconnect_at: Option<Instant>,
    registration: Registration,
    /// The backoff between refused registrations.
    refusals: Backoff,
    /// Set while the server does not know our key: when to ask again.
    enrolling: Option<Instant>,
    enroll_backoff: Backoff,
    /// Whether the operator was told the agent waits to be accepted.
    told_waiting: bool,
    /// `client.identity`, when client.yml sets it.
    configured_identity: Option<String>,
    /// Our keys (CURVE), to record the name we are accepted under.
    keys: Option<ClientKeys>,
    log: Logger,
    /// Answers from commands run on worker threads.
    results: zmq::Socket,
    /// Our facts: gathered, and told the server.
    facts: FactsKeeper,
    /// The admins whose signed requests run here.
    trust: Trust,
    ctx: zmq::Context,
}

const RESULTS_ENDPOINT: &str = "inproc://pantry-agent-results";

/// Messages the agent's side of each socket holds: answers for the server,
/// requests from it.
const AGENT_QUEUE: i32 = 10_000;

/// The agent loop's poll items, in order. Without a SUB its two items
/// are invalid descriptors, which poll(2) skips.
#[derive(Debug, Clone, Copy)]
enum Slot {
    Dealer,
    DealerMonitor,
    Stop,
    Results,
    Reload,
    Sub,
    SubMonitor,
}

const SLOTS: usize = Slot::SubMonitor as usize + 1;

/// Heartbeat intervals a move waits for a pending handshake.
const HANDSHAKE_GRACE: u32 = 3;

/// What the SUB subscribes to: each of the agent's streams, and the
/// broadcast topic, in `form`.
fn subscriptions(me: &ClientContext, form: TopicForm) -> Vec<Vec<u8>> {
    me.filter.streams().iter().map(String::as_str).chain([BROADCAST_TOPIC]).map(|s| form.topic(s)).collect()
}

/// Back off up to 10 s between reconnects to a server that is down.
fn set_reconnect(socket: &zmq::Socket) -> zmq::Result<()> {
    socket.set_reconnect_ivl(100)?;
    socket.set_reconnect_ivl_max(10_000)
}

/// The DEALER to one server and its monitor, not connected yet.
fn open_dealer(ctx: &zmq::Context, security: &SocketSecurity) -> Result<(zmq::Socket, zmq::Socket)> {
    let dealer = security.socket(ctx, zmq::DEALER)?;
    // A burst waits on the agent's side while it works through it: the
    // common 1,000 messages dropped the rest of a burst of answers (sends
    // are DONTWAIT) and, on the receiving side, made the server hold the
    // rest of a burst of requests. libzmq's I/O thread keeps the
    // connection drained even while the agent is busy. The server's own
    // caps bound what it sends.
    dealer.set_sndhwm(AGENT_QUEUE)?;
    dealer.set_rcvhwm(AGENT_QUEUE)?;
    set_reconnect(&dealer)?;
    let monitor = monitor::monitor(ctx, &dealer, monitor::CLIENT_EVENTS)?;
    Ok((dealer, monitor))
}

/// The SUB of an agent whose server does not send requests on the DEALER
/// (a version before this agent's).
struct Subscriber {
    sub: zmq::Socket,
    monitor: zmq::Socket,
    /// Exact, unless the server is older still and grants only the bare
    /// form.
    form: TopicForm,
    /// Its connection is up, so our subscriptions reached the server's
    /// PUB: under null security the agent registers again then, so that
    /// the server does not publish to it before it listens.
    listening: bool,
    /// Connected (or connecting).
    connected: bool,
}

impl Subscriber {
    fn open(ctx: &zmq::Context, security: &SocketSecurity, me: &ClientContext, form: TopicForm) -> Result<Subscriber> {
        let sub = security.socket(ctx, zmq::SUB)?;
        for topic in subscriptions(me, form) {
            sub.set_subscribe(&topic)?;
        }
        sub.set_rcvhwm(AGENT_QUEUE)?;
        set_reconnect(&sub)?;
        let monitor = monitor::monitor(ctx, &sub, monitor::CLIENT_EVENTS)?;
        Ok(Subscriber { sub, monitor, form, listening: false, connected: false })
    }

    fn connect(&mut self, endpoint: &str, log: &Logger) {
        if self.connected {
            return;
        }
        match self.sub.connect(endpoint) {
            Ok(()) => self.connected = true,
            Err(e) => warn!(log, "cannot connect to the server's PUB socket"; "error" => %e),
        }
    }

    fn disconnect(&mut self, endpoint: &str) {
        if std::mem::take(&mut self.connected) {
            let _ = self.sub.disconnect(endpoint);
        }
        self.listening = false;
    }
}

/// A random delay in `[0, spread)`.
fn random_delay(spread: Duration) -> Duration {
    // A v4 uuid is 122 random bits: the top 53 make an f64 in [0, 1).
    let bits = (uuid::Uuid::new_v4().as_u128() >> 75) as u64;
    spread.mul_f64(bits as f64 / (1u64 << 53) as f64)
}

impl Agent {
    pub fn connect(
        config: &Config,
        me: pantry_shared::filter::ClientFilter,
        security: &SocketSecurity,
        keys: Option<ClientKeys>,
        log: Logger,
    ) -> Result<Agent> {
        let net = &config.networking;
        let ctx = zmq::Context::new();
        let file_service = upload::FileService {
            ctx: ctx.clone(),
            security: security.clone(),
            endpoint: net.endpoint(net.file_service_port),
        };
        let me = ClientContext {
            filter: me,
            allow_exec: config.client.allow_exec,
            file_service: Some(file_service),
            running: Default::default(),
        };

        let (dealer, dealer_monitor) = open_dealer(&ctx, security)?;
        let results = ctx.socket(zmq::PULL)?;
        results.set_linger(0)?;
        results.bind(RESULTS_ENDPOINT)?;
        let (receive, publish) = (net.endpoint(net.receive_port), net.endpoint(net.pub_sub_port));
        // A key made just now is unknown to the server: enroll first.
        let enrolling = keys.as_ref().is_some_and(|k| k.generated).then(Instant::now);
        dealer.connect(&receive).with_context(|| format!("cannot connect to {receive}"))?;
        info!(log, "pantry-client started";
            "version" => pantry_shared::VERSION, "identity" => me.identity(), "server" => &receive,
            "streams" => me.filter.streams().join(" "), "security" => net.security_name());
        let watch = HandshakeWatch::new(receive.clone(), keys.clone(), log.clone());
        let trust = Trust::load(
            &pantry_shared::keys::curve_dir(config.root_dir()),
            keys.as_ref().and_then(|k| k.trusted_admins.clone()),
            config.client.require_signed,
            log.new(slog::o!()),
        )?;
        let hosts = failover_order(net.hosts(), me.identity());
        Ok(Agent {
            me,
            heartbeat: Duration::from_secs(config.client.heartbeat_interval),
            hosts,
            current: 0,
            pub_sub_port: net.pub_sub_port,
            receive_port: net.receive_port,
            file_service_port: net.file_service_port,
            security: security.clone(),
            down_since: Some(Instant::now()),
            handshaking: false,
            unanswered: 0,
            dealer,
            dealer_monitor,
            subscriber: None,
            publish,
            spread: config.client.reconnect_spread.0,
            spread_until: None,
            connected: false,
            receive,
            watch,
            backoff: Backoff::new(),
            reconnect_at: None,
            registration: Registration::Waiting,
            refusals: Backoff::new(),
            enrolling,
            enroll_backoff: Backoff::new(),
            told_waiting: false,
            configured_identity: config.client.identity.clone(),
            keys,
            trust,
            facts: FactsKeeper::new(
                config.client.facts_dir.clone(),
                config.client.facts_interval.0,
                log.new(slog::o!()),
            ),
            log,
            results,
            ctx,
        })
    }

    pub fn run(mut self, signals: &Signals, reload: impl Fn()) -> Result<()> {
        // The first registration waits for the DEALER's handshake (or,
        // failing that, the first heartbeat).
        let mut next_heartbeat = Instant::now() + self.heartbeat;
        loop {
            let mut wake = self.reconnect_at.map_or(next_heartbeat, |at| at.min(next_heartbeat));
            for at in [self.spread_until, self.enrolling, self.move_due()].into_iter().flatten() {
                wake = wake.min(at);
            }
            if let Registration::Refused { retry_at, .. } = &self.registration {
                wake = wake.min(*retry_at);
            }
            if let Some(soon) = self.facts.wake_within() {
                wake = wake.min(Instant::now() + soon);
            }
            let wait = wake.saturating_duration_since(Instant::now());
            let none = || zmq::PollItem::from_fd(-1, zmq::PollEvents::empty());
            let (sub, sub_monitor) = match &self.subscriber {
                Some(s) => (s.sub.as_poll_item(zmq::POLLIN), s.monitor.as_poll_item(zmq::POLLIN)),
                None => (none(), none()),
            };
            // In the order of [`Slot`].
            let mut items: [zmq::PollItem; SLOTS] = [
                self.dealer.as_poll_item(zmq::POLLIN),
                self.dealer_monitor.as_poll_item(zmq::POLLIN),
                zmq::PollItem::from_fd(signals.stop.as_raw_fd(), zmq::POLLIN),
                self.results.as_poll_item(zmq::POLLIN),
                zmq::PollItem::from_fd(signals.reload.as_raw_fd(), zmq::POLLIN),
                sub,
                sub_monitor,
            ];
            match zmq::poll(&mut items, wait.as_millis().min(i64::MAX as u128) as i64) {
                Ok(_) | Err(zmq::Error::EINTR) => {}
                Err(e) => return Err(e).context("socket poll failed"),
            }
            let ready = items.map(|i| i.is_readable());
            let is = |slot: Slot| ready[slot as usize];
            if is(Slot::Stop) {
                info!(self.log, "shutting down"; "identity" => self.me.identity());
                return Ok(());
            }
            if is(Slot::Reload) && signals.take_reload() {
                reload();
            }
            if is(Slot::Sub) {
                self.drain_subscriber();
            }
            if is(Slot::Dealer) {
                self.drain_dealer();
            }
            if self.facts.poll() && matches!(self.registration, Registration::Accepted) {
                self.send_facts();
            }
            if is(Slot::DealerMonitor) && self.dealer_events() {
                next_heartbeat = Instant::now() + self.heartbeat;
            }
            if is(Slot::SubMonitor) && self.subscriber_events() {
                next_heartbeat = Instant::now() + self.heartbeat;
            }
            if is(Slot::Results) {
                while let Ok(frames) = self.results.recv_multipart(zmq::DONTWAIT) {
                    if let Err(e) = self.dealer.send_multipart(frames, zmq::DONTWAIT) {
                        warn!(self.log, "cannot send an answer to the server"; "error" => %e);
                    }
                }
            }
            if self.reconnect_at.is_some_and(|at| Instant::now() >= at) {
                self.reconnect_at = None;
                self.connect_again()?;
            }
            if self.spread_until.is_some_and(|at| Instant::now() >= at) {
                self.spread_until = None;
                // A move waits a heartbeat interval from this attempt.
                self.down_since = Some(Instant::now());
                self.connect_again()?;
            }
            if self.move_due().is_some_and(|at| Instant::now() >= at) {
                self.move_to_next_server("no connection for a heartbeat interval");
                next_heartbeat = Instant::now() + self.heartbeat;
                continue;
            }
            if self.enrolling.is_some_and(|at| Instant::now() >= at) {
                self.ask_to_enroll();
                continue;
            }
            let retry_due =
                matches!(&self.registration, Registration::Refused { retry_at, .. } if Instant::now() >= *retry_at);
            if self.enrolling.is_none() && (retry_due || Instant::now() >= next_heartbeat) {
                if Instant::now() >= next_heartbeat && self.unanswered >= 2 && self.hosts.len() > 1 {
                    self.move_to_next_server("2 registrations unanswered");
                    next_heartbeat = Instant::now() + self.heartbeat;
                    continue;
                }
                self.facts.heartbeat();
                self.register();
                next_heartbeat = Instant::now() + self.heartbeat;
            }
        }
    }

    /// The DEALER's connection events. True when the agent registered (a
    /// new connection: a restarted server may have lost us).
    fn dealer_events(&mut self) -> bool {
        let mut registered = false;
        while let Some(event) = monitor::read(&self.dealer_monitor) {
            let reconnected = event.event == SocketEvent::HandshakeSucceeded;
            self.handshaking = event.event == SocketEvent::Connected;
            if reconnected {
                self.down_since = None;
            } else if event.event == SocketEvent::Disconnected {
                self.down_since.get_or_insert_with(Instant::now);
                if std::mem::take(&mut self.connected) {
                    self.lost_connection();
                }
            }
            if self.watch.observe(&event) {
                self.pause_after_failed_handshake();
            }
            if reconnected {
                self.connected = true;
                self.backoff.reset();
                self.facts.reconnected();
                if self.enrolling.is_none() {
                    self.register();
                    registered = true;
                }
            }
        }
        registered
    }

    /// The SUB's connection events (an older server). True when the agent
    /// registered: its subscriptions reached the server.
    fn subscriber_events(&mut self) -> bool {
        let Some(subscriber) = &mut self.subscriber else { return false };
        let mut up = false;
        while let Some(event) = monitor::read(&subscriber.monitor) {
            match event.event {
                SocketEvent::HandshakeSucceeded => {
                    subscriber.listening = true;
                    up = true;
                }
                SocketEvent::Disconnected => subscriber.listening = false,
                _ => {}
            }
        }
        if up {
            self.register();
        }
        up
    }

    /// The connection to the server was lost (a restart, say): connect
    /// again after a random part of `reconnect_spread`, so that a fleet's
    /// handshakes spread over it instead of landing all at once. A move to
    /// another server (several `server_host`s) is not held back by it.
    fn lost_connection(&mut self) {
        if self.spread.is_zero() || self.reconnect_at.is_some() || self.spread_until.is_some() {
            return;
        }
        let delay = random_delay(self.spread);
        self.disconnect_sub();
        let _ = self.dealer.disconnect(&self.receive);
        info!(self.log, "connection to the server lost: connecting again after a random delay";
            "server" => &self.receive, "in_ms" => delay.as_millis() as u64,
            "reconnect_spread_seconds" => self.spread.as_secs_f64());
        self.spread_until = Some(Instant::now() + delay);
    }

    /// Connects again after a pause (a failed handshake, a lost
    /// connection).
    fn connect_again(&mut self) -> Result<()> {
        debug!(self.log, "connecting again"; "server" => &self.receive);
        if let Some(subscriber) = &mut self.subscriber {
            subscriber.connect(&self.publish, &self.log);
        }
        self.dealer.connect(&self.receive).with_context(|| format!("cannot connect to {}", self.receive))
    }

    /// When the DEALER will have been down for a heartbeat interval, with
    /// another server to move to. Not while paused after a failed handshake:
    /// the backoff decides when to connect again, and the move comes at the
    /// first moment the agent is not paused.
    fn move_due(&self) -> Option<Instant> {
        if self.hosts.len() < 2 || self.reconnect_at.is_some() {
            return None;
        }
        let wait = if self.handshaking { self.heartbeat * HANDSHAKE_GRACE } else { self.heartbeat };
        self.down_since.map(|since| since + wait)
    }

    /// Leaves the current server for the next one in `server_host`
    /// (wrapping). The DEALER and its monitor are made anew rather than
    /// disconnected and connected again: the old connection's last events
    /// (its close, a failed handshake) may still be queued on the monitors
    /// and must not be taken for the new one's. Registration then starts
    /// over as at start (a SUB only if the new server asks for one); a
    /// pending failed-handshake backoff is kept and connects to the new
    /// server when it ends.
    fn move_to_next_server(&mut self, why: &str) {
        let (dealer, dealer_monitor) = match open_dealer(&self.ctx, &self.security) {
            Ok(sockets) => sockets,
            Err(e) => {
                // Out of descriptors, say: stay, and try again a heartbeat
                // interval later.
                warn!(self.log, "cannot make sockets for the next server"; "error" => %e);
                self.down_since = Some(Instant::now());
                self.unanswered = 0;
                return;
            }
        };
        let from = self.current;
        self.current = (self.current + 1) % self.hosts.len();
        warn!(self.log, "server unreachable: moving to the next server";
            "from" => &self.hosts[from], "to" => &self.hosts[self.current], "why" => why,
            "identity" => self.me.identity());
        let host = &self.hosts[self.current];
        self.receive = Networking::endpoint_for(host, self.receive_port);
        self.publish = Networking::endpoint_for(host, self.pub_sub_port);
        if let Some(service) = &mut self.me.file_service {
            service.endpoint = Networking::endpoint_for(host, self.file_service_port);
        }
        // Dropping the old sockets closes their connections (linger 0).
        self.dealer = dealer;
        self.dealer_monitor = dealer_monitor;
        self.subscriber = None;
        self.connected = false;
        self.spread_until = None;
        self.watch.set_server(self.receive.clone());
        self.down_since = Some(Instant::now());
        self.handshaking = false;
        self.unanswered = 0;
        self.registration = Registration::Waiting;
        self.facts.reconnected();
        self.refusals.reset();
        if self.enrolling.is_some() {
            self.enrolling = Some(Instant::now());
        }
        if self.reconnect_at.is_some() {
            return;
        }
        if let Err(e) = self.dealer.connect(&self.receive) {
            // The next move (a heartbeat interval on) tries another.
            warn!(self.log, "cannot connect to the server"; "server" => &self.receive, "error" => %e);
        }
    }

    /// Drops both connections until the backoff delay has passed.
    fn pause_after_failed_handshake(&mut self) {
        if self.reconnect_at.is_some() {
            return;
        }
        let delay = self.backoff.next_delay();
        // Disconnecting an endpoint that is down (or was never connected)
        // fails harmlessly.
        self.disconnect_sub();
        let _ = self.dealer.disconnect(&self.receive);
        debug!(self.log, "retrying after a failed handshake"; "in_seconds" => delay.as_secs());
        self.reconnect_at = Some(Instant::now() + delay);
    }

    fn register(&mut self) {
        self.unanswered = self.unanswered.saturating_add(1);
        let mut request = register_client::request_every(&self.me.filter, self.heartbeat.as_secs());
        request.metadata.requires_response = true;
        register_client::ask_requests_on_dealer(&mut request);
        self.facts.stamp(&mut request);
        request.metadata.custom.insert(trust::VERSION_FIELD.into(), self.trust.version().into());
        if let Registration::Refused { retry_at, .. } = &mut self.registration {
            // Until the answer comes, no second retry.
            *retry_at = Instant::now() + self.heartbeat;
        }
        self.send(request);
    }

    /// Our facts, when the server does not have them.
    fn send_facts(&mut self) {
        if let Some(report) = self.facts.report(self.me.identity()) {
            self.send(report);
        }
    }

    fn send(&self, message: Message) {
        // DONTWAIT: with the server gone, a full queue must not block the agent.
        if let Err(e) = self.dealer.send_multipart(message.to_frames(), zmq::DONTWAIT) {
            // A check-in goes again next interval; an answer is lost.
            if message.message_type() == register_client::TYPE {
                debug!(self.log, "cannot send to the server now"; "type" => message.message_type(), "error" => %e);
            } else {
                warn!(self.log, "cannot send an answer to the server; dropped";
                    "type" => message.message_type(), "uuid" => message.uuid(), "error" => %e);
            }
        }
    }

    /// Asks the server to enroll our key (no token: it waits on the
    /// server's pending list until an admin accepts it).
    fn ask_to_enroll(&mut self) {
        let request = EnrollRequest {
            token: None,
            identity: self.configured_identity.clone(),
            hostname: pantry_shared::config::hostname(),
        };
        self.send(enroll::request(&request));
        self.enrolling = Some(Instant::now() + self.enroll_backoff.next_delay());
    }

    fn enroll_answered(&mut self, answer: &Message) {
        let key = self.keys.as_ref().map(|k| k.keys.public_key.clone()).unwrap_or_default();
        match enroll::outcome(answer) {
            Ok(Enrolled::Waiting) => {
                if !std::mem::replace(&mut self.told_waiting, true) {
                    warn!(self.log, "the server does not know this agent's key yet: it waits to be accepted \
                        (pantry-admin client:pending, then client:accept {})", self.me.identity();
                        "identity" => self.me.identity(), "public_key" => &key, "server" => &self.receive);
                }
            }
            Ok(Enrolled::Accepted { name }) => {
                if let Some(list) = trust::carried(answer) {
                    self.trust.offer(list, "the enrollment");
                }
                self.accepted(name)
            }
            Err(reason) => warn!(self.log, "the server refused to enroll this agent: {}", reason;
                "identity" => self.me.identity(), "public_key" => &key),
        }
    }

    /// Our key is known now, bound to `name`: listen and register.
    fn accepted(&mut self, name: String) {
        if self.configured_identity.as_ref().is_some_and(|configured| *configured != name) {
            slog::error!(self.log, "the server accepted this agent's key under another name than client.yml's \
                identity: make them the same"; "accepted_as" => &name, "identity" => self.me.identity());
            return;
        }
        info!(self.log, "the server accepted this agent's key"; "identity" => &name, "server" => &self.receive);
        if self.me.identity() != name {
            if let Some(s) = &self.subscriber {
                let _ = s.sub.set_unsubscribe(&s.form.topic(self.me.identity()));
                let _ = s.sub.set_subscribe(&s.form.topic(&name));
            }
            self.me.filter.identity = Some(name.clone());
        }
        if let Some(keys) = &mut self.keys {
            keys.name = Some(name);
            if let Err(e) = keys.save() {
                warn!(self.log, "cannot record the accepted name in the key file"; "error" => %e);
            }
        }
        self.enrolling = None;
        self.enroll_backoff.reset();
        self.register();
    }

    fn disconnect_sub(&mut self) {
        if let Some(subscriber) = &mut self.subscriber {
            subscriber.disconnect(&self.publish);
        }
    }

    /// What the server says on the DEALER: the answers to registrations,
    /// enrollment requests and facts reports, and (once a registration's
    /// answer said so) the requests for this agent.
    fn drain_dealer(&mut self) {
        while let Ok(frames) = self.dealer.recv_multipart(zmq::DONTWAIT) {
            let answer = match Message::from_frames(&frames) {
                Ok(m) if m.message_type() == enroll::TYPE => {
                    self.unanswered = 0;
                    self.enroll_answered(&m);
                    continue;
                }
                Ok(m) if m.message_type() == register_client::TYPE => {
                    self.unanswered = 0;
                    m
                }
                Ok(m) if m.message_type() == facts::TYPE => {
                    self.facts.answered(&m);
                    continue;
                }
                Ok(m) => {
                    self.handle_request(m);
                    continue;
                }
                Err(e) => {
                    debug!(self.log, "malformed message from the server dropped"; "error" => %e);
                    continue;
                }
            };
            match answer.error() {
                Some(reason) => self.refused(reason.to_owned()),
                None => {
                    if !matches!(self.registration, Registration::Accepted) {
                        info!(self.log, "registered with the server"; "identity" => self.me.identity(),
                            "server" => &self.receive);
                    }
                    self.delivery(&answer);
                    if let Some(list) = trust::carried(&answer) {
                        self.trust.offer(list, "the server");
                    }
                    self.registration = Registration::Accepted;
                    self.refusals.reset();
                    // The server knows us now: it may hear our facts.
                    self.send_facts();
                }
            }
        }
    }

    /// Where requests come from, as an accepted registration's answer
    /// says: the DEALER, or (an older server) a SUB on the server's PUB
    /// socket, in the exact form or (older still) the bare one.
    fn delivery(&mut self, answer: &Message) {
        let direct = register_client::sends_requests_on_dealer(answer);
        if direct {
            if self.subscriber.take().is_some() {
                info!(self.log, "the server sends requests on the agent's one connection now: SUB closed";
                    "server" => &self.receive);
            }
        } else if self.subscriber.is_none() {
            let exact = register_client::grants_exact_topics(answer);
            let form = if exact { TopicForm::Exact } else { TopicForm::Bare };
            warn!(self.log, "the server does not send requests on the agent's connection (a version before this \
                agent's): subscribing on its PUB socket too; upgrade the server";
                "server" => &self.receive, "publish" => &self.publish,
                "form" => if exact { "exact" } else { "bare (an older server still)" });
            match Subscriber::open(&self.ctx, &self.security, &self.me, form) {
                Ok(subscriber) => self.subscriber = Some(subscriber),
                Err(e) => warn!(self.log, "cannot make the SUB socket"; "error" => %e),
            }
        }
        if let Some(subscriber) = &mut self.subscriber {
            subscriber.connect(&self.publish, &self.log);
        }
    }

    fn refused(&mut self, reason: String) {
        if reason.starts_with("unknown client") && self.keys.is_some() {
            // The key is not (or no longer) known: ask to be enrolled.
            if self.enrolling.is_none() {
                self.disconnect_sub();
                self.enrolling = Some(Instant::now());
            }
            return;
        }
        let delay = self.refusals.next_delay();
        let repeated = matches!(&self.registration, Registration::Refused { reason: r, .. } if *r == reason);
        if !repeated {
            warn!(self.log, "the server refused this client's registration: {}", reason;
                "identity" => self.me.identity(), "server" => &self.receive, "retry_in_seconds" => delay.as_secs());
        } else {
            debug!(self.log, "registration refused again"; "reason" => &reason, "retry_in_seconds" => delay.as_secs());
        }
        self.registration = Registration::Refused { reason, retry_at: Instant::now() + delay };
    }

    /// Requests on the SUB (an older server).
    fn drain_subscriber(&mut self) {
        while let Some(frames) = self.subscriber.as_ref().and_then(|s| s.sub.recv_multipart(zmq::DONTWAIT).ok()) {
            match Message::from_frames(&frames) {
                Ok(request) => self.handle_request(request),
                Err(e) => debug!(self.log, "malformed message from the server dropped"; "error" => %e),
            }
        }
    }

    /// A request from the server (over the DEALER or the SUB): checked,
    /// then run here or on a worker thread.
    fn handle_request(&mut self, request: Message) {
        if !self.me.filter.accepts_stream(&request.stream) {
            debug!(self.log, "request for a stream not this agent's dropped";
                "type" => request.message_type(), "to" => &request.stream, "uuid" => request.uuid());
            return;
        }
        debug!(self.log, "request received";
            "type" => request.message_type(), "from" => &request.metadata.from,
            "to" => &request.stream, "uuid" => request.uuid());
        if request.message_type() == trust::LIST_TYPE {
            match trust::parse_list(&request) {
                Ok(list) => self.trust.offer(list, "the server"),
                Err(e) => debug!(self.log, "malformed trust list dropped"; "error" => %e),
            }
            return;
        }
        if let Err(refusal) = self.trust.check(&request, &self.me.filter, self.facts.facts()) {
            if request.metadata.requires_response {
                let mut answer = request.response();
                answer.metadata.from = self.me.identity().to_owned();
                answer.metadata.custom.remove(pantry_shared::signing::SIGNATURE_FIELD);
                answer.set_error(format!("refused: {refusal}"));
                self.send(answer);
            }
            return;
        }
        if work::may_block(request.message_type()) {
            self.run_on_worker(request);
            return;
        }
        let response = work::run_on_client(&request, &self.me);
        if request.metadata.requires_response {
            self.send(response);
        }
    }

    /// Runs a long command on its own thread; the answer comes back through
    /// the results socket, so only the main thread touches the DEALER.
    fn run_on_worker(&self, request: Message) {
        let (me, ctx, log) = (self.me.clone(), self.ctx.clone(), self.log.clone());
        let spawned = std::thread::Builder::new().name("pantry-command".into()).spawn(move || {
            let response = work::run_on_client(&request, &me);
            if !request.metadata.requires_response {
                return;
            }
            let sent = ctx.socket(zmq::PUSH).and_then(|push| {
                push.set_linger(1000)?;
                push.connect(RESULTS_ENDPOINT)?;
                push.send_multipart(response.to_frames(), 0)
            });
            if let Err(e) = sent {
                warn!(log, "cannot hand an answer to the main thread"; "uuid" => request.uuid(), "error" => %e);
            }
        });
        if let Err(e) = spawned {
            warn!(self.log, "cannot start a worker thread; request dropped"; "error" => %e);
        }
    }
}
