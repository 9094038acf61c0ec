//! What the daemon counts, rendered by hand in Prometheus' text exposition
//! format (version 0.0.4): a handful of families does not need a crate.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

/// Upper bounds of the latency buckets, in seconds: fine below 10 ms, where
/// a healthy daemon lives, and up to minutes for backlogs and outages.
const BUCKETS: [f64; 18] = [
    0.000_5, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0, 60.0,
    120.0, 300.0,
];

/// A Prometheus histogram with fixed bucket bounds (`BUCKETS`).
pub struct Histogram {
    /// One count per bucket plus the `+Inf` overflow, not cumulative.
    counts: [AtomicU64; BUCKETS.len() + 1],
    sum_nanos: AtomicU64,
}

impl Default for Histogram {
    fn default() -> Self {
        Self {
            counts: std::array::from_fn(|_| AtomicU64::new(0)),
            sum_nanos: AtomicU64::new(0),
        }
    }
}

impl Histogram {
    pub fn observe(&self, elapsed: Duration) {
        let secs = elapsed.as_secs_f64();
        let index = BUCKETS.partition_point(|bound| *bound < secs);
        self.counts[index].fetch_add(1, Ordering::Relaxed);
        let nanos = u64::try_from(elapsed.as_nanos()).unwrap_or(u64::MAX);
        self.sum_nanos.fetch_add(nanos, Ordering::Relaxed);
    }

    fn render(&self, out: &mut String, name: &str, labels: &str) {
        let mut cumulative = 0;
        for (i, bound) in BUCKETS.iter().enumerate() {
            cumulative += self.counts[i].load(Ordering::Relaxed);
            let _ = writeln!(out, "{name}_bucket{{{labels},le=\"{bound}\"}} {cumulative}");
        }
        cumulative += self.counts[BUCKETS.len()].load(Ordering::Relaxed);
        let _ = writeln!(out, "{name}_bucket{{{labels},le=\"+Inf\"}} {cumulative}");
        let sum = self.sum_nanos.load(Ordering::Relaxed) as f64 / 1e9;
        let _ = writeln!(out, "{name}_sum{{{labels}}} {sum}");
        let _ = writeln!(out, "{name}_count{{{labels}}} {cumulative}");
    }
}

/// Counters, gauges and histograms of one input (one durable consumer), and
/// whether its consumer is bound, which readiness reports.
pub struct InputStats {
    pub input: &'static str,
    pub consumer: String,
    /// Messages by final outcome (`created`, `skipped_newer`, `dead_lettered`,
    /// `retried` …). Labels are static, so the map stays small.
    outcomes: Mutex<BTreeMap<&'static str, u64>>,
    dead_letters: Mutex<BTreeMap<&'static str, u64>>,
    /// Receipt of a message to its acknowledgement.
    pub processing: Histogram,
    /// The event's arrival in JetStream to its final outcome: event→KV latency.
    pub latency: Histogram,
    pending: AtomicU64,
    ack_pending: AtomicU64,
    in_flight: AtomicU64,
    bound: AtomicBool,
}

impl InputStats {
    pub fn new(input: &'static str, consumer: &str) -> Self {
        Self {
            input,
            consumer: consumer.to_string(),
            outcomes: Mutex::new(BTreeMap::new()),
            dead_letters: Mutex::new(BTreeMap::new()),
            processing: Histogram::default(),
            latency: Histogram::default(),
            pending: AtomicU64::new(0),
            ack_pending: AtomicU64::new(0),
            in_flight: AtomicU64::new(0),
            bound: AtomicBool::new(false),
        }
    }

    pub fn count(&self, outcome: &'static str) {
        bump(&self.outcomes, outcome);
    }

    pub fn dead_lettered(&self, reason: &'static str) {
        bump(&self.outcomes, "dead_lettered");
        bump(&self.dead_letters, reason);
    }

    pub fn outcome_count(&self, outcome: &str) -> u64 {
        lock(&self.outcomes).get(outcome).copied().unwrap_or(0)
    }

