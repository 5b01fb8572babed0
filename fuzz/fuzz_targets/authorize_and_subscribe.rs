//! Fuzz the server's authorization paths: [`authorize`] on whatever decodes,
//! for every kind of sender, and the PUB subscription decisions
//! ([`Subscriptions`], CURVE) over a sequence of subscriptions, grants, key
//! bindings, revocations and closed connections. Invariants, never a panic:
//! no sender gets more than its key allows, no connection holds a topic its
//! key may not read.
//!
//! Input: `[header][frames separated by 0xFF][0xFE][operations]`. 0xFE and
//! 0xFF never occur in UTF-8, so the stream and metadata frames cannot hold
//! them; the message part ends at the first 0xFE. When the frames do not
//! decode, the message part's first bytes make a message instead (see
//! [`synthesized`]), so authorization is explored without JSON to get right.
//!
//! Header bits: 0-1 and 5 the sender (none, admin, bound client, unbound
//! client; with bit 5: an enrollee, an enrollee with a name, an admin
//! without one, a bound client), 2 curve, 3-4 the named sender's name (the
//! message's `from`, its stream, `web-1`, its `to`).
//!
//! Operations, one opcode byte each (`opcode % 6`), then:
//! - 0 subscribe, 1 unsubscribe: `[fd|key<<3][topic]`
//! - 2 grant: `[key][stream bits]` (a bit per entry of [`STREAMS`])
//! - 3 close: `[fd]`
//! - 4 bind an unbound key: `[key][name]` (index into [`NAMES`])
//! - 5 revoke: `[key]`
//!
//! A topic byte below 0x80 picks from [`TOPICS`], bare below 0x40 and in the
//! exact form (`\0topic\0`) from 0x40; otherwise its low six bits are the
//! length of the raw topic bytes that follow. Missing bytes read as 0.
#![no_main]

use std::collections::{HashMap, HashSet};
use std::os::fd::RawFd;
use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use pantry_server::authorize::{authorize, Verdict};
use pantry_server::messages::{Grant, PeerAuth, Standing};
use pantry_server::subscriptions::{Refusal, Subscriptions};
use pantry_server::zap::KeySnapshot;
use pantry_shared::commands::{Kind, RunsOn, Senders};
use pantry_shared::config::PlainSubscribers;
use pantry_shared::filter::{TopicForm, BROADCAST_TOPIC, TOPIC_MARK};
use pantry_shared::keys::{self, KnownKey, Role};
use pantry_shared::Message;

/// Canonical Z85 of fixed 32-byte keys (SHA-256 of a label), so a crash
/// replays the same: admin `ops`, client `web-1`, client `web-10`, an
/// unbound client, and a valid key that is not known.
const ADMIN: &str = "3uT8!KG=TeWlZZf[MU7#X1d%Y-i).YkT{>6jYZd@";
const WEB1: &str = "?RO?%F9I4gH}kQAltE[n}Zi7oN%vb>jmQ:>Cb-gr";
const WEB10: &str = "966+q+L.Xb5E>0l*Dmk#w$]n2l9n1ViuG6fs<cTt";
const UNBOUND: &str = "MWDRxKR)eyx3BvN9W<qH}zC}a=9.@C?7X6mIsu!E";
const UNKNOWN: &str = "g73oYxoj}JqJ5[ID9?Y-Q!e#s0-]XF*T(2[UYhaD";
/// The key pair a cluster's servers share (role `server`).
const SERVER: &str = "-ahHD&/5f[))-9Z]uL*WZx5TeWymG?%1KR&ULnSL";

/// What a subscription may carry as its key (the ZAP user id): the five
/// known keys, an unknown one, none, and text that is no key at all.
const SUBSCRIBER_KEYS: [Option<&str>; 8] =
    [Some(ADMIN), Some(WEB1), Some(WEB10), Some(UNBOUND), Some(UNKNOWN), None, Some("not a key"), Some(SERVER)];

