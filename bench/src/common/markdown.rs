//! How the report writes figures, targets and the previous run's figures,
//! for every scenario's section alike.

use std::fmt::Write as _;

/// A figure: `–` when missing, `lost` when infinite (a fan-out that lost
/// answers), grouped thousands, fewer decimals as it grows.
pub fn num(v: Option<f64>) -> String {
    match v {
        None => "–".into(),
        Some(v) if v.is_infinite() => "lost".into(),
        Some(v) if v >= 1000.0 => group(v.round() as u64),
        Some(v) if v >= 100.0 => format!("{v:.0}"),
        Some(v) if v >= 10.0 => format!("{v:.1}"),
        Some(v) => format!("{v:.2}"),
    }
}

/// 12345 → "12,345".
pub fn group(v: u64) -> String {
    let digits = v.to_string();
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// A count, grouped.
pub fn count(n: usize) -> String {
    group(n as u64)
}

pub fn kib(v: Option<u64>) -> String {
    v.map_or_else(|| "–".into(), group)
}

/// 0.46 → "46%".
pub fn pct(v: Option<f64>) -> String {
    v.map_or_else(|| "–".into(), |r| format!("{:.0}%", r * 100.0))
}

/// "99.4%": on / off ratios are judged within a few percent.
pub fn pct1(v: Option<f64>) -> String {
    v.filter(|r| r.is_finite()).map_or_else(|| "–".into(), |r| format!("{:.1}%", r * 100.0))
}

/// "1.42×".
pub fn ratio(v: Option<f64>) -> String {
    v.filter(|r| r.is_finite()).map_or_else(|| "–".into(), |r| format!("{r:.2}×"))
}

/// "1.012×".
pub fn ratio3(v: Option<f64>) -> String {
    v.filter(|r| r.is_finite()).map_or_else(|| "–".into(), |r| format!("{r:.3}×"))
}

/// Seconds to the millisecond.
pub fn secs(v: f64) -> String {
    format!("{v:.3}")
}

/// "p50 / max" and other pairs.
pub fn ms_pair(a: Option<f64>, b: Option<f64>) -> String {
    format!("{} / {}", num(a), num(b))
}

/// This run / previous as a change: "+3%", "−12%".
pub fn change(v: Option<f64>) -> String {
    match v.filter(|r| r.is_finite()) {
        Some(r) if r < 1.0 => format!("−{:.0}%", (1.0 - r) * 100.0),
        Some(r) => format!("+{:.0}%", (r - 1.0) * 100.0),
        None => "–".into(),
    }
}

pub fn first_line(text: &str) -> &str {
    text.lines().next().unwrap_or_default()
}

/// A section's `Failed: ...` lines, one per part that failed.
pub fn failures(out: &mut String, failures: &[String]) {
    for why in failures {
        let _ = writeln!(out, "\nFailed: {}", first_line(why));
    }
}

/// A scenario's figures in the previous run (`latest.json` before this
/// run), and where they came from or why there are none.
#[derive(Debug)]
pub struct Previous<'a, T> {
    pub figures: Option<&'a T>,
    /// `bench/results/latest.json as committed (HEAD)`, or `no previous
    /// results (latest.json missing)`.
    pub said: &'a str,
}

impl<T> Clone for Previous<'_, T> {
    fn clone(&self) -> Self {
        *self
    }
}

impl<T> Copy for Previous<'_, T> {}

/// One target: what it asks, what this run measured, whether it is met
/// (`None`: not measured), and what the previous run measured for it.
#[derive(Debug, Clone)]
pub struct Target {
    pub what: String,
    pub measured: String,
    pub met: Option<bool>,
    pub before: Option<String>,
}

impl Target {
    pub fn new(what: String, measured: String, met: Option<bool>) -> Target {
        Target { what, measured, met, before: None }
    }

    pub fn status(&self) -> &'static str {
        match self.met {
            Some(true) => "met",
            Some(false) => "**not met**",
            None => "not measured",
        }
    }
}

/// This run's targets, each with the figure of the same target (asking
/// the same: same agents, same N) in `previous`, the targets of the
/// previous run's figures.
pub fn compared(now: Vec<Target>, previous: Option<Vec<Target>>) -> Vec<Target> {
    let previous = previous.unwrap_or_default();
    let before = |t: &Target| previous.iter().find(|p| p.what == t.what).map(|p| p.measured.clone());
    now.into_iter().map(|t| Target { before: before(&t), ..t }).collect()
}

/// A section's targets table, with the previous run's figures.
pub fn targets_table(targets: &[Target], previous_said: &str) -> String {
    let mut out = format!("Targets; the previous run's figures in brackets. Previous run: {previous_said}.\n\n");
    out.push_str("| target | measured | status |\n|---|---|---|\n");
    for t in targets {
        let before = t.before.as_ref().map(|b| format!(" (previous run: {b})")).unwrap_or_default();
        let _ = writeln!(out, "| {} | {}{before} | {} |", t.what, t.measured, t.status());
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn figures_are_written_for_people() {
        assert_eq!(
            (group(12345), group(999), num(Some(1234.4)), num(Some(12.34))),
            ("12,345".into(), "999".into(), "1,234".into(), "12.3".into())
        );
        assert_eq!(
            (num(Some(f64::INFINITY)), num(None), pct(Some(0.456)), ratio(Some(1.4151))),
            ("lost".into(), "–".into(), "46%".into(), "1.42×".into())
        );
        assert_eq!((change(Some(1.03)), change(Some(0.88)), change(None)), ("+3%".into(), "−12%".into(), "–".into()));
    }

    #[test]
    fn a_target_shows_the_previous_figure_of_the_same_target() {
        let t = |what: &str, measured: &str| Target::new(what.into(), measured.into(), Some(true));
        let now = vec![t("x < 1 s", "0.5 s"), t("z < 1 s", "0.6 s")];
        let table = targets_table(&compared(now, Some(vec![t("y < 1 s", "0.8 s"), t("x < 1 s", "0.7 s")])), "t");
        assert!(
            table.contains("| x < 1 s | 0.5 s (previous run: 0.7 s) | met |\n| z < 1 s | 0.6 s | met |"),
            "{table}"
        );
    }
}
