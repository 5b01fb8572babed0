//! The socket thread: owns every ZeroMQ socket of the server.
//!
//! ZeroMQ sockets may be used from one thread at a time, so they live on a
//! dedicated thread that blocks in `zmq::poll` on the receive ROUTER
//! (requests and answers), the file service ROUTER, the XPUB (whose
//! subscriptions it decides itself), the ZAP handler socket, the socket
//! monitors and the outbox doorbell. Inbound traffic is decoded here and
//! handed to actors with `do_send`; outbound traffic comes from the actors
//! as typed [`Outbound`] items. No poll timeout while there is nothing to
//! retry, so no latency floor.
//!
//! A request goes to its stream's subscribers on the PUB and, over the
//! receive ROUTER, to each agent that takes its requests on its DEALER
//! ([`crate::direct`]). Such an agent gets a bounded queue (libzmq's
//! high-water mark, then [`AGENT_BACKLOG_MESSAGES`] and
//! [`AGENT_BACKLOG_BYTES`] here); a request that does not fit, or whose
//! agent's connection is gone, is answered at once to its requester on the
//! agent's behalf (`agent not reading`, `agent disconnected`) and logged at
//! warn: never dropped without a word.
//!
//! It also answers the ZAP handshakes of known keys from its own copy of
//! the key store (unknown keys go to the key store actor; client keys at a
//! bounded rate, [`crate::admission`]), decides every PUB subscription
//! ([`crate::subscriptions`]), and keeps the server's descriptors in check
//! ([`crate::limits`]).

use std::collections::{HashMap, HashSet, VecDeque};
use std::os::fd::RawFd;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime};

use actix::prelude::*;
use pantry_shared::commands::Kind;
use pantry_shared::config::PlainSubscribers;
use pantry_shared::filter::TopicForm;
use pantry_shared::keys::Role;
use pantry_shared::monitor::{self, SocketEvent};
use pantry_shared::security::{ServerPort, SocketSecurity, ZAP_ENDPOINT};
use pantry_shared::{Head, Message};
use slog::{debug, error, info, warn, Logger};

use crate::admission::Admission;
use crate::answers::RawAnswer;
use crate::authorize::{judge, Verdict};
use crate::connections::Connections;
use crate::direct::{DirectAgents, DirectChange};
use crate::dispatch::NOT_READING;
use crate::limits::FdBudget;
use crate::links::Links;
use crate::log_limit::{Admit, LogLimit};
use crate::messages::{FileFrames, Hex, Incoming, PeerAuth, Presence, RolloutAnswer, Standing, ZapRequest, ENROLLEE};
use crate::metrics::{Metrics, Rejection};
use crate::outbox::{Inbox, KeyUpdate, Outbound};
use crate::raw_zmq::{self, peer_address, RawFrame};
use crate::routes::{Answered, Routes};
use crate::store::{Write, Writer};
use crate::subscriptions::Subscriptions;
use crate::zap::{self, KeySnapshot, Status};

/// listen(2) backlog of the server's TCP sockets (Linux caps it at
/// net.core.somaxconn, 4096 by default).
const ACCEPT_BACKLOG: i32 = 4096;

/// Messages the PUB socket holds for one agent that is slow to take them
/// (its libzmq I/O thread starved of CPU) before it drops the rest without
/// a word: with the common 1,000, a burst of 1,500 requests to one agent
/// lost some under load. A broadcast's copies share one buffer, so a stuck
/// agent holds at most this many messages, and only admins' requests reach
/// it.
const PUBLISH_QUEUE: i32 = 10_000;

/// Messages for one peer whose queue is full, kept for it at most: beyond
/// either bound a peer that stopped reading loses messages, and the server's
/// memory stays bounded.
const BACKLOG_MESSAGES_PER_PEER: usize = 100_000;
pub const BACKLOG_BYTES_PER_PEER: usize = 256 * 1024 * 1024;

/// Requests for one agent that takes them on its DEALER, kept here once
/// libzmq's queue for it is full (the ROUTER's high-water mark, 1,000
/// messages): beyond either bound its requester hears `agent not reading`.
pub const AGENT_BACKLOG_MESSAGES: usize = 10_000;
pub const AGENT_BACKLOG_BYTES: usize = 16 * 1024 * 1024;

/// One warn line per agent that is not reading (or gone) this often.
const UNDELIVERED_LOG_WINDOW: Duration = Duration::from_secs(60);

/// The same note of queued handshakes at most this often.
const ADMISSION_NOTE_EVERY: Duration = Duration::from_secs(10);

/// How long a key the server does not know may stay connected to enroll.
pub const ENROLL_WINDOW: Duration = Duration::from_secs(10);

/// The same descriptor warning at most this often.
const FD_WARN_EVERY: Duration = Duration::from_secs(60);

/// Where the server listens.
#[derive(Debug, Clone)]
pub struct Endpoints {
    pub publish: String,
    pub receive: String,
    pub file_service: String,
}

/// The server's sockets, bound but not yet serving.
pub struct BoundSockets {
    zap: Option<zmq::Socket>,
    router: zmq::Socket,
    publisher: zmq::Socket,
    files: zmq::Socket,
    monitors: [zmq::Socket; 3],
    /// Whether the XPUB grants bare subscriptions.
    plain: PlainSubscribers,
    /// `networking.handshake_rate`.
    handshake_rate: u32,
}

