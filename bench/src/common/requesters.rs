//! The requesting side: an admin-like DEALER that sends `echo` to every
//! agent (fan-out), and several concurrent requesters that pipeline echoes
//! to single agents (throughput). The same drivers run against Pantry and
//! the baseline relay; only the encoding differs. A Pantry requester may
//! sign its echoes as `pantry-admin` does ([`Requester::sign_with`]).

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{bail, Result};
use pantry_shared::commands::echo;
use pantry_shared::signing::{self, SigningPair};
use pantry_shared::{BodyPart, Message};
use serde::{Deserialize, Serialize};

use crate::common::agents::{client_security, identity, Kind};
use crate::common::keys::Pair;
use crate::common::procs::Endpoints;
use crate::common::relay;

/// Stands in for the text of `pantry-admin echo`.
const ECHO_TEXT: &str = "pantry-bench";
const UUID_PREFIX: &str = "bench-";

static NEXT_TOKEN: AtomicU64 = AtomicU64::new(1);

/// What a requester received.
#[derive(Debug, PartialEq, Eq)]
pub enum Reply {
    /// Pantry's list of the clients that will answer request `token`.
    List {
        token: u64,
        count: usize,
    },
    /// One agent's answer to request `token`; `refused`: it carries an
    /// error (an agent that refused to run it).
    Answer {
        token: u64,
        refused: bool,
    },
    Other,
}

/// One DEALER connection to Pantry or the relay.
pub struct Requester {
    kind: Kind,
    name: String,
    socket: zmq::Socket,
    /// Pantry: each echo signed with this key, valid this long.
    signer: Option<(SigningPair, Duration)>,
    _ctx: zmq::Context,
}

impl Requester {
    pub fn connect(kind: Kind, endpoints: &Endpoints, pair: Option<&Pair>, name: &str) -> Result<Requester> {
        let ctx = zmq::Context::new();
        let socket = client_security(endpoints, pair)?.socket(&ctx, zmq::DEALER)?;
        socket.connect(&endpoints.receive)?;
        Ok(Requester { kind, name: name.to_owned(), socket, signer: None, _ctx: ctx })
    }

    /// Pantry: from now on each echo is signed with `pair` under this
    /// requester's name, valid for the duration (as `pantry-admin` signs
    /// what it sends to clients, last, once addressed); `None`: unsigned.
    pub fn sign_with(&mut self, signer: Option<(SigningPair, Duration)>) {
        self.signer = signer;
    }

    /// Unique in the process: Pantry keys forwarded requests by uuid, so two
    /// requesters must never use the same one.
    fn token(&mut self) -> u64 {
        NEXT_TOKEN.fetch_add(1, Ordering::Relaxed)
    }

    /// Sends an echo to `stream` (`""`: every agent). Returns its token.
    pub fn send(&mut self, stream: &str) -> Result<u64> {
        let token = self.token();
        match self.kind {
            Kind::Pantry => {
                let mut m = echo::request(ECHO_TEXT);
                m.metadata.uuid = format!("{UUID_PREFIX}{token}");
                m.metadata.from = self.name.clone();
                m.metadata.to = stream.to_owned();
                m.stream = stream.to_owned();
                if let Some((pair, ttl)) = &self.signer {
                    signing::sign(&mut m, pair, &self.name, *ttl);
                }
                self.socket.send_multipart(m.to_frames(), zmq::DONTWAIT)?;
            }
            Kind::Baseline => {
                let topic = if stream.is_empty() { pantry_shared::filter::BROADCAST_TOPIC } else { stream };
                let frames = [relay::REQUEST, topic.as_bytes(), &token.to_le_bytes()];
                self.socket.send_multipart(frames, zmq::DONTWAIT)?;
            }
        }
        Ok(token)
    }

    /// The next reply, if one is waiting.
    pub fn try_recv(&self) -> Option<Reply> {
        let frames = self.socket.recv_multipart(zmq::DONTWAIT).ok()?;
        Some(match self.kind {
            Kind::Pantry => classify_pantry(&frames),
            Kind::Baseline => match frames.as_slice() {
                [payload] if payload.len() == 8 => {
                    let token = u64::from_le_bytes(payload[..].try_into().expect("8 bytes"));
                    Reply::Answer { token, refused: false }
                }
                _ => Reply::Other,
            },
        })
    }

    /// Waits at most `timeout` for the socket to become readable.
    pub fn wait(&self, timeout: Duration) -> bool {
        self.socket.poll(zmq::POLLIN, timeout.as_millis().max(1) as i64).map(|n| n > 0).unwrap_or(false)
    }
}

