//! `pantry-server`: the hub. It authenticates clients, keeps the registry of
//! who is checked in, runs server commands and routes every other command to
//! the matching clients.
//!
//! Actors (one per file): [`socket_listener`] owns the ZeroMQ sockets on
//! their own thread; [`zap_handler`] decides who may connect (CURVE);
//! [`command_dispatcher`] handles every message; [`client_registry`] knows
//! who is checked in.

mod client_registry;
mod command_dispatcher;
mod connections;
mod file_service;
mod socket_listener;
mod zap_handler;

use std::path::PathBuf;
use std::sync::Arc;

use actix::prelude::*;
use anyhow::{Context as _, Result};
use clap::Parser;
use pantry_shared::config::{Config, Program};
use pantry_shared::keys::ServerKeyStore;
use pantry_shared::logging::{self, LogTarget, Logging};
use pantry_shared::security::SocketSecurity;
use slog::{error, info, warn, Level};

use client_registry::ClientRegistry;
use command_dispatcher::CommandDispatcher;
use file_service::FileService;
use socket_listener::{BoundSockets, Endpoints, Shutdown, SocketListener};
use zap_handler::{ReloadKeys, ZapHandler};

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
    if let Some(ServerCommand::CheckConfig) = &cli.command {
        check_config(cli.config.as_deref(), Program::Server);
    }
    let config = match &cli.config {
        Some(path) => Config::load(path, Program::Server)?,
        None => Config::defaults(Program::Server),
    };
    if let Some(ServerCommand::KeysCreateAdmin { name, output }) = &cli.command {
        return create_admin_key(&config, name, output.as_deref());
    }
    let level = log_level(&config, &cli);
    let logging = logging::init(&LogTarget::from_config(&config.log_to, &config.syslog_program_name), level)
        .with_context(|| format!("cannot open log {}", config.log_to))?;
    let log = logging.logger.clone();

    let root_dir = config.root_dir().to_path_buf();
    std::fs::create_dir_all(&root_dir).with_context(|| format!("cannot create root_dir {}", root_dir.display()))?;

    let (security, store) = if config.networking.is_curve() {
        let store = ServerKeyStore::open(&root_dir)?;
        info!(log, "server public key (give it to clients as server_public_key)";
            "public_key" => &store.keys.public_key, "file" => %store.path().display(),
            "known_clients" => store.known_count());
        (SocketSecurity::server(&store), Some(store))
    } else {
        warn!(
            log,
            "security is null: traffic is neither encrypted nor authenticated, and anyone who can reach \
             the server's ports can run commands on its clients; set networking.security: curve or put the \
             ports behind an encrypted tunnel"
        );
        (SocketSecurity::Null, None)
    };
    let net = &config.networking;
    let endpoints = Endpoints {
        publish: net.endpoint(net.pub_sub_port),
        receive: net.endpoint(net.receive_port),
        file_service: net.endpoint(net.file_service_port),
    };

    pantry_shared::security::set_max_message_size(net.max_message_size);
    let ctx = zmq::Context::new();
    let sockets = BoundSockets::bind(&ctx, &security, &endpoints)?;
    info!(log, "pantry-server started";
        "version" => pantry_shared::VERSION, "publish" => &endpoints.publish, "receive" => &endpoints.receive, "file_service" => &endpoints.file_service,
        "security" => net.security_name(), "root_dir" => %root_dir.display());

    let system = System::new();
    let trust_first_client = net.trust_first_client;
    let started =
        system.block_on(async { start_actors(sockets, store, trust_first_client, root_dir.clone(), &logging) });
    let (listener, zap) = started?;
    // The sockets are bound and served: tell systemd (Type=notify).
    if let Err(e) = pantry_shared::systemd::notify("READY=1") {
        warn!(log, "cannot notify systemd of readiness"; "error" => %e);
    }
    let logging = std::sync::Arc::new(logging);
    system.block_on(async { handle_signals(listener, zap, logging.clone(), cli).await });
    system.run()?;
    drop(ctx);
    Ok(())
}

/// `check-config`: prints the report and exits 0 (fine) or 1 (problems).
pub fn check_config(path: Option<&std::path::Path>, program: Program) -> ! {
    let Some(path) = path else {
        eprintln!("check-config needs -c FILE");
        std::process::exit(2);
    };
    let report = pantry_shared::check::check(path, program);
    print!("{}", report.render());
    if report.is_ok() {
        println!("{}: no problems", path.display());
        std::process::exit(0);
    }
    println!("{}: {} problem(s)", path.display(), report.problems.len());
    std::process::exit(1);
}

