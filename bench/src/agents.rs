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

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{mpsc, Arc};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::{anyhow, Result};
use pantry_shared::commands::{self, register_client, ClientContext};
use pantry_shared::filter::{ClientFilter, BROADCAST_TOPIC};
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
        let stop = Arc::new(AtomicBool::new(false));
        let answered = Arc::new(AtomicU64::new(0));
        let mut pool = Pool { kind, size, workers: Vec::new(), stop: stop.clone(), answered: answered.clone() };
        let mut first = 0;
        while first < size {
            let last = (first + AGENTS_PER_CONTEXT).min(size);
            let mut agents = Vec::with_capacity(last - first);
            for i in first..last {
                agents.push((i, client_security(endpoints, pairs.get(i))?));
            }
            let (ready_tx, ready_rx) = mpsc::channel();
            let (endpoints, stop, answered) = (endpoints.clone(), stop.clone(), answered.clone());
            let thread = std::thread::Builder::new().name(format!("agents-{first}")).spawn(move || {
                worker(kind, &endpoints, agents, &stop, &answered, ready_tx);
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
}

fn connect_agent(
    kind: Kind,
    ctx: &zmq::Context,
    endpoints: &Endpoints,
    i: usize,
    security: &SocketSecurity,
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
    }
    sub.connect(&endpoints.publish)?;
    dealer.connect(&endpoints.receive)?;
    if kind == Kind::Pantry {
        // Queued until the connection is up, like the real agent's first
        // check-in.
        let _ = dealer.send_multipart(register_client::request(&me.filter).to_frames(), zmq::DONTWAIT);
    }
    Ok(Agent { me, topics, sub, dealer })
}

fn worker(
    kind: Kind,
    endpoints: &Endpoints,
    specs: Vec<(usize, SocketSecurity)>,
    stop: &AtomicBool,
    answered: &AtomicU64,
    ready: mpsc::Sender<Result<(), String>>,
) {
    let ctx = zmq::Context::new();
    let mut agents = Vec::with_capacity(specs.len());
    for (k, (i, security)) in specs.iter().enumerate() {
        // Paced: a burst of thousands of connects overflows the server's
        // accept queue (libzmq's backlog is 100) and the kernel retries the
        // dropped ones only after 1 s, 3 s, 7 s...
        if k > 0 && k % CONNECT_BATCH == 0 {
            std::thread::sleep(CONNECT_PAUSE);
        }
        match connect_agent(kind, &ctx, endpoints, *i, security) {
            Ok(a) => agents.push(a),
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
    let mut events = vec![libc::epoll_event { events: 0, u64: 0 }; agents.len().max(1)];
    while !stop.load(Ordering::Relaxed) && started.elapsed() < MAX_LIFETIME {
        let ready = epoll.wait(&mut events, 100);
        if ready == 0 {
            // Idle: a sweep over every socket, in case a wake-up was missed.
            for agent in &agents {
                if agent.sub.get_events().is_ok_and(|e| e.contains(zmq::POLLIN)) {
                    answered.fetch_add(answer(agent), Ordering::Relaxed);
                }
            }
            continue;
        }
        for event in &events[..ready] {
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
                let zfd = agent.sub.get_fd().map_err(std::io::Error::from)?;
                let mut event = libc::epoll_event { events: libc::EPOLLIN as u32, u64: i as u64 };
                if libc::epoll_ctl(fd, libc::EPOLL_CTL_ADD, zfd, &mut event) != 0 {
                    return Err(std::io::Error::last_os_error());
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
