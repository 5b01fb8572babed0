//! Helpers for tests under CURVE: admin key files in `<cwd>/.pantry/`,
//! bootstrapping the first admin by trust on first use, enrolling named
//! clients, and reading what the processes log.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use pantry_shared::keys::KeyPair;
use pantry_shared::Message;
use tempfile::TempDir;

use crate::{wait_until, AdminRun, Server};

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

/// Copies `server`'s `server_keys.yml` (its key pair and every client key)
/// into `root_dir`, with the modes the server insists on: another server
/// started there serves the same keys.
pub fn copy_key_store(server: &Server, root_dir: &Path) {
    use std::os::unix::fs::PermissionsExt;
    let from = server.root_dir().join("security/curve").join(pantry_shared::keys::SERVER_KEYS_FILE);
    let dir = root_dir.join("security/curve");
    std::fs::create_dir_all(&dir).expect("create curve dir");
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700)).expect("chmod curve dir");
    let to = dir.join(pantry_shared::keys::SERVER_KEYS_FILE);
    std::fs::copy(&from, &to).unwrap_or_else(|e| panic!("copy {}: {e}", from.display()));
    std::fs::set_permissions(&to, std::fs::Permissions::from_mode(0o600)).expect("chmod server_keys.yml");
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
    pantry_shared::z85::decode(z85).expect("Z85 key")
}

/// The key pair in a credentials YAML (`client:create` output).
pub fn pair_of(credentials: &str) -> KeyPair {
    let parsed = yaml(credentials);
    KeyPair { public_key: field(&parsed, "public_key"), private_key: field(&parsed, "private_key") }
}

/// The admin's key pair, read back from its `.pantry/keys.yml`.
pub fn admin_pair(cwd: &Path) -> KeyPair {
    pair_of(&std::fs::read_to_string(cwd.join(".pantry").join(KEYS)).expect("admin keys file"))
}

/// What the server logged after `offset` bytes.
pub fn log_since(server: &Server, offset: usize) -> String {
    server.log().get(offset..).unwrap_or_default().to_owned()
}

/// `pantry-admin --curve-key-file keys.yml --timeout SECONDS ARGS...` from `cwd`.
pub fn admin(server: &Server, cwd: &Path, timeout: u32, args: &[&str]) -> AdminRun {
    let timeout = timeout.to_string();
    let mut all = vec!["--curve-key-file", KEYS, "--timeout", &timeout];
    all.extend_from_slice(args);
    server.admin_in(cwd, &all)
}

/// A directory whose `.pantry/keys.yml` holds `pair` (any role).
pub fn keys_dir(server: &Server, pair: &KeyPair) -> TempDir {
    let cwd = tempfile::tempdir().expect("temp dir");
    write_key_file(cwd.path(), KEYS, &full_keys(&server.public_key(), pair));
    cwd
}

/// Signs `request` as the admin whose key file is `cwd/.pantry/keys.yml`
/// (agents with a trust list run only signed requests).
pub fn sign_as_admin(cwd: &Path, request: &mut pantry_shared::Message) {
    let text = std::fs::read_to_string(cwd.join(".pantry").join(KEYS)).expect("admin key file");
    let file: pantry_shared::keys::ClientKeysFile = serde_yaml::from_str(&text).expect("admin key file parses");
    let (public, private) =
        (file.signing_public_key.expect("signing key"), file.signing_private_key.expect("signing key"));
    let pair = pantry_shared::signing::SigningPair::from_hex(&public, &private).expect("signing pair");
    pantry_shared::signing::sign(request, &pair, "admin", pantry_shared::signing::DEFAULT_TTL);
}

/// A directory whose `.pantry/keys.yml` holds `credentials` as
/// `client:create` printed them (an admin's signing key included).
pub fn credentials_dir(credentials: &str) -> TempDir {
    let cwd = tempfile::tempdir().expect("temp dir");
    write_key_file(cwd.path(), KEYS, credentials);
    cwd
}

/// A CURVE socket of `kind` with `pair`, connected to `port` on loopback.
pub fn curve_socket(
    ctx: &zmq::Context,
    server: &Server,
    pair: &KeyPair,
    kind: zmq::SocketType,
    port: u16,
) -> zmq::Socket {
    let socket = ctx.socket(kind).expect("socket");
    connect_curve(&socket, server, pair, port);
    socket
}

/// Gives `socket` the CURVE keys and connects it to `port` on loopback.
pub fn connect_curve(socket: &zmq::Socket, server: &Server, pair: &KeyPair, port: u16) {
    socket.set_linger(0).unwrap();
    socket.set_curve_serverkey(&decode(&server.public_key())).unwrap();
    socket.set_curve_publickey(&decode(&pair.public_key)).unwrap();
    socket.set_curve_secretkey(&decode(&pair.private_key)).unwrap();
    socket.connect(&format!("tcp://127.0.0.1:{port}")).unwrap();
}

/// A CURVE DEALER on the server's receive port with `pair`.
pub fn curve_dealer(ctx: &zmq::Context, server: &Server, pair: &KeyPair) -> zmq::Socket {
    curve_socket(ctx, server, pair, zmq::DEALER, server.ports.receive)
}

pub fn send(dealer: &zmq::Socket, message: &Message) {
    dealer.send_multipart(message.to_frames(), 0).expect("send");
}

/// The first message for `uuid` within `timeout`.
pub fn recv_for(dealer: &zmq::Socket, uuid: &str, timeout: Duration) -> Option<Message> {
    let end = Instant::now() + timeout;
    loop {
        let left = end.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return None;
        }
        let mut items = [dealer.as_poll_item(zmq::POLLIN)];
        zmq::poll(&mut items, left.as_millis().max(1) as i64).expect("poll");
        while let Ok(frames) = dealer.recv_multipart(zmq::DONTWAIT) {
            if let Ok(m) = Message::from_frames(&frames) {
                if m.uuid() == uuid {
                    return Some(m);
                }
            }
        }
    }
}
