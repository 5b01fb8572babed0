//! One connection per agent (issue 27), with the real binaries and raw
//! ZeroMQ peers that know only the wire: a Pantry agent holds one TCP
//! connection to the server and gets every request over it, exactly; an
//! agent that stops reading gets a bounded queue and every request beyond
//! it is answered at once with `agent not reading`, none lost; agents come
//! back after a restart spread over `reconnect_spread`; and against a
//! server that does not offer it (an older one) the agent subscribes as
//! before.

use std::collections::HashSet;
use std::path::Path;
use std::time::{Duration, Instant};

use pantry_integration::curve::{admin, bootstrap_admin, create_named_client, KEYS};
use pantry_integration::plain::metadata;
use pantry_integration::{free_port, wait_for_status, wait_until, Agent, AgentSpec, Server};
use serde_json::{json, Value};

/// ESTABLISHED TCP connections on loopback whose local port is `port`
/// (the server's side of each connection to it).
fn connections_to(port: u16) -> usize {
    let table = std::fs::read_to_string("/proc/net/tcp").unwrap_or_default();
    table
        .lines()
        .skip(1)
        .filter(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            let local_port =
                fields.get(1).and_then(|a| a.rsplit(':').next()).and_then(|p| u16::from_str_radix(p, 16).ok());
            local_port == Some(port) && fields.get(3) == Some(&"01")
        })
        .count()
}

fn start_agent(server: &Server, cwd: &Path, identity: &str) -> Agent {
    let mut spec = AgentSpec::new(identity, "shop", "prod", &["web"]);
    spec.client_keys_yaml = Some(create_named_client(server, cwd, identity));
    Agent::start(server, spec)
}

fn echo_lines(server: &Server, cwd: &Path, args: &[&str]) -> Vec<String> {
    let run = admin(server, cwd, 5, args);
    assert!(run.success(), "{args:?}: {run:?}");
    let mut lines: Vec<String> = run.stdout.lines().map(str::to_owned).collect();
    lines.sort();
    lines
}

#[test]
fn a_pantry_agent_holds_one_connection_and_receives_exactly_its_requests_over_it() {
    let server = Server::start(true);
    let (cwd, _) = bootstrap_admin(&server);
    // web-1's identity is a prefix of web-10's.
    let agents = [start_agent(&server, cwd.path(), "web-1"), start_agent(&server, cwd.path(), "web-10")];
    let status = ["--curve-key-file", KEYS, "--timeout", "2"];
    assert!(
        wait_for_status(&server, cwd.path(), &status, &["web-1", "web-10"], Duration::from_secs(10)),
        "agents never online:\n{}\n{}",
        agents[0].log(),
        server.log()
    );
    assert_eq!(echo_lines(&server, cwd.path(), &["-i", "web-1", "echo", "one"]), ["web-1: one"]);
    assert_eq!(echo_lines(&server, cwd.path(), &["-a", "shop", "echo", "both"]), ["web-10: both", "web-1: both"]);
    assert_eq!(echo_lines(&server, cwd.path(), &["echo", "all"]), ["web-10: all", "web-1: all"]);
    // Two agents: two connections to the receive port (admins' are gone
    // by now), none to the PUB port.
    assert!(
        wait_until(Duration::from_secs(5), || connections_to(server.ports.receive) == 2),
        "connections to the receive port: {}",
        connections_to(server.ports.receive)
    );
    assert_eq!(connections_to(server.ports.pub_sub), 0, "a Pantry agent opens no SUB");
    for agent in &agents {
        assert!(!agent.log().contains("subscribing on its PUB socket"), "{}", agent.log());
    }
}

/// A raw DEALER peer under null security, speaking the wire directly.
fn dealer(ctx: &zmq::Context) -> zmq::Socket {
    let socket = ctx.socket(zmq::DEALER).expect("socket");
    socket.set_linger(0).expect("linger");
    socket
}

