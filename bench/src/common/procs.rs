//! Child processes: the real `pantry-server` and `pantry-client`, the
//! baseline relay (this binary again, `pantry-bench relay`), and what the
//! scenarios read of them in `/proc` (memory, CPU, descriptors). Every
//! child is stopped when its handle is dropped; every wait is bounded.

use std::io::{BufRead, BufReader, Write};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, ChildStdout, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _, Result};
use tempfile::TempDir;

use crate::common::keys::{self, Pair};

/// A TCP port on 127.0.0.1 that was free a moment ago.
pub fn free_port() -> Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// Resident set size of a process in KiB (`VmRSS` in `/proc/PID/status`).
pub fn rss_kib(pid: u32) -> Option<u64> {
    status_field(pid, "VmRSS:")
}

/// Peak resident set size in KiB (`VmHWM`).
pub fn peak_rss_kib(pid: u32) -> Option<u64> {
    status_field(pid, "VmHWM:")
}

fn status_field(pid: u32, name: &str) -> Option<u64> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = text.lines().find(|l| l.starts_with(name))?;
    line[name.len()..].split_whitespace().next()?.parse().ok()
}

/// `PANTRY_BENCH_KEEP=1` keeps the servers' temporary directories (config,
/// keys, logs) for a look after the run.
fn keep_dirs() -> bool {
    std::env::var_os("PANTRY_BENCH_KEEP").is_some_and(|v| v == "1")
}

/// CPU time a process has used so far, all threads (from
/// `/proc/PID/task/*/schedstat`, in nanoseconds).
pub fn cpu_ns(pid: u32) -> Option<u64> {
    let tasks = std::fs::read_dir(format!("/proc/{pid}/task")).ok()?;
    let mut total = 0u64;
    for task in tasks.flatten() {
        let text = std::fs::read_to_string(task.path().join("schedstat")).unwrap_or_default();
        total += text.split_whitespace().next().and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
    }
    Some(total)
}

/// CPU time of this process's threads whose name starts with `prefix`
/// (the simulated agents' are `agents-…`), ns.
pub fn own_threads_cpu_ns(prefix: &str) -> Option<u64> {
    let tasks = std::fs::read_dir("/proc/self/task").ok()?;
    let mut total = 0u64;
    for task in tasks.flatten() {
        let name = std::fs::read_to_string(task.path().join("comm")).unwrap_or_default();
        if name.starts_with(prefix) {
            let text = std::fs::read_to_string(task.path().join("schedstat")).unwrap_or_default();
            total += text.split_whitespace().next().and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
        }
    }
    Some(total)
}

/// User plus system CPU time of a process so far, all threads, from
/// `/proc/PID/stat` (clock ticks, converted to nanoseconds).
pub fn stat_cpu_ns(pid: u32) -> Option<u64> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name, in parentheses, may hold spaces: fields are counted
    // after its closing parenthesis (utime and stime are fields 14 and 15).
    let rest = &text[text.rfind(')')? + 1..];
    let mut fields = rest.split_whitespace().skip(11);
    let utime: u64 = fields.next()?.parse().ok()?;
    let stime: u64 = fields.next()?.parse().ok()?;
    // SAFETY: sysconf reads a constant of the system.
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    (ticks > 0).then(|| (utime + stime) * 1_000_000_000 / ticks as u64)
}

/// Descriptors a process has open (entries of `/proc/PID/fd`).
pub fn open_fds(pid: u32) -> Option<usize> {
    Some(std::fs::read_dir(format!("/proc/{pid}/fd")).ok()?.count())
}

/// Server CPU time per operation since `before` (a [`cpu_ns`] of `pid`),
/// microseconds; `None` without operations or without the figures.
pub fn cpu_us_per(pid: u32, before: Option<u64>, count: u64) -> Option<f64> {
    let (before, after) = (before?, cpu_ns(pid)?);
    (count > 0).then(|| after.saturating_sub(before) as f64 / 1000.0 / count as f64)
}

/// What a one-shot command printed and how it ended (`None`: killed after
/// its time).
#[derive(Debug)]
pub struct Output {
    pub status: Option<ExitStatus>,
    pub stdout: String,
    pub stderr: String,
}

impl Output {
    pub fn success(&self) -> bool {
        self.status.is_some_and(|s| s.success())
    }
}

