//! The key store actor: owns `server_keys.yml` (CURVE only) and every change
//! to it, and decides the handshakes the socket thread cannot: keys that
//! are not in its copy of the store.
//!
//! - An unknown key may be one another process just added
//!   (`keys:create-admin`): the file is re-read when it changed.
//! - While no key is known, the first one is trusted and stored as the
//!   admin before the reply (trust on first use); requests are handled one
//!   at a time, so if two race exactly one wins.
//! - Every other unknown key is admitted on the receive port only, to
//!   enroll (the socket thread ends such connections after a few seconds,
//!   and the dispatcher refuses them anything but `Enroll`); it is refused
//!   on the PUB and file ports. Every request gets an answer.
//!
//! It also keeps the pending list: the most recent unknown keys that tried
//! to connect, in memory and in the database, for `client:pending`,
//! `client:accept` and `client:reject`. After each change the socket thread
//! gets the new keys (a removed key's connections are shut down there).

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::SystemTime;

use crate::key_file::{EnrollError, KeyChangeError, ServerKeyStore};
use actix::prelude::*;
use pantry_shared::commands::client_pending::PendingKey;
use pantry_shared::commands::enroll::{EnrollRequest, Enrolled};
use pantry_shared::keys::{self, KeyPair, KnownKey, PublicKey, Role, Token};
use pantry_shared::security::ServerPort;
use pantry_shared::KeyStoreError;
use slog::{debug, error, info, warn, Logger};

use crate::cluster::{ClusterKeys, KeyChange, KeysChanged};
use crate::messages::{ZapRequest, ENROLLEE};
use crate::metrics::{Metrics, Rejection};
use crate::outbox::{KeyUpdate, Outbound, Outbox};
use crate::store::{Write, Writer};
use crate::zap::{self, Admitted, Status};

/// Why a pending key was not accepted or rejected.
#[derive(Debug, thiserror::Error)]
pub enum PendingError {
    #[error("no pending key is `{0}` or claims that identity")]
    NotPending(String),
    #[error(
        "`{name}` was claimed by {keys} keys since it was last accepted or rejected: name the one to accept by its \
         key (client:pending lists them)"
    )]
    ClaimedBySeveral { name: String, keys: usize },
    #[error("`{0}` claimed no identity: give one with --name")]
    NoName(String),
    #[error("not a CURVE key")]
    NotAKey,
    #[error(transparent)]
    Key(#[from] KeyChangeError),
}

/// Why a key was not enrolled (its agent is told).
#[derive(Debug, thiserror::Error)]
pub enum EnrollRefused {
    #[error("not a CURVE key")]
    NotAKey,
    #[error("this key is already known")]
    AlreadyKnown,
    #[error("the identity `{0}` is already taken by another key")]
    NameTaken(String),
    #[error(transparent)]
    Token(EnrollError),
}

/// Unknown keys that claimed no identity remembered at most; the least
/// recently seen go first.
pub const MAX_PENDING_KEYS: usize = 1000;

/// Pending keys that claim an identity, at most. Kept apart from the
/// anonymous ones and never evicted by traffic (only `client:accept` and
/// `client:reject` remove them): otherwise a flood of keys could push a
/// real machine's claim out and let another key claim its name. A new
/// claim beyond this is not listed (the agent keeps asking).
pub const MAX_CLAIMING_KEYS: usize = 1000;

/// Names whose claimants are remembered at most (those with a pending
/// claim always are).
const MAX_CLAIM_HISTORY: usize = 10 * MAX_CLAIMING_KEYS;

/// The ZAP status text of a connection admitted only to enroll.
const ADMITTED_TO_ENROLL: &str = "admitted to enroll only";

/// Where the known keys live: `server_keys.yml`, or etcd for a cluster.
pub enum Keys {
    File(ServerKeyStore),
    Cluster(ClusterKeys),
}

impl Keys {
    fn lookup(&self, key: &PublicKey) -> Option<&KnownKey> {
        match self {
            Keys::File(store) => store.lookup(key),
            Keys::Cluster(keys) => keys.lookup(key),
        }
    }

    pub fn entries(&self) -> Vec<KnownKey> {
        match self {
            Keys::File(store) => store.entries().to_vec(),
            Keys::Cluster(keys) => keys.entries(),
        }
    }

