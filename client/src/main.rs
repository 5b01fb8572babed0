//! `pantry-client`: the agent on each managed machine. It connects to one
//! server, registers itself at start and every `heartbeat_interval`
//! seconds, and runs the commands the server publishes to it.
//!
//! One thread owns the SUB (requests from the server), the DEALER (our
//! registrations and answers), their monitors and signal pipes, and blocks
//! in `zmq::poll` until one of them is ready or the next heartbeat is due.

mod handshake;

use std::os::fd::AsRawFd;
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result};
use clap::Parser;
use pantry_shared::commands::{self, register_client, upload, ClientContext};
use pantry_shared::config::{Config, Program};
use pantry_shared::filter::BROADCAST_TOPIC;
use pantry_shared::keys::{self, ClientKeys};
use pantry_shared::logging::{self, LogTarget};
use pantry_shared::monitor::{self, SocketEvent};
use pantry_shared::security::SocketSecurity;
use pantry_shared::Message;
use slog::{debug, info, warn, Level, Logger};

use handshake::{Backoff, HandshakeWatch};

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
        let Some(path) = cli.config.as_deref() else {
            anyhow::bail!("check-config needs -c FILE");
        };
        let report = pantry_shared::check::check(path, Program::Client);
        print!("{}", report.render());
        if report.is_ok() {
            println!("{}: no problems", path.display());
            return Ok(());
        }
        println!("{}: {} problem(s)", path.display(), report.problems.len());
        std::process::exit(1);
    }
    let config = match &cli.config {
        Some(path) => Config::load(path, Program::Client)?,
        None => Config::defaults(Program::Client),
    };
    let level = log_level(&config, &cli);
    let logging = logging::init(&LogTarget::from_config(&config.log_to, &config.syslog_program_name), level)
        .with_context(|| format!("cannot open log {}", config.log_to))?;
    let root_dir = config.root_dir().to_path_buf();
    std::fs::create_dir_all(&root_dir).with_context(|| format!("cannot create root_dir {}", root_dir.display()))?;

    let (security, key_file) = if config.networking.is_curve() {
        let dir = keys::curve_dir(&root_dir);
        keys::ensure_private_dir(&dir)?;
        let keys = ClientKeys::load(&dir.join(keys::CLIENT_KEYS_FILE), true)?;
        (SocketSecurity::client(&keys)?, Some(keys))
    } else {
        (SocketSecurity::Null, None)
    };

    pantry_shared::security::set_max_message_size(config.networking.max_message_size);
    let signals = Signals::install()?;

    let agent = Agent::connect(&config, &security, key_file, logging.logger.clone())?;
    if let Err(e) = pantry_shared::systemd::notify("READY=1") {
        slog::warn!(logging.logger, "cannot notify systemd of readiness"; "error" => %e);
    }
    agent.run(&signals, || reload(&logging, &cli))
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

/// Signals arrive as bytes on pipes the main loop polls: one for stopping
/// (SIGINT, SIGTERM), one for reloading (SIGHUP).
struct Signals {
    stop: UnixStream,
    reload: UnixStream,
}

impl Signals {
    fn install() -> Result<Signals> {
        let (stop, stop_write) = UnixStream::pair()?;
        let (reload, reload_write) = UnixStream::pair()?;
        for sig in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
            signal_hook::low_level::pipe::register(sig, stop_write.try_clone()?)?;
        }
        signal_hook::low_level::pipe::register(signal_hook::consts::SIGHUP, reload_write)?;
        stop.set_nonblocking(true)?;
        reload.set_nonblocking(true)?;
        Ok(Signals { stop, reload })
    }

    /// Empties the reload pipe; true if a SIGHUP came.
    fn take_reload(&self) -> bool {
        use std::io::Read;
        let mut buf = [0u8; 64];
        let mut got = false;
        while let Ok(n) = (&self.reload).read(&mut buf) {
            if n == 0 {
                break;
            }
            got = true;
        }
        got
    }
}

struct Agent {
    me: ClientContext,
    heartbeat: Duration,
    sub: zmq::Socket,
    dealer: zmq::Socket,
    dealer_monitor: zmq::Socket,
    sub_monitor: zmq::Socket,
    /// Whether the SUB connection is up, so our subscriptions reached the
    /// server's PUB: registering before that would let the server publish
    /// to us before we listen (the slow-joiner problem).
    listening: bool,
    publish: String,
    receive: String,
    watch: HandshakeWatch,
    backoff: Backoff,
    /// Set while disconnected after a failed handshake: when to try again.
    reconnect_at: Option<Instant>,
    log: Logger,
    /// Answers from commands run on worker threads.
    results: zmq::Socket,
    ctx: zmq::Context,
}

