//! The client registry: who registered, with which identity, application,
//! environment and roles, when each last checked in, and whether it is
//! online.
//!
//! A client is *online* while the connection its registration came over is
//! up, it has checked in within three of its heartbeat intervals, and (under
//! CURVE) its PUB subscriptions are granted; otherwise *offline*. Only
//! online clients are sent requests; the offline ones a request would have
//! reached are reported to the requester at once. Registrations are kept in
//! the database, so after a restart every known client is listed, offline
//! until it checks in again; offline clients not seen for
//! `registry.forget_after` leave.
//!
//! An identity is never also a stream: a registration whose identity is
//! another client's `app`, `app.env` or `app.env.role` stream, or whose
//! streams are another client's identity, is refused (a message to that
//! name would reach both). An index from stream to identities answers "who
//! receives a message sent to this stream" without scanning every client.

use std::collections::{BTreeSet, HashMap, HashSet, VecDeque};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use actix::prelude::*;
use pantry_shared::commands::recipients::Offline;
use pantry_shared::commands::status::ClientRecord;
use pantry_shared::config::DEFAULT_HEARTBEAT_INTERVAL;
use pantry_shared::facts::FactFilter;
use pantry_shared::filter::{ClientFilter, Identities};
use slog::{debug, info, warn, Logger};

use crate::cluster::{FleetRecord, RegistryChange, RegistryWriter, RewriteRecords};
use crate::direct::DirectChange;
use crate::fact_index::FactIndex;
use crate::metrics::Metrics;
use crate::outbox::{Outbound, Outbox};
use crate::store::{StoredClient, StoredFacts, Write, Writer};

/// Missed heartbeats after which a client is offline.
const MISSED_HEARTBEATS: u32 = 3;
const SWEEP_EVERY: Duration = Duration::from_secs(1);

struct Entry {
    filter: ClientFilter,
    last_seen: SystemTime,
    /// The key that registered this identity (CURVE): no other may.
    key: Option<String>,
    /// The receive-port connection its last registration came over, while
    /// it is open.
    peer: Option<Vec<u8>>,
    heartbeat: Duration,
    /// Whether it was online at the last look (for logging changes).
    was_online: bool,
    /// What it last reported it is.
    facts: Option<Arc<StoredFacts>>,
    /// It takes its requests over `peer` (its DEALER), not a SUB.
    direct: bool,
}

pub struct ClientRegistry {
    curve: bool,
    clients: HashMap<String, Entry>,
    /// Stream → identities subscribed to it (identity, app, app.env,
    /// app.env.role), kept in step with `clients`.
    by_stream: HashMap<String, BTreeSet<String>>,
    /// Connection → the identity that registered over it.
    by_peer: HashMap<Vec<u8>, String>,
    /// Connections closed lately (routing ids are never reused): a
    /// registration handled after its connection's close must not make
    /// its client online over a connection that is gone.
    closed: ClosedPeers,
    /// Keys whose PUB subscriptions are all granted (CURVE).
    listening: HashSet<String>,
    /// In a cluster: where this server's records go, and the other
    /// servers' clients as the watch last saw them.
    fleet: Option<RegistryWriter>,
    remote: HashMap<String, FleetRecord>,
    /// The other servers of the cluster, by id: their links.
    servers: HashMap<String, String>,
    /// Those whose link is up: their clients are reached through them.
    linked: HashSet<String>,
    outbox: Option<Outbox>,
    forget_after: Duration,
    /// `registry.facts_max_age`; `None`: three of each agent's interval.
    facts_max_age: Option<Duration>,
    /// Who has which fact value (this server's clients), for `-F`.
    fact_index: FactIndex,
    db: Writer,
    metrics: Arc<Metrics>,
    log: Logger,
}

impl ClientRegistry {
    /// Writes this server's record of `identity` to the fleet's registry.
    fn publish_record(&self, identity: &str) {
        let (Some(fleet), Some(entry)) = (&self.fleet, self.clients.get(identity)) else { return };
        fleet.put(identity, &self.fleet_record(entry, fleet.server_id()));
    }

    fn fleet_record(&self, entry: &Entry, server: &str) -> FleetRecord {
        FleetRecord {
            application: entry.filter.application.clone(),
            environment: entry.filter.environment.clone(),
            roles: entry.filter.roles.clone(),
            online: entry.was_online,
            last_seen: entry.last_seen.duration_since(SystemTime::UNIX_EPOCH).map_or(0, |d| d.as_secs()),
            server: server.to_owned(),
            key: entry.key.clone(),
            facts: entry.facts.as_ref().map(|f| f.facts.clone()),
            facts_gathered: entry.facts.as_ref().map(|f| unix(f.gathered)),
            facts_interval: entry.facts.as_ref().map(|f| f.interval.as_secs()),
        }
    }

    /// `registry.facts_max_age` from server.yml.
    pub fn set_facts_max_age(&mut self, max_age: Option<Duration>) {
        self.facts_max_age = max_age;
    }

    /// Whether facts gathered at `gathered` every `interval` are recent
    /// enough to be matched.
    fn fresh(&self, gathered: SystemTime, interval: Duration, now: SystemTime) -> bool {
        let max_age = self.facts_max_age.unwrap_or(interval * 3);
        now.duration_since(gathered).map_or(true, |age| age <= max_age)
    }

    /// Whether a client with `facts` is selected by `filter` (none: every
    /// client is): missing or stale facts match no expression.
    fn facts_match(&self, facts: Option<&StoredFacts>, filter: Option<&FactFilter>, now: SystemTime) -> bool {
        let Some(filter) = filter else { return true };
        facts.is_some_and(|f| self.fresh(f.gathered, f.interval, now) && filter.matches(&f.facts))
    }

