//! Enrollment under CURVE, against a fresh real `pantry-server` that knows
//! only the bench's admin key.
//!
//! - **Crowd**: the admin asks for one token of N uses (`CreateToken` over
//!   its CURVE DEALER); then N simulated agents, spread over several ZeroMQ
//!   contexts and connected at the pace of [`crate::agents`], each make a
//!   key pair, connect a DEALER with it, send `Enroll` with the token and
//!   their own identity, and once accepted send `RegisterClient` (asking
//!   for an answer) on the same connection. Figure: the time from the first
//!   connect to the last registration answer, and how many made it.
//! - **End to end**, with the real binaries: `pantry-admin client:token`,
//!   `pantry-client enroll --token --server-public-key` for a fresh agent
//!   directory, `pantry-client` started, and an echo to that identity from
//!   an admin connection already open, repeated until it answers. Figure:
//!   the time from running `client:token` to the echo's answer.
//!
//! Every wait is bounded; an agent that hears nothing within the real
//! `pantry-client enroll`'s 10 s counts as failed, as it would.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context as _, Result};
use pantry_shared::commands::enroll::{self, EnrollRequest, Enrolled};
use pantry_shared::commands::{client_token, echo, register_client};
use pantry_shared::filter::{ClientFilter, Identities};
use pantry_shared::keys::{KeyPair, KnownKey, Role};
use pantry_shared::security::SocketSecurity;
use pantry_shared::{BodyPart, Message};

use crate::agents::{client_security, CONNECT_BATCH, CONNECT_PAUSE};
use crate::keys::{self, Pair};
use crate::procs::{cpu_ns, run_bounded, PantryServer, Process};
use crate::stats::{median, percentile};

/// What the enrollment scenario does.
#[derive(Debug, Clone, Copy)]
pub struct EnrollmentSettings {
    /// Agents enrolling with one token of as many uses.
    pub agents: usize,
    /// `client:token` → echo runs with the real binaries.
    pub repeats: usize,
    /// Longest the whole crowd may take.
    pub crowd_timeout: Duration,
}

/// The binaries and keys the scenario needs.
pub struct Setup<'a> {
    pub server_bin: PathBuf,
    pub client_bin: PathBuf,
    pub admin_bin: PathBuf,
    pub log_level: &'a str,
    pub server: &'a Pair,
    /// An admin key, enrolled in the fresh server's key store as `admin_name`.
    pub admin: &'a Pair,
    pub admin_name: &'a str,
}

/// N agents enrolling with one token.
#[derive(Debug, Clone, Default)]
pub struct CrowdResult {
    pub agents: usize,
    /// Enrolled and registered (the registration answered without error).
    pub succeeded: usize,
    /// Seconds from the first connect to the last registration answer (of
    /// those that succeeded).
    pub wall_s: Option<f64>,
    /// The admin's `CreateToken` round trip, ms.
    pub token_ms: Option<f64>,
    /// Per agent, from making its key pair (then connecting) to its
    /// enrollment answer, ms.
    pub enroll_p50_ms: Option<f64>,
    pub enroll_max_ms: Option<f64>,
    /// Per agent, from the enrollment answer to the registration answer, ms.
    pub register_p50_ms: Option<f64>,
    pub register_max_ms: Option<f64>,
    /// Server CPU time (all threads) per agent, token to last answer, ms.
    pub server_cpu_ms_per_agent: Option<f64>,
    /// Why agents failed, and how many each.
    pub failures: BTreeMap<String, usize>,
}

impl CrowdResult {
    pub fn complete(&self) -> bool {
        self.agents > 0 && self.succeeded == self.agents
    }
}

/// One `client:token` → echo run with the real binaries, seconds.
#[derive(Debug, Clone, Copy, Default)]
pub struct EndToEnd {
    /// From running `client:token` to the echo's answer.
    pub total_s: f64,
    /// `pantry-admin client:token` until it exited with the token.
    pub token_s: f64,
    /// `pantry-client enroll` until it exited.
    pub enroll_s: f64,
    /// From starting `pantry-client` to the echo's answer.
    pub answer_s: f64,
}

