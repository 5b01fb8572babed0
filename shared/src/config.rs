//! Configuration files (`server.yml`, `client.yml`, SPEC §5).
//!
//! Every key is checked: a misspelled key, a wrong type or an unknown value
//! stops startup with an error that names the key and the file.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use crate::error::ConfigError;
use crate::filter::ClientFilter;

pub const DEFAULT_PUB_SUB_PORT: u16 = 23001;
pub const DEFAULT_RECEIVE_PORT: u16 = 23002;
pub const DEFAULT_FILE_SERVICE_PORT: u16 = 23003;
pub const DEFAULT_HEARTBEAT_INTERVAL: u64 = 300;

/// Which program reads the config: it decides the default `root_dir`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Program {
    Server,
    Client,
}

impl Program {
    /// Whose file it is, for messages.
    pub fn name(self) -> &'static str {
        match self {
            Program::Server => "pantry-server",
            Program::Client => "pantry-client",
        }
    }

    fn state_dir_name(self) -> &'static str {
        match self {
            Program::Server => "server",
            Program::Client => "client",
        }
    }
}

/// A setting that cannot be used, and why.
#[derive(Debug, thiserror::Error)]
#[error("{key}: {reason}")]
struct Problem {
    key: &'static str,
    reason: String,
}

/// Settings only one program reads: in the other program's file, each is a
/// mistake (a `cluster:` in client.yml would silently do nothing).
const SERVER_ONLY: [&str; 6] = ["registry", "jobs", "audit_log", "audit_fail_closed", "metrics", "cluster"];
const CLIENT_ONLY: [&str; 1] = ["client"];
const SERVER_ONLY_NETWORKING: [&str; 2] = ["trust_first_client", "plain_subscribers"];
const CLIENT_ONLY_NETWORKING: [&str; 1] = ["server_public_key"];

/// The first key of the file that belongs to the other program, if any.
fn other_programs_key(value: &serde_yaml::Value, program: Program) -> Option<String> {
    let (top, networking): (&[&str], &[&str]) = match program {
        Program::Server => (&CLIENT_ONLY, &CLIENT_ONLY_NETWORKING),
        Program::Client => (&SERVER_ONLY, &SERVER_ONLY_NETWORKING),
    };
    let map = value.as_mapping()?;
    let has = |m: &serde_yaml::Mapping, key: &str| m.contains_key(serde_yaml::Value::from(key));
    if let Some(key) = top.iter().find(|k| has(map, k)) {
        return Some((*key).to_owned());
    }
    let net = map.get(serde_yaml::Value::from("networking")).and_then(serde_yaml::Value::as_mapping)?;
    networking.iter().find(|k| has(net, k)).map(|k| format!("networking.{k}"))
}

/// The whole file. `client` is read only by the agent.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    #[serde(default = "default_log_to")]
    pub log_to: String,
    #[serde(default)]
    pub log_level: LogLevel,
    #[serde(default = "default_program_name")]
    pub syslog_program_name: String,
    /// Where all persistent state lives; `None` until [`Config::finish`].
    #[serde(default)]
    pub root_dir: Option<PathBuf>,
    #[serde(default)]
    pub networking: Networking,
    #[serde(default)]
    pub client: ClientSection,
    /// server.yml only.
    #[serde(default)]
    pub registry: RegistrySection,
    /// server.yml only: the job store.
    #[serde(default)]
    pub jobs: JobsSection,
    /// server.yml only: where the audit log goes: a file path (default
    /// `root_dir/audit.log`), `syslog` or `stdout`.
    #[serde(default)]
    pub audit_log: Option<String>,
    /// server.yml only: refuse requests when the audit log cannot be
    /// written (fail closed).
    #[serde(default = "default_true")]
    pub audit_fail_closed: bool,
    /// server.yml only: the Prometheus endpoint.
    #[serde(default)]
    pub metrics: MetricsSection,
    /// server.yml only: several servers sharing one fleet through etcd;
    /// absent, the server keeps everything in `root_dir`.
    #[serde(default)]
    pub cluster: Option<ClusterSection>,
}

