//! The Singer target loop: stdin → guarded KV writes, STATE → stdout once
//! everything before it is durably written.

use std::collections::{HashMap, VecDeque};
use std::io::Write;
use std::sync::Arc;

use serde::Serialize;
use serde_json::value::RawValue;
use serde_json::{Map, Value};

use super::input::{self, Origin};
use super::message::Message;
use crate::kv::key;
use crate::kv::timestamp;
use crate::kv::{Body, Completion, Counters, GuardedWriter, WriteQueue, WriteRequest};

/// Timestamp fields recognised when a SCHEMA names no `bookmark_properties`
/// (FULL_TABLE streams): the v1 replication keys, in order of preference.
const KNOWN_TIMESTAMPS: &[&str] = &[
    "lastmodifieddate",
    "systemmodstamp",
    "SystemModstamp",
    "LastModifiedDate",
    "updated_at",
    "modified_at",
    "last_modified_at",
    "last_modified_time",
    "date_modified",
];

/// A key property value, as raw JSON text or as a value.
enum RawKey<'a> {
    Raw(&'a RawValue),
    Value(Value),
}

impl RawKey<'_> {
    /// Key text as `kv::key::key_text` renders it: strings as they are,
    /// numbers with their digits, booleans as words; null is absent.
    fn text(&self) -> Option<String> {
        match self {
            RawKey::Value(v) => key::key_text(v).map(|t| t.as_str().to_string()),
            RawKey::Raw(raw) => match raw.get() {
                "null" => None,
                text if text.starts_with('"') => serde_json::from_str::<String>(text).ok(),
                text => Some(text.to_string()),
            },
        }
    }

    fn json(&self) -> String {
        match self {
            RawKey::Raw(raw) => raw.get().to_string(),
            RawKey::Value(v) => v.to_string(),
        }
    }
}

/// What the target reads of a record without building it.
struct Picked<'a> {
    keys: Vec<Option<&'a RawValue>>,
    timestamp: Option<&'a RawValue>,
}

/// Picks the key properties and the timestamp field out of a record's text.
/// `None` sends the record down the slow path: keys with escapes, or `_sdc_*`
/// fields of its own (the spliced metadata would repeat them).
fn pick<'a>(
    record: &'a str,
    key_properties: &[String],
    ts_field: Option<&str>,
) -> Option<Picked<'a>> {
    use serde::de::{DeserializeSeed, IgnoredAny, MapAccess, Visitor};

    struct Seed<'k> {
        keys: &'k [String],
        ts: Option<&'k str>,
    }
    impl<'de> Visitor<'de> for Seed<'_> {
        type Value = Option<Picked<'de>>;
        fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
            f.write_str("a JSON object")
        }
        fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
            let mut picked = Picked {
                keys: vec![None; self.keys.len()],
                timestamp: None,
            };
            let mut own_metadata = false;
            while let Some(name) = map.next_key::<&'de str>()? {
                own_metadata |= name.starts_with("_sdc_");
                let key_at = self.keys.iter().position(|k| k == name);
                let is_ts = self.ts == Some(name);
                if key_at.is_some() || is_ts {
                    let raw: &'de RawValue = map.next_value()?;
                    if let Some(i) = key_at {
                        picked.keys[i] = Some(raw);
                    }
                    if is_ts {
                        picked.timestamp = Some(raw);
                    }
                } else {
                    map.next_value::<IgnoredAny>()?;
                }
            }
            Ok((!own_metadata).then_some(picked))
        }
    }
    impl<'de> DeserializeSeed<'de> for Seed<'_> {
        type Value = Option<Picked<'de>>;
        fn deserialize<D: serde::Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
            d.deserialize_map(self)
        }
    }
    let mut de = serde_json::Deserializer::from_str(record);
    let picked = Seed {
        keys: key_properties,
        ts: ts_field,
    }
    .deserialize(&mut de)
    .ok()??;
    de.end().ok()?;
    Some(picked)
}

/// Validation problems logged per stream before they are only counted.
const LOGGED_INVALID: u64 = 20;

/// A stream's counters: the writer's, and records not matching their schema.
#[derive(Debug, Default, Clone, Serialize, PartialEq, Eq)]
pub struct StreamCounters {
    #[serde(flatten)]
    pub written: Counters,
    pub invalid_record: u64,
}

struct StreamInfo {
    key_properties: Vec<String>,
    timestamp_field: Option<Arc<str>>,
    validator: Option<jsonschema::Validator>,
}

/// How a target run ended.
#[derive(Debug)]
pub struct TargetSummary {
    pub streams: Vec<(String, StreamCounters)>,
    /// The first input error, with where it was; reading stopped there.
    pub input_error: Option<String>,
    pub states_emitted: u64,
}

