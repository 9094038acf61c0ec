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

/// A record's value on its way into the bucket, with its `_sdc_extracted_at`;
/// `_sdc_received_at` is added on write.
#[derive(Debug, Clone)]
pub enum Body {
    /// Fields, serialized on write.
    Record(Map<String, Value>),
    /// A JSON object the source serialized itself: the backfill's hot path,
    /// which never builds a map per row.
    Json(Vec<u8>),
}

/// One record on its way into the bucket.
#[derive(Debug, Clone)]
pub struct WriteRequest {
    pub key: String,
    /// The stream's timestamp field (replication key), if it has one.
    pub timestamp_field: Option<Arc<str>>,
    /// The record's own value of that field, when it is a valid timestamp.
    pub timestamp: Option<Instant>,
    pub body: Body,
}

impl WriteRequest {
    pub fn new(key: String, timestamp_field: Option<Arc<str>>, record: Map<String, Value>) -> Self {
        let timestamp = timestamp_field
            .as_deref()
            .and_then(|f| timestamp::from_json(record.get(f)));
        Self {
            key,
            timestamp_field,
            timestamp,
            body: Body::Record(record),
        }
    }
}

/// A record as the guard compares it with the stored value.
#[derive(Debug)]
enum Incoming {
    Record(Map<String, Value>),
    /// Only the value to be stored: decoded again if a payload comparison needs it.
    Encoded(Bytes),
}

