//! `pantry-bench`: runs the benchmark (`make bench`), one scenario of it
//! (`pantry-bench enrollment`, `presence`, `jobs`, `metrics`, `cluster`,
//! `rollout`, `facts`, `signing`, `scale`, `profile`), or what the benchmark
//! starts as child processes: the baseline relay (`pantry-bench relay`) and
//! pools of simulated agents (`pantry-bench agents`).

use std::path::PathBuf;

use anyhow::{Context as _, Result};
use clap::{Parser, Subcommand};
use pantry_bench::common::env::{Binaries, Measure};
use pantry_bench::driver::{self, Config};
use pantry_bench::report::{PreviousRun, MARKDOWN};
use pantry_bench::scenarios::{
    cluster, enrollment, facts, fanout_throughput, handshake, jobs, metrics, presence, rollout, scale, signing,
};

/// Benchmarks the release pantry-server against a raw-libzmq relay.
#[derive(Parser, Debug)]
#[command(name = "pantry-bench", version = pantry_shared::VERSION)]
struct Cli {
    #[command(subcommand)]
    command: Option<Cmd>,
    /// The pantry-server binary [default: pantry-server next to this binary].
    #[arg(long, value_name = "FILE")]
    server: Option<PathBuf>,
    /// The pantry-client binary [default: pantry-client next to this binary].
    #[arg(long, value_name = "FILE")]
    client: Option<PathBuf>,
    /// The pantry-admin binary [default: pantry-admin next to this binary].
    #[arg(long, value_name = "FILE")]
    admin: Option<PathBuf>,
    /// Where latest.json, latest.md and fanout.svg are written, and the
    /// previous run's latest.json is read.
    #[arg(long, value_name = "DIR", default_value = "bench/results")]
    out: PathBuf,
    /// The N = 2, one-iteration run of the unit test.
    #[arg(long)]
    smoke: bool,
    /// pantry-server log level (info is the production default).
    #[arg(long, default_value = "info")]
    log_level: String,
    #[command(flatten)]
    measure: Measure,
    #[command(flatten)]
    fanout_throughput: fanout_throughput::Settings,
    #[command(flatten)]
    handshake: handshake::Settings,
}

#[derive(Subcommand, Debug)]
enum Cmd {
    /// The baseline relay (started by the benchmark; reads its CURVE secret
    /// key, or an empty line, on stdin and exits when stdin closes).
    #[command(hide = true)]
    Relay {
        #[arg(long)]
        receive_port: u16,
    },
    /// A pool of simulated agents (started by the benchmark when one
    /// process cannot hold them all; reads its agents as a JSON line on
    /// stdin, answers `counts` lines, exits when stdin closes).
    #[command(hide = true)]
    Agents,
    #[command(flatten)]
    Only(Only),
    /// One scenario against a CURVE pantry-server for a while, optionally
    /// under `perf record`; prints the server CPU time per operation.
    Profile(pantry_bench::profile::Settings),
}

/// One scenario of the benchmark alone; it prints its section of the
/// report, compared with the previous run's `latest.json` in `--out`
/// (left alone).
#[derive(Subcommand, Debug)]
enum Only {
    /// Only the enrollment scenario (CURVE): agents enrolling with one token,
    /// then `client:token` → echo with the real binaries; prints its
    /// section of the report.
    Enrollment(enrollment::Settings),
    /// Only the presence scenario (CURVE): killed agents named offline at
    /// once, SIGKILL of a real pantry-client → offline, a server restart
    /// with agents coming back; prints its section of the report.
    Presence(presence::Settings),
    /// Only the job-store scenario (CURVE): fan-out and throughput with the
    /// store on and off, `jobs` over a filled store, database size per job;
    /// prints its section of the report.
    Jobs(jobs::Settings),
    /// Only the metrics scenario (CURVE): fan-out and throughput with the
    /// Prometheus endpoint on and off, `GET /metrics` with many agents
    /// connected; prints its section of the report.
    Metrics(metrics::Settings),
    /// Only the cluster scenario (CURVE, needs etcd): three servers with
    /// `cluster:` on one etcd against one server: fan-out across servers,
    /// SIGKILL of one with its agents moving to another, revocation on one
    /// server seen on another, handshake rate; prints its section of the
    /// report.
    Cluster(cluster::Settings),
    /// Only the rollout scenario (CURVE): a rollout over simulated agents
    /// with a failure budget, stopping after the batch that crossed it, the
    /// server's dispatch gap between batches, `job cancel` of a job running
    /// on every agent; prints its section of the report.
    Rollout(rollout::Settings),
    /// Only the facts scenario (CURVE): `-F` resolved by the server over
    /// 100,000 registry entries with facts loaded from its database, and
    /// server RSS per agent with 4 KiB of facts each at 1,000 simulated
    /// agents against the same without; prints its section of the report.
    Facts(facts::Settings),
    /// Only the signing scenario (CURVE): signing cost per request in
    /// `pantry-admin`, verification cost per request on the agent (µs), the
    /// bytes a signature adds, and the fan-out echo at 1,000 simulated
    /// agents with signatures on and off; prints its section of the report.
    Signing(signing::Settings),
    /// Only the scale scenario (CURVE, issue 27): 1,000, 4,000 and 9,000
    /// simulated agents with one connection each, in child processes,
    /// against the relay and Pantry: server memory and descriptors per
    /// agent, fan-out to all and server CPU per answer, a server restart
    /// with the agents coming back within their reconnect spread; prints
    /// its section of the report.
    Scale(scale::Settings),
}

