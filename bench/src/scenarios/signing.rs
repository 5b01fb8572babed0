//! Signed requests (issue 26, CURVE): what signing costs `pantry-admin`
//! per request and verifying costs an agent (µs, in this process, with
//! the shared crate's own `sign` and `verify`), the bytes a signature adds,
//! and the fan-out echo at 1,000 CURVE agents with signatures on (the
//! admin signs, every agent verifies before answering) and off (unsigned,
//! unverified), same server, same agents, alternating rounds. The section
//! says how each figure is taken.

use std::fmt::Write as _;
use std::hint::black_box;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use anyhow::{ensure, Result};
use pantry_shared::commands::{echo, exec};
use pantry_shared::filter::ClientFilter;
use pantry_shared::signing::{self as sig, Seen, SigningPair, TrustList, TrustedAdmin, DEFAULT_TTL};
use pantry_shared::Message;
use serde::{Deserialize, Serialize};

use crate::common::agents::{AgentOptions, Kind, Pool, AGENTS_PER_CONTEXT};
use crate::common::compare::fanouts;
use crate::common::env::{Env, Measure, Parts};
use crate::common::markdown::{compared, count, failures, group, ms_pair, num, ratio, targets_table, Previous, Target};
use crate::common::procs::{cpu_ns, cpu_us_per, own_threads_cpu_ns};
use crate::common::requesters::Requester;
use crate::common::ring::{KeyRing, ADMIN_NAME};
use crate::common::stats::{median, order, percentile, Both};

/// The issue sets no bound. The bench holds signing plus verifying (with
/// the decoding) an `Exec` to this share of the unsigned fan-out p50 at
/// the scenario's N: what a signature adds to a fan-out whose agents each
/// verify on their own machine, in parallel.
const COST_SHARE: f64 = 0.05;
/// Nor on the fan-out. Its p50 and p99 with signatures on and off are
/// reported but not judged: here every agent's verification runs on this
/// machine's few cores, one after the other on each agents' thread, which
/// a fleet does not do (its latency is judged through the costs above).
/// What is judged is that every signed answer was verified and a success.
/// Verifications per replay set: below the 1,024 uuids past which
/// [`Seen`] sweeps itself at every insertion (measured on its own, with
/// [`Settings::seen`] uuids held).
const SEEN_CHUNK: usize = 1000;
/// The agents' threads (`agents-0`, `agents-500`...).
const AGENT_THREADS: &str = "agents-";

/// What the signing scenario does.
#[derive(Debug, Clone, Copy, clap::Args, Serialize, Deserialize)]
pub struct Settings {
    /// Requests of each kind signed, and verified, in each round of the
    /// cost part.
    #[arg(long, default_value_t = 10_000)]
    pub signatures: usize,
    /// Rounds of the cost part; figures are medians.
    #[arg(long, default_value_t = 5)]
    pub cost_rounds: usize,
    /// Admins on the trust list the agents verify against (the bench's
    /// and others').
    #[arg(long, default_value_t = 3)]
    pub admins: usize,
    /// Unexpired uuids an agent already holds when one more `Exec` is
    /// verified (its replay set's sweep); 0: not measured.
    #[arg(long, default_value_t = 10_000)]
    pub seen: usize,
    /// CURVE agents of the fan-out part.
    #[arg(long, default_value_t = 1000)]
    pub agents: usize,
}

impl Settings {
    /// The most agent keys the scenario needs.
    pub fn max_agents(&self) -> usize {
        self.agents.max(1)
    }
}

/// One kind of request, as `pantry-admin` addresses it: its size with and
/// without a signature, and each round's cost of signing, decoding and
/// verifying it, µs per request.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Cost {
    /// `Exec`, `Echo`.
    pub kind: String,
    /// Its stream (`""`: every agent).
    pub stream: String,
    /// Its frames' bytes, unsigned and signed.
    pub unsigned_bytes: usize,
    pub signed_bytes: usize,
    /// An answer's frames before its result, as the agent builds it (the
    /// request's response without the signature, which the agent drops),
    /// to the unsigned and the signed.
    #[serde(default)]
    pub answer_unsigned_bytes: usize,
    #[serde(default)]
    pub answer_signed_bytes: usize,
    /// `signing::sign` alone (the admin).
    pub sign_us: Vec<f64>,
    /// `signing::verify` of the decoded request alone (the agent).
    pub verify_us: Vec<f64>,
    /// `Message::from_frames` then `signing::verify`: what the agent does
    /// with what its DEALER received.
    pub decode_verify_us: Vec<f64>,
    /// `Message::from_frames` alone, signed and unsigned.
    pub decode_us: Vec<f64>,
    pub decode_unsigned_us: Vec<f64>,
    /// Verifications that accepted the request, and that refused it (a
    /// check: none should).
    pub accepted: usize,
    pub refused: usize,
    /// `Exec` only: `verify` with [`Settings::seen`] unexpired uuids
    /// already held, µs per request.
    #[serde(default)]
    pub full_seen_us: Option<f64>,
}

