//! Facts (issue 25, CURVE): `-F` resolved by the server over a registry of
//! 100,000 entries with facts, loaded at start from a database the bench
//! filled beforehand with the server's own store writer; and the server's
//! memory per agent with 4 KiB of facts each at 1,000 simulated agents,
//! against the same without facts. The section says how each figure is
//! taken.

use std::fmt::Write as _;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use anyhow::{bail, ensure, Context as _, Result};
use pantry_server::store::{self, StoredClient, StoredFacts, Write};
use pantry_shared::commands::status;
use pantry_shared::facts::{self as shared_facts, FactFilter};
use pantry_shared::filter::{ClientFilter, Identities};
use pantry_shared::Message;
use serde::{Deserialize, Serialize};

use crate::common::admin::Admin;
use crate::common::agents::{identity, AgentOptions, Kind as System, Pool, CONNECT_BATCH, CONNECT_PAUSE};
use crate::common::env::{seconds, Env, Parts};
use crate::common::facts::{expected, first_selected, hostname, machine, selected, TWO_EXPRESSIONS};
use crate::common::markdown::{compared, count, failures, group, kib, ms_pair, num, targets_table, Previous, Target};
use crate::common::procs::{cpu_ns, peak_rss_kib};
use crate::common::ring::{KeyRing, ADMIN_NAME};
use crate::common::stats::percentile;

/// `-F os.id=debian -F 'memory_mib>=16384'` over the registry, p50.
const RESOLVE_TARGET_MS: f64 = 20.0;
/// The issue sets no bound on the memory facts cost; the bench holds the
/// extra RSS per agent to this many times the facts' JSON size.
const RSS_FACTOR: f64 = 3.0;
/// The registry entries' facts are gathered now, daily: fresh for three
/// days, so that every one of them is matched.
const ENTRY_INTERVAL: Duration = Duration::from_secs(86_400);
/// Entries written per transaction of the store writer (bounds the bench's
/// memory while it fills).
const FILL_CHUNK: usize = 10_000;
const STATUS_TIMEOUT: Duration = Duration::from_secs(60);
/// The few-clients filter: a hostname from about here.
const FEW_FROM: usize = 42;

/// What the facts scenario does.
#[derive(Debug, Clone, Copy, clap::Args, Serialize, Deserialize)]
pub struct Settings {
    /// Registry entries with facts in the database the server starts with.
    #[arg(long, default_value_t = 100_000)]
    pub entries: usize,
    /// Each entry's facts: at least this many bytes of JSON.
    #[arg(long, default_value_t = 1024)]
    pub entry_bytes: usize,
    /// `Status` requests of each kind, one after the other.
    #[arg(long, default_value_t = 20)]
    pub requests: usize,
    /// Simulated agents on each of the two servers of the memory part.
    #[arg(long, default_value_t = 1000)]
    pub agents: usize,
    /// Each agent's facts report: at least this many bytes of JSON.
    #[arg(long, default_value_t = 4096)]
    pub agent_bytes: usize,
    /// How long a server is left before its RSS is read, seconds.
    #[arg(long, value_parser = seconds, default_value = "1")]
    pub settle: Duration,
}

impl Settings {
    /// The most agent keys the scenario needs.
    pub fn max_agents(&self) -> usize {
        self.agents.max(1)
    }
}

/// One kind of `Status` request, sent `requests` times.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct QueryRun {
    /// Its `-F` expressions and `-i` patterns.
    pub facts: Vec<String>,
    pub identities: Vec<String>,
    /// Clients it should list (the generator says which), and the answers
    /// that listed exactly those.
    pub expected: usize,
    pub exact: usize,
    /// Clients the last answer listed.
    pub listed: usize,
    /// From sending to the whole answer received, ms.
    pub ms: Vec<f64>,
    /// The server's CPU time over the same (all threads), ms.
    pub cpu_ms: Vec<f64>,
    /// The last answer's size: bytes and frames.
    pub answer_bytes: usize,
    pub answer_frames: usize,
}

impl QueryRun {
    pub fn p50_ms(&self) -> Option<f64> {
        percentile(&self.ms, 50.0)
    }

