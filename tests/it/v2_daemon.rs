//! Issue 6 through the real binary: `lfx-sync sync` with the v2 service URLs
//! set runs the KV consumer next to the WAL ingest, replays what the bucket
//! already holds (deliver last per subject), pushes later changes to the v2
//! stand-in, records the mappings, reports both consumers on `/readyz` and
//! `/metrics`, and drains on SIGTERM.

use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};

use async_nats::jetstream::kv;
use lfx_sync::sync::v2::auth::Signer;
use lfx_sync::sync::v2::handlers::{KvChange, Operation};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::common::{self, repo, services, unique};
use crate::v2_standin::{KID, StandIn, TEST_KEY};
use crate::v2_sync::{C1, M1, P1, P2, bucket, root_responder};

/// The fixture rows of one project under another, a committee of it and a
/// member of that committee, parents first.
fn rows() -> Vec<KvChange> {
    let wanted = [
        format!("salesforce-project__c.{P1}"),
        format!("salesforce-project__c.{P2}"),
        format!("platform-collaboration__c.{C1}"),
        format!("platform-community__c.{M1}"),
    ];
    let all = bucket();
    wanted
        .iter()
        .map(|key| {
            all.iter()
                .find(|c| &c.key == key)
                .cloned()
                .unwrap_or_else(|| panic!("{key} not in the fixture bucket"))
        })
        .collect()
}

async fn put(store: &kv::Store, change: &KvChange) {
    let Operation::Put(row) = &change.operation else {
        unreachable!("the fixture bucket has puts only")
    };
    store
        .put(change.key.as_str(), serde_json::to_vec(row).unwrap().into())
        .await
        .unwrap();
}

/// A plain HTTP/1.1 GET of the ops port: status and body.
async fn http_get(port: u16, path: &str) -> Option<(u16, String)> {
    let mut socket = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .ok()?;
    let request = format!("GET {path} HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n");
    socket.write_all(request.as_bytes()).await.ok()?;
    let mut text = String::new();
    socket.read_to_string(&mut text).await.ok()?;
    let status = text.split_whitespace().nth(1)?.parse().ok()?;
    let body = text.split_once("\r\n\r\n").map(|(_, b)| b.to_string())?;
    Some((status, body))
}

async fn eventually(limit: Duration, log: &Path, what: &str, mut done: impl AsyncFnMut() -> bool) {
    let start = Instant::now();
    while !done().await {
        assert!(
            start.elapsed() < limit,
            "{what} not within {limit:?}; daemon log:\n{}",
            std::fs::read_to_string(log).unwrap_or_default()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn the_daemon_pushes_bucket_changes_to_v2() {
    let signer = Signer::from_pem(TEST_KEY, KID).unwrap();
    let standin = StandIn::start(signer.public_key_der().to_vec()).await;
    let (client, js) = common::js().await;
    let _responder = root_responder(&client).await;

    let wal = common::new_wal_stream(&js).await;
    let (objects_name, objects) = common::new_bucket(&js, 1 << 20).await;
    let mappings_name = unique("mappings");
    let rows = rows();
    // Already in the bucket before the first start: replayed.
    put(&objects, &rows[0]).await;

    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("daemon.log");
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .unwrap();
    let streams_config = repo().join("tap-configs/lfx-v1-postgres.toml");
    let mut daemon = tokio::process::Command::new(env!("CARGO_BIN_EXE_lfx-sync"))
        .args(["sync", "--nats-url", &services().nats_url])
        .args(["--bucket", &objects_name, "--create-buckets"])
        .args(["--streams-config", &streams_config.display().to_string()])
        .args(["--wal-stream", &wal, "--wal-consumer", &unique("walc")])
        .args(["--dlq-stream", &unique("dlq")])
        .args(["--mappings-bucket", &mappings_name])
        .args(["--kv-consumer", &unique("kvc")])
        .args(["--bind", &format!("127.0.0.1:{port}")])
        .args(["--workers", "4", "--max-in-flight", "64"])
        .env("PROJECT_SERVICE_URL", standin.url())
        .env("COMMITTEE_SERVICE_URL", standin.url())
        .env(
            "HEIMDALL_PRIVATE_KEY",
            std::str::from_utf8(TEST_KEY).unwrap(),
        )
        .env("HEIMDALL_KEY_ID", KID)
        .env("AUTH0_CLIENT_ID", "auth0-sync-client")
        .env("NO_COLOR", "1")
        .env_remove("NATS_URL")
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .kill_on_drop(true)
        .spawn()
        .unwrap();

    eventually(Duration::from_secs(30), &log, "ready", async || {
        matches!(http_get(port, "/readyz").await, Some((200, _)))
    })
    .await;
    let metrics = http_get(port, "/metrics").await.unwrap().1;
    assert!(
        metrics.contains("lfx_sync_consumer_bound{input=\"kv\""),
        "{metrics}"
    );
    for change in &rows[1..] {
        put(&objects, change).await;
    }

    eventually(
        Duration::from_secs(30),
        &log,
        "project, committee and member",
        async || standin.members().len() == 1,
    )
    .await;
    assert_eq!(standin.projects().len(), 2);
    let mappings = js.get_key_value(&mappings_name).await.unwrap();
    for key in [
        format!("project.sfid.{P1}"),
        format!("project.sfid.{P2}"),
        format!("committee.sfid.{C1}"),
        format!("committee_member.sfid.{M1}"),
    ] {
        assert!(
            mappings.get(key.as_str()).await.unwrap().is_some(),
            "no mapping {key}"
        );
    }

    let pid = daemon.id().unwrap().to_string();
    assert!(
        std::process::Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .unwrap()
            .success()
    );
    let status = tokio::time::timeout(Duration::from_secs(30), daemon.wait())
        .await
        .expect("daemon drained")
        .unwrap();
    assert_eq!(
        status.code(),
        Some(0),
        "{}",
        std::fs::read_to_string(&log).unwrap_or_default()
    );
}
