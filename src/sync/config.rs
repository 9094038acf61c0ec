//! Settings of `lfx-sync sync`, validated once, up front, with every problem
//! reported together.

use std::collections::HashSet;
use std::fmt;
use std::net::{SocketAddr, ToSocketAddrs};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use super::v2::config::{V2Args, V2Config};
use super::wal::{DEFAULT_KEY, StreamSpec, Streams};
use crate::config::{Config, Overrides};
use crate::nats::NatsSettings;

/// The settings as given (flags, environment), before validation.
#[derive(Debug, Clone)]
pub struct SyncOptions {
    pub nats_url: Option<String>,
    pub bucket: Option<String>,
    pub create_buckets: bool,
    pub create_streams: bool,
    pub bind: String,
    pub streams_config: PathBuf,
    pub wal_stream: String,
    pub wal_subject: Option<String>,
    pub wal_consumer: String,
    pub dlq_stream: String,
    pub workers: u64,
    pub max_in_flight: u64,
    pub max_deliver: u64,
    pub ack_wait: String,
    pub drain_timeout: String,
    pub nats_down_timeout: String,
    /// The v2 push (the KV consumer); off without service URLs.
    pub v2: V2Args,
}

/// Validated settings; Debug shows no key material.
#[derive(Debug)]
pub struct SyncSettings {
    pub nats: NatsSettings,
    pub bucket: String,
    pub key_prefix: String,
    pub create_buckets: bool,
    pub create_streams: bool,
    pub bind: SocketAddr,
    pub streams_config: PathBuf,
    pub streams: Streams,
    pub wal_stream: String,
    pub wal_subject: String,
    pub wal_consumer: String,
    pub dlq_stream: String,
    pub workers: usize,
    pub max_in_flight: usize,
    pub max_deliver: u32,
    pub ack_wait: Duration,
    pub drain_timeout: Duration,
    pub nats_down_timeout: Duration,
    /// Every stream of the streams config (PostgreSQL streams and DynamoDB
    /// tables): `v1-objects` prefixes the KV consumer acknowledges quietly.
    pub known_streams: HashSet<String>,
    /// `Some` when the v2 push is on.
    pub v2: Option<V2Config>,
}

/// Every problem found in the settings.
#[derive(Debug, thiserror::Error)]
pub struct SettingsError {
    pub problems: Vec<String>,
}

impl fmt::Display for SettingsError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "invalid sync settings:")?;
        for p in &self.problems {
            write!(f, "\n  - {p}")?;
        }
        Ok(())
    }
}

const MAX_WORKERS: u64 = 4096;
const MAX_IN_FLIGHT: u64 = 65_536;
const MAX_DELIVER: u64 = 1000;

