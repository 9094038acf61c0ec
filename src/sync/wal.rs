//! WAL ingest: the PostgreSQL change feed that wal-listener publishes into
//! JetStream, written into the bucket through the guarded writer.
//!
//! The envelope, as wal-listener (github.com/ihippik/wal-listener,
//! `internal/publisher/event.go`) marshals its `Event`:
//!
//! ```json
//! {"id": "<uuid>", "schema": "platform", "table": "community__c",
//!  "action": "INSERT" | "UPDATE" | "DELETE" | "TRUNCATE",
//!  "data": {...new row...}, "dataOld": {...old row...},
//!  "commitTime": "2024-06-01T12:34:56.123456Z"}
//! ```
//!
//! - `commitTime` is a Go `time.Time`: RFC 3339 with nanoseconds, trailing
//!   zeros dropped (`RFC3339Nano`), `Z` or a `±hh:mm` offset.
//! - In `data`/`dataOld` (`internal/listener/transaction/data.go`,
//!   `Column.AssertValue`) timestamp and timestamptz columns are `time.Time`
//!   too, so they render like `commitTime`; a value wal-listener could not
//!   parse renders as the zero time `0001-01-01T00:00:00Z`. Booleans and
//!   integers are JSON booleans and numbers, jsonb is embedded JSON, and
//!   every other type (numeric, date, arrays …) is PostgreSQL's text form.
//!   The guard compares timestamps as instants, so these forms decide the
//!   same way as the backfill's.
//! - DELETE carries the old row in `dataOld` (all of it only under
//!   `REPLICA IDENTITY FULL`, else just the primary key) and `data` is `{}`.
//! - Forks add fields (gadget-inc/wal-listener: `lsn`, and `primaryKey`, the
//!   key *values* of the new row); they are ignored.
//!
//! The stream of an event is `<schema>-<table>`; its replication key and key
//! columns come from the streams config (key `sfid` unless configured).
//! `_sdc_extracted_at` is the commit time, normalized to RFC 3339 UTC.

use std::collections::HashMap;
use std::sync::Arc;

use serde::Deserialize;
use serde_json::{Map, Value};

use super::consumer::{Failure, Handler, Prepared, Rejection};
use crate::kv::key::{KeyText, key_text, record_key};
use crate::kv::{DeleteOutcome, GuardedWriter, Outcome, WriteError, WriteRequest};

/// How the events of one table are keyed and compared.
#[derive(Debug, Clone, PartialEq)]
pub struct StreamSpec {
    /// The replication key: the guard's timestamp field.
    pub timestamp_field: Option<Arc<str>>,
    /// Key columns, in order.
    pub key: Vec<String>,
}

/// Known tables by stream name (`<schema>-<table>`).
pub type Streams = HashMap<String, StreamSpec>;

/// The key column of a table whose config names none: LFX v1 tables are
/// Salesforce objects, and the CDC path has always keyed them by `sfid`.
pub const DEFAULT_KEY: &str = "sfid";

#[derive(Debug, Deserialize)]
struct Envelope {
    id: Option<Value>,
    schema: Option<String>,
    table: Option<String>,
    action: Option<String>,
    data: Option<Map<String, Value>>,
    #[serde(rename = "dataOld")]
    data_old: Option<Map<String, Value>>,
    #[serde(rename = "commitTime")]
    commit_time: Option<String>,
}

#[derive(Debug)]
pub enum WalJob {
    Upsert {
        stream: String,
        action: &'static str,
        key: String,
        timestamp_field: Option<Arc<str>>,
        /// `data` with `_sdc_extracted_at`.
        record: Map<String, Value>,
    },
    Delete {
        stream: String,
        key: String,
        /// The commit time: `_sdc_deleted_at` and `_sdc_extracted_at`.
        at: String,
    },
}

/// Turns events into jobs; everything but the write itself.
#[derive(Debug, Clone)]
pub struct WalParser {
    streams: Arc<Streams>,
    key_prefix: String,
}

impl WalParser {
    pub fn new(streams: Streams, key_prefix: String) -> Self {
        Self {
            streams: Arc::new(streams),
            key_prefix,
        }
    }

