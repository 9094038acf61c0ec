//! Where v1 records come from. Each source lists its streams and reads one
//! stream at a time from a bookmark on: in replication-key order where the
//! source can (PostgreSQL), in no particular order where it cannot (DynamoDB).

pub mod dynamodb;
pub mod postgres;

use serde_json::{Map, Value};
use tokio::sync::mpsc;

use crate::kv::Body;
use crate::kv::key::key_text;
use crate::kv::timestamp::{self, Instant};

/// One stream as the backfill sees it, whatever the source.
#[derive(Debug, Clone)]
pub struct StreamSpec {
    pub name: String,
    /// The record fields whose values make the key, in order.
    pub key_properties: Vec<String>,
    /// The guard's timestamp field, and what the bookmark tracks.
    pub replication_key: Option<String>,
    /// Whether records arrive in replication-key order. Only then can the
    /// bookmark advance record by record; otherwise it moves once the whole
    /// stream has been read.
    pub ordered: bool,
}

/// One record as a source hands it over: what the backfill needs to key it,
/// bookmark it and guard it, and its value.
#[derive(Debug)]
pub struct SourceRecord {
    /// The key property values as key text (`None` for null), in order.
    pub key: Vec<Option<String>>,
    /// The replication key value as a bookmark stores it (null when the record
    /// has none); `None` for streams without a replication key.
    pub replication_value: Option<Value>,
    /// The guard's timestamp: the replication key value, when it is one.
    pub timestamp: Option<Instant>,
    pub body: Body,
}

impl SourceRecord {
    /// For sources that build records as maps: takes the key, bookmark and
    /// timestamp out of the fields.
    pub fn from_fields(spec: &StreamSpec, fields: Map<String, Value>) -> Self {
        let key = spec
            .key_properties
            .iter()
            .map(|p| {
                fields
                    .get(p)
                    .and_then(key_text)
                    .map(|t| t.as_str().to_string())
            })
            .collect();
        let replication_value = spec
            .replication_key
            .as_deref()
            .map(|rk| fields.get(rk).cloned().unwrap_or(Value::Null));
        let timestamp = timestamp::from_json(replication_value.as_ref());
        Self {
            key,
            replication_value,
            timestamp,
            body: Body::Record(fields),
        }
    }
}

pub type Batch = Vec<SourceRecord>;

/// Records of one stream, read in batches by a background task so reading
/// overlaps writing; the channel's bound keeps memory bounded.
pub type Batches = mpsc::Receiver<Result<Batch, SourceError>>;

#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    #[error("cannot connect to {what}: {reason}")]
    Connect { what: String, reason: String },
    /// Configuration that does not match the database; every problem at once.
    #[error("the configured streams do not match the database:{}", .0.iter().map(|p| format!("\n  - {p}")).collect::<String>())]
    Mismatch(Vec<String>),
    #[error("reading stream {stream}: {reason}")]
    Read { stream: String, reason: String },
}

/// A v1 data source.
pub trait Source: Send {
    /// The selected streams, checked against the source.
    fn streams(&self) -> &[StreamSpec];

    /// An estimate of how many records `read` will return, for progress bars.
    fn estimate(
        &self,
        stream: usize,
        since: Option<&Value>,
    ) -> futures::future::BoxFuture<'_, Option<u64>>;

    /// Starts reading one stream: records whose replication key is at or past
    /// `since` (all records when `None`), in replication-key order.
    fn read(&self, stream: usize, since: Option<Value>) -> Batches;
}

/// Several sources run as one: their streams in order, one bookmark document.
pub struct Sources {
    parts: Vec<Box<dyn Source>>,
    specs: Vec<StreamSpec>,
    /// For each stream: its source and its index there.
    index: Vec<(usize, usize)>,
}

impl Sources {
    pub fn new(parts: Vec<Box<dyn Source>>) -> Self {
        let mut specs = Vec::new();
        let mut index = Vec::new();
        for (p, part) in parts.iter().enumerate() {
            for (i, spec) in part.streams().iter().enumerate() {
                specs.push(spec.clone());
                index.push((p, i));
            }
        }
        Self {
            parts,
            specs,
            index,
        }
    }
}

impl Source for Sources {
    fn streams(&self) -> &[StreamSpec] {
        &self.specs
    }

    fn estimate(
        &self,
        stream: usize,
        since: Option<&Value>,
    ) -> futures::future::BoxFuture<'_, Option<u64>> {
        let (p, i) = self.index[stream];
        self.parts[p].estimate(i, since)
    }

    fn read(&self, stream: usize, since: Option<Value>) -> Batches {
        let (p, i) = self.index[stream];
        self.parts[p].read(i, since)
    }
}
