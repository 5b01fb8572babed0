//! Configuration files (`server.yml`, `client.yml`, SPEC §5).
//!
//! Every key is checked: a misspelled key, a wrong type or an unknown value
//! stops startup with an error that names the key and the file.

use std::path::{Path, PathBuf};

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
    fn state_dir_name(self) -> &'static str {
        match self {
            Program::Server => "server",
            Program::Client => "client",
        }
    }
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
}

impl Default for RegistrySection {
    fn default() -> Self {
        RegistrySection { forget_after: default_forget_after() }
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
    #[serde(default = "default_host")]
    pub server_host: String,
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
        }
    }
}

impl Default for Networking {
    fn default() -> Self {
        Networking {
            server_host: default_host(),
            pub_sub_port: DEFAULT_PUB_SUB_PORT,
            receive_port: DEFAULT_RECEIVE_PORT,
            file_service_port: DEFAULT_FILE_SERVICE_PORT,
            security: None,
            trust_first_client: true,
            max_message_size: DEFAULT_MAX_MESSAGE_SIZE,
            server_public_key: None,
        }
    }
}

impl Networking {
    /// `tcp://host:port` for one of the ports.
    pub fn endpoint(&self, port: u16) -> String {
        format!("tcp://{}:{}", self.server_host, port)
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
        let config: Config =
            if text.trim().is_empty() { serde_yaml::from_str("{}") } else { serde_yaml::from_str(text) }
                .map_err(|e| invalid(e.to_string()))?;
        config.check().map_err(invalid)?;
        Ok(config.finish(program))
    }

    fn check(&self) -> Result<(), String> {
        let filter = self.client_filter();
        filter.validate().map_err(|e| format!("client: {e}"))?;
        if self.client.heartbeat_interval == 0 {
            return Err("client.heartbeat_interval: must be at least 1 second".into());
        }
        if self.networking.max_message_size < 1024 * 1024 {
            return Err("networking.max_message_size: must be at least 1048576 (1 MiB)".into());
        }
        if self.networking.server_host.trim().is_empty() {
            return Err("networking.server_host: may not be empty".into());
        }
        if self.log_to.trim().is_empty() {
            return Err("log_to: may not be empty (stdout, syslog or a file path)".into());
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

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Config, ConfigError> {
        Config::parse(text, Path::new("/etc/pantry/server.yml"), Program::Server)
    }

    #[test]
    fn every_key_is_read() {
        let c = parse(
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
        let e = error_of("client:\n  roles: 5\n");
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

    #[test]
    fn bad_names_are_rejected() {
        assert!(error_of("client:\n  roles: ['*all']\n").contains("role"));
        assert!(error_of("client:\n  application: a.b\n").contains("application"));
        assert!(error_of("client:\n  heartbeat_interval: 0\n").contains("heartbeat_interval"));
    }
}
