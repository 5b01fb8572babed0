//! `pantry-bench`: the real `pantry-server` measured side by side with a
//! raw-libzmq relay, with 1 to 4,000 agents simulated in this process and
//! up to 9,000 in child processes of it, one connection per agent.
//!
//! Layout, from the bottom up; a module imports only those below it.
//!
//! - `common`: what the scenarios share, importing no scenario.
//!   - `stats`: medians, percentiles, `Both` (a figure of two systems).
//!   - `limits`: the open-file limit, which bounds the simulated agents.
//!   - `keys`: CURVE key pairs and the server's key file.
//!   - `procs`: child processes: `pantry-server`, `pantry-client`, the relay;
//!     what `/proc` says of them.
//!   - `relay`: the baseline relay itself (`pantry-bench relay`).
//!   - `etcd`: an etcd member for the cluster scenario.
//!   - `facts`: made-up machine facts (deterministic: how many a `-F`
//!     filter selects is known beforehand).
//!   - `agents`: the simulated agents; what they send and when they
//!     connect again or move is `agents::session`'s, without sockets; the
//!     bench's own `exec` they answer themselves, `agents::simulated`'s;
//!     pools of them in child processes (`pantry-bench agents`),
//!     `agents::children`.
//!   - `requesters`: fan-out, throughput and pipelined echoes.
//!   - `admin`: an admin's DEALER: `status`, an echo to all.
//!   - `handshake`: the handshake-rate loop, and two servers compared.
//!   - `ring`: everyone's keys; `env`: binaries, [`Measure`](common::env::Measure),
//!     limits, progress.
//!   - `markdown`: figures, targets and the previous run's, as the report
//!     writes them.
//!   - `compare`: two systems side by side at N agents.
//! - `scenarios`: one module each (`fanout_throughput`, `handshake`,
//!   `enrollment`, `presence`, `jobs`, `metrics`, `cluster`, `rollout`,
//!   `facts`, `signing`, `scale`), owning its settings, its figures, its run, its section of
//!   the report and its targets.
//! - `report`: the files of a run (`latest.json`, `latest.md`,
//!   `fanout.svg`) and the previous run read back from `latest.json`.
//! - `driver`: the scenarios in turn, then the report ([`run`]).
//! - `profile`: one load against one server, optionally under `perf`.

pub mod common;
pub mod driver;
pub mod profile;
pub mod report;
pub mod scenarios;

pub use driver::{run, Config};
pub use report::Results;
