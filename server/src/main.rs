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
mod file_service;
mod socket_listener;
mod zap_handler;

use std::path::PathBuf;

use actix::prelude::*;
use anyhow::{Context as _, Result};
use clap::Parser;
use pantry_shared::config::{Config, Program};
use pantry_shared::keys::ServerKeyStore;
use pantry_shared::logging::{self, LogTarget, Logging};
use pantry_shared::security::SocketSecurity;
use slog::{info, warn, Level};

use client_registry::ClientRegistry;
use command_dispatcher::CommandDispatcher;
use file_service::FileService;
use socket_listener::{BoundSockets, Endpoints, Shutdown, SocketListener};
use zap_handler::ZapHandler;

/// The Pantry server: the hub every agent and admin connects to.
#[derive(Parser, Debug)]
#[command(name = "pantry-server", version = pantry_shared::VERSION)]
struct Cli {
    /// Configuration file (server.yml). Without it, built-in defaults.
    #[arg(short = 'c', long = "config", value_name = "FILE")]
    config: Option<PathBuf>,
    /// Log at info level at least.
    #[arg(short = 'v', long = "verbose", conflicts_with = "debug")]
    verbose: bool,
    /// Log at debug level (every message and handshake).
    #[arg(short = 'd', long = "debug")]
    debug: bool,
}

fn main() {
    let cli = Cli::parse();
    if let Err(e) = run(cli) {
        eprintln!("pantry-server: {e:#}");
        std::process::exit(1);
    }
}

fn run(cli: Cli) -> Result<()> {
    let config = match &cli.config {
        Some(path) => Config::load(path, Program::Server)?,
        None => Config::defaults(Program::Server),
    };
    let mut level = config.log_level.to_slog();
    if cli.debug {
        level = Level::Debug;
    } else if cli.verbose && !level.is_at_least(Level::Info) {
        level = Level::Info;
    }
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

    let ctx = zmq::Context::new();
    let sockets = BoundSockets::bind(&ctx, &security, &endpoints)?;
    info!(log, "pantry-server started";
        "version" => pantry_shared::VERSION, "publish" => &endpoints.publish, "receive" => &endpoints.receive, "file_service" => &endpoints.file_service,
        "security" => net.security_name(), "root_dir" => %root_dir.display());

    let system = System::new();
    let started = system.block_on(async { start_actors(sockets, store, root_dir.clone(), &logging) });
    let listener = started?;
    system.block_on(async { wait_for_signal(listener, &logging).await });
    system.run()?;
    drop(ctx);
    Ok(())
}

/// Creates the actors. Listener and dispatcher know each other, so their
/// contexts are made first and their addresses handed around.
fn start_actors(
    sockets: BoundSockets,
    store: Option<ServerKeyStore>,
    root_dir: PathBuf,
    logging: &Logging,
) -> Result<Addr<SocketListener>> {
    let log = &logging.logger;
    let registry = ClientRegistry::default().start();
    let dispatcher_ctx = Context::<CommandDispatcher>::new();
    let files_ctx = Context::<FileService>::new();
    let zap_ctx = store.as_ref().map(|_| Context::<ZapHandler>::new());
    let zap_addr = zap_ctx.as_ref().map(Context::address);
    let listener = SocketListener::start(
        sockets,
        dispatcher_ctx.address().recipient(),
        files_ctx.address().recipient(),
        zap_addr.clone().map(Addr::recipient),
        log.clone(),
    )?;
    if let (Some(zap_ctx), Some(store)) = (zap_ctx, store) {
        zap_ctx.run(ZapHandler::new(store, listener.clone(), log.clone()));
    }
    files_ctx.run(FileService::new(listener.clone(), log.clone()));
    dispatcher_ctx.run(CommandDispatcher::new(listener.clone(), registry, zap_addr, root_dir, log.clone()));
    Ok(listener)
}

/// Spawns the task that shuts down cleanly on SIGINT or SIGTERM.
async fn wait_for_signal(listener: Addr<SocketListener>, logging: &Logging) {
    use tokio::signal::unix::{signal, SignalKind};
    let log = logging.logger.clone();
    let (Ok(mut int), Ok(mut term)) = (signal(SignalKind::interrupt()), signal(SignalKind::terminate())) else {
        warn!(log, "cannot install signal handlers; stop the server with SIGKILL");
        return;
    };
    actix_rt::spawn(async move {
        let name = tokio::select! {
            _ = int.recv() => "SIGINT",
            _ = term.recv() => "SIGTERM",
        };
        info!(log, "shutting down"; "signal" => name);
        let _ = listener.send(Shutdown).await;
        System::current().stop();
    });
}
