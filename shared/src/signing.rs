//! Requests signed by admins, verified by agents: whoever holds the server
//! can route, drop or delay an operator's command, but not forge or alter
//! one.
//!
//! Every admin has an Ed25519 signing key pair beside its CURVE keys. The
//! admin signs each request that reaches agents; the signature (in
//! `custom.signature`) covers the type, the target as the admin gave it
//! (stream, identity patterns, `-F` expressions), the body, the uuid, when
//! it was signed and until when it holds, and names the signing key. The
//! server passes it on unchanged. An agent keeps a [`TrustList`] of the
//! admins whose keys it trusts, versioned and signed by an admin already
//! on it, and runs a request only if [`verify`] accepts it.

use std::collections::HashMap;
use std::fmt;
use std::time::{Duration, SystemTime};

use ed25519_dalek::{Signer as _, SigningKey, VerifyingKey};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use sha2::{Digest, Sha256};

use crate::facts::{FactFilter, Facts, FACTS_FIELD};
use crate::filter::{ClientFilter, Identities, IDENTITIES_FIELD};
use crate::message::{BodyPart, Message};

/// Where a request carries its signature.
pub const SIGNATURE_FIELD: &str = "signature";

/// How long a signature holds unless the admin says (`--sign-ttl`).
pub const DEFAULT_TTL: Duration = Duration::from_secs(300);

/// Clock skew an agent allows between its clock and the admin's.
pub const CLOCK_SKEW: Duration = Duration::from_secs(60);

/// An admin's signing key pair, hex.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SigningPair {
    pub public: String,
    pub private: String,
}

/// Why a key does not read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: not a signing key (64 hex digits)")]
pub struct BadKey {
    pub field: String,
}

fn key_bytes(hex_text: &str, field: &str) -> Result<[u8; 32], BadKey> {
    let bytes = hex::decode(hex_text.trim()).map_err(|_| BadKey { field: field.into() })?;
    bytes.try_into().map_err(|_| BadKey { field: field.into() })
}

impl SigningPair {
    /// A new pair from the system's random source.
    pub fn generate() -> Result<SigningPair, getrandom::Error> {
        let mut seed = [0u8; 32];
        getrandom::fill(&mut seed)?;
        let key = SigningKey::from_bytes(&seed);
        Ok(SigningPair { public: hex::encode(key.verifying_key().to_bytes()), private: hex::encode(seed) })
    }

    /// The pair from its two halves, checked against each other.
    pub fn from_hex(public: &str, private: &str) -> Result<SigningPair, BadKey> {
        let key = SigningKey::from_bytes(&key_bytes(private, "signing_private_key")?);
        if hex::encode(key.verifying_key().to_bytes()) != public.trim() {
            return Err(BadKey { field: "signing_public_key (not the private key's)".into() });
        }
        Ok(SigningPair { public: public.trim().to_owned(), private: private.trim().to_owned() })
    }

    fn signing_key(&self) -> SigningKey {
        SigningKey::from_bytes(&key_bytes(&self.private, "signing_private_key").unwrap_or([0; 32]))
    }

    fn sign_bytes(&self, bytes: &[u8]) -> String {
        hex::encode(self.signing_key().sign(bytes).to_bytes())
    }
}

fn verifies(public: &str, bytes: &[u8], signature: &str) -> bool {
    let (Ok(key), Ok(sig)) = (key_bytes(public, ""), hex::decode(signature)) else { return false };
    let (Ok(key), Ok(sig)) = (VerifyingKey::from_bytes(&key), <[u8; 64]>::try_from(sig.as_slice())) else {
        return false;
    };
    key.verify_strict(bytes, &ed25519_dalek::Signature::from_bytes(&sig)).is_ok()
}

/// Whom the admin meant a request for.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SignedTarget {
    /// `""`: everyone.
    pub stream: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub identities: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub facts: Vec<String>,
}

