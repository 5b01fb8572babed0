//! Links to the other servers of a cluster, owned by the socket thread: a
//! DEALER to each one's receive port, with the key pair every server of the
//! cluster shares. Requests for clients on another server go over its link;
//! their answers come back over it and are routed like local ones.

use pantry_shared::security::SocketSecurity;
use pantry_shared::Message;
use slog::{info, warn, Logger};

struct Link {
    server: String,
    endpoint: String,
    socket: zmq::Socket,
}

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
                    Ok(socket) => {
                        info!(self.log, "linked to another server of the cluster"; "server" => server,
                            "endpoint" => endpoint);
                        self.links.push(Link { server: server.into(), endpoint: endpoint.into(), socket });
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

    fn connect(&self, endpoint: &str) -> zmq::Result<zmq::Socket> {
        let socket = self.security.socket(&self.ctx, zmq::DEALER)?;
        socket.connect(endpoint)?;
        Ok(socket)
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

    pub fn sockets(&self) -> impl Iterator<Item = &zmq::Socket> {
        self.links.iter().map(|l| &l.socket)
    }

    /// The next message waiting on link `index`, with its server's name.
    pub fn recv(&self, index: usize) -> Option<(String, Vec<Vec<u8>>)> {
        let link = self.links.get(index)?;
        let frames = link.socket.recv_multipart(zmq::DONTWAIT).ok()?;
        Some((link.server.clone(), frames))
    }
}
