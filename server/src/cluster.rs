//! Several servers, one fleet (`cluster:` in server.yml). etcd holds what
//! the servers share, under one prefix:
//!
//! ```text
//! PREFIX/server_public_key     the key pair every server of the cluster uses (public half)
//! PREFIX/keys/<Z85 key>        a known key: name, role, created (JSON)
//! PREFIX/names/<name>          the key bound to a name (so a name is unique fleet-wide)
//! PREFIX/tokens/<sha256>       an enrollment token's hash, uses left, expiry (JSON)
//! PREFIX/first_admin           set by the one trust-on-first-use admission of the cluster
//! PREFIX/clients/<identity>    a registered client and the server it is on (JSON, on that server's lease)
//! PREFIX/servers/<server_id>   where a server takes requests from the others (on its lease)
//! ```
//!
//! A command for clients on other servers goes to those servers over a
//! link: a DEALER to each one's receive port, authenticated with the key
//! pair every server of the cluster shares (a server knows that key as its
//! peers', [`PEER_NAME`], with the role `server`: it may only pass on the
//! commands an admin sent to clients, and subscribes to nothing). The
//! peer publishes to its
//! own agents and routes their answers back over the link.
//!
//! Every change is one etcd transaction that checks what it relies on (the
//! name is free, the key unknown, the token unchanged), so two servers
//! racing cannot both win. Each server keeps a copy of the keys in memory,
//! fed by a watch on the prefix, so handshakes are decided locally; the
//! registry's records are written on state changes only (a heartbeat stays
//! local) and attached to the server's lease, so a dead server's clients go
//! when its lease expires.
//!
//! The etcd client is async (tonic); it runs on a thread of its own with a
//! single-threaded runtime. The key store actor calls it and waits for the
//! answer (as it waited for its file before); everything else hands it work
//! and goes on.

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::mpsc as std_mpsc;
use std::sync::Arc;
use std::time::Duration;

use crate::key_file::{EnrollError, KeyChangeError, ServerKeyStore};
use actix::prelude::*;
use etcd_client::{
    Client, Compare, CompareOp, ConnectOptions, EventType, GetOptions, PutOptions, Txn, TxnOp, WatchOptions,
};
use pantry_shared::config::ClusterSection;
use pantry_shared::keys::{self, KnownKey, PublicKey, Role, Token};
use serde::{Deserialize, Serialize};
use slog::{info, warn, Logger};
use tokio::sync::mpsc;

/// How long a caller waits for etcd before it says etcd is unavailable.
const CALL_TIMEOUT: Duration = Duration::from_secs(5);
/// How long a lost watch or lease waits before it tries again.
const RETRY: Duration = Duration::from_millis(500);
/// Transactions retried when another server changed what they checked.
const TXN_ATTEMPTS: usize = 5;

#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    #[error("etcd at {endpoints}: {source}")]
    Etcd { endpoints: String, source: etcd_client::Error },
    #[error("etcd did not answer within {0:?}")]
    Timeout(Duration),
    #[error("the etcd thread stopped")]
    Stopped,
    #[error(
        "this server's public key {ours} is not the cluster's ({theirs}): every server of a cluster uses the same \
         key pair; copy security/curve/server_keys.yml from a server of the cluster into this server's root_dir"
    )]
    OtherServerKey { ours: String, theirs: String },
    #[error("{0}")]
    Data(String),
}

type Job = Box<dyn FnOnce(Client) -> Pin<Box<dyn Future<Output = ()> + Send>> + Send>;

/// The way to etcd: work handed to its thread.
pub struct Etcd {
    jobs: mpsc::UnboundedSender<Job>,
    endpoints: String,
    pub prefix: String,
    pub server_id: String,
    lease_ttl: Duration,
    log: Logger,
}