fn classify_pantry(frames: &[Vec<u8>]) -> Reply {
    let Ok(m) = Message::from_frames(frames) else { return Reply::Other };
    let Some(token) = m.uuid().strip_prefix(UUID_PREFIX).and_then(|t| t.parse().ok()) else {
        return Reply::Other;
    };
    if m.is_client_response_list() {
        let count = m.body.iter().filter(|p| matches!(p, BodyPart::Text(_))).count();
        Reply::List { token, count }
    } else {
        Reply::Answer { token, refused: m.error().is_some() }
    }
}

/// One fan-out: the time until the last of `expected` answers arrived.
#[derive(Debug, Clone, Copy)]
pub struct Fanout {
    pub elapsed: Duration,
    pub answers: usize,
    /// Answers that carried an error (agents that refused the request).
    pub refused: usize,
    /// Pantry only: how many clients the server said would answer.
    pub listed: Option<usize>,
}

impl Fanout {
    pub fn complete(&self, expected: usize) -> bool {
        self.answers >= expected && self.listed.map_or(true, |l| l >= expected)
    }
}

/// Sends an echo to every agent and waits for `expected` answers (or
/// `timeout`, or `idle` without any message for this request).
pub fn fanout(requester: &mut Requester, expected: usize, timeout: Duration, idle: Duration) -> Result<Fanout> {
    fanout_to(requester, "", expected, timeout, idle)
}

fn fanout_to(
    requester: &mut Requester,
    stream: &str,
    expected: usize,
    timeout: Duration,
    idle: Duration,
) -> Result<Fanout> {
    let start = Instant::now();
    let token = requester.send(stream)?;
    let mut result = Fanout { elapsed: Duration::ZERO, answers: 0, refused: 0, listed: None };
    let deadline = start + timeout;
    let mut last_heard = start;
    while result.answers < expected {
        let now = Instant::now();
        let left = deadline.min(last_heard + idle).saturating_duration_since(now);
        if left.is_zero() {
            break;
        }
        if !requester.wait(left) {
            continue;
        }
        last_heard = Instant::now();
        while let Some(reply) = requester.try_recv() {
            match reply {
                Reply::List { token: t, count } if t == token => result.listed = Some(count),
                Reply::Answer { token: t, refused } if t == token => {
                    result.answers += 1;
                    result.refused += usize::from(refused);
                    result.elapsed = start.elapsed();
                }
                _ => {}
            }
        }
        // Pantry: a server that knows fewer clients will never send more.
        if result.listed.is_some_and(|l| l < expected && result.answers >= l) {
            break;
        }
    }
    Ok(result)
}

/// Sends echoes to each `(stream, count)` group until all `count` agents of
/// the group answered one (they are registered, and reachable), at most
/// `timeout` in all.
pub fn wait_until_reachable(requester: &mut Requester, groups: &[(String, usize)], timeout: Duration) -> Result<()> {
    let end = Instant::now() + timeout;
    for (stream, expected) in groups {
        let mut last = None;
        loop {
            let left = end.saturating_duration_since(Instant::now());
            if left.is_zero() {
                bail!(
                    "the {expected} agents of {stream} not reachable within {timeout:?}: last echo got {:?} answers, \
                     listed {:?}",
                    last.map(|r: Fanout| r.answers),
                    last.and_then(|r| r.listed)
                );
            }
            // Agents not yet registered never answer: give up on an echo
            // after half a second without an answer.
            let r = fanout_to(requester, stream, *expected, left, Duration::from_millis(500))?;
            if r.complete(*expected) {
                break;
            }
            last = Some(r);
            std::thread::sleep(Duration::from_millis(100));
        }
    }
    Ok(())
}

/// Settings of one throughput run.
#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
pub struct ThroughputSettings {
    /// Requests in flight per requester.
    pub window: usize,
    pub warmup: Duration,
    pub duration: Duration,
}

/// Result of one throughput run.
#[derive(Debug, Clone, Copy)]
pub struct Throughput {
    /// Completed request/response pairs per second in the measured window.
    pub per_second: f64,
    /// Requests that got no answer within 3 s (or an empty client list).
    pub lost: u64,
    /// Completed in the whole run, warm-up and drain included.
    pub total_completed: u64,
}

/// No answer within this long: lost.
const LOST_AFTER: Duration = Duration::from_secs(3);