fn frames(stream: &str, meta: Value, body: &[u8]) -> Vec<Vec<u8>> {
    vec![stream.as_bytes().to_vec(), meta.to_string().into_bytes(), body.to_vec()]
}

fn register_on_dealer(socket: &zmq::Socket, identity: &str) {
    let meta = json!({
        "uuid": uuid::Uuid::new_v4().to_string(), "type": "RegisterClient", "from": identity, "to": "",
        "requires_response": false, "forwarded": false, "custom": {"requests_on_dealer": true},
    });
    let body = format!("\u{2042}{}", json!({"application": "shop", "environment": "prod", "roles": ["web"]}));
    socket.send_multipart(frames("", meta, body.as_bytes()), 0).expect("register");
}

#[test]
fn an_agent_that_stops_reading_has_every_request_beyond_its_queue_answered_and_none_lost() {
    let server = Server::start_with(false, "jobs:\n  enabled: false\n");
    let endpoint = format!("tcp://{}:{}", server.host, server.ports.receive);
    let ctx = zmq::Context::new();
    // The agent: it registers, then reads nothing (little held on its
    // side, so the server's queue for it is what fills).
    let stuck = dealer(&ctx);
    stuck.set_rcvhwm(1).expect("rcvhwm");
    stuck.set_rcvbuf(4096).expect("rcvbuf");
    stuck.connect(&endpoint).expect("connect");
    register_on_dealer(&stuck, "slow-1");
    assert!(
        wait_until(Duration::from_secs(10), || server.admin(&["--timeout", "2", "status"]).stdout.contains("slow-1")),
        "never registered:\n{}",
        server.log()
    );
    // Requesters send more small echoes than libzmq's queue, the kernel's
    // buffers and the server's own bound hold (three, each within the
    // 10,000 pending requests a requester may have).
    let requesters: Vec<zmq::Socket> = (0..3)
        .map(|_| {
            let requester = dealer(&ctx);
            requester.set_sndhwm(0).expect("sndhwm");
            requester.set_rcvhwm(0).expect("rcvhwm");
            requester.connect(&endpoint).expect("connect");
            requester
        })
        .collect();
    const SENT: usize = 21_000;
    let payload = vec![b'x'; 600];
    let mut uuids = HashSet::new();
    for i in 0..SENT {
        let uuid = uuid::Uuid::new_v4().to_string();
        let meta = json!({
            "uuid": uuid, "type": "Echo", "from": "tester", "to": "slow-1",
            "requires_response": true, "forwarded": false, "custom": {},
        });
        requesters[i % requesters.len()].send_multipart(frames("slow-1", meta, &payload), 0).expect("send");
        uuids.insert(uuid);
    }
    // Its answers: the agent's (after it reads again) and the server's on
    // its behalf, one per request.
    let mut answered: HashSet<String> = HashSet::new();
    let mut not_reading = 0;
    let mut read_again = false;
    let deadline = Instant::now() + Duration::from_secs(90);
    let mut last_answer = Instant::now();
    while answered.len() < SENT && Instant::now() < deadline {
        if let Some(got) = requesters.iter().find_map(|r| r.recv_multipart(zmq::DONTWAIT).ok()) {
            let Some(meta) = metadata(&got) else { continue };
            if meta["from"] != "slow-1" || !uuids.contains(meta["uuid"].as_str().unwrap_or_default()) {
                continue;
            }
            if meta["custom"]["error"].as_str().is_some_and(|e| e.starts_with("agent not reading")) {
                not_reading += 1;
            }
            assert!(answered.insert(meta["uuid"].as_str().unwrap_or_default().to_owned()), "answered twice: {meta}");
            last_answer = Instant::now();
            continue;
        }
        // Once the server has answered for what did not fit, the agent
        // reads again and answers the rest.
        if !read_again && not_reading > 0 && last_answer.elapsed() > Duration::from_millis(500) {
            read_again = true;
        }
        if read_again {
            while let Ok(request) = stuck.recv_multipart(zmq::DONTWAIT) {
                let Some(meta) = metadata(&request) else { continue };
                let answer = json!({
                    "uuid": meta["uuid"], "type": "Echo", "from": "slow-1", "to": meta["from"],
                    "requires_response": false, "forwarded": false, "custom": {},
                });
                stuck.send_multipart(frames("tester", answer, &request[2..].concat()), 0).expect("answer");
            }
        }
        std::thread::sleep(Duration::from_millis(1));
    }
    assert!(not_reading > 0, "no request was answered `agent not reading`:\n{}", server.log());
    assert_eq!(answered.len(), SENT, "requests lost: {} answered of {SENT}, {not_reading} not reading", answered.len());
    let log = server.log();
    assert!(
        log.lines().any(|l| l.contains("WARN") && l.contains("request not sent to an agent") && l.contains("slow-1")),
        "no warn line names the agent:\n{log}"
    );
}

