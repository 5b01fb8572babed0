//! The command dispatcher: every decoded message from the receive socket
//! ends here.
//!
//! - [`crate::authorize`] judges it first (deny by default).
//! - Answers to forwarded requests do not come here: the socket thread
//!   routes them with the table of pending requests ([`crate::routes`]),
//!   which the dispatcher fills and expires.
//! - Server commands (`RegisterClient`, `Status`, key management,
//!   application configs) run here.
//! - Every other request is forwarded: the requester first gets the list of
//!   the clients that will answer, then the request is published to them.
//!   A pending request belongs to its requester: its uuid cannot be taken
//!   over, and each requester has a bounded number of them.
//!
//! Responses to a requester never go over PUB.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use actix::prelude::*;
use pantry_shared::commands::enroll::{self, Enrolled};
use pantry_shared::commands::jobs as jobs_command;
use pantry_shared::commands::{
    app_config, client_forget, client_list, client_pending, client_revoke, client_token, client_tokens, create_client,
    recipients, register_client, status, upload, Kind, RunsOn,
};
use pantry_shared::filter::Identities;
use pantry_shared::keys::{self, Token};
use pantry_shared::Message;
use serde_json::Value;
use slog::{debug, error, info, warn, Logger};

use crate::answers;
use crate::audit::{self, Audit, AuditLine};
use crate::authorize::{authorize, Verdict};
use crate::client_registry::{
    ClientRegistry, Forget, ForgetIdentity, LinkState, Listed, Listening, PeerClosed, Query, Reached, Recipients,
    Register, Registered,
};
use crate::cluster::RevokedInCluster;
use crate::file_service::{AuthorizeTransfer, FileService, KeyRevoked};
use crate::jobs::{self, JobReader, ListJobs, ShowJob, UsedUuids};
use crate::key_store::{
    AcceptPending, AddToken, BindKey, CreateKey, EnrollKey, KeyStore, ListKeys, ListPending, ListTokens, RejectPending,
    RevokeKey, RevokeToken,
};
use crate::log_limit::{Admit, LogLimit};
use crate::messages::{Grant, Hex, Incoming, PeerAuth, Presence, Standing};
use crate::metrics::{Metrics, Refusal};
use crate::outbox::{Outbound, Outbox};
use crate::routes::{Answered, RouteError, Routes, MAX_UNANSWERED_BYTES_PER_AGENT};
use crate::store::{JobRow, Write, Writer};

/// How long the answers to a forwarded request are awaited before the
/// server forgets the request (the requester has its own, shorter timeout).
const PENDING_TTL: Duration = Duration::from_secs(600);
const SWEEP_EVERY: Duration = Duration::from_secs(30);

/// The window of [`LogLimit`]: one line per source this often at most.
const LOG_WINDOW: Duration = Duration::from_secs(60);
/// Refusals: one line per key and address this often at most, then a
/// count.
const REFUSAL_WINDOW: Duration = Duration::from_secs(10);

pub struct CommandDispatcher {
    outbox: Outbox,
    registry: Addr<ClientRegistry>,
    files: Addr<FileService>,
    /// Present under CURVE only.
    keys: Option<Addr<KeyStore>>,
    routes: Arc<Routes>,
    cluster_files: Option<String>,
    /// Where application configs live.
    root_dir: PathBuf,
    /// Keys revoked lately, and when: their open connections may still
    /// deliver a message or two before the cut-off lands. Forgotten after
    /// [`REVOKED_GRACE`], or at once when the key is accepted again.
    revoked: HashMap<String, Instant>,
    /// Known key → when it last sent something (keys the server does not
    /// know are not remembered here), and which keys are connected.
    seen: HashMap<String, SystemTime>,
    connected: HashSet<String>,
    /// The record of every request.
    audit: Audit,
    audit_fail_closed: bool,
    /// The job store (`None`: `jobs.enabled: false`).
    jobs: Option<JobSettings>,
    db: Writer,
    job_reader: Addr<JobReader>,
    used_uuids: UsedUuids,
    /// Changes the server is making (their jobs' results come with the
    /// answer).
    changes: HashSet<String>,
    /// Lines a peer can cause at will, limited per source: requests to
    /// agents that do not read, by agent; refusals, by key and address.
    log_limit: LogLimit,
    refusal_log: LogLimit,
    metrics: Arc<Metrics>,
    log: Logger,
}

/// What the dispatcher needs besides the other actors.
pub struct Settings {
    pub root_dir: PathBuf,
    pub audit: Audit,
    pub audit_fail_closed: bool,
    pub jobs: Option<JobSettings>,
    pub db: Writer,
    pub job_reader: Addr<JobReader>,
    /// The uuids jobs were recorded under (with `jobs`).
    pub used_uuids: UsedUuids,
    pub metrics: Arc<Metrics>,
    pub routes: Arc<Routes>,
    /// In a cluster: where other servers' agents fetch this server's
    /// uploads.
    pub cluster_files: Option<String>,
}

/// `jobs:` in server.yml.
#[derive(Debug, Clone, Copy)]
pub struct JobSettings {
    pub max_output: usize,
    pub keep: Duration,
}

/// The identity patterns of a request, as given.
fn identity_patterns(request: &Message) -> Vec<String> {
    request
        .metadata
        .custom
        .get(pantry_shared::filter::IDENTITIES_FIELD)
        .and_then(Value::as_array)
        .map(|a| a.iter().filter_map(Value::as_str).map(str::to_owned).collect())
        .unwrap_or_default()
}

/// Marks a request another server of the cluster passed on: it goes to
/// this server's clients only.
const CLUSTER_PEER_FIELD: &str = "cluster_peer";

/// How often old jobs are pruned.
const PRUNE_EVERY: Duration = Duration::from_secs(10);

