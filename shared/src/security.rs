//! The one place where a ZeroMQ socket gets its security mechanism and the
//! options every Pantry socket shares. Server, agent and admin create their
//! sockets through [`SocketSecurity::socket`], so `null` and `curve` differ
//! only here.

use std::sync::atomic::{AtomicI64, Ordering};

use crate::keys::{decode_key, ClientKeys, PublicKey};

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

/// ZAP domain of a listening socket when it does not matter which one
/// (the benchmark's relay). Setting one makes libzmq consult the ZAP handler
/// for every handshake.
pub const ZAP_DOMAIN: &str = "pantry";

/// Which of the server's sockets a handshake is for: each has its own ZAP
/// domain, so the ZAP handler can admit a key on one port and not another.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ServerPort {
    /// PUB: requests to clients.
    Publish,
    /// ROUTER: requests and answers from clients and admins.
    Receive,
    /// ROUTER: the file service.
    Files,
}

impl ServerPort {
    pub const fn zap_domain(self) -> &'static str {
        match self {
            ServerPort::Publish => "pantry.publish",
            ServerPort::Receive => "pantry.receive",
            ServerPort::Files => "pantry.files",
        }
    }

    pub fn from_zap_domain(domain: &[u8]) -> Option<ServerPort> {
        [ServerPort::Publish, ServerPort::Receive, ServerPort::Files]
            .into_iter()
            .find(|p| p.zap_domain().as_bytes() == domain)
    }

    pub const fn name(self) -> &'static str {
        match self {
            ServerPort::Publish => "PUB",
            ServerPort::Receive => "ROUTER",
            ServerPort::Files => "FILES",
        }
    }
}

/// How long a connection to the server may take to complete its handshake
/// (ZMQ_HANDSHAKE_IVL; libzmq's default is 30 s): a peer that stalls is
/// dropped, so stalled connections cannot pile up and use every descriptor.
pub const SERVER_HANDSHAKE_IVL_MS: i32 = 10_000;

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
    /// The server's sockets, with its secret key.
    pub fn server(secret_key: &PublicKey) -> SocketSecurity {
        SocketSecurity::CurveServer { secret_key: *secret_key }
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

    /// One of the server's listening sockets: its own ZAP domain (CURVE) and
    /// a bounded handshake time.
    pub fn server_socket(
        &self,
        ctx: &zmq::Context,
        kind: zmq::SocketType,
        port: ServerPort,
    ) -> zmq::Result<zmq::Socket> {
        let socket = self.socket(ctx, kind)?;
        socket.set_handshake_ivl(SERVER_HANDSHAKE_IVL_MS)?;
        if self.is_curve() {
            socket.set_zap_domain(port.zap_domain())?;
        }
        Ok(socket)
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