const RESULTS_ENDPOINT: &str = "inproc://pantry-agent-results";

impl Agent {
    fn connect(config: &Config, security: &SocketSecurity, keys: Option<ClientKeys>, log: Logger) -> Result<Agent> {
        let net = &config.networking;
        let ctx = zmq::Context::new();
        let file_service = upload::FileService {
            ctx: ctx.clone(),
            security: security.clone(),
            endpoint: net.endpoint(net.file_service_port),
        };
        let me = ClientContext {
            filter: config.client_filter(),
            allow_exec: config.client.allow_exec,
            file_service: Some(file_service),
        };

        let sub = security.socket(&ctx, zmq::SUB)?;
        for stream in me.filter.streams().iter().map(String::as_str).chain([BROADCAST_TOPIC]) {
            sub.set_subscribe(stream.as_bytes())?;
        }
        let dealer = security.socket(&ctx, zmq::DEALER)?;
        for socket in [&sub, &dealer] {
            // Back off up to 10 s between reconnects to a server that is down.

            socket.set_reconnect_ivl(100)?;
            socket.set_reconnect_ivl_max(10_000)?;
        }
        let dealer_monitor = monitor::monitor(&ctx, &dealer, monitor::CLIENT_EVENTS)?;
        let sub_monitor = monitor::monitor(&ctx, &sub, monitor::CLIENT_EVENTS)?;
        let results = ctx.socket(zmq::PULL)?;
        results.set_linger(0)?;
        results.bind(RESULTS_ENDPOINT)?;
        let (receive, publish) = (net.endpoint(net.receive_port), net.endpoint(net.pub_sub_port));
        sub.connect(&publish).with_context(|| format!("cannot connect to {publish}"))?;
        dealer.connect(&receive).with_context(|| format!("cannot connect to {receive}"))?;
        info!(log, "pantry-client started";
            "version" => pantry_shared::VERSION, "identity" => me.identity(), "server" => &receive,
            "subscriptions" => me.filter.streams().join(" "), "security" => net.security_name());
        let watch = HandshakeWatch::new(receive.clone(), keys, log.clone());
        Ok(Agent {
            me,
            heartbeat: Duration::from_secs(config.client.heartbeat_interval),
            sub,
            dealer,
            dealer_monitor,
            sub_monitor,
            listening: false,
            publish,
            receive,
            watch,
            backoff: Backoff::new(),
            reconnect_at: None,
            log,
            results,
            ctx,
        })
    }

    fn run(mut self, signals: &Signals, reload: impl Fn()) -> Result<()> {
        // The first registration waits for the SUB connection (or, failing
        // that, the first heartbeat).
        let mut next_heartbeat = Instant::now() + self.heartbeat;
        loop {
            let wake = self.reconnect_at.map_or(next_heartbeat, |at| at.min(next_heartbeat));
            let wait = wake.saturating_duration_since(Instant::now());
            let mut items = [
                self.sub.as_poll_item(zmq::POLLIN),
                self.dealer.as_poll_item(zmq::POLLIN),
                self.dealer_monitor.as_poll_item(zmq::POLLIN),
                zmq::PollItem::from_fd(signals.stop.as_raw_fd(), zmq::POLLIN),
                self.sub_monitor.as_poll_item(zmq::POLLIN),
                self.results.as_poll_item(zmq::POLLIN),
                zmq::PollItem::from_fd(signals.reload.as_raw_fd(), zmq::POLLIN),
            ];
            match zmq::poll(&mut items, wait.as_millis().min(i64::MAX as u128) as i64) {
                Ok(_) | Err(zmq::Error::EINTR) => {}
                Err(e) => return Err(e).context("socket poll failed"),
            }
            let ready: Vec<bool> = items.iter().map(zmq::PollItem::is_readable).collect();
            if ready[3] {
                info!(self.log, "shutting down"; "identity" => self.me.identity());
                return Ok(());
            }
            if ready[6] && signals.take_reload() {
                reload();
            }
            if ready[0] {
                self.drain_requests();
            }
            if ready[1] {
                // The server sends nothing unasked over DEALER yet: read and log.
                while let Ok(frames) = self.dealer.recv_multipart(zmq::DONTWAIT) {
                    debug!(self.log, "unexpected message on DEALER dropped"; "frames" => frames.len());
                }
            }
            if ready[2] {
                while let Some(event) = monitor::read(&self.dealer_monitor) {
                    let reconnected = event.event == SocketEvent::HandshakeSucceeded;
                    if self.watch.observe(&event) {
                        self.pause_after_failed_handshake();
                    }
                    if reconnected {
                        self.backoff.reset();
                        // A restarted server has an empty registry: check in now.
                        if self.listening {
                            self.register();
                            next_heartbeat = Instant::now() + self.heartbeat;
                        }
                    }
                }
            }
            if ready[4] {
                while let Some(event) = monitor::read(&self.sub_monitor) {
                    match event.event {
                        SocketEvent::HandshakeSucceeded => {
                            self.listening = true;
                            self.register();
                            next_heartbeat = Instant::now() + self.heartbeat;
                        }
                        SocketEvent::Disconnected => self.listening = false,
                        _ => {}
                    }
                }
            }
            if ready[5] {
                while let Ok(frames) = self.results.recv_multipart(zmq::DONTWAIT) {
                    if let Err(e) = self.dealer.send_multipart(frames, zmq::DONTWAIT) {
                        warn!(self.log, "cannot send an answer to the server"; "error" => %e);
                    }
                }
            }
            if self.reconnect_at.is_some_and(|at| Instant::now() >= at) {
                self.reconnect_at = None;
                debug!(self.log, "connecting again"; "server" => &self.receive);
                self.sub.connect(&self.publish)?;
                self.dealer.connect(&self.receive)?;
            }
            if Instant::now() >= next_heartbeat {
                self.register();
                next_heartbeat = Instant::now() + self.heartbeat;
            }
        }
    }

