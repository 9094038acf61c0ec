//! The DynamoDB source end to end against moto (issue 3): values compared with
//! tap-dynamodb's output for the same items, composite keys, incremental runs
//! from the scan's start time, failures that hold the bookmark, and S3 or
//! DynamoDB going away in the middle of a run.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::time::Duration;

use aws_sdk_dynamodb::primitives::Blob;
use aws_sdk_dynamodb::types::{
    AttributeDefinition, AttributeValue, BillingMode, KeySchemaElement, KeyType,
    ScalarAttributeType,
};
use futures::StreamExt;
use serde_json::{Map, Value, json};

use crate::common::*;

type Item = HashMap<String, AttributeValue>;

fn s(v: &str) -> AttributeValue {
    AttributeValue::S(v.to_string())
}

fn n(v: impl ToString) -> AttributeValue {
    AttributeValue::N(v.to_string())
}

fn item<const N: usize>(pairs: [(&str, AttributeValue); N]) -> Item {
    pairs.into_iter().map(|(k, v)| (k.to_string(), v)).collect()
}

async fn create_table(
    ddb: &aws_sdk_dynamodb::Client,
    hash: (&str, ScalarAttributeType),
    range: Option<(&str, ScalarAttributeType)>,
) -> String {
    let name = unique("lfx-ddb").replace('_', "-");
    let mut request = ddb
        .create_table()
        .table_name(&name)
        .billing_mode(BillingMode::PayPerRequest);
    for (attr, kind, key_type) in std::iter::once((hash.0, hash.1, KeyType::Hash))
        .chain(range.map(|(a, k)| (a, k, KeyType::Range)))
    {
        request = request
            .key_schema(
                KeySchemaElement::builder()
                    .attribute_name(attr)
                    .key_type(key_type)
                    .build()
                    .unwrap(),
            )
            .attribute_definitions(
                AttributeDefinition::builder()
                    .attribute_name(attr)
                    .attribute_type(kind)
                    .build()
                    .unwrap(),
            );
    }
    request.send().await.expect("create table");
    name
}

async fn put_all(ddb: &aws_sdk_dynamodb::Client, table: &str, items: Vec<Item>) {
    futures::stream::iter(items)
        .map(|i| async move {
            ddb.put_item()
                .table_name(table)
                .set_item(Some(i))
                .send()
                .await
                .expect("put item")
        })
        .buffer_unordered(16)
        .collect::<Vec<_>>()
        .await;
}

/// The items of tests/fixtures/singer/dynamodb/dynamodb_seed.py, attribute
/// for attribute (numbers as the text boto3 sends for its Decimals).
fn fixture_items() -> Vec<Item> {
    let mut items = Vec::new();
    for i in 1..=12u32 {
        items.push(item([
            ("sfid", s(&format!("a0P5G{i:013}"))),
            ("name", s(&format!("Project {i}"))),
            (
                "status",
                s(["Active", "Archived", "Formation - Engaged"][i as usize % 3]),
            ),
            (
                "annual_budget",
                n(format!("{:.2}", f64::from(i) * 12345.67)),
            ),
            ("member_count", n(i * 3)),
            ("is_foundation", AttributeValue::Bool(i % 5 == 1)),
            (
                "tags",
                AttributeValue::Ss(vec!["shared".into(), format!("tag{i}")]),
            ),
            (
                "scores",
                AttributeValue::Ns(vec![i.to_string(), "0.5".into()]),
            ),
            (
                "links",
                AttributeValue::L(vec![
                    s(&format!("https://example.org/{i}")),
                    n(i),
                    AttributeValue::Null(true),
                    AttributeValue::Bool(true),
                ]),
            ),
            (
                "settings",
                AttributeValue::M(item([
                    ("quorum", n("0.5")),
                    ("chairs", AttributeValue::L(vec![s("Zoë"), s("José")])),
                    (
                        "nested",
                        AttributeValue::M(item([("deep", AttributeValue::M(item([("x", n(i))])))])),
                    ),
                ])),
            ),
            ("lastmodifieddate", s(&format!("2024-03-01T12:{i:02}:00Z"))),
        ]));
    }
    items.push(item([
        ("sfid", s("a0P5G00000UNIC0001")),
        ("name", s("Проект Ωmega — 開放原子 🚀")),
        (
            "description",
            s("line1\nline2\r\n\ttab \"quoted\" \\ backslash \u{1} ctrl"),
        ),
        ("huge_number", n("12345678901234567890123456789012345678")),
        ("tiny_number", n("1E-130")),
        ("negative", n("-0.000001")),
        ("nothing", AttributeValue::Null(true)),
        (
            "blob",
            AttributeValue::B(Blob::new(b"\x00\x01\xfe\xffbinary".to_vec())),
        ),
        (
            "blobs",
            AttributeValue::Bs(vec![Blob::new(b"a".to_vec()), Blob::new(vec![0])]),
        ),
        ("empty_list", AttributeValue::L(vec![])),
        ("empty_map", AttributeValue::M(HashMap::new())),
        ("empty_string", s("")),
        ("lastmodifieddate", s("2024-03-02T00:00:00Z")),
    ]));
    items.push(item([("sfid", s("a0P5G00000SPARSE01"))]));
    items
}

