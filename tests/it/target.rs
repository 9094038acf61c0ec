//! `target-nats-kv`: real tap output replayed into real NATS (issue 4
//! acceptance 1, 3, 4).

use std::collections::BTreeMap;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Output, Stdio};
use std::time::Duration;

use serde_json::{Map, Value, json};
use tokio::io::AsyncWriteExt;

use crate::common::*;

fn target_bin() -> &'static str {
    env!("CARGO_BIN_EXE_target-nats-kv")
}

fn config_file(dir: &Path, settings: Value) -> PathBuf {
    let path = dir.join(format!("{}.json", unique("target")));
    std::fs::write(&path, settings.to_string()).unwrap();
    path
}

/// Starts the target on `config`, every stream piped; only the config counts.
fn spawn_target(config: &Path) -> tokio::process::Child {
    tokio::process::Command::new(target_bin())
        .arg("--config")
        .arg(config)
        .env_remove("NATS_URL")
        .env("NO_COLOR", "1")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

/// Runs the target with `input` on stdin.
async fn run_target(config: &Path, input: &[u8]) -> Output {
    let mut child = spawn_target(config);
    let mut stdin = child.stdin.take().unwrap();
    let input = input.to_vec();
    let feed = tokio::spawn(async move {
        let _ = stdin.write_all(&input).await;
    });
    let out = child.wait_with_output().await.unwrap();
    feed.await.unwrap();
    out
}

fn stdout_states(out: &Output) -> Vec<Value> {
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| {
            serde_json::from_str(l)
                .unwrap_or_else(|e| panic!("stdout line is not a STATE value ({e}): {l}"))
        })
        .collect()
}

/// The STATE values of a Singer stream, in order.
fn input_states(input: &str) -> Vec<Value> {
    input
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(|m| m["type"].as_str().map(str::to_ascii_uppercase).as_deref() == Some("STATE"))
        .map(|m| m["value"].clone())
        .collect()
}

/// Printed STATEs are input STATEs, in input order, ending with the last one
/// printed twice (the end-of-input re-emit).
fn assert_states(printed: &[Value], input: &[Value]) {
    assert!(
        printed.len() >= 2,
        "expected the final re-emit, got {printed:?}"
    );
    let mut from = 0;
    for p in printed {
        let at = input[from..]
            .iter()
            .position(|s| s == p)
            .unwrap_or_else(|| panic!("printed state {p} is not an input state in order"));
        from += at;
    }
    let n = printed.len();
    assert_eq!(printed[n - 1], printed[n - 2]);
    assert_eq!(&printed[n - 1], input.last().unwrap());
}

/// Expected bucket contents of a Singer stream: the last record of each key.
fn expected_records(input: &str) -> BTreeMap<String, Map<String, Value>> {
    let mut keys: BTreeMap<String, Vec<String>> = BTreeMap::new();
    let mut out = BTreeMap::new();
    for line in input.lines() {
        let Ok(msg) = serde_json::from_str::<Value>(line) else {
            continue;
        };
        let stream = msg["stream"].as_str().unwrap_or_default().to_string();
        let records: Vec<Map<String, Value>> = match msg["type"].as_str() {
            Some("SCHEMA") => {
                keys.insert(
                    stream,
                    msg["key_properties"]
                        .as_array()
                        .unwrap()
                        .iter()
                        .map(|v| v.as_str().unwrap().to_string())
                        .collect(),
                );
                continue;
            }
            Some("RECORD") => vec![msg["record"].as_object().unwrap().clone()],
            Some("BATCH") => msg["manifest"]
                .as_array()
                .unwrap()
                .iter()
                .flat_map(|uri| {
                    let path = uri.as_str().unwrap().strip_prefix("file://").unwrap();
                    let mut text = String::new();
                    flate2::read::GzDecoder::new(std::fs::File::open(path).unwrap())
                        .read_to_string(&mut text)
                        .unwrap();
                    text.lines()
                        .map(|l| serde_json::from_str::<Map<String, Value>>(l).unwrap())
                        .collect::<Vec<_>>()
                })
                .collect(),
            _ => continue,
        };
        for record in records {
            out.insert(singer_key(&stream, &keys[&stream], &record), record);
        }
    }
    out
}

