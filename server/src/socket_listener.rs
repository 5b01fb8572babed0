//! The socket listener: owns every ZeroMQ socket of the server.
//!
//! ZeroMQ sockets may be used from one thread at a time, so the sockets live
//! on a dedicated thread that blocks in `zmq::poll` on the ROUTER (requests
//! from clients and admins), the file service ROUTER, the XPUB (whose
//! subscriptions say which connection is whose), the ZAP handler socket, the
//! socket monitors and an inproc PULL. Inbound traffic is decoded there and handed to actors with
//! `do_send`. Outbound traffic goes the other way: the [`SocketListener`]
//! actor writes tagged frames to its inproc PUSH, and the thread sends them
//! on the right socket. No poll timeout, so no latency floor.

use std::collections::{HashMap, VecDeque};
use std::os::fd::RawFd;
use std::thread::JoinHandle;

use actix::prelude::*;
use pantry_shared::filter::BROADCAST_TOPIC;
use pantry_shared::monitor::{self, SocketEvent};
use pantry_shared::security::{SocketSecurity, ZAP_ENDPOINT};
use pantry_shared::Message;
use slog::{debug, error, info, warn, Logger};

use crate::command_dispatcher::{Incoming, PeerPresence};
use crate::connections::{Connections, Presence, RawFrame, SocketKind};
use crate::file_service::FileFrames;
use crate::zap_handler::ZapRequest;

const OUTBOUND_ENDPOINT: &str = "inproc://pantry-outbound";

/// listen(2) backlog of the server's TCP sockets (Linux caps it at
/// net.core.somaxconn, 4096 by default).
const ACCEPT_BACKLOG: i32 = 4096;

/// Tags of the first frame on the inproc PULL: which socket the rest goes to.
const TO_PEER: &[u8] = b"R";
const TO_SUBSCRIBERS: &[u8] = b"P";
const TO_ZAP: &[u8] = b"Z";
const TO_FILE_PEER: &[u8] = b"F";
const CUT_OFF: &[u8] = b"C";
const STOP: &[u8] = b"S";

/// Where the server listens.
#[derive(Debug, Clone)]
pub struct Endpoints {
    pub publish: String,
    pub receive: String,
    pub file_service: String,
}

/// The server's sockets, bound but not yet serving.
pub struct BoundSockets {
    ctx: zmq::Context,
    zap: Option<zmq::Socket>,
    router: zmq::Socket,
    publisher: zmq::Socket,
    files: zmq::Socket,
    pull: zmq::Socket,
    router_monitor: zmq::Socket,
    publisher_monitor: zmq::Socket,
    files_monitor: zmq::Socket,
}

impl BoundSockets {
    /// Binds the ZAP handler socket (CURVE only) first, so that no handshake
    /// can happen without it, then the PUB and ROUTER sockets.
    pub fn bind(ctx: &zmq::Context, security: &SocketSecurity, endpoints: &Endpoints) -> anyhow::Result<BoundSockets> {
        use anyhow::Context as _;
        let zap = if security.is_curve() {
            let zap = ctx.socket(zmq::ROUTER)?;
            zap.set_linger(0)?;
            zap.bind(ZAP_ENDPOINT).with_context(|| format!("cannot bind the ZAP handler on {ZAP_ENDPOINT}"))?;
            Some(zap)
        } else {
            None
        };
        let pull = ctx.socket(zmq::PULL)?;
        pull.set_linger(0)?;
        pull.bind(OUTBOUND_ENDPOINT)?;

        // XPUB: like PUB for subscribers, but every subscription reaches us,
        // which tells which connection (descriptor) belongs to which key.
        let publisher = security.socket(ctx, zmq::XPUB)?;
        publisher.set_xpub_verbose(true)?;
        // Thousands of agents reconnect at once after a restart: libzmq's
        // default accept backlog (100) would overflow and stall them for
        // seconds in the kernel's SYN retries.
        publisher.set_backlog(ACCEPT_BACKLOG)?;
        let publisher_monitor = monitor::monitor(ctx, &publisher, monitor::SERVER_EVENTS)?;
        publisher
            .bind(&endpoints.publish)
            .with_context(|| format!("cannot bind PUB socket on {}", endpoints.publish))?;

        let router = security.socket(ctx, zmq::ROUTER)?;
        // Sending to a peer that is gone is an error we log, not a silent drop.
        router.set_router_mandatory(true)?;
        router.set_backlog(ACCEPT_BACKLOG)?;
        let router_monitor = monitor::monitor(ctx, &router, monitor::SERVER_EVENTS)?;
        router
            .bind(&endpoints.receive)
            .with_context(|| format!("cannot bind ROUTER socket on {}", endpoints.receive))?;

        let files = security.socket(ctx, zmq::ROUTER)?;
        files.set_router_mandatory(true)?;
        files.set_backlog(ACCEPT_BACKLOG)?;
        let files_monitor = monitor::monitor(ctx, &files, monitor::SERVER_EVENTS)?;
        files
            .bind(&endpoints.file_service)
            .with_context(|| format!("cannot bind file service socket on {}", endpoints.file_service))?;

        Ok(BoundSockets {
            ctx: ctx.clone(),
            zap,
            router,
            publisher,
            files,
            pull,
            router_monitor,
            publisher_monitor,
            files_monitor,
        })
    }
}

