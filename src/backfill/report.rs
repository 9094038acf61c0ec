//! What a run did, per stream: the counters of SPEC §3 and the bookmark reached.

use std::fmt::Write as _;

use serde::Serialize;
use serde_json::Value;

use crate::kv::Counters;

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
        const HEAD: [&str; 8] = Counters::HEADINGS;
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
