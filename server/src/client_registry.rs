//! The client registry: who is checked in, with which identity, application,
//! environment and roles, and when each last checked in.
//!
//! It lives in memory: after a restart it refills as agents check in again.
//! An index from stream to identities answers "who receives a message sent
//! to this stream" without scanning every client. Under CURVE a client
//! receives only once its PUB subscriptions are granted (it is
//! *listening*), so only listening clients are recipients.
//!
//! An identity is never also a stream: a registration whose identity is
//! another client's `app`, `app.env` or `app.env.role` stream, or whose
//! streams are another client's identity, is refused (a message to that
//! name would reach both).

use std::collections::{BTreeSet, HashMap, HashSet};
use std::time::SystemTime;

use actix::prelude::*;
use pantry_shared::filter::{ClientFilter, Identities};

struct Entry {
    filter: ClientFilter,
    last_checked_in: SystemTime,
    /// The key that registered this identity (CURVE): no other may.
    key: Option<String>,
}

pub struct ClientRegistry {
    curve: bool,
    clients: HashMap<String, Entry>,
    /// Stream → identities subscribed to it (identity, app, app.env,
    /// app.env.role), kept in step with `clients`.
    by_stream: HashMap<String, BTreeSet<String>>,
    /// Keys whose PUB subscriptions are all granted (CURVE).
    listening: HashSet<String>,
}

impl ClientRegistry {
    pub fn new(curve: bool) -> Self {
        ClientRegistry { curve, clients: HashMap::new(), by_stream: HashMap::new(), listening: HashSet::new() }
    }

    fn unindex(&mut self, identity: &str, filter: &ClientFilter) {
        for stream in filter.streams() {
            if let Some(set) = self.by_stream.get_mut(&stream) {
                set.remove(identity);
                if set.is_empty() {
                    self.by_stream.remove(&stream);
                }
            }
        }
    }

    /// Why `client` may not register beside the others, if it may not.
    fn confusion(&self, identity: &str, client: &ClientFilter) -> Option<String> {
        if self.by_stream.get(identity).is_some_and(|ids| ids.iter().any(|id| id != identity)) {
            return Some(format!("the identity `{identity}` is another client's application stream"));
        }
        client
            .streams()
            .into_iter()
            .filter(|s| s != identity)
            .find(|s| self.clients.contains_key(s))
            .map(|s| format!("the stream `{s}` is another client's identity"))
    }

    fn receives(&self, entry: &Entry) -> bool {
        !self.curve || entry.key.as_ref().is_some_and(|k| self.listening.contains(k))
    }
}

impl Actor for ClientRegistry {
    type Context = Context<Self>;
}

/// A client checked in.
#[derive(Message)]
#[rtype(result = "Registered")]
pub struct Register {
    /// With the identity set.
    pub client: ClientFilter,
    /// The sender's key, under CURVE.
    pub key: Option<String>,
}

/// What a registration did.
#[derive(Debug, PartialEq, Eq, MessageResponse)]
pub enum Registered {
    /// First time, or with a new application, environment or roles.
    New,
    /// A heartbeat.
    Again,
    /// Refused, with the reason the agent is told.
    Refused(String),
}

impl Handler<Register> for ClientRegistry {
    type Result = Registered;

    fn handle(&mut self, msg: Register, _: &mut Context<Self>) -> Registered {
        let identity = msg.client.identity.clone().unwrap_or_default();
        let now = SystemTime::now();
        if let Some(entry) = self.clients.get(&identity) {
            if let (Some(bound), Some(key)) = (&entry.key, &msg.key) {
                if bound != key {
                    return Registered::Refused(format!("the identity `{identity}` is registered by another key"));
                }
            }
        }
        if let Some(reason) = self.confusion(&identity, &msg.client) {
            return Registered::Refused(reason);
        }
        if let Some(entry) = self.clients.get_mut(&identity) {
            entry.last_checked_in = now;
            if entry.filter == msg.client {
                return Registered::Again;
            }
            let old = std::mem::replace(&mut entry.filter, msg.client.clone());
            self.unindex(&identity, &old);
        } else {
            let entry = Entry { filter: msg.client.clone(), last_checked_in: now, key: msg.key };
            self.clients.insert(identity.clone(), entry);
        }
        for stream in msg.client.streams() {
            self.by_stream.entry(stream).or_default().insert(identity.clone());
        }
        Registered::New
    }
}

