//! `client:create`: new credentials as YAML, ready for a client's `client_keys.yml`.

use crate::session::{Outcome, Session};
use anyhow::bail;
use pantry_shared::commands::create_client::*;
use pantry_shared::error::DecodeError;
use pantry_shared::keys::{client_keys_yaml, write_atomically, ClientKeysFile, Role};
use pantry_shared::message::{BodyPart, Message};
use std::path::PathBuf;

use crate::session::{Admin, Wait};

/// Create a key pair on the server and print it as YAML for a client's
/// client_keys.yml (needs CURVE and an admin key).
#[derive(clap::Args, Debug)]
pub struct Args {
    /// The key's name: an agent's identity, or an admin's name.
    #[arg(long, value_name = "NAME")]
    pub name: Option<String>,
    /// Make an admin key instead of a client key.
    #[arg(long)]
    pub admin: bool,
    /// Write the keys to FILE (mode 0600) instead of printing them.
    #[arg(long, value_name = "FILE")]
    pub output: Option<PathBuf>,
    #[command(flatten)]
    pub wait: Wait,
}

impl Admin for Args {
    fn wait(&self, global: f64) -> f64 {
        self.wait.or(global)
    }

    /// Admin: prints the credentials, or writes them to `--output`.
    fn run(self, session: &mut Session) -> anyhow::Result<Outcome> {
        if !session.security.is_curve() {
            bail!("client:create needs CURVE: pass --curve-key-file FILE (or a config with security: curve)");
        }
        if let Some(path) = &self.output {
            if path.exists() {
                bail!("{} already exists; not overwriting a key file", path.display());
            }
        }
        let role = if self.admin { Role::Admin } else { Role::Client };
        let response = session.ask_server(request(self.name.as_deref(), role))?;
        let yaml = credentials_yaml(&response)?;
        match &self.output {
            Some(path) => {
                write_atomically(path, yaml.as_bytes())?;
                eprintln!("wrote the new client's keys to {}", path.display());
            }
            None => print!("{yaml}"),
        }
        // A new admin: agents trust its signature once this admin signs it in.
        let name = serde_yaml::from_str::<ClientKeysFile>(&yaml)
            .ok()
            .filter(|f| f.signing_public_key.is_some())
            .and_then(|f| f.name);
        if let (true, Some(name)) = (self.admin, name) {
            if let Err(e) = crate::signing::trust_admin(session, &name) {
                eprintln!("agents do not trust `{name}` yet: {e:#}");
            }
        }
        Ok(Outcome::Done)
    }
}

/// Admin: the credentials, as YAML ready for a client's `client_keys.yml`.
pub fn credentials_yaml(response: &Message) -> Result<String, DecodeError> {
    let bad = |reason: String| DecodeError::Body { message_type: TYPE.into(), reason };
    let body = response.body.first().and_then(BodyPart::as_json).ok_or_else(|| bad("no credentials".into()))?;
    let file: ClientKeysFile = serde_json::from_value(body.clone()).map_err(|e| bad(e.to_string()))?;
    if file.server_public_key.is_none() || file.public_key.is_none() || file.private_key.is_none() {
        return Err(bad("incomplete credentials".into()));
    }
    Ok(client_keys_yaml(&file))
}

#[cfg(test)]
mod tests {
    use super::*;
    use pantry_shared::keys::{ClientKeysFile, KeyPair, Role};

    #[test]
    fn credentials_as_yaml() {
        let server = KeyPair::generate().unwrap();
        let pair = KeyPair::generate().unwrap();
        let req = request(Some("web-1"), Role::Admin);
        assert_eq!(parse(&req).unwrap(), (Some("web-1".into()), Role::Admin));
        let resp = respond(&req, &server.public_key, &pair, Some("web-1"), None, None);
        let yaml = credentials_yaml(&Message::from_frames(&resp.to_frames()).unwrap()).unwrap();
        let back: ClientKeysFile = serde_yaml::from_str(&yaml).unwrap();
        assert_eq!(back.name.as_deref(), Some("web-1"));
        assert_eq!(back.server_public_key.as_deref(), Some(server.public_key.as_str()));
        assert_eq!(back.private_key.as_deref(), Some(pair.private_key.as_str()));
    }
}