    pub fn set_pending(&self, pending: u64) {
        self.pending.store(pending, Ordering::Relaxed);
    }

    pub fn set_ack_pending(&self, ack_pending: u64) {
        self.ack_pending.store(ack_pending, Ordering::Relaxed);
    }

    /// A message was taken on; [`InputStats::left`] when it is acknowledged.
    pub fn entered(&self) {
        self.in_flight.fetch_add(1, Ordering::Relaxed);
    }

    pub fn left(&self) {
        self.in_flight.fetch_sub(1, Ordering::Relaxed);
    }

    pub fn set_bound(&self, bound: bool) {
        self.bound.store(bound, Ordering::Relaxed);
    }

    pub fn is_bound(&self) -> bool {
        self.bound.load(Ordering::Relaxed)
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // A counter map stays consistent even if a holder panicked.
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

fn bump(map: &Mutex<BTreeMap<&'static str, u64>>, label: &'static str) {
    *lock(map).entry(label).or_insert(0) += 1;
}

/// Escapes a label value (backslash, double quote, newline).
fn escape(value: &str) -> String {
    value
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// The whole exposition: every input's families plus the process-wide gauges.
pub fn render(inputs: &[&InputStats], nats_connected: bool, ready: bool) -> String {
    let mut out = String::with_capacity(4096);
    let labels: Vec<String> = inputs
        .iter()
        .map(|s| {
            format!(
                "input=\"{}\",consumer=\"{}\"",
                escape(s.input),
                escape(&s.consumer)
            )
        })
        .collect();

    family(
        &mut out,
        "lfx_sync_messages_total",
        "counter",
        "Messages handled, by input and final outcome (retried: negatively acknowledged for a later redelivery).",
    );
    for (stats, labels) in inputs.iter().zip(&labels) {
        for (outcome, n) in lock(&stats.outcomes).iter() {
            let _ = writeln!(
                out,
                "lfx_sync_messages_total{{{labels},outcome=\"{outcome}\"}} {n}"
            );
        }
    }
    family(
        &mut out,
        "lfx_sync_dead_letters_total",
        "counter",
        "Messages published to the dead-letter stream, by input and reason.",
    );
    for (stats, labels) in inputs.iter().zip(&labels) {
        for (reason, n) in lock(&stats.dead_letters).iter() {
            let _ = writeln!(
                out,
                "lfx_sync_dead_letters_total{{{labels},reason=\"{reason}\"}} {n}"
            );
        }
    }
    family(
        &mut out,
        "lfx_sync_processing_seconds",
        "histogram",
        "Time from receiving a message to acknowledging it.",
    );
    for (stats, labels) in inputs.iter().zip(&labels) {
        stats
            .processing
            .render(&mut out, "lfx_sync_processing_seconds", labels);
    }
    family(
        &mut out,
        "lfx_sync_event_latency_seconds",
        "histogram",
        "Time from an event's arrival in JetStream to its final outcome (event to KV).",
    );
    for (stats, labels) in inputs.iter().zip(&labels) {
        stats
            .latency
            .render(&mut out, "lfx_sync_event_latency_seconds", labels);
    }
    let gauges: [Gauge; 4] = [
        (
            "lfx_sync_consumer_pending",
            "Messages in the stream not yet delivered to the consumer.",
            |s| s.pending.load(Ordering::Relaxed),
        ),
        (
            "lfx_sync_consumer_ack_pending",
            "Messages delivered to the consumer (any replica) and not yet acknowledged.",
            |s| s.ack_pending.load(Ordering::Relaxed),
        ),
        (
            "lfx_sync_in_flight",
            "Messages this process holds: queued or being applied.",
            |s| s.in_flight.load(Ordering::Relaxed),
        ),
        (
            "lfx_sync_consumer_bound",
            "1 while the input's durable consumer is bound.",
            |s| u64::from(s.is_bound()),
        ),
    ];
    for (name, help, value) in gauges {
        family(&mut out, name, "gauge", help);
        for (stats, labels) in inputs.iter().zip(&labels) {
            let _ = writeln!(out, "{name}{{{labels}}} {}", value(stats));
        }
    }
    family(
        &mut out,
        "lfx_sync_nats_connected",
        "gauge",
        "1 while the NATS connection is up.",
    );
    let _ = writeln!(out, "lfx_sync_nats_connected {}", u8::from(nats_connected));
    family(
        &mut out,
        "lfx_sync_ready",
        "gauge",
        "1 while /readyz reports ready.",
    );
    let _ = writeln!(out, "lfx_sync_ready {}", u8::from(ready));
    out
}

/// A per-input gauge: name, help, how to read it.
type Gauge = (&'static str, &'static str, fn(&InputStats) -> u64);

fn family(out: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(out, "# HELP {name} {help}");
    let _ = writeln!(out, "# TYPE {name} {kind}");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histogram_buckets_are_cumulative() {
        let h = Histogram::default();
        h.observe(Duration::from_micros(300));
        h.observe(Duration::from_millis(3));
        h.observe(Duration::from_millis(3));
        h.observe(Duration::from_secs(1000));
        let mut out = String::new();
        h.render(&mut out, "x", "input=\"wal\"");
        assert!(
            out.contains("x_bucket{input=\"wal\",le=\"0.0005\"} 1\n"),
            "{out}"
        );
        assert!(
            out.contains("x_bucket{input=\"wal\",le=\"0.002\"} 1\n"),
            "{out}"
        );
        assert!(
            out.contains("x_bucket{input=\"wal\",le=\"0.005\"} 3\n"),
            "{out}"
        );
        assert!(
            out.contains("x_bucket{input=\"wal\",le=\"300\"} 3\n"),
            "{out}"
        );
        assert!(
            out.contains("x_bucket{input=\"wal\",le=\"+Inf\"} 4\n"),
            "{out}"
        );
        assert!(out.contains("x_count{input=\"wal\"} 4\n"), "{out}");
        assert!(out.contains("x_sum{input=\"wal\"} 1000.0063"), "{out}");
    }

    #[test]
    fn exposition_has_every_family_with_help_and_type() {
        let stats = InputStats::new("wal", "lfx-sync-\"odd\"");
        stats.count("created");
        stats.count("created");
        stats.dead_lettered("malformed_json");
        stats.set_pending(7);
        stats.set_bound(true);
        let text = render(&[&stats], true, false);
        let labels = r#"input="wal",consumer="lfx-sync-\"odd\"""#;
        for line in [
            format!("lfx_sync_messages_total{{{labels},outcome=\"created\"}} 2"),
            format!("lfx_sync_messages_total{{{labels},outcome=\"dead_lettered\"}} 1"),
            format!("lfx_sync_dead_letters_total{{{labels},reason=\"malformed_json\"}} 1"),
            format!("lfx_sync_consumer_pending{{{labels}}} 7"),
            format!("lfx_sync_consumer_bound{{{labels}}} 1"),
            format!("lfx_sync_processing_seconds_count{{{labels}}} 0"),
            "lfx_sync_nats_connected 1".to_string(),
            "lfx_sync_ready 0".to_string(),
        ] {
            assert!(text.lines().any(|l| l == line), "{line} missing in\n{text}");
        }
        // Every sample belongs to a family declared just before it.
        let mut declared = Vec::new();
        for line in text.lines() {
            if let Some(rest) = line.strip_prefix("# TYPE ") {
                declared.push(rest.split(' ').next().unwrap().to_string());
            } else if !line.starts_with('#') {
                let name = line.split(['{', ' ']).next().unwrap();
                let family = declared.last().unwrap();
                assert!(name.starts_with(family.as_str()), "{name} under {family}");
            }
        }
        assert_eq!(stats.outcome_count("created"), 2);
    }
}