/// A key's PUB subscriptions are all granted, or no longer.
#[derive(Message)]
#[rtype(result = "()")]
pub struct Listening {
    pub key: String,
    pub listening: bool,
}

impl Handler<Listening> for ClientRegistry {
    type Result = ();

    fn handle(&mut self, msg: Listening, _: &mut Context<Self>) {
        if msg.listening {
            self.listening.insert(msg.key);
        } else {
            self.listening.remove(&msg.key);
        }
    }
}

/// Drop every client registered by a (revoked) key.
#[derive(Message)]
#[rtype(result = "()")]
pub struct Forget {
    pub key: String,
}

impl Handler<Forget> for ClientRegistry {
    type Result = ();

    fn handle(&mut self, msg: Forget, _: &mut Context<Self>) {
        self.listening.remove(&msg.key);
        let gone: Vec<(String, ClientFilter)> = self
            .clients
            .iter()
            .filter(|(_, e)| e.key.as_deref() == Some(msg.key.as_str()))
            .map(|(id, e)| (id.clone(), e.filter.clone()))
            .collect();
        for (identity, filter) in gone {
            self.clients.remove(&identity);
            self.unindex(&identity, &filter);
        }
    }
}

/// The clients a status filter (and identity patterns) select, sorted by
/// identity.
#[derive(Message)]
#[rtype(result = "Vec<(ClientFilter, SystemTime)>")]
pub struct Query {
    pub filter: ClientFilter,
    pub identities: Option<Identities>,
}

impl Handler<Query> for ClientRegistry {
    type Result = MessageResult<Query>;

    fn handle(&mut self, msg: Query, _: &mut Context<Self>) -> Self::Result {
        let mut list: Vec<(ClientFilter, SystemTime)> = self
            .clients
            .values()
            .filter(|e| msg.filter.selects(&e.filter) && self.receives(e))
            .filter(|e| {
                msg.identities.as_ref().is_none_or(|ids| ids.matches(e.filter.identity.as_deref().unwrap_or_default()))
            })
            .map(|e| (e.filter.clone(), e.last_checked_in))
            .collect();
        list.sort_by(|a, b| a.0.identity.cmp(&b.0.identity));
        MessageResult(list)
    }
}

/// One client a forwarded request goes to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Recipient {
    pub identity: String,
    /// Its key, under CURVE.
    pub key: Option<String>,
}

/// The clients that receive a message sent to `stream` (`""`: all), or
/// only those of them whose identity matches `identities`, sorted by
/// identity.
#[derive(Message)]
#[rtype(result = "Vec<Recipient>")]
pub struct Recipients {
    pub stream: String,
    pub identities: Option<Identities>,
}

impl Handler<Recipients> for ClientRegistry {
    type Result = MessageResult<Recipients>;