    fn remote_facts_match(&self, record: &FleetRecord, filter: Option<&FactFilter>, now: SystemTime) -> bool {
        let Some(filter) = filter else { return true };
        match (&record.facts, record.facts_gathered, record.facts_interval) {
            (Some(facts), Some(gathered), Some(interval)) => {
                let gathered = SystemTime::UNIX_EPOCH + Duration::from_secs(gathered);
                self.fresh(gathered, Duration::from_secs(interval), now) && filter.matches(facts)
            }
            _ => false,
        }
    }

    /// In a cluster: records go to etcd on `writer`'s lease; the socket
    /// thread keeps links to the other servers.
    pub fn join_fleet(&mut self, writer: RegistryWriter) {
        self.fleet = Some(writer);
    }

    /// Where the socket thread hears which agents take their requests on
    /// their DEALER, and (in a cluster) which links to keep.
    pub fn set_outbox(&mut self, outbox: Outbox) {
        self.outbox = Some(outbox);
    }

    fn link(&self, server: &str, endpoint: Option<String>) {
        if let Some(outbox) = &self.outbox {
            outbox.send(Outbound::Link { server: server.to_owned(), endpoint });
        }
    }
}

fn unix(t: SystemTime) -> u64 {
    t.duration_since(SystemTime::UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

/// Why a client whose connection is up went offline (under CURVE).
const NOT_LISTENING: &str = "it no longer listens for commands";

impl ClientRegistry {
    pub fn new(
        curve: bool,
        stored: Vec<StoredClient>,
        forget_after: Duration,
        db: Writer,
        metrics: Arc<Metrics>,
        log: Logger,
    ) -> Self {
        let mut registry = ClientRegistry {
            curve,
            clients: HashMap::new(),
            by_stream: HashMap::new(),
            by_peer: HashMap::new(),
            closed: ClosedPeers::default(),
            listening: HashSet::new(),
            fleet: None,
            remote: HashMap::new(),
            servers: HashMap::new(),
            linked: HashSet::new(),
            outbox: None,
            forget_after,
            facts_max_age: None,
            fact_index: FactIndex::default(),
            db,
            metrics,
            log,
        };
        for s in stored {
            let identity = s.client.identity.clone().unwrap_or_default();
            registry.index(&identity, &s.client);
            if let Some(facts) = &s.facts {
                registry.fact_index.add(&Arc::from(identity.as_str()), &facts.facts);
            }
            let entry = Entry {
                filter: s.client,
                last_seen: s.last_seen,
                key: s.key,
                peer: None,
                heartbeat: s.heartbeat,
                was_online: false,
                facts: s.facts,
                direct: false,
            };
            registry.clients.insert(identity, entry);
        }
        registry.metrics.clients_offline.set(registry.clients.len() as i64);
        registry
    }

    fn index(&mut self, identity: &str, filter: &ClientFilter) {
        for stream in filter.streams() {
            self.by_stream.entry(stream).or_default().insert(identity.to_owned());
        }
    }

    fn unindex(&mut self, identity: &str, filter: &ClientFilter) {
        for stream in filter.streams() {
            if let Some(set) = self.by_stream.get_mut(&stream) {
                set.remove(identity);
                if set.is_empty() {
                    self.by_stream.remove(&stream);
                }
            }
        }
    }

    fn remove(&mut self, identity: &str) -> Option<Entry> {
        let entry = self.clients.remove(identity)?;
        let state = if entry.was_online { &self.metrics.clients_online } else { &self.metrics.clients_offline };
        state.dec();
        self.unindex(identity, &entry.filter);
        if let Some(facts) = &entry.facts {
            self.fact_index.remove(identity, &facts.facts);
        }
        if let Some(peer) = &entry.peer {
            self.by_peer.remove(peer);
            if entry.direct {
                self.tell_sockets(DirectChange::Remove { identity: identity.to_owned() });
            }
        }
        self.db.write(Write::ForgetClient(identity.to_owned()));
        if let Some(fleet) = &self.fleet {
            fleet.delete(identity);
        }
        Some(entry)
    }

    /// Why `client` may not register beside the others, if it may not.
    fn confusion(&self, identity: &str, client: &ClientFilter) -> Option<String> {
        if self.by_stream.get(identity).is_some_and(|ids| ids.iter().any(|id| id != identity)) {
            return Some(format!("the identity `{identity}` is another client's application stream"));
        }
        client
            .streams()
            .into_iter()
            .filter(|s| s != identity)
            .find(|s| self.clients.contains_key(s))
            .map(|s| format!("the stream `{s}` is another client's identity"))
    }

    fn tell_sockets(&self, change: DirectChange) {
        if let Some(outbox) = &self.outbox {
            outbox.send(Outbound::Direct(change));
        }
    }

    fn is_online(&self, entry: &Entry, now: SystemTime) -> bool {
        let fresh = now.duration_since(entry.last_seen).map_or(true, |age| age < entry.heartbeat * MISSED_HEARTBEATS);
        // A subscriber must hold its topics; an agent taking its requests
        // on its DEALER has them as soon as its registration is accepted.
        let listening = !self.curve || entry.direct || entry.key.as_ref().is_some_and(|k| self.listening.contains(k));
        entry.peer.is_some() && listening && fresh
    }

    /// Logs the clients whose state changed, and forgets those offline for
    /// longer than `forget_after`.
    fn sweep(&mut self) {
        let now = SystemTime::now();
        let mut changed = Vec::new();
        let mut forget = Vec::new();
        for (identity, entry) in &self.clients {
            let online = self.is_online(entry, now);
            if online != entry.was_online {
                changed.push((identity.clone(), online));
            }
            let age = now.duration_since(entry.last_seen).unwrap_or_default();
            if !online && age >= self.forget_after {
                forget.push(identity.clone());
            }
        }
        for (identity, online) in changed {
            self.note_change(&identity, online, "missed heartbeats or its connection closed");
        }
        for identity in forget {
            if self.remove(&identity).is_some() {
                info!(self.log, "client forgotten: offline longer than registry.forget_after";
                    "identity" => &identity, "forget_after_seconds" => self.forget_after.as_secs());
            }
        }
    }

    fn note_change(&mut self, identity: &str, online: bool, why: &str) {
        let Some(entry) = self.clients.get_mut(identity) else { return };
        if entry.was_online == online {
            return;
        }
        entry.was_online = online;
        self.publish_record(identity);
        let Some(entry) = self.clients.get(identity) else { return };
        let (from, to) = (&self.metrics.clients_offline, &self.metrics.clients_online);
        let (from, to) = if online { (from, to) } else { (to, from) };
        from.dec();
        to.inc();
        let seen = humantime::format_rfc3339_seconds(entry.last_seen).to_string();
        if online {
            debug!(self.log, "client online"; "identity" => identity);
        } else if why == NOT_LISTENING {
            // Its connection is up: a subscription being re-granted, not an
            // event for the operator.
            debug!(self.log, "client offline: {}", why; "identity" => identity, "last_seen" => seen);
        } else {
            info!(self.log, "client offline: {}", why; "identity" => identity, "last_seen" => seen);
        }
    }
}

impl ClientRegistry {
    /// Clients whose registered streams hold `identity`, which a key owns
    /// by name: their registrations are the ones refused. They leave the
    /// registry, and their next check-in is refused ("the stream is another
    /// client's identity") until they stop claiming it.
    fn evict_squatters(&mut self, identity: &str, owner: Option<&str>) {
        let squatters: Vec<String> = self
            .by_stream
            .get(identity)
            .map(|ids| ids.iter().filter(|id| *id != identity).cloned().collect())
            .unwrap_or_default();
        for squatter in squatters {
            let Some(gone) = self.remove(&squatter) else { continue };
            warn!(self.log, "registration refused: its streams hold another key's identity, which that key now \
                registered; the client leaves the registry";
                "identity" => &squatter, "key" => gone.key.as_deref().unwrap_or("-"),
                "streams" => gone.filter.streams().join(" "), "owner" => identity, "owner_key" => owner.unwrap_or("-"));
        }
    }
}

impl Actor for ClientRegistry {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        ctx.run_interval(SWEEP_EVERY, |act, _| act.sweep());
    }
}

/// A client checked in.
#[derive(Message)]
#[rtype(result = "Registered")]
pub struct Register {
    /// With the identity set.
    pub client: ClientFilter,
    /// The sender's key, under CURVE.
    pub key: Option<String>,
    /// The connection it came over.
    pub peer: Vec<u8>,
    /// How often it checks in (absent: the default, 300 s).
    pub heartbeat: Option<Duration>,
    /// The identity is the sender's key's own name in the key store (its
    /// credentials, a token or its first registration bound it): it wins
    /// over another client's stream of the same name.
    pub owns_identity: bool,
    /// The hash of the facts the agent has and when it gathered them.
    pub facts_seen: Option<(String, SystemTime)>,
    /// It takes its requests over `peer` (`requests_on_dealer`).
    pub direct: bool,
}

/// What a registration did.
#[derive(Debug, PartialEq, Eq, MessageResponse)]
pub enum Registered {
    /// First time, or with a new application, environment or roles.
    New,
    /// A heartbeat.
    Again,
    /// Refused, with the reason the agent is told.
    Refused(String),
}

impl Handler<Register> for ClientRegistry {
    type Result = Registered;

    fn handle(&mut self, msg: Register, _: &mut Context<Self>) -> Registered {
        let identity = msg.client.identity.clone().unwrap_or_default();
        let now = SystemTime::now();
        if let Some(entry) = self.clients.get(&identity) {
            if let (Some(bound), Some(key)) = (&entry.key, &msg.key) {
                if bound != key {
                    return Registered::Refused(format!("the identity `{identity}` is registered by another key"));
                }
            }
        }
        if msg.owns_identity {
            self.evict_squatters(&identity, msg.key.as_deref());
        }
        if let Some(reason) = self.confusion(&identity, &msg.client) {
            return Registered::Refused(reason);
        }
        let heartbeat = msg.heartbeat.unwrap_or(Duration::from_secs(DEFAULT_HEARTBEAT_INTERVAL));
        if let Some(old) = self.by_peer.insert(msg.peer.clone(), identity.clone()).filter(|old| *old != identity) {
            if let Some(entry) = self.clients.get_mut(&old) {
                entry.peer = None;
            }
        }
        let mut was_direct = false;
        let mut direct_changed;
        let outcome = match self.clients.get_mut(&identity) {
            Some(entry) => {
                // A reconnection is a new peer (the old one may have closed
                // already, leaving none).
                direct_changed = entry.peer.as_ref() != Some(&msg.peer) || entry.direct != msg.direct;
                was_direct = entry.direct;
                let previous_peer = entry.peer.replace(msg.peer.clone()).filter(|p| *p != msg.peer);
                entry.direct = msg.direct;
                entry.last_seen = now;
                entry.heartbeat = heartbeat;
                if entry.key.is_none() {
                    entry.key = msg.key.clone();
                }
                let changed = entry.filter != msg.client;
                let old = std::mem::replace(&mut entry.filter, msg.client.clone());
                if let Some(previous) = previous_peer {
                    self.by_peer.remove(&previous);
                }
                if changed {
                    direct_changed = true;
                    self.unindex(&identity, &old);
                    self.index(&identity, &msg.client);
                    Registered::New
                } else {
                    Registered::Again
                }
            }
            None => {
                let entry = Entry {
                    filter: msg.client.clone(),
                    last_seen: now,
                    key: msg.key.clone(),
                    peer: Some(msg.peer.clone()),
                    heartbeat,
                    was_online: false,
                    facts: None,
                    direct: msg.direct,
                };
                direct_changed = true;
                self.clients.insert(identity.clone(), entry);
                self.metrics.clients_offline.inc();
                self.index(&identity, &msg.client);
                Registered::New
            }
        };
        // Before this registration's answer, and so before any request to
        // the agent, in the same outbox.
        // Its connection closed while the registration was on its way.
        let gone = self.closed.contains(&msg.peer);
        if gone {
            self.by_peer.remove(&msg.peer);
            if let Some(entry) = self.clients.get_mut(&identity).filter(|e| e.peer.as_ref() == Some(&msg.peer)) {
                entry.peer = None;
            }
        }
        if direct_changed && msg.direct && !gone {
            let streams = msg.client.streams();
            self.tell_sockets(DirectChange::Add { peer: msg.peer.clone(), identity: identity.clone(), streams });
        } else if was_direct && !msg.direct {
            self.tell_sockets(DirectChange::Remove { identity: identity.clone() });
        }
        // The same facts gathered again: fresh again (etcd hears of it once
        // an interval, not at every heartbeat).
        let mut republish = false;
        if let (Some((hash, gathered)), Some(entry)) = (&msg.facts_seen, self.clients.get_mut(&identity)) {
            if let Some(facts) = entry.facts.as_mut().filter(|f| f.hash == *hash && f.gathered < *gathered) {
                republish = gathered.duration_since(facts.gathered).is_ok_and(|d| d >= facts.interval);
                Arc::make_mut(facts).gathered = *gathered;
                self.db.write(Write::ClientFactsSeen { identity: identity.clone(), gathered: *gathered });
            }
        }
        let stored = match outcome {
            Registered::New => {
                Write::Client(StoredClient { client: msg.client, key: msg.key, last_seen: now, heartbeat, facts: None })
            }
            _ => Write::ClientSeen { identity: identity.clone(), last_seen: now },
        };
        self.db.write(stored);
        let online = self.clients.get(&identity).is_some_and(|e| self.is_online(e, now));
        let was_online = self.clients.get(&identity).is_some_and(|e| e.was_online);
        self.note_change(&identity, online, "");
        if (outcome == Registered::New || republish) && was_online == online {
            self.publish_record(&identity);
        }
        outcome
    }
}

/// An agent reported its facts (checked: size, keys).
#[derive(Message)]
#[rtype(result = "Result<(), FactsRefused>")]
pub struct ReportFacts {
    pub identity: String,
    /// The sender's key, under CURVE.
    pub key: Option<String>,
    pub facts: StoredFacts,
}

/// Why a report is not kept.
#[derive(Debug, thiserror::Error)]
pub enum FactsRefused {
    #[error("`{0}` has not registered: facts are kept for registered clients")]
    NotRegistered(String),
    #[error("the identity `{0}` is registered by another key")]
    OtherKey(String),
}

impl Handler<ReportFacts> for ClientRegistry {
    type Result = Result<(), FactsRefused>;

    fn handle(&mut self, msg: ReportFacts, _: &mut Context<Self>) -> Self::Result {
        let entry =
            self.clients.get_mut(&msg.identity).ok_or_else(|| FactsRefused::NotRegistered(msg.identity.clone()))?;
        if let (Some(bound), Some(key)) = (&entry.key, &msg.key) {
            if bound != key {
                return Err(FactsRefused::OtherKey(msg.identity));
            }
        }
        // The same facts again (a reconnection): fresher, nothing else to do.
        if let Some(kept) = entry.facts.as_mut().filter(|f| f.facts == msg.facts.facts) {
            let seen = Arc::make_mut(kept);
            (seen.gathered, seen.interval) = (seen.gathered.max(msg.facts.gathered), msg.facts.interval);
            self.db.write(Write::ClientFactsSeen { identity: msg.identity.clone(), gathered: seen.gathered });
            return Ok(());
        }
        let facts = Arc::new(msg.facts);
        if let Some(old) = entry.facts.replace(facts.clone()) {
            self.fact_index.remove(&msg.identity, &old.facts);
        }
        self.fact_index.add(&Arc::from(msg.identity.as_str()), &facts.facts);
        debug!(self.log, "client facts kept"; "identity" => &msg.identity, "facts" => facts.facts.len(),
            "hash" => &facts.hash);
        self.db.write(Write::ClientFacts { identity: msg.identity.clone(), facts });
        self.publish_record(&msg.identity);
        Ok(())
    }
}

/// A receive-port connection closed: the client that registered over it is
/// offline.
#[derive(Message)]
#[rtype(result = "()")]
pub struct PeerClosed {
    pub peer: Vec<u8>,
}

impl Handler<PeerClosed> for ClientRegistry {
    type Result = ();

    fn handle(&mut self, msg: PeerClosed, _: &mut Context<Self>) {
        self.closed.insert(msg.peer.clone());
        let Some(identity) = self.by_peer.remove(&msg.peer) else { return };
        if let Some(entry) = self.clients.get_mut(&identity) {
            if entry.peer.as_ref() == Some(&msg.peer) {
                entry.peer = None;
            }
        }
        self.note_change(&identity, false, "its connection closed");
    }
}

/// The routing ids of the last [`ClosedPeers::KEPT`] connections closed.
#[derive(Default)]
struct ClosedPeers {
    set: HashSet<Vec<u8>>,
    order: VecDeque<Vec<u8>>,
}

impl ClosedPeers {
    /// Far more than registrations in flight at once.
    const KEPT: usize = 65_536;

    fn insert(&mut self, peer: Vec<u8>) {
        if self.set.insert(peer.clone()) {
            self.order.push_back(peer);
        }
        while self.order.len() > Self::KEPT {
            if let Some(old) = self.order.pop_front() {
                self.set.remove(&old);
            }
        }
    }

    fn contains(&self, peer: &[u8]) -> bool {
        self.set.contains(peer)
    }
}

/// A key's PUB subscriptions are all granted, or no longer.
#[derive(Message)]
#[rtype(result = "()")]
pub struct Listening {
    pub key: String,
    pub listening: bool,
}

impl Handler<Listening> for ClientRegistry {
    type Result = ();

    fn handle(&mut self, msg: Listening, _: &mut Context<Self>) {
        if msg.listening {
            self.listening.insert(msg.key.clone());
        } else {
            self.listening.remove(&msg.key);
        }
        let now = SystemTime::now();
        let changed: Vec<(String, bool)> = self
            .clients
            .iter()
            .filter(|(_, e)| e.key.as_deref() == Some(msg.key.as_str()))
            .map(|(id, e)| (id.clone(), self.is_online(e, now)))
            .collect();
        for (identity, online) in changed {
            self.note_change(&identity, online, NOT_LISTENING);
        }
    }
}

/// Drop every client registered by a (revoked) key.
#[derive(Message)]
#[rtype(result = "()")]
pub struct Forget {
    pub key: String,
}

impl Handler<Forget> for ClientRegistry {
    type Result = ();

    fn handle(&mut self, msg: Forget, _: &mut Context<Self>) {
        self.listening.remove(&msg.key);
        let gone: Vec<String> = self
            .clients
            .iter()
            .filter(|(_, e)| e.key.as_deref() == Some(msg.key.as_str()))
            .map(|(id, _)| id.clone())
            .collect();
        for identity in gone {
            self.remove(&identity);
        }
    }
}

/// `client:forget IDENTITY`: drop one client now.
#[derive(Message)]
#[rtype(result = "Result<(), UnknownClient>")]
pub struct ForgetIdentity {
    pub identity: String,
}

/// `client:forget` named a client the registry does not have.
#[derive(Debug, thiserror::Error)]
#[error("no client `{0}` in the registry")]
pub struct UnknownClient(pub String);

impl Handler<ForgetIdentity> for ClientRegistry {
    type Result = Result<(), UnknownClient>;

    fn handle(&mut self, msg: ForgetIdentity, _: &mut Context<Self>) -> Self::Result {
        self.remove(&msg.identity).map(|_| ()).ok_or(UnknownClient(msg.identity))
    }
}

/// One registered client, as `status` shows it.
pub struct Listed {
    pub filter: ClientFilter,
    pub last_seen: SystemTime,
    pub online: bool,
    /// In a cluster: the server the client is on.
    pub server: Option<String>,
    /// Its facts, when it reported any and the query wants them.
    pub facts: Option<Arc<StoredFacts>>,
    /// Whether they are recent enough to be matched.
    pub facts_fresh: bool,
}

impl Listed {
    pub fn record(&self) -> ClientRecord<'_> {
        ClientRecord {
            client: &self.filter,
            last_seen: self.last_seen,
            online: self.online,
            server: self.server.as_deref(),
        }
    }
}

