//! The hostile-peer suite (issue 10): each test attacks one trust boundary
//! with real CURVE sockets (an enrolled client key, a second admin, an
//! unauthenticated TCP peer) against the real server, asserts that the
//! attack fails, and that the server keeps serving the legitimate peers.
//! `docs/security.md` maps every boundary to its tests.

use std::path::Path;
use std::time::{Duration, Instant};

use pantry_integration::curve::{
    admin, admin_pair, bootstrap_admin, create_named_client, credentials_dir, curve_dealer, curve_socket, keys_dir,
    line_with, log_since, pair_of, recv_for, send, sign_as_admin, wait_for_line, KEYS,
};
use pantry_integration::{wait_for_status, wait_until, Agent, AgentSpec, Server};
use pantry_shared::commands::{
    app_config, client_list, client_revoke, create_client, echo, exec, register_client, status, upload,
};
use pantry_shared::filter::{ClientFilter, TopicForm};
use pantry_shared::keys::{KeyPair, Role};
use pantry_shared::Message;

const WAIT: Duration = Duration::from_secs(5);

fn start_agent(server: &Server, identity: &str, app: &str, credentials: &str) -> Agent {
    let mut spec = AgentSpec::new(identity, app, "prod", &["web"]);
    spec.client_keys_yaml = Some(credentials.to_owned());
    Agent::start(server, spec)
}

fn assert_listed(server: &Server, cwd: &Path, ids: &[&str]) {
    let listed =
        wait_for_status(server, cwd, &["--curve-key-file", KEYS, "--timeout", "2"], ids, Duration::from_secs(10));
    assert!(listed, "status never listed exactly {ids:?}\nserver log:\n{}", server.log());
}

/// An echo to `identity` from the admin in `cwd` is answered by it.
fn assert_answers(server: &Server, cwd: &Path, identity: &str) {
    let run = admin(server, cwd, 5, &["-i", identity, "echo", "still-here"]);
    assert!(
        run.success() && run.stdout.contains(&format!("{identity}: still-here")),
        "{identity} no longer answers: {run:?}\nserver log:\n{}",
        server.log()
    );
}

fn from(mut m: Message, who: &str) -> Message {
    m.metadata.from = who.into();
    m
}

fn to(mut m: Message, stream: &str) -> Message {
    m.stream = stream.into();
    m.metadata.to = stream.into();
    m
}

/// Every message `sub` receives within `window`, as (stream, uuid).
fn received(sub: &zmq::Socket, window: Duration) -> Vec<(String, String)> {
    let end = Instant::now() + window;
    let mut got = Vec::new();
    loop {
        let left = end.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return got;
        }
        if sub.poll(zmq::POLLIN, left.as_millis().max(1) as i64).unwrap_or(0) > 0 {
            while let Ok(frames) = sub.recv_multipart(zmq::DONTWAIT) {
                let stream = String::from_utf8_lossy(&frames[0]).into_owned();
                let uuid = Message::from_frames(&frames).map(|m| m.uuid().to_owned()).unwrap_or_default();
                got.push((stream, uuid));
            }
        }
    }
}

/// Whether the monitored socket's CURVE handshake completes within `WAIT`.
fn handshake_done(monitor: &zmq::Socket) -> bool {
    wait_until(WAIT, || {
        std::iter::from_fn(|| pantry_shared::monitor::read(monitor))
            .any(|e| e.event == pantry_shared::monitor::SocketEvent::HandshakeSucceeded)
    })
}

/// A server with an admin and an agent `web-1` (application `shop`).
struct Fleet {
    server: Server,
    cwd: tempfile::TempDir,
    web: KeyPair,
    _agent: Agent,
}

fn fleet() -> Fleet {
    let server = Server::start(true);
    let (cwd, _) = bootstrap_admin(&server);
    let credentials = create_named_client(&server, cwd.path(), "web-1");
    let agent = start_agent(&server, "web-1", "shop", &credentials);
    assert_listed(&server, cwd.path(), &["web-1"]);
    Fleet { web: pair_of(&credentials), server, cwd, _agent: agent }
}

// ---------------------------------------------------------------------------
// Client key → admin commands
// ---------------------------------------------------------------------------