impl SyncOptions {
    pub fn validate(self) -> Result<SyncSettings, SettingsError> {
        let mut problems = Vec::new();
        let mut check = |ok: bool, problem: String| {
            if !ok {
                problems.push(problem);
            }
        };

        for (flag, name) in [
            ("--wal-stream", &self.wal_stream),
            ("--dlq-stream", &self.dlq_stream),
            ("--wal-consumer", &self.wal_consumer),
        ] {
            check(
                valid_name(name),
                format!(
                    "{flag} {name:?}: a stream or consumer name is non-empty and has no spaces, `.`, `*`, `>`, `/` or `\\`"
                ),
            );
        }
        check(
            self.wal_stream != self.dlq_stream,
            format!(
                "--dlq-stream {:?} must differ from --wal-stream",
                self.dlq_stream
            ),
        );
        let wal_subject = self
            .wal_subject
            .clone()
            .unwrap_or_else(|| format!("{}.*", self.wal_stream));
        check(
            valid_subject_filter(&wal_subject),
            format!("--wal-subject {wal_subject:?} is not a valid subject filter"),
        );
        check(
            (1..=MAX_WORKERS).contains(&self.workers),
            format!(
                "--workers {} is not between 1 and {MAX_WORKERS}",
                self.workers
            ),
        );
        check(
            (1..=MAX_IN_FLIGHT).contains(&self.max_in_flight),
            format!(
                "--max-in-flight {} is not between 1 and {MAX_IN_FLIGHT}",
                self.max_in_flight
            ),
        );
        check(
            (1..=MAX_DELIVER).contains(&self.max_deliver),
            format!(
                "--max-deliver {} is not between 1 and {MAX_DELIVER}",
                self.max_deliver
            ),
        );
        let mut duration = |flag: &str, text: &str, least: Duration| match parse_duration(text) {
            Some(d) if d >= least => d,
            Some(_) => {
                problems.push(format!("{flag} {text:?} is shorter than {least:?}"));
                least
            }
            None => {
                problems.push(format!(
                    "{flag} {text:?} is not a duration (e.g. 500ms, 30s, 5m, 1h)"
                ));
                least
            }
        };
        let ack_wait = duration("--ack-wait", &self.ack_wait, Duration::from_secs(1));
        let drain_timeout = duration("--drain-timeout", &self.drain_timeout, Duration::ZERO);
        let nats_down_timeout = duration(
            "--nats-down-timeout",
            &self.nats_down_timeout,
            Duration::from_secs(1),
        );
        let bind = match parse_bind(&self.bind) {
            Some(addr) => addr,
            None => {
                problems.push(format!("--bind {:?} is not HOST:PORT or :PORT", self.bind));
                SocketAddr::from(([0, 0, 0, 0], 0))
            }
        };

        // The daemon reads no database: any stand-in satisfies the file's url.
        let overrides = Overrides {
            database_url: Some("postgres://unused".to_string()),
            nats_url: self.nats_url.clone(),
            bucket: self.bucket.clone(),
            state_id: None,
        };
        let config = match Config::load(&self.streams_config, &overrides) {
            Ok(config) => Some(config),
            Err(e) => {
                let at = e.path.display().to_string();
                problems.extend(
                    e.problems
                        .into_iter()
                        .map(|p| format!("--streams-config {at}: {p}")),
                );
                None
            }
        };
        let streams = config.as_ref().map(streams_of).unwrap_or_default();
        if config.is_some() && streams.is_empty() {
            problems.push(format!(
                "--streams-config {}: no PostgreSQL streams (the WAL carries PostgreSQL tables)",
                self.streams_config.display()
            ));
        }

        let extra_known = self.v2.known_streams.clone();
        let v2 = match self.v2.validate() {
            Ok(v2) => v2,
            Err(e) => {
                problems.extend(e.problems);
                None
            }
        };
        if let Some(v2) = &v2 {
            for (flag, name) in [
                ("--mappings-bucket", &v2.mappings_bucket),
                ("--kv-consumer", &v2.kv_consumer),
            ] {
                if !valid_name(name) {
                    problems.push(format!(
                        "{flag} {name:?}: a bucket or consumer name is non-empty and has no spaces, `.`, `*`, `>`, `/` or `\\`"
                    ));
                }
            }
            if v2.kv_consumer == self.wal_consumer {
                problems.push(format!(
                    "--kv-consumer {:?} must differ from --wal-consumer",
                    v2.kv_consumer
                ));
            }
        }
        let mut known_streams = config.as_ref().map(known_streams_of).unwrap_or_default();
        known_streams.extend(extra_known.into_iter().filter(|s| !s.is_empty()));

        // A config that did not load always left its problems behind.
        let config = match config {
            Some(config) if problems.is_empty() => config,
            _ => return Err(SettingsError { problems }),
        };
        Ok(SyncSettings {
            nats: config.nats,
            bucket: config.bucket,
            key_prefix: config.key_prefix,
            create_buckets: self.create_buckets,
            create_streams: self.create_streams,
            bind,
            streams_config: self.streams_config,
            streams,
            wal_stream: self.wal_stream,
            wal_subject,
            wal_consumer: self.wal_consumer,
            dlq_stream: self.dlq_stream,
            workers: self.workers as usize,
            max_in_flight: self.max_in_flight as usize,
            max_deliver: self.max_deliver as u32,
            ack_wait,
            drain_timeout,
            nats_down_timeout,
            known_streams,
            v2,
        })
    }
}

