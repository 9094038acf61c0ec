//! Backfill configuration files (`tap-configs/*.toml`), parsed and validated
//! once, up front, with every problem reported together.
//!
//! ```toml
//! state_id = "platform-db-incremental"    # default: the file's stem
//!
//! [nats]
//! url = "${NATS_URL}"                     # secrets only as ${ENV} references
//! bucket = "v1-objects"
//! key_prefix = ""
//!
//! [postgres]
//! url = "${DATABASE_URL}"                 # or host/port/user/password/database/sslmode
//!
//! [[postgres.streams]]
//! schema = "platform"
//! table = "project__c"
//! replication_key = "lastmodifieddate"    # omit: always read in full
//! key = ["sfid"]                          # default: the table's primary key
//! columns = ["sfid", "name"]              # default: every column
//!
//! [dynamodb]                              # a config may have postgres, dynamodb or both
//! region = "us-west-2"                    # default: AWS_REGION / the profile's
//! endpoint_url = "${DYNAMODB_URL}"        # default: AWS_ENDPOINT_URL(_DYNAMODB)
//! assume_role = "arn:aws:iam::1:role/r"   # --assume-role overrides
//! segments = 4                            # parallel Scan segments per table
//! page_size = 500                         # items per Scan page (default: 1 MB pages)
//! lookback_seconds = 300                  # incremental reads start this long before the bookmark
//!
//! [[dynamodb.tables]]
//! table = "itx-zoom-meetings-v2"
//! timestamp = "modified_at"               # omit: always read in full
//! ```

