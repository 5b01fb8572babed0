//! The admins this agent trusts (`security/curve/trusted_admins.yml`,
//! 0600), and the check every request passes before it runs when signed
//! requests are required (`client.require_signed`; by default, when the
//! agent has a trust list).
//!
//! The first list comes with the agent's credentials (`client:create`, the
//! answer to `enroll`, `client:accept`) or, for an agent that has none, the
//! first the server sends; after that a list replaces it only when it is
//! newer and signed by an admin already on it.

use std::path::{Path, PathBuf};
use std::time::SystemTime;

use pantry_shared::facts::Facts;
use pantry_shared::filter::ClientFilter;
use pantry_shared::keys::{read_yaml, write_yaml};
use pantry_shared::signing::{self, Refusal, Rejected, Seen, Signature, TrustList};
use pantry_shared::Message;
use slog::{info, warn, Logger};

pub const FILE: &str = "trusted_admins.yml";

pub struct Trust {
    path: PathBuf,
    list: Option<TrustList>,
    /// Run only requests signed by an admin on the list.
    pub require: bool,
    seen: Seen,
    log: Logger,
}

impl Trust {
    /// The list in `curve_dir` (or the one the credentials came with, when
    /// it may replace it).
    pub fn load(
        curve_dir: &Path,
        with_credentials: Option<TrustList>,
        require_signed: Option<bool>,
        log: Logger,
    ) -> Result<Trust, pantry_shared::error::KeyStoreError> {
        let path = curve_dir.join(FILE);
        let kept: Option<TrustList> = read_yaml(&path)?;
        let mut trust = Trust { path, list: kept, require: false, seen: Seen::default(), log };
        if let Some(list) = with_credentials {
            trust.offer(list, "the credentials");
        }
        trust.require = require_signed.unwrap_or(trust.list.is_some());
        match (&trust.list, trust.require) {
            (_, false) => warn!(
                trust.log,
                "this agent runs unsigned requests: anyone who holds the server can run \
                commands here (set client.require_signed: true, with a trust list from the credentials)"
            ),
            (None, true) => warn!(
                trust.log,
                "signed requests are required but this agent trusts no admin yet: it \
                runs nothing until the server sends it a trust list"
            ),
            (Some(list), true) => info!(trust.log, "running only requests signed by a trusted admin";
                "version" => list.version, "admins" => names(list)),
        }
        Ok(trust)
    }

    pub fn version(&self) -> u64 {
        self.list.as_ref().map_or(0, |l| l.version)
    }

    /// A list from `whence`: taken (and kept on disk) if it may replace
    /// the one held.
    pub fn offer(&mut self, new: TrustList, whence: &str) {
        let taken = match &self.list {
            None if new.self_consistent() => Ok(()),
            None => Err(signing::TrustError::BadSignature),
            Some(current) if *current == new => return,
            Some(current) => current.accepts(&new),
        };
        match taken {
            Ok(()) => {
                if let Err(e) = write_yaml(&self.path, &new) {
                    return warn!(self.log, "cannot keep the new trust list; keeping the old one"; "error" => %e);
                }
                info!(self.log, "trust list replaced"; "from" => whence, "version" => new.version,
                    "admins" => names(&new));
                self.list = Some(new);
            }
            Err(e) => warn!(self.log, "trust list refused: {}", e; "from" => whence, "version" => new.version,
                "signed_by" => &new.signed_by),
        }
    }

    /// Whether to run `request`; its refusal otherwise (logged at warn).
    pub fn check(&mut self, request: &Message, me: &ClientFilter, facts: Option<&Facts>) -> Result<(), Refusal> {
        if !self.require {
            return Ok(());
        }
        let empty = TrustList::default();
        let list = self.list.as_ref().unwrap_or(&empty);
        match signing::verify(request, list, me, facts, &mut self.seen, SystemTime::now()) {
            Ok(_) => Ok(()),
            Err(Rejected { refusal, signature }) => {
                let (signer, name) = signature.as_deref().map_or(("-", "-"), |s: &Signature| (&s.signer, &s.name));
                warn!(self.log, "request refused: {}", refusal; "uuid" => request.uuid(),
                    "type" => request.message_type(), "signer" => signer, "signer_name" => name);
                Err(refusal)
            }
        }
    }
}

fn names(list: &TrustList) -> String {
    list.admins.iter().map(|a| a.name.as_str()).collect::<Vec<_>>().join(" ")
}
