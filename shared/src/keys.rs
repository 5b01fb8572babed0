//! CURVE key files (SPEC §6): the server's `server_keys.yml` and a client's
//! `client_keys.yml`, both under `root_dir/security/curve/`.
//!
//! Keys are 40-character Z85 strings of 32 bytes. The directory is 0700 and
//! files are 0600. Every write goes to a temporary file in the same
//! directory, is fsynced, then renamed over the old file (and the directory
//! fsynced), so a crash leaves either the old file or the new one.

use std::fs;
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::error::KeyStoreError;

pub const SERVER_KEYS_FILE: &str = "server_keys.yml";
pub const CLIENT_KEYS_FILE: &str = "client_keys.yml";

/// A public key in binary form, as ZAP hands it over.
pub type PublicKey = [u8; 32];

/// Whether the linked libzmq can do CURVE.
pub fn curve_available() -> bool {
    zmq::has("curve") == Some(true)
}

/// Fails with a message that says how to fix it when CURVE is missing.
pub fn require_curve() -> Result<(), KeyStoreError> {
    if curve_available() {
        Ok(())
    } else {
        Err(KeyStoreError::CurveUnavailable)
    }
}

/// `root_dir/security/curve`.
pub fn curve_dir(root_dir: &Path) -> PathBuf {
    root_dir.join("security").join("curve")
}

/// Z85 text of a binary key.
pub fn z85(key: &PublicKey) -> String {
    // 32 bytes is a multiple of 4: encoding cannot fail.
    crate::z85::encode(key).unwrap_or_default()
}

/// Decode a Z85 key, naming the file and field when it is not 32 bytes.
pub fn decode_key(text: &str, path: &Path, field: &str) -> Result<PublicKey, KeyStoreError> {
    let bad = |reason: &str| KeyStoreError::BadKey {
        path: path.to_owned(),
        field: field.to_owned(),
        reason: reason.to_owned(),
    };
    if text.len() != 40 {
        return Err(bad(&format!("expected a 40-character Z85 key, got {} characters", text.len())));
    }
    if let Some(c) = text.chars().find(|c| !crate::z85::is_z85(*c)) {
        return Err(bad(&format!("`{c}` is not a Z85 character")));
    }
    let bytes = crate::z85::decode(text).ok_or_else(|| bad("not valid Z85"))?;
    bytes.try_into().map_err(|_| bad("does not decode to 32 bytes"))
}

/// A CURVE key pair in Z85.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyPair {
    pub public_key: String,
    pub private_key: String,
}

impl KeyPair {
    /// The pair stored in a key file (both halves checked), or a new one
    /// when the file has neither; true when generated.
    pub fn from_file_or_generate(
        public_key: Option<String>,
        private_key: Option<String>,
        path: &Path,
    ) -> Result<(KeyPair, bool), KeyStoreError> {
        let (pair, generated) = match (public_key, private_key) {
            (Some(public_key), Some(private_key)) => (KeyPair { public_key, private_key }, false),
            (None, None) => (KeyPair::generate()?, true),
            (Some(_), None) => return Err(missing(path, "private_key")),
            (None, Some(_)) => return Err(missing(path, "public_key")),
        };
        decode_key(&pair.public_key, path, "public_key")?;
        decode_key(&pair.private_key, path, "private_key")?;
        Ok((pair, generated))
    }

    pub fn generate() -> Result<KeyPair, KeyStoreError> {
        require_curve()?;
        let pair = zmq::CurveKeyPair::new().map_err(KeyStoreError::Generate)?;
        Ok(KeyPair { public_key: z85(&pair.public_key), private_key: z85(&pair.secret_key) })
    }
}

/// Creates `dir` (and parents) and makes it 0700.
pub fn ensure_private_dir(dir: &Path) -> Result<(), KeyStoreError> {
    let err = |source| KeyStoreError::Write { path: dir.to_owned(), source };
    fs::DirBuilder::new().recursive(true).mode(0o700).create(dir).map_err(err)?;
    fs::set_permissions(dir, fs::Permissions::from_mode(0o700)).map_err(err)
}