/// The actor side of the listener: the one way out to the network.
pub struct SocketListener {
    push: zmq::Socket,
    thread: Option<JoinHandle<()>>,
    log: Logger,
}

impl SocketListener {
    /// Starts the socket thread. Inbound messages go to `dispatcher`, ZAP
    /// requests to `zap`.
    pub fn start(
        sockets: BoundSockets,
        dispatcher: Recipient<Incoming>,
        presence: Recipient<PeerPresence>,
        files: Recipient<FileFrames>,
        zap: Option<Recipient<ZapRequest>>,
        log: Logger,
    ) -> anyhow::Result<Addr<SocketListener>> {
        let push = sockets.ctx.socket(zmq::PUSH)?;
        push.set_linger(0)?;
        push.connect(OUTBOUND_ENDPOINT)?;
        let thread_log = log.clone();
        let thread = std::thread::Builder::new().name("pantry-sockets".into()).spawn(move || {
            let (connections, backlogs) = Default::default();
            SocketThread { sockets, dispatcher, presence, files, zap, connections, backlogs, log: thread_log }.run()
        })?;
        Ok(SocketListener { push, thread: Some(thread), log }.start())
    }

    fn send_tagged(&self, tag: &[u8], frames: impl IntoIterator<Item = Vec<u8>>) {
        let all = std::iter::once(tag.to_vec()).chain(frames);
        if let Err(e) = self.push.send_multipart(all, 0) {
            error!(self.log, "cannot hand a message to the socket thread"; "error" => %e);
        }
    }
}

impl Actor for SocketListener {
    type Context = Context<Self>;
}

/// Send a message to one peer over the ROUTER connection it came from.
#[derive(Message)]
#[rtype(result = "()")]
pub struct SendToPeer {
    pub peer: Vec<u8>,
    pub message: Message,
}

impl Handler<SendToPeer> for SocketListener {
    type Result = ();

    fn handle(&mut self, msg: SendToPeer, _: &mut Context<Self>) {
        self.send_tagged(TO_PEER, std::iter::once(msg.peer).chain(msg.message.to_frames()));
    }
}

/// Publish a request to the clients subscribed to its stream. Stream `""`
/// goes out under the broadcast topic.
#[derive(Message)]
#[rtype(result = "()")]
pub struct Publish {
    pub message: Message,
}

impl Handler<Publish> for SocketListener {
    type Result = ();

    fn handle(&mut self, msg: Publish, _: &mut Context<Self>) {
        let mut frames = msg.message.to_frames();
        if frames[0].is_empty() {
            frames[0] = BROADCAST_TOPIC.as_bytes().to_vec();
        }
        self.send_tagged(TO_SUBSCRIBERS, frames);
    }
}

/// A ZAP reply, envelope included.
#[derive(Message)]
#[rtype(result = "()")]
pub struct ZapReply {
    pub frames: Vec<Vec<u8>>,
}

