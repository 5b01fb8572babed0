//! The dispatcher: every decoded message from the receive socket ends here,
//! and travels in this order:
//!
//! - [`gate`]: a revoked key's late messages are dropped, authorization
//!   judges the rest (deny by default), each request gets its audit line;
//! - a request that would rewrite a recorded job (its uuid) is refused
//!   ([`job_log`]);
//! - [`handlers::start`] says what each kind is (matched with no
//!   wildcard): a server command runs in its handler (one file each under
//!   [`handlers`]); a command for clients goes to the [`forwarder`].
//!
//! Answers to forwarded requests do not come here: the socket thread
//! routes them with the table of pending requests ([`crate::routes`]),
//! which the forwarder fills. Responses to a requester never go over PUB.

mod control;
mod forwarder;
mod gate;
mod handlers;
mod job_log;
mod rollouts;

use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use actix::prelude::*;
use pantry_shared::commands::rollout::{self, RolloutPlan};
use pantry_shared::commands::{Kind, RunsOn};
use pantry_shared::Message;
use serde_json::Value;
use slog::{debug, error, info, warn, Logger};

use crate::audit::Audit;
use crate::client_registry::{ClientRegistry, Forget, LinkState, Listening, PeerClosed};
use crate::cluster::RevokedInCluster;
use crate::file_service::{AuthorizeTransfer, FileService, KeyRevoked};
use crate::jobs::{JobReader, UsedUuids};
use crate::key_store::KeyStore;
use crate::messages::{Hex, Incoming, PeerAuth, Presence, Standing};
use crate::metrics::{Metrics, Refusal};
use crate::outbox::{Outbound, Outbox};
use crate::routes::Routes;
use crate::store::Writer;

pub use forwarder::NOT_READING;
pub use job_log::JobSettings;

use forwarder::Forwarder;
use gate::{Gate, Judged};
use handlers::{Done, Effect, Reply, Services, Started};
use job_log::JobLog;

/// How long the answers to a forwarded request are awaited before the
/// server forgets the request (the requester has its own, shorter timeout).
const PENDING_TTL: Duration = Duration::from_secs(600);
const SWEEP_EVERY: Duration = Duration::from_secs(30);

/// How often old jobs are pruned.
const PRUNE_EVERY: Duration = Duration::from_secs(10);

/// Who asked: the connection, its key, what it sent.
pub struct Request {
    pub peer: Vec<u8>,
    pub auth: Option<Arc<PeerAuth>>,
    pub message: Message,
}

impl Request {
    fn key(&self) -> &str {
        self.auth.as_ref().map(|a| a.key.as_str()).unwrap_or("-")
    }

    fn address(&self) -> &str {
        self.auth.as_ref().map(|a| a.address.as_str()).unwrap_or("-")
    }

    fn name(&self) -> &str {
        self.auth.as_ref().map(|a| a.name_or_dash()).unwrap_or("-")
    }
}

/// Why a request was not carried out: the reason its requester reads.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct Refused(String);

impl From<String> for Refused {
    fn from(reason: String) -> Refused {
        Refused(reason)
    }
}

impl From<&str> for Refused {
    fn from(reason: &str) -> Refused {
        Refused(reason.to_owned())
    }
}

macro_rules! refused_from {
    ($($error:ty),*) => {
        $(impl From<$error> for Refused {
            fn from(e: $error) -> Refused {
                Refused(e.to_string())
            }
        })*
    };
}

refused_from!(
    pantry_shared::filter::NameError,
    pantry_shared::filter::TargetError,
    pantry_shared::filter::IdentitiesError,
    pantry_shared::DecodeError,
    crate::client_registry::UnknownClient,
    crate::file_service::NotOffered,
    crate::key_store::PendingError,
    pantry_shared::facts::FilterError,
    pantry_shared::commands::facts::ReportError,
    crate::client_registry::FactsRefused,
    pantry_shared::error::KeyStoreError
);

/// When each known key last sent something (keys the server does not know
/// are not remembered here), and which keys are connected: `client:list`.
#[derive(Default, Clone)]
pub struct KeyActivity {
    seen: HashMap<String, SystemTime>,
    connected: HashSet<String>,
}

impl KeyActivity {
    /// The last time `key` was seen (RFC 3339) and whether it is connected.
    pub fn of(&self, key: &str) -> (Option<String>, bool) {
        let last = self.seen.get(key).map(|t| humantime::format_rfc3339_seconds(*t).to_string());
        (last, self.connected.contains(key))
    }

    fn saw(&mut self, auth: &PeerAuth) {
        // Per message: no allocation once the key has been seen.
        match self.seen.get_mut(&auth.key) {
            Some(seen) => *seen = SystemTime::now(),
            None if matches!(auth.standing, Standing::Known(_)) => {
                self.seen.insert(auth.key.clone(), SystemTime::now());
            }
            None => {}
        }
    }