    pub fn max_ms(&self) -> Option<f64> {
        self.ms.iter().copied().reduce(f64::max)
    }

    pub fn cpu_p50_ms(&self) -> Option<f64> {
        percentile(&self.cpu_ms, 50.0)
    }

    /// Every answer listed exactly the clients expected.
    pub fn all_exact(&self) -> bool {
        !self.ms.is_empty() && self.exact == self.ms.len()
    }

    /// `-F a -F b -i c`, or `no filter`.
    pub fn name(&self) -> String {
        let words: Vec<String> = self
            .facts
            .iter()
            .map(|f| format!("-F {}", quoted(f)))
            .chain(self.identities.iter().map(|i| format!("-i {i}")))
            .collect();
        if words.is_empty() {
            "no filter".into()
        } else {
            format!("`{}`", words.join(" "))
        }
    }
}

/// An expression as a shell needs it written.
fn quoted(expr: &str) -> String {
    if expr.contains(['>', '<', '*', '?', '[', '~', '!']) {
        format!("'{expr}'")
    } else {
        expr.to_owned()
    }
}

/// `-F` over the registry.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Resolution {
    pub entries: usize,
    /// The entries' facts, mean bytes of JSON.
    pub entry_bytes: usize,
    /// Filling the database with the server's writer, and the server's
    /// start on it (to its `started` line), s.
    pub fill_s: f64,
    pub start_s: f64,
    /// `pantry.db` + `pantry.db-wal` once filled, bytes.
    pub db_bytes: u64,
    /// The server's RSS once started with the entries loaded, and its peak
    /// (`VmHWM`) then, KiB.
    pub rss_kib: Option<u64>,
    #[serde(default)]
    pub peak_kib: Option<u64>,
    /// No filter, the two expressions, those and a hostname, an
    /// identity alone.
    pub queries: Vec<QueryRun>,
}

impl Resolution {
    /// The filter: the query with exactly its two expressions.
    pub fn two(&self) -> Option<&QueryRun> {
        self.queries.iter().find(|q| q.facts.len() == 2 && q.identities.is_empty())
    }

    /// The two expressions and a hostname: one client listed.
    pub fn few(&self) -> Option<&QueryRun> {
        self.queries.iter().find(|q| q.facts.len() == 3)
    }

    /// `-i` one identity, no `-F`: the scan without facts, one listed.
    pub fn identity_only(&self) -> Option<&QueryRun> {
        self.queries.iter().find(|q| q.facts.is_empty() && !q.identities.is_empty())
    }

    pub fn unfiltered(&self) -> Option<&QueryRun> {
        self.queries.iter().find(|q| q.facts.is_empty() && q.identities.is_empty())
    }
}

/// One server of the memory part.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct MemoryRun {
    pub agents: usize,
    /// Each agent's facts report, mean bytes of JSON (0: none sent).
    pub facts_bytes: usize,
    /// RSS, KiB: before the agents; once all are registered and reachable;
    /// at the end (after the reports, if any, and a `Status -F os.id`).
    pub before_kib: Option<u64>,
    pub registered_kib: Option<u64>,
    pub end_kib: Option<u64>,
    /// The server's answers to the reports: kept, refused (the first
    /// refusal's reason).
    pub kept: u64,
    pub refused: u64,
    pub refusal: Option<String>,
    /// With facts: RSS after a second round of the same reports (the
    /// server replaces each agent's facts with an equal set), KiB, and
    /// the reports of that round kept.
    #[serde(default)]
    pub again_kib: Option<u64>,
    #[serde(default)]
    pub again_kept: u64,
    /// Clients `Status -F os.id` lists (those with fresh facts).
    pub with_facts: usize,
}

impl MemoryRun {
    fn per_agent(&self, from: Option<u64>, to: Option<u64>) -> Option<f64> {
        match (from, to) {
            (Some(a), Some(b)) if self.agents > 0 => Some((b as f64 - a as f64) / self.agents as f64),
            _ => None,
        }
    }

    /// From before the agents to the end, KiB per agent.
    pub fn kib_per_agent(&self) -> Option<f64> {
        self.per_agent(self.before_kib, self.end_kib)
    }

