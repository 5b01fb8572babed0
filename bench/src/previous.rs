//! The figures of an earlier report, to compare this run's server memory
//! and CPU per agent with, and the "before" of the Pantry / relay targets
//! (throughput, fan-out, handshake rate): the `latest.md` committed in the
//! output directory (`git show HEAD:./latest.md` there), or else the one
//! on disk before this run overwrites it.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use crate::procs::run_bounded;
use crate::report::MARKDOWN;

/// (security, N) → value.
pub type Table = BTreeMap<(String, usize), f64>;

/// What an earlier `latest.md` says.
#[derive(Debug, Clone, Default)]
pub struct Previous {
    /// Where it came from, for the report.
    pub source: String,
    /// Server VmRSS, KiB, N = 0 included.
    pub rss_kib: Table,
    /// Server CPU µs per request in the throughput runs.
    pub cpu_us_per_request: Table,
    /// Server CPU µs per fan-out answer.
    pub cpu_us_per_answer: Table,
    /// Pantry / baseline throughput, as printed (`46%` → 0.46).
    pub throughput_ratio: Table,
    /// Pantry / baseline fan-out p50, as printed (`1.42×`; a fan-out that
    /// lost answers, `–`, is not read).
    pub fanout_p50_ratio: Table,
    /// Known keys → Pantry / baseline handshake rate, as printed.
    pub handshake_ratio: BTreeMap<usize, f64>,
}

impl Previous {
    /// Server RSS growth per agent from 0 to N, KiB.
    pub fn kib_per_agent(&self, security: &str, n: usize) -> Option<f64> {
        let zero = self.rss_kib.get(&(security.to_owned(), 0))?;
        let at = self.rss_kib.get(&(security.to_owned(), n))?;
        (n > 0).then(|| (at - zero) / n as f64)
    }

    /// Pantry / baseline throughput.
    pub fn throughput(&self, security: &str, n: usize) -> Option<f64> {
        self.throughput_ratio.get(&(security.to_owned(), n)).copied()
    }

    /// Pantry / baseline fan-out p50.
    pub fn fanout_p50(&self, security: &str, n: usize) -> Option<f64> {
        self.fanout_p50_ratio.get(&(security.to_owned(), n)).copied()
    }

    /// The lowest Pantry / baseline handshake rate over the key counts.
    pub fn lowest_handshake(&self) -> Option<f64> {
        self.handshake_ratio.values().copied().reduce(f64::min)
    }
}

/// The committed report in `out_dir`, or the file there.
pub fn load(out_dir: &Path) -> Option<Previous> {
    let mut git = Command::new("git");
    git.arg("-C").arg(out_dir).args(["show", &format!("HEAD:./{MARKDOWN}")]);
    if let Ok(out) = run_bounded(&mut git, Duration::from_secs(10)) {
        if out.success() && !out.stdout.trim().is_empty() {
            let source = format!("{} as committed (HEAD)", out_dir.join(MARKDOWN).display());
            return parse(&out.stdout, source);
        }
    }
    let path = out_dir.join(MARKDOWN);
    let text = std::fs::read_to_string(&path).ok()?;
    parse(&text, format!("{} before this run", path.display()))
}

fn number(cell: &str) -> Option<f64> {
    cell.trim().replace(',', "").parse().ok()
}

/// `46%` → 0.46, `1.42×` → 1.42.
fn ratio(cell: &str) -> Option<f64> {
    let cell = cell.trim();
    match (cell.strip_suffix('%'), cell.strip_suffix('×')) {
        (Some(p), _) => number(p).map(|p| p / 100.0),
        (None, Some(r)) => number(r),
        _ => None,
    }
    .filter(|r| r.is_finite())
}

