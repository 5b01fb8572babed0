//! CURVE key files (SPEC §6): the server's `server_keys.yml` and a client's
//! `client_keys.yml`, both under `root_dir/security/curve/`.
//!
//! Keys are 40-character Z85 strings of 32 bytes. The directory is 0700 and
//! files are 0600. Every write goes to a temporary file in the same
//! directory, is fsynced, then renamed over the old file (and the directory
//! fsynced), so a crash leaves either the old file or the new one.

use std::collections::HashSet;
use std::fs;
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::error::KeyStoreError;

pub const SERVER_KEYS_FILE: &str = "server_keys.yml";
pub const CLIENT_KEYS_FILE: &str = "client_keys.yml";

const Z85_ALPHABET: &str = "0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ.-:+=^!/*?&<>()[]{}@%$#";

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
    zmq::z85_encode(key).unwrap_or_default()
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
    // libzmq's decoder returns zeros for characters outside the alphabet.
    if let Some(c) = text.chars().find(|c| !Z85_ALPHABET.contains(*c)) {
        return Err(bad(&format!("`{c}` is not a Z85 character")));
    }
    let bytes = zmq::z85_decode(text).map_err(|_| bad("not valid Z85"))?;
    bytes.try_into().map_err(|_| bad("does not decode to 32 bytes"))
}

/// A CURVE key pair in Z85.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyPair {
    pub public_key: String,
    pub private_key: String,
}

impl KeyPair {
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
        .prefix(".pantry-keys-")
        .permissions(fs::Permissions::from_mode(0o600))
        .tempfile_in(dir)
        .map_err(err)?;
    tmp.write_all(contents).map_err(err)?;
    tmp.as_file().sync_all().map_err(err)?;
    tmp.persist(path).map_err(|e| err(e.error))?;
    fs::File::open(dir).and_then(|d| d.sync_all()).map_err(err)
}

fn read_yaml<T: for<'de> Deserialize<'de>>(path: &Path) -> Result<Option<T>, KeyStoreError> {
    let text = match fs::read_to_string(path) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(source) => return Err(KeyStoreError::Read { path: path.to_owned(), source }),
    };
    let text = if text.trim().is_empty() { "{}" } else { &text };
    serde_yaml::from_str(text)
        .map(Some)
        .map_err(|e| KeyStoreError::Invalid { path: path.to_owned(), reason: e.to_string() })
}

fn write_yaml<T: Serialize>(path: &Path, value: &T) -> Result<(), KeyStoreError> {
    let text = serde_yaml::to_string(value)
        .map_err(|e| KeyStoreError::Invalid { path: path.to_owned(), reason: e.to_string() })?;
    write_atomically(path, format!("---\n{text}").as_bytes())
}

/// The contents of `server_keys.yml`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct ServerKeysFile {
    public_key: Option<String>,
    private_key: Option<String>,
    #[serde(default)]
    client_keys: Vec<String>,
}

/// The server's key pair and the public keys of every known client, kept in
/// memory for constant-time lookups and written through on every change.
#[derive(Debug)]
pub struct ServerKeyStore {
    path: PathBuf,
    pub keys: KeyPair,
    secret: PublicKey,
    client_keys: Vec<String>,
    known: HashSet<PublicKey>,
}