use std::collections::HashSet;
use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use crate::aws::AwsSettings;
use crate::kv::key::valid_stream_name;
use crate::nats::NatsSettings;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    state_id: Option<String>,
    nats: Option<RawNats>,
    postgres: Option<RawPostgres>,
    dynamodb: Option<RawDynamo>,
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawNats {
    url: Option<String>,
    bucket: Option<String>,
    key_prefix: Option<String>,
    user: Option<String>,
    password: Option<String>,
    token: Option<String>,
    creds: Option<String>,
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawPostgres {
    url: Option<String>,
    host: Option<String>,
    port: Option<u16>,
    user: Option<String>,
    password: Option<String>,
    database: Option<String>,
    sslmode: Option<String>,
    #[serde(default)]
    streams: Vec<RawStream>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawStream {
    schema: Option<String>,
    table: Option<String>,
    replication_key: Option<String>,
    key: Option<Vec<String>>,
    columns: Option<Vec<String>>,
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawDynamo {
    region: Option<String>,
    endpoint_url: Option<String>,
    assume_role: Option<String>,
    segments: Option<u32>,
    page_size: Option<u32>,
    lookback_seconds: Option<u64>,
    #[serde(default)]
    tables: Vec<RawTable>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTable {
    table: Option<String>,
    timestamp: Option<String>,
}

/// Values given on the command line or in the environment, which win over the file.
#[derive(Debug, Default, Clone)]
pub struct Overrides {
    pub database_url: Option<String>,
    pub nats_url: Option<String>,
    pub bucket: Option<String>,
    pub state_id: Option<String>,
}

#[derive(Debug, Clone)]
pub struct Config {
    pub path: PathBuf,
    pub state_id: String,
    pub nats: NatsSettings,
    pub bucket: String,
    pub key_prefix: String,
    pub postgres: Option<PostgresConfig>,
    pub dynamodb: Option<DynamoConfig>,
}

#[derive(Debug, Clone)]
pub struct PostgresConfig {
    /// A connection URL (it may carry a password: never print it).
    pub url: String,
    pub streams: Vec<PgStream>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct PgStream {
    /// `<schema>-<table>`, the stream name of tap-postgres.
    pub name: String,
    pub schema: String,
    pub table: String,
    pub replication_key: Option<String>,
    pub key: Option<Vec<String>>,
    pub columns: Option<Vec<String>>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct DynamoConfig {
    pub aws: AwsSettings,
    /// Parallel Scan segments per table.
    pub segments: u32,
    /// Items per Scan page; `None`: DynamoDB's 1 MB pages.
    pub page_size: Option<u32>,
    /// How far before the bookmark an incremental read starts, for writers'
    /// clock skew and eventually consistent reads.
    pub lookback: Duration,
    pub tables: Vec<DynamoTable>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct DynamoTable {
    /// The table name, which is also the stream name.
    pub table: String,
    /// The attribute holding the item's last modification time.
    pub timestamp: Option<String>,
}

/// DynamoDB's limit on `TotalSegments`.
const MAX_SEGMENTS: u32 = 1_000_000;

/// Every problem found in a configuration file.
#[derive(Debug, thiserror::Error)]
pub struct ConfigError {
    pub path: PathBuf,
    pub problems: Vec<String>,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "invalid configuration {}:", self.path.display())?;
        for p in &self.problems {
            write!(f, "\n  - {p}")?;
        }
        Ok(())
    }
}

/// Collects problems while validating.
struct Problems(Vec<String>);

impl Problems {
    fn add(&mut self, field: &str, message: impl fmt::Display) {
        self.0.push(format!("{field}: {message}"));
    }

    /// Expands `${VAR}` references from the environment.
    fn expand(&mut self, field: &str, value: &str) -> Option<String> {
        match expand_env(value) {
            Ok(v) => Some(v),
            Err(var) => {
                self.add(field, format!("environment variable {var} is not set"));
                None
            }
        }
    }
}

/// Replaces each `${NAME}` with the variable's value; `Err(NAME)` names the first unset one.
pub fn expand_env(value: &str) -> Result<String, String> {
    let mut out = String::with_capacity(value.len());
    let mut rest = value;
    while let Some(start) = rest.find("${") {
        out.push_str(&rest[..start]);
        let after = &rest[start + 2..];
        let Some(end) = after.find('}') else {
            out.push_str(&rest[start..]);
            return Ok(out);
        };
        let name = &after[..end];
        match std::env::var(name) {
            Ok(v) if !v.is_empty() => out.push_str(&v),
            _ => return Err(name.to_string()),
        }
        rest = &after[end + 1..];
    }
    out.push_str(rest);
    Ok(out)
}

impl Config {
    pub fn load(path: &Path, overrides: &Overrides) -> Result<Config, ConfigError> {
        let fail = |problems: Vec<String>| ConfigError {
            path: path.to_path_buf(),
            problems,
        };
        let text =
            std::fs::read_to_string(path).map_err(|e| fail(vec![format!("cannot read: {e}")]))?;
        let raw: RawConfig =
            toml::from_str(&text).map_err(|e| fail(vec![e.to_string().trim_end().to_string()]))?;
        let mut p = Problems(Vec::new());

        let state_id = overrides
            .state_id
            .clone()
            .or(raw.state_id)
            .or_else(|| path.file_stem().map(|s| s.to_string_lossy().into_owned()))
            .unwrap_or_default();
        if state_id.is_empty() || state_id.contains(['/', '\\']) {
            p.add(
                "state_id",
                format!("{state_id:?} must be a non-empty name without slashes"),
            );
        }

        let nats_raw = raw.nats.unwrap_or_default();
        let nats_url = match (&overrides.nats_url, &nats_raw.url) {
            (Some(url), _) => Some(url.clone()),
            (None, Some(url)) => p.expand("nats.url", url),
            (None, None) => Some("nats://127.0.0.1:4222".to_string()),
        };
        let mut secret = |field: &str, v: &Option<String>| -> Option<String> {
            let v = v.as_deref()?;
            if field != "nats.user" && field != "nats.creds" && !v.contains("${") {
                p.add(
                    field,
                    "secrets must be ${ENV} references, not literal values",
                );
                return None;
            }
            p.expand(field, v)
        };
        let nats = NatsSettings {
            url: nats_url.unwrap_or_default(),
            user: secret("nats.user", &nats_raw.user),
            password: secret("nats.password", &nats_raw.password),
            token: secret("nats.token", &nats_raw.token),
            creds: secret("nats.creds", &nats_raw.creds).map(PathBuf::from),
        };
        let bucket = overrides
            .bucket
            .clone()
            .or(nats_raw.bucket)
            .unwrap_or_else(|| "v1-objects".to_string());
        if bucket.is_empty()
            || !bucket
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
        {
            p.add(
                "nats.bucket",
                format!("{bucket:?} is not a valid bucket name"),
            );
        }
        let key_prefix = nats_raw.key_prefix.unwrap_or_default();
        if !key_prefix
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-/_=.".contains(c))
        {
            p.add(
                "nats.key_prefix",
                format!("{key_prefix:?} has characters NATS KV keys do not allow"),
            );
        }

        let postgres = raw
            .postgres
            .map(|pg| validate_postgres(pg, overrides, &mut p));
        let dynamodb = raw.dynamodb.map(|d| validate_dynamodb(d, &mut p));
        match (&postgres, &dynamodb) {
            (None, None) => p.add("postgres, dynamodb", "no source configured"),
            (Some(pg), Some(ddb)) => {
                for t in &ddb.tables {
                    if pg.streams.iter().any(|s| s.name == t.table) {
                        p.add(
                            "dynamodb.tables",
                            format!("stream {:?} is also a postgres stream", t.table),
                        );
                    }
                }
            }
            _ => {}
        }
        if !p.0.is_empty() {
            return Err(fail(p.0));
        }
        Ok(Config {
            path: path.to_path_buf(),
            state_id,
            nats,
            bucket,
            key_prefix,
            postgres,
            dynamodb,
        })
    }
}

fn validate_postgres(pg: RawPostgres, overrides: &Overrides, p: &mut Problems) -> PostgresConfig {
    let url = if let Some(url) = &overrides.database_url {
        url.clone()
    } else if let Some(url) = &pg.url {
        p.expand("postgres.url", url).unwrap_or_default()
    } else if let Some(host) = &pg.host {
        let host = p.expand("postgres.host", host).unwrap_or_default();
        let user = pg
            .user
            .as_deref()
            .map(|u| p.expand("postgres.user", u).unwrap_or_default());
        let password = match pg.password.as_deref() {
            Some(pw) if !pw.contains("${") => {
                p.add(
                    "postgres.password",
                    "secrets must be ${ENV} references, not literal values",
                );
                None
            }
            Some(pw) => p.expand("postgres.password", pw),
            None => None,
        };
        let database = pg
            .database
            .as_deref()
            .map(|d| p.expand("postgres.database", d).unwrap_or_default());
        let mut url = String::from("postgres://");
        if let Some(user) = user {
            url.push_str(&percent_encode(&user));
            if let Some(pw) = password {
                url.push(':');
                url.push_str(&percent_encode(&pw));
            }
            url.push('@');
        }
        url.push_str(&host);
        url.push(':');
        url.push_str(&pg.port.unwrap_or(5432).to_string());
        if let Some(db) = database {
            url.push('/');
            url.push_str(&percent_encode(&db));
        }
        if let Some(mode) = &pg.sslmode {
            url.push_str("?sslmode=");
            url.push_str(&percent_encode(mode));
        }
        url
    } else {
        p.add("postgres.url", "missing (set url, host, or DATABASE_URL)");
        String::new()
    };
    if pg.streams.is_empty() {
        p.add("postgres.streams", "no streams configured");
    }
    let mut names = HashSet::new();
    let mut streams = Vec::new();
    for (i, s) in pg.streams.into_iter().enumerate() {
        let at = format!("postgres.streams[{i}]");
        let (Some(schema), Some(table)) = (&s.schema, &s.table) else {
            if s.schema.is_none() {
                p.add(&format!("{at}.schema"), "missing");
            }
            if s.table.is_none() {
                p.add(&format!("{at}.table"), "missing");
            }
            continue;
        };
        let name = format!("{schema}-{table}");
        if !valid_stream_name(&name) {
            p.add(
                &at,
                format!("stream name {name:?} has characters NATS KV keys do not allow"),
            );
        }
        if !names.insert(name.clone()) {
            p.add(&at, format!("stream {name:?} is configured twice"));
        }
        for (field, list) in [("key", &s.key), ("columns", &s.columns)] {
            if let Some(list) = list {
                if list.is_empty() {
                    p.add(&format!("{at}.{field}"), "must not be empty");
                }
                let mut seen = HashSet::new();
                for c in list {
                    if !seen.insert(c) {
                        p.add(
                            &format!("{at}.{field}"),
                            format!("column {c:?} listed twice"),
                        );
                    }
                }
            }
        }
        if let (Some(columns), Some(key)) = (&s.columns, &s.key) {
            for k in key {
                if !columns.contains(k) {
                    p.add(
                        &format!("{at}.columns"),
                        format!("must include key column {k:?}"),
                    );
                }
            }
        }
        if let (Some(columns), Some(rk)) = (&s.columns, &s.replication_key)
            && !columns.contains(rk)
        {
            p.add(
                &format!("{at}.columns"),
                format!("must include replication key {rk:?}"),
            );
        }
        streams.push(PgStream {
            name,
            schema: schema.clone(),
            table: table.clone(),
            replication_key: s.replication_key,
            key: s.key,
            columns: s.columns,
        });
    }
    PostgresConfig { url, streams }
}

fn validate_dynamodb(d: RawDynamo, p: &mut Problems) -> DynamoConfig {
    let mut setting = |field: &str, v: &Option<String>| -> Option<String> {
        let v = p.expand(field, v.as_deref()?)?;
        if v.is_empty() {
            p.add(field, "must not be empty");
            return None;
        }
        Some(v)
    };
    let aws = AwsSettings {
        region: setting("dynamodb.region", &d.region),
        endpoint_url: setting("dynamodb.endpoint_url", &d.endpoint_url),
        assume_role: setting("dynamodb.assume_role", &d.assume_role),
    };
    if let Some(url) = &aws.endpoint_url
        && !(url.starts_with("http://") || url.starts_with("https://"))
    {
        p.add(
            "dynamodb.endpoint_url",
            format!("{url:?} is not an http:// or https:// URL"),
        );
    }
    let segments = d.segments.unwrap_or(4);
    if !(1..=MAX_SEGMENTS).contains(&segments) {
        p.add(
            "dynamodb.segments",
            format!("{segments} is not between 1 and {MAX_SEGMENTS}"),
        );
    }
    if d.page_size == Some(0) {
        p.add("dynamodb.page_size", "must be at least 1");
    }
    if d.tables.is_empty() {
        p.add("dynamodb.tables", "no tables configured");
    }
    let mut names = HashSet::new();
    let mut tables = Vec::new();
    for (i, t) in d.tables.into_iter().enumerate() {
        let at = format!("dynamodb.tables[{i}]");
        let Some(table) = t.table else {
            p.add(&format!("{at}.table"), "missing");
            continue;
        };
        // DynamoDB's own naming rule, less `.`, which a KV key cannot hold in a stream name.
        if !(3..=255).contains(&table.len())
            || !table
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
        {
            p.add(
                &format!("{at}.table"),
                format!("{table:?} is not a usable table name (3-255 of a-z A-Z 0-9 _ -)"),
            );
        }
        if !names.insert(table.clone()) {
            p.add(&at, format!("table {table:?} is configured twice"));
        }
        if t.timestamp.as_deref() == Some("") {
            p.add(
                &format!("{at}.timestamp"),
                "must not be empty (omit it instead)",
            );
        }
        tables.push(DynamoTable {
            table,
            timestamp: t.timestamp,
        });
    }
    DynamoConfig {
        aws,
        segments,
        page_size: d.page_size,
        lookback: Duration::from_secs(d.lookback_seconds.unwrap_or(300)),
        tables,
    }
}

fn percent_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load(text: &str) -> Result<Config, ConfigError> {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sample.toml");
        std::fs::write(&path, text).unwrap();
        Config::load(&path, &Overrides::default())
    }

    #[test]
    fn reports_every_problem_with_its_field() {
        let err = load(
            r#"
            [nats]
            url = "${LFX_SYNC_TEST_UNSET_VAR}"
            bucket = "bad bucket"
            password = "hunter2"
            [postgres]
            url = "postgres://x"
            [[postgres.streams]]
            table = "t"
            [[postgres.streams]]
            schema = "s"
            table = "t"
            key = []
            [[postgres.streams]]
            schema = "s"
            table = "t"
            "#,
        )
        .unwrap_err();
        let text = err.to_string();
        for needle in [
            "sample.toml",
            "nats.url: environment variable LFX_SYNC_TEST_UNSET_VAR is not set",
            "nats.bucket",
            "nats.password: secrets must be ${ENV} references",
            "postgres.streams[0].schema: missing",
            "postgres.streams[1].key: must not be empty",
            "postgres.streams[2]: stream \"s-t\" is configured twice",
        ] {
            assert!(text.contains(needle), "{needle:?} not in:\n{text}");
        }
        assert!(!text.contains("hunter2"));
        assert_eq!(err.problems.len(), 6, "{text}");
    }

    #[test]
    fn syntax_errors_name_the_file() {
        let err = load("[postgres\nurl=").unwrap_err();
        assert!(err.to_string().contains("sample.toml"));
        let err = load("[postgres]\nurl = \"x\"\nbogus = 1\n").unwrap_err();
        assert!(err.to_string().contains("bogus"), "{err}");
    }

    #[test]
    fn shipped_configs_are_valid() {
        let overrides = Overrides {
            database_url: Some("postgres://localhost/db".into()),
            nats_url: Some("nats://localhost:4222".into()),
            ..Default::default()
        };
        for name in ["demo.toml", "lfx-v1-postgres.toml"] {
            let path = Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("tap-configs")
                .join(name);
            let config = Config::load(&path, &overrides).unwrap_or_else(|e| panic!("{e}"));
            assert!(!config.postgres.unwrap().streams.is_empty());
        }
    }

    #[test]
    fn shipped_dynamodb_config_lists_the_lfx_tables_and_their_timestamps() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("tap-configs/lfx-v1-dynamodb.toml");
        let overrides = Overrides {
            nats_url: Some("nats://localhost:4222".into()),
            ..Default::default()
        };
        let config = Config::load(&path, &overrides).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(config.state_id, "itx-dynamodb-incremental");
        assert!(config.postgres.is_none());
        let ddb = config.dynamodb.unwrap();
        assert_eq!(ddb.tables.len(), 22);
        let ts = |t: &str| {
            ddb.tables
                .iter()
                .find(|x| x.table == t)
                .unwrap_or_else(|| panic!("{t} missing"))
                .timestamp
                .clone()
        };
        assert_eq!(ts("itx-zoom-meetings-v2").as_deref(), Some("modified_at"));
        assert_eq!(ts("itx-poll-vote").as_deref(), Some("last_modified_time"));
        assert_eq!(
            ts("itx-groupsio-v2-artifact").as_deref(),
            Some("last_modified_at")
        );
        assert_eq!(ts("surveymonkey-surveys").as_deref(), Some("date_modified"));
        assert_eq!(
            ts("itx-zoom-meetings-attachments-v2").as_deref(),
            Some("updated_at")
        );
        assert_eq!(ts("itx-zoom-past-meetings-mappings"), None);
        assert_eq!(ddb.segments, 4);
        assert_eq!(ddb.aws, AwsSettings::default());
    }

    #[test]
    fn dynamodb_settings_are_validated_together() {
        let err = load(
            r#"
            [dynamodb]
            endpoint_url = "localhost:8000"
            segments = 0
            page_size = 0
            [[dynamodb.tables]]
            table = "ok-table"
            [[dynamodb.tables]]
            table = "ok-table"
            timestamp = ""
            [[dynamodb.tables]]
            table = "has.dot"
            [[dynamodb.tables]]
            timestamp = "modified_at"
            "#,
        )
        .unwrap_err();
        let text = err.to_string();
        for needle in [
            "dynamodb.endpoint_url: \"localhost:8000\" is not an http",
            "dynamodb.segments: 0 is not between 1 and 1000000",
            "dynamodb.page_size: must be at least 1",
            "dynamodb.tables[1]: table \"ok-table\" is configured twice",
            "dynamodb.tables[1].timestamp: must not be empty",
            "dynamodb.tables[2].table: \"has.dot\" is not a usable table name",
            "dynamodb.tables[3].table: missing",
        ] {
            assert!(text.contains(needle), "{needle:?} not in:\n{text}");
        }
        assert_eq!(err.problems.len(), 7, "{text}");

        let err = load("state_id = \"x\"\n").unwrap_err();
        assert!(err.to_string().contains("no source configured"), "{err}");
    }

    #[test]
    fn postgres_and_dynamodb_together() {
        // SAFETY: the variable name is unique to this test.
        unsafe { std::env::set_var("LFX_SYNC_TEST_DDB_URL", "http://127.0.0.1:8000") };
        let c = load(
            r#"
            [postgres]
            url = "postgres://x/db"
            [[postgres.streams]]
            schema = "platform"
            table = "project__c"
            [dynamodb]
            region = "eu-west-1"
            endpoint_url = "${LFX_SYNC_TEST_DDB_URL}"
            assume_role = "arn:aws:iam::123456789012:role/reader"
            lookback_seconds = 60
            [[dynamodb.tables]]
            table = "itx-poll"
            timestamp = "last_modified_time"
            "#,
        )
        .unwrap();
        let ddb = c.dynamodb.unwrap();
        assert_eq!(ddb.aws.region.as_deref(), Some("eu-west-1"));
        assert_eq!(
            ddb.aws.endpoint_url.as_deref(),
            Some("http://127.0.0.1:8000")
        );
        assert_eq!(
            ddb.aws.assume_role.as_deref(),
            Some("arn:aws:iam::123456789012:role/reader")
        );
        assert_eq!(ddb.lookback, Duration::from_secs(60));
        assert_eq!(ddb.page_size, None);
        assert_eq!(c.postgres.unwrap().streams.len(), 1);

        let clash = load(
            r#"
            [postgres]
            url = "postgres://x/db"
            [[postgres.streams]]
            schema = "itx"
            table = "poll"
            [dynamodb]
            [[dynamodb.tables]]
            table = "itx-poll"
            "#,
        )
        .unwrap_err();
        assert!(
            clash
                .to_string()
                .contains("stream \"itx-poll\" is also a postgres stream"),
            "{clash}"
        );
    }

    #[test]
    fn host_settings_build_an_encoded_url() {
        // SAFETY: the variable name is unique to this test.
        unsafe { std::env::set_var("LFX_SYNC_TEST_PW", "p@ss word") };
        let c = load(
            r#"
            [postgres]
            host = "db.internal"
            port = 6543
            user = "reader"
            password = "${LFX_SYNC_TEST_PW}"
            database = "lfx"
            sslmode = "require"
            [[postgres.streams]]
            schema = "platform"
            table = "project__c"
            "#,
        )
        .unwrap();
        assert_eq!(
            c.postgres.unwrap().url,
            "postgres://reader:p%40ss%20word@db.internal:6543/lfx?sslmode=require"
        );
        assert_eq!(c.state_id, "sample");
        assert_eq!(c.bucket, "v1-objects");
    }
}