impl Etcd {
    /// Starts the etcd thread and connects.
    pub fn connect(cluster: &ClusterSection, log: Logger) -> Result<Arc<Etcd>, ClusterError> {
        let endpoints = cluster.etcd.join(",");
        let mut options = ConnectOptions::new()
            .with_connect_timeout(Duration::from_secs(2))
            .with_timeout(CALL_TIMEOUT)
            .with_keep_alive(Duration::from_secs(2), Duration::from_secs(2));
        if let (Some(user), Some(password)) = (&cluster.user, &cluster.password) {
            options = options.with_user(user.clone(), password.clone());
        }
        let (jobs, mut queue) = mpsc::unbounded_channel::<Job>();
        let (ready, connected) = std_mpsc::channel();
        let urls = cluster.etcd.clone();
        std::thread::Builder::new()
            .name("pantry-etcd".into())
            .spawn(move || {
                let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
                    Ok(runtime) => runtime,
                    Err(e) => {
                        let _ = ready.send(Err(etcd_client::Error::IoError(e)));
                        return;
                    }
                };
                runtime.block_on(async move {
                    let client = match Client::connect(&urls, Some(options)).await {
                        Ok(client) => {
                            let _ = ready.send(Ok(()));
                            client
                        }
                        Err(e) => {
                            let _ = ready.send(Err(e));
                            return;
                        }
                    };
                    while let Some(job) = queue.recv().await {
                        tokio::spawn(job(client.clone()));
                    }
                });
            })
            .map_err(|e| ClusterError::Data(format!("cannot start the etcd thread: {e}")))?;
        let wrap = |source| ClusterError::Etcd { endpoints: endpoints.clone(), source };
        match connected.recv_timeout(CALL_TIMEOUT) {
            Ok(Ok(())) => {}
            Ok(Err(e)) => return Err(wrap(e)),
            Err(_) => return Err(ClusterError::Timeout(CALL_TIMEOUT)),
        }
        Ok(Arc::new(Etcd {
            jobs,
            endpoints,
            prefix: cluster.prefix.trim_end_matches('/').to_owned(),
            server_id: cluster.server_id.clone(),
            lease_ttl: cluster.lease.0,
            log,
        }))
    }

    pub fn describe(&self) -> String {
        format!("etcd {} {}", self.endpoints, self.prefix)
    }

    fn key(&self, parts: &[&str]) -> String {
        let mut key = self.prefix.clone();
        for part in parts {
            key.push('/');
            key.push_str(part);
        }
        key
    }

    /// Runs `work` on the etcd thread and waits for its result.
    pub fn call<T, F, Fut>(&self, work: F) -> Result<T, ClusterError>
    where
        T: Send + 'static,
        F: FnOnce(Client) -> Fut + Send + 'static,
        Fut: Future<Output = Result<T, etcd_client::Error>> + Send + 'static,
    {
        let (done, result) = std_mpsc::channel();
        let job: Job = Box::new(move |client| {
            Box::pin(async move {
                let _ = done.send(work(client).await);
            })
        });
        self.jobs.send(job).map_err(|_| ClusterError::Stopped)?;
        match result.recv_timeout(CALL_TIMEOUT) {
            Ok(Ok(value)) => Ok(value),
            Ok(Err(source)) => Err(ClusterError::Etcd { endpoints: self.endpoints.clone(), source }),
            Err(_) => Err(ClusterError::Timeout(CALL_TIMEOUT)),
        }
    }

    /// Runs `work` on the etcd thread without waiting.
    pub fn spawn<F, Fut>(&self, work: F)
    where
        F: FnOnce(Client) -> Fut + Send + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        let job: Job = Box::new(move |client| Box::pin(work(client)));
        let _ = self.jobs.send(job);
    }

    /// Stores this server's public key as the cluster's if there is none
    /// yet; refuses a server whose key differs.
    pub fn check_server_key(&self, ours: &str) -> Result<(), ClusterError> {
        let key = self.key(&["server_public_key"]);
        let value = ours.to_owned();
        let theirs = self.call(move |mut client| async move {
            let txn = Txn::new()
                .when([Compare::version(key.clone(), CompareOp::Equal, 0)])
                .and_then([TxnOp::put(key.clone(), value, None)])
                .or_else([TxnOp::get(key, None)]);
            let response = client.txn(txn).await?;
            Ok(first_value(&response))
        })?;
        match theirs {
            Some(theirs) if theirs != ours => Err(ClusterError::OtherServerKey { ours: ours.into(), theirs }),
            _ => Ok(()),
        }
    }
}

/// The value of the first `get` in a transaction's responses.
fn first_value(response: &etcd_client::TxnResponse) -> Option<String> {
    response.op_responses().into_iter().find_map(|op| match op {
        etcd_client::TxnOpResponse::Get(get) => get.kvs().first().and_then(|kv| kv.value_str().ok().map(str::to_owned)),
        _ => None,
    })
}

/// A change to the shared keys, as the watch sees it.
#[derive(Debug, Clone)]
pub enum KeyChange {
    Put(KnownKey),
    Gone(String),
    Token(Token),
    TokenGone(String),
}

/// Changes seen by the watch, for the key store actor.
#[derive(Message)]
#[rtype(result = "()")]
pub struct KeysChanged(pub Vec<KeyChange>);

/// A registry record as etcd keeps it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FleetRecord {
    pub application: Option<String>,
    pub environment: Option<String>,
    #[serde(default)]
    pub roles: Vec<String>,
    pub online: bool,
    /// Seconds since the epoch.
    pub last_seen: u64,
    pub server: String,
    /// Its key (CURVE): the server an admin used lets it fetch an upload.
    #[serde(default)]
    pub key: Option<String>,
    /// Its facts, when it gathered them (seconds since the epoch) and how
    /// often it does: every server targets `-F` the same way.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub facts: Option<pantry_shared::facts::Facts>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub facts_gathered: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub facts_interval: Option<u64>,
}

