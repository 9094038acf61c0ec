//! PostgreSQL values rendered as MeltanoLabs tap-postgres renders them, so
//! records from every path into `v1-objects` are interchangeable.
//!
//! Every column is selected as text (arrays through `to_json`), and turned
//! into JSON here by the column's type.

use serde_json::{Number, Value};

/// How a column's text becomes JSON.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// int2/int4/int8/oid/numeric: a JSON number with the exact digits.
    Exact,
    /// float4/float8: Python's float repr (`1.0`, `1e-300`, `1.7976931348623157e+308`).
    Float,
    Bool,
    /// json/jsonb, and arrays selected through `to_json`.
    Json,
    /// timestamp/timestamptz: `YYYY-MM-DDTHH:MM:SS.ffffff+00:00` (the session runs in UTC).
    Timestamp,
    /// Everything else: the text as PostgreSQL prints it.
    Text,
}

impl Kind {
    /// The kind of a column from its type name, its element type name for
    /// arrays, and whether it is an array.
    pub fn of(type_name: &str, is_array: bool) -> Kind {
        if is_array {
            return Kind::Json;
        }
        match type_name {
            "int2" | "int4" | "int8" | "oid" | "numeric" => Kind::Exact,
            "float4" | "float8" => Kind::Float,
            "bool" => Kind::Bool,
            "json" | "jsonb" => Kind::Json,
            "timestamp" | "timestamptz" => Kind::Timestamp,
            _ => Kind::Text,
        }
    }

    /// The SQL expression that selects a column (already quoted) as text.
    pub fn select_expr(self, quoted: &str, is_array: bool) -> String {
        if is_array {
            format!("to_json({quoted})::text")
        } else {
            format!("{quoted}::text")
        }
    }
}

/// Renders one non-NULL value; `Err` describes text the type should never produce.
pub fn render(kind: Kind, text: &str) -> Result<Value, String> {
    Ok(match kind {
        Kind::Text => Value::String(text.to_string()),
        Kind::Bool => Value::Bool(text == "t" || text == "true"),
        Kind::Exact => match text.parse::<Number>() {
            Ok(n) => Value::Number(n),
            // numeric NaN / Infinity have no JSON number form: keep the text.
            Err(_) => Value::String(text.to_string()),
        },
        Kind::Float => float(text),
        Kind::Json => {
            serde_json::from_str(text).map_err(|e| format!("invalid JSON from the server: {e}"))?
        }
        Kind::Timestamp => Value::String(timestamp(text)),
    })
}

/// Appends one non-NULL value as JSON to `out`: the same JSON `render`
/// produces, written straight from the column text without building a value.
pub fn write_json(kind: Kind, text: &str, out: &mut Vec<u8>) -> Result<(), String> {
    match kind {
        Kind::Text => write_str(text, out),
        Kind::Bool => out.extend_from_slice(if text == "t" || text == "true" {
            b"true"
        } else {
            b"false"
        }),
        Kind::Exact if is_plain_number(text) => out.extend_from_slice(text.as_bytes()),
        Kind::Exact => write_str(text, out),
        Kind::Float => match text.parse::<f64>() {
            Ok(f) if f.is_finite() => out.extend_from_slice(python_repr(f).as_bytes()),
            _ => write_str(text, out),
        },
        Kind::Json => minify_json(text, out)?,
        Kind::Timestamp => write_str(&timestamp(text), out),
    }
    Ok(())
}

/// The text a value has as a key part: strings as they are, numbers with the
/// digits they are written with, the rest as rendered.
pub fn key_text(kind: Kind, text: &str) -> String {
    match kind {
        Kind::Text | Kind::Exact => text.to_string(),
        Kind::Bool => (text == "t" || text == "true").to_string(),
        Kind::Float => text
            .parse::<f64>()
            .map(python_repr)
            .unwrap_or_else(|_| text.to_string()),
        Kind::Timestamp => timestamp(text),
        Kind::Json => {
            let mut out = Vec::with_capacity(text.len());
            match minify_json(text, &mut out) {
                Ok(()) => String::from_utf8_lossy(&out).into_owned(),
                Err(_) => text.to_string(),
            }
        }
    }
}

