//! `lfx-sync backfill` end to end: PostgreSQL → guarded writer → NATS KV, with
//! file state (issue acceptance 1, 2, 4, 5, 6).

use std::sync::Arc;
use std::time::Duration;

use serde_json::{Value, json};

use crate::common::*;
use lfx_sync::backfill::{self, BackfillSettings, Progress};
use lfx_sync::config::{Config, Overrides};
use lfx_sync::kv::{Encoding, GuardedWriter, RefreshMode};
use lfx_sync::source::postgres::PostgresSource;

#[tokio::test]
async fn full_backfill_writes_one_key_per_row_equal_to_the_tap_record() {
    let db = TestDb::seeded().await;
    let (_c, js) = js().await;
    let (bucket, store) = new_bucket(&js, -1).await;
    let state = tempfile::tempdir().unwrap();
    let mut args = backfill_args(&demo_config(), &db, &bucket, state.path());
    args.push("--full".into());
    let out = run(&args).await;
    expect_exit(&out, 0);
    let report = report(&out);
    assert_eq!(report["totals"]["read"], json!(87));
    assert_eq!(report["totals"]["created"], json!(87));

    let expected = tap_records("tap-postgres-full.singer.jsonl");
    let stored = contents(&store).await;
    assert_eq!(stored.len(), 87);
    assert_eq!(
        stored.keys().collect::<Vec<_>>(),
        expected.keys().collect::<Vec<_>>()
    );
    for (key, record) in &expected {
        let value = &stored[key];
        // Exact text, not just equal values: numbers keep the tap's digits.
        assert_eq!(
            serde_json::to_string(&without_sdc(value)).unwrap(),
            serde_json::to_string(record).unwrap(),
            "{key}"
        );
        for meta in ["_sdc_extracted_at", "_sdc_received_at"] {
            let ts = value[meta]
                .as_str()
                .unwrap_or_else(|| panic!("{key} lacks {meta}"));
            assert!(
                lfx_sync::kv::timestamp::parse(ts).is_some(),
                "{key} {meta}={ts}"
            );
        }
        assert!(!value.contains_key("_sdc_deleted_at"));
    }
}

#[tokio::test]
async fn incremental_run_resumes_like_tap_postgres() {
    let db = TestDb::seeded().await;
    let (_c, js) = js().await;
    let (bucket, store) = new_bucket(&js, -1).await;
    let state = tempfile::tempdir().unwrap();
    let args = backfill_args(&demo_config(), &db, &bucket, state.path());

    let first = run(&args).await;
    expect_exit(&first, 0);
    let first_state = stored_state(state.path(), "demo").expect("state written");
    let tap_first: Value =
        serde_json::from_str(&read_fixture("tap-postgres-incremental.state.json")).unwrap();
    assert_eq!(first_state["completed"]["singer_state"], tap_first);
    assert_eq!(first_state["partial"], json!({}));
    let before = contents(&store).await;

    db.exec(&read_fixture("lfx_v1_update.sql")).await;
    let second = run(&args).await;
    expect_exit(&second, 0);
    let second_report = report(&second);

    // Reads exactly the rows tap-postgres re-reads from the same bookmark.
    let resume = tap_records("tap-postgres-incremental-resume.singer.jsonl");
    for (stream, created, updated) in [
        ("platform-project__c", 0, 3),
        ("platform-community__c", 0, 1),
        ("platform-collaboration__c", 2, 1),
    ] {
        let read = resume
            .keys()
            .filter(|k| k.starts_with(&format!("{stream}.")))
            .count();
        let r = &second_report["streams"][stream];
        assert_eq!(r["read"], json!(read), "{stream}: {r}");
        assert_eq!(r["created"], json!(created), "{stream}: {r}");
        assert_eq!(r["updated"], json!(updated), "{stream}: {r}");
        assert_eq!(
            r["unchanged"],
            json!(read - created - updated),
            "{stream}: {r}"
        );
    }
    let tap_resume: Value =
        serde_json::from_str(&read_fixture("tap-postgres-incremental-resume.state.json")).unwrap();
    assert_eq!(
        stored_state(state.path(), "demo").unwrap()["completed"]["singer_state"],
        tap_resume
    );

    let after = contents(&store).await;
    for (key, record) in &resume {
        assert_eq!(&without_sdc(&after[key]), record, "{key}");
    }
    // Only the changed rows were rewritten.
    let rewritten: Vec<_> = after
        .iter()
        .filter(|(k, v)| before.get(*k) != Some(v))
        .map(|(k, _)| k.clone())
        .collect();
    assert_eq!(rewritten.len(), 7, "{rewritten:?}");

    // A third run with nothing new re-reads only the boundary rows and writes nothing.
    let third = run(&args).await;
    expect_exit(&third, 0);
    let totals = &report(&third)["totals"];
    let noop = tap_records("tap-postgres-incremental-noop.singer.jsonl");
    assert_eq!(totals["read"], json!(noop.len()));
    assert_eq!(totals["unchanged"], json!(noop.len()));
    assert_eq!(contents(&store).await, after);
}