impl FleetRecord {
    /// The client as a filter, for targeting.
    pub fn filter(&self, identity: &str) -> pantry_shared::filter::ClientFilter {
        pantry_shared::filter::ClientFilter {
            identity: Some(identity.to_owned()),
            application: self.application.clone(),
            environment: self.environment.clone(),
            roles: self.roles.clone(),
        }
    }
}

/// A change to the fleet's registry, as the watch sees it.
#[derive(Message, Debug, Clone)]
#[rtype(result = "()")]
pub enum RegistryChange {
    Put {
        identity: String,
        record: FleetRecord,
    },
    Gone {
        identity: String,
    },
    /// A server (re)joined: where its receive port is.
    Server {
        id: String,
        receive: String,
    },
    ServerGone {
        id: String,
    },
}

/// The name the servers of a cluster know each other's key by.
pub const PEER_NAME: &str = "pantry-server";

/// The keys every server shares, with this server's copy of them.
pub struct ClusterKeys {
    etcd: Arc<Etcd>,
    server_public_key: String,
    by_key: HashMap<PublicKey, KnownKey>,
    names: HashMap<String, PublicKey>,
    tokens: HashMap<String, Token>,
    /// The etcd revision the copy was read at: the watch starts after it.
    pub revision: i64,
    /// The fleet's registry as read with the keys, for the registry actor.
    pub clients: Vec<RegistryChange>,
}

fn unavailable(e: ClusterError) -> KeyChangeError {
    KeyChangeError::Unavailable(e.to_string())
}

fn json<T: Serialize>(value: &T) -> String {
    // Plain structs of strings and numbers: they always serialize.
    serde_json::to_string(value).unwrap_or_default()
}

impl ClusterKeys {
    /// Reads every key and token.
    pub fn load(etcd: Arc<Etcd>, server_public_key: &str) -> Result<ClusterKeys, ClusterError> {
        let prefix = format!("{}/", etcd.prefix);
        let (kvs, revision) = etcd.call(move |mut client| async move {
            let response = client.get(prefix, Some(GetOptions::new().with_prefix())).await?;
            let revision = response.header().map_or(0, |h| h.revision());
            let kvs: Vec<(String, String)> = response
                .kvs()
                .iter()
                .filter_map(|kv| Some((kv.key_str().ok()?.to_owned(), kv.value_str().ok()?.to_owned())))
                .collect();
            Ok((kvs, revision))
        })?;
        let mut keys = ClusterKeys {
            etcd,
            server_public_key: server_public_key.to_owned(),
            by_key: HashMap::new(),
            names: HashMap::new(),
            tokens: HashMap::new(),
            revision,
            clients: Vec::new(),
        };
        let clients_prefix = keys.etcd.key(&["clients", ""]);
        let servers_prefix = keys.etcd.key(&["servers", ""]);
        for (key, value) in kvs {
            if let Some(change) = keys.parse_put(&key, &value) {
                keys.apply(&change);
            } else if let (Some(identity), Ok(record)) =
                (key.strip_prefix(&clients_prefix), serde_json::from_str::<FleetRecord>(&value))
            {
                keys.clients.push(RegistryChange::Put { identity: identity.to_owned(), record });
            } else if let Some(id) = key.strip_prefix(&servers_prefix) {
                keys.clients.push(RegistryChange::Server { id: id.to_owned(), receive: value });
            }
        }
        // The other servers connect with the key pair all share.
        if keys::decode_z85(server_public_key).is_some() {
            let peer = KnownKey {
                public_key: server_public_key.to_owned(),
                name: Some(PEER_NAME.into()),
                role: Role::Server,
                created: None,
            };
            keys.apply(&KeyChange::Put(peer));
        }
        Ok(keys)
    }

    pub fn etcd(&self) -> &Arc<Etcd> {
        &self.etcd
    }

    /// The change a put of `key` is, if it is about keys or tokens.
    fn parse_put(&self, key: &str, value: &str) -> Option<KeyChange> {
        let rest = key.strip_prefix(&self.etcd.prefix)?.strip_prefix('/')?;
        if rest.starts_with("keys/") {
            serde_json::from_str(value).ok().map(KeyChange::Put)
        } else if rest.starts_with("tokens/") {
            serde_json::from_str(value).ok().map(KeyChange::Token)
        } else {
            None
        }
    }

    /// Applies a change (ours or another server's; applying one twice is
    /// harmless). Returns the key it removed, if any.
    pub fn apply(&mut self, change: &KeyChange) -> Option<KnownKey> {
        match change {
            KeyChange::Put(known) => {
                let key = keys::decode_z85(&known.public_key)?;
                if let Some(old) = self.by_key.insert(key, known.clone()) {
                    if let Some(name) = old.name {
                        self.names.remove(&name);
                    }
                }
                if let Some(name) = &known.name {
                    self.names.insert(name.clone(), key);
                }
                None
            }
            KeyChange::Gone(z85) => {
                let key = keys::decode_z85(z85)?;
                let gone = self.by_key.remove(&key)?;
                if let Some(name) = &gone.name {
                    if self.names.get(name) == Some(&key) {
                        self.names.remove(name);
                    }
                }
                Some(gone)
            }
            KeyChange::Token(token) => {
                self.tokens.insert(token.hash.clone(), token.clone());
                None
            }
            KeyChange::TokenGone(hash) => {
                self.tokens.remove(hash);
                None
            }
        }
    }

