//! The requests forwarded to clients that await answers, shared by the
//! dispatcher and the socket thread. The dispatcher reserves a request's
//! uuid, names its recipients and expires it, and the limits are checked
//! here; the socket thread routes each answer from its metadata alone
//! ([`Routes::answered`]), so an answer's body is never decoded or copied
//! on its way back to the requester.
//!
//! A pending request belongs to its requester: only the clients it was sent
//! to may answer it, each once.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use pantry_shared::commands::Kind;

use crate::metrics::Metrics;

/// Forwarded requests one requester may have waiting for answers at once,
/// and answers it may be waiting for in all (about 60 bytes each): bounds
/// the memory one requester can pin for the pending requests' lifetime.
pub const MAX_PENDING_PER_REQUESTER: usize = 10_000;
pub const MAX_AWAITED_PER_REQUESTER: usize = 1_000_000;

/// Bytes of requests sent to one agent and not yet answered (or expired)
/// beyond which it is sent no more: it is not reading (a stalled SUB, a key
/// used to pin the server's memory), and what the server would queue for
/// it is bounded by this. The requester is told at once.
pub const MAX_UNANSWERED_BYTES_PER_AGENT: usize = 16 * 1024 * 1024;

/// Why a request cannot be forwarded.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum RouteError {
    #[error("the uuid is already in use by a pending request")]
    UuidInUse,
    #[error("too many requests awaiting answers ({MAX_PENDING_PER_REQUESTER}); wait for some to finish")]
    TooManyRequests,
    #[error(
        "too many answers awaited ({0} for earlier requests; at most {MAX_AWAITED_PER_REQUESTER}); wait for some \
         to finish"
    )]
    TooManyAnswers(usize),
}

impl RouteError {
    /// The limit a request ran into.
    pub fn limit(&self) -> Option<usize> {
        match self {
            RouteError::UuidInUse => None,
            RouteError::TooManyRequests => Some(MAX_PENDING_PER_REQUESTER),
            RouteError::TooManyAnswers(_) => Some(MAX_AWAITED_PER_REQUESTER),
        }
    }
}

/// What became of an answer.
#[derive(Debug, PartialEq, Eq)]
pub enum Answered {
    /// Deliver it to this requester connection.
    Route { requester: Vec<u8>, kind: Kind },
    /// An answer to a rollout's batch: the server's to judge (job `job`:
    /// the answer's uuid may be a batch's passed to another server).
    Rollout { job: String, kind: Kind },
    /// No request with this uuid awaits answers (late, duplicate or unasked).
    NotPending,
    /// The request was not sent to this client, or it answered already.
    NotAsked,
}

/// A request forwarded to clients, awaiting their answers.
struct Pending {
    kind: Kind,
    /// The requester's connection.
    requester: Vec<u8>,
    /// Who owns it: the requester's key, or its connection under null
    /// security.
    owner: String,
    waiting_for: HashSet<String>,
    since: Instant,
    /// Published to at least one client (not just reserved).
    sent: bool,
    /// The request's size, counted against each recipient until it answers.
    size: usize,
    /// A rollout's: the server follows it batch by batch (its recipients
    /// grow, it never expires, nobody is sent the answers).
    rollout: bool,
    /// Other uuids its answers come under (its batches passed to other
    /// servers of a cluster).
    aliases: Vec<String>,
}

/// What one requester has pending.
#[derive(Default)]
struct Load {
    requests: usize,
    awaited: usize,
}

#[derive(Default)]
struct Table {
    pending: HashMap<String, Pending>,
    load: HashMap<String, Load>,
    /// Agent identity → bytes of requests sent to it and not answered.
    unanswered: HashMap<String, usize>,
    /// Alias → the rollout it stands for.
    aliases: HashMap<String, String>,
}

impl Table {
    fn answered_by(&mut self, identity: &str, size: usize) {
        if let Some(bytes) = self.unanswered.get_mut(identity) {
            *bytes = bytes.saturating_sub(size);
            if *bytes == 0 {
                self.unanswered.remove(identity);
            }
        }
    }
}

pub struct Routes {
    table: Mutex<Table>,
    metrics: Arc<Metrics>,
}

impl Routes {
    pub fn new(metrics: Arc<Metrics>) -> Routes {
        Routes { table: Mutex::new(Table::default()), metrics }
    }

    fn table(&self) -> MutexGuard<'_, Table> {
        // A panic while holding the lock leaves the table consistent (each
        // method mutates it last), so a poisoned lock is still usable.
        self.table.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Whether a request with `uuid` awaits answers.
    pub fn is_pending(&self, uuid: &str) -> bool {
        self.table().pending.contains_key(uuid)
    }