#[test]
fn a_client_key_runs_no_admin_command_whatever_its_flags_say() {
    let f = fleet();
    let admin_key = admin_pair(f.cwd.path()).public_key;
    let ctx = zmq::Context::new();
    let dealer = curve_dealer(&ctx, &f.server, &f.web);
    let filter = ClientFilter { application: Some("shop".into()), ..Default::default() };
    let upload = upload::UploadRequest {
        transfer_id: "0".repeat(32),
        remote_path: "/tmp/pantry-hostile-upload".into(),
        size: 1,
        sha256: String::new(),
        mode: None,
    };
    let attempts = [
        create_client::request(Some("evil"), Role::Admin),
        client_revoke::request("admin"),
        client_list::request(),
        status::request(&filter),
        app_config::show_request("shop"),
        app_config::edit_request("shop", "owned: true\n"),
        to(
            exec::request(&exec::ExecRequest {
                program: "touch".into(),
                args: vec!["/tmp/pantry-hostile-exec".into()],
                shell: false,
                timeout: 5.0,
            }),
            "web-1",
        ),
        to(upload::request(&upload), "web-1"),
        Message::new("Frobnicate"),
    ];
    for attempt in attempts {
        for requires_response in [true, false] {
            let mut m = from(attempt.clone(), "web-1");
            m.metadata.uuid = uuid::Uuid::new_v4().to_string();
            m.metadata.requires_response = requires_response;
            send(&dealer, &m);
            let answer = recv_for(&dealer, m.uuid(), Duration::from_millis(if requires_response { 3000 } else { 300 }));
            let kind = m.message_type().to_owned();
            match (requires_response, answer) {
                (true, Some(a)) => {
                    let error = a.error().unwrap_or_default();
                    assert!(
                        error.contains("not authorized") || error.contains("unknown command type"),
                        "{kind}: answered {a:?}"
                    );
                }
                (true, None) => panic!("{kind}: no refusal within 3 s:\n{}", f.server.log()),
                (false, None) => {}
                (false, Some(a)) => {
                    // Only a refusal may come back, never a result.
                    assert!(a.error().is_some() && a.body.is_empty(), "{kind} ran without requires_response: {a:?}");
                }
            }
        }
    }
    // Nothing happened: no new key, the admin's key is still there, no
    // application config, no command reached the agent.
    let stored = std::fs::read_to_string(f.server.root_dir().join("security/curve/server_keys.yml")).unwrap();
    assert!(!stored.contains("evil") && stored.contains(&admin_key), "{stored}");
    assert!(!app_config::config_path(&f.server.root_dir(), "shop").exists(), "an application config was written");
    assert!(line_with(&f._agent.log(), &["request received", "Exec"]).is_none(), "exec reached the agent");
    assert!(line_with(&f._agent.log(), &["request received", "Upload"]).is_none(), "upload reached the agent");
    let refused = wait_for_line(
        || f.server.log(),
        &["WARN", "unauthorized command refused", "CreateClient", &f.web.public_key],
        WAIT,
    );
    assert!(refused.is_some(), "no refusal logged:\n{}", f.server.log());
    // The server serves the legitimate peers as before.
    assert_answers(&f.server, f.cwd.path(), "web-1");
    let run = admin(&f.server, f.cwd.path(), 5, &["client:list"]);
    assert!(run.success(), "{run:?}");
}

#[test]
fn an_admin_key_neither_answers_nor_registers() {
    let f = fleet();
    let ctx = zmq::Context::new();
    let dealer = curve_dealer(&ctx, &f.server, &admin_pair(f.cwd.path()));
    let mut registration =
        register_client::request(&ClientFilter { identity: Some("admin".into()), ..Default::default() });
    registration.metadata.requires_response = true;
    send(&dealer, &from(registration.clone(), "admin"));
    let refused = recv_for(&dealer, registration.uuid(), WAIT).expect("a refusal");
    assert!(refused.error().is_some_and(|e| e.contains("not authorized")), "{refused:?}");
    let mut answer = echo::request("fake").response();
    answer.metadata.from = "web-1".into();
    send(&dealer, &answer);
    let dropped = wait_for_line(|| f.server.log(), &["WARN", "an admin key cannot answer", answer.uuid()], WAIT);
    assert!(dropped.is_some(), "{}", f.server.log());
    assert_answers(&f.server, f.cwd.path(), "web-1");
}