#[derive(Debug, Clone, Default)]
pub struct EnrollmentResult {
    pub crowd: CrowdResult,
    pub runs: Vec<EndToEnd>,
    /// Runs that did not end with an answer, and why.
    pub failed_runs: Vec<String>,
    /// How many runs were asked for.
    pub repeats: usize,
}

impl EnrollmentResult {
    pub fn median_total_s(&self) -> Option<f64> {
        median(&self.totals())
    }

    pub fn max_total_s(&self) -> Option<f64> {
        self.totals().into_iter().reduce(f64::max)
    }

    fn totals(&self) -> Vec<f64> {
        self.runs.iter().map(|r| r.total_s).collect()
    }
}

/// Runs both parts, each against a fresh server. `say` reports progress.
pub fn run(setup: &Setup, settings: EnrollmentSettings, say: &dyn Fn(String)) -> Result<EnrollmentResult> {
    let mut result = EnrollmentResult { repeats: settings.repeats, ..Default::default() };
    {
        let server = start_server(setup)?;
        say(format!("enrollment: {} agents with one token, pantry-server pid {}", settings.agents, server.process.pid));
        result.crowd = crowd(&server, setup, settings)?;
        let c = &result.crowd;
        say(format!(
            "enrollment: {} of {} enrolled and registered, last at {} s (token {} ms; failures {:?})",
            c.succeeded,
            c.agents,
            c.wall_s.map(|v| format!("{v:.2}")).unwrap_or_else(|| "-".into()),
            c.token_ms.map(|v| format!("{v:.1}")).unwrap_or_else(|| "-".into()),
            c.failures
        ));
    }
    if settings.repeats > 0 {
        let server = start_server(setup)?;
        let admin = Admin::connect(&server, setup.admin, setup.admin_name)?;
        for n in 0..settings.repeats {
            match end_to_end(&server, setup, &admin, n) {
                Ok(run) => {
                    say(format!(
                        "enrollment: client:token → echo {:.3} s (token {:.3}, enroll {:.3}, start → answer {:.3})",
                        run.total_s, run.token_s, run.enroll_s, run.answer_s
                    ));
                    result.runs.push(run);
                }
                Err(e) => {
                    say(format!("enrollment: client:token → echo run {n} failed: {e:#}"));
                    result.failed_runs.push(format!("run {}: {e:#}", n + 1));
                }
            }
        }
    }
    Ok(result)
}

fn start_server(setup: &Setup) -> Result<PantryServer> {
    let known: Vec<KnownKey> = vec![keys::known(setup.admin.public_z85(), setup.admin_name.into(), Role::Admin)];
    PantryServer::start(&setup.server_bin, Some((setup.server, &known)), setup.log_level)
}

/// The admin's DEALER, with `bench-admin`'s key (also used by the presence
/// and job-store scenarios).
pub(crate) struct Admin {
    socket: zmq::Socket,
    name: String,
    _ctx: zmq::Context,
}

impl Admin {
    pub(crate) fn connect(server: &PantryServer, pair: &Pair, name: &str) -> Result<Admin> {
        let ctx = zmq::Context::new();
        let socket = client_security(&server.endpoints, Some(pair))?.socket(&ctx, zmq::DEALER)?;
        socket.set_linger(0)?;
        socket.connect(&server.endpoints.receive)?;
        Ok(Admin { socket, name: name.to_owned(), _ctx: ctx })
    }

    /// Its DEALER, to poll along with other sockets.
    pub(crate) fn socket(&self) -> &zmq::Socket {
        &self.socket
    }

    pub(crate) fn send(&self, mut request: Message) -> Result<String> {
        request.metadata.from = self.name.clone();
        self.socket.send_multipart(request.to_frames(), zmq::DONTWAIT)?;
        Ok(request.uuid().to_owned())
    }