    pub fn prepare(&self, subject: &str, payload: &[u8]) -> Prepared<WalJob> {
        match self.parse(subject, payload) {
            Ok(prepared) => prepared,
            Err(rejection) => Prepared::Reject(rejection),
        }
    }

    fn parse(&self, subject: &str, payload: &[u8]) -> Result<Prepared<WalJob>, Rejection> {
        let event = envelope(payload)?;
        let action = event
            .action
            .as_deref()
            .filter(|a| !a.is_empty())
            .ok_or_else(|| missing("action"))?
            .to_ascii_uppercase();
        let action = match action.as_str() {
            "INSERT" => "insert",
            "UPDATE" => "update",
            "DELETE" => "delete",
            other => {
                // Entries are never removed by lfx-sync, and an unknown action
                // carries nothing the guard could apply.
                tracing::warn!(
                    subject,
                    action = other,
                    schema = event.schema.as_deref().unwrap_or_default(),
                    table = event.table.as_deref().unwrap_or_default(),
                    id = %event.id.as_ref().map(|id| id.to_string()).unwrap_or_default(),
                    "WAL event ignored: {}",
                    if other == "TRUNCATE" { "TRUNCATE does not remove entries" } else { "unknown action" }
                );
                return Ok(Prepared::Skip("ignored"));
            }
        };
        let schema = required(event.schema.as_deref(), "schema")?;
        let table = required(event.table.as_deref(), "table")?;
        let stream = format!("{schema}-{table}");
        let Some(spec) = self.streams.get(&stream) else {
            return Err(Rejection::new(
                "unknown_table",
                format!("table {schema}.{table} (stream {stream}) is not in the streams config"),
            ));
        };
        let commit_time = required(event.commit_time.as_deref(), "commitTime")?;
        let at = utc_rfc3339(commit_time).ok_or_else(|| {
            Rejection::new(
                "invalid_event",
                format!("commitTime {commit_time:?} is not an RFC 3339 timestamp"),
            )
        })?;
        if action == "delete" {
            let old = event.data_old.ok_or_else(|| missing("dataOld"))?;
            let key = self.key(&stream, spec, &old, "dataOld")?;
            return Ok(Prepared::Apply {
                key: key.clone(),
                job: WalJob::Delete { stream, key, at },
            });
        }
        let mut data = event.data.ok_or_else(|| missing("data"))?;
        let key = self.key(&stream, spec, &data, "data")?;
        data.insert("_sdc_extracted_at".to_string(), Value::String(at));
        Ok(Prepared::Apply {
            key: key.clone(),
            job: WalJob::Upsert {
                stream,
                action,
                key,
                timestamp_field: spec.timestamp_field.clone(),
                record: data,
            },
        })
    }

    fn key(
        &self,
        stream: &str,
        spec: &StreamSpec,
        row: &Map<String, Value>,
        field: &str,
    ) -> Result<String, Rejection> {
        let texts: Vec<Option<KeyText<'_>>> = spec
            .key
            .iter()
            .map(|column| row.get(column).and_then(key_text))
            .collect();
        let parts = spec
            .key
            .iter()
            .zip(&texts)
            .map(|(column, text)| (column.as_str(), text.as_ref().map(KeyText::as_str)));
        record_key(&self.key_prefix, stream, parts).map_err(|e| {
            let hint = if field == "dataOld" {
                " (a DELETE carries the whole old row only with REPLICA IDENTITY FULL)"
            } else {
                ""
            };
            Rejection::new("invalid_key", format!("{field}: {e}{hint}"))
        })
    }
}

fn envelope(payload: &[u8]) -> Result<Envelope, Rejection> {
    match payload.iter().find(|b| !b.is_ascii_whitespace()) {
        Some(b'{') => {}
        Some(_) if serde_json::from_slice::<serde::de::IgnoredAny>(payload).is_ok() => {
            return Err(Rejection::new(
                "invalid_event",
                "the event is not a JSON object",
            ));
        }
        _ => {
            return Err(Rejection::new(
                "malformed_json",
                "the event is not valid JSON",
            ));
        }
    }
    serde_json::from_slice(payload).map_err(|e| {
        let reason = if e.is_data() {
            "invalid_event"
        } else {
            "malformed_json"
        };
        Rejection::new(reason, e.to_string())
    })
}