    fn known_count(&self) -> usize {
        match self {
            Keys::File(store) => store.known_count(),
            Keys::Cluster(keys) => keys.known_count(),
        }
    }

    /// Re-reads the file if another process changed it (a cluster's copy
    /// follows etcd's watch instead).
    fn reload_if_changed(&mut self) -> Result<bool, KeyStoreError> {
        match self {
            Keys::File(store) => store.reload_if_changed(),
            Keys::Cluster(_) => Ok(false),
        }
    }

    fn describe(&self) -> String {
        match self {
            Keys::File(store) => store.path().display().to_string(),
            Keys::Cluster(keys) => keys.etcd().describe(),
        }
    }

    fn server_public_key(&self) -> String {
        match self {
            Keys::File(store) => store.keys.public_key.clone(),
            Keys::Cluster(keys) => keys.server_public_key().to_owned(),
        }
    }

    fn free_name(&self, base: &str) -> String {
        match self {
            Keys::File(store) => store.free_name(base),
            Keys::Cluster(keys) => keys.free_name(base),
        }
    }

    fn add(&mut self, key: &PublicKey, name: Option<&str>, role: Role) -> Result<KnownKey, KeyChangeError> {
        match self {
            Keys::File(store) => store.add(key, name, role),
            Keys::Cluster(keys) => keys.add(key, name, role),
        }
    }

    /// Stores `key` as the first admin if no key was ever trusted first;
    /// `None` when one was.
    fn trust_first(&mut self, key: &PublicKey) -> Result<Option<KnownKey>, KeyChangeError> {
        match self {
            Keys::File(store) if store.known_count() == 0 => store.add(key, Some("admin"), Role::Admin).map(Some),
            Keys::File(_) => Ok(None),
            Keys::Cluster(keys) => keys.trust_first(key),
        }
    }

    fn bind(&mut self, key: &PublicKey, name: &str) -> Result<KnownKey, KeyChangeError> {
        match self {
            Keys::File(store) => store.bind(key, name),
            Keys::Cluster(keys) => keys.bind(key, name),
        }
    }

    fn add_token(&mut self, token: Token) -> Result<(), KeyChangeError> {
        match self {
            Keys::File(store) => store.add_token(token),
            Keys::Cluster(keys) => keys.add_token(token),
        }
    }

    fn tokens(&mut self) -> Result<Vec<Token>, KeyStoreError> {
        match self {
            Keys::File(store) => {
                store.reload_if_changed()?;
                Ok(store.tokens().to_vec())
            }
            Keys::Cluster(keys) => Ok(keys.tokens()),
        }
    }

    fn revoke_token(&mut self, id: &str) -> Result<Token, KeyChangeError> {
        match self {
            Keys::File(store) => store.revoke_token(id),
            Keys::Cluster(keys) => keys.revoke_token(id),
        }
    }

    fn enroll(
        &mut self,
        key: &PublicKey,
        token: &str,
        configured: Option<&str>,
        default_name: &str,
    ) -> Result<KnownKey, EnrollError> {
        match self {
            Keys::File(store) => store.enroll(key, token, configured, default_name),
            Keys::Cluster(keys) => keys.enroll(key, token, configured, default_name),
        }
    }

    fn revoke(&mut self, name_or_key: &str) -> Result<KnownKey, KeyChangeError> {
        match self {
            Keys::File(store) => store.revoke(name_or_key),
            Keys::Cluster(keys) => keys.revoke(name_or_key),
        }
    }
}

pub struct KeyStore {
    store: Keys,
    outbox: Outbox,
    trust_first_client: bool,
    /// Z85 key → what the server saw of it.
    pending: HashMap<String, PendingKey>,
    /// Claimed identity → every key that claimed it since it was last
    /// accepted or rejected: a name claimed by more than one key is not
    /// accepted by name.
    claimants: HashMap<String, HashSet<String>>,
    db: Writer,
    /// Keys revoked since start: their handshakes are counted as such.
    revoked: HashSet<PublicKey>,
    metrics: Arc<Metrics>,
    log: Logger,
}