    /// The next message about `uuid` until `end`.
    pub(crate) fn recv(&self, uuid: &str, end: Instant) -> Option<Message> {
        self.recv_any(&[uuid.to_owned()], end)
    }

    /// The next message about any of `uuids` until `end`.
    pub(crate) fn recv_any(&self, uuids: &[String], end: Instant) -> Option<Message> {
        loop {
            let left = end.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return None;
            }
            if self.socket.poll(zmq::POLLIN, left.as_millis().max(1) as i64).unwrap_or(0) == 0 {
                continue;
            }
            while let Ok(frames) = self.socket.recv_multipart(zmq::DONTWAIT) {
                match Message::from_frames(&frames) {
                    Ok(m) if uuids.iter().any(|u| u == m.uuid()) => return Some(m),
                    _ => {}
                }
            }
        }
    }

    /// A new token of `uses` uses, valid an hour.
    fn create_token(&self, uses: u32) -> Result<String> {
        let asked = client_token::TokenRequest { name: None, uses, ttl: Duration::from_secs(3600) };
        let uuid = self.send(client_token::request(&asked))?;
        let answer = self
            .recv(&uuid, Instant::now() + Duration::from_secs(10))
            .context("no answer to CreateToken within 10 s")?;
        if let Some(error) = answer.error() {
            bail!("CreateToken refused: {error}");
        }
        client_token::token(&answer).map(str::to_owned).context("the CreateToken answer carries no token")
    }

    /// Sends an echo to `identity` (`pantry-admin -i IDENTITY echo`) until
    /// one is answered, at most until `end`. Returns when the answer came.
    fn echo_until_answered(&self, identity: &str, end: Instant, client: &mut Process) -> Result<Instant> {
        // Every echo sent: a late answer to an earlier one counts too.
        let mut sent: Vec<String> = Vec::new();
        let mut last = String::from("no echo sent");
        while Instant::now() < end {
            if let Some(status) = client.exited() {
                bail!("pantry-client exited ({status}) before answering:\n{}", client.log());
            }
            let mut request = echo::request("pantry-bench");
            Identities::attach(&mut request, &[identity.to_owned()]);
            sent.push(self.send(request)?);
            // The list of who will answer comes first, then the answers.
            // An agent not registered yet is not listed: ask again at once.
            // One registered but not yet subscribed never hears this echo:
            // ask again after a while.
            let mut retry = end.min(Instant::now() + Duration::from_secs(2));
            while let Some(m) = self.recv_any(&sent, retry) {
                if m.is_client_response_list() {
                    if !m.body.iter().any(|p| matches!(p, BodyPart::Text(_))) {
                        last = "not registered yet".into();
                        std::thread::sleep(Duration::from_millis(5));
                        break;
                    }
                    last = "listed, no answer within 250 ms".into();
                    retry = end.min(Instant::now() + Duration::from_millis(250));
                } else if let Some(error) = m.error() {
                    last = format!("answer with an error: {error}");
                } else {
                    return Ok(Instant::now());
                }
            }
        }
        bail!("{identity} did not answer an echo ({} sent; last: {last}):\n{}", sent.len(), client.log())
    }
}

/// One agent of the crowd, in one worker thread.
struct Enrollee {
    identity: String,
    socket: zmq::Socket,
    connected: Instant,
    state: State,
}

enum State {
    Enrolling { uuid: String, sent: Instant },
    Registering { uuid: String, sent: Instant, enrolled: Instant },
    Done,
}

/// How one agent ended.
#[derive(Debug, Clone)]
enum Outcome {
    Registered { enroll_ms: f64, register_ms: f64, at: Instant },
    Failed(String),
}

/// Agents per ZeroMQ context (one DEALER each, under libzmq's 1,023).
const AGENTS_PER_CONTEXT: usize = 250;
/// How long an agent waits for each answer: `pantry-client enroll`'s wait.
const ANSWER_WAIT: Duration = Duration::from_secs(10);

