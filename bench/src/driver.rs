//! The benchmark from start to end: the scenarios one after the other,
//! then the report's files. Nothing here measures.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Result;

use crate::common::env::{defaults, Binaries, Env, Measure};
use crate::common::limits::FDS_PER_AGENT;
use crate::common::ring::KeyRing;
use crate::report::{self, Machine, PreviousRun, Results};
use crate::scenarios::{
    cluster, enrollment, facts, fanout_throughput, handshake, jobs, metrics, presence, rollout, scale, signing,
};

/// What to run and where.
#[derive(Debug, Clone)]
pub struct Config {
    pub bins: Binaries,
    /// Where `latest.json`, `latest.md` and `fanout.svg` go (and the
    /// previous run's `latest.json` is read).
    pub out_dir: PathBuf,
    /// The servers' log level (`info` is the production default).
    pub log_level: String,
    pub measure: Measure,
    pub fanout_throughput: fanout_throughput::Settings,
    pub handshake: handshake::Settings,
    pub enrollment: enrollment::Settings,
    pub presence: presence::Settings,
    pub jobs: jobs::Settings,
    pub metrics: metrics::Settings,
    pub cluster: cluster::Settings,
    pub rollout: rollout::Settings,
    pub facts: facts::Settings,
    pub signing: signing::Settings,
    pub scale: scale::Settings,
}

impl Config {
    /// The full benchmark of `make bench`: every default.
    pub fn full(bins: Binaries, out_dir: PathBuf) -> Config {
        Config {
            bins,
            out_dir,
            log_level: "info".into(),
            measure: defaults(),
            fanout_throughput: defaults(),
            handshake: defaults(),
            enrollment: defaults(),
            presence: defaults(),
            jobs: defaults(),
            metrics: defaults(),
            cluster: defaults(),
            rollout: defaults(),
            facts: defaults(),
            signing: defaults(),
            scale: defaults(),
        }
    }

    /// N = 2, one iteration of everything, a few agents in each scenario,
    /// a few seconds: keeps the bench from rotting (`make test`).
    pub fn smoke(bins: Binaries, out_dir: PathBuf) -> Config {
        let full = Config::full(bins, out_dir);
        Config {
            measure: Measure::smoke(),
            fanout_throughput: fanout_throughput::Settings { sizes: vec![2], ..full.fanout_throughput },
            handshake: handshake::Settings { known_keys: vec![10, 100] },
            enrollment: enrollment::Settings { agents: 20, repeats: 1, crowd_timeout: Duration::from_secs(30) },
            presence: presence::Settings {
                agents: 10,
                killed: 2,
                kill_wait: Duration::from_secs(1),
                echoes: 2,
                kill_repeats: 1,
                restart_agents: 20,
                heartbeat: Duration::from_secs(2),
                idle_window: Duration::from_secs(1),
                ..full.presence
            },
            jobs: jobs::Settings {
                sizes: vec![2],
                fill: 300,
                fill_timeout: Duration::from_secs(30),
                list_requests: 5,
                db_agents: 10,
                db_echoes: 3,
                heartbeat: Duration::from_secs(2),
            },
            metrics: metrics::Settings {
                sizes: vec![2],
                scrape_every: Duration::from_millis(100),
                scrape_agents: 10,
                scrapes: 3,
            },
            cluster: cluster::Settings {
                agents_per_server: 3,
                failover_agents_per_server: 3,
                heartbeat: Duration::from_secs(1),
                revocations: 2,
                failover_timeout: Duration::from_secs(20),
                ..full.cluster
            },
            // 4 batches of 5, 4 failing, a budget of 1: at least two batches
            // run, and the rollout stops before the last one or at it.
            rollout: rollout::Settings {
                agents: 20,
                batch_percent: 25,
                failing_percent: 20,
                max_fail_percent: 5,
                runs: 1,
                cancel_agents: 10,
                wait: Duration::from_secs(20),
            },
            // 1,000 registry entries, 20 agents on each memory server.
            facts: facts::Settings {
                entries: 1000,
                entry_bytes: 1024,
                requests: 3,
                agents: 20,
                agent_bytes: 4096,
                settle: Duration::from_millis(200),
            },
            // 20 agents, 50 signatures of each kind in 2 rounds, 20 uuids
            // held (ed25519 is slow in a debug build).
            signing: signing::Settings { signatures: 50, cost_rounds: 2, admins: 3, seen: 20, agents: 20 },
            // 30 agents in two child processes, a restart with a 1 s spread.
            scale: scale::Settings {
                sizes: vec![30],
                per_process: 20,
                echoes: 2,
                reconnect_spread: Duration::from_secs(1),
                online_timeout: Duration::from_secs(30),
                status_every: Duration::from_millis(100),
                ..full.scale
            },
            ..full
        }
    }

