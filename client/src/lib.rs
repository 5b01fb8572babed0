//! The agent as a library, so that other programs (the benchmark's
//! simulated agents) drive the same code. Layout:
//!
//! - [`agent`]: the loop: sockets, registration, heartbeats, failover,
//!   enrollment while the server does not know the key;
//! - [`work`]: what each request does on the agent (echo, exec, upload);
//! - [`enroll`]: `pantry-client enroll --token`;
//! - [`handshake`]: telling a failed CURVE handshake's likely cause.

pub mod agent;
pub mod enroll;
pub mod handshake;
pub mod work;