fn now_rfc3339() -> String {
    humantime::format_rfc3339_seconds(SystemTime::now()).to_string()
}

impl KeyStore {
    pub fn new(
        store: Keys,
        outbox: Outbox,
        trust_first_client: bool,
        pending: Vec<PendingKey>,
        db: Writer,
        metrics: Arc<Metrics>,
        log: Logger,
    ) -> Self {
        let mut claimants: HashMap<String, HashSet<String>> = HashMap::new();
        for k in &pending {
            if let Some(identity) = &k.identity {
                claimants.entry(identity.clone()).or_default().insert(k.public_key.clone());
            }
        }
        let pending = pending.into_iter().map(|k| (k.public_key.clone(), k)).collect();
        KeyStore { store, outbox, trust_first_client, pending, claimants, db, revoked: HashSet::new(), metrics, log }
    }

    /// Notes an unknown key's attempt (and the identity it claims).
    /// Returns false when a new claim was not listed: the claiming keys
    /// are at their bound.
    fn saw_unknown(&mut self, key: &str, address: &str, identity: Option<&str>) -> bool {
        let claims = self.pending.values().filter(|k| k.identity.is_some()).count();
        let known_claim = self.pending.get(key).is_some_and(|k| k.identity.is_some());
        let listed = identity.is_none() || known_claim || claims < MAX_CLAIMING_KEYS;
        let now = now_rfc3339();
        let entry = self.pending.entry(key.to_owned()).or_insert_with(|| PendingKey {
            public_key: key.to_owned(),
            address: address.to_owned(),
            first_seen: now.clone(),
            last_seen: now.clone(),
            attempts: 0,
            identity: None,
        });
        entry.attempts += 1;
        entry.last_seen = now;
        entry.address = address.to_owned();
        if let Some(identity) = identity.filter(|_| listed) {
            entry.identity = Some(identity.to_owned());
            self.claimants.entry(identity.to_owned()).or_default().insert(key.to_owned());
        }
        self.db.write(Write::PendingKey(entry.clone()));
        if self.pending.values().filter(|k| k.identity.is_none()).count() > MAX_PENDING_KEYS {
            let oldest = self
                .pending
                .values()
                .filter(|k| k.identity.is_none())
                .min_by(|a, b| a.last_seen.cmp(&b.last_seen))
                .map(|k| k.public_key.clone());
            if let Some(oldest) = oldest {
                self.forget_pending(&oldest);
            }
        }
        if self.claimants.len() > MAX_CLAIM_HISTORY {
            // Only names nobody claims now can be forgotten.
            let claimed: HashSet<&String> = self.pending.values().filter_map(|k| k.identity.as_ref()).collect();
            let idle: Vec<String> = self.claimants.keys().filter(|n| !claimed.contains(n)).cloned().collect();
            for name in idle.into_iter().take(self.claimants.len() - MAX_CLAIM_HISTORY) {
                self.claimants.remove(&name);
            }
        }
        listed
    }

    fn forget_pending(&mut self, key: &str) -> Option<PendingKey> {
        let gone = self.pending.remove(key)?;
        self.db.write(Write::ForgetPendingKey(key.to_owned()));
        Some(gone)
    }

    /// A name was accepted or rejected: its claimants start afresh.
    fn settle_claims(&mut self, name: Option<&str>) {
        if let Some(name) = name {
            self.claimants.remove(name);
        }
    }

    /// The pending key a `client:accept`/`client:reject` names: by Z85 key,
    /// or by claimed identity when exactly one key claims it now and no
    /// other claimed it since it was last accepted or rejected.
    fn find_pending(&self, target: &str) -> Result<&PendingKey, PendingError> {
        if let Some(found) = self.pending.get(target) {
            return Ok(found);
        }
        let mut claiming = self.pending.values().filter(|k| k.identity.as_deref() == Some(target));
        let claimed_by = self.claimants.get(target).map_or(0, HashSet::len);
        match (claiming.next(), claiming.next()) {
            (Some(found), None) if claimed_by <= 1 => Ok(found),
            (Some(_), _) => Err(PendingError::ClaimedBySeveral { name: target.to_owned(), keys: claimed_by.max(2) }),
            (None, _) => Err(PendingError::NotPending(target.to_owned())),
        }
    }

