//! The HTTP server of `metrics.listen`: `GET /metrics` and `GET /healthz`,
//! HTTP/1.1 with keep-alive, on std's blocking sockets.
//!
//! Each connection has a thread of its own, so a peer that pipelines
//! requests and never reads its answers blocks only itself: its writes time
//! out ([`IO_TIMEOUT`]) and it is closed. At most [`MAX_CONNECTIONS`] are
//! served at once (more are closed at once, logged at most once a minute),
//! each for at most [`MAX_REQUESTS_PER_CONNECTION`] requests, with headers
//! of at most [`MAX_HEADER_BYTES`]. (tiny_http, used before, answered every
//! connection from one thread, with no write timeout: one stalled peer
//! stopped `/healthz`, and a probe then killed a healthy server.)

use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use slog::{debug, info, warn, Logger};

/// Connections served at once.
pub const MAX_CONNECTIONS: usize = 32;
/// Requests answered on one connection before it is closed.
pub const MAX_REQUESTS_PER_CONNECTION: usize = 100;
/// Longest a read or a write may wait for the peer.
pub const IO_TIMEOUT: Duration = Duration::from_secs(5);
/// Largest request line and headers.
pub const MAX_HEADER_BYTES: usize = 8 * 1024;

/// What the server answers: the metrics text (and its content type), and
/// whether the server is healthy.
pub struct Pages {
    pub metrics: Box<dyn Fn() -> Vec<u8> + Send + Sync>,
    pub content_type: String,
    pub healthy: Arc<AtomicBool>,
}

/// Binds `listen` and serves on a thread of its own until the process ends.
pub fn serve(listen: SocketAddr, pages: Pages, log: Logger) -> anyhow::Result<JoinHandle<()>> {
    use anyhow::Context as _;
    let listener = TcpListener::bind(listen).with_context(|| format!("cannot listen for metrics on {listen}"))?;
    info!(log, "metrics served"; "listen" => %listen, "paths" => "/metrics /healthz");
    let pages = Arc::new(pages);
    let open = Arc::new(AtomicUsize::new(0));
    let thread = std::thread::Builder::new().name("pantry-metrics".into()).spawn(move || {
        let mut last_warning: Option<Instant> = None;
        for stream in listener.incoming() {
            let Ok(stream) = stream else { continue };
            if open.load(Ordering::SeqCst) >= MAX_CONNECTIONS {
                if last_warning.is_none_or(|at| at.elapsed() >= Duration::from_secs(60)) {
                    last_warning = Some(Instant::now());
                    warn!(log, "metrics: too many connections; new ones are closed at once";
                        "limit" => MAX_CONNECTIONS, "peer" => stream.peer_addr().map(|a| a.to_string()).unwrap_or_default());
                }
                continue;
            }
            open.fetch_add(1, Ordering::SeqCst);
            let (pages, open, conn_log) = (pages.clone(), open.clone(), log.clone());
            let spawned = std::thread::Builder::new().name("pantry-metrics-conn".into()).spawn(move || {
                if let Err(e) = connection(stream, &pages) {
                    debug!(conn_log, "metrics connection ended"; "error" => %e);
                }
                open.fetch_sub(1, Ordering::SeqCst);
            });
            if spawned.is_err() {
                warn!(log, "metrics: cannot start a thread for a connection");
            }
        }
    })?;
    Ok(thread)
}

/// Serves one connection's requests, in order.
fn connection(stream: TcpStream, pages: &Pages) -> std::io::Result<()> {
    stream.set_read_timeout(Some(IO_TIMEOUT))?;
    stream.set_write_timeout(Some(IO_TIMEOUT))?;
    stream.set_nodelay(true)?;
    let mut writer = stream.try_clone()?;
    let mut reader = BufReader::new(stream);
    for served in 1..=MAX_REQUESTS_PER_CONNECTION {
        let Some(head) = read_head(&mut reader)? else { return Ok(()) };
        let last = served == MAX_REQUESTS_PER_CONNECTION || head.close;
        let (status, content_type, body) = answer(&head, pages);
        let connection = if last { "close" } else { "keep-alive" };
        let header = format!(
            "HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: {connection}\r\n\r\n",
            body.len()
        );
        writer.write_all(header.as_bytes())?;
        if head.method != "HEAD" {
            writer.write_all(&body)?;
        }
        writer.flush()?;
        if last {
            return Ok(());
        }
    }
    Ok(())
}

/// A request's line and the one header that matters here.
struct Head {
    method: String,
    path: String,
    close: bool,
}

