//! The Prometheus endpoint (CURVE), against real `pantry-server`s:
//!
//! - **On vs off**: two servers at once, one with `metrics: listen:` and
//!   one without; the benchmark's own fan-out and throughput measurements
//!   at a few N, rounds alternating between them (the job-store
//!   comparison's machinery). The server with metrics on is scraped all
//!   the while, once a second (Prometheus's default is every 15 s).
//! - **A scrape with many agents**: a fresh server with metrics on, N
//!   agents connected and registered; `GET /metrics` over plain HTTP/1.0
//!   (std::net), one after the other, each timed from the connect to the
//!   last byte of the answer; the body's size, and the
//!   `pantry_clients{state="online"}` it shows.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _, Result};

use crate::agents::{group_streams, Kind, Pool};
use crate::harness::{compare_servers, Config, KeyRing, Progress, SizeRow, ADMIN_NAME};
use crate::limits::FdLimits;
use crate::procs::{free_port, PantryServer};
use crate::requesters::{wait_until_reachable, Requester};
use crate::stats::percentile;

/// The series the scrape is checked with.
pub const ONLINE_SERIES: &str = "pantry_clients{state=\"online\"}";

/// Longest wait for one HTTP answer.
const HTTP_TIMEOUT: Duration = Duration::from_secs(10);

/// server.yml with metrics on at `addr`.
pub fn metrics_on(addr: SocketAddr) -> String {
    format!("metrics:\n  listen: {addr}\n")
}

/// What the metrics scenario does.
#[derive(Debug, Clone)]
pub struct MetricsSettings {
    /// N at which fan-out and throughput are measured with metrics on and
    /// off.
    pub sizes: Vec<usize>,
    /// How often the server with metrics on is scraped during that
    /// comparison.
    pub scrape_every: Duration,
    /// Agents connected while `/metrics` is timed (fewer if the open-file
    /// limit says so).
    pub scrape_agents: usize,
    /// Scrapes timed.
    pub scrapes: usize,
}

impl MetricsSettings {
    /// The most agent keys the scenario needs.
    pub fn max_agents(&self) -> usize {
        self.sizes.iter().copied().chain([self.scrape_agents, 1]).max().unwrap_or(1)
    }
}

/// `/metrics` timed with agents connected.
#[derive(Debug, Clone, Default)]
pub struct Scrape {
    /// Agents asked for, and connected and registered (fewer when the
    /// open-file limit says so).
    pub wanted: usize,
    pub agents: usize,
    /// CURVE agents (always, here: the open-file cost is the same).
    pub curve: bool,
    /// From the first connect until every agent answered an echo, s.
    pub setup_s: f64,
    /// From then until `pantry_clients{state="online"}` showed them all, s.
    pub online_wait_s: Option<f64>,
    /// Each timed scrape, from the connect to the last byte, ms.
    pub ms: Vec<f64>,
    /// Each answer's body, bytes, and the whole answer with its headers.
    pub body_bytes: Vec<usize>,
    pub response_bytes: Vec<usize>,
    /// Samples (lines that are not comments) in the last body.
    pub samples: usize,
    /// `pantry_clients{state="online"}` in the last body.
    pub online: Option<u64>,
    /// Server CPU time over the timed scrapes divided by their number, ms
    /// (the idle server's own CPU in that time included).
    pub cpu_ms_per_scrape: Option<f64>,
    /// `GET /healthz`: the status code.
    pub healthz: Option<u16>,
}

impl Scrape {
    pub fn p50_ms(&self) -> Option<f64> {
        percentile(&self.ms, 50.0)
    }

    pub fn max_ms(&self) -> Option<f64> {
        self.ms.iter().copied().reduce(f64::max)
    }

    pub fn max_body_bytes(&self) -> Option<usize> {
        self.body_bytes.iter().copied().max()
    }
}

#[derive(Debug, Clone, Default)]
pub struct MetricsResult {
    /// Per N: `pantry` = metrics on, `baseline` = off.
    pub rows: Vec<SizeRow>,
    /// Scrapes of the server with metrics on during the comparison, and
    /// those that failed.
    pub background_scrapes: u64,
    pub background_failed: u64,
    pub scrape: Option<Scrape>,
    /// Parts that failed, and why.
    pub failures: Vec<String>,
}