/// Who asked: the connection, its key, what it sent.
struct Request {
    peer: Vec<u8>,
    auth: Option<Arc<PeerAuth>>,
    message: Message,
}

impl Request {
    fn key(&self) -> &str {
        self.auth.as_ref().map(|a| a.key.as_str()).unwrap_or("-")
    }

    fn address(&self) -> &str {
        self.auth.as_ref().map(|a| a.address.as_str()).unwrap_or("-")
    }
}

impl CommandDispatcher {
    pub fn new(
        outbox: Outbox,
        registry: Addr<ClientRegistry>,
        files: Addr<FileService>,
        keys: Option<Addr<KeyStore>>,
        settings: Settings,
        log: Logger,
    ) -> Self {
        CommandDispatcher {
            outbox,
            registry,
            files,
            keys,
            routes: settings.routes,
            cluster_files: settings.cluster_files,
            root_dir: settings.root_dir,
            revoked: HashMap::new(),
            seen: HashMap::new(),
            connected: HashSet::new(),
            audit: settings.audit,
            audit_fail_closed: settings.audit_fail_closed,
            jobs: settings.jobs,
            db: settings.db,
            job_reader: settings.job_reader,
            used_uuids: settings.used_uuids,
            changes: HashSet::new(),
            log_limit: LogLimit::new(LOG_WINDOW),
            refusal_log: LogLimit::new(REFUSAL_WINDOW),
            metrics: settings.metrics,
            log,
        }
    }

    fn reply(&mut self, peer: Vec<u8>, message: Message) {
        // The answer to a change the server made is that job's result.
        if !self.changes.is_empty() && self.changes.remove(message.uuid()) {
            let result = message.error().map_or_else(|| "ok".to_owned(), str::to_owned);
            self.db.write(Write::JobResult { id: message.uuid().to_owned(), result });
        }
        self.outbox.to_peer(peer, message);
    }

    /// Writes the request's audit line. Under `audit_fail_closed`, a line
    /// that cannot be written stops the request: the error is returned.
    fn audit(&mut self, request: &Request, kind: Option<Kind>, decision: String) -> Result<(), String> {
        let m = &request.message;
        let auth = request.auth.as_deref();
        let line = AuditLine {
            time: audit::now(),
            uuid: m.uuid(),
            name: auth.map_or(m.metadata.from.as_str(), |a| a.name_or_dash()),
            key: request.key(),
            role: auth.map_or("-", |a| a.standing.name()),
            address: request.address(),
            message_type: m.message_type(),
            target: &m.stream,
            identities: m.metadata.custom.get(pantry_shared::filter::IDENTITIES_FIELD),
            arguments: kind.map_or(Value::Null, |k| jobs::arguments(k, m)),
            decision,
        };
        match self.audit.write(&line) {
            Ok(()) => Ok(()),
            Err(e) => {
                error!(self.log, "cannot write the audit log"; "log" => self.audit.describe(), "error" => %e,
                    "uuid" => m.uuid(), "type" => m.message_type());
                let reason = format!("the server cannot write its audit log ({e}); request refused");
                if self.audit_fail_closed {
                    Err(reason)
                } else {
                    Ok(())
                }
            }
        }
    }

    /// Records a job: a request sent to clients (with whom it went to and
    /// who was offline), or a change the server makes (its result comes
    /// with the answer).
    fn record_job(&mut self, request: &Request, kind: Kind, sent_to: Vec<String>, offline: Vec<String>) {
        if self.jobs.is_none() {
            return;
        }
        let m = &request.message;
        let auth = request.auth.as_deref();
        if kind.runs_on() == RunsOn::Server {
            self.changes.insert(m.uuid().to_owned());
        }
        self.used_uuids.record(m.uuid());
        let row = JobRow {
            id: m.uuid().to_owned(),
            created: SystemTime::now(),
            who: auth.map_or(m.metadata.from.clone(), |a| a.name_or_dash().to_owned()),
            role: auth.map_or("-", |a| a.standing.name()).to_owned(),
            key: request.key().to_owned(),
            address: request.address().to_owned(),
            command: m.message_type().to_owned(),
            target: m.stream.clone(),
            identities: m.metadata.custom.get(pantry_shared::filter::IDENTITIES_FIELD).cloned(),
            arguments: jobs::arguments(kind, m),
            sent_to,
            offline,
            result: None,
        };
        self.db.write(Write::Job(Box::new(row)));
    }

    /// Tells the requester why its request was not carried out (when it
    /// asked for a response). The refusal does not echo the request's
    /// `custom`, so it costs a few bytes whatever the request carried.
    fn refuse(&mut self, request: &Request, reason: impl Into<String>) {
        if request.message.metadata.requires_response {
            self.reply(request.peer.clone(), request.message.refusal(reason));
        }
    }

    /// An answer that reached the dispatcher (the socket thread routes
    /// them; this keeps the rules in one place whoever hands it over).
    fn route_answer(&mut self, request: Request) {
        let Request { message, .. } = request;
        match self.routes.answered(message.uuid(), &message.metadata.from) {
            Answered::Route { requester, kind } => {
                if let Some(settings) = &self.jobs {
                    let row = answers::row(kind, &message, settings.max_output, SystemTime::now());
                    self.db.write(Write::Answer(row));
                }
                let mut answer = message;
                answer.metadata.forwarded = true;
                self.reply(requester, answer);
            }
            Answered::NotPending | Answered::NotAsked => debug!(self.log,
                "answer dropped: no pending request awaits it from this client";
                "type" => message.message_type(), "from" => &message.metadata.from, "uuid" => message.uuid()),
        }
    }