impl BoundSockets {
    /// Binds the ZAP handler socket (CURVE only) first, so that no handshake
    /// can happen without it, then the three server sockets.
    pub fn bind(
        ctx: &zmq::Context,
        security: &SocketSecurity,
        endpoints: &Endpoints,
        plain: PlainSubscribers,
        handshake_rate: u32,
    ) -> anyhow::Result<BoundSockets> {
        use anyhow::Context as _;
        let zap = if security.is_curve() {
            let zap = ctx.socket(zmq::ROUTER)?;
            zap.set_linger(0)?;
            zap.bind(ZAP_ENDPOINT).with_context(|| format!("cannot bind the ZAP handler on {ZAP_ENDPOINT}"))?;
            Some(zap)
        } else {
            None
        };
        let listen = |kind, port: ServerPort, endpoint: &str| -> anyhow::Result<(zmq::Socket, zmq::Socket)> {
            let mut socket = security.server_socket(ctx, kind, port)?;
            // Thousands of agents reconnect at once after a restart: libzmq's
            // default accept backlog (100) would overflow and stall them for
            // seconds in the kernel's SYN retries.
            socket.set_backlog(ACCEPT_BACKLOG)?;
            match port {
                // Subscriptions reach us and take effect only when granted.
                ServerPort::Publish => {
                    raw_zmq::set_xpub_manual(&mut socket)?;
                    socket.set_sndhwm(PUBLISH_QUEUE)?;
                }
                // Sending to a peer that is gone is an error we log, not a
                // silent drop.
                _ => socket.set_router_mandatory(true)?,
            }
            let monitor = monitor::monitor(ctx, &socket, monitor::SERVER_EVENTS)?;
            socket.bind(endpoint).with_context(|| format!("cannot bind the {} socket on {endpoint}", port.name()))?;
            Ok((socket, monitor))
        };
        let (publisher, publisher_monitor) = listen(zmq::XPUB, ServerPort::Publish, &endpoints.publish)?;
        let (router, router_monitor) = listen(zmq::ROUTER, ServerPort::Receive, &endpoints.receive)?;
        let (files, files_monitor) = listen(zmq::ROUTER, ServerPort::Files, &endpoints.file_service)?;
        let monitors = [publisher_monitor, router_monitor, files_monitor];
        Ok(BoundSockets { zap, router, publisher, files, monitors, plain, handshake_rate })
    }
}

const MONITOR_PORTS: [ServerPort; 3] = [ServerPort::Publish, ServerPort::Receive, ServerPort::Files];

/// The socket thread's poll items, in order; a cluster's links follow
/// them, two items each ([`LinkSlot`]).
#[derive(Debug, Clone, Copy)]
enum Slot {
    Bell,
    Router,
    /// The monitors, in the order of [`MONITOR_PORTS`].
    PublishMonitor,
    ReceiveMonitor,
    FilesMonitor,
    Files,
    Publisher,
    Zap,
}

const FIXED_SLOTS: usize = Slot::Zap as usize + 1;

/// What a poll item past the fixed ones is: a link's socket or its monitor.
enum LinkSlot {
    Socket(usize),
    Monitor(usize),
}

impl LinkSlot {
    fn of(index: usize) -> Option<LinkSlot> {
        let offset = index.checked_sub(FIXED_SLOTS)?;
        Some(if offset % 2 == 0 { LinkSlot::Socket(offset / 2) } else { LinkSlot::Monitor(offset / 2) })
    }
}

/// Where the socket thread hands inbound traffic.
pub struct Recipients {
    pub dispatcher: Recipient<Incoming>,
    pub presence: Recipient<Presence>,
    pub files: Recipient<FileFrames>,
    /// The key store actor, for handshakes of unknown keys (CURVE).
    pub key_store: Option<Recipient<ZapRequest>>,
    /// Answers to rollouts' batches.
    pub rollouts: Recipient<RolloutAnswer>,
}

/// What the socket thread needs to route answers to forwarded requests
/// itself.
pub struct AnswerRouting {
    pub routes: Arc<Routes>,
    /// The job store and `jobs.max_output`, when jobs are kept.
    pub jobs: Option<(Writer, usize)>,
    /// A cluster's links to the other servers.
    pub links: Option<Links>,
}

/// Starts the socket thread.
pub fn start(
    sockets: BoundSockets,
    inbox: Inbox,
    to: Recipients,
    answers: AnswerRouting,
    fd_budget: FdBudget,
    metrics: Arc<Metrics>,
    log: Logger,
) -> std::io::Result<JoinHandle<()>> {
    std::thread::Builder::new().name("pantry-sockets".into()).spawn(move || {
        let curve = sockets.zap.is_some();
        let plain = sockets.plain;
        let admission = Admission::new(sockets.handshake_rate);
        SocketThread {
            sockets,
            inbox,
            to,
            answers,
            connections: Connections::default(),
            subscriptions: Subscriptions::new(curve, plain),
            keys: KeySnapshot::default(),
            curve,
            backlogs: Default::default(),
            direct: DirectAgents::default(),
            undelivered: LogLimit::new(UNDELIVERED_LOG_WINDOW),
            admission,
            last_admission_note: None,
            fd_budget,
            base_fds: crate::limits::open_fds(),
            last_fd_warning: None,
            last_accept_error: None,
            metrics,
            log,
        }
        .run()
    })
}

/// Messages for ROUTER peers whose queue is full (the high-water mark):
/// kept in order and retried when the peer has read, so a fan-out's N
/// answers to one requester are not lost.
#[derive(Default)]
struct Backlog {
    by_peer: HashMap<Vec<u8>, PeerBacklog>,
    /// Bytes over all peers.
    bytes: usize,
}

#[derive(Default)]
struct PeerBacklog {
    queue: VecDeque<Vec<Vec<u8>>>,
    bytes: usize,
    /// Whether a drop was already logged for this backlog.
    warned: bool,
}

fn size_of(frames: &[Vec<u8>]) -> usize {
    frames.iter().map(Vec::len).sum()
}

struct SocketThread {
    sockets: BoundSockets,
    inbox: Inbox,
    to: Recipients,
    answers: AnswerRouting,
    connections: Connections,
    subscriptions: Subscriptions,
    keys: KeySnapshot,
    curve: bool,
    /// Receive and file service ROUTERs.
    backlogs: [Backlog; 2],
    /// Agents taking their requests on their DEALER.
    direct: DirectAgents,
    /// Requests answered on an agent's behalf, for the log.
    undelivered: LogLimit,
    admission: Admission,
    last_admission_note: Option<Instant>,
    fd_budget: FdBudget,
    /// Descriptors open before any connection (files, inproc pipes).
    base_fds: usize,
    last_fd_warning: Option<Instant>,
    /// Accept errors repeat as fast as libzmq retries: logged once a second.
    last_accept_error: Option<Instant>,
    metrics: Arc<Metrics>,
    log: Logger,
}

fn backlog_index(port: ServerPort) -> usize {
    match port {
        ServerPort::Files => 1,
        _ => 0,
    }
}

