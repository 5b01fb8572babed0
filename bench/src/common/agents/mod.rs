//! Simulated agents inside the bench process (or, for more than one
//! process holds, in child processes of the bench: [`children`]). Each
//! agent holds one connection, as the real one does since issue 27: a
//! DEALER (and, under CURVE, its own key pair) over which it registers,
//! takes its requests and answers them; it opens no SUB. Agents are spread
//! over several ZeroMQ contexts (at most 1,023 sockets each); one thread
//! per context polls its agents' DEALERs and answers.
//!
//! A Pantry agent registers like the real one (`RegisterClient` with its
//! application, environment and roles, `custom.requests_on_dealer: true`,
//! asking for an answer), counts itself registered once the answer says
//! the server sends its requests over the DEALER, and answers requests
//! with `run_on_client`. A baseline agent says hello to the relay with the
//! same streams ([`relay`]) and echoes the payload back without decoding
//! anything.
//!
//! By default an agent registers once. [`AgentOptions`] (the presence, scale
//! and job-store scenarios) add what the real agent does to come back after
//! a server restart: a `RegisterClient` with `heartbeat_interval` every
//! heartbeat, and another whenever its DEALER completes a handshake (a
//! socket monitor per agent); with `reconnect_spread`, on losing its
//! connection it disconnects and connects again after a random delay
//! within the spread (the real agent's `reconnect_spread`); and linger 0,
//! so that dropping a pool closes its connections at once (a killed
//! agent). With `failover` (the cluster scenario) a pool is given several
//! servers and its agents move to the next one when theirs has been gone
//! for a heartbeat interval, as the real agent does with several
//! `server_host`s. What an agent sends and when it connects again or
//! moves is decided in [`session`]; this module does the sockets.
//! With `simulated_exec` (the rollout scenario) a Pantry agent answers the
//! bench's own `exec` itself, spawning nothing ([`simulated`]), and the
//! pool records when each agent received and answered each such request
//! ([`Pool::execs`]). With `facts_bytes` (the facts scenario) a Pantry
//! agent sends a `Facts` report of about that size whenever the pool is
//! told to ([`Pool::report_facts`]), and the pool counts the server's
//! answers. With `verify_signatures` (the signing scenario) a Pantry agent
//! checks each request against a trust list before answering it, as the
//! real agent does with `require_signed` (`client/src/trust.rs`), and
//! answers a refusal with an error; the pool counts both
//! ([`Pool::verifications`]) and can stop and resume checking
//! ([`Pool::verify`]).

use std::collections::VecDeque;
use std::ops::Range;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime};

use anyhow::{anyhow, Context as _, Result};
use pantry_client::work::{self, ClientContext};
use pantry_shared::commands::{facts as facts_command, register_client};
use pantry_shared::filter::{ClientFilter, BROADCAST_TOPIC};
use pantry_shared::monitor;
use pantry_shared::security::SocketSecurity;
use pantry_shared::signing::{self, Seen, TrustList};
use pantry_shared::Message;
use serde::{Deserialize, Serialize};

use crate::common::keys::Pair;
use crate::common::procs::Endpoints;
use crate::common::relay;

pub mod children;
pub mod session;
pub mod simulated;

use session::{Registration, Session, Step};

pub const ENVIRONMENT: &str = "perf";
/// Agents are put in applications of this many (`g000`, `g001`, ...), so
/// that a pool can be checked group by group, each group's echo answered
/// before the next is sent. The group is the application, not the
/// environment, so that every agent is in exactly one group's stream.
pub const GROUP_SIZE: usize = 250;
pub const ROLE: &str = "echo";

/// Agents per context (and thread): one socket each, well under libzmq's
/// 1,023 per context; as many as each thread answered for when agents had
/// two sockets, so that a fan-out's answers are spread over as many
/// threads as in earlier runs.
pub const AGENTS_PER_CONTEXT: usize = 500;
/// With a DEALER monitor (two more sockets each).
const MONITORED_AGENTS_PER_CONTEXT: usize = 250;
/// Failing over: a move makes three new sockets, maybe before libzmq's
/// reaper has freed the old ones' places, so a context keeps room for
/// every agent's sockets twice and more.
const FAILOVER_AGENTS_PER_CONTEXT: usize = 100;

/// Agents connected at once, and the pause between batches (about 650
/// agents, 1,300 connections, per second: the order of a server's CURVE
/// handshake rate here).
pub const CONNECT_BATCH: usize = 20;
pub const CONNECT_PAUSE: Duration = Duration::from_millis(30);

/// No agent thread outlives this, whatever happens to the bench.
const MAX_LIFETIME: Duration = Duration::from_secs(30 * 60);

/// Which server the agents talk to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Kind {
    Pantry,
    Baseline,
}

impl Kind {
    pub fn name(self) -> &'static str {
        match self {
            Kind::Pantry => "Pantry",
            Kind::Baseline => "baseline",
        }
    }
}

/// The identity of agent `i`: fixed width, so that identities sort in
/// index order and none is a prefix of another.
pub fn identity(i: usize) -> String {
    format!("agent-{i:05}")
}

/// The application of group `g`.
pub fn group(g: usize) -> String {
    format!("g{g:03}")
}

/// The stream that reaches every agent of group `g`, and how many of the
/// first `n` agents are in it.
pub fn group_streams(n: usize) -> Vec<(String, usize)> {
    (0..n.div_ceil(GROUP_SIZE)).map(|g| (group(g), GROUP_SIZE.min(n - g * GROUP_SIZE))).collect()
}