#[tokio::test]
async fn rows_with_unwritable_keys_are_counted_and_reported_not_failed() {
    let db = TestDb::create(&[
        "CREATE SCHEMA odd; CREATE TABLE odd.items (code text, ts timestamptz);
         INSERT INTO odd.items VALUES ('ok-1', '2024-01-01'), ('has space', '2024-01-02'),
           (NULL, '2024-01-03'), ('a.b', '2024-01-04'), ('ns:colon', '2024-01-05');",
    ])
    .await;
    let (_c, js) = js().await;
    let (bucket, store) = new_bucket(&js, -1).await;
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(
        dir.path(),
        "[[postgres.streams]]\nschema = \"odd\"\ntable = \"items\"\nreplication_key = \"ts\"\nkey = [\"code\"]\n",
    );
    let out = run(&backfill_args(&config, &db, &bucket, dir.path())).await;
    expect_exit(&out, 0);
    let r = &report(&out)["streams"]["odd-items"];
    assert_eq!(r["invalid_key"], json!(3), "{r}");
    assert_eq!(r["created"], json!(2), "{r}");
    // The bookmark passes them: a CronJob must not re-read them forever.
    assert_eq!(r["bookmark"], json!("2024-01-05T00:00:00.000000+00:00"));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("odd-items") && stderr.contains("has space"),
        "{stderr}"
    );
    assert_eq!(
        contents(&store).await.keys().cloned().collect::<Vec<_>>(),
        vec![
            "odd-items.ns_colon".to_string(),
            "odd-items.ok-1".to_string()
        ]
    );
}

#[tokio::test]
async fn a_failed_record_fails_the_run_and_holds_the_bookmark_before_it() {
    let db = TestDb::seeded().await;
    let (_c, js) = js().await;
    // The 20 KB description row cannot fit.
    let (bucket, store) = new_bucket(&js, 8_000).await;
    let state = tempfile::tempdir().unwrap();
    let mut args = backfill_args(&demo_config(), &db, &bucket, state.path());
    args.extend(["--stream".into(), "platform-project__c".into()]);
    let out = run(&args).await;
    expect_exit(&out, 1);
    let r = &report(&out)["streams"]["platform-project__c"];
    assert_eq!(r["failed"], json!(1), "{r}");
    assert_eq!(r["created"], json!(32), "{r}");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("platform-project__c.27") && stderr.contains("exceeds"),
        "{stderr}"
    );
    let bookmark = r["bookmark"]
        .as_str()
        .expect("a bookmark before the failure");
    let failed_at = lfx_sync::kv::timestamp::parse("2024-03-02T00:00:00Z");
    assert!(
        lfx_sync::kv::timestamp::parse(bookmark) <= failed_at,
        "{bookmark}"
    );
    assert_eq!(contents(&store).await.len(), 32);
}

