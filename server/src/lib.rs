//! `pantry-server` as a library: [`run`] serves until the caller's future
//! ends; the binary (`main.rs`) only parses the command line, sets up
//! logging and turns signals into that future.
//!
//! Layout:
//! - [`sockets`]: the socket thread. Owns every ZeroMQ socket, decodes
//!   inbound traffic for the actors, answers known keys' handshakes, decides
//!   PUB subscriptions ([`subscriptions`]) and tracks connections
//!   ([`connections`]) and descriptors ([`limits`]).
//! - [`admission`]: client handshakes admitted at a bounded rate.
//! - [`outbox`]: the typed way from the actors to the socket thread.
//! - [`direct`]: agents that take their requests over their own DEALER
//!   connection, as the socket thread delivers to them.
//! - [`messages`]: types and actor messages the others share.
//! - [`authorize`]: deny-by-default rules, judged before any handler.
//! - [`dispatch`]: every request's way: the gate (authorization, audit),
//!   the server commands' handlers, the forwarder, job recording.
//! - [`routes`]: the forwarded requests awaiting answers; the socket thread
//!   routes answers with it, from their metadata alone.
//! - [`client_registry`]: who is checked in.
//! - [`key_file`], [`key_store`]: `server_keys.yml`, and the actor that owns
//!   it and decides unknown keys' handshakes.
//! - [`file_service`]: relays uploads, only to the keys they were sent to.
//! - [`store`]: the embedded SQLite database and its writer thread.
//! - [`cluster`]: several servers sharing keys and registry through etcd.
//! - [`jobs`], [`answers`], [`audit`]: the record of every command and its
//!   answers, and the audit log.
//! - [`links`]: a cluster's links to the other servers.
//! - [`log_limit`]: lines a peer can cause at will, limited per source.
//! - [`metrics`], [`metrics_http`]: counters for Prometheus, and the HTTP
//!   server of `/metrics` and `/healthz`.
//! - [`zap`], [`raw_zmq`]: ZAP encoding, and the few libzmq calls rust-zmq
//!   lacks (all of the server's `unsafe`).

pub mod admission;
pub mod answers;
pub mod audit;
pub mod authorize;
pub mod client_registry;
pub mod cluster;
pub mod connections;
pub mod direct;
pub mod dispatch;
pub mod fact_index;
pub mod file_service;
pub mod jobs;
pub mod key_file;
pub mod key_store;
pub mod limits;
pub mod links;
pub mod log_limit;
pub mod messages;
pub mod metrics;
pub mod metrics_http;
pub mod outbox;
pub mod raw_zmq;
pub mod routes;
pub mod sockets;
pub mod store;
pub mod subscriptions;
pub mod trust;
pub mod zap;

use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use actix::prelude::*;
use anyhow::{Context as _, Result};
use key_file::ServerKeyStore;
use pantry_shared::config::Config;
use pantry_shared::security::SocketSecurity;
use slog::{error, info, warn, Logger};

use audit::{Audit, AuditTarget};
use client_registry::ClientRegistry;
use cluster::ClusterKeys;
use dispatch::{CommandDispatcher, JobSettings, Settings};
use file_service::FileService;
use jobs::JobReader;
use key_store::{KeyStore, Keys, ReloadKeys};
use limits::FdBudget;
use metrics::Metrics;
use outbox::{KeyUpdate, Outbound, Outbox};
use routes::Routes;
use sockets::{BoundSockets, Endpoints};

/// How long a stopping server waits for its threads, all together.
const SHUTDOWN_DEADLINE: Duration = Duration::from_secs(5);

/// What the program running a server may ask of it.
#[derive(Clone)]
pub struct Control {
    key_store: Option<Addr<KeyStore>>,
    dispatcher: Addr<CommandDispatcher>,
}

impl Control {
    /// SIGHUP: re-read the key store from disk if it changed, and reopen the
    /// audit log.
    pub fn reload(&self) {
        if let Some(keys) = &self.key_store {
            keys.do_send(ReloadKeys);
        }
        self.dispatcher.do_send(dispatch::ReopenAudit);
    }
}

