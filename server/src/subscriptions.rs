//! Which PUB topics each connection may have (the XPUB is in
//! `ZMQ_XPUB_MANUAL` mode: a subscription takes effect only when the socket
//! thread grants it, for the connection it came from).
//!
//! A subscription names a stream in one of two forms
//! ([`pantry_shared::filter::TopicForm`]): Pantry's agents ask for the exact
//! form (`\0web-1\0`, which XPUB's prefix matching cannot stretch to
//! `web-10`); agents that know only SPEC §4 (the original Ruby agent) ask
//! for the bare stream (`web-1`). A topic is granted in the form it was
//! asked in, so each subscriber receives requests framed as it expects;
//! the socket thread publishes the bare form of a stream only while a
//! connection holds it ([`Subscriptions::wants_bare`]). With
//! `networking.plain_subscribers: refuse` bare subscriptions are refused.
//!
//! Under CURVE a client key gets its own identity, its registered
//! application streams (`app`, `app.env`, `app.env.role`) and the broadcast
//! topic; an admin key only its own name; nothing else, so no key reads
//! what is sent to another (in the bare form, nothing but what its granted
//! topics are prefixes of: docs/security.md). `""` (everything) is granted
//! as the key's own topics. Under null security every subscription is
//! granted.
//!
//! A client's streams are known only once it registers, and a decision
//! can be made only for the connection whose subscription is being read.
//! When a key's grants change so that an earlier decision would differ, its
//! connection is shut down: the subscriber reconnects, subscribes again and
//! is decided anew. A key is *listening* while one of its connections holds
//! a topic and waits for none: every topic it asked for is granted, or
//! refused for good (a stream it has not, which the original agent asks
//! for without an environment); a topic refused only until the client
//! registers keeps it waiting.

use std::collections::{HashMap, HashSet};
use std::os::fd::RawFd;

