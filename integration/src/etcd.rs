//! A real etcd (Debian's `etcd-server`) on loopback, with a temporary data
//! directory, for the cluster tests; [`member`] and [`healthy`] serve the
//! benchmark's too.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use crate::{free_port, wait_until};

pub struct Etcd {
    child: Option<Child>,
    dir: tempfile::TempDir,
    client_port: u16,
    peer_port: u16,
}

impl Etcd {
    /// Starts etcd and waits until it answers `/health`.
    pub fn start() -> Etcd {
        let mut etcd = Etcd {
            child: None,
            dir: tempfile::tempdir().expect("a temporary directory"),
            client_port: free_port(),
            peer_port: free_port(),
        };
        etcd.run();
        etcd
    }

    fn run(&mut self) {
        let log = std::fs::File::create(self.log_path()).expect("etcd log file");
        let binary = binary().unwrap_or_else(|| PathBuf::from("/usr/bin/etcd"));
        let child = member(&binary, "test", &self.dir.path().join("data"), self.client_port, self.peer_port)
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("etcd starts (Debian package etcd-server; make test installs it)");
        self.child = Some(child);
        let ready = wait_until(Duration::from_secs(20), || healthy(self.client_port));
        assert!(ready, "etcd did not become healthy:\n{}", self.log());
    }

    /// `http://127.0.0.1:PORT`, for `cluster.etcd`.
    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.client_port)
    }

    fn log_path(&self) -> PathBuf {
        self.dir.path().join("etcd.log")
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.log_path()).unwrap_or_default()
    }

    /// Stops etcd (SIGKILL), keeping its data: `resume` brings it back.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts etcd again on the same data and ports.
    pub fn resume(&mut self) {
        self.run();
    }
}

impl Drop for Etcd {
    fn drop(&mut self) {
        self.stop();
    }
}

/// `etcd` on the PATH, or Debian's `/usr/bin/etcd`; `None` when neither
/// exists.
pub fn binary() -> Option<PathBuf> {
    std::env::var_os("PATH")
        .and_then(|path| std::env::split_paths(&path).map(|d| d.join("etcd")).find(|p| p.is_file()))
        .or_else(|| Some(PathBuf::from("/usr/bin/etcd")).filter(|p| p.is_file()))
}

/// A single-member etcd named `name`, its data in `data_dir`, on loopback.
pub fn member(binary: &Path, name: &str, data_dir: &Path, client_port: u16, peer_port: u16) -> Command {
    let client = format!("http://127.0.0.1:{client_port}");
    let peer = format!("http://127.0.0.1:{peer_port}");
    let mut command = Command::new(binary);
    command
        .args(["--name", name, "--data-dir"])
        .arg(data_dir)
        .args(["--listen-client-urls", &client, "--advertise-client-urls", &client])
        .args(["--listen-peer-urls", &peer, "--initial-advertise-peer-urls", &peer])
        .args(["--initial-cluster", &format!("{name}={peer}")]);
    command
}

/// Whether etcd at `port` says `{"health":"true"}`.
pub fn healthy(port: u16) -> bool {
    let Ok(mut stream) = TcpStream::connect(("127.0.0.1", port)) else { return false };
    let _ = stream.set_read_timeout(Some(Duration::from_secs(2)));
    if write!(stream, "GET /health HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n").is_err() {
        return false;
    }
    let mut response = String::new();
    let _ = stream.read_to_string(&mut response);
    response.contains("\"health\":\"true\"")
}
