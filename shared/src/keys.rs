//! CURVE key files (SPEC §6): the server's `server_keys.yml` and a client's
//! `client_keys.yml`, both under `root_dir/security/curve/`.
//!
//! Keys are 40-character Z85 strings of 32 bytes. The directory is 0700 and
//! files are 0600. Every write goes to a temporary file in the same
//! directory, is fsynced, then renamed over the old file (and the directory
//! fsynced), so a crash leaves either the old file or the new one.

use std::collections::HashMap;
use std::fs;
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
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
    fn from_file_or_generate(
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
fn read_yaml<T: for<'de> Deserialize<'de>>(path: &Path) -> Result<Option<T>, KeyStoreError> {
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

fn write_yaml<T: Serialize>(path: &Path, value: &T) -> Result<(), KeyStoreError> {
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

/// An entry of `client_keys`: the original format is a bare Z85 string.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
enum ClientKeyEntry {
    Plain(String),
    Full(KnownKey),
}

/// The contents of `server_keys.yml` as read.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct ServerKeysFile {
    public_key: Option<String>,
    private_key: Option<String>,
    #[serde(default)]
    client_keys: Vec<ClientKeyEntry>,
    #[serde(default)]
    tokens: Vec<Token>,
}

/// The contents of `server_keys.yml` as written.
#[derive(Serialize)]
struct ServerKeysOut<'a> {
    public_key: &'a str,
    private_key: &'a str,
    client_keys: &'a [KnownKey],
    #[serde(skip_serializing_if = "<[Token]>::is_empty")]
    tokens: &'a [Token],
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

    /// The one token of `tokens` whose id (or whole hash) is `id`.
    pub fn find<'a>(tokens: impl IntoIterator<Item = &'a Token>, id: &str) -> Result<&'a Token, KeyChangeError> {
        let id = id.trim().to_ascii_lowercase();
        let mut found = tokens.into_iter().filter(|t| !id.is_empty() && t.hash.starts_with(&id));
        match (found.next(), found.next()) {
            (Some(token), None) => Ok(token),
            (Some(_), Some(_)) => Err(KeyChangeError::BadName(format!("several tokens start with `{id}`: give more"))),
            (None, _) => Err(KeyChangeError::NotFound(format!("token {id}"))),
        }
    }

    /// The name a key enrolled with this token gets: the token's, else the
    /// agent's configured identity, else `default_name`; refused when the
    /// token is used up or expired, or names another identity than the
    /// configured one.
    pub fn name_for(&self, configured: Option<&str>, default_name: &str) -> Result<String, EnrollError> {
        if self.uses_left == 0 {
            return Err(EnrollError::UsedUp);
        }
        if expired(self, std::time::SystemTime::now()) {
            return Err(EnrollError::Expired(self.expires.clone()));
        }
        let name = match (&self.name, configured) {
            (Some(named), Some(configured)) if named != configured => {
                return Err(EnrollError::NameConflict { token: named.clone(), configured: configured.to_owned() })
            }
            (Some(named), _) => named.clone(),
            (None, Some(configured)) => configured.to_owned(),
            (None, None) => default_name.to_owned(),
        };
        check_key_name(&name)?;
        Ok(name)
    }
}

/// SHA-256 of a token, lowercase hex.
pub fn token_hash(token: &str) -> String {
    use sha2::{Digest, Sha256};
    Sha256::digest(token.trim().as_bytes()).iter().map(|b| format!("{b:02x}")).collect()
}