    pub fn server_public_key(&self) -> &str {
        &self.server_public_key
    }

    pub fn lookup(&self, key: &PublicKey) -> Option<&KnownKey> {
        self.by_key.get(key)
    }

    /// The keys etcd holds (the servers' own key is not one of them: an
    /// empty cluster still trusts its first client).
    pub fn known_count(&self) -> usize {
        let peer = keys::decode_z85(&self.server_public_key).is_some_and(|k| self.by_key.contains_key(&k));
        self.by_key.len() - usize::from(peer)
    }

    pub fn entries(&self) -> Vec<KnownKey> {
        let mut all: Vec<KnownKey> = self.by_key.values().cloned().collect();
        all.sort_by(|a, b| a.created.cmp(&b.created).then_with(|| a.public_key.cmp(&b.public_key)));
        all
    }

    fn is_taken(&self, name: &str) -> bool {
        self.names.contains_key(name)
    }

    pub fn free_name(&self, base: &str) -> String {
        if !self.is_taken(base) {
            return base.to_owned();
        }
        (2..).map(|i| format!("{base}-{i}")).find(|n| !self.is_taken(n)).unwrap_or_default()
    }

    fn new_key(key: &PublicKey, name: Option<&str>, role: Role) -> KnownKey {
        KnownKey {
            public_key: keys::z85(key),
            name: name.map(str::to_owned),
            role,
            created: Some(humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string()),
        }
    }

    /// Puts `known` (and its name) if neither the key nor the name exists,
    /// plus `extra` operations and checks; which one failed otherwise.
    fn create(&mut self, known: KnownKey, checks: Vec<Compare>, extra: Vec<TxnOp>) -> Result<bool, ClusterError> {
        let etcd = self.etcd.clone();
        let key_path = etcd.key(&["keys", &known.public_key]);
        let mut when = vec![Compare::version(key_path.clone(), CompareOp::Equal, 0)];
        let mut then = vec![TxnOp::put(key_path, json(&known), None)];
        if let Some(name) = &known.name {
            let name_path = etcd.key(&["names", name]);
            when.push(Compare::version(name_path.clone(), CompareOp::Equal, 0));
            then.push(TxnOp::put(name_path, known.public_key.clone(), None));
        }
        when.extend(checks);
        then.extend(extra);
        let succeeded = etcd.call(move |mut client| async move {
            Ok(client.txn(Txn::new().when(when).and_then(then)).await?.succeeded())
        })?;
        if succeeded {
            self.apply(&KeyChange::Put(known));
        }
        Ok(succeeded)
    }

    /// Why a creation failed: the key or the name exists (etcd says).
    fn why_not_created(&mut self, known: &KnownKey) -> KeyChangeError {
        let etcd = self.etcd.clone();
        let key_path = etcd.key(&["keys", &known.public_key]);
        let name_path = known.name.as_ref().map(|n| etcd.key(&["names", n]));
        let found = etcd.call(move |mut client| async move {
            let key =
                client.get(key_path, None).await?.kvs().first().and_then(|kv| kv.value_str().ok().map(str::to_owned));
            let name = match name_path {
                Some(path) => !client.get(path, None).await?.kvs().is_empty(),
                None => false,
            };
            Ok((key, name))
        });
        match found {
            Ok((Some(existing), _)) => {
                let name = serde_json::from_str::<KnownKey>(&existing).ok().and_then(|k| k.name);
                KeyChangeError::KeyKnown(name.unwrap_or_else(|| "(unbound)".into()))
            }
            Ok((None, true)) => KeyChangeError::NameTaken(known.name.clone().unwrap_or_default()),
            Ok((None, false)) => KeyChangeError::Unavailable("the key store changed meanwhile; try again".into()),
            Err(e) => unavailable(e),
        }
    }

    pub fn add(&mut self, key: &PublicKey, name: Option<&str>, role: Role) -> Result<KnownKey, KeyChangeError> {
        if let Some(name) = name {
            pantry_shared::filter::ClientFilter::check_identity(name).map_err(KeyChangeError::BadName)?;
        }
        let known = Self::new_key(key, name, role);
        if self.create(known.clone(), Vec::new(), Vec::new()).map_err(unavailable)? {
            return Ok(known);
        }
        Err(self.why_not_created(&known))
    }

