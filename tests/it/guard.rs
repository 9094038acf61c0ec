//! The guard table of SPEC §3 against a real NATS KV bucket, one test per row.

use std::sync::Arc;

use async_nats::jetstream::kv;
use serde_json::{Map, Value, json};

use crate::common::*;
use lfx_sync::kv::{Encoding, GuardedWriter, Outcome, RefreshMode, WriteRequest};

struct Fixture {
    _client: async_nats::Client,
    store: kv::Store,
    writer: GuardedWriter,
}

async fn fixture(mode: RefreshMode) -> Fixture {
    let (client, js) = js().await;
    let (_, store) = new_bucket(&js, -1).await;
    let writer = GuardedWriter::new(store.clone(), &client, mode, Encoding::Json, false)
        .await
        .unwrap();
    Fixture {
        _client: client,
        store,
        writer,
    }
}

fn object(v: Value) -> Map<String, Value> {
    match v {
        Value::Object(m) => m,
        other => panic!("not an object: {other}"),
    }
}

fn request(key: &str, record: Value) -> WriteRequest {
    WriteRequest::new(
        key.to_string(),
        Some(Arc::from("lastmodifieddate")),
        object(record),
    )
}

impl Fixture {
    async fn put(&self, key: &str, value: Value) -> u64 {
        self.store
            .put(key, serde_json::to_vec(&value).unwrap().into())
            .await
            .unwrap()
    }

    async fn stored(&self, key: &str) -> Option<Map<String, Value>> {
        let entry = self.store.entry(key).await.unwrap()?;
        lfx_sync::kv::writer::decode(&entry.value)
    }

    async fn revision(&self, key: &str) -> u64 {
        self.store
            .entry(key)
            .await
            .unwrap()
            .map(|e| e.revision)
            .unwrap_or(0)
    }
}

#[tokio::test]
async fn absent_key_is_created_even_over_a_delete_marker() {
    let f = fixture(RefreshMode::Newer).await;
    let rec = json!({"id": 1, "lastmodifieddate": "2024-01-01T00:00:00.000000+00:00"});
    assert_eq!(
        f.writer.write(request("s.1", rec.clone())).await.unwrap(),
        Outcome::Created
    );
    f.put("s.2", json!({"id": 2})).await;
    f.store.delete("s.2").await.unwrap();
    assert_eq!(
        f.writer.write(request("s.2", rec.clone())).await.unwrap(),
        Outcome::Created
    );
    f.put("s.3", json!({"id": 3})).await;
    f.store.purge("s.3").await.unwrap();
    assert_eq!(
        f.writer.write(request("s.3", rec)).await.unwrap(),
        Outcome::Created
    );
    let stored = f.stored("s.2").await.unwrap();
    assert_eq!(
        stored["lastmodifieddate"],
        json!("2024-01-01T00:00:00.000000+00:00")
    );
    assert!(stored["_sdc_received_at"].is_string());
}

#[tokio::test]
async fn soft_deleted_entry_is_kept() {
    for mode in [RefreshMode::Newer, RefreshMode::Same, RefreshMode::Full] {
        let f = fixture(mode).await;
        let deleted = json!({"id": 1, "lastmodifieddate": "2024-01-01T00:00:00Z", "_sdc_deleted_at": "2024-02-01T00:00:00Z"});
        let rev = f.put("s.1", deleted.clone()).await;
        let newer = json!({"id": 1, "lastmodifieddate": "2030-01-01T00:00:00Z"});
        assert_eq!(
            f.writer.write(request("s.1", newer)).await.unwrap(),
            Outcome::SkippedDeleted
        );
        assert_eq!(f.revision("s.1").await, rev);
    }
}

#[tokio::test]
async fn newer_entry_is_kept() {
    let f = fixture(RefreshMode::Newer).await;
    let rev = f
        .put(
            "s.1",
            json!({"id": 1, "v": "live", "lastmodifieddate": "2024-06-01T00:00:00Z"}),
        )
        .await;
    let older =
        json!({"id": 1, "v": "backfill", "lastmodifieddate": "2024-05-01T00:00:00.000000+00:00"});
    assert_eq!(
        f.writer.write(request("s.1", older.clone())).await.unwrap(),
        Outcome::SkippedNewer
    );
    assert_eq!(f.revision("s.1").await, rev);
    assert_eq!(f.stored("s.1").await.unwrap()["v"], json!("live"));
    // Mode same does not change that; full does.
    let same = fixture(RefreshMode::Same).await;
    same.put("s.1", json!({"lastmodifieddate": "2024-06-01T00:00:00Z"}))
        .await;
    assert_eq!(
        same.writer
            .write(request("s.1", older.clone()))
            .await
            .unwrap(),
        Outcome::SkippedNewer
    );
    let full = fixture(RefreshMode::Full).await;
    full.put("s.1", json!({"lastmodifieddate": "2024-06-01T00:00:00Z"}))
        .await;
    assert_eq!(
        full.writer.write(request("s.1", older)).await.unwrap(),
        Outcome::Updated
    );
    assert_eq!(full.stored("s.1").await.unwrap()["v"], json!("backfill"));
}