    fn run_on_server(&mut self, kind: Kind, request: Request, ctx: &mut Context<Self>) {
        match kind {
            Kind::RegisterClient => self.register(request, ctx),
            Kind::Status => match status::parse(&request.message)
                .map_err(|e| e.to_string())
                .and_then(|filter| Ok((filter, Identities::of(&request.message)?)))
            {
                Ok((filter, identities)) => {
                    self.registry
                        .send(Query { filter, identities })
                        .into_actor(self)
                        .map(move |clients, act, _| {
                            let clients = clients.unwrap_or_default();
                            let response = status::respond(&request.message, clients.iter().map(Listed::record));
                            act.reply(request.peer, response);
                        })
                        .spawn(ctx);
                }
                Err(e) => self.refuse(&request, e),
            },
            Kind::ShowApplication => {
                let response = app_config::respond_show(&request.message, &self.root_dir);
                self.reply(request.peer, response);
            }
            Kind::EditApplication => {
                let response = app_config::respond_edit(&request.message, &self.root_dir);
                match response.error() {
                    None => info!(self.log, "application config saved";
                        "application" => app_config::application(&request.message).unwrap_or_default(),
                        "from" => &request.message.metadata.from),
                    Some(e) => warn!(self.log, "application config not saved"; "error" => e),
                }
                self.reply(request.peer, response);
            }
            Kind::ListJobs => {
                let (limit, filter) = match jobs_command::parse_list(&request.message) {
                    Ok(asked) => asked,
                    Err(e) => return self.refuse(&request, e.to_string()),
                };
                let identities = match Identities::of(&request.message) {
                    Ok(ids) => ids.map(|_| identity_patterns(&request.message)).unwrap_or_default(),
                    Err(e) => return self.refuse(&request, e),
                };
                let selects = filter.application.is_some() || filter.environment.is_some() || !filter.roles.is_empty();
                let stream = match (selects, filter.target_stream()) {
                    (false, _) => None,
                    (true, Ok(stream)) => Some(stream),
                    (true, Err(e)) => return self.refuse(&request, e),
                };
                self.job_reader
                    .send(ListJobs { limit, stream, patterns: identities })
                    .into_actor(self)
                    .map(move |listed, act, _| match listed {
                        Ok(Ok(jobs)) => act.reply(request.peer, jobs_command::respond_list(&request.message, &jobs)),
                        Ok(Err(e)) => act.refuse(&request, format!("cannot read the jobs: {e}")),
                        Err(e) => act.refuse(&request, format!("job store unavailable: {e}")),
                    })
                    .spawn(ctx);
            }
            Kind::ShowJob => {
                let Some(id) = jobs_command::id(&request.message).map(str::to_owned) else {
                    return self.refuse(&request, "job needs an id");
                };
                self.job_reader
                    .send(ShowJob { id: id.clone() })
                    .into_actor(self)
                    .map(move |shown, act, _| match shown {
                        Ok(Ok(Some(job))) => {
                            act.reply(request.peer, jobs_command::respond_show(&request.message, &job))
                        }
                        Ok(Ok(None)) => act.refuse(&request, format!("no job {id}")),
                        Ok(Err(e)) => act.refuse(&request, format!("cannot read the job: {e}")),
                        Err(e) => act.refuse(&request, format!("job store unavailable: {e}")),
                    })
                    .spawn(ctx);
            }
            Kind::ForgetClient => {
                let Some(identity) = client_forget::identity(&request.message).map(str::to_owned) else {
                    return self.refuse(&request, "client:forget needs an identity");
                };
                self.registry
                    .send(ForgetIdentity { identity: identity.clone() })
                    .into_actor(self)
                    .map(move |forgot, act, _| match forgot {
                        Ok(Ok(())) => {
                            info!(act.log, "client forgotten"; "identity" => &identity,
                                "by" => &request.message.metadata.from);
                            act.reply(request.peer, request.message.response());
                        }
                        Ok(Err(e)) => act.refuse(&request, e),
                        Err(e) => act.refuse(&request, format!("registry unavailable: {e}")),
                    })
                    .spawn(ctx);
            }
            _ => match self.keys.clone() {
                Some(keys) => self.manage_keys(&keys, kind, request, ctx),
                None => self.refuse(&request, "key management needs `security: curve` on the server"),
            },
        }
    }