    /// From registered to the end (the reports, or nothing), KiB per agent.
    pub fn end_kib_per_agent(&self) -> Option<f64> {
        self.per_agent(self.registered_kib, self.end_kib)
    }

    /// The second round of reports, KiB per agent.
    pub fn again_kib_per_agent(&self) -> Option<f64> {
        self.per_agent(self.end_kib, self.again_kib)
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Figures {
    pub settings: Settings,
    pub resolution: Option<Resolution>,
    /// Agents of the memory part (the settings', unless the open-file limit
    /// says fewer), each server.
    pub agents: usize,
    pub without: Option<MemoryRun>,
    pub with: Option<MemoryRun>,
    /// Parts that failed, and why.
    pub failures: Vec<String>,
}

impl Figures {
    /// KiB per agent with facts, minus without.
    pub fn facts_kib_per_agent(&self) -> Option<f64> {
        Some(self.with.as_ref()?.kib_per_agent()? - self.without.as_ref()?.kib_per_agent()?)
    }

    fn memory_met(&self) -> Option<bool> {
        let (with, extra) = (self.with.as_ref()?, self.facts_kib_per_agent()?);
        let bound = RSS_FACTOR * with.facts_bytes as f64 / 1024.0;
        Some(with.agents > 0 && with.with_facts == with.agents && with.kept == with.agents as u64 && extra <= bound)
    }
}

/// The resolution part, then the two servers of the memory part; a part
/// that fails is recorded, the others run.
pub fn run(env: &Env, ring: &KeyRing, s: &Settings) -> Result<Figures> {
    let mut parts = Parts::new(env, "facts");
    let resolution = if s.entries > 0 { parts.part("resolution", resolution(env, ring, s)) } else { None };
    let n = s.agents.min(ring.agents.len()).min(env.limits.max_agents());
    let (mut without, mut with) = (None, None);
    if n > 0 {
        without = parts.part("memory without facts", memory(env, ring, s, n, false));
        with = parts.part("memory with facts", memory(env, ring, s, n, true));
    }
    Ok(Figures { settings: *s, resolution, agents: n, without, with, failures: parts.failures })
}

/// How registry entry `i` describes itself.
fn entry(i: usize) -> ClientFilter {
    ClientFilter {
        identity: Some(hostname(i)),
        application: Some(format!("svc{:02}", i % 50)),
        environment: Some(["prod", "staging"][i % 2].into()),
        roles: vec![["web", "db", "cache"][i % 3].into()],
    }
}

/// Writes `entries` clients with facts into `root/pantry.db` with the
/// server's own store writer (migrations, the `clients` rows, then their
/// facts), `FILL_CHUNK` a transaction. Returns the facts' mean JSON size.
fn fill(root: &Path, s: &Settings) -> Result<usize> {
    let path = root.join(store::DB_FILE);
    let (writer, thread) = store::start_writer(&path, slog::Logger::root(slog::Discard, slog::o!()))?;
    let now = SystemTime::now();
    let mut bytes = 0;
    let mut start = 0;
    while start < s.entries {
        let end = (start + FILL_CHUNK).min(s.entries);
        for i in start..end {
            let host = hostname(i);
            let facts = machine(i, &host, s.entry_bytes);
            bytes += shared_facts::size(&facts);
            let client = StoredClient {
                client: entry(i),
                key: None,
                last_seen: now,
                heartbeat: Duration::from_secs(60),
                facts: None,
            };
            writer.write(Write::Client(client));
            let hash = shared_facts::hash(&facts);
            let facts = StoredFacts { facts, hash, gathered: now, interval: ENTRY_INTERVAL };
            writer.write(Write::ClientFacts { identity: host, facts: Arc::new(facts) });
        }
        ensure!(writer.sync(Duration::from_secs(120)), "the store writer did not commit entries {start}..{end}");
        start = end;
    }
    drop(writer);
    thread.join().map_err(|_| anyhow::anyhow!("the store writer panicked"))?;
    Ok(bytes / s.entries.max(1))
}

fn resolution(env: &Env, ring: &KeyRing, s: &Settings) -> Result<Resolution> {
    let n = s.entries;
    env.say(format!(
        "facts: filling a database with {} registry entries of {} bytes of facts",
        count(n),
        s.entry_bytes
    ));
    let mut r = Resolution { entries: n, ..Resolution::default() };
    let mut filled = None;
    let began = Instant::now();
    let mut fill_s = 0.0;
    let server = env.server_prepared(ring, "", |root| {
        filled = Some(fill(root, s)?);
        fill_s = began.elapsed().as_secs_f64();
        Ok(())
    })?;
    r.fill_s = fill_s;
    r.start_s = began.elapsed().as_secs_f64() - fill_s;
    r.entry_bytes = filled.unwrap_or_default();
    let (db, wal) = server.db_bytes();
    r.db_bytes = db + wal;
    std::thread::sleep(s.settle);
    r.rss_kib = server.process.rss_kib();
    r.peak_kib = peak_rss_kib(server.process.pid);
    env.say(format!(
        "facts: filled in {:.1} s ({} bytes of facts each, {} MB database); the server started on it in {:.1} s, \
         RSS {} KiB",
        r.fill_s,
        r.entry_bytes,
        r.db_bytes / 1_000_000,
        r.start_s,
        kib(r.rss_kib)
    ));
    let admin = Admin::connect(&server, &ring.admin, ADMIN_NAME)?;
    let few = first_selected(FEW_FROM, n).context("no entry is selected by the two expressions")?;
    let two: Vec<String> = TWO_EXPRESSIONS.iter().map(|e| e.to_string()).collect();
    let three: Vec<String> = two.iter().cloned().chain([format!("hostname={}", hostname(few))]).collect();
    let all: Vec<String> = (0..n).map(hostname).collect();
    let chosen: Vec<String> = (0..n).filter(|&i| selected(i)).map(hostname).collect();
    ensure!(chosen.len() == expected(n), "the generator disagrees with itself");
    let kinds: Vec<(Vec<String>, Vec<String>, Vec<String>)> = vec![
        (vec![], vec![], all),
        (two, vec![], chosen),
        (three, vec![], vec![hostname(few)]),
        (vec![], vec![hostname(few)], vec![hostname(few)]),
    ];
    r.queries = kinds
        .iter()
        .map(|(facts, identities, want)| QueryRun {
            facts: facts.clone(),
            identities: identities.clone(),
            expected: want.len(),
            ..QueryRun::default()
        })
        .collect();
    // Round after round of each kind: whatever the server does now and
    // then (its registry sweep every second) falls on all alike.
    for _ in 0..s.requests {
        for ((facts, identities, want), q) in kinds.iter().zip(&mut r.queries) {
            let mut request = status::request(&ClientFilter::default());
            FactFilter::attach(&mut request, facts);
            Identities::attach(&mut request, identities);
            let answer = timed(&admin, server.process.pid, request)?;
            let listed: Vec<String> = status::clients(&answer.message).into_iter().map(|c| c.identity).collect();
            q.listed = listed.len();
            q.exact += usize::from(listed == *want);
            q.ms.push(answer.ms);
            q.cpu_ms.extend(answer.cpu_ms);
            q.answer_bytes = answer.bytes;
            q.answer_frames = answer.frames;
        }
    }
    for q in &r.queries {
        env.say(format!(
            "facts: Status {} over {} entries: {} listed ({} expected, {} of {} exact), {} bytes in {} frames; \
             p50 / max {} ms, server CPU p50 {} ms",
            q.name(),
            count(n),
            count(q.listed),
            count(q.expected),
            q.exact,
            q.ms.len(),
            group(q.answer_bytes as u64),
            count(q.answer_frames),
            ms_pair(q.p50_ms(), q.max_ms()),
            num(q.cpu_p50_ms())
        ));
    }
    Ok(r)
}

/// An answer and how long it took.
struct Timed {
    message: Message,
    ms: f64,
    cpu_ms: Option<f64>,
    bytes: usize,
    frames: usize,
}

/// Sends `request` and waits for its answer; the clock stops when the
/// whole answer has been received, before it is decoded.
fn timed(admin: &Admin, pid: u32, request: Message) -> Result<Timed> {
    let cpu_before = cpu_ns(pid);
    let sent = Instant::now();
    let uuid = admin.send(request)?;
    let end = sent + STATUS_TIMEOUT;
    loop {
        let left = end.saturating_duration_since(Instant::now());
        if left.is_zero() {
            bail!("no answer to Status within {STATUS_TIMEOUT:?}");
        }
        if admin.socket().poll(zmq::POLLIN, left.as_millis().max(1) as i64)? == 0 {
            continue;
        }
        let frames = admin.socket().recv_multipart(0)?;
        let ms = sent.elapsed().as_secs_f64() * 1000.0;
        let cpu_ms = cpu_before.zip(cpu_ns(pid)).map(|(a, b)| b.saturating_sub(a) as f64 / 1e6);
        let message = Message::from_frames(&frames)?;
        if message.uuid() != uuid {
            continue;
        }
        if let Some(error) = message.error() {
            bail!("Status refused: {error}");
        }
        let bytes = frames.iter().map(Vec::len).sum();
        return Ok(Timed { message, ms, cpu_ms, bytes, frames: frames.len() });
    }
}

/// A fresh server, its RSS before `n` agents, once they are registered,
/// and at the end: after each sent a facts report (`with`) and a
/// `Status -F os.id`.
fn memory(env: &Env, ring: &KeyRing, s: &Settings, n: usize, with: bool) -> Result<MemoryRun> {
    let server = env.server_for(ring, "")?;
    std::thread::sleep(s.settle);
    let mut m = MemoryRun { agents: n, before_kib: server.process.rss_kib(), ..MemoryRun::default() };
    let options = AgentOptions { facts_bytes: with.then_some(s.agent_bytes), ..AgentOptions::default() };
    let pool = Pool::start_with(System::Pantry, &server.endpoints, &ring.agents, 0..n, options)?;
    env.reach(&server.endpoints, ring, n)?;
    let admin = Admin::connect(&server, &ring.admin, ADMIN_NAME)?;
    std::thread::sleep(s.settle);
    m.registered_kib = server.process.rss_kib();
    if with {
        m.facts_bytes = (0..n).map(|i| shared_facts::size(&machine(i, &identity(i), s.agent_bytes))).sum::<usize>() / n;
        (m.kept, m.refused) = report_round(&pool, n);
        m.refusal = pool.facts_refusal();
    }
    let mut request = status::request(&ClientFilter::default());
    FactFilter::attach(&mut request, &["os.id".to_owned()]);
    m.with_facts = status::clients(&admin.ask(request, "Status -F os.id", Duration::from_secs(10))?).len();
    std::thread::sleep(s.settle);
    m.end_kib = server.process.rss_kib();
    if with {
        m.again_kept = report_round(&pool, n).0 - m.kept;
        std::thread::sleep(s.settle);
        m.again_kib = server.process.rss_kib();
    }
    env.say(format!(
        "facts: {n} agents {} (pid {}): RSS {} → {} → {} KiB, {} KiB per agent; {} reports kept, {} refused{}; \
         {} listed by Status -F os.id; a second round: {} kept, RSS {} KiB",
        if with { format!("with {} bytes of facts each", m.facts_bytes) } else { "without facts".into() },
        server.process.pid,
        kib(m.before_kib),
        kib(m.registered_kib),
        kib(m.end_kib),
        num(m.kib_per_agent()),
        m.kept,
        m.refused,
        m.refusal.as_deref().map(|r| format!(" ({r})")).unwrap_or_default(),
        count(m.with_facts),
        m.again_kept,
        kib(m.again_kib)
    ));
    drop(pool);
    drop(server);
    Ok(m)
}

/// A round of facts reports from the `n` agents of `pool`: waits (30 s at
/// most) for the server's answers to all; returns the answers so far,
/// kept and refused.
fn report_round(pool: &Pool, n: usize) -> (u64, u64) {
    let (kept, refused) = pool.facts_answers();
    let want = kept + refused + n as u64;
    pool.report_facts();
    let end = Instant::now() + Duration::from_secs(30);
    loop {
        let (kept, refused) = pool.facts_answers();
        if kept + refused >= want || Instant::now() >= end {
            return (kept, refused);
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The two targets of issue 25, with the previous run's.
pub fn targets(f: &Figures, previous: Previous<Figures>) -> Vec<Target> {
    compared(measured(f), previous.figures.map(measured))
}

fn measured(f: &Figures) -> Vec<Target> {
    let s = &f.settings;
    // Resolving is the server's work up to the identity list: the same
    // two expressions narrowed to one hostname list one client, so their
    // answer costs nothing; the filter itself lists ~30% of the
    // entries, an answer of megabytes, reported beside it.
    let what = format!(
        "issue 25: resolving `-F os.id=debian -F 'memory_mib>=16384'` over {} registry entries into the identity \
         list (the same expressions and `-F hostname=...`, one client listed, so the answer's size is left out), \
         p50 ≤ {RESOLVE_TARGET_MS} ms",
        count(s.entries)
    );
    let resolution = f.resolution.as_ref();
    let resolve = match (resolution.and_then(Resolution::few), resolution.and_then(Resolution::two)) {
        (Some(few), Some(two)) => Target::new(
            what,
            format!(
                "p50 {} ms, max {} ms ({} of {} exact); the issue's filter with its answer of {} clients: p50 {} ms",
                num(few.p50_ms()),
                num(few.max_ms()),
                few.exact,
                few.ms.len(),
                count(two.listed),
                num(two.p50_ms()),
            ),
            few.p50_ms().map(|p| p <= RESOLVE_TARGET_MS && few.all_exact() && two.all_exact()),
        ),
        _ => Target::new(what, "failed".into(), None),
    };
    let what = format!(
        "issue 25: server RSS per agent with {} KiB of facts each at {} agents, against the same without facts \
         (the extra ≤ {RSS_FACTOR}× the facts' JSON: the issue sets no bound)",
        s.agent_bytes / 1024,
        count(f.agents)
    );
    let memory = match (&f.with, &f.without) {
        (Some(with), Some(without)) => Target::new(
            what,
            format!(
                "{} KiB per agent with facts, {} without: {} KiB more each ({} bytes of facts; {} of {} kept)",
                num(with.kib_per_agent()),
                num(without.kib_per_agent()),
                num(f.facts_kib_per_agent()),
                group(with.facts_bytes as u64),
                count(with.with_facts),
                count(with.agents)
            ),
            f.memory_met(),
        ),
        _ => Target::new(what, "failed".into(), None),
    };
    vec![resolve, memory]
}

/// The `## Facts` section.
pub fn report(f: &Figures, previous: Previous<Figures>) -> String {
    let s = &f.settings;
    let mut out = String::new();
    let _ = write!(
        out,
        "## Facts\n\nCURVE, a fresh `pantry-server` for each part.\n\n{}\n",
        targets_table(&targets(f, previous), previous.said)
    );
    if let Some(r) = &f.resolution {
        let _ = writeln!(
            out,
            "**`-F` over the registry.** Before the server starts, its `root_dir/pantry.db` is filled with {} \
             registered clients (offline, last seen now) and their facts, through the server's own store writer \
             ({} a transaction; {:.1} s, {} MB with the WAL): each about {} bytes of JSON ({} on average) of \
             made-up machine facts (`os.*`, `kernel.*`, `memory_mib`, `cpus`, `hostname`, `ipv4`, a few custom keys, \
             then `packages.*`), gathered now every day (fresh); nine in ten Debian, a third with 16 GiB or more, \
             drawn deterministically, so the clients each filter selects are known. The server loads them at start \
             ({:.1} s to its `started` line; RSS then {} KiB, {} at the peak{}). Then raw `Status` requests from \
             the admin's CURVE \
             DEALER, one after the other, {} rounds of the {} kinds below in turn; the time runs from sending to \
             the whole answer received (before the bench decodes it); server CPU is all its threads' over the same. \
             Each answer's identities are checked against the generator's.\n",
            count(r.entries),
            count(FILL_CHUNK),
            r.fill_s,
            r.db_bytes / 1_000_000,
            group(s.entry_bytes as u64),
            group(r.entry_bytes as u64),
            r.start_s,
            kib(r.rss_kib),
            kib(r.peak_kib),
            match (r.rss_kib, f.without.as_ref().and_then(|m| m.before_kib)) {
                (Some(full), Some(empty)) if r.entries > 0 => format!(
                    "; {} KiB per entry over an empty server's {} KiB",
                    num(Some((full as f64 - empty as f64) / r.entries as f64)),
                    group(empty)
                ),
                _ => String::new(),
            },
            s.requests,
            r.queries.len()
        );
        out.push_str(
            "| `Status` | listed (expected) | exact answers | answer (bytes, frames) | p50 / max (ms) | \
             server CPU p50 (ms) |\n|---|---:|---:|---:|---:|---:|\n",
        );
        for q in &r.queries {
            let _ = writeln!(
                out,
                "| {} | {} ({}) | {} of {} | {}, {} | {} | {} |",
                q.name(),
                count(q.listed),
                count(q.expected),
                q.exact,
                q.ms.len(),
                group(q.answer_bytes as u64),
                count(q.answer_frames),
                ms_pair(q.p50_ms(), q.max_ms()),
                num(q.cpu_p50_ms())
            );
        }
        if let (Some(two), Some(few), Some(id)) = (r.two(), r.few(), r.identity_only()) {
            if let (Some(t), Some(w), Some(i)) = (two.p50_ms(), few.p50_ms(), id.p50_ms()) {
                let answer = t - w;
                let resolve = w - i;
                let _ = writeln!(
                    out,
                    "\nOf the issue's filter's p50 {} ms, {} ms go with its answer's size ({} clients: it minus the \
                     same filter narrowed to one hostname, which evaluates the same expressions over every entry) \
                     and {} ms with evaluating the expressions (the narrowed filter minus `-i` one identity, which \
                     scans the registry without facts); the rest, {} ms, is a `Status` over {} entries listing one. \
                     {}",
                    num(Some(t)),
                    num(Some(answer)),
                    count(two.listed),
                    num(Some(resolve)),
                    num(Some(i)),
                    count(r.entries),
                    if answer > resolve {
                        "The answer's size dominates."
                    } else {
                        "The resolution dominates, not the answer's size."
                    }
                );
            }
        }
    }
    if f.with.is_some() || f.without.is_some() {
        let _ = writeln!(
            out,
            "\n**Memory.** Two fresh servers, one after the other, each with {} simulated agents (registered once, \
             no heartbeat). On the second each agent sends one `Facts` report ({} bytes of facts asked, made up \
             like the entries' with more packages) once all are registered, and the server's answers are counted; \
             the reports are paced as the connections are ({} every {} ms from each thread of agents: a burst of \
             all at once would leave the server's allocator holding the burst's transient peak besides the facts \
             kept); \
             on both, a `Status -F os.id` counts the clients with fresh facts. Server `VmRSS` before the agents, \
             once all are registered and answered an echo, and at the end (each read after {} s); KiB per agent \
             from before to the end.\n",
            count(f.agents),
            group(s.agent_bytes as u64),
            CONNECT_BATCH,
            CONNECT_PAUSE.as_millis(),
            s.settle.as_secs_f64()
        );
        out.push_str(
            "| server | facts per agent (bytes) | RSS before (KiB) | registered | end | KiB per agent | of which \
             after registered | reports kept / refused | `-F os.id` lists |\n\
             |---|---:|---:|---:|---:|---:|---:|---:|---:|\n",
        );
        for (name, m) in [("without facts", &f.without), ("with facts", &f.with)] {
            let Some(m) = m else { continue };
            let _ = writeln!(
                out,
                "| {name} | {} | {} | {} | {} | {} | {} | {} / {} | {} |",
                group(m.facts_bytes as u64),
                kib(m.before_kib),
                kib(m.registered_kib),
                kib(m.end_kib),
                num(m.kib_per_agent()),
                num(m.end_kib_per_agent()),
                count(m.kept as usize),
                count(m.refused as usize),
                count(m.with_facts)
            );
        }
        if let (Some(extra), Some(with)) = (f.facts_kib_per_agent(), &f.with) {
            let _ = writeln!(
                out,
                "\nFacts cost {} KiB more per agent ({:.1}× their {} bytes of JSON): the registry keeps them \
                 decoded, a `BTreeMap` of `String` keys to JSON values (each key and each string value an \
                 allocation of its own, the map's nodes partly empty), and the store writer's SQLite page cache \
                 holds some of what it wrote.",
                num(Some(extra)),
                extra * 1024.0 / with.facts_bytes.max(1) as f64,
                group(with.facts_bytes as u64)
            );
        }
        if let Some(m) = f.with.as_ref().filter(|m| m.again_kib.is_some()) {
            let _ = writeln!(
                out,
                "\nThen a second round of the same reports ({} kept; the server replaces each agent's facts with an \
                 equal set): RSS {} → {} KiB, {} KiB per agent{}.",
                count(m.again_kept as usize),
                kib(m.end_kib),
                kib(m.again_kib),
                num(m.again_kib_per_agent()),
                if m.again_kib_per_agent().is_some_and(|k| k * 1024.0 > m.facts_bytes as f64) {
                    ": more than the facts themselves again, so part of the first round's cost is not the facts kept"
                } else {
                    ""
                }
            );
        }
        if let Some(why) = f.with.as_ref().and_then(|m| m.refusal.as_deref()) {
            let _ = writeln!(out, "\nA report was refused: {why}");
        }
    }
    failures(&mut out, &f.failures);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn queries_are_named_as_typed_and_found_by_kind() {
        let q = |facts: &[&str], ids: &[&str]| QueryRun {
            facts: facts.iter().map(|s| s.to_string()).collect(),
            identities: ids.iter().map(|s| s.to_string()).collect(),
            ..QueryRun::default()
        };
        let two = q(&TWO_EXPRESSIONS, &[]);
        assert_eq!(two.name(), "`-F os.id=debian -F 'memory_mib>=16384'`");
        assert_eq!(q(&[], &[]).name(), "no filter");
        assert_eq!(q(&[], &["host-0000042"]).name(), "`-i host-0000042`");
        let r = Resolution {
            queries: vec![q(&[], &[]), two, q(&["a", "b", "c"], &[]), q(&[], &["x"])],
            ..Resolution::default()
        };
        assert_eq!(r.two().map(|q| q.facts.len()), Some(2));
        assert_eq!(r.few().map(|q| q.facts.len()), Some(3));
        assert_eq!(r.identity_only().map(|q| q.identities.clone()), Some(vec!["x".to_owned()]));
        assert!(r.unfiltered().is_some_and(|q| q.facts.is_empty() && q.identities.is_empty()));
    }

    #[test]
    fn memory_per_agent_and_the_facts_bound() {
        let run = |before, end, bytes| MemoryRun {
            agents: 1000,
            facts_bytes: bytes,
            before_kib: Some(before),
            registered_kib: Some(before + 20_000),
            end_kib: Some(end),
            kept: if bytes > 0 { 1000 } else { 0 },
            with_facts: if bytes > 0 { 1000 } else { 0 },
            ..MemoryRun::default()
        };
        let mut f = Figures {
            settings: crate::common::env::defaults(),
            resolution: None,
            agents: 1000,
            without: Some(run(10_000, 30_000, 0)),
            with: Some(run(10_000, 38_000, 4096)),
            failures: vec![],
        };
        assert_eq!(f.without.as_ref().and_then(MemoryRun::kib_per_agent), Some(20.0));
        assert_eq!(f.facts_kib_per_agent(), Some(8.0));
        assert_eq!(f.memory_met(), Some(true), "8 KiB for 4 KiB of facts is within 3×");
        f.with = Some(run(10_000, 43_000, 4096));
        assert_eq!(f.memory_met(), Some(false), "13 KiB is not");
        f.with = Some(MemoryRun { with_facts: 999, ..run(10_000, 38_000, 4096) });
        assert_eq!(f.memory_met(), Some(false), "every agent's facts kept");
        f.without = None;
        assert_eq!(f.memory_met(), None);
    }
}
