//! Who is at the other end of each connection (CURVE only), for the socket
//! thread: the key, name and role the ZAP handler attached to it, per ROUTER
//! routing id and per TCP file descriptor.
//!
//! libzmq gives no handle on a single connection of a PUB or ROUTER socket,
//! so revoking a key closes its connections underneath libzmq: every
//! message (and, with XPUB, every subscription) tells us the descriptor it
//! came from (`ZMQ_SRCFD`), and `shutdown(2)` on those descriptors ends the
//! connections; libzmq then closes them itself, and the peer's reconnect
//! fails its handshake.

use std::collections::{HashMap, HashSet};
use std::ffi::{c_void, CStr};
use std::os::fd::RawFd;
use std::sync::Arc;

use pantry_shared::keys::Role;

use crate::zap_handler::{NAME_PROPERTY, ROLE_PROPERTY};

/// The authenticated sender of a message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerAuth {
    /// Z85 public key (the ZAP user id).
    pub key: String,
    pub name: String,
    pub role: Role,
}

/// Which server socket a connection belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SocketKind {
    Router = 0,
    Publisher = 1,
    Files = 2,
}

/// A key's first connection opened, or its last one closed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Presence {
    Connected(String),
    Disconnected(String),
}

/// Who owns a descriptor: a key, and on ROUTER sockets a routing id.
type Owner = (String, Option<Vec<u8>>);

#[derive(Default)]
pub struct Connections {
    /// Routing id → sender, per socket kind (ids are never reused).
    peers: [HashMap<Vec<u8>, Option<Arc<PeerAuth>>>; 3],
    /// Descriptor → key and routing id.
    by_fd: HashMap<(SocketKind, RawFd), Owner>,
    by_key: HashMap<String, HashSet<(SocketKind, RawFd)>>,
}

impl Connections {
    /// The sender of a message from `peer` on a ROUTER socket. Reads the
    /// connection's properties from `frame` (the first frame after the
    /// routing id) only the first time the peer is seen.
    pub fn sender(
        &mut self,
        kind: SocketKind,
        peer: &[u8],
        frame: &mut RawFrame,
    ) -> (Option<Arc<PeerAuth>>, Option<Presence>) {
        if let Some(auth) = self.peers[kind as usize].get(peer) {
            return (auth.clone(), None);
        }
        let auth = frame.auth().map(Arc::new);
        let presence = match (&auth, frame.source_fd()) {
            (Some(auth), Some(fd)) => self.track(kind, fd, &auth.key, Some(peer.to_vec())),
            _ => None,
        };
        self.peers[kind as usize].insert(peer.to_vec(), auth.clone());
        (auth, presence)
    }

    /// Notes the connection a subscription came from (XPUB).
    pub fn subscriber(&mut self, frame: &mut RawFrame) -> Option<Presence> {
        let key = frame.property(c"User-Id")?;
        let fd = frame.source_fd()?;
        if self.by_fd.contains_key(&(SocketKind::Publisher, fd)) {
            return None;
        }
        self.track(SocketKind::Publisher, fd, &key, None)
    }

    fn track(&mut self, kind: SocketKind, fd: RawFd, key: &str, peer: Option<Vec<u8>>) -> Option<Presence> {
        // A descriptor number reused by a new connection replaces the old.
        self.closed(kind, fd);
        self.by_fd.insert((kind, fd), (key.to_owned(), peer));
        let fds = self.by_key.entry(key.to_owned()).or_default();
        fds.insert((kind, fd));
        (fds.len() == 1).then(|| Presence::Connected(key.to_owned()))
    }

    /// A connection closed (monitor DISCONNECTED, whose value is the fd).
    pub fn closed(&mut self, kind: SocketKind, fd: RawFd) -> Option<Presence> {
        let (key, peer) = self.by_fd.remove(&(kind, fd))?;
        if let Some(peer) = peer {
            self.peers[kind as usize].remove(&peer);
        }
        let fds = self.by_key.get_mut(&key)?;
        fds.remove(&(kind, fd));
        if fds.is_empty() {
            self.by_key.remove(&key);
            return Some(Presence::Disconnected(key));
        }
        None
    }

