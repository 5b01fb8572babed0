//! The ZAP handler (ZeroMQ RFC 27): decides who may connect under CURVE.
//!
//! libzmq asks it about every handshake on the server's sockets. The socket
//! thread parses each request and sends it here; the answer goes back
//! through the socket listener. It accepts only the CURVE mechanism and only
//! keys in the key store (a hash map: as fast with 100,000 keys as with 10).
//! An accepted client's connection carries its Z85 key as user id and its
//! key's name and role as properties, so every message says who sent it.
//! While no client is known, the first one is trusted and stored before the
//! reply (trust on first use); requests are handled one at a time, so if two
//! race exactly one wins. Every request is answered.

use actix::prelude::*;
use pantry_shared::keys::{self, KeyChangeError, KeyPair, KnownKey, PublicKey, Role, ServerKeyStore};
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
        if frames.len() < 8 || !frames[1].is_empty() || frames[2] != ZAP_VERSION {
            let reason = format!("{} frames, version {:?}", frames.len(), frames.get(2).map(|v| hex_or_text(v)));
            let mut reply: Vec<Vec<u8>> = frames.iter().take(2).cloned().collect();
            let request_id = frames.get(3).cloned().unwrap_or_default();
            reply.extend(reply_frames(&request_id, b"500", "malformed ZAP request", None));
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

fn reply_frames(request_id: &[u8], status: &[u8], text: &str, accepted: Option<&KnownKey>) -> Vec<Vec<u8>> {
    let (user_id, metadata) = match accepted {
        Some(known) => (known.public_key.as_bytes().to_vec(), metadata(known)),
        None => (Vec::new(), Vec::new()),
    };
    vec![ZAP_VERSION.to_vec(), request_id.to_vec(), status.to_vec(), text.as_bytes().to_vec(), user_id, metadata]
}

/// Connection properties every message from an accepted client carries:
/// its key's name and role (RFC 27 metadata: 1-byte name length, name,
/// 4-byte big-endian value length, value).
fn metadata(known: &KnownKey) -> Vec<u8> {
    let mut out = Vec::new();
    for (name, value) in [(NAME_PROPERTY, known.name.as_str()), (ROLE_PROPERTY, known.role.as_str())] {
        out.push(name.len() as u8);
        out.extend_from_slice(name.as_bytes());
        out.extend_from_slice(&(value.len() as u32).to_be_bytes());
        out.extend_from_slice(value.as_bytes());
    }
    out
}

/// Names of the connection properties set by [`metadata`].
pub const NAME_PROPERTY: &str = "X-Pantry-Name";
pub const ROLE_PROPERTY: &str = "X-Pantry-Role";

/// The handler actor. It owns the server's key store.
pub struct ZapHandler {
    store: ServerKeyStore,
    listener: Addr<SocketListener>,
    trust_first_client: bool,
    log: Logger,
}

/// A decision: ZAP status code, our reason, and the key when accepted.
struct Decision {
    status: &'static [u8],
    reason: String,
    accepted: Option<KnownKey>,
}

impl Decision {
    fn reject(reason: impl Into<String>) -> Decision {
        Decision { status: b"400", reason: reason.into(), accepted: None }
    }
}

impl ZapHandler {
    pub fn new(store: ServerKeyStore, listener: Addr<SocketListener>, trust_first_client: bool, log: Logger) -> Self {
        ZapHandler { store, listener, trust_first_client, log }
    }

    fn decide(&mut self, request: &ZapRequest, key: Option<&PublicKey>) -> Decision {
        if request.mechanism != "CURVE" {
            return Decision::reject(format!("mechanism {} not allowed", request.mechanism));
        }
        let Some(key) = key else {
            return Decision::reject("malformed CURVE credentials");
        };
        if let Some(known) = self.known(key) {
            return Decision { status: b"200", reason: "accepted".into(), accepted: Some(known) };
        }
        if self.trust_first_client && self.store.known_count() == 0 {
            let z85 = keys::z85(key);
            return match self.store.add(key, "admin", Role::Admin) {
                Ok(known) => {
                    info!(self.log, "trusted the first client on first use and stored its key as an admin";
                        "key" => &z85, "name" => &known.name, "address" => &request.address,
                        "file" => %self.store.path().display());
                    Decision { status: b"200", reason: "accepted (trusted on first use)".into(), accepted: Some(known) }
                }
                Err(e) => {
                    error!(self.log, "cannot store the first client's key; handshake refused";
                        "key" => &z85, "error" => %e);
                    Decision { status: b"500", reason: "key store write failed".into(), accepted: None }
                }
            };
        }
        Decision::reject("unknown client")
    }

    /// The key's entry; an unknown key makes the store re-read the file
    /// first if another process changed it (`keys:create-admin`).
    fn known(&mut self, key: &PublicKey) -> Option<KnownKey> {
        if let Some(known) = self.store.lookup(key) {
            return Some(known.clone());
        }
        match self.store.reload_if_changed() {
            Ok(true) => {
                info!(self.log, "key store changed on disk; reloaded";
                    "file" => %self.store.path().display(), "known_clients" => self.store.known_count());
                self.store.lookup(key).cloned()
            }
            Ok(false) => None,
            Err(e) => {
                error!(self.log, "cannot reload the key store; keeping the keys in memory"; "error" => %e);
                None
            }
        }
    }
}

impl Actor for ZapHandler {
    type Context = Context<Self>;
}

impl Handler<ZapRequest> for ZapHandler {
    type Result = ();

    fn handle(&mut self, request: ZapRequest, _: &mut Context<Self>) {
        let key = request.credentials.first().and_then(|k| PublicKey::try_from(k.as_slice()).ok());
        let decision = self.decide(&request, key.as_ref());
        let key = key.map(|k| keys::z85(&k)).unwrap_or_else(|| "-".into());
        let outcome =
            if decision.status == b"200" { decision.reason.clone() } else { format!("rejected: {}", decision.reason) };
        let name = decision.accepted.as_ref().map(|k| k.name.as_str()).unwrap_or("-");
        debug!(self.log, "handshake {}", outcome;
            "name" => name, "key" => key, "address" => &request.address, "mechanism" => &request.mechanism);
        let mut frames = request.envelope;
        frames.extend(reply_frames(&request.request_id, decision.status, &decision.reason, decision.accepted.as_ref()));
        self.listener.do_send(ZapReply { frames });
    }
}

/// Make a new key pair, store its public key (on disk) under `name` with
/// `role`, and return it with the server's public key.
#[derive(Message)]
#[rtype(result = "Result<(String, KeyPair, KnownKey), KeyChangeError>")]
pub struct CreateKey {
    /// None: a free `client-N` name.
    pub name: Option<String>,
    pub role: Role,
}

impl Handler<CreateKey> for ZapHandler {
    type Result = Result<(String, KeyPair, KnownKey), KeyChangeError>;

    fn handle(&mut self, msg: CreateKey, _: &mut Context<Self>) -> Self::Result {
        let pair = KeyPair::generate()?;
        let key = keys::decode_key(&pair.public_key, self.store.path(), "public_key")?;
        let name = match msg.name {
            Some(name) => name,
            None => {
                self.store.reload_if_changed()?;
                self.store.free_name(msg.role.as_str())
            }
        };
        let known = self.store.add(&key, &name, msg.role)?;
        info!(self.log, "created a key";
            "name" => &known.name, "role" => known.role.as_str(), "key" => &known.public_key,
            "known_clients" => self.store.known_count());
        Ok((self.store.keys.public_key.clone(), pair, known))
    }
}

/// Every known key.
#[derive(Message)]
#[rtype(result = "Result<Vec<KnownKey>, KeyStoreError>")]
pub struct ListKeys;

impl Handler<ListKeys> for ZapHandler {
    type Result = Result<Vec<KnownKey>, KeyStoreError>;

    fn handle(&mut self, _: ListKeys, _: &mut Context<Self>) -> Self::Result {
        self.store.reload_if_changed()?;
        Ok(self.store.entries().to_vec())
    }
}

/// Remove a key by name or Z85 key; its next handshake fails.
#[derive(Message)]
#[rtype(result = "Result<KnownKey, KeyChangeError>")]
pub struct RevokeKey {
    pub name_or_key: String,
}

impl Handler<RevokeKey> for ZapHandler {
    type Result = Result<KnownKey, KeyChangeError>;

    fn handle(&mut self, msg: RevokeKey, _: &mut Context<Self>) -> Self::Result {
        let revoked = self.store.revoke(&msg.name_or_key)?;
        info!(self.log, "revoked a key";
            "name" => &revoked.name, "role" => revoked.role.as_str(), "key" => &revoked.public_key);
        Ok(revoked)
    }
}

/// Re-read the key store from disk if it changed (SIGHUP).
#[derive(Message)]
#[rtype(result = "()")]
pub struct ReloadKeys;

impl Handler<ReloadKeys> for ZapHandler {
    type Result = ();

    fn handle(&mut self, _: ReloadKeys, _: &mut Context<Self>) {
        match self.store.reload_if_changed() {
            Ok(true) => info!(self.log, "key store reloaded"; "known_clients" => self.store.known_count()),
            Ok(false) => {}
            Err(e) => error!(self.log, "cannot reload the key store; keeping the keys in memory"; "error" => %e),
        }
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

#[cfg(test)]
mod metadata_tests {
    use super::*;

    #[test]
    fn metadata_is_rfc27_encoded() {
        let known = KnownKey { public_key: "k".into(), name: "web-1".into(), role: Role::Client, created: None };
        let m = metadata(&known);
        assert_eq!(m[0] as usize, NAME_PROPERTY.len());
        let after_name = 1 + NAME_PROPERTY.len();
        assert_eq!(&m[after_name..after_name + 4], &5u32.to_be_bytes());
        assert_eq!(&m[after_name + 4..after_name + 9], b"web-1");
    }
}