impl TargetSummary {
    pub fn failed(&self) -> bool {
        self.input_error.is_some() || self.streams.iter().any(|(_, c)| c.written.failed > 0)
    }

    pub fn table(&self) -> String {
        let mut out = format!("{:<40}", "stream");
        for h in Counters::HEADINGS.iter().chain(&["invalid_record"]) {
            out.push_str(&format!(" {h:>w$}", w = h.len().max(7)));
        }
        out.push('\n');
        for (name, c) in &self.streams {
            out.push_str(&format!("{name:<40}"));
            let values = c.written.columns().into_iter().chain([c.invalid_record]);
            for (h, v) in Counters::HEADINGS
                .iter()
                .chain(&["invalid_record"])
                .zip(values)
            {
                out.push_str(&format!(" {v:>w$}", w = h.len().max(7)));
            }
            out.push('\n');
        }
        out
    }
}

#[derive(Debug, thiserror::Error)]
pub enum TargetError {
    #[error("cannot write STATE to stdout: {0}")]
    Stdout(std::io::Error),
}

pub struct Target<W: Write> {
    queue: WriteQueue,
    key_prefix: String,
    validate: bool,
    streams: HashMap<String, StreamInfo>,
    counters: HashMap<String, StreamCounters>,
    order: Vec<String>,
    /// STATE messages waiting for the records before them: (sequence number
    /// of the next record at the time, value).
    pending_states: VecDeque<(u64, Value)>,
    last_emitted: Option<Value>,
    states_emitted: u64,
    out: W,
    done: Vec<Completion>,
    /// Where each record in flight came from, to name it if it fails.
    origins: HashMap<u64, Origin>,
}

impl<W: Write> Target<W> {
    pub fn new(
        writer: Arc<GuardedWriter>,
        in_flight: usize,
        key_prefix: String,
        validate: bool,
        out: W,
    ) -> Self {
        Self {
            queue: WriteQueue::new(writer, in_flight),
            key_prefix,
            validate,
            streams: HashMap::new(),
            counters: HashMap::new(),
            order: Vec::new(),
            pending_states: VecDeque::new(),
            last_emitted: None,
            states_emitted: 0,
            out,
            done: Vec::new(),
            origins: HashMap::new(),
        }
    }