/// A request's signature, as it travels in `custom.signature`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Signature {
    /// The signing key (hex) and its admin's name (said in logs).
    pub signer: String,
    pub name: String,
    /// The wire type signed.
    pub kind: String,
    pub target: SignedTarget,
    /// The request's uuid (a job's, for a `Cancel`).
    pub uuid: String,
    /// Seconds since the epoch.
    pub signed_at: u64,
    pub expires_at: u64,
    /// SHA-256 of the body frames (empty for a `Cancel`: the job is the uuid).
    pub body: String,
    pub sig: String,
}

fn unix(t: SystemTime) -> u64 {
    t.duration_since(SystemTime::UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

/// SHA-256 over the body parts, each length-prefixed.
fn body_digest(message: &Message) -> String {
    let mut h = Sha256::new();
    for part in &message.body {
        let bytes = BodyPart::encode(part);
        h.update((bytes.len() as u64).to_be_bytes());
        h.update(&bytes);
    }
    hex::encode(h.finalize())
}

impl Signature {
    /// What the signature covers, unambiguously.
    fn signed_bytes(&self) -> Vec<u8> {
        let fields = [
            "pantry-request-v1",
            &self.signer,
            &self.kind,
            &self.target.stream,
            &self.target.identities.join("\n"),
            &self.target.facts.join("\n"),
            &self.uuid,
            &self.signed_at.to_string(),
            &self.expires_at.to_string(),
            &self.body,
        ];
        let mut out = Vec::new();
        for f in fields {
            out.extend_from_slice(&(f.len() as u64).to_be_bytes());
            out.extend_from_slice(f.as_bytes());
        }
        out
    }

    pub fn of(message: &Message) -> Option<Signature> {
        message.metadata.custom.get(SIGNATURE_FIELD).and_then(|v| serde_json::from_value(v.clone()).ok())
    }
}

fn strings(message: &Message, field: &str) -> Vec<String> {
    match message.metadata.custom.get(field) {
        Some(Value::Array(items)) => items.iter().filter_map(|v| v.as_str().map(str::to_owned)).collect(),
        _ => Vec::new(),
    }
}

/// Admin: signs `message` (its stream, identities and `-F` as they are
/// now, its body and uuid) as `name`, valid for `ttl`.
pub fn sign(message: &mut Message, pair: &SigningPair, name: &str, ttl: Duration) {
    sign_at(message, pair, name, SystemTime::now(), ttl);
}

/// [`sign`], as if at `now` (a test's old signature).
pub fn sign_at(message: &mut Message, pair: &SigningPair, name: &str, now: SystemTime, ttl: Duration) {
    let target = SignedTarget {
        stream: message.stream.clone(),
        identities: strings(message, IDENTITIES_FIELD),
        facts: strings(message, FACTS_FIELD),
    };
    let uuid = message.uuid().to_owned();
    let body = body_digest(message);
    let kind = message.message_type().to_owned();
    attach(message, pair, name, kind, target, uuid, body, unix(now), unix(now + ttl));
}

/// Admin: a signature for the `Cancel` of job `job` on `identities` (all
/// its agents when empty), put in the `JobControl` request that asks for
/// it; the server copies it into each `Cancel`.
pub fn sign_cancel(
    control: &mut Message,
    job: &str,
    identities: &[String],
    pair: &SigningPair,
    name: &str,
    ttl: Duration,
) {
    let now = SystemTime::now();
    let target = SignedTarget { stream: String::new(), identities: identities.to_vec(), facts: Vec::new() };
    let kind = crate::commands::cancel::TYPE.to_owned();
    attach(control, pair, name, kind, target, job.to_owned(), String::new(), unix(now), unix(now + ttl));
}

#[allow(clippy::too_many_arguments)]
fn attach(
    message: &mut Message,
    pair: &SigningPair,
    name: &str,
    kind: String,
    target: SignedTarget,
    uuid: String,
    body: String,
    signed_at: u64,
    expires_at: u64,
) {
    let mut signature = Signature {
        signer: pair.public.clone(),
        name: name.to_owned(),
        kind,
        target,
        uuid,
        signed_at,
        expires_at,
        body,
        sig: String::new(),
    };
    signature.sig = pair.sign_bytes(&signature.signed_bytes());
    message.metadata.custom.insert(SIGNATURE_FIELD.into(), serde_json::to_value(&signature).unwrap_or(Value::Null));
}

/// Why an agent refuses a request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    Unsigned,
    UnknownSigner,
    BadSignature,
    NotForThisAgent,
    Expired,
    Replayed,
}

impl fmt::Display for Refusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Refusal::Unsigned => "unsigned",
            Refusal::UnknownSigner => "unknown signer",
            Refusal::BadSignature => "bad signature",
            Refusal::NotForThisAgent => "not for this agent",
            Refusal::Expired => "expired",
            Refusal::Replayed => "replayed",
        })
    }
}