/// Serves with `config` until the future `serve` makes (given the server's
/// controls) completes, then shuts down. Returns once the sockets are
/// closed.
pub fn run<F, Fut>(config: &Config, log: Logger, serve: F) -> Result<()>
where
    F: FnOnce(Control) -> Fut,
    Fut: Future<Output = ()>,
{
    let root_dir = config.root_dir().to_path_buf();
    std::fs::create_dir_all(&root_dir).with_context(|| format!("cannot create root_dir {}", root_dir.display()))?;
    let fd_budget = descriptor_budget(&log);
    let trust = match config.networking.is_curve() {
        true => {
            let dir = pantry_shared::keys::curve_dir(&root_dir);
            Some(Arc::new(std::sync::Mutex::new(trust::TrustStore::open(&dir)?)))
        }
        false => None,
    };

    let (security, store) = if config.networking.is_curve() {
        let store = ServerKeyStore::open(&root_dir)?;
        info!(log, "server public key (give it to clients as server_public_key)";
            "public_key" => &store.keys.public_key, "file" => %store.path().display(),
            "known_clients" => store.known_count());
        for leftover in &store.removed_temporaries {
            info!(log, "removed a temporary key file left by an interrupted write"; "file" => leftover);
        }
        (SocketSecurity::server(store.secret_key()), Some(store))
    } else {
        warn!(
            log,
            "security is null: traffic is neither encrypted nor authenticated, and anyone who can reach \
             the server's ports can run commands on its clients; set networking.security: curve or put the \
             ports behind an encrypted tunnel"
        );
        (SocketSecurity::Null, None)
    };
    // The other servers of a cluster take requests from this one with the
    // key pair they all share.
    let link_security = match &store {
        Some(store) => {
            let key = pantry_shared::keys::decode_z85(&store.keys.public_key).context("the server's public key")?;
            SocketSecurity::CurveClient { server_key: key, public_key: key, secret_key: *store.secret_key() }
        }
        None => SocketSecurity::Null,
    };
    // In a cluster, etcd holds the keys (and the fleet's registry).
    let cluster = match &config.cluster {
        Some(section) => {
            let etcd = cluster::Etcd::connect(section, log.clone()).context("cannot reach the cluster's etcd")?;
            if let Some(store) = &store {
                etcd.check_server_key(&store.keys.public_key)?;
            }
            let public_key = store.as_ref().map(|s| s.keys.public_key.clone()).unwrap_or_default();
            let mut keys = ClusterKeys::load(etcd.clone(), &public_key).context("cannot read the keys from etcd")?;
            info!(log, "cluster: keys and registry read from etcd";
                "etcd" => etcd.describe(), "server_id" => &section.server_id, "known_clients" => keys.known_count(),
                "fleet_clients" => keys.clients.len());
            let receive = format!("tcp://{}:{}", section.advertise, config.networking.receive_port);
            let fleet = Fleet {
                revision: keys.revision,
                clients: std::mem::take(&mut keys.clients),
                etcd,
                receive,
                link_security: link_security.clone(),
            };
            Some((fleet, keys))
        }
        None => None,
    };
    let (store, cluster) = match (store, cluster) {
        (Some(_), Some((fleet, keys))) => (Some(Keys::Cluster(keys)), Some(fleet)),
        (Some(store), None) => (Some(Keys::File(store)), None),
        // Null security has no keys; the registry is still shared.
        (None, Some((fleet, _))) => (None, Some(fleet)),
        (None, None) => (None, None),
    };
    let net = &config.networking;
    let endpoints = Endpoints {
        publish: net.endpoint(net.pub_sub_port),
        receive: net.endpoint(net.receive_port),
        file_service: net.endpoint(net.file_service_port),
    };
    pantry_shared::security::set_max_message_size(net.max_message_size);
    let ctx = zmq::Context::new();
    let sockets = BoundSockets::bind(&ctx, &security, &endpoints, net.plain_subscribers, net.handshake_rate)?;
    let (outbox, inbox) = Outbox::new(&ctx)?;
    if let Some(store) = &store {
        // Before the socket thread serves: it answers known keys itself.
        outbox.send(Outbound::Keys(KeyUpdate::All(store.entries())));
    }

    let audit = Audit::open(AuditTarget::from_config(config.audit_log.as_deref(), &root_dir)).with_context(|| {
        format!("cannot open the audit log {}", config.audit_log.as_deref().unwrap_or("root_dir/audit.log"))
    })?;
    let db_path = root_dir.join(store::DB_FILE);
    let db = store::open_logged(&db_path, &log)?;
    let pending =
        if store.is_some() { store::pending_keys(&db).context("cannot read the pending keys")? } else { Vec::new() };
    let clients = store::clients(&db).context("cannot read the registry")?;
    drop(db);
    if store.is_some() {
        // Registered clients may subscribe to their streams as soon as they
        // reconnect.
        for c in clients.iter().filter(|c| c.key.is_some()) {
            outbox.send(Outbound::Grant(messages::Grant::of(c.key.as_deref().unwrap_or_default(), &c.client)));
        }
    }
    info!(log, "registry loaded: every client is offline until it checks in";
        "clients" => clients.len(), "database" => %db_path.display());
    let (writer, writer_thread) = store::start_writer(&db_path, log.clone())?;

    let metrics = Arc::new(Metrics::new().context("cannot set up the metrics")?);
    let healthy = Arc::new(AtomicBool::new(false));
    let metrics_thread = match config.metrics.listen {
        Some(listen) => Some(metrics::serve(listen, metrics.clone(), healthy.clone(), log.clone())?),
        None => None,
    };

    let system = System::new();
    // The key store actor has a thread of its own: key store writes (fsyncs)
    // never hold up the dispatcher, however many agents enroll at once.
    let keys_thread = system.block_on(async { Arbiter::new() });
    let trust_first_client = net.trust_first_client;
    let forget_after = config.registry.forget_after.0;
    let facts_max_age = config.registry.facts_max_age.as_ref().map(|d| d.0);
    let jobs = config.jobs.enabled.then(|| JobSettings {
        max_output: usize::try_from(config.jobs.max_output.0).unwrap_or(usize::MAX),
        keep: config.jobs.keep.0,
    });
    let server_started = std::time::SystemTime::now();
    let started = system.block_on(async {
        // Queries on a thread and a connection of their own.
        let (reader_path, reader_log, reader_writer) = (db_path.clone(), log.clone(), writer.clone());
        let job_reader = SyncArbiter::start(1, move || {
            let conn = store::open(&reader_path)
                .inspect_err(|e| error!(reader_log, "cannot open the database for job queries"; "error" => %e))
                .ok();
            JobReader::new(conn, reader_writer.clone(), server_started)
        });
        let settings = Settings {
            root_dir: root_dir.clone(),
            audit,
            audit_fail_closed: config.audit_fail_closed,
            jobs,
            db: writer.clone(),
            job_reader,
            trust,
            used_uuids: jobs::UsedUuids::new(
                store::open(&db_path)
                    .inspect_err(|e| error!(log, "cannot open the database to check job uuids"; "error" => %e))
                    .ok(),
            ),
            metrics: metrics.clone(),
            routes: Arc::new(Routes::new(metrics.clone())),
            cluster_files: config
                .cluster
                .as_ref()
                .map(|c| format!("tcp://{}:{}", c.advertise, config.networking.file_service_port)),
        };
        let keys = store.map(|store| {
            let outbox = outbox.try_clone()?;
            Ok(KeyStore::new(store, outbox, trust_first_client, pending, writer.clone(), metrics.clone(), log.clone()))
        });
        let curve = keys.is_some();
        let mut registry =
            ClientRegistry::new(curve, clients, forget_after, writer.clone(), metrics.clone(), log.clone());
        registry.set_facts_max_age(facts_max_age);
        registry.set_outbox(outbox.try_clone()?);
        let parts = Parts {
            sockets,
            inbox,
            keys,
            keys_thread: keys_thread.handle(),
            registry,
            settings,
            fd_budget,
            cluster,
            ctx: ctx.clone(),
        };
        start_actors(&outbox, parts, metrics.clone(), &log)
    });
    let (control, thread) = started?;
    info!(log, "pantry-server started";
        "version" => pantry_shared::VERSION, "publish" => &endpoints.publish, "receive" => &endpoints.receive,
        "file_service" => &endpoints.file_service, "security" => net.security_name(),
        "root_dir" => %root_dir.display());
    // The sockets are bound and served: tell systemd (Type=notify).
    if let Err(e) = pantry_shared::systemd::notify("READY=1") {
        warn!(log, "cannot notify systemd of readiness"; "error" => %e);
    }
    healthy.store(true, Ordering::Relaxed);
    system.block_on(serve(control));

    healthy.store(false, Ordering::Relaxed);
    outbox.send(Outbound::Stop);
    // One deadline for every thread; what it still waits for is named when
    // it runs out, and the process exits without it.
    let mut shutdown = Shutdown::new(SHUTDOWN_DEADLINE);
    shutdown.wait("the socket thread", move || {
        let _ = thread.join();
    });
    // The actors, and with them the database writer's senders, go with the
    // system and the key store's thread; the writer commits what is queued
    // and ends.
    keys_thread.stop();
    shutdown.wait("the key store's thread", move || {
        let _ = keys_thread.join();
    });
    drop(system);
    drop(writer);
    shutdown.wait("the database writer (committing what is queued)", move || {
        let _ = writer_thread.join();
    });
    shutdown.report(&log);
    // The metrics thread serves until the process ends (its 503 says why).
    drop(metrics_thread);
    Ok(())
}

