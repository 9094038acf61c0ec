//! Where v1 records come from. Each source lists its streams and reads one
//! stream at a time, in replication-key order, from a bookmark on.

pub mod postgres;

use serde_json::{Map, Value};
use tokio::sync::mpsc;

/// One stream as the backfill sees it, whatever the source.
#[derive(Debug, Clone)]
pub struct StreamSpec {
    pub name: String,
    /// The record fields whose values make the key, in order.
    pub key_properties: Vec<String>,
    /// The field records are read in order of, and the guard's timestamp.
    pub replication_key: Option<String>,
}

/// Records of one stream, read in batches by a background task so reading
/// overlaps writing; the channel's bound keeps memory bounded.
pub type Batches = mpsc::Receiver<Result<Vec<Map<String, Value>>, SourceError>>;

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
