//! The guarded writer (SPEC §3): the one place that writes `v1-objects`.
//!
//! Every record is compared with the entry it would replace and written with
//! compare-and-set, so a backfill racing the live CDC path can never overwrite
//! a newer record or bring back a soft-deleted one.

use std::sync::Arc;
use std::sync::atomic::{AtomicI32, Ordering};
use std::time::Duration;

use async_nats::jetstream::kv::{self, Operation, UpdateErrorKind};
use bytes::Bytes;
use serde_json::{Map, Value};

use super::timestamp::{self, Instant};

/// How the guard treats a record whose timestamp equals or trails the stored one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum RefreshMode {
    /// Write only records newer than the stored entry.
    #[default]
    Newer,
    /// Also re-write records with an equal timestamp, so the sync loop sees them again.
    Same,
    /// Write unconditionally, except over soft-deleted entries.
    Full,
}

impl std::str::FromStr for RefreshMode {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "newer" => Ok(RefreshMode::Newer),
            "same" => Ok(RefreshMode::Same),
            "full" | "all" => Ok(RefreshMode::Full),
            other => Err(format!(
                "unknown refresh mode {other:?}: expected newer, same, full (or its alias all)"
            )),
        }
    }
}

/// How values are encoded when written. Both are accepted when read.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Encoding {
    #[default]
    Json,
    MsgPack,
}

/// What the guard did with one record; each is one counter of the run report.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Created,
    Updated,
    Unchanged,
    SkippedDeleted,
    SkippedNewer,
}

#[derive(Debug, thiserror::Error)]
pub enum WriteError {
    #[error("key {key}: still conflicting with concurrent writers after {attempts} attempts")]
    Conflict { key: String, attempts: u32 },
    #[error("key {key}: value of {size} bytes exceeds the limit of {limit} bytes")]
    TooLarge {
        key: String,
        size: usize,
        limit: usize,
    },
    #[error("key {key}: cannot encode value: {reason}")]
    Encode { key: String, reason: String },
    #[error("key {key}: NATS error after {attempts} attempts: {source}")]
    Nats {
        key: String,
        attempts: u32,
        #[source]
        source: async_nats::Error,
    },
}

/// One record on its way into the bucket.
#[derive(Debug, Clone)]
pub struct WriteRequest {
    pub key: String,
    /// The stream's timestamp field (replication key), if it has one.
    pub timestamp_field: Option<Arc<str>>,
    /// The record with its `_sdc_extracted_at`; `_sdc_received_at` is added on write.
    pub record: Map<String, Value>,
}

impl WriteRequest {
    pub fn new(key: String, timestamp_field: Option<Arc<str>>, record: Map<String, Value>) -> Self {
        Self {
            key,
            timestamp_field,
            record,
        }
    }
}

/// What a soft deletion (SPEC §3.6) did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeleteOutcome {
    /// `_sdc_deleted_at` was set on the stored payload.
    SoftDeleted,
    /// The entry was soft-deleted already: nothing written.
    AlreadyDeleted,
    /// No entry (or a delete/purge marker): acknowledged, nothing written.
    Absent,
}

/// The current entry of a key, as the guard sees it.
#[derive(Debug)]
enum Current {
    /// Never written (revision 0), or a delete/purge marker at `revision`.
    Absent { revision: u64 },
    /// A value; `None` when it is empty or cannot be decoded.
    Present {
        revision: u64,
        value: Option<Map<String, Value>>,
    },
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Decision {
    Write { revision: u64, outcome: Outcome },
    Skip(Outcome),
}

/// Every lost compare-and-set means another writer stored a newer state, so
/// a key settles within as many rounds as there are racing writers.
const MAX_CONFLICTS: u32 = 64;
const MAX_TRANSIENT: u32 = 8;

pub struct GuardedWriter {
    store: kv::Store,
    mode: RefreshMode,
    encoding: Encoding,
    dry_run: bool,
    /// Largest value the bucket and the server accept.
    max_value: usize,
    /// Positive while recent keys were absent: then a create is tried before
    /// any read, which halves the round trips of a load into an empty bucket.
    absent_streak: AtomicI32,
}

impl GuardedWriter {
    pub async fn new(
        store: kv::Store,
        client: &async_nats::Client,
        mode: RefreshMode,
        encoding: Encoding,
        dry_run: bool,
    ) -> Result<Self, async_nats::Error> {
        let status = store.status().await?;
        let server_max = client.server_info().max_payload;
        let bucket_max = status.info.config.max_message_size;
        // Leave room for the headers a KV put carries.
        let mut max_value = server_max.saturating_sub(256);
        if bucket_max > 0 {
            max_value = max_value.min(bucket_max as usize);
        }
        Ok(Self {
            store,
            mode,
            encoding,
            dry_run,
            max_value,
            absent_streak: AtomicI32::new(1),
        })
    }