pub fn write_str(text: &str, out: &mut Vec<u8>) {
    // Serializing a &str into a Vec cannot fail.
    let _ = serde_json::to_writer(&mut *out, text);
}

/// PostgreSQL prints integers and numerics as plain decimal digits, but for
/// numeric's NaN and infinities, which have no JSON number form.
fn is_plain_number(text: &str) -> bool {
    let digits = text.strip_prefix('-').unwrap_or(text);
    digits.starts_with(|c: char| c.is_ascii_digit())
        && digits.bytes().all(|b| b.is_ascii_digit() || b == b'.')
}

/// Copies JSON text without the whitespace PostgreSQL puts between tokens
/// (`{"a": 1, "b": [1, 2]}`), keeping every number and string as written.
fn minify_json(text: &str, out: &mut Vec<u8>) -> Result<(), String> {
    let start = out.len();
    let mut in_string = false;
    let mut escaped = false;
    for &b in text.as_bytes() {
        if in_string {
            out.push(b);
            if escaped {
                escaped = false;
            } else if b == b'\\' {
                escaped = true;
            } else if b == b'"' {
                in_string = false;
            }
        } else if !b.is_ascii_whitespace() {
            if b == b'"' {
                in_string = true;
            }
            out.push(b);
        }
    }
    if in_string || out.len() == start {
        return Err("invalid JSON from the server".to_string());
    }
    Ok(())
}

fn float(text: &str) -> Value {
    match text.parse::<f64>() {
        Ok(f) if f.is_finite() => {
            let repr = python_repr(f);
            match repr.parse::<Number>() {
                Ok(n) => Value::Number(n),
                Err(_) => Value::String(repr),
            }
        }
        // Infinity and NaN have no JSON number form: keep PostgreSQL's text.
        _ => Value::String(text.to_string()),
    }
}

/// Python's `repr(float)`: the shortest digits that round-trip, fixed notation
/// for decimal exponents in [-4, 16), scientific otherwise. Negative zero is
/// rendered `0.0`, as the tap does.
pub fn python_repr(f: f64) -> String {
    if f == 0.0 {
        return "0.0".to_string();
    }
    // `{:e}` gives the shortest round-trip digits: "d.ddde[-]x".
    let sci = format!("{:e}", f.abs());
    let (mantissa, exp) = sci.split_once('e').unwrap_or((&sci, "0"));
    let exp: i32 = exp.parse().unwrap_or(0);
    let digits: String = mantissa.chars().filter(|c| *c != '.').collect();
    let sign = if f < 0.0 { "-" } else { "" };
    let decpt = exp + 1;
    let n = digits.len() as i32;
    if (-4..16).contains(&exp) {
        if decpt <= 0 {
            format!("{sign}0.{}{digits}", "0".repeat((-decpt) as usize))
        } else if decpt < n {
            format!(
                "{sign}{}.{}",
                &digits[..decpt as usize],
                &digits[decpt as usize..]
            )
        } else {
            format!("{sign}{digits}{}.0", "0".repeat((decpt - n) as usize))
        }
    } else {
        let mant = if n == 1 {
            digits
        } else {
            format!("{}.{}", &digits[..1], &digits[1..])
        };
        let esign = if exp < 0 { '-' } else { '+' };
        format!("{sign}{mant}e{esign}{:02}", exp.abs())
    }
}