/// `cluster:` in server.yml.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClusterSection {
    /// etcd endpoints (`http://127.0.0.1:2379`, or `HOST:PORT`).
    pub etcd: Vec<String>,
    /// This server's name in the cluster, unique among its servers.
    pub server_id: String,
    /// The address other servers and agents reach this one at.
    pub advertise: String,
    /// Where the fleet lives in etcd.
    #[serde(default = "default_cluster_prefix")]
    pub prefix: String,
    /// etcd authentication.
    #[serde(default)]
    pub user: Option<String>,
    #[serde(default)]
    pub password: Option<String>,
    /// How long etcd keeps a dead server's clients before they go offline.
    #[serde(default = "default_lease")]
    pub lease: ConfigDuration,
}

fn default_cluster_prefix() -> String {
    "/pantry".into()
}

fn default_lease() -> ConfigDuration {
    ConfigDuration(Duration::from_secs(5))
}

/// `metrics:` in server.yml.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MetricsSection {
    /// `ADDRESS:PORT` to serve `/metrics` and `/healthz` on; absent: off.
    pub listen: Option<std::net::SocketAddr>,
}

/// A size in a config file: `1MiB`, `512KiB`, `2GB`, or a number of bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConfigSize(pub u64);

impl<'de> Deserialize<'de> for ConfigSize {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Bytes(u64),
            Text(String),
        }
        match Raw::deserialize(d)? {
            Raw::Bytes(b) => Ok(ConfigSize(b)),
            Raw::Text(t) => parse_size(&t)
                .map(ConfigSize)
                .ok_or_else(|| serde::de::Error::custom(format!("`{t}` is not a size (e.g. 1MiB, 512KiB, 1048576)"))),
        }
    }
}

fn parse_size(text: &str) -> Option<u64> {
    let text = text.trim();
    let split = text.find(|c: char| !c.is_ascii_digit()).unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let factor: u64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kb" => 1000,
        "kib" => 1 << 10,
        "m" | "mb" => 1_000_000,
        "mib" => 1 << 20,
        "g" | "gb" => 1_000_000_000,
        "gib" => 1 << 30,
        _ => return None,
    };
    number.parse::<u64>().ok()?.checked_mul(factor)
}

/// The job store: every command sent to clients and every change, with the
/// answers.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JobsSection {
    /// Record jobs at all.
    #[serde(default = "default_true")]
    pub enabled: bool,
    /// Jobs older than this are pruned.
    #[serde(default = "default_keep")]
    pub keep: ConfigDuration,
    /// Most output kept per stream of each answer.
    #[serde(default = "default_max_output")]
    pub max_output: ConfigSize,
}

impl Default for JobsSection {
    fn default() -> Self {
        JobsSection { enabled: true, keep: default_keep(), max_output: default_max_output() }
    }
}

fn default_keep() -> ConfigDuration {
    ConfigDuration(std::time::Duration::from_secs(30 * 24 * 3600))
}

fn default_max_output() -> ConfigSize {
    ConfigSize(1 << 20)
}

/// A duration in a config file: `90s`, `5m`, `7d`, `1h 30m`, or a number of
/// seconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConfigDuration(pub std::time::Duration);

impl<'de> Deserialize<'de> for ConfigDuration {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Seconds(u64),
            Text(String),
        }
        match Raw::deserialize(d)? {
            Raw::Seconds(s) => Ok(ConfigDuration(std::time::Duration::from_secs(s))),
            Raw::Text(t) => humantime::parse_duration(&t)
                .map(ConfigDuration)
                .map_err(|e| serde::de::Error::custom(format!("`{t}` is not a duration (e.g. 90s, 5m, 7d): {e}"))),
        }
    }
}

/// The server's registry of clients.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RegistrySection {
    /// Offline clients not seen for this long leave the registry.
    #[serde(default = "default_forget_after")]
    pub forget_after: ConfigDuration,
    /// Facts older than this match no `-F` expression (default: three of
    /// the agent's `facts_interval`s).
    #[serde(default)]
    pub facts_max_age: Option<ConfigDuration>,
}

