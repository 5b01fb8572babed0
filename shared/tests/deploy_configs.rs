//! The configs shipped in `deploy/` are valid: a typo there would stop every
//! fresh installation.

use std::path::Path;

use pantry_shared::config::{Config, Program};

fn load(rel: &str, program: Program) -> Config {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("..").join(rel);
    Config::load(&path, program).unwrap_or_else(|e| panic!("{rel}: {e}"))
}

#[test]
fn shipped_configs_load() {
    let server = load("deploy/server.yml", Program::Server);
    assert_eq!(server.networking.receive_port, 23002);
    assert_eq!(server.root_dir(), Path::new("/var/lib/pantry/server"));
    let client = load("deploy/client.yml", Program::Client);
    assert_eq!(client.client.heartbeat_interval, 300);
    assert_eq!(client.client.reconnect_spread.0, std::time::Duration::from_secs(10));
    assert_eq!(server.networking.handshake_rate, pantry_shared::config::DEFAULT_HANDSHAKE_RATE);
    let dev = load("deploy/dev/server.yml", Program::Server);
    assert_eq!(dev.networking.server_host, "127.0.0.1");
    let dev_client = load("deploy/dev/client.yml", Program::Client);
    assert_eq!(dev_client.client.application.as_deref(), Some("pantry"));
}
