//! Progress of a long job: a bar on a terminal, structured log lines otherwise.

use std::io::IsTerminal;
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressStyle};

pub struct Progress {
    bar: Option<ProgressBar>,
    total: u64,
    done: u64,
    started: Instant,
    last_log: Instant,
    log_every: Duration,
    what: &'static str,
}

impl Progress {
    /// A bar when stderr is a terminal (and `bar` is allowed), log lines every `log_every`
    /// otherwise.
    pub fn new(what: &'static str, total: u64, bar: bool, log_every: Duration) -> Progress {
        let bar = (bar && std::io::stderr().is_terminal()).then(|| {
            let b = ProgressBar::new(total);
            b.set_style(
                ProgressStyle::with_template(
                    "{msg} [{elapsed_precise}] {wide_bar} {pos}/{len} ({per_sec}, eta {eta})",
                )
                .expect("a valid template"),
            );
            b.set_message(what);
            b
        });
        Progress {
            bar,
            total,
            done: 0,
            started: Instant::now(),
            last_log: Instant::now(),
            log_every,
            what,
        }
    }

    pub fn advance(&mut self, n: u64) {
        self.done += n;
        if let Some(bar) = &self.bar {
            bar.inc(n);
        } else if self.last_log.elapsed() >= self.log_every {
            self.last_log = Instant::now();
            let secs = self.started.elapsed().as_secs_f64();
            let rate = self.done as f64 / secs.max(1e-3);
            let left = self.total.saturating_sub(self.done);
            tracing::info!(
                job = self.what,
                done = self.done,
                total = self.total,
                per_second = (rate * 10.0).round() / 10.0,
                eta_seconds = (left as f64 / rate.max(1e-9)).round() as u64,
                "progress"
            );
        }
    }

    pub fn finish(&self) {
        if let Some(bar) = &self.bar {
            bar.finish_and_clear();
        }
    }
}