impl Default for RegistrySection {
    fn default() -> Self {
        RegistrySection { forget_after: default_forget_after(), facts_max_age: None }
    }
}

fn default_forget_after() -> ConfigDuration {
    ConfigDuration(std::time::Duration::from_secs(7 * 24 * 3600))
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogLevel {
    Fatal,
    Error,
    Warn,
    #[default]
    Info,
    Debug,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SecurityMode {
    Curve,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Networking {
    /// One host, or (agents and the admin) a list of servers to fail over
    /// between; the server binds the first and only one.
    #[serde(default)]
    pub server_host: ServerHosts,
    #[serde(default = "default_pub_sub_port")]
    pub pub_sub_port: u16,
    #[serde(default = "default_receive_port")]
    pub receive_port: u16,
    #[serde(default = "default_file_service_port")]
    pub file_service_port: u16,
    /// `None` (absent or null) is no security.
    #[serde(default)]
    pub security: Option<SecurityMode>,
    /// Under CURVE, trust the first client while no key is known.
    #[serde(default = "default_true")]
    pub trust_first_client: bool,
    /// Largest message (bytes) any socket accepts; a bigger one drops that
    /// connection instead of exhausting memory.
    #[serde(default = "default_max_message_size")]
    pub max_message_size: u64,
    /// Agent under CURVE: the server's public key, when client_keys.yml
    /// does not hold it yet (an agent enrolling itself).
    #[serde(default)]
    pub server_public_key: Option<String>,
    /// Server: whether PUB subscriptions in the bare form (SPEC §4, the
    /// original agent) are granted, or only Pantry's exact form.
    #[serde(default)]
    pub plain_subscribers: PlainSubscribers,
    /// Server: CURVE handshakes of client keys admitted per second at most
    /// (0: no bound), so that in a reconnect storm an admin's and the other
    /// servers' handshakes, admitted at once, are not queued behind
    /// thousands of agents'.
    #[serde(default = "default_handshake_rate")]
    pub handshake_rate: u32,
}

pub const DEFAULT_HANDSHAKE_RATE: u32 = 2000;

fn default_handshake_rate() -> u32 {
    DEFAULT_HANDSHAKE_RATE
}

/// `networking.plain_subscribers`: `allow` (the default) grants a bare
/// subscription (`web-1`, what SPEC §4 and the original agent send), whose
/// prefix match lets it read a little more than its own (docs/security.md);
/// `refuse` grants only the exact form Pantry's agents use.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PlainSubscribers {
    #[default]
    Allow,
    Refuse,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClientSection {
    pub identity: Option<String>,
    pub application: Option<String>,
    pub environment: Option<String>,
    #[serde(default)]
    pub roles: Vec<String>,
    #[serde(default = "default_heartbeat")]
    pub heartbeat_interval: u64,
    /// Whether `exec` may run programs on this client.
    #[serde(default = "default_true")]
    pub allow_exec: bool,
    /// How often the agent gathers its facts again (they are also gathered
    /// when a custom fact file changes).
    #[serde(default = "default_facts_interval")]
    pub facts_interval: ConfigDuration,
    /// Custom facts: `*.json`, `*.yaml`, `*.yml` and executables.
    #[serde(default = "default_facts_dir")]
    pub facts_dir: PathBuf,
    /// Run only requests signed by a trusted admin (default: when the
    /// agent has a trust list).
    #[serde(default)]
    pub require_signed: Option<bool>,
    /// After losing the server, the agent connects again after a random
    /// delay up to this long, so that a fleet does not come back all in
    /// the same second after a server restart.
    #[serde(default = "default_reconnect_spread")]
    pub reconnect_spread: ConfigDuration,
}

fn default_reconnect_spread() -> ConfigDuration {
    ConfigDuration(std::time::Duration::from_secs(10))
}

fn default_facts_interval() -> ConfigDuration {
    ConfigDuration(std::time::Duration::from_secs(600))
}

fn default_facts_dir() -> PathBuf {
    PathBuf::from("/etc/pantry/facts.d")
}

fn default_log_to() -> String {
    "stdout".into()
}
fn default_program_name() -> String {
    "pantry".into()
}
fn default_host() -> String {
    "127.0.0.1".into()
}

/// Why a list of hosts is not one.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HostsError {
    #[error("give at least one host")]
    None,
    #[error("may not be empty")]
    Empty,
    #[error("entry {0} is empty")]
    EmptyEntry(usize),
}

/// `networking.server_host`: a host name or address, or a YAML list of
/// them. Every host serves the same three ports; agents and the admin move
/// to the next one when the current one stops answering. Never empty, and
/// no entry is blank, so [`ServerHosts::first`] is always a host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerHosts(Vec<String>);

impl ServerHosts {
    /// A list of hosts, refused when empty or when an entry is blank.
    pub fn new(hosts: Vec<String>) -> Result<ServerHosts, HostsError> {
        if hosts.is_empty() {
            return Err(HostsError::None);
        }
        if let Some(index) = hosts.iter().position(|h| h.trim().is_empty()) {
            return Err(if hosts.len() == 1 { HostsError::Empty } else { HostsError::EmptyEntry(index) });
        }
        Ok(ServerHosts(hosts))
    }

    /// The only host the server binds, and the agent's first choice.
    pub fn first(&self) -> &str {
        // `new` and the deserializer refuse an empty list.
        self.0.first().map(String::as_str).unwrap_or_default()
    }

    pub fn hosts(&self) -> &[String] {
        &self.0
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Always false (a list may not be empty); for clippy's `len` rule.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl Default for ServerHosts {
    fn default() -> Self {
        ServerHosts(vec![default_host()])
    }
}

impl std::fmt::Display for ServerHosts {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0.join(", "))
    }
}

/// One host equal to `other`: what a single-host config compares like.
impl PartialEq<str> for ServerHosts {
    fn eq(&self, other: &str) -> bool {
        self.0.len() == 1 && self.0[0] == other
    }
}

impl PartialEq<&str> for ServerHosts {
    fn eq(&self, other: &&str) -> bool {
        *self == **other
    }
}

impl<'de> Deserialize<'de> for ServerHosts {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Visitor;
        impl<'de> serde::de::Visitor<'de> for Visitor {
            type Value = ServerHosts;

            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a host, or a list of hosts")
            }

            fn visit_str<E: serde::de::Error>(self, host: &str) -> Result<ServerHosts, E> {
                ServerHosts::new(vec![host.to_owned()]).map_err(E::custom)
            }

            fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<ServerHosts, A::Error> {
                let mut hosts = Vec::new();
                while let Some(host) = seq.next_element::<String>()? {
                    hosts.push(host);
                }
                ServerHosts::new(hosts).map_err(serde::de::Error::custom)
            }
        }
        d.deserialize_any(Visitor)
    }
}
fn default_pub_sub_port() -> u16 {
    DEFAULT_PUB_SUB_PORT
}
fn default_receive_port() -> u16 {
    DEFAULT_RECEIVE_PORT
}
fn default_file_service_port() -> u16 {
    DEFAULT_FILE_SERVICE_PORT
}
pub const DEFAULT_MAX_MESSAGE_SIZE: u64 = 16 * 1024 * 1024;