impl Handler<ZapReply> for SocketListener {
    type Result = ();

    fn handle(&mut self, msg: ZapReply, _: &mut Context<Self>) {
        self.send_tagged(TO_ZAP, msg.frames);
    }
}

/// Send frames (routing id first) on the file service socket.
#[derive(Message)]
#[rtype(result = "()")]
pub struct SendFileFrames {
    pub frames: Vec<Vec<u8>>,
}

impl Handler<SendFileFrames> for SocketListener {
    type Result = ();

    fn handle(&mut self, msg: SendFileFrames, _: &mut Context<Self>) {
        self.send_tagged(TO_FILE_PEER, msg.frames);
    }
}

/// Close every open connection of a revoked key.
#[derive(Message)]
#[rtype(result = "()")]
pub struct CutOff {
    pub key: String,
}

impl Handler<CutOff> for SocketListener {
    type Result = ();

    fn handle(&mut self, msg: CutOff, _: &mut Context<Self>) {
        self.send_tagged(CUT_OFF, [msg.key.into_bytes()]);
    }
}

/// Close every socket (linger 0) and end the socket thread.
#[derive(Message)]
#[rtype(result = "()")]
pub struct Shutdown;

impl Handler<Shutdown> for SocketListener {
    type Result = ();

    fn handle(&mut self, _: Shutdown, ctx: &mut Context<Self>) {
        self.send_tagged(STOP, std::iter::empty());
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
        ctx.stop();
    }
}

/// Messages for ROUTER peers whose queue is full (the high-water mark):
/// kept in order and retried when the peer has read, so a fan-out's N
/// answers to one requester are not lost. Bounded per peer: beyond that a
/// peer that stopped reading loses messages (logged at debug), and the
/// server's memory stays bounded.
#[derive(Default)]
struct Backlog {
    by_peer: HashMap<Vec<u8>, VecDeque<Vec<Vec<u8>>>>,
}

const BACKLOG_PER_PEER: usize = 100_000;

fn backlog_index(kind: SocketKind) -> usize {
    match kind {
        SocketKind::Files => 1,
        _ => 0,
    }
}

impl Backlog {
    fn is_empty(&self) -> bool {
        self.by_peer.is_empty()
    }
}

/// The thread that owns the sockets.
struct SocketThread {
    sockets: BoundSockets,
    dispatcher: Recipient<Incoming>,
    presence: Recipient<PeerPresence>,
    files: Recipient<FileFrames>,
    zap: Option<Recipient<ZapRequest>>,
    connections: Connections,
    /// Per socket kind: ROUTER and file service.
    backlogs: [Backlog; 2],
    log: Logger,
}

impl SocketThread {
    fn run(mut self) {
        // The C handles, for reads that need message properties.
        let router = self.sockets.router.as_mut_ptr();
        let files = self.sockets.files.as_mut_ptr();
        let publisher = self.sockets.publisher.as_mut_ptr();
        loop {
            let s = &self.sockets;
            // Without CURVE there is no ZAP socket: its slot polls the PULL
            // for nothing, so the set is a fixed array (no allocation per
            // wake-up).
            let zap = match &s.zap {
                Some(zap) => zap.as_poll_item(zmq::POLLIN),
                None => s.pull.as_poll_item(zmq::PollEvents::empty()),
            };
            let mut items = [
                s.pull.as_poll_item(zmq::POLLIN),
                s.router.as_poll_item(zmq::POLLIN),
                s.router_monitor.as_poll_item(zmq::POLLIN),
                s.publisher_monitor.as_poll_item(zmq::POLLIN),
                s.files.as_poll_item(zmq::POLLIN),
                s.files_monitor.as_poll_item(zmq::POLLIN),
                s.publisher.as_poll_item(zmq::POLLIN),
                zap,
            ];
            // With messages waiting for full peers, wake up to retry them.
            let timeout = if self.backlogs.iter().all(Backlog::is_empty) { -1 } else { 1 };
            if let Err(e) = zmq::poll(&mut items, timeout) {
                if e == zmq::Error::EINTR {
                    continue;
                }
                error!(self.log, "socket poll failed; the server stops serving"; "error" => %e);
                return;
            }
            let ready = items.map(|i| i.is_readable());
            self.retry_backlogs();
            // Closed connections first: a descriptor number may be reused.
            if ready[2] {
                self.drain_monitor(SocketKind::Router);
            }
            if ready[3] {
                self.drain_monitor(SocketKind::Publisher);
            }
            if ready[5] {
                self.drain_monitor(SocketKind::Files);
            }
            if ready[0] && !self.drain_outbound() {
                info!(self.log, "sockets closed");
                return;
            }
            if ready[1] {
                self.drain_router(router, SocketKind::Router);
            }
            if ready[4] {
                self.drain_router(files, SocketKind::Files);
            }
            if ready[6] {
                self.drain_subscriptions(publisher);
            }
            if ready[7] {
                self.drain_zap();
            }
        }
    }

