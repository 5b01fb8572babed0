//! The audit log: one JSON line per request the server receives, accepted
//! or refused (not authorized, spoofed sender, revoked or unknown key): when,
//! who (key name, key, role, address), what (type, target, arguments in
//! summary, never a private key or a token) and the decision.
//!
//! A line is written before the request is carried out; when it cannot be
//! written and `audit_fail_closed` is set (the default), the request is
//! refused and the requester told why. The file (default
//! `root_dir/audit.log`, mode 0600) is reopened on SIGHUP for logrotate;
//! `syslog` and `stdout` are the other targets.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};

use std::borrow::Cow;

use pantry_shared::logging::shortened;
use serde::Serialize;
use serde_json::Value;

/// Where audit lines go.
pub enum AuditTarget {
    File(PathBuf),
    Syslog,
    Stdout,
}

impl AuditTarget {
    /// From `audit_log` (default: `root_dir/audit.log`).
    pub fn from_config(setting: Option<&str>, root_dir: &Path) -> AuditTarget {
        match setting {
            None => AuditTarget::File(root_dir.join("audit.log")),
            Some("syslog") => AuditTarget::Syslog,
            Some("stdout") => AuditTarget::Stdout,
            Some(path) => AuditTarget::File(path.into()),
        }
    }
}

/// One line.
#[derive(Debug, Serialize)]
pub struct AuditLine<'a> {
    /// RFC 3339 with milliseconds.
    pub time: String,
    pub uuid: &'a str,
    pub name: &'a str,
    pub key: &'a str,
    pub role: &'a str,
    pub address: &'a str,
    #[serde(rename = "type")]
    pub message_type: &'a str,
    pub target: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub identities: Option<&'a Value>,
    pub arguments: Value,
    /// `accepted`, `refused: REASON` or `dropped: REASON`.
    pub decision: String,
}

/// Most bytes of one text field of an audit line, and of its identities
/// or arguments as JSON: a peer's 4 MiB `type` costs the disk 256 bytes.
pub const MAX_FIELD: usize = 256;
pub const MAX_LIST: usize = 1024;

/// An [`AuditLine`] as written: every field capped, a cut marked.
#[derive(Serialize)]
struct Capped<'a> {
    time: &'a str,
    uuid: Cow<'a, str>,
    name: Cow<'a, str>,
    key: Cow<'a, str>,
    role: Cow<'a, str>,
    address: Cow<'a, str>,
    #[serde(rename = "type")]
    message_type: Cow<'a, str>,
    target: Cow<'a, str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    identities: Option<Cow<'a, Value>>,
    arguments: Cow<'a, Value>,
    decision: Cow<'a, str>,
}

impl<'a> Capped<'a> {
    fn of(line: &'a AuditLine<'a>) -> Capped<'a> {
        let field = |text: &'a str| shortened(text, MAX_FIELD);
        Capped {
            time: &line.time,
            uuid: field(line.uuid),
            name: field(line.name),
            key: field(line.key),
            role: field(line.role),
            address: field(line.address),
            message_type: field(line.message_type),
            target: field(line.target),
            identities: line.identities.map(capped_json),
            arguments: capped_json(&line.arguments),
            decision: shortened(&line.decision, MAX_LIST),
        }
    }
}

/// `value`, or a note of its size when its JSON is longer than
/// [`MAX_LIST`]: the start of a list, the start of anything else as text.
fn capped_json(value: &Value) -> Cow<'_, Value> {
    let size = serde_json::to_vec(value).map_or(0, |v| v.len());
    if size <= MAX_LIST {
        return Cow::Borrowed(value);
    }
    let text = value.to_string();
    let start = match value {
        Value::Array(items) => Value::from(items.len()),
        _ => Value::from(shortened(&text, MAX_FIELD).into_owned()),
    };
    Cow::Owned(serde_json::json!({"cut": true, "bytes": size, "start": start}))
}

enum Sink {
    File(File),
    Syslog(UnixDatagram),
    Stdout,
}

pub struct Audit {
    target: AuditTarget,
    sink: Sink,
}

impl Audit {
    pub fn open(target: AuditTarget) -> std::io::Result<Audit> {
        let sink = Self::sink(&target)?;
        Ok(Audit { target, sink })
    }

