//! The figures of an earlier report, to compare this run's server memory
//! and CPU per agent with: the `latest.md` committed in the output
//! directory (`git show HEAD:./latest.md` there), or else the one on disk
//! before this run overwrites it.

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
}

impl Previous {
    /// Server RSS growth per agent from 0 to N, KiB.
    pub fn kib_per_agent(&self, security: &str, n: usize) -> Option<f64> {
        let zero = self.rss_kib.get(&(security.to_owned(), 0))?;
        let at = self.rss_kib.get(&(security.to_owned(), n))?;
        (n > 0).then(|| (at - zero) / n as f64)
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

/// Reads the Memory, Throughput and CPU-per-answer tables; `None` when
/// none of them is there.
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
        let (Some(security), Some(n)) = (cells.first(), cells.get(1).and_then(|c| number(c))) else { continue };
        let key = (security.to_string(), n as usize);
        match section {
            "Memory" => {
                if let Some(v) = cells.get(2).and_then(|c| number(c)) {
                    previous.rss_kib.insert(key, v);
                }
            }
            "Throughput" => {
                let pantry = cells.get(6).and_then(|c| c.split('/').next()).and_then(number);
                if let Some(v) = pantry {
                    previous.cpu_us_per_request.insert(key, v);
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
    let empty = previous.rss_kib.is_empty() && previous.cpu_us_per_request.is_empty();
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
    }
}
