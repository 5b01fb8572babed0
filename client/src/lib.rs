//! The agent as a library, so that other programs (the benchmark's
//! simulated agents) drive the same code. Layout:
//!
//! - [`agent`]: the loop: sockets, registration, heartbeats, failover,
//!   enrollment while the server does not know the key;
//! - [`work`]: what each request does on the agent (echo, exec, upload);
//! - [`facts`]: what this machine is (built-in and custom facts), and
//!   [`facts_report`]: when they are gathered and told the server;
//! - [`enroll`]: `pantry-client enroll --token`;
//! - [`handshake`]: telling a failed CURVE handshake's likely cause;
//! - [`trust`]: the admins this agent trusts, and the signature check.

pub mod agent;
pub mod enroll;
pub mod facts;
pub mod facts_report;
pub mod handshake;
pub mod trust;
pub mod work;
