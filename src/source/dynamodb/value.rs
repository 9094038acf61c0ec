//! DynamoDB attribute values as JSON (SPEC §2), in the shapes tap-dynamodb
//! emits: numbers with their exact digits, sets as arrays, binary as base64.
//!
//! DynamoDB returns map attributes and set elements in no defined order, so
//! both are sorted here: object keys by name, string sets by text, number sets
//! by value, binary sets by bytes. A value read twice then has the same JSON
//! text, which keeps the guard's payload comparison (tables without a
//! timestamp attribute) from seeing changes that are not there.

use std::collections::HashMap;

use aws_sdk_dynamodb::types::AttributeValue;
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use serde_json::{Map, Number, Value};

/// An item (or a map attribute) as a JSON object: its attributes by name.
pub fn item(attributes: HashMap<String, AttributeValue>) -> Result<Map<String, Value>, String> {
    let mut pairs: Vec<_> = attributes.into_iter().collect();
    pairs.sort_by(|a, b| a.0.cmp(&b.0));
    let mut out = Map::with_capacity(pairs.len());
    for (name, value) in pairs {
        let value = json(value).map_err(|e| format!("attribute {name:?}: {e}"))?;
        out.insert(name, value);
    }
    Ok(out)
}

pub fn json(value: AttributeValue) -> Result<Value, String> {
    Ok(match value {
        AttributeValue::S(s) => Value::String(s),
        AttributeValue::N(n) => Value::Number(number(&n)?),
        AttributeValue::Bool(b) => Value::Bool(b),
        AttributeValue::Null(_) => Value::Null,
        AttributeValue::M(m) => Value::Object(item(m)?),
        AttributeValue::L(l) => Value::Array(l.into_iter().map(json).collect::<Result<_, _>>()?),
        AttributeValue::Ss(mut ss) => {
            ss.sort();
            Value::Array(ss.into_iter().map(Value::String).collect())
        }
        AttributeValue::Ns(ns) => {
            let mut parsed = ns
                .iter()
                .map(|n| Ok((n.parse::<f64>().unwrap_or(0.0), number(n)?)))
                .collect::<Result<Vec<_>, String>>()?;
            // By value; numbers f64 cannot tell apart fall back to their text,
            // so the order is the same whatever order DynamoDB sent them in.
            parsed.sort_by(|a, b| {
                a.0.total_cmp(&b.0)
                    .then_with(|| a.1.as_str().cmp(b.1.as_str()))
            });
            Value::Array(parsed.into_iter().map(|(_, n)| Value::Number(n)).collect())
        }
        AttributeValue::B(b) => Value::String(STANDARD.encode(b.as_ref())),
        AttributeValue::Bs(mut bs) => {
            bs.sort_by(|a, b| a.as_ref().cmp(b.as_ref()));
            Value::Array(
                bs.iter()
                    .map(|b| Value::String(STANDARD.encode(b.as_ref())))
                    .collect(),
            )
        }
        other => return Err(format!("unsupported attribute type {other:?}")),
    })
}

/// A DynamoDB number (up to 38 significant digits, exponents from -130 to
/// +125) as a JSON number with the same digits, never through a float.
/// DynamoDB accepts forms JSON does not (`+1`, `.5`, `5.`); those are
/// rewritten without changing the value. An exponent comes out as serde_json
/// writes it (`1E-130` as `1e-130`), which JSON readers take as the same number.
pub fn number(text: &str) -> Result<Number, String> {
    if let Ok(n) = text.parse::<Number>() {
        return Ok(n);
    }
    let (sign, body) = match text.as_bytes().first() {
        Some(b'-') => ("-", &text[1..]),
        Some(b'+') => ("", &text[1..]),
        _ => ("", text),
    };
    let (mantissa, exponent) = match body.find(['e', 'E']) {
        Some(i) => body.split_at(i),
        None => (body, ""),
    };
    let mantissa = mantissa.strip_suffix('.').unwrap_or(mantissa);
    let lead = if mantissa.starts_with('.') { "0" } else { "" };
    format!("{sign}{lead}{mantissa}{exponent}")
        .parse::<Number>()
        .map_err(|_| format!("{text:?} is not a number"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use aws_sdk_dynamodb::primitives::Blob;
    use serde_json::json;

    fn n(s: &str) -> AttributeValue {
        AttributeValue::N(s.to_string())
    }

    #[test]
    fn numbers_keep_their_digits() {
        for text in [
            "12345678901234567890123456789012345678",
            "-0.000001",
            "123456.70",
            "0",
        ] {
            assert_eq!(json(n(text)).unwrap().to_string(), text);
        }
        // JSON's exponent is written `e` with a sign: the same number, the same digits.
        for (dynamo, json_text) in [
            ("1E-130", "1e-130"),
            (
                "9.9999999999999999999999999999999999999E125",
                "9.9999999999999999999999999999999999999e+125",
            ),
            ("+5", "5"),
            (".5", "0.5"),
            ("-.5", "-0.5"),
            ("5.", "5"),
            ("5.E3", "5e+3"),
        ] {
            assert_eq!(number(dynamo).unwrap().to_string(), json_text);
        }
        assert!(number("NaN").is_err());
        assert!(number("").is_err());
    }

    #[test]
    fn converts_every_type_like_tap_dynamodb() {
        let item_value = item(HashMap::from([
            ("s".to_string(), AttributeValue::S("Zoë".into())),
            ("t".to_string(), AttributeValue::Bool(true)),
            ("z".to_string(), AttributeValue::Null(true)),
            (
                "l".to_string(),
                AttributeValue::L(vec![n("1"), AttributeValue::Null(true)]),
            ),
            (
                "m".to_string(),
                AttributeValue::M(HashMap::from([
                    ("b".to_string(), n("2")),
                    ("a".to_string(), AttributeValue::M(HashMap::new())),
                ])),
            ),
            (
                "ss".to_string(),
                AttributeValue::Ss(vec!["tag1".into(), "shared".into()]),
            ),
            (
                "ns".to_string(),
                AttributeValue::Ns(vec!["10".into(), "0.5".into(), "9".into()]),
            ),
            (
                "b".to_string(),
                AttributeValue::B(Blob::new(b"\x00\x01\xfe\xffbinary".to_vec())),
            ),
            (
                "bs".to_string(),
                AttributeValue::Bs(vec![Blob::new(b"a".to_vec()), Blob::new(vec![0])]),
            ),
        ]))
        .unwrap();
        assert_eq!(
            serde_json::to_string(&item_value).unwrap(),
            serde_json::to_string(&json!({
                "b": "AAH+/2JpbmFyeQ==",
                "bs": ["AA==", "YQ=="],
                "l": [1, null],
                "m": {"a": {}, "b": 2},
                "ns": [0.5, 9, 10],
                "s": "Zoë",
                "ss": ["shared", "tag1"],
                "t": true,
                "z": null,
            }))
            .unwrap()
        );
    }

    #[test]
    fn number_sets_order_by_value_then_text() {
        let a = json(AttributeValue::Ns(vec![
            "1E+2".into(),
            "99".into(),
            "100".into(),
        ]))
        .unwrap();
        let b = json(AttributeValue::Ns(vec![
            "100".into(),
            "1E+2".into(),
            "99".into(),
        ]))
        .unwrap();
        assert_eq!(a.to_string(), b.to_string());
        assert_eq!(a.to_string(), "[99,100,1e+2]");
    }
}
