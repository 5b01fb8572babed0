//! What every scenario runs with: the binaries, the server's log level, how
//! the comparisons measure ([`Measure`]), the open-file limits, and
//! progress on stderr.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result};
use clap::builder::RangedU64ValueParser;
use pantry_shared::keys::KnownKey;
use serde::{Deserialize, Serialize};

use crate::common::agents::{group_streams, Kind};
use crate::common::handshake::HandshakeSettings;
use crate::common::keys::Pair;
use crate::common::limits::{self, FdLimits};
use crate::common::procs::{Endpoints, PantryServer};
use crate::common::requesters::{wait_until_reachable, Requester, ThroughputSettings};
use crate::common::ring::{KeyRing, ADMIN_NAME};

/// The binaries the scenarios start.
#[derive(Debug, Clone)]
pub struct Binaries {
    pub server: PathBuf,
    pub client: PathBuf,
    pub admin: PathBuf,
    /// This binary, started as `pantry-bench relay`.
    pub bench: PathBuf,
}

/// How two systems are measured side by side, in every scenario that
/// compares two: the options are the command line's (before or after the
/// subcommand), the rest fixed.
#[derive(Debug, Clone, Copy, clap::Args, Serialize, Deserialize)]
pub struct Measure {
    /// Rounds of each comparison, alternating which system goes first;
    /// figures are medians over rounds.
    #[arg(long, global = true, default_value_t = 3, value_parser = RangedU64ValueParser::<usize>::new().range(1..))]
    pub rounds: usize,
    /// Fan-out echoes per N and round.
    #[arg(long = "fanouts", value_name = "N", global = true, default_value_t = 20, value_parser = RangedU64ValueParser::<usize>::new().range(1..))]
    pub fanout_requests: usize,
    #[arg(skip = Duration::from_secs(10))]
    pub fanout_timeout: Duration,
    /// Concurrent requesters in the throughput runs.
    #[arg(skip = 4usize)]
    pub requesters: usize,
    #[arg(skip = ThroughputSettings {
        window: 16,
        warmup: Duration::from_millis(300),
        duration: Duration::from_millis(1500),
    })]
    pub throughput: ThroughputSettings,
    #[arg(skip = HandshakeSettings {
        slots: 32,
        warmup: Duration::from_millis(300),
        duration: Duration::from_millis(1500),
    })]
    pub handshake: HandshakeSettings,
    /// Longest wait for a pool's agents to be registered and reachable.
    #[arg(skip = Duration::from_secs(90))]
    pub reachable_timeout: Duration,
}

impl Measure {
    /// One short iteration of everything (`make test`).
    pub fn smoke() -> Measure {
        Measure {
            rounds: 1,
            fanout_requests: 1,
            fanout_timeout: Duration::from_secs(5),
            requesters: 2,
            throughput: ThroughputSettings {
                window: 4,
                warmup: Duration::from_millis(50),
                duration: Duration::from_millis(200),
            },
            handshake: HandshakeSettings {
                slots: 4,
                warmup: Duration::from_millis(50),
                duration: Duration::from_millis(200),
            },
            reachable_timeout: Duration::from_secs(20),
        }
    }
}

impl Default for Measure {
    /// The command line's defaults: the full benchmark's.
    fn default() -> Measure {
        defaults()
    }
}

/// Settings at the command line's defaults (what `make bench` runs).
pub fn defaults<T: clap::Args + clap::FromArgMatches>() -> T {
    let matches = T::augment_args(clap::Command::new("defaults")).get_matches_from(["defaults"]);
    T::from_arg_matches(&matches).expect("every option has a default")
}

/// A command-line duration in seconds (`1.5`).
pub fn seconds(text: &str) -> Result<Duration> {
    Ok(Duration::try_from_secs_f64(text.parse()?)?)
}

pub struct Env {
    pub bins: Binaries,
    /// The servers' log level (`info` is the production default).
    pub log_level: String,
    pub measure: Measure,
    /// After raising the soft limit, which bounds the agents.
    pub limits: FdLimits,
    started: Instant,
}

impl Env {
    /// Raises the open-file limit (the agents need it) and starts the clock
    /// of the progress lines.
    pub fn new(bins: Binaries, log_level: String, measure: Measure) -> Result<Env> {
        let limits = limits::raise_nofile().context("cannot raise the open-file limit")?;
        Ok(Env { bins, log_level, measure, limits, started: Instant::now() })
    }

    /// A progress line on stderr, with the time since the start.
    pub fn say(&self, text: impl AsRef<str>) {
        eprintln!("[{:>6.1}s] {}", self.started.elapsed().as_secs_f64(), text.as_ref());
    }

    pub fn elapsed(&self) -> Duration {
        self.started.elapsed()
    }

    /// Keys for `agents` agents and this measure's requesters and handshake
    /// slots.
    pub fn ring(&self, agents: usize) -> Result<KeyRing> {
        KeyRing::generate(agents, self.measure.requesters, self.measure.handshake.slots.min(100))
    }

    /// A fresh `pantry-server` (CURVE with `keys`: its pair and the known
    /// keys), `extra` appended to its server.yml.
    pub fn server(&self, keys: Option<(&Pair, &[KnownKey])>, extra: &str) -> Result<PantryServer> {
        PantryServer::start_with(&self.bins.server, keys, &self.log_level, extra)
    }

    /// Waits until the first `n` agents on `endpoints` (CURVE) are
    /// registered and reachable: each group answered an admin's echo.
    pub fn reach(&self, endpoints: &Endpoints, ring: &KeyRing, n: usize) -> Result<()> {
        let mut admin = Requester::connect(Kind::Pantry, endpoints, Some(&ring.admin), ADMIN_NAME)?;
        wait_until_reachable(&mut admin, &group_streams(n), self.measure.reachable_timeout)
            .with_context(|| format!("{n} agents"))
    }

    /// A fresh CURVE server that knows every key of `ring`.
    pub fn server_for(&self, ring: &KeyRing, extra: &str) -> Result<PantryServer> {
        self.server(Some((&ring.server, &ring.enrolled())), extra)
    }

    /// [`Env::server_for`], with `prepare(root_dir)` run before the server
    /// starts (its database filled beforehand).
    pub fn server_prepared(
        &self,
        ring: &KeyRing,
        extra: &str,
        prepare: impl FnOnce(&std::path::Path) -> Result<()>,
    ) -> Result<PantryServer> {
        let keys = ring.enrolled();
        PantryServer::start_prepared(&self.bins.server, Some((&ring.server, &keys)), &self.log_level, extra, prepare)
    }
}

/// The parts of a scenario that failed, each said on stderr and kept for
/// the report: a part that fails does not stop the others.
pub struct Parts<'a> {
    env: &'a Env,
    scenario: &'static str,
    pub failures: Vec<String>,
}

impl<'a> Parts<'a> {
    pub fn new(env: &'a Env, scenario: &'static str) -> Parts<'a> {
        Parts { env, scenario, failures: Vec::new() }
    }

    /// `result`'s value, or `None` with the failure recorded.
    pub fn part<T>(&mut self, part: &str, result: Result<T>) -> Option<T> {
        result
            .map_err(|e| {
                self.env.say(format!("{}: {part} failed: {e:#}", self.scenario));
                self.failures.push(format!("{part}: {e:#}"));
            })
            .ok()
    }
}
