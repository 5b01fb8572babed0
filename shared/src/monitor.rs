//! ZeroMQ socket monitor events, read from an inproc PAIR socket.
//!
//! libzmq reports handshake outcomes only through the monitor: the admin and
//! the agent use it to say why a CURVE connection failed, the server to log
//! handshakes that never reach the ZAP handler (a NULL client against a
//! CURVE socket).

use std::sync::atomic::{AtomicUsize, Ordering};

const PROTOCOL_ERROR_CRYPTOGRAPHIC: u32 = 0x1100_0001;
const PROTOCOL_ERROR_MECHANISM_MISMATCH: u32 = 0x1100_0002;

/// One decoded monitor event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SocketEvent {
    Connected,
    Accepted,
    /// The server could not accept a connection (errno: EMFILE when out of
    /// descriptors).
    AcceptFailed(u32),
    Disconnected,
    ConnectRetried,
    HandshakeSucceeded,
    /// The peer closed during the handshake: for a CURVE client, usually a
    /// server that could not decrypt our HELLO (wrong server public key).
    HandshakeFailedNoDetail,
    /// A ZMTP protocol error, with libzmq's code.
    HandshakeFailedProtocol(u32),
    /// The ZAP handler refused (status code, e.g. 400).
    HandshakeFailedAuth(u32),
    Other(u16),
}

impl SocketEvent {
    /// Whether a protocol error code says the peer spoke another mechanism.
    pub fn is_mechanism_mismatch(code: u32) -> bool {
        code == PROTOCOL_ERROR_MECHANISM_MISMATCH
    }

    /// A short operator-readable reason for a protocol error code.
    pub fn protocol_reason(code: u32) -> String {
        match code {
            PROTOCOL_ERROR_MECHANISM_MISMATCH => "mechanism mismatch (the peer does not speak CURVE)".into(),
            PROTOCOL_ERROR_CRYPTOGRAPHIC => {
                "cryptographic error (the peer may have the wrong server public key)".into()
            }
            other => format!("protocol error 0x{other:08x}"),
        }
    }
}

/// An event and the endpoint it concerns (for a bound socket, the local
/// endpoint: libzmq does not tell the peer's address).
#[derive(Debug, Clone)]
pub struct MonitorEvent {
    pub event: SocketEvent,
    /// The raw event value (for ACCEPTED, the new connection's descriptor).
    pub value: u32,
    pub endpoint: String,
}

/// What the admin and the agent say when the server refused their key.
pub fn rejected_key_text(status: u32, public_key: &str) -> String {
    let reason = if status == 400 { "unknown client".to_owned() } else { format!("ZAP status {status}") };
    format!("the server rejected this client's key ({reason}): {public_key}")
}

/// What they say when no CURVE handshake completes: the server could not
/// decrypt us, so it cannot even log it.
pub fn no_handshake_text(server: &str, key_file: &std::path::Path) -> String {
    format!(
        "no CURVE handshake completed with {server}; the server public key in {} is the likely cause \
         (compare it with the public key the server logs at startup)",
        key_file.display()
    )
}

static NEXT_MONITOR: AtomicUsize = AtomicUsize::new(0);

/// Events a connecting socket (agent, admin) wants: handshake outcomes and
/// connection state.
pub const CLIENT_EVENTS: &[zmq::SocketEvent] = &[
    zmq::SocketEvent::CONNECTED,
    zmq::SocketEvent::DISCONNECTED,
    zmq::SocketEvent::CONNECT_RETRIED,
    zmq::SocketEvent::HANDSHAKE_SUCCEEDED,
    zmq::SocketEvent::HANDSHAKE_FAILED_NO_DETAIL,
    zmq::SocketEvent::HANDSHAKE_FAILED_PROTOCOL,
    zmq::SocketEvent::HANDSHAKE_FAILED_AUTH,
];