/// The clients a status filter (and identity patterns) select, sorted by
/// identity.
#[derive(Message)]
#[rtype(result = "Vec<Listed>")]
pub struct Query {
    pub filter: ClientFilter,
    pub identities: Option<Identities>,
    /// `-F`: only the clients whose fresh facts match.
    pub facts: Option<Arc<FactFilter>>,
    /// Whether the answer carries each client's facts (`facts`; `status`
    /// does without).
    pub with_facts: bool,
}

impl Handler<Query> for ClientRegistry {
    type Result = MessageResult<Query>;

    fn handle(&mut self, msg: Query, _: &mut Context<Self>) -> Self::Result {
        let now = SystemTime::now();
        let own = self.fleet.as_ref().map(|f| f.server_id().to_owned());
        let wanted = |id: &str, filter: &ClientFilter| {
            msg.filter.selects(filter) && msg.identities.as_ref().is_none_or(|ids| ids.matches(id))
        };
        let facts = msg.facts.as_deref();
        // With `-F`, only the clients the index selects are looked at.
        let candidates = facts.map(|f| self.fact_index.candidates(f));
        let entries: Box<dyn Iterator<Item = (&String, &Entry)>> = match &candidates {
            Some(ids) => Box::new(ids.iter().filter_map(|id| self.clients.get_key_value(&**id))),
            None => Box::new(self.clients.iter()),
        };
        let mut list: Vec<Listed> = entries
            .filter(|(id, e)| wanted(id, &e.filter))
            // A client that moved to another server is listed as it is there.
            .filter(|(id, e)| self.is_online(e, now) || !self.remote.get(*id).is_some_and(|r| r.online))
            .filter(|(_, e)| self.facts_match(e.facts.as_deref(), facts, now))
            .map(|(_, e)| Listed {
                filter: e.filter.clone(),
                last_seen: e.last_seen,
                online: self.is_online(e, now),
                server: own.clone(),
                facts: e.facts.clone().filter(|_| msg.with_facts),
                facts_fresh: e.facts.as_ref().is_some_and(|f| self.fresh(f.gathered, f.interval, now)),
            })
            .collect();
        for (identity, record) in &self.remote {
            let filter = record.filter(identity);
            let local = self.clients.get(identity);
            let shown_here = local.is_some_and(|e| self.is_online(e, now) || !record.online);
            if shown_here || !wanted(identity, &filter) || !self.remote_facts_match(record, facts, now) {
                continue;
            }
            let gathered = record.facts_gathered.map(|g| SystemTime::UNIX_EPOCH + Duration::from_secs(g));
            let interval = Duration::from_secs(record.facts_interval.unwrap_or(600));
            list.push(Listed {
                filter,
                last_seen: SystemTime::UNIX_EPOCH + Duration::from_secs(record.last_seen),
                // Its server unreachable from here: offline, as far as
                // commands from here go.
                online: record.online && self.linked.contains(&record.server),
                server: Some(record.server.clone()),
                facts: record
                    .facts
                    .clone()
                    .zip(gathered)
                    .filter(|_| msg.with_facts)
                    .map(|(facts, gathered)| Arc::new(StoredFacts { facts, hash: String::new(), gathered, interval })),
                facts_fresh: gathered.is_some_and(|g| self.fresh(g, interval, now)),
            });
        }
        list.sort_by(|a, b| a.filter.identity.cmp(&b.filter.identity));
        MessageResult(list)
    }
}