    /// Trust on first use, once for the whole cluster: `Ok(None)` when
    /// another key was the first.
    pub fn trust_first(&mut self, key: &PublicKey) -> Result<Option<KnownKey>, KeyChangeError> {
        let marker = self.etcd.key(&["first_admin"]);
        let known = Self::new_key(key, Some("admin"), Role::Admin);
        let checks = vec![Compare::version(marker.clone(), CompareOp::Equal, 0)];
        let extra = vec![TxnOp::put(marker, known.public_key.clone(), None)];
        let created = self.create(known.clone(), checks, extra).map_err(unavailable)?;
        Ok(created.then_some(known))
    }

    pub fn bind(&mut self, key: &PublicKey, name: &str) -> Result<KnownKey, KeyChangeError> {
        pantry_shared::filter::ClientFilter::check_identity(name).map_err(KeyChangeError::BadName)?;
        let current = self.lookup(key).cloned().ok_or_else(|| KeyChangeError::NotFound(keys::z85(key)))?;
        if let Some(bound) = &current.name {
            return Err(KeyChangeError::AlreadyBound(bound.clone()));
        }
        let etcd = self.etcd.clone();
        let key_path = etcd.key(&["keys", &current.public_key]);
        let name_path = etcd.key(&["names", name]);
        let bound = KnownKey { name: Some(name.to_owned()), ..current.clone() };
        let txn = Txn::new()
            .when([
                Compare::value(key_path.clone(), CompareOp::Equal, json(&current)),
                Compare::version(name_path.clone(), CompareOp::Equal, 0),
            ])
            .and_then([
                TxnOp::put(key_path, json(&bound), None),
                TxnOp::put(name_path, bound.public_key.clone(), None),
            ]);
        let succeeded = etcd.call(move |mut client| async move { Ok(client.txn(txn).await?.succeeded()) });
        if !succeeded.map_err(unavailable)? {
            // The name was taken (or the key bound) by another server.
            return Err(KeyChangeError::NameTaken(name.to_owned()));
        }
        self.apply(&KeyChange::Put(bound.clone()));
        Ok(bound)
    }

    pub fn add_token(&mut self, token: Token) -> Result<(), KeyChangeError> {
        if let Some(name) = &token.name {
            pantry_shared::filter::ClientFilter::check_identity(name).map_err(KeyChangeError::BadName)?;
        }
        let path = self.etcd.key(&["tokens", &token.hash]);
        let value = json(&token);
        self.etcd
            .call(move |mut client| async move {
                client.put(path, value, None).await?;
                Ok(())
            })
            .map_err(unavailable)?;
        self.apply(&KeyChange::Token(token));
        Ok(())
    }

    /// The enrollment tokens.
    pub fn tokens(&self) -> Vec<Token> {
        self.tokens.values().cloned().collect()
    }

    /// Withdraws the token named `id`, cluster-wide.
    pub fn revoke_token(&mut self, id: &str) -> Result<Token, KeyChangeError> {
        let token = crate::key_file::find_token(self.tokens.values(), id)?.clone();
        let path = self.etcd.key(&["tokens", &token.hash]);
        self.etcd
            .call(move |mut client| async move {
                client.delete(path, None).await?;
                Ok(())
            })
            .map_err(unavailable)?;
        self.apply(&KeyChange::TokenGone(token.hash.clone()));
        Ok(token)
    }

    /// Enrolls `key` with `token`: the key is stored and the token loses a
    /// use in one transaction, retried when another server used the token
    /// meanwhile.
    pub fn enroll(
        &mut self,
        key: &PublicKey,
        token: &str,
        configured: Option<&str>,
        default_name: &str,
    ) -> Result<KnownKey, EnrollError> {
        let hash = keys::token_hash(token);
        let path = self.etcd.key(&["tokens", &hash]);
        for _ in 0..TXN_ATTEMPTS {
            let read = path.clone();
            let current = self
                .etcd
                .call(move |mut client| async move {
                    let response = client.get(read, None).await?;
                    Ok(response.kvs().first().and_then(|kv| Some((kv.value_str().ok()?.to_owned(), kv.mod_revision()))))
                })
                .map_err(|e| EnrollError::Key(unavailable(e)))?;
            let (text, revision) = current.ok_or(EnrollError::UnknownToken)?;
            let mut entry: Token = serde_json::from_str(&text).map_err(|_| EnrollError::UnknownToken)?;
            let name = crate::key_file::name_for(&entry, configured, default_name)?;
            entry.uses_left -= 1;
            let known = Self::new_key(key, Some(&name), Role::Client);
            let checks = vec![Compare::mod_revision(path.clone(), CompareOp::Equal, revision)];
            let extra = vec![TxnOp::put(path.clone(), json(&entry), None)];
            if self.create(known.clone(), checks, extra).map_err(|e| EnrollError::Key(unavailable(e)))? {
                self.apply(&KeyChange::Token(entry));
                return Ok(known);
            }
            match self.why_not_created(&known) {
                // The token changed under us: read it again.
                KeyChangeError::Unavailable(_) => continue,
                other => return Err(EnrollError::Key(other)),
            }
        }
        Err(EnrollError::Key(KeyChangeError::Unavailable("the token is in use by other servers; try again".into())))
    }

