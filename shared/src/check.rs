//! `check-config`: validate a config and its key store without starting
//! and without changing anything on disk (no key is generated, no directory
//! created): paths, permissions, keys that parse, CURVE available. Each
//! program checks its own key store ([`KeyCheck`]): the agent's is
//! [`client_keys`], the server's is the server's.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use crate::config::{Config, Program};
use crate::keys::{self, ClientKeys};

/// The outcome: what was checked and what is wrong.
#[derive(Debug, Default)]
pub struct Report {
    pub checked: Vec<String>,
    pub problems: Vec<String>,
}

impl Report {
    pub fn ok(&mut self, what: impl Into<String>) {
        self.checked.push(what.into());
    }

    pub fn problem(&mut self, what: impl Into<String>) {
        self.problems.push(what.into());
    }

    pub fn is_ok(&self) -> bool {
        self.problems.is_empty()
    }

    /// Human-readable: `ok:` lines, then `problem:` lines.
    pub fn render(&self) -> String {
        let mut out = String::new();
        for line in &self.checked {
            out.push_str(&format!("ok: {line}\n"));
        }
        for line in &self.problems {
            out.push_str(&format!("problem: {line}\n"));
        }
        out
    }
}

/// A program's check of its key store (under CURVE).
pub type KeyCheck = fn(&Config, &mut Report);

/// `check-config` for either program: prints the report and exits 0 (fine),
/// 1 (problems) or 2 (no file given).
pub fn exit_with_report(path: Option<&Path>, program: Program, keys: KeyCheck) -> ! {
    let Some(path) = path else {
        eprintln!("check-config needs -c FILE");
        std::process::exit(2);
    };
    let report = check(path, program, keys);
    print!("{}", report.render());
    if report.is_ok() {
        println!("{}: no problems", path.display());
        std::process::exit(0);
    }
    println!("{}: {} problem(s)", path.display(), report.problems.len());
    std::process::exit(1);
}

/// Checks the config file at `path` for `program`.
pub fn check(path: &Path, program: Program, keys: KeyCheck) -> Report {
    let mut report = Report::default();
    let config = match Config::load(path, program) {
        Ok(config) => {
            report.ok(format!("{} parses", path.display()));
            config
        }
        Err(e) => {
            report.problem(e.to_string());
            return report;
        }
    };
    check_root_dir(&config, &mut report);
    check_log_target(&config, &mut report);
    check_ports(&config, &mut report);
    if config.networking.is_curve() {
        if keys::curve_available() {
            report.ok("libzmq has CURVE");
        } else {
            report.problem(crate::error::KeyStoreError::CurveUnavailable.to_string());
            return report;
        }
        keys(&config, &mut report);
    } else {
        report.ok("security: null (no key store to check)");
    }
    report
}

fn check_root_dir(config: &Config, report: &mut Report) {
    let root = config.root_dir();
    match std::fs::metadata(root) {
        Ok(m) if !m.is_dir() => report.problem(format!("root_dir {} is not a directory", root.display())),
        Ok(_) if !writable(root) => report.problem(format!("root_dir {} is not writable by this user", root.display())),
        Ok(_) => report.ok(format!("root_dir {} is a writable directory", root.display())),
        Err(_) => {
            // create_dir_all makes every missing level: the first existing
            // ancestor must be writable.
            // A relative root_dir's last ancestor is "": the working directory.
            let ancestor = root
                .ancestors()
                .skip(1)
                .map(|p| if p.as_os_str().is_empty() { Path::new(".") } else { p })
                .find(|p| p.exists());
            match ancestor {
                Some(p) if writable(p) => {
                    report.ok(format!("root_dir {} does not exist yet; it will be created", root.display()))
                }
                _ => report.problem(format!(
                    "root_dir {} does not exist and cannot be created ({} is not writable by this user)",
                    root.display(),
                    ancestor.map(|p| p.display().to_string()).unwrap_or_else(|| "no ancestor".into())
                )),
            }
        }
    }
}

fn check_log_target(config: &Config, report: &mut Report) {
    match config.log_to.as_str() {
        "stdout" | "stderr" => report.ok(format!("log_to {}", config.log_to)),
        "syslog" => {
            if Path::new("/dev/log").exists() {
                report.ok("log_to syslog (/dev/log exists)")
            } else {
                report.problem("log_to syslog, but /dev/log does not exist (the program would log to stderr)")
            }
        }
        file => {
            let path = Path::new(file);
            let dir = path.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
            if path.exists() && !writable(path) {
                report.problem(format!("log file {file} is not writable"));
            } else if !path.exists() && (!dir.is_dir() || !writable(dir)) {
                report.problem(format!("log file {file} cannot be created in {}", dir.display()));
            } else {
                report.ok(format!("log file {file} is writable"));
            }
        }
    }
}

fn check_ports(config: &Config, report: &mut Report) {
    let n = &config.networking;
    let ports = [n.pub_sub_port, n.receive_port, n.file_service_port];
    if ports[0] == ports[1] || ports[1] == ports[2] || ports[0] == ports[2] {
        report.problem(format!("networking: the three ports must differ (got {ports:?})"));
    } else {
        report.ok(format!("ports {} {} {}", ports[0], ports[1], ports[2]));
    }
}

/// Directory 0700, file 0600: anything looser is a problem.
pub fn check_modes(dir: &Path, file: &Path, report: &mut Report) {
    for (path, want) in [(dir, 0o700), (file, 0o600)] {
        match std::fs::metadata(path).map(|m| m.permissions().mode() & 0o777) {
            Ok(mode) if mode & !want != 0 => {
                report.problem(format!("{} has mode {mode:o}; it must be {want:o}", path.display()))
            }
            Ok(mode) => report.ok(format!("{} mode {mode:o}", path.display())),
            Err(e) => report.problem(format!("{}: {e}", path.display())),
        }
    }
}

/// The agent's `client_keys.yml`.
pub fn client_keys(config: &Config, report: &mut Report) {
    let dir = keys::curve_dir(config.root_dir());
    let file = dir.join(keys::CLIENT_KEYS_FILE);
    if !file.exists() {
        report.problem(format!(
            "{} does not exist: put the output of `pantry-admin client:create --name <identity>` there",
            file.display()
        ));
        return;
    }
    check_modes(&dir, &file, report);
    match ClientKeys::load(&file, false) {
        Ok(keys) if keys.generated => report.ok(format!(
            "{} holds only server_public_key; the agent generates its key pair at start (the server must then \
             know it)",
            file.display()
        )),
        Ok(keys) => report.ok(format!("{} parses: public key {}", file.display(), keys.keys.public_key)),
        Err(e) => report.problem(e.to_string()),
    }
}

fn writable(path: &Path) -> bool {
    use std::os::unix::ffi::OsStrExt;
    let Ok(c) = std::ffi::CString::new(path.as_os_str().as_bytes()) else { return false };
    // SAFETY: access(2) reads a NUL-terminated path.
    unsafe { libc::access(c.as_ptr(), libc::W_OK) == 0 }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn client_without_keys_is_a_problem() {
        let dir = tempfile::tempdir().unwrap();
        let config = dir.path().join("client.yml");
        let root = dir.path().join("root");
        std::fs::write(&config, format!("root_dir: {}\nnetworking:\n  security: curve\n", root.display())).unwrap();
        let r = check(&config, Program::Client, client_keys);
        assert!(r.render().contains("client:create"), "{}", r.render());
    }
}
