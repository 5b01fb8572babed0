//! What the programs do alike around their own work: load the config (or
//! the built-in defaults), and for the server and the agent `check-config`,
//! the log level (the config's, raised by `-v` or `-d`), opening the log,
//! and on SIGHUP reopening it and re-reading the level.

use std::path::{Path, PathBuf};

use anyhow::Context as _;
use slog::{error, Level};

use crate::config::{Config, Program};
use crate::error::ConfigError;
use crate::logging::{self, LogTarget, Logging};

/// The config at `path`, or the defaults without one.
pub fn load_config(path: Option<&Path>, program: Program) -> Result<Config, ConfigError> {
    match path {
        Some(path) => Config::load(path, program),
        None => Ok(Config::defaults(program)),
    }
}

/// How the server or the agent was started: its config file and `-v`/`-d`.
pub struct Invocation {
    pub program: Program,
    pub config: Option<PathBuf>,
    pub verbose: bool,
    pub debug: bool,
}

impl Invocation {
    /// `check-config`: prints the report on the config (and, with `keys`,
    /// its key store) and exits.
    pub fn check_config(&self, keys: crate::check::KeyCheck) -> ! {
        crate::check::exit_with_report(self.config.as_deref(), self.program, keys)
    }

    pub fn load_config(&self) -> Result<Config, ConfigError> {
        load_config(self.config.as_deref(), self.program)
    }

    /// The log level from the config, raised by `-v` or `-d`.
    pub fn log_level(&self, config: &Config) -> Level {
        logging::effective_level(config.log_level, self.verbose, self.debug)
    }

    /// Opens the log the config names, at [`Invocation::log_level`].
    pub fn start_logging(&self, config: &Config) -> anyhow::Result<Logging> {
        let target = LogTarget::from_config(&config.log_to, &config.syslog_program_name);
        logging::init(&target, self.log_level(config)).with_context(|| format!("cannot open log {}", config.log_to))
    }

    /// SIGHUP: reopens the log file (logrotate) and re-reads `log_level`
    /// from the config; a config that no longer loads keeps the running
    /// settings.
    pub fn reload(&self, logging: &Logging) {
        let log = &logging.logger;
        if let Err(e) = logging.reopen() {
            error!(log, "cannot reopen the log file"; "error" => %e);
        }
        if let Some(path) = &self.config {
            match Config::load(path, self.program) {
                Ok(config) => logging.set_level(self.log_level(&config)),
                Err(e) => error!(log, "config not reloaded; keeping the running settings"; "error" => %e),
            }
        }
    }
}