use pantry_shared::config::PlainSubscribers;
use pantry_shared::filter::{TopicForm, BROADCAST_TOPIC, TOPIC_MARK};
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
    /// A bare subscription, with `networking.plain_subscribers: refuse`.
    PlainRefused,
    /// Not UTF-8, or a NUL byte outside the exact form's marks.
    Malformed,
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
            Refusal::PlainRefused => {
                "a bare topic (not Pantry's exact form) and networking.plain_subscribers is refuse"
            }
            Refusal::Malformed => "the topic is not UTF-8, or holds a NUL byte outside the exact form",
        }
    }

    /// A refusal that is part of normal operation (a client subscribing
    /// before its first registration) rather than a sign of misuse.
    pub fn is_expected(&self) -> bool {
        *self == Refusal::NotRegistered
    }

    /// A refusal that may turn into a grant (once the client registers):
    /// its connection waits for it before it counts as listening.
    fn is_pending(&self) -> bool {
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

/// How one requested topic was decided.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
struct Decided {
    /// The topics it was granted as (empty: refused).
    topics: Vec<Vec<u8>>,
    /// Refused until the client registers.
    pending: bool,
}

impl Decided {
    fn of(decision: &Result<Vec<Vec<u8>>, Refusal>) -> Decided {
        match decision {
            Ok(topics) => Decided { topics: topics.clone(), pending: false },
            Err(refusal) => Decided { topics: Vec::new(), pending: refusal.is_pending() },
        }
    }
}

#[derive(Default)]
struct SubConn {
    key: Option<String>,
    /// Requested topic → how it was decided.
    requested: HashMap<Vec<u8>, Decided>,
    /// Granted topic → how many requested topics hold it.
    held: HashMap<Vec<u8>, usize>,
}

impl SubConn {
    fn is_listening(&self) -> bool {
        !self.held.is_empty() && self.requested.values().all(|d| !d.pending)
    }
}

/// Whether a granted topic is in the bare form.
fn is_bare(topic: &[u8]) -> bool {
    topic.first() != Some(&TOPIC_MARK)
}

pub struct Subscriptions {
    curve: bool,
    plain: PlainSubscribers,
    conns: HashMap<RawFd, SubConn>,
    /// Key → its registered streams.
    grants: HashMap<String, HashSet<String>>,
    listening: HashSet<String>,
    /// Bare topic → how many connections hold it.
    bare: HashMap<Vec<u8>, usize>,
}

impl Subscriptions {
    pub fn new(curve: bool, plain: PlainSubscribers) -> Self {
        Subscriptions {
            curve,
            plain,
            conns: HashMap::new(),
            grants: HashMap::new(),
            listening: HashSet::new(),
            bare: HashMap::new(),
        }
    }

    /// Whether some connection holds the bare topic `topic` itself: a
    /// message to its stream is published in the bare form too.
    pub fn wants_bare(&self, topic: &[u8]) -> bool {
        self.bare.contains_key(topic)
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
            let decided = Decided::of(&decision);
            outcome.refused = decision.err();
            let conn = self.conns.entry(fd).or_default();
            conn.key = key.map(str::to_owned);
            for t in &decided.topics {
                let held = conn.held.entry(t.clone()).or_default();
                *held += 1;
                if *held == 1 {
                    outcome.subscribe.push(t.clone());
                }
            }
            if let Some(old) = conn.requested.insert(requested.to_vec(), decided) {
                release(conn, old.topics, &mut outcome.unsubscribe);
            }
        } else if let Some(conn) = self.conns.get_mut(&fd) {
            if let Some(old) = conn.requested.remove(requested) {
                release(conn, old.topics, &mut outcome.unsubscribe);
            }
        }
        for t in outcome.subscribe.iter().filter(|t| is_bare(t)) {
            *self.bare.entry(t.clone()).or_default() += 1;
        }
        for t in outcome.unsubscribe.iter().filter(|t| is_bare(t)) {
            self.drop_bare(t);
        }
        outcome.listening = key.and_then(|k| self.update_listening(k));
        outcome
    }

    fn drop_bare(&mut self, topic: &[u8]) {
        if let Some(count) = self.bare.get_mut(topic) {
            *count -= 1;
            if *count == 0 {
                self.bare.remove(topic);
            }
        }
    }

    fn decide(&self, key: Option<&str>, requested: &[u8], keys: &KeySnapshot) -> Result<Vec<Vec<u8>>, Refusal> {
        let (form, t) = TopicForm::parse(requested).ok_or(Refusal::Malformed)?;
        if form == TopicForm::Bare && self.plain == PlainSubscribers::Refuse {
            return Err(Refusal::PlainRefused);
        }
        if !self.curve {
            // Null security: `""` is everything (the bare empty topic).
            return Ok(vec![if t.is_empty() && form == TopicForm::Bare { Vec::new() } else { form.topic(t) }]);
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
                (true, Some(name)) => Ok(vec![form.topic(name)]),
                _ => Err(Refusal::NotAdminsOwn),
            };
        }
        if t.is_empty() {
            return Ok(own.into_iter().chain([BROADCAST_TOPIC]).map(|s| form.topic(s)).collect());
        }
        if t == BROADCAST_TOPIC || is_own {
            return Ok(vec![form.topic(t)]);
        }
        if keys.owner_of(t).is_some() {
            return Err(Refusal::OthersIdentity);
        }
        match self.grants.get(key) {
            Some(streams) if streams.contains(t) => Ok(vec![form.topic(t)]),
            Some(_) => Err(Refusal::NotItsStream),
            None => Err(Refusal::NotRegistered),
        }
    }

    /// A connection closed.
    pub fn closed(&mut self, fd: RawFd) -> Option<(String, bool)> {
        let conn = self.conns.remove(&fd)?;
        for t in conn.held.keys().filter(|t| is_bare(t)) {
            self.drop_bare(t);
        }
        self.update_listening(&conn.key?)
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
        let names: Vec<Vec<u8>> =
            name.map(|n| vec![TopicForm::Bare.topic(n), TopicForm::Exact.topic(n)]).unwrap_or_default();
        self.stale(keys, |conn| {
            conn.key.as_deref() == Some(key) || names.iter().any(|n| conn.requested.contains_key(n))
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
                    .any(|(t, decided)| Decided::of(&self.decide(conn.key.as_deref(), t, keys)) != *decided)
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
    use pantry_shared::filter::topic;
    use pantry_shared::keys::{KeyPair, KnownKey};

    fn known(name: Option<&str>, role: Role) -> KnownKey {
        KnownKey {
            public_key: KeyPair::generate().unwrap().public_key,
            name: name.map(Into::into),
            role,
            created: None,
        }
    }

    /// The exact form, as Pantry's agents ask.
    fn t(s: &str) -> Vec<u8> {
        topic(s)
    }

    fn bare(s: &str) -> Vec<u8> {
        TopicForm::Bare.topic(s)
    }

    fn setup_with(plain: PlainSubscribers) -> (Subscriptions, KeySnapshot, KnownKey, KnownKey, KnownKey) {
        let (web1, web10, admin) =
            (known(Some("web-1"), Role::Client), known(Some("web-10"), Role::Client), known(Some("ops"), Role::Admin));
        let mut keys = KeySnapshot::default();
        keys.replace_all(vec![web1.clone(), web10.clone(), admin.clone()]);
        (Subscriptions::new(true, plain), keys, web1, web10, admin)
    }

    fn setup() -> (Subscriptions, KeySnapshot, KnownKey, KnownKey, KnownKey) {
        setup_with(PlainSubscribers::Allow)
    }

    fn filter(identity: &str, env: Option<&str>, roles: &[&str]) -> pantry_shared::filter::ClientFilter {
        pantry_shared::filter::ClientFilter {
            identity: Some(identity.into()),
            application: Some("pantry".into()),
            environment: env.map(Into::into),
            roles: roles.iter().map(|r| r.to_string()).collect(),
        }
    }

    #[test]
    fn a_client_gets_its_own_topics_exactly() {
        let (mut subs, keys, web1, _, _) = setup();
        let k = Some(web1.public_key.as_str());
        let own = subs.handle(3, k, &t("web-1"), true, &keys);
        assert_eq!(own.subscribe, [t("web-1")], "exact: web-10's messages do not match `\\0web-1\\0`");
        assert_eq!(own.listening, Some((web1.public_key.clone(), true)));
        assert_eq!(subs.handle(3, k, &t("*"), true, &keys).subscribe, [t("*")]);
        // Everything (bare "") is its own topics: in the bare form, new.
        let all = subs.handle(3, k, b"", true, &keys);
        assert_eq!(all.subscribe, [bare("web-1"), bare("*")], "{all:?}");
        assert!(all.refused.is_none());
        // Asking for the broadcast's exact form again holds nothing new.
        assert!(subs.handle(3, k, &t(""), true, &keys).subscribe.is_empty());
        assert_eq!(subs.handle(3, k, b"", false, &keys).unsubscribe, [bare("web-1"), bare("*")]);
        assert_eq!(subs.handle(3, k, &t("web-1"), false, &keys).unsubscribe, [t("web-1")]);
        assert!(!subs.wants_bare(&bare("web-1")), "nobody holds the bare form any more");
    }

    #[test]
    fn others_identities_and_foreign_streams_are_refused() {
        let (mut subs, keys, web1, _, admin) = setup();
        let k = Some(web1.public_key.as_str());
        let other = subs.handle(3, k, &t("web-10"), true, &keys);
        assert_eq!((other.subscribe.len(), other.refused), (0, Some(Refusal::OthersIdentity)));
        let other = subs.handle(3, k, b"web-10", true, &keys);
        assert_eq!((other.subscribe.len(), other.refused), (0, Some(Refusal::OthersIdentity)), "bare too");
        assert_eq!(subs.handle(3, k, &t("pantry"), true, &keys).refused, Some(Refusal::NotRegistered));
        // Registering makes `pantry` grantable: the connection that was
        // refused it must subscribe again.
        let mut client = filter("web-1", Some("test"), &["web"]);
        assert_eq!(subs.grant(Grant::of(&web1.public_key, &client), &keys), [3]);
        subs.closed(3);
        for s in ["pantry", "pantry.test", "pantry.test.web"] {
            assert_eq!(subs.handle(4, k, &t(s), true, &keys).subscribe, [t(s)], "{s}");
        }
        assert_eq!(subs.handle(4, k, &t("pantry.prod"), true, &keys).refused, Some(Refusal::NotItsStream));
        assert_eq!(
            subs.handle(5, Some(&admin.public_key), &t("web-1"), true, &keys).refused,
            Some(Refusal::NotAdminsOwn)
        );
        assert_eq!(subs.handle(6, Some("unknown"), &t("*"), true, &keys).refused, Some(Refusal::UnknownKey));
        for bad in [&b"web-1\0"[..], b"\0a\0b\0", b"\xff"] {
            assert_eq!(subs.handle(7, k, bad, true, &keys).refused, Some(Refusal::Malformed), "{bad:?}");
        }
        // A registration that changes nothing for a connection leaves it be.
        client.roles.push("db".into());
        assert!(subs.grant(Grant::of(&web1.public_key, &client), &keys).is_empty());
    }

    #[test]
    fn a_bare_subscription_is_granted_bare_and_published_bare() {
        let (mut subs, keys, web1, _, _) = setup();
        let k = Some(web1.public_key.as_str());
        subs.grant(Grant::of(&web1.public_key, &filter("web-1", Some("test"), &["web"])), &keys);
        for s in ["web-1", "pantry", "pantry.test.web", "*"] {
            assert_eq!(subs.handle(3, k, s.as_bytes(), true, &keys).subscribe, [bare(s)], "{s}");
            assert!(subs.wants_bare(&bare(s)), "{s}");
        }
        assert!(!subs.wants_bare(&bare("pantry.test")), "asked by nobody");
        // The same stream asked both ways is held both ways.
        assert_eq!(subs.handle(3, k, &t("pantry"), true, &keys).subscribe, [t("pantry")]);
        assert_eq!(subs.handle(4, k, b"pantry", true, &keys).subscribe, [bare("pantry")]);
        assert_eq!(subs.handle(4, k, b"pantry", false, &keys).unsubscribe, [bare("pantry")]);
        assert!(subs.wants_bare(&bare("pantry")), "connection 3 still holds it");
        subs.closed(3);
        assert!(!subs.wants_bare(&bare("pantry")) && !subs.wants_bare(&bare("*")));
    }

    #[test]
    fn refusing_plain_subscribers_grants_only_the_exact_form() {
        let (mut subs, keys, web1, _, _) = setup_with(PlainSubscribers::Refuse);
        let k = Some(web1.public_key.as_str());
        let plain = subs.handle(3, k, b"web-1", true, &keys);
        assert_eq!((plain.subscribe.len(), plain.refused), (0, Some(Refusal::PlainRefused)));
        assert!(!Refusal::PlainRefused.is_expected(), "logged at warn");
        assert_eq!(subs.handle(4, k, &t("web-1"), true, &keys).subscribe, [t("web-1")]);
        let mut null = Subscriptions::new(false, PlainSubscribers::Refuse);
        assert_eq!(null.handle(3, None, b"web-1", true, &keys).refused, Some(Refusal::PlainRefused));
    }

    #[test]
    fn listening_waits_for_pending_topics_only() {
        let (mut subs, keys, web1, _, _) = setup();
        let k = Some(web1.public_key.as_str());
        assert!(subs.handle(3, k, &t("web-1"), true, &keys).listening.is_some());
        assert_eq!(subs.handle(3, k, &t("pantry"), true, &keys).listening, Some((web1.public_key.clone(), false)));
        assert_eq!(subs.closed(3), None, "it was not listening");
        // The original agent without an environment asks for `pantry.app`,
        // which is no stream of its: refused for good, it still listens.
        subs.grant(Grant::of(&web1.public_key, &filter("web-1", None, &["app"])), &keys);
        for s in ["web-1", "pantry", "*"] {
            assert!(subs.handle(4, k, s.as_bytes(), true, &keys).refused.is_none(), "{s}");
        }
        let extra = subs.handle(4, k, b"pantry.app", true, &keys);
        assert_eq!(extra.refused, Some(Refusal::NotItsStream));
        assert!(subs.listening.contains(&web1.public_key), "still listening");
    }

    #[test]
    fn a_new_name_cuts_whoever_holds_it() {
        let (mut subs, mut keys, _, _, _) = setup();
        let unbound = known(None, Role::Client);
        keys.insert(unbound.clone());
        let k = Some(unbound.public_key.as_str());
        assert_eq!(subs.handle(3, k, b"", true, &keys).subscribe, [bare("*")]);
        assert_eq!(subs.handle(3, k, &t("web-3"), true, &keys).refused, Some(Refusal::NotRegistered));
        assert_eq!(subs.handle(4, k, b"web-3", true, &keys).refused, Some(Refusal::NotRegistered));
        let mut bound = unbound.clone();
        bound.name = Some("web-3".into());
        keys.insert(bound.clone());
        let mut cut = subs.key_changed(&bound.public_key, Some("web-3"), &keys);
        cut.sort();
        assert_eq!(cut, [3, 4]);
    }

    #[test]
    fn null_security_grants_everything() {
        let mut subs = Subscriptions::new(false, PlainSubscribers::Allow);
        let keys = KeySnapshot::default();
        assert_eq!(subs.handle(3, None, b"", true, &keys).subscribe, [Vec::<u8>::new()]);
        assert_eq!(subs.handle(3, None, &t("web-1"), true, &keys).subscribe, [t("web-1")]);
        assert_eq!(subs.handle(3, None, b"web-1", true, &keys).subscribe, [bare("web-1")]);
        assert!(subs.wants_bare(&bare("web-1")));
    }
}
