//! The replication lags of the last minute, summarised for the `writer queue` log line: where
//! nothing scrapes `/metrics` (the ECS service), that line is how the lag reaches CloudWatch
//! (log metric filters `WriterLagP50Seconds`, `WriterLagP99Seconds`).
//!
//! A uniform sample (reservoir sampling) of at most [`SAMPLE_CAP`] lags per window, so a busy
//! minute costs bounded memory and the percentiles stay unbiased.

use std::sync::Mutex;

/// Lags kept per window.
pub const SAMPLE_CAP: usize = 4096;

/// One window's figures, in seconds.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LagSummary {
    /// Lags recorded in the window (all of them, not only the sample).
    pub count: u64,
    pub p50: f64,
    pub p99: f64,
    /// The largest lag of the window (exact, not sampled).
    pub max: f64,
}

#[derive(Debug, Default)]
pub struct LagWindow {
    seen: u64,
    max: f64,
    sample: Vec<f64>,
}

impl LagWindow {
    pub fn record(&mut self, lag_seconds: f64) {
        let lag = if lag_seconds.is_finite() {
            lag_seconds.max(0.0)
        } else {
            0.0
        };
        self.seen += 1;
        self.max = self.max.max(lag);
        if self.sample.len() < SAMPLE_CAP {
            self.sample.push(lag);
        } else {
            // Algorithm R: the n-th lag replaces a kept one with probability CAP / n.
            let j = rand::random_range(0..self.seen);
            if (j as usize) < SAMPLE_CAP {
                self.sample[j as usize] = lag;
            }
        }
    }

    /// The window's summary (`None` when nothing was recorded), and a new window.
    pub fn take(&mut self) -> Option<LagSummary> {
        let mut window = std::mem::take(self);
        if window.seen == 0 {
            return None;
        }
        window.sample.sort_by(f64::total_cmp);
        Some(LagSummary {
            count: window.seen,
            p50: nearest_rank(&window.sample, 0.50),
            p99: nearest_rank(&window.sample, 0.99),
            max: window.max,
        })
    }
}

/// The nearest-rank percentile of sorted, non-empty values.
fn nearest_rank(sorted: &[f64], q: f64) -> f64 {
    let rank = (q * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

static WINDOW: Mutex<LagWindow> = Mutex::new(LagWindow {
    seen: 0,
    max: 0.0,
    sample: Vec::new(),
});

/// Records one lag in the process's window.
pub fn record(lag_seconds: f64) {
    WINDOW
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .record(lag_seconds);
}

/// The process's window so far, and a new one.
pub fn take() -> Option<LagSummary> {
    WINDOW.lock().unwrap_or_else(|p| p.into_inner()).take()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_empty_window_has_no_summary() {
        assert_eq!(LagWindow::default().take(), None);
    }

    #[test]
    fn percentiles_are_nearest_rank_and_max_is_exact() {
        let mut w = LagWindow::default();
        for i in 1..=100 {
            w.record(i as f64);
        }
        let s = w.take().unwrap();
        assert_eq!(
            s,
            LagSummary {
                count: 100,
                p50: 50.0,
                p99: 99.0,
                max: 100.0
            }
        );
        let mut one = LagWindow::default();
        one.record(0.25);
        let s = one.take().unwrap();
        assert_eq!((s.count, s.p50, s.p99, s.max), (1, 0.25, 0.25, 0.25));
    }

    #[test]
    fn taking_starts_a_new_window() {
        let mut w = LagWindow::default();
        w.record(5.0);
        assert!(w.take().is_some());
        assert_eq!(w.take(), None);
        w.record(1.0);
        assert_eq!(w.take().unwrap().max, 1.0);
    }

    #[test]
    fn a_busy_window_keeps_a_bounded_uniform_sample() {
        let mut w = LagWindow::default();
        // 100,000 lags: 1% of them 10 s, the rest 0.1 s, interleaved.
        for i in 0..100_000u32 {
            w.record(if i % 100 == 99 { 10.0 } else { 0.1 });
        }
        assert_eq!(w.sample.len(), SAMPLE_CAP);
        let tens = w.sample.iter().filter(|l| **l == 10.0).count();
        // Expected 41 of 4096; a sample that kept only the first or last lags would not be
        // near that. Bounds far outside random variation (about 6.4 standard deviations).
        assert!((1..=82).contains(&tens), "10 s lags in the sample: {tens}");
        let s = w.take().unwrap();
        assert_eq!(s.count, 100_000);
        assert_eq!(s.p50, 0.1);
        assert_eq!(s.max, 10.0);
    }

    #[test]
    fn odd_values_do_not_poison_the_window() {
        let mut w = LagWindow::default();
        w.record(f64::NAN);
        w.record(-3.0);
        w.record(f64::INFINITY);
        w.record(2.0);
        let s = w.take().unwrap();
        assert_eq!((s.count, s.p50, s.max), (4, 0.0, 2.0));
    }
}