    /// Sends everything the actors queued. Returns false on the stop tag.
    fn drain_outbound(&mut self) -> bool {
        while let Ok(mut frames) = self.sockets.pull.recv_multipart(zmq::DONTWAIT) {
            if frames.is_empty() {
                continue;
            }
            let tag = frames.remove(0);
            match tag.as_slice() {
                TO_PEER => self.send_to_peer(SocketKind::Router, frames),
                TO_FILE_PEER => self.send_to_peer(SocketKind::Files, frames),
                TO_SUBSCRIBERS => {
                    if let Err(e) = self.sockets.publisher.send_multipart(frames, zmq::DONTWAIT) {
                        warn!(self.log, "cannot publish"; "error" => %e);
                    }
                }
                TO_ZAP => {
                    if let Some(zap) = &self.sockets.zap {
                        if let Err(e) = zap.send_multipart(frames, zmq::DONTWAIT) {
                            error!(self.log, "cannot send a ZAP reply"; "error" => %e);
                        }
                    }
                }
                CUT_OFF => {
                    let key =
                        String::from_utf8_lossy(frames.first().map(Vec::as_slice).unwrap_or_default()).into_owned();
                    let closed = self.connections.cut_off(&key);
                    info!(self.log, "cut off a revoked key: its connections were shut down";
                        "key" => key, "connections" => closed);
                }
                STOP => return false,
                _ => {}
            }
        }
        true
    }

    fn socket_of(&self, kind: SocketKind) -> &zmq::Socket {
        match kind {
            SocketKind::Files => &self.sockets.files,
            _ => &self.sockets.router,
        }
    }

    /// Sends `[peer, frames...]` on a ROUTER socket, behind whatever is
    /// already waiting for that peer.
    fn send_to_peer(&mut self, kind: SocketKind, frames: Vec<Vec<u8>>) {
        let Some(peer) = frames.first() else { return };
        let backlog = &mut self.backlogs[backlog_index(kind)];
        if let Some(waiting) = backlog.by_peer.get_mut(peer) {
            if waiting.len() < BACKLOG_PER_PEER {
                waiting.push_back(frames);
            } else {
                debug!(self.log, "peer stopped reading: its backlog is full; message dropped"; "peer" => Hex(peer));
            }
            return;
        }
        if let Some(frames) = self.try_send(kind, frames) {
            let peer = frames[0].clone();
            debug!(self.log, "peer's queue is full (high-water mark): holding its messages until it reads";
                "peer" => Hex(&peer), "socket" => kind.name());
            self.backlogs[backlog_index(kind)].by_peer.entry(peer).or_default().push_back(frames);
        }
    }

    /// Sends what the full peers can take now, in order.
    fn retry_backlogs(&mut self) {
        for kind in [SocketKind::Router, SocketKind::Files] {
            let mut backlog = std::mem::take(&mut self.backlogs[backlog_index(kind)]);
            backlog.by_peer.retain(|_, waiting| {
                while let Some(frames) = waiting.pop_front() {
                    if let Some(frames) = self.try_send(kind, frames) {
                        waiting.push_front(frames);
                        return true;
                    }
                }
                false
            });
            self.backlogs[backlog_index(kind)] = backlog;
        }
    }

