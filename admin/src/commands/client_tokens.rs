//! `client:tokens`: the outstanding enrollment tokens.

use crate::session::{Outcome, Session};
use pantry_shared::commands::client_tokens::*;

use crate::session::{Admin, Wait};

/// List the outstanding enrollment tokens: id, name, uses left, expiry.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// Print JSON for scripts.
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub wait: Wait,
}

impl Admin for Args {
    fn wait(&self, global: f64) -> f64 {
        self.wait.or(global)
    }

    fn run(self, session: &mut Session) -> anyhow::Result<Outcome> {
        let response = session.ask_server(request())?;
        let tokens = tokens(&response);
        if self.json {
            println!("{}", serde_json::to_string_pretty(&tokens)?);
        } else {
            print!("{}", format_table(&tokens));
        }
        Ok(Outcome::Done)
    }
}

/// Admin: a table.
pub fn format_table(tokens: &[TokenStatus]) -> String {
    if tokens.is_empty() {
        return "no outstanding tokens\n".into();
    }
    let mut out = format!("{:<14} {:<24} {:>9} {}\n", "ID", "NAME", "USES LEFT", "EXPIRES");
    for t in tokens {
        let name = t.name.as_deref().unwrap_or("(agent's identity)");
        out.push_str(&format!("{:<14} {:<24} {:>9} {}\n", t.id, name, t.uses_left, t.expires));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use pantry_shared::keys::Token;
    use pantry_shared::Message;

    #[test]
    fn list_round_trip_never_holds_a_token() {
        let token = Token {
            hash: pantry_shared::keys::token_hash("s3cr3t"),
            name: Some("web-3".into()),
            uses_left: 1,
            expires: "2030-01-01T00:00:00Z".into(),
            created: None,
        };
        let response = respond(&request(), std::slice::from_ref(&token));
        let text = String::from_utf8_lossy(&response.to_frames().concat()).into_owned();
        assert!(!text.contains("s3cr3t") && !text.contains(&token.hash), "{text}");
        let back = tokens(&Message::from_frames(&response.to_frames()).unwrap());
        assert_eq!(back[0].id, token.id());
        assert!(format_table(&back).contains("web-3"));
    }
}
