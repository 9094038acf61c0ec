//! `target-nats-kv` settings: from the `--config` JSON file Meltano writes,
//! then `TARGET_NATS_KV_<NAME>` environment variables for what the file lacks.

use std::path::PathBuf;

use serde_json::{Map, Value, json};

use crate::kv::RefreshMode;
use crate::nats::NatsSettings;

/// One setting, as `--about` describes it.
pub struct SettingSpec {
    pub name: &'static str,
    pub kind: &'static str,
    pub description: &'static str,
    pub secret: bool,
    pub default: Option<&'static str>,
}

pub const SETTINGS: &[SettingSpec] = &[
    SettingSpec {
        name: "url",
        kind: "string",
        description: "NATS server URL.",
        secret: false,
        default: Some("nats://127.0.0.1:4222"),
    },
    SettingSpec {
        name: "bucket",
        kind: "string",
        description: "KV bucket to write (it must exist).",
        secret: false,
        default: Some("v1-objects"),
    },
    SettingSpec {
        name: "user",
        kind: "string",
        description: "NATS user name.",
        secret: false,
        default: None,
    },
    SettingSpec {
        name: "password",
        kind: "string",
        description: "NATS password.",
        secret: true,
        default: None,
    },
    SettingSpec {
        name: "token",
        kind: "string",
        description: "NATS authentication token.",
        secret: true,
        default: None,
    },
    SettingSpec {
        name: "creds",
        kind: "string",
        description: "Path of a NATS credentials file.",
        secret: false,
        default: None,
    },
    SettingSpec {
        name: "key_prefix",
        kind: "string",
        description: "Prefix of every key: <key_prefix><stream>.<id>.",
        secret: false,
        default: Some(""),
    },
    SettingSpec {
        name: "refresh_mode",
        kind: "string",
        description: "newer: write only newer records; same: also equal timestamps; full (or all): everything except over soft-deleted entries.",
        secret: false,
        default: Some("newer"),
    },
    SettingSpec {
        name: "validate_records",
        kind: "boolean",
        description: "Validate records against their stream's JSON schema; invalid records are reported and counted, and still written.",
        secret: false,
        default: Some("false"),
    },
    SettingSpec {
        name: "msgpack",
        kind: "boolean",
        description: "Write values as MessagePack instead of JSON.",
        secret: false,
        default: Some("false"),
    },
];

#[derive(Debug, Clone)]
pub struct TargetSettings {
    pub nats: NatsSettings,
    pub bucket: String,
    pub key_prefix: String,
    pub refresh_mode: RefreshMode,
    pub validate_records: bool,
    pub msgpack: bool,
}

#[derive(Debug, thiserror::Error)]
#[error("invalid target-nats-kv settings:{}", .problems.iter().map(|p| format!("\n  - {p}")).collect::<String>())]
pub struct SettingsError {
    pub problems: Vec<String>,
}

pub fn env_name(setting: &str) -> String {
    format!("TARGET_NATS_KV_{}", setting.to_ascii_uppercase())
}

/// Resolves settings from the config file's object (if any) and the
/// environment, reporting every problem together. Unknown config keys are
/// returned so the caller can warn about them.
pub fn resolve(
    file: Option<&Map<String, Value>>,
    env: impl Fn(&str) -> Option<String>,
) -> Result<(TargetSettings, Vec<String>), SettingsError> {
    let mut problems = Vec::new();
    let unknown: Vec<String> = file
        .map(|f| {
            f.keys()
                .filter(|k| !SETTINGS.iter().any(|s| s.name == k.as_str()))
                .cloned()
                .collect()
        })
        .unwrap_or_default();
    let mut text = |name: &str| -> Option<String> {
        match file.and_then(|f| f.get(name)) {
            Some(Value::String(s)) => Some(s.clone()),
            Some(Value::Null) | None => env(&env_name(name)).filter(|v| !v.is_empty()),
            Some(Value::Bool(b)) => Some(b.to_string()),
            Some(Value::Number(n)) => Some(n.to_string()),
            Some(_) => {
                problems.push(format!("{name}: must be a string"));
                None
            }
        }
    };
    let url = text("url").unwrap_or_else(|| "nats://127.0.0.1:4222".to_string());
    let bucket = text("bucket").unwrap_or_else(|| "v1-objects".to_string());
    let user = text("user");
    let password = text("password");
    let token = text("token");
    let creds = text("creds").map(PathBuf::from);
    let key_prefix = text("key_prefix").unwrap_or_default();
    let refresh_mode = text("refresh_mode");
    let validate_records = text("validate_records");
    let msgpack = text("msgpack");

    let refresh_mode = match refresh_mode.as_deref().map(str::parse::<RefreshMode>) {
        None => RefreshMode::Newer,
        Some(Ok(mode)) => mode,
        Some(Err(e)) => {
            problems.push(format!("refresh_mode: {e}"));
            RefreshMode::Newer
        }
    };
    let mut boolean = |name: &str, v: Option<String>| match v
        .as_deref()
        .map(str::to_ascii_lowercase)
        .as_deref()
    {
        None | Some("false" | "0" | "no" | "off") => false,
        Some("true" | "1" | "yes" | "on") => true,
        Some(other) => {
            problems.push(format!("{name}: {other:?} is not a boolean"));
            false
        }
    };
    let validate_records = boolean("validate_records", validate_records);
    let msgpack = boolean("msgpack", msgpack);
    if bucket.is_empty()
        || !bucket
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
    {
        problems.push(format!("bucket: {bucket:?} is not a valid bucket name"));
    }
    if !key_prefix
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || "-/_=.".contains(c))
    {
        problems.push(format!(
            "key_prefix: {key_prefix:?} has characters NATS KV keys do not allow"
        ));
    }
    if user.is_some() != password.is_some() {
        problems.push("user and password: set both or neither".to_string());
    }
    if !problems.is_empty() {
        return Err(SettingsError { problems });
    }
    Ok((
        TargetSettings {
            nats: NatsSettings {
                url,
                user,
                password,
                token,
                creds,
            },
            bucket,
            key_prefix,
            refresh_mode,
            validate_records,
            msgpack,
        },
        unknown,
    ))
}