/// Reads a request line and its headers; `None` at the end of the stream.
fn read_head<R: BufRead>(reader: &mut R) -> std::io::Result<Option<Head>> {
    let too_big = || std::io::Error::new(std::io::ErrorKind::InvalidData, "request headers too large");
    let mut read = 0;
    let mut line = String::new();
    let mut next_line = |line: &mut String| -> std::io::Result<usize> {
        line.clear();
        let limit = (MAX_HEADER_BYTES - read + 1) as u64;
        let n = <&mut R as std::io::Read>::take(&mut *reader, limit).read_line(line)?;
        read += n;
        if read > MAX_HEADER_BYTES {
            return Err(too_big());
        }
        Ok(n)
    };
    // Blank lines before a request are allowed (RFC 9112 §2.2).
    loop {
        if next_line(&mut line)? == 0 {
            return Ok(None);
        }
        if !line.trim().is_empty() {
            break;
        }
    }
    let mut parts = line.split_whitespace();
    let (method, path, version) = (parts.next(), parts.next(), parts.next());
    let (Some(method), Some(path)) = (method, path) else {
        return Err(std::io::Error::new(std::io::ErrorKind::InvalidData, "not an HTTP request line"));
    };
    let mut head = Head { method: method.to_owned(), path: path.to_owned(), close: version == Some("HTTP/1.0") };
    loop {
        if next_line(&mut line)? == 0 {
            return Ok(None);
        }
        let header = line.trim_end();
        if header.is_empty() {
            return Ok(Some(head));
        }
        if let Some((name, value)) = header.split_once(':') {
            if name.trim().eq_ignore_ascii_case("connection") {
                head.close = value.trim().eq_ignore_ascii_case("close");
            }
        }
    }
}

fn answer(head: &Head, pages: &Pages) -> (&'static str, String, Vec<u8>) {
    let text = "text/plain; charset=utf-8".to_owned();
    if head.method != "GET" && head.method != "HEAD" {
        return ("405 Method Not Allowed", text, b"only GET\n".to_vec());
    }
    match head.path.split('?').next().unwrap_or_default() {
        "/metrics" => ("200 OK", pages.content_type.clone(), (pages.metrics)()),
        "/healthz" if pages.healthy.load(Ordering::Relaxed) => ("200 OK", text, b"ok\n".to_vec()),
        "/healthz" => ("503 Service Unavailable", text, b"shutting down or not ready\n".to_vec()),
        _ => ("404 Not Found", text, b"not found: try /metrics or /healthz\n".to_vec()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;

    fn server() -> SocketAddr {
        let addr = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
        let pages = Pages {
            metrics: Box::new(|| vec![b'x'; 64 * 1024]),
            content_type: "text/plain; version=0.0.4".into(),
            healthy: Arc::new(AtomicBool::new(true)),
        };
        serve(addr, pages, Logger::root(slog::Discard, slog::o!())).unwrap();
        addr
    }

    fn get(addr: SocketAddr, path: &str) -> String {
        let mut s = TcpStream::connect(addr).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
        write!(s, "GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").unwrap();
        let mut out = String::new();
        s.read_to_string(&mut out).unwrap();
        out
    }

    #[test]
    fn a_peer_that_never_reads_costs_only_itself() {
        let addr = server();
        let mut greedy = TcpStream::connect(addr).unwrap();
        greedy.set_write_timeout(Some(Duration::from_secs(2))).unwrap();
        let pipelined = "GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n".repeat(5000);
        // The server stops reading once its writes block; ours may block too.
        let _ = greedy.write_all(pipelined.as_bytes());
        let started = Instant::now();
        let health = get(addr, "/healthz");
        assert!(health.starts_with("HTTP/1.1 200 OK") && health.ends_with("ok\n"), "{health}");
        assert!(started.elapsed() < Duration::from_secs(1), "{:?}", started.elapsed());
        assert!(get(addr, "/nope").starts_with("HTTP/1.1 404"));
    }

    #[test]
    fn keep_alive_up_to_the_limit() {
        let addr = server();
        let mut s = TcpStream::connect(addr).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let many = "GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n".repeat(MAX_REQUESTS_PER_CONNECTION + 5);
        s.write_all(many.as_bytes()).unwrap();
        let mut out = String::new();
        s.read_to_string(&mut out).unwrap();
        assert_eq!(out.matches("HTTP/1.1 200 OK").count(), MAX_REQUESTS_PER_CONNECTION, "then closed");
        assert!(out.contains("Connection: close"));
    }
}
