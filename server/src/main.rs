//! `pantry-server`: the hub. This binary parses the command line, sets up
//! logging and signals, and runs [`pantry_server::run`]; `check-config` and
//! `keys:create-admin` work on the files without starting a server.

use std::path::{Path, PathBuf};

use anyhow::{Context as _, Result};
use clap::Parser;
use pantry_server::key_file::ServerKeyStore;
use pantry_server::Control;
use pantry_shared::config::{Config, Program};
use pantry_shared::logging::Logging;
use pantry_shared::program::Invocation;
use slog::{info, warn};

/// Every message costs the server a few allocations on three threads;
/// mimalloc's per-thread heaps make them cheaper than glibc's arenas
/// (measured in `make bench`).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// The Pantry server: the hub every agent and admin connects to.
#[derive(Parser, Debug)]
#[command(name = "pantry-server", version = pantry_shared::VERSION)]
struct Cli {
    /// Configuration file (server.yml). Without it, built-in defaults.
    #[arg(short = 'c', long = "config", value_name = "FILE", global = true)]
    config: Option<PathBuf>,
    /// Log at info level at least.
    #[arg(short = 'v', long = "verbose", conflicts_with = "debug")]
    verbose: bool,
    /// Log at debug level (every message and handshake).
    #[arg(short = 'd', long = "debug")]
    debug: bool,
    #[command(subcommand)]
    command: Option<ServerCommand>,
}

/// Without a command, the server runs.
#[derive(clap::Subcommand, Debug)]
enum ServerCommand {
    /// Check the config and the key store (paths, permissions, keys, CURVE)
    /// without starting or changing anything; exit 1 with a list of problems.
    #[command(name = "check-config")]
    CheckConfig,
    /// Write a new admin key into the key store (CURVE), whether the server
    /// is stopped or running (it picks the key up without a restart), and
    /// print its credentials for the admin's `.pantry/` keys file.
    #[command(name = "keys:create-admin")]
    KeysCreateAdmin {
        /// The admin's name.
        #[arg(long, value_name = "NAME")]
        name: String,
        /// Write the credentials to FILE (mode 0600) instead of printing them.
        #[arg(long, value_name = "FILE")]
        output: Option<PathBuf>,
    },
    /// Copy the client keys and enrollment tokens of this server's
    /// server_keys.yml into the cluster's etcd (`cluster:` in the config);
    /// keys or names etcd already has are left as they are.
    #[command(name = "keys:import")]
    KeysImport,
}

fn main() {
    pantry_shared::docs::generate_if_requested(<Cli as clap::CommandFactory>::command);
    let cli = Cli::parse();
    if let Err(e) = run(cli) {
        eprintln!("pantry-server: {e:#}");
        std::process::exit(1);
    }
}

fn run(cli: Cli) -> Result<()> {
    let invocation =
        Invocation { program: Program::Server, config: cli.config, verbose: cli.verbose, debug: cli.debug };
    if let Some(ServerCommand::CheckConfig) = &cli.command {
        invocation.check_config(pantry_server::key_file::check);
    }
    let config = invocation.load_config()?;
    if let Some(ServerCommand::KeysCreateAdmin { name, output }) = &cli.command {
        return create_admin_key(&config, name, output.as_deref());
    }
    if let Some(ServerCommand::KeysImport) = &cli.command {
        return import_keys(&config);
    }
    let logging = invocation.start_logging(&config)?;
    let log = logging.logger.clone();
    pantry_server::run(&config, log, |control| handle_signals(logging, invocation, control))
}

