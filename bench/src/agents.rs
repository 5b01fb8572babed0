//! Simulated agents inside the bench process. Each agent has its own SUB and
//! DEALER socket (and, under CURVE, its own key pair). Agents are spread
//! over several ZeroMQ contexts (at most 1,023 sockets each); one thread per
//! context polls its agents' SUB sockets and answers.
//!
//! A Pantry agent registers like the real one (`RegisterClient` with its
//! application, environment and roles), subscribes to its identity, `app`,
//! `app.env`, `app.env.role` and the broadcast topic, and answers requests
//! with `run_on_client`. A baseline agent subscribes to the same topics and
//! echoes the payload back without decoding anything.
//!
//! By default an agent registers once. [`AgentOptions`] (the presence and
//! job-store scenarios) add what the real agent does to come back after a
//! server restart: a `RegisterClient` with `heartbeat_interval` every
//! heartbeat, and another whenever its DEALER completes a handshake (a
//! socket monitor per agent); and linger 0, so that dropping a pool closes
//! its connections at once (a killed agent).

use std::collections::VecDeque;
use std::ops::Range;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{mpsc, Arc};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::{anyhow, Result};
use pantry_shared::commands::{self, register_client, ClientContext};
use pantry_shared::filter::{ClientFilter, BROADCAST_TOPIC};
use pantry_shared::monitor::{self, SocketEvent};
use pantry_shared::security::SocketSecurity;
use pantry_shared::Message;

use crate::keys::Pair;
use crate::procs::Endpoints;
use crate::relay;

pub const ENVIRONMENT: &str = "perf";
/// Agents are put in applications of this many (`g000`, `g001`, ...), so
/// that a pool can be checked group by group: a broadcast to thousands of
/// Pantry agents loses answers (see the report). The group is the
/// application, not the environment: a stream `app.env` also reaches every
/// subscriber of `app` (SUB matches prefixes), so every agent would receive
/// every group's check.
pub const GROUP_SIZE: usize = 250;
pub const ROLE: &str = "echo";

/// Agents per context: two sockets each, under libzmq's 1,023 per context.
pub const AGENTS_PER_CONTEXT: usize = 500;
/// With a DEALER monitor (two more sockets each).
const MONITORED_AGENTS_PER_CONTEXT: usize = 250;

/// Agents connected at once, and the pause between batches (about 650
/// agents, 1,300 connections, per second: the order of a server's CURVE
/// handshake rate here).
pub const CONNECT_BATCH: usize = 20;
pub const CONNECT_PAUSE: Duration = Duration::from_millis(30);

/// No agent thread outlives this, whatever happens to the bench.
const MAX_LIFETIME: Duration = Duration::from_secs(30 * 60);

/// Which server the agents talk to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
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

/// The identity of agent `i`: fixed width, so that no identity is a prefix
/// of another (SUB matching is by prefix).
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
#[derive(Debug, Clone, Copy, Default)]
pub struct AgentOptions {
    /// Register again this often, with `heartbeat_interval` in the
    /// registration (whole seconds, at least 1), as the real agent does.
    pub heartbeat: Option<Duration>,
    /// Register again whenever the DEALER completes a handshake (after a
    /// reconnection), as the real agent does.
    pub register_on_reconnect: bool,
    /// Linger 0 on both sockets: dropping the pool closes its connections
    /// at once, like a killed process.
    pub linger_zero: bool,
}

impl AgentOptions {
    /// The real agent's behaviour with `heartbeat`.
    pub fn like_the_real_agent(heartbeat: Duration) -> AgentOptions {
        AgentOptions { heartbeat: Some(heartbeat), register_on_reconnect: true, linger_zero: true }
    }

    fn heartbeat_seconds(&self) -> Option<u64> {
        self.heartbeat.map(|h| h.as_secs().max(1))
    }
}

struct Worker {
    thread: Option<JoinHandle<()>>,
}

/// N agents, running until the pool is dropped.
pub struct Pool {
    pub kind: Kind,
    pub size: usize,
    workers: Vec<Worker>,
    stop: Arc<AtomicBool>,
    answered: Arc<AtomicU64>,
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
        let stop = Arc::new(AtomicBool::new(false));
        let answered = Arc::new(AtomicU64::new(0));
        let size = range.len();
        let mut pool = Pool { kind, size, workers: Vec::new(), stop: stop.clone(), answered: answered.clone() };
        let per_context = if options.register_on_reconnect { MONITORED_AGENTS_PER_CONTEXT } else { AGENTS_PER_CONTEXT };
        let mut first = range.start;
        while first < range.end {
            let last = (first + per_context).min(range.end);
            let mut agents = Vec::with_capacity(last - first);
            for i in first..last {
                agents.push((i, client_security(endpoints, pairs.get(i))?));
            }
            let (ready_tx, ready_rx) = mpsc::channel();
            let (endpoints, stop, answered) = (endpoints.clone(), stop.clone(), answered.clone());
            let thread = std::thread::Builder::new().name(format!("agents-{first}")).spawn(move || {
                worker(kind, &endpoints, agents, options, &stop, &answered, ready_tx);
            })?;
            pool.workers.push(Worker { thread: Some(thread) });
            match ready_rx.recv_timeout(Duration::from_secs(60)) {
                Ok(Ok(())) => {}
                Ok(Err(e)) => return Err(anyhow!("agents {first}..{last}: {e}")),
                Err(_) => return Err(anyhow!("agents {first}..{last} did not start")),
            }
            first = last;
        }
        Ok(pool)
    }

    /// Answers sent by all agents so far.
    pub fn answered(&self) -> u64 {
        self.answered.load(Ordering::Relaxed)
    }
}