impl SocketThread {
    fn run(mut self) {
        loop {
            let s = &self.sockets;
            // Without CURVE there is no ZAP socket: its slot is an invalid
            // descriptor that poll(2) skips, so the set is a fixed array (no
            // allocation per wake-up). It must not repeat another ZeroMQ
            // socket: zmq_poll reads each item's ZMQ_EVENTS, which resets the
            // socket's notification descriptor, and a wake-up read through
            // an item without POLLIN would be lost.
            let zap = match &s.zap {
                Some(zap) => zap.as_poll_item(zmq::POLLIN),
                None => zmq::PollItem::from_fd(-1, zmq::PollEvents::empty()),
            };
            // In the order of [`Slot`].
            let fixed: [zmq::PollItem; FIXED_SLOTS] = [
                self.inbox.bell.as_poll_item(zmq::POLLIN),
                s.router.as_poll_item(zmq::POLLIN),
                s.monitors[0].as_poll_item(zmq::POLLIN),
                s.monitors[1].as_poll_item(zmq::POLLIN),
                s.monitors[2].as_poll_item(zmq::POLLIN),
                s.files.as_poll_item(zmq::POLLIN),
                s.publisher.as_poll_item(zmq::POLLIN),
                zap,
            ];
            // A cluster's links follow the fixed items.
            let links = self.answers.links.iter().flat_map(Links::sockets).map(|l| l.as_poll_item(zmq::POLLIN));
            let mut items: Vec<zmq::PollItem> = fixed.into_iter().chain(links).collect();
            // With messages waiting for full peers, wake up to retry them;
            // with keys enrolling, to end their time.
            let mut timeout = if !self.backlogs.iter().all(|b| b.by_peer.is_empty()) {
                1
            } else if self.connections.has_enrollees() {
                1000
            } else {
                -1
            };
            // Handshakes waiting their turn: wake up when the next may go.
            if let Some(next) = self.admission.next_in() {
                let ms = (next.as_millis() as i64).clamp(1, 1000);
                timeout = if timeout < 0 { ms } else { timeout.min(ms) };
            }
            if let Err(e) = zmq::poll(&mut items, timeout) {
                if e == zmq::Error::EINTR {
                    continue;
                }
                error!(self.log, "socket poll failed; the server stops serving"; "error" => %e);
                return;
            }
            let ready: Vec<bool> = items.iter().map(|i| i.is_readable()).collect();
            drop(items);
            self.retry_backlogs();
            for reply in self.admission.release() {
                self.send_zap(reply);
            }
            self.note_undelivered();
            if self.connections.has_enrollees() {
                let cut = self.connections.cut_enrollees(ENROLL_WINDOW);
                if cut > 0 {
                    debug!(self.log, "enrolling connections past their time shut down"; "connections" => cut);
                }
            }
            // Closed connections first: a descriptor number may be reused.
            let is = |slot: Slot| ready[slot as usize];
            for (i, (port, slot)) in MONITOR_PORTS
                .into_iter()
                .zip([Slot::PublishMonitor, Slot::ReceiveMonitor, Slot::FilesMonitor])
                .enumerate()
            {
                if is(slot) {
                    self.drain_monitor(i, port);
                }
            }
            if is(Slot::Bell) && !self.drain_outbound() {
                info!(self.log, "sockets closed");
                return;
            }
            if is(Slot::Zap) {
                self.drain_zap();
            }
            if is(Slot::Router) {
                self.drain_router(ServerPort::Receive);
            }
            if is(Slot::Files) {
                self.drain_router(ServerPort::Files);
            }
            if is(Slot::Publisher) {
                self.drain_subscriptions();
            }
            // Each link's socket, then its monitor.
            for index in (FIXED_SLOTS..ready.len()).filter(|i| ready[*i]) {
                match LinkSlot::of(index) {
                    Some(LinkSlot::Socket(link)) => self.drain_link(link),
                    Some(LinkSlot::Monitor(link)) => {
                        let Some((server, up)) = self.answers.links.as_ref().and_then(|l| l.state(link)) else {
                            continue;
                        };
                        info!(self.log, "link to another server of the cluster {}", if up { "up" } else { "down" };
                            "server" => &server);
                        self.to.presence.do_send(Presence::Link { server, up });
                    }
                    None => {}
                }
            }
        }
    }

    /// Answers from clients on another server, over its link: that server
    /// checked who sent them; here they are routed like local ones.
    fn drain_link(&mut self, index: usize) {
        loop {
            let Some((server, frames)) = self.answers.links.as_ref().and_then(|l| l.recv(index)) else { return };
            if let Some(frames) = self.route_with(frames, |head| !head.requires_response, &server) {
                debug!(self.log, "message over a link that is not an answer dropped";
                    "server" => &server, "frames" => frames.len());
            }
        }
    }

    /// Handles everything the actors queued. Returns false on `Stop`.
    fn drain_outbound(&mut self) -> bool {
        let items: Vec<Outbound> = self.inbox.drain().collect();
        for item in items {
            match item {
                Outbound::ToPeer { peer, message } => {
                    let mut frames = Vec::with_capacity(3 + message.body.len());
                    frames.push(peer);
                    frames.extend(message.to_frames());
                    self.metrics.answers_out.inc();
                    self.send_to_peer(ServerPort::Receive, frames);
                }
                Outbound::ToFilePeer(frames) => {
                    self.metrics.files_out.inc();
                    self.send_to_peer(ServerPort::Files, frames);
                }
                Outbound::Publish(message) => self.publish(&message),
                Outbound::Direct(change) => {
                    // A registration handled after its connection closed
                    // names a peer that is gone.
                    let gone = matches!(&change, DirectChange::Add { peer, .. }
                        if self.connections.cached_sender(ServerPort::Receive, peer).is_none());
                    if !gone {
                        self.direct.apply(change);
                    }
                }
                Outbound::ZapReply(frames) => self.send_zap(frames),
                Outbound::Keys(update) => self.update_keys(update),
                Outbound::Grant(grant) => {
                    let key = grant.key.clone();
                    for fd in self.subscriptions.grant(grant, &self.keys) {
                        debug!(self.log, "subscriber's streams changed: its connection is shut down to subscribe \
                            again"; "key" => &key);
                        self.connections.cut(ServerPort::Publish, fd);
                    }
                }
                Outbound::Link { server, endpoint } => {
                    if let Some(links) = &mut self.answers.links {
                        links.set(&server, endpoint.as_deref());
                    }
                }
                Outbound::ToServer { server, message } => {
                    if let Some(links) = &self.answers.links {
                        links.send(&server, &message);
                    }
                }
                Outbound::Stop => return false,
            }
        }
        true
    }