    /// The server commands that change or read the key store (CURVE).
    fn manage_keys(&mut self, keys: &Addr<KeyStore>, kind: Kind, request: Request, ctx: &mut Context<Self>) {
        match kind {
            Kind::CreateClient => self.create_key(keys, request, ctx),
            Kind::ListClients => self.list_keys(keys, request, ctx),
            Kind::RevokeClient => self.revoke_key(keys, request, ctx),
            Kind::CreateToken => self.create_token(keys, request, ctx),
            Kind::RevokeToken => {
                let Some(id) = client_token::revoked_id(&request.message).map(str::to_owned) else {
                    return self.refuse(&request, "client:token --revoke needs a token id");
                };
                keys.send(RevokeToken { id })
                    .into_actor(self)
                    .map(move |revoked, act, _| match revoked {
                        Ok(Ok(_)) => act.reply(request.peer, request.message.response()),
                        Ok(Err(e)) => act.refuse(&request, format!("cannot revoke the token: {e}")),
                        Err(e) => act.refuse(&request, format!("key store unavailable: {e}")),
                    })
                    .spawn(ctx);
            }
            Kind::ListTokens => {
                keys.send(ListTokens)
                    .into_actor(self)
                    .map(move |listed, act, _| match listed {
                        Ok(Ok(tokens)) => act.reply(request.peer, client_tokens::respond(&request.message, &tokens)),
                        Ok(Err(e)) => act.refuse(&request, format!("cannot read the tokens: {e}")),
                        Err(e) => act.refuse(&request, format!("key store unavailable: {e}")),
                    })
                    .spawn(ctx);
            }
            Kind::Enroll => self.enroll(keys, request, ctx),
            Kind::ListPendingKeys => {
                keys.send(ListPending)
                    .into_actor(self)
                    .map(move |listed, act, _| {
                        let response = client_pending::respond_list(&request.message, &listed.unwrap_or_default());
                        act.reply(request.peer, response);
                    })
                    .spawn(ctx);
            }
            Kind::AcceptPendingKey => {
                let Some(target) = client_pending::target(&request.message).map(str::to_owned) else {
                    return self.refuse(&request, "client:accept needs a key or an identity");
                };
                let name = client_pending::name(&request.message).map(str::to_owned);
                keys.send(AcceptPending { target, name })
                    .into_actor(self)
                    .map(move |accepted, act, _| match accepted {
                        Ok(Ok(known)) => {
                            // A key revoked a moment ago and accepted again speaks again.
                            act.revoked.remove(&known.public_key);
                            let response = client_pending::respond_done(
                                &request.message,
                                &known.public_key,
                                known.name.as_deref(),
                            );
                            act.reply(request.peer, response);
                        }
                        Ok(Err(e)) => act.refuse(&request, e),
                        Err(e) => act.refuse(&request, format!("key store unavailable: {e}")),
                    })
                    .spawn(ctx);
            }
            Kind::RejectPendingKey => {
                let Some(target) = client_pending::target(&request.message).map(str::to_owned) else {
                    return self.refuse(&request, "client:reject needs a key or an identity");
                };
                keys.send(RejectPending { target })
                    .into_actor(self)
                    .map(move |rejected, act, _| match rejected {
                        Ok(Ok(gone)) => {
                            let response = client_pending::respond_done(&request.message, &gone.public_key, None);
                            act.reply(request.peer, response);
                        }
                        Ok(Err(e)) => act.refuse(&request, e),
                        Err(e) => act.refuse(&request, format!("key store unavailable: {e}")),
                    })
                    .spawn(ctx);
            }
            _ => {}
        }
    }

    /// `client:token`: a new token; the key store keeps only its hash.
    fn create_token(&mut self, keys: &Addr<KeyStore>, request: Request, ctx: &mut Context<Self>) {
        let asked = match client_token::parse(&request.message) {
            Ok(asked) => asked,
            Err(e) => return self.refuse(&request, e.to_string()),
        };
        let token = match client_token::new_token() {
            Ok(token) => token,
            Err(e) => return self.refuse(&request, format!("cannot make a random token: {e}")),
        };
        let expires = humantime::format_rfc3339_seconds(SystemTime::now() + asked.ttl).to_string();
        let stored = Token {
            hash: keys::token_hash(&token),
            name: asked.name,
            uses_left: asked.uses,
            expires: expires.clone(),
            created: Some(humantime::format_rfc3339_seconds(SystemTime::now()).to_string()),
        };
        keys.send(AddToken(stored))
            .into_actor(self)
            .map(move |added, act, _| match added {
                Ok(Ok(())) => act.reply(request.peer, client_token::respond(&request.message, &token, &expires)),
                Ok(Err(e)) => act.refuse(&request, format!("cannot store the token: {e}")),
                Err(e) => act.refuse(&request, format!("key store unavailable: {e}")),
            })
            .spawn(ctx);
    }

    /// `Enroll` from a key the server does not know (or one accepted while
    /// it waited).
    fn enroll(&mut self, keys: &Addr<KeyStore>, request: Request, ctx: &mut Context<Self>) {
        let (Some(auth), Ok(asked)) = (request.auth.clone(), enroll::parse(&request.message)) else {
            return self.refuse(&request, "invalid enrollment request");
        };
        keys.send(EnrollKey { key: auth.key.clone(), request: asked, address: auth.address.clone() })
            .into_actor(self)
            .map(move |enrolled, act, _| {
                let response = match enrolled {
                    Ok(Ok(Enrolled::Accepted { name })) => enroll::respond_accepted(&request.message, &name),
                    Ok(Ok(Enrolled::Waiting)) => enroll::respond_waiting(&request.message),
                    Ok(Err(reason)) => request.message.refusal(reason),
                    Err(e) => request.message.refusal(format!("key store unavailable: {e}")),
                };
                act.reply(request.peer, response);
            })
            .spawn(ctx);
    }