    /// Takes `uuid` for a request of `owner` before its recipients are
    /// known (they come back asynchronously).
    pub fn reserve(&self, uuid: &str, kind: Kind, requester: &[u8], owner: &str) -> Result<(), RouteError> {
        let mut table = self.table();
        if table.pending.contains_key(uuid) {
            return Err(RouteError::UuidInUse);
        }
        if table.load.get(owner).map_or(0, |l| l.requests) >= MAX_PENDING_PER_REQUESTER {
            return Err(RouteError::TooManyRequests);
        }
        let pending = Pending {
            kind,
            requester: requester.to_vec(),
            owner: owner.to_owned(),
            waiting_for: HashSet::new(),
            since: Instant::now(),
            sent: false,
            size: 0,
            rollout: false,
            aliases: Vec::new(),
        };
        table.pending.insert(uuid.to_owned(), pending);
        table.load.entry(owner.to_owned()).or_default().requests += 1;
        self.metrics.requests_pending.set(table.pending.len() as i64);
        Ok(())
    }

    /// The request (of `size` bytes) is about to be published to
    /// `recipients`: from now on their answers are routed. Returns the
    /// recipients not sent it, already holding
    /// [`MAX_UNANSWERED_BYTES_PER_AGENT`] of unanswered requests (answered
    /// at once by the caller). With no recipients it is done.
    pub fn await_answers(&self, uuid: &str, recipients: &[String], size: usize) -> Result<Vec<String>, RouteError> {
        let mut table = self.table();
        let Some(owner) = table.pending.get(uuid).map(|p| p.owner.clone()) else { return Ok(Vec::new()) };
        let awaited = table.load.get(&owner).map_or(0, |l| l.awaited);
        if awaited + recipients.len() > MAX_AWAITED_PER_REQUESTER {
            self.finish(&mut table, uuid);
            return Err(RouteError::TooManyAnswers(awaited));
        }
        let (mut sent, mut not_reading) = (HashSet::new(), Vec::new());
        for r in recipients {
            let bytes = table.unanswered.get(r).copied().unwrap_or(0);
            if bytes > 0 && bytes + size > MAX_UNANSWERED_BYTES_PER_AGENT {
                not_reading.push(r.clone());
            } else if sent.insert(r.clone()) {
                *table.unanswered.entry(r.clone()).or_default() += size;
            }
        }
        if sent.is_empty() {
            self.finish(&mut table, uuid);
            return Ok(not_reading);
        }
        let count = sent.len();
        if let Some(pending) = table.pending.get_mut(uuid) {
            pending.waiting_for = sent;
            pending.sent = true;
            pending.size = size;
        }
        table.load.entry(owner).or_default().awaited += count;
        Ok(not_reading)
    }

    /// An answer from the client `from` to `uuid`: whether and where it goes.
    pub fn answered(&self, uuid: &str, from: &str) -> Answered {
        let mut table = self.table();
        let uuid = match table.aliases.get(uuid) {
            Some(job) => job.clone(),
            None => uuid.to_owned(),
        };
        let Some(pending) = table.pending.get_mut(&uuid) else { return Answered::NotPending };
        if !pending.waiting_for.remove(from) {
            return Answered::NotAsked;
        }
        let (requester, kind, rollout) = (pending.requester.clone(), pending.kind, pending.rollout);
        // A rollout is over when the server says so, not when a batch is.
        let done = pending.waiting_for.is_empty() && !rollout;
        let (owner, size) = (pending.owner.clone(), pending.size);
        table.answered_by(from, size);
        if let Some(load) = table.load.get_mut(&owner) {
            load.awaited = load.awaited.saturating_sub(1);
        }
        if done {
            self.finish(&mut table, &uuid);
        }
        if rollout {
            return Answered::Rollout { job: uuid, kind };
        }
        Answered::Route { requester, kind }
    }

    /// A reserved request becomes a rollout: its answers go to the server
    /// (not its requester, which may leave), it waits for each batch's
    /// recipients in turn and ends only with [`Routes::cancel`].
    pub fn follow_rollout(&self, uuid: &str) {
        if let Some(pending) = self.table().pending.get_mut(uuid) {
            pending.rollout = true;
            pending.requester.clear();
        }
    }