    /// Sends a request to the agents that take theirs on their DEALER and
    /// publishes it: in the exact form, and in the bare form too while a
    /// connection holds the bare topic itself (a plain agent: SPEC §4).
    fn publish(&mut self, message: &Message) {
        let mut frames = message.to_frames();
        if !self.direct.is_empty() {
            let peers = self.direct.recipients(&message.stream);
            self.deliver(&peers, &frames, message);
        }
        let bare = TopicForm::Bare.topic(&message.stream);
        let plain = self.subscriptions.wants_bare(&bare).then(|| {
            let mut copy = frames.clone();
            copy[0] = bare;
            copy
        });
        frames[0] = TopicForm::Exact.topic(&message.stream);
        for frames in std::iter::once(frames).chain(plain) {
            self.metrics.publishes_out.inc();
            self.metrics.bytes_out.inc_by(size_of(&frames) as u64);
            if let Err(e) = self.sockets.publisher.send_multipart(frames, zmq::DONTWAIT) {
                warn!(self.log, "cannot publish"; "uuid" => message.uuid(), "error" => %e);
            }
        }
    }

    /// One request to each of `peers` (agents taking requests on their
    /// DEALER), behind what already waits for it, within its bounds.
    fn deliver(&mut self, peers: &[Vec<u8>], frames: &[Vec<u8>], message: &Message) {
        let size = size_of(frames);
        self.metrics.deliveries_out.inc_by(peers.len() as u64);
        self.metrics.bytes_out.inc_by((size * peers.len()) as u64);
        for peer in peers {
            let backlog = &mut self.backlogs[backlog_index(ServerPort::Receive)];
            let outcome = match backlog.by_peer.get(peer) {
                Some(waiting) if waiting.queue.len() >= AGENT_BACKLOG_MESSAGES => Sent::Full,
                Some(waiting) if waiting.bytes + peer.len() + size > AGENT_BACKLOG_BYTES => Sent::Full,
                Some(_) => Sent::Later,
                None => match self.send_parts(ServerPort::Receive, peer, frames) {
                    Sent::Full => Sent::Later,
                    sent => sent,
                },
            };
            match outcome {
                Sent::Whole => {}
                Sent::Later => {
                    let mut queued = Vec::with_capacity(frames.len() + 1);
                    queued.push(peer.clone());
                    queued.extend_from_slice(frames);
                    self.hold(ServerPort::Receive, queued);
                }
                Sent::Full => self.undelivered(peer, message, Undelivered::NotReading),
                Sent::Gone => self.undelivered(peer, message, Undelivered::Gone),
            }
        }
    }

    /// Keeps `frames` (routing id first) for a peer whose queue is full, to
    /// send when it has read.
    fn hold(&mut self, port: ServerPort, frames: Vec<Vec<u8>>) {
        // Counted as [`Self::retry_backlogs`] takes it off: routing id too.
        let size = size_of(&frames);
        let backlog = &mut self.backlogs[backlog_index(port)];
        if !backlog.by_peer.contains_key(&frames[0]) {
            debug!(self.log, "peer's queue is full (high-water mark): holding its messages until it reads";
                "peer" => Hex(&frames[0]), "socket" => port.name());
        }
        backlog.bytes += size;
        let waiting = backlog.by_peer.entry(frames[0].clone()).or_default();
        waiting.bytes += size;
        waiting.queue.push_back(frames);
        self.metrics.queued_bytes(port).set(backlog.bytes as i64);
    }

    /// A request an agent taking requests on its DEALER is not sent: its
    /// requester hears why at once, from the agent's identity (the job
    /// records it, a rollout counts it), and the operator reads a warn line
    /// per agent and minute.
    fn undelivered(&mut self, peer: &[u8], request: &Message, why: Undelivered) {
        let identity = self.direct.identity_of(peer).unwrap_or("-").to_owned();
        if self.undelivered.admit(&identity) == Admit::Write {
            warn!(self.log, "request not sent to an agent: {}; the requester is told", why.reason();
                "identity" => &identity, "peer" => Hex(peer), "uuid" => request.uuid(),
                "type" => request.message_type(), "requester" => &request.metadata.from,
                "queued_limit_messages" => AGENT_BACKLOG_MESSAGES, "queued_limit_bytes" => AGENT_BACKLOG_BYTES);
        }
        if matches!(why, Undelivered::NotReading) {
            self.metrics.refused(crate::metrics::Refusal::Limits);
        }
        if !request.metadata.requires_response {
            return;
        }
        let mut answer = request.refusal(format!("{}: {}; not sent", why.error(), why.reason()));
        answer.metadata.from = identity.clone();
        answer.metadata.forwarded = true;
        if let Some(frames) = self.route_with(answer.to_frames(), |_| true, &identity) {
            debug!(self.log, "answer for an undelivered request not routed"; "frames" => frames.len());
        }
    }

    /// The count of lines [`Self::undelivered`] held back, once a window
    /// ends.
    fn note_undelivered(&mut self) {
        for s in self.undelivered.ended() {
            warn!(self.log, "more requests to an agent were not sent (not reading, or disconnected)";
                "identity" => &s.source, "requests" => s.count, "over_seconds" => s.seconds);
        }
    }

    /// An agent's connection closed: what still waited for it is answered
    /// for, and it takes no more requests there.
    fn direct_peer_closed(&mut self, peer: &[u8]) {
        let backlog = &mut self.backlogs[backlog_index(ServerPort::Receive)];
        if let Some(waiting) = backlog.by_peer.remove(peer) {
            backlog.bytes -= waiting.bytes;
            self.metrics.queued_bytes(ServerPort::Receive).set(backlog.bytes as i64);
            for frames in waiting.queue {
                match Message::from_frames(&frames[1..]) {
                    // Requests (forwarded); not the answers to its own.
                    Ok(m) if m.metadata.forwarded && self.direct.identity_of(peer).is_some() => {
                        self.undelivered(peer, &m, Undelivered::Gone)
                    }
                    _ => {}
                }
            }
        }
        self.direct.remove_peer(peer);
    }

