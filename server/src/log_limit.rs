//! Log lines that a peer can cause at will (refusals, requests to an agent
//! that does not read), limited per source: the first line of a source in
//! a window is written, the rest are counted, and the count is written as
//! one line when the window ends. A flood costs the disk a line or two a
//! second per source, not a line per message.

use std::collections::HashMap;
use std::time::{Duration, Instant};

/// Sources tracked at once; beyond, new sources share one count.
const MAX_SOURCES: usize = 10_000;

/// What the caller of [`LogLimit::admit`] does with its line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admit {
    /// Write it.
    Write,
    /// Counted; a line says how many when the window ends.
    Counted,
}

struct Window {
    started: Instant,
    suppressed: u64,
}

/// Lines suppressed for one source over a window that ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Suppressed {
    pub source: String,
    pub count: u64,
    pub seconds: u64,
}

/// The source that stands for every source past [`MAX_SOURCES`].
pub const OTHER_SOURCES: &str = "(other sources)";

pub struct LogLimit {
    window: Duration,
    sources: HashMap<String, Window>,
}

impl LogLimit {
    pub fn new(window: Duration) -> LogLimit {
        LogLimit { window, sources: HashMap::new() }
    }

    /// Whether a line from `source` is written now.
    pub fn admit(&mut self, source: &str) -> Admit {
        let now = Instant::now();
        if let Some(w) = self.sources.get_mut(source) {
            if now.duration_since(w.started) < self.window {
                w.suppressed += 1;
                return Admit::Counted;
            }
            // A new window; what the old one counted is flushed by `ended`.
            if w.suppressed == 0 {
                w.started = now;
                return Admit::Write;
            }
            w.suppressed += 1;
            return Admit::Counted;
        }
        if self.sources.len() >= MAX_SOURCES {
            let other = self.sources.entry(OTHER_SOURCES.to_owned()).or_insert(Window { started: now, suppressed: 0 });
            other.suppressed += 1;
            return Admit::Counted;
        }
        self.sources.insert(source.to_owned(), Window { started: now, suppressed: 0 });
        Admit::Write
    }

    /// The sources whose window ended with lines counted (to be written as
    /// one line each); sources quiet for a whole window are forgotten.
    /// Call it about once a window.
    pub fn ended(&mut self) -> Vec<Suppressed> {
        let now = Instant::now();
        let window = self.window;
        let mut out = Vec::new();
        self.sources.retain(|source, w| {
            let age = now.duration_since(w.started);
            if age < window {
                return true;
            }
            if w.suppressed > 0 {
                out.push(Suppressed { source: source.clone(), count: w.suppressed, seconds: age.as_secs().max(1) });
            }
            false
        });
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_line_then_a_count_per_window() {
        let mut limit = LogLimit::new(Duration::from_millis(50));
        assert_eq!(limit.admit("k1"), Admit::Write);
        assert_eq!(limit.admit("k2"), Admit::Write);
        for _ in 0..99 {
            assert_eq!(limit.admit("k1"), Admit::Counted);
        }
        assert!(limit.ended().is_empty(), "the window is still open");
        std::thread::sleep(Duration::from_millis(60));
        let ended = limit.ended();
        assert_eq!(ended.len(), 1, "k2 had nothing counted: {ended:?}");
        assert_eq!((ended[0].source.as_str(), ended[0].count), ("k1", 99));
        assert_eq!(limit.admit("k1"), Admit::Write, "a new window");
    }

    #[test]
    fn sources_are_bounded() {
        let mut limit = LogLimit::new(Duration::from_secs(60));
        for i in 0..MAX_SOURCES {
            assert_eq!(limit.admit(&i.to_string()), Admit::Write);
        }
        assert_eq!(limit.admit("one more"), Admit::Counted);
        assert_eq!(limit.admit("and another"), Admit::Counted);
        assert!(limit.sources.len() <= MAX_SOURCES + 1);
        assert_eq!(limit.sources[OTHER_SOURCES].suppressed, 2);
    }
}
