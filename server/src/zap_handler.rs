//! The ZAP handler (ZeroMQ RFC 27): decides who may connect under CURVE.
//!
//! libzmq asks it about every handshake on the server's sockets. The socket
//! thread parses each request and sends it here; the answer goes back
//! through the socket listener. It accepts only the CURVE mechanism and only
//! keys in the key store (a hash set: as fast with 100,000 keys as with 10).
//! While no client is known, the first one is trusted and stored before the
//! reply (trust on first use); requests are handled one at a time, so if two
//! race exactly one wins. Every request is answered.

use actix::prelude::*;
use pantry_shared::keys::{self, KeyPair, PublicKey, ServerKeyStore};
use pantry_shared::KeyStoreError;
use slog::{debug, error, info, Logger};

use crate::socket_listener::{SocketListener, ZapReply};

const ZAP_VERSION: &[u8] = b"1.0";

/// One ZAP request from libzmq.
#[derive(Message, Debug)]
#[rtype(result = "()")]
pub struct ZapRequest {
    /// Routing id and empty delimiter of the ZAP ROUTER socket.
    envelope: Vec<Vec<u8>>,
    request_id: Vec<u8>,
    address: String,
    mechanism: String,
    credentials: Vec<Vec<u8>>,
}

impl ZapRequest {
    /// Parses `[routing id, "", version, request id, domain, address,
    /// identity, mechanism, credentials...]`. A request that cannot be read
    /// still gets an answer: the error carries a 500 reply to send.
    pub fn parse(mut frames: Vec<Vec<u8>>) -> Result<ZapRequest, (Vec<Vec<u8>>, String)> {
        if frames.len() < 8 || frames[1].len() != 0 || frames[2] != ZAP_VERSION {
            let reason = format!("{} frames, version {:?}", frames.len(), frames.get(2).map(|v| hex_or_text(v)));
            let mut reply: Vec<Vec<u8>> = frames.iter().take(2).cloned().collect();
            let request_id = frames.get(3).cloned().unwrap_or_default();
            reply.extend(reply_frames(&request_id, b"500", "malformed ZAP request", ""));
            return Err((reply, reason));
        }
        let credentials = frames.split_off(8);
        let text = |f: &Vec<u8>| String::from_utf8_lossy(f).into_owned();
        Ok(ZapRequest {
            request_id: frames[3].clone(),
            address: text(&frames[5]),
            mechanism: text(&frames[7]),
            envelope: frames[..2].to_vec(),
            credentials,
        })
    }
}

fn hex_or_text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

fn reply_frames(request_id: &[u8], status: &[u8], text: &str, user_id: &str) -> Vec<Vec<u8>> {
    vec![
        ZAP_VERSION.to_vec(),
        request_id.to_vec(),
        status.to_vec(),
        text.as_bytes().to_vec(),
        user_id.as_bytes().to_vec(),
        Vec::new(),
    ]
}

/// The handler actor. It owns the server's key store.
pub struct ZapHandler {
    store: ServerKeyStore,
    listener: Addr<SocketListener>,
    trust_first_client: bool,
    log: Logger,
}

impl ZapHandler {
    pub fn new(store: ServerKeyStore, listener: Addr<SocketListener>, log: Logger) -> ZapHandler {
        ZapHandler { store, listener, trust_first_client: true, log }
    }

    /// The decision: status code, status text (our reason) and user id.
    fn decide(&mut self, request: &ZapRequest) -> (&'static [u8], String, String) {
        if request.mechanism != "CURVE" {
            return (b"400", format!("mechanism {} not allowed", request.mechanism), String::new());
        }
        let Some(key) = request.credentials.first().and_then(|k| PublicKey::try_from(k.as_slice()).ok()) else {
            return (b"400", "malformed CURVE credentials".into(), String::new());
        };
        let z85 = keys::z85(&key);
        if self.store.is_known(&key) {
            return (b"200", "accepted".into(), z85);
        }
        if self.trust_first_client && self.store.known_count() == 0 {
            return match self.store.add_client(&key) {
                Ok(_) => {
                    info!(self.log, "trusted the first client on first use and stored its key";
                        "key" => &z85, "address" => &request.address, "file" => %self.store.path().display());
                    (b"200", "accepted (trusted on first use)".into(), z85)
                }
                Err(e) => {
                    error!(self.log, "cannot store the first client's key; handshake refused";
                        "key" => &z85, "error" => %e);
                    (b"500", "key store write failed".into(), String::new())
                }
            };
        }
        (b"400", "unknown client".into(), String::new())
    }
}

impl Actor for ZapHandler {
    type Context = Context<Self>;
}

impl Handler<ZapRequest> for ZapHandler {
    type Result = ();

    fn handle(&mut self, request: ZapRequest, _: &mut Context<Self>) {
        let (status, reason, user_id) = self.decide(&request);
        let key = match request.credentials.first().and_then(|k| PublicKey::try_from(k.as_slice()).ok()) {
            Some(k) => keys::z85(&k),
            None => "-".into(),
        };
        let outcome = if status == b"200" { reason.clone() } else { format!("rejected: {reason}") };
        debug!(self.log, "handshake {}", outcome;
            "key" => key, "address" => &request.address, "mechanism" => &request.mechanism);
        let mut frames = request.envelope;
        frames.extend(reply_frames(&request.request_id, status, &reason, &user_id));
        self.listener.do_send(ZapReply { frames });
    }
}

/// Make a new client key pair, store its public key (on disk), and return
/// it with the server's public key.
#[derive(Message)]
#[rtype(result = "Result<(String, KeyPair), KeyStoreError>")]
pub struct CreateClientKey;

impl Handler<CreateClientKey> for ZapHandler {
    type Result = Result<(String, KeyPair), KeyStoreError>;

    fn handle(&mut self, _: CreateClientKey, _: &mut Context<Self>) -> Self::Result {
        let pair = KeyPair::generate()?;
        let key = keys::decode_key(&pair.public_key, self.store.path(), "public_key")?;
        self.store.add_client(&key)?;
        info!(self.log, "created a client key"; "key" => &pair.public_key, "known_clients" => self.store.known_count());
        Ok((self.store.keys.public_key.clone(), pair))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(mechanism: &str, creds: Vec<Vec<u8>>) -> Vec<Vec<u8>> {
        let mut f = vec![
            b"peer".to_vec(),
            vec![],
            b"1.0".to_vec(),
            b"7".to_vec(),
            b"pantry".to_vec(),
            b"127.0.0.1".to_vec(),
            vec![],
            mechanism.as_bytes().to_vec(),
        ];
        f.extend(creds);
        f
    }

    #[test]
    fn parses_a_curve_request() {
        let r = ZapRequest::parse(request("CURVE", vec![vec![1; 32]])).unwrap();
        assert_eq!(r.mechanism, "CURVE");
        assert_eq!(r.address, "127.0.0.1");
        assert_eq!(r.credentials, vec![vec![1; 32]]);
        assert_eq!(r.envelope, vec![b"peer".to_vec(), vec![]]);
    }

    #[test]
    fn malformed_requests_still_get_a_500() {
        let (reply, _) = ZapRequest::parse(vec![b"peer".to_vec(), vec![], b"2.0".to_vec(), b"9".to_vec()]).unwrap_err();
        assert_eq!(reply[0], b"peer");
        assert_eq!(reply[3], b"9");
        assert_eq!(reply[4], b"500");
    }
}