/// Writes `contents` to `path` with mode 0600 so that a crash never leaves a
/// half-written file: temporary file, fsync, rename, fsync of the directory.
pub fn write_atomically(path: &Path, contents: &[u8]) -> Result<(), KeyStoreError> {
    let err = |source| KeyStoreError::Write { path: path.to_owned(), source };
    let dir = path.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
    let mut tmp = tempfile::Builder::new()
        .prefix(TEMPORARY_PREFIX)
        .permissions(fs::Permissions::from_mode(0o600))
        .tempfile_in(dir)
        .map_err(err)?;
    tmp.write_all(contents).map_err(err)?;
    tmp.as_file().sync_all().map_err(err)?;
    tmp.persist(path).map_err(|e| err(e.error))?;
    fs::File::open(dir).and_then(|d| d.sync_all()).map_err(err)
}

/// Prefix of the temporary files [`write_atomically`] renames into place.
const TEMPORARY_PREFIX: &str = ".pantry-keys-";

/// Removes temporary key files a killed process left in `dir`; returns
/// their names. Call it while no other writer can be at work (under the
/// store's lock).
pub fn remove_leftover_temporaries(dir: &Path) -> Vec<String> {
    let Ok(entries) = fs::read_dir(dir) else { return Vec::new() };
    entries
        .filter_map(Result::ok)
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|name| name.starts_with(TEMPORARY_PREFIX) && fs::remove_file(dir.join(name)).is_ok())
        .collect()
}

/// A key file's contents; `None` when the file does not exist. An empty
/// file is an error: it is what a failed copy or a full disk leaves, and
/// reading it as "no keys" would silently replace the keys.
pub fn read_yaml<T: for<'de> Deserialize<'de>>(path: &Path) -> Result<Option<T>, KeyStoreError> {
    let text = match fs::read_to_string(path) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(source) => return Err(KeyStoreError::Read { path: path.to_owned(), source }),
    };
    if text.trim().is_empty() {
        return Err(KeyStoreError::Invalid {
            path: path.to_owned(),
            reason: "the file is empty (only a missing file means \"generate new keys\"); restore it from a backup \
                     or remove it"
                .into(),
        });
    }
    serde_yaml::from_str(&text)
        .map(Some)
        .map_err(|e| KeyStoreError::Invalid { path: path.to_owned(), reason: e.to_string() })
}

pub fn write_yaml<T: Serialize>(path: &Path, value: &T) -> Result<(), KeyStoreError> {
    let text = serde_yaml::to_string(value)
        .map_err(|e| KeyStoreError::Invalid { path: path.to_owned(), reason: e.to_string() })?;
    write_atomically(path, format!("---\n{text}").as_bytes())
}

/// What a known key may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// May run every command, including key management.
    Admin,
    /// An agent: registers, answers, and may send `echo`.
    Client,
    /// Another server of a cluster (the key pair every server shares): may
    /// only pass on the commands an admin sent to clients. Never read from
    /// a key store file nor made by `client:create`: a cluster knows its
    /// servers' key by itself.
    #[serde(skip_deserializing)]
    Server,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Admin => "admin",
            Role::Client => "client",
            Role::Server => "server",
        }
    }

    pub fn parse(text: &str) -> Option<Role> {
        match text {
            "admin" => Some(Role::Admin),
            "client" => Some(Role::Client),
            _ => None,
        }
    }
}

/// One known client key.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KnownKey {
    pub public_key: String,
    /// The identity (client) or name (admin) the key speaks for. A client
    /// key without one is unbound: its first registration binds it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    pub role: Role,
    /// RFC 3339, when it was added.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub created: Option<String>,
}

/// An enrollment token as the server keeps it: never the token itself,
/// only its SHA-256.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Token {
    /// Lowercase hex SHA-256 of the token.
    pub hash: String,
    /// The name every key enrolled with it gets (one use), or `None`: the
    /// agent's identity.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    pub uses_left: u32,
    /// RFC 3339.
    pub expires: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub created: Option<String>,
}