impl Drop for Pool {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for w in &mut self.workers {
            if let Some(t) = w.thread.take() {
                let _ = t.join();
            }
        }
    }
}

struct Agent {
    me: ClientContext,
    /// The exact topics it subscribed to: SUB matching is by prefix, so a
    /// message to `bench.g001` also reaches the subscribers of `bench`.
    topics: Vec<Vec<u8>>,
    sub: zmq::Socket,
    dealer: zmq::Socket,
    /// The DEALER's handshakes (`register_on_reconnect`).
    monitor: Option<zmq::Socket>,
}

impl Agent {
    /// Sends a registration (queued while disconnected; dropped when the
    /// queue is full, as the real agent's are).
    fn register(&self, options: &AgentOptions) {
        let request = match options.heartbeat_seconds() {
            Some(seconds) => register_client::request_every(&self.me.filter, seconds),
            None => register_client::request(&self.me.filter),
        };
        let _ = self.dealer.send_multipart(request.to_frames(), zmq::DONTWAIT);
    }

    /// Drains the monitor; whether the DEALER completed a handshake.
    fn reconnected(&self) -> bool {
        let Some(monitor) = &self.monitor else { return false };
        let mut handshake = false;
        while let Some(event) = monitor::read(monitor) {
            handshake |= event.event == SocketEvent::HandshakeSucceeded;
        }
        handshake
    }
}

fn connect_agent(
    kind: Kind,
    ctx: &zmq::Context,
    endpoints: &Endpoints,
    i: usize,
    security: &SocketSecurity,
    options: &AgentOptions,
) -> zmq::Result<Agent> {
    // A bench agent runs no commands but `echo`.
    let me = ClientContext { filter: filter(i), allow_exec: false, file_service: None };
    let sub = security.socket(ctx, zmq::SUB)?;
    let topics: Vec<Vec<u8>> =
        me.filter.streams().into_iter().map(String::into_bytes).chain([BROADCAST_TOPIC.as_bytes().to_vec()]).collect();
    for topic in &topics {
        sub.set_subscribe(topic)?;
    }
    let dealer = security.socket(ctx, zmq::DEALER)?;
    for socket in [&sub, &dealer] {
        socket.set_reconnect_ivl(100)?;
        socket.set_reconnect_ivl_max(10_000)?;
        if options.linger_zero {
            socket.set_linger(0)?;
        }
    }
    let monitor = if options.register_on_reconnect && kind == Kind::Pantry {
        Some(monitor::monitor(ctx, &dealer, &[zmq::SocketEvent::HANDSHAKE_SUCCEEDED])?)
    } else {
        None
    };
    sub.connect(&endpoints.publish)?;
    dealer.connect(&endpoints.receive)?;
    let agent = Agent { me, topics, sub, dealer, monitor };
    if kind == Kind::Pantry {
        // Queued until the connection is up, like the real agent's first
        // check-in.
        agent.register(options);
    }
    Ok(agent)
}

/// Tags a monitor's entry in the epoll set (the SUB's is the agent's index).
const MONITOR_TAG: u64 = 1 << 32;

