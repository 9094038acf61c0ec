//! Progress of a run: a bar per stream on a terminal, plain periodic log lines
//! otherwise (CronJob logs).

use std::io::IsTerminal;
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressState, ProgressStyle};

#[derive(Debug, Clone, Copy)]
pub struct Progress {
    bars: bool,
    log_every: Duration,
}

impl Progress {
    /// Bars when stderr is a terminal and `quiet` is not set.
    pub fn detect(quiet: bool) -> Self {
        Self {
            bars: !quiet && std::io::stderr().is_terminal(),
            log_every: Duration::from_secs(10),
        }
    }

    pub fn stream(&self, name: &str, estimate: Option<u64>) -> StreamProgress {
        let bar = self.bars.then(|| {
            let bar = ProgressBar::with_draw_target(estimate, ProgressDrawTarget::stderr());
            let template = if estimate.is_some() {
                "{prefix:>32} [{bar:30}] {human_pos}/~{human_len} {rate} {eta}"
            } else {
                "{prefix:>32} {spinner} {human_pos} {rate}"
            };
            if let Ok(style) = ProgressStyle::with_template(template) {
                bar.set_style(
                    style
                        .with_key(
                            "rate",
                            |state: &ProgressState, w: &mut dyn std::fmt::Write| {
                                let _ = write!(w, "{:.0} rows/s", state.per_sec());
                            },
                        )
                        .progress_chars("=> "),
                );
            }
            bar.set_prefix(name.to_string());
            bar.enable_steady_tick(Duration::from_millis(200));
            bar
        });
        StreamProgress {
            name: name.to_string(),
            estimate,
            bar,
            done: 0,
            started: Instant::now(),
            last_log: Instant::now(),
            log_every: self.log_every,
        }
    }
}

pub struct StreamProgress {
    name: String,
    estimate: Option<u64>,
    bar: Option<ProgressBar>,
    done: u64,
    started: Instant,
    last_log: Instant,
    log_every: Duration,
}

impl StreamProgress {
    pub fn advance(&mut self, rows: u64) {
        self.done += rows;
        match &self.bar {
            Some(bar) => {
                if bar.length().is_some_and(|len| self.done > len) {
                    bar.set_length(self.done);
                }
                bar.set_position(self.done);
            }
            None if self.last_log.elapsed() >= self.log_every => {
                self.last_log = Instant::now();
                tracing::info!(
                    stream = %self.name,
                    rows = self.done,
                    estimate = self.estimate,
                    rows_per_second = self.rate(),
                    "progress"
                );
            }
            None => {}
        }
    }

    fn rate(&self) -> u64 {
        let secs = self.started.elapsed().as_secs_f64();
        if secs > 0.0 {
            (self.done as f64 / secs) as u64
        } else {
            0
        }
    }

    pub fn finish(self) {
        if let Some(bar) = &self.bar {
            bar.finish();
        }
        tracing::info!(stream = %self.name, rows = self.done, rows_per_second = self.rate(), "stream done");
    }
}