/// `keys:create-admin`: adds an admin key to the store on disk.
fn create_admin_key(config: &Config, name: &str, output: Option<&Path>) -> Result<()> {
    use pantry_shared::keys::{client_keys_yaml, decode_z85, ClientKeysFile, KeyPair, Role};
    if !config.networking.is_curve() {
        anyhow::bail!("keys:create-admin needs networking.security: curve in the config (null security has no keys)");
    }
    if let Some(path) = output.filter(|p| p.exists()) {
        anyhow::bail!("{} already exists; not overwriting a key file", path.display());
    }
    let pair = KeyPair::generate()?;
    let key = decode_z85(&pair.public_key).context("generated key")?;
    // In a cluster the key goes to etcd, where every server sees it.
    let (store, place) = match &config.cluster {
        Some(section) => {
            let (store, mut cluster) = pantry_server::cluster::open_keys(config, section)?;
            cluster.add(&key, Some(name), Role::Admin)?;
            let place = cluster.etcd().describe();
            (store, place)
        }
        None => {
            let mut store = ServerKeyStore::open(config.root_dir())?;
            store.add(&key, Some(name), Role::Admin)?;
            let place = store.path().display().to_string();
            (store, place)
        }
    };
    // Its signing key: the server keeps the public half; agents trust it
    // once an admin they trust signs it in (`pantry-admin client:trust`).
    let signing = pantry_shared::signing::SigningPair::generate().context("cannot make a signing key")?;
    let curve_dir = pantry_shared::keys::curve_dir(config.root_dir());
    pantry_server::trust::TrustStore::open(&curve_dir)?.register(name, &signing.public)?;
    let yaml = client_keys_yaml(&ClientKeysFile {
        server_public_key: Some(store.keys.public_key.clone()),
        public_key: Some(pair.public_key),
        private_key: Some(pair.private_key),
        name: Some(name.to_owned()),
        signing_public_key: Some(signing.public),
        signing_private_key: Some(signing.private),
        trusted_admins: None,
    });
    match output {
        Some(path) => {
            pantry_shared::keys::write_atomically(path, yaml.as_bytes())?;
            eprintln!("admin key `{name}` added to {place}; credentials written to {}", path.display());
            eprintln!(
                "agents do not trust its signature until an admin they trust runs `pantry-admin client:trust {name}`"
            );
        }
        None => {
            eprintln!("admin key `{name}` added to {place}");
            eprintln!(
                "agents do not trust its signature until an admin they trust runs `pantry-admin client:trust {name}`"
            );
            print!("{yaml}");
        }
    }
    Ok(())
}

/// `keys:import`: this server's file-kept keys and tokens into etcd.
fn import_keys(config: &Config) -> Result<()> {
    let Some(section) = &config.cluster else {
        anyhow::bail!("keys:import needs a `cluster:` section in the config (the etcd to import into)");
    };
    if !config.networking.is_curve() {
        anyhow::bail!("keys:import needs networking.security: curve in the config (null security has no keys)");
    }
    let (store, mut cluster) = pantry_server::cluster::open_keys(config, section)?;
    let (imported, skipped) = cluster.import(store.entries(), store.tokens())?;
    eprintln!(
        "imported {imported} keys and {} tokens from {} into {} ({skipped} keys already there)",
        store.tokens().len(),
        store.path().display(),
        cluster.etcd().describe()
    );
    Ok(())
}

/// Serves until SIGINT or SIGTERM. SIGHUP reopens the log file (logrotate),
/// re-reads `log_level` from the config and re-reads the key store, without
/// dropping a client.
async fn handle_signals(logging: Logging, invocation: Invocation, control: Control) {
    use tokio::signal::unix::{signal, SignalKind};
    let log = logging.logger.clone();
    let (Ok(mut int), Ok(mut term), Ok(mut hup)) =
        (signal(SignalKind::interrupt()), signal(SignalKind::terminate()), signal(SignalKind::hangup()))
    else {
        warn!(log, "cannot install signal handlers; stop the server with SIGKILL");
        return std::future::pending().await;
    };
    let name = loop {
        tokio::select! {
            _ = int.recv() => break "SIGINT",
            _ = term.recv() => break "SIGTERM",
            _ = hup.recv() => reload(&logging, &invocation, &control),
        }
    };
    info!(log, "shutting down"; "signal" => name);
}

/// SIGHUP: what can change without a restart.
fn reload(logging: &Logging, invocation: &Invocation, control: &Control) {
    invocation.reload(logging);
    control.reload();
    info!(logging.logger, "reloaded on SIGHUP (log file, log level, key store, audit log)");
}