    fn env(&self) -> Result<Env> {
        Env::new(self.bins.clone(), self.log_level.clone(), self.measure)
    }
}

/// Runs every scenario and writes the report, compared with the previous
/// run's `latest.json` in `out_dir`. Returns the figures.
pub fn run(cfg: &Config) -> Result<Results> {
    let env = cfg.env()?;
    let limits = env.limits;
    let (major, minor, patch) = zmq::version();
    let machine = Machine {
        cores: std::thread::available_parallelism().map_or(1, |n| n.get()),
        libzmq: format!("{major}.{minor}.{patch}"),
        limits,
    };
    env.say(format!(
        "open files: soft limit {} (was {}), hard {}: up to {} agents per pool ({FDS_PER_AGENT} descriptors each), \
         both pools at once up to N = {}; libzmq {}, {} cores, {} rounds",
        limits.soft,
        limits.soft_before,
        limits.hard,
        limits.max_agents(),
        limits.max_agents() / 2,
        machine.libzmq,
        machine.cores,
        cfg.measure.rounds
    ));
    let previous = PreviousRun::load(&cfg.out_dir);
    env.say(format!("previous run: {}", previous.said));
    let most = [
        cfg.fanout_throughput.max_agents(),
        cfg.jobs.max_agents(),
        cfg.metrics.max_agents(),
        cfg.cluster.max_agents(),
        cfg.rollout.max_agents(),
        cfg.facts.max_agents(),
        cfg.signing.max_agents(),
    ];
    let ring = env.ring(most.into_iter().max().unwrap_or(0).min(limits.max_agents()))?;
    let fanout_throughput = fanout_throughput::run(&env, &ring, &cfg.fanout_throughput)?;
    let handshake = handshake::run(&env, &ring, &cfg.handshake)?;
    let enrollment = enrollment::run(&env, &ring, &cfg.enrollment)?;
    let presence = presence::run(&env, &ring, &cfg.presence)?;
    let jobs = jobs::run(&env, &ring, &cfg.jobs)?;
    let metrics = metrics::run(&env, &ring, &cfg.metrics)?;
    let cluster = cluster::run(&env, &ring, &cfg.cluster)?;
    let rollout = rollout::run(&env, &ring, &cfg.rollout)?;
    let facts = facts::run(&env, &ring, &cfg.facts)?;
    let signing = signing::run(&env, &ring, &cfg.signing)?;
    let scale = scale::run(&env, &ring, &cfg.scale)?;
    let results = Results {
        machine,
        elapsed_s: env.elapsed().as_secs_f64(),
        fanout_throughput: Some(fanout_throughput),
        handshake: Some(handshake),
        enrollment: Some(enrollment),
        presence: Some(presence),
        jobs: Some(jobs),
        metrics: Some(metrics),
        cluster: Some(cluster),
        rollout: Some(rollout),
        facts: Some(facts),
        signing: Some(signing),
        scale: Some(scale),
    };
    report::write(&results, &previous, &cfg.out_dir)?;
    env.say(format!("report written to {}", cfg.out_dir.display()));
    Ok(results)
}

/// One scenario alone (`pantry-bench presence`...): fresh keys for up to
/// `agents` agents, progress on stderr; the report is the caller's.
pub fn run_alone<T>(cfg: &Config, agents: usize, run: impl FnOnce(&Env, &KeyRing) -> Result<T>) -> Result<T> {
    let env = cfg.env()?;
    let ring = env.ring(agents.min(env.limits.max_agents()))?;
    run(&env, &ring)
}
