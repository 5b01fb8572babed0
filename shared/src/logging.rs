//! Logging for the three programs: slog to stdout, a file or syslog, with a
//! level that can change at run time. Release builds keep debug lines (slog's
//! `release_max_level_debug`), because operators trace rejected keys with
//! them.
//!
//! Many logged values come from peers (a message's type, uuid, sender, a
//! topic). In every sink, control characters (a newline that would start a
//! forged line, terminal escapes) and invisible or bidirectional format
//! characters are written escaped (`\n`, `\u001b`, `\u202e`), and each
//! value is cut at [`MAX_LOGGED_VALUE`] bytes, marked as cut.

use std::borrow::Cow;
use std::fmt::Write as _;
use std::fs::OpenOptions;
use std::io;
use std::os::unix::net::UnixDatagram;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use slog::{o, Drain, Level, Logger, OwnedKVList, Record, KV};
use slog_term::{Decorator, RecordDecorator};

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

/// The most bytes of one logged value (and of a message) written.
pub const MAX_LOGGED_VALUE: usize = 1024;

/// Characters written escaped: controls (C0, DEL, C1) and the invisible or
/// bidirectional format characters that could make a line read as another
/// ([`crate::filter::is_hidden`]).
pub fn is_unsafe_in_a_line(c: char) -> bool {
    crate::filter::is_hidden(c)
}

/// Appends `c` to `out`, escaped when [`is_unsafe_in_a_line`].
fn push_escaped(out: &mut String, c: char) {
    match c {
        '\n' => out.push_str("\\n"),
        '\r' => out.push_str("\\r"),
        '\t' => out.push_str("\\t"),
        c if is_unsafe_in_a_line(c) => {
            let _ = write!(out, "\\u{:04x}", u32::from(c));
        }
        c => out.push(c),
    }
}

/// `text` safe for one log line: escaped, and cut after `max` bytes with
/// the cut marked.
pub fn escaped(text: &str, max: usize) -> Cow<'_, str> {
    if text.len() <= max && !text.chars().any(is_unsafe_in_a_line) {
        return Cow::Borrowed(text);
    }
    let mut out = String::with_capacity(text.len().min(max) + 32);
    let mut end = text.len();
    for (i, c) in text.char_indices() {
        if out.len() >= max {
            end = i;
            break;
        }
        push_escaped(&mut out, c);
    }
    if end < text.len() {
        let _ = write!(out, "…[cut: {} bytes]", text.len());
    }
    Cow::Owned(out)
}

/// `text` cut after `max` bytes (at a character boundary), the cut marked;
/// for values a peer controls, in audit lines and refusals.
pub fn shortened(text: &str, max: usize) -> Cow<'_, str> {
    if text.len() <= max {
        return Cow::Borrowed(text);
    }
    let mut at = max;
    while !text.is_char_boundary(at) {
        at -= 1;
    }
    Cow::Owned(format!("{}…[cut: {} bytes]", &text[..at], text.len()))
}

/// A slog-term decorator that escapes and caps everything but the
/// whitespace slog-term writes between pieces (and the line's end).
struct Escaping<D>(D);

impl<D: Decorator> Decorator for Escaping<D> {
    fn with_record<F>(&self, record: &Record, values: &OwnedKVList, f: F) -> io::Result<()>
    where
        F: FnOnce(&mut dyn RecordDecorator) -> io::Result<()>,
    {
        self.0.with_record(record, values, |inner| {
            let mut piece = EscapedPiece { inner, raw: false, written: 0, cut: 0, partial: Vec::new() };
            f(&mut piece)?;
            piece.end_piece()
        })
    }
}

/// One record, as its pieces are written.
struct EscapedPiece<'a> {
    inner: &'a mut dyn RecordDecorator,
    /// Whitespace: written as it is.
    raw: bool,
    /// Bytes of the current piece written, and cut.
    written: usize,
    cut: usize,
    /// The start of a character split across two writes.
    partial: Vec<u8>,
}

impl EscapedPiece<'_> {
    /// Marks a cut piece before the next one starts.
    fn end_piece(&mut self) -> io::Result<()> {
        self.partial.clear();
        if self.cut > 0 {
            let cut = std::mem::take(&mut self.cut);
            write!(self.inner, "…[cut: {} bytes]", self.written + cut)?;
        }
        self.written = 0;
        Ok(())
    }

    fn start(&mut self, raw: bool) -> io::Result<()> {
        self.end_piece()?;
        self.raw = raw;
        Ok(())
    }
}

