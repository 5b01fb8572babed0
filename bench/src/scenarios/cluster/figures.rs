//! The cluster scenario's settings and figures, and how its agents are
//! named: what its parts and its report share.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::common::admin::EchoRun;
use crate::common::env::{seconds, Measure};
use crate::common::handshake::HandshakeRow;
use crate::common::stats::{median, Both};

/// Servers of the cluster (`a`, `b`, `c`).
pub const SERVERS: usize = 3;
pub const SERVER_IDS: [&str; SERVERS] = ["a", "b", "c"];
/// The server that is killed in the failover, and the one its agents move
/// to (the next in their list of hosts).
pub const KILLED: usize = 1;
/// Longest wait for the fan-out's agents to be reachable.
pub const REACHABLE_CAP: Duration = Duration::from_secs(30);

/// What the cluster scenario does.
#[derive(Debug, Clone, Copy, clap::Args, Serialize, Deserialize)]
pub struct Settings {
    /// Agents connected to each of the three servers in the fan-out (the
    /// single server gets three times as many).
    #[arg(long = "agents", default_value_t = 1000)]
    pub agents_per_server: usize,
    /// Agents on each server in the failover.
    #[arg(long = "failover-agents", default_value_t = 1000)]
    pub failover_agents_per_server: usize,
    /// The failover agents' heartbeat, seconds (as the presence scenario's
    /// agents: the default, 300 s, would make "within 3 heartbeat
    /// intervals" 15 minutes).
    #[arg(long, value_parser = seconds, default_value = "5")]
    pub heartbeat: Duration,
    /// `cluster.lease` of every server, seconds (at least 2: the server's
    /// minimum).
    #[arg(long, value_parser = seconds, default_value = "2")]
    pub lease: Duration,
    /// Revocations timed.
    #[arg(long, default_value_t = 20)]
    pub revocations: usize,
    /// Seconds between two echoes to the killed server's agents.
    #[arg(long, value_parser = seconds, default_value = "0.1")]
    pub echo_every: Duration,
    /// Longest wait after the kill for all of them to answer, seconds.
    #[arg(long, value_parser = seconds, default_value = "30")]
    pub failover_timeout: Duration,
}

impl Settings {
    /// The most agent keys the scenario needs.
    pub fn max_agents(&self) -> usize {
        SERVERS * self.agents_per_server.max(self.failover_agents_per_server).max(1)
    }
}

/// `keys:import` on server A.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Import {
    pub keys: usize,
    pub seconds: f64,
    /// What it printed.
    pub said: String,
}

/// Fan-out from an admin on one server of three (`pantry`) against one
/// server with all the agents (`baseline`).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct FanoutCompare {
    /// Agents per server asked for, and connected (fewer when the
    /// open-file limit says so).
    pub wanted_per_server: usize,
    pub per_server: usize,
    /// Pools built anew each round (both did not fit at once).
    pub sequential: bool,
    pub p50_ms: Both<Option<f64>>,
    pub p99_ms: Both<Option<f64>>,
    /// The time until the last answer of the agents the server listed,
    /// p50 (medians over rounds): the same as `p50_ms` when every agent
    /// was listed; and the fewest agents listed by one echo.
    pub p50_listed_ms: Both<Option<f64>>,
    pub fewest_listed: Both<Option<usize>>,
    pub incomplete: Both<usize>,
    pub attempted: Both<usize>,
    /// From the first connect until every agent answered, s (first build).
    pub setup_s: Both<Option<f64>>,
    /// All servers' CPU time per answer, µs.
    pub cpu_us_per_answer: Both<Option<f64>>,
    /// Each cluster server's (a, b, c) CPU time per answer, µs.
    pub cpu_us_per_answer_by_server: Vec<Option<f64>>,
    /// Groups of agents the admin could not get every answer from before
    /// the echoes were timed, with what the servers said about them (the
    /// echoes were timed anyway, and lost answers).
    pub unreachable: Vec<String>,
}

impl FanoutCompare {
    pub fn agents(&self) -> usize {
        SERVERS * self.per_server
    }
}

/// Revocations on A of keys whose agents are on C.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Revocation {
    pub tries: usize,
    /// From sending `RevokeClient` to A until the agent's connection to C
    /// closed, ms (tries that were cut off).
    pub cut_ms: Vec<f64>,
    /// From sending until A's answer, ms.
    pub answer_ms: Vec<f64>,
    /// Tries not cut off within 5 s.
    pub not_cut: usize,
    /// `cut off a revoked key` lines in C's log.
    pub log_lines: usize,
    /// The revoked agents `status` still lists afterwards, on A and on C
    /// (a single server forgets a revoked key's clients).
    pub listed_after: [usize; 2],
}