    fn sink(target: &AuditTarget) -> std::io::Result<Sink> {
        Ok(match target {
            AuditTarget::File(path) => Sink::File(OpenOptions::new().create(true).append(true).mode(0o600).open(path)?),
            AuditTarget::Syslog => {
                let socket = UnixDatagram::unbound()?;
                socket.connect("/dev/log")?;
                Sink::Syslog(socket)
            }
            AuditTarget::Stdout => Sink::Stdout,
        })
    }

    /// Where the lines go, for log messages.
    pub fn describe(&self) -> String {
        match &self.target {
            AuditTarget::File(path) => path.display().to_string(),
            AuditTarget::Syslog => "syslog".into(),
            AuditTarget::Stdout => "stdout".into(),
        }
    }

    /// Opens the file again (logrotate moved it away).
    pub fn reopen(&mut self) -> std::io::Result<()> {
        self.sink = Self::sink(&self.target)?;
        Ok(())
    }

    /// Writes one line, in one write: it is in the file when this returns.
    /// Fields a peer controls are cut ([`MAX_FIELD`], [`MAX_LIST`]).
    pub fn write(&mut self, line: &AuditLine) -> std::io::Result<()> {
        let mut text = serde_json::to_string(&Capped::of(line)).map_err(std::io::Error::other)?;
        match &mut self.sink {
            Sink::File(file) => {
                text.push('\n');
                file.write_all(text.as_bytes())
            }
            // Facility authpriv (10), severity notice (5).
            Sink::Syslog(socket) => socket.send(format!("<{}>pantry-audit: {text}", 10 * 8 + 5).as_bytes()).map(|_| ()),
            Sink::Stdout => {
                text.push('\n');
                std::io::stdout().lock().write_all(text.as_bytes())
            }
        }
    }
}

/// Now, as RFC 3339 with milliseconds.
pub fn now() -> String {
    humantime::format_rfc3339_millis(std::time::SystemTime::now()).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn lines_are_json_appended_to_a_private_file_and_survive_rotation() {
        let dir = tempfile::tempdir().unwrap();
        let mut audit = Audit::open(AuditTarget::from_config(None, dir.path())).unwrap();
        let path = dir.path().join("audit.log");
        let line = |decision: &str| AuditLine {
            time: now(),
            uuid: "u",
            name: "admin",
            key: "k",
            role: "admin",
            address: "127.0.0.1",
            message_type: "Exec",
            target: "shop",
            identities: None,
            arguments: serde_json::json!({"program": "uptime"}),
            decision: decision.into(),
        };
        audit.write(&line("accepted")).unwrap();
        assert_eq!(std::fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o600);
        std::fs::rename(&path, dir.path().join("audit.log.1")).unwrap();
        audit.reopen().unwrap();
        audit.write(&line("refused: not authorized")).unwrap();
        let old = std::fs::read_to_string(dir.path().join("audit.log.1")).unwrap();
        let new = std::fs::read_to_string(&path).unwrap();
        let parsed: Value = serde_json::from_str(old.trim()).unwrap();
        assert_eq!((parsed["type"].as_str(), parsed["decision"].as_str()), (Some("Exec"), Some("accepted")));
        assert!(new.contains("refused: not authorized"));
    }

    #[test]
    fn fields_a_peer_controls_are_cut() {
        let dir = tempfile::tempdir().unwrap();
        let mut audit = Audit::open(AuditTarget::from_config(None, dir.path())).unwrap();
        let huge = "T".repeat(4 << 20);
        let ids = serde_json::json!(vec!["web-1"; 100_000]);
        let line = AuditLine {
            time: now(),
            uuid: &huge,
            name: "-",
            key: "k",
            role: "enrollee",
            address: "127.0.0.1",
            message_type: &huge,
            target: &huge,
            identities: Some(&ids),
            arguments: serde_json::json!({"text": huge}),
            decision: "refused: unknown client".into(),
        };
        audit.write(&line).unwrap();
        let text = std::fs::read_to_string(dir.path().join("audit.log")).unwrap();
        assert!(text.len() < 4 * 1024, "{} bytes", text.len());
        let parsed: Value = serde_json::from_str(text.trim()).unwrap();
        assert!(parsed["type"].as_str().unwrap().ends_with("[cut: 4194304 bytes]"));
        assert_eq!(parsed["identities"]["start"], 100_000);
        assert_eq!(parsed["arguments"]["cut"], true);
    }
}