/// Each requester keeps `window` echoes in flight, each to one agent by
/// identity (requester k targets agents k, k+R, k+2R, ... in turn), while
/// `more(sent so far)` says so; then the answers in flight are awaited, at
/// most until `end`. `answered(token)` for each answer. Returns the
/// requests lost: no answer within [`LOST_AFTER`] or by `end`, or an empty
/// client list (nobody will answer).
fn pipeline(
    requesters: &mut [Requester],
    agents: usize,
    window: usize,
    mut more: impl FnMut(u64) -> bool,
    end: Instant,
    mut answered: impl FnMut(u64),
) -> Result<u64> {
    let count = requesters.len();
    let mut in_flight: Vec<HashMap<u64, Instant>> = vec![HashMap::new(); count];
    let mut next_target: Vec<usize> = (0..count).collect();
    let (mut sent, mut lost) = (0u64, 0u64);
    loop {
        let sending = more(sent);
        if Instant::now() >= end || (!sending && in_flight.iter().all(HashMap::is_empty)) {
            break;
        }
        for (k, r) in requesters.iter_mut().enumerate() {
            while sending && in_flight[k].len() < window && more(sent) {
                let target = identity(next_target[k] % agents.max(1));
                next_target[k] += count;
                in_flight[k].insert(r.send(&target)?, Instant::now());
                sent += 1;
            }
        }
        let mut items: Vec<zmq::PollItem> = requesters.iter().map(|r| r.socket.as_poll_item(zmq::POLLIN)).collect();
        zmq::poll(&mut items, 5)?;
        drop(items);
        for (k, r) in requesters.iter().enumerate() {
            while let Some(reply) = r.try_recv() {
                match reply {
                    Reply::Answer { token, .. } if in_flight[k].remove(&token).is_some() => answered(token),
                    Reply::List { token, count: 0 } if in_flight[k].remove(&token).is_some() => lost += 1,
                    _ => {}
                }
            }
            let before = in_flight[k].len();
            in_flight[k].retain(|_, at| at.elapsed() < LOST_AFTER);
            lost += (before - in_flight[k].len()) as u64;
        }
    }
    Ok(lost + in_flight.iter().map(|m| m.len() as u64).sum::<u64>())
}

/// Pipelined echoes for the settings' warm-up and measured window; the
/// rate is of the answers that arrived within the window.
pub fn throughput(requesters: &mut [Requester], agents: usize, s: ThroughputSettings) -> Result<Throughput> {
    let start = Instant::now();
    let (from, to) = (start + s.warmup, start + s.warmup + s.duration);
    let (mut completed, mut total) = (0u64, 0u64);
    let lost = pipeline(
        requesters,
        agents,
        s.window,
        |_| Instant::now() < to,
        to + LOST_AFTER,
        |_| {
            let at = Instant::now();
            total += 1;
            completed += u64::from(at >= from && at <= to);
        },
    )?;
    Ok(Throughput { per_second: completed as f64 / s.duration.as_secs_f64(), lost, total_completed: total })
}

/// The uuid of the Pantry request with `token`.
pub fn uuid_of(token: u64) -> String {
    format!("{UUID_PREFIX}{token}")
}

/// Result of a fixed number of pipelined echoes.
#[derive(Debug, Clone, Copy)]
pub struct Pipelined {
    pub completed: u64,
    /// Unanswered within 3 s, or no answer when the time ran out.
    pub lost: u64,
    pub elapsed: Duration,
    /// The token of the last request answered.
    pub last_answered: Option<u64>,
}

/// Sends `count` echoes in all, each requester keeping `window` in flight,
/// and waits for the answers; at most `timeout` in all.
pub fn pipelined(
    requesters: &mut [Requester],
    agents: usize,
    count: u64,
    window: usize,
    timeout: Duration,
) -> Result<Pipelined> {
    let start = Instant::now();
    let (mut completed, mut last_answered) = (0u64, None);
    let lost = pipeline(
        requesters,
        agents,
        window,
        |sent| sent < count,
        start + timeout,
        |token| {
            completed += 1;
            last_answered = Some(token);
        },
    )?;
    Ok(Pipelined { completed, lost, elapsed: start.elapsed(), last_answered })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pantry_replies_are_classified_by_uuid() {
        let mut list = echo::request("x").response();
        list.metadata.uuid = "bench-42".into();
        list.metadata.custom.insert("client_response_list".into(), serde_json::Value::Bool(true));
        list.body = vec![BodyPart::Text("agent-00001".into()), BodyPart::Text("agent-00002".into())];
        assert_eq!(classify_pantry(&list.to_frames()), Reply::List { token: 42, count: 2 });
        let mut answer = echo::request("x").response();
        answer.metadata.uuid = "bench-7".into();
        assert_eq!(classify_pantry(&answer.to_frames()), Reply::Answer { token: 7, refused: false });
        answer.set_error("refused: unsigned");
        assert_eq!(classify_pantry(&answer.to_frames()), Reply::Answer { token: 7, refused: true });
        answer.metadata.uuid = "someone-else".into();
        assert_eq!(classify_pantry(&answer.to_frames()), Reply::Other);
    }
}