fn default_max_message_size() -> u64 {
    DEFAULT_MAX_MESSAGE_SIZE
}
fn default_true() -> bool {
    true
}
fn default_heartbeat() -> u64 {
    DEFAULT_HEARTBEAT_INTERVAL
}

impl Default for ClientSection {
    fn default() -> Self {
        ClientSection {
            identity: None,
            application: None,
            environment: None,
            roles: Vec::new(),
            heartbeat_interval: DEFAULT_HEARTBEAT_INTERVAL,
            allow_exec: true,
            facts_interval: default_facts_interval(),
            facts_dir: default_facts_dir(),
            require_signed: None,
            reconnect_spread: default_reconnect_spread(),
        }
    }
}

impl Default for Networking {
    fn default() -> Self {
        Networking {
            server_host: ServerHosts::default(),
            pub_sub_port: DEFAULT_PUB_SUB_PORT,
            receive_port: DEFAULT_RECEIVE_PORT,
            file_service_port: DEFAULT_FILE_SERVICE_PORT,
            security: None,
            trust_first_client: true,
            max_message_size: DEFAULT_MAX_MESSAGE_SIZE,
            server_public_key: None,
            plain_subscribers: PlainSubscribers::default(),
            handshake_rate: DEFAULT_HANDSHAKE_RATE,
        }
    }
}