#[tokio::test]
async fn equal_timestamp_is_skipped_unless_mode_same() {
    let f = fixture(RefreshMode::Newer).await;
    let rev = f
        .put(
            "s.1",
            json!({"v": 1, "lastmodifieddate": "2024-06-01T00:00:00Z"}),
        )
        .await;
    let equal = json!({"v": 2, "lastmodifieddate": "2024-06-01T00:00:00.000000+00:00"});
    assert_eq!(
        f.writer.write(request("s.1", equal.clone())).await.unwrap(),
        Outcome::Unchanged
    );
    assert_eq!(f.revision("s.1").await, rev);
    let same = fixture(RefreshMode::Same).await;
    same.put(
        "s.1",
        json!({"v": 1, "lastmodifieddate": "2024-06-01T00:00:00Z"}),
    )
    .await;
    assert_eq!(
        same.writer.write(request("s.1", equal)).await.unwrap(),
        Outcome::Updated
    );
    assert_eq!(same.stored("s.1").await.unwrap()["v"], json!(2));
}

#[tokio::test]
async fn older_entry_is_replaced() {
    let f = fixture(RefreshMode::Newer).await;
    f.put(
        "s.1",
        json!({"v": 1, "lastmodifieddate": "2024-05-01T00:00:00Z"}),
    )
    .await;
    let newer = json!({"v": 2, "lastmodifieddate": "2024-06-01T00:00:00.000000+00:00"});
    assert_eq!(
        f.writer.write(request("s.1", newer)).await.unwrap(),
        Outcome::Updated
    );
    assert_eq!(f.stored("s.1").await.unwrap()["v"], json!(2));
}

#[tokio::test]
async fn timestamps_in_different_formats_compare_as_instants() {
    let f = fixture(RefreshMode::Newer).await;
    // 09:15:30.5 at +05:30 is 03:45:30.5 UTC: textually "larger" than both records.
    f.put(
        "s.1",
        json!({"v": 1, "lastmodifieddate": "2024-03-03T09:15:30.5+05:30"}),
    )
    .await;
    let earlier = json!({"v": 2, "lastmodifieddate": "2024-03-03 03:45:30.4"});
    let equal = json!({"v": 2, "lastmodifieddate": "2024-03-03T03:45:30.500000+00:00"});
    let later = json!({"v": 3, "lastmodifieddate": "2024-03-03T04:45:31+01:00"});
    assert_eq!(
        f.writer.write(request("s.1", earlier)).await.unwrap(),
        Outcome::SkippedNewer
    );
    assert_eq!(
        f.writer.write(request("s.1", equal)).await.unwrap(),
        Outcome::Unchanged
    );
    assert_eq!(
        f.writer.write(request("s.1", later)).await.unwrap(),
        Outcome::Updated
    );
    assert_eq!(f.stored("s.1").await.unwrap()["v"], json!(3));
}

#[tokio::test]
async fn record_without_a_valid_timestamp_never_replaces_a_timestamped_entry() {
    let f = fixture(RefreshMode::Newer).await;
    let rev = f
        .put(
            "s.1",
            json!({"v": 1, "lastmodifieddate": "2024-05-01T00:00:00Z"}),
        )
        .await;
    for ts in [Value::Null, json!("last tuesday")] {
        let rec = json!({"v": 2, "lastmodifieddate": ts});
        assert_eq!(
            f.writer.write(request("s.1", rec)).await.unwrap(),
            Outcome::SkippedNewer
        );
    }
    assert_eq!(f.revision("s.1").await, rev);
}

#[tokio::test]
async fn streams_without_a_timestamp_compare_payloads() {
    let f = fixture(RefreshMode::Newer).await;
    let untimed = |v: Value| WriteRequest::new("m.1".into(), None, object(v));
    let rec = json!({"id": "1", "meeting": "x", "_sdc_extracted_at": "2024-01-01T00:00:00Z"});
    assert_eq!(
        f.writer.write(untimed(rec.clone())).await.unwrap(),
        Outcome::Created
    );
    let rev = f.revision("m.1").await;
    assert_eq!(
        f.writer.write(untimed(rec)).await.unwrap(),
        Outcome::Unchanged
    );
    assert_eq!(f.revision("m.1").await, rev);
    let changed = json!({"id": "1", "meeting": "y"});
    assert_eq!(
        f.writer.write(untimed(changed)).await.unwrap(),
        Outcome::Updated
    );
    assert_eq!(f.stored("m.1").await.unwrap()["meeting"], json!("y"));
}