/// Runs both parts; a part that fails is recorded, the other runs.
pub(crate) fn run(
    cfg: &Config,
    s: &MetricsSettings,
    ring: &KeyRing,
    limits: &FdLimits,
    progress: &Progress,
) -> Result<MetricsResult> {
    let mut result = MetricsResult::default();
    match on_off(cfg, s, ring, limits, progress) {
        Ok((rows, scrapes, failed)) => {
            result.rows = rows;
            result.background_scrapes = scrapes;
            result.background_failed = failed;
        }
        Err(e) => {
            progress.say(format!("metrics: on/off failed: {e:#}"));
            result.failures.push(format!("on/off: {e:#}"));
        }
    }
    if s.scrape_agents > 0 && s.scrapes > 0 {
        match scrape(cfg, s, ring, limits, progress) {
            Ok(sc) => result.scrape = Some(sc),
            Err(e) => {
                progress.say(format!("metrics: scrape failed: {e:#}"));
                result.failures.push(format!("scrape: {e:#}"));
            }
        }
    }
    Ok(result)
}

/// A CURVE server with every key of the ring enrolled and, with `metrics`,
/// its endpoint on that address.
fn start(cfg: &Config, ring: &KeyRing, metrics: Option<SocketAddr>) -> Result<PantryServer> {
    let enrolled = ring.enrolled();
    let extra = metrics.map(metrics_on).unwrap_or_default();
    PantryServer::start_with(&cfg.server_bin, Some((&ring.server, &enrolled)), &cfg.log_level, &extra)
}

fn local(port: u16) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], port))
}

/// Scrapes `addr` every `every` until dropped.
struct Scraper {
    stop: Arc<AtomicBool>,
    done: Arc<AtomicU64>,
    failed: Arc<AtomicU64>,
    thread: Option<JoinHandle<()>>,
}