const TOPICS: [&str; 16] = [
    "",
    "*",
    "ops",
    "web-1",
    "web-10",
    "web-3",
    "pantry",
    "pantry.test",
    "pantry.test.web",
    "pantry.prod",
    "web",
    "web-1\0",
    "\0",
    "*\0",
    "web-10\0x",
    "OPS",
];

/// Streams a registration may grant (including other keys' names, which
/// must never be granted as such).
const STREAMS: [&str; 8] = ["pantry", "pantry.test", "pantry.test.web", "web-10", "ops", "web-3", "*", "pantry.prod"];

/// Names an unbound key may be bound to (taken ones are refused, as the
/// key store does).
const NAMES: [&str; 6] = ["web-3", "pantry", "pantry.test", "web-1", "ops", "pantry.test.web"];

fn initial_keys() -> &'static [KnownKey] {
    static KEYS: OnceLock<Vec<KnownKey>> = OnceLock::new();
    KEYS.get_or_init(|| {
        let known = |public_key: &str, name: Option<&str>, role| KnownKey {
            public_key: public_key.to_owned(),
            name: name.map(str::to_owned),
            role,
            created: None,
        };
        for k in [ADMIN, WEB1, WEB10, UNBOUND, UNKNOWN, SERVER] {
            let decoded = keys::decode_z85(k).expect("fixed keys are valid Z85");
            assert_eq!(keys::z85(&decoded), k, "fixed keys are canonical Z85");
        }
        vec![
            known(ADMIN, Some("ops"), Role::Admin),
            known(WEB1, Some("web-1"), Role::Client),
            known(WEB10, Some("web-10"), Role::Client),
            known(UNBOUND, None, Role::Client),
            known(SERVER, Some("pantry-server"), Role::Server),
        ]
    })
}

fuzz_target!(|data: &[u8]| {
    let Some((&header, rest)) = data.split_first() else { return };
    let (message_part, ops) = match rest.iter().position(|&b| b == 0xfe) {
        Some(i) => (&rest[..i], &rest[i + 1..]),
        None => (rest, &[][..]),
    };
    let frames: Vec<&[u8]> = message_part.split(|&b| b == 0xff).collect();
    match Message::from_frames(&frames) {
        Ok(message) => check_authorize(&message, header),
        Err(_) => check_authorize(&synthesized(message_part), header),
    }
    check_subscriptions(ops);
});

/// Names for `from`, `to` and the stream of a synthesized message: the
/// names the harness's senders have, and near misses of them.
const PEERS: [&str; 12] =
    ["web-1", "web-10", "ops", "", "web-100", "WEB-1", "web-1\0", "web-1 ", "*", "pantry.test.web", "db-7", "web-3"];

/// Types that are no [`Kind`]'s wire type.
const UNKNOWN_TYPES: [&str; 5] = ["Frobnicate", "", "echo", "Echo ", "registerclient"];

/// A message from bytes: `[type][flags][from][to][stream]` (indices into
/// [`Kind::ALL`] then [`UNKNOWN_TYPES`], and [`PEERS`]; flag bit 0
/// `requires_response`, bit 1 `forwarded`). Missing bytes read as 0.
fn synthesized(bytes: &[u8]) -> Message {
    let at = |i: usize| usize::from(bytes.get(i).copied().unwrap_or(0));
    let types = Kind::ALL.len() + UNKNOWN_TYPES.len();
    let wire = match at(0) % types {
        i if i < Kind::ALL.len() => Kind::ALL[i].wire(),
        i => UNKNOWN_TYPES[i - Kind::ALL.len()],
    };
    let mut message = Message::new(wire);
    message.metadata.requires_response = at(1) & 1 != 0;
    message.metadata.forwarded = at(1) & 2 != 0;
    message.metadata.from = PEERS[at(2) % PEERS.len()].to_owned();
    message.metadata.to = PEERS[at(3) % PEERS.len()].to_owned();
    message.stream = PEERS[at(4) % PEERS.len()].to_owned();
    message
}

