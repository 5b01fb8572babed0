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

/// The configured level, raised by `-v` (at least info) or `-d` (debug).
pub fn effective_level(configured: LogLevel, verbose: bool, debug: bool) -> Level {
    let level = configured.to_slog();
    if debug {
        Level::Debug
    } else if verbose && !level.is_at_least(Level::Info) {
        Level::Info
    } else {
        level
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
    file: Option<Arc<ReopenableFile>>,
    _guard: slog_async::AsyncGuard,
}

impl Logging {
    pub fn set_level(&self, level: Level) {
        self.level.store(level.as_usize(), Ordering::Relaxed);
    }

    /// Opens the log file again (after logrotate moved it). Does nothing
    /// for stdout and syslog.
    pub fn reopen(&self) -> std::io::Result<()> {
        match &self.file {
            Some(file) => file.reopen(),
            None => Ok(()),
        }
    }
}

/// A log file that can be reopened under the same path while in use.
struct ReopenableFile {
    path: std::path::PathBuf,
    file: Mutex<std::fs::File>,
}

impl ReopenableFile {
    fn open(path: &std::path::Path) -> std::io::Result<ReopenableFile> {
        Ok(ReopenableFile { path: path.to_owned(), file: Mutex::new(Self::append(path)?) })
    }

    fn append(path: &std::path::Path) -> std::io::Result<std::fs::File> {
        OpenOptions::new().create(true).append(true).open(path)
    }

    fn reopen(&self) -> std::io::Result<()> {
        let fresh = Self::append(&self.path)?;
        *self.file.lock().unwrap_or_else(|e| e.into_inner()) = fresh;
        Ok(())
    }
}

/// The writer slog-term formats into: whichever file is current.
struct FileWriter(Arc<ReopenableFile>);

impl std::io::Write for FileWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.file.lock().unwrap_or_else(|e| e.into_inner()).write(buf)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.0.file.lock().unwrap_or_else(|e| e.into_inner()).flush()
    }
}

/// Builds the logger. A syslog target without `/dev/log` falls back to
/// stderr and says so in the first line.
pub fn init(target: &LogTarget, level: Level) -> std::io::Result<Logging> {
    let mut fallback_note = None;
    let mut reopenable = None;
    let drain: Box<dyn Drain<Ok = (), Err = slog::Never> + Send> = match target {
        LogTarget::Stdout => term_drain(slog_term::TermDecorator::new().stdout().build()),
        LogTarget::Stderr => term_drain(slog_term::TermDecorator::new().stderr().build()),
        LogTarget::File(path) => {
            let file = Arc::new(ReopenableFile::open(path)?);
            reopenable = Some(file.clone());
            term_drain(slog_term::PlainSyncDecorator::new(FileWriter(file)))
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
    Ok(Logging { logger, level, file: reopenable, _guard: guard })
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn file_logs_reopen_after_rotation() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("pantry.log");
        let logging = init(&LogTarget::File(path.clone()), Level::Info).unwrap();
        slog::info!(logging.logger, "before rotation");
        slog::debug!(logging.logger, "filtered out");
        std::thread::sleep(std::time::Duration::from_millis(100));
        std::fs::rename(&path, dir.path().join("pantry.log.1")).unwrap();
        logging.reopen().unwrap();
        logging.set_level(Level::Debug);
        slog::debug!(logging.logger, "after rotation");
        drop(logging);
        let old = std::fs::read_to_string(dir.path().join("pantry.log.1")).unwrap();
        let new = std::fs::read_to_string(&path).unwrap();
        assert!(old.contains("before rotation") && !old.contains("filtered out"), "{old}");
        assert!(new.contains("after rotation"), "{new}");
    }
}
