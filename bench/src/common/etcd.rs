//! A real etcd (Debian's `etcd-server`) on loopback with a temporary data
//! directory, for the cluster scenario: started as the integration tests
//! start theirs (`pantry_integration::etcd`), with errors instead of panics,
//! so that the bench can say why the scenario did not run.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Result};
pub use pantry_integration::etcd::binary;
use pantry_integration::etcd::{healthy, member};
use tempfile::TempDir;

use crate::common::procs::{free_port, run_bounded, Process};

/// How long etcd may take to answer `/health`.
const START_TIMEOUT: Duration = Duration::from_secs(20);

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
        let mut command = member(binary, "bench", &dir.path().join("data"), client_port, peer_port);
        command.stdin(Stdio::null());
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
