//! The server's embedded store: SQLite (`rusqlite`, bundled) in WAL mode at
//! `root_dir/pantry.db`.
//!
//! Writes never happen on the message path: actors hand [`Write`]s to one
//! writer thread, which applies whatever has queued up in one transaction
//! (at most [`BATCH_WINDOW`] after the first), so a burst costs one commit
//! and a write is on disk within that window. Reads (at start, and for
//! queries) use their own connection: WAL lets them run beside the writer.

use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime};

use pantry_shared::commands::client_pending::PendingKey;
use pantry_shared::filter::ClientFilter;
use rusqlite::{params, Connection};
use slog::{error, Logger};

pub const DB_FILE: &str = "pantry.db";

/// How long the writer collects writes before it commits them.
pub const BATCH_WINDOW: Duration = Duration::from_millis(50);

/// The schema, one statement per version; the database's `user_version` says
/// how many have run.
const MIGRATIONS: &[&str] = &[
    "CREATE TABLE pending_keys (
        public_key TEXT PRIMARY KEY,
        address TEXT NOT NULL,
        first_seen TEXT NOT NULL,
        last_seen TEXT NOT NULL,
        attempts INTEGER NOT NULL,
        identity TEXT
    )",
    "CREATE TABLE clients (
        identity TEXT PRIMARY KEY,
        application TEXT,
        environment TEXT,
        roles TEXT NOT NULL,
        key TEXT,
        last_seen INTEGER NOT NULL,
        heartbeat INTEGER NOT NULL
    )",
];

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("database {path}: {source}")]
    Sqlite { path: PathBuf, source: rusqlite::Error },
    #[error("cannot start the database writer: {0}")]
    Thread(std::io::Error),
}

/// One change to the store.
#[derive(Debug)]
pub enum Write {
    PendingKey(PendingKey),
    ForgetPendingKey(String),
    Client(StoredClient),
    /// A client seen again: only its last check-in changes.
    ClientSeen {
        identity: String,
        last_seen: SystemTime,
    },
    ForgetClient(String),
}

/// A registered client as the store keeps it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredClient {
    pub client: ClientFilter,
    pub key: Option<String>,
    pub last_seen: SystemTime,
    pub heartbeat: Duration,
}

fn unix(t: SystemTime) -> i64 {
    t.duration_since(SystemTime::UNIX_EPOCH).map(|d| d.as_secs() as i64).unwrap_or(0)
}

fn from_unix(secs: i64) -> SystemTime {
    SystemTime::UNIX_EPOCH + Duration::from_secs(secs.max(0) as u64)
}

/// Every registered client the store remembers.
pub fn clients(conn: &Connection) -> rusqlite::Result<Vec<StoredClient>> {
    let mut statement =
        conn.prepare("SELECT identity, application, environment, roles, key, last_seen, heartbeat FROM clients")?;
    let rows = statement.query_map([], |r| {
        let roles: String = r.get(3)?;
        Ok(StoredClient {
            client: ClientFilter {
                identity: Some(r.get(0)?),
                application: r.get(1)?,
                environment: r.get(2)?,
                roles: serde_json::from_str(&roles).unwrap_or_default(),
            },
            key: r.get(4)?,
            last_seen: from_unix(r.get(5)?),
            heartbeat: Duration::from_secs(r.get::<_, i64>(6)?.max(1) as u64),
        })
    })?;
    rows.collect()
}

/// Opens (creating and migrating) the database.
pub fn open(path: &Path) -> Result<Connection, StoreError> {
    let err = |source| StoreError::Sqlite { path: path.to_owned(), source };
    let conn = Connection::open(path).map_err(err)?;
    conn.pragma_update(None, "journal_mode", "WAL").map_err(err)?;
    // WAL with synchronous=NORMAL: a committed transaction survives a crash
    // of the process (what SIGKILL tests), and fsyncs happen at checkpoints.
    conn.pragma_update(None, "synchronous", "NORMAL").map_err(err)?;
    conn.busy_timeout(Duration::from_secs(5)).map_err(err)?;
    let version: usize = conn.pragma_query_value(None, "user_version", |r| r.get(0)).map_err(err)?;
    for (i, migration) in MIGRATIONS.iter().enumerate().skip(version) {
        conn.execute_batch(migration).map_err(err)?;
        conn.pragma_update(None, "user_version", i + 1).map_err(err)?;
    }
    Ok(conn)
}

/// Every pending key, most recently seen first.
pub fn pending_keys(conn: &Connection) -> rusqlite::Result<Vec<PendingKey>> {
    let mut statement = conn.prepare(
        "SELECT public_key, address, first_seen, last_seen, attempts, identity FROM pending_keys
         ORDER BY last_seen DESC",
    )?;
    let rows = statement.query_map([], |r| {
        Ok(PendingKey {
            public_key: r.get(0)?,
            address: r.get(1)?,
            first_seen: r.get(2)?,
            last_seen: r.get(3)?,
            attempts: r.get::<_, i64>(4)? as u64,
            identity: r.get(5)?,
        })
    })?;
    rows.collect()
}

/// The sending end of the writer thread.
#[derive(Clone)]
pub struct Writer {
    tx: mpsc::Sender<Write>,
}

impl Writer {
    /// Queues a write; it is committed within [`BATCH_WINDOW`].
    pub fn write(&self, write: Write) {
        // The writer only stops when every sender is gone.
        let _ = self.tx.send(write);
    }
}