    /// `RegisterClient`: an unbound key is bound to the identity first (in
    /// the key store, on disk, before the registration is accepted); then
    /// the registry decides. Under CURVE the client's streams become its PUB
    /// grants. An agent that asked for a response hears the outcome.
    fn register(&mut self, request: Request, ctx: &mut Context<Self>) {
        let (client, heartbeat) = match register_client::parse(&request.message) {
            Ok(r) => (r.client, r.heartbeat_interval.map(Duration::from_secs)),
            Err(e) => {
                info!(self.log, "registration refused: {}", e;
                    "identity" => &request.message.metadata.from, "key" => request.key(), "address" => request.address());
                return self.refuse(&request, e.to_string());
            }
        };
        let identity = client.identity.clone().unwrap_or_default();
        let bind = match (&self.keys, &request.auth) {
            (Some(keys), Some(auth)) if auth.name.is_none() => {
                Some(keys.send(BindKey { key: auth.key.clone(), identity: identity.clone() }))
            }
            _ => None,
        };
        let registry = self.registry.clone();
        let key = request.auth.as_ref().map(|a| a.key.clone());
        let peer = request.peer.clone();
        // Its key's name already (credentials, a token, an accept). Not a
        // name this registration binds: an unbound key could then take any
        // application's name and push its clients out.
        let owns_identity = request.auth.as_ref().is_some_and(|a| a.name.as_deref() == Some(identity.as_str()));
        let work = async move {
            if let Some(bind) = bind {
                match bind.await {
                    Ok(Ok(_)) => {}
                    Ok(Err(e)) => return Err((format!("cannot bind this key to `{identity}`: {e}"), false)),
                    Err(e) => return Err((format!("key store unavailable: {e}"), false)),
                }
            }
            let registered =
                registry.send(Register { client: client.clone(), key, peer, heartbeat, owns_identity }).await;
            Ok((registered.unwrap_or(Registered::Refused("registry unavailable".into())), client))
        };
        let bound = request.auth.as_ref().is_some_and(|a| a.name.is_none());
        work.into_actor(self)
            .map(move |outcome, act, _| {
                let identity = &request.message.metadata.from;
                match outcome {
                    Ok((Registered::New, client)) => {
                        if bound {
                            info!(act.log, "key bound to the identity of its first registration";
                                "identity" => identity, "key" => request.key(), "address" => request.address());
                        }
                        info!(act.log, "client registered"; "identity" => identity, "key" => request.key(),
                            "streams" => client.streams().join(" "), "peer" => Hex(&request.peer));
                        if let Some(key) = request.auth.as_ref().map(|a| &a.key) {
                            act.outbox.send(Outbound::Grant(Grant::of(key, &client)));
                        }
                        act.acknowledge(&request);
                    }
                    Ok((Registered::Again, _)) => act.acknowledge(&request),
                    Ok((Registered::Refused(reason), _)) | Err((reason, _)) => {
                        act.metrics.refused(Refusal::RegistrationRefused);
                        warn!(act.log, "registration refused: {}", reason;
                            "identity" => identity, "key" => request.key(), "address" => request.address());
                        act.refuse(&request, reason);
                    }
                }
            })
            .spawn(ctx);
    }

    fn acknowledge(&mut self, request: &Request) {
        if request.message.metadata.requires_response {
            self.reply(request.peer.clone(), register_client::respond(&request.message));
        }
    }

    fn create_key(&mut self, keys: &Addr<KeyStore>, request: Request, ctx: &mut Context<Self>) {
        let (name, role) = match create_client::parse(&request.message) {
            Ok(parsed) => parsed,
            Err(e) => return self.refuse(&request, format!("invalid client:create request: {e}")),
        };
        keys.send(CreateKey { name, role })
            .into_actor(self)
            .map(move |created, act, _| match created {
                Ok(Ok((server_key, pair, known))) => {
                    let response = create_client::respond(&request.message, &server_key, &pair, known.name.as_deref());
                    act.reply(request.peer, response);
                }
                Ok(Err(e)) => {
                    warn!(act.log, "client:create failed"; "error" => %e);
                    act.refuse(&request, format!("cannot create a key: {e}"));
                }
                Err(e) => act.refuse(&request, format!("key store unavailable: {e}")),
            })
            .spawn(ctx);
    }

    fn list_keys(&mut self, keys: &Addr<KeyStore>, request: Request, ctx: &mut Context<Self>) {
        keys.send(ListKeys)
            .into_actor(self)
            .map(move |listed, act, _| match listed {
                Ok(Ok(known)) => {
                    let response = client_list::respond(&request.message, &known, |key| {
                        let last = act.seen.get(key).map(|t| humantime::format_rfc3339_seconds(*t).to_string());
                        (last, act.connected.contains(key))
                    });
                    act.reply(request.peer, response);
                }
                Ok(Err(e)) => act.refuse(&request, format!("cannot read the key store: {e}")),
                Err(e) => act.refuse(&request, format!("key store unavailable: {e}")),
            })
            .spawn(ctx);
    }

    /// Removes the key, then cuts it off: its messages are dropped from now
    /// on, its connections are shut down (by the socket thread, on the key
    /// store's update), it leaves the registry and fetches no file.
    fn revoke_key(&mut self, keys: &Addr<KeyStore>, request: Request, ctx: &mut Context<Self>) {
        let Some(target) = client_revoke::target(&request.message) else {
            return self.refuse(&request, "client:revoke needs a name or key");
        };
        keys.send(RevokeKey { name_or_key: target.to_owned() })
            .into_actor(self)
            .map(move |revoked, act, _| match revoked {
                Ok(Ok(known)) => {
                    let key = known.public_key.clone();
                    act.cut_off(&key);
                    let name = known.name.as_deref().unwrap_or("(unbound)");
                    warn!(act.log, "key revoked and cut off";
                        "name" => name, "key" => &key, "by" => &request.message.metadata.from);
                    act.reply(request.peer, client_revoke::respond(&request.message, name, &key));
                }
                Ok(Err(e)) => act.refuse(&request, format!("cannot revoke: {e}")),
                Err(e) => act.refuse(&request, format!("key store unavailable: {e}")),
            })
            .spawn(ctx);
    }

    /// What a revoked key loses here: what its open connections still
    /// deliver is dropped, its clients leave the registry, its transfers go.
    fn cut_off(&mut self, key: &str) {
        self.revoked.insert(key.to_owned(), Instant::now());
        self.connected.remove(key);
        self.seen.remove(key);
        self.registry.do_send(Forget { key: key.to_owned() });
        self.files.do_send(KeyRevoked { key: key.to_owned() });
    }