fn main() {
    if let Err(e) = run(Cli::parse()) {
        eprintln!("pantry-bench: {e:#}");
        std::process::exit(1);
    }
}

fn run(cli: Cli) -> Result<()> {
    let exe = std::env::current_exe().context("cannot find this executable")?;
    let dir = exe.parent().context("executable directory")?.to_path_buf();
    let bins = Binaries {
        server: cli.server.unwrap_or_else(|| dir.join("pantry-server")),
        client: cli.client.unwrap_or_else(|| dir.join("pantry-client")),
        admin: cli.admin.unwrap_or_else(|| dir.join("pantry-admin")),
        bench: exe,
    };
    let only = match cli.command {
        Some(Cmd::Relay { receive_port }) => {
            let secret = pantry_bench::common::procs::read_relay_secret()?;
            return pantry_bench::common::relay::run(receive_port, secret);
        }
        Some(Cmd::Agents) => return pantry_bench::common::agents::children::run(),
        Some(Cmd::Profile(settings)) => return pantry_bench::profile::run(&bins, &settings),
        Some(Cmd::Only(only)) => Some(only),
        None => None,
    };
    for bin in [&bins.server, &bins.client, &bins.admin] {
        anyhow::ensure!(bin.exists(), "{} not found: build it first (`make bench` does)", bin.display());
    }
    let out = cli.out.clone();
    let mut config = if cli.smoke {
        Config::smoke(bins, cli.out)
    } else {
        Config {
            measure: cli.measure,
            fanout_throughput: cli.fanout_throughput.clone(),
            handshake: cli.handshake,
            ..Config::full(bins, cli.out)
        }
    };
    config.log_level = cli.log_level;
    config.fanout_throughput.curve_only |= cli.fanout_throughput.curve_only;
    let Some(only) = only else {
        driver::run(&config)?;
        print!("{}", std::fs::read_to_string(out.join(MARKDOWN)).context("the report just written")?);
        return Ok(());
    };
    let previous = PreviousRun::load(&out);
    let section = match only {
        Only::Enrollment(s) => {
            let f = driver::run_alone(&config, 0, |env, ring| enrollment::run(env, ring, &s))?;
            enrollment::report(&f, previous.of(|r| r.enrollment.as_ref()))
        }
        Only::Presence(s) => {
            let f = driver::run_alone(&config, 0, |env, ring| presence::run(env, ring, &s))?;
            presence::report(&f, previous.of(|r| r.presence.as_ref()))
        }
        Only::Jobs(s) => {
            let f = driver::run_alone(&config, s.max_agents(), |env, ring| jobs::run(env, ring, &s))?;
            jobs::report(&f, previous.of(|r| r.jobs.as_ref()))
        }
        Only::Metrics(s) => {
            let f = driver::run_alone(&config, s.max_agents(), |env, ring| metrics::run(env, ring, &s))?;
            metrics::report(&f, previous.of(|r| r.metrics.as_ref()))
        }
        Only::Cluster(s) => {
            let f = driver::run_alone(&config, s.max_agents(), |env, ring| cluster::run(env, ring, &s))?;
            cluster::report(&f, previous.of(|r| r.cluster.as_ref()))
        }
        Only::Rollout(s) => {
            let f = driver::run_alone(&config, s.max_agents(), |env, ring| rollout::run(env, ring, &s))?;
            rollout::report(&f, previous.of(|r| r.rollout.as_ref()))
        }
        Only::Facts(s) => {
            let f = driver::run_alone(&config, s.max_agents(), |env, ring| facts::run(env, ring, &s))?;
            facts::report(&f, previous.of(|r| r.facts.as_ref()))
        }
        Only::Scale(s) => {
            let f = driver::run_alone(&config, 0, |env, ring| scale::run(env, ring, &s))?;
            scale::report(&f, previous.of(|r| r.scale.as_ref()))
        }
        Only::Signing(s) => {
            let f = driver::run_alone(&config, s.max_agents(), |env, ring| signing::run(env, ring, &s))?;
            signing::report(&f, previous.of(|r| r.signing.as_ref()))
        }
    };
    print!("{section}");
    Ok(())
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory as _;

    #[test]
    fn the_command_line_is_consistent() {
        super::Cli::command().debug_assert();
    }
}