    pub fn revoke(&mut self, name_or_key: &str) -> Result<KnownKey, KeyChangeError> {
        let known = self
            .names
            .get(name_or_key)
            .and_then(|key| self.by_key.get(key))
            .or_else(|| keys::decode_z85(name_or_key).and_then(|key| self.by_key.get(&key)))
            .cloned()
            .ok_or_else(|| KeyChangeError::NotFound(name_or_key.to_owned()))?;
        let etcd = self.etcd.clone();
        let key_path = etcd.key(&["keys", &known.public_key]);
        let mut then = vec![TxnOp::delete(key_path.clone(), None)];
        if let Some(name) = &known.name {
            then.push(TxnOp::delete(etcd.key(&["names", name]), None));
        }
        let txn = Txn::new().when([Compare::version(key_path, CompareOp::Greater, 0)]).and_then(then);
        let succeeded = etcd.call(move |mut client| async move { Ok(client.txn(txn).await?.succeeded()) });
        if !succeeded.map_err(unavailable)? {
            return Err(KeyChangeError::NotFound(name_or_key.to_owned()));
        }
        self.apply(&KeyChange::Gone(known.public_key.clone()));
        Ok(known)
    }

    /// Copies keys and tokens into etcd (`keys:import`), skipping keys or
    /// names it already has. Returns (imported, skipped).
    pub fn import(&mut self, known: &[KnownKey], tokens: &[Token]) -> Result<(usize, usize), KeyChangeError> {
        let (mut imported, mut skipped) = (0, 0);
        for entry in known {
            if self.create(entry.clone(), Vec::new(), Vec::new()).map_err(unavailable)? {
                imported += 1;
            } else {
                skipped += 1;
            }
        }
        for token in tokens {
            self.add_token(token.clone())?;
        }
        Ok((imported, skipped))
    }
}

/// The server's own key store (for its key pair) and the cluster's keys,
/// for the commands that change keys without a running server.
pub fn open_keys(
    config: &pantry_shared::config::Config,
    section: &ClusterSection,
) -> Result<(ServerKeyStore, ClusterKeys), ClusterError> {
    let store = ServerKeyStore::open(config.root_dir()).map_err(|e| ClusterError::Data(e.to_string()))?;
    let etcd = Etcd::connect(section, Logger::root(slog::Discard, slog::o!()))?;
    etcd.check_server_key(&store.keys.public_key)?;
    let cluster = ClusterKeys::load(etcd, &store.keys.public_key)?;
    Ok((store, cluster))
}

/// A key was revoked in the cluster (by this server or another): the
/// dispatcher treats it as its own revocation (drops what its connections
/// still deliver, forgets its clients, stops its transfers).
#[derive(Message)]
#[rtype(result = "()")]
pub struct RevokedInCluster {
    pub key: String,
}

/// Where the watch delivers what it sees.
pub struct WatchTargets {
    pub keys: Option<Recipient<KeysChanged>>,
    pub revoked: Recipient<RevokedInCluster>,
    pub registry: Recipient<RegistryChange>,
}

