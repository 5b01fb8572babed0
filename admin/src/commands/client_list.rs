//! `client:list`: every known key, as a table or JSON.

use crate::session::{Outcome, Session};
use pantry_shared::commands::client_list::*;
use std::time::SystemTime;

use crate::session::{Admin, Wait};

/// List the server's known keys: name, role, key, created, last seen,
/// connected.
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
        let keys = keys(&response);
        if self.json {
            println!("{}", serde_json::to_string_pretty(&keys)?);
        } else {
            print!("{}", format_table(&keys, SystemTime::now()));
        }
        Ok(Outcome::Done)
    }
}

/// Admin: a table.
pub fn format_table(keys: &[KeyStatus], now: SystemTime) -> String {
    if keys.is_empty() {
        return "no known keys\n".into();
    }
    let mut out =
        format!("{:<20} {:<6} {:<40} {:<20} {:<16} {}\n", "NAME", "ROLE", "KEY", "CREATED", "LAST SEEN", "CONNECTED");
    for k in keys {
        let seen = k.last_seen.as_deref().map(|t| crate::session::ago(t, now)).unwrap_or_else(|| "never".into());
        let created = k.created.as_deref().unwrap_or("-");
        let connected = if k.connected { "yes" } else { "no" };
        out.push_str(&format!(
            "{:<20} {:<6} {:<40} {:<20} {:<16} {}\n",
            k.name.as_deref().unwrap_or("(unbound)"),
            k.role,
            k.public_key,
            created,
            seen,
            connected
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use pantry_shared::keys::{KnownKey, Role};
    use pantry_shared::Message;

    #[test]
    fn list_round_trip() {
        let known = vec![KnownKey {
            public_key: "k".repeat(40),
            name: Some("web-1".into()),
            role: Role::Client,
            created: None,
        }];
        let resp = respond(&request(), &known, |_| (None, true));
        let back = keys(&Message::from_frames(&resp.to_frames()).unwrap());
        assert_eq!(back.len(), 1);
        assert!(back[0].connected);
        assert!(format_table(&back, SystemTime::now()).contains("web-1"));
    }
}
