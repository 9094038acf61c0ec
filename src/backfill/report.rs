//! What a run did, per stream: the counters of SPEC §3 and the bookmark reached.

use std::fmt::Write as _;

use serde::Serialize;
use serde_json::Value;

use crate::kv::Outcome;

#[derive(Debug, Default, Clone, Serialize, PartialEq, Eq)]
pub struct Counters {
    pub read: u64,
    pub created: u64,
    pub updated: u64,
    pub unchanged: u64,
    pub skipped_deleted: u64,
    pub skipped_newer: u64,
    pub invalid_key: u64,
    pub failed: u64,
}

impl Counters {
    pub fn count(&mut self, outcome: Outcome) {
        match outcome {
            Outcome::Created => self.created += 1,
            Outcome::Updated => self.updated += 1,
            Outcome::Unchanged => self.unchanged += 1,
            Outcome::SkippedDeleted => self.skipped_deleted += 1,
            Outcome::SkippedNewer => self.skipped_newer += 1,
        }
    }

    pub fn add(&mut self, other: &Counters) {
        self.read += other.read;
        self.created += other.created;
        self.updated += other.updated;
        self.unchanged += other.unchanged;
        self.skipped_deleted += other.skipped_deleted;
        self.skipped_newer += other.skipped_newer;
        self.invalid_key += other.invalid_key;
        self.failed += other.failed;
    }

    fn columns(&self) -> [u64; 8] {
        [
            self.read,
            self.created,
            self.updated,
            self.unchanged,
            self.skipped_deleted,
            self.skipped_newer,
            self.invalid_key,
            self.failed,
        ]
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct StreamReport {
    #[serde(flatten)]
    pub counters: Counters,
    pub replication_key: Option<String>,
    /// The bookmark stored at the end of the run.
    pub bookmark: Option<Value>,
    /// Why the stream stopped early, if it did.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct RunReport {
    pub streams: indexmap_like::OrderedStreams,
    pub totals: Counters,
    pub state: Option<String>,
    pub dry_run: bool,
    pub full: bool,
    pub seconds: f64,
}

/// Streams in the order they ran, serialized as a JSON object.
pub mod indexmap_like {
    use serde::ser::{Serialize, SerializeMap, Serializer};

    use super::StreamReport;

    #[derive(Debug, Clone, Default)]
    pub struct OrderedStreams(pub Vec<(String, StreamReport)>);

    impl Serialize for OrderedStreams {
        fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
            let mut map = s.serialize_map(Some(self.0.len()))?;
            for (k, v) in &self.0 {
                map.serialize_entry(k, v)?;
            }
            map.end()
        }
    }
}

impl RunReport {
    pub fn any_failed(&self) -> bool {
        self.totals.failed > 0
    }

    /// The summary table printed at the end of a run.
    pub fn table(&self) -> String {
        const HEAD: [&str; 8] = [
            "read",
            "created",
            "updated",
            "unchanged",
            "skipped_deleted",
            "skipped_newer",
            "invalid_key",
            "failed",
        ];
        let name_width = self
            .streams
            .0
            .iter()
            .map(|(n, _)| n.len())
            .chain(["stream".len(), "total".len()])
            .max()
            .unwrap_or(6);
        let mut out = String::new();
        let _ = write!(out, "{:<name_width$}", "stream");
        for h in HEAD {
            let _ = write!(out, "  {h:>w$}", w = h.len().max(7));
        }
        out.push_str("  bookmark\n");
        let mut row = |name: &str, c: &Counters, bookmark: &str| {
            let _ = write!(out, "{name:<name_width$}");
            for (h, v) in HEAD.iter().zip(c.columns()) {
                let _ = write!(out, "  {v:>w$}", w = h.len().max(7));
            }
            let _ = writeln!(out, "  {bookmark}");
        };
        for (name, s) in &self.streams.0 {
            let bookmark = match (&s.bookmark, &s.error) {
                (_, Some(e)) => format!("STOPPED: {e}"),
                (Some(Value::String(b)), None) => b.clone(),
                (Some(b), None) => b.to_string(),
                (None, None) => "-".to_string(),
            };
            row(name, &s.counters, &bookmark);
        }
        row("total", &self.totals, "");
        out
    }
}