    fn handle(&mut self, msg: Recipients, _: &mut Context<Self>) -> Self::Result {
        let recipient = |identity: &String| {
            if msg.identities.as_ref().is_some_and(|ids| !ids.matches(identity)) {
                return None;
            }
            let entry = self.clients.get(identity).filter(|e| self.receives(e))?;
            Some(Recipient { identity: identity.clone(), key: entry.key.clone() })
        };
        let mut list: Vec<Recipient> = if msg.stream.is_empty() {
            self.clients.keys().filter_map(recipient).collect()
        } else {
            self.by_stream.get(&msg.stream).map(|s| s.iter().filter_map(recipient).collect()).unwrap_or_default()
        };
        list.sort_by(|a, b| a.identity.cmp(&b.identity));
        MessageResult(list)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn client(id: &str, app: &str, env: &str, roles: &[&str]) -> ClientFilter {
        ClientFilter {
            identity: Some(id.into()),
            application: Some(app.into()),
            environment: Some(env.into()),
            roles: roles.iter().map(|r| r.to_string()).collect(),
        }
    }

    fn ids(list: Vec<Recipient>) -> Vec<String> {
        list.into_iter().map(|r| r.identity).collect()
    }

    #[actix_rt::test]
    async fn recipients_follow_registrations() {
        let registry = ClientRegistry::new(false).start();
        let reg = |c: ClientFilter, key: &str| Register { client: c, key: Some(key.into()) };
        assert_eq!(registry.send(reg(client("h1", "pantry", "test", &["web"]), "k1")).await.unwrap(), Registered::New);
        assert_eq!(registry.send(reg(client("h2", "pantry", "prod", &["db"]), "k2")).await.unwrap(), Registered::New);
        assert_eq!(
            registry.send(reg(client("h1", "pantry", "test", &["web"]), "k1")).await.unwrap(),
            Registered::Again
        );
        // Another key cannot take h1.
        let refused = registry.send(reg(client("h1", "pantry", "test", &["web"]), "k9")).await.unwrap();
        assert!(matches!(refused, Registered::Refused(r) if r.contains("another key")));
        let to = |s: &str| registry.send(Recipients { stream: s.into(), identities: None });
        assert_eq!(ids(to("").await.unwrap()), ["h1", "h2"]);
        let some = |p: &str| Identities::parse(&[p.into()]).unwrap();
        let globbed = registry.send(Recipients { stream: "pantry".into(), identities: some("h[2-9]") }).await;
        assert_eq!(ids(globbed.unwrap()), ["h2"]);
        assert_eq!(ids(to("pantry").await.unwrap()), ["h1", "h2"]);
        assert_eq!(ids(to("pantry.test").await.unwrap()), ["h1"]);
        assert_eq!(ids(to("pantry.prod.db").await.unwrap()), ["h2"]);
        assert_eq!(ids(to("h1").await.unwrap()), ["h1"]);
        assert!(to("h").await.unwrap().is_empty());
        // Changing roles moves the client in the index.
        assert_eq!(registry.send(reg(client("h1", "pantry", "test", &["db"]), "k1")).await.unwrap(), Registered::New);
        assert!(to("pantry.test.web").await.unwrap().is_empty());
        assert_eq!(ids(to("pantry.test.db").await.unwrap()), ["h1"]);
        let q = registry
            .send(Query { filter: ClientFilter { roles: vec!["db".into()], ..Default::default() }, identities: None })
            .await
            .unwrap();
        assert_eq!(q.len(), 2);
        registry.send(Forget { key: "k2".into() }).await.unwrap();
        assert!(to("pantry.prod").await.unwrap().is_empty());
        assert_eq!(ids(to("").await.unwrap()), ["h1"]);
    }

    #[actix_rt::test]
    async fn identities_and_streams_never_meet() {
        let registry = ClientRegistry::new(false).start();
        let reg = |c: ClientFilter| Register { client: c, key: None };
        assert_eq!(
            registry.send(reg(client("web1.example.com", "shop", "prod", &["web"]))).await.unwrap(),
            Registered::New
        );
        // An identity that is a registered stream, and the reverse.
        let r = registry.send(reg(client("shop.prod", "other", "x", &[]))).await.unwrap();
        assert!(matches!(r, Registered::Refused(reason) if reason.contains("shop.prod")), "identity = stream");
        let r = registry.send(reg(client("db-1", "web1.example.com", "x", &[]))).await.unwrap();
        assert!(matches!(r, Registered::Refused(_)), "app = identity");
        let to = |s: &str| registry.send(Recipients { stream: s.into(), identities: None });
        assert_eq!(ids(to("web1.example.com").await.unwrap()), ["web1.example.com"]);
    }

    #[actix_rt::test]
    async fn under_curve_only_listening_clients_receive() {
        let registry = ClientRegistry::new(true).start();
        let r = Register { client: client("h1", "a", "e", &[]), key: Some("k1".into()) };
        assert_eq!(registry.send(r).await.unwrap(), Registered::New);
        let to = || registry.send(Recipients { stream: "a".into(), identities: None });
        assert!(to().await.unwrap().is_empty());
        registry.send(Listening { key: "k1".into(), listening: true }).await.unwrap();
        assert_eq!(to().await.unwrap(), [Recipient { identity: "h1".into(), key: Some("k1".into()) }]);
        registry.send(Listening { key: "k1".into(), listening: false }).await.unwrap();
        assert!(to().await.unwrap().is_empty());
    }
}
