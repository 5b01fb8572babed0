//! Handshake rate: new CURVE connections per second through the server's
//! ZAP handler. A fixed number of DEALER sockets ("slots"), each with a known
//! key and a socket monitor, connect; each time a monitor reports
//! HANDSHAKE_SUCCEEDED (the client got READY, so ZAP said 200) the slot
//! disconnects and connects again at once. The rate is the number of
//! successes in the measured window divided by its length.

use std::time::{Duration, Instant};

use anyhow::Result;
use pantry_shared::monitor::{self, SocketEvent};
use serde::{Deserialize, Serialize};

use crate::common::agents::client_security;
use crate::common::keys::Pair;
use crate::common::procs::{cpu_ns, cpu_us_per, Endpoints};
use crate::common::stats::{medians, order, Both};

#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
pub struct HandshakeSettings {
    /// Connections being set up at once.
    pub slots: usize,
    pub warmup: Duration,
    pub duration: Duration,
}

#[derive(Debug, Clone, Copy)]
pub struct HandshakeRate {
    pub per_second: f64,
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
    Ok(HandshakeRate { per_second: succeeded as f64 / s.duration.as_secs_f64(), failed, total_succeeded: total })
}

/// Two servers' handshake rates with the same known keys (`pantry`: the
/// first, `baseline`: the second), medians over rounds.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct HandshakeRow {
    pub known_keys: usize,
    pub rate: Both<Option<f64>>,
    pub failed: Both<u64>,
    /// Server CPU time (all threads) per successful handshake, µs.
    pub cpu_us: Both<Option<f64>>,
}

/// [`handshake_rate`] against `servers` (endpoints and pid), `rounds`
/// rounds alternating which goes first.
pub fn compare(
    servers: [(&Endpoints, u32); 2],
    pairs: &[Pair],
    s: HandshakeSettings,
    rounds: usize,
    known_keys: usize,
) -> Result<HandshakeRow> {
    let mut row = HandshakeRow { known_keys, ..Default::default() };
    let (mut rates, mut cpu): ([Vec<f64>; 2], [Vec<f64>; 2]) = Default::default();
    for round in 0..rounds {
        for i in order(round) {
            let (endpoints, pid) = servers[i];
            let before = cpu_ns(pid);
            let r = handshake_rate(endpoints, pairs, s)?;
            cpu[i].extend(cpu_us_per(pid, before, r.total_succeeded));
            rates[i].push(r.per_second);
            *row.failed.at_mut(i) += r.failed;
        }
    }
    row.rate = medians(&rates);
    row.cpu_us = medians(&cpu);
    Ok(row)
}