impl Incoming {
    fn fields(&self) -> Option<std::borrow::Cow<'_, Map<String, Value>>> {
        match self {
            Incoming::Record(m) => Some(std::borrow::Cow::Borrowed(m)),
            Incoming::Encoded(bytes) => decode(bytes).map(std::borrow::Cow::Owned),
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
    /// A value, decoded only as far as a decision needs.
    Present { revision: u64, value: Bytes },
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Decision {
    Write {
        revision: u64,
        outcome: Outcome,
    },
    /// The stored value is empty or undecodable: replaced, with a warning.
    Overwrite {
        revision: u64,
    },
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
            timestamp: incoming_ts,
            body: incoming,
        } = request;
        let ts_field = timestamp_field.as_deref();
        let (body, incoming) = self.encode_received(&key, incoming)?;
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
            let decision = decide(&current, ts_field, incoming_ts, &incoming, self.mode);
            if !optimistic {
                self.note_absent(matches!(current, Current::Absent { .. }));
            }
            let (revision, outcome) = match decision {
                Decision::Skip(outcome) => {
                    log_skip(&key, outcome);
                    return Ok(outcome);
                }
                Decision::Write { revision, outcome } => (revision, outcome),
                Decision::Overwrite { revision } => {
                    tracing::warn!(key = %key, "overwriting an empty or undecodable entry");
                    (revision, Outcome::Updated)
                }
            };
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
                Current::Present { revision, value } => {
                    (revision, decode(&value).unwrap_or_default())
                }
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

    /// The value to store, with `_sdc_received_at` set to now, and the record
    /// as the guard compares it.
    fn encode_received(&self, key: &str, body: Body) -> Result<(Bytes, Incoming), WriteError> {
        let received = now_rfc3339();
        let not_object = || WriteError::Encode {
            key: key.to_string(),
            reason: "the serialized record is not a JSON object".to_string(),
        };
        let mut record = match (body, self.encoding) {
            (Body::Json(mut text), Encoding::Json) => {
                if !splice_received_at(&mut text, &received) {
                    return Err(not_object());
                }
                let bytes = Bytes::from(text);
                return Ok((bytes.clone(), Incoming::Encoded(bytes)));
            }
            (Body::Json(text), Encoding::MsgPack) => {
                serde_json::from_slice::<Map<String, Value>>(&text).map_err(|_| not_object())?
            }
            (Body::Record(record), _) => record,
        };
        record.insert("_sdc_received_at".to_string(), Value::String(received));
        let bytes = self.encode(key, &record)?;
        Ok((bytes, Incoming::Record(record)))
    }

    fn encode(&self, key: &str, record: &Map<String, Value>) -> Result<Bytes, WriteError> {
        let encoded = match self.encoding {
            Encoding::Json => {
                let mut out = Vec::with_capacity(1024);
                serde_json::to_writer(&mut out, record)
                    .map(|()| out)
                    .map_err(|e| e.to_string())
            }
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
                            value: entry.value,
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

/// Adds `_sdc_received_at` to a serialized JSON object in place, before its
/// closing brace, without parsing it again; false when it is not an object.
fn splice_received_at(text: &mut Vec<u8>, received: &str) -> bool {
    let end = text.trim_ascii_end().len();
    if end < 2 || text[end - 1] != b'}' || text.trim_ascii_start().first() != Some(&b'{') {
        return false;
    }
    text.truncate(end - 1);
    if text.trim_ascii_end().last() != Some(&b'{') {
        text.push(b',');
    }
    text.extend_from_slice(b"\"_sdc_received_at\":\"");
    text.extend_from_slice(received.as_bytes());
    text.extend_from_slice(b"\"}");
    true
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

/// What the guard reads of a stored value: whether it is soft-deleted, and
/// its timestamp field.
struct Peek {
    deleted: bool,
    timestamp: Option<Instant>,
}

/// Reads only the two fields the guard decides on, without building the
/// value; MessagePack and unusual JSON (escaped keys) are decoded in full.
/// `None` when the value is empty or cannot be decoded.
fn peek(value: &[u8], ts_field: Option<&str>) -> Option<Peek> {
    use serde::de::{DeserializeSeed, IgnoredAny, MapAccess, Visitor};
    use serde_json::value::RawValue;

    struct Fields<'f>(Option<&'f str>);
    impl<'de> Visitor<'de> for Fields<'_> {
        type Value = (Option<&'de RawValue>, Option<&'de RawValue>);
        fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
            f.write_str("a JSON object")
        }
        fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
            let (mut deleted, mut ts) = (None, None);
            while let Some(key) = map.next_key::<&'de str>()? {
                if key == "_sdc_deleted_at" {
                    deleted = Some(map.next_value()?);
                } else if Some(key) == self.0 {
                    ts = Some(map.next_value()?);
                } else {
                    map.next_value::<IgnoredAny>()?;
                }
            }
            Ok((deleted, ts))
        }
    }
    impl<'de> DeserializeSeed<'de> for Fields<'_> {
        type Value = (Option<&'de RawValue>, Option<&'de RawValue>);
        fn deserialize<D: serde::Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
            d.deserialize_map(self)
        }
    }

    if value.trim_ascii_start().first() == Some(&b'{') {
        let mut de = serde_json::Deserializer::from_slice(value);
        if let Ok((deleted, ts)) = Fields(ts_field).deserialize(&mut de)
            && de.end().is_ok()
        {
            let deleted = deleted.is_some_and(|raw| !matches!(raw.get(), "null" | "\"\""));
            let timestamp = ts
                .and_then(|raw| serde_json::from_str::<std::borrow::Cow<str>>(raw.get()).ok())
                .and_then(|text| timestamp::parse(&text));
            return Some(Peek { deleted, timestamp });
        }
    }
    let map = decode(value)?;
    Some(Peek {
        deleted: is_soft_deleted(&map),
        timestamp: ts_field.and_then(|f| timestamp::from_json(map.get(f))),
    })
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
    incoming: &Incoming,
    mode: RefreshMode,
) -> Decision {
    let (revision, stored) = match current {
        Current::Absent { revision } => {
            return Decision::Write {
                revision: *revision,
                outcome: Outcome::Created,
            };
        }
        Current::Present { revision, value } => (*revision, value),
    };
    let Some(peek) = peek(stored, ts_field) else {
        return Decision::Overwrite { revision };
    };
    let update = Decision::Write {
        revision,
        outcome: Outcome::Updated,
    };
    if peek.deleted {
        return Decision::Skip(Outcome::SkippedDeleted);
    }
    if mode == RefreshMode::Full {
        return update;
    }
    let by_payload = || {
        let same = decode(stored)
            .zip(incoming.fields())
            .is_some_and(|(stored, fields)| same_payload(&stored, &fields));
        if same {
            Decision::Skip(Outcome::Unchanged)
        } else {
            update
        }
    };
    if ts_field.is_none() {
        return by_payload();
    }
    let stored_ts = peek.timestamp;
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
            value: Bytes::from(serde_json::to_vec(&v).unwrap()),
        }
    }

    fn decide_ts(current: &Current, incoming: Value, mode: RefreshMode) -> Decision {
        let incoming = map(incoming);
        let ts = timestamp::from_json(incoming.get("ts"));
        decide(current, Some("ts"), ts, &Incoming::Record(incoming), mode)
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
        let same = Incoming::Record(map(json!({"a": 1, "b": [1, 2], "_sdc_extracted_at": "y"})));
        let differs = Incoming::Record(map(json!({"a": 1, "b": [2, 1]})));
        let more = Incoming::Encoded(Bytes::from_static(br#"{"a": 1, "b": [1, 2], "c": null}"#));
        let same_json = Incoming::Encoded(Bytes::from_static(br#"{"a":1,"b":[1,2]}"#));
        assert_eq!(
            decide(&stored, None, None, &same_json, RefreshMode::Newer),
            Decision::Skip(Outcome::Unchanged)
        );
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
    fn serialized_bodies_get_received_at_spliced_in() {
        let spliced = |text: &str| -> Map<String, Value> {
            let mut bytes = text.as_bytes().to_vec();
            assert!(splice_received_at(&mut bytes, "2024-01-01T00:00:00Z"));
            serde_json::from_slice(&bytes).unwrap()
        };
        let one = spliced(r#"{"a":1,"_sdc_extracted_at":"x"} "#);
        assert_eq!(one["a"], json!(1));
        assert_eq!(one["_sdc_received_at"], json!("2024-01-01T00:00:00Z"));
        assert_eq!(spliced("{}").len(), 1);
        assert_eq!(spliced("{ }").len(), 1);
        assert!(!splice_received_at(&mut b"[1]".to_vec(), "x"));
        assert!(!splice_received_at(&mut b"}".to_vec(), "x"));
    }

    #[test]
    fn undecodable_entry_is_overwritten() {
        for raw in [&b""[..], b"not json", b"{\"a\": 1", b"\x01{"] {
            let cur = Current::Present {
                revision: 7,
                value: Bytes::copy_from_slice(raw),
            };
            assert_eq!(
                decide_ts(
                    &cur,
                    json!({"ts": "2024-01-01T00:00:00Z"}),
                    RefreshMode::Newer
                ),
                Decision::Overwrite { revision: 7 },
                "{raw:?}"
            );
        }
        assert!(decode(b"").is_none());
        assert!(decode(b"not json").is_none());
    }

    #[test]
    fn peek_reads_deletion_and_timestamp_from_every_encoding() {
        let cases: [(&[u8], bool, bool); 6] = [
            (
                br#"{"ts":"2024-01-01T00:00:00Z","_sdc_deleted_at":null}"#,
                false,
                true,
            ),
            (
                br#"{"_sdc_deleted_at":"","ts":"2024-01-01T00:00:00Z"}"#,
                false,
                true,
            ),
            (
                br#"{"_sdc_deleted_at":"2024-01-02T00:00:00Z","big":{"x":[1,2]}}"#,
                true,
                false,
            ),
            // An escaped key makes the borrowing reader give way to a full decode.
            (
                br#"{"t\u0073":"2024-01-01T00:00:00Z","_sdc_deleted_at":"x"}"#,
                true,
                true,
            ),
            (br#"{"ts":"2024-01-01T00:00:00\u005a"}"#, false, true),
            (br#"{"ts":1704067200}"#, false, false),
        ];
        for (raw, deleted, has_ts) in cases {
            let p =
                peek(raw, Some("ts")).unwrap_or_else(|| panic!("{}", String::from_utf8_lossy(raw)));
            assert_eq!(p.deleted, deleted, "{}", String::from_utf8_lossy(raw));
            assert_eq!(
                p.timestamp.is_some(),
                has_ts,
                "{}",
                String::from_utf8_lossy(raw)
            );
        }
        let packed = crate::kv::msgpack::encode(&map(
            json!({"ts": "2024-01-01T00:00:00Z", "_sdc_deleted_at": "y"}),
        ))
        .unwrap();
        let p = peek(&packed, Some("ts")).unwrap();
        assert!(p.deleted && p.timestamp.is_some());
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
