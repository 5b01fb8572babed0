//! Enrollment (CURVE), against fresh servers that know only the admin's
//! key: a crowd of simulated agents enrolling with one token and
//! registering, and `client:token` → an answered echo with the real
//! binaries. The section says how each is timed. Every wait is bounded; an
//! agent that hears nothing within `pantry-client enroll`'s 10 s counts as
//! failed, as it would.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context as _, Result};
use pantry_shared::commands::enroll::{self, EnrollRequest, Enrolled};
use pantry_shared::commands::{client_token, echo, register_client};
use pantry_shared::filter::{ClientFilter, Identities};
use pantry_shared::keys::{KeyPair, KnownKey, Role};
use pantry_shared::security::SocketSecurity;
use pantry_shared::{BodyPart, Message};
use serde::{Deserialize, Serialize};

use crate::common::admin::Admin;
use crate::common::agents::{CONNECT_BATCH, CONNECT_PAUSE};
use crate::common::env::{seconds, Env};
use crate::common::keys;
use crate::common::markdown::{compared, count, failures, ms_pair, num, secs, targets_table, Previous, Target};
use crate::common::procs::{cpu_ns, run_bounded, PantryServer, Process};
use crate::common::ring::{KeyRing, ADMIN_NAME};
use crate::common::stats::{median, percentile};

/// A crowd with one token, and one agent end to end (issue 13).
const CROWD_TARGET_S: f64 = 30.0;
const END_TO_END_TARGET_S: f64 = 1.0;

/// What the enrollment scenario does.
#[derive(Debug, Clone, Copy, clap::Args, Serialize, Deserialize)]
pub struct Settings {
    /// Agents enrolling with one token of as many uses.
    #[arg(long, default_value_t = 1000)]
    pub agents: usize,
    /// `client:token` → echo runs with the real binaries.
    #[arg(long, default_value_t = 5)]
    pub repeats: usize,
    /// Longest the agents may take in all, seconds.
    #[arg(long = "timeout", value_parser = seconds, default_value = "120")]
    pub crowd_timeout: Duration,
}

/// N agents enrolling with one token.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Crowd {
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

impl Crowd {
    pub fn complete(&self) -> bool {
        self.agents > 0 && self.succeeded == self.agents
    }
}

/// One `client:token` → echo run with the real binaries, seconds.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize)]
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

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Figures {
    pub crowd: Crowd,
    pub runs: Vec<EndToEnd>,
    /// Runs that did not end with an answer, and why.
    pub failed_runs: Vec<String>,
    /// How many runs were asked for.
    pub repeats: usize,
}