/// One client a forwarded request goes to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Recipient {
    pub identity: String,
    /// Its key, under CURVE.
    pub key: Option<String>,
    /// In a cluster: the other server it is on (`None`: this one).
    pub server: Option<String>,
}

/// Who a request reaches: the online clients, and the offline ones it would
/// have reached.
#[derive(Debug, Default, PartialEq, Eq, MessageResponse)]
pub struct Reached {
    pub online: Vec<Recipient>,
    pub offline: Vec<Offline>,
}

/// The clients that receive a message sent to `stream` (`""`: all), or
/// only those of them whose identity matches `identities`, sorted by
/// identity.
#[derive(Message)]
#[rtype(result = "Reached")]
pub struct Recipients {
    pub stream: String,
    pub identities: Option<Identities>,
    /// `-F`: only the clients whose fresh facts match.
    pub facts: Option<Arc<FactFilter>>,
    /// Only this server's clients (a request from another server of the
    /// cluster, or an upload, whose file is here).
    pub local_only: bool,
}

impl Handler<Recipients> for ClientRegistry {
    type Result = Reached;

    fn handle(&mut self, msg: Recipients, _: &mut Context<Self>) -> Reached {
        let now = SystemTime::now();
        let candidates = msg.facts.as_deref().map(|f| self.fact_index.candidates(f));
        let in_stream =
            |id: &str| msg.stream.is_empty() || self.by_stream.get(&msg.stream).is_some_and(|s| s.contains(id));
        let selected: Vec<&String> = match &candidates {
            // With `-F`, only the clients the index selects are looked at.
            Some(ids) => ids
                .iter()
                .filter_map(|id| self.clients.get_key_value(&**id))
                .map(|(k, _)| k)
                .filter(|id| in_stream(id))
                .collect(),
            None if msg.stream.is_empty() => self.clients.keys().collect(),
            None => self.by_stream.get(&msg.stream).map(|s| s.iter().collect()).unwrap_or_default(),
        };
        let mut reached = Reached::default();
        for identity in selected {
            if msg.identities.as_ref().is_some_and(|ids| !ids.matches(identity)) {
                continue;
            }
            let Some(entry) = self.clients.get(identity) else { continue };
            if !self.facts_match(entry.facts.as_deref(), msg.facts.as_deref(), now) {
                continue;
            }
            if self.is_online(entry, now) {
                reached.online.push(Recipient { identity: identity.clone(), key: entry.key.clone(), server: None });
            } else if !msg.local_only && self.reachable_elsewhere(identity) {
                // Moved to another server: reached there.
            } else {
                let last_seen = humantime::format_rfc3339_seconds(entry.last_seen).to_string();
                reached.offline.push(Offline { identity: identity.clone(), last_seen });
            }
        }
        if !msg.local_only {
            self.reach_elsewhere(&msg, now, &mut reached);
        }
        reached.online.sort_by(|a, b| a.identity.cmp(&b.identity));
        reached.offline.sort_by(|a, b| a.identity.cmp(&b.identity));
        reached
    }
}