    /// One attempt; gives the frames back if the peer's queue is full.
    fn try_send(&self, kind: SocketKind, frames: Vec<Vec<u8>>) -> Option<Vec<Vec<u8>>> {
        let socket = self.socket_of(kind);
        // The routing frame alone first: ROUTER_MANDATORY reports a gone or
        // full peer there, before anything of the message is queued.
        match socket.send(&frames[0], zmq::SNDMORE | zmq::DONTWAIT) {
            Ok(()) => {}
            Err(zmq::Error::EAGAIN) => return Some(frames),
            Err(zmq::Error::EHOSTUNREACH) => {
                debug!(self.log, "peer is gone; message dropped"; "peer" => Hex(&frames[0]));
                return None;
            }
            Err(e) => {
                warn!(self.log, "cannot send to peer"; "peer" => Hex(&frames[0]), "error" => %e);
                return None;
            }
        }
        let mut rest = frames.iter().skip(1).peekable();
        while let Some(frame) = rest.next() {
            let flags = if rest.peek().is_some() { zmq::SNDMORE } else { 0 };
            // After the first frame libzmq takes the whole message.
            if let Err(e) = socket.send(frame, flags | zmq::DONTWAIT) {
                warn!(self.log, "cannot send to peer"; "peer" => Hex(&frames[0]), "error" => %e);
                return None;
            }
        }
        None
    }

    /// Reads every waiting message of a ROUTER socket (requests or file
    /// service frames) with the identity of its sender.
    fn drain_router(&mut self, socket: *mut std::ffi::c_void, kind: SocketKind) {
        loop {
            let mut routing = match RawFrame::recv(socket, zmq::DONTWAIT) {
                Ok(frame) => frame,
                Err(zmq::Error::EAGAIN) => return,
                Err(e) => {
                    warn!(self.log, "cannot receive"; "socket" => kind.name(), "error" => %e);
                    return;
                }
            };
            let peer = routing.data().to_vec();
            let mut frames = Vec::new();
            let mut auth = None;
            let mut more = routing.more();
            while more {
                let Ok(mut frame) = RawFrame::recv(socket, 0) else { break };
                if frames.is_empty() {
                    let (sender, presence) = self.connections.sender(kind, &peer, &mut frame);
                    auth = sender;
                    if let Some(presence) = presence {
                        self.presence.do_send(PeerPresence(presence));
                    }
                }
                more = frame.more();
                frames.push(frame.data().to_vec());
            }
            match kind {
                SocketKind::Files => self.files.do_send(FileFrames { peer, auth, frames }),
                _ => match Message::from_frames(&frames) {
                    Ok(message) => self.dispatcher.do_send(Incoming { peer, auth, message }),
                    Err(e) => debug!(self.log, "malformed message dropped";
                        "peer" => Hex(&peer), "key" => auth.as_ref().map(|a| a.key.as_str()).unwrap_or("-"),
                        "frames" => frames.len(), "error" => %e),
                },
            }
        }
    }

    /// Subscriptions (XPUB): only to learn which connection is whose.
    fn drain_subscriptions(&mut self, socket: *mut std::ffi::c_void) {
        while let Ok(mut frame) = RawFrame::recv(socket, zmq::DONTWAIT) {
            if let Some(presence) = self.connections.subscriber(&mut frame) {
                self.presence.do_send(PeerPresence(presence));
            }
            while frame.more() {
                match RawFrame::recv(socket, 0) {
                    Ok(next) => frame = next,
                    Err(_) => break,
                }
            }
        }
    }

    fn drain_zap(&self) {
        let Some(zap_socket) = &self.sockets.zap else {
            return;
        };
        while let Ok(frames) = zap_socket.recv_multipart(zmq::DONTWAIT) {
            match (ZapRequest::parse(frames), &self.zap) {
                (Ok(request), Some(handler)) => handler.do_send(request),
                (Err((envelope_reply, reason)), _) => {
                    warn!(self.log, "malformed ZAP request answered with 500"; "reason" => reason);
                    let _ = zap_socket.send_multipart(envelope_reply, zmq::DONTWAIT);
                }
                (Ok(_), None) => {}
            }
        }
    }