/// A refused request: why, and the signature it carried (named in logs).
#[derive(Debug)]
pub struct Rejected {
    pub refusal: Refusal,
    pub signature: Option<Box<Signature>>,
}

/// The uuids an agent ran, until their signatures expire: one seen again
/// is a replay.
#[derive(Debug, Default)]
pub struct Seen {
    until: HashMap<String, u64>,
    /// The size at which the expired ones are swept next: twice what was
    /// left at the last sweep, so a sweep costs O(1) per insertion.
    sweep_at: usize,
}

impl Seen {
    fn check_and_add(&mut self, uuid: &str, expires_at: u64, now: u64) -> bool {
        if self.until.len() >= self.sweep_at.max(1024) {
            self.until.retain(|_, until| *until + CLOCK_SKEW.as_secs() >= now);
            self.sweep_at = self.until.len() * 2;
        }
        if self.until.contains_key(uuid) {
            return false;
        }
        self.until.insert(uuid.to_owned(), expires_at);
        true
    }
}

/// Whether `uuid` (as the agent got it) is `signed` or a server's alias
/// of it (`UUID~BATCH`, a rollout's batch on another server).
fn same_job(uuid: &str, signed: &str) -> bool {
    uuid == signed || uuid.strip_prefix(signed).is_some_and(|rest| rest.starts_with('~'))
}

/// Agent: whether to run `message`, and who signed it. `me` is the agent
/// (its identity and streams), `facts` its own facts (for a signed `-F`).
pub fn verify(
    message: &Message,
    trusted: &TrustList,
    me: &ClientFilter,
    facts: Option<&Facts>,
    seen: &mut Seen,
    now: SystemTime,
) -> Result<Signature, Rejected> {
    let Some(s) = Signature::of(message) else { return Err(Rejected { refusal: Refusal::Unsigned, signature: None }) };
    let fail = |refusal: Refusal, s: &Signature| Err(Rejected { refusal, signature: Some(Box::new(s.clone())) });
    if !trusted.admins.iter().any(|a| a.signing_key == s.signer) {
        return fail(Refusal::UnknownSigner, &s);
    }
    if !verifies(&s.signer, &s.signed_bytes(), &s.sig) {
        return fail(Refusal::BadSignature, &s);
    }
    let is_cancel = message.message_type() == crate::commands::cancel::TYPE;
    // What arrived is what was signed: type, body (a cancel's job), uuid.
    let body_ok = if is_cancel {
        crate::commands::cancel::parse(message).is_some_and(|c| same_job(&c.job, &s.uuid))
    } else {
        s.body == body_digest(message) && same_job(message.uuid(), &s.uuid)
    };
    if s.kind != message.message_type() || !body_ok {
        return fail(Refusal::BadSignature, &s);
    }
    let identity = me.identity.as_deref().unwrap_or_default();
    let stream_ok = s.target.stream.is_empty() || me.streams().contains(&s.target.stream);
    let identity_ok = Identities::parse(&s.target.identities).ok().flatten().is_none_or(|ids| ids.matches(identity));
    let facts_ok = match FactFilter::parse(&s.target.facts) {
        Ok(None) => true,
        Ok(Some(filter)) => facts.is_some_and(|f| filter.matches(f)),
        Err(_) => false,
    };
    if !(stream_ok && identity_ok && facts_ok) {
        return fail(Refusal::NotForThisAgent, &s);
    }
    let now = unix(now);
    if now > s.expires_at + CLOCK_SKEW.as_secs() || s.signed_at > now + CLOCK_SKEW.as_secs() {
        return fail(Refusal::Expired, &s);
    }
    if !is_cancel && !seen.check_and_add(&s.uuid, s.expires_at, now) {
        return fail(Refusal::Replayed, &s);
    }
    Ok(s)
}