impl ClientRegistry {
    /// Whether `identity` is online on another server this one links to.
    fn reachable_elsewhere(&self, identity: &str) -> bool {
        self.remote.get(identity).is_some_and(|r| r.online && self.linked.contains(&r.server))
    }

    /// The other servers' clients a request selects: online ones on linked
    /// servers are reached there; the others are offline.
    fn reach_elsewhere(&self, msg: &Recipients, now: SystemTime, reached: &mut Reached) {
        for (identity, record) in &self.remote {
            let filter = record.filter(identity);
            if !filter.accepts_stream(&msg.stream)
                || msg.identities.as_ref().is_some_and(|ids| !ids.matches(identity))
                || !self.remote_facts_match(record, msg.facts.as_deref(), now)
            {
                continue;
            }
            // Online here: reached here (listed above).
            if self.clients.get(identity).is_some_and(|e| self.is_online(e, now)) {
                continue;
            }
            if self.reachable_elsewhere(identity) {
                reached.online.push(Recipient {
                    identity: identity.clone(),
                    key: record.key.clone(),
                    server: Some(record.server.clone()),
                });
            } else if !self.clients.contains_key(identity) {
                let seen = SystemTime::UNIX_EPOCH + Duration::from_secs(record.last_seen);
                let last_seen = humantime::format_rfc3339_seconds(seen).to_string();
                reached.offline.push(Offline { identity: identity.clone(), last_seen });
            }
        }
    }
}

