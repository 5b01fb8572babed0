//! The server's key store file, `root_dir/security/curve/server_keys.yml`:
//! its key pair, every known key and the enrollment tokens' hashes, kept in
//! memory and written through (atomically, under a lock) on every change.
//! The key store actor ([`crate::key_store`]) owns the running server's;
//! `keys:create-admin` and `check-config` open it from the command line.

use std::collections::HashMap;
use std::fs;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use pantry_shared::check::Report;
use pantry_shared::config::Config;
use pantry_shared::error::KeyStoreError;
use pantry_shared::filter::NameError;
use pantry_shared::keys::{
    curve_dir, decode_key, ensure_private_dir, missing, read_yaml, remove_leftover_temporaries, require_curve,
    token_hash, write_yaml, z85, KeyPair, KnownKey, PublicKey, Role, Token, SERVER_KEYS_FILE,
};
use serde::{Deserialize, Serialize};

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
    BadName(#[from] NameError),
    #[error("several tokens start with `{0}`: give more of the id")]
    AmbiguousToken(String),
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
        let token = find_token(&self.tokens, id)?.clone();
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
        let name = name_for(&self.tokens[index], configured, default_name)?;
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
    pantry_shared::filter::ClientFilter::check_identity(name).map_err(KeyChangeError::BadName)
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

/// The one token of `tokens` whose id (or whole hash) is `id`.
pub fn find_token<'a>(tokens: impl IntoIterator<Item = &'a Token>, id: &str) -> Result<&'a Token, KeyChangeError> {
    let id = id.trim().to_ascii_lowercase();
    let mut found = tokens.into_iter().filter(|t| !id.is_empty() && t.hash.starts_with(&id));
    match (found.next(), found.next()) {
        (Some(token), None) => Ok(token),
        (Some(_), Some(_)) => Err(KeyChangeError::AmbiguousToken(id)),
        (None, _) => Err(KeyChangeError::NotFound(format!("token {id}"))),
    }
}

/// The name a key enrolled with this token gets: the token's, else the
/// agent's configured identity, else `default_name`; refused when the
/// token is used up or expired, or names another identity than the
/// configured one.
pub fn name_for(token: &Token, configured: Option<&str>, default_name: &str) -> Result<String, EnrollError> {
    if token.uses_left == 0 {
        return Err(EnrollError::UsedUp);
    }
    if expired(token, std::time::SystemTime::now()) {
        return Err(EnrollError::Expired(token.expires.clone()));
    }
    let name = match (&token.name, configured) {
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

/// `check-config`'s look at `server_keys.yml` (without changing it).
pub fn check(config: &Config, report: &mut Report) {
    let dir = curve_dir(config.root_dir());
    let file = dir.join(SERVER_KEYS_FILE);
    if !file.exists() {
        report.ok(format!("{} does not exist yet; the server generates its key pair at first start", file.display()));
        return;
    }
    pantry_shared::check::check_modes(&dir, &file, report);
    match ServerKeyStore::inspect(&file) {
        Ok(store) => report.ok(format!(
            "{} parses: server public key {}, {} known client keys",
            file.display(),
            store.keys.public_key,
            store.known_count()
        )),
        Err(e) => report.problem(e.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use pantry_shared::config::Program;
    use pantry_shared::keys::decode_z85;
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
    fn good_and_broken_setups() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("root");
        let config = dir.path().join("server.yml");
        std::fs::write(&config, format!("root_dir: {}\nnetworking:\n  security: curve\n", root.display())).unwrap();
        let fresh = pantry_shared::check::check(&config, Program::Server, check);
        assert!(fresh.is_ok(), "{}", fresh.render());
        assert!(!root.exists(), "check-config must not create anything");
        ServerKeyStore::open(&root).unwrap();
        assert!(pantry_shared::check::check(&config, Program::Server, check).is_ok());
        let keys_file = curve_dir(&root).join(SERVER_KEYS_FILE);
        std::fs::set_permissions(&keys_file, std::fs::Permissions::from_mode(0o644)).unwrap();
        let loose = pantry_shared::check::check(&config, Program::Server, check);
        assert!(loose.render().contains("mode 644"), "{}", loose.render());
        std::fs::write(&keys_file, "public_key: [\n").unwrap();
        assert!(!pantry_shared::check::check(&config, Program::Server, check).is_ok());
        std::fs::write(&config, "networking:\n  receive_prot: 1\n").unwrap();
        let bad = pantry_shared::check::check(&config, Program::Server, check);
        assert!(bad.render().contains("receive_prot"), "{}", bad.render());
    }
}