/// One admin an agent trusts.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TrustedAdmin {
    pub name: String,
    pub signing_key: String,
}

/// The admins an agent trusts: a new list replaces it only when signed by
/// a key on it and newer.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TrustList {
    pub version: u64,
    pub admins: Vec<TrustedAdmin>,
    /// The signing key that signed this version (hex).
    pub signed_by: String,
    pub signature: String,
}

/// Why a trust list is not taken.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TrustError {
    #[error("version {new} is not newer than {current}")]
    NotNewer { current: u64, new: u64 },
    #[error("signed by a key not on the current list")]
    UnknownSigner,
    #[error("its signature does not verify")]
    BadSignature,
}

impl TrustList {
    fn signed_bytes(&self) -> Vec<u8> {
        let admins = serde_json::to_string(&self.admins).unwrap_or_default();
        format!("pantry-trust-v1\n{}\n{}\n{admins}", self.version, self.signed_by).into_bytes()
    }

    /// `admins` as version `version`, signed by `pair`.
    pub fn signed(version: u64, admins: Vec<TrustedAdmin>, pair: &SigningPair) -> TrustList {
        let mut list = TrustList { version, admins, signed_by: pair.public.clone(), signature: String::new() };
        list.signature = pair.sign_bytes(&list.signed_bytes());
        list
    }

    /// Whether the list's own signature holds (by whichever key).
    pub fn self_consistent(&self) -> bool {
        verifies(&self.signed_by, &self.signed_bytes(), &self.signature)
    }

    /// Whether `new` may replace this list.
    pub fn accepts(&self, new: &TrustList) -> Result<(), TrustError> {
        if new.version <= self.version {
            return Err(TrustError::NotNewer { current: self.version, new: new.version });
        }
        if !self.admins.iter().any(|a| a.signing_key == new.signed_by) {
            return Err(TrustError::UnknownSigner);
        }
        if !new.self_consistent() {
            return Err(TrustError::BadSignature);
        }
        Ok(())
    }