/// How agent `i` describes itself.
pub fn filter(i: usize) -> ClientFilter {
    ClientFilter {
        identity: Some(identity(i)),
        application: Some(group(i / GROUP_SIZE)),
        environment: Some(ENVIRONMENT.into()),
        roles: vec![ROLE.into()],
    }
}

/// The security of a client socket with `pair` against `endpoints`.
pub fn client_security(endpoints: &Endpoints, pair: Option<&Pair>) -> Result<SocketSecurity> {
    match (endpoints.server_key, pair) {
        (None, _) => Ok(SocketSecurity::Null),
        (Some(server_key), Some(pair)) => {
            Ok(SocketSecurity::CurveClient { server_key, public_key: pair.public, secret_key: pair.secret })
        }
        (Some(_), None) => Err(anyhow!("a CURVE server needs a client key pair")),
    }
}

/// How the agents of a pool behave beyond answering (the default: the
/// other scenarios' agents, which register once).
#[derive(Debug, Clone, Default)]
pub struct AgentOptions {
    /// Register again this often, with `heartbeat_interval` in the
    /// registration (whole seconds, at least 1), as the real agent does.
    pub heartbeat: Option<Duration>,
    /// Register again whenever the DEALER completes a handshake (after a
    /// reconnection), as the real agent does.
    pub register_on_reconnect: bool,
    /// Pantry agents, when their DEALER's connection is lost, disconnect
    /// it and connect again after a random delay in [0, spread) (the real
    /// agent's `reconnect_spread`), then register at the handshake; without
    /// it libzmq reconnects at once.
    pub reconnect_spread: Option<Duration>,
    /// Linger 0 on the DEALER: dropping the pool closes its connections at
    /// once, like a killed process.
    pub linger_zero: bool,
    /// Pantry agents of a pool on several servers ([`Pool::start_on`]):
    /// when the DEALER's connection has been down for a heartbeat interval
    /// (its socket monitor saw it disconnect; or, after a move, no
    /// handshake yet), the DEALER is closed and, at the next check (within
    /// 50 ms, once libzmq has closed its descriptors), made anew for the
    /// next server's endpoint (wrapping); the agent registers there once
    /// the handshake completes. The real agent also moves after 2
    /// unanswered registrations; these agents do not. The heartbeat is 1 s
    /// if unset.
    pub failover: bool,
    /// Pantry agents answer an `Exec` of [`simulated::PROGRAM`] themselves
    /// (`fail ID...`: exit 1 on those named, else 0; `hold`: until its job
    /// is cancelled), spawning nothing; each such request is recorded
    /// ([`Pool::execs`]). Any other `Exec` is refused as before.
    pub simulated_exec: bool,
    /// Pantry agents send a `Facts` report ([`crate::common::facts::machine`],
    /// its JSON about this many bytes) each time [`Pool::report_facts`] is
    /// called (after their registration is known: a report from a client
    /// that has not registered is refused); the server's answers are
    /// counted ([`Pool::facts_answers`]).
    pub facts_bytes: Option<usize>,
    /// Pantry agents run (answer) only requests that
    /// [`signing::verify`] accepts against this trust list, with the
    /// agent's own filter and replay set, as the real agent with
    /// `require_signed` (`Trust::check`, before `run_on_client`); any
    /// other is answered `refused: WHY` when it asks for an answer.
    /// Checking starts on; [`Pool::verify`] turns it off and on for the
    /// whole pool.
    pub verify_signatures: Option<Arc<TrustList>>,
}

impl AgentOptions {
    /// The real agent's behaviour with `heartbeat`.
    pub fn like_the_real_agent(heartbeat: Duration) -> AgentOptions {
        AgentOptions {
            heartbeat: Some(heartbeat),
            register_on_reconnect: true,
            reconnect_spread: None,
            linger_zero: true,
            failover: false,
            simulated_exec: false,
            facts_bytes: None,
            verify_signatures: None,
        }
    }

    /// [`AgentOptions::like_the_real_agent`], coming back after a lost
    /// connection within `spread`.
    pub fn reconnecting(heartbeat: Duration, spread: Duration) -> AgentOptions {
        AgentOptions { reconnect_spread: Some(spread), ..AgentOptions::like_the_real_agent(heartbeat) }
    }

    /// The real agent's behaviour with `heartbeat` and several servers to
    /// fail over between.
    pub fn failing_over(heartbeat: Duration) -> AgentOptions {
        AgentOptions { failover: true, ..AgentOptions::like_the_real_agent(heartbeat) }
    }

    /// Whether each agent has a monitor on its DEALER.
    fn monitored(&self) -> bool {
        self.register_on_reconnect || self.failover || self.reconnect_spread.is_some()
    }
}

/// Counters the agent threads of a pool share.
#[derive(Default)]
struct Counters {
    answered: AtomicU64,
    /// Pantry agents whose registration on their current connection was
    /// accepted with their requests on the DEALER; registrations refused
    /// (or accepted without it), and why the first was.
    registered: AtomicU64,
    refused: AtomicU64,
    refusal: Mutex<Option<String>>,
    /// Connections made again after a lost one (`reconnect_spread`).
    reconnects: AtomicU64,
    /// Moves to another server (`failover`), and those that could not
    /// make their sockets (tried again a heartbeat interval later).
    moves: AtomicU64,
    failed_moves: AtomicU64,
    /// Why the first failed move failed.
    move_error: Mutex<Option<String>>,
    /// `simulated_exec`: every `Exec` of the bench's program received.
    execs: Mutex<Vec<ExecRecord>>,
    /// `facts_bytes`: the rounds of reports asked for so far; the server's
    /// answers to them, accepted and refused, and the first refusal.
    facts_asked: AtomicU64,
    facts_kept: AtomicU64,
    facts_refused: AtomicU64,
    facts_refusal: Mutex<Option<String>>,
    /// `verify_signatures`: checking stopped ([`Pool::verify`]); requests
    /// verified and run, refused, and why the first refused one was.
    verify_off: AtomicBool,
    verified: AtomicU64,
    verify_refused: AtomicU64,
    verify_refusal: Mutex<Option<String>>,
}