    fn send_zap(&self, frames: Vec<Vec<u8>>) {
        if let Some(zap) = &self.sockets.zap {
            if let Err(e) = zap.send_multipart(frames, zmq::DONTWAIT) {
                error!(self.log, "cannot send a ZAP reply"; "error" => %e);
            }
        }
    }

    /// Applies a change of the known keys: removed keys are cut off, and
    /// subscribers whose grants changed subscribe again.
    fn update_keys(&mut self, update: KeyUpdate) {
        let changed = match update {
            KeyUpdate::All(all) => {
                let kept: HashSet<&str> = all.iter().map(|k| k.public_key.as_str()).collect();
                let removed: Vec<String> =
                    self.keys.iter().map(|k| k.public_key.clone()).filter(|k| !kept.contains(k.as_str())).collect();
                self.keys.replace_all(all.clone());
                for key in removed {
                    self.remove_key(&key);
                }
                all
            }
            KeyUpdate::Added(known) => {
                self.keys.insert(known.clone());
                vec![known]
            }
            KeyUpdate::Removed(key) => {
                self.keys.remove(&key);
                self.remove_key(&key);
                Vec::new()
            }
        };
        for known in changed {
            self.connections.key_changed(&known);
            for fd in self.subscriptions.key_changed(&known.public_key, known.name.as_deref(), &self.keys) {
                self.connections.cut(ServerPort::Publish, fd);
            }
        }
    }

    fn remove_key(&mut self, key: &str) {
        self.subscriptions.key_removed(key);
        let closed = self.connections.cut_off(key);
        info!(self.log, "cut off a revoked key: its connections were shut down"; "key" => key, "connections" => closed);
    }

    /// Sends `[peer, frames...]` on a ROUTER socket, behind whatever is
    /// already waiting for that peer.
    fn send_to_peer(&mut self, port: ServerPort, frames: Vec<Vec<u8>>) {
        if frames.is_empty() {
            return;
        }
        let size = size_of(&frames);
        self.metrics.bytes_out.inc_by(size as u64);
        let backlog = &mut self.backlogs[backlog_index(port)];
        if let Some(waiting) = backlog.by_peer.get_mut(&frames[0]) {
            if waiting.queue.len() < BACKLOG_MESSAGES_PER_PEER && waiting.bytes + size <= BACKLOG_BYTES_PER_PEER {
                waiting.bytes += size;
                backlog.bytes += size;
                waiting.queue.push_back(frames);
                self.metrics.queued_bytes(port).set(backlog.bytes as i64);
            } else if !std::mem::replace(&mut waiting.warned, true) {
                warn!(self.log, "peer stopped reading and its backlog is full: messages to it are dropped";
                    "peer" => Hex(&frames[0]), "socket" => port.name(), "queued_messages" => waiting.queue.len(),
                    "queued_bytes" => waiting.bytes);
            }
            return;
        }
        if let Some(frames) = self.try_send(port, frames) {
            self.hold(port, frames);
        }
    }

    /// Sends what the full peers can take now, in order.
    fn retry_backlogs(&mut self) {
        for port in [ServerPort::Receive, ServerPort::Files] {
            let mut backlog = std::mem::take(&mut self.backlogs[backlog_index(port)]);
            if backlog.by_peer.is_empty() {
                continue;
            }
            let mut sent = 0;
            backlog.by_peer.retain(|_, waiting| {
                while let Some(frames) = waiting.queue.pop_front() {
                    let size = size_of(&frames);
                    if let Some(frames) = self.try_send(port, frames) {
                        waiting.queue.push_front(frames);
                        return true;
                    }
                    waiting.bytes -= size;
                    sent += size;
                }
                false
            });
            backlog.bytes -= sent;
            self.metrics.queued_bytes(port).set(backlog.bytes as i64);
            self.backlogs[backlog_index(port)] = backlog;
        }
    }

    fn router(&self, port: ServerPort) -> &zmq::Socket {
        match port {
            ServerPort::Files => &self.sockets.files,
            _ => &self.sockets.router,
        }
    }

    /// One attempt; gives the frames back if the peer's queue is full.
    fn try_send(&self, port: ServerPort, frames: Vec<Vec<u8>>) -> Option<Vec<Vec<u8>>> {
        match self.send_parts(port, &frames[0], &frames[1..]) {
            Sent::Full => Some(frames),
            Sent::Gone => {
                debug!(self.log, "peer is gone; message dropped"; "peer" => Hex(&frames[0]));
                None
            }
            Sent::Whole | Sent::Later => None,
        }
    }

    /// One attempt at `[peer, rest...]`.
    fn send_parts(&self, port: ServerPort, peer: &[u8], rest: &[Vec<u8>]) -> Sent {
        let socket = self.router(port);
        // The routing frame alone first: ROUTER_MANDATORY reports a gone or
        // full peer there, before anything of the message is queued.
        match socket.send(peer, zmq::SNDMORE | zmq::DONTWAIT) {
            Ok(()) => {}
            Err(zmq::Error::EAGAIN) => return Sent::Full,
            Err(zmq::Error::EHOSTUNREACH) => return Sent::Gone,
            Err(e) => {
                warn!(self.log, "cannot send to peer"; "peer" => Hex(peer), "error" => %e);
                return Sent::Gone;
            }
        }
        let mut rest = rest.iter().peekable();
        while let Some(frame) = rest.next() {
            let flags = if rest.peek().is_some() { zmq::SNDMORE } else { 0 };
            // After the first frame libzmq takes the whole message.
            if let Err(e) = socket.send(&frame[..], flags | zmq::DONTWAIT) {
                warn!(self.log, "cannot send to peer"; "peer" => Hex(peer), "error" => %e);
                return Sent::Gone;
            }
        }
        Sent::Whole
    }