    /// Shuts down every connection of `key`; returns how many.
    pub fn cut_off(&mut self, key: &str) -> usize {
        let Some(fds) = self.by_key.get(key) else { return 0 };
        for (_, fd) in fds {
            // SAFETY: shutdown(2) does not close the descriptor (libzmq owns
            // it); it only ends the TCP connection in both directions.
            unsafe { libc::shutdown(*fd, libc::SHUT_RDWR) };
        }
        // Forget the peers at once: nothing more is read from them.
        let n = fds.len();
        for (kind, fd) in fds.clone() {
            if let Some((_, Some(peer))) = self.by_fd.get(&(kind, fd)) {
                self.peers[kind as usize].insert(peer.clone(), None);
            }
        }
        n
    }
}

/// `zmq_msg_get` property: the descriptor a message came from (zmq.h; not
/// exported by zmq-sys).
const ZMQ_SRCFD: i32 = 2;

/// One frame received through libzmq's C API, for the properties rust-zmq
/// does not expose (`ZMQ_SRCFD`).
pub struct RawFrame(zmq_sys::zmq_msg_t);

impl RawFrame {
    /// Receives one frame from a socket's raw handle.
    pub fn recv(socket: *mut c_void, flags: i32) -> zmq::Result<RawFrame> {
        // SAFETY: the message is initialised before use and closed on drop;
        // `socket` is a live socket owned by the calling thread.
        unsafe {
            let mut msg = std::mem::MaybeUninit::<zmq_sys::zmq_msg_t>::uninit();
            zmq_sys::zmq_msg_init(msg.as_mut_ptr());
            let mut frame = RawFrame(msg.assume_init());
            if zmq_sys::zmq_msg_recv(&mut frame.0, socket, flags) < 0 {
                return Err(zmq::Error::from_raw(zmq_sys::zmq_errno()));
            }
            Ok(frame)
        }
    }

    pub fn data(&mut self) -> &[u8] {
        // SAFETY: data and size describe the message's own buffer.
        unsafe {
            let size = zmq_sys::zmq_msg_size(&self.0);
            if size == 0 {
                return &[];
            }
            std::slice::from_raw_parts(zmq_sys::zmq_msg_data(&mut self.0) as *const u8, size)
        }
    }

    pub fn more(&self) -> bool {
        // SAFETY: reads a flag of an initialised message.
        unsafe { zmq_sys::zmq_msg_more(&self.0) != 0 }
    }

    /// The descriptor of the connection the frame came from.
    pub fn source_fd(&self) -> Option<RawFd> {
        // SAFETY: ZMQ_SRCFD is a valid property of a received message.
        let fd = unsafe { zmq_sys::zmq_msg_get(&self.0, ZMQ_SRCFD) };
        (fd >= 0).then_some(fd)
    }

    /// A connection property (ZAP user id or metadata).
    pub fn property(&self, name: &CStr) -> Option<String> {
        // SAFETY: libzmq returns a NUL-terminated string owned by the
        // message's metadata, or NULL; it is copied before the frame drops.
        unsafe {
            let value = zmq_sys::zmq_msg_gets(&self.0, name.as_ptr());
            if value.is_null() {
                return None;
            }
            CStr::from_ptr(value).to_str().ok().filter(|v| !v.is_empty()).map(str::to_owned)
        }
    }

    /// The sender the ZAP handler described, if the connection has one.
    pub fn auth(&mut self) -> Option<PeerAuth> {
        let key = self.property(c"User-Id")?;
        let name = std::ffi::CString::new(NAME_PROPERTY).ok()?;
        let role = std::ffi::CString::new(ROLE_PROPERTY).ok()?;
        Some(PeerAuth {
            name: self.property(&name).unwrap_or_default(),
            role: self.property(&role).and_then(|r| Role::parse(&r)).unwrap_or(Role::Client),
            key,
        })
    }
}

impl Drop for RawFrame {
    fn drop(&mut self) {
        // SAFETY: closes the message initialised in `recv`.
        unsafe { zmq_sys::zmq_msg_close(&mut self.0) };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn presence_follows_descriptors() {
        let mut c = Connections::default();
        assert_eq!(c.track(SocketKind::Router, 7, "k", Some(b"p".to_vec())), Some(Presence::Connected("k".into())));
        assert_eq!(c.track(SocketKind::Publisher, 8, "k", None), None);
        assert_eq!(c.closed(SocketKind::Router, 7), None);
        assert_eq!(c.closed(SocketKind::Publisher, 8), Some(Presence::Disconnected("k".into())));
        assert_eq!(c.closed(SocketKind::Publisher, 8), None);
        assert_eq!(c.cut_off("k"), 0);
    }
}
