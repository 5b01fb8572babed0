//! The baseline: the same socket pattern as Pantry done by raw libzmq with no
//! Pantry logic. A ROUTER takes requests in, a PUB sends them out, agents
//! answer over DEALER and the ROUTER forwards each answer to the requester.
//! Under CURVE a trivial ZAP handler accepts every key.
//!
//! Wire protocol (every frame opaque bytes):
//!
//! - requester → relay (DEALER → ROUTER): `["Q", topic, payload]`
//! - relay → agents (PUB): `[topic, requester routing id, payload]`
//! - agent → relay (DEALER → ROUTER): `["A", requester routing id, payload]`
//! - relay → requester (ROUTER → DEALER): `[payload]`
//!
//! Socket options are Pantry's (linger 0, ROUTER_MANDATORY, ZAP domain)
//! except one: the ROUTER has no send high-water mark.

use std::io::Read;
use std::os::fd::AsRawFd;

use anyhow::{Context as _, Result};
use pantry_shared::security::{ZAP_DOMAIN, ZAP_ENDPOINT};

/// What the relay prints once its sockets are bound.
pub const READY: &str = "relay ready";

pub const REQUEST: &[u8] = b"Q";
pub const ANSWER: &[u8] = b"A";

/// Runs the relay until its stdin closes (the bench process ended or
/// dropped it).
pub fn run(pub_port: u16, receive_port: u16, secret: Option<[u8; 32]>) -> Result<()> {
    let ctx = zmq::Context::new();
    let zap = match secret {
        Some(_) => {
            let zap = ctx.socket(zmq::ROUTER)?;
            zap.set_linger(0)?;
            zap.bind(ZAP_ENDPOINT)?;
            Some(zap)
        }
        None => None,
    };
    let server_socket = |kind| -> Result<zmq::Socket> {
        let socket = ctx.socket(kind)?;
        socket.set_linger(0)?;
        if let Some(secret) = &secret {
            socket.set_zap_domain(ZAP_DOMAIN)?;
            socket.set_curve_server(true)?;
            socket.set_curve_secretkey(secret)?;
        }
        Ok(socket)
    };
    let publisher = server_socket(zmq::PUB)?;
    publisher.bind(&format!("tcp://127.0.0.1:{pub_port}")).context("relay PUB bind")?;
    let router = server_socket(zmq::ROUTER)?;
    router.set_router_mandatory(true)?;
    // Unlike Pantry (default 1,000), no send high-water mark: an answer to a
    // requester is never dropped because a fan-out burst filled its queue.
    router.set_sndhwm(0)?;
    router.bind(&format!("tcp://127.0.0.1:{receive_port}")).context("relay ROUTER bind")?;
    println!("{READY}");

    let stdin = std::io::stdin();
    let stdin_fd = stdin.as_raw_fd();
    let mut dropped: u64 = 0;
    loop {
        let mut items = vec![zmq::PollItem::from_fd(stdin_fd, zmq::POLLIN), router.as_poll_item(zmq::POLLIN)];
        if let Some(zap) = &zap {
            items.push(zap.as_poll_item(zmq::POLLIN));
        }
        match zmq::poll(&mut items, -1) {
            Ok(_) | Err(zmq::Error::EINTR) => {}
            Err(e) => return Err(e.into()),
        }
        let ready: Vec<bool> = items.iter().map(zmq::PollItem::is_readable).collect();
        if ready[0] {
            // Only end-of-file (or an error) is expected on stdin.
            let mut buf = [0u8; 64];
            match stdin.lock().read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(_) => {}
            }
        }
        if ready[1] {
            while let Ok(frames) = router.recv_multipart(zmq::DONTWAIT) {
                let [peer, kind, a, b]: [Vec<u8>; 4] = match frames.try_into() {
                    Ok(f) => f,
                    Err(_) => continue,
                };
                let sent = match kind.as_slice() {
                    REQUEST => publisher.send_multipart([a, peer, b], zmq::DONTWAIT),
                    ANSWER => router.send(a, zmq::SNDMORE | zmq::DONTWAIT).and_then(|()| router.send(b, zmq::DONTWAIT)),
                    _ => Ok(()),
                };
                if sent.is_err() {
                    dropped += 1;
                }
            }
        }
        if ready.get(2) == Some(&true) {
            if let Some(zap) = &zap {
                while let Ok(frames) = zap.recv_multipart(zmq::DONTWAIT) {
                    if frames.len() < 4 {
                        continue;
                    }
                    let reply = [&frames[0][..], &frames[1][..], b"1.0", &frames[3][..], b"200", b"OK", b"", b""];
                    let _ = zap.send_multipart(reply, zmq::DONTWAIT);
                }
            }
        }
    }
    if dropped > 0 {
        eprintln!("relay: {dropped} messages dropped (peer gone or queue full)");
    }
    Ok(())
}