    /// Reads every waiting message of a ROUTER socket (requests or file
    /// service frames) with the key of its sender.
    fn drain_router(&mut self, port: ServerPort) {
        while let Some((peer, first, frames)) = self.read_router(port) {
            self.metrics.bytes_in.inc_by((peer.len() + size_of(&frames)) as u64);
            if port == ServerPort::Files {
                self.metrics.files_in.inc();
            }
            let auth = match self.connections.cached_sender(port, &peer) {
                Some(auth) => auth,
                None => {
                    // The monitor may still hold the close of an earlier
                    // connection on the same descriptor number (and this
                    // one's accept): handled first, the close cannot be
                    // taken for this connection's.
                    self.settle_monitor(port);
                    let auth = first.as_ref().and_then(|f| self.sender_of(f));
                    let fd = first.as_ref().and_then(RawFrame::source_fd);
                    if let Some(presence) = self.connections.new_sender(port, &peer, fd, auth.clone()) {
                        self.to.presence.do_send(presence);
                    }
                    auth
                }
            };
            if self.curve && auth.is_none() {
                debug!(self.log, "message from a connection whose key is not (or no longer) known dropped";
                    "peer" => Hex(&peer), "socket" => port.name());
                continue;
            }
            let frames = match port {
                ServerPort::Files => {
                    self.to.files.do_send(FileFrames { peer, auth, frames });
                    continue;
                }
                _ => match self.route_answer(auth.as_deref(), frames) {
                    Some(frames) => frames,
                    None => continue,
                },
            };
            match Message::from_frames(&frames) {
                Ok(message) => self.to.dispatcher.do_send(Incoming { peer, auth, message }),
                Err(e) => debug!(self.log, "malformed message dropped";
                    "peer" => Hex(&peer), "key" => auth.as_ref().map(|a| a.key.as_str()).unwrap_or("-"),
                    "frames" => frames.len(), "error" => %e),
            }
        }
    }

    /// An answer to a forwarded request is routed here, from its metadata
    /// alone: the requester gets its frames as they came, with only
    /// `forwarded` set. Anything that is not an answer is handed back for
    /// the dispatcher.
    fn route_answer(&mut self, auth: Option<&PeerAuth>, frames: Vec<Vec<u8>>) -> Option<Vec<Vec<u8>>> {
        let curve = self.curve;
        let is_answer = |head: &Head| {
            matches!(judge(&head.message_type, head.requires_response, &head.from, auth, curve), Verdict::Answer(_))
        };
        self.route_with(frames, is_answer, auth.map_or("-", |a| a.key.as_str()))
    }

    /// Routes `frames` if `is_answer` says its head is an answer; hands them
    /// back otherwise.
    fn route_with(
        &mut self,
        mut frames: Vec<Vec<u8>>,
        is_answer: impl FnOnce(&Head) -> bool,
        sender: &str,
    ) -> Option<Vec<Vec<u8>>> {
        let head = match frames.get(1).and_then(|metadata| Head::parse(metadata)) {
            Some(head) if std::str::from_utf8(&frames[0]).is_ok() => head,
            _ => return Some(frames),
        };
        if !is_answer(&head) {
            return Some(frames);
        }
        self.metrics.answers_in.inc();
        let (requester, kind) = match self.answers.routes.answered(&head.uuid, &head.from) {
            Answered::Route { requester, kind } => (requester, kind),
            Answered::Rollout { job, kind } => {
                let head = Head { forwarded: true, uuid: job.into(), ..head };
                frames[1] = head.to_vec();
                self.rollout_answer(kind, frames);
                return None;
            }
            Answered::NotPending | Answered::NotAsked => {
                debug!(self.log, "answer dropped: no pending request awaits it from this client";
                    "type" => head.message_type.as_ref(), "from" => head.from.as_ref(), "uuid" => head.uuid.as_ref(),
                    "key" => sender);
                return None;
            }
        };
        debug!(self.log, "answer routed to requester";
            "type" => head.message_type.as_ref(), "from" => head.from.as_ref(), "uuid" => head.uuid.as_ref(),
            "requester" => Hex(&requester));
        let forwarded = Head { forwarded: true, ..head }.to_vec();
        if let Some((db, max_output)) = &self.answers.jobs {
            let raw = RawAnswer { kind, frames: frames.clone(), received: SystemTime::now(), max_output: *max_output };
            db.write(Write::RawAnswer(raw));
        }
        frames[1] = forwarded;
        frames.insert(0, requester);
        self.metrics.answers_out.inc();
        self.send_to_peer(ServerPort::Receive, frames);
        None
    }

    /// An answer to a rollout's batch: recorded, and judged by the
    /// dispatcher (whose rollout it is); nobody else is sent it.
    fn rollout_answer(&mut self, kind: Kind, frames: Vec<Vec<u8>>) {
        let answer = match Message::from_frames(&frames) {
            Ok(answer) => answer,
            Err(e) => {
                // Still its one answer: the rollout records it as failed.
                warn!(self.log, "rollout answer does not decode: counted as failed"; "error" => %e);
                let head = frames.get(1).and_then(|f| Head::parse(f));
                let (Some(uuid), Some(from)) =
                    (head.as_ref().map(|h| h.uuid.to_string()), head.as_ref().map(|h| h.from.to_string()))
                else {
                    return;
                };
                let mut stand_in = Message::new(kind.wire());
                stand_in.metadata.uuid = uuid;
                stand_in.metadata.from = from;
                stand_in.set_error(format!("the answer does not decode: {e}"));
                stand_in
            }
        };
        if let Some((db, max_output)) = &self.answers.jobs {
            let raw = RawAnswer { kind, frames, received: SystemTime::now(), max_output: *max_output };
            db.write(Write::RawAnswer(raw));
        }
        self.metrics.answers_out.inc();
        self.to.rollouts.do_send(RolloutAnswer::of(kind, &answer));
    }

    /// One message of a ROUTER socket: the routing id, the first frame after
    /// it (whose properties say who sent it) and the frames' data.
    fn read_router(&mut self, port: ServerPort) -> Option<RouterMessage> {
        let socket = match port {
            ServerPort::Files => &mut self.sockets.files,
            _ => &mut self.sockets.router,
        };
        let mut routing = match RawFrame::recv(socket, zmq::DONTWAIT) {
            Ok(frame) => frame,
            Err(zmq::Error::EAGAIN) => return None,
            Err(e) => {
                warn!(self.log, "cannot receive"; "socket" => port.name(), "error" => %e);
                return None;
            }
        };
        let peer = routing.data().to_vec();
        let (mut first, mut frames) = (None, Vec::new());
        let mut more = routing.more();
        while more {
            let Ok(mut frame) = RawFrame::recv(socket, 0) else { break };
            more = frame.more();
            frames.push(frame.data().to_vec());
            if first.is_none() {
                first = Some(frame);
            }
        }
        Some((peer, first, frames))
    }