/// Events a listening socket (the server) wants: accepted and closed
/// connections and failed handshakes; a successful one says nothing the
/// ZAP handler did not, and would only wake the socket thread.
pub const SERVER_EVENTS: &[zmq::SocketEvent] = &[
    zmq::SocketEvent::ACCEPTED,
    zmq::SocketEvent::ACCEPT_FAILED,
    zmq::SocketEvent::DISCONNECTED,
    zmq::SocketEvent::HANDSHAKE_FAILED_NO_DETAIL,
    zmq::SocketEvent::HANDSHAKE_FAILED_PROTOCOL,
    zmq::SocketEvent::HANDSHAKE_FAILED_AUTH,
];

/// Starts monitoring `socket` for `events` and returns the PAIR socket to
/// read them from. Must be created in the same context as `socket`.
pub fn monitor(ctx: &zmq::Context, socket: &zmq::Socket, events: &[zmq::SocketEvent]) -> zmq::Result<zmq::Socket> {
    let endpoint =
        format!("inproc://pantry-monitor-{}-{}", std::process::id(), NEXT_MONITOR.fetch_add(1, Ordering::Relaxed));
    let mask = events.iter().fold(0i32, |mask, e| mask | i32::from(e.to_raw()));
    socket.monitor(&endpoint, mask)?;
    let pair = ctx.socket(zmq::PAIR)?;
    pair.set_linger(0)?;
    pair.connect(&endpoint)?;
    Ok(pair)
}

/// Reads one event if there is one, without blocking.
pub fn read(pair: &zmq::Socket) -> Option<MonitorEvent> {
    let frames = pair.recv_multipart(zmq::DONTWAIT).ok()?;
    parse(&frames)
}

/// Decodes the two frames of a monitor event: `u16 event, u32 value`
/// (little-endian) and the endpoint.
pub fn parse(frames: &[Vec<u8>]) -> Option<MonitorEvent> {
    let head = frames.first()?;
    if head.len() < 6 {
        return None;
    }
    let id = u16::from_le_bytes([head[0], head[1]]);
    let value = u32::from_le_bytes([head[2], head[3], head[4], head[5]]);
    let endpoint = frames.get(1).map(|e| String::from_utf8_lossy(e).into_owned()).unwrap_or_default();
    let is = |e: zmq::SocketEvent| id == e.to_raw();
    let event = if is(zmq::SocketEvent::CONNECTED) {
        SocketEvent::Connected
    } else if is(zmq::SocketEvent::ACCEPTED) {
        SocketEvent::Accepted
    } else if is(zmq::SocketEvent::ACCEPT_FAILED) {
        SocketEvent::AcceptFailed(value)
    } else if is(zmq::SocketEvent::DISCONNECTED) {
        SocketEvent::Disconnected
    } else if is(zmq::SocketEvent::CONNECT_RETRIED) {
        SocketEvent::ConnectRetried
    } else if is(zmq::SocketEvent::HANDSHAKE_SUCCEEDED) {
        SocketEvent::HandshakeSucceeded
    } else if is(zmq::SocketEvent::HANDSHAKE_FAILED_NO_DETAIL) {
        SocketEvent::HandshakeFailedNoDetail
    } else if is(zmq::SocketEvent::HANDSHAKE_FAILED_PROTOCOL) {
        SocketEvent::HandshakeFailedProtocol(value)
    } else if is(zmq::SocketEvent::HANDSHAKE_FAILED_AUTH) {
        SocketEvent::HandshakeFailedAuth(value)
    } else {
        SocketEvent::Other(id)
    };
    Some(MonitorEvent { event, value, endpoint })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_auth_failure() {
        let mut head = zmq::SocketEvent::HANDSHAKE_FAILED_AUTH.to_raw().to_le_bytes().to_vec();
        head.extend(400u32.to_le_bytes());
        let e = parse(&[head, b"tcp://127.0.0.1:1".to_vec()]).unwrap();
        assert_eq!(e.event, SocketEvent::HandshakeFailedAuth(400));
        assert_eq!(e.endpoint, "tcp://127.0.0.1:1");
        assert!(parse(&[vec![1, 2]]).is_none());
        assert!(parse(&[]).is_none());
    }
}
