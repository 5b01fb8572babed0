//! The baseline: the same socket pattern as Pantry done by raw libzmq with no
//! Pantry logic. Like a Pantry agent since issue 27, a baseline agent holds
//! one connection: a DEALER to the relay's ROUTER, over which it says hello
//! with its topics (its identity, its groups, the broadcast topic), takes
//! its requests and answers them. The relay sends each request over the
//! ROUTER to every agent that said hello with its topic (an exact match, as
//! Pantry's server delivers to agents on their DEALER), and each answer to
//! its requester. Under CURVE a trivial ZAP handler accepts every key.
//!
//! Wire protocol (every frame opaque bytes):
//!
//! - agent → relay (DEALER → ROUTER): `["H", topic...]`, once connected
//! - requester → relay (DEALER → ROUTER): `["Q", topic, payload]`
//! - relay → agents (ROUTER → DEALER): `[requester routing id, payload]`
//! - agent → relay (DEALER → ROUTER): `["A", requester routing id, payload]`
//! - relay → requester (ROUTER → DEALER): `[payload]`
//!
//! Socket options are Pantry's (linger 0, ROUTER_MANDATORY, ZAP domain)
//! except one: the ROUTER has no send high-water mark.

use std::collections::{HashMap, HashSet};
use std::io::Read;
use std::os::fd::AsRawFd;

use anyhow::{Context as _, Result};
use pantry_shared::security::{ZAP_DOMAIN, ZAP_ENDPOINT};

/// What the relay prints once its sockets are bound.
pub const READY: &str = "relay ready";

pub const HELLO: &[u8] = b"H";
pub const REQUEST: &[u8] = b"Q";
pub const ANSWER: &[u8] = b"A";

/// Which agent connections hold which topics, from their hellos.
#[derive(Default)]
struct Agents {
    by_topic: HashMap<Vec<u8>, HashSet<Vec<u8>>>,
    by_peer: HashMap<Vec<u8>, Vec<Vec<u8>>>,
}

impl Agents {
    /// `peer` holds `topics` (a second hello replaces the first).
    fn hello(&mut self, peer: Vec<u8>, topics: Vec<Vec<u8>>) {
        self.forget(&peer);
        for topic in &topics {
            self.by_topic.entry(topic.clone()).or_default().insert(peer.clone());
        }
        self.by_peer.insert(peer, topics);
    }

    /// A connection that is gone (a send to it failed: ROUTER_MANDATORY).
    fn forget(&mut self, peer: &[u8]) {
        for topic in self.by_peer.remove(peer).unwrap_or_default() {
            if let Some(peers) = self.by_topic.get_mut(&topic) {
                peers.remove(peer);
                if peers.is_empty() {
                    self.by_topic.remove(&topic);
                }
            }
        }
    }

    fn holding<'a>(&'a self, topic: &[u8]) -> impl Iterator<Item = &'a Vec<u8>> + 'a {
        self.by_topic.get(topic).into_iter().flatten()
    }
}

/// Runs the relay until its stdin closes (the bench process ended or
/// dropped it).
pub fn run(receive_port: u16, secret: Option<[u8; 32]>) -> Result<()> {
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
    let router = ctx.socket(zmq::ROUTER)?;
    router.set_linger(0)?;
    if let Some(secret) = &secret {
        router.set_zap_domain(ZAP_DOMAIN)?;
        router.set_curve_server(true)?;
        router.set_curve_secretkey(secret)?;
    }
    router.set_router_mandatory(true)?;
    // Unlike Pantry (default 1,000), no send high-water mark: neither a
    // request to an agent nor an answer to a requester is ever dropped
    // because a fan-out burst filled its queue.
    router.set_sndhwm(0)?;
    router.bind(&format!("tcp://127.0.0.1:{receive_port}")).context("relay ROUTER bind")?;
    println!("{READY}");

    let stdin = std::io::stdin();
    let stdin_fd = stdin.as_raw_fd();
    let mut agents = Agents::default();
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
                let mut frames = frames.into_iter();
                let (Some(peer), Some(kind)) = (frames.next(), frames.next()) else { continue };
                match kind.as_slice() {
                    HELLO => agents.hello(peer, frames.collect()),
                    REQUEST => {
                        let (Some(topic), Some(payload), None) = (frames.next(), frames.next(), frames.next()) else {
                            continue;
                        };
                        let mut gone = Vec::new();
                        for agent in agents.holding(&topic) {
                            let sent = router
                                .send(&agent[..], zmq::SNDMORE | zmq::DONTWAIT)
                                .and_then(|()| router.send(&peer[..], zmq::SNDMORE | zmq::DONTWAIT))
                                .and_then(|()| router.send(&payload[..], zmq::DONTWAIT));
                            if sent.is_err() {
                                gone.push(agent.clone());
                            }
                        }
                        dropped += gone.len() as u64;
                        for agent in gone {
                            agents.forget(&agent);
                        }
                    }
                    ANSWER => {
                        let (Some(requester), Some(payload), None) = (frames.next(), frames.next(), frames.next())
                        else {
                            continue;
                        };
                        let sent = router
                            .send(requester, zmq::SNDMORE | zmq::DONTWAIT)
                            .and_then(|()| router.send(payload, zmq::DONTWAIT));
                        if sent.is_err() {
                            dropped += 1;
                        }
                    }
                    _ => {}
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
        eprintln!("relay: {dropped} messages dropped (peer gone)");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_request_reaches_exactly_the_agents_holding_its_topic() {
        let mut agents = Agents::default();
        let t = |s: &str| s.as_bytes().to_vec();
        agents.hello(t("p1"), vec![t("agent-00001"), t("g000"), t("*")]);
        agents.hello(t("p2"), vec![t("agent-00002"), t("g000"), t("*")]);
        agents.hello(t("p3"), vec![t("agent-00003"), t("g001"), t("*")]);
        let holding = |agents: &Agents, topic: &str| {
            let mut peers: Vec<Vec<u8>> = agents.holding(topic.as_bytes()).cloned().collect();
            peers.sort();
            peers
        };
        assert_eq!(holding(&agents, "g000"), [t("p1"), t("p2")]);
        assert_eq!(holding(&agents, "agent-00003"), [t("p3")]);
        assert_eq!(holding(&agents, "g"), Vec::<Vec<u8>>::new(), "no prefix matching");
        // A second hello replaces the first; a gone peer holds nothing.
        agents.hello(t("p2"), vec![t("agent-00002"), t("g001")]);
        agents.forget(b"p3");
        assert_eq!((holding(&agents, "g000"), holding(&agents, "g001")), (vec![t("p1")], vec![t("p2")]));
        assert_eq!(holding(&agents, "*"), [t("p1")]);
    }
}
