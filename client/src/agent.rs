//! The agent's loop: one thread owns the SUB (requests from the server),
//! the DEALER (registrations and answers), their monitors and the signal
//! pipes, and blocks in `zmq::poll` until one of them is ready or the next
//! registration is due. Long commands run on worker threads and hand their
//! answers back through an inproc PULL, so only this thread touches the
//! DEALER.
//!
//! Under null security the agent registers once its SUB connection is up (so
//! it listens before the server can publish to it); under CURVE it
//! registers first and connects its SUB once the server accepted the
//! registration, so the server can grant every topic it asks for at once
//! (and counts it online only once its subscriptions are granted). It
//! registers again on every reconnection and every `heartbeat_interval`. Each registration asks for an answer: a refusal
//! (identity bound to another key, a name that is not allowed) is logged at
//! warn with the server's reason and retried with a backoff until the
//! operator fixes it.
//!
//! With several hosts in `networking.server_host` (all serving the same
//! ports and key store), the agent talks to one at a time, the first one
//! first, and moves to the next (wrapping) when the DEALER's connection is
//! down for a whole heartbeat interval (three while a TCP connection is up
//! and its handshake pending: the server is there, only busy), or when two
//! registrations in a row went unanswered. The hosts after the first are
//! taken in an order of the agent's own (rotated by a hash of its
//! identity), so that when a server dies its agents spread over the others
//! instead of all landing on the next one. Moving replaces both sockets and
//! their monitors, then connects and registers as at start. With one host
//! it never moves.
//!
//! An agent whose key the server does not know (it made its key pair at its
//! first start, with only the server's public key configured) enrolls
//! itself: it asks on the DEALER, logs at warn that it waits to be
//! accepted, asks again with a backoff, and once an admin has run
//! `client:accept` it connects its SUB and registers, without a restart.

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
    sub: zmq::Socket,
    dealer: zmq::Socket,
    dealer_monitor: zmq::Socket,
    sub_monitor: zmq::Socket,
    /// The form of our subscriptions: exact, unless the server is older
    /// than this agent and grants only the bare form.
    form: TopicForm,
    /// Whether the SUB connection is up, so our subscriptions reached the
    /// server's PUB: registering before that would let the server publish
    /// to us before we listen (the slow-joiner problem).
    listening: bool,
    /// Whether the SUB is connected (or connecting).
    sub_connected: bool,
    /// CURVE: the SUB connects only after an accepted registration.
    curve: bool,
    publish: String,
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

/// The agent loop's poll items, in order.
#[derive(Debug, Clone, Copy)]
enum Slot {
    Sub,
    Dealer,
    DealerMonitor,
    Stop,
    SubMonitor,
    Results,
    Reload,
}

const SLOTS: usize = Slot::Reload as usize + 1;

/// Heartbeat intervals a move waits for a pending handshake.
const HANDSHAKE_GRACE: u32 = 3;

/// The sockets to one server, not connected yet.
struct Sockets {
    sub: zmq::Socket,
    dealer: zmq::Socket,
    sub_monitor: zmq::Socket,
    dealer_monitor: zmq::Socket,
}

/// What the SUB subscribes to: each of the agent's streams, and the
/// broadcast topic, in `form`.
fn subscriptions(me: &ClientContext, form: TopicForm) -> Vec<Vec<u8>> {
    me.filter.streams().iter().map(String::as_str).chain([BROADCAST_TOPIC]).map(|s| form.topic(s)).collect()
}

impl Sockets {
    fn open(ctx: &zmq::Context, security: &SocketSecurity, me: &ClientContext, form: TopicForm) -> Result<Sockets> {
        let sub = security.socket(ctx, zmq::SUB)?;
        for topic in subscriptions(me, form) {
            sub.set_subscribe(&topic)?;
        }
        let dealer = security.socket(ctx, zmq::DEALER)?;
        // A burst waits on the agent's side while it works through it: the
        // common 1,000 messages dropped the rest of a burst of answers
        // (sends are DONTWAIT), and requests beyond the server's PUB queue
        // (PUB drops). libzmq's I/O thread keeps the SUB drained even while
        // the agent is busy. The server's own caps bound what it sends.
        dealer.set_sndhwm(AGENT_QUEUE)?;
        sub.set_rcvhwm(AGENT_QUEUE)?;
        for socket in [&sub, &dealer] {
            // Back off up to 10 s between reconnects to a server that is down.
            socket.set_reconnect_ivl(100)?;
            socket.set_reconnect_ivl_max(10_000)?;
        }
        let dealer_monitor = monitor::monitor(ctx, &dealer, monitor::CLIENT_EVENTS)?;
        let sub_monitor = monitor::monitor(ctx, &sub, monitor::CLIENT_EVENTS)?;
        Ok(Sockets { sub, dealer, sub_monitor, dealer_monitor })
    }
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