    fn publish(&self, update: KeyUpdate) {
        self.outbox.send(Outbound::Keys(update));
    }

    fn publish_all(&self) {
        self.publish(KeyUpdate::All(self.store.entries()));
    }

    /// Re-reads the file if another process changed it; the socket thread
    /// gets the new keys.
    fn reload(&mut self) -> Result<bool, KeyStoreError> {
        let changed = self.store.reload_if_changed()?;
        if changed {
            info!(self.log, "key store changed on disk; reloaded";
                "file" => self.store.describe(), "known_clients" => self.store.known_count());
            self.publish_all();
        }
        Ok(changed)
    }

    fn decide(&mut self, request: &ZapRequest, key: &PublicKey) -> (Status, String, Option<KnownKey>) {
        let Some(port) = request.port else {
            return (Status::Denied, "unknown ZAP domain".into(), None);
        };
        if let Err(e) = self.reload() {
            error!(self.log, "cannot reload the key store; keeping the keys in memory"; "error" => %e);
        }
        if let Some(known) = self.store.lookup(key) {
            return (Status::Ok, "accepted".into(), Some(known.clone()));
        }
        if self.trust_first_client && self.store.known_count() == 0 {
            let z85 = keys::z85(key);
            match self.store.trust_first(key) {
                Ok(Some(known)) => {
                    info!(self.log, "trusted the first client on first use and stored its key as an admin";
                        "key" => &z85, "name" => "admin", "address" => &request.address,
                        "store" => self.store.describe());
                    self.publish(KeyUpdate::Added(known.clone()));
                    return (Status::Ok, "accepted (trusted on first use)".into(), Some(known));
                }
                // Another server of the cluster trusted its first client.
                Ok(None) => {}
                Err(e) => {
                    error!(self.log, "cannot store the first client's key; handshake refused";
                        "key" => &z85, "error" => %e);
                    return (Status::Error, "key store write failed".into(), None);
                }
            }
        }
        self.saw_unknown(&keys::z85(key), &request.address, None);
        if port == ServerPort::Receive {
            return (Status::Ok, ADMITTED_TO_ENROLL.into(), None);
        }
        (Status::Denied, "unknown client".into(), None)
    }
}

impl Actor for KeyStore {
    type Context = Context<Self>;
}

impl Handler<ZapRequest> for KeyStore {
    type Result = ();

    fn handle(&mut self, request: ZapRequest, _: &mut Context<Self>) {
        let (status, reason, known) = match &request.key {
            Some(key) => self.decide(&request, key),
            None => (Status::Denied, "malformed CURVE credentials".into(), None),
        };
        let key = request.key.as_ref().map(keys::z85).unwrap_or_else(|| "-".into());
        let outcome = match status {
            Status::Ok if known.is_none() => {
                "rejected: unknown client (admitted on the receive port to enroll only)".to_owned()
            }
            Status::Ok => reason.clone(),
            _ => format!("rejected: {reason}"),
        };
        debug!(self.log, "handshake {}", outcome;
            "name" => known.as_ref().and_then(|k| k.name.as_deref()).unwrap_or("-"), "key" => &key,
            "address" => &request.address, "mechanism" => &request.mechanism,
            "socket" => request.port.map(|p| p.name()).unwrap_or("-"));
        let admitted = match (&known, status) {
            (Some(known), _) => Some(Admitted::known(known)),
            (None, Status::Ok) => Some(Admitted { key: &key, name: "", role: ENROLLEE }),
            (None, _) => None,
        };
        match (&known, status) {
            (Some(_), Status::Ok) => self.metrics.handshakes_accepted.inc(),
            _ if request.mechanism != "CURVE" => self.metrics.rejected(Rejection::MechanismMismatch),
            _ if request.key.is_some_and(|k| self.revoked.contains(&k)) => self.metrics.rejected(Rejection::Revoked),
            _ => self.metrics.rejected(Rejection::UnknownKey),
        }
        let frames = zap::reply(request.envelope, &request.request_id, status, &reason, admitted);
        self.outbox.send(Outbound::ZapReply(frames));
    }
}