/// Runs `command` to completion, killed if it takes longer than `timeout`.
pub fn run_bounded(command: &mut Command, timeout: Duration) -> Result<Output> {
    use std::io::{Seek, SeekFrom};
    let (mut out, mut err) = (tempfile::tempfile()?, tempfile::tempfile()?);
    let mut child = command
        .stdout(out.try_clone()?)
        .stderr(err.try_clone()?)
        .spawn()
        .with_context(|| format!("cannot start {command:?}"))?;
    let end = Instant::now() + timeout;
    let status = loop {
        if let Some(status) = child.try_wait()? {
            break Some(status);
        }
        if Instant::now() >= end {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(2));
    };
    let read = |f: &mut std::fs::File| -> Result<String> {
        let mut text = String::new();
        f.seek(SeekFrom::Start(0))?;
        std::io::Read::read_to_string(f, &mut text)?;
        Ok(text)
    };
    Ok(Output { status, stdout: read(&mut out)?, stderr: read(&mut err)? })
}

/// Where a server (Pantry or relay) takes connections: agents, admins and
/// requesters all connect a DEALER there (agents take their requests over
/// it).
#[derive(Debug, Clone)]
pub struct Endpoints {
    pub receive: String,
    /// The server's public key under CURVE.
    pub server_key: Option<[u8; 32]>,
}

/// A child process, stopped with SIGTERM (then SIGKILL) on drop.
pub struct Process {
    child: Option<Child>,
    pub pid: u32,
    pub log_path: PathBuf,
    name: &'static str,
}

impl Process {
    /// Starts `command`, its stdout and stderr into `log_path`.
    pub(crate) fn spawn(name: &'static str, command: &mut Command, log_path: PathBuf) -> Result<Process> {
        let log = std::fs::File::create(&log_path)?;
        command.stdout(log.try_clone()?);
        Process::start(name, command, log, log_path)
    }

    /// Starts `command` with its stdin and stdout piped to the caller (a
    /// child that talks to the bench in lines), its stderr into `log_path`.
    pub(crate) fn spawn_piped(
        name: &'static str,
        command: &mut Command,
        log_path: PathBuf,
    ) -> Result<(Process, ChildStdin, ChildStdout)> {
        let log = std::fs::File::create(&log_path)?;
        command.stdin(Stdio::piped()).stdout(Stdio::piped());
        let mut process = Process::start(name, command, log, log_path)?;
        let child = process.child.as_mut().context("a child just started")?;
        let (stdin, stdout) = (child.stdin.take(), child.stdout.take());
        Ok((process, stdin.context("its stdin")?, stdout.context("its stdout")?))
    }

