//! What the scenarios share; no module here imports a scenario. From the
//! bottom up: figures ([`stats`]), limits, keys, child processes and the
//! relay, made-up machine facts, the simulated agents, the requesting
//! side, an admin, the handshake loop, the key ring, the scenarios'
//! environment, Markdown, and the side-by-side comparison at N agents.

pub mod admin;
pub mod agents;
pub mod compare;
pub mod env;
pub mod etcd;
pub mod facts;
pub mod handshake;
pub mod keys;
pub mod limits;
pub mod markdown;
pub mod procs;
pub mod relay;
pub mod requesters;
pub mod ring;
pub mod stats;
