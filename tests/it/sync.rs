//! `lfx-sync sync`: the daemon against real NATS, fed with events shaped as
//! wal-listener publishes them (issue 5 acceptance 1–6), and the benchmark
//! behind `just bench-sync`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use async_nats::jetstream::{self, kv};
use serde_json::{Map, Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::common::*;

/// Every stream and consumer of one test, named so runs never collide.
struct Setup {
    js: jetstream::Context,
    nats_url: String,
    wal: String,
    consumer: String,
    dlq: String,
    bucket: String,
    store: kv::Store,
    streams_config: PathBuf,
    dir: tempfile::TempDir,
}

fn shipped_streams_config() -> PathBuf {
    repo().join("tap-configs/lfx-v1-postgres.toml")
}

impl Setup {
    async fn new() -> Setup {
        Self::on(&services().nats_url, shipped_streams_config()).await
    }

    /// The WAL stream as wal-listener creates it (`<name>.*`) and an empty bucket.
    async fn on(nats_url: &str, streams_config: PathBuf) -> Setup {
        let client = async_nats::connect(nats_url).await.expect("connect NATS");
        let js = jetstream::new(client.clone());
        let wal = new_wal_stream(&js).await;
        let bucket = unique("v1");
        let store = js
            .create_key_value(kv::Config {
                bucket: bucket.clone(),
                history: 5,
                ..Default::default()
            })
            .await
            .expect("create bucket");
        Setup {
            js,
            nats_url: nats_url.to_string(),
            consumer: unique("consumer"),
            dlq: unique("dlq"),
            wal,
            bucket,
            store,
            streams_config,
            dir: tempfile::tempdir().expect("temp dir"),
        }
    }

    fn args(&self, port: u16) -> Vec<String> {
        [
            "sync",
            "--nats-url",
            &self.nats_url,
            "--bucket",
            &self.bucket,
            "--streams-config",
            &self.streams_config.display().to_string(),
            "--wal-stream",
            &self.wal,
            "--wal-consumer",
            &self.consumer,
            "--dlq-stream",
            &self.dlq,
            "--bind",
            &format!("127.0.0.1:{port}"),
            "--log-format",
            "json",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect()
    }

    async fn daemon(&self, extra: &[&str]) -> Daemon {
        let port = free_port();
        let mut args = self.args(port);
        args.extend(extra.iter().map(|s| s.to_string()));
        let daemon = Daemon::spawn(&args, port, self.dir.path());
        daemon.wait_ready().await;
        daemon
    }

    fn subject(&self, schema: &str, table: &str) -> String {
        format!("{}.{schema}_{table}", self.wal)
    }

    async fn publish(&self, events: &[Value]) {
        let mut acks = Vec::with_capacity(events.len());
        for event in events {
            let subject = self.subject(
                event["schema"].as_str().unwrap_or("x"),
                event["table"].as_str().unwrap_or("x"),
            );
            acks.push(
                self.js
                    .publish(subject, event.to_string().into())
                    .await
                    .expect("publish"),
            );
        }
        for ack in acks {
            ack.await.expect("publish ack");
        }
    }

    async fn publish_raw(&self, suffix: &str, payload: &[u8]) {
        self.js
            .publish(format!("{}.{suffix}", self.wal), payload.to_vec().into())
            .await
            .expect("publish")
            .await
            .expect("publish ack");
    }

    /// Waits until every message of the WAL stream is acknowledged (applied,
    /// skipped or dead-lettered).
    async fn settled(&self, limit: Duration) {
        let started = Instant::now();
        loop {
            let mut stream = self.js.get_stream(&self.wal).await.expect("WAL stream");
            let last = stream
                .info()
                .await
                .expect("stream info")
                .state
                .last_sequence;
            if let Ok(info) = stream.consumer_info(&self.consumer).await
                && info.ack_floor.stream_sequence >= last
                && info.num_ack_pending == 0
            {
                return;
            }
            assert!(
                started.elapsed() < limit,
                "messages still unacknowledged after {limit:?}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    async fn entry(&self, key: &str) -> Option<Map<String, Value>> {
        let entry = self.store.entry(key).await.expect("read entry")?;
        lfx_sync::kv::writer::decode(&entry.value)
    }

    async fn revision(&self, key: &str) -> u64 {
        self.store
            .entry(key)
            .await
            .expect("read entry")
            .map(|e| e.revision)
            .unwrap_or(0)
    }

    /// Messages written to the bucket's stream so far.
    async fn kv_messages(&self) -> u64 {
        let mut stream = self
            .js
            .get_stream(format!("KV_{}", self.bucket))
            .await
            .expect("KV stream");
        stream.info().await.expect("KV stream info").state.messages
    }

    /// The dead letters, in order.
    async fn dead_letters(&self) -> Vec<jetstream::message::StreamMessage> {
        let Ok(mut stream) = self.js.get_stream(&self.dlq).await else {
            return Vec::new();
        };
        let state = stream.info().await.expect("DLQ info").state.clone();
        let mut out = Vec::new();
        for seq in state.first_sequence..=state.last_sequence {
            if state.messages == 0 {
                break;
            }
            out.push(stream.get_raw_message(seq).await.expect("dead letter"));
        }
        out
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("free port")
}

/// A running `lfx-sync sync`, killed when dropped.
struct Daemon {
    child: tokio::process::Child,
    port: u16,
    log: PathBuf,
}

impl Daemon {
    fn spawn(args: &[String], port: u16, dir: &Path) -> Daemon {
        let log = dir.join(format!("{}.log", unique("daemon")));
        let file = std::fs::File::create(&log).expect("daemon log");
        let child = tokio::process::Command::new(env!("CARGO_BIN_EXE_lfx-sync"))
            .args(args)
            .env_remove("NATS_URL")
            .env("NO_COLOR", "1")
            .stdout(Stdio::null())
            .stderr(Stdio::from(file))
            .kill_on_drop(true)
            .spawn()
            .expect("start lfx-sync sync");
        Daemon { child, port, log }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    async fn get(&self, path: &str) -> Option<(u16, String)> {
        http_get(self.port, path).await
    }

    async fn wait_ready(&self) {
        let started = Instant::now();
        loop {
            if let Some((200, _)) = self.get("/readyz").await {
                return;
            }
            assert!(
                started.elapsed() < Duration::from_secs(30),
                "daemon not ready; log:\n{}",
                self.log()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    async fn metrics(&self) -> String {
        match self.get("/metrics").await {
            Some((200, body)) => body,
            other => panic!("no metrics: {other:?}\n{}", self.log()),
        }
    }

    /// The count of `lfx_sync_messages_total` for `outcome`.
    async fn outcome(&self, outcome: &str) -> u64 {
        sample(
            &self.metrics().await,
            "lfx_sync_messages_total",
            &format!("outcome=\"{outcome}\""),
        )
    }

    fn terminate(&self) {
        let pid = self.child.id().expect("daemon is running");
        let status = std::process::Command::new("kill")
            .args(["-TERM", &pid.to_string()])
            .status()
            .expect("kill -TERM");
        assert!(status.success());
    }

    async fn exit_code(&mut self, limit: Duration) -> Option<i32> {
        let status = tokio::time::timeout(limit, self.child.wait())
            .await
            .unwrap_or_else(|_| panic!("daemon still running after {limit:?}:\n{}", self.log()))
            .expect("wait for daemon");
        status.code()
    }
}

/// A plain HTTP/1.1 GET: status and body, `None` when nothing listens.
async fn http_get(port: u16, path: &str) -> Option<(u16, String)> {
    let mut socket = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .ok()?;
    socket
        .write_all(format!("GET {path} HTTP/1.1\r\nHost: test\r\n\r\n").as_bytes())
        .await
        .ok()?;
    let mut text = String::new();
    socket.read_to_string(&mut text).await.ok()?;
    let status = text.split(' ').nth(1)?.parse().ok()?;
    let body = text.split_once("\r\n\r\n")?.1.to_string();
    Some((status, body))
}

/// The sum of a metric's samples whose labels contain `labels`.
fn sample(metrics: &str, name: &str, labels: &str) -> u64 {
    metrics
        .lines()
        .filter(|l| l.starts_with(&format!("{name}{{")) && l.contains(labels))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum::<f64>() as u64
}

// ------------------------------------------------------------------ events ---

/// An event as wal-listener marshals its `Event` (github.com/ihippik/wal-listener,
/// internal/publisher/event.go): `commitTime` and timestamp columns are Go
/// `time.Time` in RFC3339Nano, numeric and array columns PostgreSQL text,
/// jsonb embedded, and `data` `{}` on DELETE.
fn wal_event(
    schema: &str,
    table: &str,
    action: &str,
    data: Value,
    data_old: Value,
    commit: &str,
) -> Value {
    static N: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);
    let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    json!({
        "id": format!("6f1c1d6e-8e7a-4c61-9d8e-{n:012x}"),
        "schema": schema,
        "table": table,
        "action": action,
        "data": data,
        "dataOld": data_old,
        "commitTime": commit,
    })
}

/// A `salesforce.project__c` row (replication key `systemmodstamp`).
fn project(sfid: &str, name: &str, ts: &str) -> Value {
    json!({
        "id": 1041, "sfid": sfid, "name": name, "slug__c": "cncf",
        "status__c": "Active", "annual_budget__c": "1250000.00", "funding_ratio__c": "0.75",
        "member_count__c": 812, "big_counter__c": 9007199254740993u64,
        "tags__c": "{cloud,native}", "metadata__c": {"tier": 1, "tags": ["a"]},
        "is_foundation__c": true, "start_date__c": "2015-12-01",
        "createddate": "2015-12-01T00:00:00Z", "lastmodifieddate": ts, "systemmodstamp": ts,
        "isdeleted": false, "_hc_lastop": "SYNCED", "_hc_err": null
    })
}

/// A `platform.collaboration__c` row (replication key `lastmodifieddate`).
fn membership(sfid: &str, role: &str, ts: &str) -> Value {
    json!({
        "sfid": sfid, "community__c": "a0R5G0000000000001", "contact__c": "0035G00000NEW00001",
        "role__c": role, "voting_status__c": "Voting Rep", "appointed_by__c": null,
        "start_date__c": "2024-01-01", "end_date__c": null, "weight__c": "0.5",
        "contact_name__c": "Zoë Lovelace", "contact_email__c": "zoe@example.org",
        "attributes__c": {"seat": 3}, "lastmodifieddate": ts, "systemmodstamp": ts,
        "isdeleted": false, "_hc_lastop": "SYNCED"
    })
}

/// A `platform.community__c` row (replication key `systemmodstamp`).
fn committee(sfid: &str, name: &str, ts: &str) -> Value {
    json!({
        "id": 5, "sfid": sfid, "name": name, "project__c": "a0P5G00000ABCDEFGH",
        "type__c": "Board", "email_alias__c": "board@example.org", "is_public__c": false,
        "member_count__c": 9, "description__c": "multi\nline", "settings__c": {"quorum": 0.5},
        "voting_weight__c": "0.2500", "lastmodifieddate": ts, "systemmodstamp": ts,
        "isdeleted": false, "_hc_lastop": "SYNCED", "_hc_err": null
    })
}

fn upsert(schema: &str, table: &str, action: &str, row: Value, commit: &str) -> Value {
    wal_event(schema, table, action, row, json!({}), commit)
}

fn delete(schema: &str, table: &str, old_row: Value, commit: &str) -> Value {
    wal_event(schema, table, "DELETE", json!({}), old_row, commit)
}

fn object(v: &Value) -> Map<String, Value> {
    v.as_object().expect("object").clone()
}

// ------------------------------------------------------------- acceptance ---

#[tokio::test]
async fn wal_events_land_as_upserts_and_soft_deletions() {
    let setup = Setup::new().await;
    let daemon = setup.daemon(&[]).await;
    type Row = fn(&str, &str, &str) -> Value;
    let tables: [(&str, &str, Row, &str); 3] = [
        ("salesforce", "project__c", project, "a0P5G00000"),
        ("platform", "collaboration__c", membership, "a0Q5G00000"),
        ("platform", "community__c", committee, "a0R5G00000"),
    ];
    let mut events = Vec::new();
    let mut expected: BTreeMap<String, (Value, &str, Option<&str>)> = BTreeMap::new();
    for (schema, table, row, prefix) in tables {
        let (kept, gone) = (format!("{prefix}KEPT0001"), format!("{prefix}GONE0001"));
        let inserted = row(&kept, "first", "2024-06-01T10:00:00.5Z");
        let updated = row(&kept, "second", "2024-06-01T12:00:00.123456Z");
        let doomed = row(&gone, "doomed", "2024-06-01T10:00:00Z");
        events.push(upsert(
            schema,
            table,
            "INSERT",
            inserted,
            "2024-06-01T10:00:00.6Z",
        ));
        events.push(upsert(
            schema,
            table,
            "INSERT",
            doomed.clone(),
            "2024-06-01T10:00:01Z",
        ));
        // Commit times come with the writer's offset: stored in UTC.
        events.push(upsert(
            schema,
            table,
            "UPDATE",
            updated.clone(),
            "2024-06-01T14:00:00.2+02:00",
        ));
        events.push(delete(
            schema,
            table,
            doomed.clone(),
            "2024-06-01T13:00:00.000000001Z",
        ));
        let stream = format!("{schema}-{table}");
        expected.insert(
            format!("{stream}.{kept}"),
            (updated, "2024-06-01T12:00:00.200000Z", None),
        );
        expected.insert(
            format!("{stream}.{gone}"),
            (
                doomed,
                "2024-06-01T13:00:00.000000Z",
                Some("2024-06-01T13:00:00.000000Z"),
            ),
        );
    }
    events.push(wal_event(
        "platform",
        "community__c",
        "TRUNCATE",
        json!({}),
        json!({}),
        "2024-06-01T13:00:00Z",
    ));
    setup.publish(&events).await;
    setup.settled(Duration::from_secs(30)).await;

    let stored = contents(&setup.store).await;
    assert_eq!(
        stored.keys().collect::<Vec<_>>(),
        expected.keys().collect::<Vec<_>>()
    );
    for (key, (row, extracted, deleted)) in &expected {
        let entry = &stored[key];
        assert_eq!(&without_sdc(entry), &object(row), "{key}");
        assert_eq!(entry["_sdc_extracted_at"], json!(extracted), "{key}");
        let received = entry["_sdc_received_at"].as_str().expect("received_at");
        assert!(
            chrono::DateTime::parse_from_rfc3339(received).is_ok(),
            "{key}: {received}"
        );
        assert_eq!(
            entry.get("_sdc_deleted_at").and_then(Value::as_str),
            *deleted,
            "{key}"
        );
    }
    for (outcome, n) in [
        ("created", 6),
        ("updated", 3),
        ("soft_deleted", 3),
        ("ignored", 1),
    ] {
        assert_eq!(daemon.outcome(outcome).await, n, "{outcome}");
    }
    assert!(setup.dead_letters().await.is_empty());
    let log = daemon.log();
    assert!(
        log.lines()
            .any(|l| l.contains("TRUNCATE does not remove entries")),
        "{log}"
    );
}

#[tokio::test]
async fn wal_changes_older_than_the_entry_or_after_a_soft_delete_are_skipped() {
    let setup = Setup::new().await;
    // Entries as the backfill stores them (tap-postgres timestamp rendering).
    let stored = |sfid: &str, name: &str, ts: &str| {
        let mut row = object(&project(sfid, name, ts));
        row.insert("_sdc_extracted_at".into(), json!("2024-06-03T00:00:00Z"));
        row.insert("_sdc_received_at".into(), json!("2024-06-03T00:00:00Z"));
        row
    };
    let put = |key: String, value: Map<String, Value>| {
        let store = setup.store.clone();
        async move {
            store
                .put(key, serde_json::to_vec(&value).unwrap().into())
                .await
                .unwrap()
        }
    };
    let key = |sfid: &str| format!("salesforce-project__c.{sfid}");
    put(
        key("NEWER"),
        stored("NEWER", "backfill", "2024-06-02T00:00:00.000000+00:00"),
    )
    .await;
    let mut deleted = stored("DELETED", "backfill", "2024-06-01T00:00:00.000000+00:00");
    deleted.insert("_sdc_deleted_at".into(), json!("2024-06-02T00:00:00Z"));
    put(key("DELETED"), deleted.clone()).await;
    put(
        key("EQUAL"),
        stored("EQUAL", "backfill", "2024-06-02T00:00:00.000000+00:00"),
    )
    .await;
    put(
        key("LIVE"),
        stored("LIVE", "backfill", "2024-06-01T00:00:00.000000+00:00"),
    )
    .await;
    let revisions = [
        setup.revision(&key("NEWER")).await,
        setup.revision(&key("DELETED")).await,
        setup.revision(&key("EQUAL")).await,
    ];

    let daemon = setup.daemon(&[]).await;
    let update = |sfid: &str, ts: &str, commit: &str| {
        upsert(
            "salesforce",
            "project__c",
            "UPDATE",
            project(sfid, "wal", ts),
            commit,
        )
    };
    setup
        .publish(&[
            // Older than the entry (same instant as 2024-06-01T23:00:00Z).
            update("NEWER", "2024-06-02T01:00:00+02:00", "2024-06-02T00:00:01Z"),
            // Newer, but the entry is soft-deleted.
            update("DELETED", "2024-06-05T00:00:00Z", "2024-06-05T00:00:01Z"),
            // The same instant in wal-listener's form: unchanged.
            update("EQUAL", "2024-06-02T00:00:00Z", "2024-06-02T00:00:01Z"),
            // A delete, then an update that committed after it.
            delete(
                "salesforce",
                "project__c",
                project("LIVE", "wal", "2024-06-01T00:00:00Z"),
                "2024-06-04T00:00:00Z",
            ),
            update("LIVE", "2024-06-05T00:00:00Z", "2024-06-05T00:00:01Z"),
        ])
        .await;
    setup.settled(Duration::from_secs(30)).await;

    assert_eq!(
        [
            setup.revision(&key("NEWER")).await,
            setup.revision(&key("DELETED")).await,
            setup.revision(&key("EQUAL")).await,
        ],
        revisions,
        "skipped changes write nothing"
    );
    assert_eq!(
        setup.entry(&key("NEWER")).await.unwrap()["name"],
        "backfill"
    );
    assert_eq!(setup.entry(&key("DELETED")).await.unwrap(), deleted);
    let live = setup.entry(&key("LIVE")).await.unwrap();
    assert_eq!(
        live["name"], "backfill",
        "the update after the delete is skipped"
    );
    assert_eq!(live["_sdc_deleted_at"], "2024-06-04T00:00:00.000000Z");
    for (outcome, n) in [
        ("skipped_newer", 1),
        ("skipped_deleted", 2),
        ("unchanged", 1),
        ("soft_deleted", 1),
    ] {
        assert_eq!(daemon.outcome(outcome).await, n, "{outcome}");
    }
    let log = daemon.log();
    assert!(
        log.lines()
            .filter(|l| l.contains("\"level\":\"WARN\"") && l.contains("the entry is soft-deleted"))
            .count()
            == 2,
        "{log}"
    );
}

#[tokio::test]
async fn a_backfill_racing_the_wal_keeps_the_newest_versions_and_every_soft_deletion() {
    const KEYS: usize = 3000;
    let db = TestDb::create(&[&format!(
        "CREATE SCHEMA race;
         CREATE TABLE race.item__c (id serial PRIMARY KEY, sfid varchar(18) UNIQUE NOT NULL,
             name text NOT NULL, lastmodifieddate timestamptz NOT NULL);
         INSERT INTO race.item__c (sfid, name, lastmodifieddate)
             SELECT 'k' || i, 'db-old', timestamptz '2024-01-01 00:00:00+00'
             FROM generate_series(0, {}) AS i;",
        KEYS - 1
    )])
    .await;
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(
        dir.path(),
        "[[postgres.streams]]\nschema = \"race\"\ntable = \"item__c\"\nreplication_key = \"lastmodifieddate\"\nkey = [\"sfid\"]\n",
    );
    let setup = Setup::on(&services().nats_url, config.clone()).await;
    let backfill = |state: &Path| {
        let mut args = backfill_args(&config, &db, &setup.bucket, state);
        args.push("--full".into());
        args
    };
    // Every key is in the bucket, so every delete finds its entry.
    let first = run(&backfill(dir.path())).await;
    expect_exit(&first, 0);

    // The database moves on to a newer version of every row, which a
    // backfill now writes while the WAL brings, per key: a version newer
    // than the database's (k % 3 == 0) or between the two (else), and for
    // every tenth key a delete after that.
    db.exec("UPDATE race.item__c SET name = 'db-new', lastmodifieddate = timestamptz '2024-03-01 00:00:00+00'")
        .await;
    let wal_ts = |i: usize| {
        if i.is_multiple_of(3) {
            "2024-05-01T00:00:00Z"
        } else {
            "2024-02-01T00:00:00Z"
        }
    };
    let mut events = Vec::new();
    for i in 0..KEYS {
        let row = json!({"id": i + 1, "sfid": format!("k{i}"), "name": "wal", "lastmodifieddate": wal_ts(i)});
        events.push(upsert("race", "item__c", "UPDATE", row.clone(), wal_ts(i)));
        if i.is_multiple_of(10) {
            events.push(delete("race", "item__c", row, "2024-06-01T00:00:00Z"));
        }
    }
    let daemon = setup.daemon(&["--workers", "16"]).await;
    let state = tempfile::tempdir().unwrap();
    let publisher = async {
        for chunk in events.chunks(250) {
            setup.publish(chunk).await;
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    };
    let backfills = async {
        let mut reports = Vec::new();
        for _ in 0..2 {
            let out = run(&backfill(state.path())).await;
            expect_exit(&out, 0);
            reports.push(report(&out)["totals"].clone());
        }
        reports
    };
    let ((), reports) = tokio::join!(publisher, backfills);
    setup.settled(Duration::from_secs(60)).await;

    let stored = contents(&setup.store).await;
    assert_eq!(stored.len(), KEYS);
    for i in 0..KEYS {
        let entry = &stored[&format!("race-item__c.k{i}")];
        if i.is_multiple_of(10) {
            assert_eq!(
                entry.get("_sdc_deleted_at").and_then(Value::as_str),
                Some("2024-06-01T00:00:00.000000Z"),
                "k{i}: {entry:?}"
            );
            continue;
        }
        assert!(entry.get("_sdc_deleted_at").is_none(), "k{i}: {entry:?}");
        let (name, ts) = if i.is_multiple_of(3) {
            ("wal", "2024-05-01T00:00:00Z")
        } else {
            ("db-new", "2024-03-01T00:00:00.000000+00:00")
        };
        assert_eq!(entry["name"], name, "k{i}: {entry:?}");
        assert_eq!(entry["lastmodifieddate"], ts, "k{i}");
    }
    // The two writers did meet: the backfill skipped entries the WAL had made
    // newer or deleted, and the WAL skipped entries the backfill had made newer.
    let backfill_skips: u64 = reports
        .iter()
        .map(|t| t["skipped_newer"].as_u64().unwrap() + t["skipped_deleted"].as_u64().unwrap())
        .sum();
    let wal_skips = daemon.outcome("skipped_newer").await + daemon.outcome("skipped_deleted").await;
    assert!(
        backfill_skips + wal_skips > 0,
        "no race happened: {reports:?}"
    );
}

#[tokio::test]
async fn malformed_events_are_dead_lettered_and_the_consumer_keeps_going() {
    let setup = Setup::new().await;
    let daemon = setup.daemon(&[]).await;
    let valid = upsert(
        "salesforce",
        "project__c",
        "INSERT",
        project("a0P5G00000VALID001", "valid", "2024-06-01T00:00:00Z"),
        "2024-06-01T00:00:01Z",
    );
    let mut no_table = valid.clone();
    no_table.as_object_mut().unwrap().remove("table");
    let mut no_commit = valid.clone();
    no_commit.as_object_mut().unwrap().remove("commitTime");
    let mut unknown = valid.clone();
    unknown["table"] = json!("opportunity");
    let mut no_sfid = valid.clone();
    no_sfid["data"].as_object_mut().unwrap().remove("sfid");
    let mut wrong_type = valid.clone();
    wrong_type["data"] = json!("not an object");
    let bad: Vec<(Vec<u8>, &str)> = vec![
        (
            b"{\"schema\": \"salesforce\", \"tab".to_vec(),
            "malformed_json",
        ),
        (b"[1, 2, 3]".to_vec(), "invalid_event"),
        (no_table.to_string().into_bytes(), "missing_field"),
        (no_commit.to_string().into_bytes(), "missing_field"),
        (unknown.to_string().into_bytes(), "unknown_table"),
        (no_sfid.to_string().into_bytes(), "invalid_key"),
        (wrong_type.to_string().into_bytes(), "invalid_event"),
    ];
    for (payload, _) in &bad {
        setup.publish_raw("salesforce_project__c", payload).await;
    }
    setup.publish(&[valid]).await;
    setup.settled(Duration::from_secs(30)).await;

    assert_eq!(
        setup
            .entry("salesforce-project__c.a0P5G00000VALID001")
            .await
            .unwrap()["name"],
        "valid"
    );
    let letters = setup.dead_letters().await;
    assert_eq!(letters.len(), bad.len());
    // Dead letters are published concurrently: match them by payload.
    for (payload, reason) in &bad {
        let letter = letters
            .iter()
            .find(|l| l.payload[..] == payload[..])
            .unwrap_or_else(|| panic!("{reason}: no dead letter stored unchanged"));
        let header = |name: &str| {
            letter
                .headers
                .get(name)
                .map(|v| v.as_str().to_string())
                .unwrap_or_else(|| panic!("{name} missing"))
        };
        assert_eq!(
            letter.subject.as_str(),
            format!("{}.{}.salesforce_project__c", setup.dlq, setup.wal)
        );
        assert_eq!(
            header("Lfx-Sync-Source-Subject"),
            format!("{}.salesforce_project__c", setup.wal)
        );
        assert_eq!(header("Lfx-Sync-Source-Stream"), setup.wal);
        assert_eq!(header("Lfx-Sync-Consumer"), setup.consumer);
        assert_eq!(header("Lfx-Sync-Attempts"), "1");
        let why = header("Lfx-Sync-Reason");
        assert!(why.starts_with(&format!("{reason}: ")), "{why}");
    }
    let metrics = daemon.metrics().await;
    for (reason, n) in [
        ("malformed_json", 1),
        ("invalid_event", 2),
        ("missing_field", 2),
        ("unknown_table", 1),
        ("invalid_key", 1),
    ] {
        assert_eq!(
            sample(
                &metrics,
                "lfx_sync_dead_letters_total",
                &format!("reason=\"{reason}\"")
            ),
            n,
            "{reason}"
        );
    }
    assert_eq!(daemon.outcome("created").await, 1);
    assert_eq!(daemon.outcome("dead_lettered").await, 7);
    assert_eq!(daemon.get("/readyz").await.map(|r| r.0), Some(200));
}

#[tokio::test]
async fn two_daemons_share_one_durable_consumer() {
    const KEYS: usize = 300;
    const VERSIONS: usize = 10;
    let setup = Setup::new().await;
    let a = setup.daemon(&["--workers", "8"]).await;
    let b = setup.daemon(&["--workers", "8"]).await;
    let sfid = |k: usize| format!("a0R5G00000{k:08}");
    let mut events = Vec::new();
    for v in 0..VERSIONS {
        for k in 0..KEYS {
            let ts = format!("2024-06-01T00:{v:02}:00.{k:06}Z");
            events.push(upsert(
                "platform",
                "community__c",
                "UPDATE",
                committee(&sfid(k), &format!("v{v}"), &ts),
                &ts,
            ));
        }
    }
    // Every tenth committee is deleted after its last version.
    for k in (0..KEYS).step_by(10) {
        events.push(delete(
            "platform",
            "community__c",
            committee(&sfid(k), "gone", "2024-06-01T00:00:00Z"),
            "2024-06-02T00:00:00Z",
        ));
    }
    for chunk in events.chunks(500) {
        setup.publish(chunk).await;
    }
    setup.settled(Duration::from_secs(60)).await;

    let stored = contents(&setup.store).await;
    assert_eq!(stored.len(), KEYS);
    for k in 0..KEYS {
        let entry = &stored[&format!("platform-community__c.{}", sfid(k))];
        if k.is_multiple_of(10) {
            // The delete is the newest change: whichever version it met stays, marked.
            assert_eq!(
                entry["_sdc_deleted_at"], "2024-06-02T00:00:00.000000Z",
                "{k}: {entry:?}"
            );
        } else {
            let last = format!("v{}", VERSIONS - 1);
            assert_eq!(entry["name"], json!(last), "{k}: {entry:?}");
            assert!(entry.get("_sdc_deleted_at").is_none(), "{k}: {entry:?}");
        }
    }
    let mut handled = 0;
    for daemon in [&a, &b] {
        let metrics = daemon.metrics().await;
        let mine = sample(&metrics, "lfx_sync_messages_total", "outcome=")
            - sample(&metrics, "lfx_sync_messages_total", "outcome=\"retried\"");
        assert!(mine > 0, "one daemon got no work:\n{metrics}");
        handled += mine;
    }
    assert!(
        handled as usize >= events.len(),
        "{handled} < {}",
        events.len()
    );
    assert!(setup.dead_letters().await.is_empty());
}

#[tokio::test]
async fn sigterm_while_busy_finishes_or_redelivers_every_event() {
    const EVENTS: usize = 20_000;
    const MALFORMED: usize = 20;
    let setup = Setup::new().await;
    let sfid = |i: usize| format!("a0P5G0{i:012}");
    let mut events: Vec<Value> = (0..EVENTS)
        .map(|i| {
            upsert(
                "salesforce",
                "project__c",
                "INSERT",
                project(&sfid(i), "p", "2024-06-01T00:00:00Z"),
                "2024-06-01T00:00:01Z",
            )
        })
        .collect();
    for (n, i) in (0..MALFORMED).map(|n| (n, n * (EVENTS / MALFORMED) + 7)) {
        events.insert(
            i + n,
            json!({"schema": "salesforce", "table": "project__c"}),
        );
    }
    for chunk in events.chunks(2000) {
        setup.publish(chunk).await;
    }

    let mut first = setup.daemon(&["--ack-wait", "2s"]).await;
    let started = Instant::now();
    while setup.kv_messages().await < 2_000 {
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "{}",
            first.log()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    first.terminate();
    assert_eq!(first.exit_code(Duration::from_secs(30)).await, Some(0));
    let log = first.log();
    assert!(
        log.contains("SIGTERM received") && log.contains("\"drained\""),
        "{log}"
    );
    let applied_before = setup.kv_messages().await;
    assert!(
        (applied_before as usize) < EVENTS,
        "the daemon was not busy any more when stopped"
    );

    // Whatever the first daemon did not acknowledge, the next one gets.
    let _second = setup.daemon(&["--ack-wait", "2s"]).await;
    setup.settled(Duration::from_secs(120)).await;
    let stored = contents(&setup.store).await;
    let letters = setup.dead_letters().await;
    assert_eq!(
        (stored.len(), letters.len()),
        (EVENTS, MALFORMED),
        "count in = count applied + dead-lettered"
    );
    for i in 0..EVENTS {
        assert!(
            stored.contains_key(&format!("salesforce-project__c.{}", sfid(i))),
            "{i}"
        );
    }
}

async fn wait_status(daemon: &Daemon, path: &str, status: u16, limit: Duration) {
    let started = Instant::now();
    loop {
        if daemon.get(path).await.map(|r| r.0) == Some(status) {
            return;
        }
        assert!(
            started.elapsed() < limit,
            "{path} never answered {status} within {limit:?}:\n{}",
            daemon.log()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn readyz_is_unready_while_nats_is_down_and_ready_after() {
    let mut nats = OwnNats::start();
    let setup = Setup::on(&nats.url(), shipped_streams_config()).await;
    let daemon = setup.daemon(&["--nats-down-timeout", "60s"]).await;
    assert_eq!(daemon.get("/livez").await.map(|r| r.0), Some(200));

    nats.stop();
    wait_status(&daemon, "/readyz", 503, Duration::from_secs(10)).await;
    let (_, why) = daemon.get("/readyz").await.unwrap();
    assert!(why.contains("NATS is not connected"), "{why}");
    assert_eq!(daemon.get("/livez").await.map(|r| r.0), Some(200));
    let metrics = daemon.metrics().await;
    assert!(
        metrics.contains("\nlfx_sync_nats_connected 0\n"),
        "{metrics}"
    );

    nats.spawn();
    wait_status(&daemon, "/readyz", 200, Duration::from_secs(20)).await;
    // And it consumes again.
    let client = async_nats::connect(nats.url()).await.unwrap();
    let js = jetstream::new(client);
    js.publish(
        setup.subject("salesforce", "project__c"),
        upsert(
            "salesforce",
            "project__c",
            "INSERT",
            project("a0P5G00000AFTER001", "after", "2024-06-01T00:00:00Z"),
            "2024-06-01T00:00:01Z",
        )
        .to_string()
        .into(),
    )
    .await
    .unwrap()
    .await
    .unwrap();
    let started = Instant::now();
    while setup
        .store
        .get("salesforce-project__c.a0P5G00000AFTER001")
        .await
        .ok()
        .flatten()
        .is_none()
    {
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "{}",
            daemon.log()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn nats_gone_for_good_exits_2() {
    let mut nats = OwnNats::start();
    let setup = Setup::on(&nats.url(), shipped_streams_config()).await;
    let mut daemon = setup.daemon(&["--nats-down-timeout", "2s"]).await;
    nats.stop();
    assert_eq!(daemon.exit_code(Duration::from_secs(20)).await, Some(2));
    assert!(
        daemon.log().contains("NATS has been unreachable"),
        "{}",
        daemon.log()
    );
}

#[tokio::test]
async fn startup_problems_exit_2_with_a_clear_message() {
    let setup = Setup::new().await;
    let with = |flag: &str, value: &str, extra: &[&str]| {
        let mut args = setup.args(free_port());
        let at = args.iter().position(|a| a == flag).unwrap() + 1;
        args[at] = value.to_string();
        args.extend(extra.iter().map(|s| s.to_string()));
        args
    };
    let stderr_of = |out: &std::process::Output| String::from_utf8_lossy(&out.stderr).to_string();

    let out = run(&with("--wal-stream", "no_such_wal_stream", &[])).await;
    expect_exit(&out, 2);
    assert!(
        stderr_of(&out).contains("stream `no_such_wal_stream` does not exist"),
        "{}",
        stderr_of(&out)
    );

    let out = run(&with("--bucket", "no_such_bucket", &[])).await;
    expect_exit(&out, 2);
    assert!(
        stderr_of(&out).contains("KV bucket `no_such_bucket` does not exist"),
        "{}",
        stderr_of(&out)
    );

    let out = run(&with(
        "--wal-consumer",
        "bad.name",
        &["--workers", "0", "--ack-wait", "soon"],
    ))
    .await;
    expect_exit(&out, 2);
    let stderr = stderr_of(&out);
    for problem in [
        "--wal-consumer \"bad.name\"",
        "--workers 0",
        "--ack-wait \"soon\"",
    ] {
        assert!(stderr.contains(problem), "every problem at once: {stderr}");
    }
}

// -------------------------------------------------------------- benchmark ---

fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// The q-quantile of histogram `name` between two scrapes, interpolated
/// linearly inside its bucket.
fn quantile(name: &str, before: &str, after: &str, q: f64) -> Option<f64> {
    let prefix = format!("{name}_bucket{{");
    let buckets = |text: &str| -> Vec<(f64, f64)> {
        text.lines()
            .filter(|l| l.starts_with(&prefix))
            .filter_map(|l| {
                let le = l.split("le=\"").nth(1)?.split('"').next()?;
                let le = if le == "+Inf" {
                    f64::INFINITY
                } else {
                    le.parse().ok()?
                };
                Some((le, l.rsplit(' ').next()?.parse().ok()?))
            })
            .collect()
    };
    let (b, a) = (buckets(before), buckets(after));
    let counts: Vec<(f64, f64)> = a
        .iter()
        .zip(b.iter().chain(std::iter::repeat(&(0.0, 0.0))))
        .map(|((le, n), (_, m))| (*le, n - m))
        .collect();
    let total = counts.last()?.1;
    if total <= 0.0 {
        return None;
    }
    let rank = q * total;
    let mut lower = (0.0, 0.0);
    for (le, n) in counts {
        if n >= rank {
            if le.is_infinite() {
                return Some(lower.0);
            }
            let span = n - lower.1;
            let within = if span > 0.0 {
                (rank - lower.1) / span
            } else {
                1.0
            };
            return Some(lower.0 + (le - lower.0) * within);
        }
        lower = (le, n);
    }
    None
}

fn peak_rss_mb(pid: u32) -> Option<f64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let kb: f64 = status
        .lines()
        .find(|l| l.starts_with("VmHWM:"))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()?;
    Some(kb / 1024.0)
}

/// `just bench-sync` (scripts/bench-sync.sh runs this in a release build):
/// LFX_BENCH_EVENTS events over LFX_BENCH_KEYS keys, as a backlog and then
/// live at LFX_BENCH_RATE events/s; LFX_BENCH_DAEMON_ARGS adds daemon flags.
#[tokio::test]
#[ignore = "benchmark: run by scripts/bench-sync.sh"]
async fn bench_sync() {
    let events = env_usize("LFX_BENCH_EVENTS", 100_000);
    let keys = env_usize("LFX_BENCH_KEYS", 10_000);
    let rate = env_usize("LFX_BENCH_RATE", 10_000);
    let setup = Setup::new().await;
    let subject = setup.subject("salesforce", "project__c");
    let payloads = |round: usize| -> Vec<bytes::Bytes> {
        (0..events)
            .map(|i| {
                // Versions grow with the round and along each key's events.
                let (key, version) = (i % keys, round * events + i / keys);
                let ts = chrono::DateTime::from_timestamp(1_717_200_000 + version as i64, 0)
                    .unwrap()
                    .to_rfc3339_opts(chrono::SecondsFormat::Micros, true);
                upsert(
                    "salesforce",
                    "project__c",
                    "UPDATE",
                    project(&format!("a0P5G0{key:012}"), &format!("v{version}"), &ts),
                    &ts,
                )
                .to_string()
                .into()
            })
            .collect()
    };
    let publish_all = |payloads: Vec<bytes::Bytes>| {
        let js = setup.js.clone();
        let subject = subject.clone();
        async move {
            let mut acks = std::collections::VecDeque::new();
            for payload in payloads {
                acks.push_back(js.publish(subject.clone(), payload).await.unwrap());
                if acks.len() >= 4096 {
                    acks.pop_front().unwrap().await.unwrap();
                }
            }
            for ack in acks {
                ack.await.unwrap();
            }
        }
    };

    // Baseline: JetStream storing the same events, nothing consuming them.
    let backlog = payloads(0);
    let bytes: usize = backlog.iter().map(|p| p.len()).sum();
    let started = Instant::now();
    publish_all(backlog).await;
    let publish_secs = started.elapsed().as_secs_f64();

    // Backlog: the daemon applies events already in the stream.
    let port = free_port();
    let mut args = setup.args(port);
    args.extend(["--log-level", "warn"].map(String::from));
    // Tuning experiments: LFX_BENCH_DAEMON_ARGS="--workers 128 --max-in-flight 2048".
    args.extend(
        std::env::var("LFX_BENCH_DAEMON_ARGS")
            .unwrap_or_default()
            .split_whitespace()
            .map(String::from),
    );
    let daemon = Daemon::spawn(&args, port, setup.dir.path());
    let started = Instant::now();
    setup.settled(Duration::from_secs(600)).await;
    let backlog_secs = started.elapsed().as_secs_f64();
    daemon.wait_ready().await;

    // Live: events published at a steady rate while the daemon runs.
    let before = daemon.metrics().await;
    let live = payloads(1);
    let ticks = (events as f64 / rate as f64 * 100.0).ceil() as usize;
    let per_tick = events.div_ceil(ticks.max(1));
    let started = Instant::now();
    let mut tick = tokio::time::interval(Duration::from_millis(10));
    for chunk in live.chunks(per_tick) {
        tick.tick().await;
        publish_all(chunk.to_vec()).await;
    }
    let offered_secs = started.elapsed().as_secs_f64();
    setup.settled(Duration::from_secs(600)).await;
    let live_secs = started.elapsed().as_secs_f64();
    let after = daemon.metrics().await;
    let rss = daemon.child.id().and_then(peak_rss_mb);

    let stored = contents(&setup.store).await;
    assert_eq!(stored.len(), keys);
    for k in 0..keys {
        // The last live event of key k is event number k + keys * n.
        let last = format!("v{}", events + (events - 1 - k) / keys);
        assert_eq!(
            stored[&format!("salesforce-project__c.a0P5G0{k:012}")]["name"],
            json!(last)
        );
    }

    let backlog_rate = events as f64 / backlog_secs;
    let publish_rate = events as f64 / publish_secs;
    let p = |name, q| {
        quantile(name, &before, &after, q)
            .map(|s| format!("{:.1} ms", s * 1000.0))
            .unwrap_or_else(|| "n/a".into())
    };
    let latency = "lfx_sync_event_latency_seconds";
    let processing = "lfx_sync_processing_seconds";
    println!(
        "\nbench-sync: {events} WAL events over {keys} keys, {:.0} bytes each",
        bytes as f64 / events as f64
    );
    println!("  baseline: JetStream publish of the same events     {publish_rate:>9.0} events/s");
    println!(
        "  backlog:  applied end to end (stream -> KV)        {backlog_rate:>9.0} events/s  ({backlog_secs:.2} s, {:.2}x the publish rate)",
        backlog_rate / publish_rate
    );
    println!(
        "  live:     offered {:.0} events/s, all applied in {live_secs:.2} s ({:.0} events/s)",
        events as f64 / offered_secs,
        events as f64 / live_secs
    );
    println!(
        "            event -> KV latency    p50 {}  p99 {}  p99.9 {}",
        p(latency, 0.5),
        p(latency, 0.99),
        p(latency, 0.999)
    );
    println!(
        "            of which in the daemon p50 {}  p99 {}  p99.9 {}",
        p(processing, 0.5),
        p(processing, 0.99),
        p(processing, 0.999)
    );
    if let Some(rss) = rss {
        println!("  daemon peak RSS {rss:.0} MB");
    }
    println!("  target: >= 10000 events/s applied on 2 cores");

    drop(daemon);
    for stream in [
        setup.wal.clone(),
        setup.dlq.clone(),
        format!("KV_{}", setup.bucket),
    ] {
        let _ = setup.js.delete_stream(stream).await;
    }
}
