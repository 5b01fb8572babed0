//! Pools of simulated agents in child processes of the bench (this binary
//! again, `pantry-bench agents`). One process holds at most a few thousand
//! agents: each costs a descriptor for its connection and one for its
//! socket's mailbox (two more with a monitor), under a hard open-file limit
//! the bench cannot raise; so N agents run as several children of up to
//! `per_process` agents each ([`Children`]).
//!
//! A child reads its agents (kind, server, keys, options) as one JSON line
//! on stdin, starts a [`Pool`] of them, says it is ready with a line of
//! [`Counts`], and answers each `counts` line with another. It exits when
//! its stdin closes (the bench dropped it, or died: then it also gets
//! SIGTERM), and after [`MAX_LIFETIME`] whatever happens. Every wait for a
//! child is bounded.

use std::io::{BufRead as _, BufReader, Write as _};
use std::ops::Range;
use std::path::Path;
use std::process::{ChildStdin, Command};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context as _, Result};
use pantry_shared::keys::decode_z85;
use serde::{Deserialize, Serialize};
use tempfile::TempDir;

use super::{client_security, AgentOptions, Kind, Pool, MAX_LIFETIME};
use crate::common::keys::{z85, Pair};
use crate::common::procs::{Endpoints, Process};

/// What the bench asks a child for, one line each.
const COUNTS: &str = "counts";

/// How long a child may take to start its agents (its connects are paced
/// at about 650 agents per second; a debug build is slower).
const START_TIMEOUT: Duration = Duration::from_secs(120);

/// What a child's agents are, as it reads them on stdin.
#[derive(Serialize, Deserialize)]
struct Spec {
    kind: Kind,
    receive: String,
    /// The server's public key in Z85 (CURVE).
    server_key: Option<String>,
    /// The agents are `first..first + count`.
    first: usize,
    count: usize,
    /// Under CURVE, each agent's key pair in Z85 (public, secret), in order.
    keys: Vec<(String, String)>,
    heartbeat_ms: Option<u64>,
    reconnect_spread_ms: Option<u64>,
    register_on_reconnect: bool,
    linger_zero: bool,
}

impl Spec {
    fn options(&self) -> AgentOptions {
        AgentOptions {
            heartbeat: self.heartbeat_ms.map(Duration::from_millis),
            register_on_reconnect: self.register_on_reconnect,
            reconnect_spread: self.reconnect_spread_ms.map(Duration::from_millis),
            linger_zero: self.linger_zero,
            ..AgentOptions::default()
        }
    }

    fn start(&self) -> Result<Pool> {
        let server_key = match &self.server_key {
            Some(key) => Some(decode_z85(key).context("the server key is not Z85")?),
            None => None,
        };
        let endpoints = Endpoints { receive: self.receive.clone(), server_key };
        ensure!(
            server_key.is_none() || self.keys.len() == self.count,
            "{} keys for {} agents",
            self.keys.len(),
            self.count
        );
        let mut agents = Vec::with_capacity(self.count);
        for k in 0..self.count {
            let pair = match self.keys.get(k) {
                Some((public, secret)) => Some(Pair {
                    public: decode_z85(public).context("an agent's public key is not Z85")?,
                    secret: decode_z85(secret).context("an agent's secret key is not Z85")?,
                }),
                None => None,
            };
            agents.push((self.first + k, client_security(&endpoints, pair.as_ref())?));
        }
        Pool::start_agents(self.kind, std::slice::from_ref(&endpoints), 0, agents, self.options())
    }
}

/// What a child's agents did so far (or, summed, all children's).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Counts {
    pub agents: usize,
    /// Pantry agents registered on their current connection, their
    /// requests on their DEALER ([`Pool::registered`]).
    pub registered: u64,
    /// Answers sent.
    pub answered: u64,
    /// Registrations refused, and why the first was.
    pub refused: u64,
    pub refusal: Option<String>,
    /// Connections made again after a lost one.
    pub reconnects: u64,
}

impl Counts {
    fn of(pool: &Pool, agents: usize) -> Counts {
        let (refused, refusal) = pool.refused();
        Counts {
            agents,
            registered: pool.registered(),
            answered: pool.answered(),
            refused,
            refusal,
            reconnects: pool.reconnects(),
        }
    }

    fn add(&mut self, other: Counts) {
        self.agents += other.agents;
        self.registered += other.registered;
        self.answered += other.answered;
        self.refused += other.refused;
        self.refusal = self.refusal.take().or(other.refusal);
        self.reconnects += other.reconnects;
    }
}

/// The child's side (`pantry-bench agents`): its agents from stdin, then
/// counts on request until stdin closes.
pub fn run() -> Result<()> {
    crate::common::limits::raise_nofile().context("cannot raise the open-file limit")?;
    std::thread::spawn(|| {
        std::thread::sleep(MAX_LIFETIME);
        eprintln!("pantry-bench agents: still running after {MAX_LIFETIME:?}: exiting");
        std::process::exit(2);
    });
    let mut lines = std::io::stdin().lines();
    let first = lines.next().context("no settings on stdin")?.context("cannot read stdin")?;
    let spec: Spec = serde_json::from_str(&first).context("settings on stdin")?;
    let pool = spec.start().with_context(|| format!("agents {}..{}", spec.first, spec.first + spec.count))?;
    let say = |pool: &Pool| -> Result<()> {
        let mut out = std::io::stdout().lock();
        writeln!(out, "{}", serde_json::to_string(&Counts::of(pool, spec.count))?)?;
        Ok(out.flush()?)
    };
    say(&pool)?;
    for line in lines {
        match line {
            Ok(line) if line.trim() == COUNTS => say(&pool)?,
            Ok(_) => {}
            Err(_) => break,
        }
    }
    drop(pool);
    Ok(())
}