#[tokio::test]
async fn empty_or_undecodable_entry_is_overwritten() {
    let f = fixture(RefreshMode::Newer).await;
    f.store.put("s.1", "".into()).await.unwrap();
    f.store
        .put("s.2", "\u{1}not json nor msgpack{".into())
        .await
        .unwrap();
    let rec = json!({"v": 1, "lastmodifieddate": "2024-01-01T00:00:00Z"});
    for key in ["s.1", "s.2"] {
        assert_eq!(
            f.writer.write(request(key, rec.clone())).await.unwrap(),
            Outcome::Updated
        );
        assert_eq!(f.stored(key).await.unwrap()["v"], json!(1));
    }
}

#[tokio::test]
async fn msgpack_entries_are_read_and_written() {
    let (client, js) = js().await;
    let (_, store) = new_bucket(&js, -1).await;
    let packed = lfx_sync::kv::msgpack::encode(&object(
        json!({"v": 1, "lastmodifieddate": "2024-06-01T00:00:00Z"}),
    ))
    .unwrap();
    store.put("s.1", packed.into()).await.unwrap();
    let writer = GuardedWriter::new(
        store.clone(),
        &client,
        RefreshMode::Newer,
        Encoding::MsgPack,
        false,
    )
    .await
    .unwrap();
    let older = json!({"v": 2, "lastmodifieddate": "2024-05-01T00:00:00Z"});
    assert_eq!(
        writer.write(request("s.1", older)).await.unwrap(),
        Outcome::SkippedNewer
    );
    let newer = json!({"v": 3, "lastmodifieddate": "2024-07-01T00:00:00Z"});
    assert_eq!(
        writer.write(request("s.1", newer)).await.unwrap(),
        Outcome::Updated
    );
    let raw = store.get("s.1").await.unwrap().unwrap();
    assert_ne!(raw.first(), Some(&b'{'), "written as JSON, not MessagePack");
    assert_eq!(lfx_sync::kv::msgpack::decode(&raw).unwrap()["v"], json!(3));
}

#[tokio::test]
async fn racing_writers_of_one_key_end_with_the_newest_version() {
    let f = Arc::new(fixture(RefreshMode::Newer).await);
    let mut tasks = Vec::new();
    for i in 0..64u32 {
        let f = Arc::clone(&f);
        tasks.push(tokio::spawn(async move {
            let rec =
                json!({"v": i, "lastmodifieddate": format!("2024-01-01T00:00:{:02}Z", i % 60)});
            f.writer.write(request("s.1", rec)).await.unwrap()
        }));
    }
    let mut created = 0;
    for t in tasks {
        if t.await.unwrap() == Outcome::Created {
            created += 1;
        }
    }
    assert_eq!(created, 1, "exactly one writer creates the key");
    // Second 59 is written by i = 59 only.
    assert_eq!(f.stored("s.1").await.unwrap()["v"], json!(59));
}

#[tokio::test]
async fn soft_deletion_keeps_the_payload_and_is_never_undone_by_a_write() {
    let f = fixture(RefreshMode::Newer).await;
    assert_eq!(
        f.writer
            .soft_delete("s.9", "2024-07-01T00:00:00Z", "2024-07-01T00:00:01Z")
            .await
            .unwrap(),
        lfx_sync::kv::DeleteOutcome::Absent
    );
    assert!(
        f.store.entry("s.9").await.unwrap().is_none(),
        "a delete of an absent key writes nothing"
    );
    f.put(
        "s.1",
        json!({"v": 1, "lastmodifieddate": "2024-06-01T00:00:00Z"}),
    )
    .await;
    assert_eq!(
        f.writer
            .soft_delete("s.1", "2024-07-01T00:00:00Z", "2024-07-01T00:00:01Z")
            .await
            .unwrap(),
        lfx_sync::kv::DeleteOutcome::SoftDeleted
    );
    let stored = f.stored("s.1").await.unwrap();
    assert_eq!(stored["v"], json!(1));
    assert_eq!(stored["_sdc_deleted_at"], json!("2024-07-01T00:00:00Z"));
    assert_eq!(stored["_sdc_extracted_at"], json!("2024-07-01T00:00:01Z"));
    assert!(stored["_sdc_received_at"].is_string());
    let rev = f.revision("s.1").await;
    assert_eq!(
        f.writer
            .soft_delete("s.1", "2024-08-01T00:00:00Z", "2024-08-01T00:00:00Z")
            .await
            .unwrap(),
        lfx_sync::kv::DeleteOutcome::AlreadyDeleted
    );
    let newer = json!({"v": 2, "lastmodifieddate": "2030-01-01T00:00:00Z"});
    assert_eq!(
        f.writer.write(request("s.1", newer)).await.unwrap(),
        Outcome::SkippedDeleted
    );
    assert_eq!(f.revision("s.1").await, rev);
}