impl Counters {
    /// Records an `Exec` received; its index in the list.
    fn exec_received(&self, record: ExecRecord) -> usize {
        let mut execs = self.execs.lock().unwrap_or_else(|p| p.into_inner());
        execs.push(record);
        execs.len() - 1
    }

    /// Record `at` was answered (now), `cancelled` or not.
    fn exec_answered(&self, at: usize, cancelled: bool) {
        let answered = Instant::now();
        let mut execs = self.execs.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(r) = execs.get_mut(at) {
            r.answered = Some(answered);
            r.cancelled = cancelled;
        }
    }
}

/// One `Exec` of [`simulated::PROGRAM`] at one agent (`simulated_exec`),
/// times on the bench process's clock.
#[derive(Debug, Clone)]
pub struct ExecRecord {
    /// The agent's index (its identity is [`identity`]`(agent)`).
    pub agent: usize,
    /// The request's uuid: its job.
    pub job: String,
    /// When the agent read it off its DEALER.
    pub received: Instant,
    /// When its answer was handed to the DEALER; `None`: held.
    pub answered: Option<Instant>,
    /// Answered `cancelled` (after a `Cancel` of its job).
    pub cancelled: bool,
}

/// N agents, running until the pool is dropped.
pub struct Pool {
    workers: Vec<JoinHandle<()>>,
    stop: Arc<AtomicBool>,
    counters: Arc<Counters>,
}

impl Pool {
    /// Connects agents `0..size` (agent `i` uses `pairs[i]` under CURVE).
    /// Returns once every socket is created and connecting; whether they
    /// are reachable is checked by the caller with a broadcast.
    pub fn start(kind: Kind, endpoints: &Endpoints, pairs: &[Pair], size: usize) -> Result<Pool> {
        Pool::start_with(kind, endpoints, pairs, 0..size, AgentOptions::default())
    }

    /// Connects agents `range` (agent `i` uses `pairs[i]` under CURVE) with
    /// `options`.
    pub fn start_with(
        kind: Kind,
        endpoints: &Endpoints,
        pairs: &[Pair],
        range: Range<usize>,
        options: AgentOptions,
    ) -> Result<Pool> {
        Pool::start_on(kind, std::slice::from_ref(endpoints), 0, pairs, range, options)
    }

    /// Connects agents `range` to `servers[first]` (agent `i` uses
    /// `pairs[i]` under CURVE) with `options`; with `options.failover`
    /// they move along `servers` (wrapping) when theirs goes away. Under
    /// CURVE every server must have the same key pair (as a cluster's do).
    pub fn start_on(
        kind: Kind,
        servers: &[Endpoints],
        first: usize,
        pairs: &[Pair],
        range: Range<usize>,
        options: AgentOptions,
    ) -> Result<Pool> {
        let endpoints = servers.get(first).ok_or_else(|| anyhow!("no server {first} of {}", servers.len()))?;
        let agents = range.map(|i| Ok((i, client_security(endpoints, pairs.get(i))?))).collect::<Result<_>>()?;
        Pool::start_agents(kind, servers, first, agents, options)
    }

    /// Connects each of `agents` (its index, its socket's security) to
    /// `servers[first]` with `options`, a context and a thread for each
    /// few hundred.
    fn start_agents(
        kind: Kind,
        servers: &[Endpoints],
        first: usize,
        agents: Vec<(usize, SocketSecurity)>,
        options: AgentOptions,
    ) -> Result<Pool> {
        let mut pool = Pool { workers: Vec::new(), stop: Arc::default(), counters: Arc::default() };
        let per_context = match (options.failover, options.monitored()) {
            (true, _) => FAILOVER_AGENTS_PER_CONTEXT,
            (false, true) => MONITORED_AGENTS_PER_CONTEXT,
            (false, false) => AGENTS_PER_CONTEXT,
        };
        let mut agents = agents.into_iter().peekable();
        while let Some(&(start, _)) = agents.peek() {
            let agents: Vec<(usize, SocketSecurity)> = agents.by_ref().take(per_context).collect();
            let last = agents.last().map_or(start, |(i, _)| i + 1);
            let (ready_tx, ready_rx) = mpsc::channel();
            let (servers, stop, counters) = (servers.to_vec(), pool.stop.clone(), pool.counters.clone());
            let options = options.clone();
            let thread = std::thread::Builder::new().name(format!("agents-{start}")).spawn(move || {
                let place = Place { servers: &servers, first };
                worker(kind, place, agents, options, &stop, &counters, ready_tx);
            })?;
            pool.workers.push(thread);
            ready_rx
                .recv_timeout(Duration::from_secs(60))
                .map_err(|_| anyhow!("did not start"))
                .and_then(|ready| ready)
                .with_context(|| format!("agents {start}..{last}"))?;
        }
        Ok(pool)
    }

    /// Answers sent by all agents so far.
    pub fn answered(&self) -> u64 {
        self.counters.answered.load(Ordering::Relaxed)
    }