/// Make a new key pair, store its public key (on disk) bound to `name` (or
/// unbound) with `role`, and return it with the server's public key.
#[derive(Message)]
#[rtype(result = "Result<(String, KeyPair, KnownKey), KeyChangeError>")]
pub struct CreateKey {
    pub name: Option<String>,
    pub role: Role,
}

impl Handler<CreateKey> for KeyStore {
    type Result = Result<(String, KeyPair, KnownKey), KeyChangeError>;

    fn handle(&mut self, msg: CreateKey, _: &mut Context<Self>) -> Self::Result {
        let pair = KeyPair::generate()?;
        let key = keys::decode_key(&pair.public_key, std::path::Path::new("(a new key pair)"), "public_key")?;
        // An admin key always has a name: it is who the admin is in logs.
        let name = match (msg.name, msg.role) {
            (Some(name), _) => Some(name),
            (None, Role::Admin) => {
                self.store.reload_if_changed()?;
                Some(self.store.free_name("admin"))
            }
            (None, Role::Client | Role::Server) => None,
        };
        let known = self.store.add(&key, name.as_deref(), msg.role)?;
        info!(self.log, "created a key";
            "name" => known.name.as_deref().unwrap_or("(unbound)"), "role" => known.role.as_str(),
            "key" => &known.public_key, "known_clients" => self.store.known_count());
        self.publish(KeyUpdate::Added(known.clone()));
        Ok((self.store.server_public_key(), pair, known))
    }
}

/// Every known key.
#[derive(Message)]
#[rtype(result = "Result<Vec<KnownKey>, KeyStoreError>")]
pub struct ListKeys;

impl Handler<ListKeys> for KeyStore {
    type Result = Result<Vec<KnownKey>, KeyStoreError>;

    fn handle(&mut self, _: ListKeys, _: &mut Context<Self>) -> Self::Result {
        self.reload()?;
        Ok(self.store.entries())
    }
}

/// Remove a key by name or Z85 key; its connections are shut down and its
/// next handshake fails.
#[derive(Message)]
#[rtype(result = "Result<KnownKey, KeyChangeError>")]
pub struct RevokeKey {
    pub name_or_key: String,
}

impl Handler<RevokeKey> for KeyStore {
    type Result = Result<KnownKey, KeyChangeError>;

    fn handle(&mut self, msg: RevokeKey, _: &mut Context<Self>) -> Self::Result {
        let revoked = self.store.revoke(&msg.name_or_key)?;
        if let Some(key) = keys::decode_z85(&revoked.public_key) {
            self.revoked.insert(key);
        }
        info!(self.log, "revoked a key";
            "name" => revoked.name.as_deref().unwrap_or("(unbound)"), "role" => revoked.role.as_str(),
            "key" => &revoked.public_key);
        self.publish(KeyUpdate::Removed(revoked.public_key.clone()));
        Ok(revoked)
    }
}

/// Bind an unbound client key to the identity of its first registration.
#[derive(Message)]
#[rtype(result = "Result<KnownKey, KeyChangeError>")]
pub struct BindKey {
    pub key: String,
    pub identity: String,
}

impl Handler<BindKey> for KeyStore {
    type Result = Result<KnownKey, KeyChangeError>;

    fn handle(&mut self, msg: BindKey, _: &mut Context<Self>) -> Self::Result {
        let key = keys::decode_z85(&msg.key).ok_or_else(|| KeyChangeError::NotFound(msg.key.clone()))?;
        let bound = self.store.bind(&key, &msg.identity)?;
        self.publish(KeyUpdate::Added(bound.clone()));
        Ok(bound)
    }
}

/// Enroll the key of an `Enroll` request.
#[derive(Message)]
#[rtype(result = "Result<Enrolled, EnrollRefused>")]
pub struct EnrollKey {
    pub key: String,
    pub request: EnrollRequest,
    pub address: String,
}

impl Handler<EnrollKey> for KeyStore {
    type Result = Result<Enrolled, EnrollRefused>;