/// The fixture's table, under a name of this test's own.
async fn seeded_projects(ddb: &aws_sdk_dynamodb::Client) -> String {
    let table = create_table(ddb, ("sfid", ScalarAttributeType::S), None).await;
    put_all(ddb, &table, fixture_items()).await;
    table
}

/// A HASH + RANGE table, the range a number of DynamoDB's full 38 digits;
/// no timestamp attribute.
async fn seeded_occurrences(ddb: &aws_sdk_dynamodb::Client) -> String {
    let table = create_table(
        ddb,
        ("meeting_id", ScalarAttributeType::S),
        Some(("occurrence", ScalarAttributeType::N)),
    )
    .await;
    put_all(
        ddb,
        &table,
        vec![
            item([
                ("meeting_id", s("m1")),
                ("occurrence", n("12345678901234567890123456789012345678")),
                ("topic", s("big")),
            ]),
            item([
                ("meeting_id", s("m1")),
                ("occurrence", n("1")),
                ("topic", s("first")),
            ]),
            item([
                ("meeting_id", s("proj:vllm")),
                ("occurrence", n("-7")),
                ("topic", s("colon")),
            ]),
        ],
    )
    .await;
    table
}

/// `count` items with a timestamp, for runs that must last a while.
async fn seeded_many(ddb: &aws_sdk_dynamodb::Client, count: u32) -> String {
    let table = create_table(ddb, ("id", ScalarAttributeType::S), None).await;
    put_all(
        ddb,
        &table,
        (0..count)
            .map(|i| {
                item([
                    ("id", s(&format!("item-{i:05}"))),
                    ("modified_at", s("2024-05-01T00:00:00Z")),
                    ("payload", s(&"x".repeat(200))),
                ])
            })
            .collect(),
    )
    .await;
    table
}

struct Table<'a> {
    name: &'a str,
    timestamp: Option<&'a str>,
}