/// Waits for the threads of a stopping server, all within one deadline.
struct Shutdown {
    deadline: Instant,
    /// What did not end in time.
    late: Vec<&'static str>,
}

impl Shutdown {
    fn new(within: Duration) -> Shutdown {
        Shutdown { deadline: Instant::now() + within, late: Vec::new() }
    }

    /// Runs `join` (which blocks until `what` ended) on a thread of its
    /// own, and waits for it until the deadline.
    fn wait(&mut self, what: &'static str, join: impl FnOnce() + Send + 'static) {
        let (done, ended) = std::sync::mpsc::channel();
        let started = std::thread::Builder::new().name("pantry-shutdown".into()).spawn(move || {
            join();
            let _ = done.send(());
        });
        let left = self.deadline.saturating_duration_since(Instant::now());
        if started.is_err() || ended.recv_timeout(left).is_err() {
            self.late.push(what);
        }
    }

    fn report(self, log: &Logger) {
        if !self.late.is_empty() {
            warn!(log, "shutdown: the deadline passed; exiting without waiting for {}", self.late.join(", ");
                "deadline_seconds" => SHUTDOWN_DEADLINE.as_secs());
        }
    }
}

/// Raises the open-file limit and says what the server got.
fn descriptor_budget(log: &Logger) -> FdBudget {
    match limits::raise_fd_limit() {
        Ok(limit) => {
            info!(log, "open-file limit"; "limit" => limit.soft, "raised_from" => limit.before,
                "agents_it_allows" => limit.soft / 2);
            FdBudget { limit: usize::try_from(limit.soft).unwrap_or(usize::MAX) }
        }
        Err(e) => {
            warn!(log, "cannot read or raise the open-file limit; assuming 1024"; "error" => %e);
            FdBudget { limit: 1024 }
        }
    }
}