#[tokio::test]
async fn every_fixture_stream_replays_with_its_records_and_states() {
    let dir = tempfile::tempdir().unwrap();
    // The BATCH manifests name the capture machine's folder: point them here.
    let batch_dir = fixture("batch");
    let mut fixtures: Vec<PathBuf> = std::fs::read_dir(fixture(""))
        .unwrap()
        .chain(std::fs::read_dir(fixture("dynamodb")).unwrap())
        .map(|e| e.unwrap().path())
        .filter(|p| p.to_string_lossy().ends_with(".singer.jsonl"))
        .collect();
    fixtures.sort();
    assert!(fixtures.len() >= 11, "fixtures missing: {fixtures:?}");
    let mut records = 0;
    let (_c, js) = js().await;
    for path in fixtures {
        let input = std::fs::read_to_string(&path).unwrap().replace(
            "file:///tmp/singer-fixtures/batch/",
            &format!("file://{}/", batch_dir.display()),
        );
        let (bucket, store) = new_bucket(&js, -1).await;
        let config = config_file(
            dir.path(),
            json!({"url": services().nats_url, "bucket": bucket}),
        );
        let out = run_target(&config, input.as_bytes()).await;
        let name = path.file_name().unwrap().to_string_lossy().to_string();
        assert_eq!(
            out.status.code(),
            Some(0),
            "{name}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert_states(&stdout_states(&out), &input_states(&input));
        let expected = expected_records(&input);
        let stored = contents(&store).await;
        assert_eq!(
            stored.keys().collect::<Vec<_>>(),
            expected.keys().collect::<Vec<_>>(),
            "{name}"
        );
        records += expected.len();
        for (key, record) in &expected {
            assert_eq!(&without_sdc(&stored[key]), record, "{name}: {key}");
            assert!(
                stored[key]["_sdc_extracted_at"].is_string()
                    && stored[key]["_sdc_received_at"].is_string()
            );
        }
    }
    assert!(records > 500, "only {records} records replayed");
}

#[tokio::test]
async fn replaying_the_same_stream_twice_writes_nothing_new() {
    let dir = tempfile::tempdir().unwrap();
    let (_c, js) = js().await;
    let (bucket, store) = new_bucket(&js, -1).await;
    let config = config_file(
        dir.path(),
        json!({"url": services().nats_url, "bucket": bucket, "validate_records": "true"}),
    );
    let input = read_fixture("tap-postgres-incremental.singer.jsonl");
    assert_eq!(
        run_target(&config, input.as_bytes()).await.status.code(),
        Some(0)
    );
    let before = contents(&store).await;
    let out = run_target(&config, input.as_bytes()).await;
    assert_eq!(out.status.code(), Some(0));
    assert_eq!(contents(&store).await, before);
    let stderr = String::from_utf8_lossy(&out.stderr);
    // The known tap mismatch ([null, "x"] in a text[] declared as strings) is
    // reported, not fatal.
    assert!(
        stderr.contains("platform-project__c") && stderr.contains("does not match its schema"),
        "{stderr}"
    );
}

const SCHEMA: &str = r#"{"type":"SCHEMA","stream":"s","schema":{"type":"object","properties":{"id":{"type":["string"]},"ts":{"type":["string"]}}},"key_properties":["id"],"bookmark_properties":["ts"]}"#;

fn rec(id: &str, extra: &str) -> String {
    format!(
        r#"{{"type":"RECORD","stream":"s","record":{{"id":"{id}","ts":"2024-01-01T00:00:00Z"{extra}}}}}"#
    )
}

#[tokio::test]
async fn bad_input_names_the_line_and_keeps_what_was_acknowledged() {
    let dir = tempfile::tempdir().unwrap();
    let (_c, js) = js().await;
    let state_a = r#"{"type":"STATE","value":{"bookmarks":{"s":{"n":1}}}}"#;
    let big = format!(r#","blob":"{}""#, "x".repeat(4096));
    let cases: Vec<(&str, String, Option<i32>, &str)> = vec![
        (
            "truncated line",
            format!(
                "{SCHEMA}\n{}\n{state_a}\n{}\n{{\"type\":\"RECORD\",\"stream\":\"s\",\"rec",
                rec("a", ""),
                rec("b", "")
            ),
            Some(1),
            "line 5, stream s: not valid JSON",
        ),
        (
            "non-JSON line",
            format!(
                "{SCHEMA}\n{}\n{state_a}\nthis is not json\n{}\n",
                rec("a", ""),
                rec("b", "")
            ),
            Some(1),
            "line 4: not valid JSON",
        ),
        (
            "RECORD before SCHEMA",
            format!("{}\n{state_a}\n{SCHEMA}\n", rec("a", "")),
            Some(1),
            "line 1, stream s: RECORD before the stream's SCHEMA",
        ),
        (
            "missing key property",
            format!(
                "{SCHEMA}\n{}\n{state_a}\n{}\n",
                rec("a", ""),
                r#"{"type":"RECORD","stream":"s","record":{"ts":"2024-01-01T00:00:00Z"}}"#
            ),
            Some(1),
            "line 4, stream s: record lacks key property \"id\"",
        ),
        (
            "illegal key characters",
            format!(
                "{SCHEMA}\n{}\n{state_a}\n{}\n",
                rec("a", ""),
                rec("b c", "")
            ),
            Some(0),
            "line 4",
        ),
        (
            "record over the max value size",
            format!(
                "{SCHEMA}\n{}\n{state_a}\n{}\n",
                rec("a", ""),
                rec("b", &big)
            ),
            Some(1),
            "line 4, stream s: record failed",
        ),
    ];
    for (what, input, code, needle) in cases {
        let (bucket, store) = new_bucket(&js, 2048).await;
        let config = config_file(
            dir.path(),
            json!({"url": services().nats_url, "bucket": bucket}),
        );
        let out = run_target(&config, input.as_bytes()).await;
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), code, "{what}: {stderr}");
        assert!(
            stderr.contains(needle),
            "{what}: {needle:?} not in\n{stderr}"
        );
        let stored = contents(&store).await;
        if what != "RECORD before SCHEMA" {
            assert!(
                stored.contains_key("s.a"),
                "{what}: acknowledged record lost"
            );
            // The state after the acknowledged record was printed (and re-emitted).
            let printed = stdout_states(&out);
            assert_eq!(
                printed.last(),
                Some(&json!({"bookmarks":{"s":{"n":1}}})),
                "{what}"
            );
        } else {
            assert!(stored.is_empty() && out.stdout.is_empty(), "{what}");
        }
        if what == "illegal key characters" {
            assert!(
                stderr.contains("b c") && stderr.contains("invalid key"),
                "{stderr}"
            );
            assert_eq!(stored.len(), 1);
        }
    }
}

