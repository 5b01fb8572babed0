//! The scenarios. Each owns its `Settings` (command-line options whose
//! defaults are the full benchmark's), its `Figures` (what it measured, as
//! kept in `latest.json`), `run`, `targets` and `report` (its section of
//! `latest.md`, its targets table with the previous run's figures). They
//! import `common` only, never each other.

pub mod cluster;
pub mod enrollment;
pub mod facts;
pub mod fanout_throughput;
pub mod handshake;
pub mod jobs;
pub mod metrics;
pub mod presence;
pub mod rollout;
pub mod scale;
pub mod signing;