impl Networking {
    /// `tcp://host:port` for one of the ports, on the first host: the one
    /// the server binds.
    pub fn endpoint(&self, port: u16) -> String {
        Self::endpoint_for(self.server_host.first(), port)
    }

    /// `tcp://host:port` on one of `server_host`'s hosts.
    pub fn endpoint_for(host: &str, port: u16) -> String {
        format!("tcp://{host}:{port}")
    }

    /// The servers to try, in order.
    pub fn hosts(&self) -> &[String] {
        self.server_host.hosts()
    }

    pub fn is_curve(&self) -> bool {
        self.security == Some(SecurityMode::Curve)
    }

    pub fn security_name(&self) -> &'static str {
        if self.is_curve() {
            "curve"
        } else {
            "null"
        }
    }
}

impl Config {
    /// Built-in defaults, with `root_dir` in the user's data directory.
    pub fn defaults(program: Program) -> Config {
        Config {
            log_to: default_log_to(),
            log_level: LogLevel::default(),
            syslog_program_name: default_program_name(),
            root_dir: None,
            networking: Networking::default(),
            client: ClientSection::default(),
            registry: RegistrySection::default(),
            jobs: JobsSection::default(),
            audit_log: None,
            audit_fail_closed: true,
            metrics: MetricsSection::default(),
            cluster: None,
        }
        .finish(program)
    }

    /// Read and check `path`; missing values get their defaults.
    pub fn load(path: &Path, program: Program) -> Result<Config, ConfigError> {
        let text =
            std::fs::read_to_string(path).map_err(|source| ConfigError::Read { path: path.to_owned(), source })?;
        Self::parse(&text, path, program)
    }

    /// Check YAML text that came from `path` (named in errors).
    pub fn parse(text: &str, path: &Path, program: Program) -> Result<Config, ConfigError> {
        let invalid = |reason: String| ConfigError::Invalid { path: path.to_owned(), reason };
        // An empty file is a valid config with every default.
        let text = if text.trim().is_empty() { "{}" } else { text };
        let value: serde_yaml::Value = serde_yaml::from_str(text).map_err(|e| invalid(e.to_string()))?;
        if let Some(key) = other_programs_key(&value, program) {
            return Err(ConfigError::OtherProgram { path: path.to_owned(), key, program: program.name() });
        }
        // From the text again: its errors name the key's path.
        let config: Config = serde_yaml::from_str(text).map_err(|e| invalid(e.to_string()))?;
        config.check(program).map_err(|e| invalid(e.to_string()))?;
        Ok(config.finish(program))
    }

