//! ZAP (ZeroMQ RFC 27): reading libzmq's requests and writing replies.
//!
//! The socket thread answers every handshake of a known key itself, from its
//! copy of the key store; the rest (unknown keys, unreadable requests) goes
//! to the key store actor. An accepted connection carries the Z85 key as
//! its user id and the key's name and role as properties, so every message
//! from it says who sent it.

use std::collections::HashMap;

use pantry_shared::keys::{self, KnownKey, PublicKey, Role};
use pantry_shared::security::ServerPort;

use crate::messages::ZapRequest;

const ZAP_VERSION: &[u8] = b"1.0";

/// Names of the connection properties set on accepted connections.
pub const NAME_PROPERTY: &std::ffi::CStr = c"X-Pantry-Name";
pub const ROLE_PROPERTY: &std::ffi::CStr = c"X-Pantry-Role";

/// Reads `[routing id, "", version, request id, domain, address, identity,
/// mechanism, credentials...]`. A request that cannot be read still gets an
/// answer: the error is the 500 reply to send and the reason to log.
pub fn parse(frames: Vec<Vec<u8>>) -> Result<ZapRequest, (Vec<Vec<u8>>, String)> {
    if frames.len() < 8 || !frames[1].is_empty() || frames[2] != ZAP_VERSION {
        let reason = format!(
            "{} frames, version {:?}",
            frames.len(),
            frames.get(2).map(|v| String::from_utf8_lossy(v).into_owned())
        );
        let envelope = frames.iter().take(2).cloned().collect();
        let request_id = frames.get(3).cloned().unwrap_or_default();
        return Err((reply(envelope, &request_id, Status::Error, "malformed ZAP request", None), reason));
    }
    let text = |f: &Vec<u8>| String::from_utf8_lossy(f).into_owned();
    Ok(ZapRequest {
        envelope: frames[..2].to_vec(),
        request_id: frames[3].clone(),
        port: ServerPort::from_zap_domain(&frames[4]),
        address: text(&frames[5]),
        mechanism: text(&frames[7]),
        key: frames.get(8).and_then(|k| PublicKey::try_from(k.as_slice()).ok()),
    })
}

/// ZAP status codes (RFC 27). 300 is never used: it leaves the client
/// waiting for its handshake timeout.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    Ok,
    Denied,
    Error,
}

impl Status {
    fn code(self) -> &'static [u8] {
        match self {
            Status::Ok => b"200",
            Status::Denied => b"400",
            Status::Error => b"500",
        }
    }
}

/// Who a 200 reply admits: the connection's user id (the Z85 key) and
/// properties (name, role).
#[derive(Debug, Clone, Copy)]
pub struct Admitted<'a> {
    pub key: &'a str,
    /// Empty for an unbound or unknown key.
    pub name: &'a str,
    pub role: &'a str,
}

impl<'a> Admitted<'a> {
    pub fn known(known: &'a KnownKey) -> Admitted<'a> {
        Admitted { key: &known.public_key, name: known.name.as_deref().unwrap_or_default(), role: known.role.as_str() }
    }
}

/// The reply frames, envelope first. An admitted key's connection gets its
/// Z85 key as user id and its name and role as metadata.
pub fn reply(
    mut envelope: Vec<Vec<u8>>,
    request_id: &[u8],
    status: Status,
    text: &str,
    admitted: Option<Admitted>,
) -> Vec<Vec<u8>> {
    let (user_id, metadata) = match admitted {
        Some(who) => (who.key.as_bytes().to_vec(), metadata(&who)),
        None => (Vec::new(), Vec::new()),
    };
    envelope.extend([
        ZAP_VERSION.to_vec(),
        request_id.to_vec(),
        status.code().to_vec(),
        text.as_bytes().to_vec(),
        user_id,
        metadata,
    ]);
    envelope
}

/// RFC 27 metadata: per property a 1-byte name length, the name, a 4-byte
/// big-endian value length and the value.
fn metadata(who: &Admitted) -> Vec<u8> {
    let mut out = Vec::new();
    for (property, value) in [(NAME_PROPERTY, who.name), (ROLE_PROPERTY, who.role)] {
        let property = property.to_bytes();
        out.push(property.len() as u8);
        out.extend_from_slice(property);
        out.extend_from_slice(&(value.len() as u32).to_be_bytes());
        out.extend_from_slice(value.as_bytes());
    }
    out
}

/// The socket thread's copy of the key store: enough to answer handshakes
/// and to tell whose name a subscription topic is.
#[derive(Default)]
pub struct KeySnapshot {
    by_key: HashMap<PublicKey, KnownKey>,
    /// Name → Z85 key, for bound keys.
    by_name: HashMap<String, String>,
}

impl KeySnapshot {
    pub fn replace_all(&mut self, keys: Vec<KnownKey>) {
        self.by_key.clear();
        self.by_name.clear();
        keys.into_iter().for_each(|k| self.insert(k));
    }

