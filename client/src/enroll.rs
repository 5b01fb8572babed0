//! `pantry-client enroll --token TOKEN`: enrollment where the private key
//! never leaves this machine. The agent makes its key pair here, connects
//! with it (the server admits an unknown key on its receive port, to enroll
//! only), sends the token, and on success writes
//! `root_dir/security/curve/client_keys.yml` (directory 0700, file 0600)
//! with the server's public key, the pair and the name the server bound it
//! to. On any refusal nothing is written.

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context as _, Result};
use pantry_shared::commands::enroll::{self, EnrollRequest, Enrolled};
use pantry_shared::config::{hostname, Config};
use pantry_shared::keys::{self, ClientKeys, ClientKeysFile, KeyPair};
use pantry_shared::monitor::{self, SocketEvent};
use pantry_shared::security::SocketSecurity;
use pantry_shared::Message;

/// How long to wait for the server's answer.
const WAIT: Duration = Duration::from_secs(10);

pub fn run(config: &Config, token: &str, server_public_key: Option<&str>) -> Result<()> {
    if !config.networking.is_curve() {
        bail!("enroll needs networking.security: curve in the config");
    }
    let dir = keys::curve_dir(config.root_dir());
    let path = dir.join(keys::CLIENT_KEYS_FILE);
    let existing: Option<ClientKeysFile> = std::fs::read_to_string(&path)
        .ok()
        .map(|text| serde_yaml::from_str(&text).with_context(|| format!("cannot read {}", path.display())))
        .transpose()?;
    if existing.as_ref().is_some_and(|f| f.private_key.is_some()) {
        bail!("{} already holds a key pair: this agent is enrolled (remove the file to enroll again)", path.display());
    }
    let server_public_key = server_public_key
        .map(str::to_owned)
        .or_else(|| existing.and_then(|f| f.server_public_key))
        .or_else(|| config.networking.server_public_key.clone())
        .context("no server public key: pass --server-public-key KEY (the server logs it at startup)")?;
    keys::decode_key(&server_public_key, Path::new("--server-public-key"), "server_public_key")?;

    let pair = KeyPair::generate()?;
    let mut credentials = ClientKeys {
        path: path.clone(),
        server_public_key,
        keys: pair,
        name: None,
        generated: true,
        signing: None,
        trusted_admins: None,
    };
    let request = EnrollRequest {
        token: Some(token.trim().to_owned()),
        identity: config.client.identity.clone(),
        hostname: hostname(),
    };
    let endpoint = config.networking.endpoint(config.networking.receive_port);
    let (name, trusted) = match ask(&credentials, &endpoint, &request)? {
        (Enrolled::Accepted { name }, trusted) => (name, trusted),
        (Enrolled::Waiting, _) => bail!("the server put this key on its pending list instead of enrolling it"),
    };
    keys::ensure_private_dir(&dir)?;
    credentials.name = Some(name.clone());
    credentials.trusted_admins = trusted;
    credentials.save()?;
    println!("enrolled as {name}; keys written to {}", path.display());
    Ok(())
}

/// Sends the request with the new key and waits for the answer, saying
/// plainly why none came.
/// The answer carries the admins the agent is to trust.
fn ask(
    credentials: &ClientKeys,
    endpoint: &str,
    request: &EnrollRequest,
) -> Result<(Enrolled, Option<pantry_shared::signing::TrustList>)> {
    let ctx = zmq::Context::new();
    let dealer = SocketSecurity::client(credentials)?.socket(&ctx, zmq::DEALER)?;
    let events = monitor::monitor(&ctx, &dealer, monitor::CLIENT_EVENTS)?;
    dealer.connect(endpoint).with_context(|| format!("cannot connect to {endpoint}"))?;
    let message = enroll::request(request);
    dealer.send_multipart(message.to_frames(), 0)?;
    let end = Instant::now() + WAIT;
    let (mut connected, mut failed) = (false, false);
    loop {
        let left = end.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(match (connected, failed) {
                (_, true) => anyhow!("{}", monitor::no_handshake_text(endpoint, Path::new("--server-public-key"))),
                (true, false) => anyhow!("connected to {endpoint} but no answer within {} s", WAIT.as_secs()),
                (false, false) => anyhow!("cannot reach the server at {endpoint}"),
            });
        }
        let mut items = [dealer.as_poll_item(zmq::POLLIN), events.as_poll_item(zmq::POLLIN)];
        zmq::poll(&mut items, left.as_millis().max(1) as i64)?;
        while let Some(event) = monitor::read(&events) {
            match event.event {
                SocketEvent::Connected => connected = true,
                SocketEvent::HandshakeFailedAuth(status) => {
                    bail!("the server refused this key's handshake (ZAP status {status})")
                }
                SocketEvent::HandshakeFailedNoDetail | SocketEvent::HandshakeFailedProtocol(_) => failed = true,
                _ => {}
            }
        }
        while let Ok(frames) = dealer.recv_multipart(zmq::DONTWAIT) {
            if let Ok(answer) = Message::from_frames(&frames) {
                if answer.uuid() == message.uuid() {
                    let outcome = enroll::outcome(&answer).map_err(|reason| anyhow!("enrollment refused: {reason}"))?;
                    return Ok((outcome, pantry_shared::commands::trust::carried(&answer)));
                }
            }
        }
    }
}