    pub fn max_value(&self) -> usize {
        self.max_value
    }

    /// Applies the guard to one record and writes it if the guard says so.
    pub async fn write(&self, request: WriteRequest) -> Result<Outcome, WriteError> {
        let WriteRequest {
            key,
            timestamp_field,
            mut record,
        } = request;
        let ts_field = timestamp_field.as_deref();
        let incoming_ts = ts_field.and_then(|f| timestamp::from_json(record.get(f)));
        record.insert("_sdc_received_at".to_string(), Value::String(now_rfc3339()));
        let body = self.encode(&key, &record)?;
        if body.len() > self.max_value {
            return Err(WriteError::TooLarge {
                key,
                size: body.len(),
                limit: self.max_value,
            });
        }

        let mut conflicts = 0;
        let mut current = if !self.dry_run && self.absent_streak.load(Ordering::Relaxed) > 0 {
            Current::Absent { revision: 0 }
        } else {
            self.read(&key).await?
        };
        let mut optimistic = matches!(current, Current::Absent { revision: 0 });
        loop {
            let decision = decide(&current, ts_field, incoming_ts, &record, self.mode);
            if !optimistic {
                self.note_absent(matches!(current, Current::Absent { .. }));
            }
            let (revision, outcome) = match decision {
                Decision::Skip(outcome) => {
                    log_skip(&key, outcome);
                    return Ok(outcome);
                }
                Decision::Write { revision, outcome } => (revision, outcome),
            };
            if matches!(current, Current::Present { value: None, .. }) {
                tracing::warn!(key = %key, "overwriting an empty or undecodable entry");
            }
            if self.dry_run {
                return Ok(outcome);
            }
            match self.update(&key, body.clone(), revision).await {
                Ok(()) => {
                    if optimistic {
                        self.note_absent(true);
                    }
                    return Ok(outcome);
                }
                Err(UpdateOutcome::Failed(e)) => return Err(e),
                Err(UpdateOutcome::Conflicted) => {
                    if optimistic {
                        // The guess that the key is absent was wrong: not a real conflict.
                        optimistic = false;
                        self.note_absent(false);
                    } else {
                        conflicts += 1;
                        if conflicts >= MAX_CONFLICTS {
                            return Err(WriteError::Conflict {
                                key,
                                attempts: conflicts,
                            });
                        }
                        tracing::debug!(key = %key, conflicts, "revision changed underneath, deciding again");
                        // Jitter spreads writers that keep colliding on one key.
                        if conflicts > 2 {
                            tokio::time::sleep(jitter(conflicts)).await;
                        }
                    }
                    current = self.read(&key).await?;
                }
            }
        }
    }

    /// Soft-deletes a key (a CDC delete): keeps the stored payload and sets
    /// `_sdc_deleted_at`, `_sdc_extracted_at` and `_sdc_received_at`, with
    /// compare-and-set. Entries are never physically removed.
    pub async fn soft_delete(
        &self,
        key: &str,
        deleted_at: &str,
        extracted_at: &str,
    ) -> Result<DeleteOutcome, WriteError> {
        let mut conflicts = 0;
        loop {
            let (revision, mut value) = match self.read(key).await? {
                Current::Absent { .. } => return Ok(DeleteOutcome::Absent),
                Current::Present { revision, value } => (revision, value.unwrap_or_default()),
            };
            if is_soft_deleted(&value) {
                return Ok(DeleteOutcome::AlreadyDeleted);
            }
            value.insert(
                "_sdc_deleted_at".to_string(),
                Value::String(deleted_at.to_string()),
            );
            value.insert(
                "_sdc_extracted_at".to_string(),
                Value::String(extracted_at.to_string()),
            );
            value.insert("_sdc_received_at".to_string(), Value::String(now_rfc3339()));
            let body = self.encode(key, &value)?;
            if self.dry_run {
                return Ok(DeleteOutcome::SoftDeleted);
            }
            match self.update(key, body, revision).await {
                Ok(()) => return Ok(DeleteOutcome::SoftDeleted),
                Err(UpdateOutcome::Failed(e)) => return Err(e),
                Err(UpdateOutcome::Conflicted) => {
                    conflicts += 1;
                    if conflicts >= MAX_CONFLICTS {
                        return Err(WriteError::Conflict {
                            key: key.to_string(),
                            attempts: conflicts,
                        });
                    }
                    if conflicts > 2 {
                        tokio::time::sleep(jitter(conflicts)).await;
                    }
                }
            }
        }
    }

