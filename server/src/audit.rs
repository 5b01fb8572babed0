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
    pub fn write(&mut self, line: &AuditLine) -> std::io::Result<()> {
        let mut text = serde_json::to_string(line).map_err(std::io::Error::other)?;
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
}