fn check_authorize(message: &Message, header: u8) {
    let curve = header & 0b100 != 0;
    let name = match (header >> 3) & 0b11 {
        0 => message.metadata.from.clone(),
        1 => message.stream.clone(),
        2 => "web-1".to_owned(),
        _ => message.metadata.to.clone(),
    };
    let peer =
        |name: Option<String>, standing| PeerAuth { key: WEB1.to_owned(), name, standing, address: "192.0.2.1".into() };
    let sender = match (header & 0b11) | (header >> 3 & 0b100) {
        0 => None,
        1 => Some(peer(Some("ops".into()), Standing::Known(Role::Admin))),
        2 => Some(peer(Some(name), Standing::Known(Role::Client))),
        7 => Some(peer(Some("pantry-server".into()), Standing::Known(Role::Server))),
        3 => Some(peer(None, Standing::Known(Role::Client))),
        4 => Some(peer(None, Standing::Enrollee)),
        5 => Some(peer(Some(name), Standing::Enrollee)),
        _ => Some(peer(None, Standing::Known(Role::Admin))),
    };
    let verdict = authorize(message, sender.as_ref(), curve);
    let wire = message.message_type();
    let context = || format!("type {wire:?}, sender {sender:?}, curve {curve}: {verdict:?}");

    let Some(kind) = Kind::from_wire(wire) else {
        assert!(matches!(verdict, Verdict::Refuse(_)), "an unknown type must be refused; {}", context());
        return;
    };
    let allowed = match &verdict {
        Verdict::Request(k) | Verdict::Answer(k) => {
            assert_eq!(*k, kind, "the verdict names another kind; {}", context());
            true
        }
        Verdict::Refuse(_) | Verdict::Drop(_) => false,
    };
    let rule = kind.rule();
    if let Verdict::Answer(_) = verdict {
        assert!(
            rule.runs_on == RunsOn::Clients && !message.metadata.requires_response,
            "only a client-run type without requires_response is an answer; {}",
            context()
        );
    }
    if let Verdict::Request(_) = verdict {
        assert!(
            rule.runs_on == RunsOn::Server || message.metadata.requires_response,
            "a client-run type without requires_response is an answer, not a request; {}",
            context()
        );
    }
    if !curve {
        assert!(allowed, "null security allows every known type; {}", context());
        return;
    }
    let Some(sender) = &sender else {
        assert!(!allowed, "no key, no request or answer under CURVE; {}", context());
        return;
    };
    match sender.standing {
        // An unknown key may only ask to be enrolled, whatever it says.
        Standing::Enrollee => {
            if allowed {
                assert_eq!(verdict, Verdict::Request(Kind::Enroll), "an unknown key may only enroll; {}", context());
            }
        }
        Standing::Known(Role::Admin) => {
            assert!(!matches!(verdict, Verdict::Answer(_)), "an admin key never answers; {}", context());
            if allowed {
                assert_eq!(rule.senders, Senders::Admins, "an admin key sends admin commands only; {}", context());
            }
        }
        // Another server of a cluster passes on admins' commands to clients.
        Standing::Known(Role::Server) => {
            assert!(!matches!(verdict, Verdict::Answer(_)), "a server key never answers; {}", context());
            if allowed {
                assert!(
                    rule.runs_on == RunsOn::Clients && rule.senders == Senders::Admins,
                    "a server key only passes on admins' commands to clients; {}",
                    context()
                );
            }
        }
        Standing::Known(Role::Client) => {
            if let Verdict::Request(k) = verdict {
                assert_ne!(
                    k.rule().senders,
                    Senders::Admins,
                    "a client key never runs an admin command; {}",
                    context()
                );
            }
            // `Enroll` from a known key is answered from the key (its name),
            // not from `from`: the one request a client key may send with
            // any `from`.
            let enroll = verdict == Verdict::Request(Kind::Enroll);
            match &sender.name {
                Some(name) if allowed && !enroll => {
                    assert_eq!(*name, message.metadata.from, "a client key speaks only for itself; {}", context())
                }
                None if allowed && !enroll => assert_eq!(
                    verdict,
                    Verdict::Request(Kind::RegisterClient),
                    "an unbound client key may only register (or enroll); {}",
                    context()
                ),
                _ => {}
            }
        }
    }
}