/// `keys:create-admin`: adds an admin key to the store on disk.
fn create_admin_key(config: &Config, name: &str, output: Option<&std::path::Path>) -> Result<()> {
    use pantry_shared::keys::{client_keys_yaml, decode_z85, ClientKeysFile, KeyPair, Role};
    if !config.networking.is_curve() {
        anyhow::bail!("keys:create-admin needs networking.security: curve in the config (null security has no keys)");
    }
    if let Some(path) = output.filter(|p| p.exists()) {
        anyhow::bail!("{} already exists; not overwriting a key file", path.display());
    }
    let mut store = ServerKeyStore::open(config.root_dir())?;
    let pair = KeyPair::generate()?;
    let key = decode_z85(&pair.public_key).context("generated key")?;
    let known = store.add(&key, name, Role::Admin)?;
    let yaml = client_keys_yaml(&ClientKeysFile {
        server_public_key: Some(store.keys.public_key.clone()),
        public_key: Some(pair.public_key),
        private_key: Some(pair.private_key),
    });
    match output {
        Some(path) => {
            pantry_shared::keys::write_atomically(path, yaml.as_bytes())?;
            eprintln!(
                "admin key `{}` added to {}; credentials written to {}",
                known.name,
                store.path().display(),
                path.display()
            );
        }
        None => {
            eprintln!("admin key `{}` added to {}", known.name, store.path().display());
            print!("{yaml}");
        }
    }
    Ok(())
}

/// Creates the actors. Listener and dispatcher know each other, so their
/// contexts are made first and their addresses handed around.
fn start_actors(
    sockets: BoundSockets,
    store: Option<ServerKeyStore>,
    trust_first_client: bool,
    root_dir: PathBuf,
    logging: &Logging,
) -> Result<(Addr<SocketListener>, Option<Addr<ZapHandler>>)> {
    let log = &logging.logger;
    let registry = ClientRegistry::default().start();
    let dispatcher_ctx = Context::<CommandDispatcher>::new();
    let files_ctx = Context::<FileService>::new();
    let zap_ctx = store.as_ref().map(|_| Context::<ZapHandler>::new());
    let zap_addr = zap_ctx.as_ref().map(Context::address);
    let listener = SocketListener::start(
        sockets,
        dispatcher_ctx.address().recipient(),
        dispatcher_ctx.address().recipient(),
        files_ctx.address().recipient(),
        zap_addr.clone().map(Addr::recipient),
        log.clone(),
    )?;
    if let (Some(zap_ctx), Some(store)) = (zap_ctx, store) {
        zap_ctx.run(ZapHandler::new(store, listener.clone(), trust_first_client, log.clone()));
    }
    files_ctx.run(FileService::new(listener.clone(), zap_addr.is_some(), log.clone()));
    dispatcher_ctx.run(CommandDispatcher::new(listener.clone(), registry, zap_addr.clone(), root_dir, log.clone()));
    Ok((listener, zap_addr))
}

/// The log level from the config, raised by `-v` or `-d`.
fn log_level(config: &Config, cli: &Cli) -> Level {
    logging::effective_level(config.log_level, cli.verbose, cli.debug)
}

/// Spawns the task that handles signals: SIGINT and SIGTERM shut down
/// cleanly; SIGHUP reopens the log file (logrotate), re-reads `log_level`
/// from the config and re-reads the key store, without dropping a client.
async fn handle_signals(
    listener: Addr<SocketListener>,
    zap: Option<Addr<ZapHandler>>,
    logging: Arc<Logging>,
    cli: Cli,
) {
    use tokio::signal::unix::{signal, SignalKind};
    let log = logging.logger.clone();
    let (Ok(mut int), Ok(mut term), Ok(mut hup)) =
        (signal(SignalKind::interrupt()), signal(SignalKind::terminate()), signal(SignalKind::hangup()))
    else {
        warn!(log, "cannot install signal handlers; stop the server with SIGKILL");
        return;
    };
    actix_rt::spawn(async move {
        let name = loop {
            tokio::select! {
                _ = int.recv() => break "SIGINT",
                _ = term.recv() => break "SIGTERM",
                _ = hup.recv() => reload(&logging, &cli, zap.as_ref()),
            }
        };
        info!(log, "shutting down"; "signal" => name);
        let _ = listener.send(Shutdown).await;
        System::current().stop();
    });
}

/// SIGHUP: what can change without a restart.
fn reload(logging: &Logging, cli: &Cli, zap: Option<&Addr<ZapHandler>>) {
    let log = &logging.logger;
    if let Err(e) = logging.reopen() {
        error!(log, "cannot reopen the log file"; "error" => %e);
    }
    if let Some(path) = &cli.config {
        match Config::load(path, Program::Server) {
            Ok(config) => logging.set_level(log_level(&config, cli)),
            Err(e) => error!(log, "config not reloaded; keeping the running settings"; "error" => %e),
        }
    }
    if let Some(zap) = zap {
        zap.do_send(ReloadKeys);
    }
    info!(log, "reloaded on SIGHUP (log file, log level, key store)");
}
