//! `status`: the server lists the checked-in clients that match a filter:
//! when each last checked in, identity, application, environment, roles.

use std::time::SystemTime;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::error::DecodeError;
use crate::filter::{ClientFilter, Identities};
use crate::message::{BodyPart, Message};
use crate::session::{Outcome, Session};

use super::{Admin, Rule, RunsOn, Senders, Wait};

pub const TYPE: &str = "Status";

pub const RULE: Rule =
    Rule { wire: TYPE, runs_on: RunsOn::Server, senders: Senders::Admins, may_block: false, job: false };

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

/// Admin: the body is the filter `{application, environment, roles,
/// identity}`; nulls and `[]` mean any.
pub fn request(filter: &ClientFilter) -> Message {
    let mut m = Message::new(TYPE);
    m.metadata.requires_response = true;
    m.body.push(BodyPart::Json(serde_json::to_value(filter).unwrap_or(Value::Null)));
    m
}

/// One line of the answer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ClientStatus {
    pub identity: String,
    pub application: Option<String>,
    pub environment: Option<String>,
    pub roles: Vec<String>,
    /// RFC 3339, UTC (the same as `last_seen`; kept for older readers).
    pub last_checked_in: String,
    /// `online` or `offline`.
    #[serde(default = "online")]
    pub state: String,
    /// RFC 3339, UTC: the last check-in.
    #[serde(default)]
    pub last_seen: String,
    /// In a cluster: the server the client is connected to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub server: Option<String>,
}

fn online() -> String {
    ONLINE.into()
}

pub const ONLINE: &str = "online";
pub const OFFLINE: &str = "offline";

/// One registered client as the server knows it.
pub struct ClientRecord<'a> {
    pub client: &'a ClientFilter,
    pub last_seen: SystemTime,
    pub online: bool,
    /// In a cluster: the server it is on.
    pub server: Option<&'a str>,
}

/// Server: read the filter (an absent body selects everyone).
pub fn parse(request: &Message) -> Result<ClientFilter, DecodeError> {
    match request.body.first() {
        None => Ok(ClientFilter::default()),
        Some(BodyPart::Json(v)) => serde_json::from_value(v.clone())
            .map_err(|e| DecodeError::Body { message_type: TYPE.into(), reason: e.to_string() }),
        Some(_) => Err(DecodeError::Body { message_type: TYPE.into(), reason: "filter is not a JSON object".into() }),
    }
}

/// Server: the response, one body part per matching client.
pub fn respond<'a>(request: &Message, clients: impl Iterator<Item = ClientRecord<'a>>) -> Message {
    let mut response = request.response();
    response.metadata.custom.insert("client_response_list".into(), Value::Bool(false));
    for record in clients {
        let client = record.client;
        let seen = humantime::format_rfc3339_seconds(record.last_seen).to_string();
        let line = ClientStatus {
            identity: client.identity.clone().unwrap_or_default(),
            application: client.application.clone(),
            environment: client.environment.clone(),
            roles: client.roles.clone(),
            last_checked_in: seen.clone(),
            state: if record.online { ONLINE } else { OFFLINE }.into(),
            last_seen: seen,
            server: record.server.map(str::to_owned),
        };
        response.body.push(BodyPart::Json(serde_json::to_value(line).unwrap_or(Value::Null)));
    }
    response
}

impl Admin for Args {
    fn wait(&self, global: f64) -> f64 {
        self.wait.or(global)
    }

    /// Admin: asks for the clients `-a/-e/-r/-i` select and prints them.
    fn run(self, session: &mut Session) -> anyhow::Result<Outcome> {
        let mut request = request(&session.filter);
        Identities::attach(&mut request, &session.identities);
        let response = session.ask_server(request)?;
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

/// Admin: the clients in the response, sorted by identity. Parts that do not
/// read as a client are skipped.
pub fn clients(response: &Message) -> Vec<ClientStatus> {
    let mut list: Vec<ClientStatus> = response
        .body
        .iter()
        .filter_map(BodyPart::as_json)
        .filter_map(|v| serde_json::from_value(v.clone()).ok())
        .collect();
    list.sort_by(|a, b| a.identity.cmp(&b.identity));
    list
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

/// "5m", "2h", "3d", "40s": how long ago, short.
pub fn short_ago(rfc3339: &str, now: SystemTime) -> String {
    let Ok(then) = humantime::parse_rfc3339_weak(rfc3339) else {
        return "?".into();
    };
    let secs = now.duration_since(then).map(|d| d.as_secs()).unwrap_or(0);
    match secs {
        0..=59 => format!("{secs}s"),
        60..=3599 => format!("{}m", secs / 60),
        3600..=86_399 => format!("{}h", secs / 3600),
        _ => format!("{}d", secs / 86_400),
    }
}

/// "12 seconds ago", from an RFC 3339 time.
pub fn ago(rfc3339: &str, now: SystemTime) -> String {
    let Ok(then) = humantime::parse_rfc3339_weak(rfc3339) else {
        return rfc3339.to_owned();
    };
    let secs = now.duration_since(then).map(|d| d.as_secs()).unwrap_or(0);
    let (n, unit) = match secs {
        0..=59 => (secs, "second"),
        60..=3599 => (secs / 60, "minute"),
        3600..=86_399 => (secs / 3600, "hour"),
        _ => (secs / 86_400, "day"),
    };
    format!("{n} {unit}{} ago", if n == 1 { "" } else { "s" })
}

#[cfg(test)]
mod tests {
    use super::*;
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