/// The identity agent `i` claims: fixed width, unique.
pub fn enrollee_identity(i: usize) -> String {
    format!("enrollee-{i:05}")
}

fn crowd(server: &PantryServer, setup: &Setup, settings: EnrollmentSettings) -> Result<CrowdResult> {
    let n = settings.agents;
    let mut result = CrowdResult { agents: n, ..Default::default() };
    if n == 0 {
        return Ok(result);
    }
    let server_key = server.endpoints.server_key.context("the enrollment scenario needs CURVE")?;
    let admin = Admin::connect(server, setup.admin, setup.admin_name)?;
    let cpu = cpu_ns(server.process.pid);
    let asked = Instant::now();
    let token = admin.create_token(u32::try_from(n).context("too many agents for one token")?)?;
    result.token_ms = Some(asked.elapsed().as_secs_f64() * 1000.0);

    let threads = n.div_ceil(AGENTS_PER_CONTEXT);
    let first_connect = Instant::now();
    let deadline = first_connect + settings.crowd_timeout;
    let workers: Vec<JoinHandle<Result<Vec<Outcome>>>> = (0..threads)
        .map(|k| {
            let (endpoint, token) = (server.endpoints.receive.clone(), token.clone());
            // Agent i goes to thread i % threads: the connect schedule is
            // global, every thread connects its share as its time comes.
            let mine: Vec<usize> = (k..n).step_by(threads).collect();
            std::thread::Builder::new()
                .name(format!("enroll-{k}"))
                .spawn(move || crowd_worker(&endpoint, server_key, &token, &mine, first_connect, deadline))
                .map_err(anyhow::Error::from)
        })
        .collect::<Result<_>>()?;
    // Every thread is joined (each ends by the deadline) before an error
    // is returned.
    let joined: Vec<Result<Vec<Outcome>>> =
        workers.into_iter().map(|w| w.join().map_err(|_| anyhow!("an enrollment thread panicked"))?).collect();
    let mut outcomes = Vec::with_capacity(n);
    for w in joined {
        outcomes.extend(w?);
    }
    let (mut enroll_ms, mut register_ms, mut last) = (Vec::new(), Vec::new(), None::<Instant>);
    for outcome in outcomes {
        match outcome {
            Outcome::Registered { enroll_ms: e, register_ms: r, at } => {
                result.succeeded += 1;
                enroll_ms.push(e);
                register_ms.push(r);
                last = Some(last.map_or(at, |l| l.max(at)));
            }
            Outcome::Failed(reason) => *result.failures.entry(reason).or_default() += 1,
        }
    }
    result.wall_s = last.map(|at| at.duration_since(first_connect).as_secs_f64());
    result.enroll_p50_ms = percentile(&enroll_ms, 50.0);
    result.enroll_max_ms = percentile(&enroll_ms, 100.0);
    result.register_p50_ms = percentile(&register_ms, 50.0);
    result.register_max_ms = percentile(&register_ms, 100.0);
    if let (Some(before), Some(after)) = (cpu, cpu_ns(server.process.pid)) {
        result.server_cpu_ms_per_agent = Some(after.saturating_sub(before) as f64 / 1e6 / n as f64);
    }
    Ok(result)
}