    fn forget(&mut self, key: &str) {
        self.seen.remove(key);
        self.connected.remove(key);
    }
}

/// What the dispatcher needs besides the other actors.
pub struct Settings {
    pub root_dir: PathBuf,
    pub audit: Audit,
    pub audit_fail_closed: bool,
    pub jobs: Option<JobSettings>,
    pub db: Writer,
    pub job_reader: Addr<JobReader>,
    /// The admins' signing keys and the agents' trust list (CURVE only).
    pub trust: Option<Arc<std::sync::Mutex<crate::trust::TrustStore>>>,
    /// The uuids jobs were recorded under (with `jobs`).
    pub used_uuids: UsedUuids,
    pub metrics: Arc<Metrics>,
    pub routes: Arc<Routes>,
    /// In a cluster: where other servers' agents fetch this server's
    /// uploads.
    pub cluster_files: Option<String>,
}

pub struct CommandDispatcher {
    gate: Gate,
    jobs: JobLog,
    forwarder: Forwarder,
    services: Services,
    activity: KeyActivity,
    outbox: Outbox,
    registry: Addr<ClientRegistry>,
    files: Addr<FileService>,
    /// The rollouts running (or paused) here, by job id.
    rollouts: HashMap<String, rollouts::Rollout>,
    metrics: Arc<Metrics>,
    log: Logger,
}

impl CommandDispatcher {
    pub fn new(
        outbox: Outbox,
        registry: Addr<ClientRegistry>,
        files: Addr<FileService>,
        keys: Option<Addr<KeyStore>>,
        settings: Settings,
        log: Logger,
    ) -> zmq::Result<Self> {
        let curve = keys.is_some();
        let services = Services {
            registry: registry.clone(),
            keys,
            job_reader: settings.job_reader,
            root_dir: settings.root_dir,
            metrics: settings.metrics.clone(),
            trust: settings.trust,
            log: log.clone(),
        };
        let forwarder_outbox = outbox.try_clone()?;
        Ok(CommandDispatcher {
            gate: Gate::new(settings.audit, settings.audit_fail_closed, curve, settings.metrics.clone(), log.clone()),
            jobs: JobLog::new(settings.jobs, settings.db, settings.used_uuids),
            forwarder: Forwarder::new(
                forwarder_outbox,
                settings.routes,
                settings.cluster_files,
                settings.metrics.clone(),
                log.clone(),
            ),
            services,
            activity: KeyActivity::default(),
            outbox,
            registry,
            files,
            rollouts: HashMap::new(),
            metrics: settings.metrics,
            log,
        })
    }

    /// Sends `message` to `peer` (the answer to a change the server made
    /// is also that job's result).
    fn reply(&mut self, peer: Vec<u8>, message: Message) {
        self.jobs.replying(&message);
        self.outbox.to_peer(peer, message);
    }

    /// Tells the requester why its request was not carried out (when it
    /// asked for a response). The refusal does not echo the request's
    /// `custom`, so it costs a few bytes whatever the request carried.
    fn refuse(&mut self, request: &Request, reason: impl Into<String>) {
        if request.message.metadata.requires_response {
            self.reply(request.peer.clone(), request.message.refusal(reason));
        }
    }

    /// A request past the gate: a server command or a command for clients.
    fn carry_out(&mut self, kind: Kind, request: Request, ctx: &mut Context<Self>) {
        let arguments = crate::jobs::arguments(kind, &request.message);
        // A recorded job is history: its uuid is never used again. (A
        // pending one is refused as such when it is forwarded.)
        let uuid = request.message.uuid();
        if !self.forwarder.routes().is_pending(uuid) {
            match self.jobs.reuses_a_job(kind, uuid) {
                Ok(false) => {}
                Ok(true) => {
                    warn!(self.log, "request refused: its uuid is a recorded job's";
                        "uuid" => uuid, "type" => request.message.message_type(), "key" => request.key(),
                        "address" => request.address());
                    let reason = "the uuid is already used by a recorded job; send the request with a new one";
                    self.gate.refused(&request, &arguments, reason);
                    self.metrics.refused(Refusal::Limits);
                    return self.refuse(&request, reason);
                }
                Err(e) => error!(self.log, "cannot check a request's uuid against the job store";
                    "uuid" => uuid, "error" => %e),
            }
        }
        // Heartbeats and an agent's report of its facts are not requests
        // anyone made.
        if !matches!(kind, Kind::RegisterClient | Kind::Facts) {
            if let Err(e) = self.gate.admit(&request, &arguments) {
                return self.refuse(&request, e.to_string());
            }
        }
        if kind.is_job() && kind.runs_on() == RunsOn::Server {
            self.jobs.record(&request, kind, arguments.clone(), Vec::new(), Vec::new());
        }
        let activity = &self.activity;
        match handlers::start(kind, &self.services, request, || activity.clone()) {
            Started::Forward(request) => match rollout::plan(&request.message).filter(RolloutPlan::is_rollout) {
                Some(plan) => self.start_rollout(kind, *request, arguments, plan, ctx),
                None => self.forward(kind, *request, arguments, ctx),
            },
            Started::Control(request) => self.control(*request, ctx),
            Started::Cancel(request) => self.relay_cancel(*request),
            Started::Server(asker, work) => {
                work.into_actor(self)
                    .map(move |done: Done, act, _| {
                        for effect in done.effects {
                            act.apply(effect);
                        }
                        match done.reply {
                            Reply::Message(message) => act.reply(asker.peer, message),
                            Reply::Refused(refusal) if asker.requires_response => act.reply(asker.peer, refusal),
                            Reply::Refused(_) | Reply::Nothing => {}
                        }
                    })
                    .spawn(ctx);
            }
        }
    }