impl Revocation {
    pub fn p50_ms(&self) -> Option<f64> {
        median(&self.cut_ms)
    }

    pub fn max_ms(&self) -> Option<f64> {
        self.cut_ms.iter().copied().reduce(f64::max)
    }
}

/// What one echo of the failover said about the killed server's agents.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct GapEcho {
    /// Sent this long after the kill, s.
    pub sent_s: f64,
    /// The agents it was sent to: those that had not answered an earlier
    /// one.
    pub asked: usize,
    /// Of those: listed online in the recipient list, answered, named
    /// offline; the rest were silent (no answer, not named offline).
    pub listed: usize,
    pub answered: usize,
    pub offline: usize,
    pub silent: usize,
    /// Answers that were the agent's first since the kill (an agent may
    /// answer two echoes sent before its first answer arrived).
    pub first: usize,
}

/// SIGKILL of one server of three.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Failover {
    pub wanted_per_server: usize,
    pub per_server: usize,
    pub heartbeat_s: u64,
    pub lease_s: u64,
    pub killed: String,
    pub moved_to: String,
    /// Between two echoes to the moving agents, ms.
    pub echo_every_ms: f64,
    /// The killed server's agents that answered an echo after the kill.
    pub answered: usize,
    /// When the last of them first answered, s after the kill.
    pub all_answered_s: Option<f64>,
    /// The median agent's first answer, s after the kill.
    pub first_answer_p50_s: Option<f64>,
    /// Moves to another server the agents of each server (a, b, c) made
    /// (more than the killed server's agents: some moved again, or agents
    /// of a live server moved), and those that could not make their
    /// sockets (all).
    pub moves: Vec<u64>,
    pub failed_moves: u64,
    /// Why the first failed move failed.
    pub move_error: Option<String>,
    pub echoes: Vec<GapEcho>,
    /// `status` on A afterwards: the failover's agents listed and online,
    /// and the other clients listed (offline: the revoked agents of part 3
    /// and the fan-out's agents the failover did not use).
    pub status_listed: usize,
    pub status_online: usize,
    pub status_others: usize,
    /// An echo from A to every agent afterwards, and the bench's agents it
    /// named offline.
    pub echo_all: Option<EchoRun>,
    pub echo_offline_agents: usize,
}

impl Failover {
    pub fn agents(&self) -> usize {
        SERVERS * self.per_server
    }

    /// Within `intervals` heartbeat intervals, every agent answering and
    /// listed online afterwards.
    pub fn met(&self, intervals: f64) -> bool {
        let total = self.agents();
        self.all_answered_s.is_some_and(|s| s <= intervals * self.heartbeat_s as f64)
            && self.answered == self.per_server
            && self.status_online == total
            && self.echo_offline_agents == 0
            && self.echo_all.as_ref().is_some_and(|e| e.answers == total)
    }

    /// Echoes that named some of the moving agents offline, and echoes in
    /// which some were silent.
    pub fn named_offline_echoes(&self) -> usize {
        self.echoes.iter().filter(|e| e.offline > 0).count()
    }
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Figures {
    pub measure: Measure,
    /// Why the scenario did not run (no etcd).
    pub skipped: Option<String>,
    pub etcd_version: Option<String>,
    pub lease_s: u64,
    /// The bench process's open-file limit (soft), which bounds the agents.
    pub open_files: u64,
    pub import: Option<Import>,
    /// Server a (`pantry`) against the single server (`baseline`).
    pub handshake: Option<HandshakeRow>,
    pub fanout: Option<FanoutCompare>,
    pub revocation: Option<Revocation>,
    pub failover: Option<Failover>,
    /// Parts that failed, and why.
    pub failures: Vec<String>,
}

/// Whether `identity` is one of the first `n` agents
/// ([`crate::common::agents::identity`]).
pub fn is_agent(identity: &str, n: usize) -> bool {
    agent_number(identity).is_some_and(|i| i < n)
}

/// The agent number of `identity` ([`crate::common::agents::identity`]).
pub fn agent_number(identity: &str) -> Option<usize> {
    identity.strip_prefix("agent-")?.parse().ok()
}