    /// A rollout's next batch, of requests of `size` bytes, is about to go
    /// to `recipients`; as [`Routes::await_answers`], the ones not sent it
    /// (not reading).
    pub fn await_batch(&self, uuid: &str, recipients: &[String], size: usize) -> Result<Vec<String>, RouteError> {
        let mut table = self.table();
        let Some(owner) = table.pending.get(uuid).map(|p| p.owner.clone()) else { return Ok(recipients.to_vec()) };
        let awaited = table.load.get(&owner).map_or(0, |l| l.awaited);
        if awaited + recipients.len() > MAX_AWAITED_PER_REQUESTER {
            return Err(RouteError::TooManyAnswers(awaited));
        }
        let (mut sent, mut not_reading) = (Vec::new(), Vec::new());
        for r in recipients {
            let bytes = table.unanswered.get(r).copied().unwrap_or(0);
            if bytes > 0 && bytes + size > MAX_UNANSWERED_BYTES_PER_AGENT {
                not_reading.push(r.clone());
            } else {
                *table.unanswered.entry(r.clone()).or_default() += size;
                sent.push(r.clone());
            }
        }
        let count = sent.len();
        if let Some(pending) = table.pending.get_mut(uuid) {
            pending.waiting_for.extend(sent);
            pending.sent |= count > 0;
            pending.size = size;
        }
        table.load.entry(owner).or_default().awaited += count;
        Ok(not_reading)
    }

    /// Answers to a rollout's batch passed to another server come under
    /// `alias`.
    pub fn alias(&self, uuid: &str, alias: &str) {
        let mut table = self.table();
        if let Some(pending) = table.pending.get_mut(uuid) {
            pending.aliases.push(alias.to_owned());
            table.aliases.insert(alias.to_owned(), uuid.to_owned());
        }
    }

    /// A rollout stops waiting for `identities` (its batch's deadline
    /// passed): their late answers are dropped.
    pub fn give_up(&self, uuid: &str, identities: &[String]) {
        let mut table = self.table();
        let Some(pending) = table.pending.get_mut(uuid) else { return };
        let (owner, size) = (pending.owner.clone(), pending.size);
        let gone: Vec<String> = identities.iter().filter(|i| pending.waiting_for.remove(*i)).cloned().collect();
        for identity in &gone {
            table.answered_by(identity, size);
        }
        if let Some(load) = table.load.get_mut(&owner) {
            load.awaited = load.awaited.saturating_sub(gone.len());
        }
    }

    /// Who has not answered `uuid` yet (to cancel it there).
    pub fn waiting(&self, uuid: &str) -> Vec<String> {
        let table = self.table();
        let mut ids: Vec<String> =
            table.pending.get(uuid).map(|p| p.waiting_for.iter().cloned().collect()).unwrap_or_default();
        ids.sort();
        ids
    }

    /// Forgets `uuid` (refused after it was reserved).
    pub fn cancel(&self, uuid: &str) {
        self.finish(&mut self.table(), uuid);
    }

    /// Forgets the requests older than `ttl`; how many there were.
    pub fn expire(&self, ttl: Duration) -> usize {
        let mut table = self.table();
        let expired: Vec<String> = table
            .pending
            .iter()
            .filter(|(_, p)| !p.rollout && p.since.elapsed() >= ttl)
            .map(|(u, _)| u.clone())
            .collect();
        for uuid in &expired {
            self.finish(&mut table, uuid);
        }
        expired.len()
    }