    fn handle(&mut self, msg: EnrollKey, _: &mut Context<Self>) -> Self::Result {
        let key = keys::decode_z85(&msg.key).ok_or(EnrollRefused::NotAKey)?;
        if let Some(name) = self.store.lookup(&key).map(|k| k.name.clone()) {
            // Accepted (or enrolled) while it waited: it hears its name.
            return name.map(|name| Enrolled::Accepted { name }).ok_or(EnrollRefused::AlreadyKnown);
        }
        let claimed = msg.request.claimed().to_owned();
        let Some(token) = &msg.request.token else {
            let new = self.pending.get(&msg.key).is_none_or(|k| k.identity.is_none());
            if !self.saw_unknown(&msg.key, &msg.address, Some(&claimed)) {
                warn!(self.log, "an unknown key's claim is not listed: the pending list holds \
                    {MAX_CLAIMING_KEYS} claims already (accept or reject some)";
                    "identity" => &claimed, "key" => &msg.key, "address" => &msg.address);
                return Ok(Enrolled::Waiting);
            }
            if new {
                info!(self.log, "an unknown key asks to be enrolled: accept it with `pantry-admin client:accept`";
                    "identity" => &claimed, "key" => &msg.key, "address" => &msg.address);
            }
            return Ok(Enrolled::Waiting);
        };
        match self.store.enroll(&key, token, msg.request.identity.as_deref(), &msg.request.hostname) {
            Ok(known) => {
                let name = known.name.clone().unwrap_or_default();
                info!(self.log, "enrolled a key with a token"; "name" => &name, "key" => &msg.key, "address" => &msg.address);
                self.forget_pending(&msg.key);
                self.publish(KeyUpdate::Added(known));
                Ok(Enrolled::Accepted { name })
            }
            Err(e) => {
                let refused = match e {
                    EnrollError::Key(KeyChangeError::NameTaken(name)) => EnrollRefused::NameTaken(name),
                    other => EnrollRefused::Token(other),
                };
                warn!(self.log, "enrollment refused: {}", refused;
                    "identity" => &claimed, "key" => &msg.key, "address" => &msg.address);
                Err(refused)
            }
        }
    }
}

/// Store a new enrollment token's hash.
#[derive(Message)]
#[rtype(result = "Result<(), KeyChangeError>")]
pub struct AddToken(pub Token);

impl Handler<AddToken> for KeyStore {
    type Result = Result<(), KeyChangeError>;

    fn handle(&mut self, msg: AddToken, _: &mut Context<Self>) -> Self::Result {
        let token = msg.0;
        let (name, uses, expires) = (token.name.clone(), token.uses_left, token.expires.clone());
        self.store.add_token(token)?;
        info!(self.log, "created an enrollment token";
            "name" => name.as_deref().unwrap_or("(the agent's identity)"), "uses" => uses, "expires" => expires);
        Ok(())
    }
}

/// The enrollment tokens (their hashes, never a token).
#[derive(Message)]
#[rtype(result = "Result<Vec<Token>, KeyStoreError>")]
pub struct ListTokens;

impl Handler<ListTokens> for KeyStore {
    type Result = Result<Vec<Token>, KeyStoreError>;

    fn handle(&mut self, _: ListTokens, _: &mut Context<Self>) -> Self::Result {
        self.store.tokens()
    }
}

/// `client:token --revoke ID`: the token enrolls nothing from now on.
#[derive(Message)]
#[rtype(result = "Result<Token, KeyChangeError>")]
pub struct RevokeToken {
    pub id: String,
}

impl Handler<RevokeToken> for KeyStore {
    type Result = Result<Token, KeyChangeError>;

    fn handle(&mut self, msg: RevokeToken, _: &mut Context<Self>) -> Self::Result {
        let token = self.store.revoke_token(&msg.id)?;
        info!(self.log, "revoked an enrollment token"; "id" => token.id(),
            "name" => token.name.as_deref().unwrap_or("(the agent's identity)"), "uses_left" => token.uses_left);
        Ok(token)
    }
}

/// The pending keys, most recently seen first.
#[derive(Message)]
#[rtype(result = "Vec<PendingKey>")]
pub struct ListPending;

impl Handler<ListPending> for KeyStore {
    type Result = MessageResult<ListPending>;

    fn handle(&mut self, _: ListPending, _: &mut Context<Self>) -> Self::Result {
        let mut list: Vec<PendingKey> = self.pending.values().cloned().collect();
        list.sort_by(|a, b| b.last_seen.cmp(&a.last_seen));
        MessageResult(list)
    }
}

