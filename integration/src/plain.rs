//! A plain agent: what someone who read only SPEC.md (§3–4) would write,
//! with raw ZeroMQ sockets and JSON, and no Pantry code. The original Ruby
//! agent behaves the same way on the wire.
//!
//! It subscribes its SUB to its bare streams (`host-1`, `app`, `app.env`,
//! `app.env.role`) and the broadcast topic `*`, keeps a published message
//! only when its first frame *equals* one of them, answers `Echo` with the
//! same body and any other type with `custom.error`, and registers over its
//! DEALER (`RegisterClient`, body `{application, environment, roles}`) at
//! start and every heartbeat. Every message the SUB receives is recorded,
//! kept or not, so tests can count what reached it.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

/// The structured-body marker of SPEC §3.
const STRUCTURED: &str = "\u{2042}";

/// CURVE credentials as Z85 text.
#[derive(Debug, Clone)]
pub struct PlainCurve {
    pub server_public_key: String,
    pub public_key: String,
    pub private_key: String,
}

impl PlainCurve {
    /// From `client:create` YAML (`server_public_key`, `public_key`,
    /// `private_key`).
    pub fn from_credentials(yaml: &str) -> PlainCurve {
        let value: serde_yaml::Value = serde_yaml::from_str(yaml).expect("credentials are YAML");
        let field = |name: &str| value[name].as_str().unwrap_or_else(|| panic!("no {name} in {yaml}")).to_owned();
        PlainCurve {
            server_public_key: field("server_public_key"),
            public_key: field("public_key"),
            private_key: field("private_key"),
        }
    }

    /// A new key pair made with libzmq, for `server_public_key`.
    pub fn generate(server_public_key: &str) -> PlainCurve {
        let pair = zmq::CurveKeyPair::new().expect("libzmq has CURVE");
        PlainCurve {
            server_public_key: server_public_key.to_owned(),
            public_key: zmq::z85_encode(&pair.public_key).expect("z85"),
            private_key: zmq::z85_encode(&pair.secret_key).expect("z85"),
        }
    }
}

/// Who the plain agent is and how it connects.
#[derive(Debug, Clone)]
pub struct PlainSpec {
    pub identity: String,
    pub application: Option<String>,
    pub environment: Option<String>,
    pub roles: Vec<String>,
    pub host: String,
    pub pub_sub_port: u16,
    pub receive_port: u16,
    pub curve: Option<PlainCurve>,
    /// How often it registers again.
    pub heartbeat: Duration,
    /// Whether `RegisterClient` says `heartbeat_interval` (SPEC §3 does
    /// not have it; the original never sent it).
    pub tell_heartbeat: bool,
    /// Topics it subscribes to besides SPEC §4's: the original also
    /// subscribed to `app.role` for an agent without an environment.
    pub extra_subscriptions: Vec<String>,
    /// Never read the SUB (a stalled or hostile subscriber); it still
    /// registers.
    pub stall: bool,
    /// A hostile agent: every answer carries an error and a structured
    /// body of this many bytes each (0: none).
    pub oversized_answers: usize,
}

impl PlainSpec {
    /// An agent of application `pantry`, environment `test`, for `server`,
    /// registering every second without saying its interval.
    pub fn for_server(server: &crate::Server, identity: &str, roles: &[&str], curve: Option<PlainCurve>) -> PlainSpec {
        PlainSpec {
            identity: identity.into(),
            application: Some("pantry".into()),
            environment: Some("test".into()),
            roles: roles.iter().map(|r| r.to_string()).collect(),
            host: server.host.clone(),
            pub_sub_port: server.ports.pub_sub,
            receive_port: server.ports.receive,
            curve,
            heartbeat: Duration::from_secs(1),
            tell_heartbeat: false,
            extra_subscriptions: Vec::new(),
            stall: false,
            oversized_answers: 0,
        }
    }

    /// The streams of SPEC §4, identity first, then the broadcast topic.
    pub fn subscriptions(&self) -> Vec<String> {
        let mut list = vec![self.identity.clone()];
        if let Some(app) = &self.application {
            list.push(app.clone());
            if let Some(env) = &self.environment {
                list.push(format!("{app}.{env}"));
                list.extend(self.roles.iter().map(|r| format!("{app}.{env}.{r}")));
            }
        }
        list.extend(self.extra_subscriptions.iter().cloned());
        list.push("*".into());
        list
    }
}

/// One message the SUB received, as frames.
pub type Frames = Vec<Vec<u8>>;

/// A running plain agent (a thread). Stops on drop.
pub struct PlainAgent {
    pub spec: PlainSpec,
    stop: Arc<AtomicBool>,
    received: Arc<Mutex<Vec<Frames>>>,
    thread: Option<JoinHandle<()>>,
}

impl PlainAgent {
    /// Connects (SUB first, as the original does), subscribes, registers,
    /// and serves until dropped.
    pub fn start(spec: PlainSpec) -> PlainAgent {
        let stop = Arc::new(AtomicBool::new(false));
        let received = Arc::new(Mutex::new(Vec::new()));
        let (s, r, sp) = (stop.clone(), received.clone(), spec.clone());
        let thread = std::thread::spawn(move || serve(&sp, &s, &r));
        PlainAgent { spec, stop, received, thread: Some(thread) }
    }

    /// Every message its SUB received so far.
    pub fn received(&self) -> Vec<Frames> {
        self.received.lock().map(|r| r.clone()).unwrap_or_default()
    }

    /// The received messages whose metadata has `uuid`.
    pub fn received_for(&self, uuid: &str) -> Vec<Frames> {
        self.received().into_iter().filter(|f| metadata(f).is_some_and(|m| m["uuid"] == uuid)).collect()
    }