    fn finish(&self, table: &mut Table, uuid: &str) {
        let Some(done) = table.pending.remove(uuid) else { return };
        for alias in &done.aliases {
            table.aliases.remove(alias);
        }
        for identity in &done.waiting_for {
            table.answered_by(identity, done.size);
        }
        self.metrics.requests_pending.set(table.pending.len() as i64);
        if done.sent {
            self.metrics.request_duration.observe(done.since.elapsed().as_secs_f64());
        }
        if let Some(load) = table.load.get_mut(&done.owner) {
            load.requests -= 1;
            load.awaited = load.awaited.saturating_sub(done.waiting_for.len());
            if load.requests == 0 {
                table.load.remove(&done.owner);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn routes() -> Routes {
        Routes::new(Arc::new(Metrics::new().unwrap()))
    }

    fn names(list: &[&str]) -> Vec<String> {
        list.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn only_recipients_answer_once_each() {
        let r = routes();
        r.reserve("u", Kind::Echo, b"admin-conn", "admin-key").unwrap();
        assert_eq!(r.reserve("u", Kind::Echo, b"other", "other-key"), Err(RouteError::UuidInUse));
        assert_eq!(r.answered("u", "web-1"), Answered::NotAsked, "not yet published");
        r.await_answers("u", &names(&["web-1", "web-2"]), 10).unwrap();
        let routed = Answered::Route { requester: b"admin-conn".to_vec(), kind: Kind::Echo };
        assert_eq!(r.answered("u", "web-1"), routed);
        assert_eq!(r.answered("u", "web-1"), Answered::NotAsked, "twice");
        assert_eq!(r.answered("u", "db-1"), Answered::NotAsked, "not a recipient");
        assert_eq!(r.answered("u", "web-2"), routed);
        assert_eq!(r.answered("u", "web-2"), Answered::NotPending, "done");
        assert!(r.table().load.is_empty() && r.table().unanswered.is_empty());
        // No recipients: done at once, the uuid free again.
        r.reserve("v", Kind::Echo, b"c", "k").unwrap();
        r.await_answers("v", &[], 10).unwrap();
        r.reserve("v", Kind::Echo, b"c", "k").unwrap();
    }

    #[test]
    fn limits_per_requester_and_expiry() {
        let r = routes();
        for i in 0..MAX_PENDING_PER_REQUESTER {
            r.reserve(&i.to_string(), Kind::Echo, b"c", "busy").unwrap();
        }
        assert_eq!(r.reserve("one more", Kind::Echo, b"c", "busy"), Err(RouteError::TooManyRequests));
        r.reserve("one more", Kind::Echo, b"c", "another").unwrap();
        assert_eq!(r.expire(Duration::from_secs(3600)), 0);
        assert_eq!(r.expire(Duration::ZERO), MAX_PENDING_PER_REQUESTER + 1);
        assert!(r.table().load.is_empty() && r.table().pending.is_empty());
        r.reserve("big", Kind::Echo, b"c", "k").unwrap();
        let many: Vec<String> = (0..=MAX_AWAITED_PER_REQUESTER).map(|i| i.to_string()).collect();
        assert_eq!(r.await_answers("big", &many, 10), Err(RouteError::TooManyAnswers(0)));
        assert!(r.table().pending.is_empty(), "refused: forgotten");
    }

    #[test]
    fn a_rollout_waits_batch_by_batch_until_it_ends() {
        let r = routes();
        r.reserve("job", Kind::Exec, b"admin", "k").unwrap();
        r.follow_rollout("job");
        assert!(r.await_batch("job", &names(&["web-1", "web-2"]), 10).unwrap().is_empty());
        let rollout = Answered::Rollout { job: "job".into(), kind: Kind::Exec };
        assert_eq!(r.answered("job", "web-1"), rollout);
        r.give_up("job", &names(&["web-2"]));
        assert_eq!(r.answered("job", "web-2"), Answered::NotAsked, "too late");
        assert!(r.is_pending("job"), "a batch's end is not the rollout's");
        r.alias("job", "job~2");
        r.await_batch("job", &names(&["db-1"]), 10).unwrap();
        assert_eq!(r.expire(Duration::ZERO), 0, "a rollout never expires");
        assert_eq!(r.answered("job~2", "db-1"), rollout);
        r.cancel("job");
        assert!(r.table().aliases.is_empty() && r.table().load.is_empty() && r.table().unanswered.is_empty());
    }

    #[test]
    fn an_agent_that_does_not_answer_is_sent_a_bounded_amount() {
        let r = routes();
        let size = MAX_UNANSWERED_BYTES_PER_AGENT / 4;
        for i in 0..4 {
            r.reserve(&i.to_string(), Kind::Echo, b"c", "k").unwrap();
            assert!(r.await_answers(&i.to_string(), &names(&["stuck", "busy"]), size).unwrap().is_empty(), "{i}");
        }
        r.reserve("5", Kind::Echo, b"c", "k").unwrap();
        assert_eq!(r.await_answers("5", &names(&["stuck", "busy", "idle"]), size).unwrap(), ["stuck", "busy"]);
        // busy answers its first: room for one more; stuck has none.
        assert!(matches!(r.answered("0", "busy"), Answered::Route { .. }));
        r.reserve("6", Kind::Echo, b"c", "k").unwrap();
        assert_eq!(r.await_answers("6", &names(&["stuck", "busy"]), size).unwrap(), ["stuck"]);
        // Expired requests free their bytes too.
        r.expire(Duration::ZERO);
        assert!(r.table().unanswered.is_empty());
        // One request bigger than the budget still goes to an idle agent.
        r.reserve("7", Kind::Echo, b"c", "k").unwrap();
        assert!(r.await_answers("7", &names(&["stuck"]), 2 * MAX_UNANSWERED_BYTES_PER_AGENT).unwrap().is_empty());
    }
}