// ---------------------------------------------------------------------------
// PUB topics
// ---------------------------------------------------------------------------

#[test]
fn a_client_key_reads_only_its_own_topics() {
    let f = fleet();
    let db_credentials = create_named_client(&f.server, f.cwd.path(), "db-1");
    let _db = start_agent(&f.server, "db-1", "bank", &db_credentials);
    let web10_credentials = create_named_client(&f.server, f.cwd.path(), "web-10");
    let _web10 = start_agent(&f.server, "web-10", "shop", &web10_credentials);
    assert_listed(&f.server, f.cwd.path(), &["db-1", "web-1", "web-10"]);

    // web-1's key on SUBs of its own (in the exact form, as Pantry's agents
    // ask, and bare, as SPEC §4 does), asking for everything and for what
    // belongs to others; and an admin key asking for everything.
    let ctx = zmq::Context::new();
    let subs: Vec<zmq::Socket> = [TopicForm::Exact, TopicForm::Bare]
        .into_iter()
        .map(|form| {
            let sub = curve_socket(&ctx, &f.server, &f.web, zmq::SUB, f.server.ports.pub_sub);
            for topic in ["", "db-1", "bank", "bank.prod", "shop.test", "web-1", "*", "shop"] {
                let topic = if topic.is_empty() { Vec::new() } else { form.topic(topic) };
                sub.set_subscribe(&topic).unwrap();
            }
            sub
        })
        .collect();
    let admin_sub = curve_socket(&ctx, &f.server, &admin_pair(f.cwd.path()), zmq::SUB, f.server.ports.pub_sub);
    admin_sub.set_subscribe(b"").unwrap();
    for topic in ["db-1", "bank"] {
        let line = wait_for_line(
            || f.server.log(),
            &["WARN", "subscription refused", &f.web.public_key, &format!("topic: {topic}")],
            WAIT,
        );
        assert!(line.is_some(), "no refusal logged for topic {topic}:\n{}", f.server.log());
    }
    std::thread::sleep(Duration::from_millis(300));

    for args in [&["-i", "db-1"][..], &["-a", "bank"], &["-i", "web-10"], &["-i", "web-1"], &[]] {
        let mut all = args.to_vec();
        all.extend(["echo", "topic-test"]);
        let run = admin(&f.server, f.cwd.path(), 5, &all);
        assert!(run.success(), "{all:?}: {run:?}");
    }
    for sub in &subs {
        let got = received(sub, Duration::from_millis(800));
        let streams: Vec<&str> = got.iter().map(|(s, _)| s.trim_matches('\0')).collect();
        assert!(streams.contains(&"web-1") && streams.contains(&"*"), "its own messages did not arrive: {got:?}");
        for other in ["db-1", "bank", "web-10"] {
            assert!(!streams.contains(&other), "web-1's key read a message to {other}: {got:?}");
        }
    }
    let admin_got = received(&admin_sub, Duration::from_millis(200));
    assert!(admin_got.is_empty(), "an admin key read published requests: {admin_got:?}");
    // The agents themselves are unaffected.
    for id in ["db-1", "web-1", "web-10"] {
        assert_answers(&f.server, f.cwd.path(), id);
    }
}

