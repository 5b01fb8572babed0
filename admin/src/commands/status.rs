//! `status`: the registered clients, as a table or JSON.

use crate::session::{Outcome, Session};
use pantry_shared::commands::status::*;
use std::time::SystemTime;

use crate::session::{ago, short_ago, Admin, Wait};

/// List checked-in clients matching -a/-e/-r: last check-in, identity,
/// application, environment, roles.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// Print JSON for scripts.
    #[arg(long)]
    pub json: bool,
    /// Only the clients that are online.
    #[arg(long, conflicts_with = "offline")]
    pub online: bool,
    /// Only the clients that are offline.
    #[arg(long)]
    pub offline: bool,
    #[command(flatten)]
    pub wait: Wait,
}

impl Admin for Args {
    fn wait(&self, global: f64) -> f64 {
        self.wait.or(global)
    }

    /// Admin: asks for the clients `-a/-e/-r/-i` select and prints them.
    fn run(self, session: &mut Session) -> anyhow::Result<Outcome> {
        let request = session.selecting(request(&session.filter));
        let response = session.ask_server(request)?;
        session.say_unknown(&[])?;
        let mut clients = clients(&response);
        if self.online || self.offline {
            let wanted = if self.online { ONLINE } else { OFFLINE };
            clients.retain(|c| c.state == wanted);
        }
        if self.json {
            println!("{}", serde_json::to_string_pretty(&clients)?);
        } else {
            print!("{}", format_table(&clients, SystemTime::now()));
        }
        Ok(Outcome::Done)
    }
}

/// Admin: a table, or "no clients checked in".
pub fn format_table(clients: &[ClientStatus], now: SystemTime) -> String {
    if clients.is_empty() {
        return "no clients checked in\n".into();
    }
    // A cluster's clients say which server they are on.
    let clustered = clients.iter().any(|c| c.server.is_some());
    let rows: Vec<Vec<String>> = clients
        .iter()
        .map(|c| {
            let mut row = vec![
                match c.state.as_str() {
                    OFFLINE => format!("offline {}", short_ago(&c.last_checked_in, now)),
                    other => other.to_owned(),
                },
                ago(&c.last_checked_in, now),
                c.identity.clone(),
                c.application.clone().unwrap_or_else(|| "-".into()),
                c.environment.clone().unwrap_or_else(|| "-".into()),
                if c.roles.is_empty() { "-".into() } else { c.roles.join(",") },
            ];
            if clustered {
                row.push(c.server.clone().unwrap_or_else(|| "-".into()));
            }
            row
        })
        .collect();
    let mut header: Vec<String> =
        ["STATE", "LAST CHECK-IN", "IDENTITY", "APPLICATION", "ENVIRONMENT", "ROLES"].map(String::from).to_vec();
    if clustered {
        header.push("SERVER".into());
    }
    let mut widths: Vec<usize> = header.iter().map(String::len).collect();
    for row in &rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let mut out = String::new();
    for row in std::iter::once(&header).chain(&rows) {
        let cells: Vec<String> = row.iter().zip(&widths).map(|(c, &w)| format!("{c:<w$}")).collect();
        out.push_str(cells.join("  ").trim_end());
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::session::ago;
    use pantry_shared::filter::ClientFilter;
    use pantry_shared::Message;
    use std::time::Duration;

    #[test]
    fn respond_and_read_back() {
        let req = request(&ClientFilter { application: Some("pantry".into()), ..Default::default() });
        let back = Message::from_frames(&req.to_frames()).unwrap();
        let filter = parse(&back).unwrap();
        assert_eq!(filter.application.as_deref(), Some("pantry"));
        let c = ClientFilter { identity: Some("h1".into()), application: Some("pantry".into()), ..Default::default() };
        let t = SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        let d = ClientFilter { identity: Some("h2".into()), ..Default::default() };
        let records = [
            ClientRecord { client: &c, last_seen: t, online: true, server: None },
            ClientRecord { client: &d, last_seen: t, online: false, server: None },
        ];
        let resp = respond(&back, records.into_iter());
        let list = clients(&resp);
        assert_eq!(list.len(), 2);
        assert_eq!((list[0].last_checked_in.as_str(), list[0].state.as_str()), ("2023-11-14T22:13:20Z", "online"));
        assert_eq!((list[1].last_seen.as_str(), list[1].state.as_str()), ("2023-11-14T22:13:20Z", "offline"));
        let table = format_table(&list, t + Duration::from_secs(300));
        assert!(table.contains("5 minutes ago") && table.contains("h1"), "{table}");
        assert!(table.contains("offline 5m"), "{table}");
    }

    #[test]
    fn empty_and_relative_times() {
        assert_eq!(format_table(&[], SystemTime::now()), "no clients checked in\n");
        let t = SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        let s = humantime::format_rfc3339_seconds(t).to_string();
        assert_eq!(ago(&s, t + Duration::from_secs(1)), "1 second ago");
        assert_eq!(ago(&s, t + Duration::from_secs(120)), "2 minutes ago");
        assert_eq!(ago(&s, t + Duration::from_secs(7200)), "2 hours ago");
    }
}