    /// Pantry agents registered on their current connection, their
    /// requests on their DEALER.
    pub fn registered(&self) -> u64 {
        self.counters.registered.load(Ordering::Relaxed)
    }

    /// Registrations refused (or accepted without `requests_on_dealer`)
    /// so far, and why the first was.
    pub fn refused(&self) -> (u64, Option<String>) {
        let first = self.counters.refusal.lock().ok().and_then(|e| e.clone());
        (self.counters.refused.load(Ordering::Relaxed), first)
    }

    /// Connections made again after a lost one (`reconnect_spread`).
    pub fn reconnects(&self) -> u64 {
        self.counters.reconnects.load(Ordering::Relaxed)
    }

    /// Moves to another server so far (`failover`).
    pub fn moves(&self) -> u64 {
        self.counters.moves.load(Ordering::Relaxed)
    }

    /// Moves that could not make their sockets (open-file limit?).
    pub fn failed_moves(&self) -> u64 {
        self.counters.failed_moves.load(Ordering::Relaxed)
    }

    /// Why the first failed move failed.
    pub fn move_error(&self) -> Option<String> {
        self.counters.move_error.lock().ok().and_then(|e| e.clone())
    }

    /// `facts_bytes`: each agent sends its `Facts` report now (within
    /// 100 ms; again at each call, the same facts gathered anew).
    pub fn report_facts(&self) {
        self.counters.facts_asked.fetch_add(1, Ordering::Relaxed);
    }

    /// `facts_bytes`: the server's answers to the reports so far, accepted
    /// and refused.
    pub fn facts_answers(&self) -> (u64, u64) {
        (self.counters.facts_kept.load(Ordering::Relaxed), self.counters.facts_refused.load(Ordering::Relaxed))
    }

    /// Why the first refused report was refused.
    pub fn facts_refusal(&self) -> Option<String> {
        self.counters.facts_refusal.lock().ok().and_then(|e| e.clone())
    }

    /// `verify_signatures`: whether the agents check requests from now on
    /// (they do from the start).
    pub fn verify(&self, on: bool) {
        self.counters.verify_off.store(!on, Ordering::SeqCst);
    }

    /// `verify_signatures`: requests verified (and run) and refused so far.
    pub fn verifications(&self) -> (u64, u64) {
        (self.counters.verified.load(Ordering::Relaxed), self.counters.verify_refused.load(Ordering::Relaxed))
    }

    /// Why the first refused request was refused.
    pub fn verify_refusal(&self) -> Option<String> {
        self.counters.verify_refusal.lock().ok().and_then(|e| e.clone())
    }

    /// `simulated_exec`: the requests of `job` the agents received so far,
    /// in the order they were received (per worker thread).
    pub fn execs(&self, job: &str) -> Vec<ExecRecord> {
        let execs = self.counters.execs.lock().unwrap_or_else(|p| p.into_inner());
        execs.iter().filter(|r| r.job == job).cloned().collect()
    }
}

impl Drop for Pool {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.workers.drain(..) {
            let _ = t.join();
        }
    }
}

/// The servers a worker's agents may be on, and the one they start on.
#[derive(Clone, Copy)]
struct Place<'a> {
    servers: &'a [Endpoints],
    first: usize,
}

/// An agent's connection: its DEALER and the DEALER's monitor.
struct Sockets {
    dealer: zmq::Socket,
    /// The DEALER's handshakes (and disconnections, `failover` and
    /// `reconnect_spread`).
    monitor: Option<zmq::Socket>,
}

struct Agent {
    /// Its index in the pool's key list (its identity's number).
    index: usize,
    me: ClientContext,
    session: Session,
    /// A baseline agent's hello: its streams and the broadcast topic.
    hello: Vec<Vec<u8>>,
    /// For the socket made when moving to another server.
    security: SocketSecurity,
    /// `None` while it moves: closed, made anew at the next check.
    sockets: Option<Sockets>,
    /// Moving (`failover`): the server its new socket is for, and when to
    /// try again after its socket could not be made.
    moving_to: Option<usize>,
    retry_at: Option<Instant>,
    /// `simulated_exec`: the `hold` requests it has not answered, with
    /// their records' places.
    held: Vec<(Message, usize)>,
    /// `verify_signatures`: the uuids it ran (replays refused).
    seen: Seen,
}

/// A new DEALER, and its monitor when `options` want one.
fn open_sockets(
    kind: Kind,
    ctx: &zmq::Context,
    security: &SocketSecurity,
    options: &AgentOptions,
) -> zmq::Result<Sockets> {
    let dealer = security.socket(ctx, zmq::DEALER)?;
    // Back off up to 10 s between reconnects to a server that is down, as
    // the real agent.
    dealer.set_reconnect_ivl(100)?;
    dealer.set_reconnect_ivl_max(10_000)?;
    if options.linger_zero {
        dealer.set_linger(0)?;
    }
    let monitor = if options.monitored() && kind == Kind::Pantry {
        let events: &[zmq::SocketEvent] = if options.failover {
            &[
                zmq::SocketEvent::CONNECTED,
                zmq::SocketEvent::CONNECT_RETRIED,
                zmq::SocketEvent::HANDSHAKE_SUCCEEDED,
                zmq::SocketEvent::DISCONNECTED,
            ]
        } else if options.reconnect_spread.is_some() {
            &[zmq::SocketEvent::HANDSHAKE_SUCCEEDED, zmq::SocketEvent::DISCONNECTED]
        } else {
            &[zmq::SocketEvent::HANDSHAKE_SUCCEEDED]
        };
        Some(monitor::monitor(ctx, &dealer, events)?)
    } else {
        None
    };
    Ok(Sockets { dealer, monitor })
}

