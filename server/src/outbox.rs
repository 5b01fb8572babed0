//! The one way out to the network: actors hand typed [`Outbound`] items to
//! the socket thread, which owns every ZeroMQ socket.
//!
//! Items travel over a channel; a zero-length frame on an inproc PUSH/PULL
//! pair (the doorbell) wakes the socket thread from `zmq::poll`. The bell
//! rings only when the channel may have gone from empty to not empty, so a
//! burst of items costs one wake-up, and no frame is copied into a ZeroMQ
//! message twice.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::sync::Arc;

use pantry_shared::keys::KnownKey;
use pantry_shared::Message;

use crate::direct::DirectChange;
use crate::messages::Grant;

pub const DOORBELL_ENDPOINT: &str = "inproc://pantry-outbound";

/// What the socket thread is asked to do.
#[derive(Debug)]
pub enum Outbound {
    /// A message to one peer of the receive socket, over the connection
    /// it came from.
    ToPeer { peer: Vec<u8>, message: Message },
    /// A request to the clients holding its stream: published to
    /// subscribers, and sent to each agent that takes its requests on its
    /// DEALER ([`crate::direct`]).
    Publish(Message),
    /// Frames for the file service socket, routing id first.
    ToFilePeer(Vec<Vec<u8>>),
    /// A ZAP reply, envelope included.
    ZapReply(Vec<Vec<u8>>),
    /// The known keys changed: the socket thread answers handshakes and
    /// checks subscriptions from its own copy. A removed key's connections
    /// are shut down.
    Keys(KeyUpdate),
    /// A client registered (or changed) its streams.
    Grant(Grant),
    /// An agent takes its requests over its DEALER connection, or no
    /// longer.
    Direct(DirectChange),
    /// A cluster: another server's receive endpoint, to keep a link to
    /// (`None`: it left).
    Link { server: String, endpoint: Option<String> },
    /// A request for clients on another server of the cluster, over its
    /// link.
    ToServer { server: String, message: Message },
    /// Close every socket and end the socket thread.
    Stop,
}

#[derive(Debug)]
pub enum KeyUpdate {
    /// Every known key (at start, and after the file was re-read).
    All(Vec<KnownKey>),
    /// A new key, or a key whose name changed.
    Added(KnownKey),
    /// A key removed (revoked): by its Z85 text.
    Removed(String),
}

/// The receiving end, owned by the socket thread.
pub struct Inbox {
    pub rx: mpsc::Receiver<Outbound>,
    pub bell: zmq::Socket,
    armed: Arc<AtomicBool>,
}

impl Inbox {
    /// Reads every pending doorbell frame, then every queued item.
    pub fn drain(&self) -> impl Iterator<Item = Outbound> + '_ {
        while self.bell.recv_bytes(zmq::DONTWAIT).is_ok() {}
        // Disarm before reading the channel: an item sent after this rings
        // again, an item sent before it is read below.
        self.armed.store(false, Ordering::SeqCst);
        self.rx.try_iter()
    }
}

/// The sending end. Each clone has its own PUSH socket (ZeroMQ sockets are
/// not shared between owners).
pub struct Outbox {
    tx: mpsc::Sender<Outbound>,
    bell: zmq::Socket,
    armed: Arc<AtomicBool>,
    ctx: zmq::Context,
}

impl Outbox {
    /// The pair, with the doorbell's PULL bound in `ctx`.
    pub fn new(ctx: &zmq::Context) -> zmq::Result<(Outbox, Inbox)> {
        let pull = ctx.socket(zmq::PULL)?;
        pull.set_linger(0)?;
        pull.set_rcvhwm(0)?;
        pull.bind(DOORBELL_ENDPOINT)?;
        let (tx, rx) = mpsc::channel();
        let armed = Arc::new(AtomicBool::new(false));
        let outbox = Outbox::connect(ctx, tx, armed.clone())?;
        Ok((outbox, Inbox { rx, bell: pull, armed }))
    }

    fn connect(ctx: &zmq::Context, tx: mpsc::Sender<Outbound>, armed: Arc<AtomicBool>) -> zmq::Result<Outbox> {
        let bell = ctx.socket(zmq::PUSH)?;
        bell.set_linger(0)?;
        bell.set_sndhwm(0)?;
        bell.connect(DOORBELL_ENDPOINT)?;
        Ok(Outbox { tx, bell, armed, ctx: ctx.clone() })
    }

    pub fn try_clone(&self) -> zmq::Result<Outbox> {
        Outbox::connect(&self.ctx, self.tx.clone(), self.armed.clone())
    }

    /// Queues an item. Nothing is lost but at shutdown, when the socket
    /// thread has gone.
    pub fn send(&self, item: Outbound) {
        if self.tx.send(item).is_err() {
            return;
        }
        if !self.armed.swap(true, Ordering::SeqCst) {
            // An empty frame on an unbounded inproc pipe: cannot block.
            let _ = self.bell.send(&[][..], zmq::DONTWAIT);
        }
    }

    pub fn to_peer(&self, peer: Vec<u8>, message: Message) {
        self.send(Outbound::ToPeer { peer, message });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_burst_rings_once_and_nothing_is_lost() {
        let ctx = zmq::Context::new();
        let (outbox, inbox) = Outbox::new(&ctx).unwrap();
        let other = outbox.try_clone().unwrap();
        for i in 0..100 {
            let sender = if i % 2 == 0 { &outbox } else { &other };
            sender.send(Outbound::Grant(Grant { key: i.to_string(), streams: Vec::new() }));
        }
        let mut items = [inbox.bell.as_poll_item(zmq::POLLIN)];
        assert_eq!(zmq::poll(&mut items, 1000).unwrap(), 1);
        let keys: Vec<String> = inbox
            .drain()
            .map(|o| match o {
                Outbound::Grant(grant) => grant.key,
                other => panic!("{other:?}"),
            })
            .collect();
        assert_eq!(keys.len(), 100);
        // Disarmed: the next item rings again.
        outbox.send(Outbound::Stop);
        let mut items = [inbox.bell.as_poll_item(zmq::POLLIN)];
        assert_eq!(zmq::poll(&mut items, 1000).unwrap(), 1);
        assert!(matches!(inbox.drain().next(), Some(Outbound::Stop)));
    }
}
