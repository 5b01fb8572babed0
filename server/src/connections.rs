//! Who is at the other end of each connection, for the socket thread: per
//! ROUTER routing id and per TCP descriptor, the key (CURVE) that the ZAP
//! handler admitted; and the connections accepted but not yet identified.
//!
//! libzmq gives no handle on one connection of a PUB or ROUTER socket, so
//! the server closes connections underneath it: every message and every
//! subscription tells the descriptor it came from (`ZMQ_SRCFD`), and
//! `shutdown(2)` on it ends the connection (libzmq then closes it itself).
//! A connection that has not sent anything yet cannot be tied to a key:
//! those are tracked by descriptor from the socket monitor's ACCEPTED event
//! until they identify themselves, so they can be shut down too (at a
//! revocation, or when descriptors run short).

use std::collections::{HashMap, HashSet};
use std::os::fd::RawFd;
use std::sync::Arc;
use std::time::{Duration, Instant};

use pantry_shared::keys::KnownKey;
use pantry_shared::security::ServerPort;

use crate::messages::{PeerAuth, Presence, Standing};
use crate::raw_zmq::shutdown_connection;

type Conn = (ServerPort, RawFd);

/// Who owns a descriptor: a key (CURVE), and on ROUTER sockets a routing
/// id.
struct Owner {
    key: Option<String>,
    peer: Option<Vec<u8>>,
}

#[derive(Default)]
pub struct Connections {
    /// Routing id → sender, per ROUTER socket (receive, files); `None` for
    /// a connection that is not (or no longer) trusted.
    peers: [HashMap<Vec<u8>, Option<Arc<PeerAuth>>>; 2],
    by_fd: HashMap<Conn, Owner>,
    by_key: HashMap<String, HashSet<Conn>>,
    unidentified: HashMap<Conn, Instant>,
    /// Connections of keys admitted only to enroll, and since when.
    enrollees: HashMap<Conn, Instant>,
    /// Connections accepted and not yet closed, on all three sockets.
    pub open: usize,
}

fn router_index(port: ServerPort) -> usize {
    match port {
        ServerPort::Files => 1,
        _ => 0,
    }
}

impl Connections {
    /// The socket monitor saw a new connection. A descriptor number reused
    /// by a new connection replaces the old one, whose end is returned.
    pub fn accepted(&mut self, port: ServerPort, fd: RawFd) -> Vec<Presence> {
        self.open += 1;
        let gone = self.forget(port, fd);
        self.unidentified.insert((port, fd), Instant::now());
        gone
    }

    /// A connection closed (monitor DISCONNECTED, whose value is the fd):
    /// what that changes (a receive-port peer gone, a key's last connection).
    pub fn closed(&mut self, port: ServerPort, fd: RawFd) -> Vec<Presence> {
        self.open = self.open.saturating_sub(1);
        self.unidentified.remove(&(port, fd));
        self.enrollees.remove(&(port, fd));
        self.forget(port, fd)
    }

    fn forget(&mut self, port: ServerPort, fd: RawFd) -> Vec<Presence> {
        let mut changes = Vec::new();
        let Some(owner) = self.by_fd.remove(&(port, fd)) else { return changes };
        if let Some(peer) = owner.peer {
            self.peers[router_index(port)].remove(&peer);
            if port == ServerPort::Receive {
                changes.push(Presence::PeerClosed(peer));
            }
        }
        let Some(key) = owner.key else { return changes };
        if let Some(conns) = self.by_key.get_mut(&key) {
            conns.remove(&(port, fd));
            if conns.is_empty() {
                self.by_key.remove(&key);
                changes.push(Presence::Disconnected(key));
            }
        }
        changes
    }

    /// The sender of a message from routing id `peer`, if already known.
    /// `None` inside means known and not trusted.
    pub fn cached_sender(&self, port: ServerPort, peer: &[u8]) -> Option<Option<Arc<PeerAuth>>> {
        self.peers[router_index(port)].get(peer).cloned()
    }

    /// Records the sender of a routing id's first message, read from its
    /// connection by the caller. Returns a presence change.
    pub fn new_sender(
        &mut self,
        port: ServerPort,
        peer: &[u8],
        fd: Option<RawFd>,
        auth: Option<Arc<PeerAuth>>,
    ) -> Option<Presence> {
        self.peers[router_index(port)].insert(peer.to_vec(), auth.clone());
        let fd = fd?;
        let accepted = self.unidentified.remove(&(port, fd));
        if let (Some(accepted), Some(Standing::Enrollee)) = (accepted, auth.as_ref().map(|a| a.standing)) {
            self.enrollees.insert((port, fd), accepted);
        }
        self.track(port, fd, auth.map(|a| a.key.clone()), Some(peer.to_vec()))
    }

    /// Notes the PUB connection a subscription came from.
    pub fn subscriber(&mut self, fd: RawFd, key: &str) -> Option<Presence> {
        let conn = (ServerPort::Publish, fd);
        self.unidentified.remove(&conn);
        if self.by_fd.contains_key(&conn) {
            return None;
        }
        self.track(ServerPort::Publish, fd, Some(key.to_owned()), None)
    }

    /// Under null security nothing is tracked by key, but a connection
    /// that spoke is no longer unidentified.
    pub fn identified(&mut self, port: ServerPort, fd: RawFd) {
        self.unidentified.remove(&(port, fd));
    }

    fn track(&mut self, port: ServerPort, fd: RawFd, key: Option<String>, peer: Option<Vec<u8>>) -> Option<Presence> {
        self.by_fd.insert((port, fd), Owner { key: key.clone(), peer });
        let key = key?;
        let conns = self.by_key.entry(key.clone()).or_default();
        conns.insert((port, fd));
        (conns.len() == 1).then_some(Presence::Connected(key))
    }