#[tokio::test]
async fn bad_input_exits_2_with_a_clear_error_and_writes_nothing() {
    let db = TestDb::seeded().await;
    let (_c, js) = js().await;
    let (bucket, store) = new_bucket(&js, -1).await;
    let dir = tempfile::tempdir().unwrap();
    let stream = |table: &str, rk: &str| {
        format!(
            "[[postgres.streams]]\nschema = \"platform\"\ntable = \"{table}\"\nreplication_key = \"{rk}\"\n"
        )
    };
    let cases: Vec<(&str, Vec<String>, &str)> = vec![
        (
            "unknown table",
            backfill_args(
                &write_config(
                    dir.path(),
                    &(stream("project__c", "lastmodifieddate") + &stream("nope__c", "x")),
                ),
                &db,
                &bucket,
                dir.path(),
            ),
            "table \"platform\".\"nope__c\" does not exist",
        ),
        (
            "missing replication key column",
            backfill_args(
                &write_config(dir.path(), &stream("project__c", "modified_at")),
                &db,
                &bucket,
                dir.path(),
            ),
            "replication key column \"modified_at\" does not exist",
        ),
        (
            "unreachable database",
            {
                let mut a = backfill_args(&demo_config(), &db, &bucket, dir.path());
                a[4] = "postgres://postgres@127.0.0.1:1/nowhere".into();
                a
            },
            "cannot connect to PostgreSQL",
        ),
        (
            "missing bucket",
            backfill_args(&demo_config(), &db, "no_such_bucket_here", dir.path()),
            "KV bucket `no_such_bucket_here` does not exist",
        ),
        (
            "unreachable NATS",
            {
                let mut a = backfill_args(&demo_config(), &db, &bucket, dir.path());
                a[6] = "nats://127.0.0.1:1".into();
                a
            },
            "cannot connect to NATS",
        ),
    ];
    for (what, args, needle) in cases {
        let out = run(&args).await;
        assert_eq!(
            out.status.code(),
            Some(2),
            "{what}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            stderr.contains(needle),
            "{what}: {needle:?} not in {stderr}"
        );
    }
    let malformed = dir.path().join("bad.toml");
    std::fs::write(&malformed, "[postgres\nurl = ").unwrap();
    let mut args = backfill_args(&malformed, &db, &bucket, dir.path());
    args[2] = malformed.display().to_string();
    let out = run(&args).await;
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("invalid configuration"));

    assert!(contents(&store).await.is_empty(), "something was written");
    assert!(
        stored_state(dir.path(), "test").is_none() && stored_state(dir.path(), "demo").is_none()
    );
}

#[tokio::test]
async fn dry_run_decides_but_writes_nothing() {
    let db = TestDb::seeded().await;
    let (_c, js) = js().await;
    let (bucket, store) = new_bucket(&js, -1).await;
    let state = tempfile::tempdir().unwrap();
    let mut args = backfill_args(&demo_config(), &db, &bucket, state.path());
    args.push("--dry-run".into());
    let out = run(&args).await;
    expect_exit(&out, 0);
    assert_eq!(report(&out)["totals"]["created"], json!(87));
    assert!(contents(&store).await.is_empty());
    assert!(stored_state(state.path(), "demo").is_none());
}

async fn library_backfill(
    db: &TestDb,
    bucket: &str,
    client: &async_nats::Client,
    store: async_nats::jetstream::kv::Store,
) -> backfill::RunReport {
    let config = Config::load(
        &demo_config(),
        &Overrides {
            database_url: Some(db.url.clone()),
            nats_url: Some(services().nats_url.clone()),
            bucket: Some(bucket.to_string()),
            state_id: None,
        },
    )
    .unwrap();
    let mut pg = config.postgres.clone().unwrap();
    pg.streams = vec![lfx_sync::config::PgStream {
        name: "bench-project__c".into(),
        schema: "bench".into(),
        table: "project__c".into(),
        replication_key: Some("lastmodifieddate".into()),
        key: None,
        columns: None,
    }];
    let source = PostgresSource::open(&pg, &[]).await.unwrap();
    let writer = GuardedWriter::new(store, client, RefreshMode::Newer, Encoding::Json, false)
        .await
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let state = lfx_sync::state::open(&format!("file://{}", dir.path().display()), "race")
        .await
        .unwrap();
    backfill::run(
        &source,
        Arc::new(writer),
        state.as_ref(),
        &BackfillSettings::default(),
        Progress::detect(true),
    )
    .await
    .unwrap()
}