fn missing(field: &str) -> Rejection {
    Rejection::new("missing_field", format!("the event has no {field}"))
}

fn required<'a>(value: Option<&'a str>, field: &str) -> Result<&'a str, Rejection> {
    value
        .filter(|v| !v.is_empty())
        .ok_or_else(|| missing(field))
}

/// An RFC 3339 timestamp as RFC 3339 UTC to the microsecond, the form of the
/// other `_sdc_*` fields.
fn utc_rfc3339(text: &str) -> Option<String> {
    chrono::DateTime::parse_from_rfc3339(text.trim())
        .ok()
        .map(|t| {
            t.with_timezone(&chrono::Utc)
                .to_rfc3339_opts(chrono::SecondsFormat::Micros, true)
        })
}

/// The WAL input: parsing plus the guarded writer.
pub struct WalHandler {
    parser: WalParser,
    writer: Arc<GuardedWriter>,
}

impl WalHandler {
    pub fn new(parser: WalParser, writer: Arc<GuardedWriter>) -> Self {
        Self { parser, writer }
    }
}

impl Handler for WalHandler {
    type Job = WalJob;

    /// wal-listener puts everything in the JSON body: headers carry nothing.
    fn prepare(
        &self,
        subject: &str,
        _headers: Option<&async_nats::HeaderMap>,
        payload: &[u8],
    ) -> Prepared<WalJob> {
        self.parser.prepare(subject, payload)
    }

    async fn apply(&self, job: WalJob) -> Result<&'static str, Failure> {
        match job {
            WalJob::Upsert {
                stream,
                action,
                key,
                timestamp_field,
                record,
            } => {
                let request = WriteRequest::new(key.clone(), timestamp_field, record);
                let outcome = self.writer.write(request).await.map_err(failure)?;
                let outcome = match outcome {
                    Outcome::Created => "created",
                    Outcome::Updated => "updated",
                    Outcome::Unchanged => "unchanged",
                    Outcome::SkippedNewer => "skipped_newer",
                    Outcome::SkippedDeleted => {
                        tracing::warn!(%key, %stream, action, "WAL change skipped: the entry is soft-deleted");
                        "skipped_deleted"
                    }
                };
                tracing::debug!(%key, %stream, action, outcome, "WAL event applied");
                Ok(outcome)
            }
            WalJob::Delete { stream, key, at } => {
                let outcome = self
                    .writer
                    .soft_delete(&key, &at, &at)
                    .await
                    .map_err(failure)?;
                let outcome = match outcome {
                    DeleteOutcome::SoftDeleted => "soft_deleted",
                    DeleteOutcome::AlreadyDeleted => "already_deleted",
                    DeleteOutcome::Absent => {
                        tracing::warn!(%key, %stream, "WAL delete of a key the bucket does not have: nothing to mark");
                        "delete_absent"
                    }
                };
                tracing::debug!(%key, %stream, action = "delete", outcome, "WAL event applied");
                Ok(outcome)
            }
        }
    }
}

