//! Percentiles, medians, and a figure of two systems side by side.

use serde::{Deserialize, Serialize};

/// A figure for two systems measured side by side: Pantry and the
/// baseline relay, or the two servers of an on/off comparison (`pantry`:
/// the first, `baseline`: the second).
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct Both<T> {
    pub pantry: T,
    pub baseline: T,
}

impl<T> Both<T> {
    /// 0: `pantry`, otherwise `baseline` (the order systems are given in).
    pub fn at_mut(&mut self, i: usize) -> &mut T {
        if i == 0 {
            &mut self.pantry
        } else {
            &mut self.baseline
        }
    }

    pub fn at(&self, i: usize) -> &T {
        if i == 0 {
            &self.pantry
        } else {
            &self.baseline
        }
    }
}

impl Both<Option<f64>> {
    /// Pantry / baseline.
    pub fn ratio(&self) -> Option<f64> {
        match (self.pantry, self.baseline) {
            (Some(p), Some(b)) if b > 0.0 => Some(p / b),
            _ => None,
        }
    }
}

/// Which of two systems goes first in round `round`: the first in even
/// rounds, the second in odd ones.
pub fn order(round: usize) -> [usize; 2] {
    if round % 2 == 0 {
        [0, 1]
    } else {
        [1, 0]
    }
}

/// The medians of each system's samples.
pub fn medians(samples: &[Vec<f64>; 2]) -> Both<Option<f64>> {
    Both { pantry: median(&samples[0]), baseline: median(&samples[1]) }
}

/// Nearest-rank percentile (`p` in 0..=100) of `values`; `None` if empty.
pub fn percentile(values: &[f64], p: f64) -> Option<f64> {
    if values.is_empty() {
        return None;
    }
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    Some(sorted[rank.clamp(1, sorted.len()) - 1])
}

/// Median (mean of the two middle values for an even count).
pub fn median(values: &[f64]) -> Option<f64> {
    if values.is_empty() {
        return None;
    }
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    let mid = sorted.len() / 2;
    Some(if sorted.len() % 2 == 0 { (sorted[mid - 1] + sorted[mid]) / 2.0 } else { sorted[mid] })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_by_nearest_rank() {
        let v: Vec<f64> = (1..=20).map(f64::from).collect();
        assert_eq!(percentile(&v, 50.0), Some(10.0));
        assert_eq!(percentile(&v, 99.0), Some(20.0));
        assert_eq!(percentile(&[3.0], 99.0), Some(3.0));
        assert_eq!(percentile(&[], 50.0), None);
        assert_eq!(median(&[3.0, 1.0, 2.0]), Some(2.0));
        assert_eq!(median(&[4.0, 1.0, 2.0, 3.0]), Some(2.5));
    }
}