#[test]
fn agents_come_back_after_a_restart_spread_over_reconnect_spread() {
    let mut server = Server::start(true);
    let (cwd, _) = bootstrap_admin(&server);
    let ids = ["spread-1", "spread-2", "spread-3"];
    let agents: Vec<Agent> = ids
        .iter()
        .map(|id| {
            let mut spec = AgentSpec::new(id, "shop", "prod", &["web"]);
            spec.client_keys_yaml = Some(create_named_client(&server, cwd.path(), id));
            spec.client_extra = "  reconnect_spread: 3s\n".into();
            Agent::start(&server, spec)
        })
        .collect();
    let status = ["--curve-key-file", KEYS, "--timeout", "2"];
    assert!(wait_for_status(&server, cwd.path(), &status, &ids, Duration::from_secs(10)), "{}", server.log());
    server.restart();
    assert!(
        wait_for_status(&server, cwd.path(), &status, &ids, Duration::from_secs(15)),
        "not all back:\n{}",
        server.log()
    );
    for agent in &agents {
        let log = agent.log();
        let line = log
            .lines()
            .find(|l| l.contains("connection to the server lost: connecting again after a random delay"))
            .unwrap_or_else(|| panic!("no spread reconnect logged:\n{log}"));
        let delay: u64 = line
            .split("in_ms: ")
            .nth(1)
            .and_then(|rest| rest.split(',').next())
            .and_then(|n| n.trim().parse().ok())
            .unwrap_or_else(|| panic!("no delay in {line}"));
        assert!(delay < 3000, "{line}");
    }
}