fn worker(
    kind: Kind,
    endpoints: &Endpoints,
    specs: Vec<(usize, SocketSecurity)>,
    options: AgentOptions,
    stop: &AtomicBool,
    answered: &AtomicU64,
    ready: mpsc::Sender<Result<(), String>>,
) {
    let ctx = zmq::Context::new();
    let mut agents = Vec::with_capacity(specs.len());
    // When each agent checks in next, in order (one interval for all).
    let mut heartbeats: VecDeque<(Instant, usize)> = VecDeque::new();
    let heartbeat = options.heartbeat.filter(|_| kind == Kind::Pantry).map(|h| h.max(Duration::from_secs(1)));
    for (k, (i, security)) in specs.iter().enumerate() {
        // Paced: a burst of thousands of connects overflows the server's
        // accept queue (libzmq's backlog is 100) and the kernel retries the
        // dropped ones only after 1 s, 3 s, 7 s...
        if k > 0 && k % CONNECT_BATCH == 0 {
            std::thread::sleep(CONNECT_PAUSE);
        }
        match connect_agent(kind, &ctx, endpoints, *i, security, &options) {
            Ok(a) => {
                if let Some(every) = heartbeat {
                    heartbeats.push_back((Instant::now() + every, agents.len()));
                }
                agents.push(a);
            }
            Err(e) => {
                let _ = ready.send(Err(format!("agent {i}: {e} (open-file limit?)")));
                return;
            }
        }
    }
    let epoll = match Epoll::watch(&agents) {
        Ok(e) => e,
        Err(e) => {
            let _ = ready.send(Err(format!("epoll: {e}")));
            return;
        }
    };
    let _ = ready.send(Ok(()));
    let answer = |agent: &Agent| match kind {
        Kind::Pantry => answer_pantry(agent),
        Kind::Baseline => answer_baseline(agent),
    };
    let started = Instant::now();
    let mut events = vec![libc::epoll_event { events: 0, u64: 0 }; 2 * agents.len().max(1)];
    while !stop.load(Ordering::Relaxed) && started.elapsed() < MAX_LIFETIME {
        let timeout = heartbeats
            .front()
            .map_or(100, |(due, _)| due.saturating_duration_since(Instant::now()).as_millis().clamp(1, 100) as i32);
        let ready = epoll.wait(&mut events, timeout);
        if let Some(every) = heartbeat {
            let now = Instant::now();
            while heartbeats.front().is_some_and(|(due, _)| *due <= now) {
                let Some((_, a)) = heartbeats.pop_front() else { break };
                agents[a].register(&options);
                heartbeats.push_back((now + every, a));
            }
        }
        if ready == 0 {
            // Idle: a sweep over every socket, in case a wake-up was missed.
            for agent in &agents {
                if agent.sub.get_events().is_ok_and(|e| e.contains(zmq::POLLIN)) {
                    answered.fetch_add(answer(agent), Ordering::Relaxed);
                }
                if agent.reconnected() {
                    agent.register(&options);
                }
            }
            continue;
        }
        for event in &events[..ready] {
            if event.u64 & MONITOR_TAG != 0 {
                let agent = &agents[(event.u64 & !MONITOR_TAG) as usize];
                // A restarted server may have lost it: check in now.
                if agent.reconnected() {
                    agent.register(&options);
                }
                continue;
            }
            // Draining until EAGAIN also resets the socket's notification fd.
            answered.fetch_add(answer(&agents[event.u64 as usize]), Ordering::Relaxed);
        }
    }
    drop(agents);
}

/// An epoll set over the agents' SUB notification descriptors (ZMQ_FD),
/// so that a message costs a wake-up of its own agent only: `zmq::poll`
/// would check every socket of the thread on every wake-up.
struct Epoll(libc::c_int);

impl Epoll {
    fn watch(agents: &[Agent]) -> std::io::Result<Epoll> {
        // SAFETY: plain syscalls on descriptors we own or that libzmq keeps
        // open for as long as the sockets live (they outlive the set).
        unsafe {
            let fd = libc::epoll_create1(libc::EPOLL_CLOEXEC);
            if fd < 0 {
                return Err(std::io::Error::last_os_error());
            }
            let set = Epoll(fd);
            for (i, agent) in agents.iter().enumerate() {
                let sockets = [(&agent.sub, i as u64)]
                    .into_iter()
                    .chain(agent.monitor.as_ref().map(|m| (m, i as u64 | MONITOR_TAG)));
                for (socket, tag) in sockets {
                    let zfd = socket.get_fd().map_err(std::io::Error::from)?;
                    let mut event = libc::epoll_event { events: libc::EPOLLIN as u32, u64: tag };
                    if libc::epoll_ctl(fd, libc::EPOLL_CTL_ADD, zfd, &mut event) != 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                }
            }
            Ok(set)
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

/// What the real agent does with each request (SPEC §4: check the stream,
/// run the command, answer when asked to).
fn answer_pantry(agent: &Agent) -> u64 {
    let mut n = 0;
    while let Ok(frames) = agent.sub.recv_multipart(zmq::DONTWAIT) {
        let Ok(request) = Message::from_frames(&frames) else { continue };
        if !agent.me.filter.accepts_stream(&request.stream) {
            continue;
        }
        let response = commands::run_on_client(&request, &agent.me);
        if request.metadata.requires_response
            && agent.dealer.send_multipart(response.to_frames(), zmq::DONTWAIT).is_ok()
        {
            n += 1;
        }
    }
    n
}

fn answer_baseline(agent: &Agent) -> u64 {
    let mut n = 0;
    while let Ok(frames) = agent.sub.recv_multipart(zmq::DONTWAIT) {
        let [topic, requester, payload]: [Vec<u8>; 3] = match frames.try_into() {
            Ok(f) => f,
            Err(_) => continue,
        };
        if !agent.topics.contains(&topic) {
            continue;
        }
        if agent.dealer.send_multipart([relay::ANSWER.to_vec(), requester, payload], zmq::DONTWAIT).is_ok() {
            n += 1;
        }
    }
    n
}