fn crowd_worker(
    endpoint: &str,
    server_key: [u8; 32],
    token: &str,
    mine: &[usize],
    start: Instant,
    deadline: Instant,
) -> Result<Vec<Outcome>> {
    let ctx = zmq::Context::new();
    let mut agents: Vec<Enrollee> = Vec::with_capacity(mine.len());
    let mut outcomes: Vec<Option<Outcome>> = vec![None; mine.len()];
    let connect_at = |i: usize| start + CONNECT_PAUSE * (i / CONNECT_BATCH) as u32;
    let mut next = 0;
    loop {
        let now = Instant::now();
        // Connect the agents whose time has come.
        while next < mine.len() && connect_at(mine[next]) <= now {
            agents.push(connect_enrollee(&ctx, endpoint, server_key, token, mine[next])?);
            next += 1;
        }
        let open: Vec<usize> = (0..agents.len()).filter(|&a| !matches!(agents[a].state, State::Done)).collect();
        if next == mine.len() && open.is_empty() {
            break;
        }
        if now >= deadline {
            for a in open {
                outcomes[a] = Some(Outcome::Failed("the crowd's time ran out".into()));
            }
            for o in outcomes.iter_mut().skip(agents.len()) {
                *o = Some(Outcome::Failed("never connected: the crowd's time ran out".into()));
            }
            break;
        }
        let wake = if next < mine.len() { connect_at(mine[next]) } else { now + Duration::from_millis(50) };
        let timeout = wake.min(deadline).saturating_duration_since(now).min(Duration::from_millis(50));
        let mut items: Vec<zmq::PollItem> = open.iter().map(|&a| agents[a].socket.as_poll_item(zmq::POLLIN)).collect();
        zmq::poll(&mut items, timeout.as_millis() as i64)?;
        let readable: Vec<usize> = open.iter().zip(&items).filter(|(_, i)| i.is_readable()).map(|(&a, _)| a).collect();
        drop(items);
        for a in readable {
            while let Ok(frames) = agents[a].socket.recv_multipart(zmq::DONTWAIT) {
                if let Some(outcome) = step(&mut agents[a], &frames)? {
                    outcomes[a] = Some(outcome);
                }
            }
        }
        // An agent that hears nothing gives up like `pantry-client enroll`.
        for (a, agent) in agents.iter_mut().enumerate() {
            let (sent, what) = match &agent.state {
                State::Enrolling { sent, .. } => (*sent, "no enrollment answer"),
                State::Registering { sent, .. } => (*sent, "no registration answer"),
                State::Done => continue,
            };
            if sent.elapsed() >= ANSWER_WAIT {
                agent.state = State::Done;
                outcomes[a] = Some(Outcome::Failed(format!("{what} within {} s", ANSWER_WAIT.as_secs())));
            }
        }
    }
    drop(agents);
    Ok(outcomes.into_iter().map(|o| o.unwrap_or_else(|| Outcome::Failed("unfinished".into()))).collect())
}

/// Makes agent `i`'s key pair, connects it and sends its `Enroll` (queued
/// until the connection is up).
fn connect_enrollee(
    ctx: &zmq::Context,
    endpoint: &str,
    server_key: [u8; 32],
    token: &str,
    i: usize,
) -> Result<Enrollee> {
    let connected = Instant::now();
    let pair = KeyPair::generate()?;
    let decode = |z85: &str| pantry_shared::keys::decode_z85(z85).context("a generated key is not Z85");
    let security = SocketSecurity::CurveClient {
        server_key,
        public_key: decode(&pair.public_key)?,
        secret_key: decode(&pair.private_key)?,
    };
    let socket = security.socket(ctx, zmq::DEALER)?;
    socket.set_linger(0)?;
    socket.connect(endpoint).with_context(|| format!("agent {i}: connect (open-file limit?)"))?;
    let identity = enrollee_identity(i);
    let request = enroll::request(&EnrollRequest {
        token: Some(token.to_owned()),
        identity: Some(identity.clone()),
        hostname: format!("bench-host-{i:05}"),
    });
    socket.send_multipart(request.to_frames(), zmq::DONTWAIT)?;
    let state = State::Enrolling { uuid: request.uuid().to_owned(), sent: Instant::now() };
    Ok(Enrollee { identity, socket, connected, state })
}

