//! Helpers for the integration tests: start the real `pantry-server`,
//! `pantry-client` and `pantry-admin` binaries on loopback with free ports
//! and temporary state directories, and read what they log.
//!
//! Every wait is bounded in time; every child process is killed on drop.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

pub mod curve;
pub mod etcd;
pub mod plain;

use tempfile::TempDir;

/// Path of one of the workspace's binaries, next to the test executable
/// (`target/<profile>/deps/..`). `cargo test --workspace` builds them first.
pub fn bin(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("test executable path");
    let dir = exe.parent().and_then(Path::parent).expect("target/<profile> directory");
    let path = dir.join(name);
    assert!(path.exists(), "{} is not built: run `cargo build --workspace` first", path.display());
    path
}

/// A TCP port on 127.0.0.1 that was free a moment ago.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).map(|a| a.port()).expect("a free loopback port")
}

/// Polls `check` every 50 ms until it returns true or `timeout` passes.
pub fn wait_until(timeout: Duration, mut check: impl FnMut() -> bool) -> bool {
    let end = Instant::now() + timeout;
    loop {
        if check() {
            return true;
        }
        if Instant::now() >= end {
            return false;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The three ports of one server.
#[derive(Debug, Clone, Copy)]
pub struct Ports {
    pub pub_sub: u16,
    pub receive: u16,
    pub file_service: u16,
}

impl Ports {
    pub fn free() -> Ports {
        Ports { pub_sub: free_port(), receive: free_port(), file_service: free_port() }
    }

    /// Three ports free on every one of `hosts` (loopback addresses), for
    /// servers that each bind one of them on the same ports. Panics after a
    /// bounded number of tries.
    pub fn free_on(hosts: &[&str]) -> Ports {
        let free_everywhere = |port: u16| hosts.iter().all(|host| TcpListener::bind((*host, port)).is_ok());
        for _ in 0..50 {
            let ports = Ports::free();
            let all = [ports.pub_sub, ports.receive, ports.file_service];
            let distinct = all[0] != all[1] && all[1] != all[2] && all[0] != all[2];
            if distinct && all.into_iter().all(free_everywhere) {
                return ports;
            }
        }
        panic!("no three ports free on all of {hosts:?}");
    }

    /// The `networking:` section for a config file.
    pub fn networking_yaml(&self, curve: bool) -> String {
        self.networking_yaml_on(&["127.0.0.1"], curve)
    }

    /// The `networking:` section with `server_host` set to `hosts`: one host
    /// as a string, several as a YAML list.
    pub fn networking_yaml_on(&self, hosts: &[&str], curve: bool) -> String {
        let server_host = match hosts {
            [one] => one.to_string(),
            many => format!("[{}]", many.join(", ")),
        };
        format!(
            "networking:\n  server_host: {server_host}\n  pub_sub_port: {}\n  receive_port: {}\n  file_service_port: {}\n{}",
            self.pub_sub,
            self.receive,
            self.file_service,
            if curve { "  security: curve\n" } else { "" }
        )
    }

    /// Global options that point `pantry-admin` at these ports.
    pub fn admin_args(&self) -> Vec<String> {
        self.admin_args_on(&["127.0.0.1"])
    }

    /// Like [`Ports::admin_args`], with one `--host` per host, in order.
    pub fn admin_args_on(&self, hosts: &[&str]) -> Vec<String> {
        let mut args = Vec::new();
        for host in hosts {
            args.extend(["--host".to_string(), host.to_string()]);
        }
        args.extend([
            "--pub-sub-port".into(),
            self.pub_sub.to_string(),
            "--receive-port".into(),
            self.receive.to_string(),
            "--file-service-port".into(),
            self.file_service.to_string(),
        ]);
        args
    }
}

/// Runs `pantry-admin` from `cwd` with one `--host` per host and `ports`.
pub fn admin_at(cwd: &Path, hosts: &[&str], ports: &Ports, args: &[&str]) -> AdminRun {
    let mut all = ports.admin_args_on(hosts);
    all.extend(args.iter().map(|s| s.to_string()));
    let output = Command::new(bin("pantry-admin"))
        .args(&all)
        .current_dir(cwd)
        .stdin(Stdio::null())
        .output()
        .expect("run pantry-admin");
    AdminRun::from(output)
}

/// A running child process whose output goes to a log file.
pub struct Process {
    child: Option<Child>,
    pub log_path: PathBuf,
}

impl Process {
    /// Starts `program` with `args`, its output going to `log_path`.
    pub fn spawn(program: &Path, args: &[&str], log_path: PathBuf) -> Process {
        Self::spawn_limited(program, args, log_path, None)
    }

    /// Like `spawn`, with the open-file limit (soft and hard) set to `nofile`.
    fn spawn_limited(program: &Path, args: &[&str], log_path: PathBuf, nofile: Option<u64>) -> Process {
        use std::os::unix::process::CommandExt;
        let log = std::fs::File::create(&log_path).expect("create log file");
        let err = log.try_clone().expect("clone log file");
        let mut command = Command::new(program);
        command.args(args).stdin(Stdio::null()).stdout(log).stderr(err);
        if let Some(limit) = nofile {
            // SAFETY: setrlimit is async-signal-safe; it runs in the child
            // between fork and exec.
            unsafe {
                command.pre_exec(move || {
                    let rlimit = libc::rlimit { rlim_cur: limit, rlim_max: limit };
                    if libc::setrlimit(libc::RLIMIT_NOFILE, &rlimit) != 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                    Ok(())
                });
            }
        }
        let child = command.spawn().unwrap_or_else(|e| panic!("cannot start {}: {e}", program.display()));
        Process { child: Some(child), log_path }
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Everything the process has logged so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log_path).unwrap_or_default()
    }

    /// Waits until the log contains `needle`.
    pub fn wait_for_log(&self, needle: &str, timeout: Duration) -> bool {
        wait_until(timeout, || self.log().contains(needle))
    }

    /// Whether the process is still running.
    pub fn is_running(&mut self) -> bool {
        match self.child.as_mut() {
            Some(c) => matches!(c.try_wait(), Ok(None)),
            None => false,
        }
    }

    /// Sends SIGTERM and waits (at most 5 s) for the exit status.
    pub fn terminate(&mut self) -> Option<std::process::ExitStatus> {
        let mut child = self.child.take()?;
        // SAFETY: kill(2) on our own child's pid.
        unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
        let end = Instant::now() + Duration::from_secs(5);
        while Instant::now() < end {
            if let Ok(Some(status)) = child.try_wait() {
                return Some(status);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = child.kill();
        child.wait().ok()
    }

    /// SIGKILL, no clean-up: a crashed process.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A `pantry-server` with its own root_dir and ports.
pub struct Server {
    pub dir: TempDir,
    /// The address it binds (`networking.server_host`).
    pub host: String,
    pub ports: Ports,
    pub curve: bool,
    pub process: Process,
    restarts: usize,
}

impl Server {
    /// Starts a server (log level debug) and waits until it is listening.
    pub fn start(curve: bool) -> Server {
        Self::start_with(curve, "")
    }

    /// Like [`Server::start`], with extra top-level YAML appended to the config.
    pub fn start_with(curve: bool, extra_yaml: &str) -> Server {
        Self::start_limited(curve, extra_yaml, None)
    }

    /// Like [`Server::start_with`], under an open-file limit of `nofile`.
    pub fn start_limited(curve: bool, extra_yaml: &str, nofile: Option<u64>) -> Server {
        Self::on_free_ports(|ports| Self::try_launch("127.0.0.1", ports, curve, "debug", extra_yaml, nofile, |_| {}))
    }

    /// Like [`Server::start_with`], logging at info (as shipped) rather than
    /// debug: for measuring what the logs grow by.
    pub fn start_at_info(curve: bool, extra_yaml: &str) -> Server {
        Self::on_free_ports(|ports| Self::try_launch("127.0.0.1", ports, curve, "info", extra_yaml, None, |_| {}))
    }

    /// Starts a server on ports free a moment ago; another process (a test
    /// running beside) may take one first: then again on others, at most
    /// three times.
    fn on_free_ports(mut launch: impl FnMut(Ports) -> Result<Server, String>) -> Server {
        let mut failure = String::new();
        for _ in 0..3 {
            match launch(Ports::free()) {
                Ok(server) => return server,
                Err(log) if log.contains("Address already in use") => failure = log,
                Err(log) => panic!("server did not start:\n{log}"),
            }
        }
        panic!("server did not start, its ports taken three times:\n{failure}");
    }

    /// Like [`Server::start_with`], with `networking_extra` (two-space
    /// indented lines) added to the `networking:` section.
    pub fn start_with_networking(curve: bool, networking_extra: &str, extra_yaml: &str) -> Server {
        // The harness writes `networking:` last but for `extra_yaml`:
        // indented lines right after it belong to it.
        Self::start_with(curve, &format!("{networking_extra}{extra_yaml}"))
    }

    /// A server bound to `host` (a loopback address) on `ports`; `prepare`
    /// gets its root_dir (created, empty) before it starts, to put state
    /// there (another server's `server_keys.yml`, say).
    pub fn start_on(host: &str, ports: Ports, curve: bool, prepare: impl FnOnce(&Path)) -> Server {
        Self::launch(host, ports, curve, "debug", "", None, |root| {
            std::fs::create_dir_all(root).expect("create root_dir");
            prepare(root)
        })
    }

    /// [`Server::start_on`] with extra top-level YAML (`cluster:`, say).
    pub fn start_on_with(
        host: &str,
        ports: Ports,
        curve: bool,
        extra_yaml: &str,
        prepare: impl FnOnce(&Path),
    ) -> Server {
        Self::launch(host, ports, curve, "debug", extra_yaml, None, |root| {
            std::fs::create_dir_all(root).expect("create root_dir");
            prepare(root)
        })
    }

    fn launch(
        host: &str,
        ports: Ports,
        curve: bool,
        level: &str,
        extra_yaml: &str,
        nofile: Option<u64>,
        prepare: impl FnOnce(&Path),
    ) -> Server {
        Self::try_launch(host, ports, curve, level, extra_yaml, nofile, prepare)
            .unwrap_or_else(|log| panic!("server did not start:\n{log}"))
    }

    /// Starts a server; its log when it did not start.
    fn try_launch(
        host: &str,
        ports: Ports,
        curve: bool,
        level: &str,
        extra_yaml: &str,
        nofile: Option<u64>,
        prepare: impl FnOnce(&Path),
    ) -> Result<Server, String> {
        let dir = tempfile::tempdir().expect("temp dir");
        let root = dir.path().join("root");
        prepare(&root);
        let config = format!(
            "log_level: {level}\nroot_dir: {}\n{}{}",
            root.display(),
            ports.networking_yaml_on(&[host], curve),
            extra_yaml
        );
        std::fs::write(dir.path().join("server.yml"), config).expect("write server.yml");
        let config = dir.path().join("server.yml");
        let log = dir.path().join("server-0.log");
        let process =
            Process::spawn_limited(&bin("pantry-server"), &["-c", config.to_str().expect("utf-8 path")], log, nofile);
        let mut server = Server { dir, host: host.to_owned(), ports, curve, process, restarts: 0 };
        let started = wait_until(Duration::from_secs(10), || {
            server.process.log().contains("pantry-server started") || !server.process.is_running()
        });
        if started && server.process.log().contains("pantry-server started") {
            Ok(server)
        } else {
            Err(server.process.log())
        }
    }

    fn spawn(dir: &TempDir, generation: usize) -> Process {
        let config = dir.path().join("server.yml");
        let log = dir.path().join(format!("server-{generation}.log"));
        Process::spawn(&bin("pantry-server"), &["-c", config.to_str().expect("utf-8 path")], log)
    }

    pub fn root_dir(&self) -> PathBuf {
        self.dir.path().join("root")
    }

    pub fn config_path(&self) -> PathBuf {
        self.dir.path().join("server.yml")
    }

    /// Stops the server (SIGTERM) and starts it again on the same ports
    /// and state.
    pub fn restart(&mut self) {
        self.process.terminate();
        self.restarts += 1;
        self.process = Self::spawn(&self.dir, self.restarts);
        assert!(
            self.process.wait_for_log("pantry-server started", Duration::from_secs(10)),
            "server did not restart:\n{}",
            self.process.log()
        );
    }

    /// SIGKILLs the server (no shutdown at all) and starts it again.
    pub fn kill_and_restart(&mut self) {
        self.process.kill();
        self.restart();
    }

    /// Restarts without waiting for the start line on stdout: for a config
    /// that logs to a file. The caller waits on that file.
    pub fn restart_quietly(&mut self) {
        self.process.terminate();
        self.restarts += 1;
        self.process = Self::spawn(&self.dir, self.restarts);
    }

    /// The server's public key from `server_keys.yml` (CURVE only).
    pub fn public_key(&self) -> String {
        let path = self.root_dir().join("security/curve/server_keys.yml");
        let text = std::fs::read_to_string(&path).expect("server_keys.yml");
        let yaml: serde_yaml::Value = serde_yaml::from_str(&text).expect("server_keys.yml parses");
        yaml["public_key"].as_str().expect("public_key").to_owned()
    }

    pub fn log(&self) -> String {
        self.process.log()
    }

    /// Runs `pantry-admin` against this server from `cwd` (where its
    /// `.pantry/` directory is looked up).
    pub fn admin_in(&self, cwd: &Path, args: &[&str]) -> AdminRun {
        admin_at(cwd, &[&self.host], &self.ports, args)
    }

    /// Runs `pantry-admin` from the server's temp dir.
    pub fn admin(&self, args: &[&str]) -> AdminRun {
        self.admin_in(self.dir.path(), args)
    }
}

/// The result of one `pantry-admin` run.
#[derive(Debug)]
pub struct AdminRun {
    pub code: Option<i32>,
    pub stdout: String,
    pub stderr: String,
}

impl AdminRun {
    pub fn success(&self) -> bool {
        self.code == Some(0)
    }
}

impl From<Output> for AdminRun {
    fn from(o: Output) -> Self {
        AdminRun {
            code: o.status.code(),
            stdout: String::from_utf8_lossy(&o.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&o.stderr).into_owned(),
        }
    }
}

/// How an agent describes itself.
#[derive(Debug, Clone, Default)]
pub struct AgentSpec {
    pub identity: String,
    pub application: Option<String>,
    pub environment: Option<String>,
    pub roles: Vec<String>,
    pub heartbeat: u64,
    /// Contents of `client_keys.yml` (CURVE only).
    pub client_keys_yaml: Option<String>,
    /// Whether client.yml sets `identity` (otherwise the agent takes its
    /// key's name or the host name).
    pub identity_in_config: bool,
    /// Extra lines for the `networking:` section (two-space indented).
    pub networking_extra: String,
    /// `networking.server_host` as a list of servers to fail over between
    /// (all on the server's ports); empty: the server's host.
    pub server_hosts: Vec<String>,
    /// Extra lines for the `client:` section (two-space indented).
    pub client_extra: String,
}

impl AgentSpec {
    pub fn new(identity: &str, application: &str, environment: &str, roles: &[&str]) -> AgentSpec {
        AgentSpec {
            identity: identity.into(),
            application: Some(application.into()),
            environment: Some(environment.into()),
            roles: roles.iter().map(|r| r.to_string()).collect(),
            heartbeat: 1,
            client_keys_yaml: None,
            identity_in_config: true,
            networking_extra: String::new(),
            server_hosts: Vec::new(),
            client_extra: String::new(),
        }
    }
}

/// A `pantry-client` with its own root_dir.
pub struct Agent {
    pub dir: TempDir,
    pub spec: AgentSpec,
    pub process: Process,
}

/// An agent's directory and config, not started yet (to run
/// `pantry-client enroll` first, say).
pub struct PreparedAgent {
    pub dir: TempDir,
    pub spec: AgentSpec,
    pub config: PathBuf,
}

impl PreparedAgent {
    /// Runs `pantry-client -c client.yml ARGS...` to completion.
    pub fn run(&self, args: &[&str]) -> AdminRun {
        let mut all = vec!["-c", self.config.to_str().expect("utf-8 path")];
        all.extend_from_slice(args);
        let output =
            Command::new(bin("pantry-client")).args(&all).stdin(Stdio::null()).output().expect("run pantry-client");
        AdminRun::from(output)
    }

    pub fn keys_path(&self) -> PathBuf {
        self.dir.path().join("root/security/curve/client_keys.yml")
    }

    pub fn start(self) -> Agent {
        let process = Process::spawn(
            &bin("pantry-client"),
            &["-c", self.config.to_str().expect("utf-8 path")],
            self.dir.path().join("client.log"),
        );
        Agent { dir: self.dir, spec: self.spec, process }
    }
}

impl Agent {
    /// Starts an agent (log level debug) connected to `server`.
    pub fn start(server: &Server, spec: AgentSpec) -> Agent {
        Self::prepare(server, spec).start()
    }

    /// Writes an agent's config (and key file) for `server`.
    pub fn prepare(server: &Server, spec: AgentSpec) -> PreparedAgent {
        let dir = tempfile::tempdir().expect("temp dir");
        let root = dir.path().join("root");
        if let Some(keys) = &spec.client_keys_yaml {
            let curve = root.join("security/curve");
            std::fs::create_dir_all(&curve).expect("create curve dir");
            std::fs::write(curve.join("client_keys.yml"), keys).expect("write client_keys.yml");
        }
        let mut client = format!("client:\n  heartbeat_interval: {}\n", spec.heartbeat);
        if spec.identity_in_config {
            client.push_str(&format!("  identity: {}\n", spec.identity));
        }
        if let Some(a) = &spec.application {
            client.push_str(&format!("  application: {a}\n"));
        }
        if let Some(e) = &spec.environment {
            client.push_str(&format!("  environment: {e}\n"));
        }
        if !spec.roles.is_empty() {
            client.push_str(&format!("  roles: [{}]\n", spec.roles.join(", ")));
        }
        // Tests restart and revoke in seconds: a short spread (the
        // default, 10 s, is for fleets) unless the test sets its own.
        if !spec.client_extra.contains("reconnect_spread") {
            client.push_str("  reconnect_spread: 1s\n");
        }
        client.push_str(&spec.client_extra);
        let hosts: Vec<&str> = match spec.server_hosts.as_slice() {
            [] => vec![server.host.as_str()],
            list => list.iter().map(String::as_str).collect(),
        };
        let config = format!(
            "log_level: debug\nroot_dir: {}\n{}{}{}",
            root.display(),
            server.ports.networking_yaml_on(&hosts, server.curve),
            spec.networking_extra,
            client
        );
        let path = dir.path().join("client.yml");
        std::fs::write(&path, config).expect("write client.yml");
        PreparedAgent { dir, spec, config: path }
    }

    pub fn log(&self) -> String {
        self.process.log()
    }
}

/// Waits until `status --json` lists exactly `identities` (in any order)
/// online.
pub fn wait_for_status(server: &Server, cwd: &Path, extra: &[&str], identities: &[&str], timeout: Duration) -> bool {
    let mut want: Vec<String> = identities.iter().map(|s| s.to_string()).collect();
    want.sort();
    wait_until(timeout, || {
        let mut args: Vec<&str> = extra.to_vec();
        args.extend(["status", "--json"]);
        let run = server.admin_in(cwd, &args);
        if !run.success() {
            return false;
        }
        let Ok(list) = serde_json::from_str::<serde_json::Value>(&run.stdout) else { return false };
        let mut got: Vec<String> = list
            .as_array()
            .map(|a| {
                a.iter()
                    .filter(|c| c["state"] == "online")
                    .filter_map(|c| c["identity"].as_str().map(str::to_owned))
                    .collect()
            })
            .unwrap_or_default();
        got.sort();
        got == want
    })
}