    /// A key's name or role changed (a binding): its cached senders follow.
    pub fn key_changed(&mut self, known: &KnownKey) {
        let Some(conns) = self.by_key.get(&known.public_key) else { return };
        for conn in conns {
            let Some(Owner { peer: Some(peer), .. }) = self.by_fd.get(conn) else { continue };
            let cached = self.peers[router_index(conn.0)].get_mut(peer);
            if let Some(Some(auth)) = cached {
                let fresh = PeerAuth {
                    name: known.name.clone(),
                    standing: Standing::Known(known.role),
                    ..PeerAuth::clone(auth)
                };
                *auth = Arc::new(fresh);
            }
            self.enrollees.remove(conn);
        }
    }

    /// Shuts down every connection of `key` and every connection not yet
    /// identified (it may be the key's too). Returns how many.
    pub fn cut_off(&mut self, key: &str) -> usize {
        let mut cut = self.cut_unidentified(Duration::ZERO);
        let Some(conns) = self.by_key.get(key) else { return cut };
        for conn in conns {
            shutdown_connection(conn.1);
            cut += 1;
            // Nothing more is read from it, whatever is already queued.
            if let Some(Owner { peer: Some(peer), .. }) = self.by_fd.get(conn) {
                self.peers[router_index(conn.0)].insert(peer.clone(), None);
            }
        }
        cut
    }

    /// Shuts down one connection.
    pub fn cut(&mut self, port: ServerPort, fd: RawFd) {
        shutdown_connection(fd);
        if let Some(Owner { peer: Some(peer), .. }) = self.by_fd.get(&(port, fd)) {
            self.peers[router_index(port)].insert(peer.clone(), None);
        }
    }

    /// Shuts down the unidentified connections older than `age`, oldest
    /// first, at most `limit`. Returns how many.
    pub fn cut_unidentified_limited(&mut self, age: Duration, limit: usize) -> usize {
        let mut old: Vec<(Instant, Conn)> =
            self.unidentified.iter().filter(|(_, at)| at.elapsed() >= age).map(|(c, at)| (*at, *c)).collect();
        old.sort_by_key(|(at, _)| *at);
        old.truncate(limit);
        for (_, conn) in &old {
            shutdown_connection(conn.1);
            self.unidentified.remove(conn);
        }
        old.len()
    }

    pub fn cut_unidentified(&mut self, age: Duration) -> usize {
        self.cut_unidentified_limited(age, usize::MAX)
    }

    /// Shuts down the enrolling connections older than `age`: an unknown
    /// key has a few seconds to enroll. Returns how many.
    pub fn cut_enrollees(&mut self, age: Duration) -> usize {
        let old: Vec<Conn> = self.enrollees.iter().filter(|(_, at)| at.elapsed() >= age).map(|(c, _)| *c).collect();
        for conn in &old {
            self.enrollees.remove(conn);
            self.cut(conn.0, conn.1);
        }
        old.len()
    }

    pub fn has_enrollees(&self) -> bool {
        !self.enrollees.is_empty()
    }

    pub fn unidentified_count(&self) -> usize {
        self.unidentified.len()
    }

    /// The keys with at least one connection.
    pub fn is_connected(&self, key: &str) -> bool {
        self.by_key.contains_key(key)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use pantry_shared::keys::Role;

    fn auth(key: &str) -> Option<Arc<PeerAuth>> {
        Some(Arc::new(PeerAuth {
            key: key.into(),
            name: Some("n".into()),
            standing: Standing::Known(Role::Client),
            address: "a".into(),
        }))
    }

    #[test]
    fn presence_follows_descriptors() {
        let mut c = Connections::default();
        c.accepted(ServerPort::Receive, 7);
        c.accepted(ServerPort::Publish, 8);
        assert_eq!(c.unidentified_count(), 2);
        assert_eq!(c.new_sender(ServerPort::Receive, b"p", Some(7), auth("k")), Some(Presence::Connected("k".into())));
        assert_eq!(c.subscriber(8, "k"), None);
        assert_eq!(c.unidentified_count(), 0);
        assert!(c.cached_sender(ServerPort::Receive, b"p").is_some());
        assert_eq!(c.closed(ServerPort::Receive, 7), [Presence::PeerClosed(b"p".to_vec())]);
        assert!(c.cached_sender(ServerPort::Receive, b"p").is_none());
        assert_eq!(c.closed(ServerPort::Publish, 8), [Presence::Disconnected("k".into())]);
        assert_eq!(c.closed(ServerPort::Publish, 8), []);
        // Under null security a peer has no key, and its closing is known.
        c.accepted(ServerPort::Receive, 9);
        c.new_sender(ServerPort::Receive, b"q", Some(9), None);
        assert_eq!(c.closed(ServerPort::Receive, 9), [Presence::PeerClosed(b"q".to_vec())]);
        assert_eq!(c.open, 0);
    }

    #[test]
    fn a_cut_off_key_is_no_longer_trusted() {
        let mut c = Connections::default();
        // Descriptors that are not sockets: shutdown(2) fails harmlessly.
        c.accepted(ServerPort::Receive, -10);
        c.new_sender(ServerPort::Receive, b"p", Some(-10), auth("k"));
        c.accepted(ServerPort::Publish, -11);
        assert_eq!(c.cut_off("k"), 2, "its connection and the unidentified one");
        assert_eq!(c.cached_sender(ServerPort::Receive, b"p"), Some(None));
    }
}
