//! The forwarder: a request for clients travels from here. Its uuid is
//! reserved for its requester ([`crate::routes`]), its recipients come from
//! the registry (and an upload's transfer is opened to them only), the
//! requester is told who will answer, and the request is published: once
//! to its stream, or once to each recipient's own stream, and once over
//! the link to each other server of a cluster with recipients there. An
//! agent already holding its share of unanswered requests is not sent it:
//! its requester hears `agent not reading` at once.

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::sync::Arc;
use std::time::Duration;

use pantry_shared::commands::{cancel, recipients, upload, Kind};
use pantry_shared::facts::FactFilter;
use pantry_shared::filter::Identities;
use pantry_shared::signing::SIGNATURE_FIELD;
use pantry_shared::{DecodeError, Message};
use serde_json::Value;
use slog::{debug, warn, Logger};

use crate::client_registry::{Reached, Recipients};
use crate::log_limit::{Admit, LogLimit};
use crate::messages::{Hex, PeerAuth};
use crate::metrics::{Metrics, Refusal};
use crate::outbox::{Outbound, Outbox};
use crate::routes::{RouteError, Routes, MAX_UNANSWERED_BYTES_PER_AGENT};

use super::job_log::JobLog;
use super::{Refused, Request};

/// Marks a request another server of the cluster passed on: it goes to
/// this server's clients only.
const CLUSTER_PEER_FIELD: &str = "cluster_peer";

/// Whether another server of the cluster sent `request`: under CURVE its
/// key says so (an admin setting the field gets nothing from it); without
/// keys, the field does.
pub fn from_peer(request: &Request) -> bool {
    match &request.auth {
        Some(auth) => auth.is_server(),
        None => request.message.metadata.custom.contains_key(CLUSTER_PEER_FIELD),
    }
}

/// What the requester hears of an agent whose unanswered requests are at
/// their bound.
pub const NOT_READING: &str = "agent not reading";

/// One line per agent that is not reading this often at most.
const NOT_READING_WINDOW: Duration = Duration::from_secs(60);

/// A forwarded request between its reservation and its publication: whom
/// to ask the registry for, and the upload transfer to open to them.
pub struct Plan {
    pub wanted: Recipients,
    /// An upload's transfer id (as the request named it).
    pub transfer: Option<Result<String, DecodeError>>,
    pub requester: Option<Arc<PeerAuth>>,
    pub by_identity: bool,
}

pub struct Forwarder {
    outbox: Outbox,
    routes: Arc<Routes>,
    /// In a cluster: where other servers' agents fetch this server's
    /// uploads.
    cluster_files: Option<String>,
    not_reading: LogLimit,
    metrics: Arc<Metrics>,
    log: Logger,
}

impl Forwarder {
    pub fn new(
        outbox: Outbox,
        routes: Arc<Routes>,
        cluster_files: Option<String>,
        metrics: Arc<Metrics>,
        log: Logger,
    ) -> Forwarder {
        Forwarder { outbox, routes, cluster_files, not_reading: LogLimit::new(NOT_READING_WINDOW), metrics, log }
    }

    pub fn routes(&self) -> &Routes {
        &self.routes
    }

    /// Reserves the request's uuid for its requester and says whom it
    /// goes to; the reason when it cannot be forwarded.
    pub fn plan(&self, kind: Kind, request: &mut Request) -> Result<Plan, Refused> {
        let identities = Identities::of(&request.message)?;
        let facts = FactFilter::of(&request.message)?.map(Arc::new);
        let owner = match &request.auth {
            Some(auth) => auth.key.clone(),
            None => Hex(&request.peer).to_string(),
        };
        if let Err(e) = self.routes.reserve(request.message.uuid(), kind, &request.peer, &owner) {
            return Err(self.route_refused(request, e).into());
        }
        // Another server's request is for its clients here (an upload's
        // file stays with the server the admin used: its agents fetch it
        // from there).
        let from_peer = from_peer(request);
        // Where agents fetch an upload from is this server's to say (or the
        // peer's that passed the request on), never the requester's.
        if !from_peer {
            request.message.metadata.custom.remove(upload::FILE_SERVICE_FIELD);
        }
        let transfer =
            (kind == Kind::Upload && !from_peer).then(|| upload::parse(&request.message).map(|u| u.transfer_id));
        Ok(Plan {
            by_identity: identities.is_some(),
            wanted: Recipients { stream: request.message.stream.clone(), identities, facts, local_only: from_peer },
            transfer,
            requester: request.auth.clone(),
        })
    }