/// Reads the Memory, Throughput, Fan-out latency, Handshake rate and
/// CPU-per-answer tables; `None` when none of them is there.
pub fn parse(text: &str, source: String) -> Option<Previous> {
    let mut previous = Previous { source, ..Default::default() };
    let mut section = "";
    for line in text.lines() {
        if let Some(heading) = line.strip_prefix("## ") {
            section = heading.trim();
            continue;
        }
        let line = line.trim();
        if !line.starts_with('|') {
            continue;
        }
        let cells: Vec<&str> = line.trim_matches('|').split('|').map(str::trim).collect();
        if section == "Handshake rate" {
            let keys = cells.first().and_then(|c| number(c));
            if let (Some(keys), Some(r)) = (keys, cells.get(3).and_then(|c| ratio(c))) {
                previous.handshake_ratio.insert(keys as usize, r);
            }
            continue;
        }
        let (Some(security), Some(n)) = (cells.first(), cells.get(1).and_then(|c| number(c))) else { continue };
        let key = (security.to_string(), n as usize);
        match section {
            "Memory" => {
                if let Some(v) = cells.get(2).and_then(|c| number(c)) {
                    previous.rss_kib.insert(key, v);
                }
            }
            "Throughput" => {
                if let Some(r) = cells.get(4).and_then(|c| ratio(c)) {
                    previous.throughput_ratio.insert(key.clone(), r);
                }
                let pantry = cells.get(6).and_then(|c| c.split('/').next()).and_then(number);
                if let Some(v) = pantry {
                    previous.cpu_us_per_request.insert(key, v);
                }
            }
            "Fan-out latency" => {
                if let Some(r) = cells.get(4).and_then(|c| ratio(c)) {
                    previous.fanout_p50_ratio.insert(key, r);
                }
            }
            "Server CPU per fan-out answer" => {
                if let Some(v) = cells.get(2).and_then(|c| number(c)) {
                    previous.cpu_us_per_answer.insert(key, v);
                }
            }
            _ => {}
        }
    }
    let empty = previous.rss_kib.is_empty()
        && previous.cpu_us_per_request.is_empty()
        && previous.throughput_ratio.is_empty()
        && previous.fanout_p50_ratio.is_empty()
        && previous.handshake_ratio.is_empty();
    (!empty).then_some(previous)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tables_are_read() {
        let text = "## Throughput\n\n| security | N | Pantry | baseline | r | lost | cpu |\n|---|---:|\n\
                    | CURVE | 1,000 | 14,534 | 20,587 | 71% | 0/0 | 59.5 / 35.7 |\n\n## Memory\n\n\
                    | CURVE | 0 | 9,968 | 7,012 |\n| CURVE | 1,000 | 99,876 | 93,332 |\n\
                    | CURVE | KiB per agent (0 → 4,000) | 101 | 99.8 |\n\n## Server CPU per fan-out answer\n\n\
                    | null | 100 | 33.7 | 20.3 | 1.66× |\n";
        let p = parse(text, "t".into()).unwrap();
        assert_eq!(p.cpu_us_per_request[&("CURVE".into(), 1000)], 59.5);
        assert_eq!(p.rss_kib.len(), 2);
        assert!((p.kib_per_agent("CURVE", 1000).unwrap() - 89.908).abs() < 1e-9);
        assert_eq!(p.cpu_us_per_answer[&("null".into(), 100)], 33.7);
        assert!(parse("# nothing\n", "t".into()).is_none());
        assert_eq!(p.throughput("CURVE", 1000), Some(0.71));
        assert!(p.throughput("null", 1).is_none());
    }

    /// The report committed before issue 15: 46% / 71% / 33% / 1.42× /
    /// 1.24× / 86%.
    #[test]
    fn the_relay_ratios_are_read() {
        let text = "## Fan-out latency\n\n| security | N | Pantry p50 | baseline p50 | ratio p50 | Pantry p99 |\n\
                    |---|---:|---:|\n| CURVE | 1,000 | 46.8 | 32.9 | 1.42× | 58.4 |\n\
                    | CURVE | 4,000 | 197 | 159 | 1.24× | 237 |\n| null | 4,000 | lost | 148 | – | 184 |\n\n\
                    ## Throughput\n\n| CURVE | 1 | 29,379 | 63,937 | 46% | 0/0 | 30.9 / 11.5 |\n\
                    | CURVE | 1,000 | 14,534 | 20,587 | 71% | 0/0 | 59.5 / 35.7 |\n\
                    | null | 1 | 34,190 | 102,616 | 33% | 0/0 | 26.7 / 6.69 |\n\n## Handshake rate\n\n\
                    | known keys | Pantry | baseline | Pantry / baseline | failed (P/B) |\n|---:|---:|\n\
                    | 100 | 1,213 | 1,402 | 86% | 0/0 | 813 / 678 |\n| 100,000 | 1,281 | 1,473 | 87% | 0/0 | 784 / 657 |\n";
        let p = parse(text, "t".into()).unwrap();
        let pct = |v: Option<f64>| v.map(|r| (r * 100.0).round());
        assert_eq!(pct(p.throughput("CURVE", 1)), Some(46.0));
        assert_eq!(pct(p.throughput("CURVE", 1000)), Some(71.0));
        assert_eq!(pct(p.throughput("null", 1)), Some(33.0));
        assert_eq!(pct(p.fanout_p50("CURVE", 1000)), Some(142.0));
        assert_eq!(pct(p.fanout_p50("CURVE", 4000)), Some(124.0));
        assert_eq!(p.fanout_p50("null", 4000), None, "a lost fan-out is not read");
        assert_eq!(p.handshake_ratio.len(), 2);
        assert_eq!(pct(p.lowest_handshake()), Some(86.0));
        assert!(p.cpu_us_per_request.contains_key(&("CURVE".into(), 1)));
    }
}