impl Cost {
    pub fn sign(&self) -> Option<f64> {
        median(&self.sign_us)
    }

    pub fn verify(&self) -> Option<f64> {
        median(&self.verify_us)
    }

    pub fn decode_verify(&self) -> Option<f64> {
        median(&self.decode_verify_us)
    }

    pub fn decode(&self) -> Option<f64> {
        median(&self.decode_us)
    }

    pub fn decode_unsigned(&self) -> Option<f64> {
        median(&self.decode_unsigned_us)
    }

    /// Signing, and verifying with the decoding: what one request costs
    /// the admin and one agent together.
    pub fn sign_and_verify(&self) -> Option<f64> {
        Some(self.sign()? + self.decode_verify()?)
    }

    pub fn added_bytes(&self) -> usize {
        self.signed_bytes.saturating_sub(self.unsigned_bytes)
    }

    pub fn answer_added_bytes(&self) -> usize {
        self.answer_signed_bytes.saturating_sub(self.answer_unsigned_bytes)
    }
}

/// The fan-out echo with signatures on and off. `pantry`: on (signed by
/// the admin, verified by every agent), `baseline`: off (unsigned, not
/// verified).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct FanoutRun {
    pub agents: usize,
    /// The threads the simulated agents share (the verifications of one
    /// fan-out are spread over them).
    pub agent_threads: usize,
    /// This machine's cores, which the agents, the server and the admin
    /// share.
    #[serde(default)]
    pub cores: usize,
    /// From the first connect until every agent answered an echo, s.
    pub setup_s: Option<f64>,
    /// Medians over rounds of each round's p50 and p99; an incomplete
    /// fan-out counts as infinitely slow (`None` read back from JSON).
    pub p50_ms: Both<Option<f64>>,
    pub p99_ms: Both<Option<f64>>,
    pub attempted: Both<usize>,
    pub incomplete: Both<usize>,
    /// Answers the admin received, and those carrying an error (refused).
    pub answers: Both<u64>,
    pub refused_answers: Both<u64>,
    /// Requests the agents verified (and ran), and refused.
    pub verified: Both<u64>,
    pub agent_refused: Both<u64>,
    /// Why the first refused one was.
    pub refusal: Option<String>,
    /// CPU per answer (medians over rounds), µs: the server's (all
    /// threads), the agents' threads'.
    pub server_cpu_us: Both<Option<f64>>,
    pub agents_cpu_us: Both<Option<f64>>,
}