        let form = TopicForm::Exact;
        let Sockets { sub, dealer, sub_monitor, dealer_monitor } = Sockets::open(&ctx, security, &me, form)?;
        let results = ctx.socket(zmq::PULL)?;
        results.set_linger(0)?;
        results.bind(RESULTS_ENDPOINT)?;
        let (receive, publish) = (net.endpoint(net.receive_port), net.endpoint(net.pub_sub_port));
        // A key made just now is unknown to the server: enroll first. Under
        // CURVE the SUB connects once a registration is accepted.
        let enrolling = keys.as_ref().is_some_and(|k| k.generated).then(Instant::now);
        let curve = keys.is_some();
        if !curve {
            sub.connect(&publish).with_context(|| format!("cannot connect to {publish}"))?;
        }
        dealer.connect(&receive).with_context(|| format!("cannot connect to {receive}"))?;
        info!(log, "pantry-client started";
            "version" => pantry_shared::VERSION, "identity" => me.identity(), "server" => &receive,
            "subscriptions" => me.filter.streams().join(" "), "security" => net.security_name());
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
            sub,
            dealer,
            dealer_monitor,
            sub_monitor,
            form,
            listening: false,
            sub_connected: !curve,
            curve,
            publish,
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
        // The first registration waits for the SUB connection (or, failing
        // that, the first heartbeat).
        let mut next_heartbeat = Instant::now() + self.heartbeat;
        loop {
            let mut wake = self.reconnect_at.map_or(next_heartbeat, |at| at.min(next_heartbeat));
            if let Registration::Refused { retry_at, .. } = &self.registration {
                wake = wake.min(*retry_at);
            }
            if let Some(at) = self.enrolling {
                wake = wake.min(at);
            }
            if let Some(at) = self.move_due() {
                wake = wake.min(at);
            }
            if let Some(soon) = self.facts.wake_within() {
                wake = wake.min(Instant::now() + soon);
            }
            let wait = wake.saturating_duration_since(Instant::now());
            // In the order of [`Slot`].
            let mut items: [zmq::PollItem; SLOTS] = [
                self.sub.as_poll_item(zmq::POLLIN),
                self.dealer.as_poll_item(zmq::POLLIN),
                self.dealer_monitor.as_poll_item(zmq::POLLIN),
                zmq::PollItem::from_fd(signals.stop.as_raw_fd(), zmq::POLLIN),
                self.sub_monitor.as_poll_item(zmq::POLLIN),
                self.results.as_poll_item(zmq::POLLIN),
                zmq::PollItem::from_fd(signals.reload.as_raw_fd(), zmq::POLLIN),
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
                self.drain_requests();
            }
            if is(Slot::Dealer) {
                self.drain_answers();
            }
            if self.facts.poll() && matches!(self.registration, Registration::Accepted) {
                self.send_facts();
            }
            if is(Slot::DealerMonitor) {
                while let Some(event) = monitor::read(&self.dealer_monitor) {
                    let reconnected = event.event == SocketEvent::HandshakeSucceeded;
                    self.handshaking = event.event == SocketEvent::Connected;
                    if reconnected {
                        self.down_since = None;
                    } else if event.event == SocketEvent::Disconnected {
                        self.down_since.get_or_insert_with(Instant::now);
                    }
                    if self.watch.observe(&event) {
                        self.pause_after_failed_handshake();
                    }
                    if reconnected {
                        self.backoff.reset();
                        self.facts.reconnected();
                        // A restarted server may have lost us: check in now
                        // (under CURVE, before the SUB connects).
                        if (self.listening || self.curve) && self.enrolling.is_none() {
                            self.register();
                            next_heartbeat = Instant::now() + self.heartbeat;
                        }
                    }
                }
            }
            if is(Slot::SubMonitor) {
                while let Some(event) = monitor::read(&self.sub_monitor) {
                    match event.event {
                        SocketEvent::HandshakeSucceeded => {
                            self.listening = true;
                            self.register();
                            next_heartbeat = Instant::now() + self.heartbeat;
                        }
                        SocketEvent::Disconnected => self.listening = false,
                        _ => {}
                    }
                }
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
                debug!(self.log, "connecting again"; "server" => &self.receive);
                if !self.curve {
                    self.connect_sub();
                }
                self.dealer.connect(&self.receive)?;
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
    /// (wrapping). The sockets and their monitors are made anew rather than
    /// disconnected and connected again: the old connection's last events
    /// (its close, a failed handshake) may still be queued on the monitors
    /// and must not be taken for the new one's. Registration then starts
    /// over as at start; a pending failed-handshake backoff is kept and
    /// connects to the new server when it ends.
    fn move_to_next_server(&mut self, why: &str) {
        let sockets = match Sockets::open(&self.ctx, &self.security, &self.me, self.form) {
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
        self.sub = sockets.sub;
        self.dealer = sockets.dealer;
        self.sub_monitor = sockets.sub_monitor;
        self.dealer_monitor = sockets.dealer_monitor;
        self.watch.set_server(self.receive.clone());
        self.down_since = Some(Instant::now());
        self.handshaking = false;
        self.unanswered = 0;
        self.listening = false;
        self.sub_connected = false;
        self.registration = Registration::Waiting;
        self.facts.reconnected();
        self.refusals.reset();
        if self.enrolling.is_some() {
            self.enrolling = Some(Instant::now());
        }
        if self.reconnect_at.is_some() {
            return;
        }
        if !self.curve {
            self.connect_sub();
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
            let _ = self.sub.set_unsubscribe(&self.form.topic(self.me.identity()));
            let _ = self.sub.set_subscribe(&self.form.topic(&name));
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

    fn connect_sub(&mut self) {
        if self.sub_connected {
            return;
        }
        match self.sub.connect(&self.publish) {
            Ok(()) => self.sub_connected = true,
            Err(e) => warn!(self.log, "cannot connect to the server's PUB socket"; "error" => %e),
        }
    }

    fn disconnect_sub(&mut self) {
        if std::mem::take(&mut self.sub_connected) {
            let _ = self.sub.disconnect(&self.publish);
        }
        self.listening = false;
    }

    /// What the server says on the DEALER: the answers to registrations and
    /// enrollment requests.
    fn drain_answers(&mut self) {
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
                    debug!(self.log, "unexpected message on DEALER dropped"; "type" => m.message_type());
                    continue;
                }
                Err(e) => {
                    debug!(self.log, "malformed message on DEALER dropped"; "error" => %e);
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
                    if self.form == TopicForm::Exact && !register_client::grants_exact_topics(&answer) {
                        self.subscribe_bare();
                    }
                    if let Some(list) = trust::carried(&answer) {
                        self.trust.offer(list, "the server");
                    }
                    self.registration = Registration::Accepted;
                    self.refusals.reset();
                    self.connect_sub();
                    // The server knows us now: it may hear our facts.
                    self.send_facts();
                }
            }
        }
    }

    /// The server is older than this agent: it grants only bare topics
    /// (and ends what it publishes with the exact form's mark, which
    /// `Message::from_frames` strips).
    fn subscribe_bare(&mut self) {
        warn!(self.log, "the server does not grant exact topics (a version before this agent's): \
            subscribing in the bare form; upgrade the server"; "server" => &self.receive);
        for (exact, bare) in
            subscriptions(&self.me, TopicForm::Exact).iter().zip(subscriptions(&self.me, TopicForm::Bare))
        {
            let _ = self.sub.set_unsubscribe(exact);
            let _ = self.sub.set_subscribe(&bare);
        }
        self.form = TopicForm::Bare;
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

    fn drain_requests(&mut self) {
        while let Ok(frames) = self.sub.recv_multipart(zmq::DONTWAIT) {
            let request = match Message::from_frames(&frames) {
                Ok(m) => m,
                Err(e) => {
                    debug!(self.log, "malformed message from the server dropped"; "error" => %e);
                    continue;
                }
            };
            if !self.me.filter.accepts_stream(&request.stream) {
                continue;
            }
            debug!(self.log, "request received";
                "type" => request.message_type(), "from" => &request.metadata.from,
                "to" => &request.stream, "uuid" => request.uuid());
            if request.message_type() == trust::LIST_TYPE {
                match trust::parse_list(&request) {
                    Ok(list) => self.trust.offer(list, "the server"),
                    Err(e) => debug!(self.log, "malformed trust list dropped"; "error" => %e),
                }
                continue;
            }
            if let Err(refusal) = self.trust.check(&request, &self.me.filter, self.facts.facts()) {
                if request.metadata.requires_response {
                    let mut answer = request.response();
                    answer.metadata.from = self.me.identity().to_owned();
                    answer.metadata.custom.remove(pantry_shared::signing::SIGNATURE_FIELD);
                    answer.set_error(format!("refused: {refusal}"));
                    self.send(answer);
                }
                continue;
            }
            if work::may_block(request.message_type()) {
                self.run_on_worker(request);
                continue;
            }
            let response = work::run_on_client(&request, &self.me);
            if request.metadata.requires_response {
                self.send(response);
            }
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