    fn check(&self, program: Program) -> Result<(), Problem> {
        let problem = |key: &'static str, reason: String| Err(Problem { key, reason });
        let filter = self.client_filter();
        if let Err(e) = filter.validate() {
            return problem("client", e.to_string());
        }
        if self.client.heartbeat_interval == 0 {
            return problem("client.heartbeat_interval", "must be at least 1 second".into());
        }
        if self.networking.max_message_size < 1024 * 1024 {
            return problem("networking.max_message_size", "must be at least 1048576 (1 MiB)".into());
        }
        // The deserializer refused an empty list or a blank host already.
        if program == Program::Server && self.networking.server_host.len() > 1 {
            return problem(
                "networking.server_host",
                format!(
                    "pantry-server binds one address; give one host, not a list ({}) (agents and the admin take a \
                     list of servers)",
                    self.networking.server_host
                ),
            );
        }
        if self.log_to.trim().is_empty() {
            return problem("log_to", "may not be empty (stdout, syslog or a file path)".into());
        }
        if let Some(cluster) = &self.cluster {
            if cluster.etcd.is_empty() {
                return problem("cluster.etcd", "give at least one etcd endpoint".into());
            }
            if let Err(e) = ClientFilter::check_identity(&cluster.server_id) {
                return problem("cluster.server_id", e.to_string());
            }
            if cluster.advertise.trim().is_empty() {
                return problem("cluster.advertise", "may not be empty".into());
            }
            if !cluster.prefix.starts_with('/') {
                return problem("cluster.prefix", "must start with /".into());
            }
            if cluster.lease.0 < Duration::from_secs(2) {
                return problem("cluster.lease", "at least 2s".into());
            }
        }
        Ok(())
    }

    fn finish(mut self, program: Program) -> Config {
        if self.root_dir.is_none() {
            self.root_dir = Some(default_root_dir(program));
        }
        self
    }

    pub fn root_dir(&self) -> &Path {
        // `finish` always sets it; the fallback only keeps this total.
        self.root_dir.as_deref().unwrap_or(Path::new("."))
    }

    /// The agent's identity, application, environment and roles; the
    /// identity defaults to the host name.
    pub fn client_filter(&self) -> ClientFilter {
        ClientFilter {
            identity: Some(self.client.identity.clone().unwrap_or_else(hostname)),
            application: self.client.application.clone(),
            environment: self.client.environment.clone(),
            roles: self.client.roles.clone(),
        }
    }
}

/// The data directory of a non-root user (`~/.local/share/pantry/server`),
/// or `./.pantry-state/server` when there is no home directory.
pub fn default_root_dir(program: Program) -> PathBuf {
    directories::ProjectDirs::from("", "", "pantry")
        .map(|dirs| dirs.data_dir().to_path_buf())
        .unwrap_or_else(|| PathBuf::from(".pantry-state"))
        .join(program.state_dir_name())
}

/// This machine's host name as `hostname` prints it (often fully
/// qualified: identities may contain dots), the agent's default identity.
pub fn hostname() -> String {
    gethostname::gethostname()
        .into_string()
        .ok()
        .filter(|name| crate::filter::ClientFilter::check_identity(name).is_ok())
        .unwrap_or_else(|| "localhost".into())
}

