//! Handshakes admitted at a bounded rate (`networking.handshake_rate`).
//!
//! After a server restart a whole fleet reconnects within seconds. Each
//! admitted agent at once registers, reports its facts and is written to
//! the database: admitted all together, that work queues the request of
//! an admin who came to look. The ZAP replies to client keys are
//! therefore released at most `rate` a second (a burst of a tenth of
//! that), in the order they came; admins' and servers' replies, and every
//! rejection, go out at once. libzmq's handshake timeout (30 s) is far
//! beyond the wait of a fleet of tens of thousands at the default rate.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

/// A ZAP reply, envelope included.
pub type Reply = Vec<Vec<u8>>;

pub struct Admission {
    /// Per second; 0: no bound.
    rate: u32,
    tokens: f64,
    refilled: Instant,
    waiting: VecDeque<Reply>,
}

impl Admission {
    pub fn new(rate: u32) -> Admission {
        let mut admission = Admission { rate, tokens: 0.0, refilled: Instant::now(), waiting: VecDeque::new() };
        admission.tokens = admission.burst();
        admission
    }

    fn burst(&self) -> f64 {
        (f64::from(self.rate) / 10.0).max(1.0)
    }

    fn refill(&mut self, now: Instant) {
        let elapsed = now.saturating_duration_since(self.refilled).as_secs_f64();
        self.refilled = now;
        self.tokens = (self.tokens + elapsed * f64::from(self.rate)).min(self.burst());
    }

    /// A client key's accepted handshake: its reply if it may go now; else
    /// it waits its turn ([`Admission::release`]).
    pub fn admit(&mut self, reply: Reply) -> Option<Reply> {
        if self.rate == 0 {
            return Some(reply);
        }
        self.refill(Instant::now());
        if self.waiting.is_empty() && self.tokens >= 1.0 {
            self.tokens -= 1.0;
            return Some(reply);
        }
        self.waiting.push_back(reply);
        None
    }

    /// The waiting replies whose turn has come, in order.
    pub fn release(&mut self) -> Vec<Reply> {
        if self.waiting.is_empty() {
            return Vec::new();
        }
        self.refill(Instant::now());
        let n = (self.tokens.floor() as usize).min(self.waiting.len());
        self.tokens -= n as f64;
        self.waiting.drain(..n).collect()
    }

    /// How long until the next waiting reply may go; `None` when none
    /// waits.
    pub fn next_in(&self) -> Option<Duration> {
        if self.waiting.is_empty() {
            return None;
        }
        let missing = (1.0 - self.tokens).max(0.0);
        Some(Duration::from_secs_f64(missing / f64::from(self.rate.max(1))))
    }

    pub fn waiting(&self) -> usize {
        self.waiting.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reply(i: u8) -> Reply {
        vec![vec![i]]
    }

    #[test]
    fn a_burst_goes_then_the_rest_waits_in_order() {
        let mut a = Admission::new(100);
        let sent: Vec<_> = (0..30).filter_map(|i| a.admit(reply(i))).collect();
        assert_eq!(sent.len(), 10, "a tenth of the rate at once");
        assert_eq!(a.waiting(), 20);
        assert!(a.next_in().is_some_and(|d| d <= Duration::from_millis(10)));
        std::thread::sleep(Duration::from_millis(55));
        let released = a.release();
        assert!((4..=10).contains(&released.len()), "{}", released.len());
        assert_eq!(released[0], reply(10), "in the order they came");
    }

    #[test]
    fn no_bound_admits_everything() {
        let mut a = Admission::new(0);
        assert!((0..1000).all(|i| a.admit(reply(i as u8)).is_some()));
        assert_eq!(a.next_in(), None);
    }
}
