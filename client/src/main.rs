//! `pantry-client`: the agent on each managed machine. It connects to one
//! server (of `networking.server_host`'s list, failing over to the next),
//! registers itself at start and every `heartbeat_interval` seconds, and
//! runs the commands the server publishes to it.
//!
//! The loop is in `pantry_client::agent`; this file reads the command
//! line, the config and the keys.

use std::path::PathBuf;

use anyhow::{Context as _, Result};
use clap::Parser;
use pantry_shared::config::{Config, Program};
use pantry_shared::keys::{self, ClientKeys};
use pantry_shared::program::Invocation;
use pantry_shared::security::SocketSecurity;
use slog::info;

use pantry_client::agent::{Agent, Signals};
use pantry_client::enroll;

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
        /// networking.server_public_key in the config). It may begin with
        /// `-` (Z85).
        #[arg(long, value_name = "KEY", allow_hyphen_values = true)]
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
    let invocation =
        Invocation { program: Program::Client, config: cli.config, verbose: cli.verbose, debug: cli.debug };
    if let Some(ClientCommand::CheckConfig) = &cli.command {
        invocation.check_config(pantry_shared::check::client_keys);
    }
    let config = invocation.load_config()?;
    if let Some(ClientCommand::Enroll { token, server_public_key }) = &cli.command {
        return enroll::run(&config, token, server_public_key.as_deref());
    }
    let logging = invocation.start_logging(&config)?;
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
    agent.run(&signals, || {
        invocation.reload(&logging);
        info!(logging.logger, "reloaded on SIGHUP (log file, log level)");
    })
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

#[cfg(test)]
mod tests {
    use clap::Parser;

    #[test]
    fn cli_parses() {
        use clap::CommandFactory;
        super::Cli::command().debug_assert();
    }

    /// Z85 has `-` in its alphabet: about one key in 85 begins with it.
    #[test]
    fn a_server_key_that_begins_with_a_hyphen_is_a_value() {
        let key = "-0Z&k3Yx^ZyPBf]g=?[5b@Pm8$-RkBcMzFJe2EwEY";
        let cli = super::Cli::try_parse_from(["pantry-client", "enroll", "--server-public-key", key, "--token", "t"])
            .unwrap();
        match cli.command {
            Some(super::ClientCommand::Enroll { server_public_key, token }) => {
                assert_eq!((server_public_key.as_deref(), token.as_str()), (Some(key), "t"));
            }
            other => panic!("{other:?}"),
        }
    }
}
