//! The server started in-process with [`pantry_server::run`] (null
//! security, loopback, free ports), spoken to in the raw protocol: an agent
//! made of a DEALER and a SUB, an admin made of a DEALER. Checks the
//! dispatcher's authorization and the routing of answers, which the socket
//! thread does from their metadata alone.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use pantry_integration::free_port;
use pantry_shared::commands::{echo, register_client};
use pantry_shared::config::{Config, Program};
use pantry_shared::filter::ClientFilter;
use pantry_shared::Message;

const WAIT: Duration = Duration::from_secs(5);

struct InProcess {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
    receive: String,
    publish: String,
    _root: tempfile::TempDir,
}

impl InProcess {
    fn start() -> InProcess {
        let root = tempfile::tempdir().unwrap();
        let (pub_port, receive_port, file_port) = (free_port(), free_port(), free_port());
        let yaml = format!(
            "root_dir: {}\nlog_level: error\nnetworking:\n  server_host: 127.0.0.1\n  pub_sub_port: {pub_port}\n  \
             receive_port: {receive_port}\n  file_service_port: {file_port}\n  security: null\n",
            root.path().display()
        );
        let path = root.path().join("server.yml");
        std::fs::write(&path, yaml).unwrap();
        let config = Config::load(&path, Program::Server).unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let until = stop.clone();
        let log = slog::Logger::root(slog::Discard, slog::o!());
        let thread = std::thread::spawn(move || {
            let serve = |_control| async move {
                while !until.load(Ordering::Relaxed) {
                    actix_rt::time::sleep(Duration::from_millis(10)).await;
                }
            };
            pantry_server::run(&config, log, serve).expect("the server runs");
        });
        InProcess {
            stop,
            thread: Some(thread),
            receive: format!("tcp://127.0.0.1:{receive_port}"),
            publish: format!("tcp://127.0.0.1:{pub_port}"),
            _root: root,
        }
    }
}

impl Drop for InProcess {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

fn send(socket: &zmq::Socket, message: &Message) {
    socket.send_multipart(message.to_frames(), 0).unwrap();
}

/// The next message on `socket` within `timeout`.
fn recv(socket: &zmq::Socket, timeout: Duration) -> Option<Message> {
    let end = Instant::now() + timeout;
    loop {
        let left = end.saturating_duration_since(Instant::now());
        if socket.poll(zmq::POLLIN, left.as_millis() as i64).ok()? == 0 {
            return None;
        }
        let frames = socket.recv_multipart(0).ok()?;
        if let Ok(message) = Message::from_frames(&frames) {
            return Some(message);
        }
    }
}

fn dealer(ctx: &zmq::Context, endpoint: &str) -> zmq::Socket {
    let socket = ctx.socket(zmq::DEALER).unwrap();
    socket.set_linger(0).unwrap();
    socket.connect(endpoint).unwrap();
    socket
}

/// An agent named `identity`: registered, subscribed to its own stream.
struct FakeAgent {
    identity: String,
    dealer: zmq::Socket,
    sub: zmq::Socket,
}

impl FakeAgent {
    fn start(ctx: &zmq::Context, server: &InProcess, identity: &str) -> FakeAgent {
        let sub = ctx.socket(zmq::SUB).unwrap();
        sub.set_linger(0).unwrap();
        sub.connect(&server.publish).unwrap();
        // The stream as agents ask for it; the server grants its topic.
        sub.set_subscribe(identity.as_bytes()).unwrap();
        let dealer = dealer(ctx, &server.receive);
        let me = ClientFilter { identity: Some(identity.into()), ..Default::default() };
        let mut registration = register_client::request(&me);
        registration.metadata.requires_response = true;
        send(&dealer, &registration);
        let ack = recv(&dealer, WAIT).expect("a registration acknowledgement");
        assert_eq!(ack.uuid(), registration.uuid());
        FakeAgent { identity: identity.into(), dealer, sub }
    }

    /// The next request published to this agent.
    fn request(&self, timeout: Duration) -> Option<Message> {
        recv(&self.sub, timeout)
    }

    fn answer(&self, request: &Message) -> Message {
        let mut answer = echo::handle(request);
        answer.metadata.from = self.identity.clone();
        send(&self.dealer, &answer);
        answer
    }
}

/// An echo from `admin` to `identity` that the agent received (retried
/// while the agent's subscription is on its way).
fn echo_reaching(admin: &zmq::Socket, agent: &FakeAgent) -> (Message, Message) {
    for _ in 0..50 {
        let mut request = echo::request("hi");
        request.metadata.from = "admin".into();
        request.stream = agent.identity.clone();
        send(admin, &request);
        let list = recv(admin, WAIT).expect("the list of recipients");
        assert!(list.is_client_response_list(), "{list:?}");
        if let Some(published) = agent.request(Duration::from_millis(200)) {
            assert_eq!(published.uuid(), request.uuid());
            return (request, published);
        }
        // Not subscribed yet: the request expires unanswered.
    }
    panic!("the agent never received a request");
}

#[test]
fn answers_reach_the_requester_once_and_only_from_recipients() {
    let server = InProcess::start();
    let ctx = zmq::Context::new();
    let web = FakeAgent::start(&ctx, &server, "web-1");
    let db = FakeAgent::start(&ctx, &server, "db-1");
    let admin = dealer(&ctx, &server.receive);

    let (request, published) = echo_reaching(&admin, &web);
    assert!(published.metadata.forwarded, "the server marks what it forwards");
    // An answer from a client the request was not sent to goes nowhere.
    db.answer(&published);
    let sent = web.answer(&published);
    let answer = recv(&admin, WAIT).expect("the answer");
    assert_eq!(answer.uuid(), request.uuid());
    assert_eq!(answer.metadata.from, "web-1");
    assert!(answer.metadata.forwarded);
    assert_eq!(answer.body, sent.body, "the body as the client sent it");
    assert_eq!(answer.metadata.custom, sent.metadata.custom);
    // A second answer from the same client, and one to no request at all.
    web.answer(&published);
    let mut stray = echo::request("stray").response();
    stray.metadata.from = "web-1".into();
    send(&web.dealer, &stray);
    assert!(recv(&admin, Duration::from_millis(300)).is_none(), "nothing more reaches the admin");
}

#[test]
fn unknown_types_are_refused_and_agents_cannot_answer_for_others() {
    let server = InProcess::start();
    let ctx = zmq::Context::new();
    let admin = dealer(&ctx, &server.receive);
    let mut unknown = Message::new("Frobnicate");
    unknown.metadata.requires_response = true;
    send(&admin, &unknown);
    let refusal = recv(&admin, WAIT).expect("a refusal");
    assert_eq!(refusal.uuid(), unknown.uuid());
    assert!(refusal.error().is_some_and(|e| e.contains("unknown command type `Frobnicate`")), "{refusal:?}");

    // An answer whose `from` is not the client it came from is not routed
    // (under null security there are no keys, so `from` decides: the
    // request was sent to web-1 only).
    let web = FakeAgent::start(&ctx, &server, "web-1");
    let (_, published) = echo_reaching(&admin, &web);
    let mut spoofed = echo::handle(&published);
    spoofed.metadata.from = "web-2".into();
    send(&web.dealer, &spoofed);
    assert!(recv(&admin, Duration::from_millis(300)).is_none());
    web.answer(&published);
    assert!(recv(&admin, WAIT).is_some_and(|a| a.metadata.from == "web-1"));
}
