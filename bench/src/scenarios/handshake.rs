//! Handshake rate (CURVE): new connections per second through the ZAP
//! handler, Pantry against the relay, with few and with many known keys
//! (the connecting clients' keys plus random filler keys): the key store's
//! lookup must not slow the handshakes down.

use std::fmt::Write as _;
use std::time::Instant;

use anyhow::Result;
use serde::{Deserialize, Serialize};

use crate::common::env::{Env, Measure};
use crate::common::handshake::{self, HandshakeRow};
use crate::common::keys;
use crate::common::markdown::{compared, count, num, pct, targets_table, Previous, Target};
use crate::common::procs::Relay;
use crate::common::ring::KeyRing;
use crate::common::stats::Both;

/// Issue 4: at least 80% of the relay's rate, the same (within 10%) with
/// many keys; issue 15: at least 95%.
const HANDSHAKE_TARGET: f64 = 0.8;
const SAME_RATE: f64 = 0.9;
const RELAY_TARGET: f64 = 0.95;

#[derive(Debug, Clone, clap::Args, Serialize, Deserialize)]
#[group(id = "handshake")]
pub struct Settings {
    /// Known-key counts of the handshake scenario.
    #[arg(long = "handshake-keys", value_delimiter = ',', default_value = "100,100000")]
    pub known_keys: Vec<usize>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Figures {
    pub measure: Measure,
    /// Pantry (`pantry`) against the relay (`baseline`), per key count.
    pub rows: Vec<HandshakeRow>,
}

/// One server per key count, one relay for all (it knows no keys).
pub fn run(env: &Env, ring: &KeyRing, s: &Settings) -> Result<Figures> {
    let relay = Relay::start(&env.bins.bench, Some(&ring.server))?;
    let mut figures = Figures { measure: env.measure, rows: Vec::new() };
    for &known in &s.known_keys {
        let mut keys = ring.handshake_keys();
        keys.extend(keys::filler(known.saturating_sub(keys.len()))?);
        let load = Instant::now();
        let server = env.server(Some((&ring.server, &keys)), "")?;
        env.say(format!(
            "handshakes: server with {} known keys up in {:.2} s",
            keys.len(),
            load.elapsed().as_secs_f64()
        ));
        let servers = [(&server.endpoints, server.process.pid), (&relay.endpoints, relay.process.pid)];
        let m = &env.measure;
        let row = handshake::compare(servers, &ring.handshake, m.handshake, m.rounds, keys.len())?;
        env.say(format!(
            "handshakes with {} known keys: {} / {} per s (Pantry / baseline)",
            row.known_keys,
            num(row.rate.pantry),
            num(row.rate.baseline)
        ));
        figures.rows.push(row);
    }
    Ok(figures)
}

/// Against the relay (issues 4 and 15) and with many keys, with the
/// previous run's.
pub fn targets(f: &Figures, previous: Previous<Figures>) -> Vec<Target> {
    compared(measured(f), previous.figures.map(measured))
}

fn measured(f: &Figures) -> Vec<Target> {
    let lowest = f.rows.iter().filter_map(|h| h.rate.ratio()).reduce(f64::min);
    let same = match (f.rows.first(), f.rows.last()) {
        (Some(a), Some(b)) if f.rows.len() > 1 => {
            Both { pantry: b.rate.pantry, baseline: a.rate.pantry }.ratio().map(|r| (r, a.known_keys, b.known_keys))
        }
        _ => None,
    };
    vec![
        Target::new(
            format!("handshake rate ≥ {} of the baseline (lowest over key counts)", pct(Some(HANDSHAKE_TARGET))),
            pct(lowest),
            lowest.map(|r| r >= HANDSHAKE_TARGET),
        ),
        Target::new(
            format!(
                "the same handshake rate with many known keys (Pantry, {} vs {} keys)",
                same.map_or("–".into(), |s| count(s.2)),
                same.map_or("–".into(), |s| count(s.1))
            ),
            pct(same.map(|s| s.0)),
            same.map(|s| s.0 >= SAME_RATE),
        ),
        Target::new(
            format!("issue 15: handshake rate ≥ {} of the relay (lowest over key counts)", pct(Some(RELAY_TARGET))),
            if f.rows.is_empty() { "not run".into() } else { pct(lowest) },
            lowest.map(|r| r >= RELAY_TARGET),
        ),
    ]
}

/// The `## Handshake rate` section.
pub fn report(f: &Figures, previous: Previous<Figures>) -> String {
    let h = &f.measure.handshake;
    let mut out = String::new();
    let _ = writeln!(
        out,
        "## Handshake rate\n\nNew CURVE connections per second through the ZAP handler (client-side \
         HANDSHAKE_SUCCEEDED from socket monitors): {} connections in progress at a time, each reconnecting as soon \
         as it succeeded; {:.1} s measured. Known keys: the connecting clients' keys plus random filler keys.\n\n{}\n\
         | known keys | Pantry | baseline | Pantry / baseline | failed (P/B) | server CPU µs per handshake (P/B) |\n\
         |---:|---:|---:|---:|---:|---:|",
        h.slots,
        h.duration.as_secs_f64(),
        targets_table(&targets(f, previous), previous.said)
    );
    for row in &f.rows {
        let _ = writeln!(
            out,
            "| {} | {} | {} | {} | {}/{} | {} / {} |",
            count(row.known_keys),
            num(row.rate.pantry),
            num(row.rate.baseline),
            pct(row.rate.ratio()),
            row.failed.pantry,
            row.failed.baseline,
            num(row.cpu_us.pantry),
            num(row.cpu_us.baseline)
        );
    }
    out
}
