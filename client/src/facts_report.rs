//! When the agent gathers its facts and when it tells the server: at
//! start, every `facts_interval`, and whenever `facts_dir` changes (looked
//! at every heartbeat); gathered on a thread of its own (a fact script may
//! take up to 5 s), so the agent's loop never waits. Every registration
//! says which facts the agent has and since when; the facts themselves go
//! to the server only when they changed, or on a new connection (after a
//! registration the server accepted, so it knows the identity).

use std::path::PathBuf;
use std::sync::mpsc;
use std::time::{Duration, Instant, SystemTime};

use pantry_shared::commands::facts::{self, Report};
use pantry_shared::facts::{hash, Facts};
use pantry_shared::Message;
use slog::{debug, info, warn, Logger};

/// One gathering's result.
struct Gathered {
    facts: Facts,
    warnings: Vec<String>,
    at: SystemTime,
    stamp: u64,
}

pub struct FactsKeeper {
    dir: PathBuf,
    interval: Duration,
    /// The last facts gathered (none before the first gathering ends).
    current: Option<(Facts, String, SystemTime)>,
    /// `facts_dir`'s fingerprint at the last gathering.
    stamp: u64,
    next_gathering: Instant,
    /// A gathering running on its thread.
    running: Option<mpsc::Receiver<Gathered>>,
    /// The hash the server has on this connection (acknowledged, or
    /// refused: not sent again until the facts change).
    server_has: Option<String>,
    /// A report sent and not answered yet.
    pending: Option<String>,
    log: Logger,
}

impl FactsKeeper {
    /// Starts the first gathering.
    pub fn new(dir: PathBuf, interval: Duration, log: Logger) -> FactsKeeper {
        let mut keeper = FactsKeeper {
            dir,
            interval: interval.max(Duration::from_secs(1)),
            current: None,
            stamp: 0,
            next_gathering: Instant::now(),
            running: None,
            server_has: None,
            pending: None,
            log,
        };
        keeper.gather();
        keeper
    }

    fn gather(&mut self) {
        if self.running.is_some() {
            return;
        }
        let (tx, rx) = mpsc::channel();
        let dir = self.dir.clone();
        let spawned = std::thread::Builder::new().name("pantry-facts".into()).spawn(move || {
            let stamp = crate::facts::stamp(&dir);
            let (facts, warnings) = crate::facts::gather(&dir);
            let _ = tx.send(Gathered { facts, warnings, at: SystemTime::now(), stamp });
        });
        match spawned {
            Ok(_) => self.running = Some(rx),
            Err(e) => warn!(self.log, "cannot start gathering facts; trying again later"; "error" => %e),
        }
        self.next_gathering = Instant::now() + self.interval;
    }

    /// At a heartbeat: gathers again when due or when `facts_dir` changed.
    pub fn heartbeat(&mut self) {
        if Instant::now() >= self.next_gathering || crate::facts::stamp(&self.dir) != self.stamp {
            self.gather();
        }
    }

    /// While a gathering runs, the loop looks again this soon.
    pub fn wake_within(&self) -> Option<Duration> {
        self.running.as_ref().map(|_| Duration::from_millis(50))
    }

    /// Takes a finished gathering in; whether the facts changed (the
    /// server is to hear of them).
    pub fn poll(&mut self) -> bool {
        let Some(rx) = &self.running else { return false };
        let gathered = match rx.try_recv() {
            Ok(g) => g,
            Err(mpsc::TryRecvError::Empty) => return false,
            Err(mpsc::TryRecvError::Disconnected) => {
                self.running = None;
                warn!(self.log, "gathering facts failed; trying again at the next interval");
                return false;
            }
        };
        self.running = None;
        self.stamp = gathered.stamp;
        for w in &gathered.warnings {
            warn!(self.log, "fact left out: {}", w; "dir" => self.dir.display().to_string());
        }
        let new_hash = hash(&gathered.facts);
        let changed = self.current.as_ref().is_none_or(|(_, h, _)| *h != new_hash);
        if changed {
            info!(self.log, "facts gathered"; "facts" => gathered.facts.len(), "hash" => &new_hash);
        } else {
            debug!(self.log, "facts gathered, unchanged"; "facts" => gathered.facts.len());
        }
        self.current = Some((gathered.facts, new_hash, gathered.at));
        changed
    }

    /// The facts gathered last (a signed `-F` is checked against them).
    pub fn facts(&self) -> Option<&Facts> {
        self.current.as_ref().map(|(facts, _, _)| facts)
    }

    /// A registration says which facts we have and since when.
    pub fn stamp(&self, registration: &mut Message) {
        if let Some((_, hash, at)) = &self.current {
            let at = humantime::format_rfc3339_seconds(*at).to_string();
            facts::stamp_registration(registration, hash, &at, self.interval.as_secs());
        }
    }

    /// A new connection: the server there may not have our facts.
    pub fn reconnected(&mut self) {
        self.server_has = None;
        self.pending = None;
    }

    /// The report to send (after an accepted registration), when the
    /// server does not have these facts yet.
    pub fn report(&mut self, identity: &str) -> Option<Message> {
        let (facts, hash, at) = self.current.as_ref()?;
        if self.server_has.as_ref() == Some(hash) || self.pending.as_ref() == Some(hash) {
            return None;
        }
        let report = Report {
            facts: facts.clone(),
            gathered: humantime::format_rfc3339_seconds(*at).to_string(),
            interval: self.interval.as_secs(),
            hash: hash.clone(),
        };
        self.pending = Some(hash.clone());
        Some(facts::request(identity, &report))
    }

    /// The server's answer to a report.
    pub fn answered(&mut self, answer: &Message) {
        let Some(hash) = self.pending.take() else { return };
        match answer.error() {
            None => debug!(self.log, "the server has our facts"; "hash" => &hash),
            Some(reason) => warn!(self.log, "the server refused this client's facts: {}", reason;
                "hash" => &hash, "facts_dir" => self.dir.display().to_string()),
        }
        // Refused: not sent again until they change.
        self.server_has = Some(hash);
    }
}