/// Watches the prefix from `after` on: key and token changes go to the key
/// store (revocations to the dispatcher too), registry changes to the
/// registry. A lost watch is made again from the last revision seen, so
/// nothing is missed while etcd was away.
pub fn watch(etcd: &Arc<Etcd>, after: i64, to: WatchTargets) {
    let WatchTargets { keys, revoked, registry } = to;
    let prefix = format!("{}/", etcd.prefix);
    let log = etcd.log.clone();
    let describe = etcd.describe();
    etcd.spawn(move |mut client| async move {
        let mut next = after + 1;
        let mut lost = false;
        loop {
            let options = WatchOptions::new().with_prefix().with_start_revision(next).with_prev_key();
            match client.watch(prefix.clone(), Some(options)).await {
                Ok(mut stream) => {
                    if lost {
                        info!(log, "etcd watch restored: catching up"; "etcd" => &describe, "from_revision" => next);
                        lost = false;
                    }
                    while let Ok(Some(response)) = stream.message().await {
                        if response.compact_revision() > 0 {
                            warn!(log, "etcd compacted past the last revision seen: some changes may be missed \
                                until the next restart"; "etcd" => &describe, "revision" => next);
                            next = response.compact_revision();
                            break;
                        }
                        let (mut key_changes, mut registry_changes) = (Vec::new(), Vec::new());
                        for event in response.events() {
                            let Some(kv) = event.kv() else { continue };
                            next = next.max(kv.mod_revision() + 1);
                            let Ok(path) = kv.key_str() else { continue };
                            let Some(rest) = path.strip_prefix(&prefix) else { continue };
                            let deleted = event.event_type() == EventType::Delete;
                            let value = kv.value_str().unwrap_or_default();
                            if let Some(z85) = rest.strip_prefix("keys/") {
                                match (deleted, serde_json::from_str(value)) {
                                    (true, _) => key_changes.push(KeyChange::Gone(z85.to_owned())),
                                    (false, Ok(known)) => key_changes.push(KeyChange::Put(known)),
                                    (false, Err(_)) => {}
                                }
                            } else if let Some(hash) = rest.strip_prefix("tokens/") {
                                match (deleted, serde_json::from_str(value)) {
                                    (true, _) => key_changes.push(KeyChange::TokenGone(hash.to_owned())),
                                    (false, Ok(token)) => key_changes.push(KeyChange::Token(token)),
                                    (false, Err(_)) => {}
                                }
                            } else if let Some(id) = rest.strip_prefix("servers/") {
                                let id = id.to_owned();
                                registry_changes.push(match deleted {
                                    true => RegistryChange::ServerGone { id },
                                    false => RegistryChange::Server { id, receive: value.to_owned() },
                                });
                            } else if let Some(identity) = rest.strip_prefix("clients/") {
                                let identity = identity.to_owned();
                                match (deleted, serde_json::from_str(value)) {
                                    (true, _) => registry_changes.push(RegistryChange::Gone { identity }),
                                    (false, Ok(record)) => {
                                        registry_changes.push(RegistryChange::Put { identity, record })
                                    }
                                    (false, Err(_)) => {}
                                }
                            }
                        }
                        let gone_keys: Vec<String> = key_changes
                            .iter()
                            .filter_map(|c| match c {
                                KeyChange::Gone(z85) => Some(z85.clone()),
                                _ => None,
                            })
                            .collect();
                        if let Some(keys) = keys.as_ref().filter(|_| !key_changes.is_empty()) {
                            keys.do_send(KeysChanged(key_changes));
                        }
                        for key in gone_keys {
                            revoked.do_send(RevokedInCluster { key });
                        }
                        // An expired lease deletes the server and its records
                        // in one revision: the server goes first, so that its
                        // records are read as "its server left" (offline), not
                        // as deleted by a live server (forgotten).
                        registry_changes.sort_by_key(|c| !matches!(c, RegistryChange::ServerGone { .. }));
                        for change in registry_changes {
                            registry.do_send(change);
                        }
                    }
                }
                Err(e) => {
                    if !lost {
                        warn!(log, "etcd watch lost: serving from this server's copy until etcd is back";
                            "etcd" => &describe, "error" => %e);
                    }
                    lost = true;
                }
            }
            if !lost {
                lost = true;
                warn!(log, "etcd watch lost: serving from this server's copy until etcd is back"; "etcd" => &describe);
            }
            tokio::time::sleep(RETRY).await;
        }
    });
}

/// This server's records in the fleet's registry, on a lease of its own
/// that it keeps alive: when the server dies, etcd deletes them.
///
/// Every write goes through one queue drained by one task, in order: a
/// client's "online" must not land before the "offline" written just
/// ahead of it (separate requests can reach etcd in either order). What
/// is queued while a batch is in flight is coalesced, the latest change
/// per client winning, and written in transactions of [`BATCH`] puts.
///
/// "Online" is written as it is: the client is connected here now. Any
/// other change is written only over this server's own record (or none),
/// so a server that sees a client leave does not overwrite the record of
/// the server the client moved to.
pub struct RegistryWriter {
    server_id: String,
    writes: mpsc::UnboundedSender<(String, RecordWrite)>,
}

/// Puts per transaction (etcd refuses more than 128 operations in one).
const BATCH: usize = 100;

enum RecordWrite {
    Put { value: String, online: bool },
    Delete,
}

impl RegistryWriter {
    /// Grants the lease and keeps it alive (a new one after etcd was away;
    /// the records are written again then by `rewrite`).
    /// `receive` is where the other servers send this one requests.
    pub fn start(etcd: Arc<Etcd>, rewrite: Recipient<RewriteRecords>, receive: String) -> RegistryWriter {
        let lease = Arc::new(Leases::default());
        let (shared, ttl, log, describe) = (lease.clone(), etcd.lease_ttl, etcd.log.clone(), etcd.describe());
        let server_path = etcd.key(&["servers", &etcd.server_id]);
        etcd.spawn(move |mut client| async move {
            let ttl_seconds = i64::try_from(ttl.as_secs()).unwrap_or(5).max(2);
            loop {
                let granted = match client.lease_grant(ttl_seconds, None).await {
                    Ok(granted) => granted.id(),
                    Err(e) => {
                        warn!(log, "cannot take an etcd lease for the registry; retrying"; "etcd" => &describe, "error" => %e);
                        tokio::time::sleep(RETRY).await;
                        continue;
                    }
                };
                let before = shared.current.swap(granted, std::sync::atomic::Ordering::Relaxed);
                shared.previous.store(before, std::sync::atomic::Ordering::Relaxed);
                let put = client.put(server_path.clone(), receive.clone(), Some(PutOptions::new().with_lease(granted)));
                if let Err(e) = put.await {
                    warn!(log, "cannot announce this server in etcd"; "etcd" => &describe, "error" => %e);
                }
                rewrite.do_send(RewriteRecords);
                let Ok((mut keeper, mut stream)) = client.lease_keep_alive(granted).await else {
                    tokio::time::sleep(RETRY).await;
                    continue;
                };
                loop {
                    tokio::time::sleep(ttl / 3).await;
                    if keeper.keep_alive().await.is_err() {
                        break;
                    }
                    match stream.message().await {
                        Ok(Some(response)) if response.ttl() > 0 => {}
                        _ => break,
                    }
                }
                warn!(log, "etcd lease for the registry lost; taking a new one"; "etcd" => &describe);
            }
        });
        let (writes, queue) = mpsc::unbounded_channel();
        let (prefix, log) = (etcd.key(&["clients"]), etcd.log.clone());
        etcd.spawn(move |client| write_records(client, queue, lease, prefix, log));
        RegistryWriter { server_id: etcd.server_id.clone(), writes }
    }