    /// Who sent a connection's first message: its key as the ZAP handler
    /// admitted it, with the name and role the key has now (or admitted to
    /// enroll). `None` for a key no longer known (revoked) and under null
    /// security.
    fn sender_of(&self, frame: &RawFrame) -> Option<Arc<PeerAuth>> {
        let key = frame.property(c"User-Id")?;
        let address = frame.property(c"Peer-Address").unwrap_or_default();
        let (name, standing) = match self.keys.by_z85(&key) {
            Some(known) => (known.name.clone(), Standing::Known(known.role)),
            None if frame.property(zap::ROLE_PROPERTY).as_deref() == Some(ENROLLEE) => (None, Standing::Enrollee),
            None => return None,
        };
        Some(Arc::new(PeerAuth { key, name, standing, address }))
    }

    /// Subscriptions (XPUB, manual): each decided for the connection it
    /// came from, before the next one is read.
    fn drain_subscriptions(&mut self) {
        loop {
            let mut frame = match RawFrame::recv(&mut self.sockets.publisher, zmq::DONTWAIT) {
                Ok(frame) => frame,
                Err(_) => return,
            };
            let mut more = frame.more();
            while more {
                more = RawFrame::recv(&mut self.sockets.publisher, 0).is_ok_and(|f| f.more());
            }
            let fd = frame.source_fd();
            let key = frame.property(c"User-Id");
            let data = frame.data().to_vec();
            // Unsubscriptions libzmq makes for a closed connection carry
            // no connection: nothing to decide.
            let (Some(fd), Some((&flag, requested))) = (fd, data.split_first()) else { continue };
            if flag > 1 {
                continue;
            }
            // As for a ROUTER's first message: a close on this descriptor
            // number must not be taken for this connection's.
            self.settle_monitor(ServerPort::Publish);
            match &key {
                Some(key) if self.curve => {
                    if let Some(presence) = self.connections.subscriber(fd, key) {
                        self.to.presence.do_send(presence);
                    }
                }
                _ => self.connections.identified(ServerPort::Publish, fd),
            }
            let outcome = self.subscriptions.handle(fd, key.as_deref(), requested, flag == 1, &self.keys);
            for t in &outcome.subscribe {
                if let Err(e) = self.sockets.publisher.set_subscribe(t) {
                    warn!(self.log, "cannot grant a subscription"; "error" => %e);
                }
            }
            for t in &outcome.unsubscribe {
                let _ = self.sockets.publisher.set_unsubscribe(t);
            }
            if let Some(refusal) = &outcome.refused {
                let key = key.as_deref().unwrap_or("-");
                let name = key_name(&self.keys, key);
                // The stream without the exact form's marks, and which form.
                let (form, topic) = match TopicForm::parse(requested) {
                    Some((form, stream)) => (form_name(form), stream.to_owned()),
                    None => ("malformed", String::from_utf8_lossy(requested).into_owned()),
                };
                if refusal.is_expected() {
                    debug!(self.log, "subscription not granted yet: {}", refusal.reason();
                        "key" => key, "name" => name, "topic" => %topic, "form" => form);
                } else {
                    warn!(self.log, "subscription refused: {}", refusal.reason();
                        "key" => key, "name" => name, "topic" => %topic, "form" => form,
                        "address" => peer_address(fd).unwrap_or_else(|| "unknown".into()));
                }
                if *refusal == crate::subscriptions::Refusal::UnknownKey {
                    self.connections.cut(ServerPort::Publish, fd);
                }
            }
            if let Some((key, listening)) = outcome.listening {
                self.to.presence.do_send(Presence::Listening { key, listening });
            }
        }
    }

    /// ZAP requests: known keys are answered here, the rest by the key
    /// store actor.
    fn drain_zap(&mut self) {
        let mut waited = false;
        while let Some(frames) = self.sockets.zap.as_ref().and_then(|z| z.recv_multipart(zmq::DONTWAIT).ok()) {
            let request = match zap::parse(frames) {
                Ok(request) => request,
                Err((reply, reason)) => {
                    warn!(self.log, "malformed ZAP request answered with 500"; "reason" => reason);
                    self.send_zap(reply);
                    continue;
                }
            };
            let Some((status, text, known)) = self.keys.decide(&request) else {
                if let Some(key_store) = &self.to.key_store {
                    key_store.do_send(request);
                }
                continue;
            };
            let z85 = request.key.as_ref().map(pantry_shared::keys::z85).unwrap_or_else(|| "-".into());
            let port = request.port.map(ServerPort::name).unwrap_or("-");
            match status {
                Status::Ok => self.metrics.handshakes_accepted.inc(),
                _ => self.metrics.rejected(Rejection::MechanismMismatch),
            }
            match status {
                Status::Ok => debug!(self.log, "handshake accepted";
                    "name" => known.and_then(|k| k.name.as_deref()).unwrap_or("-"),
                    "role" => known.map(|k| k.role.as_str()).unwrap_or("-"), "key" => &z85,
                    "address" => &request.address, "mechanism" => &request.mechanism, "socket" => port),
                _ => debug!(self.log, "handshake rejected: {}", text;
                    "key" => &z85, "address" => &request.address, "mechanism" => &request.mechanism, "socket" => port),
            }
            let admitted = known.map(zap::Admitted::known);
            let reply = zap::reply(request.envelope.clone(), &request.request_id, status, text, admitted);
            // Client keys take their turn; admins and servers go first.
            let queued = status == Status::Ok && known.is_some_and(|k| k.role == Role::Client);
            match if queued { self.admission.admit(reply) } else { Some(reply) } {
                Some(reply) => self.send_zap(reply),
                None => waited = true,
            }
        }
        if waited && self.last_admission_note.is_none_or(|at| at.elapsed() >= ADMISSION_NOTE_EVERY) {
            self.last_admission_note = Some(Instant::now());
            info!(self.log, "more client handshakes than networking.handshake_rate: they wait their turn \
                (admins' and servers' go at once)"; "waiting" => self.admission.waiting());
        }
    }

    /// Handles the connection events `port`'s monitor already holds.
    fn settle_monitor(&mut self, port: ServerPort) {
        if let Some(index) = MONITOR_PORTS.iter().position(|p| *p == port) {
            self.drain_monitor(index, port);
        }
    }

