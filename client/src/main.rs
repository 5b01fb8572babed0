//! `pantry-client`: the agent on each managed machine. It connects to one
//! server, registers itself at start and every `heartbeat_interval`
//! seconds, and runs the commands the server publishes to it.
//!
//! The loop is in [`agent`]; this file reads the config and the keys.

mod agent;
mod enroll;
mod handshake;

use std::path::PathBuf;

use anyhow::{Context as _, Result};
use clap::Parser;
use pantry_shared::config::{Config, Program};
use pantry_shared::keys::{self, ClientKeys};
use pantry_shared::logging::{self, LogTarget};
use pantry_shared::security::SocketSecurity;
use slog::{info, Level};

use agent::{Agent, Signals};

/// The Pantry agent: registers with the server and runs its commands.
#[derive(Parser, Debug)]
#[command(name = "pantry-client", version = pantry_shared::VERSION)]
struct Cli {
    /// Configuration file (client.yml). Without it, built-in defaults.
    #[arg(short = 'c', long = "config", value_name = "FILE", global = true)]
    config: Option<PathBuf>,
    /// Log at info level at least.
    #[arg(short = 'v', long = "verbose", conflicts_with = "debug")]
    verbose: bool,
    /// Log at debug level.
    #[arg(short = 'd', long = "debug")]
    debug: bool,
    #[command(subcommand)]
    command: Option<ClientCommand>,
}

/// Without a command, the agent runs.
#[derive(clap::Subcommand, Debug)]
enum ClientCommand {
    /// Check the config and the key store (paths, permissions, keys, CURVE)
    /// without starting or changing anything; exit 1 with a list of problems.
    #[command(name = "check-config")]
    CheckConfig,
    /// Enroll this agent with a token from `pantry-admin client:token`: make
    /// a key pair here, have the server store its public key, write
    /// client_keys.yml (0600). The private key never leaves this machine.
    Enroll {
        /// The token `pantry-admin client:token` printed.
        #[arg(long, value_name = "TOKEN")]
        token: String,
        /// The server's public key (default: client_keys.yml's, or
        /// networking.server_public_key in the config).
        #[arg(long, value_name = "KEY")]
        server_public_key: Option<String>,
    },
}

fn main() {
    pantry_shared::docs::generate_if_requested(<Cli as clap::CommandFactory>::command);
    let cli = Cli::parse();
    if let Err(e) = run(cli) {
        eprintln!("pantry-client: {e:#}");
        std::process::exit(1);
    }
}

fn run(cli: Cli) -> Result<()> {
    if let Some(ClientCommand::CheckConfig) = &cli.command {
        pantry_shared::check::exit_with_report(cli.config.as_deref(), Program::Client);
    }
    let config = match &cli.config {
        Some(path) => Config::load(path, Program::Client)?,
        None => Config::defaults(Program::Client),
    };
    if let Some(ClientCommand::Enroll { token, server_public_key }) = &cli.command {
        return enroll::run(&config, token, server_public_key.as_deref());
    }
    let level = log_level(&config, &cli);
    let logging = logging::init(&LogTarget::from_config(&config.log_to, &config.syslog_program_name), level)
        .with_context(|| format!("cannot open log {}", config.log_to))?;
    let root_dir = config.root_dir().to_path_buf();
    std::fs::create_dir_all(&root_dir).with_context(|| format!("cannot create root_dir {}", root_dir.display()))?;

    let (security, key_file) = if config.networking.is_curve() {
        let dir = keys::curve_dir(&root_dir);
        keys::ensure_private_dir(&dir)?;
        let path = dir.join(keys::CLIENT_KEYS_FILE);
        let keys = ClientKeys::load_agent(&path, config.networking.server_public_key.as_deref())?;
        (SocketSecurity::client(&keys)?, Some(keys))
    } else {
        (SocketSecurity::Null, None)
    };

    let me = identity(&config, key_file.as_ref())?;
    pantry_shared::security::set_max_message_size(config.networking.max_message_size);
    let signals = Signals::install()?;

    let agent = Agent::connect(&config, me, &security, key_file, logging.logger.clone())?;
    if let Err(e) = pantry_shared::systemd::notify("READY=1") {
        slog::warn!(logging.logger, "cannot notify systemd of readiness"; "error" => %e);
    }
    agent.run(&signals, || reload(&logging, &cli))
}

/// Who the agent is: `client.identity` from client.yml, else the name its
/// credentials were made for (`client_keys.yml`), else the host name. When
/// both files name it and disagree, the agent does not start.
fn identity(config: &Config, keys: Option<&ClientKeys>) -> Result<pantry_shared::filter::ClientFilter> {
    let mut me = config.client_filter();
    match (&config.client.identity, keys.and_then(|k| k.name.as_ref())) {
        (Some(configured), Some(named)) if configured != named => anyhow::bail!(
            "client.yml sets identity `{configured}` but {} is for `{named}`: make them the same",
            keys.map(|k| k.path.display().to_string()).unwrap_or_default()
        ),
        (None, Some(named)) => me.identity = Some(named.clone()),
        _ => {}
    }
    me.validate().map_err(anyhow::Error::msg)?;
    Ok(me)
}

/// The log level from the config, raised by `-v` or `-d`.
fn log_level(config: &Config, cli: &Cli) -> Level {
    logging::effective_level(config.log_level, cli.verbose, cli.debug)
}

/// SIGHUP: reopen the log file (logrotate) and re-read `log_level`.
fn reload(logging: &pantry_shared::logging::Logging, cli: &Cli) {
    let log = &logging.logger;
    if let Err(e) = logging.reopen() {
        slog::error!(log, "cannot reopen the log file"; "error" => %e);
    }
    if let Some(path) = &cli.config {
        match Config::load(path, Program::Client) {
            Ok(config) => logging.set_level(log_level(&config, cli)),
            Err(e) => slog::error!(log, "config not reloaded; keeping the running settings"; "error" => %e),
        }
    }
    info!(log, "reloaded on SIGHUP (log file, log level)");
}

#[cfg(test)]
mod tests {
    #[test]
    fn cli_parses() {
        use clap::CommandFactory;
        super::Cli::command().debug_assert();
    }
}