/// Why an enrollment was refused.
#[derive(Debug, thiserror::Error)]
pub enum EnrollError {
    #[error("unknown enrollment token")]
    UnknownToken,
    #[error("the enrollment token is used up")]
    UsedUp,
    #[error("the enrollment token expired at {0}")]
    Expired(String),
    #[error("the token is for `{token}` but client.yml sets identity `{configured}`")]
    NameConflict { token: String, configured: String },
    #[error(transparent)]
    Key(#[from] KeyChangeError),
}

/// Why a key could not be added or removed.
#[derive(Debug, thiserror::Error)]
pub enum KeyChangeError {
    #[error("the name `{0}` is already taken by another key")]
    NameTaken(String),
    #[error("the key is already known as `{0}`")]
    KeyKnown(String),
    #[error("the key is already bound to `{0}`")]
    AlreadyBound(String),
    #[error("no known key with the name or key `{0}`")]
    NotFound(String),
    #[error("invalid name: {0}")]
    BadName(String),
    #[error(transparent)]
    Store(#[from] KeyStoreError),
    /// A cluster's shared key store (etcd) could not be reached or refused
    /// the change; nothing was changed.
    #[error("the cluster's key store is unavailable, nothing was changed: {0}")]
    Unavailable(String),
}

/// The server's key pair and every known client key, kept in memory for
/// constant-time lookups and written through on every change.
///
/// Another process (`pantry-server keys:create-admin`) may change the file
/// while the server runs: every change takes an exclusive lock on
/// `server_keys.yml.lock` and first re-reads the file if it changed, and
/// [`ServerKeyStore::reload_if_changed`] picks up outside changes.
#[derive(Debug)]
pub struct ServerKeyStore {
    path: PathBuf,
    pub keys: KeyPair,
    secret: PublicKey,
    entries: Vec<KnownKey>,
    by_key: HashMap<PublicKey, usize>,
    tokens: Vec<Token>,
    /// Modification time and length of the file as last read or written.
    stamp: Option<(std::time::SystemTime, u64)>,
    /// Temporary files removed by [`ServerKeyStore::open`].
    pub removed_temporaries: Vec<String>,
}

impl ServerKeyStore {
    /// Loads `root_dir/security/curve/server_keys.yml`, generating and
    /// saving the server key pair when the file does not exist. Temporary
    /// files a killed writer left behind are removed (their names are in
    /// `removed_temporaries`).
    pub fn open(root_dir: &Path) -> Result<ServerKeyStore, KeyStoreError> {
        require_curve()?;
        let dir = curve_dir(root_dir);
        ensure_private_dir(&dir)?;
        let path = dir.join(SERVER_KEYS_FILE);
        let _lock = FileLock::exclusive(&path)?;
        let removed = remove_leftover_temporaries(&dir);
        let (mut store, generated) = Self::read(&path)?;
        store.removed_temporaries = removed;
        if generated {
            store.save()?;
        } else {
            fs::set_permissions(&store.path, fs::Permissions::from_mode(0o600))
                .map_err(|source| KeyStoreError::Write { path: store.path.clone(), source })?;
        }
        Ok(store)
    }

    /// Reads an existing key file without changing anything (`check-config`).
    pub fn inspect(path: &Path) -> Result<ServerKeyStore, KeyStoreError> {
        match Self::read(path)? {
            (_, true) => Err(missing(path, "public_key")),
            (store, false) => Ok(store),
        }
    }

    fn read(path: &Path) -> Result<(ServerKeyStore, bool), KeyStoreError> {
        let stamp = file_stamp(path);
        let (file, exists) = match read_yaml::<ServerKeysFile>(path)? {
            Some(file) => (file, true),
            None => (ServerKeysFile::default(), false),
        };
        // Only a missing file gets a new server key pair: a file without one
        // is damaged, and a new pair would break every enrolled agent.
        if exists && file.public_key.is_none() {
            return Err(missing(path, "public_key"));
        }
        let (keys, generated) = KeyPair::from_file_or_generate(file.public_key, file.private_key, path)?;
        let secret = decode_key(&keys.private_key, path, "private_key")?;
        let mut entries = Vec::with_capacity(file.client_keys.len());
        let mut by_key = HashMap::with_capacity(file.client_keys.len());
        for (i, entry) in file.client_keys.into_iter().enumerate() {
            let field = format!("client_keys[{i}]");
            let known = match entry {
                // The original format: the first key is the admin; the others
                // are unbound, each taken by the identity it registers first.
                ClientKeyEntry::Plain(key) => KnownKey {
                    name: (i == 0).then(|| "admin".into()),
                    role: if i == 0 { Role::Admin } else { Role::Client },
                    public_key: key,
                    created: None,
                },
                ClientKeyEntry::Full(known) => known,
            };
            let key = decode_key(&known.public_key, path, &format!("{field}.public_key"))?;
            if by_key.insert(key, entries.len()).is_some() {
                return Err(KeyStoreError::BadKey {
                    path: path.to_owned(),
                    field,
                    reason: "the same key is listed twice".into(),
                });
            }
            entries.push(known);
        }
        let store = ServerKeyStore {
            path: path.to_owned(),
            keys,
            secret,
            entries,
            by_key,
            tokens: file.tokens,
            stamp,
            removed_temporaries: Vec::new(),
        };
        Ok((store, generated))
    }

