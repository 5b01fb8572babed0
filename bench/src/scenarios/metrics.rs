//! The Prometheus endpoint (CURVE): two servers with metrics on (scraped
//! once a second all the while: Prometheus's default is every 15 s) and
//! off compared side by side, and `GET /metrics` timed with many agents
//! connected. The section says how each is timed.

use std::fmt::Write as _;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _, Result};
use serde::{Deserialize, Serialize};

use crate::common::agents::{Kind, Pool};
use crate::common::compare::{compare_servers, on_off_table, on_off_target, SizeRow};
use crate::common::env::{seconds, Env, Measure, Parts};
use crate::common::markdown::{compared, count, failures, num, pct1, ratio3, targets_table, Previous, Target};
use crate::common::procs::{cpu_ns, free_port, PantryServer};
use crate::common::ring::KeyRing;
use crate::common::stats::percentile;

/// The series the scrape is checked with.
pub const ONLINE_SERIES: &str = "pantry_clients{state=\"online\"}";

/// Metrics on within 2% of off (issue 14); a scrape with 4,000 agents
/// under 10 ms and 64 KiB.
const ON_OFF_TOLERANCE: f64 = 0.02;
const SCRAPE_TARGET_MS: f64 = 10.0;
const SCRAPE_TARGET_BYTES: usize = 64 * 1024;

/// Longest wait for one HTTP answer.
const HTTP_TIMEOUT: Duration = Duration::from_secs(10);

/// server.yml with metrics on at `addr`.
pub fn metrics_on(addr: SocketAddr) -> String {
    format!("metrics:\n  listen: {addr}\n")
}

/// What the metrics scenario does.
#[derive(Debug, Clone, clap::Args, Serialize, Deserialize)]
pub struct Settings {
    /// N at which fan-out and throughput are compared with metrics on and
    /// off.
    #[arg(long, value_delimiter = ',', default_value = "1,1000")]
    pub sizes: Vec<usize>,
    /// Seconds between the scrapes of the server with metrics on during
    /// that comparison.
    #[arg(long, value_parser = seconds, default_value = "1")]
    pub scrape_every: Duration,
    /// Agents connected while `/metrics` is timed (fewer if the open-file
    /// limit says so).
    #[arg(long = "agents", default_value_t = 4000)]
    pub scrape_agents: usize,
    /// Scrapes timed.
    #[arg(long, default_value_t = 20)]
    pub scrapes: usize,
}

impl Settings {
    /// The most agent keys the scenario needs.
    pub fn max_agents(&self) -> usize {
        self.sizes.iter().copied().chain([self.scrape_agents, 1]).max().unwrap_or(1)
    }
}

