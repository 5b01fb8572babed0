//! CURVE key pairs for the simulated agents and requesters, filler keys for
//! a large key store, and the server's `server_keys.yml` written before the
//! server starts.

use std::io::Read;
use std::path::Path;

use anyhow::{Context as _, Result};
use pantry_shared::keys::{KnownKey, Role};
use serde::Serialize;

/// A CURVE key pair in binary form.
#[derive(Clone)]
pub struct Pair {
    pub public: [u8; 32],
    pub secret: [u8; 32],
}

impl Pair {
    pub fn generate() -> Result<Pair> {
        let pair = zmq::CurveKeyPair::new().context("cannot generate a CURVE key pair (libzmq without CURVE?)")?;
        Ok(Pair { public: pair.public_key, secret: pair.secret_key })
    }

    pub fn public_z85(&self) -> String {
        z85(&self.public)
    }

    pub fn secret_z85(&self) -> String {
        z85(&self.secret)
    }
}

pub fn z85(key: &[u8; 32]) -> String {
    pantry_shared::keys::z85(key)
}

/// `count` key pairs.
pub fn generate(count: usize) -> Result<Vec<Pair>> {
    (0..count).map(|_| Pair::generate()).collect()
}

/// A known key: its name is the sender name the server binds to it (an
/// agent's identity), its role what it may do.
pub fn known(public: String, name: String, role: Role) -> KnownKey {
    KnownKey { public_key: public, name: Some(name), role, created: None }
}

/// `count` random known client keys (`filler-0`, ...) nobody holds the
/// secret of: filler for a large key store.
pub fn filler(count: usize) -> Result<Vec<KnownKey>> {
    Ok(random_public_keys(count)?
        .into_iter()
        .enumerate()
        .map(|(i, k)| known(k, format!("filler-{i}"), Role::Client))
        .collect())
}

/// `count` random 32-byte public keys in Z85 (nobody holds their secret).
pub fn random_public_keys(count: usize) -> Result<Vec<String>> {
    let mut bytes = vec![0u8; count * 32];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut bytes))
        .context("cannot read /dev/urandom")?;
    Ok(bytes.chunks_exact(32).map(|c| z85(c.try_into().expect("32-byte chunk"))).collect())
}

#[derive(Serialize)]
struct ServerKeysFile<'a> {
    public_key: String,
    private_key: String,
    client_keys: &'a [KnownKey],
}

/// Writes `root_dir/security/curve/server_keys.yml` with the server's pair
/// and the known client keys.
pub fn write_server_keys(root_dir: &Path, server: &Pair, client_keys: &[KnownKey]) -> Result<()> {
    let file = ServerKeysFile { public_key: server.public_z85(), private_key: server.secret_z85(), client_keys };
    write_private(
        &root_dir.join("security").join("curve"),
        "server_keys.yml",
        &format!("---\n{}", serde_yaml::to_string(&file)?),
    )
}

/// A client's or an admin's key file: the server's public key and its own
/// pair.
pub fn client_key_file(server_key: &[u8; 32], pair: &Pair) -> String {
    format!(
        "---\nserver_public_key: '{}'\npublic_key: '{}'\nprivate_key: '{}'\n",
        z85(server_key),
        pair.public_z85(),
        pair.secret_z85()
    )
}

/// Writes `dir/name`, the directory 0700 and the file 0600, as the binaries
/// want their key files.
pub fn write_private(dir: &Path, name: &str, text: &str) -> Result<()> {
    use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
    std::fs::DirBuilder::new().recursive(true).mode(0o700).create(dir)?;
    let path = dir.join(name);
    std::fs::write(&path, text).with_context(|| format!("cannot write {}", path.display()))?;
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn server_keys_file_reads_back_with_the_server_store() {
        let root = tempfile::tempdir().unwrap();
        let server = Pair::generate().unwrap();
        let pairs = generate(3).unwrap();
        let mut clients: Vec<KnownKey> =
            pairs.iter().enumerate().map(|(i, p)| known(p.public_z85(), format!("a-{i}"), Role::Client)).collect();
        clients.extend(filler(5).unwrap());
        write_server_keys(root.path(), &server, &clients).unwrap();
        let store = pantry_server::key_file::ServerKeyStore::open(root.path()).unwrap();
        assert_eq!(store.known_count(), 8);
        assert_eq!(store.keys.public_key, server.public_z85());
        let found = store.lookup(&pairs[1].public).expect("a known key");
        assert_eq!((found.name.as_deref(), found.role), (Some("a-1"), Role::Client));
    }
}