/// A server from before this change, as far as the wire goes: it answers
/// registrations without `requests_on_dealer` and publishes requests on its
/// PUB socket in the exact form.
#[test]
fn against_a_server_that_does_not_offer_it_the_agent_subscribes_as_before() {
    let ctx = zmq::Context::new();
    let (publish_port, receive_port, files_port) = (free_port(), free_port(), free_port());
    let router = ctx.socket(zmq::ROUTER).expect("router");
    router.set_linger(0).expect("linger");
    router.bind(&format!("tcp://127.0.0.1:{receive_port}")).expect("bind");
    let publisher = ctx.socket(zmq::XPUB).expect("xpub");
    publisher.set_linger(0).expect("linger");
    publisher.bind(&format!("tcp://127.0.0.1:{publish_port}")).expect("bind");
    let dir = tempfile::tempdir().expect("temp dir");
    let config = format!(
        "log_level: debug\nroot_dir: {}\nnetworking:\n  server_host: 127.0.0.1\n  pub_sub_port: {publish_port}\n  \
         receive_port: {receive_port}\n  file_service_port: {files_port}\nclient:\n  identity: old-1\n  \
         application: shop\n  heartbeat_interval: 1\n",
        dir.path().join("root").display()
    );
    std::fs::write(dir.path().join("client.yml"), config).expect("config");
    let agent = pantry_integration::Process::spawn(
        &pantry_integration::bin("pantry-client"),
        &["-c", dir.path().join("client.yml").to_str().expect("utf-8")],
        dir.path().join("client.log"),
    );
    let deadline = Instant::now() + Duration::from_secs(20);
    let (mut subscribed, mut answered, mut asked_for_dealer) = (false, false, false);
    let echo_uuid = uuid::Uuid::new_v4().to_string();
    while !answered && Instant::now() < deadline {
        let mut items = [router.as_poll_item(zmq::POLLIN), publisher.as_poll_item(zmq::POLLIN)];
        let _ = zmq::poll(&mut items, 100);
        while let Ok(mut got) = router.recv_multipart(zmq::DONTWAIT) {
            let peer = got.remove(0);
            let Some(meta) = metadata(&got) else { continue };
            match meta["type"].as_str() {
                Some("RegisterClient") => {
                    asked_for_dealer |= meta["custom"]["requests_on_dealer"] == true;
                    if meta["requires_response"] == true {
                        // The previous server's answer: exact topics, nothing more.
                        let answer = json!({
                            "uuid": meta["uuid"], "type": "RegisterClient", "from": "", "to": "old-1",
                            "requires_response": false, "forwarded": false, "custom": {"exact_topics": true},
                        });
                        let mut reply = vec![peer];
                        reply.extend(frames("old-1", answer, b""));
                        router.send_multipart(reply, 0).expect("answer");
                    }
                }
                Some("Echo") if meta["uuid"] == echo_uuid.as_str() => answered = true,
                _ => {}
            }
        }
        while let Ok(sub) = publisher.recv_bytes(zmq::DONTWAIT) {
            subscribed |= sub == b"\x01\x00old-1\x00";
        }
        if subscribed {
            let meta = json!({
                "uuid": echo_uuid, "type": "Echo", "from": "tester", "to": "old-1",
                "requires_response": true, "forwarded": true, "custom": {},
            });
            publisher.send_multipart(frames("\0old-1\0", meta, b"hi"), 0).expect("publish");
            std::thread::sleep(Duration::from_millis(50));
        }
    }
    let log = agent.log();
    assert!(asked_for_dealer, "the agent did not ask for its requests on the DEALER:\n{log}");
    assert!(subscribed, "the agent never subscribed to its exact topic:\n{log}");
    assert!(answered, "the published echo was not answered:\n{log}");
    assert!(log.contains("subscribing on its PUB socket too"), "{log}");
}

#[test]
fn client_handshakes_wait_their_turn_while_an_admins_goes_at_once() {
    let mut server = Server::start_with_networking(true, "  handshake_rate: 1\n", "");
    let (cwd, _) = bootstrap_admin(&server);
    let ids = ["rate-1", "rate-2", "rate-3", "rate-4", "rate-5"];
    let _agents: Vec<Agent> = ids
        .iter()
        .map(|id| {
            let mut spec = AgentSpec::new(id, "shop", "prod", &["web"]);
            spec.client_keys_yaml = Some(create_named_client(&server, cwd.path(), id));
            // All at once after the restart: the server spreads them.
            spec.client_extra = "  reconnect_spread: 0s\n".into();
            Agent::start(&server, spec)
        })
        .collect();
    let status = ["--curve-key-file", KEYS, "--timeout", "2"];
    assert!(wait_for_status(&server, cwd.path(), &status, &ids, Duration::from_secs(20)), "{}", server.log());
    server.restart();
    // One client handshake a second: the admin's is not among them.
    let run = admin(&server, cwd.path(), 5, &["status", "--json"]);
    assert!(run.success(), "status during the agents' return: {run:?}\n{}", server.log());
    let list: Value = serde_json::from_str(&run.stdout).unwrap_or_default();
    let online = list.as_array().map_or(0, |a| a.iter().filter(|c| c["state"] == "online").count());
    assert!(online < ids.len(), "every agent was back before the admin's status: {online}");
    assert!(
        wait_for_status(&server, cwd.path(), &status, &ids, Duration::from_secs(20)),
        "not all back:\n{}",
        server.log()
    );
    assert!(server.log().contains("more client handshakes than networking.handshake_rate"), "{}", server.log());
}