/// `/metrics` timed with agents connected.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
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

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Figures {
    pub measure: Measure,
    pub settings: Settings,
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
pub fn run(env: &Env, ring: &KeyRing, s: &Settings) -> Result<Figures> {
    let mut parts = Parts::new(env, "metrics");
    let (rows, background_scrapes, background_failed) = parts.part("on/off", on_off(env, ring, s)).unwrap_or_default();
    let scrape = if s.scrape_agents > 0 && s.scrapes > 0 { parts.part("scrape", scrape(env, ring, s)) } else { None };
    Ok(Figures {
        measure: env.measure,
        settings: s.clone(),
        rows,
        background_scrapes,
        background_failed,
        scrape,
        failures: parts.failures,
    })
}

/// A CURVE server with every key of the ring enrolled and, with `metrics`,
/// its endpoint on that address.
fn start(env: &Env, ring: &KeyRing, metrics: Option<SocketAddr>) -> Result<PantryServer> {
    env.server_for(ring, &metrics.map(metrics_on).unwrap_or_default())
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

fn on_off(env: &Env, ring: &KeyRing, s: &Settings) -> Result<(Vec<SizeRow>, u64, u64)> {
    let addr = local(free_port()?);
    let on = start(env, ring, Some(addr))?;
    let off = start(env, ring, None)?;
    env.say(format!(
        "metrics: on: pid {} (http://{addr}/metrics, scraped every {} s), off: pid {}",
        on.process.pid,
        num(Some(s.scrape_every.as_secs_f64())),
        off.process.pid
    ));
    let scraper = Scraper::start(addr, s.scrape_every)?;
    let names = ["metrics on", "metrics off"];
    let rows = compare_servers(env, ring, "metrics", [&on, &off], names, &s.sizes)?;
    let (done, failed) = scraper.finish();
    env.say(format!("metrics: {done} scrapes of the server with metrics on during the comparison, {failed} failed"));
    Ok((rows, done, failed))
}

fn scrape(env: &Env, ring: &KeyRing, s: &Settings) -> Result<Scrape> {
    let n = s.scrape_agents.min(ring.agents.len()).min(env.limits.max_agents());
    if n < s.scrape_agents {
        env.say(format!("metrics: {n} agents for the scrape, not {} (keys or open files)", s.scrape_agents));
    }
    let addr = local(free_port()?);
    let server = start(env, ring, Some(addr))?;
    let mut result = Scrape { wanted: s.scrape_agents, agents: n, curve: true, ..Default::default() };
    result.healthz = get(addr, "/healthz", HTTP_TIMEOUT).ok().map(|r| r.status);
    let started = Instant::now();
    let pool = Pool::start(Kind::Pantry, &server.endpoints, &ring.agents, n)?;
    env.reach(&server.endpoints, ring, n)?;
    result.setup_s = started.elapsed().as_secs_f64();
    let reachable = Instant::now();
    let end = reachable + env.measure.reachable_timeout;
    loop {
        let r = get(addr, "/metrics", HTTP_TIMEOUT)?;
        let online = online_clients(&r.text());
        if online == Some(n as u64) {
            result.online_wait_s = Some(reachable.elapsed().as_secs_f64());
            break;
        }
        if Instant::now() >= end {
            env.say(format!(
                "metrics: {ONLINE_SERIES} is {online:?}, not {n}, after {:?}",
                env.measure.reachable_timeout
            ));
            break;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    env.say(format!(
        "metrics: {n} CURVE agents reachable in {:.1} s, all online in the gauge {} s later; {} timed scrapes (pid {})",
        result.setup_s,
        result.online_wait_s.map_or("-".into(), |v| format!("{v:.2}")),
        s.scrapes,
        server.process.pid
    ));
    let cpu = cpu_ns(server.process.pid);
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
    if let (Some(before), Some(after)) = (cpu, cpu_ns(server.process.pid)) {
        result.cpu_ms_per_scrape = Some(after.saturating_sub(before) as f64 / 1e6 / s.scrapes as f64);
    }
    env.say(format!(
        "metrics: GET /metrics with {n} agents: p50 {} ms, max {} ms, {} bytes, {ONLINE_SERIES} {}",
        num(result.p50_ms()),
        num(result.max_ms()),
        result.max_body_bytes().unwrap_or(0),
        result.online.map_or("missing".into(), |v| v.to_string())
    ));
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

/// The on/off target and the scrape's, with the previous run's.
pub fn targets(m: &Figures, previous: Previous<Figures>) -> Vec<Target> {
    compared(measured(m), previous.figures.map(measured))
}

fn measured(m: &Figures) -> Vec<Target> {
    let on_off = on_off_target(
        "metrics on: throughput and fan-out within 2% of off (on / off, CURVE, same run)".into(),
        &m.rows,
        ON_OFF_TOLERANCE,
        pct1,
        ratio3,
    );
    let scrape = match &m.scrape {
        Some(sc) => Target::new(
            format!(
                "`GET /metrics` with {} CURVE agents connected and registered < {SCRAPE_TARGET_MS} ms (p50 of {}), \
                 < 64 KiB, showing {ONLINE} {}",
                count(sc.agents),
                sc.ms.len(),
                count(sc.agents)
            ),
            format!(
                "p50 {} ms, max {} ms; {} bytes; {ONLINE} {}{}",
                num(sc.p50_ms()),
                num(sc.max_ms()),
                sc.max_body_bytes().map_or("–".into(), count),
                sc.online.map_or("missing".into(), |o| count(o as usize)),
                if sc.agents < sc.wanted {
                    format!(" (only {} agents: open-file limit)", count(sc.agents))
                } else {
                    String::new()
                }
            ),
            sc.p50_ms().map(|ms| {
                ms < SCRAPE_TARGET_MS
                    && sc.max_body_bytes().is_some_and(|b| b < SCRAPE_TARGET_BYTES)
                    && sc.online == Some(sc.agents as u64)
            }),
        ),
        None => Target::new(
            format!("`GET /metrics` with 4,000 agents connected < {SCRAPE_TARGET_MS} ms, < 64 KiB"),
            "failed".into(),
            None,
        ),
    };
    vec![on_off, scrape]
}

const ONLINE: &str = "`pantry_clients{state=\"online\"}`";

/// The `## Metrics` section.
pub fn report(m: &Figures, previous: Previous<Figures>) -> String {
    let c = &m.measure;
    let mut out = String::new();
    let _ = write!(
        out,
        "## Metrics\n\nCURVE. **Metrics on vs off**: two `pantry-server`s at once, one with `metrics: listen:` \
         (scraped over HTTP every {} s all the while: {} scrapes, {} failed) and one without (the server keeps \
         its counters either way; off, nothing serves them); the benchmark's fan-out and throughput measurements \
         ({} fan-outs, {} requesters × {} in flight for {:.1} s) at each N, {} rounds alternating between them, \
         medians. Ratios: on / off.\n\n{}\n{}",
        num(Some(m.settings.scrape_every.as_secs_f64())),
        m.background_scrapes,
        m.background_failed,
        c.fanout_requests,
        c.requesters,
        c.throughput.window,
        c.throughput.duration.as_secs_f64(),
        c.rounds,
        targets_table(&targets(m, previous), previous.said),
        on_off_table(&m.rows, pct1, ratio3)
    );
    if let Some(sc) = &m.scrape {
        let _ = writeln!(
            out,
            "\n**A scrape with {} agents.** A fresh server with metrics on; {} {} agents connected and registered \
             (every one answered an echo {} s after the first connect; {ONLINE} showed them all {} s later){}; \
             `GET /healthz`: {}. Then {} `GET /metrics` over HTTP/1.0 (std::net, a new TCP connection each), one \
             after the other with 20 ms between them, each timed from the connect to the last byte. Server CPU: its \
             CPU time over the scrapes divided by their number (its idle work in that time included).\n",
            count(sc.agents),
            count(sc.agents),
            if sc.curve { "CURVE" } else { "null-security" },
            num(Some(sc.setup_s)),
            num(sc.online_wait_s),
            if sc.agents < sc.wanted {
                format!(" (not {}: the open-file limit)", count(sc.wanted))
            } else {
                String::new()
            },
            sc.healthz.map_or("no answer".into(), |c| c.to_string()),
            sc.ms.len()
        );
        let _ = writeln!(
            out,
            "| agents | scrapes | p50 (ms) | max (ms) | body (bytes) | whole answer (bytes) | samples | {ONLINE} | server CPU per scrape (ms) |\n\
             |---:|---:|---:|---:|---:|---:|---:|---:|---:|"
        );
        let _ = writeln!(
            out,
            "| {} | {} | {} | {} | {} | {} | {} | {} | {} |",
            count(sc.agents),
            sc.ms.len(),
            num(sc.p50_ms()),
            num(sc.max_ms()),
            sc.max_body_bytes().map_or("–".into(), count),
            sc.response_bytes.iter().copied().max().map_or("–".into(), count),
            count(sc.samples),
            sc.online.map_or("missing".into(), |o| count(o as usize)),
            num(sc.cpu_ms_per_scrape)
        );
    }
    failures(&mut out, &m.failures);
    out
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
