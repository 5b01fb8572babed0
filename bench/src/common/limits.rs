//! The open-file limit decides how many agents one process can simulate:
//! each agent holds a DEALER socket, which costs a TCP connection and a
//! mailbox (an eventfd). More agents than one process holds run in child
//! processes ([`crate::common::agents::children`]).

use serde::{Deserialize, Serialize};

/// File descriptors one simulated agent holds in the bench process.
pub const FDS_PER_AGENT: u64 = 2;

/// With a DEALER monitor (the presence, scale and job-store scenarios'
/// agents): two more sockets, two more mailboxes.
pub const FDS_PER_MONITORED_AGENT: u64 = 4;

/// What a failing-over agent (a monitored one) holds on top while it moves
/// to another server: its closed sockets' three mailboxes until libzmq's
/// reaper has closed them (a whole server's agents move at once).
pub const FDS_PER_MOVING_AGENT: u64 = 3;

/// Descriptors kept free for contexts, requesters, monitors, logs, pipes.
pub const RESERVED_FDS: u64 = 600;

/// RLIMIT_NOFILE before and after raising the soft limit.
#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
pub struct FdLimits {
    pub soft_before: u64,
    pub soft: u64,
    pub hard: u64,
}

impl FdLimits {
    /// How many agents fit in one pool with these limits.
    pub fn max_agents(&self) -> usize {
        (self.soft.saturating_sub(RESERVED_FDS) / FDS_PER_AGENT) as usize
    }

    /// How many agents with a DEALER monitor fit in one pool.
    pub fn max_monitored_agents(&self) -> usize {
        (self.soft.saturating_sub(RESERVED_FDS) / FDS_PER_MONITORED_AGENT) as usize
    }

    /// Agents per server that fit in the failover with `servers` servers:
    /// the killed server's fail over (monitored, and moving all at once),
    /// the others' are plain agents.
    pub fn max_failover_agents_per_server(&self, servers: usize) -> usize {
        let per = FDS_PER_MONITORED_AGENT + FDS_PER_MOVING_AGENT + (servers as u64).saturating_sub(1) * FDS_PER_AGENT;
        (self.soft.saturating_sub(RESERVED_FDS) / per) as usize
    }

    /// Whether a Pantry pool and a baseline pool of `n` agents fit at once.
    pub fn both_pools_fit(&self, n: usize) -> bool {
        2 * n <= self.max_agents()
    }
}

fn get() -> std::io::Result<libc::rlimit> {
    let mut limit = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: getrlimit writes one rlimit into the pointer it is given.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(limit)
}

/// The open-file limit the largest scenario wants (the cluster's failover:
/// 3 × 1,000 monitored agents, one server's moving at once, about 22,600).
const WANTED_NOFILE: u64 = 65_536;

/// Raises the soft open-file limit to the hard limit (capped by the kernel's
/// `nr_open` when the hard limit is infinite), and the hard limit itself to
/// `WANTED_NOFILE` when allowed (root). Child processes inherit it.
pub fn raise_nofile() -> std::io::Result<FdLimits> {
    let before = get()?;
    let nr_open = std::fs::read_to_string("/proc/sys/fs/nr_open")
        .ok()
        .and_then(|s| s.trim().parse::<u64>().ok())
        .unwrap_or(1 << 20);
    let mut target = before.rlim_max;
    if target == libc::RLIM_INFINITY {
        target = nr_open as libc::rlim_t;
    } else if (target as u64) < WANTED_NOFILE.min(nr_open) {
        let wanted = WANTED_NOFILE.min(nr_open) as libc::rlim_t;
        let raised = libc::rlimit { rlim_cur: wanted, rlim_max: wanted };
        // SAFETY: setrlimit reads one rlimit; without the privilege it
        // fails with EPERM and changes nothing.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &raised) } == 0 {
            target = wanted;
        }
    }
    let now = get()?;
    if target > now.rlim_cur {
        let raised = libc::rlimit { rlim_cur: target, rlim_max: now.rlim_max };
        // SAFETY: setrlimit reads one rlimit.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &raised) } != 0 {
            return Err(std::io::Error::last_os_error());
        }
    }
    let after = get()?;
    Ok(FdLimits { soft_before: before.rlim_cur as u64, soft: after.rlim_cur as u64, hard: after.rlim_max as u64 })
}