impl Figures {
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

/// Runs both parts, each against a fresh CURVE server that knows only the
/// admin's key.
pub fn run(env: &Env, ring: &KeyRing, settings: &Settings) -> Result<Figures> {
    let mut result = Figures { repeats: settings.repeats, ..Default::default() };
    {
        let server = start_server(env, ring)?;
        env.say(format!(
            "enrollment: {} agents with one token, pantry-server pid {}",
            settings.agents, server.process.pid
        ));
        result.crowd = crowd(&server, ring, settings)?;
        let c = &result.crowd;
        env.say(format!(
            "enrollment: {} of {} enrolled and registered, last at {} s (token {} ms; failures {:?})",
            c.succeeded,
            c.agents,
            num(c.wall_s),
            num(c.token_ms),
            c.failures
        ));
    }
    if settings.repeats > 0 {
        let server = start_server(env, ring)?;
        let admin = Admin::connect(&server, &ring.admin, ADMIN_NAME)?;
        for n in 0..settings.repeats {
            match end_to_end(env, &server, ring, &admin, n) {
                Ok(run) => {
                    env.say(format!(
                        "enrollment: client:token → echo {:.3} s (token {:.3}, enroll {:.3}, start → answer {:.3})",
                        run.total_s, run.token_s, run.enroll_s, run.answer_s
                    ));
                    result.runs.push(run);
                }
                Err(e) => {
                    env.say(format!("enrollment: client:token → echo run {n} failed: {e:#}"));
                    result.failed_runs.push(format!("run {}: {e:#}", n + 1));
                }
            }
        }
    }
    Ok(result)
}

fn start_server(env: &Env, ring: &KeyRing) -> Result<PantryServer> {
    let known: Vec<KnownKey> = vec![keys::known(ring.admin.public_z85(), ADMIN_NAME.into(), Role::Admin)];
    env.server(Some((&ring.server, &known)), "")
}

/// A new token of `uses` uses, valid an hour.
fn create_token(admin: &Admin, uses: u32) -> Result<String> {
    let asked = client_token::TokenRequest { name: None, uses, ttl: Duration::from_secs(3600) };
    let answer = admin.ask(client_token::request(&asked), "CreateToken", Duration::from_secs(10))?;
    client_token::token(&answer).map(str::to_owned).context("the CreateToken answer carries no token")
}

/// Sends an echo to `identity` (`pantry-admin -i IDENTITY echo`) until one
/// is answered, at most until `end`. Returns when the answer came.
fn echo_until_answered(admin: &Admin, identity: &str, end: Instant, client: &mut Process) -> Result<Instant> {
    // Every echo sent: a late answer to an earlier one counts too.
    let mut sent: Vec<String> = Vec::new();
    let mut last = String::from("no echo sent");
    while Instant::now() < end {
        if let Some(status) = client.exited() {
            bail!("pantry-client exited ({status}) before answering:\n{}", client.log());
        }
        let mut request = echo::request("pantry-bench");
        Identities::attach(&mut request, &[identity.to_owned()]);
        sent.push(admin.send(request)?);
        // The list of who will answer comes first, then the answers. An
        // agent not registered yet is not listed: ask again at once. One
        // listed that does not answer (still starting): ask again after a
        // while.
        let mut retry = end.min(Instant::now() + Duration::from_secs(2));
        while let Some(m) = admin.recv_any(&sent, retry) {
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

fn crowd(server: &PantryServer, ring: &KeyRing, settings: &Settings) -> Result<Crowd> {
    let n = settings.agents;
    let mut result = Crowd { agents: n, ..Default::default() };
    if n == 0 {
        return Ok(result);
    }
    let server_key = server.endpoints.server_key.context("the enrollment scenario needs CURVE")?;
    let admin = Admin::connect(server, &ring.admin, ADMIN_NAME)?;
    let cpu = cpu_ns(server.process.pid);
    let asked = Instant::now();
    let token = create_token(&admin, u32::try_from(n).context("too many agents for one token")?)?;
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
            register_client::ask_requests_on_dealer(&mut register);
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
fn end_to_end(env: &Env, server: &PantryServer, ring: &KeyRing, admin: &Admin, n: usize) -> Result<EndToEnd> {
    let identity = format!("e2e-{n:02}");
    let config = server.client_config(&identity, None)?;
    let server_key = keys::z85(&server.endpoints.server_key.context("the enrollment scenario needs CURVE")?);

    let start = Instant::now();
    let mut token_cmd = server.admin_command(&env.bins.admin, &ring.admin)?;
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

    let mut enroll_cmd = std::process::Command::new(&env.bins.client);
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
    let mut client = server.spawn_client(&env.bins.client, &identity, &config)?;
    let answered = echo_until_answered(admin, &identity, started + Duration::from_secs(10), &mut client)?;
    let total_s = answered.duration_since(start).as_secs_f64();
    drop(client);
    Ok(EndToEnd {
        total_s,
        token_s,
        enroll_s: enrolled - token_s,
        answer_s: answered.duration_since(started).as_secs_f64(),
    })
}

/// The crowd's target and the end-to-end one, with the previous run's.
pub fn targets(e: &Figures, previous: Previous<Figures>) -> Vec<Target> {
    compared(measured(e), previous.figures.map(measured))
}

fn measured(e: &Figures) -> Vec<Target> {
    let c = &e.crowd;
    let crowd = match c.wall_s {
        Some(s) => format!("{} s, {} of {} registered", num(Some(s)), count(c.succeeded), count(c.agents)),
        None => format!("none of {} registered", count(c.agents)),
    };
    let (median, max) = (e.median_total_s(), e.max_total_s());
    let end_to_end = match (median, max) {
        (Some(m), Some(x)) => {
            format!("median {} s, max {} s ({} of {} runs answered)", secs(m), secs(x), e.runs.len(), e.repeats)
        }
        _ => format!("no run answered ({} tried)", e.repeats),
    };
    vec![
        Target::new(
            format!(
                "{} agents enroll with one token and register (CURVE) < {CROWD_TARGET_S} s, every one",
                count(c.agents)
            ),
            crowd,
            (c.agents > 0).then(|| c.complete() && c.wall_s.is_some_and(|s| s < CROWD_TARGET_S)),
        ),
        Target::new(
            format!("`client:token` → one agent answering `echo` < {END_TO_END_TARGET_S} s (real binaries, median)"),
            end_to_end,
            (e.repeats > 0).then(|| e.failed_runs.is_empty() && median.is_some_and(|m| m < END_TO_END_TARGET_S)),
        ),
    ]
}

/// The `## Enrollment` section: the crowd and the end-to-end runs.
pub fn report(e: &Figures, previous: Previous<Figures>) -> String {
    let mut out = String::new();
    let c = &e.crowd;
    let _ = writeln!(
        out,
        "## Enrollment\n\nCURVE, each part against a fresh `pantry-server` that knows only the bench's admin key.\n\n{}",
        targets_table(&targets(e, previous), previous.said)
    );
    let _ = writeln!(
        out,
        "**One token, {} agents.** The admin asks for one token of {} uses (`CreateToken` over its CURVE DEALER); \
         then {} simulated agents (several ZeroMQ contexts, connects paced at about 650 per second) each make \
         a key pair, connect a DEALER with it, send `Enroll` with the token and their own identity and, once \
         accepted, `RegisterClient` asking for an answer on the same connection. Wall time: from the first \
         connect to the last registration answer. An agent that hears nothing for 10 s gives up, as \
         `pantry-client enroll` does. Per agent: from making its key pair and connecting to its enrollment \
         answer, and from that answer to its registration answer (ms).\n",
        count(c.agents),
        count(c.agents),
        count(c.agents),
    );
    out.push_str(
        "| agents | registered | wall time (s) | `CreateToken` (ms) | enrollment answer p50 / max | \
         registration answer p50 / max | server CPU ms per agent |\n|---:|---:|---:|---:|---:|---:|---:|\n",
    );
    let _ = writeln!(
        out,
        "| {} | {} | {} | {} | {} | {} | {} |",
        count(c.agents),
        count(c.succeeded),
        num(c.wall_s),
        num(c.token_ms),
        ms_pair(c.enroll_p50_ms, c.enroll_max_ms),
        ms_pair(c.register_p50_ms, c.register_max_ms),
        num(c.server_cpu_ms_per_agent)
    );
    if !c.failures.is_empty() {
        let reasons: Vec<String> = c.failures.iter().map(|(r, n)| format!("{n} × {r}")).collect();
        let _ = writeln!(out, "\nFailed agents: {}.", reasons.join("; "));
    }
    let _ = writeln!(
        out,
        "\n**`client:token` → one agent answering, real binaries**, {} {}: `pantry-admin client:token`, \
         `pantry-client enroll --token T --server-public-key K` for a fresh agent directory, `pantry-client` \
         started, and an `echo` to its identity (as `pantry-admin -i IDENTITY echo` sends it, from an admin \
         connection already open) repeated until it is answered. Seconds.\n",
        e.repeats,
        if e.repeats == 1 { "run" } else { "runs" }
    );
    out.push_str("| run | `client:token` → echo answer | `client:token` | `enroll` | start → echo answer |\n|---:|---:|---:|---:|---:|\n");
    for (i, r) in e.runs.iter().enumerate() {
        let _ = writeln!(
            out,
            "| {} | {} | {} | {} | {} |",
            i + 1,
            secs(r.total_s),
            secs(r.token_s),
            secs(r.enroll_s),
            secs(r.answer_s)
        );
    }
    let _ = writeln!(
        out,
        "| median | {} | | | |\n| max | {} | | | |",
        e.median_total_s().map_or_else(|| "–".into(), secs),
        e.max_total_s().map_or_else(|| "–".into(), secs)
    );
    failures(&mut out, &e.failed_runs);
    out
}