    pub fn insert(&mut self, known: KnownKey) {
        let Some(key) = keys::decode_z85(&known.public_key) else { return };
        if let Some(old) = self.by_key.get(&key).and_then(|k| k.name.clone()) {
            self.by_name.remove(&old);
        }
        if let Some(name) = &known.name {
            self.by_name.insert(name.clone(), known.public_key.clone());
        }
        self.by_key.insert(key, known);
    }

    pub fn remove(&mut self, z85: &str) {
        let Some(key) = keys::decode_z85(z85) else { return };
        if let Some(name) = self.by_key.remove(&key).and_then(|k| k.name) {
            self.by_name.remove(&name);
        }
    }

    pub fn iter(&self) -> impl Iterator<Item = &KnownKey> {
        self.by_key.values()
    }

    pub fn by_z85(&self, z85: &str) -> Option<&KnownKey> {
        keys::decode_z85(z85).and_then(|k| self.by_key.get(&k))
    }

    /// The Z85 key whose name is `name`.
    pub fn owner_of(&self, name: &str) -> Option<&str> {
        self.by_name.get(name).map(String::as_str)
    }

    /// The answer to a CURVE handshake of a known key: every known key may
    /// connect to every port. `None` when the key store actor must decide.
    pub fn decide(&self, request: &ZapRequest) -> Option<(Status, &'static str, Option<&KnownKey>)> {
        if request.mechanism != "CURVE" {
            return Some((Status::Denied, "mechanism not allowed", None));
        }
        let known = self.by_key.get(&request.key?)?;
        match (known.role, request.port) {
            (Role::Admin | Role::Client | Role::Server, Some(_)) => Some((Status::Ok, "accepted", Some(known))),
            (_, None) => Some((Status::Denied, "unknown ZAP domain", None)),
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
            b"pantry.receive".to_vec(),
            b"127.0.0.1".to_vec(),
            vec![],
            mechanism.as_bytes().to_vec(),
        ];
        f.extend(creds);
        f
    }

    #[test]
    fn parses_a_curve_request() {
        let r = parse(request("CURVE", vec![vec![1; 32]])).unwrap();
        assert_eq!(r.mechanism, "CURVE");
        assert_eq!(r.address, "127.0.0.1");
        assert_eq!(r.port, Some(ServerPort::Receive));
        assert_eq!(r.key, Some([1; 32]));
        assert_eq!(r.envelope, vec![b"peer".to_vec(), vec![]]);
    }

    #[test]
    fn malformed_requests_still_get_a_500() {
        let (reply, _) = parse(vec![b"peer".to_vec(), vec![], b"2.0".to_vec(), b"9".to_vec()]).unwrap_err();
        assert_eq!(reply[0], b"peer");
        assert_eq!(reply[3], b"9");
        assert_eq!(reply[4], b"500");
    }

    #[test]
    fn metadata_is_rfc27_encoded() {
        let known = KnownKey { public_key: "k".into(), name: Some("web-1".into()), role: Role::Client, created: None };
        let m = metadata(&Admitted::known(&known));
        let name = NAME_PROPERTY.to_bytes();
        assert_eq!(m[0] as usize, name.len());
        let after_name = 1 + name.len();
        assert_eq!(&m[after_name..after_name + 4], &5u32.to_be_bytes());
        assert_eq!(&m[after_name + 4..after_name + 9], b"web-1");
    }

    #[test]
    fn known_keys_are_answered_from_the_snapshot() {
        let pair = pantry_shared::keys::KeyPair::generate().unwrap();
        let key = keys::decode_z85(&pair.public_key).unwrap();
        let mut snapshot = KeySnapshot::default();
        let known = KnownKey {
            public_key: pair.public_key.clone(),
            name: Some("web-1".into()),
            role: Role::Client,
            created: None,
        };
        snapshot.insert(known);
        let req = parse(request("CURVE", vec![key.to_vec()])).unwrap();
        assert_eq!(snapshot.decide(&req).map(|d| d.0), Some(Status::Ok));
        assert_eq!(snapshot.owner_of("web-1"), Some(pair.public_key.as_str()));
        let null = parse(request("NULL", vec![])).unwrap();
        assert_eq!(snapshot.decide(&null).map(|d| d.0), Some(Status::Denied));
        snapshot.remove(&pair.public_key);
        assert!(snapshot.decide(&req).is_none(), "unknown keys go to the key store actor");
        assert_eq!(snapshot.owner_of("web-1"), None);
    }
}
