//! What the server knows of the admins' signing keys: only their public
//! halves (`security/curve/signing_keys.yml`), and the current trust list
//! the agents hold (`security/curve/trusted_admins.yml`), which only an
//! admin on it can replace: the server keeps and delivers it, it cannot
//! make one.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use pantry_shared::error::KeyStoreError;
use pantry_shared::keys::{read_yaml, write_yaml};
use pantry_shared::signing::{TrustError, TrustList, TrustedAdmin};

pub const LIST_FILE: &str = "trusted_admins.yml";
pub const KEYS_FILE: &str = "signing_keys.yml";

pub struct TrustStore {
    dir: PathBuf,
    list: Option<TrustList>,
    /// Admin name → signing public key (hex).
    keys: BTreeMap<String, String>,
}

/// Why a new list is refused.
#[derive(Debug, thiserror::Error)]
pub enum SetError {
    #[error("the first trust list must name its signer, an admin whose signing key this server knows")]
    NotItsSigner,
    #[error(transparent)]
    Trust(#[from] TrustError),
    #[error(transparent)]
    Store(#[from] KeyStoreError),
}

impl TrustStore {
    /// Reads both files from the CURVE directory (missing: empty).
    pub fn open(curve_dir: &Path) -> Result<TrustStore, KeyStoreError> {
        Ok(TrustStore {
            dir: curve_dir.to_owned(),
            list: read_yaml(&curve_dir.join(LIST_FILE))?,
            keys: read_yaml(&curve_dir.join(KEYS_FILE))?.unwrap_or_default(),
        })
    }

    pub fn list(&self) -> Option<&TrustList> {
        self.list.as_ref()
    }

    /// `pantry-server keys:create-admin` adds to the keys file while the
    /// server runs: read again before use.
    fn reload_keys(&mut self) -> Result<(), KeyStoreError> {
        self.keys = read_yaml(&self.dir.join(KEYS_FILE))?.unwrap_or_default();
        Ok(())
    }

    /// Every admin with a known signing key.
    pub fn admins(&mut self) -> Result<Vec<TrustedAdmin>, KeyStoreError> {
        self.reload_keys()?;
        Ok(self.keys.iter().map(|(name, key)| TrustedAdmin { name: name.clone(), signing_key: key.clone() }).collect())
    }

    /// Records `name`'s signing key (written before this returns).
    pub fn register(&mut self, name: &str, signing_key: &str) -> Result<(), KeyStoreError> {
        self.reload_keys()?;
        if self.keys.get(name).map(String::as_str) == Some(signing_key) {
            return Ok(());
        }
        let mut keys = self.keys.clone();
        keys.insert(name.to_owned(), signing_key.to_owned());
        write_yaml(&self.dir.join(KEYS_FILE), &keys)?;
        self.keys = keys;
        Ok(())
    }

    /// Takes `new` if an admin on the current list signed it and it is
    /// newer; the first list only from the admin it names, signed by its
    /// own registered key.
    pub fn set(&mut self, new: TrustList, requester: &str) -> Result<(), SetError> {
        self.reload_keys()?;
        match &self.list {
            Some(current) => current.accepts(&new)?,
            None => {
                let own = self.keys.get(requester);
                if own != Some(&new.signed_by) || !new.trusts(&new.signed_by) {
                    return Err(SetError::NotItsSigner);
                }
                if !new.self_consistent() {
                    return Err(TrustError::BadSignature.into());
                }
            }
        }
        write_yaml(&self.dir.join(LIST_FILE), &new)?;
        self.list = Some(new);
        Ok(())
    }
}
