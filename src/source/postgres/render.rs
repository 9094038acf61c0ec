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