/// `2024-03-03 03:45:30.5+00` or `2024-03-03 03:45:30.5` (UTC session) →
/// `2024-03-03T03:45:30.500000+00:00`. Text that is not of that form
/// (`infinity`, BC dates) is passed through.
pub fn timestamp(text: &str) -> String {
    let Some((date, rest)) = text.split_once(' ') else {
        return text.to_string();
    };
    if rest.len() < 8 || rest.ends_with("BC") {
        return text.to_string();
    }
    let (hms, tail) = rest.split_at(8);
    let (frac, offset) = match tail.strip_prefix('.') {
        Some(t) => {
            let end = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
            (&t[..end], &t[end..])
        }
        None => ("", tail),
    };
    if !matches!(offset, "" | "+00" | "+00:00") {
        return text.to_string();
    }
    let mut out = String::with_capacity(32);
    out.push_str(date);
    out.push('T');
    out.push_str(hms);
    out.push('.');
    out.push_str(frac);
    for _ in frac.len()..6 {
        out.push('0');
    }
    out.push_str("+00:00");
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn floats_render_like_python() {
        for (f, want) in [
            (1.0, "1.0"),
            (0.5, "0.5"),
            (-0.0, "0.0"),
            (1.0 / 7.0, "0.14285714285714285"),
            (1e-300, "1e-300"),
            (1.7976931348623157e308, "1.7976931348623157e+308"),
            (1e16, "1e+16"),
            (1234567890123456.0, "1234567890123456.0"),
            (0.0001, "0.0001"),
            (0.00001, "1e-05"),
            (-2.5e-7, "-2.5e-07"),
            (123.456, "123.456"),
            (2.0, "2.0"),
        ] {
            assert_eq!(python_repr(f), want, "{f}");
        }
    }

    #[test]
    fn timestamps_render_like_the_tap() {
        assert_eq!(
            timestamp("2024-03-03 03:45:30.5+00"),
            "2024-03-03T03:45:30.500000+00:00"
        );
        assert_eq!(
            timestamp("2000-02-29 23:59:59.999999"),
            "2000-02-29T23:59:59.999999+00:00"
        );
        assert_eq!(
            timestamp("1970-01-01 00:00:00"),
            "1970-01-01T00:00:00.000000+00:00"
        );
        assert_eq!(timestamp("infinity"), "infinity");
    }

    fn written(kind: Kind, text: &str) -> String {
        let mut out = Vec::new();
        write_json(kind, text, &mut out).unwrap();
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn written_json_is_what_render_builds() {
        for (kind, text) in [
            (Kind::Text, "line1\nline2 \"q\" \\ \u{1} 日本"),
            (Kind::Exact, "-1234567890123456.78"),
            (Kind::Exact, "NaN"),
            (Kind::Float, "-0"),
            (Kind::Float, "1.7976931348623157e+308"),
            (Kind::Float, "Infinity"),
            (Kind::Bool, "t"),
            (
                Kind::Json,
                r#"{"a": 1, "b": [1, 2.50, {"c d": "x , y : z"}], "e": "\" , "}"#,
            ),
            (Kind::Json, r#"["a,b", "c\"d", null, "x"]"#),
            (Kind::Json, "null"),
            (Kind::Timestamp, "2024-03-03 03:45:30.5+00"),
        ] {
            let json = written(kind, text);
            let parsed: Value =
                serde_json::from_str(&json).unwrap_or_else(|e| panic!("{json}: {e}"));
            assert_eq!(parsed, render(kind, text).unwrap(), "{kind:?} {text}");
            assert_eq!(
                json,
                serde_json::to_string(&parsed).unwrap(),
                "{kind:?} {text}: not compact"
            );
        }
        assert_eq!(written(Kind::Float, "-0"), "0.0");
        assert_eq!(written(Kind::Exact, "100.50"), "100.50");
        assert_eq!(key_text(Kind::Bool, "f"), "false");
        assert_eq!(key_text(Kind::Exact, "42"), "42");
    }

    #[test]
    fn exact_numbers_keep_their_digits() {
        assert_eq!(render(Kind::Exact, "100.50").unwrap().to_string(), "100.50");
        assert_eq!(
            render(Kind::Exact, "-9223372036854775808")
                .unwrap()
                .to_string(),
            "-9223372036854775808"
        );
        assert_eq!(
            render(Kind::Exact, "NaN").unwrap(),
            Value::String("NaN".into())
        );
        assert_eq!(render(Kind::Float, "-0").unwrap().to_string(), "0.0");
        assert_eq!(render(Kind::Float, "1e-300").unwrap().to_string(), "1e-300");
    }
}