/// Hex digits of a token's hash that name it (`client:tokens`,
/// `client:token --revoke ID`): the hash says nothing of the token.
pub const TOKEN_ID_LEN: usize = 12;

impl Token {
    /// The token's id: the start of its hash.
    pub fn id(&self) -> &str {
        self.hash.get(..TOKEN_ID_LEN).unwrap_or(&self.hash)
    }
}

/// SHA-256 of a token, lowercase hex.
pub fn token_hash(token: &str) -> String {
    use sha2::{Digest, Sha256};
    Sha256::digest(token.trim().as_bytes()).iter().map(|b| format!("{b:02x}")).collect()
}

/// The 32 bytes of a Z85 key already checked when it was loaded.
pub fn decode_z85(text: &str) -> Option<PublicKey> {
    decode_key(text, Path::new(""), "").ok()
}

/// The contents of a client's `client_keys.yml`, and what `client:create`
/// prints.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClientKeysFile {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub server_public_key: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub public_key: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub private_key: Option<String>,
    /// The identity (or admin name) the key is bound to on the server.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// An admin's Ed25519 signing key pair (hex).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signing_public_key: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signing_private_key: Option<String>,
    /// An agent's credentials: the admins it trusts (it keeps them in
    /// `trusted_admins.yml`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub trusted_admins: Option<crate::signing::TrustList>,
}

/// What a client needs to connect over CURVE, checked and decoded.
#[derive(Debug, Clone)]
pub struct ClientKeys {
    pub path: PathBuf,
    pub server_public_key: String,
    pub keys: KeyPair,
    /// The name the credentials are for, if they say.
    pub name: Option<String>,
    /// True when the key pair was generated now and is not yet in the file.
    pub generated: bool,
    /// An admin's signing key pair.
    pub signing: Option<crate::signing::SigningPair>,
    /// The trust list the credentials came with (an agent's).
    pub trusted_admins: Option<crate::signing::TrustList>,
}

impl ClientKeys {
    /// Reads a client key file. A missing key pair is generated; when
    /// `save_generated` is set it is written back at once (the agent),
    /// otherwise the caller saves it later (the admin, after a successful
    /// command). A missing file or `server_public_key` is an error naming
    /// the path.
    pub fn load(path: &Path, save_generated: bool) -> Result<ClientKeys, KeyStoreError> {
        require_curve()?;
        let file: ClientKeysFile = match read_yaml(path)? {
            Some(file) => file,
            None => {
                return Err(KeyStoreError::Read {
                    path: path.to_owned(),
                    source: std::io::Error::new(std::io::ErrorKind::NotFound, "no such file"),
                })
            }
        };
        let server_public_key = file.server_public_key.clone().ok_or_else(|| missing(path, "server_public_key"))?;
        let mut loaded = ClientKeys::from_file(path, server_public_key, file)?;
        let generated = loaded.generated;
        if generated && save_generated {
            loaded.save()?;
        }
        Ok(loaded)
    }

    /// The agent's keys: the file's, with the server's public key from the
    /// config (`networking.server_public_key`) when the file lacks it or is
    /// missing. A missing key pair is generated and saved at once (0600; the
    /// caller made the directory 0700): an agent can then enroll itself.
    pub fn load_agent(path: &Path, server_public_key: Option<&str>) -> Result<ClientKeys, KeyStoreError> {
        require_curve()?;
        let file: ClientKeysFile = read_yaml(path)?.unwrap_or_default();
        let server_public_key =
            file.server_public_key.clone().or_else(|| server_public_key.map(str::to_owned)).ok_or_else(|| {
                KeyStoreError::Missing {
                    path: path.to_owned(),
                    field: "server_public_key (nor networking.server_public_key in the config)".into(),
                }
            })?;
        let mut loaded = ClientKeys::from_file(path, server_public_key, file)?;
        let generated = loaded.generated;
        if generated {
            loaded.save()?;
            loaded.generated = true;
        }
        Ok(loaded)
    }

