//! Links to the other servers of a cluster, owned by the socket thread: a
//! DEALER to each one's receive port, with the key pair every server of the
//! cluster shares. Requests for clients on another server go over its link;
//! their answers come back over it and are routed like local ones. A
//! monitor on each link says when it is up (handshake done) or down, so a
//! dead server's clients are named offline at once rather than waited for.

use pantry_shared::monitor::{self, SocketEvent};
use pantry_shared::security::SocketSecurity;
use pantry_shared::Message;
use slog::{info, warn, Logger};

struct Link {
    server: String,
    endpoint: String,
    socket: zmq::Socket,
    monitor: zmq::Socket,
}

/// The events that say a link is up or down.
const LINK_EVENTS: &[zmq::SocketEvent] =
    &[zmq::SocketEvent::CONNECTED, zmq::SocketEvent::HANDSHAKE_SUCCEEDED, zmq::SocketEvent::DISCONNECTED];

pub struct Links {
    ctx: zmq::Context,
    security: SocketSecurity,
    links: Vec<Link>,
    log: Logger,
}

impl Links {
    pub fn new(ctx: zmq::Context, security: SocketSecurity, log: Logger) -> Links {
        Links { ctx, security, links: Vec::new(), log }
    }

    /// Connects to `server` at `endpoint` (again, if it moved), or drops
    /// its link (`None`).
    pub fn set(&mut self, server: &str, endpoint: Option<&str>) {
        let existing = self.links.iter().position(|l| l.server == server);
        match (existing, endpoint) {
            (Some(i), Some(endpoint)) if self.links[i].endpoint == endpoint => {}
            (existing, Some(endpoint)) => {
                if let Some(i) = existing {
                    self.links.swap_remove(i);
                }
                match self.connect(endpoint) {
                    Ok((socket, monitor)) => {
                        info!(self.log, "linking to another server of the cluster"; "server" => server,
                            "endpoint" => endpoint);
                        self.links.push(Link { server: server.into(), endpoint: endpoint.into(), socket, monitor });
                    }
                    Err(e) => warn!(self.log, "cannot link to another server of the cluster";
                        "server" => server, "endpoint" => endpoint, "error" => %e),
                }
            }
            (Some(i), None) => {
                info!(self.log, "another server left the cluster: link closed"; "server" => server);
                self.links.swap_remove(i);
            }
            (None, None) => {}
        }
    }

    fn connect(&self, endpoint: &str) -> zmq::Result<(zmq::Socket, zmq::Socket)> {
        let socket = self.security.socket(&self.ctx, zmq::DEALER)?;
        let monitor = monitor::monitor(&self.ctx, &socket, LINK_EVENTS)?;
        socket.connect(endpoint)?;
        Ok((socket, monitor))
    }

    /// Sends `message` over `server`'s link; false without one.
    pub fn send(&self, server: &str, message: &Message) -> bool {
        let Some(link) = self.links.iter().find(|l| l.server == server) else {
            warn!(self.log, "no link to the server of some recipients: they will not answer";
                "server" => server, "uuid" => message.uuid());
            return false;
        };
        match link.socket.send_multipart(message.to_frames(), zmq::DONTWAIT) {
            Ok(()) => true,
            Err(e) => {
                warn!(self.log, "cannot send over the link to another server"; "server" => server,
                    "uuid" => message.uuid(), "error" => %e);
                false
            }
        }
    }

    /// Each link's socket, then its monitor.
    pub fn sockets(&self) -> impl Iterator<Item = &zmq::Socket> {
        self.links.iter().flat_map(|l| [&l.socket, &l.monitor])
    }

    /// Link `index`'s state changes waiting on its monitor: its server's
    /// name and whether it is up, the last one.
    pub fn state(&self, index: usize) -> Option<(String, bool)> {
        let link = self.links.get(index)?;
        let secure = self.security.is_curve();
        let mut up = None;
        while let Some(event) = monitor::read(&link.monitor) {
            match event.event {
                SocketEvent::HandshakeSucceeded => up = Some(true),
                SocketEvent::Connected if !secure => up = Some(true),
                SocketEvent::Disconnected => up = Some(false),
                _ => {}
            }
        }
        up.map(|up| (link.server.clone(), up))
    }

    /// The next message waiting on link `index`, with its server's name.
    pub fn recv(&self, index: usize) -> Option<(String, Vec<Vec<u8>>)> {
        let link = self.links.get(index)?;
        let frames = link.socket.recv_multipart(zmq::DONTWAIT).ok()?;
        Some((link.server.clone(), frames))
    }
}