    fn note_absent(&self, absent: bool) {
        let delta = if absent { 1 } else { -1 };
        let _ = self
            .absent_streak
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |v| {
                Some((v + delta).clamp(-64, 64))
            });
    }

    fn encode(&self, key: &str, record: &Map<String, Value>) -> Result<Bytes, WriteError> {
        let encoded = match self.encoding {
            Encoding::Json => serde_json::to_vec(record).map_err(|e| e.to_string()),
            Encoding::MsgPack => super::msgpack::encode(record),
        };
        encoded
            .map(Bytes::from)
            .map_err(|reason| WriteError::Encode {
                key: key.to_string(),
                reason,
            })
    }

    async fn read(&self, key: &str) -> Result<Current, WriteError> {
        let mut attempt = 0;
        loop {
            attempt += 1;
            match self.store.entry(key).await {
                Ok(None) => return Ok(Current::Absent { revision: 0 }),
                Ok(Some(entry)) => {
                    return Ok(match entry.operation {
                        Operation::Delete | Operation::Purge => Current::Absent {
                            revision: entry.revision,
                        },
                        Operation::Put => Current::Present {
                            revision: entry.revision,
                            value: decode(&entry.value),
                        },
                    });
                }
                Err(e) => {
                    if attempt >= MAX_TRANSIENT {
                        return Err(WriteError::Nats {
                            key: key.to_string(),
                            attempts: attempt,
                            source: Box::new(e),
                        });
                    }
                    tracing::debug!(key, attempt, error = %e, "read failed, retrying");
                    tokio::time::sleep(backoff(attempt)).await;
                }
            }
        }
    }

    /// Compare-and-set: succeeds only while the key's last revision is
    /// `revision` (0: the key has never been written).
    async fn update(&self, key: &str, body: Bytes, revision: u64) -> Result<(), UpdateOutcome> {
        let mut attempt = 0;
        loop {
            attempt += 1;
            match self.store.update(key, body.clone(), revision).await {
                Ok(_) => return Ok(()),
                Err(e) if e.kind() == UpdateErrorKind::WrongLastRevision => {
                    return Err(UpdateOutcome::Conflicted);
                }
                Err(e) => {
                    if attempt >= MAX_TRANSIENT {
                        return Err(UpdateOutcome::Failed(WriteError::Nats {
                            key: key.to_string(),
                            attempts: attempt,
                            source: Box::new(e),
                        }));
                    }
                    // A lost ack may hide a write that landed: the retry then
                    // conflicts, and the re-read decides on what is stored.
                    tracing::debug!(key, attempt, error = %e, "write failed, retrying");
                    tokio::time::sleep(backoff(attempt)).await;
                }
            }
        }
    }
}

/// Why a compare-and-set did not land.
enum UpdateOutcome {
    /// Another writer changed the key since it was read.
    Conflicted,
    Failed(WriteError),
}

fn jitter(round: u32) -> Duration {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    let ceiling_us = 100u32 << round.min(7);
    Duration::from_micros(u64::from(nanos % ceiling_us))
}

fn backoff(attempt: u32) -> Duration {
    Duration::from_millis((50u64 << attempt.min(6)).min(3_000))
}

fn log_skip(key: &str, outcome: Outcome) {
    match outcome {
        Outcome::SkippedDeleted => {
            tracing::info!(key, "skipped: the stored entry is soft-deleted")
        }
        Outcome::SkippedNewer => {
            tracing::info!(key, "skipped: the stored entry is newer")
        }
        _ => tracing::trace!(key, "unchanged"),
    }
}

/// Decodes a stored value: a JSON object, or MessagePack (the old target's option).
pub fn decode(value: &[u8]) -> Option<Map<String, Value>> {
    let first = value.iter().find(|b| !b.is_ascii_whitespace())?;
    if *first == b'{'
        && let Ok(map) = serde_json::from_slice::<Map<String, Value>>(value)
    {
        return Some(map);
    }
    super::msgpack::decode(value)
}