/// `client:accept`: the pending key becomes a client key bound to `name`
/// (default: its claimed identity).
#[derive(Message)]
#[rtype(result = "Result<KnownKey, PendingError>")]
pub struct AcceptPending {
    pub target: String,
    pub name: Option<String>,
}

impl Handler<AcceptPending> for KeyStore {
    type Result = Result<KnownKey, PendingError>;

    fn handle(&mut self, msg: AcceptPending, _: &mut Context<Self>) -> Self::Result {
        let pending = self.find_pending(&msg.target)?.clone();
        let name =
            msg.name.or(pending.identity.clone()).ok_or_else(|| PendingError::NoName(pending.public_key.clone()))?;
        let key = keys::decode_z85(&pending.public_key).ok_or(PendingError::NotAKey)?;
        let known = self.store.add(&key, Some(&name), Role::Client)?;
        self.forget_pending(&pending.public_key);
        self.settle_claims(pending.identity.as_deref());
        info!(self.log, "accepted a pending key"; "name" => &name, "key" => &pending.public_key, "address" => &pending.address);
        self.publish(KeyUpdate::Added(known.clone()));
        Ok(known)
    }
}

/// `client:reject`: the pending key is forgotten.
#[derive(Message)]
#[rtype(result = "Result<PendingKey, PendingError>")]
pub struct RejectPending {
    pub target: String,
}

impl Handler<RejectPending> for KeyStore {
    type Result = Result<PendingKey, PendingError>;

    fn handle(&mut self, msg: RejectPending, _: &mut Context<Self>) -> Self::Result {
        let key = self.find_pending(&msg.target)?.public_key.clone();
        let gone = self.forget_pending(&key).ok_or_else(|| PendingError::NotPending(key.clone()))?;
        self.settle_claims(gone.identity.as_deref());
        info!(self.log, "rejected a pending key"; "key" => &gone.public_key,
            "identity" => gone.identity.as_deref().unwrap_or("-"), "address" => &gone.address);
        Ok(gone)
    }
}

/// Re-read the key store from disk if it changed (SIGHUP).
#[derive(Message)]
#[rtype(result = "()")]
pub struct ReloadKeys;

impl Handler<ReloadKeys> for KeyStore {
    type Result = ();

    fn handle(&mut self, _: ReloadKeys, _: &mut Context<Self>) {
        if let Err(e) = self.reload() {
            error!(self.log, "cannot reload the key store; keeping the keys in memory"; "error" => %e);
        }
    }
}

impl Handler<KeysChanged> for KeyStore {
    type Result = ();

    /// Another server (or this one: applying twice is harmless) changed the
    /// cluster's keys; the socket thread follows, so a key revoked anywhere
    /// is cut off here too.
    fn handle(&mut self, msg: KeysChanged, _: &mut Context<Self>) {
        let Keys::Cluster(cluster) = &mut self.store else { return };
        let mut updates = Vec::new();
        for change in &msg.0 {
            match change {
                KeyChange::Put(known) => {
                    let new = keys::decode_z85(&known.public_key).is_some_and(|k| cluster.lookup(&k) != Some(known));
                    cluster.apply(change);
                    if new {
                        updates.push(KeyUpdate::Added(known.clone()));
                    }
                }
                KeyChange::Gone(z85) => {
                    if let Some(gone) = cluster.apply(change) {
                        if let Some(key) = keys::decode_z85(z85) {
                            self.revoked.insert(key);
                        }
                        info!(self.log, "a key was revoked in the cluster: cutting it off here";
                            "name" => gone.name.as_deref().unwrap_or("(unbound)"), "key" => z85);
                        updates.push(KeyUpdate::Removed(z85.clone()));
                    }
                }
                KeyChange::Token(_) | KeyChange::TokenGone(_) => {
                    cluster.apply(change);
                }
            }
        }
        let now_known: Vec<String> = msg
            .0
            .iter()
            .filter_map(|c| match c {
                KeyChange::Put(known) => Some(known.public_key.clone()),
                _ => None,
            })
            .collect();
        for key in now_known {
            self.forget_pending(&key);
        }
        for update in updates {
            self.publish(update);
        }
    }
}