#[test]
fn revoking_a_key_cuts_its_silent_connections_too() {
    let f = fleet();
    let extra = create_named_client(&f.server, f.cwd.path(), "web-2");
    let web2 = pair_of(&extra);
    let ctx = zmq::Context::new();
    // Handshake done, nothing subscribed: the server cannot tell whose
    // connection it is yet.
    let sub = ctx.socket(zmq::SUB).unwrap();
    let monitor = pantry_shared::monitor::monitor(&ctx, &sub, pantry_shared::monitor::CLIENT_EVENTS).unwrap();
    pantry_integration::curve::connect_curve(&sub, &f.server, &web2, f.server.ports.pub_sub);
    assert!(handshake_done(&monitor), "the SUB never completed its handshake");
    let offset = f.server.log().len();
    let run = admin(&f.server, f.cwd.path(), 5, &["client:revoke", "web-2"]);
    assert!(run.success(), "{run:?}");
    let cut = wait_for_line(|| log_since(&f.server, offset), &["cut off a revoked key", &web2.public_key], WAIT)
        .unwrap_or_else(|| panic!("no cut-off:\n{}", f.server.log()));
    assert!(!cut.contains("connections: 0"), "the silent connection was not shut down: {cut}");
    // It subscribes now: nothing sent to web-2 (or anyone) reaches it.
    sub.set_subscribe(b"web-2").unwrap();
    sub.set_subscribe(b"*").unwrap();
    std::thread::sleep(Duration::from_millis(300));
    let run = admin(&f.server, f.cwd.path(), 5, &["echo", "after-revoke"]);
    assert!(run.success(), "{run:?}");
    let got = received(&sub, Duration::from_millis(800));
    assert!(got.is_empty(), "a revoked key's connection still receives: {got:?}");
    assert_answers(&f.server, f.cwd.path(), "web-1");
}

// ---------------------------------------------------------------------------
// The file service
// ---------------------------------------------------------------------------

#[test]
fn only_the_recipients_of_an_upload_fetch_it() {
    let f = fleet();
    let db_credentials = create_named_client(&f.server, f.cwd.path(), "db-1");
    let db = pair_of(&db_credentials);
    let _db_agent = start_agent(&f.server, "db-1", "bank", &db_credentials);
    assert_listed(&f.server, f.cwd.path(), &["db-1", "web-1"]);
    let ctx = zmq::Context::new();
    let admin_key = admin_pair(f.cwd.path());
    let files_port = f.server.ports.file_service;

    // A client key may not offer.
    let client_files = curve_socket(&ctx, &f.server, &db, zmq::DEALER, files_port);
    client_files.send_multipart(upload::offer_frames(), 0).unwrap();
    let refused = upload::await_offered(&client_files, WAIT).expect_err("a client key offered a file");
    assert!(refused.to_string().contains("not authorized"), "{refused}");

    // The admin offers, and asks only web-1 (application shop) to fetch.
    let admin_files = curve_socket(&ctx, &f.server, &admin_key, zmq::DEALER, files_port);
    admin_files.send_multipart(upload::offer_frames(), 0).unwrap();
    let transfer_id = upload::await_offered(&admin_files, WAIT).expect("the admin's offer");
    assert_eq!(transfer_id.len(), 32, "a 128-bit id: {transfer_id}");

    // A second admin may not send an Upload naming the first one's offer.
    let second = admin(&f.server, f.cwd.path(), 5, &["client:create", "--admin", "--name", "ops-2"]);
    assert!(second.success(), "{second:?}");
    let second_pair = pair_of(&second.stdout);
    let request = upload::UploadRequest {
        transfer_id: transfer_id.clone(),
        remote_path: "/tmp/pantry-hostile-never".into(),
        size: 4,
        sha256: "0".repeat(64),
        mode: None,
    };
    let second_dealer = curve_dealer(&ctx, &f.server, &second_pair);
    let stolen = to(from(upload::request(&request), "ops-2"), "shop");
    send(&second_dealer, &stolen);
    let answer = recv_for(&second_dealer, stolen.uuid(), WAIT).expect("an answer");
    assert!(answer.error().is_some_and(|e| e.contains("no such upload")), "{answer:?}");
    // Nor by posing as another server of a cluster (whose requests skip the
    // check here: the file is the other server's): a peer is known by its
    // key, not by the field it sets.
    let mut posing = to(from(upload::request(&request), "ops-2"), "shop");
    posing.metadata.custom.insert("cluster_peer".into(), true.into());
    send(&second_dealer, &posing);
    let answer = recv_for(&second_dealer, posing.uuid(), WAIT).expect("an answer");
    assert!(answer.error().is_some_and(|e| e.contains("no such upload")), "{answer:?}");

    let dealer = curve_dealer(&ctx, &f.server, &admin_key);
    let mut real = to(from(upload::request(&request), "admin"), "shop");
    // Naming another file service gets the requester nothing: the agent
    // fetches from this server's (the FETCH below arrives).
    real.metadata.custom.insert(upload::FILE_SERVICE_FIELD.into(), "tcp://127.0.0.1:1".into());
    sign_as_admin(f.cwd.path(), &mut real);
    send(&dealer, &real);
    let list = recv_for(&dealer, real.uuid(), WAIT).expect("the client list");
    assert!(list.is_client_response_list(), "{list:?}");

    // db-1's key knows the id (as if it had read it) and asks for it.
    let fetch = |id: &str| {
        let frames: [&[u8]; 4] = [upload::FETCH, id.as_bytes(), &0u64.to_be_bytes(), &4u32.to_be_bytes()];
        client_files.send_multipart(frames, 0).unwrap();
        let mut got = None;
        wait_until(WAIT, || {
            got = client_files.recv_multipart(zmq::DONTWAIT).ok();
            got.is_some()
        });
        got.expect("an answer to FETCH")
    };
    for id in [transfer_id.as_str(), &"f".repeat(32)] {
        let answer = fetch(id);
        assert_eq!(answer[0], upload::ERROR, "db-1 fetched {id}: {answer:?}");
    }
    let warned = wait_for_line(|| f.server.log(), &["WARN", "file fetch refused", &db.public_key], WAIT);
    assert!(warned.is_some(), "{}", f.server.log());
    // The sender never saw a FETCH from db-1; web-1's came through.
    let mut from_sender = Vec::new();
    wait_until(WAIT, || {
        while let Ok(frames) = admin_files.recv_multipart(zmq::DONTWAIT) {
            from_sender.push(frames);
        }
        !from_sender.is_empty()
    });
    assert!(from_sender.iter().all(|f| f[0] == upload::FETCH), "{from_sender:?}");
    assert!(!from_sender.is_empty(), "web-1, a recipient, could not fetch");
}