/// What the actors and the socket thread are made of.
struct Parts {
    sockets: BoundSockets,
    inbox: outbox::Inbox,
    keys: Option<zmq::Result<KeyStore>>,
    keys_thread: ArbiterHandle,
    registry: ClientRegistry,
    settings: Settings,
    fd_budget: FdBudget,
    cluster: Option<Fleet>,
    ctx: zmq::Context,
}

/// A cluster's etcd, and the fleet's registry as read at start.
struct Fleet {
    etcd: Arc<cluster::Etcd>,
    revision: i64,
    clients: Vec<cluster::RegistryChange>,
    /// Where the other servers reach this one.
    receive: String,
    link_security: SocketSecurity,
}

/// Creates the actors and starts the socket thread.
fn start_actors(
    outbox: &Outbox,
    parts: Parts,
    metrics: Arc<Metrics>,
    log: &Logger,
) -> Result<(Control, std::thread::JoinHandle<()>)> {
    let Parts { sockets, inbox, keys, keys_thread, registry, settings, fd_budget, cluster, ctx } = parts;
    let answers = sockets::AnswerRouting {
        routes: settings.routes.clone(),
        jobs: settings.jobs.map(|jobs| (settings.db.clone(), jobs.max_output)),
        links: cluster.as_ref().map(|f| links::Links::new(ctx.clone(), f.link_security.clone(), log.clone())),
    };
    let curve = keys.is_some();
    let registry = match &cluster {
        Some(fleet) => ClientRegistry::create(|ctx| {
            let mut registry = registry;
            let rewrite = ctx.address().recipient();
            let writer = cluster::RegistryWriter::start(fleet.etcd.clone(), rewrite, fleet.receive.clone());
            registry.join_fleet(writer);
            registry
        }),
        None => registry.start(),
    };
    let files = FileService::new(outbox.try_clone()?, curve, metrics.clone(), log.clone()).start();
    let key_store = keys.transpose()?.map(|keys| KeyStore::start_in_arbiter(&keys_thread, |_| keys));
    let dispatcher = CommandDispatcher::new(
        outbox.try_clone()?,
        registry.clone(),
        files.clone(),
        key_store.clone(),
        settings,
        log.clone(),
    )?
    .start();
    if let Some(fleet) = cluster {
        for change in fleet.clients {
            registry.do_send(change);
        }
        let to = cluster::WatchTargets {
            keys: key_store.clone().map(Addr::recipient),
            revoked: dispatcher.clone().recipient(),
            registry: registry.recipient(),
        };
        cluster::watch(&fleet.etcd, fleet.revision, to);
    }
    let to = sockets::Recipients {
        dispatcher: dispatcher.clone().recipient(),
        presence: dispatcher.clone().recipient(),
        files: files.recipient(),
        key_store: key_store.clone().map(Addr::recipient),
        rollouts: dispatcher.clone().recipient(),
    };
    let thread = sockets::start(sockets, inbox, to, answers, fd_budget, metrics, log.clone())?;
    Ok((Control { key_store, dispatcher }, thread))
}
