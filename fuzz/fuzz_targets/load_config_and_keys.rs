//! Fuzz the config and key-store loaders with arbitrary file contents:
//! errors, never a panic.
#![no_main]

use std::path::Path;

use libfuzzer_sys::fuzz_target;
use pantry_shared::config::{Config, Program};
use pantry_shared::keys::{self, ClientKeys};
use pantry_server::key_file::ServerKeyStore;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    let _ = Config::parse(text, Path::new("fuzz.yml"), Program::Server);
    let _ = Config::parse(text, Path::new("fuzz.yml"), Program::Client);
    let Ok(root) = tempfile::tempdir() else { return };
    let dir = keys::curve_dir(root.path());
    if keys::ensure_private_dir(&dir).is_err() {
        return;
    }
    let server_file = dir.join(keys::SERVER_KEYS_FILE);
    if std::fs::write(&server_file, text).is_ok() {
        let _ = ServerKeyStore::open(root.path());
    }
    let client_file = dir.join(keys::CLIENT_KEYS_FILE);
    if std::fs::write(&client_file, text).is_ok() {
        let _ = ClientKeys::load(&client_file, false);
    }
});