/// A number in [0, 1), different at each call (where in the spread an
/// agent connects again): std's randomly keyed hasher over a counter.
fn draw() -> f64 {
    use std::hash::{BuildHasher as _, Hasher as _};
    static DRAWS: AtomicU64 = AtomicU64::new(0);
    let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
    hasher.write_u64(DRAWS.fetch_add(1, Ordering::Relaxed));
    (hasher.finish() >> 11) as f64 / (1u64 << 53) as f64
}

impl Agent {
    /// Sends `frames` on the DEALER (queued while disconnected; dropped
    /// when the queue is full, as the real agent's are); whether it went.
    fn send(&self, frames: Vec<Vec<u8>>) -> bool {
        self.sockets.as_ref().is_some_and(|s| s.dealer.send_multipart(frames, zmq::DONTWAIT).is_ok())
    }

    /// Sends a registration.
    fn register(&self) {
        self.send(self.session.registration().to_frames());
    }

    /// Connects the DEALER to `endpoints`; a baseline agent says hello
    /// (queued until the connection is up).
    fn connect(&mut self, endpoints: &Endpoints) -> zmq::Result<()> {
        let Some(s) = &self.sockets else { return Ok(()) };
        s.dealer.connect(&endpoints.receive)?;
        if !self.hello.is_empty() {
            let hello = std::iter::once(relay::HELLO.to_vec()).chain(self.hello.iter().cloned()).collect();
            self.send(hello);
        }
        Ok(())
    }

    /// Counts the change of its registration from `was` to now.
    fn count_registered(&self, was: bool, counters: &Counters) {
        match (was, self.session.registered()) {
            (false, true) => counters.registered.fetch_add(1, Ordering::Relaxed),
            (true, false) => counters.registered.fetch_sub(1, Ordering::Relaxed),
            _ => 0,
        };
    }

    /// Drains the monitor; registers, or disconnects until it is time to
    /// connect again, when the session says so.
    fn read_monitor(&mut self, endpoints: &Endpoints, counters: &Counters) {
        let Some(monitor) = self.sockets.as_ref().and_then(|s| s.monitor.as_ref()) else { return };
        let (was, mut register, mut disconnect) = (self.session.registered(), false, false);
        while let Some(event) = monitor::read(monitor) {
            match self.session.on_monitor(event.event, Instant::now(), draw()) {
                Step::Register => register = true,
                Step::Disconnect => disconnect = true,
                Step::Nothing => {}
            }
        }
        self.count_registered(was, counters);
        if disconnect {
            // No reconnection by libzmq: the agent connects again at its
            // own time ([`Agent::reconnect_if_due`]); what was queued goes.
            if let Some(s) = &self.sockets {
                let _ = s.dealer.disconnect(&endpoints.receive);
            }
        } else if register {
            self.register();
        }
    }

