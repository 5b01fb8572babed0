//! The trust list an admin signs for the agents: `client:create --admin`,
//! `client:trust` and `client:revoke` sign the next one. (The admin's own
//! signing key, made at its first use, is the session's.)

use anyhow::{bail, Context as _, Result};
use pantry_shared::commands::trust::{self, Shown};
use pantry_shared::signing::{TrustList, TrustedAdmin};

use crate::session::Session;

/// The next trust list, `change`d from the current one and signed by this
/// admin (who must be on it).
fn amend(
    session: &mut Session,
    change: impl FnOnce(&mut Vec<TrustedAdmin>, &Shown) -> Result<bool>,
) -> Result<Option<TrustList>> {
    let pair = session.own_signing_key().context("this admin has no signing key")?;
    let shown = session.show_trust()?;
    let Some(current) = shown.list.clone() else {
        bail!("the server has no trust list yet (the first admin makes it)")
    };
    if !current.trusts(&pair.public) {
        bail!("this admin is not on the agents' trust list: an admin on it must make the change");
    }
    let mut admins = current.admins.clone();
    if !change(&mut admins, &shown)? {
        return Ok(None);
    }
    let next = TrustList::signed(current.version + 1, admins, &pair);
    session.ask_server(trust::set_request(&next))?;
    Ok(Some(next))
}

/// `client:trust NAME` (and after `client:create --admin`): agents trust
/// NAME's signing key from now on.
pub fn trust_admin(session: &mut Session, name: &str) -> Result<()> {
    // No list at all (a new server, or one whose list was removed to
    // recover from lost keys): an admin may start one naming itself.
    let shown = session.show_trust()?;
    if shown.list.is_none() {
        let pair = session.own_signing_key().context("this admin has no signing key")?;
        let me = shown.admins.iter().find(|a| a.signing_key == pair.public && a.name == name).cloned();
        let me = me.with_context(|| format!("the server has no trust list: only `{name}` itself can start one"))?;
        session.ask_server(trust::set_request(&TrustList::signed(1, vec![me], &pair)))?;
        eprintln!("made the first trust list: agents enrolled from now on trust `{name}`");
        return Ok(());
    }
    let next = amend(session, |admins, shown| {
        let Some(admin) = shown.admins.iter().find(|a| a.name == name) else {
            bail!("the server knows no signing key of an admin named `{name}`");
        };
        if admins.iter().any(|a| a.signing_key == admin.signing_key) {
            return Ok(false);
        }
        admins.retain(|a| a.name != name);
        admins.push(admin.clone());
        Ok(true)
    })?;
    // The key comes from the server: say which, so that it can be checked
    // against NAME's key file (`signing_public_key`).
    let key = next.as_ref().and_then(|l| l.admins.iter().find(|a| a.name == name)).map(|a| a.signing_key.clone());
    match next {
        Some(list) => eprintln!(
            "agents now trust `{name}`'s signed requests (signing key {}, trust list version {})",
            key.unwrap_or_default(),
            list.version
        ),
        None => eprintln!("agents already trust `{name}`"),
    }
    Ok(())
}

/// After `client:revoke NAME` of an admin: agents drop its signing key.
pub fn distrust_admin(session: &mut Session, name: &str) -> Result<()> {
    if let Some(list) = amend(session, |admins, _| {
        let before = admins.len();
        admins.retain(|a| a.name != name);
        Ok(admins.len() != before)
    })? {
        eprintln!("agents no longer trust `{name}` (trust list version {})", list.version);
    }
    Ok(())
}