/// A stored value is soft-deleted when `_sdc_deleted_at` is present, non-null and not "".
pub fn is_soft_deleted(value: &Map<String, Value>) -> bool {
    match value.get("_sdc_deleted_at") {
        None | Some(Value::Null) => false,
        Some(Value::String(s)) => !s.is_empty(),
        Some(_) => true,
    }
}

fn without_metadata(value: &Map<String, Value>) -> impl Iterator<Item = (&String, &Value)> {
    value.iter().filter(|(k, _)| !k.starts_with("_sdc_"))
}

fn same_payload(a: &Map<String, Value>, b: &Map<String, Value>) -> bool {
    let count_a = without_metadata(a).count();
    count_a == without_metadata(b).count() && without_metadata(a).all(|(k, v)| b.get(k) == Some(v))
}

/// The decision table of SPEC §3.2.
fn decide(
    current: &Current,
    ts_field: Option<&str>,
    incoming_ts: Option<Instant>,
    incoming: &Map<String, Value>,
    mode: RefreshMode,
) -> Decision {
    let (revision, stored) = match current {
        Current::Absent { revision } => {
            return Decision::Write {
                revision: *revision,
                outcome: Outcome::Created,
            };
        }
        Current::Present {
            revision,
            value: None,
        } => {
            return Decision::Write {
                revision: *revision,
                outcome: Outcome::Updated,
            };
        }
        Current::Present {
            revision,
            value: Some(value),
        } => (*revision, value),
    };
    let update = Decision::Write {
        revision,
        outcome: Outcome::Updated,
    };
    if is_soft_deleted(stored) {
        return Decision::Skip(Outcome::SkippedDeleted);
    }
    if mode == RefreshMode::Full {
        return update;
    }
    let by_payload = || {
        if same_payload(stored, incoming) {
            Decision::Skip(Outcome::Unchanged)
        } else {
            update
        }
    };
    let Some(field) = ts_field else {
        return by_payload();
    };
    let stored_ts = timestamp::from_json(stored.get(field));
    match (stored_ts, incoming_ts) {
        (Some(stored_ts), Some(incoming_ts)) => {
            if stored_ts > incoming_ts {
                Decision::Skip(Outcome::SkippedNewer)
            } else if stored_ts == incoming_ts && mode == RefreshMode::Newer {
                Decision::Skip(Outcome::Unchanged)
            } else {
                update
            }
        }
        // The record cannot prove it is newer than a timestamped entry.
        (Some(_), None) => Decision::Skip(Outcome::SkippedNewer),
        (None, Some(_)) => update,
        (None, None) => by_payload(),
    }
}

