//! A real etcd (Debian's `etcd-server`) on loopback with a temporary data
//! directory, for the cluster scenario: the integration tests' way
//! (`integration/src/etcd.rs`), with errors instead of panics, so that the
//! bench can say why the scenario did not run.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Result};
use tempfile::TempDir;

use crate::procs::{free_port, run_bounded, Process};

/// How long etcd may take to answer `/health`.
const START_TIMEOUT: Duration = Duration::from_secs(20);

/// `etcd` on the PATH, or Debian's `/usr/bin/etcd`; `None` when neither
/// exists.
pub fn binary() -> Option<PathBuf> {
    std::env::var_os("PATH")
        .and_then(|path| std::env::split_paths(&path).map(|d| d.join("etcd")).find(|p| p.is_file()))
        .or_else(|| Some(PathBuf::from("/usr/bin/etcd")).filter(|p| p.is_file()))
}

/// The first line of `etcd --version` (`etcd Version: 3.4.23`).
pub fn version(binary: &Path) -> Option<String> {
    let out = run_bounded(Command::new(binary).arg("--version").stdin(Stdio::null()), Duration::from_secs(10)).ok()?;
    out.stdout.lines().next().map(|l| l.trim().to_owned()).filter(|l| !l.is_empty())
}

/// One etcd member, stopped (SIGTERM, then SIGKILL) when dropped.
pub struct Etcd {
    pub process: Process,
    client_port: u16,
    // Removed after the process (fields drop in order).
    _dir: TempDir,
}

impl Etcd {
    /// Starts etcd on free loopback ports and waits until it answers
    /// `/health`.
    pub fn start(binary: &Path) -> Result<Etcd> {
        let dir = tempfile::Builder::new().prefix("pantry-bench-etcd-").tempdir()?;
        let (client_port, peer_port) = (free_port()?, free_port()?);
        let client = format!("http://127.0.0.1:{client_port}");
        let peer = format!("http://127.0.0.1:{peer_port}");
        let mut command = Command::new(binary);
        command
            .args(["--name", "bench", "--data-dir"])
            .arg(dir.path().join("data"))
            .args(["--listen-client-urls", &client, "--advertise-client-urls", &client])
            .args(["--listen-peer-urls", &peer, "--initial-advertise-peer-urls", &peer])
            .args(["--initial-cluster", &format!("bench={peer}")])
            .stdin(Stdio::null());
        let mut process = Process::spawn("etcd", &mut command, dir.path().join("etcd.log"))?;
        let end = Instant::now() + START_TIMEOUT;
        while !healthy(client_port) {
            if let Some(status) = process.exited() {
                bail!("etcd exited ({status}) before it was healthy:\n{}", process.log());
            }
            if Instant::now() >= end {
                bail!("etcd not healthy within {START_TIMEOUT:?}:\n{}", process.log());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok(Etcd { process, client_port, _dir: dir })
    }

    /// `http://127.0.0.1:PORT`, for `cluster.etcd`.
    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.client_port)
    }
}

/// Whether etcd at `port` says `{"health":"true"}`.
fn healthy(port: u16) -> bool {
    let Ok(mut stream) = TcpStream::connect(("127.0.0.1", port)) else { return false };
    let _ = stream.set_read_timeout(Some(Duration::from_secs(2)));
    if write!(stream, "GET /health HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n").is_err() {
        return false;
    }
    let mut response = String::new();
    let _ = stream.read_to_string(&mut response);
    response.contains("\"health\":\"true\"")
}