/// The servers an agent fails over between, in its order: the first one
/// first, the others rotated by a hash of `identity` (FNV-1a: the same
/// order at every start and on every machine), so that when a server dies
/// its agents spread over the others rather than all landing on the next.
pub fn failover_order<T: Clone>(hosts: &[T], identity: &str) -> Vec<T> {
    let Some((first, rest)) = hosts.split_first() else { return Vec::new() };
    let mut order = vec![first.clone()];
    if !rest.is_empty() {
        let hash =
            identity.bytes().fold(0xcbf2_9ce4_8422_2325_u64, |h, b| (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3));
        let mut rest = rest.to_vec();
        let by = (hash % rest.len() as u64) as usize;
        rest.rotate_left(by);
        order.extend(rest);
    }
    order
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Config, ConfigError> {
        Config::parse(text, Path::new("/etc/pantry/server.yml"), Program::Server)
    }

    #[test]
    fn a_dead_servers_agents_spread_over_the_others() {
        let hosts: Vec<String> = ["b", "c", "a"].map(String::from).to_vec();
        let mut next = std::collections::HashMap::new();
        for i in 0..1000 {
            let order = failover_order(&hosts, &format!("web-{i}"));
            assert_eq!(order[0], "b");
            assert_eq!(order.iter().collect::<std::collections::BTreeSet<_>>().len(), 3);
            assert_eq!(order, failover_order(&hosts, &format!("web-{i}")), "the same order every time");
            *next.entry(order[1].clone()).or_insert(0) += 1;
        }
        assert!(next["a"] > 400 && next["c"] > 400, "{next:?}");
        assert_eq!(failover_order(&hosts[..1], "x"), ["b"]);
    }

    #[test]
    fn every_key_is_read() {
        let c = parse_client(
            "log_to: /tmp/x.log\nlog_level: debug\nsyslog_program_name: p\nroot_dir: /srv/p\n\
             networking:\n  server_host: 0.0.0.0\n  pub_sub_port: 1\n  receive_port: 2\n  file_service_port: 3\n  security: curve\n\
             client:\n  identity: h\n  application: a\n  environment: e\n  roles: [r1, r2]\n  heartbeat_interval: 7\n",
        )
        .expect("valid");
        assert_eq!(c.log_to, "/tmp/x.log");
        assert_eq!(c.log_level, LogLevel::Debug);
        assert_eq!(c.root_dir(), Path::new("/srv/p"));
        assert_eq!(c.networking.endpoint(c.networking.receive_port), "tcp://0.0.0.0:2");
        assert!(c.networking.is_curve());
        assert_eq!(c.client.heartbeat_interval, 7);
        assert_eq!(c.client_filter().streams(), ["h", "a", "a.e", "a.e.r1", "a.e.r2"]);
    }

    #[test]
    fn defaults_fill_the_rest() {
        let c = parse("").expect("empty is valid");
        assert_eq!(c.networking.pub_sub_port, 23001);
        assert_eq!(c.networking.receive_port, 23002);
        assert_eq!(c.networking.file_service_port, 23003);
        assert_eq!(c.networking.security, None);
        assert_eq!(c.client.heartbeat_interval, 300);
        assert!(c.root_dir().ends_with("server"));
        let c = parse("networking:\n  security: null\n").expect("null is valid");
        assert!(!c.networking.is_curve());
    }

    fn error_of(text: &str) -> String {
        parse(text).expect_err("must be rejected").to_string()
    }

    #[test]
    fn misspelled_key_names_key_and_file() {
        let e = error_of("networking:\n  pub_sub_prot: 1\n");
        assert!(e.contains("pub_sub_prot") && e.contains("/etc/pantry/server.yml"), "{e}");
        let e = error_of("log_lvl: info\n");
        assert!(e.contains("log_lvl"), "{e}");
    }

    #[test]
    fn wrong_type_names_the_key() {
        let e = error_of("networking:\n  receive_port: many\n");
        assert!(e.contains("receive_port"), "{e}");
        let e = parse_client("client:\n  roles: 5\n").unwrap_err().to_string();
        assert!(e.contains("roles"), "{e}");
    }

    #[test]
    fn unknown_security_names_the_key() {
        let e = error_of("networking:\n  security: curvy\n");
        assert!(e.contains("security") && e.contains("curvy"), "{e}");
    }

    #[test]
    fn durations_read_as_text_or_seconds() {
        assert_eq!(parse("").unwrap().registry.forget_after.0.as_secs(), 7 * 24 * 3600);
        assert_eq!(parse("registry:\n  forget_after: 2s\n").unwrap().registry.forget_after.0.as_secs(), 2);
        assert_eq!(parse("registry:\n  forget_after: 90\n").unwrap().registry.forget_after.0.as_secs(), 90);
        let e = error_of("registry:\n  forget_after: soon\n");
        assert!(e.contains("forget_after") || e.contains("soon"), "{e}");
    }

    #[test]
    fn job_settings_and_sizes() {
        let c = parse("jobs:\n  keep: 2d\n  max_output: 512KiB\naudit_log: syslog\n").unwrap();
        assert_eq!((c.jobs.keep.0.as_secs(), c.jobs.max_output.0), (2 * 86_400, 512 * 1024));
        assert_eq!(c.audit_log.as_deref(), Some("syslog"));
        assert_eq!(parse("").unwrap().jobs.max_output.0, 1 << 20);
        assert!(error_of("jobs:\n  max_output: lots\n").contains("lots"));
        assert_eq!(parse_size("2MB"), Some(2_000_000));
    }

    fn parse_client(text: &str) -> Result<Config, ConfigError> {
        Config::parse(text, Path::new("/etc/pantry/client.yml"), Program::Client)
    }

    #[test]
    fn server_host_is_one_host_or_a_list() {
        let one = parse_client("networking:\n  server_host: pantry.example.com\n").expect("a string");
        assert_eq!(one.networking.hosts(), ["pantry.example.com"]);
        assert_eq!(one.networking.server_host, "pantry.example.com");
        assert_eq!(one.networking.endpoint(7), "tcp://pantry.example.com:7");

        let list = parse_client("networking:\n  server_host: [127.0.0.1, 127.0.0.2]\n  receive_port: 9\n")
            .expect("a flow list");
        assert_eq!(list.networking.hosts(), ["127.0.0.1", "127.0.0.2"]);
        // endpoint() is the first host's; endpoint_for() any of them.
        assert_eq!(list.networking.endpoint(9), "tcp://127.0.0.1:9");
        assert_eq!(Networking::endpoint_for(&list.networking.hosts()[1], 9), "tcp://127.0.0.2:9");
        let block = parse_client("networking:\n  server_host:\n    - a.example.com\n    - b.example.com\n")
            .expect("a block list");
        assert_eq!(block.networking.hosts(), ["a.example.com", "b.example.com"]);
        assert_eq!(parse_client("").unwrap().networking.hosts(), ["127.0.0.1"]);
        // A list of one is one host, for the server too.
        assert_eq!(parse("networking:\n  server_host: [0.0.0.0]\n").unwrap().networking.server_host, "0.0.0.0");
    }

    #[test]
    fn server_host_refusals_name_the_key() {
        for text in [
            "networking:\n  server_host: []\n",
            "networking:\n  server_host: ''\n",
            "networking:\n  server_host: [a, '  ']\n",
            "networking:\n  server_host: [a, [b]]\n",
            "networking:\n  server_host: {a: b}\n",
        ] {
            let e = parse_client(text).expect_err(text).to_string();
            assert!(e.contains("server_host") && e.contains("/etc/pantry/client.yml"), "{text:?}: {e}");
        }
        // The server binds one address: a list of two stops it.
        let e = error_of("networking:\n  server_host: [127.0.0.1, 127.0.0.2]\n");
        assert!(e.contains("networking.server_host") && e.contains("/etc/pantry/server.yml"), "{e}");
        assert!(ServerHosts::new(Vec::new()).is_err());
    }

    #[test]
    fn bad_names_are_rejected() {
        let error_of = |text: &str| parse_client(text).unwrap_err().to_string();
        assert!(error_of("client:\n  roles: ['*all']\n").contains("role"));
        assert!(error_of("client:\n  application: a.b\n").contains("application"));
        assert!(error_of("client:\n  heartbeat_interval: 0\n").contains("heartbeat_interval"));
    }

    #[test]
    fn each_program_refuses_the_others_settings() {
        for (text, key) in [
            ("cluster:\n  etcd: [x]\n  server_id: a\n  advertise: b\n", "cluster"),
            ("jobs:\n  keep: 1d\n", "jobs"),
            ("metrics:\n  listen: 127.0.0.1:9105\n", "metrics"),
            ("networking:\n  plain_subscribers: refuse\n", "networking.plain_subscribers"),
        ] {
            let e = parse_client(text).unwrap_err().to_string();
            assert!(e.contains(&format!("`{key}`")) && e.contains("/etc/pantry/client.yml"), "{e}");
            assert!(e.contains("pantry-client"), "{e}");
        }
        let e = error_of("client:\n  identity: web-1\n");
        assert!(e.contains("`client`") && e.contains("/etc/pantry/server.yml"), "{e}");
        let e = error_of("networking:\n  server_public_key: x\n");
        assert!(e.contains("`networking.server_public_key`"), "{e}");
    }
}