/// Capabilities that really work: BATCH messages are read, records validated.
pub const CAPABILITIES: &[&str] = &["about", "batch", "validate-records"];

/// `--about --format json`, shaped like the Meltano SDK's.
pub fn about_json() -> Value {
    let mut properties = Map::new();
    for s in SETTINGS {
        let mut p = json!({"type": [s.kind, "null"], "description": s.description});
        if s.secret {
            p["secret"] = json!(true);
            p["writeOnly"] = json!(true);
        }
        if let Some(d) = s.default {
            p["default"] = match s.kind {
                "boolean" => json!(d == "true"),
                _ => json!(d),
            };
        }
        properties.insert(s.name.to_string(), p);
    }
    json!({
        "name": "target-nats-kv",
        "description": "Singer target loading records into a NATS JetStream KV bucket through lfx-sync's guarded writer.",
        "version": env!("CARGO_PKG_VERSION"),
        "capabilities": CAPABILITIES,
        "settings": {"type": "object", "properties": properties, "required": []},
    })
}

/// `--about` (and `--format markdown`): the SDK's plain-text layout.
pub fn about_text() -> String {
    let mut out = format!(
        "Name: target-nats-kv\nDescription: Singer target loading records into a NATS JetStream KV bucket through lfx-sync's guarded writer.\nVersion: {}\nCapabilities:\n",
        env!("CARGO_PKG_VERSION")
    );
    for c in CAPABILITIES {
        out.push_str(&format!("  - {c}\n"));
    }
    out.push_str("Settings:\n");
    for s in SETTINGS {
        out.push_str(&format!(
            "  - Name: {}\n    Type: ['{}', 'null']\n    Environment Variable: {}\n",
            s.name,
            s.kind,
            env_name(s.name)
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(v: Value) -> Map<String, Value> {
        match v {
            Value::Object(m) => m,
            _ => unreachable!(),
        }
    }

    #[test]
    fn file_wins_and_env_fills_in() {
        let f = file(
            json!({"bucket": "b1", "refresh_mode": "all", "validate_records": true, "extra": 1}),
        );
        let env = |name: &str| match name {
            "TARGET_NATS_KV_BUCKET" => Some("from-env".to_string()),
            "TARGET_NATS_KV_URL" => Some("nats://10.0.0.1:4222".to_string()),
            "TARGET_NATS_KV_MSGPACK" => Some("TRUE".to_string()),
            _ => None,
        };
        let (s, unknown) = resolve(Some(&f), env).unwrap();
        assert_eq!(s.bucket, "b1");
        assert_eq!(s.nats.url, "nats://10.0.0.1:4222");
        assert_eq!(s.refresh_mode, RefreshMode::Full);
        assert!(s.validate_records && s.msgpack);
        assert_eq!(unknown, vec!["extra".to_string()]);
    }

    #[test]
    fn every_problem_is_reported_and_no_secret_is_echoed() {
        let f = file(
            json!({"refresh_mode": "sometimes", "msgpack": "maybe", "bucket": "a b", "password": "s3cret"}),
        );
        let err = resolve(Some(&f), |_| None).unwrap_err();
        assert_eq!(err.problems.len(), 4, "{err}");
        assert!(err.to_string().contains("refresh_mode"));
        assert!(!err.to_string().contains("s3cret"));
    }

    #[test]
    fn about_lists_every_setting() {
        let about = about_json();
        for s in SETTINGS {
            assert!(about["settings"]["properties"][s.name].is_object());
        }
        assert!(about_text().contains("TARGET_NATS_KV_REFRESH_MODE"));
    }
}
