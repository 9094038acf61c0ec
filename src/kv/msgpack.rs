//! MessagePack values (the old target's `msgpack` option): converted through
//! `rmpv` by hand, because serde_json's lossless numbers do not survive a
//! generic serde round trip through another format.

use rmpv::Value as Mp;
use serde_json::{Map, Number, Value};

pub fn encode(record: &Map<String, Value>) -> Result<Vec<u8>, String> {
    let mut out = Vec::with_capacity(256);
    rmpv::encode::write_value(&mut out, &to_mp(&Value::Object(record.clone())))
        .map_err(|e| e.to_string())?;
    Ok(out)
}

pub fn decode(bytes: &[u8]) -> Option<Map<String, Value>> {
    let mut cursor = bytes;
    let value = rmpv::decode::read_value(&mut cursor).ok()?;
    if !cursor.is_empty() {
        return None;
    }
    match from_mp(value)? {
        Value::Object(map) => Some(map),
        _ => None,
    }
}

fn to_mp(value: &Value) -> Mp {
    match value {
        Value::Null => Mp::Nil,
        Value::Bool(b) => Mp::Boolean(*b),
        Value::Number(n) => {
            if let Some(i) = n.as_i64() {
                Mp::from(i)
            } else if let Some(u) = n.as_u64() {
                Mp::from(u)
            } else {
                // Digits beyond f64 (numeric(38)) keep their exact text.
                let text = n.to_string();
                match text.parse::<f64>() {
                    Ok(f)
                        if f.is_finite()
                            && Number::from_f64(f).map(|m| m.to_string()) == Some(text.clone()) =>
                    {
                        Mp::F64(f)
                    }
                    _ => Mp::String(text.into()),
                }
            }
        }
        Value::String(s) => Mp::String(s.as_str().into()),
        Value::Array(items) => Mp::Array(items.iter().map(to_mp).collect()),
        Value::Object(map) => Mp::Map(
            map.iter()
                .map(|(k, v)| (Mp::String(k.as_str().into()), to_mp(v)))
                .collect(),
        ),
    }
}

fn from_mp(value: Mp) -> Option<Value> {
    Some(match value {
        Mp::Nil => Value::Null,
        Mp::Boolean(b) => Value::Bool(b),
        Mp::Integer(i) => match i.as_i64() {
            Some(v) => Value::from(v),
            None => Value::from(i.as_u64()?),
        },
        Mp::F32(f) => Value::Number(Number::from_f64(f64::from(f))?),
        Mp::F64(f) => Value::Number(Number::from_f64(f)?),
        Mp::String(s) => Value::String(s.into_str()?),
        Mp::Binary(b) => Value::String(base64_encode(&b)),
        Mp::Array(items) => Value::Array(items.into_iter().map(from_mp).collect::<Option<_>>()?),
        Mp::Map(pairs) => {
            let mut map = Map::with_capacity(pairs.len());
            for (k, v) in pairs {
                let key = match k {
                    Mp::String(s) => s.into_str()?,
                    other => other.to_string(),
                };
                map.insert(key, from_mp(v)?);
            }
            Value::Object(map)
        }
        Mp::Ext(_, _) => return None,
    })
}

fn base64_encode(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let n = (u32::from(chunk[0]) << 16)
            | (u32::from(*chunk.get(1).unwrap_or(&0)) << 8)
            | u32::from(*chunk.get(2).unwrap_or(&0));
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(ALPHABET[(n >> (18 - 6 * i) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn round_trips_records() {
        let Value::Object(record) = json!({
            "s": "ünï", "i": -9223372036854775808i64, "u": 18446744073709551615u64,
            "f": 0.5, "big": serde_json::from_str::<Value>("12345678901234567890123456789012345678").unwrap(),
            "n": null, "b": true, "a": [1, "x", null], "o": {"k": [2.5]}
        }) else {
            unreachable!()
        };
        let back = decode(&encode(&record).unwrap()).unwrap();
        assert_eq!(back.get("s"), record.get("s"));
        assert_eq!(back.get("i"), record.get("i"));
        assert_eq!(back.get("u"), record.get("u"));
        assert_eq!(back.get("f"), record.get("f"));
        assert_eq!(
            back.get("big"),
            Some(&json!("12345678901234567890123456789012345678"))
        );
        assert_eq!(back.get("a"), record.get("a"));
        assert_eq!(back.get("o"), record.get("o"));
    }

    #[test]
    fn base64_matches_the_standard_alphabet() {
        assert_eq!(base64_encode(b""), "");
        assert_eq!(base64_encode(b"f"), "Zg==");
        assert_eq!(base64_encode(b"fo"), "Zm8=");
        assert_eq!(base64_encode(b"foobar"), "Zm9vYmFy");
    }
}