/// Handles one message to an agent; returns its outcome once it has one.
fn step(agent: &mut Enrollee, frames: &[Vec<u8>]) -> Result<Option<Outcome>> {
    let Ok(answer) = Message::from_frames(frames) else { return Ok(None) };
    match &agent.state {
        State::Enrolling { uuid, .. } if answer.uuid() == uuid => {
            let enrolled = Instant::now();
            let name = match enroll::outcome(&answer) {
                Ok(Enrolled::Accepted { name }) => name,
                Ok(Enrolled::Waiting) => return Ok(Some(done(agent, "put on the pending list".into()))),
                Err(reason) => return Ok(Some(done(agent, format!("enrollment refused: {reason}")))),
            };
            if name != agent.identity {
                return Ok(Some(done(agent, "enrolled under another name".into())));
            }
            let mut register = register_client::request(&ClientFilter {
                identity: Some(name),
                application: Some("enroll".into()),
                environment: Some("bench".into()),
                roles: vec!["echo".into()],
            });
            register.metadata.requires_response = true;
            agent.socket.send_multipart(register.to_frames(), zmq::DONTWAIT)?;
            agent.state = State::Registering { uuid: register.uuid().to_owned(), sent: Instant::now(), enrolled };
            Ok(None)
        }
        State::Registering { uuid, enrolled, .. } if answer.uuid() == uuid => {
            let at = Instant::now();
            if let Some(error) = answer.error() {
                return Ok(Some(done(agent, format!("registration refused: {error}"))));
            }
            let outcome = Outcome::Registered {
                enroll_ms: enrolled.duration_since(agent.connected).as_secs_f64() * 1000.0,
                register_ms: at.duration_since(*enrolled).as_secs_f64() * 1000.0,
                at,
            };
            agent.state = State::Done;
            Ok(Some(outcome))
        }
        _ => Ok(None),
    }
}

fn done(agent: &mut Enrollee, reason: String) -> Outcome {
    agent.state = State::Done;
    Outcome::Failed(reason)
}

/// One `client:token` → echo run with the real binaries.
fn end_to_end(server: &PantryServer, setup: &Setup, admin: &Admin, n: usize) -> Result<EndToEnd> {
    let identity = format!("e2e-{n:02}");
    let config = server.client_config(&identity, None)?;
    let server_key = keys::z85(&server.endpoints.server_key.context("the enrollment scenario needs CURVE")?);

    let start = Instant::now();
    let mut token_cmd = server.admin_command(&setup.admin_bin, setup.admin)?;
    token_cmd.args(["--timeout", "5", "client:token", "--uses", "1", "--ttl", "10m"]);
    let out = run_bounded(&mut token_cmd, Duration::from_secs(10))?;
    if !out.success() {
        bail!("pantry-admin client:token: {:?}\n{}", out.status, out.stderr);
    }
    let token = out.stdout.trim().to_owned();
    if token.len() != 64 {
        bail!("pantry-admin client:token printed no token: {:?}", out.stdout);
    }
    let token_s = start.elapsed().as_secs_f64();

    let mut enroll_cmd = std::process::Command::new(&setup.client_bin);
    enroll_cmd
        .arg("-c")
        .arg(&config)
        .args(["enroll", "--token", &token, "--server-public-key", &server_key])
        .stdin(std::process::Stdio::null());
    let out = run_bounded(&mut enroll_cmd, Duration::from_secs(20))?;
    if !out.success() {
        bail!("pantry-client enroll: {:?}\n{}{}", out.status, out.stdout, out.stderr);
    }
    let enrolled = start.elapsed().as_secs_f64();

    let started = Instant::now();
    let mut client = server.spawn_client(&setup.client_bin, &identity, &config)?;
    let answered = admin.echo_until_answered(&identity, started + Duration::from_secs(10), &mut client)?;
    let total_s = answered.duration_since(start).as_secs_f64();
    drop(client);
    Ok(EndToEnd {
        total_s,
        token_s,
        enroll_s: enrolled - token_s,
        answer_s: answered.duration_since(started).as_secs_f64(),
    })
}