    /// Drops both connections until the backoff delay has passed.
    fn pause_after_failed_handshake(&mut self) {
        if self.reconnect_at.is_some() {
            return;
        }
        let delay = self.backoff.next_delay();
        // Disconnecting an endpoint that is already down fails harmlessly.
        let _ = self.sub.disconnect(&self.publish);
        let _ = self.dealer.disconnect(&self.receive);
        debug!(self.log, "retrying after a failed handshake"; "in_seconds" => delay.as_secs());
        self.reconnect_at = Some(Instant::now() + delay);
    }

    fn register(&self) {
        self.send(register_client::request(&self.me.filter));
    }

    fn send(&self, message: Message) {
        // DONTWAIT: with the server gone, a full queue must not block the agent.
        if let Err(e) = self.dealer.send_multipart(message.to_frames(), zmq::DONTWAIT) {
            debug!(self.log, "cannot send to the server now"; "type" => message.message_type(), "error" => %e);
        }
    }

    fn drain_requests(&self) {
        while let Ok(frames) = self.sub.recv_multipart(zmq::DONTWAIT) {
            let request = match Message::from_frames(&frames) {
                Ok(m) => m,
                Err(e) => {
                    debug!(self.log, "malformed message from the server dropped"; "error" => %e);
                    continue;
                }
            };
            if !self.me.filter.accepts_stream(&request.stream) {
                continue;
            }
            debug!(self.log, "request received";
                "type" => request.message_type(), "from" => &request.metadata.from,
                "to" => &request.stream, "uuid" => request.uuid());
            if commands::may_block(request.message_type()) {
                self.run_on_worker(request);
                continue;
            }
            let response = commands::run_on_client(&request, &self.me);
            if request.metadata.requires_response {
                self.send(response);
            }
        }
    }
}

impl Agent {
    /// Runs a long command on its own thread; the answer comes back through
    /// the results socket, so only the main thread touches the DEALER.
    fn run_on_worker(&self, request: Message) {
        let (me, ctx, log) = (self.me.clone(), self.ctx.clone(), self.log.clone());
        let spawned = std::thread::Builder::new().name("pantry-command".into()).spawn(move || {
            let response = commands::run_on_client(&request, &me);
            if !request.metadata.requires_response {
                return;
            }
            let sent = ctx.socket(zmq::PUSH).and_then(|push| {
                push.set_linger(1000)?;
                push.connect(RESULTS_ENDPOINT)?;
                push.send_multipart(response.to_frames(), 0)
            });
            if let Err(e) = sent {
                warn!(log, "cannot hand an answer to the main thread"; "uuid" => request.uuid(), "error" => %e);
            }
        });
        if let Err(e) = spawned {
            warn!(self.log, "cannot start a worker thread; request dropped"; "error" => %e);
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn cli_parses() {
        use clap::CommandFactory;
        super::Cli::command().debug_assert();
    }
}