#[test]
fn a_client_key_running_upload_is_told_not_authorized_at_once() {
    let f = fleet();
    let client_cwd = keys_dir(&f.server, &f.web);
    let file = client_cwd.path().join("payload");
    std::fs::write(&file, b"payload").unwrap();
    let started = Instant::now();
    let run = admin(&f.server, client_cwd.path(), 5, &["upload", file.to_str().unwrap(), "/tmp/pantry-hostile-up"]);
    assert!(!run.success() && run.stderr.contains("not authorized"), "{run:?}");
    assert!(started.elapsed() < Duration::from_secs(2), "refused after {:?}", started.elapsed());
}

// ---------------------------------------------------------------------------
// Pending requests
// ---------------------------------------------------------------------------

/// A client key that registers `identity`, listens on a raw SUB and never
/// answers. Returns its sockets.
fn mute_client(ctx: &zmq::Context, server: &Server, pair: &KeyPair, identity: &str) -> (zmq::Socket, zmq::Socket) {
    let sub = curve_socket(ctx, server, pair, zmq::SUB, server.ports.pub_sub);
    sub.set_subscribe(identity.as_bytes()).unwrap();
    let dealer = curve_dealer(ctx, server, pair);
    let mut registration =
        register_client::request(&ClientFilter { identity: Some(identity.into()), ..Default::default() });
    registration.metadata.requires_response = true;
    send(&dealer, &registration);
    let ack = recv_for(&dealer, registration.uuid(), WAIT).expect("registration answered");
    assert_eq!(ack.error(), None, "{ack:?}");
    (sub, dealer)
}

