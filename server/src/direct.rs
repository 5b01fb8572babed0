//! Agents that take their requests over their own DEALER connection (they
//! said so in their registration: `requests_on_dealer`), as the socket
//! thread knows them: which receive-port peer is which identity, and which
//! streams it holds (its identity, `app`, `app.env`, `app.env.role`).
//!
//! A request for a stream goes to exactly the peers holding that stream,
//! and one for everyone (`""` or [`BROADCAST_TOPIC`]) to all of them: no
//! topic matching, so delivery is exact by construction. The registry says
//! which peer each accepted registration came over ([`DirectChange`]), in
//! the same outbox as every request, so no request overtakes the
//! registration that made its recipient online; the socket thread forgets
//! a peer when its connection closes.

use std::collections::{HashMap, HashSet};

use pantry_shared::filter::BROADCAST_TOPIC;

/// What the registry tells the socket thread.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DirectChange {
    /// `identity` takes its requests over `peer`, for these streams (its
    /// identity among them).
    Add { peer: Vec<u8>, identity: String, streams: Vec<String> },
    /// `identity` no longer does (forgotten, or it registered without
    /// asking).
    Remove { identity: String },
}

struct Agent {
    identity: String,
    streams: Vec<String>,
}

#[derive(Default)]
pub struct DirectAgents {
    by_peer: HashMap<Vec<u8>, Agent>,
    by_identity: HashMap<String, Vec<u8>>,
    by_stream: HashMap<String, HashSet<Vec<u8>>>,
}

impl DirectAgents {
    pub fn apply(&mut self, change: DirectChange) {
        match change {
            DirectChange::Add { peer, identity, streams } => self.add(peer, identity, streams),
            DirectChange::Remove { identity } => {
                if let Some(peer) = self.by_identity.get(&identity).cloned() {
                    self.remove_peer(&peer);
                }
            }
        }
    }

    fn add(&mut self, peer: Vec<u8>, identity: String, streams: Vec<String>) {
        if self.by_peer.get(&peer).is_some_and(|a| a.identity == identity && a.streams == streams) {
            return;
        }
        // A new connection of the same agent replaces the old one; a peer
        // that registered another identity before holds only this one now.
        if let Some(old) = self.by_identity.get(&identity).filter(|old| **old != peer).cloned() {
            self.remove_peer(&old);
        }
        self.remove_peer(&peer);
        for stream in &streams {
            self.by_stream.entry(stream.clone()).or_default().insert(peer.clone());
        }
        self.by_identity.insert(identity.clone(), peer.clone());
        self.by_peer.insert(peer, Agent { identity, streams });
    }

    /// Forgets a closed connection; the identity it was, if an agent's.
    pub fn remove_peer(&mut self, peer: &[u8]) -> Option<String> {
        let agent = self.by_peer.remove(peer)?;
        for stream in &agent.streams {
            if let Some(peers) = self.by_stream.get_mut(stream) {
                peers.remove(peer);
                if peers.is_empty() {
                    self.by_stream.remove(stream);
                }
            }
        }
        if self.by_identity.get(&agent.identity).is_some_and(|p| p == peer) {
            self.by_identity.remove(&agent.identity);
        }
        Some(agent.identity)
    }

    pub fn identity_of(&self, peer: &[u8]) -> Option<&str> {
        self.by_peer.get(peer).map(|a| a.identity.as_str())
    }

    /// The peers a request for `stream` goes to.
    pub fn recipients(&self, stream: &str) -> Vec<Vec<u8>> {
        if stream.is_empty() || stream == BROADCAST_TOPIC {
            return self.by_peer.keys().cloned().collect();
        }
        self.by_stream.get(stream).map(|peers| peers.iter().cloned().collect()).unwrap_or_default()
    }

    pub fn len(&self) -> usize {
        self.by_peer.len()
    }

    pub fn is_empty(&self) -> bool {
        self.by_peer.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn add(d: &mut DirectAgents, peer: &[u8], identity: &str, streams: &[&str]) {
        let streams = streams.iter().map(|s| s.to_string()).collect();
        d.apply(DirectChange::Add { peer: peer.to_vec(), identity: identity.into(), streams });
    }

    fn sorted(mut v: Vec<Vec<u8>>) -> Vec<Vec<u8>> {
        v.sort();
        v
    }

    #[test]
    fn exact_streams_and_everyone() {
        let mut d = DirectAgents::default();
        add(&mut d, b"p1", "web-1", &["web-1", "web", "web.prod"]);
        add(&mut d, b"p10", "web-10", &["web-10", "web"]);
        assert_eq!(d.recipients("web-1"), vec![b"p1".to_vec()], "no prefix matching");
        assert_eq!(sorted(d.recipients("web")), vec![b"p1".to_vec(), b"p10".to_vec()]);
        assert_eq!(d.recipients("web.prod"), vec![b"p1".to_vec()]);
        assert!(d.recipients("we").is_empty());
        assert_eq!(d.recipients("").len(), 2);
        assert_eq!(d.recipients(BROADCAST_TOPIC).len(), 2);
    }

    #[test]
    fn a_new_connection_replaces_the_old_and_a_close_forgets() {
        let mut d = DirectAgents::default();
        add(&mut d, b"old", "web-1", &["web-1", "web"]);
        add(&mut d, b"new", "web-1", &["web-1", "db"]);
        assert_eq!(d.len(), 1);
        assert_eq!(d.recipients("web-1"), vec![b"new".to_vec()]);
        assert!(d.recipients("web").is_empty(), "the old streams went with the old connection");
        assert_eq!(d.remove_peer(b"old"), None);
        assert_eq!(d.identity_of(b"new"), Some("web-1"));
        assert_eq!(d.remove_peer(b"new").as_deref(), Some("web-1"));
        assert!(d.is_empty() && d.recipients("db").is_empty());
        add(&mut d, b"p", "web-2", &["web-2"]);
        d.apply(DirectChange::Remove { identity: "web-2".into() });
        assert!(d.is_empty());
    }
}
