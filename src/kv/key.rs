//! KV keys: `<key_prefix><stream>.<id>` (SPEC §2).

use std::fmt;

/// Why a record's key cannot be written. The record is counted as `invalid_key`
/// and reported; it is not a failure of the run.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InvalidKey {
    #[error("key property `{property}` is null or empty")]
    EmptyPart { property: String },
    #[error("key property `{property}` value {value:?} has a character NATS KV keys do not allow")]
    IllegalCharacter { property: String, value: String },
    #[error("key {key:?} would start with `$`")]
    Reserved { key: String },
    #[error("record has no key properties")]
    NoKeyProperties,
}

/// Characters NATS KV accepts in a key, minus `.`: a dot inside one id part
/// would make it look like a deeper subject level.
fn allowed_in_part(c: char) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, '-' | '/' | '_' | '=')
}

/// Builds the key of one record from its stream and key property values.
/// `parts` pairs each key property name with its value rendered as text.
pub fn record_key<'a, I>(prefix: &str, stream: &str, parts: I) -> Result<String, InvalidKey>
where
    I: IntoIterator<Item = (&'a str, Option<&'a str>)>,
{
    let mut key = String::with_capacity(prefix.len() + stream.len() + 32);
    key.push_str(prefix);
    key.push_str(stream);
    key.push('.');
    let mut any = false;
    for (i, (property, value)) in parts.into_iter().enumerate() {
        any = true;
        let value = match value {
            Some(v) if !v.is_empty() => v,
            _ => {
                return Err(InvalidKey::EmptyPart {
                    property: property.to_string(),
                });
            }
        };
        if i > 0 {
            key.push('-');
        }
        for c in value.chars() {
            match c {
                ':' => key.push('_'),
                c if allowed_in_part(c) => key.push(c),
                _ => {
                    return Err(InvalidKey::IllegalCharacter {
                        property: property.to_string(),
                        value: value.to_string(),
                    });
                }
            }
        }
    }
    if !any {
        return Err(InvalidKey::NoKeyProperties);
    }
    if key.starts_with('$') {
        return Err(InvalidKey::Reserved { key });
    }
    Ok(key)
}

/// Renders a JSON key property value as key text: strings as they are, numbers
/// with their exact digits, booleans as `true`/`false`; null is absent.
pub fn key_text(value: &serde_json::Value) -> Option<KeyText<'_>> {
    match value {
        serde_json::Value::Null => None,
        serde_json::Value::String(s) => Some(KeyText::Borrowed(s)),
        other => Some(KeyText::Owned(match other {
            serde_json::Value::Number(n) => n.to_string(),
            serde_json::Value::Bool(b) => b.to_string(),
            // Objects and arrays have no sensible key rendering; their JSON
            // text contains characters the key check rejects, with a clear message.
            v => v.to_string(),
        })),
    }
}

/// A key part's text, borrowed from the record where possible.
pub enum KeyText<'a> {
    Borrowed(&'a str),
    Owned(String),
}

impl KeyText<'_> {
    pub fn as_str(&self) -> &str {
        match self {
            KeyText::Borrowed(s) => s,
            KeyText::Owned(s) => s,
        }
    }
}

impl fmt::Display for KeyText<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Whether a stream name can stand in a key: the same characters as an id part.
pub fn valid_stream_name(name: &str) -> bool {
    !name.is_empty() && name.chars().all(allowed_in_part)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(parts: &[(&str, Option<&str>)]) -> Result<String, InvalidKey> {
        record_key("", "platform-project__c", parts.iter().copied())
    }

    #[test]
    fn single_and_composite_keys() {
        assert_eq!(
            key(&[("sfid", Some("a0P5G0000000000001"))]).unwrap(),
            "platform-project__c.a0P5G0000000000001"
        );
        assert_eq!(
            record_key(
                "",
                "platform-organization_workspace_project",
                [("ws", Some("w1")), ("project", Some("proj:vllm"))]
            )
            .unwrap(),
            "platform-organization_workspace_project.w1-proj_vllm"
        );
        assert_eq!(
            record_key("pre.", "s", [("id", Some("7"))]).unwrap(),
            "pre.s.7"
        );
    }

    #[test]
    fn rejects_unwritable_parts() {
        assert!(matches!(
            key(&[("sfid", None)]),
            Err(InvalidKey::EmptyPart { .. })
        ));
        assert!(matches!(
            key(&[("sfid", Some(""))]),
            Err(InvalidKey::EmptyPart { .. })
        ));
        for bad in ["a b", "a*", "a>", "a.b", "a\0b", "é"] {
            assert!(
                matches!(
                    key(&[("sfid", Some(bad))]),
                    Err(InvalidKey::IllegalCharacter { .. })
                ),
                "{bad:?} accepted"
            );
        }
        assert!(matches!(
            record_key("$", "s", [("id", Some("1"))]),
            Err(InvalidKey::Reserved { .. })
        ));
        assert!(matches!(
            record_key("", "s", std::iter::empty()),
            Err(InvalidKey::NoKeyProperties)
        ));
    }
}
