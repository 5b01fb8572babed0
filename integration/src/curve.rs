//! Helpers for tests under CURVE: admin key files in `<cwd>/.pantry/`,
//! bootstrapping the first admin by trust on first use, enrolling named
//! clients, and reading what the processes log.

use std::path::{Path, PathBuf};
use std::time::Duration;

use pantry_shared::keys::KeyPair;
use tempfile::TempDir;

use crate::{wait_until, Server};

/// The admin's key file name, in `<cwd>/.pantry/`.
pub const KEYS: &str = "keys.yml";

/// Writes `<cwd>/.pantry/<name>`.
pub fn write_key_file(cwd: &Path, name: &str, contents: &str) -> PathBuf {
    let dir = cwd.join(".pantry");
    std::fs::create_dir_all(&dir).expect("create .pantry");
    let path = dir.join(name);
    std::fs::write(&path, contents).expect("write key file");
    path
}

/// A key file holding only the server's public key.
pub fn server_key_only(server_public_key: &str) -> String {
    format!("---\nserver_public_key: '{server_public_key}'\n")
}

/// A key file holding all three keys.
pub fn full_keys(server_public_key: &str, pair: &KeyPair) -> String {
    format!(
        "---\nserver_public_key: '{server_public_key}'\npublic_key: '{}'\nprivate_key: '{}'\n",
        pair.public_key, pair.private_key
    )
}

pub fn yaml(text: &str) -> serde_yaml::Value {
    serde_yaml::from_str(text).unwrap_or_else(|e| panic!("not YAML ({e}):\n{text}"))
}

pub fn field(value: &serde_yaml::Value, name: &str) -> String {
    value[name].as_str().unwrap_or_else(|| panic!("no `{name}` in {value:?}")).to_owned()
}

/// The first log line that contains every needle.
pub fn line_with(log: &str, needles: &[&str]) -> Option<String> {
    log.lines().find(|l| needles.iter().all(|n| l.contains(n))).map(str::to_owned)
}

/// Waits (bounded) for a log line with every needle and returns it.
pub fn wait_for_line(read: impl Fn() -> String, needles: &[&str], timeout: Duration) -> Option<String> {
    let mut found = None;
    wait_until(timeout, || {
        found = line_with(&read(), needles);
        found.is_some()
    });
    found
}

/// An admin working directory whose `.pantry/keys.yml` holds only the
/// server's public key, enrolled by one `status` (trust on first use on a new
/// server). Returns the directory and the admin's public key.
pub fn bootstrap_admin(server: &Server) -> (TempDir, String) {
    let cwd = tempfile::tempdir().expect("temp dir");
    let path = write_key_file(cwd.path(), KEYS, &server_key_only(&server.public_key()));
    let run = server.admin_in(cwd.path(), &["--curve-key-file", KEYS, "--timeout", "5", "status"]);
    assert!(run.success(), "bootstrap status failed: {run:?}\nserver log:\n{}", server.log());
    let keys = yaml(&std::fs::read_to_string(&path).expect("keys file"));
    (cwd, field(&keys, "public_key"))
}

/// `client:create --name NAME` from an enrolled admin: the credentials as
/// YAML. An agent's identity must be its key's name.
pub fn create_named_client(server: &Server, cwd: &Path, name: &str) -> String {
    let run = server.admin_in(cwd, &["--curve-key-file", KEYS, "--timeout", "5", "client:create", "--name", name]);
    assert!(run.success(), "client:create failed: {run:?}");
    run.stdout
}

/// The 32 bytes of a Z85 key.
pub fn decode(z85: &str) -> Vec<u8> {
    zmq::z85_decode(z85).expect("Z85 key")
}
