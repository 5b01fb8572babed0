//! `pantry-bench`: runs the benchmark (`make bench`), or the baseline relay
//! the benchmark starts as a child process (`pantry-bench relay`).

use std::path::PathBuf;

use anyhow::{Context as _, Result};
use clap::{Parser, Subcommand};

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
    /// Where latest.md and fanout.svg are written.
    #[arg(long, value_name = "DIR", default_value = "bench/results")]
    out: PathBuf,
    /// Agent counts.
    #[arg(long, value_delimiter = ',', default_value = "1,100,1000,4000")]
    sizes: Vec<usize>,
    /// Pantry/baseline alternations per scenario.
    #[arg(long, default_value_t = 3)]
    rounds: usize,
    /// The N = 2, one-iteration run of the unit test.
    #[arg(long)]
    smoke: bool,
    /// Only CURVE (skip the null-security pass).
    #[arg(long)]
    curve_only: bool,
    /// pantry-server log level (info is the production default).
    #[arg(long, default_value = "info")]
    log_level: String,
}

#[derive(Subcommand, Debug)]
enum Cmd {
    /// The baseline relay (started by the benchmark; reads its CURVE secret
    /// key, or an empty line, on stdin and exits when stdin closes).
    #[command(hide = true)]
    Relay {
        #[arg(long)]
        pub_port: u16,
        #[arg(long)]
        receive_port: u16,
    },
    /// Only the enrollment scenario (CURVE): agents enrolling with one token,
    /// then `client:token` → echo with the real binaries; prints its
    /// section of the report (latest.md is left alone).
    Enrollment {
        /// Agents enrolling with one token of as many uses.
        #[arg(long, default_value_t = 1000)]
        agents: usize,
        /// `client:token` → echo runs with the real binaries.
        #[arg(long, default_value_t = 5)]
        repeats: usize,
        /// Longest the agents may take in all, seconds.
        #[arg(long, default_value_t = 120.0)]
        timeout: f64,
    },
    /// One scenario against a CURVE pantry-server for a while, optionally
    /// under `perf record`; prints the server CPU time per operation.
    Profile {
        /// throughput, fanout or handshake.
        #[arg(long, default_value = "throughput")]
        scenario: pantry_bench::profile::Scenario,
        #[arg(long, default_value_t = 100)]
        agents: usize,
        /// Keys in the server's key store (filled up with random keys).
        #[arg(long, default_value_t = 100)]
        known_keys: usize,
        #[arg(long, default_value_t = 10.0)]
        seconds: f64,
        /// Record the server with `perf record` into this file.
        #[arg(long, value_name = "FILE")]
        perf: Option<PathBuf>,
        /// Extra arguments for `perf record`, e.g. `--call-graph=dwarf`.
        #[arg(long, allow_hyphen_values = true)]
        perf_args: Vec<String>,
        /// Run against the baseline relay instead of pantry-server.
        #[arg(long)]
        baseline: bool,
    },
}

fn main() {
    if let Err(e) = run(Cli::parse()) {
        eprintln!("pantry-bench: {e:#}");
        std::process::exit(1);
    }
}

fn run(cli: Cli) -> Result<()> {
    if let Some(Cmd::Relay { pub_port, receive_port }) = cli.command {
        let secret = pantry_bench::procs::read_relay_secret()?;
        return pantry_bench::relay::run(pub_port, receive_port, secret);
    }
    let exe = std::env::current_exe().context("cannot find this executable")?;
    let dir = exe.parent().context("executable directory")?.to_path_buf();
    let server = cli.server.unwrap_or_else(|| dir.join("pantry-server"));
    let client = cli.client.unwrap_or_else(|| dir.join("pantry-client"));
    let admin = cli.admin.unwrap_or_else(|| dir.join("pantry-admin"));
    if let Some(Cmd::Profile { scenario, agents, known_keys, seconds, perf, perf_args, baseline }) = cli.command {
        return pantry_bench::profile::run(&pantry_bench::profile::ProfileConfig {
            server_bin: server,
            relay_exe: exe,
            kind: if baseline { pantry_bench::agents::Kind::Baseline } else { pantry_bench::agents::Kind::Pantry },
            scenario,
            agents: agents.max(1),
            known_keys,
            duration: std::time::Duration::from_secs_f64(seconds.clamp(0.1, 600.0)),
            perf_out: perf,
            perf_args,
        });
    }
    for bin in [&server, &client, &admin] {
        anyhow::ensure!(bin.exists(), "{} not found: build it first (`make bench` does)", bin.display());
    }
    if let Some(Cmd::Enrollment { agents, repeats, timeout }) = cli.command {
        let mut config = pantry_bench::Config::full(server, client, exe, cli.out);
        config.admin_bin = admin;
        config.log_level = cli.log_level;
        let settings = pantry_bench::enrollment::EnrollmentSettings {
            agents,
            repeats,
            crowd_timeout: std::time::Duration::from_secs_f64(timeout.clamp(1.0, 3600.0)),
        };
        let result = pantry_bench::harness::run_enrollment_only(&config, settings)?;
        print!("{}", pantry_bench::report::enrollment_section(&result));
        return Ok(());
    }
    let mut config = if cli.smoke {
        pantry_bench::Config::smoke(server, client, exe, cli.out)
    } else {
        let mut c = pantry_bench::Config::full(server, client, exe, cli.out);
        c.sizes = cli.sizes;
        c.rounds = cli.rounds.max(1);
        c
    };
    config.log_level = cli.log_level;
    config.admin_bin = admin;
    if cli.curve_only {
        config.curve_modes = vec![true];
    }
    let results = pantry_bench::run(&config)?;
    print!("{}", pantry_bench::report::markdown(&results));
    Ok(())
}