/// Reads operation bytes; missing ones read as 0.
struct Ops<'a>(std::slice::Iter<'a, u8>);

impl Ops<'_> {
    fn byte(&mut self) -> u8 {
        self.0.next().copied().unwrap_or(0)
    }

    fn topic(&mut self) -> Vec<u8> {
        let b = self.byte();
        if b < 0x80 {
            let t = TOPICS[usize::from(b) % TOPICS.len()].as_bytes();
            if b < 0x40 {
                return t.to_vec();
            }
            return [&[TOPIC_MARK][..], t, &[TOPIC_MARK]].concat();
        }
        (0..b & 0x3f).map(|_| self.byte()).collect()
    }
}

/// What the harness knows of one PUB connection, as the XPUB would: its
/// key (fixed for the connection's life) and the topics it holds.
struct Conn {
    key: Option<&'static str>,
    held: HashSet<Vec<u8>>,
}

/// The socket thread's side of [`Subscriptions`]: the known keys, the
/// registered streams, and the connections with what they hold.
struct World {
    subs: Subscriptions,
    keys: KeySnapshot,
    /// The current known keys (what the snapshot was given).
    known: Vec<KnownKey>,
    grants: HashMap<&'static str, Vec<&'static str>>,
    conns: HashMap<RawFd, Conn>,
}

/// Every `KeySnapshot::by_z85` call leaks the key's text (41 bytes plus
/// allocator overhead): `pantry_shared::keys::decode_key` calls
/// `zmq::z85_decode`, which hands its `CString` to libzmq with `into_raw`
/// and never frees it (rust-zmq issue 387; still so in zmq 0.10.0). The
/// server decodes a key per subscription message, per new sender and per
/// key update, and so does this target: long runs end in libFuzzer's
/// out-of-memory error until that is fixed.
fn check_subscriptions(ops: &[u8]) {
    let mut keys = KeySnapshot::default();
    keys.replace_all(initial_keys().to_vec());
    let mut world = World {
        subs: Subscriptions::new(true, PlainSubscribers::Allow),
        keys,
        known: initial_keys().to_vec(),
        grants: HashMap::new(),
        conns: HashMap::new(),
    };
    let mut ops = Ops(ops.iter());
    // At most 64 operations: longer inputs add little but time.
    for _ in 0..64 {
        let Some(&opcode) = ops.0.next() else { break };
        match opcode % 6 {
            0 | 1 => {
                let b = ops.byte();
                let fd = RawFd::from(b & 0b111) + 3;
                let key = SUBSCRIBER_KEYS[usize::from(b >> 3) & 0b111];
                let requested = ops.topic();
                world.subscription(fd, key, &requested, opcode % 6 == 0);
            }
            2 => {
                let key = SUBSCRIBER_KEYS[usize::from(ops.byte()) & 0b111];
                let bits = ops.byte();
                let streams: Vec<&'static str> =
                    STREAMS.iter().enumerate().filter(|(i, _)| bits & (1 << i) != 0).map(|(_, s)| *s).collect();
                // Grants come from a registration, so only for a known key.
                if let Some(key) = key.filter(|k| world.known_key(Some(k)).is_some()) {
                    world.grants.insert(key, streams.clone());
                    let grant =
                        Grant { key: key.to_owned(), streams: streams.into_iter().map(str::to_owned).collect() };
                    let stale = world.subs.grant(grant, &world.keys);
                    world.cut(stale);
                }
            }
            3 => {
                let fd = RawFd::from(ops.byte() & 0b111) + 3;
                world.close(fd);
            }
            4 => {
                let key = SUBSCRIBER_KEYS[usize::from(ops.byte()) & 0b111];
                let name = NAMES[usize::from(ops.byte()) % NAMES.len()];
                world.bind(key, name);
            }
            _ => {
                let key = SUBSCRIBER_KEYS[usize::from(ops.byte()) & 0b111];
                world.revoke(key);
            }
        }
        world.check_held();
    }
}

