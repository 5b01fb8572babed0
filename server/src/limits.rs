//! The process's open-file limit. Each agent holds two connections (PUB and
//! ROUTER), an upload a third: with systemd's default soft limit of 1,024 a
//! few hundred agents, or a few hundred stalled handshakes, would use every
//! descriptor. The server raises its soft limit to the hard limit at start
//! and watches how many it uses.

/// The soft limit after raising it to the hard limit, and what it was.
#[derive(Debug, Clone, Copy)]
pub struct FdLimit {
    pub soft: u64,
    pub before: u64,
}

/// Raises the soft limit of open files to the hard limit.
pub fn raise_fd_limit() -> std::io::Result<FdLimit> {
    let mut limit = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: getrlimit writes the struct it is given.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    let before = limit.rlim_cur;
    if limit.rlim_cur < limit.rlim_max {
        let raised = libc::rlimit { rlim_cur: limit.rlim_max, rlim_max: limit.rlim_max };
        // SAFETY: setrlimit reads the struct it is given.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &raised) } != 0 {
            return Err(std::io::Error::last_os_error());
        }
        limit = raised;
    }
    Ok(FdLimit { soft: limit.rlim_cur, before })
}

/// How many descriptors the process has open now.
pub fn open_fds() -> usize {
    std::fs::read_dir("/proc/self/fd").map(|d| d.count()).unwrap_or(0)
}

/// When to warn and when to shed connections still in handshake.
#[derive(Debug, Clone, Copy)]
pub struct FdBudget {
    pub limit: usize,
}

impl FdBudget {
    /// Warn at 80% use.
    pub fn warn_at(self) -> usize {
        self.limit * 8 / 10
    }

    /// At 90% use, connections that have not identified themselves yet
    /// (stalled handshakes, silent peers) are shut down, oldest first, down
    /// to 85%: known keys keep the room they need to connect.
    pub fn shed_at(self) -> usize {
        self.limit * 9 / 10
    }

    pub fn shed_to(self) -> usize {
        self.limit * 85 / 100
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_soft_limit_is_raised_to_the_hard_one() {
        let got = raise_fd_limit().unwrap();
        assert!(got.soft >= got.before);
        assert!(open_fds() > 2);
        let b = FdBudget { limit: 1000 };
        assert_eq!((b.warn_at(), b.shed_at(), b.shed_to()), (800, 900, 850));
    }
}