impl io::Write for EscapedPiece<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        if self.raw {
            self.inner.write_all(buf)?;
            return Ok(buf.len());
        }
        let mut bytes = std::mem::take(&mut self.partial);
        bytes.extend_from_slice(buf);
        let (text, rest) = match std::str::from_utf8(&bytes) {
            Ok(text) => (text, &[][..]),
            Err(e) if e.error_len().is_none() => {
                // A character continues in the next write.
                let (valid, rest) = bytes.split_at(e.valid_up_to());
                (std::str::from_utf8(valid).unwrap_or_default(), rest)
            }
            Err(_) => {
                // Not UTF-8: what `from_utf8_lossy` makes of it.
                let lossy = String::from_utf8_lossy(&bytes).into_owned();
                self.write_text(&lossy)?;
                return Ok(buf.len());
            }
        };
        let rest = rest.to_vec();
        self.write_text(text)?;
        self.partial = rest;
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

impl EscapedPiece<'_> {
    fn write_text(&mut self, text: &str) -> io::Result<()> {
        let mut out = String::new();
        for c in text.chars() {
            if self.written + out.len() >= MAX_LOGGED_VALUE {
                self.cut += c.len_utf8();
                continue;
            }
            push_escaped(&mut out, c);
        }
        self.written += out.len();
        self.inner.write_all(out.as_bytes())
    }
}

impl RecordDecorator for EscapedPiece<'_> {
    fn reset(&mut self) -> io::Result<()> {
        self.start(false)?;
        self.inner.reset()
    }
    fn start_whitespace(&mut self) -> io::Result<()> {
        self.start(true)?;
        self.inner.start_whitespace()
    }
    fn start_msg(&mut self) -> io::Result<()> {
        self.start(false)?;
        self.inner.start_msg()
    }
    fn start_timestamp(&mut self) -> io::Result<()> {
        self.start(false)?;
        self.inner.start_timestamp()
    }
    fn start_level(&mut self) -> io::Result<()> {
        self.start(false)?;
        self.inner.start_level()
    }
    fn start_comma(&mut self) -> io::Result<()> {
        self.start(false)?;
        self.inner.start_comma()
    }
    fn start_key(&mut self) -> io::Result<()> {
        self.start(false)?;
        self.inner.start_key()
    }
    fn start_value(&mut self) -> io::Result<()> {
        self.start(false)?;
        self.inner.start_value()
    }
    fn start_location(&mut self) -> io::Result<()> {
        self.start(false)?;
        self.inner.start_location()
    }
    fn start_separator(&mut self) -> io::Result<()> {
        self.start(false)?;
        self.inner.start_separator()
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
    Box::new(Mutex::new(slog_term::FullFormat::new(Escaping(decorator)).build()).fuse())
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
        let value = val.to_string();
        let _ = write!(self.0, " {key}={}", escaped(&value, MAX_LOGGED_VALUE));
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
        let msg = record.msg().to_string();
        let msg = escaped(&msg, MAX_LOGGED_VALUE);
        let mut line = format!("<{}>{}[{}]: {msg}", 3 * 8 + severity, self.program, std::process::id());
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
    fn values_cannot_forge_lines() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("pantry.log");
        let logging = init(&LogTarget::File(path.clone()), Level::Info).unwrap();
        let forged = "Echo\nDec 07 06:00:00.000 WARN key revoked and cut off, name: admin\u{1b}[2J\u{202e}";
        slog::warn!(logging.logger, "dropped {}", forged; "type" => forged, "uuid" => "x".repeat(5000));
        drop(logging);
        let text = std::fs::read_to_string(&path).unwrap();
        assert_eq!(text.lines().count(), 1, "{text}");
        assert!(text.contains("Echo\\nDec 07") && text.contains("\\u001b[2J\\u202e"), "{text}");
        assert!(text.contains("…[cut: 5000 bytes]") && text.len() < 4000, "{text}");
    }

    #[test]
    fn escaping_and_shortening() {
        assert!(matches!(escaped("web-1", 10), Cow::Borrowed("web-1")));
        assert_eq!(escaped("a\nb\u{200b}", 100), "a\\nb\\u200b");
        assert_eq!(escaped("abcdef", 3), "abc…[cut: 6 bytes]");
        assert_eq!(shortened("héllo", 2), "h…[cut: 6 bytes]");
        assert_eq!(shortened("ok", 2), "ok");
    }

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
