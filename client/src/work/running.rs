//! The commands running on this agent, by job (the request's uuid), so that
//! `job cancel` can reach them: a cancelled `exec` has its whole process
//! group sent SIGTERM, then SIGKILL after the grace if it is still there,
//! and its answer says `cancelled`.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

#[derive(Default)]
struct Command {
    /// The process group, once the program started.
    group: Option<i32>,
    cancelled: Arc<AtomicBool>,
}

/// Shared by the agent's loop (which cancels) and its worker threads
/// (which run).
#[derive(Clone, Default)]
pub struct Running(Arc<Mutex<HashMap<String, Command>>>);

/// A job running here: its entry goes when this is dropped.
pub struct Started {
    running: Running,
    job: String,
    pub cancelled: Arc<AtomicBool>,
}

impl Started {
    /// The program of the job started in process group `group`.
    pub fn group(&self, group: i32) {
        if let Some(command) = self.running.lock().get_mut(&self.job) {
            command.group = Some(group);
        }
    }

    pub fn is_cancelled(&self) -> bool {
        self.cancelled.load(Ordering::SeqCst)
    }
}

impl Drop for Started {
    fn drop(&mut self) {
        self.running.lock().remove(&self.job);
    }
}

impl Running {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Command>> {
        // The map is consistent after any panic (each call changes one
        // entry), so a poisoned lock is still usable.
        self.0.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// `job` starts running here.
    pub fn start(&self, job: &str) -> Started {
        let command = Command::default();
        let cancelled = command.cancelled.clone();
        self.lock().insert(job.to_owned(), command);
        Started { running: self.clone(), job: job.to_owned(), cancelled }
    }

    /// Cancels `job` if it runs here: SIGTERM to its process group now,
    /// SIGKILL after `grace` if it is still running. Whether it ran.
    pub fn cancel(&self, job: &str, grace: Duration) -> bool {
        let group = {
            let map = self.lock();
            let Some(command) = map.get(job) else { return false };
            command.cancelled.store(true, Ordering::SeqCst);
            command.group
        };
        if let Some(group) = group {
            signal_group(group, libc::SIGTERM);
            let (running, job) = (self.clone(), job.to_owned());
            std::thread::spawn(move || {
                std::thread::sleep(grace);
                if running.lock().get(&job).and_then(|c| c.group) == Some(group) {
                    signal_group(group, libc::SIGKILL);
                }
            });
        }
        true
    }
}

fn signal_group(group: i32, signal: i32) {
    // SAFETY: kill(2) with a negative pid signals the process group of a
    // child this agent started (`process_group(0)` made it its leader).
    unsafe { libc::kill(-group, signal) };
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_cancel_reaches_only_what_runs() {
        let running = Running::default();
        assert!(!running.cancel("nothing", Duration::ZERO));
        let started = running.start("job-1");
        assert!(!started.is_cancelled());
        assert!(running.cancel("job-1", Duration::from_secs(5)));
        assert!(started.is_cancelled());
        drop(started);
        assert!(!running.cancel("job-1", Duration::ZERO), "gone once done");
    }
}