    pub fn server_id(&self) -> &str {
        &self.server_id
    }

    pub fn put(&self, identity: &str, record: &FleetRecord) {
        let write = RecordWrite::Put { value: json(record), online: record.online };
        let _ = self.writes.send((identity.to_owned(), write));
    }

    /// Deletes the record if this server wrote it last (a client that moved
    /// on is another server's record now).
    pub fn delete(&self, identity: &str) {
        let _ = self.writes.send((identity.to_owned(), RecordWrite::Delete));
    }
}

/// The registry's leases: the current one, and the one before it (records
/// written on a lease that was replaced while etcd was away are still this
/// server's until that lease expires).
#[derive(Default)]
struct Leases {
    current: std::sync::atomic::AtomicI64,
    previous: std::sync::atomic::AtomicI64,
}

/// A transaction doing `op` if the record at `path` is on one of this
/// server's leases or, with `or_absent`, if there is none.
fn if_ours(path: &str, [current, previous]: [i64; 2], op: TxnOp, or_absent: bool) -> Txn {
    let mut otherwise = Vec::new();
    if or_absent {
        otherwise
            .push(TxnOp::txn(Txn::new().when([Compare::version(path, CompareOp::Equal, 0)]).and_then([op.clone()])));
    }
    if previous != 0 && previous != current {
        let on_previous = Txn::new()
            .when([Compare::lease(path, CompareOp::Equal, previous)])
            .and_then([op.clone()])
            .or_else(otherwise);
        otherwise = vec![TxnOp::txn(on_previous)];
    }
    Txn::new().when([Compare::lease(path, CompareOp::Equal, current)]).and_then([op]).or_else(otherwise)
}

/// The registry writer's task: one batch at a time, in the order queued.
async fn write_records(
    mut client: Client,
    mut queue: mpsc::UnboundedReceiver<(String, RecordWrite)>,
    leases: Arc<Leases>,
    prefix: String,
    log: Logger,
) {
    while let Some(first) = queue.recv().await {
        let mut order = Vec::new();
        let mut latest = HashMap::new();
        let mut next = Some(first);
        while let Some((identity, write)) = next {
            if latest.insert(identity.clone(), write).is_none() {
                order.push(identity);
            }
            next = queue.try_recv().ok();
        }
        let lease = leases.current.load(std::sync::atomic::Ordering::Relaxed);
        let previous = leases.previous.load(std::sync::atomic::Ordering::Relaxed);
        let mut puts = Vec::new();
        for identity in order {
            let path = format!("{prefix}/{identity}");
            match latest.remove(&identity) {
                // Without a lease yet, the records are written when it comes (`RewriteRecords`).
                Some(RecordWrite::Put { value, online }) if lease != 0 => {
                    let put = TxnOp::put(path.clone(), value, Some(PutOptions::new().with_lease(lease)));
                    puts.push(match online {
                        true => put,
                        false => TxnOp::txn(if_ours(&path, [lease, previous], put, true)),
                    });
                }
                Some(RecordWrite::Delete) => {
                    let txn = if_ours(&path, [lease, previous], TxnOp::delete(path.clone(), None), false);
                    if let Err(e) = client.txn(txn).await {
                        warn!(log, "cannot delete a registry record in etcd"; "identity" => &identity, "error" => %e);
                    }
                }
                _ => {}
            }
        }
        while !puts.is_empty() {
            let batch: Vec<TxnOp> = puts.drain(..puts.len().min(BATCH)).collect();
            let count = batch.len();
            if let Err(e) = client.txn(Txn::new().and_then(batch)).await {
                warn!(log, "cannot write registry records to etcd"; "records" => count, "error" => %e);
            }
        }
    }
}

/// The registry lease was (re)granted: write every record again.
#[derive(Message)]
#[rtype(result = "()")]
pub struct RewriteRecords;