fn now_rfc3339() -> String {
    chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Micros, true)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn map(v: Value) -> Map<String, Value> {
        match v {
            Value::Object(m) => m,
            _ => panic!("not an object"),
        }
    }

    fn present(v: Value) -> Current {
        Current::Present {
            revision: 7,
            value: Some(map(v)),
        }
    }

    fn decide_ts(current: &Current, incoming: Value, mode: RefreshMode) -> Decision {
        let incoming = map(incoming);
        let ts = timestamp::from_json(incoming.get("ts"));
        decide(current, Some("ts"), ts, &incoming, mode)
    }

    const UPDATE: Decision = Decision::Write {
        revision: 7,
        outcome: Outcome::Updated,
    };

    #[test]
    fn absent_creates_over_nothing_or_a_marker() {
        let rec = json!({"ts": "2024-01-01T00:00:00Z"});
        assert_eq!(
            decide_ts(
                &Current::Absent { revision: 0 },
                rec.clone(),
                RefreshMode::Newer
            ),
            Decision::Write {
                revision: 0,
                outcome: Outcome::Created
            }
        );
        assert_eq!(
            decide_ts(&Current::Absent { revision: 12 }, rec, RefreshMode::Newer),
            Decision::Write {
                revision: 12,
                outcome: Outcome::Created
            }
        );
    }

    #[test]
    fn soft_deleted_entry_is_kept_in_every_mode() {
        let stored = present(
            json!({"ts": "2020-01-01T00:00:00Z", "_sdc_deleted_at": "2024-01-01T00:00:00Z"}),
        );
        for mode in [RefreshMode::Newer, RefreshMode::Same, RefreshMode::Full] {
            assert_eq!(
                decide_ts(&stored, json!({"ts": "2030-01-01T00:00:00Z"}), mode),
                Decision::Skip(Outcome::SkippedDeleted)
            );
        }
        // null and "" do not mark a deletion
        for marker in [Value::Null, json!("")] {
            let stored = present(json!({"ts": "2020-01-01T00:00:00Z", "_sdc_deleted_at": marker}));
            assert_eq!(
                decide_ts(
                    &stored,
                    json!({"ts": "2030-01-01T00:00:00Z"}),
                    RefreshMode::Newer
                ),
                UPDATE
            );
        }
    }

    #[test]
    fn timestamps_decide_as_instants() {
        let stored = present(json!({"ts": "2024-03-03T09:15:30.5+05:30"}));
        assert_eq!(
            decide_ts(
                &stored,
                json!({"ts": "2024-03-03T03:45:30.400000+00:00"}),
                RefreshMode::Newer
            ),
            Decision::Skip(Outcome::SkippedNewer)
        );
        assert_eq!(
            decide_ts(
                &stored,
                json!({"ts": "2024-03-03 03:45:30.5"}),
                RefreshMode::Newer
            ),
            Decision::Skip(Outcome::Unchanged)
        );
        assert_eq!(
            decide_ts(
                &stored,
                json!({"ts": "2024-03-03 03:45:30.5"}),
                RefreshMode::Same
            ),
            UPDATE
        );
        assert_eq!(
            decide_ts(
                &stored,
                json!({"ts": "2024-03-03T03:45:31Z"}),
                RefreshMode::Newer
            ),
            UPDATE
        );
        assert_eq!(
            decide_ts(
                &stored,
                json!({"ts": "2000-01-01T00:00:00Z"}),
                RefreshMode::Full
            ),
            UPDATE
        );
    }

    #[test]
    fn record_without_valid_timestamp_never_replaces_a_timestamped_entry() {
        let stored = present(json!({"ts": "2024-01-01T00:00:00Z"}));
        for ts in [Value::Null, json!("not a date")] {
            assert_eq!(
                decide_ts(&stored, json!({"ts": ts}), RefreshMode::Newer),
                Decision::Skip(Outcome::SkippedNewer)
            );
        }
        let untimed = present(json!({"ts": null, "a": 1}));
        assert_eq!(
            decide_ts(
                &untimed,
                json!({"ts": "2024-01-01T00:00:00Z", "a": 1}),
                RefreshMode::Newer
            ),
            UPDATE
        );
        assert_eq!(
            decide_ts(&untimed, json!({"ts": null, "a": 1}), RefreshMode::Newer),
            Decision::Skip(Outcome::Unchanged)
        );
    }

    #[test]
    fn untimed_streams_compare_payloads_without_metadata() {
        let stored = present(json!({"a": 1, "b": [1, 2], "_sdc_received_at": "x"}));
        let same = map(json!({"a": 1, "b": [1, 2], "_sdc_extracted_at": "y"}));
        let differs = map(json!({"a": 1, "b": [2, 1]}));
        let more = map(json!({"a": 1, "b": [1, 2], "c": null}));
        assert_eq!(
            decide(&stored, None, None, &same, RefreshMode::Newer),
            Decision::Skip(Outcome::Unchanged)
        );
        assert_eq!(
            decide(&stored, None, None, &differs, RefreshMode::Newer),
            UPDATE
        );
        assert_eq!(
            decide(&stored, None, None, &more, RefreshMode::Newer),
            UPDATE
        );
    }

    #[test]
    fn undecodable_entry_is_overwritten() {
        let cur = Current::Present {
            revision: 7,
            value: None,
        };
        assert_eq!(
            decide_ts(
                &cur,
                json!({"ts": "2024-01-01T00:00:00Z"}),
                RefreshMode::Newer
            ),
            UPDATE
        );
        assert!(decode(b"").is_none());
        assert!(decode(b"not json").is_none());
    }

    #[test]
    fn msgpack_values_are_read() {
        let v = map(json!({"a": "b", "n": 3}));
        let packed = crate::kv::msgpack::encode(&v).unwrap();
        assert_eq!(decode(&packed), Some(v));
    }

    #[test]
    fn refresh_modes_parse_strictly() {
        assert_eq!("all".parse::<RefreshMode>(), Ok(RefreshMode::Full));
        assert_eq!("same".parse::<RefreshMode>(), Ok(RefreshMode::Same));
        assert!("NEWER".parse::<RefreshMode>().is_err());
    }
}
