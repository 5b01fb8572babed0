//! Which PUB topics each connection may have (the XPUB is in
//! `ZMQ_XPUB_MANUAL` mode: a subscription takes effect only when the socket
//! thread grants it, for the connection it came from).
//!
//! Under CURVE a client key gets its own identity, its registered
//! application streams (`app`, `app.env`, `app.env.role`) and the broadcast
//! topic; an admin key only its own name; nothing else, so no key reads
//! what is sent to another. Every topic is granted with the terminator
//! ([`pantry_shared::filter::TOPIC_END`]), so XPUB's prefix matching is
//! exact. `""` (everything) is granted as the key's own topics. Under null
//! security every subscription is granted.
//!
//! A client's streams are known only once it registers, and a decision
//! can be made only for the connection whose subscription is being read.
//! When a key's grants change so that an earlier decision would differ, its
//! connection is shut down: the subscriber reconnects, subscribes again and
//! is decided anew. A key is *listening* while one of its connections has
//! every topic it asked for.

use std::collections::{HashMap, HashSet};
use std::os::fd::RawFd;

use pantry_shared::filter::{topic, BROADCAST_TOPIC};
use pantry_shared::keys::Role;

use crate::messages::Grant;
use crate::zap::KeySnapshot;

/// Why a subscription was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    /// The key is no longer known (revoked).
    UnknownKey,
    /// An admin key subscribed to something else than its own name.
    NotAdminsOwn,
    /// Another server's key: servers reach each other's clients over links,
    /// never by subscribing.
    Server,
    /// Another key's identity.
    OthersIdentity,
    /// A stream the client has not registered (yet).
    NotRegistered,
    /// A stream that is not one of the client's registered streams.
    NotItsStream,
    NotUtf8,
}

impl Refusal {
    pub fn reason(&self) -> &'static str {
        match self {
            Refusal::UnknownKey => "the key is not known (revoked?)",
            Refusal::NotAdminsOwn => "an admin key may subscribe only to its own name",
            Refusal::Server => "a server's key subscribes to nothing",
            Refusal::OthersIdentity => "it is another client's identity",
            Refusal::NotRegistered => "the client has not registered its streams yet",
            Refusal::NotItsStream => "it is not one of the client's registered streams",
            Refusal::NotUtf8 => "the topic is not UTF-8",
        }
    }

    /// A refusal that is part of normal operation (a client subscribing
    /// before its first registration) rather than a sign of misuse.
    pub fn is_expected(&self) -> bool {
        *self == Refusal::NotRegistered
    }
}

/// What to do for one subscription message.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Outcome {
    /// Topics to subscribe the connection to (`ZMQ_SUBSCRIBE`).
    pub subscribe: Vec<Vec<u8>>,
    /// Topics to unsubscribe it from.
    pub unsubscribe: Vec<Vec<u8>>,
    pub refused: Option<Refusal>,
    /// The key started or stopped listening.
    pub listening: Option<(String, bool)>,
}

#[derive(Default)]
struct SubConn {
    key: Option<String>,
    /// Requested topic → the topics it was granted as (empty: refused).
    requested: HashMap<Vec<u8>, Vec<Vec<u8>>>,
    /// Granted topic → how many requested topics hold it.
    held: HashMap<Vec<u8>, usize>,
}

impl SubConn {
    fn is_listening(&self) -> bool {
        !self.requested.is_empty() && self.requested.values().all(|g| !g.is_empty())
    }
}

pub struct Subscriptions {
    curve: bool,
    conns: HashMap<RawFd, SubConn>,
    /// Key → its registered streams.
    grants: HashMap<String, HashSet<String>>,
    listening: HashSet<String>,
}

impl Subscriptions {
    pub fn new(curve: bool) -> Self {
        Subscriptions { curve, conns: HashMap::new(), grants: HashMap::new(), listening: HashSet::new() }
    }

    /// Decides a (un)subscription of `requested` from connection `fd`,
    /// sent by `key` (CURVE).
    pub fn handle(
        &mut self,
        fd: RawFd,
        key: Option<&str>,
        requested: &[u8],
        subscribe: bool,
        keys: &KeySnapshot,
    ) -> Outcome {
        let mut outcome = Outcome::default();
        if subscribe {
            let decision = self.decide(key, requested, keys);
            let conn = self.conns.entry(fd).or_default();
            conn.key = key.map(str::to_owned);
            let granted = match decision {
                Ok(topics) => topics,
                Err(refusal) => {
                    outcome.refused = Some(refusal);
                    Vec::new()
                }
            };
            for t in &granted {
                let held = conn.held.entry(t.clone()).or_default();
                *held += 1;
                if *held == 1 {
                    outcome.subscribe.push(t.clone());
                }
            }
            if let Some(old) = conn.requested.insert(requested.to_vec(), granted) {
                release(conn, old, &mut outcome.unsubscribe);
            }
        } else if let Some(conn) = self.conns.get_mut(&fd) {
            if let Some(old) = conn.requested.remove(requested) {
                release(conn, old, &mut outcome.unsubscribe);
            }
        }
        outcome.listening = key.and_then(|k| self.update_listening(k));
        outcome
    }

