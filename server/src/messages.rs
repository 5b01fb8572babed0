//! Types the server's actors and its socket thread share, and the messages
//! they send each other. Actor files import from here, never from each
//! other's files, so the import graph has no cycles.

use std::sync::Arc;

use actix::prelude::*;
use pantry_shared::filter::ClientFilter;
use pantry_shared::keys::Role;
use pantry_shared::security::ServerPort;
use pantry_shared::Message;

/// What a key is to the server.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Standing {
    /// In the key store, with this role.
    Known(Role),
    /// Not known: admitted on the receive port only, to enroll.
    Enrollee,
}

impl Standing {
    pub fn name(self) -> &'static str {
        match self {
            Standing::Known(role) => role.as_str(),
            Standing::Enrollee => ENROLLEE,
        }
    }
}

/// The role the ZAP handler gives a connection admitted to enroll.
pub const ENROLLEE: &str = "enrollee";

/// The authenticated sender of a message (CURVE): what the ZAP handler put
/// on its connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerAuth {
    /// Z85 public key (the ZAP user id).
    pub key: String,
    /// The key's name; `None` for a key not yet bound to an identity.
    pub name: Option<String>,
    pub standing: Standing,
    /// The peer's IP address, as libzmq reports it.
    pub address: String,
}

impl PeerAuth {
    pub fn name_or_dash(&self) -> &str {
        self.name.as_deref().unwrap_or("-")
    }

    pub fn is_admin(&self) -> bool {
        self.standing == Standing::Known(Role::Admin)
    }

    /// Another server of the cluster.
    pub fn is_server(&self) -> bool {
        self.standing == Standing::Known(Role::Server)
    }
}

/// A decoded message from a peer of the receive (ROUTER) socket.
#[derive(Message)]
#[rtype(result = "()")]
pub struct Incoming {
    /// ROUTER routing id of the connection it came from.
    pub peer: Vec<u8>,
    /// Who sent it, by key (CURVE only).
    pub auth: Option<Arc<PeerAuth>>,
    pub message: Message,
}

/// A change in who is connected, from the socket thread.
#[derive(Message, Debug, Clone, PartialEq, Eq)]
#[rtype(result = "()")]
pub enum Presence {
    /// A key's first connection opened.
    Connected(String),
    /// A key's last connection closed.
    Disconnected(String),
    /// A key's PUB subscriptions are all granted (it receives what is
    /// published to it), or no longer.
    Listening { key: String, listening: bool },
    /// A receive-port connection that had sent something closed (its
    /// routing id).
    PeerClosed(Vec<u8>),
    /// A cluster's link to another server is up (its handshake done) or
    /// down.
    Link { server: String, up: bool },
}

/// Frames from a peer of the file service socket.
#[derive(Message)]
#[rtype(result = "()")]
pub struct FileFrames {
    pub peer: Vec<u8>,
    /// Who sent them, by key (CURVE only).
    pub auth: Option<Arc<PeerAuth>>,
    pub frames: Vec<Vec<u8>>,
}

/// A ZAP request the socket thread could not answer from its snapshot of
/// known keys: an unknown key (trust on first use, a key store changed by
/// another process) or a request it could not read.
#[derive(Message, Debug)]
#[rtype(result = "()")]
pub struct ZapRequest {
    /// Routing id and empty delimiter of the ZAP ROUTER socket.
    pub envelope: Vec<Vec<u8>>,
    pub request_id: Vec<u8>,
    pub port: Option<ServerPort>,
    pub address: String,
    pub mechanism: String,
    /// The client's public key (CURVE), if the credentials hold one.
    pub key: Option<[u8; 32]>,
}

/// A registered client's streams beyond its identity: what it may
/// subscribe to on PUB (CURVE).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Grant {
    pub key: String,
    pub streams: Vec<String>,
}

impl Grant {
    pub fn of(key: &str, filter: &ClientFilter) -> Grant {
        // The identity is the key's own name: not a stream it is granted.
        let streams = filter.streams().into_iter().filter(|s| Some(s) != filter.identity.as_ref()).collect();
        Grant { key: key.to_owned(), streams }
    }
}

/// A binary routing id, logged as hex. Formatted only when a line is
/// actually written, so per-message debug logging costs nothing when off.
pub struct Hex<'a>(pub &'a [u8]);

impl std::fmt::Display for Hex<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.iter().try_for_each(|b| write!(f, "{b:02x}"))
    }
}

impl slog::Value for Hex<'_> {
    fn serialize(&self, _: &slog::Record, key: slog::Key, serializer: &mut dyn slog::Serializer) -> slog::Result {
        serializer.emit_arguments(key, &format_args!("{self}"))
    }
}

/// A client's answer to a rollout's batch, judged: the socket thread
/// tells the dispatcher (which runs the rollout).
#[derive(Message, Debug, Clone, PartialEq, Eq)]
#[rtype(result = "()")]
pub struct RolloutAnswer {
    pub job: String,
    pub identity: String,
    pub state: pantry_shared::commands::rollout::AgentState,
}

impl RolloutAnswer {
    pub fn of(kind: pantry_shared::commands::Kind, answer: &Message) -> RolloutAnswer {
        RolloutAnswer {
            job: answer.uuid().to_owned(),
            identity: answer.metadata.from.clone(),
            state: pantry_shared::commands::rollout::state_of(kind, answer),
        }
    }
}