    /// Consumes the whole input, then re-emits the latest written STATE.
    pub async fn run(
        mut self,
        input: Box<dyn std::io::Read + Send>,
    ) -> Result<TargetSummary, TargetError> {
        let mut items = input::spawn(input);
        let mut input_error = None;
        'input: while let Some(chunk) = items.recv().await {
            for item in chunk {
                let result = match item.message {
                    Ok(message) => self.handle(message, &item.origin).await,
                    Err(reason) => Err(reason),
                };
                if let Err(reason) = result {
                    let at = match &item.stream {
                        Some(s) => format!("{}, stream {s}", item.origin),
                        None => item.origin.to_string(),
                    };
                    input_error = Some(format!("{at}: {reason}"));
                    break 'input;
                }
            }
            self.queue.poll_ready(&mut self.done);
            self.tally();
            self.emit_ready()?;
        }
        drop(items);
        self.queue.drain(&mut self.done).await;
        self.tally();
        self.emit_ready()?;
        // The latest state once more, so the orchestrator has it last.
        if let Some(state) = self.last_emitted.clone() {
            self.print_state(&state)?;
        }
        Ok(TargetSummary {
            streams: self
                .order
                .iter()
                .map(|s| (s.clone(), self.counters.get(s).cloned().unwrap_or_default()))
                .collect(),
            input_error,
            states_emitted: self.states_emitted,
        })
    }

    async fn handle(&mut self, message: Message, origin: &Origin) -> Result<(), String> {
        match message {
            Message::Schema {
                stream,
                schema,
                key_properties,
                bookmark_properties,
            } => self.schema(stream, schema, key_properties, bookmark_properties),
            Message::Record {
                stream,
                record,
                time_extracted,
            } => self.record(stream, record, time_extracted, origin).await,
            Message::State { value } => {
                self.pending_states
                    .push_back((self.queue.next_seq(), value));
                Ok(())
            }
            Message::ActivateVersion { stream, version } => {
                // Versions would let a target hard-delete rows missing from a
                // new full sync; v1-objects keeps entries (deletions arrive as
                // soft deletions from CDC), so this is acknowledged only.
                tracing::debug!(%stream, %version, "ACTIVATE_VERSION accepted (no deletions are made)");
                Ok(())
            }
            Message::Batch { .. } => {
                Err("BATCH message reached the target loop unexpanded".to_string())
            }
            Message::Unknown { kind } => {
                tracing::warn!(%origin, kind, "unknown message type skipped");
                Ok(())
            }
        }
    }

    fn schema(
        &mut self,
        stream: String,
        schema: Value,
        key_properties: Vec<String>,
        bookmark_properties: Vec<String>,
    ) -> Result<(), String> {
        if !key::valid_stream_name(&stream) {
            return Err(format!(
                "stream name {stream:?} cannot be part of a NATS KV key"
            ));
        }
        if key_properties.is_empty() {
            return Err("SCHEMA has no key_properties: records could not be keyed".to_string());
        }
        let timestamp_field = bookmark_properties.first().cloned().or_else(|| {
            let props = schema.get("properties")?.as_object()?;
            KNOWN_TIMESTAMPS
                .iter()
                .find(|f| props.contains_key(**f))
                .map(|f| f.to_string())
        });
        let validator = if self.validate {
            Some(
                jsonschema::validator_for(&schema)
                    .map_err(|e| format!("SCHEMA is not a valid JSON schema: {e}"))?,
            )
        } else {
            None
        };
        tracing::debug!(%stream, ?key_properties, ?timestamp_field, "schema");
        if !self.counters.contains_key(&stream) {
            self.order.push(stream.clone());
            self.counters
                .insert(stream.clone(), StreamCounters::default());
        }
        self.streams.insert(
            stream,
            StreamInfo {
                key_properties,
                timestamp_field: timestamp_field.map(Arc::from),
                validator,
            },
        );
        Ok(())
    }

    async fn record(
        &mut self,
        stream: String,
        record: Box<RawValue>,
        time_extracted: Option<String>,
        origin: &Origin,
    ) -> Result<(), String> {
        let Some(info) = self.streams.get(&stream) else {
            return Err("RECORD before the stream's SCHEMA".to_string());
        };
        let counters = self.counters.entry(stream.clone()).or_default();
        counters.written.read += 1;
        let extracted = time_extracted.unwrap_or_else(|| {
            chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Micros, true)
        });
        // The record goes to the bucket as the tap wrote it, with the metadata
        // spliced in; it is built into values only to be validated, or when it
        // carries `_sdc_*` fields of its own (or keys this fast reader skips).
        let fast = if info.validator.is_none() {
            pick(
                record.get(),
                &info.key_properties,
                info.timestamp_field.as_deref(),
            )
        } else {
            None
        };
        let (key_values, timestamp, body) = match fast {
            Some(picked) => {
                let mut key_values = Vec::with_capacity(info.key_properties.len());
                for (p, raw) in info.key_properties.iter().zip(&picked.keys) {
                    match raw {
                        None => return Err(format!("record lacks key property {p:?}")),
                        Some(raw) => key_values.push(RawKey::Raw(raw)),
                    }
                }
                let timestamp = picked.timestamp.and_then(|raw| {
                    serde_json::from_str::<std::borrow::Cow<str>>(raw.get())
                        .ok()
                        .and_then(|t| timestamp::parse(&t))
                });
                let mut body = Vec::with_capacity(record.get().len() + 128);
                body.extend_from_slice(record.get().trim_end().as_bytes());
                body.pop(); // the closing brace, checked when the message was parsed
                if body.trim_ascii_end().last() != Some(&b'{') {
                    body.push(b',');
                }
                body.extend_from_slice(b"\"_sdc_extracted_at\":");
                let _ = serde_json::to_writer(&mut body, &extracted);
                body.push(b'}');
                (key_values, timestamp, Body::Json(body))
            }
            None => {
                let mut fields: Map<String, Value> = serde_json::from_str(record.get())
                    .map_err(|e| format!("record is not a JSON object: {e}"))?;
                for p in &info.key_properties {
                    if !fields.contains_key(p) {
                        return Err(format!("record lacks key property {p:?}"));
                    }
                }
                if let Some(validator) = &info.validator {
                    let value = Value::Object(fields);
                    if let Some(error) = validator.iter_errors(&value).next() {
                        counters.invalid_record += 1;
                        if counters.invalid_record <= LOGGED_INVALID {
                            tracing::warn!(%origin, %stream, at = %error.instance_path(), error = %error, "record does not match its schema (written anyway)");
                        }
                    }
                    let Value::Object(back) = value else {
                        unreachable!("wrapped an object above")
                    };
                    fields = back;
                }
                let key_values = info
                    .key_properties
                    .iter()
                    .map(|p| RawKey::Value(fields.get(p).cloned().unwrap_or(Value::Null)))
                    .collect();
                fields.insert("_sdc_extracted_at".to_string(), Value::String(extracted));
                let timestamp = info
                    .timestamp_field
                    .as_deref()
                    .and_then(|f| timestamp::from_json(fields.get(f)));
                (key_values, timestamp, Body::Record(fields))
            }
        };
        let texts: Vec<Option<String>> = key_values.iter().map(RawKey::text).collect();
        let key = key::record_key(
            &self.key_prefix,
            &stream,
            info.key_properties
                .iter()
                .zip(&texts)
                .map(|(p, t)| (p.as_str(), t.as_deref())),
        );
        let key = match key {
            Ok(k) => k,
            Err(reason) => {
                counters.written.invalid_key += 1;
                let raw: Vec<String> = info
                    .key_properties
                    .iter()
                    .zip(&key_values)
                    .map(|(p, v)| format!("{p}={}", v.json()))
                    .collect();
                tracing::warn!(%origin, %stream, key_values = %raw.join(", "), %reason, "record not written: invalid key");
                return Ok(());
            }
        };
        let request = WriteRequest {
            key,
            timestamp_field: info.timestamp_field.clone(),
            timestamp,
            body,
        };
        let seq = self.queue.submit(request, &mut self.done).await;
        self.origins.insert(seq, origin.clone());
        Ok(())
    }

    fn tally(&mut self) {
        for completion in self.done.drain(..) {
            let stream = completion
                .key
                .strip_prefix(self.key_prefix.as_str())
                .and_then(|k| k.split_once('.'))
                .map(|(s, _)| s)
                .unwrap_or_default();
            let counters = self.counters.entry(stream.to_string()).or_default();
            let origin = self.origins.remove(&completion.seq);
            match completion.result {
                Ok(outcome) => counters.written.count(outcome),
                Err(e) => {
                    counters.written.failed += 1;
                    let at = origin.map(|o| o.to_string()).unwrap_or_default();
                    tracing::error!("{at}, stream {stream}: record failed: {e}");
                }
            }
        }
    }

    /// Prints the latest STATE whose records are all written.
    fn emit_ready(&mut self) -> Result<(), TargetError> {
        let confirmed = self.queue.confirmed();
        let mut ready = None;
        while self
            .pending_states
            .front()
            .is_some_and(|(seq, _)| *seq <= confirmed)
        {
            ready = self.pending_states.pop_front().map(|(_, v)| v);
        }
        if let Some(state) = ready {
            self.print_state(&state)?;
            self.last_emitted = Some(state);
        }
        Ok(())
    }

    fn print_state(&mut self, state: &Value) -> Result<(), TargetError> {
        let line = serde_json::to_string(state).map_err(|e| TargetError::Stdout(e.into()))?;
        writeln!(self.out, "{line}")
            .and_then(|()| self.out.flush())
            .map_err(TargetError::Stdout)?;
        self.states_emitted += 1;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keys(p: &Picked) -> Vec<Option<String>> {
        p.keys
            .iter()
            .map(|k| k.map(|r| r.get().to_string()))
            .collect()
    }

    #[test]
    fn pick_reads_keys_and_timestamp_from_the_text() {
        let key = vec!["a".to_string(), "b".to_string()];
        let p = pick(
            r#"{"b": 12.50, "x": {"a": 1}, "a": "k:1", "ts": "2024-01-01T00:00:00Z"}"#,
            &key,
            Some("ts"),
        )
        .unwrap();
        assert_eq!(
            keys(&p),
            vec![Some("\"k:1\"".to_string()), Some("12.50".to_string())]
        );
        assert_eq!(
            p.timestamp.map(|r| r.get()),
            Some("\"2024-01-01T00:00:00Z\"")
        );
        let missing = pick(r#"{"a": null}"#, &key, None).unwrap();
        assert_eq!(keys(&missing), vec![Some("null".to_string()), None]);
        // Own metadata, escaped keys and broken text take the slow path.
        assert!(pick(r#"{"a": 1, "_sdc_deleted_at": "x"}"#, &key, None).is_none());
        assert!(pick(r#"{"\u0061": 1}"#, &key, None).is_none());
        assert!(pick(r#"{"a": 1"#, &key, None).is_none());
    }

    #[test]
    fn raw_key_text_matches_the_value_rendering() {
        for text in [
            r#""abc""#,
            r#""a\"b""#,
            "12345678901234567890",
            "1.50",
            "true",
            "null",
        ] {
            let raw: Box<RawValue> = serde_json::from_str(text).unwrap();
            let value: Value = serde_json::from_str(text).unwrap();
            assert_eq!(
                RawKey::Raw(&raw).text(),
                RawKey::Value(value).text(),
                "{text}"
            );
        }
    }
}