    /// Connects again once the delay after a lost connection has passed
    /// (it registers at the handshake).
    fn reconnect_if_due(&mut self, endpoints: &Endpoints, now: Instant, counters: &Counters) {
        if self.session.reconnect_due(now) && self.connect(endpoints).is_ok() {
            counters.reconnects.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Reads everything waiting on the DEALER (until EAGAIN, which also
    /// resets its notification descriptor): requests, answered; answers to
    /// registrations and facts reports, counted. Returns the answers sent.
    fn drain(&mut self, kind: Kind, options: &AgentOptions, counters: &Counters) -> u64 {
        let mut n = 0;
        while let Some(frames) = self.sockets.as_ref().and_then(|s| s.dealer.recv_multipart(zmq::DONTWAIT).ok()) {
            n += match kind {
                Kind::Pantry => self.on_pantry(&frames, options, counters),
                Kind::Baseline => self.on_baseline(frames),
            };
        }
        n
    }

    /// One message from the Pantry server.
    fn on_pantry(&mut self, frames: &[Vec<u8>], options: &AgentOptions, counters: &Counters) -> u64 {
        let received = Instant::now();
        let Ok(message) = Message::from_frames(frames) else { return 0 };
        match message.message_type() {
            register_client::TYPE => {
                let was = self.session.registered();
                if let Registration::Refused(why) = self.session.on_answer(&message) {
                    counters.refused.fetch_add(1, Ordering::Relaxed);
                    if let Ok(mut first) = counters.refusal.lock() {
                        first.get_or_insert(why);
                    }
                }
                self.count_registered(was, counters);
                0
            }
            facts_command::TYPE => {
                match message.error() {
                    None => counters.facts_kept.fetch_add(1, Ordering::Relaxed),
                    Some(why) => {
                        if let Ok(mut first) = counters.facts_refusal.lock() {
                            first.get_or_insert_with(|| why.to_owned());
                        }
                        counters.facts_refused.fetch_add(1, Ordering::Relaxed)
                    }
                };
                0
            }
            _ => self.run(message, received, options, counters),
        }
    }

    /// What the real agent does with a request (SPEC §4: check the
    /// stream, with `verify_signatures` the signature, run the command,
    /// answer when asked to); with `simulated_exec`, the bench's own `exec`
    /// too ([`simulated`]). Returns the answers sent.
    fn run(&mut self, request: Message, received: Instant, options: &AgentOptions, counters: &Counters) -> u64 {
        if !self.me.filter.accepts_stream(&request.stream) {
            return 0;
        }
        let answers = request.metadata.requires_response;
        let trusted = options.verify_signatures.as_deref().filter(|_| !counters.verify_off.load(Ordering::SeqCst));
        if let Some(list) = trusted {
            // As `Trust::check` (the agent's facts: none, no `-F` here).
            match signing::verify(&request, list, &self.me.filter, None, &mut self.seen, SystemTime::now()) {
                Ok(_) => {
                    counters.verified.fetch_add(1, Ordering::Relaxed);
                }
                Err(rejected) => {
                    counters.verify_refused.fetch_add(1, Ordering::Relaxed);
                    if let Ok(mut first) = counters.verify_refusal.lock() {
                        first.get_or_insert_with(|| format!("{} ({})", rejected.refusal, request.uuid()));
                    }
                    let mut answer = request.response();
                    answer.metadata.from = self.me.identity().to_owned();
                    answer.set_error(format!("refused: {}", rejected.refusal));
                    return u64::from(answers && self.send(answer.to_frames()));
                }
            }
        }
        if options.simulated_exec {
            let record = ExecRecord {
                agent: self.index,
                job: request.uuid().to_owned(),
                received,
                answered: None,
                cancelled: false,
            };
            match simulated::step(&request, self.me.identity()) {
                simulated::Step::Answer(response) => {
                    let at = counters.exec_received(record);
                    if answers && self.send(response.to_frames()) {
                        counters.exec_answered(at, false);
                        return 1;
                    }
                    return 0;
                }
                simulated::Step::Hold => {
                    let at = counters.exec_received(record);
                    self.held.push((request, at));
                    return 0;
                }
                simulated::Step::Cancel(job) => {
                    let (cancelled, kept): (Vec<_>, Vec<_>) =
                        std::mem::take(&mut self.held).into_iter().partition(|(r, _)| r.uuid() == job);
                    self.held = kept;
                    let mut n = 0;
                    for (held, at) in cancelled {
                        let response = simulated::answer(&held, self.me.identity(), None, true);
                        if held.metadata.requires_response && self.send(response.to_frames()) {
                            counters.exec_answered(at, true);
                            n += 1;
                        }
                    }
                    return n;
                }
                simulated::Step::Other => {}
            }
        }
        let response = work::run_on_client(&request, &self.me);
        u64::from(answers && self.send(response.to_frames()))
    }

    /// One request from the relay: `[requester, payload]`, echoed back.
    fn on_baseline(&self, frames: Vec<Vec<u8>>) -> u64 {
        let Ok([requester, payload]) = <[Vec<u8>; 2]>::try_from(frames) else { return 0 };
        u64::from(self.send(vec![relay::ANSWER.to_vec(), requester, payload]))
    }

    /// Sends its `Facts` report, its JSON about `bytes` long, gathered now
    /// every hour (fresh for three).
    fn report_facts(&self, bytes: usize) {
        let identity = self.me.identity();
        let facts = crate::common::facts::machine(self.index, identity, bytes);
        let report = facts_command::Report {
            hash: pantry_shared::facts::hash(&facts),
            facts,
            gathered: humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string(),
            interval: 3600,
        };
        self.send(facts_command::request(identity, &report).to_frames());
    }

    /// Starts a move to server `to`: closes its sockets (the connection
    /// closes at once with linger 0). The new ones are made at the next
    /// check ([`Agent::reopen`]), once libzmq's reaper has closed the old
    /// ones' descriptors: a move never needs more descriptors than the
    /// agent had.
    fn close_for(&mut self, to: usize, counters: &Counters) {
        let was = self.session.registered();
        self.sockets = None;
        self.moving_to = Some(to);
        self.session.closed();
        self.count_registered(was, counters);
    }

    /// Makes the sockets of a move and connects them; on error the agent
    /// stays closed and tries again at the next check.
    fn reopen(
        &mut self,
        kind: Kind,
        ctx: &zmq::Context,
        servers: &[Endpoints],
        options: &AgentOptions,
    ) -> zmq::Result<()> {
        let Some(to) = self.moving_to else { return Ok(()) };
        self.sockets = Some(open_sockets(kind, ctx, &self.security, options)?);
        self.moving_to = None;
        self.session.moved(to, Instant::now());
        self.connect(&servers[to])
    }
}

fn connect_agent(
    kind: Kind,
    ctx: &zmq::Context,
    place: Place,
    i: usize,
    security: &SocketSecurity,
    options: &AgentOptions,
) -> zmq::Result<Agent> {
    // A bench agent runs no commands but `echo`.
    let me = ClientContext { filter: filter(i), allow_exec: false, file_service: None, running: Default::default() };
    let pantry = kind == Kind::Pantry;
    // The relay matches topics exactly, as Pantry's server does.
    let hello = match kind {
        Kind::Pantry => Vec::new(),
        Kind::Baseline => {
            me.filter.streams().into_iter().map(String::into_bytes).chain([BROADCAST_TOPIC.into()]).collect()
        }
    };
    let failover = pantry && options.failover;
    let session = Session::new(
        me.filter.clone(),
        options.heartbeat,
        failover.then(|| options.heartbeat.map_or(Duration::from_secs(1), |h| h.max(Duration::from_secs(1)))),
        options.reconnect_spread.filter(|_| pantry),
        place.servers.len(),
        place.first,
    );
    let sockets = open_sockets(kind, ctx, security, options)?;
    let mut agent = Agent {
        index: i,
        me,
        session,
        hello,
        security: security.clone(),
        sockets: Some(sockets),
        moving_to: None,
        retry_at: None,
        held: Vec::new(),
        seen: Seen::default(),
    };
    agent.connect(&place.servers[place.first])?;
    if pantry && agent.session.registers_at_once() {
        // Queued until the connection is up, like the real agent's first
        // check-in.
        agent.register();
    }
    Ok(agent)
}

/// Tags a monitor's entry in the epoll set (the DEALER's is the agent's
/// index).
const MONITOR_TAG: u64 = 1 << 32;
const INDEX_MASK: u64 = MONITOR_TAG - 1;

/// How often agents that fail over or come back after a lost connection
/// are checked for a due move or reconnection (failing over: for missed
/// monitor wake-ups too).
const TIMER_CHECK: Duration = Duration::from_millis(50);

/// At most this often, while nothing is ready, every socket of a thread
/// is looked at in case a wake-up was missed.
const IDLE_SWEEP: Duration = Duration::from_millis(100);

fn worker(
    kind: Kind,
    place: Place,
    specs: Vec<(usize, SocketSecurity)>,
    options: AgentOptions,
    stop: &AtomicBool,
    counters: &Counters,
    ready: mpsc::Sender<Result<()>>,
) {
    let ctx = zmq::Context::new();
    let mut agents = Vec::with_capacity(specs.len());
    // When each agent checks in next, in order (one interval for all).
    let mut heartbeats: VecDeque<(Instant, usize)> = VecDeque::new();
    let heartbeat = options.heartbeat.filter(|_| kind == Kind::Pantry).map(|h| h.max(Duration::from_secs(1)));
    let failover = options.failover && kind == Kind::Pantry && place.servers.len() > 1;
    let reconnecting = options.reconnect_spread.is_some() && kind == Kind::Pantry;
    let facts_bytes = options.facts_bytes.filter(|_| kind == Kind::Pantry);
    let mut facts_rounds = 0;
    for (k, (i, security)) in specs.iter().enumerate() {
        // Paced: a burst of thousands of connects overflows the server's
        // accept queue (libzmq's backlog is 100) and the kernel retries the
        // dropped ones only after 1 s, 3 s, 7 s...
        if k > 0 && k % CONNECT_BATCH == 0 {
            std::thread::sleep(CONNECT_PAUSE);
        }
        match connect_agent(kind, &ctx, place, *i, security, &options) {
            Ok(a) => {
                if let Some(every) = heartbeat {
                    heartbeats.push_back((Instant::now() + every, agents.len()));
                }
                agents.push(a);
            }
            Err(e) => {
                let _ = ready.send(Err(anyhow!("agent {i}: {e} (open-file limit?)")));
                return;
            }
        }
    }
    let epoll = Epoll::new().and_then(|e| {
        for (a, agent) in agents.iter().enumerate() {
            e.add(a, agent)?;
        }
        Ok(e)
    });
    let epoll = match epoll {
        Ok(e) => e,
        Err(e) => {
            let _ = ready.send(Err(anyhow!("epoll: {e}")));
            return;
        }
    };
    let _ = ready.send(Ok(()));
    let started = Instant::now();
    let (mut next_check, mut next_sweep) = (started, started);
    let mut events = vec![libc::epoll_event { events: 0, u64: 0 }; 2 * agents.len().max(1)];
    while !stop.load(Ordering::Relaxed) && started.elapsed() < MAX_LIFETIME {
        let mut due = heartbeats.front().map(|(due, _)| *due);
        if failover || reconnecting {
            due = Some(due.map_or(next_check, |d| d.min(next_check)));
        }
        let timeout =
            due.map_or(100, |due| due.saturating_duration_since(Instant::now()).as_millis().clamp(1, 100) as i32);
        let ready = epoll.wait(&mut events, timeout);
        if let Some(every) = heartbeat {
            let now = Instant::now();
            while heartbeats.front().is_some_and(|(due, _)| *due <= now) {
                let Some((_, a)) = heartbeats.pop_front() else { break };
                agents[a].register();
                // A send may take the DEALER's pending notification: read
                // what came meanwhile now rather than at the next sweep.
                counters.answered.fetch_add(agents[a].drain(kind, &options, counters), Ordering::Relaxed);
                heartbeats.push_back((now + every, a));
            }
        }
        let asked = counters.facts_asked.load(Ordering::Relaxed);
        if let Some(bytes) = facts_bytes.filter(|_| asked > facts_rounds) {
            facts_rounds = asked;
            // Paced as the connections are: a burst of a thousand reports
            // would measure the server's transient peak (kept by its
            // allocator) rather than the facts it keeps.
            for (k, agent) in agents.iter_mut().enumerate() {
                if k > 0 && k % CONNECT_BATCH == 0 {
                    std::thread::sleep(CONNECT_PAUSE);
                }
                agent.report_facts(bytes);
                counters.answered.fetch_add(agent.drain(kind, &options, counters), Ordering::Relaxed);
            }
        }
        if (failover || reconnecting) && Instant::now() >= next_check {
            next_check = Instant::now() + TIMER_CHECK;
            if failover {
                check_moves(kind, &ctx, place.servers, &options, heartbeat, &mut agents, &epoll, counters);
            } else {
                let now = Instant::now();
                for agent in &mut agents {
                    let server = agent.session.server();
                    agent.reconnect_if_due(&place.servers[server], now, counters);
                }
            }
        }
        if ready == 0 {
            if Instant::now() >= next_sweep {
                next_sweep = Instant::now() + IDLE_SWEEP;
                for agent in &mut agents {
                    let waiting = agent
                        .sockets
                        .as_ref()
                        .is_some_and(|s| s.dealer.get_events().is_ok_and(|e| e.contains(zmq::POLLIN)));
                    if waiting {
                        counters.answered.fetch_add(agent.drain(kind, &options, counters), Ordering::Relaxed);
                    }
                    let server = agent.session.server();
                    agent.read_monitor(&place.servers[server], counters);
                }
            }
            continue;
        }
        for event in &events[..ready] {
            let agent = &mut agents[(event.u64 & INDEX_MASK) as usize];
            if event.u64 & MONITOR_TAG != 0 {
                let server = agent.session.server();
                agent.read_monitor(&place.servers[server], counters);
            } else {
                counters.answered.fetch_add(agent.drain(kind, &options, counters), Ordering::Relaxed);
            }
        }
    }
    drop(agents);
}

/// The failover check of a worker's agents: makes the sockets of those
/// moving, starts the moves that are due.
#[allow(clippy::too_many_arguments)]
fn check_moves(
    kind: Kind,
    ctx: &zmq::Context,
    servers: &[Endpoints],
    options: &AgentOptions,
    heartbeat: Option<Duration>,
    agents: &mut [Agent],
    epoll: &Epoll,
    counters: &Counters,
) {
    let now = Instant::now();
    let retry = heartbeat.unwrap_or(Duration::from_secs(1));
    // A context that could not make a socket is full (libzmq's reaper has
    // not freed the closed ones' places yet): no more tries in this check,
    // each failed one leaves it more to free.
    let mut full = false;
    for (a, agent) in agents.iter_mut().enumerate() {
        if agent.moving_to.is_some() {
            if full || agent.retry_at.is_some_and(|at| now < at) {
                continue;
            }
            match agent.reopen(kind, ctx, servers, options) {
                Ok(()) => {
                    agent.retry_at = None;
                    counters.moves.fetch_add(1, Ordering::Relaxed);
                    let _ = epoll.add(a, agent);
                }
                Err(e) => {
                    if let Ok(mut first) = counters.move_error.lock() {
                        first.get_or_insert_with(|| {
                            let open = std::fs::read_dir("/proc/self/fd").map_or(0, |d| d.count());
                            format!("{e} ({open} descriptors open in the bench process)")
                        });
                    }
                    counters.failed_moves.fetch_add(1, Ordering::Relaxed);
                    agent.retry_at = Some(now + retry);
                    full = true;
                    // Made but not connected: it moves on later.
                    if agent.sockets.is_some() {
                        let _ = epoll.add(a, agent);
                    }
                }
            }
            continue;
        }
        agent.read_monitor(&servers[agent.session.server()], counters);
        if !agent.session.registered() {
            // Registration answers, in case a wake-up was missed.
            counters.answered.fetch_add(agent.drain(kind, options, counters), Ordering::Relaxed);
        }
        if let Some(to) = agent.session.move_due(now) {
            epoll.remove(agent);
            agent.close_for(to, counters);
        }
    }
}

/// An epoll set over the agents' DEALER and monitor notification
/// descriptors (ZMQ_FD), so that a message costs a wake-up of its own
/// agent only: `zmq::poll` would check every socket of the thread on every
/// wake-up.
struct Epoll(libc::c_int);

impl Epoll {
    fn new() -> std::io::Result<Epoll> {
        // SAFETY: a plain syscall; the descriptor is ours.
        let fd = unsafe { libc::epoll_create1(libc::EPOLL_CLOEXEC) };
        if fd < 0 {
            return Err(std::io::Error::last_os_error());
        }
        Ok(Epoll(fd))
    }

    /// The sockets of agent `a`.
    fn sockets(a: usize, agent: &Agent) -> Vec<(&zmq::Socket, u64)> {
        let Some(s) = &agent.sockets else { return Vec::new() };
        let a = a as u64;
        let mut list = vec![(&s.dealer, a)];
        list.extend(s.monitor.as_ref().map(|m| (m, a | MONITOR_TAG)));
        list
    }

    /// Watches agent `a`'s sockets.
    fn add(&self, a: usize, agent: &Agent) -> std::io::Result<()> {
        for (socket, tag) in Epoll::sockets(a, agent) {
            let zfd = socket.get_fd().map_err(std::io::Error::from)?;
            let mut event = libc::epoll_event { events: libc::EPOLLIN as u32, u64: tag };
            // SAFETY: libzmq keeps `zfd` open for as long as the socket
            // lives; the set forgets it (`remove`) before the socket goes.
            if unsafe { libc::epoll_ctl(self.0, libc::EPOLL_CTL_ADD, zfd, &mut event) } != 0 {
                return Err(std::io::Error::last_os_error());
            }
        }
        Ok(())
    }

    /// Stops watching an agent's sockets (before they are replaced).
    fn remove(&self, agent: &Agent) {
        for (socket, _) in Epoll::sockets(0, agent) {
            if let Ok(zfd) = socket.get_fd() {
                // SAFETY: removing a descriptor from our own set; one that
                // is not in it fails harmlessly.
                unsafe { libc::epoll_ctl(self.0, libc::EPOLL_CTL_DEL, zfd, std::ptr::null_mut()) };
            }
        }
    }

    /// Ready entries written to the front of `events`; 0 on timeout or error.
    fn wait(&self, events: &mut [libc::epoll_event], timeout_ms: i32) -> usize {
        // SAFETY: `events` has room for `events.len()` entries.
        let n = unsafe { libc::epoll_wait(self.0, events.as_mut_ptr(), events.len() as i32, timeout_ms) };
        n.max(0) as usize
    }
}

impl Drop for Epoll {
    fn drop(&mut self) {
        // SAFETY: closing our own epoll descriptor once.
        unsafe { libc::close(self.0) };
    }
}