    /// The received messages of type `kind` (any uuid).
    pub fn received_of(&self, kind: &str) -> Vec<Frames> {
        self.received().into_iter().filter(|f| metadata(f).is_some_and(|m| m["type"] == kind)).collect()
    }
}

impl Drop for PlainAgent {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// The metadata frame of a message, parsed.
pub fn metadata(frames: &Frames) -> Option<Value> {
    frames.get(1).and_then(|m| serde_json::from_slice(m).ok())
}

fn socket(ctx: &zmq::Context, kind: zmq::SocketType, spec: &PlainSpec) -> zmq::Socket {
    let socket = ctx.socket(kind).expect("socket");
    socket.set_linger(0).expect("linger");
    if let Some(curve) = &spec.curve {
        let key = |z85: &str| zmq::z85_decode(z85).expect("a Z85 key");
        socket.set_curve_serverkey(&key(&curve.server_public_key)).expect("server key");
        socket.set_curve_publickey(&key(&curve.public_key)).expect("public key");
        socket.set_curve_secretkey(&key(&curve.private_key)).expect("secret key");
    }
    socket
}

fn register(dealer: &zmq::Socket, spec: &PlainSpec) {
    let mut body = json!({
        "application": spec.application,
        "environment": spec.environment,
        "roles": spec.roles,
    });
    if spec.tell_heartbeat {
        body["heartbeat_interval"] = json!(spec.heartbeat.as_secs().max(1));
    }
    let metadata = json!({
        "uuid": uuid::Uuid::new_v4().to_string(),
        "type": "RegisterClient",
        "from": spec.identity,
        "to": "",
        "requires_response": false,
        "forwarded": false,
        "custom": {},
    });
    let frames = [b"".to_vec(), metadata.to_string().into_bytes(), format!("{STRUCTURED}{body}").into_bytes()];
    let _ = dealer.send_multipart(frames, zmq::DONTWAIT);
}

/// The answer SPEC §3 asks for: the request's uuid, type and custom, from
/// and to swapped, `requires_response` false; an Echo's body back, and
/// `custom.error` for a type it does not know.
fn answer(request: &Value, body: &[Vec<u8>], spec: &PlainSpec) -> Frames {
    let kind = request["type"].as_str().unwrap_or_default();
    let requester = request["from"].as_str().unwrap_or_default().to_owned();
    let mut custom = request["custom"].clone();
    if !custom.is_object() {
        custom = json!({});
    }
    let echoed = kind == "Echo";
    if !echoed {
        custom["error"] = json!(format!("unknown message type {kind}: this agent does not support it"));
    }
    let metadata = json!({
        "uuid": request["uuid"],
        "type": kind,
        "from": spec.identity,
        "to": requester,
        "requires_response": false,
        "forwarded": false,
        "custom": custom,
    });
    let mut frames = vec![requester.into_bytes(), metadata.to_string().into_bytes()];
    if spec.oversized_answers > 0 {
        let junk = "j".repeat(spec.oversized_answers);
        let mut hostile: Value = serde_json::from_slice(&frames[1]).unwrap_or_default();
        hostile["custom"]["error"] = json!(junk);
        frames[1] = hostile.to_string().into_bytes();
        frames.push(format!("{STRUCTURED}{}", json!({"junk": junk})).into_bytes());
    } else if echoed {
        frames.extend(body.iter().cloned());
    }
    frames
}

fn serve(spec: &PlainSpec, stop: &AtomicBool, received: &Mutex<Vec<Frames>>) {
    let ctx = zmq::Context::new();
    let sub = socket(&ctx, zmq::SUB, spec);
    if spec.stall {
        // Little held on this side: the server's queue is what fills.
        sub.set_rcvhwm(10).expect("rcvhwm");
    }
    let dealer = socket(&ctx, zmq::DEALER, spec);
    let streams = spec.subscriptions();
    for stream in &streams {
        sub.set_subscribe(stream.as_bytes()).expect("subscribe");
    }
    sub.connect(&format!("tcp://{}:{}", spec.host, spec.pub_sub_port)).expect("connect SUB");
    dealer.connect(&format!("tcp://{}:{}", spec.host, spec.receive_port)).expect("connect DEALER");
    register(&dealer, spec);
    let mut next = Instant::now() + spec.heartbeat;
    while !stop.load(Ordering::SeqCst) {
        let mut items = [sub.as_poll_item(zmq::POLLIN), dealer.as_poll_item(zmq::POLLIN)];
        let _ = zmq::poll(&mut items, 50);
        if items[1].is_readable() {
            // Registration answers, if any were asked for: nothing to do.
            while dealer.recv_multipart(zmq::DONTWAIT).is_ok() {}
        }
        while let Some(frames) = (!spec.stall).then(|| sub.recv_multipart(zmq::DONTWAIT).ok()).flatten() {
            if let Ok(mut r) = received.lock() {
                r.push(frames.clone());
            }
            // SPEC §4: the first frame must equal one of its streams.
            let Ok(stream) = std::str::from_utf8(&frames[0]) else { continue };
            if !streams.iter().any(|s| s == stream) || frames.len() < 2 {
                continue;
            }
            let Some(request) = metadata(&frames) else { continue };
            if request["requires_response"] == true {
                let _ = dealer.send_multipart(answer(&request, &frames[2..], spec), zmq::DONTWAIT);
            }
        }
        if Instant::now() >= next {
            register(&dealer, spec);
            next = Instant::now() + spec.heartbeat;
        }
    }
}
