//! Typed errors of the shared crate. The binaries wrap them with context.

use std::path::PathBuf;

/// Why a multipart message could not be read as a Pantry message.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    #[error("too few frames: {0} (a message needs a stream and metadata)")]
    TooFewFrames(usize),
    #[error("stream frame is not UTF-8")]
    StreamNotUtf8,
    #[error("stream frame holds a NUL byte before its end")]
    StreamWithNul,
    #[error("metadata is not valid JSON: {0}")]
    MetadataJson(String),
    #[error("metadata is not a JSON object")]
    MetadataNotObject,
    #[error("metadata fields: {0}")]
    MetadataFields(String),
    #[error("uuid of {0} bytes (at most 64)")]
    UuidTooLong(usize),
    #[error("body part {index}: invalid JSON after the \u{2042} marker: {reason}")]
    BodyJson { index: usize, reason: String },
    #[error("body of {message_type}: {reason}")]
    Body { message_type: String, reason: String },
}

/// A configuration file that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("invalid config file {path}: {reason}")]
    Invalid { path: PathBuf, reason: String },
    #[error(
        "invalid config file {path}: `{key}` is not a setting of {program} (it belongs in the other program's file)"
    )]
    OtherProgram { path: PathBuf, key: String, program: &'static str },
}

/// A key file that cannot be read, parsed or written.
#[derive(Debug, thiserror::Error)]
pub enum KeyStoreError {
    #[error("cannot read key file {path}: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("cannot write key file {path}: {source}")]
    Write { path: PathBuf, source: std::io::Error },
    #[error("invalid key file {path}: {reason}")]
    Invalid { path: PathBuf, reason: String },
    #[error("invalid key file {path}: field `{field}`: {reason}")]
    BadKey { path: PathBuf, field: String, reason: String },
    #[error("key file {path} has no `{field}`")]
    Missing { path: PathBuf, field: String },
    #[error("CURVE is not available: the linked libzmq was built without libsodium (install Debian's libzmq3-dev, or build libzmq with --with-libsodium)")]
    CurveUnavailable,
    #[error("cannot generate a CURVE key pair: {0}")]
    Generate(zmq::Error),
}
