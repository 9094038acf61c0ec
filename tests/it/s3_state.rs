//! S3 state (issue 3): Meltano's layout both ways, the lock on a state id,
//! conditional writes, stale locks, and `lfx-sync state` on s3:// URIs.

use std::process::Stdio;
use std::time::Duration;

use serde_json::{Value, json};

use crate::common::*;
use lfx_sync::state::{S3Backend, StateBackend, StateDocument, StateError};

fn with_state(mut args: Vec<String>, uri: &str, state_id: &str) -> Vec<String> {
    let i = args
        .iter()
        .position(|a| a == "--state")
        .expect("--state argument");
    args[i + 1] = uri.to_string();
    args.extend(["--state-id".into(), state_id.into()]);
    args
}

async fn keys_under(s3: &aws_sdk_s3::Client, bucket: &str) -> Vec<String> {
    s3.list_objects_v2()
        .bucket(bucket)
        .send()
        .await
        .expect("list objects")
        .contents()
        .iter()
        .filter_map(|o| o.key().map(str::to_string))
        .collect()
}

fn doc_with(stream: &str, value: &str) -> StateDocument {
    let mut doc = StateDocument::default();
    doc.completed.set_bookmark(stream, "ts", json!(value));
    doc
}

#[tokio::test]
async fn meltano_state_in_s3_is_resumed_and_written_back_in_meltano_layout() {
    let db = TestDb::create(&[
        &read_fixture("lfx_v1_seed.sql"),
        &read_fixture("lfx_v1_update.sql"),
    ])
    .await;
    let (_c, js) = js().await;
    let (bucket, store) = new_bucket(&js, -1).await;
    let s3 = s3_client().await;
    let state_bucket = new_s3_bucket(&s3).await;
    // Where `meltano el … --state-id platform-db-incremental` with
    // `state_backend.uri: s3://<bucket>/meltano/state` keeps its bookmark.
    let key = "meltano/state/platform-db-incremental/state.json";
    let meltano_text = read_fixture("meltano/state.dev-tap-postgres-to-target-jsonl.json");
    s3_put(&s3, &state_bucket, key, &meltano_text).await;

    let args = with_state(
        backfill_args(
            &demo_config(),
            &db,
            &bucket,
            std::path::Path::new("/unused"),
        ),
        &format!("s3://{state_bucket}/meltano/state/"),
        "platform-db-incremental",
    );
    let out = run_aws(&args, &[]).await;
    expect_exit(&out, 0);

    // Resumed from Meltano's bookmarks: only the rows at them are read again,
    // exactly those tap-postgres re-reads from the same state.
    let noop = tap_records("tap-postgres-incremental-noop.singer.jsonl");
    assert_eq!(report(&out)["totals"]["read"], json!(noop.len()));
    assert_eq!(
        contents(&store).await.keys().collect::<Vec<_>>(),
        noop.keys().collect::<Vec<_>>()
    );

    // What lfx-sync wrote is what Meltano reads: same object, same structure.
    let written: Value =
        serde_json::from_str(&s3_text(&s3, &state_bucket, key).await.expect("state")).unwrap();
    let meltano: Value = serde_json::from_str(&meltano_text).unwrap();
    assert_eq!(written, meltano);
    assert_eq!(
        written.as_object().unwrap().keys().collect::<Vec<_>>(),
        ["completed", "partial"]
    );
    assert_eq!(
        written["completed"]
            .as_object()
            .unwrap()
            .keys()
            .collect::<Vec<_>>(),
        ["singer_state"]
    );
    // The run's lock is gone; nothing else was left in the bucket.
    assert_eq!(keys_under(&s3, &state_bucket).await, [key]);
}