fn known_streams_of(config: &Config) -> HashSet<String> {
    let postgres = config.postgres.iter().flat_map(|pg| &pg.streams);
    let dynamodb = config.dynamodb.iter().flat_map(|d| &d.tables);
    postgres
        .map(|s| s.name.clone())
        .chain(dynamodb.map(|t| t.table.clone()))
        .collect()
}

fn streams_of(config: &Config) -> Streams {
    let Some(pg) = &config.postgres else {
        return Streams::new();
    };
    pg.streams
        .iter()
        .map(|s| {
            let spec = StreamSpec {
                timestamp_field: s.replication_key.as_deref().map(Arc::from),
                key: s
                    .key
                    .clone()
                    .unwrap_or_else(|| vec![DEFAULT_KEY.to_string()]),
            };
            (s.name.clone(), spec)
        })
        .collect()
}

/// JetStream stream and consumer names: no whitespace, no subject tokens, no paths.
fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 255
        && !name
            .chars()
            .any(|c| c.is_whitespace() || c.is_control() || ".*>/\\".contains(c))
}

fn valid_subject_filter(subject: &str) -> bool {
    let tokens: Vec<&str> = subject.split('.').collect();
    tokens.iter().enumerate().all(|(i, t)| {
        !t.is_empty()
            && !t.chars().any(|c| c.is_whitespace() || c.is_control())
            && (!t.contains('*') || *t == "*")
            && (!t.contains('>') || (*t == ">" && i == tokens.len() - 1))
    })
}

/// `500ms`, `30s`, `5m`, `1h`, or a bare number of seconds.
pub fn parse_duration(text: &str) -> Option<Duration> {
    let text = text.trim();
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let n: u64 = number.parse().ok()?;
    let millis = match unit {
        "ms" => Some(n),
        "" | "s" => n.checked_mul(1000),
        "m" => n.checked_mul(60_000),
        "h" => n.checked_mul(3_600_000),
        _ => None,
    }?;
    Some(Duration::from_millis(millis))
}