fn failure(e: WriteError) -> Failure {
    match e {
        WriteError::TooLarge { .. } => {
            Failure::Permanent(Rejection::new("too_large", e.to_string()))
        }
        WriteError::Encode { .. } => {
            Failure::Permanent(Rejection::new("encode_failed", e.to_string()))
        }
        // NATS errors and conflicts that did not settle: later, it may work.
        other => Failure::Transient(other.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kv::timestamp;
    use serde_json::json;

    fn parser() -> WalParser {
        let spec = |ts: &str, key: &[&str]| StreamSpec {
            timestamp_field: Some(Arc::from(ts)),
            key: key.iter().map(|k| k.to_string()).collect(),
        };
        WalParser::new(
            Streams::from([
                (
                    "salesforce-project__c".to_string(),
                    spec("systemmodstamp", &[DEFAULT_KEY]),
                ),
                (
                    "platform-community__c".to_string(),
                    spec("systemmodstamp", &[DEFAULT_KEY]),
                ),
                (
                    "platform-organization_workspace_project".to_string(),
                    spec("updated_at", &["workspace_id", "project_id"]),
                ),
            ]),
            String::new(),
        )
    }

    fn prepare(event: &Value) -> Prepared<WalJob> {
        parser().prepare(
            "wal_listener.salesforce_project__c",
            event.to_string().as_bytes(),
        )
    }

    fn rejection(prepared: Prepared<WalJob>) -> Rejection {
        match prepared {
            Prepared::Reject(r) => r,
            Prepared::Apply { key, .. } => panic!("applied as {key}"),
            Prepared::Skip(o) => panic!("skipped as {o}"),
        }
    }

    /// An UPDATE as wal-listener marshals it (Go `encoding/json` of its
    /// `Event`: RFC3339Nano times, numeric as text, jsonb embedded).
    fn update() -> Value {
        json!({
            "id": "6f1c1d6e-8e7a-4c61-9d8e-2d7e5b9f6a10",
            "schema": "salesforce",
            "table": "project__c",
            "action": "UPDATE",
            "data": {
                "id": 1041,
                "sfid": "a0P5G00000ABCDEFGH",
                "name": "Cloud Native Computing Foundation",
                "status__c": "Active",
                "annual_budget__c": "1250000.00",
                "big_counter__c": 9007199254740993u64,
                "tags__c": "{cncf,cloud}",
                "metadata__c": {"tier": 1},
                "isdeleted": false,
                "start_date__c": "2015-12-01",
                "createddate": "2015-12-01T00:00:00Z",
                "systemmodstamp": "2024-06-01T12:34:56.123456Z"
            },
            "dataOld": {},
            "commitTime": "2024-06-01T14:34:56.1234567+02:00"
        })
    }

    #[test]
    fn an_update_becomes_a_guarded_upsert_of_data() {
        let Prepared::Apply { key, job } = prepare(&update()) else {
            panic!("not applied")
        };
        assert_eq!(key, "salesforce-project__c.a0P5G00000ABCDEFGH");
        let WalJob::Upsert {
            stream,
            action,
            key: job_key,
            timestamp_field,
            record,
        } = job
        else {
            panic!("not an upsert")
        };
        assert_eq!(
            (stream.as_str(), action),
            ("salesforce-project__c", "update")
        );
        assert_eq!(job_key, key);
        assert_eq!(timestamp_field.as_deref(), Some("systemmodstamp"));
        assert_eq!(
            timestamp::from_json(record.get("systemmodstamp")),
            timestamp::parse("2024-06-01T12:34:56.123456+00:00")
        );
        // Values pass through as wal-listener sent them, big integers exactly.
        assert_eq!(record["big_counter__c"].to_string(), "9007199254740993");
        assert_eq!(record["metadata__c"], json!({"tier": 1}));
        assert_eq!(
            record["_sdc_extracted_at"],
            json!("2024-06-01T12:34:56.123456Z")
        );
        assert_eq!(record.len(), 13);
    }

    #[test]
    fn a_delete_soft_deletes_the_key_of_data_old() {
        let mut event = update();
        event["action"] = json!("DELETE");
        event["dataOld"] = event["data"].take();
        event["data"] = json!({});
        let Prepared::Apply { key, job } = prepare(&event) else {
            panic!("not applied")
        };
        let WalJob::Delete {
            key: job_key, at, ..
        } = job
        else {
            panic!("not a delete")
        };
        assert_eq!(key, "salesforce-project__c.a0P5G00000ABCDEFGH");
        assert_eq!(job_key, key);
        assert_eq!(at, "2024-06-01T12:34:56.123456Z");

        // Without REPLICA IDENTITY FULL the old row has only the primary key.
        event["dataOld"] = json!({"id": 1041});
        let r = rejection(prepare(&event));
        assert_eq!(r.reason, "invalid_key");
        assert!(r.detail.contains("dataOld") && r.detail.contains("REPLICA IDENTITY FULL"));
    }

    #[test]
    fn fork_fields_and_configured_composite_keys() {
        let event = json!({
            "id": "0b5a", "schema": "platform", "table": "organization_workspace_project",
            "action": "insert", "lsn": 123456789, "primaryKey": ["w1", "proj:vllm"],
            "data": {"workspace_id": "w1", "project_id": "proj:vllm", "updated_at": "2024-06-01T00:00:00Z"},
            "dataOld": null,
            "commitTime": "2024-06-01T00:00:00Z"
        });
        let Prepared::Apply { key, .. } = prepare(&event) else {
            panic!("not applied")
        };
        assert_eq!(key, "platform-organization_workspace_project.w1-proj_vllm");

        let prefixed = WalParser::new((*parser().streams).clone(), "v1.".to_string());
        let Prepared::Apply { key, .. } = prefixed.prepare("s", update().to_string().as_bytes())
        else {
            panic!("not applied")
        };
        assert_eq!(key, "v1.salesforce-project__c.a0P5G00000ABCDEFGH");
    }

    #[test]
    fn truncate_and_unknown_actions_are_skipped() {
        for action in ["TRUNCATE", "MESSAGE"] {
            let mut event = update();
            event["action"] = json!(action);
            event["table"] = json!("not_configured");
            assert!(matches!(prepare(&event), Prepared::Skip("ignored")));
        }
    }

    #[test]
    fn bad_events_are_rejected_with_a_reason() {
        let p = parser();
        let raw = |text: &str| rejection(p.prepare("s", text.as_bytes()));
        assert_eq!(raw("not json").reason, "malformed_json");
        assert_eq!(raw("{\"schema\": \"x\"").reason, "malformed_json");
        assert_eq!(raw("").reason, "malformed_json");
        assert_eq!(raw("[1, 2]").reason, "invalid_event");
        assert_eq!(raw("{\"schema\": 7}").reason, "invalid_event");
        assert_eq!(raw("{\"data\": \"x\"}").reason, "invalid_event");

        let without = |field: &str| {
            let mut event = update();
            event.as_object_mut().unwrap().remove(field);
            rejection(prepare(&event))
        };
        for field in ["action", "schema", "table", "commitTime", "data"] {
            let r = without(field);
            assert_eq!(r.reason, "missing_field", "{field}");
            assert!(r.detail.contains(field), "{field}: {}", r.detail);
        }
        let mut event = update();
        event["data"] = Value::Null;
        assert_eq!(rejection(prepare(&event)).reason, "missing_field");

        let mut event = update();
        event["table"] = json!("opportunity");
        let r = rejection(prepare(&event));
        assert_eq!(r.reason, "unknown_table");
        assert!(r.detail.contains("salesforce-opportunity"), "{}", r.detail);

        let mut event = update();
        event["commitTime"] = json!("yesterday");
        assert_eq!(rejection(prepare(&event)).reason, "invalid_event");

        for bad_key in [json!(null), json!("has space"), json!("")] {
            let mut event = update();
            event["data"]["sfid"] = bad_key;
            assert_eq!(rejection(prepare(&event)).reason, "invalid_key");
        }
    }

    #[test]
    fn wal_listener_timestamps_are_instants_for_the_guard() {
        // Go's RFC3339Nano as wal-listener writes time.Time values, against
        // tap-postgres' rendering of the same instant.
        let tap = timestamp::parse("2024-06-01T12:34:56.120000+00:00").unwrap();
        for form in [
            "2024-06-01T12:34:56.12Z",
            "2024-06-01T14:34:56.12+02:00",
            "2024-06-01T12:34:56.120000000Z",
            "2024-06-01 12:34:56.12+00",
        ] {
            assert_eq!(timestamp::parse(form), Some(tap), "{form}");
        }
        assert!(timestamp::parse("2024-06-01T12:34:56Z").unwrap() < tap);
        // wal-listener's rendering of a value it could not parse: the oldest instant.
        assert!(timestamp::parse("0001-01-01T00:00:00Z").unwrap() < tap);
        assert_eq!(
            utc_rfc3339("2024-06-01T14:34:56.000000001+02:00").as_deref(),
            Some("2024-06-01T12:34:56.000000Z")
        );
        assert_eq!(utc_rfc3339("2024-06-01 12:34:56"), None);
    }
}