#[tokio::test]
async fn a_failed_record_holds_back_every_later_state() {
    let dir = tempfile::tempdir().unwrap();
    let (_c, js) = js().await;
    let (bucket, store) = new_bucket(&js, 2048).await;
    let config = config_file(
        dir.path(),
        json!({"url": services().nats_url, "bucket": bucket}),
    );
    let big = format!(r#","blob":"{}""#, "x".repeat(4096));
    let input = format!(
        "{SCHEMA}\n{}\n{{\"type\":\"STATE\",\"value\":1}}\n{}\n{}\n{{\"type\":\"STATE\",\"value\":2}}\n",
        rec("a", ""),
        rec("big", &big),
        rec("c", "")
    );
    let out = run_target(&config, input.as_bytes()).await;
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(stdout_states(&out), vec![json!(1), json!(1)]);
    // Records after the failed one are still written: only the state stops.
    assert!(contents(&store).await.contains_key("s.c"));
}

#[tokio::test]
async fn a_nats_restart_mid_stream_loses_nothing() {
    const RECORDS: usize = 20_000;
    let mut nats = OwnNats::start();
    let client = async_nats::connect(nats.url()).await.unwrap();
    let js = async_nats::jetstream::new(client);
    let store = js
        .create_key_value(async_nats::jetstream::kv::Config {
            bucket: "restart".into(),
            ..Default::default()
        })
        .await
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let config = config_file(dir.path(), json!({"url": nats.url(), "bucket": "restart"}));
    let mut child = spawn_target(&config);
    let mut stdin = child.stdin.take().unwrap();
    let mut lines = vec![SCHEMA.to_string()];
    for i in 0..RECORDS {
        lines.push(rec(&format!("r{i}"), ""));
        if i % 1000 == 999 {
            lines.push(format!(r#"{{"type":"STATE","value":{}}}"#, i + 1));
        }
    }
    let (first, second) = lines.split_at(lines.len() / 2);
    stdin
        .write_all((first.join("\n") + "\n").as_bytes())
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    nats.stop();
    tokio::time::sleep(Duration::from_millis(500)).await;
    nats.spawn();
    stdin
        .write_all((second.join("\n") + "\n").as_bytes())
        .await
        .unwrap();
    drop(stdin);
    let out = tokio::time::timeout(Duration::from_secs(120), child.wait_with_output())
        .await
        .unwrap()
        .unwrap();
    let printed = stdout_states(&out);
    let stored = contents(&store).await;
    // Whatever the outcome, no printed STATE runs ahead of the data.
    let last = printed.last().and_then(Value::as_u64).unwrap_or(0) as usize;
    for i in 0..last {
        assert!(
            stored.contains_key(&format!("s.r{i}")),
            "STATE {last} printed but record r{i} is missing"
        );
    }
    assert_eq!(
        out.status.code(),
        Some(0),
        "the target should ride out a restart: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(stored.len(), RECORDS);
    assert_eq!(last, RECORDS);
}