impl Handler<RegistryChange> for ClientRegistry {
    type Result = ();

    /// The fleet's registry changed (another server's client registered,
    /// changed state, or its server's lease expired: then it is offline).
    fn handle(&mut self, change: RegistryChange, _: &mut Context<Self>) {
        let own = self.fleet.as_ref().map(|f| f.server_id().to_owned());
        match change {
            RegistryChange::Server { id, .. } | RegistryChange::ServerGone { id } if Some(&id) == own.as_ref() => {}
            RegistryChange::Server { id, receive } => {
                if self.servers.get(&id) != Some(&receive) {
                    self.link(&id, Some(receive.clone()));
                    self.servers.insert(id, receive);
                }
            }
            RegistryChange::ServerGone { id } => {
                self.linked.remove(&id);
                if self.servers.remove(&id).is_some() {
                    self.link(&id, None);
                }
            }
            // Ours now (it may have moved here): another server's older
            // record of it no longer says anything.
            RegistryChange::Put { identity, record } if Some(&record.server) == own.as_ref() => {
                self.remote.remove(&identity);
            }
            RegistryChange::Put { identity, record } => {
                self.remote.insert(identity, record);
            }
            // Its server's lease expired (the server is gone too): the
            // client is offline, listed as a single server lists its
            // clients after a restart. Deleted by a live server (forgotten,
            // or its key revoked): it leaves the fleet.
            RegistryChange::Gone { identity } => match self.remote.get_mut(&identity) {
                Some(record) if !self.servers.contains_key(&record.server) => {
                    if record.online {
                        info!(self.log, "client offline: its server left the cluster";
                            "identity" => &identity, "server" => &record.server);
                    }
                    record.online = false;
                }
                Some(_) => {
                    self.remote.remove(&identity);
                }
                None => {}
            },
        }
    }
}