    /// Tells the requester who will answer, then publishes the request. An
    /// upload's transfer must be the requester's own offer; its recipients
    /// become the only keys that may fetch it.
    fn forward(&mut self, kind: Kind, request: Request, ctx: &mut Context<Self>) {
        let identities = match Identities::of(&request.message) {
            Ok(identities) => identities,
            Err(e) => return self.refuse(&request, e),
        };
        let uuid = request.message.uuid().to_owned();
        let owner = match &request.auth {
            Some(auth) => auth.key.clone(),
            None => Hex(&request.peer).to_string(),
        };
        if let Err(e) = self.routes.reserve(&uuid, kind, &request.peer, &owner) {
            return self.refuse_route(&request, e);
        }
        let registry = self.registry.clone();
        let files = self.files.clone();
        let stream = request.message.stream.clone();
        let transfer = (kind == Kind::Upload).then(|| upload::parse(&request.message).map(|u| u.transfer_id));
        let requester = request.auth.clone();
        let by_identity = identities.is_some();
        // Another server's request is for its clients here (an upload's
        // file stays with the server the admin used: its agents fetch it
        // from there).
        // Under CURVE, the sender's key says it (an admin setting the field
        // gets nothing from it); without keys, the field does.
        let from_peer = match &request.auth {
            Some(auth) => auth.is_server(),
            None => request.message.metadata.custom.contains_key(CLUSTER_PEER_FIELD),
        };
        let local_only = from_peer;
        let transfer = transfer.filter(|_| !from_peer);
        // Where agents fetch an upload from is this server's to say (or the
        // peer's that passed the request on), never the requester's.
        let mut request = request;
        if !from_peer {
            request.message.metadata.custom.remove(upload::FILE_SERVICE_FIELD);
        }
        let work = async move {
            let wanted = Recipients { stream, identities, local_only };
            let recipients = registry.send(wanted).await.map_err(|e| e.to_string())?;
            if let Some(transfer) = transfer {
                let transfer_id = transfer.map_err(|e| e.to_string())?;
                let keys = recipients.online.iter().filter_map(|r| r.key.clone()).collect();
                let authorized = AuthorizeTransfer { transfer_id, requester, recipients: keys };
                files.send(authorized).await.map_err(|e| e.to_string())??;
            }
            Ok::<_, String>(recipients)
        };
        work.into_actor(self)
            .map(move |outcome, act, _| match outcome {
                Ok(recipients) => act.publish(kind, request, recipients, by_identity),
                Err(reason) => {
                    act.routes.cancel(&uuid);
                    warn!(act.log, "request refused: {}", reason;
                        "uuid" => &uuid, "type" => request.message.message_type(), "key" => request.key());
                    act.refuse(&request, reason);
                }
            })
            .spawn(ctx);
    }

    /// Refuses a request the table of pending requests has no room for.
    fn refuse_route(&mut self, request: &Request, e: RouteError) {
        self.metrics.refused(Refusal::Limits);
        let m = &request.message;
        warn!(self.log, "request refused: {}", e;
            "uuid" => m.uuid(), "type" => m.message_type(), "key" => request.key(),
            "limit" => e.limit().map_or_else(|| "-".to_owned(), |l| l.to_string()));
        self.refuse(request, e.to_string());
    }

    /// Sends the requester the list of recipients (and the targeted clients
    /// that are offline), then publishes to the online ones: once to the
    /// request's stream, or, when it targets identities, once to each
    /// recipient's own stream.
    fn publish(&mut self, kind: Kind, request: Request, reached: Reached, by_identity: bool) {
        let Reached { online: recipients, offline } = reached;
        // Clients on other servers of a cluster, by server.
        let elsewhere: BTreeSet<String> = recipients.iter().filter_map(|r| r.server.clone()).collect();
        let here: Vec<String> = recipients.iter().filter(|r| r.server.is_none()).map(|r| r.identity.clone()).collect();
        let identities: Vec<String> = recipients.into_iter().map(|r| r.identity).collect();
        // From here on the recipients' answers are routed: before the
        // request goes out. An agent already holding its share of
        // unanswered requests is not sent this one.
        let not_reading =
            match self.routes.await_answers(request.message.uuid(), &identities, request.message.wire_size()) {
                Ok(not_reading) => not_reading,
                Err(e) => return self.refuse_route(&request, e),
            };
        debug!(self.log, "request forwarded";
            "type" => request.message.message_type(), "from" => &request.message.metadata.from,
            "to" => &request.message.stream, "uuid" => request.message.uuid(), "clients" => identities.len(),
            "offline" => offline.len());
        self.record_job(&request, kind, identities.clone(), offline.iter().map(|o| o.identity.clone()).collect());
        let Request { peer, message, .. } = request;
        self.reply(peer.clone(), recipients::respond(&message, &identities, &offline));
        if !not_reading.is_empty() {
            self.not_reading(kind, &peer, &message, &not_reading);
        }
        // Each other server with recipients publishes the request as it
        // came (its stream, its identity patterns) to its own clients, as a
        // single server would, and sends their answers back over the link.
        // Answers from clients this server did not list are dropped here.
        for server in elsewhere {
            let mut copy = message.clone();
            copy.metadata.requires_response = true;
            copy.metadata.custom.insert(CLUSTER_PEER_FIELD.into(), Value::Bool(true));
            if let (Kind::Upload, Some(files)) = (kind, &self.cluster_files) {
                copy.metadata.custom.insert(upload::FILE_SERVICE_FIELD.into(), Value::String(files.clone()));
            }
            self.outbox.send(Outbound::ToServer { server, message: copy });
        }
        let mut out = message;
        out.metadata.forwarded = true;
        if !by_identity && not_reading.is_empty() {
            return self.outbox.send(Outbound::Publish(out));
        }
        // By identity, or around an agent that is not reading: to each
        // recipient's own stream.
        let skipped: HashSet<&String> = not_reading.iter().collect();
        let mut streams = here.into_iter().filter(|id| !skipped.contains(id));
        let last = streams.next_back();
        for identity in streams {
            self.outbox.send(Outbound::Publish(Message { stream: identity, ..out.clone() }));
        }
        if let Some(identity) = last {
            out.stream = identity;
            self.outbox.send(Outbound::Publish(out));
        }
    }
}

