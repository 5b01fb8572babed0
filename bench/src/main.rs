//! `pantry-bench`: runs the benchmark (`make bench`), one scenario of it
//! (`pantry-bench enrollment`, `presence`, `jobs`, `metrics`, `cluster`,
//! `profile`),
//! or the baseline relay the benchmark starts as a child process
//! (`pantry-bench relay`).

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
    /// Only the presence scenario (CURVE): killed agents named offline at
    /// once, SIGKILL of a real pantry-client → offline, a server restart
    /// with agents coming back; prints its section of the report, compared
    /// with the committed latest.md in --out (left alone).
    Presence {
        /// Agents the admin echoes to, of which --killed are killed first.
        #[arg(long, default_value_t = 100)]
        agents: usize,
        #[arg(long, default_value_t = 10)]
        killed: usize,
        /// Seconds between the kill and the echoes.
        #[arg(long, default_value_t = 5.0)]
        kill_wait: f64,
        /// Echoes, and SIGKILL runs with the real pantry-client.
        #[arg(long, default_value_t = 5)]
        repeats: usize,
        /// Agents across the server restart.
        #[arg(long, default_value_t = 1000)]
        restart_agents: usize,
        /// The agents' heartbeat, seconds.
        #[arg(long, default_value_t = 5)]
        heartbeat: u64,
    },
    /// Only the job-store scenario (CURVE): fan-out and throughput with the
    /// store on and off, `jobs` over a filled store, database size per job;
    /// prints its section of the report (latest.md is left alone).
    Jobs {
        /// N at which the store on and off are compared.
        #[arg(long, value_delimiter = ',', default_value = "1,1000")]
        sizes: Vec<usize>,
        /// Jobs put in the store before `jobs` is timed.
        #[arg(long, default_value_t = 100_000)]
        fill: u64,
        /// Agents and echoes of the database-size measurement.
        #[arg(long, default_value_t = 1000)]
        db_agents: usize,
        #[arg(long, default_value_t = 20)]
        db_echoes: usize,
        /// Rounds of the on/off comparison.
        #[arg(long, default_value_t = 3)]
        rounds: usize,
    },
    /// Only the metrics scenario (CURVE): fan-out and throughput with the
    /// Prometheus endpoint on and off, `GET /metrics` with many agents
    /// connected; prints its section of the report and its targets
    /// (latest.md is left alone).
    Metrics {
        /// N at which metrics on and off are compared.
        #[arg(long, value_delimiter = ',', default_value = "1,1000")]
        sizes: Vec<usize>,
        /// Agents connected while `/metrics` is timed.
        #[arg(long, default_value_t = 4000)]
        agents: usize,
        /// Scrapes timed.
        #[arg(long, default_value_t = 20)]
        scrapes: usize,
        /// Seconds between the scrapes of the server with metrics on
        /// during the comparison.
        #[arg(long, default_value_t = 1.0)]
        scrape_every: f64,
        /// Rounds of the on/off comparison.
        #[arg(long, default_value_t = 3)]
        rounds: usize,
    },
    /// Only the cluster scenario (CURVE, needs etcd): three servers with
    /// `cluster:` on one etcd against one server: fan-out across servers,
    /// SIGKILL of one with its agents moving to another, revocation on one
    /// server seen on another, handshake rate; prints its section of the
    /// report and its targets (latest.md is left alone).
    Cluster {
        /// Agents per server in the fan-out and the failover (the single
        /// server gets three times as many).
        #[arg(long, default_value_t = 1000)]
        agents: usize,
        /// Revocations timed.
        #[arg(long, default_value_t = 20)]
        revocations: usize,
        /// The failing-over agents' heartbeat, seconds.
        #[arg(long, default_value_t = 5)]
        heartbeat: u64,
        /// `cluster.lease` of the servers, seconds (at least 2).
        #[arg(long, default_value_t = 2)]
        lease: u64,
        /// Fan-out echoes per round.
        #[arg(long, default_value_t = 20)]
        fanouts: usize,
        /// Rounds of the fan-out and handshake comparisons.
        #[arg(long, default_value_t = 3)]
        rounds: usize,
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
        /// YAML appended to the server's server.yml, e.g.
        /// `"jobs:\n  enabled: false\n"`.
        #[arg(long, value_name = "YAML", default_value = "")]
        server_config: String,
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
    if let Some(Cmd::Profile { scenario, agents, known_keys, seconds, perf, perf_args, baseline, server_config }) =
        cli.command
    {
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
            server_config,
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
    if let Some(Cmd::Presence { agents, killed, kill_wait, repeats, restart_agents, heartbeat }) = cli.command {
        let mut config = pantry_bench::Config::full(server, client, exe, cli.out);
        config.admin_bin = admin;
        config.log_level = cli.log_level;
        let defaults = config.presence.context("presence settings")?;
        let settings = pantry_bench::presence::PresenceSettings {
            agents: agents.max(killed),
            killed,
            kill_wait: std::time::Duration::from_secs_f64(kill_wait.clamp(0.0, 600.0)),
            echoes: repeats,
            kill_repeats: repeats,
            restart_agents,
            heartbeat: std::time::Duration::from_secs(heartbeat.clamp(1, 3600)),
            ..defaults
        };
        let (result, previous) = pantry_bench::harness::run_presence_only(&config, settings)?;
        print!("{}", pantry_bench::report::presence_section(&result, &[], previous.as_ref(), None));
        return Ok(());
    }
    if let Some(Cmd::Jobs { sizes, fill, db_agents, db_echoes, rounds }) = cli.command {
        let mut config = pantry_bench::Config::full(server, client, exe, cli.out);
        config.admin_bin = admin;
        config.log_level = cli.log_level;
        config.rounds = rounds.max(1);
        let settings = pantry_bench::jobs::JobsSettings {
            sizes,
            fill,
            db_agents,
            db_echoes,
            ..config.jobs.clone().context("job-store settings")?
        };
        let result = pantry_bench::harness::run_jobs_only(&config, &settings)?;
        print!("{}", pantry_bench::report::jobs_section(&result, &config));
        return Ok(());
    }
    if let Some(Cmd::Metrics { sizes, agents, scrapes, scrape_every, rounds }) = cli.command {
        let mut config = pantry_bench::Config::full(server, client, exe, cli.out);
        config.admin_bin = admin;
        config.log_level = cli.log_level;
        config.rounds = rounds.max(1);
        let settings = pantry_bench::metrics::MetricsSettings {
            sizes,
            scrape_agents: agents,
            scrapes,
            scrape_every: std::time::Duration::from_secs_f64(scrape_every.clamp(0.05, 3600.0)),
        };
        config.metrics = Some(settings.clone());
        let result = pantry_bench::harness::run_metrics_only(&config, &settings)?;
        print!("{}", pantry_bench::report::metrics_section(&result, &config));
        let mut targets = format!("\n{}", pantry_bench::report::TARGETS_HEADER);
        pantry_bench::report::metrics_targets(&result, &mut targets);
        print!("{targets}");
        return Ok(());
    }
    if let Some(Cmd::Cluster { agents, revocations, heartbeat, lease, fanouts, rounds }) = cli.command {
        let mut config = pantry_bench::Config::full(server, client, exe, cli.out);
        config.admin_bin = admin;
        config.log_level = cli.log_level;
        config.rounds = rounds.max(1);
        config.fanout_requests = fanouts.max(1);
        let settings = pantry_bench::cluster::ClusterSettings {
            agents_per_server: agents,
            failover_agents_per_server: agents,
            heartbeat: std::time::Duration::from_secs(heartbeat.clamp(1, 3600)),
            lease: std::time::Duration::from_secs(lease.clamp(2, 3600)),
            revocations,
            ..config.cluster.context("cluster settings")?
        };
        config.cluster = Some(settings);
        let result = pantry_bench::harness::run_cluster_only(&config, &settings)?;
        print!("{}", pantry_bench::report::cluster_section(&result, &config));
        let mut targets = format!("\n{}", pantry_bench::report::TARGETS_HEADER);
        pantry_bench::report::cluster_targets(&result, &mut targets);
        print!("{targets}");
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