    /// The plan failed (no registry, a transfer not the requester's): the
    /// uuid is free again.
    pub fn abandon(&self, request: &Request, reason: &str) {
        self.routes.cancel(request.message.uuid());
        warn!(self.log, "request refused: {}", reason;
            "uuid" => request.message.uuid(), "type" => request.message.message_type(), "key" => request.key());
    }

    /// Sends the requester the list of recipients (and the targeted clients
    /// that are offline), records the job, then publishes to the online
    /// ones; or refuses it when the table of pending requests has no room
    /// for it after all.
    pub fn publish(
        &mut self,
        kind: Kind,
        request: Request,
        reached: Reached,
        by_identity: bool,
        jobs: &mut JobLog,
        arguments: Value,
    ) {
        let Reached { online: recipients, offline } = reached;
        // Clients on other servers of a cluster, by server.
        let elsewhere: BTreeSet<String> = recipients.iter().filter_map(|r| r.server.clone()).collect();
        let here: Vec<String> = recipients.iter().filter(|r| r.server.is_none()).map(|r| r.identity.clone()).collect();
        let identities: Vec<String> = recipients.into_iter().map(|r| r.identity).collect();
        // From here on the recipients' answers are routed: before the
        // request goes out.
        let not_reading =
            match self.routes.await_answers(request.message.uuid(), &identities, request.message.wire_size()) {
                Ok(not_reading) => not_reading,
                Err(e) => {
                    let reason = self.route_refused(&request, e);
                    return self.refuse(&request, reason);
                }
            };
        debug!(self.log, "request forwarded";
            "type" => request.message.message_type(), "from" => &request.message.metadata.from,
            "to" => &request.message.stream, "uuid" => request.message.uuid(), "clients" => identities.len(),
            "offline" => offline.len());
        let offline_ids = offline.iter().map(|o| o.identity.clone()).collect();
        jobs.record(&request, kind, arguments, identities.clone(), offline_ids);
        let Request { peer, message, .. } = request;
        self.outbox.to_peer(peer.clone(), recipients::respond(&message, &identities, &offline));
        for identity in &not_reading {
            self.answer_not_reading(kind, &peer, &message, identity, jobs);
        }
        // Each other server with recipients publishes the request as it
        // came (its stream, its identity patterns) to its own clients, as a
        // single server would, and sends their answers back over the link.
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

    /// Publishes a rollout's batch: to each of `here` on its own stream,
    /// and to each other server with agents of the batch, for those only,
    /// under `alias` (a batch of its own there; its answers come back
    /// under it).
    pub fn publish_batch(
        &self,
        kind: Kind,
        request: &Message,
        here: &[String],
        elsewhere: BTreeMap<String, Vec<String>>,
        alias: &str,
    ) {
        for (server, identities) in elsewhere {
            let mut copy = request.clone();
            copy.metadata.uuid = alias.to_owned();
            copy.metadata.requires_response = true;
            copy.metadata.custom.insert(CLUSTER_PEER_FIELD.into(), Value::Bool(true));
            copy.metadata.custom.remove(pantry_shared::commands::rollout::ROLLOUT_FIELD);
            Identities::attach(&mut copy, &identities);
            if let (Kind::Upload, Some(files)) = (kind, &self.cluster_files) {
                copy.metadata.custom.insert(upload::FILE_SERVICE_FIELD.into(), Value::String(files.clone()));
            }
            self.outbox.send(Outbound::ToServer { server, message: copy });
        }
        let mut out = request.clone();
        out.metadata.forwarded = true;
        for identity in here {
            self.outbox.send(Outbound::Publish(Message { stream: identity.clone(), ..out.clone() }));
        }
    }

    /// Tells the agents here running `job` to cancel it, with the admin's
    /// signature of the cancel (agents that require signed requests ask
    /// for it).
    pub fn cancel_on(&self, job: &str, identities: &[String], grace: Duration, signature: Option<&Value>) {
        let cancel =
            cancel::CancelRequest { job: job.to_owned(), grace_ms: grace.as_millis() as u64, identities: vec![] };
        for identity in identities {
            let mut m = cancel::request(&cancel, identity, "pantry-server");
            m.metadata.forwarded = true;
            if let Some(signature) = signature {
                m.metadata.custom.insert(SIGNATURE_FIELD.into(), signature.clone());
            }
            self.outbox.send(Outbound::Publish(m));
        }
    }

    /// Asks another server of the cluster to cancel `job` (the uuid its
    /// agents know it by) on `identities`, agents of its.
    pub fn cancel_via(
        &self,
        server: String,
        job: &str,
        identities: Vec<String>,
        grace: Duration,
        signature: Option<&Value>,
    ) {
        let cancel = cancel::CancelRequest { job: job.to_owned(), grace_ms: grace.as_millis() as u64, identities };
        let mut m = cancel::request(&cancel, "", "pantry-server");
        if let Some(signature) = signature {
            m.metadata.custom.insert(SIGNATURE_FIELD.into(), signature.clone());
        }
        // A request to that server (one without is an agent's answer),
        // which it answers with nothing.
        m.metadata.requires_response = true;
        m.metadata.custom.insert(CLUSTER_PEER_FIELD.into(), Value::Bool(true));
        self.outbox.send(Outbound::ToServer { server, message: m });
    }

    /// Tells the requester why (a forwarded request is no change the server
    /// makes: no job result to record).
    pub fn refuse(&self, request: &Request, reason: impl Into<String>) {
        if request.message.metadata.requires_response {
            self.outbox.to_peer(request.peer.clone(), request.message.refusal(reason));
        }
    }

    /// The answer for an agent the request was not sent to: the requester
    /// learns at once, the job records it, and the operator reads one warn
    /// line per agent and minute.
    fn answer_not_reading(&mut self, kind: Kind, requester: &[u8], request: &Message, identity: &str, jobs: &JobLog) {
        let mut answer = request.response();
        answer.metadata.from = identity.to_owned();
        answer.metadata.to = request.metadata.from.clone();
        answer.metadata.forwarded = true;
        answer.set_error(format!(
            "{NOT_READING}: it has not answered {} MiB of requests sent to it; not sent",
            MAX_UNANSWERED_BYTES_PER_AGENT >> 20
        ));
        jobs.answered_for(kind, &answer);
        self.metrics.refused(Refusal::Limits);
        if self.not_reading.admit(identity) == Admit::Write {
            warn!(self.log, "request not sent to an agent that is not reading: the requester is told";
                "identity" => identity, "uuid" => request.uuid(), "type" => request.message_type(),
                "unanswered_limit_bytes" => MAX_UNANSWERED_BYTES_PER_AGENT);
        }
        self.outbox.to_peer(requester.to_vec(), answer);
    }

    /// Once a minute or so: the counts of agents that were not reading.
    pub fn tick(&mut self) {
        for s in self.not_reading.ended() {
            warn!(self.log, "more requests to an agent that is not reading were not sent";
                "identity" => &s.source, "requests" => s.count, "over_seconds" => s.seconds);
        }
    }

    /// Forgets requests whose clients never answered.
    pub fn expire(&self, ttl: Duration) -> usize {
        self.routes.expire(ttl)
    }

    /// A request the table of pending requests has no room for: logged,
    /// and the reason the requester hears.
    fn route_refused(&self, request: &Request, e: RouteError) -> String {
        self.metrics.refused(Refusal::Limits);
        let m = &request.message;
        warn!(self.log, "request refused: {}", e;
            "uuid" => m.uuid(), "type" => m.message_type(), "key" => request.key(),
            "limit" => e.limit().map_or_else(|| "-".to_owned(), |l| l.to_string()));
        e.to_string()
    }
}