/// How long a revoked key's late messages are dropped here (the socket
/// thread has cut it off long before).
const REVOKED_GRACE: Duration = Duration::from_secs(60);

impl CommandDispatcher {
    /// Whether a refusal (or drop) of `request` is written to the log and
    /// the audit log: the first from its key and address in a window, the
    /// rest counted and written as one line when the window ends.
    /// The first of each decision (`what`) and known type is written: the
    /// log still says what a key tried, not only that it tried.
    fn writes_refusal(&mut self, request: &Request, what: &str) -> bool {
        let kind = Kind::from_wire(request.message.message_type()).map_or("(unknown type)", Kind::wire);
        let source = match &request.auth {
            Some(auth) => format!("{} {} {what} {kind}", auth.key, auth.address),
            None => format!("- peer:{} {what} {kind}", Hex(&request.peer)),
        };
        self.refusal_log.admit(&source) == Admit::Write
    }

    /// The refusals a window counted, one line each in both logs.
    fn write_refusal_counts(&mut self) {
        for s in self.refusal_log.ended() {
            let mut parts = s.source.splitn(4, ' ');
            let (key, address) = (parts.next().unwrap_or("-"), parts.next().unwrap_or("-"));
            let (what, kind) = (parts.next().unwrap_or("-"), parts.next().unwrap_or("-"));
            warn!(self.log, "more refusals of this key and address were left out of the log";
                "key" => key, "address" => address, "decision" => what, "type" => kind, "refused" => s.count,
                "over_seconds" => s.seconds);
            let line = AuditLine {
                time: audit::now(),
                uuid: "-",
                name: "-",
                key,
                role: "-",
                address,
                message_type: kind,
                target: "",
                identities: None,
                arguments: Value::Null,
                decision: format!(
                    "{what}: {} more requests from this key and address over {} s, not written one by one \
                     (rate limit)",
                    s.count, s.seconds
                ),
            };
            if let Err(e) = self.audit.write(&line) {
                error!(self.log, "cannot write the audit log"; "log" => self.audit.describe(), "error" => %e);
            }
        }
    }

    /// Answers for the agents a request was not sent to because they hold
    /// too much unanswered already: the requester learns at once, the job
    /// records it, and the operator reads one warn line per agent and
    /// minute.
    fn not_reading(&mut self, kind: Kind, requester: &[u8], request: &Message, agents: &[String]) {
        for identity in agents {
            let mut answer = request.response();
            answer.metadata.from = identity.clone();
            answer.metadata.to = request.metadata.from.clone();
            answer.metadata.forwarded = true;
            answer.set_error(format!(
                "{NOT_READING}: it has not answered {} MiB of requests sent to it; not sent",
                MAX_UNANSWERED_BYTES_PER_AGENT >> 20
            ));
            if let Some(settings) = &self.jobs {
                self.db.write(Write::Answer(answers::row(kind, &answer, settings.max_output, SystemTime::now())));
            }
            self.metrics.refused(Refusal::Limits);
            if self.log_limit.admit(identity) == Admit::Write {
                warn!(self.log, "request not sent to an agent that is not reading: the requester is told";
                    "identity" => identity, "uuid" => request.uuid(), "type" => request.message_type(),
                    "unanswered_limit_bytes" => MAX_UNANSWERED_BYTES_PER_AGENT);
            }
            self.outbox.to_peer(requester.to_vec(), answer);
        }
    }
}

/// What the requester hears of an agent whose unanswered requests are at
/// their bound.
pub const NOT_READING: &str = "agent not reading";

impl Actor for CommandDispatcher {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        if let Some(settings) = self.jobs {
            let prune = move |act: &mut Self| {
                let before = SystemTime::now().checked_sub(settings.keep).unwrap_or(SystemTime::UNIX_EPOCH);
                act.db.write(Write::PruneJobs { before });
            };
            prune(self);
            ctx.run_interval(PRUNE_EVERY, move |act, _| prune(act));
        }
        // Each window's counts are written within a second of its end.
        ctx.run_interval(Duration::from_secs(1), |act, _| {
            act.write_refusal_counts();
            act.revoked.retain(|_, at| at.elapsed() < REVOKED_GRACE);
            for s in act.log_limit.ended() {
                warn!(act.log, "more lines like the last were left out of the log";
                    "source" => &s.source, "lines" => s.count, "over_seconds" => s.seconds);
            }
        });
        ctx.run_interval(SWEEP_EVERY, |act, _| {
            let expired = act.routes.expire(PENDING_TTL);
            if expired > 0 {
                debug!(act.log, "forgot forwarded requests whose clients never answered"; "count" => expired);
            }
        });
    }
}

impl Handler<Presence> for CommandDispatcher {
    type Result = ();

    fn handle(&mut self, msg: Presence, _: &mut Context<Self>) {
        match msg {
            Presence::Connected(key) => {
                self.connected.insert(key);
            }
            Presence::Disconnected(key) => {
                self.connected.remove(&key);
            }
            Presence::Listening { key, listening } => self.registry.do_send(Listening { key, listening }),
            Presence::PeerClosed(peer) => self.registry.do_send(PeerClosed { peer }),
            Presence::Link { server, up } => self.registry.do_send(LinkState { server, up }),
        }
    }
}

impl Handler<Incoming> for CommandDispatcher {
    type Result = ();