    fn apply(&mut self, effect: Effect) {
        match effect {
            Effect::CutOff(key) => self.cut_off(&key),
            Effect::Accepted(key) => self.gate.accepted_again(&key),
            Effect::Grant(grant) => self.outbox.send(Outbound::Grant(grant)),
            Effect::Publish(mut message) => {
                message.metadata.forwarded = true;
                self.outbox.send(Outbound::Publish(message))
            }
        }
    }

    /// What a revoked key loses here: what its open connections still
    /// deliver is dropped, its clients leave the registry, its transfers go.
    fn cut_off(&mut self, key: &str) {
        self.gate.revoked(key);
        self.activity.forget(key);
        self.registry.do_send(Forget { key: key.to_owned() });
        self.files.do_send(KeyRevoked { key: key.to_owned() });
    }

    /// Whom a forwarded request reaches; an upload's recipients become
    /// the only keys that may fetch its file.
    fn resolve(
        &self,
        plan: forwarder::Plan,
    ) -> impl std::future::Future<Output = Result<crate::client_registry::Reached, Refused>> + 'static {
        let (registry, files) = (self.registry.clone(), self.files.clone());
        async move {
            let recipients = registry.send(plan.wanted).await.map_err(|e| format!("registry unavailable: {e}"))?;
            if let Some(transfer) = plan.transfer {
                let transfer_id = transfer?;
                let keys = recipients.online.iter().filter_map(|r| r.key.clone()).collect();
                let authorized = AuthorizeTransfer { transfer_id, requester: plan.requester, recipients: keys };
                files.send(authorized).await.map_err(|e| format!("file service unavailable: {e}"))??;
            }
            Ok(recipients)
        }
    }

    /// Tells the requester who will answer, then publishes the request. An
    /// upload's transfer must be the requester's own offer; its recipients
    /// become the only keys that may fetch it.
    fn forward(&mut self, kind: Kind, mut request: Request, arguments: Value, ctx: &mut Context<Self>) {
        let plan = match self.forwarder.plan(kind, &mut request) {
            Ok(plan) => plan,
            Err(reason) => return self.refuse(&request, reason.to_string()),
        };
        let by_identity = plan.by_identity;
        let work = self.resolve(plan);
        work.into_actor(self)
            .map(move |outcome, act, _| match outcome {
                Ok(reached) => act.forwarder.publish(kind, request, reached, by_identity, &mut act.jobs, arguments),
                Err(reason) => {
                    let reason = reason.to_string();
                    act.forwarder.abandon(&request, &reason);
                    act.forwarder.refuse(&request, reason);
                }
            })
            .spawn(ctx);
    }
}

impl Actor for CommandDispatcher {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        if self.jobs.settings().is_some() {
            self.resume_rollouts(ctx);
            self.jobs.prune();
            ctx.run_interval(PRUNE_EVERY, |act, _| act.jobs.prune());
        }
        // Each window's counts are written within a second of its end.
        ctx.run_interval(Duration::from_secs(1), |act, _| {
            act.gate.tick();
            act.forwarder.tick();
        });
        ctx.run_interval(SWEEP_EVERY, |act, _| {
            let expired = act.forwarder.expire(PENDING_TTL);
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
                self.activity.connected.insert(key);
            }
            Presence::Disconnected(key) => {
                self.activity.connected.remove(&key);
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
        match self.gate.judge(&mut request) {
            Judged::Request(kind) => {
                if let Some(auth) = &request.auth {
                    self.activity.saw(auth);
                }
                self.carry_out(kind, request, ctx);
            }
            Judged::Refused(reason) => self.refuse(&request, reason),
            Judged::Dropped => {}
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
        self.gate.reopen_audit();
    }
}

impl Handler<RevokedInCluster> for CommandDispatcher {
    type Result = ();

    /// A revocation on any server of the cluster; this server's own come
    /// back through the watch too, already done.
    fn handle(&mut self, msg: RevokedInCluster, _: &mut Context<Self>) {
        if self.gate.was_revoked(&msg.key) {
            return;
        }
        info!(self.log, "key revoked in the cluster: its clients leave the registry here"; "key" => &msg.key);
        self.cut_off(&msg.key);
    }
}