impl Scraper {
    fn start(addr: SocketAddr, every: Duration) -> Result<Scraper> {
        let stop = Arc::new(AtomicBool::new(false));
        let (done, failed) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
        let (s, d, f) = (stop.clone(), done.clone(), failed.clone());
        let thread = std::thread::Builder::new().name("metrics-scraper".into()).spawn(move || {
            let mut next = Instant::now();
            while !s.load(Ordering::Relaxed) {
                if Instant::now() >= next {
                    next += every;
                    match get(addr, "/metrics", HTTP_TIMEOUT) {
                        Ok(r) if r.status == 200 => d.fetch_add(1, Ordering::Relaxed),
                        _ => f.fetch_add(1, Ordering::Relaxed),
                    };
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        })?;
        Ok(Scraper { stop, done, failed, thread: Some(thread) })
    }

    /// Stops it; scrapes done and failed.
    fn finish(mut self) -> (u64, u64) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        (self.done.load(Ordering::Relaxed), self.failed.load(Ordering::Relaxed))
    }
}

impl Drop for Scraper {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn on_off(
    cfg: &Config,
    s: &MetricsSettings,
    ring: &KeyRing,
    limits: &FdLimits,
    progress: &Progress,
) -> Result<(Vec<SizeRow>, u64, u64)> {
    let addr = local(free_port()?);
    let on = start(cfg, ring, Some(addr))?;
    let off = start(cfg, ring, None)?;
    progress.say(format!(
        "metrics: on: pid {} (http://{addr}/metrics, scraped every {} s), off: pid {}",
        on.process.pid,
        crate::harness::fmt(Some(s.scrape_every.as_secs_f64())),
        off.process.pid
    ));
    let scraper = Scraper::start(addr, s.scrape_every)?;
    let names = ["metrics on", "metrics off"];
    let rows = compare_servers(cfg, "metrics", [&on, &off], names, &s.sizes, ring, limits, progress)?;
    let (done, failed) = scraper.finish();
    progress
        .say(format!("metrics: {done} scrapes of the server with metrics on during the comparison, {failed} failed"));
    Ok((rows, done, failed))
}

fn scrape(cfg: &Config, s: &MetricsSettings, ring: &KeyRing, limits: &FdLimits, progress: &Progress) -> Result<Scrape> {
    let n = s.scrape_agents.min(ring.agents.len()).min(limits.max_agents());
    if n < s.scrape_agents {
        progress.say(format!("metrics: {n} agents for the scrape, not {} (keys or open files)", s.scrape_agents));
    }
    let addr = local(free_port()?);
    let server = start(cfg, ring, Some(addr))?;
    let mut result = Scrape { wanted: s.scrape_agents, agents: n, curve: true, ..Default::default() };
    result.healthz = get(addr, "/healthz", HTTP_TIMEOUT).ok().map(|r| r.status);
    let started = Instant::now();
    let pool = Pool::start(Kind::Pantry, &server.endpoints, &ring.agents, n)?;
    let mut admin = Requester::connect(Kind::Pantry, &server.endpoints, Some(&ring.admin), ADMIN_NAME)?;
    wait_until_reachable(&mut admin, &group_streams(n), cfg.reachable_timeout)
        .with_context(|| format!("pool of {n}"))?;
    result.setup_s = started.elapsed().as_secs_f64();
    let reachable = Instant::now();
    let end = reachable + cfg.reachable_timeout;
    loop {
        let r = get(addr, "/metrics", HTTP_TIMEOUT)?;
        let online = online_clients(&r.text());
        if online == Some(n as u64) {
            result.online_wait_s = Some(reachable.elapsed().as_secs_f64());
            break;
        }
        if Instant::now() >= end {
            progress.say(format!("metrics: {ONLINE_SERIES} is {online:?}, not {n}, after {:?}", cfg.reachable_timeout));
            break;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    progress.say(format!(
        "metrics: {n} CURVE agents reachable in {:.1} s, all online in the gauge {} s later; {} timed scrapes (pid {})",
        result.setup_s,
        result.online_wait_s.map_or("-".into(), |v| format!("{v:.2}")),
        s.scrapes,
        server.process.pid
    ));
    let cpu = crate::procs::cpu_ns(server.process.pid);
    for _ in 0..s.scrapes {
        let asked = Instant::now();
        let r = get(addr, "/metrics", HTTP_TIMEOUT)?;
        result.ms.push(asked.elapsed().as_secs_f64() * 1000.0);
        if r.status != 200 {
            bail!("GET /metrics: status {}", r.status);
        }
        result.body_bytes.push(r.body.len());
        result.response_bytes.push(r.total_bytes);
        let text = r.text();
        result.online = online_clients(&text);
        result.samples = text.lines().filter(|l| !l.is_empty() && !l.starts_with('#')).count();
        std::thread::sleep(Duration::from_millis(20));
    }
    if let (Some(before), Some(after)) = (cpu, crate::procs::cpu_ns(server.process.pid)) {
        result.cpu_ms_per_scrape = Some(after.saturating_sub(before) as f64 / 1e6 / s.scrapes as f64);
    }
    progress.say(format!(
        "metrics: GET /metrics with {n} agents: p50 {} ms, max {} ms, {} bytes, {ONLINE_SERIES} {}",
        crate::harness::fmt(result.p50_ms()),
        crate::harness::fmt(result.max_ms()),
        result.max_body_bytes().unwrap_or(0),
        result.online.map_or("missing".into(), |v| v.to_string())
    ));
    drop(admin);
    drop(pool);
    Ok(result)
}

/// The value of `pantry_clients{state="online"}` in an exposition text.
pub fn online_clients(text: &str) -> Option<u64> {
    text.lines().find_map(|line| {
        let value = line.strip_prefix(ONLINE_SERIES)?;
        // `1e3` style values are not written for integer gauges, but parse
        // as a float to be safe.
        let v: f64 = value.split_whitespace().next()?.parse().ok()?;
        (v >= 0.0 && v.fract() == 0.0).then_some(v as u64)
    })
}

/// One HTTP answer.
#[derive(Debug, Clone)]
pub struct HttpResponse {
    pub status: u16,
    pub body: Vec<u8>,
    /// Status line, headers and body.
    pub total_bytes: usize,
}

impl HttpResponse {
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

/// `GET path` over HTTP/1.0 (a fresh connection, closed after the answer),
/// read until `Content-Length` bytes of body or the end of the stream.
pub fn get(addr: SocketAddr, path: &str, timeout: Duration) -> Result<HttpResponse> {
    let mut stream = TcpStream::connect_timeout(&addr, timeout).with_context(|| format!("cannot connect to {addr}"))?;
    stream.set_read_timeout(Some(timeout))?;
    stream.set_write_timeout(Some(timeout))?;
    stream.set_nodelay(true)?;
    stream.write_all(format!("GET {path} HTTP/1.0\r\nHost: {addr}\r\nConnection: close\r\n\r\n").as_bytes())?;
    let mut raw = Vec::with_capacity(16 * 1024);
    let mut chunk = [0u8; 16 * 1024];
    let mut head: Option<(usize, u16, Option<usize>)> = None;
    loop {
        let read = stream.read(&mut chunk).with_context(|| format!("GET {path} from {addr}"))?;
        if read == 0 {
            break;
        }
        raw.extend_from_slice(&chunk[..read]);
        if head.is_none() {
            head = parse_head(&raw)?;
        }
        if let Some((start, _, Some(length))) = head {
            if raw.len() >= start + length {
                break;
            }
        }
    }
    let Some((start, status, length)) = head.map_or_else(|| parse_head(&raw), |h| Ok(Some(h)))? else {
        bail!("GET {path} from {addr}: no complete answer ({} bytes)", raw.len());
    };
    let end = length.map_or(raw.len(), |l| (start + l).min(raw.len()));
    if length.is_some_and(|l| start + l > raw.len()) {
        bail!("GET {path} from {addr}: body cut short ({} of {:?} bytes)", raw.len() - start, length);
    }
    Ok(HttpResponse { status, body: raw[start..end].to_vec(), total_bytes: end })
}

/// Where the body starts, the status code and `Content-Length`, once the
/// head is complete.
fn parse_head(raw: &[u8]) -> Result<Option<(usize, u16, Option<usize>)>> {
    let Some(at) = raw.windows(4).position(|w| w == b"\r\n\r\n") else { return Ok(None) };
    let head = String::from_utf8_lossy(&raw[..at]);
    let mut lines = head.lines();
    let status_line = lines.next().unwrap_or_default();
    let status = status_line
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .with_context(|| format!("not an HTTP status line: {status_line:?}"))?;
    let mut length = None;
    for line in lines {
        let Some((name, value)) = line.split_once(':') else { continue };
        if name.trim().eq_ignore_ascii_case("content-length") {
            length = value.trim().parse().ok();
        } else if name.trim().eq_ignore_ascii_case("transfer-encoding") {
            bail!("chunked answer to an HTTP/1.0 request: {line}");
        }
    }
    Ok(Some((at + 4, status, length)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_online_gauge_is_read() {
        let text = "# HELP pantry_clients Registered clients, by state.\n# TYPE pantry_clients gauge\n\
                    pantry_clients{state=\"offline\"} 3\npantry_clients{state=\"online\"} 4000\n";
        assert_eq!(online_clients(text), Some(4000));
        assert_eq!(online_clients("pantry_clients{state=\"offline\"} 3\n"), None);
    }

    #[test]
    fn a_minimal_http_server_is_read() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let server = std::thread::spawn(move || {
            for body in ["hello\n", "pantry_clients{state=\"online\"} 2\n"] {
                let (mut s, _) = listener.accept().unwrap();
                let mut buf = [0u8; 1024];
                let _ = s.read(&mut buf).unwrap();
                let answer = format!("HTTP/1.0 200 OK\r\nContent-Length: {}\r\n\r\n{body}", body.len());
                s.write_all(answer.as_bytes()).unwrap();
            }
        });
        let r = get(addr, "/healthz", Duration::from_secs(5)).unwrap();
        assert_eq!((r.status, r.text().as_str()), (200, "hello\n"));
        assert_eq!(r.total_bytes, r.body.len() + "HTTP/1.0 200 OK\r\nContent-Length: 6\r\n\r\n".len());
        let r = get(addr, "/metrics", Duration::from_secs(5)).unwrap();
        assert_eq!(online_clients(&r.text()), Some(2));
        server.join().unwrap();
    }
}