    fn drain_monitor(&mut self, index: usize, port: ServerPort) {
        while let Some(event) = monitor::read(&self.sockets.monitors[index]) {
            let socket_name = port.name();
            match event.event {
                SocketEvent::Accepted => {
                    self.metrics.connections(port).inc();
                    let fd = event.value as RawFd;
                    for presence in self.connections.accepted(port, fd) {
                        self.to.presence.do_send(presence);
                    }
                    debug!(self.log, "connection accepted";
                        "socket" => socket_name, "address" => EventPeer(fd), "endpoint" => &event.endpoint);
                    self.check_descriptors();
                }
                SocketEvent::AcceptFailed(errno) => {
                    // Out of descriptors (EMFILE): make room at once.
                    let shed =
                        self.connections.cut_unidentified_limited(Duration::from_secs(1), self.fd_budget.limit / 10);
                    if self.last_accept_error.is_none_or(|at| at.elapsed() >= Duration::from_secs(1)) {
                        self.last_accept_error = Some(Instant::now());
                        error!(self.log, "cannot accept a connection: {}", std::io::Error::from_raw_os_error(errno as i32);
                            "socket" => socket_name, "open_connections" => self.connections.open,
                            "descriptor_limit" => self.fd_budget.limit, "shut_down_in_handshake" => shed);
                    }
                }
                SocketEvent::Disconnected => {
                    self.metrics.connections(port).dec();
                    let fd = event.value as RawFd;
                    if port == ServerPort::Publish {
                        if let Some((key, listening)) = self.subscriptions.closed(fd) {
                            self.to.presence.do_send(Presence::Listening { key, listening });
                        }
                    }
                    for presence in self.connections.closed(port, fd) {
                        if let Presence::PeerClosed(peer) = &presence {
                            self.direct_peer_closed(peer);
                        }
                        if let Presence::Disconnected(key) = &presence {
                            debug!(self.log, "key's last connection closed (or dropped: a message over \
                                max_message_size closes it)"; "key" => key, "socket" => socket_name);
                        }
                        self.to.presence.do_send(presence);
                    }
                }
                SocketEvent::HandshakeFailedProtocol(code) => {
                    self.metrics.rejected(if SocketEvent::is_mechanism_mismatch(code) {
                        Rejection::MechanismMismatch
                    } else {
                        Rejection::WrongServerKey
                    });
                    debug!(self.log, "handshake rejected: {}", SocketEvent::protocol_reason(code);
                        "socket" => socket_name, "endpoint" => &event.endpoint,
                        "address" => "unknown (libzmq does not report it before authentication)");
                }
                // A NULL client and a CURVE server each read the other's
                // greeting; when the client hangs up first, this is all the
                // server learns.
                SocketEvent::HandshakeFailedNoDetail if self.curve => {
                    self.metrics.rejected(Rejection::ClosedDuringHandshake);
                    debug!(self.log,
                        "handshake rejected: connection closed during the handshake (the peer may not speak CURVE, \
                         or stalled past the handshake time limit)";
                        "socket" => socket_name, "endpoint" => &event.endpoint);
                }
                SocketEvent::HandshakeFailedNoDetail => debug!(self.log,
                    "handshake failed: connection closed by the peer";
                    "socket" => socket_name, "endpoint" => &event.endpoint),
                _ => {}
            }
        }
    }

    /// Warns when descriptors run short, and sheds connections that have
    /// not identified themselves (stalled handshakes, silent peers) before
    /// known keys are locked out.
    fn check_descriptors(&mut self) {
        let used = self.base_fds + self.connections.open;
        if used >= self.fd_budget.shed_at() {
            let excess = used - self.fd_budget.shed_to();
            let cut = self.connections.cut_unidentified_limited(Duration::from_secs(1), excess);
            if cut > 0 {
                warn!(self.log, "descriptors nearly exhausted: shut down connections that had not completed \
                    their handshake or said nothing yet";
                    "shut_down" => cut, "open_descriptors" => used, "limit" => self.fd_budget.limit);
            }
        }
        if used >= self.fd_budget.warn_at() && self.last_fd_warning.is_none_or(|at| at.elapsed() >= FD_WARN_EVERY) {
            self.last_fd_warning = Some(Instant::now());
            warn!(self.log, "over 80% of the open-file limit in use";
                "open_descriptors" => used, "limit" => self.fd_budget.limit,
                "connections_in_handshake" => self.connections.unidentified_count());
        }
    }
}

/// How one attempt to send to a peer went.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Sent {
    Whole,
    /// Its queue is full: kept to send later.
    Later,
    /// Its queue and what is kept for it are full.
    Full,
    Gone,
}

/// Why a request was not sent to an agent.
#[derive(Debug, Clone, Copy)]
enum Undelivered {
    NotReading,
    Gone,
}

impl Undelivered {
    /// The answer's error, first.
    fn error(self) -> &'static str {
        match self {
            Undelivered::NotReading => NOT_READING,
            Undelivered::Gone => "agent disconnected",
        }
    }

    fn reason(self) -> &'static str {
        match self {
            Undelivered::NotReading => "its queue on the server is full (it does not read what it is sent)",
            Undelivered::Gone => "its connection closed before the request could be sent",
        }
    }
}

/// A ROUTER message: routing id, the first frame after it, every frame's
/// data.
type RouterMessage = (Vec<u8>, Option<RawFrame>, Vec<Vec<u8>>);

fn form_name(form: TopicForm) -> &'static str {
    match form {
        TopicForm::Exact => "exact",
        TopicForm::Bare => "bare",
    }
}

fn key_name<'a>(keys: &'a KeySnapshot, key: &str) -> &'a str {
    keys.by_z85(key).and_then(|k| k.name.as_deref()).unwrap_or("-")
}

/// The peer address of an ACCEPTED event, whose value is the new socket's
/// file descriptor; looked up only when the line is written (debug).
struct EventPeer(RawFd);

impl slog::Value for EventPeer {
    fn serialize(&self, _: &slog::Record, key: slog::Key, serializer: &mut dyn slog::Serializer) -> slog::Result {
        let address = peer_address(self.0).unwrap_or_else(|| "unknown".into());
        serializer.emit_str(key, &address)
    }
}
