//! The client registry: who is checked in, with which identity, application,
//! environment and roles, and when each last checked in.
//!
//! It lives in memory: after a restart it refills as agents check in again.
//! An index from stream to identities answers "who receives a message sent
//! to this stream" without scanning every client.

use std::collections::{BTreeSet, HashMap};
use std::time::SystemTime;

use actix::prelude::*;
use pantry_shared::filter::ClientFilter;

struct Entry {
    filter: ClientFilter,
    last_checked_in: SystemTime,
    /// The key that registered this identity (CURVE): no other may.
    key: Option<String>,
}

#[derive(Default)]
pub struct ClientRegistry {
    clients: HashMap<String, Entry>,
    /// Stream → identities subscribed to it (identity, app, app.env,
    /// app.env.role), kept in step with `clients`.
    by_stream: HashMap<String, BTreeSet<String>>,
}

impl ClientRegistry {
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
    /// The identity belongs to another key.
    Refused { bound_to: String },
}

impl Handler<Register> for ClientRegistry {
    type Result = Registered;

    fn handle(&mut self, msg: Register, _: &mut Context<Self>) -> Registered {
        let identity = msg.client.identity.clone().unwrap_or_default();
        let now = SystemTime::now();
        if let Some(entry) = self.clients.get_mut(&identity) {
            if let (Some(bound), Some(key)) = (&entry.key, &msg.key) {
                if bound != key {
                    return Registered::Refused { bound_to: bound.clone() };
                }
            }
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

/// Drop every client registered by a (revoked) key.
#[derive(Message)]
#[rtype(result = "()")]
pub struct Forget {
    pub key: String,
}

impl Handler<Forget> for ClientRegistry {
    type Result = ();

    fn handle(&mut self, msg: Forget, _: &mut Context<Self>) {
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

/// The clients a status filter selects, sorted by identity.
#[derive(Message)]
#[rtype(result = "Vec<(ClientFilter, SystemTime)>")]
pub struct Query {
    pub filter: ClientFilter,
}

impl Handler<Query> for ClientRegistry {
    type Result = MessageResult<Query>;

    fn handle(&mut self, msg: Query, _: &mut Context<Self>) -> Self::Result {
        let mut list: Vec<(ClientFilter, SystemTime)> = self
            .clients
            .values()
            .filter(|e| msg.filter.selects(&e.filter))
            .map(|e| (e.filter.clone(), e.last_checked_in))
            .collect();
        list.sort_by(|a, b| a.0.identity.cmp(&b.0.identity));
        MessageResult(list)
    }
}

/// The identities that receive a message sent to `stream` (`""`: all).
#[derive(Message)]
#[rtype(result = "Vec<String>")]
pub struct Recipients {
    pub stream: String,
}

impl Handler<Recipients> for ClientRegistry {
    type Result = MessageResult<Recipients>;

    fn handle(&mut self, msg: Recipients, _: &mut Context<Self>) -> Self::Result {
        let mut list: Vec<String> = if msg.stream.is_empty() {
            self.clients.keys().cloned().collect()
        } else {
            self.by_stream.get(&msg.stream).map(|s| s.iter().cloned().collect()).unwrap_or_default()
        };
        list.sort();
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

    #[actix_rt::test]
    async fn recipients_follow_registrations() {
        let registry = ClientRegistry::default().start();
        let reg = |c: ClientFilter, key: &str| Register { client: c, key: Some(key.into()) };
        assert_eq!(registry.send(reg(client("h1", "pantry", "test", &["web"]), "k1")).await.unwrap(), Registered::New);
        assert_eq!(registry.send(reg(client("h2", "pantry", "prod", &["db"]), "k2")).await.unwrap(), Registered::New);
        assert_eq!(
            registry.send(reg(client("h1", "pantry", "test", &["web"]), "k1")).await.unwrap(),
            Registered::Again
        );
        // Another key cannot take h1.
        let refused = registry.send(reg(client("h1", "pantry", "test", &["web"]), "k9")).await.unwrap();
        assert_eq!(refused, Registered::Refused { bound_to: "k1".into() });
        let to = |s: &str| registry.send(Recipients { stream: s.into() });
        assert_eq!(to("").await.unwrap(), ["h1", "h2"]);
        assert_eq!(to("pantry").await.unwrap(), ["h1", "h2"]);
        assert_eq!(to("pantry.test").await.unwrap(), ["h1"]);
        assert_eq!(to("pantry.prod.db").await.unwrap(), ["h2"]);
        assert_eq!(to("h1").await.unwrap(), ["h1"]);
        assert!(to("h").await.unwrap().is_empty());
        // Changing roles moves the client in the index.
        assert_eq!(registry.send(reg(client("h1", "pantry", "test", &["db"]), "k1")).await.unwrap(), Registered::New);
        assert!(to("pantry.test.web").await.unwrap().is_empty());
        assert_eq!(to("pantry.test.db").await.unwrap(), ["h1"]);
        let q = registry
            .send(Query { filter: ClientFilter { roles: vec!["db".into()], ..Default::default() } })
            .await
            .unwrap();
        assert_eq!(q.len(), 2);
        registry.send(Forget { key: "k2".into() }).await.unwrap();
        assert!(to("pantry.prod").await.unwrap().is_empty());
        assert_eq!(to("").await.unwrap(), ["h1"]);
    }
}
