//! `client:token`, `client:token --revoke` and `client:tokens`: enrollment
//! tokens, of which the key store keeps only hashes (CURVE).

use std::time::SystemTime;

use pantry_shared::commands::{client_token, client_tokens};
use pantry_shared::keys::{self, Token};
use pantry_shared::Message;

use crate::key_store::{AddToken, ListTokens, RevokeToken};

use super::{reply, Done, Services};
use crate::dispatch::Refused;

pub async fn create(s: Services, m: Message) -> Done {
    let result: Result<_, Refused> = async {
        let keys = s.keys()?;
        let asked = client_token::parse(&m).map_err(|e| e.to_string())?;
        let token = client_token::new_token().map_err(|e| format!("cannot make a random token: {e}"))?;
        let now = SystemTime::now();
        let expires = humantime::format_rfc3339_seconds(now + asked.ttl).to_string();
        let stored = Token {
            hash: keys::token_hash(&token),
            name: asked.name,
            uses_left: asked.uses,
            expires: expires.clone(),
            created: Some(humantime::format_rfc3339_seconds(now).to_string()),
        };
        match keys.send(AddToken(stored)).await {
            Ok(Ok(())) => Ok(client_token::respond(&m, &token, &expires)),
            Ok(Err(e)) => Err(Refused::from(format!("cannot store the token: {e}"))),
            Err(e) => Err(Refused::from(format!("key store unavailable: {e}"))),
        }
    }
    .await;
    reply(&m, result)
}

pub async fn revoke(s: Services, m: Message) -> Done {
    let result: Result<_, Refused> = async {
        let keys = s.keys()?;
        let id = client_token::revoked_id(&m).ok_or("client:token --revoke needs a token id")?.to_owned();
        match keys.send(RevokeToken { id }).await {
            Ok(Ok(_)) => Ok(m.response()),
            Ok(Err(e)) => Err(Refused::from(format!("cannot revoke the token: {e}"))),
            Err(e) => Err(Refused::from(format!("key store unavailable: {e}"))),
        }
    }
    .await;
    reply(&m, result)
}

pub async fn list(s: Services, m: Message) -> Done {
    let result: Result<_, Refused> = async {
        match s.keys()?.send(ListTokens).await {
            Ok(Ok(tokens)) => Ok(client_tokens::respond(&m, &tokens)),
            Ok(Err(e)) => Err(Refused::from(format!("cannot read the tokens: {e}"))),
            Err(e) => Err(Refused::from(format!("key store unavailable: {e}"))),
        }
    }
    .await;
    reply(&m, result)
}