#[test]
fn a_pending_uuid_belongs_to_its_requester() {
    let f = fleet();
    let mute = pair_of(&create_named_client(&f.server, f.cwd.path(), "mute-1"));
    let ctx = zmq::Context::new();
    let (_sub, mute_dealer) = mute_client(&ctx, &f.server, &mute, "mute-1");
    assert_listed(&f.server, f.cwd.path(), &["mute-1", "web-1"]);
    let admin_dealer = curve_dealer(&ctx, &f.server, &admin_pair(f.cwd.path()));
    let request = to(from(echo::request("mine"), "admin"), "web-1");
    send(&admin_dealer, &request);
    let list = recv_for(&admin_dealer, request.uuid(), WAIT).expect("client list");
    assert!(list.is_client_response_list());

    // A second admin reuses the uuid while it is pending... (web-1 may
    // have answered already: reuse an uuid that stays pending instead.)
    let pending = to(from(echo::request("waits"), "admin"), "mute-1");
    send(&admin_dealer, &pending);
    assert!(recv_for(&admin_dealer, pending.uuid(), WAIT).is_some_and(|m| m.is_client_response_list()));
    let second = admin(&f.server, f.cwd.path(), 5, &["client:create", "--admin", "--name", "ops-2"]);
    let second_dealer = curve_dealer(&ctx, &f.server, &pair_of(&second.stdout));
    let mut thief = to(from(echo::request("steal"), "ops-2"), "web-1");
    thief.metadata.uuid = pending.uuid().to_owned();
    send(&second_dealer, &thief);
    let refused = recv_for(&second_dealer, thief.uuid(), WAIT).expect("a refusal");
    assert!(refused.error().is_some_and(|e| e.contains("already in use")), "{refused:?}");
    // web-1's key, not asked, answers it as if it were mute-1 or itself.
    let web_dealer = curve_dealer(&ctx, &f.server, &f.web);
    let mut fake = pending.response();
    fake.metadata.from = "web-1".into();
    send(&web_dealer, &fake);
    assert!(
        recv_for(&admin_dealer, pending.uuid(), Duration::from_millis(500)).is_none(),
        "a stranger's answer was routed"
    );
    // mute-1 answers for real: that one is routed.
    let mut real = pending.response();
    real.metadata.from = "mute-1".into();
    real.body = pending.body.clone();
    send(&mute_dealer, &real);
    let got = recv_for(&admin_dealer, pending.uuid(), WAIT).expect("mute-1's answer");
    assert_eq!(got.metadata.from, "mute-1");
}

#[test]
fn requests_awaiting_answers_are_capped_per_requester() {
    let f = fleet();
    let mute = pair_of(&create_named_client(&f.server, f.cwd.path(), "mute-1"));
    let ctx = zmq::Context::new();
    let (_sub, _mute_dealer) = mute_client(&ctx, &f.server, &mute, "mute-1");
    assert_listed(&f.server, f.cwd.path(), &["mute-1", "web-1"]);
    let dealer = curve_dealer(&ctx, &f.server, &admin_pair(f.cwd.path()));
    let cap = 10_000;
    let mut last = None;
    for _ in 0..=cap {
        let m = to(from(echo::request("x"), "admin"), "mute-1");
        send(&dealer, &m);
        last = Some(m);
    }
    let last = last.unwrap();
    let answer = recv_for(&dealer, last.uuid(), Duration::from_secs(10)).expect("an answer to the last request");
    assert!(answer.error().is_some_and(|e| e.contains("too many requests")), "{answer:?}");
    let warned = wait_for_line(|| f.server.log(), &["WARN", "too many requests", "limit: 10000"], WAIT);
    assert!(warned.is_some(), "{}", f.server.log());
    // Other admins and the agents are not affected.
    let other = admin(&f.server, f.cwd.path(), 5, &["client:create", "--admin", "--name", "ops-2"]);
    assert!(other.success(), "{other:?}");
    assert_answers(&f.server, credentials_dir(&other.stdout).path(), "web-1");
}

#[test]
fn oversized_uuids_and_metadata_cost_the_server_nothing() {
    let f = fleet();
    let pid = f.server.process.pid().expect("server pid");
    let rss = || -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
        status
            .lines()
            .find(|l| l.starts_with("VmRSS:"))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    };
    let before = rss();
    let ctx = zmq::Context::new();
    // A client key that never reads sends 40 registrations carrying 4 MiB
    // each, half with a 4 MiB uuid too: the long uuids are malformed, the
    // rest are refused with a few bytes each.
    let dealer = curve_dealer(&ctx, &f.server, &f.web);
    dealer.set_rcvhwm(1).unwrap();
    let big = "x".repeat(4 * 1024 * 1024);
    for i in 0..40 {
        let mut m = from(register_client::request(&ClientFilter::default()), "web-1");
        m.body.clear();
        m.metadata.requires_response = true;
        m.metadata.custom.insert("padding".into(), big.clone().into());
        if i % 2 == 0 {
            m.metadata.uuid = big.clone();
        }
        send(&dealer, &m);
    }
    let malformed =
        wait_for_line(|| f.server.log(), &["malformed message dropped", "uuid of"], Duration::from_secs(20));
    assert!(malformed.is_some(), "{}", f.server.log());
    assert!(
        wait_until(Duration::from_secs(20), || f.server.log().matches("registration refused").count() >= 20),
        "{}",
        f.server.log()
    );
    std::thread::sleep(Duration::from_millis(500));
    let grown = rss().saturating_sub(before);
    eprintln!("server RSS grew by {grown} KiB after 40 messages of 4 to 8 MiB from a non-reading client");
    assert!(grown < 96 * 1024, "the server grew by {grown} KiB");
    assert_answers(&f.server, f.cwd.path(), "web-1");
}