    /// The file's keys with `server_public_key`, checked; a missing key
    /// pair generated (`generated`).
    fn from_file(path: &Path, server_public_key: String, file: ClientKeysFile) -> Result<ClientKeys, KeyStoreError> {
        decode_key(&server_public_key, path, "server_public_key")?;
        let signing = signing_of(&file, path)?;
        let (keys, generated) = KeyPair::from_file_or_generate(file.public_key, file.private_key, path)?;
        Ok(ClientKeys {
            path: path.to_owned(),
            server_public_key,
            keys,
            name: file.name,
            generated,
            signing,
            trusted_admins: file.trusted_admins,
        })
    }

    /// Writes all three keys to the file (mode 0600).
    pub fn save(&mut self) -> Result<(), KeyStoreError> {
        write_yaml(&self.path, &self.to_file())?;
        self.generated = false;
        Ok(())
    }

    pub fn to_file(&self) -> ClientKeysFile {
        ClientKeysFile {
            server_public_key: Some(self.server_public_key.clone()),
            public_key: Some(self.keys.public_key.clone()),
            private_key: Some(self.keys.private_key.clone()),
            name: self.name.clone(),
            signing_public_key: self.signing.as_ref().map(|s| s.public.clone()),
            signing_private_key: self.signing.as_ref().map(|s| s.private.clone()),
            trusted_admins: self.trusted_admins.clone(),
        }
    }
}

/// A key file's signing pair, checked; none when it has neither half.
fn signing_of(file: &ClientKeysFile, path: &Path) -> Result<Option<crate::signing::SigningPair>, KeyStoreError> {
    match (&file.signing_public_key, &file.signing_private_key) {
        (None, None) => Ok(None),
        (Some(public), Some(private)) => {
            crate::signing::SigningPair::from_hex(public, private).map(Some).map_err(|e| KeyStoreError::BadKey {
                path: path.to_owned(),
                field: e.field,
                reason: "not this file's signing key pair".into(),
            })
        }
        (Some(_), None) => Err(missing(path, "signing_private_key")),
        (None, Some(_)) => Err(missing(path, "signing_public_key")),
    }
}

/// YAML for a client's `client_keys.yml`.
pub fn client_keys_yaml(file: &ClientKeysFile) -> String {
    format!("---\n{}", serde_yaml::to_string(file).unwrap_or_default())
}

pub fn missing(path: &Path, field: &str) -> KeyStoreError {
    KeyStoreError::Missing { path: path.to_owned(), field: field.to_owned() }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::MetadataExt;

    fn mode(path: &Path) -> u32 {
        fs::metadata(path).unwrap().mode() & 0o777
    }

    #[test]
    fn client_file_with_only_server_key_gets_a_pair() {
        let dir = tempfile::tempdir().unwrap();
        let server = KeyPair::generate().unwrap();
        let path = dir.path().join("keys.yml");
        fs::write(&path, format!("---\nserver_public_key: '{}'\n", server.public_key)).unwrap();
        let keys = ClientKeys::load(&path, false).unwrap();
        assert!(keys.generated);
        let mut keys = keys;
        keys.save().unwrap();
        assert_eq!(mode(&path), 0o600);
        let again = ClientKeys::load(&path, false).unwrap();
        assert!(!again.generated);
        assert_eq!(again.keys, keys.keys);
        let missing_server = dir.path().join("other.yml");
        fs::write(&missing_server, "public_key: x\n").unwrap();
        let e = ClientKeys::load(&missing_server, false).unwrap_err().to_string();
        assert!(e.contains("server_public_key") && e.contains("other.yml"), "{e}");
        let e = ClientKeys::load(&dir.path().join("absent.yml"), false).unwrap_err().to_string();
        assert!(e.contains("absent.yml"), "{e}");
    }
}