    /// Re-reads the file if another process changed it. Returns whether it
    /// did. The server key pair never changes this way.
    pub fn reload_if_changed(&mut self) -> Result<bool, KeyStoreError> {
        if file_stamp(&self.path) == self.stamp {
            return Ok(false);
        }
        let (fresh, _) = Self::read(&self.path)?;
        self.entries = fresh.entries;
        self.by_key = fresh.by_key;
        self.tokens = fresh.tokens;
        self.stamp = fresh.stamp;
        Ok(true)
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn secret_key(&self) -> &PublicKey {
        &self.secret
    }

    pub fn lookup(&self, key: &PublicKey) -> Option<&KnownKey> {
        self.by_key.get(key).map(|&i| &self.entries[i])
    }

    pub fn known_count(&self) -> usize {
        self.entries.len()
    }

    pub fn entries(&self) -> &[KnownKey] {
        &self.entries
    }

    pub fn tokens(&self) -> &[Token] {
        &self.tokens
    }

    /// Adds a key (bound to `name`, or unbound) and persists it before
    /// returning.
    pub fn add(&mut self, key: &PublicKey, name: Option<&str>, role: Role) -> Result<KnownKey, KeyChangeError> {
        if let Some(name) = name {
            check_key_name(name)?;
        }
        let _lock = FileLock::exclusive(&self.path)?;
        self.reload_if_changed()?;
        if let Some(known) = self.lookup(key) {
            return Err(KeyChangeError::KeyKnown(known.name.clone().unwrap_or_else(|| "(unbound)".into())));
        }
        if let Some(name) = name.filter(|n| self.is_taken(n)) {
            return Err(KeyChangeError::NameTaken(name.to_owned()));
        }
        let known = KnownKey {
            public_key: z85(key),
            name: name.map(str::to_owned),
            role,
            created: Some(humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string()),
        };
        self.entries.push(known.clone());
        if let Err(e) = self.save() {
            self.entries.pop();
            return Err(e.into());
        }
        self.by_key.insert(*key, self.entries.len() - 1);
        Ok(known)
    }

    /// Binds an unbound key to `name` (its first registration), persisted
    /// before returning.
    pub fn bind(&mut self, key: &PublicKey, name: &str) -> Result<KnownKey, KeyChangeError> {
        check_key_name(name)?;
        let _lock = FileLock::exclusive(&self.path)?;
        self.reload_if_changed()?;
        let index = *self.by_key.get(key).ok_or_else(|| KeyChangeError::NotFound(z85(key)))?;
        if let Some(bound) = &self.entries[index].name {
            return Err(KeyChangeError::AlreadyBound(bound.clone()));
        }
        if self.is_taken(name) {
            return Err(KeyChangeError::NameTaken(name.to_owned()));
        }
        self.entries[index].name = Some(name.to_owned());
        if let Err(e) = self.save() {
            self.entries[index].name = None;
            return Err(e.into());
        }
        Ok(self.entries[index].clone())
    }

    /// Stores a new enrollment token's hash, persisted before returning.
    pub fn add_token(&mut self, token: Token) -> Result<(), KeyChangeError> {
        if let Some(name) = &token.name {
            check_key_name(name)?;
        }
        let _lock = FileLock::exclusive(&self.path)?;
        self.reload_if_changed()?;
        let now = std::time::SystemTime::now();
        // Expired and used-up tokens go when a new one comes.
        self.tokens.retain(|t| t.uses_left > 0 && !expired(t, now));
        self.tokens.push(token);
        if let Err(e) = self.save() {
            self.tokens.pop();
            return Err(e.into());
        }
        Ok(())
    }

    /// Withdraws the token named `id`: it enrolls nothing from now on.
    pub fn revoke_token(&mut self, id: &str) -> Result<Token, KeyChangeError> {
        let _lock = FileLock::exclusive(&self.path)?;
        self.reload_if_changed()?;
        let token = Token::find(&self.tokens, id)?.clone();
        let index = self.tokens.iter().position(|t| t.hash == token.hash).unwrap_or_default();
        self.tokens.remove(index);
        if let Err(e) = self.save() {
            self.tokens.insert(index, token);
            return Err(e.into());
        }
        Ok(token)
    }

    /// Enrolls `key` with `token`: in one write, the key is stored bound to
    /// the token's name (or `configured`, or `default_name`) and the token
    /// loses a use.
    pub fn enroll(
        &mut self,
        key: &PublicKey,
        token: &str,
        configured: Option<&str>,
        default_name: &str,
    ) -> Result<KnownKey, EnrollError> {
        let _lock = FileLock::exclusive(&self.path).map_err(KeyChangeError::from)?;
        self.reload_if_changed().map_err(KeyChangeError::from)?;
        let hash = token_hash(token);
        let index = self.tokens.iter().position(|t| t.hash == hash).ok_or(EnrollError::UnknownToken)?;
        let name = self.tokens[index].name_for(configured, default_name)?;
        if let Some(known) = self.lookup(key) {
            return Err(KeyChangeError::KeyKnown(known.name.clone().unwrap_or_else(|| "(unbound)".into())).into());
        }
        if self.is_taken(&name) {
            return Err(KeyChangeError::NameTaken(name).into());
        }
        let known = KnownKey {
            public_key: z85(key),
            name: Some(name),
            role: Role::Client,
            created: Some(humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string()),
        };
        self.entries.push(known.clone());
        self.tokens[index].uses_left -= 1;
        if let Err(e) = self.save() {
            self.entries.pop();
            self.tokens[index].uses_left += 1;
            return Err(KeyChangeError::from(e).into());
        }
        self.by_key.insert(*key, self.entries.len() - 1);
        Ok(known)
    }

    fn is_taken(&self, name: &str) -> bool {
        self.entries.iter().any(|e| e.name.as_deref() == Some(name))
    }

    /// A name for a new key that no other key has: `base`, `base-2`, ...
    pub fn free_name(&self, base: &str) -> String {
        if !self.is_taken(base) {
            return base.to_owned();
        }
        (2..).map(|i| format!("{base}-{i}")).find(|n| !self.is_taken(n)).unwrap_or_default()
    }

    /// Removes the key with this name or Z85 public key, persisted before
    /// returning.
    pub fn revoke(&mut self, name_or_key: &str) -> Result<KnownKey, KeyChangeError> {
        let _lock = FileLock::exclusive(&self.path)?;
        self.reload_if_changed()?;
        let index = self
            .entries
            .iter()
            .position(|e| e.name.as_deref() == Some(name_or_key) || e.public_key == name_or_key)
            .ok_or_else(|| KeyChangeError::NotFound(name_or_key.to_owned()))?;
        let removed = self.entries.remove(index);
        if let Err(e) = self.save() {
            self.entries.insert(index, removed);
            return Err(e.into());
        }
        // Entries after the removed one moved down by one; nothing to decode.
        self.by_key.retain(|_, i| *i != index);
        self.by_key.values_mut().filter(|i| **i > index).for_each(|i| *i -= 1);
        Ok(removed)
    }

    fn save(&mut self) -> Result<(), KeyStoreError> {
        let out = ServerKeysOut {
            public_key: &self.keys.public_key,
            private_key: &self.keys.private_key,
            client_keys: &self.entries,
            tokens: &self.tokens,
        };
        write_yaml(&self.path, &out)?;
        self.stamp = file_stamp(&self.path);
        Ok(())
    }
}

fn expired(token: &Token, now: std::time::SystemTime) -> bool {
    humantime::parse_rfc3339_weak(&token.expires).map_or(true, |at| at <= now)
}

/// A client key's name is its identity: the same rules apply (dots
/// allowed, no spaces or control characters, not the broadcast topic).
fn check_key_name(name: &str) -> Result<(), KeyChangeError> {
    crate::filter::ClientFilter::check_identity(name).map_err(KeyChangeError::BadName)
}

/// The 32 bytes of a Z85 key already checked when it was loaded.
pub fn decode_z85(text: &str) -> Option<PublicKey> {
    decode_key(text, Path::new(""), "").ok()
}

fn file_stamp(path: &Path) -> Option<(std::time::SystemTime, u64)> {
    let meta = fs::metadata(path).ok()?;
    Some((meta.modified().ok()?, meta.len()))
}

/// An exclusive `flock` on `<file>.lock`, released on drop.
struct FileLock {
    _file: fs::File,
}

impl FileLock {
    fn exclusive(file: &Path) -> Result<FileLock, KeyStoreError> {
        let mut name = file.as_os_str().to_owned();
        name.push(".lock");
        let path = PathBuf::from(name);
        let err = |source| KeyStoreError::Write { path: path.clone(), source };
        let lock =
            fs::OpenOptions::new().create(true).write(true).truncate(false).mode(0o600).open(&path).map_err(err)?;
        // SAFETY: flock on a descriptor we own for the lifetime of `lock`.
        if unsafe { libc::flock(std::os::fd::AsRawFd::as_raw_fd(&lock), libc::LOCK_EX) } != 0 {
            return Err(err(std::io::Error::last_os_error()));
        }
        Ok(FileLock { _file: lock })
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
    /// The identity (or admin name) the key is bound to on the server.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
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
        let (keys, generated) = KeyPair::from_file_or_generate(file.public_key, file.private_key, path)?;
        let mut loaded = ClientKeys { path: path.to_owned(), server_public_key, keys, name: file.name, generated };
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
        decode_key(&server_public_key, path, "server_public_key")?;
        let (keys, generated) = KeyPair::from_file_or_generate(file.public_key, file.private_key, path)?;
        let mut loaded = ClientKeys { path: path.to_owned(), server_public_key, keys, name: file.name, generated };
        if generated {
            loaded.save()?;
            loaded.generated = true;
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
            name: self.name.clone(),
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
        assert!(store.lookup(&key).is_none());
        store.add(&key, Some("web-1"), Role::Client).unwrap();
        assert!(matches!(store.add(&key, Some("web-2"), Role::Client), Err(KeyChangeError::KeyKnown(_))));
        let other = decode_key(&KeyPair::generate().unwrap().public_key, Path::new("x"), "k").unwrap();
        assert!(matches!(store.add(&other, Some("web-1"), Role::Client), Err(KeyChangeError::NameTaken(_))));
        let again = ServerKeyStore::open(root.path()).unwrap();
        assert_eq!(again.lookup(&key).map(|k| (k.name.as_deref(), k.role)), Some((Some("web-1"), Role::Client)));
        assert_eq!(again.known_count(), 1);
        let leftovers: Vec<_> = fs::read_dir(curve_dir(root.path()))
            .unwrap()
            .filter_map(|e| e.ok())
            .filter(|e| e.file_name().to_string_lossy().starts_with(".pantry-keys-"))
            .collect();
        assert!(leftovers.is_empty());
    }

    #[test]
    fn original_format_loads_first_key_as_admin() {
        let root = tempfile::tempdir().unwrap();
        let dir = curve_dir(root.path());
        ensure_private_dir(&dir).unwrap();
        let server = KeyPair::generate().unwrap();
        let (a, b) = (KeyPair::generate().unwrap(), KeyPair::generate().unwrap());
        fs::write(
            dir.join(SERVER_KEYS_FILE),
            format!(
                "---\npublic_key: '{}'\nprivate_key: '{}'\nclient_keys:\n- '{}'\n- '{}'\n",
                server.public_key, server.private_key, a.public_key, b.public_key
            ),
        )
        .unwrap();
        let store = ServerKeyStore::open(root.path()).unwrap();
        let key = |p: &KeyPair| decode_z85(&p.public_key).unwrap();
        assert_eq!(store.lookup(&key(&a)).map(|k| (k.name.as_deref(), k.role)), Some((Some("admin"), Role::Admin)));
        assert_eq!(store.lookup(&key(&b)).map(|k| (k.name.as_deref(), k.role)), Some((None, Role::Client)));
        assert_eq!(store.keys, server);
    }

    #[test]
    fn revoke_and_outside_changes() {
        let root = tempfile::tempdir().unwrap();
        let mut running = ServerKeyStore::open(root.path()).unwrap();
        let mut other = ServerKeyStore::open(root.path()).unwrap();
        let a = decode_z85(&KeyPair::generate().unwrap().public_key).unwrap();
        let b = decode_z85(&KeyPair::generate().unwrap().public_key).unwrap();
        running.add(&a, Some("a"), Role::Client).unwrap();
        // Another process adds a key: its change re-reads first, so both stay.
        other.add(&b, Some("b"), Role::Admin).unwrap();
        assert!(running.lookup(&b).is_none());
        assert!(running.reload_if_changed().unwrap());
        assert_eq!(running.lookup(&b).map(|k| k.role), Some(Role::Admin));
        assert!(running.lookup(&a).is_some());
        assert_eq!(running.revoke("a").unwrap().name.as_deref(), Some("a"));
        assert!(running.lookup(&a).is_none());
        assert_eq!(running.lookup(&b).and_then(|k| k.name.as_deref()), Some("b"), "index moved with the removal");
        assert!(matches!(running.revoke("a"), Err(KeyChangeError::NotFound(_))));
        assert_eq!(running.revoke(&z85(&b)).unwrap().name.as_deref(), Some("b"));
        assert_eq!(ServerKeyStore::open(root.path()).unwrap().known_count(), 0);
        assert!(matches!(running.add(&a, Some("bad name"), Role::Client), Err(KeyChangeError::BadName(_))));
        // Unbound keys bind once, to a free name; dots are fine.
        running.add(&a, None, Role::Client).unwrap();
        running.add(&b, Some("web1.example.com"), Role::Client).unwrap();
        assert!(matches!(running.bind(&a, "web1.example.com"), Err(KeyChangeError::NameTaken(_))));
        assert_eq!(running.bind(&a, "db1.example.com").unwrap().name.as_deref(), Some("db1.example.com"));
        assert!(matches!(running.bind(&a, "other"), Err(KeyChangeError::AlreadyBound(_))));
        let reread = ServerKeyStore::open(root.path()).unwrap();
        assert_eq!(reread.lookup(&a).and_then(|k| k.name.as_deref()), Some("db1.example.com"));
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
    fn an_empty_or_keyless_store_is_an_error_and_is_kept() {
        let root = tempfile::tempdir().unwrap();
        let dir = curve_dir(root.path());
        ensure_private_dir(&dir).unwrap();
        let path = dir.join(SERVER_KEYS_FILE);
        for text in ["", "\n  \n", "client_keys: []\n", "---\n{}\n"] {
            fs::write(&path, text).unwrap();
            let e = ServerKeyStore::open(root.path()).unwrap_err().to_string();
            assert!(e.contains("server_keys.yml"), "{text:?}: {e}");
            assert_eq!(fs::read_to_string(&path).unwrap(), text, "the file was replaced");
        }
    }

    #[test]
    fn leftover_temporaries_are_removed_at_open() {
        let root = tempfile::tempdir().unwrap();
        let store = ServerKeyStore::open(root.path()).unwrap();
        let dir = curve_dir(root.path());
        fs::write(dir.join(".pantry-keys-AbC123"), "half").unwrap();
        fs::write(dir.join("other"), "kept").unwrap();
        drop(store);
        let again = ServerKeyStore::open(root.path()).unwrap();
        assert_eq!(again.removed_temporaries, [".pantry-keys-AbC123"]);
        assert!(!dir.join(".pantry-keys-AbC123").exists() && dir.join("other").exists());
    }

    #[test]
    fn tokens_enroll_keys_until_used_up_or_expired() {
        let root = tempfile::tempdir().unwrap();
        let mut store = ServerKeyStore::open(root.path()).unwrap();
        let soon = humantime::format_rfc3339_seconds(std::time::SystemTime::now() + std::time::Duration::from_secs(60));
        let token = |name: Option<&str>, uses, expires: &str| Token {
            hash: token_hash(&format!("t-{uses}-{name:?}")),
            name: name.map(Into::into),
            uses_left: uses,
            expires: expires.into(),
            created: None,
        };
        store.add_token(token(None, 2, &soon.to_string())).unwrap();
        store.add_token(token(Some("db-9"), 1, &soon.to_string())).unwrap();
        store.add_token(token(None, 5, "2000-01-01T00:00:00Z")).unwrap();
        let key = || decode_z85(&KeyPair::generate().unwrap().public_key).unwrap();
        let a = store.enroll(&key(), "t-2-None", None, "host-a").unwrap();
        assert_eq!(a.name.as_deref(), Some("host-a"));
        let b = store.enroll(&key(), "t-2-None", Some("web-2"), "host-b").unwrap();
        assert_eq!(b.name.as_deref(), Some("web-2"));
        assert!(matches!(store.enroll(&key(), "t-2-None", None, "host-c"), Err(EnrollError::UsedUp)));
        assert!(matches!(store.enroll(&key(), "nope", None, "h"), Err(EnrollError::UnknownToken)));
        assert!(matches!(store.enroll(&key(), "t-5-None", None, "h"), Err(EnrollError::Expired(_))));
        let conflict = store.enroll(&key(), "t-1-Some(\"db-9\")", Some("web-9"), "h").unwrap_err().to_string();
        assert!(conflict.contains("db-9") && conflict.contains("web-9"), "{conflict}");
        let named = store.enroll(&key(), "t-1-Some(\"db-9\")", None, "h").unwrap();
        assert_eq!(named.name.as_deref(), Some("db-9"));
        // Persisted: a fresh read sees the keys and the used tokens.
        let text = fs::read_to_string(store.path()).unwrap();
        assert!(!text.contains("t-2-None"), "the token itself is stored:\n{text}");
        let mut again = ServerKeyStore::open(root.path()).unwrap();
        assert_eq!(again.known_count(), 3);
        assert!(matches!(again.enroll(&key(), "t-2-None", None, "x"), Err(EnrollError::UsedUp)));
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