    fn drain_monitor(&mut self, kind: SocketKind) {
        let curve = self.sockets.zap.is_some();
        loop {
            let pair = match kind {
                SocketKind::Router => &self.sockets.router_monitor,
                SocketKind::Publisher => &self.sockets.publisher_monitor,
                SocketKind::Files => &self.sockets.files_monitor,
            };
            let Some(event) = monitor::read(pair) else { return };
            let socket_name = kind.name();
            match event.event {
                SocketEvent::Accepted => debug!(self.log, "connection accepted";
                    "socket" => socket_name, "address" => EventPeer(event.value as RawFd), "endpoint" => &event.endpoint),
                SocketEvent::Disconnected => {
                    if let Some(presence) = self.connections.closed(kind, event.value as RawFd) {
                        if let Presence::Disconnected(key) = &presence {
                            debug!(self.log, "key's last connection closed (or dropped: a message over \
                                max_message_size closes it)"; "key" => key, "socket" => socket_name);
                        }
                        self.presence.do_send(PeerPresence(presence));
                    }
                }
                SocketEvent::HandshakeFailedProtocol(code) => debug!(self.log,
                    "handshake rejected: {}", SocketEvent::protocol_reason(code);
                    "socket" => socket_name, "endpoint" => &event.endpoint,
                    "address" => "unknown (libzmq does not report it before authentication)"),
                // A NULL client and a CURVE server each read the other's
                // greeting; when the client hangs up first, this is all the
                // server learns.
                SocketEvent::HandshakeFailedNoDetail if curve => debug!(self.log,
                    "handshake rejected: connection closed during the handshake (the peer may not speak CURVE)";
                    "socket" => socket_name, "endpoint" => &event.endpoint),
                SocketEvent::HandshakeFailedNoDetail => debug!(self.log,
                    "handshake failed: connection closed by the peer";
                    "socket" => socket_name, "endpoint" => &event.endpoint),
                _ => {}
            }
        }
    }
}

impl SocketKind {
    fn name(self) -> &'static str {
        match self {
            SocketKind::Router => "ROUTER",
            SocketKind::Publisher => "PUB",
            SocketKind::Files => "FILES",
        }
    }
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

fn peer_address(fd: RawFd) -> Option<String> {
    // SAFETY: getpeername writes at most `len` bytes into `storage`.
    unsafe {
        let mut storage: libc::sockaddr_storage = std::mem::zeroed();
        let mut len = std::mem::size_of::<libc::sockaddr_storage>() as libc::socklen_t;
        if libc::getpeername(fd, (&mut storage as *mut libc::sockaddr_storage).cast(), &mut len) != 0 {
            return None;
        }
        match storage.ss_family as i32 {
            libc::AF_INET => {
                let a: &libc::sockaddr_in = &*(&storage as *const libc::sockaddr_storage).cast();
                let ip = std::net::Ipv4Addr::from(u32::from_be(a.sin_addr.s_addr));
                Some(format!("{ip}:{}", u16::from_be(a.sin_port)))
            }
            libc::AF_INET6 => {
                let a: &libc::sockaddr_in6 = &*(&storage as *const libc::sockaddr_storage).cast();
                let ip = std::net::Ipv6Addr::from(a.sin6_addr.s6_addr);
                Some(format!("[{ip}]:{}", u16::from_be(a.sin6_port)))
            }
            _ => None,
        }
    }
}

/// A binary routing id, logged as hex. Formatted only when a line is
/// actually written, so per-message debug logging costs nothing when off.
pub struct Hex<'a>(pub &'a [u8]);

impl slog::Value for Hex<'_> {
    fn serialize(&self, _: &slog::Record, key: slog::Key, serializer: &mut dyn slog::Serializer) -> slog::Result {
        struct Digits<'a>(&'a [u8]);
        impl std::fmt::Display for Digits<'_> {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                self.0.iter().try_for_each(|b| write!(f, "{b:02x}"))
            }
        }
        serializer.emit_arguments(key, &format_args!("{}", Digits(self.0)))
    }
}
