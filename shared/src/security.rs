//! The one place where a ZeroMQ socket gets its security mechanism and the
//! options every Pantry socket shares. Server, agent and admin create their
//! sockets through [`SocketSecurity::socket`], so `null` and `curve` differ
//! only here.

use std::sync::atomic::{AtomicI64, Ordering};

use crate::keys::{decode_key, ClientKeys, PublicKey, ServerKeyStore};

/// ZMQ_MAXMSGSIZE of every socket made here (-1: none), set once at startup
/// from `networking.max_message_size`.
static MAX_MESSAGE_SIZE: AtomicI64 = AtomicI64::new(-1);

/// Messages queued per peer and direction before libzmq drops (PUB) or
/// refuses (ROUTER: the server logs it) more: bounds the memory one slow
/// peer can hold on the server.
pub const HIGH_WATER_MARK: i32 = 1000;

/// Applies to every socket created afterwards.
pub fn set_max_message_size(bytes: u64) {
    MAX_MESSAGE_SIZE.store(i64::try_from(bytes).unwrap_or(i64::MAX), Ordering::Relaxed);
}

/// ZAP domain of the server's sockets. Setting one makes libzmq consult the
/// ZAP handler for every handshake.
pub const ZAP_DOMAIN: &str = "pantry";

/// The endpoint a ZAP handler binds (RFC 27).
pub const ZAP_ENDPOINT: &str = "inproc://zeromq.zap.01";

/// How a socket authenticates and encrypts.
#[derive(Clone)]
pub enum SocketSecurity {
    /// No encryption, no authentication.
    Null,
    /// The server side of CURVE: its secret key; clients are checked by ZAP.
    CurveServer { secret_key: PublicKey },
    /// The client side of CURVE: the server's public key and our pair.
    CurveClient { server_key: PublicKey, public_key: PublicKey, secret_key: PublicKey },
}

impl std::fmt::Debug for SocketSecurity {
    // Never print secret keys.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.mechanism())
    }
}

impl SocketSecurity {
    pub fn server(store: &ServerKeyStore) -> SocketSecurity {
        SocketSecurity::CurveServer { secret_key: *store.secret_key() }
    }

    /// Keys already checked by [`ClientKeys::load`]; decoding again cannot
    /// fail, but errors still name the file.
    pub fn client(keys: &ClientKeys) -> Result<SocketSecurity, crate::error::KeyStoreError> {
        Ok(SocketSecurity::CurveClient {
            server_key: decode_key(&keys.server_public_key, &keys.path, "server_public_key")?,
            public_key: decode_key(&keys.keys.public_key, &keys.path, "public_key")?,
            secret_key: decode_key(&keys.keys.private_key, &keys.path, "private_key")?,
        })
    }

    pub fn mechanism(&self) -> &'static str {
        match self {
            SocketSecurity::Null => "NULL",
            SocketSecurity::CurveServer { .. } | SocketSecurity::CurveClient { .. } => "CURVE",
        }
    }

    pub fn is_curve(&self) -> bool {
        !matches!(self, SocketSecurity::Null)
    }

    /// A new socket of `kind` with this security and Pantry's common options.
    pub fn socket(&self, ctx: &zmq::Context, kind: zmq::SocketType) -> zmq::Result<zmq::Socket> {
        let socket = ctx.socket(kind)?;
        // Pending messages must never keep a stopping process alive.
        socket.set_linger(0)?;
        // A bigger message drops the connection instead of the memory.
        socket.set_maxmsgsize(MAX_MESSAGE_SIZE.load(Ordering::Relaxed))?;
        socket.set_sndhwm(HIGH_WATER_MARK)?;
        socket.set_rcvhwm(HIGH_WATER_MARK)?;
        match self {
            SocketSecurity::Null => {}
            SocketSecurity::CurveServer { secret_key } => {
                socket.set_zap_domain(ZAP_DOMAIN)?;
                socket.set_curve_server(true)?;
                socket.set_curve_secretkey(secret_key)?;
            }
            SocketSecurity::CurveClient { server_key, public_key, secret_key } => {
                socket.set_curve_serverkey(server_key)?;
                socket.set_curve_publickey(public_key)?;
                socket.set_curve_secretkey(secret_key)?;
            }
        }
        Ok(socket)
    }
}