fn ddb_config(dir: &Path, endpoint: &str, extra: &str, tables: &[Table<'_>]) -> PathBuf {
    let mut text =
        format!("state_id = \"ddb\"\n[dynamodb]\nendpoint_url = \"{endpoint}\"\n{extra}\n");
    for t in tables {
        text.push_str(&format!("[[dynamodb.tables]]\ntable = \"{}\"\n", t.name));
        if let Some(ts) = t.timestamp {
            text.push_str(&format!("timestamp = \"{ts}\"\n"));
        }
    }
    let path = dir.join(format!("{}.toml", unique("ddb")));
    std::fs::write(&path, text).unwrap();
    path
}

fn ddb_args(config: &Path, bucket: &str, state: &str) -> Vec<String> {
    [
        "backfill",
        "--config",
        &config.display().to_string(),
        "--nats-url",
        &services().nats_url,
        "--bucket",
        bucket,
        "--state",
        state,
        "--quiet",
        "--report",
        "json",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect()
}

fn file_state(dir: &Path) -> String {
    format!("file://{}", dir.display())
}

/// Set attributes are unordered: compare them sorted.
fn sets_sorted(mut record: Map<String, Value>) -> Map<String, Value> {
    for set in ["tags", "scores", "blobs"] {
        if let Some(Value::Array(a)) = record.get_mut(set) {
            a.sort_by_key(|v| v.to_string());
        }
    }
    record
}

fn bookmark_of(state: &Value, stream: &str) -> Option<String> {
    let effective = if state["partial"]["singer_state"]["bookmarks"][stream].is_object() {
        &state["partial"]["singer_state"]
    } else {
        &state["completed"]["singer_state"]
    };
    effective["bookmarks"][stream]["replication_key_value"]
        .as_str()
        .map(str::to_string)
}

fn ts(text: &str) -> lfx_sync::kv::timestamp::Instant {
    lfx_sync::kv::timestamp::parse(text).unwrap_or_else(|| panic!("not a timestamp: {text}"))
}

fn now() -> String {
    chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}

#[tokio::test]
async fn full_run_writes_what_tap_dynamodb_emits_for_the_same_items() {
    let ddb = dynamodb_client().await;
    let projects = seeded_projects(&ddb).await;
    let occurrences = seeded_occurrences(&ddb).await;
    let (_c, js) = js().await;
    let (bucket, store) = new_bucket(&js, -1).await;
    let dir = tempfile::tempdir().unwrap();
    // Several segments and small pages: the parallel, paginated path.
    let config = ddb_config(
        dir.path(),
        aws_endpoint(),
        "segments = 3\npage_size = 2",
        &[
            Table {
                name: &projects,
                timestamp: Some("lastmodifieddate"),
            },
            Table {
                name: &occurrences,
                timestamp: None,
            },
        ],
    );
    let before = now();
    let out = run_aws(&ddb_args(&config, &bucket, &file_state(dir.path())), &[]).await;
    let after = now();
    expect_exit(&out, 0);
    let report = report(&out);
    assert_eq!(report["streams"][&projects]["read"], json!(14), "{report}");
    assert_eq!(report["streams"][&projects]["created"], json!(14));
    assert_eq!(report["streams"][&occurrences]["created"], json!(3));

    let stored = contents(&store).await;
    let expected: BTreeMap<String, Map<String, Value>> =
        tap_records("dynamodb/tap-dynamodb-full.singer.jsonl")
            .into_iter()
            .map(|(k, v)| (k.replacen("lfx-project.", &format!("{projects}."), 1), v))
            .collect();
    assert_eq!(expected.len(), 14);
    for (key, record) in &expected {
        let value = stored
            .get(key)
            .unwrap_or_else(|| panic!("{key} not written"));
        assert_eq!(
            sets_sorted(without_sdc(value)),
            sets_sorted(record.clone()),
            "{key}"
        );
        assert!(ts(value["_sdc_extracted_at"].as_str().unwrap()) >= ts(&before));
    }
    let unic = &stored[&format!("{projects}.a0P5G00000UNIC0001")];
    // Exact digits, never through a float; sets sorted, so every run writes the same text.
    assert_eq!(
        unic["huge_number"].to_string(),
        "12345678901234567890123456789012345678"
    );
    assert_eq!(unic["negative"].to_string(), "-0.000001");
    assert_eq!(
        stored[&format!("{projects}.a0P5G0000000000010")]["annual_budget"].to_string(),
        "123456.70"
    );
    assert_eq!(unic["blobs"], json!(["AA==", "YQ=="]));
    assert_eq!(
        stored[&format!("{projects}.a0P5G0000000000008")]["scores"],
        json!([0.5, 8])
    );

    // Composite keys: HASH then RANGE, `:` replaced, the number's 38 digits.
    let mut occurrence_keys: Vec<_> = stored
        .keys()
        .filter(|k| k.starts_with(&format!("{occurrences}.")))
        .cloned()
        .collect();
    occurrence_keys.sort();
    assert_eq!(
        occurrence_keys,
        [
            format!("{occurrences}.m1-1"),
            format!("{occurrences}.m1-12345678901234567890123456789012345678"),
            format!("{occurrences}.proj_vllm--7"),
        ]
    );

    // The bookmark is the time the scan started; a table without a timestamp has none.
    let state = stored_state(dir.path(), "ddb").expect("state");
    let bookmark = bookmark_of(&state, &projects).expect("bookmark");
    assert!(
        ts(&before) <= ts(&bookmark) && ts(&bookmark) <= ts(&after),
        "{bookmark}"
    );
    assert_eq!(bookmark_of(&state, &occurrences), None);
    assert_eq!(state["partial"], json!({}));
}

#[tokio::test]
async fn incremental_run_reads_what_changed_since_the_last_scan_started() {
    let ddb = dynamodb_client().await;
    let projects = seeded_projects(&ddb).await;
    let occurrences = seeded_occurrences(&ddb).await;
    let (_c, js) = js().await;
    let (bucket, store) = new_bucket(&js, -1).await;
    let dir = tempfile::tempdir().unwrap();
    let config = ddb_config(
        dir.path(),
        aws_endpoint(),
        "",
        &[
            Table {
                name: &projects,
                timestamp: Some("lastmodifieddate"),
            },
            Table {
                name: &occurrences,
                timestamp: None,
            },
        ],
    );
    let args = ddb_args(&config, &bucket, &file_state(dir.path()));
    expect_exit(&run_aws(&args, &[]).await, 0);
    let first = bookmark_of(&stored_state(dir.path(), "ddb").unwrap(), &projects).unwrap();

    // What the v1 services do: changes carry the time they were made.
    let changed_at = now();
    ddb.update_item()
        .table_name(&projects)
        .key("sfid", s("a0P5G0000000000003"))
        .update_expression("SET #s = :s, lastmodifieddate = :d")
        .expression_attribute_names("#s", "status")
        .expression_attribute_values(":s", s("Archived"))
        .expression_attribute_values(":d", s(&changed_at))
        .send()
        .await
        .unwrap();
    put_all(
        &ddb,
        &projects,
        vec![item([
            ("sfid", s("a0P5G00000NEW00001")),
            ("name", s("New project")),
            ("lastmodifieddate", s(&changed_at)),
        ])],
    )
    .await;
    ddb.delete_item()
        .table_name(&projects)
        .key("sfid", s("a0P5G0000000000004"))
        .send()
        .await
        .unwrap();

    let out = run_aws(&args, &[]).await;
    expect_exit(&out, 0);
    let second_report = report(&out);
    let r = &second_report["streams"][&projects];
    // The changed item, the new one, and the item without a timestamp (which
    // an incremental filter cannot place in time, so it is always re-read).
    assert_eq!(r["read"], json!(3), "{r}");
    assert_eq!(r["updated"], json!(1), "{r}");
    assert_eq!(r["created"], json!(1), "{r}");
    assert_eq!(r["unchanged"], json!(1), "{r}");
    // A table without a timestamp attribute is read in full every run.
    assert_eq!(second_report["streams"][&occurrences]["read"], json!(3));
    assert_eq!(
        second_report["streams"][&occurrences]["unchanged"],
        json!(3)
    );

    let stored = contents(&store).await;
    assert_eq!(
        stored[&format!("{projects}.a0P5G0000000000003")]["status"],
        json!("Archived")
    );
    assert!(stored.contains_key(&format!("{projects}.a0P5G00000NEW00001")));
    // A Scan does not see deletions: the deleted item's entry stays as it was.
    assert!(stored.contains_key(&format!("{projects}.a0P5G0000000000004")));

    let second = bookmark_of(&stored_state(dir.path(), "ddb").unwrap(), &projects).unwrap();
    assert!(ts(&second) > ts(&first), "{first} -> {second}");
    assert!(ts(&second) >= ts(&changed_at), "{second} vs {changed_at}");

    // --full ignores the bookmark and reads every item again.
    let mut full = args.clone();
    full.push("--full".into());
    let out = run_aws(&full, &[]).await;
    expect_exit(&out, 0);
    assert_eq!(report(&out)["streams"][&projects]["read"], json!(14));
}

#[tokio::test]
async fn a_failed_item_keeps_an_unordered_streams_bookmark_where_it_was() {
    let ddb = dynamodb_client().await;
    let table = create_table(&ddb, ("id", ScalarAttributeType::S), None).await;
    let mut items: Vec<Item> = (0..20)
        .map(|i| {
            item([
                ("id", s(&format!("ok-{i}"))),
                ("modified_at", s("2024-05-01T00:00:00Z")),
            ])
        })
        .collect();
    items.push(item([
        ("id", s("too-big")),
        ("modified_at", s("2024-04-01T00:00:00Z")),
        ("description", s(&"x".repeat(20_000))),
    ]));
    put_all(&ddb, &table, items).await;
    let (_c, js) = js().await;
    let (bucket, store) = new_bucket(&js, 8_000).await;
    let dir = tempfile::tempdir().unwrap();
    let config = ddb_config(
        dir.path(),
        aws_endpoint(),
        "page_size = 5",
        &[Table {
            name: &table,
            timestamp: Some("modified_at"),
        }],
    );
    let out = run_aws(&ddb_args(&config, &bucket, &file_state(dir.path())), &[]).await;
    expect_exit(&out, 1);
    let r = &report(&out)["streams"][&table];
    assert_eq!(r["failed"], json!(1), "{r}");
    assert_eq!(r["created"], json!(20), "{r}");
    // Items come in no time order: the failed one may be older than any
    // other, so no bookmark can be stored past it.
    assert_eq!(r["bookmark"], Value::Null, "{r}");
    let state = stored_state(dir.path(), "ddb");
    assert_eq!(state.as_ref().and_then(|s| bookmark_of(s, &table)), None);
    assert_eq!(contents(&store).await.len(), 20);
    assert!(String::from_utf8_lossy(&out.stderr).contains(&format!("{table}.too-big")));
}

/// A small table, then a large one read slowly through `dynamodb`'s proxy.
async fn two_tables_run(dir: &Path, dynamodb: &str, state: &str) -> (String, String, Vec<String>) {
    let ddb = dynamodb_client().await;
    let small = seeded_projects(&ddb).await;
    let large = seeded_many(&ddb, 400).await;
    let (_c, js) = js().await;
    let (bucket, _store) = new_bucket(&js, -1).await;
    let config = ddb_config(
        dir,
        dynamodb,
        "segments = 1\npage_size = 4",
        &[
            Table {
                name: &small,
                timestamp: Some("lastmodifieddate"),
            },
            Table {
                name: &large,
                timestamp: Some("modified_at"),
            },
        ],
    );
    (small, large, ddb_args(&config, &bucket, state))
}

#[tokio::test]
async fn dynamodb_going_away_mid_run_fails_clearly_and_keeps_the_bookmark_of_what_was_written() {
    let proxy = CuttableProxy::start(aws_endpoint(), Duration::from_millis(20)).await;
    let dir = tempfile::tempdir().unwrap();
    let (small, large, args) =
        two_tables_run(dir.path(), &proxy.url, &file_state(dir.path())).await;
    let child = lfx_sync_aws(&args, &[])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // The small table is done (its bookmark checkpointed), the large one is being read.
    loop {
        if stored_state(dir.path(), "ddb").is_some_and(|s| bookmark_of(&s, &small).is_some()) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    proxy.cut();
    let out = child.wait_with_output().await.unwrap();
    expect_exit(&out, 2);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains(&format!("reading stream {large}")) && stderr.contains("Scan"),
        "{stderr}"
    );
    let r = &report(&out)["streams"][&large];
    assert!(
        r["read"].as_u64().unwrap() < 400,
        "the run was not interrupted: {r}"
    );
    let state = stored_state(dir.path(), "ddb").unwrap();
    assert!(bookmark_of(&state, &small).is_some());
    assert_eq!(bookmark_of(&state, &large), None);
    assert_eq!(state["completed"]["singer_state"], json!({}));
}

#[tokio::test]
async fn s3_going_away_mid_run_fails_clearly_and_the_stored_bookmark_stays_behind() {
    let s3 = s3_client().await;
    let state_bucket = new_s3_bucket(&s3).await;
    let s3_proxy = CuttableProxy::start(aws_endpoint(), Duration::ZERO).await;
    let slow_dynamodb = CuttableProxy::start(aws_endpoint(), Duration::from_millis(20)).await;
    let dir = tempfile::tempdir().unwrap();
    let (small, large, args) = two_tables_run(
        dir.path(),
        &slow_dynamodb.url,
        &format!("s3://{state_bucket}/lfx"),
    )
    .await;
    let child = lfx_sync_aws(&args, &[("AWS_ENDPOINT_URL_S3", s3_proxy.url.as_str())])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let key = "lfx/ddb/state.json";
    loop {
        if let Some(text) = s3_text(&s3, &state_bucket, key).await
            && bookmark_of(&serde_json::from_str(&text).unwrap(), &small).is_some()
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    s3_proxy.cut();
    let out = child.wait_with_output().await.unwrap();
    expect_exit(&out, 2);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains(&format!("state s3://{state_bucket}/lfx/ddb/"))
            && stderr.contains("Connection refused"),
        "{stderr}"
    );
    // Every item of the large table was written, but its bookmark could not
    // be: the stored state still says where the run really got to.
    assert_eq!(report(&out)["streams"][&large]["read"], json!(400));
    let state: Value =
        serde_json::from_str(&s3_text(&s3, &state_bucket, key).await.unwrap()).unwrap();
    assert!(bookmark_of(&state, &small).is_some());
    assert_eq!(bookmark_of(&state, &large), None);
}

#[tokio::test]
async fn sources_and_streams_are_selected_from_one_config() {
    let ddb = dynamodb_client().await;
    let occurrences = seeded_occurrences(&ddb).await;
    let (_c, js) = js().await;
    let (bucket, _store) = new_bucket(&js, -1).await;
    let dir = tempfile::tempdir().unwrap();
    // PostgreSQL that does not answer: selecting only DynamoDB never connects to it.
    let mixed = dir.path().join("mixed.toml");
    std::fs::write(
        &mixed,
        format!(
            "state_id = \"mixed\"\n[postgres]\nurl = \"postgres://postgres@127.0.0.1:1/none\"\n\
             [[postgres.streams]]\nschema = \"platform\"\ntable = \"project__c\"\n\
             [dynamodb]\n[[dynamodb.tables]]\ntable = \"{occurrences}\"\n"
        ),
    )
    .unwrap();
    let args = |extra: &[&str]| {
        let mut a = ddb_args(&mixed, &bucket, &file_state(dir.path()));
        a.extend(extra.iter().map(|s| s.to_string()));
        a
    };
    for extra in [
        vec!["--source", "dynamodb"],
        vec!["--stream", occurrences.as_str()],
    ] {
        let out = run_aws(&args(&extra), &[]).await;
        expect_exit(&out, 0);
        let report = report(&out);
        assert_eq!(
            report["streams"]
                .as_object()
                .unwrap()
                .keys()
                .collect::<Vec<_>>(),
            [&occurrences],
            "{extra:?}"
        );
    }
    // With assume-role, reads go through the role's credentials (STS at the same endpoint).
    let out = run_aws(
        &args(&[
            "--source",
            "dynamodb",
            "--assume-role",
            "arn:aws:iam::123456789012:role/lfx-reader",
        ]),
        &[],
    )
    .await;
    expect_exit(&out, 0);

    let out = run_aws(&args(&["--source", "all"]), &[]).await;
    expect_exit(&out, 2);
    assert!(String::from_utf8_lossy(&out.stderr).contains("cannot connect to PostgreSQL"));

    let out = run_aws(&args(&["--stream", "no-such-table"]), &[]).await;
    expect_exit(&out, 2);
    assert!(
        String::from_utf8_lossy(&out.stderr)
            .contains("--stream no-such-table: not in the selected sources"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    let only_ddb = ddb_config(
        dir.path(),
        aws_endpoint(),
        "",
        &[
            Table {
                name: "itx-not-there",
                timestamp: None,
            },
            Table {
                name: &occurrences,
                timestamp: None,
            },
        ],
    );
    let mut a = ddb_args(&only_ddb, &bucket, &file_state(dir.path()));
    a.extend(["--source".into(), "postgres".into()]);
    let out = run_aws(&a, &[]).await;
    expect_exit(&out, 2);
    assert!(String::from_utf8_lossy(&out.stderr).contains("has no [postgres] source"));
    let out = run_aws(&ddb_args(&only_ddb, &bucket, &file_state(dir.path())), &[]).await;
    expect_exit(&out, 2);
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("table itx-not-there does not exist"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}