impl FanoutRun {
    /// With signatures on, every fan-out complete, every answer a
    /// success, every answer verified; off, nothing verified.
    pub fn all_verified(&self) -> bool {
        self.attempted.pantry > 0
            && self.incomplete.pantry == 0
            && self.refused_answers.pantry == 0
            && self.agent_refused.pantry == 0
            && self.verified.pantry >= self.answers.pantry
            && self.answers.pantry >= (self.attempted.pantry * self.agents) as u64
            && self.verified.baseline == 0
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Figures {
    pub settings: Settings,
    pub measure: Measure,
    /// `Exec`, then `Echo`.
    pub costs: Vec<Cost>,
    pub fanout: Option<FanoutRun>,
    /// Parts that failed, and why.
    pub failures: Vec<String>,
}

impl Figures {
    pub fn exec(&self) -> Option<&Cost> {
        self.costs.iter().find(|c| c.kind == "Exec")
    }

    pub fn echo(&self) -> Option<&Cost> {
        self.costs.iter().find(|c| c.kind == "Echo")
    }

    /// Signing and verifying an `Exec` as a share of the unsigned fan-out
    /// p50.
    pub fn cost_share(&self) -> Option<f64> {
        let off_ms = self.fanout.as_ref()?.p50_ms.baseline.filter(|p| p.is_finite() && *p > 0.0)?;
        Some(self.exec()?.sign_and_verify()? / 1000.0 / off_ms)
    }

    /// What a fleet would see with signatures on: the unsigned fan-out p50
    /// plus one signing (the admin's) and one echo's decode and verify
    /// (each agent's, all at once), ms.
    pub fn fleet_p50_ms(&self) -> Option<f64> {
        let off_ms = self.fanout.as_ref()?.p50_ms.baseline.filter(|p| p.is_finite())?;
        let echo = self.echo()?;
        Some(off_ms + (echo.sign()? + echo.decode_verify()?) / 1000.0)
    }
}

/// The admins the agents trust: `admins` of them, the bench's last.
pub fn trust_list(pair: &SigningPair, admins: usize) -> Result<TrustList> {
    let mut list = Vec::with_capacity(admins.max(1));
    for k in 1..admins.max(1) {
        let other = SigningPair::generate()?;
        list.push(TrustedAdmin { name: format!("admin-{k}"), signing_key: other.public });
    }
    list.push(TrustedAdmin { name: ADMIN_NAME.into(), signing_key: pair.public.clone() });
    Ok(TrustList::signed(1, list, pair))
}

/// A realistic `Exec` (`pantry-admin -a shop -e prod -r web exec systemctl
/// restart nginx`), addressed as `pantry-admin` addresses it.
fn exec_request() -> Message {
    let mut m = exec::request(&exec::ExecRequest {
        program: "systemctl".into(),
        args: vec!["restart".into(), "nginx".into()],
        shell: false,
        timeout: 60.0,
    });
    address(&mut m, "shop.prod.web");
    m
}

/// The fan-out's echo (`pantry-admin echo pantry-bench`, to everyone).
fn echo_request() -> Message {
    let mut m = echo::request("pantry-bench");
    address(&mut m, "");
    m
}

fn address(m: &mut Message, stream: &str) {
    m.metadata.from = ADMIN_NAME.into();
    m.metadata.to = stream.into();
    m.stream = stream.into();
}

/// An agent the `Exec`'s stream selects.
fn web_agent() -> ClientFilter {
    ClientFilter {
        identity: Some("web-0042".into()),
        application: Some("shop".into()),
        environment: Some("prod".into()),
        roles: vec!["web".into()],
    }
}

/// The bytes of `frames`.
pub fn frames_bytes(frames: &[Vec<u8>]) -> usize {
    frames.iter().map(Vec::len).sum()
}

fn us_per(elapsed: Duration, n: usize) -> f64 {
    elapsed.as_secs_f64() * 1e6 / n.max(1) as f64
}

/// Runs the cost part, then the fan-out; a part that fails is recorded,
/// the other runs.
pub fn run(env: &Env, ring: &KeyRing, s: &Settings) -> Result<Figures> {
    let mut parts = Parts::new(env, "signing");
    let pair = SigningPair::generate()?;
    let list = trust_list(&pair, s.admins)?;
    let costs = parts.part("costs", costs(env, s, &pair, &list)).unwrap_or_default();
    let fanout = if s.agents > 0 { parts.part("fan-out", fanout(env, ring, s, &pair, list)) } else { None };
    Ok(Figures { settings: *s, measure: env.measure, costs, fanout, failures: parts.failures })
}

fn costs(env: &Env, s: &Settings, pair: &SigningPair, list: &TrustList) -> Result<Vec<Cost>> {
    let agent = web_agent();
    let everyone = crate::common::agents::filter(0);
    let mut exec = cost("Exec", exec_request, &agent, pair, list, s);
    if s.seen > 0 {
        exec.full_seen_us = Some(full_seen(s.seen, &agent, pair, list));
    }
    let echo = cost("Echo", echo_request, &everyone, pair, list, s);
    for c in [&exec, &echo] {
        env.say(format!(
            "signing: {} ({} → {} bytes): sign {} µs, verify {} µs, decode + verify {} µs (decode {} µs, unsigned {} \
             µs) per request; {} accepted, {} refused{}",
            c.kind,
            c.unsigned_bytes,
            c.signed_bytes,
            num(c.sign()),
            num(c.verify()),
            num(c.decode_verify()),
            num(c.decode()),
            num(c.decode_unsigned()),
            c.accepted,
            c.refused,
            c.full_seen_us.map_or(String::new(), |us| format!(
                "; verify with {} uuids held: {} µs",
                s.seen,
                num(Some(us))
            ))
        ));
        ensure!(
            c.refused == 0 && c.accepted > 0,
            "{}: {} of {} verifications refused",
            c.kind,
            c.refused,
            c.accepted + c.refused
        );
    }
    Ok(vec![exec, echo])
}

/// Verifies `messages` with a fresh replay set every [`SEEN_CHUNK`]
/// (`decode`: from their frames); the time spent in the verifications
/// alone, and how many accepted.
fn verify_all<T>(
    items: &[T],
    decode: impl Fn(&T) -> Option<Message>,
    me: &ClientFilter,
    list: &TrustList,
    accepted: &mut usize,
) -> Duration {
    let mut spent = Duration::ZERO;
    for chunk in items.chunks(SEEN_CHUNK) {
        let mut seen = Seen::default();
        let start = Instant::now();
        let mut ok = 0;
        for item in chunk {
            if let Some(m) = decode(item) {
                ok += usize::from(sig::verify(&m, list, me, None, &mut seen, SystemTime::now()).is_ok());
            }
        }
        spent += start.elapsed();
        *accepted += ok;
        drop(black_box(seen));
    }
    spent
}

fn cost(
    kind: &str,
    make: fn() -> Message,
    me: &ClientFilter,
    pair: &SigningPair,
    list: &TrustList,
    s: &Settings,
) -> Cost {
    let n = s.signatures.max(1);
    let sample = make();
    let mut c = Cost {
        kind: kind.into(),
        stream: sample.stream.clone(),
        unsigned_bytes: frames_bytes(&sample.to_frames()),
        answer_unsigned_bytes: frames_bytes(&sample.response().to_frames()),
        ..Cost::default()
    };
    let mut signed = sample;
    sig::sign(&mut signed, pair, ADMIN_NAME, DEFAULT_TTL);
    let mut answer = signed.response();
    answer.metadata.custom.remove(sig::SIGNATURE_FIELD);
    c.answer_signed_bytes = frames_bytes(&answer.to_frames());
    for _ in 0..s.cost_rounds.max(1) {
        // Distinct uuids: no verification is a replay.
        let mut messages: Vec<Message> = (0..n).map(|_| make()).collect();
        let unsigned: Vec<Vec<Vec<u8>>> = messages.iter().map(Message::to_frames).collect();
        let start = Instant::now();
        for m in &mut messages {
            sig::sign(m, pair, ADMIN_NAME, DEFAULT_TTL);
        }
        c.sign_us.push(us_per(start.elapsed(), n));
        let frames: Vec<Vec<Vec<u8>>> = messages.iter().map(Message::to_frames).collect();
        c.signed_bytes = frames_bytes(&frames[0]);
        drop(messages);

        let start = Instant::now();
        for f in &unsigned {
            black_box(Message::from_frames(black_box(f)).ok());
        }
        c.decode_unsigned_us.push(us_per(start.elapsed(), n));
        let start = Instant::now();
        let decoded: Vec<Message> = frames.iter().filter_map(|f| Message::from_frames(black_box(f)).ok()).collect();
        c.decode_us.push(us_per(start.elapsed(), n));

        let mut accepted = 0;
        let spent = verify_all(&decoded, |m| Some(m.clone()), me, list, &mut accepted);
        // The clone is not the agent's: timed apart and taken off.
        let start = Instant::now();
        for m in &decoded {
            black_box(m.clone());
        }
        c.verify_us.push(us_per(spent.saturating_sub(start.elapsed()), n));
        c.accepted += accepted;
        c.refused += n - accepted;

        let mut accepted = 0;
        let spent = verify_all(&frames, |f| Message::from_frames(f).ok(), me, list, &mut accepted);
        c.decode_verify_us.push(us_per(spent, n));
        c.accepted += accepted;
        c.refused += n - accepted;
    }
    c
}

/// `verify` of an `Exec` by an agent that already holds `held` unexpired
/// uuids (within their signatures' time): µs per request, over as many
/// more, [`SEEN_CHUNK`] at most.
fn full_seen(held: usize, me: &ClientFilter, pair: &SigningPair, list: &TrustList) -> f64 {
    let signed = |_| {
        let mut m = exec_request();
        sig::sign(&mut m, pair, ADMIN_NAME, DEFAULT_TTL);
        m
    };
    let before: Vec<Message> = (0..held).map(signed).collect();
    let timed: Vec<Message> = (0..held.clamp(1, SEEN_CHUNK)).map(signed).collect();
    let mut seen = Seen::default();
    for m in &before {
        let _ = sig::verify(m, list, me, None, &mut seen, SystemTime::now());
    }
    let start = Instant::now();
    for m in &timed {
        black_box(sig::verify(m, list, me, None, &mut seen, SystemTime::now()).is_ok());
    }
    us_per(start.elapsed(), timed.len())
}

/// Per-round figures of one side of the fan-out.
#[derive(Default)]
struct Samples {
    p50: Vec<f64>,
    p99: Vec<f64>,
    server_cpu: Vec<f64>,
    agents_cpu: Vec<f64>,
}

fn fanout(env: &Env, ring: &KeyRing, s: &Settings, pair: &SigningPair, list: TrustList) -> Result<FanoutRun> {
    let n = s.agents.min(ring.agents.len()).min(env.limits.max_agents());
    let m = &env.measure;
    let server = env.server_for(ring, "")?;
    let pid = server.process.pid;
    let options = AgentOptions { verify_signatures: Some(Arc::new(list)), ..AgentOptions::default() };
    let started = Instant::now();
    let pool = Pool::start_with(Kind::Pantry, &server.endpoints, &ring.agents, 0..n, options)?;
    // The unsigned echoes that check the agents are reachable.
    pool.verify(false);
    env.reach(&server.endpoints, ring, n)?;
    let mut f = FanoutRun {
        agents: n,
        agent_threads: n.div_ceil(AGENTS_PER_CONTEXT),
        cores: std::thread::available_parallelism().map_or(1, |c| c.get()),
        setup_s: Some(started.elapsed().as_secs_f64()),
        ..FanoutRun::default()
    };
    env.say(format!(
        "signing: {n} CURVE agents verifying against {} admins on pid {pid}, reachable in {:.1} s; {} rounds of {} \
         fan-outs signed and not",
        s.admins,
        f.setup_s.unwrap_or_default(),
        m.rounds,
        m.fanout_requests
    ));
    let mut admin = Requester::connect(Kind::Pantry, &server.endpoints, Some(&ring.admin), ADMIN_NAME)?;
    let mut samples: [Samples; 2] = Default::default();
    for round in 0..m.rounds {
        for i in order(round) {
            let on = i == 0;
            pool.verify(on);
            admin.sign_with(on.then(|| (pair.clone(), DEFAULT_TTL)));
            let (verified, refused) = pool.verifications();
            let (server_cpu, agents_cpu) = (cpu_ns(pid), own_threads_cpu_ns(AGENT_THREADS));
            let r = fanouts(&mut admin, n, m)?;
            let sample = &mut samples[i];
            sample.server_cpu.extend(cpu_us_per(pid, server_cpu, r.answers));
            if let (Some(before), Some(after)) = (agents_cpu, own_threads_cpu_ns(AGENT_THREADS)) {
                if r.answers > 0 {
                    sample.agents_cpu.push(after.saturating_sub(before) as f64 / 1000.0 / r.answers as f64);
                }
            }
            sample.p50.extend(percentile(&r.times_ms, 50.0));
            sample.p99.extend(percentile(&r.times_ms, 99.0));
            let (verified_now, refused_now) = pool.verifications();
            *f.attempted.at_mut(i) += r.times_ms.len();
            *f.incomplete.at_mut(i) += r.incomplete;
            *f.answers.at_mut(i) += r.answers;
            *f.refused_answers.at_mut(i) += r.refused;
            *f.verified.at_mut(i) += verified_now - verified;
            *f.agent_refused.at_mut(i) += refused_now - refused;
            env.say(format!(
                "  signatures {}: fan-out p50 {} ms, p99 {} ms ({} incomplete); {} answers, {} refused; {} verified",
                if on { "on" } else { "off" },
                num(sample.p50.last().copied()),
                num(sample.p99.last().copied()),
                r.incomplete,
                r.answers,
                r.refused,
                verified_now - verified
            ));
        }
    }
    pool.verify(false);
    for (i, sample) in samples.iter().enumerate() {
        *f.p50_ms.at_mut(i) = median(&sample.p50);
        *f.p99_ms.at_mut(i) = median(&sample.p99);
        *f.server_cpu_us.at_mut(i) = median(&sample.server_cpu);
        *f.agents_cpu_us.at_mut(i) = median(&sample.agents_cpu);
    }
    f.refusal = pool.verify_refusal();
    env.say(format!(
        "signing: fan-out p50 on / off {} ms ({}), p99 {} ms; agents' CPU per answer {} µs, server's {} µs; \
         every answer verified and a success: {}",
        ms_pair(f.p50_ms.pantry, f.p50_ms.baseline),
        ratio(f.p50_ms.ratio()),
        ms_pair(f.p99_ms.pantry, f.p99_ms.baseline),
        ms_pair(f.agents_cpu_us.pantry, f.agents_cpu_us.baseline),
        ms_pair(f.server_cpu_us.pantry, f.server_cpu_us.baseline),
        if f.all_verified() { "yes" } else { "NO" }
    ));
    drop(pool);
    drop(server);
    Ok(f)
}

/// The two targets of issue 26, with the previous run's.
pub fn targets(f: &Figures, previous: Previous<Figures>) -> Vec<Target> {
    compared(measured(f), previous.figures.map(measured))
}

fn measured(f: &Figures) -> Vec<Target> {
    let n = f.fanout.as_ref().map_or(f.settings.agents, |r| r.agents);
    let what = format!(
        "issue 26: signing an `Exec` in `pantry-admin` and verifying it on the agent (decoding included), per \
         request: together ≤ {:.0}% of the unsigned fan-out p50 at {} agents (the issue sets no bound: this is what a \
         signature adds where each agent verifies on its own machine)",
        COST_SHARE * 100.0,
        count(n)
    );
    let cost = match f.exec() {
        Some(c) => Target::new(
            what,
            format!(
                "sign {} µs + decode and verify {} µs (verify alone {} µs) = {} of the fan-out's {} ms; {} bytes \
                 more on the wire",
                num(c.sign()),
                num(c.decode_verify()),
                num(c.verify()),
                f.cost_share().map_or("–".into(), |r| format!("{:.2}%", r * 100.0)),
                num(f.fanout.as_ref().and_then(|r| r.p50_ms.baseline)),
                count(c.added_bytes())
            ),
            f.cost_share().map(|r| r <= COST_SHARE && c.refused == 0),
        ),
        None => Target::new(what, "failed".into(), None),
    };
    let what = format!(
        "issue 26: fan-out echo to {} CURVE agents signed by the admin and verified by every agent, against unsigned \
         and unverified (same server and agents, alternating rounds): every signed answer verified and a success \
         (p50 and p99 reported, not judged: the issue sets no bound, and here every agent verifies on this machine)",
        count(n)
    );
    let fanout = match &f.fanout {
        Some(r) => Target::new(
            what,
            format!(
                "p50 {} ms on, {} off ({}); p99 {} / {} ms; {} of {} answers verified, {} refused",
                num(r.p50_ms.pantry),
                num(r.p50_ms.baseline),
                ratio(r.p50_ms.ratio()),
                num(r.p99_ms.pantry),
                num(r.p99_ms.baseline),
                group(r.verified.pantry),
                group(r.answers.pantry),
                group(r.refused_answers.pantry + r.agent_refused.pantry)
            ),
            Some(r.all_verified()),
        ),
        None => Target::new(what, "failed".into(), None),
    };
    vec![cost, fanout]
}

/// The `## Signing` section.
pub fn report(f: &Figures, previous: Previous<Figures>) -> String {
    let s = &f.settings;
    let m = &f.measure;
    let mut out = String::new();
    let _ = write!(
        out,
        "## Signing\n\nCURVE. Signed requests as `pantry-admin` signs them (`signing::sign` on the request once \
         addressed, the last step of `to_clients`) and as the agent verifies them (`signing::verify` against its \
         trust list, its own filter and replay set, before it runs anything: `Trust::check`). The bench makes an \
         admin signing key of its own and a trust list of {} admins with it; the simulated agents are given the \
         list directly (no server involved).\n\n{}\n",
        s.admins,
        targets_table(&targets(f, previous), previous.said)
    );
    if !f.costs.is_empty() {
        let _ = writeln!(
            out,
            "**Cost per request.** In the bench process, one thread: {} requests of each kind, each with its own \
             uuid, signed one after the other, encoded to frames, then decoded and verified; {} rounds, medians. \
             *Verify* is `signing::verify` of the decoded request; *decode + verify* starts from the frames, as the \
             agent does with what its DEALER received; a fresh replay set every {} requests (below the size at which \
             it sweeps itself). The `Exec` is `-a shop -e prod -r web exec systemctl restart nginx`, verified by an \
             agent that stream selects; the `Echo` is the fan-out's, to everyone.\n",
            group(s.signatures as u64),
            s.cost_rounds,
            count(SEEN_CHUNK)
        );
        out.push_str(
            "| request | bytes unsigned → signed | its answers' (before the result) | sign (µs) | verify (µs) | decode \
             + verify (µs) | decode signed / unsigned (µs) |\n|---|---:|---:|---:|---:|---:|---:|\n",
        );
        for c in &f.costs {
            let _ = writeln!(
                out,
                "| `{}` to `{}` | {} → {} (+{}) | {} → {} (+{}) | {} | {} | {} | {} |",
                c.kind,
                if c.stream.is_empty() { "\"\"" } else { &c.stream },
                group(c.unsigned_bytes as u64),
                group(c.signed_bytes as u64),
                group(c.added_bytes() as u64),
                group(c.answer_unsigned_bytes as u64),
                group(c.answer_signed_bytes as u64),
                group(c.answer_added_bytes() as u64),
                num(c.sign()),
                num(c.verify()),
                num(c.decode_verify()),
                ms_pair(c.decode(), c.decode_unsigned())
            );
        }
        if let Some(us) = f.exec().and_then(|c| c.full_seen_us) {
            let _ = writeln!(
                out,
                "\nAn agent that already holds {} uuids within their signatures' time{} verifies an `Exec` in {} \
                 µs, against {} with a fresh set{}.",
                group(s.seen as u64),
                if s.seen > 1024 {
                    format!(
                        " (one that ran more than 1,024 signed requests in the last {} min)",
                        (DEFAULT_TTL + sig::CLOCK_SKEW).as_secs() / 60
                    )
                } else {
                    String::new()
                },
                num(Some(us)),
                num(f.exec().and_then(Cost::verify)),
                if s.seen > 1024 {
                    ": past 1,024 entries the replay set sweeps itself at every insertion and keeps every unexpired \
                     entry, so each verification scans them all"
                } else {
                    ""
                }
            );
        }
    }
    if let Some(r) = &f.fanout {
        let _ = writeln!(
            out,
            "\n**Fan-out.** One fresh server, {} simulated CURVE agents on it ({} threads of {} agents: the bench's \
             usual pool) holding the trust list. {} rounds, alternating which goes first, of {} fan-out echoes to \
             everyone from the admin's DEALER each way: **on**, the admin signs each echo (within the timed fan-out) \
             and every agent verifies it before answering (a refusal would be answered `refused: …`); **off**, \
             unsigned, and the agents do not verify. p50 and p99 of each round, medians over rounds. The agents \
             counted {} verifications on and {} off; the admin received {} answers on ({} refused) and {} off. CPU \
             per answer: the server's (all threads) and the agents' threads' in this process.\n",
            count(r.agents),
            r.agent_threads,
            count(AGENTS_PER_CONTEXT),
            m.rounds,
            m.fanout_requests,
            group(r.verified.pantry),
            group(r.verified.baseline),
            group(r.answers.pantry),
            group(r.refused_answers.pantry),
            group(r.answers.baseline)
        );
        let _ = writeln!(
            out,
            "| signatures | fan-out p50 (ms) | p99 (ms) | incomplete | agents' CPU per answer (µs) | server CPU per \
             answer (µs) |\n|---|---:|---:|---:|---:|---:|\n| on | {} | {} | {} of {} | {} | {} |\n| off | {} | {} | \
             {} of {} | {} | {} |\n| **on / off** | **{}** | {} | | {} | {} |",
            num(r.p50_ms.pantry),
            num(r.p99_ms.pantry),
            r.incomplete.pantry,
            r.attempted.pantry,
            num(r.agents_cpu_us.pantry),
            num(r.server_cpu_us.pantry),
            num(r.p50_ms.baseline),
            num(r.p99_ms.baseline),
            r.incomplete.baseline,
            r.attempted.baseline,
            num(r.agents_cpu_us.baseline),
            num(r.server_cpu_us.baseline),
            ratio(r.p50_ms.ratio()),
            ratio(r.p99_ms.ratio()),
            ratio(r.agents_cpu_us.ratio()),
            ratio(r.server_cpu_us.ratio())
        );
        if let (Some(on), Some(off)) = (r.p50_ms.pantry, r.p50_ms.baseline) {
            let extra_us = f.echo().and_then(Cost::decode_verify).zip(f.echo().and_then(Cost::decode_unsigned));
            let _ = writeln!(
                out,
                "\nSignatures add {} ms to the p50 here ({} on / off), which the target does not judge: the {} agents \
                 share this machine's {} cores with the server, and each of the {} agents' threads verifies its \
                 agents' echoes one after the other{}; in situ the agents' threads spent {} µs more CPU per answer. \
                 Where each agent verifies on its own machine, a signed fan-out costs one signing and one \
                 verification more than an unsigned one: {} µs, {} ms against {off:.3} ms.",
                num(Some(on - off)),
                ratio(r.p50_ms.ratio()),
                count(r.agents),
                r.cores,
                r.agent_threads,
                match extra_us {
                    Some((dv, du)) => format!(
                        " ({} µs more each to decode and verify a signed echo than to decode an unsigned one: {} ms of \
                         CPU per fan-out)",
                        num(Some(dv - du)),
                        num(Some(r.agents as f64 * (dv - du) / 1000.0))
                    ),
                    None => String::new(),
                },
                num(match (r.agents_cpu_us.pantry, r.agents_cpu_us.baseline) {
                    (Some(a), Some(b)) => Some(a - b),
                    _ => None,
                }),
                num(f.fleet_p50_ms().map(|fleet| (fleet - off) * 1000.0)),
                f.fleet_p50_ms().map_or("–".into(), |ms| format!("{ms:.3}"))
            );
        }
        if let (Some(x), Some(echo)) = (r.server_cpu_us.ratio(), f.echo()) {
            let _ = writeln!(
                out,
                "\nThe server spends {} the CPU per answer with signatures: each of the {} copies of the echo it \
                 encrypts and publishes carries the signature (+{} bytes); the answers it passes on carry {} bytes \
                 more (the agent drops the signature from its answer).",
                ratio(Some(x)),
                count(r.agents),
                count(echo.added_bytes()),
                count(echo.answer_added_bytes())
            );
        }
        if let Some(why) = &r.refusal {
            let _ = writeln!(out, "\nAn agent refused a request: {why}");
        }
    }
    failures(&mut out, &f.failures);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_requests_verify_for_the_agents_they_are_for() {
        let pair = SigningPair::generate().unwrap();
        let list = trust_list(&pair, 3).unwrap();
        assert_eq!(list.admins.len(), 3);
        assert!(list.trusts(&pair.public) && list.self_consistent());
        let settings = Settings { signatures: 10, cost_rounds: 2, admins: 3, seen: 0, agents: 0 };
        let c = cost("Exec", exec_request, &web_agent(), &pair, &list, &settings);
        assert_eq!((c.accepted, c.refused), (40, 0), "2 rounds of 10, verify and decode + verify");
        assert_eq!((c.sign_us.len(), c.verify_us.len(), c.decode_verify_us.len()), (2, 2, 2));
        assert!(c.added_bytes() > 300, "a signature is hundreds of bytes: {c:?}");
        let echo = cost("Echo", echo_request, &crate::common::agents::filter(7), &pair, &list, &settings);
        assert_eq!(echo.refused, 0);
        // An agent the stream does not select refuses the `Exec`.
        let other = cost("Exec", exec_request, &crate::common::agents::filter(7), &pair, &list, &settings);
        assert_eq!(other.accepted, 0);
        assert!(full_seen(30, &web_agent(), &pair, &list) > 0.0);
    }

    #[test]
    fn targets_judge_the_share_and_the_ratio() {
        let cost = |sign: f64, dv: f64| Cost {
            kind: "Exec".into(),
            sign_us: vec![sign],
            decode_verify_us: vec![dv],
            accepted: 10,
            ..Cost::default()
        };
        let both = |on: f64, off: f64| Both { pantry: Some(on), baseline: Some(off) };
        let run = FanoutRun {
            agents: 10,
            attempted: Both { pantry: 2, baseline: 2 },
            answers: Both { pantry: 20, baseline: 20 },
            verified: Both { pantry: 20, baseline: 0 },
            p50_ms: both(10.5, 10.0),
            ..FanoutRun::default()
        };
        assert!(run.all_verified());
        let mut f = Figures {
            settings: crate::common::env::defaults(),
            measure: Measure::smoke(),
            costs: vec![cost(100.0, 150.0)],
            fanout: Some(run.clone()),
            failures: vec![],
        };
        assert_eq!(f.cost_share(), Some(0.025));
        let met: Vec<Option<bool>> = measured(&f).iter().map(|t| t.met).collect();
        assert_eq!(met, vec![Some(true), Some(true)]);
        f.costs = vec![cost(200.0, 400.0)];
        f.fanout = Some(FanoutRun { p50_ms: both(20.0, 10.0), ..run.clone() });
        let met: Vec<Option<bool>> = measured(&f).iter().map(|t| t.met).collect();
        assert_eq!(met, vec![Some(false), Some(true)], "6% of the unsigned p50; the ratio is not judged");
        f.fanout = Some(FanoutRun { refused_answers: Both { pantry: 1, baseline: 0 }, ..run.clone() });
        assert!(!f.fanout.as_ref().unwrap().all_verified());
        assert_eq!(measured(&f)[1].met, Some(false), "a refusal fails the fan-out");
        f.fanout = Some(FanoutRun { verified: Both { pantry: 19, baseline: 0 }, ..run.clone() });
        assert_eq!(measured(&f)[1].met, Some(false), "an answer not verified");
        f.fanout = Some(FanoutRun { verified: Both { pantry: 20, baseline: 3 }, ..run.clone() });
        assert_eq!(measured(&f)[1].met, Some(false), "verified with signatures off");
        f.fanout = None;
        assert_eq!(measured(&f).iter().map(|t| t.met).collect::<Vec<_>>(), vec![None, None]);
    }
}