    fn handle(&mut self, incoming: Incoming, ctx: &mut Context<Self>) {
        let Incoming { peer, auth, message } = incoming;
        debug!(self.log, "message received";
            "type" => message.message_type(), "from" => &message.metadata.from, "to" => &message.stream,
            "uuid" => message.uuid(), "peer" => Hex(&peer),
            "key" => auth.as_ref().map(|a| a.key.as_str()).unwrap_or("-"));
        let mut request = Request { peer, auth, message };
        if let Some(auth) = &request.auth {
            // Late messages of a revoked key's connections (a new connection
            // of the key is an enrollee's, and may ask to be enrolled again).
            if matches!(auth.standing, Standing::Known(_)) && self.revoked.contains_key(&auth.key) {
                self.metrics.refused(Refusal::RevokedKey);
                if self.writes_refusal(&request, "dropped") {
                    debug!(self.log, "message from a revoked key dropped";
                        "type" => request.message.message_type(), "name" => auth.name_or_dash(), "key" => &auth.key);
                    let kind = Kind::from_wire(request.message.message_type());
                    let _ = self.audit(&request, kind, "dropped: revoked key".into());
                }
                return;
            }
            // Per message: no allocation once the key has been seen.
            match self.seen.get_mut(&auth.key) {
                Some(seen) => *seen = SystemTime::now(),
                None if matches!(auth.standing, Standing::Known(_)) => {
                    self.seen.insert(auth.key.clone(), SystemTime::now());
                }
                None => {}
            }
        }
        let verdict = authorize(&request.message, request.auth.as_deref(), self.keys.is_some());
        match &verdict {
            Verdict::Answer(_) => self.metrics.answers_in.inc(),
            Verdict::Drop(reason) => self.metrics.refused(Refusal::of(reason)),
            Verdict::Refuse(reason) => {
                self.metrics.requests_in.inc();
                self.metrics.refused(Refusal::of(reason));
            }
            Verdict::Request(_) => self.metrics.requests_in.inc(),
        }
        match verdict {
            Verdict::Drop(reason) => {
                if self.writes_refusal(&request, "dropped") {
                    let m = &request.message;
                    warn!(self.log, "{} dropped", reason;
                        "type" => m.message_type(), "uuid" => m.uuid(), "claimed" => &m.metadata.from,
                        "name" => request.auth.as_ref().map(|a| a.name_or_dash()).unwrap_or("-"),
                        "key" => request.key(), "address" => request.address());
                    let kind = Kind::from_wire(m.message_type());
                    let _ = self.audit(&request, kind, format!("dropped: {reason}"));
                }
            }
            Verdict::Refuse(reason) => {
                if self.writes_refusal(&request, "refused") {
                    let m = &request.message;
                    warn!(self.log, "unauthorized command refused: {}", reason;
                        "type" => m.message_type(), "uuid" => m.uuid(), "key" => request.key(),
                        "name" => request.auth.as_ref().map(|a| a.name_or_dash()).unwrap_or("-"),
                        "address" => request.address());
                    let kind = Kind::from_wire(m.message_type());
                    let _ = self.audit(&request, kind, format!("refused: {reason}"));
                }
                self.refuse(&request, reason);
            }
            Verdict::Answer(_) => self.route_answer(request),
            Verdict::Request(kind) => {
                // Admins do not register as clients: their name is their key's.
                if let Some(auth) = request.auth.as_ref().filter(|a| a.is_admin()) {
                    request.message.metadata.from = auth.name_or_dash().to_owned();
                }
                // A recorded job is history: its uuid is never used again.
                // (A pending one is refused as such when it is forwarded.)
                if kind.is_job() && self.jobs.is_some() && !self.routes.is_pending(request.message.uuid()) {
                    match self.used_uuids.is_used(request.message.uuid()) {
                        Ok(false) => {}
                        Ok(true) => {
                            warn!(self.log, "request refused: its uuid is a recorded job's";
                                "uuid" => request.message.uuid(), "type" => request.message.message_type(),
                                "key" => request.key(), "address" => request.address());
                            let reason = "the uuid is already used by a recorded job; send the request with a new one";
                            let _ = self.audit(&request, Some(kind), format!("refused: {reason}"));
                            self.metrics.refused(Refusal::Limits);
                            return self.refuse(&request, reason);
                        }
                        Err(e) => error!(self.log, "cannot check a request's uuid against the job store";
                            "uuid" => request.message.uuid(), "error" => %e),
                    }
                }
                // Heartbeats are not requests anyone made.
                if kind != Kind::RegisterClient {
                    if let Err(reason) = self.audit(&request, Some(kind), "accepted".into()) {
                        self.metrics.refused(Refusal::AuditLog);
                        return self.refuse(&request, reason);
                    }
                }
                if kind.is_job() && kind.runs_on() == RunsOn::Server {
                    self.record_job(&request, kind, Vec::new(), Vec::new());
                }
                match kind.runs_on() {
                    RunsOn::Server => self.run_on_server(kind, request, ctx),
                    RunsOn::Clients => self.forward(kind, request, ctx),
                }
            }
        }
    }
}

/// Reopen the audit log (SIGHUP, after logrotate moved it).
#[derive(Message)]
#[rtype(result = "()")]
pub struct ReopenAudit;

impl Handler<ReopenAudit> for CommandDispatcher {
    type Result = ();

    fn handle(&mut self, _: ReopenAudit, _: &mut Context<Self>) {
        if let Err(e) = self.audit.reopen() {
            error!(self.log, "cannot reopen the audit log"; "log" => self.audit.describe(), "error" => %e);
        }
    }
}

impl Handler<RevokedInCluster> for CommandDispatcher {
    type Result = ();

    /// A revocation on any server of the cluster; this server's own come
    /// back through the watch too, already done.
    fn handle(&mut self, msg: RevokedInCluster, _: &mut Context<Self>) {
        if self.revoked.contains_key(&msg.key) {
            return;
        }
        info!(self.log, "key revoked in the cluster: its clients leave the registry here"; "key" => &msg.key);
        self.cut_off(&msg.key);
    }
}
