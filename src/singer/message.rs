//! Singer messages, one JSON object per line, as real taps write them.

use serde::Deserialize;
use serde_json::Value;
use serde_json::value::RawValue;

/// A message as it appears on the wire; which fields matter depends on `type`.
#[derive(Debug, Deserialize)]
struct Wire {
    #[serde(rename = "type")]
    kind: Option<String>,
    stream: Option<String>,
    /// Kept as text: most records are stored as they came, never built into values.
    record: Option<Box<RawValue>>,
    schema: Option<Value>,
    key_properties: Option<Vec<String>>,
    bookmark_properties: Option<Vec<String>>,
    time_extracted: Option<String>,
    value: Option<Value>,
    version: Option<Value>,
    encoding: Option<BatchEncoding>,
    manifest: Option<Vec<String>>,
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
pub struct BatchEncoding {
    pub format: String,
    #[serde(default)]
    pub compression: Option<String>,
}

#[derive(Debug)]
pub enum Message {
    Schema {
        stream: String,
        schema: Value,
        key_properties: Vec<String>,
        bookmark_properties: Vec<String>,
    },
    Record {
        stream: String,
        /// A JSON object, as the tap wrote it.
        record: Box<RawValue>,
        time_extracted: Option<String>,
    },
    State {
        value: Value,
    },
    ActivateVersion {
        stream: String,
        version: Value,
    },
    Batch {
        stream: String,
        encoding: BatchEncoding,
        manifest: Vec<String>,
    },
    /// A type this target does not know: warned about and skipped.
    Unknown {
        kind: String,
    },
}

/// Why a line is not a usable message; the caller adds line number and stream.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum MessageError {
    #[error("not valid JSON ({0}); the line may be truncated")]
    Json(String),
    #[error("message has no `type`")]
    NoType,
    #[error("{kind} message lacks `{field}`")]
    Missing {
        kind: &'static str,
        field: &'static str,
    },
    #[error("{kind} message: `{field}` must be {expected}")]
    Invalid {
        kind: &'static str,
        field: &'static str,
        expected: &'static str,
    },
}

impl Message {
    pub fn parse(line: &str) -> Result<Message, MessageError> {
        let wire: Wire =
            serde_json::from_str(line).map_err(|e| MessageError::Json(e.to_string()))?;
        let kind = wire.kind.ok_or(MessageError::NoType)?;
        // Type names are matched case-insensitively, as the Singer SDK does.
        match kind.to_ascii_uppercase().as_str() {
            "SCHEMA" => Ok(Message::Schema {
                stream: require("SCHEMA", "stream", wire.stream)?,
                schema: require("SCHEMA", "schema", wire.schema)?,
                key_properties: wire.key_properties.unwrap_or_default(),
                bookmark_properties: wire.bookmark_properties.unwrap_or_default(),
            }),
            "RECORD" => {
                let record = require("RECORD", "record", wire.record)?;
                if !record.get().starts_with('{') {
                    return Err(MessageError::Invalid {
                        kind: "RECORD",
                        field: "record",
                        expected: "an object",
                    });
                }
                Ok(Message::Record {
                    stream: require("RECORD", "stream", wire.stream)?,
                    record,
                    time_extracted: wire.time_extracted,
                })
            }
            "STATE" => Ok(Message::State {
                value: require("STATE", "value", wire.value)?,
            }),
            "ACTIVATE_VERSION" => Ok(Message::ActivateVersion {
                stream: require("ACTIVATE_VERSION", "stream", wire.stream)?,
                version: require("ACTIVATE_VERSION", "version", wire.version)?,
            }),
            "BATCH" => Ok(Message::Batch {
                stream: require("BATCH", "stream", wire.stream)?,
                encoding: require("BATCH", "encoding", wire.encoding)?,
                manifest: require("BATCH", "manifest", wire.manifest)?,
            }),
            _ => Ok(Message::Unknown { kind }),
        }
    }
}

fn require<T>(
    kind: &'static str,
    field: &'static str,
    value: Option<T>,
) -> Result<T, MessageError> {
    value.ok_or(MessageError::Missing { kind, field })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_each_type_case_insensitively() {
        assert!(matches!(
            Message::parse(r#"{"type":"record","stream":"s","record":{"a":1}}"#),
            Ok(Message::Record { .. })
        ));
        assert!(matches!(
            Message::parse(r#"{"type":"Schema","stream":"s","schema":{},"key_properties":["a"]}"#),
            Ok(Message::Schema { .. })
        ));
        assert!(matches!(
            Message::parse(r#"{"type":"STATE","value":{}}"#),
            Ok(Message::State { .. })
        ));
        assert!(matches!(
            Message::parse(r#"{"type":"ACTIVATE_VERSION","stream":"s","version":1}"#),
            Ok(Message::ActivateVersion { .. })
        ));
        assert!(matches!(
            Message::parse(
                r#"{"type":"BATCH","stream":"s","encoding":{"format":"jsonl","compression":"gzip"},"manifest":["file:///x"]}"#
            ),
            Ok(Message::Batch { .. })
        ));
        assert!(matches!(
            Message::parse(r#"{"type":"METRIC","value":{}}"#),
            Ok(Message::Unknown { .. })
        ));
    }

    #[test]
    fn reports_what_is_wrong() {
        assert!(matches!(
            Message::parse(r#"{"type":"RECORD","stream":"s","rec"#),
            Err(MessageError::Json(_))
        ));
        assert!(matches!(
            Message::parse("not json"),
            Err(MessageError::Json(_))
        ));
        assert_eq!(
            Message::parse(r#"{"stream":"s"}"#).unwrap_err(),
            MessageError::NoType
        );
        assert_eq!(
            Message::parse(r#"{"type":"RECORD","stream":"s"}"#).unwrap_err(),
            MessageError::Missing {
                kind: "RECORD",
                field: "record"
            }
        );
        assert!(matches!(
            Message::parse(r#"{"type":"RECORD","stream":"s","record":[1]}"#),
            Err(MessageError::Invalid { .. })
        ));
    }

    #[test]
    fn numbers_stay_lossless() {
        let Ok(Message::Record { record, .. }) = Message::parse(
            r#"{"type":"RECORD","stream":"s","record":{"n":12345678901234567890123456789012345678,"f":0.51000000000000000000}}"#,
        ) else {
            panic!("not a record")
        };
        assert_eq!(
            record.get(),
            r#"{"n":12345678901234567890123456789012345678,"f":0.51000000000000000000}"#
        );
    }
}
