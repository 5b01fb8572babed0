//! The key store actor: owns `server_keys.yml` (CURVE only) and every change
//! to it, and decides the handshakes the socket thread cannot: keys that
//! are not in its copy of the store.
//!
//! - An unknown key may be one another process just added
//!   (`keys:create-admin`): the file is re-read when it changed.
//! - While no key is known, the first one is trusted and stored as the
//!   admin before the reply (trust on first use); requests are handled one
//!   at a time, so if two race exactly one wins.
//! - Every other unknown key is refused. Every request gets an answer.
//!
//! After each change the socket thread gets the new keys (a removed key's
//! connections are shut down there).

use actix::prelude::*;
use pantry_shared::keys::{self, KeyChangeError, KeyPair, KnownKey, PublicKey, Role, ServerKeyStore};
use pantry_shared::KeyStoreError;
use slog::{debug, error, info, Logger};

use crate::messages::ZapRequest;
use crate::outbox::{KeyUpdate, Outbound, Outbox};
use crate::zap::{self, Status};

pub struct KeyStore {
    store: ServerKeyStore,
    outbox: Outbox,
    trust_first_client: bool,
    log: Logger,
}

impl KeyStore {
    pub fn new(store: ServerKeyStore, outbox: Outbox, trust_first_client: bool, log: Logger) -> Self {
        KeyStore { store, outbox, trust_first_client, log }
    }

    fn publish(&self, update: KeyUpdate) {
        self.outbox.send(Outbound::Keys(update));
    }

    fn publish_all(&self) {
        self.publish(KeyUpdate::All(self.store.entries().to_vec()));
    }

    /// Re-reads the file if another process changed it; the socket thread
    /// gets the new keys.
    fn reload(&mut self) -> Result<bool, KeyStoreError> {
        let changed = self.store.reload_if_changed()?;
        if changed {
            info!(self.log, "key store changed on disk; reloaded";
                "file" => %self.store.path().display(), "known_clients" => self.store.known_count());
            self.publish_all();
        }
        Ok(changed)
    }

    fn decide(&mut self, request: &ZapRequest, key: &PublicKey) -> (Status, String, Option<KnownKey>) {
        if request.port.is_none() {
            return (Status::Denied, "unknown ZAP domain".into(), None);
        }
        if let Err(e) = self.reload() {
            error!(self.log, "cannot reload the key store; keeping the keys in memory"; "error" => %e);
        }
        if let Some(known) = self.store.lookup(key) {
            return (Status::Ok, "accepted".into(), Some(known.clone()));
        }
        if self.trust_first_client && self.store.known_count() == 0 {
            let z85 = keys::z85(key);
            return match self.store.add(key, Some("admin"), Role::Admin) {
                Ok(known) => {
                    info!(self.log, "trusted the first client on first use and stored its key as an admin";
                        "key" => &z85, "name" => "admin", "address" => &request.address,
                        "file" => %self.store.path().display());
                    self.publish(KeyUpdate::Added(known.clone()));
                    (Status::Ok, "accepted (trusted on first use)".into(), Some(known))
                }
                Err(e) => {
                    error!(self.log, "cannot store the first client's key; handshake refused";
                        "key" => &z85, "error" => %e);
                    (Status::Error, "key store write failed".into(), None)
                }
            };
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
        let outcome = if status == Status::Ok { reason.clone() } else { format!("rejected: {reason}") };
        debug!(self.log, "handshake {}", outcome;
            "name" => known.as_ref().and_then(|k| k.name.as_deref()).unwrap_or("-"), "key" => key,
            "address" => &request.address, "mechanism" => &request.mechanism,
            "socket" => request.port.map(|p| p.name()).unwrap_or("-"));
        let frames = zap::reply(request.envelope, &request.request_id, status, &reason, known.as_ref());
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
        let key = keys::decode_key(&pair.public_key, self.store.path(), "public_key")?;
        // An admin key always has a name: it is who the admin is in logs.
        let name = match (msg.name, msg.role) {
            (Some(name), _) => Some(name),
            (None, Role::Admin) => {
                self.store.reload_if_changed()?;
                Some(self.store.free_name("admin"))
            }
            (None, Role::Client) => None,
        };
        let known = self.store.add(&key, name.as_deref(), msg.role)?;
        info!(self.log, "created a key";
            "name" => known.name.as_deref().unwrap_or("(unbound)"), "role" => known.role.as_str(),
            "key" => &known.public_key, "known_clients" => self.store.known_count());
        self.publish(KeyUpdate::Added(known.clone()));
        Ok((self.store.keys.public_key.clone(), pair, known))
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
        Ok(self.store.entries().to_vec())
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