impl ServerKeyStore {
    /// Loads `root_dir/security/curve/server_keys.yml`, generating and
    /// saving the server key pair when it is missing.
    pub fn open(root_dir: &Path) -> Result<ServerKeyStore, KeyStoreError> {
        require_curve()?;
        let dir = curve_dir(root_dir);
        ensure_private_dir(&dir)?;
        let path = dir.join(SERVER_KEYS_FILE);
        let file: ServerKeysFile = read_yaml(&path)?.unwrap_or_default();
        let mut known = HashSet::with_capacity(file.client_keys.len());
        for (i, key) in file.client_keys.iter().enumerate() {
            known.insert(decode_key(key, &path, &format!("client_keys[{i}]"))?);
        }
        let (keys, generated) = match (file.public_key, file.private_key) {
            (Some(public_key), Some(private_key)) => (KeyPair { public_key, private_key }, false),
            (None, None) => (KeyPair::generate()?, true),
            (Some(_), None) => return Err(missing(&path, "private_key")),
            (None, Some(_)) => return Err(missing(&path, "public_key")),
        };
        decode_key(&keys.public_key, &path, "public_key")?;
        let secret = decode_key(&keys.private_key, &path, "private_key")?;
        let store = ServerKeyStore { path, keys, secret, client_keys: file.client_keys, known };
        if generated {
            store.save()?;
        } else {
            fs::set_permissions(&store.path, fs::Permissions::from_mode(0o600))
                .map_err(|source| KeyStoreError::Write { path: store.path.clone(), source })?;
        }
        Ok(store)
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn secret_key(&self) -> &PublicKey {
        &self.secret
    }

    pub fn is_known(&self, key: &PublicKey) -> bool {
        self.known.contains(key)
    }

    pub fn known_count(&self) -> usize {
        self.known.len()
    }

    /// Adds a client's public key and persists it before returning. Returns
    /// false if it was already known.
    pub fn add_client(&mut self, key: &PublicKey) -> Result<bool, KeyStoreError> {
        if self.known.contains(key) {
            return Ok(false);
        }
        self.client_keys.push(z85(key));
        if let Err(e) = self.save() {
            self.client_keys.pop();
            return Err(e);
        }
        self.known.insert(*key);
        Ok(true)
    }

    fn save(&self) -> Result<(), KeyStoreError> {
        let file = ServerKeysFile {
            public_key: Some(self.keys.public_key.clone()),
            private_key: Some(self.keys.private_key.clone()),
            client_keys: self.client_keys.clone(),
        };
        write_yaml(&self.path, &file)
    }
}

fn missing(path: &Path, field: &str) -> KeyStoreError {
    KeyStoreError::Missing { path: path.to_owned(), field: field.to_owned() }
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
}

/// What a client needs to connect over CURVE, checked and decoded.
#[derive(Debug, Clone)]
pub struct ClientKeys {
    pub path: PathBuf,
    pub server_public_key: String,
    pub keys: KeyPair,
    /// True when the key pair was generated now and is not yet in the file.
    pub generated: bool,
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
        decode_key(&server_public_key, path, "server_public_key")?;
        let (keys, generated) = match (file.public_key, file.private_key) {
            (Some(public_key), Some(private_key)) => (KeyPair { public_key, private_key }, false),
            (None, None) => (KeyPair::generate()?, true),
            (Some(_), None) => return Err(missing(path, "private_key")),
            (None, Some(_)) => return Err(missing(path, "public_key")),
        };
        decode_key(&keys.public_key, path, "public_key")?;
        decode_key(&keys.private_key, path, "private_key")?;
        let mut loaded = ClientKeys { path: path.to_owned(), server_public_key, keys, generated };
        if generated && save_generated {
            loaded.save()?;
        }
        Ok(loaded)
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
        }
    }
}

/// YAML for a client's `client_keys.yml`.
pub fn client_keys_yaml(file: &ClientKeysFile) -> String {
    format!("---\n{}", serde_yaml::to_string(file).unwrap_or_default())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::MetadataExt;

    fn mode(path: &Path) -> u32 {
        fs::metadata(path).unwrap().mode() & 0o777
    }

    #[test]
    fn server_store_is_generated_once_and_kept() {
        let root = tempfile::tempdir().unwrap();
        let store = ServerKeyStore::open(root.path()).unwrap();
        let first = store.keys.clone();
        assert_eq!(first.public_key.len(), 40);
        assert_eq!(mode(&curve_dir(root.path())), 0o700);
        assert_eq!(mode(store.path()), 0o600);
        drop(store);
        let again = ServerKeyStore::open(root.path()).unwrap();
        assert_eq!(again.keys, first);
    }

    #[test]
    fn added_clients_are_persisted_and_known() {
        let root = tempfile::tempdir().unwrap();
        let mut store = ServerKeyStore::open(root.path()).unwrap();
        let client = KeyPair::generate().unwrap();
        let key = decode_key(&client.public_key, Path::new("x"), "k").unwrap();
        assert!(!store.is_known(&key));
        assert!(store.add_client(&key).unwrap());
        assert!(!store.add_client(&key).unwrap());
        let again = ServerKeyStore::open(root.path()).unwrap();
        assert!(again.is_known(&key));
        assert_eq!(again.known_count(), 1);
        let leftovers: Vec<_> = fs::read_dir(curve_dir(root.path()))
            .unwrap()
            .filter_map(|e| e.ok())
            .filter(|e| e.file_name().to_string_lossy().starts_with(".pantry-keys-"))
            .collect();
        assert!(leftovers.is_empty());
    }

    #[test]
    fn bad_keys_name_file_and_field() {
        let root = tempfile::tempdir().unwrap();
        let dir = curve_dir(root.path());
        ensure_private_dir(&dir).unwrap();
        let good = KeyPair::generate().unwrap();
        let path = dir.join(SERVER_KEYS_FILE);
        fs::write(
            &path,
            format!("public_key: '{}'\nprivate_key: '{}'\nclient_keys: [short]\n", good.public_key, good.private_key),
        )
        .unwrap();
        let e = ServerKeyStore::open(root.path()).unwrap_err().to_string();
        assert!(e.contains("server_keys.yml") && e.contains("client_keys[0]"), "{e}");
        fs::write(&path, format!("public_key: '{}'\nprivate_key: '{}'\n", good.public_key, "~".repeat(40))).unwrap();
        let e = ServerKeyStore::open(root.path()).unwrap_err().to_string();
        assert!(e.contains("private_key"), "{e}");
        fs::write(&path, "public_key: [1\n").unwrap();
        let e = ServerKeyStore::open(root.path()).unwrap_err().to_string();
        assert!(e.contains("server_keys.yml"), "{e}");
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
