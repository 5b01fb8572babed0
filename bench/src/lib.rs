//! `pantry-bench`: the real `pantry-server` measured side by side with a
//! raw-libzmq relay, with 1 to 4,000 agents simulated in this process.
//!
//! [`harness::run`] does everything `make bench` shows: fan-out latency,
//! throughput, handshake rate and memory, Pantry against the baseline,
//! enrollment with tokens, presence (offline clients named at once, a
//! killed agent, a server restart), the job store (on vs off, `jobs` over
//! a full store, database size per job), metrics (on vs off, a scrape of
//! `/metrics` with 4,000 agents) and a cluster of three servers on etcd
//! (fan-out across servers, failover, revocation, handshake rate) (CURVE,
//! Pantry only), and writes `latest.md` and `fanout.svg`.

pub mod agents;
pub mod cluster;
pub mod enrollment;
pub mod etcd;
pub mod handshake;
pub mod harness;
pub mod jobs;
pub mod keys;
pub mod limits;
pub mod metrics;
pub mod presence;
pub mod previous;
pub mod procs;
pub mod profile;
pub mod relay;
pub mod report;
pub mod requesters;
pub mod stats;

pub use harness::{run, Config, Results};