    fn decide(&self, key: Option<&str>, requested: &[u8], keys: &KeySnapshot) -> Result<Vec<Vec<u8>>, Refusal> {
        let t = std::str::from_utf8(requested).map_err(|_| Refusal::NotUtf8)?;
        if !self.curve {
            return Ok(if t.is_empty() { vec![Vec::new()] } else { vec![topic(t)] });
        }
        let key = key.ok_or(Refusal::UnknownKey)?;
        let known = keys.by_z85(key).ok_or(Refusal::UnknownKey)?;
        let own = known.name.as_deref();
        let is_own = own == Some(t);
        if known.role == Role::Server {
            return Err(Refusal::Server);
        }
        if known.role == Role::Admin {
            return match (t.is_empty() || is_own, own) {
                (true, Some(name)) => Ok(vec![topic(name)]),
                _ => Err(Refusal::NotAdminsOwn),
            };
        }
        if t.is_empty() {
            return Ok(own.map(topic).into_iter().chain([topic(BROADCAST_TOPIC)]).collect());
        }
        if t == BROADCAST_TOPIC || is_own {
            return Ok(vec![topic(t)]);
        }
        if keys.owner_of(t).is_some() {
            return Err(Refusal::OthersIdentity);
        }
        match self.grants.get(key) {
            Some(streams) if streams.contains(t) => Ok(vec![topic(t)]),
            Some(_) => Err(Refusal::NotItsStream),
            None => Err(Refusal::NotRegistered),
        }
    }

    /// A connection closed.
    pub fn closed(&mut self, fd: RawFd) -> Option<(String, bool)> {
        let key = self.conns.remove(&fd)?.key?;
        self.update_listening(&key)
    }

    /// A client registered its streams. Returns the connections to shut
    /// down: those whose decisions would now differ.
    pub fn grant(&mut self, grant: Grant, keys: &KeySnapshot) -> Vec<RawFd> {
        let key = grant.key.clone();
        self.grants.insert(grant.key, grant.streams.into_iter().collect());
        self.stale(keys, |conn| conn.key.as_deref() == Some(key.as_str()))
    }

    /// The known keys changed: connections of `key`, and those holding the
    /// topic `name` (now someone's identity), are decided anew.
    pub fn key_changed(&mut self, key: &str, name: Option<&str>, keys: &KeySnapshot) -> Vec<RawFd> {
        let name = name.map(str::as_bytes);
        self.stale(keys, |conn| {
            conn.key.as_deref() == Some(key) || name.is_some_and(|n| conn.requested.contains_key(n))
        })
    }

    /// A key was removed: its streams are forgotten.
    pub fn key_removed(&mut self, key: &str) {
        self.grants.remove(key);
    }

    fn stale(&self, keys: &KeySnapshot, concerned: impl Fn(&SubConn) -> bool) -> Vec<RawFd> {
        self.conns
            .iter()
            .filter(|(_, conn)| concerned(conn))
            .filter(|(_, conn)| {
                conn.requested
                    .iter()
                    .any(|(t, granted)| self.decide(conn.key.as_deref(), t, keys).unwrap_or_default() != *granted)
            })
            .map(|(fd, _)| *fd)
            .collect()
    }

    fn update_listening(&mut self, key: &str) -> Option<(String, bool)> {
        let now = self.conns.values().any(|c| c.key.as_deref() == Some(key) && c.is_listening());
        let before = self.listening.contains(key);
        match (before, now) {
            (false, true) => self.listening.insert(key.to_owned()),
            (true, false) => self.listening.remove(key),
            _ => return None,
        };
        Some((key.to_owned(), now))
    }
}