#[tokio::test]
async fn a_second_run_on_a_locked_state_id_fails_fast_and_the_state_stays_intact() {
    const ROWS: u32 = 20_000;
    let db = TestDb::create(&[&read_fixture("lfx_v1_seed.sql"), &bench_table_sql(ROWS)]).await;
    let (_c, js) = js().await;
    let (bucket, _store) = new_bucket(&js, -1).await;
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(
        dir.path(),
        "[[postgres.streams]]\nschema = \"bench\"\ntable = \"project__c\"\nreplication_key = \"lastmodifieddate\"\n",
    );
    let s3 = s3_client().await;
    let state_bucket = new_s3_bucket(&s3).await;
    let mut args = with_state(
        backfill_args(&config, &db, &bucket, dir.path()),
        &format!("s3://{state_bucket}/lfx"),
        "bench",
    );
    args.extend(["--in-flight".into(), "16".into()]);

    let first = lfx_sync_aws(&args, &[])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let first_pid = first.id().unwrap();
    let lock = loop {
        if let Some(lock) = s3_text(&s3, &state_bucket, "lfx/bench/lfx-sync.lock").await {
            break lock;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert!(lock.contains(&format!("\"pid\":{first_pid}")), "{lock}");

    let second = run_aws(&args, &[]).await;
    let first = first.wait_with_output().await.unwrap();
    expect_exit(&first, 0);
    // The second run started while the first held the lock: refused at once.
    expect_exit(&second, 2);
    let stderr = String::from_utf8_lossy(&second.stderr);
    assert!(
        stderr.contains("state \"bench\" is locked by another run")
            && stderr.contains(&format!("pid {first_pid}")),
        "{stderr}"
    );
    assert!(second.stdout.is_empty(), "the second run read something");

    let state: Value = serde_json::from_str(
        &s3_text(&s3, &state_bucket, "lfx/bench/state.json")
            .await
            .expect("state"),
    )
    .unwrap();
    let bookmark = &report(&first)["streams"]["bench-project__c"]["bookmark"];
    assert!(bookmark.is_string(), "{bookmark}");
    assert_eq!(
        state,
        json!({"completed": {"singer_state": {"bookmarks": {"bench-project__c": {
            "replication_key": "lastmodifieddate", "replication_key_value": bookmark}}}},
            "partial": {}})
    );
    assert_eq!(
        keys_under(&s3, &state_bucket).await,
        ["lfx/bench/state.json"]
    );
}

#[tokio::test]
async fn conditional_writes_stop_a_run_whose_state_or_lock_changed_underneath() {
    let s3 = s3_client().await;
    let bucket = new_s3_bucket(&s3).await;
    let config = aws_config(aws_endpoint()).await;
    let uri = format!("s3://{bucket}/p");
    let ttl = Duration::from_secs(600);
    let run = S3Backend::with_config(&config, &uri, "demo", ttl)
        .await
        .unwrap();
    assert_eq!(run.load().await.unwrap(), None);

    let other = S3Backend::with_config(&config, &uri, "demo", ttl).await;
    let Err(err @ StateError::Locked { .. }) = other else {
        panic!("a second holder was let in");
    };
    assert!(
        err.to_string()
            .contains(&format!("pid {}", std::process::id())),
        "{err}"
    );

    let doc = doc_with("s", "2024-01-01T00:00:00Z");
    run.store(&doc).await.unwrap();
    // Each write's ETag is the condition of the next.
    run.store(&doc_with("s", "2024-01-02T00:00:00Z"))
        .await
        .unwrap();

    // A writer that ignores the lock (Meltano, an operator's script).
    let theirs = r#"{"completed": {"singer_state": {"bookmarks": {}}}, "partial": {}}"#;
    s3_put(&s3, &bucket, "p/demo/state.json", theirs).await;
    let err = run.store(&doc).await.unwrap_err();
    assert!(
        matches!(err, StateError::Conflict { .. })
            && err.to_string().contains("changed underneath"),
        "{err}"
    );
    assert_eq!(
        s3_text(&s3, &bucket, "p/demo/state.json").await.as_deref(),
        Some(theirs)
    );
    // Having read their state, the run may write again.
    run.load().await.unwrap();
    run.store(&doc).await.unwrap();
    run.clear().await.unwrap();
    assert_eq!(s3_text(&s3, &bucket, "p/demo/state.json").await, None);

    // Another run took the lock over (this one looked dead): no more writes.
    let taken = r#"{"owner":"lfx-sync","host":"other-pod","pid":1,"started_at":"2026-01-01T00:00:00Z","expires_at":"2099-01-01T00:00:00Z"}"#;
    s3_put(&s3, &bucket, "p/demo/lfx-sync.lock", taken).await;
    let err = run.store(&doc).await.unwrap_err();
    assert!(err.to_string().contains("taken over"), "{err}");
    assert_eq!(s3_text(&s3, &bucket, "p/demo/state.json").await, None);
    // Releasing leaves the new holder's lock alone.
    run.release().await;
    assert_eq!(
        s3_text(&s3, &bucket, "p/demo/lfx-sync.lock")
            .await
            .as_deref(),
        Some(taken)
    );
}

#[tokio::test]
async fn a_lock_left_by_a_killed_run_expires_while_a_live_one_is_kept_alive() {
    let s3 = s3_client().await;
    let bucket = new_s3_bucket(&s3).await;
    let config = aws_config(aws_endpoint()).await;
    let uri = format!("s3://{bucket}");
    let ttl = Duration::from_millis(1500);

    let killed = S3Backend::with_config(&config, &uri, "cron", ttl)
        .await
        .unwrap();
    let doc = doc_with("s", "2024-01-01T00:00:00Z");
    killed.store(&doc).await.unwrap();
    // Dropped without release: like a process killed hard, its lock stays.
    drop(killed);
    assert!(s3_text(&s3, &bucket, "cron/lfx-sync.lock").await.is_some());
    assert!(matches!(
        S3Backend::with_config(&config, &uri, "cron", ttl).await,
        Err(StateError::Locked { .. })
    ));
    tokio::time::sleep(ttl + Duration::from_millis(500)).await;
    let next = S3Backend::with_config(&config, &uri, "cron", ttl)
        .await
        .expect("an expired lock is taken over");
    assert_eq!(next.load().await.unwrap(), Some(doc.clone()));
    next.store(&doc).await.unwrap();

    // A live holder's heartbeat keeps pushing its expiry forward.
    tokio::time::sleep(ttl * 2).await;
    assert!(matches!(
        S3Backend::with_config(&config, &uri, "cron", ttl).await,
        Err(StateError::Locked { .. })
    ));
    next.store(&doc).await.unwrap();
    next.release().await;
    assert_eq!(s3_text(&s3, &bucket, "cron/lfx-sync.lock").await, None);
}

#[tokio::test]
async fn state_commands_work_on_s3() {
    let s3 = s3_client().await;
    let bucket = new_s3_bucket(&s3).await;
    let uri = format!("s3://{bucket}/ops");
    let state = |args: &[&str]| {
        let mut all: Vec<String> = ["state", args[0], "--state", &uri, "--state-id", "itx"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        all.extend(args[1..].iter().map(|s| s.to_string()));
        all
    };
    for (stream, value) in [("itx-poll", "2024-06-01T00:00:00Z"), ("itx-surveys", "7")] {
        let out = run_aws(
            &state(&[
                "set",
                "--stream",
                stream,
                "--replication-key",
                "modified_at",
                "--value",
                value,
            ]),
            &[],
        )
        .await;
        expect_exit(&out, 0);
    }
    let out = run_aws(&state(&["show", "--stream", "itx-poll"]), &[]).await;
    expect_exit(&out, 0);
    assert_eq!(
        serde_json::from_slice::<Value>(&out.stdout).unwrap(),
        json!({"replication_key": "modified_at", "replication_key_value": "2024-06-01T00:00:00Z"})
    );
    let out = run_aws(&state(&["show"]), &[]).await;
    let shown: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        shown["completed"]["singer_state"]["bookmarks"]["itx-surveys"]["replication_key_value"],
        json!(7)
    );
    assert_eq!(
        serde_json::from_str::<Value>(&s3_text(&s3, &bucket, "ops/itx/state.json").await.unwrap())
            .unwrap(),
        shown
    );

    expect_exit(
        &run_aws(&state(&["clear", "--stream", "itx-poll"]), &[]).await,
        0,
    );
    let out = run_aws(&state(&["show", "--stream", "itx-poll"]), &[]).await;
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "null");
    expect_exit(&run_aws(&state(&["clear"]), &[]).await, 0);
    assert!(keys_under(&s3, &bucket).await.is_empty());

    // A state id another run holds: a clear error, nothing changed.
    s3_put(
        &s3,
        &bucket,
        "ops/itx/lfx-sync.lock",
        r#"{"owner":"lfx-sync","host":"cron-pod","pid":42,"started_at":"2026-01-01T00:00:00Z","expires_at":"2099-01-01T00:00:00Z"}"#,
    )
    .await;
    let out = run_aws(&state(&["clear"]), &[]).await;
    expect_exit(&out, 2);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("locked by another run") && stderr.contains("cron-pod"),
        "{stderr}"
    );
}