impl World {
    /// The known key `key` names, from the harness's own list: the server's
    /// [`KeySnapshot::by_z85`] decodes the key each time, and zmq 0.9's
    /// `z85_decode` leaks its input (see `check_subscriptions`), so the
    /// harness does not add decodes of its own.
    fn known_key(&self, key: Option<&str>) -> Option<&KnownKey> {
        key.and_then(|key| self.known.iter().find(|k| k.public_key == key))
    }

    /// The topics `key` may hold now, by the rules the module states, in
    /// either form.
    fn allowed(&self, key: Option<&str>) -> HashSet<Vec<u8>> {
        let Some(known) = self.known_key(key) else { return HashSet::new() };
        let key = key.unwrap_or_default();
        let streams: Vec<&str> = match (known.role, known.name.as_deref()) {
            (Role::Admin, Some(name)) => vec![name],
            (Role::Admin, None) | (Role::Server, _) => Vec::new(),
            (Role::Client, own) => {
                let mut streams: Vec<&str> = own.into_iter().chain([BROADCAST_TOPIC]).collect();
                for s in self.grants.get(key).into_iter().flatten() {
                    if self.keys.owner_of(s).is_none_or(|owner| owner == key) {
                        streams.push(s);
                    }
                }
                streams
            }
        };
        streams.into_iter().flat_map(|s| [TopicForm::Exact.topic(s), TopicForm::Bare.topic(s)]).collect()
    }

    fn subscription(&mut self, fd: RawFd, key: Option<&'static str>, requested: &[u8], subscribe: bool) {
        // A connection's key is the one it authenticated with.
        let key = self.conns.get(&fd).map_or(key, |c| c.key);
        let outcome = self.subs.handle(fd, key, requested, subscribe, &self.keys);
        let context = || format!("fd {fd}, key {key:?}, requested {requested:?}, subscribe {subscribe}");
        let allowed = self.allowed(key);
        let known = self.known_key(key);
        for t in &outcome.subscribe {
            assert!(subscribe, "an unsubscription granted {t:?}; {}", context());
            assert!(!t.is_empty(), "the empty topic (everything) granted under CURVE; {}", context());
            // Exact (a mark at each end, none inside) or bare (no mark).
            let marks = t.iter().filter(|&&b| b == TOPIC_MARK).count();
            let exact = marks == 2 && t.first() == Some(&TOPIC_MARK) && t.last() == Some(&TOPIC_MARK);
            assert!(exact || marks == 0, "a topic granted with a stray mark: {t:?}; {}", context());
            assert!(TopicForm::parse(t).is_some(), "a topic granted that does not parse: {t:?}; {}", context());
            let known = known.unwrap_or_else(|| panic!("an unknown key was granted {t:?}; {}", context()));
            match known.role {
                Role::Server => panic!("a server key was granted {t:?}; {}", context()),
                Role::Admin => assert_eq!(
                    TopicForm::parse(t).map(|(_, s)| s),
                    known.name.as_deref(),
                    "an admin key may hold only its own name; {}",
                    context()
                ),
                Role::Client => {
                    for other in self.keys.iter().filter(|k| k.public_key != known.public_key) {
                        if let Some(other_name) = &other.name {
                            assert_ne!(
                                TopicForm::parse(t).map(|(_, s)| s),
                                Some(other_name.as_str()),
                                "a client key was granted another key's name; {}",
                                context()
                            );
                        }
                    }
                }
            }
            assert!(allowed.contains(t), "granted {t:?}, which the key may not hold; {}", context());
        }
        if let Some((listening_key, _)) = &outcome.listening {
            assert_eq!(Some(listening_key.as_str()), key, "listening changed for another key; {}", context());
        }
        if known.is_none() && subscribe {
            // Refused: the key is unknown (or the topic is not even UTF-8).
            assert!(
                matches!(outcome.refused, Some(Refusal::UnknownKey | Refusal::Malformed)),
                "an unknown key's subscription was not refused as such: {:?}; {}",
                outcome.refused,
                context()
            );
        }
        if !subscribe && !self.conns.contains_key(&fd) {
            assert_eq!(outcome, Default::default(), "an unknown connection unsubscribed; {}", context());
            return;
        }
        // The XPUB's side: what the connection now holds.
        let conn = self.conns.entry(fd).or_insert_with(|| Conn { key, held: HashSet::new() });
        for t in &outcome.unsubscribe {
            assert!(conn.held.remove(t), "unsubscribed {t:?}, which the connection did not hold; {}", context());
        }
        for t in &outcome.subscribe {
            assert!(conn.held.insert(t.clone()), "subscribed {t:?} twice; {}", context());
        }
        // The socket thread cuts a connection whose key is unknown.
        if outcome.refused == Some(Refusal::UnknownKey) {
            self.close(fd);
        }
    }

