//! Metrics (issue 14): a server with `metrics.listen` answers `/healthz`
//! and `/metrics`, parsed with a real Prometheus parser; one echo to two
//! agents and one rejected key move the series by the expected amounts.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::time::Duration;

use pantry_integration::curve::{admin, bootstrap_admin, create_named_client, curve_socket, KEYS};
use pantry_integration::{free_port, wait_for_status, wait_until, Agent, AgentSpec, Server};
use pantry_shared::keys::KeyPair;
use prometheus_parse::{Scrape, Value};

/// `GET path` over HTTP/1.0: the status code and the body.
fn get(port: u16, path: &str) -> (u16, String) {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).expect("connect to the metrics port");
    stream.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    write!(stream, "GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n").unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).unwrap();
    let status = response.split_whitespace().nth(1).and_then(|s| s.parse().ok()).unwrap_or(0);
    let body = response.split_once("\r\n\r\n").map(|(_, b)| b.to_owned()).unwrap_or_default();
    (status, body)
}

fn scrape(port: u16) -> Scrape {
    let (status, body) = get(port, "/metrics");
    assert_eq!(status, 200, "{body}");
    Scrape::parse(body.lines().map(|l| Ok(l.to_owned()))).expect("the exposition parses")
}

/// The value of `metric` with exactly these labels (0 when absent).
fn value(scrape: &Scrape, metric: &str, labels: &[(&str, &str)]) -> f64 {
    scrape
        .samples
        .iter()
        .filter(|s| s.metric == metric && labels.iter().all(|(k, v)| s.labels.get(k) == Some(*v)))
        .map(|s| match s.value {
            Value::Counter(v) | Value::Gauge(v) | Value::Untyped(v) => v,
            _ => 0.0,
        })
        .sum()
}

fn agent(server: &Server, cwd: &Path, identity: &str) -> Agent {
    let mut spec = AgentSpec::new(identity, "shop", "prod", &[]);
    spec.client_keys_yaml = Some(create_named_client(server, cwd, identity));
    Agent::start(server, spec)
}

#[test]
fn series_move_with_an_echo_and_a_rejected_key() {
    let port = free_port();
    let server = Server::start_with(true, &format!("metrics:\n  listen: 127.0.0.1:{port}\n"));
    assert!(wait_until(Duration::from_secs(5), || get(port, "/healthz").0 == 200), "{}", server.log());
    let (cwd, _) = bootstrap_admin(&server);
    let _agents = [agent(&server, cwd.path(), "web-1"), agent(&server, cwd.path(), "web-2")];
    let listed =
        wait_for_status(&server, cwd.path(), &["--curve-key-file", KEYS], &["web-1", "web-2"], Duration::from_secs(10));
    assert!(listed, "{}", server.log());

    let before = scrape(port);
    let version = pantry_shared::VERSION;
    assert_eq!(value(&before, "pantry_build_info", &[("version", version)]), 1.0);
    for series in ["process_resident_memory_bytes", "process_open_fds", "process_max_fds", "process_cpu_seconds_total"]
    {
        assert!(before.samples.iter().any(|s| s.metric == series), "no {series}");
    }
    let moved = |after: &Scrape, metric: &str, labels: &[(&str, &str)]| {
        value(after, metric, labels) - value(&before, metric, labels)
    };

    let run = admin(&server, cwd.path(), 5, &["-a", "shop", "echo", "hi"]);
    assert!(run.success(), "{run:?}");
    // A key the server does not know, on the PUB port (never admitted).
    let ctx = zmq::Context::new();
    let stranger = curve_socket(&ctx, &server, &KeyPair::generate().unwrap(), zmq::SUB, server.ports.pub_sub);
    stranger.set_subscribe(b"").unwrap();

    let after = scrape(port);
    let rejected = wait_until(Duration::from_secs(5), || {
        moved(&scrape(port), "pantry_handshakes_total", &[("result", "rejected"), ("reason", "unknown key")]) == 1.0
    });
    assert!(rejected, "the rejected handshake was not counted:\n{}", get(port, "/metrics").1);
    // The echo (heartbeats may add more).
    assert!(moved(&after, "pantry_messages_total", &[("direction", "in"), ("kind", "request")]) >= 1.0);
    assert_eq!(moved(&after, "pantry_messages_total", &[("direction", "in"), ("kind", "answer")]), 2.0);
    assert_eq!(moved(&after, "pantry_messages_total", &[("direction", "out"), ("kind", "publish")]), 1.0);
    assert!(moved(&after, "pantry_message_bytes_total", &[("direction", "in")]) > 0.0);
    assert!(moved(&after, "pantry_handshakes_total", &[("result", "accepted")]) >= 1.0, "the admin's handshake");
    assert_eq!(value(&after, "pantry_clients", &[("state", "online")]), 2.0);
    assert_eq!(value(&after, "pantry_clients", &[("state", "offline")]), 0.0);
    // One connection per agent, to the ROUTER (issue 27), over which each
    // was sent the echo.
    assert!(value(&after, "pantry_connections", &[("socket", "ROUTER")]) >= 2.0);
    assert_eq!(moved(&after, "pantry_messages_total", &[("direction", "out"), ("kind", "delivery")]), 2.0);
    assert_eq!(value(&after, "pantry_requests_pending", &[]), 0.0);
    let durations = after.samples.iter().find(|s| s.metric == "pantry_request_duration_seconds");
    assert!(durations.is_some(), "no request duration histogram");
    // No label carries a key, an identity or a uuid.
    let text = get(port, "/metrics").1;
    for secret in ["web-1", "web-2", "admin@"] {
        assert!(!text.contains(secret), "{secret} in a label:\n{text}");
    }
    assert_eq!(get(port, "/nothing").0, 404);
}