/// Starts the writer thread on its own connection to `path`. It ends when
/// every [`Writer`] is dropped, after committing what was queued.
pub fn start_writer(path: &Path, log: Logger) -> Result<(Writer, JoinHandle<()>), StoreError> {
    let conn = open(path)?;
    let (tx, rx) = mpsc::channel();
    let path = path.to_owned();
    let thread = std::thread::Builder::new()
        .name("pantry-store".into())
        .spawn(move || write_loop(conn, &path, rx, log))
        .map_err(StoreError::Thread)?;
    Ok((Writer { tx }, thread))
}

fn write_loop(mut conn: Connection, path: &Path, rx: mpsc::Receiver<Write>, log: Logger) {
    while let Ok(first) = rx.recv() {
        let mut batch = vec![first];
        let until = Instant::now() + BATCH_WINDOW;
        loop {
            let left = until.saturating_duration_since(Instant::now());
            match rx.recv_timeout(left) {
                Ok(write) => batch.push(write),
                Err(_) => break,
            }
        }
        if let Err(e) = apply(&mut conn, &batch) {
            error!(log, "cannot write to the database; these changes are lost";
                "file" => %path.display(), "changes" => batch.len(), "error" => %e);
        }
    }
}

fn apply(conn: &mut Connection, batch: &[Write]) -> rusqlite::Result<()> {
    let tx = conn.transaction()?;
    for write in batch {
        match write {
            Write::PendingKey(k) => {
                tx.execute(
                    "INSERT INTO pending_keys (public_key, address, first_seen, last_seen, attempts, identity)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6)
                     ON CONFLICT (public_key) DO UPDATE SET address = ?2, last_seen = ?4, attempts = ?5,
                         identity = COALESCE(?6, identity)",
                    params![k.public_key, k.address, k.first_seen, k.last_seen, k.attempts as i64, k.identity],
                )?;
            }
            Write::ForgetPendingKey(key) => {
                tx.execute("DELETE FROM pending_keys WHERE public_key = ?1", params![key])?;
            }
            Write::Client(c) => {
                let roles = serde_json::to_string(&c.client.roles).unwrap_or_else(|_| "[]".into());
                tx.execute(
                    "INSERT INTO clients (identity, application, environment, roles, key, last_seen, heartbeat)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)
                     ON CONFLICT (identity) DO UPDATE SET application = ?2, environment = ?3, roles = ?4, key = ?5,
                         last_seen = ?6, heartbeat = ?7",
                    params![
                        c.client.identity.as_deref().unwrap_or_default(),
                        c.client.application,
                        c.client.environment,
                        roles,
                        c.key,
                        unix(c.last_seen),
                        c.heartbeat.as_secs() as i64
                    ],
                )?;
            }
            Write::ClientSeen { identity, last_seen } => {
                tx.execute(
                    "UPDATE clients SET last_seen = ?2 WHERE identity = ?1",
                    params![identity, unix(*last_seen)],
                )?;
            }
            Write::ForgetClient(identity) => {
                tx.execute("DELETE FROM clients WHERE identity = ?1", params![identity])?;
            }
        }
    }
    tx.commit()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(name: &str, identity: Option<&str>) -> PendingKey {
        PendingKey {
            public_key: name.into(),
            address: "127.0.0.1".into(),
            first_seen: "2026-01-01T00:00:00Z".into(),
            last_seen: "2026-01-01T00:00:01Z".into(),
            attempts: 1,
            identity: identity.map(Into::into),
        }
    }

    #[test]
    fn writes_are_batched_committed_and_read_back() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(DB_FILE);
        let log = slog::Logger::root(slog::Discard, slog::o!());
        let (writer, thread) = start_writer(&path, log).unwrap();
        writer.write(Write::PendingKey(key("a", Some("web-1"))));
        writer.write(Write::PendingKey(key("b", None)));
        // A later attempt without a claimed identity keeps the one known.
        writer.write(Write::PendingKey(PendingKey { attempts: 2, ..key("a", None) }));
        writer.write(Write::ForgetPendingKey("b".into()));
        drop(writer);
        thread.join().unwrap();
        let conn = open(&path).unwrap();
        let all = pending_keys(&conn).unwrap();
        assert_eq!(all.len(), 1);
        assert_eq!((all[0].attempts, all[0].identity.as_deref()), (2, Some("web-1")));
        // Opening again does not migrate twice.
        drop(conn);
        assert_eq!(pending_keys(&open(&path).unwrap()).unwrap().len(), 1);
    }

    #[test]
    fn clients_are_kept_seen_and_forgotten() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(DB_FILE);
        let log = slog::Logger::root(slog::Discard, slog::o!());
        let (writer, thread) = start_writer(&path, log).unwrap();
        let web = StoredClient {
            client: ClientFilter {
                identity: Some("web1.example.com".into()),
                application: Some("shop".into()),
                environment: None,
                roles: vec!["web".into(), "db".into()],
            },
            key: Some("k".into()),
            last_seen: from_unix(1_700_000_000),
            heartbeat: Duration::from_secs(30),
        };
        writer.write(Write::Client(web.clone()));
        writer.write(Write::Client(StoredClient {
            client: ClientFilter { identity: Some("gone".into()), ..Default::default() },
            ..web.clone()
        }));
        writer.write(Write::ClientSeen { identity: "web1.example.com".into(), last_seen: from_unix(1_700_000_100) });
        writer.write(Write::ForgetClient("gone".into()));
        drop(writer);
        thread.join().unwrap();
        let all = clients(&open(&path).unwrap()).unwrap();
        assert_eq!(all, [StoredClient { last_seen: from_unix(1_700_000_100), ..web }]);
    }
}
