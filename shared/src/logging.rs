//! Logging for the three programs: slog to stdout, a file or syslog, with a
//! level that can change at run time. Release builds keep debug lines (slog's
//! `release_max_level_debug`), because operators trace rejected keys with
//! them.

use std::fmt::Write as _;
use std::fs::OpenOptions;
use std::os::unix::net::UnixDatagram;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use slog::{o, Drain, Level, Logger, OwnedKVList, Record, KV};

use crate::config::LogLevel;

impl LogLevel {
    pub fn to_slog(self) -> Level {
        match self {
            LogLevel::Fatal => Level::Critical,
            LogLevel::Error => Level::Error,
            LogLevel::Warn => Level::Warning,
            LogLevel::Info => Level::Info,
            LogLevel::Debug => Level::Debug,
        }
    }
}

/// Drops records below a level that can be changed while running.
struct RuntimeLevel<D> {
    level: Arc<AtomicUsize>,
    drain: D,
}

impl<D: Drain> Drain for RuntimeLevel<D> {
    type Ok = Option<D::Ok>;
    type Err = D::Err;

    fn log(&self, record: &Record, values: &OwnedKVList) -> Result<Self::Ok, Self::Err> {
        if record.level().as_usize() <= self.level.load(Ordering::Relaxed) {
            self.drain.log(record, values).map(Some)
        } else {
            Ok(None)
        }
    }
}

/// Where log lines go, from the config's `log_to`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LogTarget {
    Stdout,
    Stderr,
    Syslog { program: String },
    File(std::path::PathBuf),
}

impl LogTarget {
    pub fn from_config(log_to: &str, program: &str) -> LogTarget {
        match log_to {
            "stdout" => LogTarget::Stdout,
            "stderr" => LogTarget::Stderr,
            "syslog" => LogTarget::Syslog { program: program.to_owned() },
            path => LogTarget::File(path.into()),
        }
    }
}

/// The logger and the handle that changes its level. Keep it alive until
/// exit: dropping it flushes pending lines.
pub struct Logging {
    pub logger: Logger,
    level: Arc<AtomicUsize>,
    _guard: slog_async::AsyncGuard,
}

impl Logging {
    pub fn set_level(&self, level: Level) {
        self.level.store(level.as_usize(), Ordering::Relaxed);
    }
}

/// Builds the logger. A syslog target without `/dev/log` falls back to
/// stderr and says so in the first line.
pub fn init(target: &LogTarget, level: Level) -> std::io::Result<Logging> {
    let mut fallback_note = None;
    let drain: Box<dyn Drain<Ok = (), Err = slog::Never> + Send> = match target {
        LogTarget::Stdout => term_drain(slog_term::TermDecorator::new().stdout().build()),
        LogTarget::Stderr => term_drain(slog_term::TermDecorator::new().stderr().build()),
        LogTarget::File(path) => {
            let file = OpenOptions::new().create(true).append(true).open(path)?;
            term_drain(slog_term::PlainSyncDecorator::new(file))
        }
        LogTarget::Syslog { program } => match SyslogDrain::connect(program) {
            Ok(drain) => Box::new(drain.fuse()),
            Err(e) => {
                fallback_note = Some(format!("syslog unavailable (/dev/log: {e}); logging to stderr"));
                term_drain(slog_term::TermDecorator::new().stderr().build())
            }
        },
    };
    let (async_drain, guard) = slog_async::Async::new(drain).chan_size(4096).build_with_guard();
    let level = Arc::new(AtomicUsize::new(level.as_usize()));
    let filtered = RuntimeLevel { level: level.clone(), drain: async_drain.fuse() }.fuse();
    let logger = Logger::root(filtered, o!());
    if let Some(note) = fallback_note {
        slog::warn!(logger, "{}", note);
    }
    Ok(Logging { logger, level, _guard: guard })
}

fn term_drain<D>(decorator: D) -> Box<dyn Drain<Ok = (), Err = slog::Never> + Send>
where
    D: slog_term::Decorator + Send + 'static,
{
    Box::new(Mutex::new(slog_term::FullFormat::new(decorator).build()).fuse())
}

/// Sends each record as one datagram to the local syslog socket.
struct SyslogDrain {
    socket: UnixDatagram,
    program: String,
}

impl SyslogDrain {
    fn connect(program: &str) -> std::io::Result<SyslogDrain> {
        let socket = UnixDatagram::unbound()?;
        socket.connect("/dev/log")?;
        Ok(SyslogDrain { socket, program: program.to_owned() })
    }
}

/// Collects key-value pairs as ` key=value`.
struct LineSerializer<'a>(&'a mut String);

impl slog::Serializer for LineSerializer<'_> {
    fn emit_arguments(&mut self, key: slog::Key, val: &std::fmt::Arguments) -> slog::Result {
        let _ = write!(self.0, " {key}={val}");
        Ok(())
    }
}

impl Drain for SyslogDrain {
    type Ok = ();
    type Err = slog::Never;

    fn log(&self, record: &Record, values: &OwnedKVList) -> Result<(), slog::Never> {
        // Facility daemon (3); severity per RFC 5424.
        let severity = match record.level() {
            Level::Critical => 2,
            Level::Error => 3,
            Level::Warning => 4,
            Level::Info => 6,
            Level::Debug | Level::Trace => 7,
        };
        let mut line = format!("<{}>{}[{}]: {}", 3 * 8 + severity, self.program, std::process::id(), record.msg());
        let _ = record.kv().serialize(record, &mut LineSerializer(&mut line));
        let _ = values.serialize(record, &mut LineSerializer(&mut line));
        // A full or missing syslog must not stop the program.
        let _ = self.socket.send(line.as_bytes());
        Ok(())
    }
}