/// A link to another server of the cluster went up or down: while it is
/// down, that server's clients are named offline rather than waited for.
#[derive(Message)]
#[rtype(result = "()")]
pub struct LinkState {
    pub server: String,
    pub up: bool,
}

impl Handler<LinkState> for ClientRegistry {
    type Result = ();

    fn handle(&mut self, msg: LinkState, _: &mut Context<Self>) {
        if msg.up {
            self.linked.insert(msg.server);
        } else {
            self.linked.remove(&msg.server);
        }
    }
}

impl Handler<RewriteRecords> for ClientRegistry {
    type Result = ();

    /// A new lease: every record of this server is written again.
    fn handle(&mut self, _: RewriteRecords, _: &mut Context<Self>) {
        let identities: Vec<String> = self.clients.keys().cloned().collect();
        for identity in identities {
            self.publish_record(&identity);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn client(id: &str, app: &str, env: &str, roles: &[&str]) -> ClientFilter {
        ClientFilter {
            identity: Some(id.into()),
            application: Some(app.into()),
            environment: Some(env.into()),
            roles: roles.iter().map(|r| r.to_string()).collect(),
        }
    }

    fn ids(list: Reached) -> Vec<String> {
        list.online.into_iter().map(|r| r.identity).collect()
    }

    fn registry(curve: bool) -> (Addr<ClientRegistry>, tempfile::TempDir) {
        let dir = tempfile::tempdir().unwrap();
        let log = Logger::root(slog::Discard, slog::o!());
        let (writer, _) = crate::store::start_writer(&dir.path().join("db"), log.clone()).unwrap();
        let metrics = Arc::new(Metrics::new().unwrap());
        (ClientRegistry::new(curve, Vec::new(), Duration::from_secs(3600), writer, metrics, log).start(), dir)
    }

    fn reg(c: ClientFilter, key: &str) -> Register {
        let peer = c.identity.clone().unwrap_or_default().into_bytes();
        Register {
            client: c,
            key: Some(key.into()),
            peer,
            heartbeat: None,
            owns_identity: false,
            facts_seen: None,
            direct: false,
        }
    }

    #[actix_rt::test]
    async fn recipients_follow_registrations() {
        let (registry, _dir) = registry(false);
        assert_eq!(registry.send(reg(client("h1", "pantry", "test", &["web"]), "k1")).await.unwrap(), Registered::New);
        assert_eq!(registry.send(reg(client("h2", "pantry", "prod", &["db"]), "k2")).await.unwrap(), Registered::New);
        assert_eq!(
            registry.send(reg(client("h1", "pantry", "test", &["web"]), "k1")).await.unwrap(),
            Registered::Again
        );
        // Another key cannot take h1.
        let refused = registry.send(reg(client("h1", "pantry", "test", &["web"]), "k9")).await.unwrap();
        assert!(matches!(refused, Registered::Refused(r) if r.contains("another key")));
        let to =
            |s: &str| registry.send(Recipients { stream: s.into(), identities: None, facts: None, local_only: false });
        assert_eq!(ids(to("").await.unwrap()), ["h1", "h2"]);
        let some = |p: &str| Identities::parse(&[p.into()]).unwrap();
        let globbed = registry
            .send(Recipients { stream: "pantry".into(), identities: some("h[2-9]"), facts: None, local_only: false })
            .await;
        assert_eq!(ids(globbed.unwrap()), ["h2"]);
        assert_eq!(ids(to("pantry").await.unwrap()), ["h1", "h2"]);
        assert_eq!(ids(to("pantry.test").await.unwrap()), ["h1"]);
        assert_eq!(ids(to("pantry.prod.db").await.unwrap()), ["h2"]);
        assert_eq!(ids(to("h1").await.unwrap()), ["h1"]);
        assert!(to("h").await.unwrap().online.is_empty());
        // Changing roles moves the client in the index.
        assert_eq!(registry.send(reg(client("h1", "pantry", "test", &["db"]), "k1")).await.unwrap(), Registered::New);
        assert!(to("pantry.test.web").await.unwrap().online.is_empty());
        assert_eq!(ids(to("pantry.test.db").await.unwrap()), ["h1"]);
        let q = registry
            .send(Query {
                filter: ClientFilter { roles: vec!["db".into()], ..Default::default() },
                identities: None,
                facts: None,
                with_facts: false,
            })
            .await
            .unwrap();
        assert_eq!(q.len(), 2);
        registry.send(Forget { key: "k2".into() }).await.unwrap();
        assert!(to("pantry.prod").await.unwrap().online.is_empty());
        assert_eq!(ids(to("").await.unwrap()), ["h1"]);
    }

    #[actix_rt::test]
    async fn a_closed_connection_makes_its_client_offline_until_it_checks_in() {
        let (registry, _dir) = registry(false);
        registry.send(reg(client("h1", "a", "e", &[]), "k1")).await.unwrap();
        registry.send(reg(client("h2", "a", "e", &[]), "k2")).await.unwrap();
        registry.send(PeerClosed { peer: b"h2".to_vec() }).await.unwrap();
        let reached = registry
            .send(Recipients { stream: "a".into(), identities: None, facts: None, local_only: false })
            .await
            .unwrap();
        assert_eq!(ids(Reached { online: reached.online, offline: Vec::new() }), ["h1"]);
        assert_eq!(reached.offline.iter().map(|o| o.identity.as_str()).collect::<Vec<_>>(), ["h2"]);
        let listed = registry
            .send(Query { filter: ClientFilter::default(), identities: None, facts: None, with_facts: false })
            .await
            .unwrap();
        assert_eq!(listed.iter().map(|l| l.online).collect::<Vec<_>>(), [true, false]);
        // It checks in again over a new connection (a new routing id).
        let again = Register { peer: b"h2-again".to_vec(), ..reg(client("h2", "a", "e", &[]), "k2") };
        registry.send(again).await.unwrap();
        let reached = registry
            .send(Recipients { stream: "a".into(), identities: None, facts: None, local_only: false })
            .await
            .unwrap();
        assert_eq!(reached.online.len(), 2);
        registry.send(ForgetIdentity { identity: "h2".into() }).await.unwrap().unwrap();
        assert!(registry.send(ForgetIdentity { identity: "h2".into() }).await.unwrap().is_err());
    }

    #[actix_rt::test]
    async fn identities_and_streams_never_meet() {
        let (registry, _dir) = registry(false);
        let reg = |c: ClientFilter| reg(c, "k");
        assert_eq!(
            registry.send(reg(client("web1.example.com", "shop", "prod", &["web"]))).await.unwrap(),
            Registered::New
        );
        // An identity that is a registered stream, and the reverse.
        let r = registry.send(reg(client("shop.prod", "other", "x", &[]))).await.unwrap();
        assert!(matches!(r, Registered::Refused(reason) if reason.contains("shop.prod")), "identity = stream");
        let r = registry.send(reg(client("db-1", "web1.example.com", "x", &[]))).await.unwrap();
        assert!(matches!(r, Registered::Refused(_)), "app = identity");
        let to =
            |s: &str| registry.send(Recipients { stream: s.into(), identities: None, facts: None, local_only: false });
        assert_eq!(ids(to("web1.example.com").await.unwrap()), ["web1.example.com"]);
    }

    #[actix_rt::test]
    async fn an_identity_its_key_owns_wins_over_a_squatted_stream() {
        let (registry, _dir) = registry(true);
        // A compromised key registers application `web` and, as app.env.role,
        // the name `sq1.example.com`, before those machines first register.
        let squat = reg(client("evil", "web", "x", &[]), "k-evil");
        assert_eq!(registry.send(squat).await.unwrap(), Registered::New);
        let squat = reg(client("evil-2", "sq1", "example", &["com"]), "k-evil-2");
        assert_eq!(registry.send(squat).await.unwrap(), Registered::New);
        // Without owning its name, a registration is still refused.
        let unowned = registry.send(reg(client("web", "shop", "prod", &[]), "k-web")).await.unwrap();
        assert!(matches!(unowned, Registered::Refused(_)), "{unowned:?}");
        for (id, key) in [("web", "k-web"), ("sq1.example.com", "k-sq1")] {
            let owned = Register { owns_identity: true, ..reg(client(id, "shop", "prod", &[]), key) };
            assert_eq!(registry.send(owned).await.unwrap(), Registered::New, "{id}");
        }
        let listed = registry
            .send(Query { filter: ClientFilter::default(), identities: None, facts: None, with_facts: false })
            .await
            .unwrap();
        let names: Vec<_> = listed.iter().filter_map(|l| l.filter.identity.clone()).collect();
        assert_eq!(names, ["sq1.example.com", "web"], "the squatters left");
        let again = registry.send(reg(client("evil", "web", "x", &[]), "k-evil")).await.unwrap();
        assert!(matches!(again, Registered::Refused(r) if r.contains("`web` is another client's identity")));
    }

    #[actix_rt::test]
    async fn under_curve_only_listening_clients_receive() {
        let (registry, _dir) = registry(true);
        assert_eq!(registry.send(reg(client("h1", "a", "e", &[]), "k1")).await.unwrap(), Registered::New);
        let to = || registry.send(Recipients { stream: "a".into(), identities: None, facts: None, local_only: false });
        assert!(to().await.unwrap().online.is_empty());
        registry.send(Listening { key: "k1".into(), listening: true }).await.unwrap();
        let h1 = Recipient { identity: "h1".into(), key: Some("k1".into()), server: None };
        assert_eq!(to().await.unwrap().online, [h1]);
        registry.send(Listening { key: "k1".into(), listening: false }).await.unwrap();
        assert!(to().await.unwrap().online.is_empty());
    }

    #[actix_rt::test]
    async fn an_agent_on_its_dealer_is_online_at_once_but_not_over_a_closed_connection() {
        let (registry, _dir) = registry(true);
        let to = || registry.send(Recipients { stream: "a".into(), identities: None, facts: None, local_only: false });
        let direct = |id: &str, key: &str| Register { direct: true, ..reg(client(id, "a", "e", &[]), key) };
        registry.send(direct("h1", "k1")).await.unwrap();
        assert_eq!(ids(to().await.unwrap()), ["h1"], "no subscriptions to wait for");
        // h2's close is handled before its registration.
        registry.send(PeerClosed { peer: b"h2".to_vec() }).await.unwrap();
        registry.send(direct("h2", "k2")).await.unwrap();
        assert_eq!(ids(to().await.unwrap()), ["h1"], "h2's connection is gone");
    }
}