/// `HOST:PORT`, `[v6]:PORT`, or `:PORT` for every IPv4 interface.
fn parse_bind(text: &str) -> Option<SocketAddr> {
    let text = text.trim();
    let full = match text.strip_prefix(':') {
        Some(port) => format!("0.0.0.0:{port}"),
        None => text.to_string(),
    };
    if let Ok(addr) = full.parse() {
        return Some(addr);
    }
    full.to_socket_addrs().ok()?.next()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(clap::Parser)]
    struct Cli {
        #[command(flatten)]
        v2: V2Args,
    }

    fn v2_args(argv: &[&str]) -> V2Args {
        let mut all = vec!["lfx-sync"];
        all.extend_from_slice(argv);
        <Cli as clap::Parser>::try_parse_from(all)
            .unwrap_or_else(|e| panic!("{e}"))
            .v2
    }

    fn options(streams_config: PathBuf) -> SyncOptions {
        SyncOptions {
            nats_url: Some("nats://127.0.0.1:4222".into()),
            bucket: None,
            create_buckets: false,
            create_streams: false,
            bind: ":8080".into(),
            streams_config,
            wal_stream: "wal_listener".into(),
            wal_subject: None,
            wal_consumer: "lfx-sync-wal".into(),
            dlq_stream: "lfx-sync-dlq".into(),
            workers: 64,
            max_in_flight: 1024,
            max_deliver: 5,
            ack_wait: "60s".into(),
            drain_timeout: "25s".into(),
            nats_down_timeout: "5m".into(),
            v2: v2_args(&[]),
        }
    }

    fn shipped() -> PathBuf {
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tap-configs/lfx-v1-postgres.toml")
    }

    #[test]
    fn defaults_with_the_shipped_streams_config() {
        let s = options(shipped())
            .validate()
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(s.bind, "0.0.0.0:8080".parse().unwrap());
        assert_eq!(s.wal_subject, "wal_listener.*");
        assert_eq!(s.bucket, "v1-objects");
        assert_eq!(s.nats.url, "nats://127.0.0.1:4222");
        assert_eq!(s.ack_wait, Duration::from_secs(60));
        let project = &s.streams["salesforce-project__c"];
        assert_eq!(project.timestamp_field.as_deref(), Some("systemmodstamp"));
        assert_eq!(project.key, ["sfid"]);
        assert_eq!(
            s.streams["platform-collaboration__c"]
                .timestamp_field
                .as_deref(),
            Some("lastmodifieddate")
        );
        // No configured key: the CDC path's sfid.
        assert_eq!(s.streams["salesforce_b2b-Account"].key, ["sfid"]);
        assert!(s.v2.is_none());
        assert!(s.known_streams.contains("platform-community__c"));
    }

    #[test]
    fn v2_problems_are_reported_with_the_others() {
        let mut o = options(shipped());
        o.workers = 0;
        o.v2 = v2_args(&["--project-service-url", "http://projects"]);
        let err = o.validate().unwrap_err();
        let text = err.to_string();
        for needle in [
            "--workers 0",
            "COMMITTEE_SERVICE_URL is required",
            "HEIMDALL_KEY_ID is required",
            "AUTH0_CLIENT_ID is required",
        ] {
            assert!(text.contains(needle), "{needle:?} not in:\n{text}");
        }
    }

    #[test]
    fn known_streams_take_extras() {
        let mut o = options(shipped());
        o.v2 = v2_args(&["--known-streams", "itx-poll,itx-surveys"]);
        let s = o.validate().unwrap_or_else(|e| panic!("{e}"));
        assert!(s.known_streams.contains("itx-poll"));
        assert!(s.known_streams.contains("salesforce-project__c"));
    }

    #[test]
    fn every_problem_is_reported_together() {
        let mut o = options(PathBuf::from("/nonexistent/streams.toml"));
        o.wal_stream = "wal.listener".into();
        o.dlq_stream = "".into();
        o.wal_subject = Some("wal listener.>.x".into());
        o.workers = 0;
        o.max_in_flight = 1_000_000;
        o.max_deliver = 0;
        o.ack_wait = "soon".into();
        o.drain_timeout = "10x".into();
        o.nats_down_timeout = "0s".into();
        o.bind = "nowhere".into();
        let err = o.validate().unwrap_err();
        let text = err.to_string();
        for needle in [
            "--wal-stream \"wal.listener\"",
            "--dlq-stream \"\"",
            "--wal-subject",
            "--workers 0",
            "--max-in-flight 1000000",
            "--max-deliver 0",
            "--ack-wait \"soon\"",
            "--drain-timeout \"10x\"",
            "--nats-down-timeout \"0s\" is shorter",
            "--bind \"nowhere\"",
            "--streams-config /nonexistent/streams.toml: cannot read",
        ] {
            assert!(text.contains(needle), "{needle:?} not in:\n{text}");
        }
        assert_eq!(err.problems.len(), 11, "{text}");
    }

    #[test]
    fn a_config_without_postgres_streams_is_refused() {
        let path =
            PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tap-configs/lfx-v1-dynamodb.toml");
        let err = options(path).validate().unwrap_err();
        assert!(err.to_string().contains("no PostgreSQL streams"), "{err}");
    }

    #[test]
    fn durations_binds_and_subjects() {
        assert_eq!(parse_duration("500ms"), Some(Duration::from_millis(500)));
        assert_eq!(parse_duration("30"), Some(Duration::from_secs(30)));
        assert_eq!(parse_duration("5m"), Some(Duration::from_secs(300)));
        assert_eq!(parse_duration("1h"), Some(Duration::from_secs(3600)));
        for bad in ["", "s", "1.5s", "-1s", "1d", "99999999999999999999h"] {
            assert_eq!(parse_duration(bad), None, "{bad}");
        }
        assert_eq!(parse_bind(":9090"), Some("0.0.0.0:9090".parse().unwrap()));
        assert_eq!(parse_bind("[::1]:80"), Some("[::1]:80".parse().unwrap()));
        assert!(parse_bind("localhost:8080").is_some());
        assert_eq!(parse_bind("8080"), None);
        assert!(valid_subject_filter("wal_listener.*"));
        assert!(valid_subject_filter("wal_listener.>"));
        assert!(valid_subject_filter("a.b_c.d"));
        for bad in ["", "a..b", "a.>.b", "a.b*", "a b", "a.>x"] {
            assert!(!valid_subject_filter(bad), "{bad}");
        }
    }
}
