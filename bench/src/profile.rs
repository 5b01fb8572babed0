//! `pantry-bench profile`: one scenario against one CURVE `pantry-server`
//! for a fixed time, optionally under `perf record`, and the server CPU time
//! per operation. Where the report says Pantry falls short, this shows why.

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _, Result};

use clap::builder::RangedU64ValueParser;

use crate::common::agents::{group_streams, Kind, Pool};
use crate::common::env::{seconds, Binaries};
use crate::common::handshake::{handshake_rate, HandshakeSettings};
use crate::common::keys;
use crate::common::procs::{cpu_ns, PantryServer, Relay};
use crate::common::requesters::{fanout, throughput, wait_until_reachable, Requester, ThroughputSettings};
use crate::common::ring::{requester_name, KeyRing, ADMIN_NAME};

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Scenario {
    /// Pipelined echoes to single agents.
    Throughput,
    /// Echoes to every agent, one after the other.
    Fanout,
    /// New CURVE connections.
    Handshake,
}

/// What to profile.
#[derive(Debug, Clone, clap::Args)]
pub struct Settings {
    #[arg(long, value_enum, default_value = "throughput")]
    pub scenario: Scenario,
    #[arg(long, default_value_t = 100, value_parser = RangedU64ValueParser::<usize>::new().range(1..))]
    pub agents: usize,
    /// Keys in the server's key store (filled up with random keys).
    #[arg(long, default_value_t = 100)]
    pub known_keys: usize,
    #[arg(long = "seconds", value_parser = seconds, default_value = "10")]
    pub duration: Duration,
    /// Record the server with `perf record` into this file.
    #[arg(long = "perf", value_name = "FILE")]
    pub perf_out: Option<PathBuf>,
    /// Extra arguments for `perf record`, e.g. `--call-graph=dwarf`.
    #[arg(long, allow_hyphen_values = true)]
    pub perf_args: Vec<String>,
    /// Run against the baseline relay instead of pantry-server.
    #[arg(long)]
    pub baseline: bool,
    /// YAML appended to the server's server.yml, e.g.
    /// `"jobs:\n  enabled: false\n"`.
    #[arg(long, value_name = "YAML", default_value = "")]
    pub server_config: String,
}

/// Runs the scenario and prints what the server spent per operation.
pub fn run(bins: &Binaries, cfg: &Settings) -> Result<()> {
    crate::common::limits::raise_nofile()?;
    let ring = KeyRing::generate(cfg.agents, 4, 0)?;
    let mut known = ring.enrolled();
    known.extend(keys::filler(cfg.known_keys.saturating_sub(known.len()))?);
    let kind = if cfg.baseline { Kind::Baseline } else { Kind::Pantry };
    let (server, relay) = match kind {
        Kind::Pantry => {
            let key = Some((&ring.server, &known[..]));
            (Some(PantryServer::start_with(&bins.server, key, "info", &cfg.server_config)?), None)
        }
        Kind::Baseline => (None, Some(Relay::start(&bins.bench, Some(&ring.server))?)),
    };
    let (pid, endpoints) = match (&server, &relay) {
        (Some(s), _) => (s.process.pid, s.endpoints.clone()),
        (_, Some(r)) => (r.process.pid, r.endpoints.clone()),
        _ => unreachable!(),
    };
    eprintln!("{} pid {pid}, {} known keys", kind.name(), known.len());

    let mut admin = Requester::connect(kind, &endpoints, Some(&ring.admin), ADMIN_NAME)?;
    let pool = if cfg.scenario == Scenario::Handshake {
        None
    } else {
        let pool = Pool::start(kind, &endpoints, &ring.agents, cfg.agents)?;
        wait_until_reachable(&mut admin, &group_streams(cfg.agents), Duration::from_secs(90))?;
        Some(pool)
    };
    let mut clients: Vec<Requester> = ring
        .requesters
        .iter()
        .enumerate()
        .map(|(k, p)| Requester::connect(kind, &endpoints, Some(p), &requester_name(k)))
        .collect::<Result<_>>()?;

    let mut perf = match &cfg.perf_out {
        Some(out) => {
            let child = Command::new("perf")
                .arg("record")
                .args(&cfg.perf_args)
                .arg("-p")
                .arg(pid.to_string())
                .arg("-o")
                .arg(out)
                .stdin(Stdio::null())
                .spawn()
                .context("cannot start perf (apt-get install linux-perf)")?;
            std::thread::sleep(Duration::from_millis(500));
            Some(child)
        }
        None => None,
    };
    let cpu_before = cpu_ns(pid).unwrap_or(0);
    let started = Instant::now();
    let (operations, what) = match cfg.scenario {
        Scenario::Throughput => {
            let s = ThroughputSettings { window: 16, warmup: Duration::ZERO, duration: cfg.duration };
            let t = throughput(&mut clients, cfg.agents, s)?;
            eprintln!("{:.0} requests/s, {} lost", t.per_second, t.lost);
            (t.total_completed, "request")
        }
        Scenario::Fanout => {
            let (mut answers, mut count) = (0u64, 0u64);
            while started.elapsed() < cfg.duration && count < 100_000 {
                let f = fanout(&mut admin, cfg.agents, Duration::from_secs(10), Duration::from_secs(1))?;
                answers += f.answers as u64;
                count += 1;
            }
            let sent = pool.as_ref().map(Pool::answered).unwrap_or(0);
            eprintln!("{count} fan-outs, {answers} answers received, agents sent {sent} in all");
            (answers, "answer")
        }
        Scenario::Handshake => {
            let s = HandshakeSettings { slots: 32, warmup: Duration::ZERO, duration: cfg.duration };
            let r = handshake_rate(&endpoints, &ring.requesters, s)?;
            eprintln!("{:.0} handshakes/s, {} failed", r.per_second, r.failed);
            (r.total_succeeded, "handshake")
        }
    };
    let cpu = cpu_ns(pid).unwrap_or(0).saturating_sub(cpu_before);
    if let Some(child) = perf.as_mut() {
        // SAFETY: SIGINT to our own child: perf writes its file and exits.
        unsafe { libc::kill(child.id() as i32, libc::SIGINT) };
        let _ = child.wait();
    }
    if operations == 0 {
        bail!("no {what} completed");
    }
    println!(
        "{operations} {what}s in {:.1} s; server CPU {:.0} ms = {:.1} µs per {what}",
        started.elapsed().as_secs_f64(),
        cpu as f64 / 1e6,
        cpu as f64 / 1e3 / operations as f64
    );
    drop(pool);
    Ok(())
}