// ---------------------------------------------------------------------------
// Unauthenticated peers and descriptors
// ---------------------------------------------------------------------------

#[test]
fn stalled_handshakes_do_not_lock_the_admin_out() {
    let server = Server::start_limited(true, "", Some(256));
    let (cwd, _) = bootstrap_admin(&server);
    let limit = line_with(&server.log(), &["open-file limit", "limit: 256"]);
    assert!(limit.is_some(), "the server does not log its limit:\n{}", server.log());
    // Unauthenticated TCP connections that never say a word, more than the
    // server has descriptors for.
    let address = format!("127.0.0.1:{}", server.ports.receive);
    let stalled: Vec<std::net::TcpStream> =
        (0..300).filter_map(|_| std::net::TcpStream::connect(&address).ok()).collect();
    assert!(stalled.len() > 250, "only {} connections", stalled.len());
    std::thread::sleep(Duration::from_millis(1500));
    // The admin gets in well before the stalled handshakes time out (10 s).
    let started = Instant::now();
    let ok = wait_until(Duration::from_secs(8), || admin(&server, cwd.path(), 2, &["status"]).success());
    assert!(ok, "the admin was locked out:\n{}", server.log());
    eprintln!("admin got in {:?} after 300 stalled connections", started.elapsed());
    let shed = line_with(&server.log(), &["shut down"]).or_else(|| line_with(&server.log(), &["cannot accept"]));
    assert!(shed.is_some(), "the server said nothing about descriptors:\n{}", server.log());
    drop(stalled);
}

// ---------------------------------------------------------------------------
// exec and the key store
// ---------------------------------------------------------------------------

#[test]
fn exec_timeout_kills_a_background_child_and_answers_on_time() {
    let f = fleet();
    let started = Instant::now();
    let run = admin(
        &f.server,
        f.cwd.path(),
        10,
        &["-i", "web-1", "exec", "--shell", "--timeout", "2", "--", "sleep 23.7 & echo started"],
    );
    let took = started.elapsed();
    assert!(run.stdout.contains("timed out after 2 s, killed") && run.stdout.contains("started"), "{run:?}");
    assert!(took < Duration::from_secs(6), "answered after {took:?}");
    let left = std::process::Command::new("pgrep").args(["-f", "sleep 23.7"]).output().unwrap();
    assert!(left.stdout.is_empty(), "the background child still runs: {}", String::from_utf8_lossy(&left.stdout));
}

#[test]
fn an_empty_key_store_is_a_startup_error_and_leftovers_are_removed() {
    let mut server = Server::start(true);
    let dir = server.root_dir().join("security/curve");
    let keys = dir.join("server_keys.yml");
    let original = std::fs::read_to_string(&keys).unwrap();
    server.process.terminate();
    std::fs::write(&keys, "").unwrap();
    let out = std::process::Command::new(pantry_integration::bin("pantry-server"))
        .args(["-c", server.config_path().to_str().unwrap()])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("server_keys.yml") && stderr.contains("empty"), "{stderr}");
    assert_eq!(std::fs::read_to_string(&keys).unwrap(), "", "the empty file was replaced");
    std::fs::write(&keys, original).unwrap();
    // What a write killed before its rename leaves behind.
    std::fs::write(dir.join(".pantry-keys-stale1"), "half a key").unwrap();
    server.restart();
    assert!(!dir.join(".pantry-keys-stale1").exists(), "the leftover temporary file is still there");
    assert!(line_with(&server.log(), &["removed a temporary key file", ".pantry-keys-stale1"]).is_some());
}