    pub fn trusts(&self, signing_key: &str) -> bool {
        self.admins.iter().any(|a| a.signing_key == signing_key)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::commands::exec;

    fn me() -> ClientFilter {
        ClientFilter { identity: Some("web-1".into()), application: Some("shop".into()), ..Default::default() }
    }

    fn setup() -> (SigningPair, TrustList, Message) {
        let pair = SigningPair::generate().unwrap();
        let list =
            TrustList::signed(1, vec![TrustedAdmin { name: "alice".into(), signing_key: pair.public.clone() }], &pair);
        let mut m =
            exec::request(&exec::ExecRequest { program: "true".into(), args: vec![], shell: false, timeout: 5.0 });
        m.stream = "shop".into();
        sign(&mut m, &pair, "alice", DEFAULT_TTL);
        (pair, list, m)
    }

    fn check(m: &Message, list: &TrustList, seen: &mut Seen) -> Result<(), Refusal> {
        let m = Message::from_frames(&m.to_frames()).unwrap();
        verify(&m, list, &me(), None, seen, SystemTime::now()).map(|_| ()).map_err(|r| r.refusal)
    }

    #[test]
    fn a_signed_request_runs_once_and_anything_else_is_refused() {
        let (pair, list, m) = setup();
        let mut seen = Seen::default();
        assert_eq!(check(&m, &list, &mut seen), Ok(()));
        assert_eq!(check(&m, &list, &mut seen), Err(Refusal::Replayed));
        let mut unsigned = m.clone();
        unsigned.metadata.custom.remove(SIGNATURE_FIELD);
        assert_eq!(check(&unsigned, &list, &mut Seen::default()), Err(Refusal::Unsigned));
        let mut altered = m.clone();
        altered.body[0] =
            BodyPart::Json(serde_json::json!({"program": "rm", "args": ["-rf", "/"], "shell": false, "timeout": 5.0}));
        assert_eq!(check(&altered, &list, &mut Seen::default()), Err(Refusal::BadSignature));
        let other = SigningPair::generate().unwrap();
        let mut stranger = m.clone();
        sign(&mut stranger, &other, "mallory", DEFAULT_TTL);
        assert_eq!(check(&stranger, &list, &mut Seen::default()), Err(Refusal::UnknownSigner));
        let mut elsewhere = m.clone();
        elsewhere.stream = "db".into();
        sign(&mut elsewhere, &pair, "alice", DEFAULT_TTL);
        assert_eq!(check(&elsewhere, &list, &mut Seen::default()), Err(Refusal::NotForThisAgent));
        let mut old = m.clone();
        sign(&mut old, &pair, "alice", Duration::ZERO);
        let mut s = Signature::of(&old).unwrap();
        s.signed_at -= 1000;
        s.expires_at -= 1000;
        s.sig = pair.sign_bytes(&s.signed_bytes());
        old.metadata.custom.insert(SIGNATURE_FIELD.into(), serde_json::to_value(&s).unwrap());
        assert_eq!(check(&old, &list, &mut Seen::default()), Err(Refusal::Expired));
        // Moved to another uuid: a rollout batch's alias is the same job.
        let mut alias = m.clone();
        alias.metadata.uuid = format!("{}~2", m.uuid());
        assert_eq!(check(&alias, &list, &mut Seen::default()), Ok(()));
        alias.metadata.uuid = format!("{}x", m.uuid());
        assert_eq!(check(&alias, &list, &mut Seen::default()), Err(Refusal::BadSignature));
    }

    #[test]
    fn the_replay_set_forgets_only_what_expired() {
        let mut seen = Seen::default();
        for i in 0..3000 {
            // Half expired long ago, half still valid.
            let until = if i % 2 == 0 { 10 } else { 10_000 };
            assert!(seen.check_and_add(&format!("u{i}"), until, 5_000));
        }
        assert!(seen.until.len() < 3000, "swept: {}", seen.until.len());
        assert!(!seen.check_and_add("u2999", 10_000, 5_000), "a valid uuid stays a replay");
        assert!(seen.check_and_add("u0", 10_000, 5_000), "an expired one may come again");
    }

    #[test]
    fn a_new_list_needs_a_trusted_signer_and_a_newer_version() {
        let (alice, list, _) = setup();
        let bob = SigningPair::generate().unwrap();
        let admins = vec![
            TrustedAdmin { name: "alice".into(), signing_key: alice.public.clone() },
            TrustedAdmin { name: "bob".into(), signing_key: bob.public.clone() },
        ];
        let v2 = TrustList::signed(2, admins.clone(), &alice);
        assert_eq!(list.accepts(&v2), Ok(()));
        assert_eq!(list.accepts(&TrustList::signed(2, admins.clone(), &bob)), Err(TrustError::UnknownSigner));
        assert!(matches!(v2.accepts(&TrustList::signed(2, admins.clone(), &alice)), Err(TrustError::NotNewer { .. })));
        let mut forged = TrustList::signed(3, admins, &alice);
        forged.admins.pop();
        assert_eq!(v2.accepts(&forged), Err(TrustError::BadSignature));
        assert!(SigningPair::from_hex(&alice.public, &alice.private).is_ok());
        assert!(SigningPair::from_hex(&bob.public, &alice.private).is_err());
    }
}