    fn start(name: &'static str, command: &mut Command, stderr: std::fs::File, log_path: PathBuf) -> Result<Process> {
        use std::os::unix::process::CommandExt;
        // SAFETY: prctl is async-signal-safe. The child gets SIGTERM when the
        // bench dies, whatever way it dies.
        unsafe {
            command.pre_exec(|| {
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM);
                Ok(())
            });
        }
        let child = command.stderr(stderr).spawn().with_context(|| format!("cannot start {name} ({command:?})"))?;
        Ok(Process { pid: child.id(), child: Some(child), log_path, name })
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log_path).unwrap_or_default()
    }

    /// Waits until the log contains `needle` or the process exits.
    pub(crate) fn wait_for_log(&mut self, needle: &str, timeout: Duration) -> Result<()> {
        let end = Instant::now() + timeout;
        while Instant::now() < end {
            if self.log().contains(needle) {
                return Ok(());
            }
            if let Some(child) = self.child.as_mut() {
                if let Ok(Some(status)) = child.try_wait() {
                    bail!("{} exited ({status}) before `{needle}`:\n{}", self.name, self.log());
                }
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        bail!("{} did not log `{needle}` within {timeout:?}:\n{}", self.name, self.log())
    }

    pub fn rss_kib(&self) -> Option<u64> {
        rss_kib(self.pid)
    }

    /// How the process ended, if it did.
    pub fn exited(&mut self) -> Option<ExitStatus> {
        self.child.as_mut().and_then(|c| c.try_wait().ok().flatten())
    }

    /// SIGKILL, then reaps it.
    pub fn kill(&mut self) {
        let Some(mut child) = self.child.take() else { return };
        let _ = child.kill();
        let _ = child.wait();
    }

    pub fn stop(&mut self) {
        let Some(mut child) = self.child.take() else { return };
        // SAFETY: kill(2) on our own child's pid.
        unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
        let end = Instant::now() + Duration::from_secs(5);
        while Instant::now() < end {
            if let Ok(Some(_)) = child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        let _ = child.kill();
        let _ = child.wait();
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        self.stop();
    }
}

fn networking_yaml(host_ports: (u16, u16, u16), curve: bool) -> String {
    let (pub_sub, receive, file_service) = host_ports;
    format!(
        "networking:\n  server_host: 127.0.0.1\n  pub_sub_port: {pub_sub}\n  receive_port: {receive}\n  \
         file_service_port: {file_service}\n{}",
        if curve { "  security: curve\n" } else { "" }
    )
}

/// The admin key file `PantryServer::admin_command` writes.
const ADMIN_KEY_FILE: &str = "bench-admin.yml";

/// The real `pantry-server` with a fresh root_dir.
pub struct PantryServer {
    pub process: Process,
    pub endpoints: Endpoints,
    ports: (u16, u16, u16),
    pub curve: bool,
    binary: PathBuf,
    /// Processes started so far on this root_dir (restarts + 1).
    starts: usize,
    // Removed after the process (fields drop in order).
    dir: TempDir,
}

/// How long a restart took.
#[derive(Debug, Clone, Copy)]
pub struct Restarted {
    /// When SIGTERM was sent.
    pub stopping: Instant,
    /// When the old process had exited.
    pub stopped: Instant,
    /// When the new one logged that it started.
    pub started: Instant,
}

impl PantryServer {
    /// Starts the server. Under CURVE, `server_keys.yml` is written first
    /// with `server` as its pair and `client_keys` as the known keys.
    pub fn start(
        binary: &Path,
        server: Option<(&Pair, &[pantry_shared::keys::KnownKey])>,
        log_level: &str,
    ) -> Result<PantryServer> {
        PantryServer::start_with(binary, server, log_level, "")
    }

    /// [`PantryServer::start`] with `extra` appended to server.yml (whole
    /// top-level sections, e.g. `jobs:\n  enabled: false\n`).
    pub fn start_with(
        binary: &Path,
        server: Option<(&Pair, &[pantry_shared::keys::KnownKey])>,
        log_level: &str,
        extra: &str,
    ) -> Result<PantryServer> {
        let key = server.map(|(pair, _)| pair.public);
        PantryServer::launch(binary, key, log_level, extra, |root| match server {
            Some((pair, client_keys)) => keys::write_server_keys(root, pair, client_keys),
            None => Ok(()),
        })
    }

    /// [`PantryServer::start_with`], with `prepare(root_dir)` run after the
    /// key store is written and before the server starts (a database
    /// filled beforehand: `root_dir/pantry.db`).
    pub fn start_prepared(
        binary: &Path,
        server: Option<(&Pair, &[pantry_shared::keys::KnownKey])>,
        log_level: &str,
        extra: &str,
        prepare: impl FnOnce(&Path) -> Result<()>,
    ) -> Result<PantryServer> {
        let key = server.map(|(pair, _)| pair.public);
        PantryServer::launch(binary, key, log_level, extra, |root| {
            if let Some((pair, client_keys)) = server {
                keys::write_server_keys(root, pair, client_keys)?;
            }
            prepare(root)
        })
    }

    /// Another CURVE server with `like`'s key pair: `like`'s
    /// `root_dir/security/curve/server_keys.yml` is copied into the new
    /// root_dir before the start, as an operator adds a server to a
    /// cluster; `extra` as in [`PantryServer::start_with`].
    pub fn start_like(binary: &Path, like: &PantryServer, log_level: &str, extra: &str) -> Result<PantryServer> {
        let key = like.endpoints.server_key.context("a server like a null-security one has no key pair to copy")?;
        let from = like.root().join("security").join("curve").join("server_keys.yml");
        let text = std::fs::read_to_string(&from).with_context(|| format!("cannot read {}", from.display()))?;
        PantryServer::launch(binary, Some(key), log_level, extra, |root| {
            keys::write_private(&root.join("security").join("curve"), "server_keys.yml", &text)
        })
    }

    /// A fresh directory, `prepare(root_dir)` (the key store under CURVE),
    /// server.yml, then the server; returns once it logged that it started.
    fn launch(
        binary: &Path,
        server_key: Option<[u8; 32]>,
        log_level: &str,
        extra: &str,
        prepare: impl FnOnce(&Path) -> Result<()>,
    ) -> Result<PantryServer> {
        let dir = tempfile::Builder::new().prefix("pantry-bench-server-").disable_cleanup(keep_dirs()).tempdir()?;
        let root = dir.path().join("root");
        std::fs::create_dir_all(&root)?;
        if keep_dirs() {
            eprintln!("pantry-server directory kept: {}", dir.path().display());
        }
        let curve = server_key.is_some();
        prepare(&root)?;
        let ports = (free_port()?, free_port()?, free_port()?);
        let config =
            format!("log_level: {log_level}\nroot_dir: {}\n{}{extra}", root.display(), networking_yaml(ports, curve));
        let config_path = dir.path().join("server.yml");
        std::fs::write(&config_path, config)?;
        let mut process = Process::spawn(
            "pantry-server",
            Command::new(binary).arg("-c").arg(&config_path).stdin(Stdio::null()),
            dir.path().join("server.log"),
        )?;
        process.wait_for_log("pantry-server started", Duration::from_secs(60))?;
        let endpoints = Endpoints { receive: format!("tcp://127.0.0.1:{}", ports.1), server_key };
        Ok(PantryServer { process, endpoints, ports, curve, binary: binary.to_owned(), starts: 1, dir })
    }

    /// Its server.yml.
    pub fn config_path(&self) -> PathBuf {
        self.dir.path().join("server.yml")
    }

    /// Stops the server (SIGTERM, SIGKILL after 5 s) and starts it again on
    /// the same root_dir, config and ports; returns once it logged that it
    /// started. Its log is `server-K.log` for the K-th start.
    pub fn restart(&mut self) -> Result<Restarted> {
        let stopping = Instant::now();
        self.process.stop();
        let stopped = Instant::now();
        let started = self.start_again()?;
        Ok(Restarted { stopping, stopped, started })
    }

    /// Starts the server again after `self.process.stop()`, on the same
    /// root_dir, config and ports; returns when it logged that it started.
    pub fn start_again(&mut self) -> Result<Instant> {
        self.starts += 1;
        self.process = Process::spawn(
            "pantry-server",
            Command::new(&self.binary).arg("-c").arg(self.dir.path().join("server.yml")).stdin(Stdio::null()),
            self.dir.path().join(format!("server-{}.log", self.starts)),
        )?;
        self.process.wait_for_log("pantry-server started", Duration::from_secs(60))?;
        Ok(Instant::now())
    }

    /// The server's root_dir.
    pub fn root(&self) -> PathBuf {
        self.dir.path().join("root")
    }

    /// Sizes of `pantry.db` and `pantry.db-wal` in bytes (0 when absent).
    pub fn db_bytes(&self) -> (u64, u64) {
        let size = |name: &str| std::fs::metadata(self.root().join(name)).map(|m| m.len()).unwrap_or(0);
        (size("pantry.db"), size("pantry.db-wal"))
    }

    /// Starts the real `pantry-client` against this server (log level
    /// warn, long heartbeat), with `keys` as its CURVE pair.
    pub fn start_client(&self, binary: &Path, identity: &str, keys: Option<&Pair>) -> Result<Process> {
        let config = self.client_config(identity, keys)?;
        let mut process = self.spawn_client(binary, identity, &config)?;
        process.wait_for_log("pantry-client started", Duration::from_secs(20))?;
        Ok(process)
    }

    /// Writes a `pantry-client` config for `identity` against this server
    /// (its own root_dir, log level info, long heartbeat) and, with `keys`,
    /// its key file. Returns the config's path. The bench's admin sends raw
    /// unsigned requests (signing is measured on its own): the client runs
    /// them (`require_signed: false`).
    pub fn client_config(&self, identity: &str, keys: Option<&Pair>) -> Result<PathBuf> {
        let root = self.dir.path().join(format!("client-{identity}"));
        if let (Some(pair), Some(server_key)) = (keys, &self.endpoints.server_key) {
            let text = keys::client_key_file(server_key, pair);
            keys::write_private(&root.join("security").join("curve"), pantry_shared::keys::CLIENT_KEYS_FILE, &text)?;
        }
        let config = format!(
            "log_level: info\nroot_dir: {}\n{}client:\n  identity: {identity}\n  application: bench\n  \
             environment: idle\n  heartbeat_interval: 300\n  require_signed: false\n",
            root.display(),
            networking_yaml(self.ports, self.curve)
        );
        let path = self.dir.path().join(format!("client-{identity}.yml"));
        std::fs::write(&path, config)?;
        Ok(path)
    }

    /// Starts `pantry-client -c config` without waiting for anything; its
    /// log is `client-IDENTITY.log` in the server's directory.
    pub fn spawn_client(&self, binary: &Path, identity: &str, config: &Path) -> Result<Process> {
        Process::spawn(
            "pantry-client",
            Command::new(binary).arg("-c").arg(config).stdin(Stdio::null()),
            self.dir.path().join(format!("client-{identity}.log")),
        )
    }

    /// A `pantry-admin` command line against this server, run from the
    /// server's directory with `pair` as its CURVE key file
    /// (`.pantry/bench-admin.yml` there); the caller adds the command.
    pub fn admin_command(&self, binary: &Path, pair: &Pair) -> Result<Command> {
        let server_key = self.endpoints.server_key.context("pantry-admin with CURVE needs a CURVE server")?;
        let text = keys::client_key_file(&server_key, pair);
        keys::write_private(&self.dir.path().join(".pantry"), ADMIN_KEY_FILE, &text)?;
        let mut command = Command::new(binary);
        command
            .current_dir(self.dir.path())
            .stdin(Stdio::null())
            .args(["--host", "127.0.0.1", "--receive-port", &self.ports.1.to_string()])
            .args(["--pub-sub-port", &self.ports.0.to_string(), "--file-service-port", &self.ports.2.to_string()])
            .args(["--curve-key-file", ADMIN_KEY_FILE]);
        Ok(command)
    }

    /// Waits until the server logged the registration of `identity`.
    pub fn wait_registered(&mut self, identity: &str, timeout: Duration) -> Result<()> {
        let needle = format!("identity: {identity}");
        self.process.wait_for_log(&needle, timeout)
    }
}

/// The baseline relay, run as `pantry-bench relay` in its own process like
/// the server, so that its CPU, memory and descriptors are measured the
/// same way.
pub struct Relay {
    pub process: Process,
    pub endpoints: Endpoints,
    // Closing it tells the relay to exit.
    _stdin: ChildStdin,
    _dir: TempDir,
}

impl Relay {
    pub fn start(exe: &Path, server: Option<&Pair>) -> Result<Relay> {
        let dir = tempfile::Builder::new().prefix("pantry-bench-relay-").disable_cleanup(keep_dirs()).tempdir()?;
        let receive_port = free_port()?;
        let log_path = dir.path().join("relay.log");
        let mut command = Command::new(exe);
        command.args(["relay", "--receive-port", &receive_port.to_string()]).stdin(Stdio::piped());
        let mut process = Process::spawn("pantry-bench relay", &mut command, log_path)?;
        let mut stdin = process.child.as_mut().and_then(|c| c.stdin.take()).context("relay stdin")?;
        // The secret key goes over stdin, never on the command line.
        let secret = server.map(Pair::secret_z85).unwrap_or_default();
        writeln!(stdin, "{secret}")?;
        stdin.flush()?;
        process.wait_for_log(crate::common::relay::READY, Duration::from_secs(20))?;
        let endpoints =
            Endpoints { receive: format!("tcp://127.0.0.1:{receive_port}"), server_key: server.map(|p| p.public) };
        Ok(Relay { process, endpoints, _stdin: stdin, _dir: dir })
    }
}

/// Reads the relay's one line of configuration from stdin (the CURVE
/// secret key in Z85, or an empty line for no security).
pub fn read_relay_secret() -> Result<Option<[u8; 32]>> {
    let mut line = String::new();
    BufReader::new(std::io::stdin()).read_line(&mut line)?;
    let line = line.trim();
    if line.is_empty() {
        return Ok(None);
    }
    let key = pantry_shared::keys::decode_z85(line).context("relay secret key is not a 40-character Z85 key")?;
    Ok(Some(key))
}