#[tokio::test]
async fn a_concurrent_newer_writer_loses_none_of_its_updates() {
    const ROWS: u32 = 20_000;
    let db = TestDb::create(&[&read_fixture("lfx_v1_seed.sql"), &bench_table_sql(ROWS)]).await;
    let (client, js) = js().await;
    for round in 0..3 {
        let (bucket, store) = new_bucket(&js, -1).await;
        let racer_store = store.clone();
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let racer_stop = Arc::clone(&stop);
        // The live path: newer versions (and soft deletions) of keys, written
        // unconditionally while the backfill runs over the same keys.
        let racer = tokio::spawn(async move {
            let mut written = std::collections::BTreeMap::new();
            let mut i: u64 = 0;
            while !racer_stop.load(std::sync::atomic::Ordering::Relaxed) || written.len() < 500 {
                i += 1;
                let id = (i * 7919 + round) % u64::from(ROWS) + 1;
                let deleted = i.is_multiple_of(5);
                let value = json!({
                    "id": id, "lastmodifieddate": format!("2030-01-01T00:00:{:02}.000000+00:00", i % 60),
                    "racer": i, "_sdc_deleted_at": if deleted { json!("2030-01-01T00:00:00Z") } else { Value::Null },
                });
                racer_store
                    .put(
                        format!("bench-project__c.{id}"),
                        serde_json::to_vec(&value).unwrap().into(),
                    )
                    .await
                    .unwrap();
                written.insert(id, value);
                if i.is_multiple_of(64) {
                    tokio::task::yield_now().await;
                }
            }
            written
        });
        let report = library_backfill(&db, &bucket, &client, store.clone()).await;
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        let written = racer.await.unwrap();
        assert_eq!(report.totals.read, u64::from(ROWS));
        assert_eq!(report.totals.failed, 0);
        let stored = contents(&store).await;
        assert_eq!(stored.len(), ROWS as usize);
        for (id, value) in &written {
            let got = &stored[&format!("bench-project__c.{id}")];
            assert_eq!(
                Value::Object(got.clone()),
                *value,
                "round {round}: key {id} lost the live update"
            );
        }
        assert!(
            report.totals.skipped_newer + report.totals.skipped_deleted > 0,
            "round {round}: no race happened"
        );
    }
}

#[tokio::test]
async fn a_killed_run_resumes_from_its_checkpoint_to_the_same_contents() {
    const ROWS: u32 = 30_000;
    let db = TestDb::create(&[&read_fixture("lfx_v1_seed.sql"), &bench_table_sql(ROWS)]).await;
    let (_c, js) = js().await;
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(
        dir.path(),
        "[[postgres.streams]]\nschema = \"bench\"\ntable = \"project__c\"\nreplication_key = \"lastmodifieddate\"\n",
    );

    let (reference_bucket, reference) = new_bucket(&js, -1).await;
    let reference_state = tempfile::tempdir().unwrap();
    expect_exit(
        &run(&backfill_args(
            &config,
            &db,
            &reference_bucket,
            reference_state.path(),
        ))
        .await,
        0,
    );

    let (bucket, store) = new_bucket(&js, -1).await;
    let state = tempfile::tempdir().unwrap();
    let mut args = backfill_args(&config, &db, &bucket, state.path());
    args.extend([
        "--checkpoint-every".into(),
        "500".into(),
        "--in-flight".into(),
        "8".into(),
    ]);
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_lfx-sync"))
        .args(&args)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let checkpoint = loop {
        tokio::time::sleep(Duration::from_millis(20)).await;
        if let Some(s) = stored_state(state.path(), "test")
            && let Some(b) = s["partial"]["singer_state"]["bookmarks"]["bench-project__c"]["replication_key_value"].as_str()
        {
            break b.to_string();
        }
        assert!(
            child.try_wait().unwrap().is_none(),
            "the run finished before a checkpoint was seen"
        );
    };
    child.start_kill().unwrap(); // SIGKILL
    let status = child.wait().await.unwrap();
    assert!(!status.success());
    let partially = contents(&store).await.len();
    assert!(partially < ROWS as usize, "the run was not interrupted");

    let resumed = run(&backfill_args(&config, &db, &bucket, state.path())).await;
    expect_exit(&resumed, 0);
    let read = report(&resumed)["totals"]["read"].as_u64().unwrap();
    assert!(
        read < u64::from(ROWS),
        "resumed from scratch, not from {checkpoint}"
    );

    let strip = |m: std::collections::BTreeMap<String, serde_json::Map<String, Value>>| {
        m.into_iter()
            .map(|(k, v)| (k, without_sdc(&v)))
            .collect::<std::collections::BTreeMap<_, _>>()
    };
    assert_eq!(
        strip(contents(&store).await),
        strip(contents(&reference).await)
    );
    assert_eq!(
        stored_state(state.path(), "test").unwrap()["completed"],
        stored_state(reference_state.path(), "test").unwrap()["completed"]
    );
}
