//! Handshake rate: new CURVE connections per second through the server's
//! ZAP handler. A fixed number of DEALER sockets ("slots"), each with a known
//! key and a socket monitor, connect; each time a monitor reports
//! HANDSHAKE_SUCCEEDED (the client got READY, so ZAP said 200) the slot
//! disconnects and connects again at once. The rate is the number of
//! successes in the measured window divided by its length.

use std::time::{Duration, Instant};

use anyhow::Result;
use pantry_shared::monitor::{self, SocketEvent};

use crate::agents::client_security;
use crate::keys::Pair;
use crate::procs::Endpoints;

#[derive(Debug, Clone, Copy)]
pub struct HandshakeSettings {
    /// Connections being set up at once.
    pub slots: usize,
    pub warmup: Duration,
    pub duration: Duration,
}

#[derive(Debug, Clone, Copy)]
pub struct HandshakeRate {
    pub per_second: f64,
    pub succeeded: u64,
    pub failed: u64,
    /// Successes including warm-up and the last moments (for CPU per handshake).
    pub total_succeeded: u64,
}

struct Slot {
    socket: zmq::Socket,
    monitor: zmq::Socket,
}

/// Runs the handshake loop against `endpoints.receive` (the ROUTER), slot
/// `i` with `pairs[i % pairs.len()]`.
pub fn handshake_rate(endpoints: &Endpoints, pairs: &[Pair], s: HandshakeSettings) -> Result<HandshakeRate> {
    let ctx = zmq::Context::new();
    let mut slots = Vec::with_capacity(s.slots);
    for i in 0..s.slots {
        let socket = client_security(endpoints, pairs.get(i % pairs.len().max(1)))?.socket(&ctx, zmq::DEALER)?;
        let monitor = monitor::monitor(&ctx, &socket, monitor::CLIENT_EVENTS)?;
        slots.push(Slot { socket, monitor });
    }
    let start = Instant::now();
    let (from, to) = (start + s.warmup, start + s.warmup + s.duration);
    for slot in &slots {
        slot.socket.connect(&endpoints.receive)?;
    }
    let (mut succeeded, mut failed, mut total) = (0u64, 0u64, 0u64);
    while Instant::now() < to {
        let mut items: Vec<zmq::PollItem> = slots.iter().map(|s| s.monitor.as_poll_item(zmq::POLLIN)).collect();
        zmq::poll(&mut items, 10)?;
        let ready: Vec<bool> = items.iter().map(zmq::PollItem::is_readable).collect();
        drop(items);
        for (slot, _) in slots.iter().zip(ready).filter(|(_, r)| *r) {
            while let Some(event) = monitor::read(&slot.monitor) {
                let ok = match event.event {
                    SocketEvent::HandshakeSucceeded => true,
                    SocketEvent::HandshakeFailedAuth(_)
                    | SocketEvent::HandshakeFailedNoDetail
                    | SocketEvent::HandshakeFailedProtocol(_) => false,
                    _ => continue,
                };
                total += u64::from(ok);
                let now = Instant::now();
                if now >= from && now < to {
                    if ok {
                        succeeded += 1;
                    } else {
                        failed += 1;
                    }
                }
                // A new connection, a new handshake.
                let _ = slot.socket.disconnect(&endpoints.receive);
                slot.socket.connect(&endpoints.receive)?;
            }
        }
    }
    Ok(HandshakeRate {
        per_second: succeeded as f64 / s.duration.as_secs_f64(),
        succeeded,
        failed,
        total_succeeded: total,
    })
}
