//! Code shared by `pantry-server`, `pantry-client` and `pantry-admin`: the
//! wire format, configuration, targeting, CURVE key stores, socket security,
//! logging, the commands (each with its admin half) and the admin's session.

pub mod check;
pub mod commands;
pub mod config;
pub mod docs;
pub mod error;
pub mod facts;
pub mod filter;
pub mod keys;
pub mod logging;
pub mod message;
pub mod monitor;
pub mod program;
pub mod rule;
pub mod security;
pub mod signing;
pub mod systemd;
pub mod topic;
pub mod z85;

pub use error::{ConfigError, DecodeError, KeyStoreError};
pub use message::{BodyPart, Head, Message, Metadata};

/// Version of all three programs.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");