/// Drops one requested topic's hold on its granted topics.
fn release(conn: &mut SubConn, granted: Vec<Vec<u8>>, unsubscribe: &mut Vec<Vec<u8>>) {
    for t in granted {
        if let Some(held) = conn.held.get_mut(&t) {
            *held -= 1;
            if *held == 0 {
                conn.held.remove(&t);
                unsubscribe.push(t);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use pantry_shared::keys::{KeyPair, KnownKey};

    fn known(name: Option<&str>, role: Role) -> KnownKey {
        KnownKey {
            public_key: KeyPair::generate().unwrap().public_key,
            name: name.map(Into::into),
            role,
            created: None,
        }
    }

    fn t(s: &str) -> Vec<u8> {
        topic(s)
    }

    fn setup() -> (Subscriptions, KeySnapshot, KnownKey, KnownKey, KnownKey) {
        let (web1, web10, admin) =
            (known(Some("web-1"), Role::Client), known(Some("web-10"), Role::Client), known(Some("ops"), Role::Admin));
        let mut keys = KeySnapshot::default();
        keys.replace_all(vec![web1.clone(), web10.clone(), admin.clone()]);
        (Subscriptions::new(true), keys, web1, web10, admin)
    }

    #[test]
    fn a_client_gets_its_own_topics_exactly() {
        let (mut subs, keys, web1, _, _) = setup();
        let k = Some(web1.public_key.as_str());
        let own = subs.handle(3, k, b"web-1", true, &keys);
        assert_eq!(own.subscribe, [t("web-1")], "exact: web-10's messages do not match `web-1\\0`");
        assert_eq!(own.listening, Some((web1.public_key.clone(), true)));
        assert_eq!(subs.handle(3, k, b"*", true, &keys).subscribe, [t("*")]);
        // Everything is its own topics, already held: nothing new.
        let all = subs.handle(3, k, b"", true, &keys);
        assert!(all.subscribe.is_empty() && all.refused.is_none(), "{all:?}");
        // Dropping "" keeps what "web-1" and "*" still hold.
        assert!(subs.handle(3, k, b"", false, &keys).unsubscribe.is_empty());
        assert_eq!(subs.handle(3, k, b"web-1", false, &keys).unsubscribe, [t("web-1")]);
    }

    #[test]
    fn others_identities_and_foreign_streams_are_refused() {
        let (mut subs, keys, web1, _, admin) = setup();
        let k = Some(web1.public_key.as_str());
        let other = subs.handle(3, k, b"web-10", true, &keys);
        assert_eq!((other.subscribe.len(), other.refused), (0, Some(Refusal::OthersIdentity)));
        assert_eq!(subs.handle(3, k, b"pantry", true, &keys).refused, Some(Refusal::NotRegistered));
        let mut filter = pantry_shared::filter::ClientFilter {
            identity: Some("web-1".into()),
            application: Some("pantry".into()),
            environment: Some("test".into()),
            roles: vec!["web".into()],
        };
        // Registering makes `pantry` grantable: the connection that was
        // refused it must subscribe again.
        assert_eq!(subs.grant(Grant::of(&web1.public_key, &filter), &keys), [3]);
        subs.closed(3);
        for s in ["pantry", "pantry.test", "pantry.test.web"] {
            assert_eq!(subs.handle(4, k, s.as_bytes(), true, &keys).subscribe, [t(s)], "{s}");
        }
        assert_eq!(subs.handle(4, k, b"pantry.prod", true, &keys).refused, Some(Refusal::NotItsStream));
        assert_eq!(subs.handle(5, Some(&admin.public_key), b"web-1", true, &keys).refused, Some(Refusal::NotAdminsOwn));
        assert_eq!(subs.handle(6, Some("unknown"), b"*", true, &keys).refused, Some(Refusal::UnknownKey));
        // A registration that changes nothing for a connection leaves it be.
        filter.roles.push("db".into());
        assert!(subs.grant(Grant::of(&web1.public_key, &filter), &keys).is_empty());
    }

    #[test]
    fn listening_needs_every_requested_topic() {
        let (mut subs, keys, web1, _, _) = setup();
        let k = Some(web1.public_key.as_str());
        assert!(subs.handle(3, k, b"web-1", true, &keys).listening.is_some());
        assert_eq!(subs.handle(3, k, b"pantry", true, &keys).listening, Some((web1.public_key.clone(), false)));
        assert_eq!(subs.closed(3), None, "it was not listening");
    }

    #[test]
    fn a_new_name_cuts_whoever_holds_it() {
        let (mut subs, mut keys, _, _, _) = setup();
        let unbound = known(None, Role::Client);
        keys.insert(unbound.clone());
        let k = Some(unbound.public_key.as_str());
        assert_eq!(subs.handle(3, k, b"", true, &keys).subscribe, [t("*")]);
        assert_eq!(subs.handle(3, k, b"web-3", true, &keys).refused, Some(Refusal::NotRegistered));
        let mut bound = unbound.clone();
        bound.name = Some("web-3".into());
        keys.insert(bound.clone());
        assert_eq!(subs.key_changed(&bound.public_key, Some("web-3"), &keys), [3]);
    }

    #[test]
    fn null_security_grants_everything() {
        let mut subs = Subscriptions::new(false);
        let keys = KeySnapshot::default();
        assert_eq!(subs.handle(3, None, b"", true, &keys).subscribe, [Vec::<u8>::new()]);
        assert_eq!(subs.handle(3, None, b"web-1", true, &keys).subscribe, [t("web-1")]);
    }
}