/// One child, from the bench's side.
struct Child {
    // Closing it tells the child to exit; the process handle stops it
    // anyway (fields drop in order).
    stdin: ChildStdin,
    /// Its stdout, line by line, from a thread of its own.
    lines: mpsc::Receiver<String>,
    process: Process,
    agents: Range<usize>,
}

impl Child {
    /// Its next line within `timeout`, as [`Counts`].
    fn counts(&mut self, timeout: Duration) -> Result<Counts> {
        let line = match self.lines.recv_timeout(timeout) {
            Ok(line) => line,
            Err(mpsc::RecvTimeoutError::Timeout) => {
                bail!("agents {:?}: no counts within {timeout:?}", self.agents)
            }
            Err(mpsc::RecvTimeoutError::Disconnected) => {
                let status = self.process.exited().map_or("still running".into(), |s| s.to_string());
                bail!("agents {:?}: the child closed its stdout ({status}):\n{}", self.agents, self.process.log())
            }
        };
        serde_json::from_str(&line).with_context(|| format!("agents {:?} said {line:?}", self.agents))
    }
}

/// Agents in child processes, running until dropped.
pub struct Children {
    children: Vec<Child>,
    // Removed after the children (their logs are in it).
    dir: TempDir,
}

impl Children {
    /// Starts agents `range` of `kind` on `endpoints` (agent `i` with
    /// `pairs[i]` under CURVE), `per_process` in each child, one child
    /// after the other (each paces its connects as a pool does), with
    /// `options` (a heartbeat, registering on reconnection, the reconnect
    /// spread, linger 0: what a child can be told). Returns once every
    /// child has made its agents' sockets.
    pub fn start(
        exe: &Path,
        kind: Kind,
        endpoints: &Endpoints,
        pairs: &[Pair],
        range: Range<usize>,
        per_process: usize,
        options: &AgentOptions,
    ) -> Result<Children> {
        ensure!(per_process > 0, "no agents per process");
        ensure!(
            !options.failover
                && !options.simulated_exec
                && options.facts_bytes.is_none()
                && options.verify_signatures.is_none(),
            "agents in child processes only register, reconnect and answer"
        );
        ensure!(
            endpoints.server_key.is_none() || pairs.len() >= range.end,
            "{} keys for agents {range:?}",
            pairs.len()
        );
        let dir = tempfile::Builder::new().prefix("pantry-bench-agents-").tempdir()?;
        let mut children = Children { children: Vec::new(), dir };
        let mut first = range.start;
        while first < range.end {
            let last = (first + per_process).min(range.end);
            let spec = Spec {
                kind,
                receive: endpoints.receive.clone(),
                server_key: endpoints.server_key.as_ref().map(z85),
                first,
                count: last - first,
                keys: match endpoints.server_key {
                    Some(_) => pairs[first..last].iter().map(|p| (p.public_z85(), p.secret_z85())).collect(),
                    None => Vec::new(),
                },
                heartbeat_ms: options.heartbeat.map(|h| h.as_millis() as u64),
                reconnect_spread_ms: options.reconnect_spread.map(|s| s.as_millis() as u64),
                register_on_reconnect: options.register_on_reconnect,
                linger_zero: options.linger_zero,
            };
            let child = children.spawn(exe, &spec).with_context(|| format!("agents {first}..{last}"))?;
            children.children.push(child);
            first = last;
        }
        Ok(children)
    }

    fn spawn(&self, exe: &Path, spec: &Spec) -> Result<Child> {
        let k = self.children.len();
        let mut command = Command::new(exe);
        command.arg("agents");
        let (process, mut stdin, stdout) =
            Process::spawn_piped("pantry-bench agents", &mut command, self.dir.path().join(format!("agents-{k}.log")))?;
        let (tx, lines) = mpsc::channel();
        std::thread::Builder::new().name(format!("child-{k}-lines")).spawn(move || {
            // Ends when the child's stdout closes (it exited).
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        })?;
        // The keys go over stdin, never on the command line.
        writeln!(stdin, "{}", serde_json::to_string(spec)?)?;
        stdin.flush()?;
        let mut child = Child { stdin, lines, process, agents: spec.first..spec.first + spec.count };
        let ready = child.counts(START_TIMEOUT)?;
        ensure!(ready.agents == spec.count, "{} agents started of {}", ready.agents, spec.count);
        Ok(child)
    }

    /// Child processes.
    pub fn processes(&self) -> usize {
        self.children.len()
    }

    /// Every child's counts, summed, each within `timeout`.
    pub fn counts(&mut self, timeout: Duration) -> Result<Counts> {
        let end = Instant::now() + timeout;
        for child in &mut self.children {
            // A reply that came after an earlier call gave up is stale.
            while child.lines.try_recv().is_ok() {}
            writeln!(child.stdin, "{COUNTS}")
                .and_then(|()| child.stdin.flush())
                .with_context(|| format!("agents {:?}: cannot ask for counts", child.agents))?;
        }
        let mut all = Counts::default();
        for child in &mut self.children {
            all.add(child.counts(end.saturating_duration_since(Instant::now()))?);
        }
        Ok(all)
    }
}