    /// Connections the server shuts down: they disconnect.
    fn cut(&mut self, fds: Vec<RawFd>) {
        for fd in fds {
            assert!(self.conns.contains_key(&fd), "cut fd {fd}, which is not a PUB connection");
            self.close(fd);
        }
    }

    fn close(&mut self, fd: RawFd) {
        let was = self.conns.remove(&fd);
        if let Some((key, _)) = self.subs.closed(fd) {
            assert_eq!(
                Some(key.as_str()),
                was.and_then(|c| c.key),
                "closing fd {fd} changed listening for another key"
            );
        }
    }

    /// The key store binds an unbound key (KeyUpdate::Added).
    fn bind(&mut self, key: Option<&'static str>, name: &str) {
        let Some(key) = key else { return };
        if self.known.iter().any(|k| k.name.as_deref() == Some(name)) {
            return;
        }
        let Some(entry) = self.known.iter_mut().find(|k| k.public_key == key && k.name.is_none()) else { return };
        entry.name = Some(name.to_owned());
        let bound = entry.clone();
        self.keys.insert(bound.clone());
        let stale = self.subs.key_changed(&bound.public_key, bound.name.as_deref(), &self.keys);
        self.cut(stale);
    }

    /// A key is revoked (KeyUpdate::Removed): its connections are cut off.
    fn revoke(&mut self, key: Option<&'static str>) {
        let Some(key) = key else { return };
        self.known.retain(|k| k.public_key != key);
        self.grants.remove(key);
        self.keys.remove(key);
        self.subs.key_removed(key);
        let theirs: Vec<RawFd> = self.conns.iter().filter(|(_, c)| c.key == Some(key)).map(|(fd, _)| *fd).collect();
        for fd in theirs {
            self.close(fd);
        }
    }

    /// No connection holds a topic its key may not read now.
    fn check_held(&self) {
        for (fd, conn) in &self.conns {
            let allowed = self.allowed(conn.key);
            for t in &conn.held {
                assert!(
                    allowed.contains(t),
                    "fd {fd} (key {:?}) still holds {t:?}, which its key may no longer read",
                    conn.key
                );
            }
        }
        // The bare form is published exactly while some connection holds it.
        let held_bare: HashSet<&Vec<u8>> =
            self.conns.values().flat_map(|c| c.held.iter()).filter(|t| t.first() != Some(&TOPIC_MARK)).collect();
        for t in TOPICS.iter().map(|t| t.as_bytes().to_vec()) {
            assert_eq!(self.subs.wants_bare(&t), held_bare.contains(&t), "bare {t:?} published wrongly");
        }
    }
}
