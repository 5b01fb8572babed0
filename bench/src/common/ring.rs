//! The key pairs of everyone who connects under CURVE: the server's, the
//! simulated agents', the admin's, the requesters', the handshake slots'.

use anyhow::Result;
use pantry_shared::keys::{KnownKey, Role};

use crate::common::agents::identity;
use crate::common::keys::{self, Pair};

/// The name the admin's key is enrolled under.
pub const ADMIN_NAME: &str = "bench-admin";

/// The name requester `k`'s key is enrolled under.
pub fn requester_name(k: usize) -> String {
    format!("bench-requester-{k}")
}

pub struct KeyRing {
    pub server: Pair,
    /// Agent `i`'s, enrolled under [`identity`]`(i)`.
    pub agents: Vec<Pair>,
    pub admin: Pair,
    pub requesters: Vec<Pair>,
    pub handshake: Vec<Pair>,
}

impl KeyRing {
    pub fn generate(agents: usize, requesters: usize, handshake: usize) -> Result<KeyRing> {
        Ok(KeyRing {
            server: Pair::generate()?,
            agents: keys::generate(agents)?,
            admin: Pair::generate()?,
            requesters: keys::generate(requesters)?,
            handshake: keys::generate(handshake)?,
        })
    }

    /// The keys a server knows: each agent's under its identity, the admin
    /// and the requesters as admins.
    pub fn enrolled(&self) -> Vec<KnownKey> {
        let mut all: Vec<KnownKey> = self
            .agents
            .iter()
            .enumerate()
            .map(|(i, p)| keys::known(p.public_z85(), identity(i), Role::Client))
            .collect();
        all.push(keys::known(self.admin.public_z85(), ADMIN_NAME.into(), Role::Admin));
        all.extend(
            self.requesters
                .iter()
                .enumerate()
                .map(|(k, p)| keys::known(p.public_z85(), requester_name(k), Role::Admin)),
        );
        all
    }

    /// The handshake slots' keys, as known keys.
    pub fn handshake_keys(&self) -> Vec<KnownKey> {
        self.handshake
            .iter()
            .enumerate()
            .map(|(i, p)| keys::known(p.public_z85(), format!("handshake-{i}"), Role::Client))
            .collect()
    }
}
