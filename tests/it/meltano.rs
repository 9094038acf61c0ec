//! A real `meltano run tap-postgres target-nats-kv` with the project in
//! meltano/ (issue 4 acceptance 2): Meltano and tap-postgres from PyPI.

use std::path::Path;

use serde_json::Value;

use crate::common::*;

async fn meltano_run(db: &TestDb, bucket: &str, state_dir: &Path) -> std::process::Output {
    // postgres://user@host:port/database
    let rest = db.url.strip_prefix("postgres://").expect("postgres URL");
    let (user, rest) = rest.split_once('@').expect("user in URL");
    let (hostport, database) = rest.split_once('/').expect("database in URL");
    let (host, port) = hostport.split_once(':').expect("port in URL");
    let target_dir = Path::new(env!("CARGO_BIN_EXE_target-nats-kv"))
        .parent()
        .unwrap()
        .to_path_buf();
    let path = format!(
        "{}:{}",
        target_dir.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    tokio::process::Command::new(repo().join(".tools/meltano/bin/meltano"))
        .args(["run", "tap-postgres", "target-nats-kv"])
        .current_dir(repo().join("meltano"))
        .env("PATH", path)
        .env("TAP_POSTGRES_HOST", host)
        .env("TAP_POSTGRES_PORT", port)
        .env("TAP_POSTGRES_USER", user)
        // tap-postgres insists on a password; the test server trusts loopback.
        .env("TAP_POSTGRES_PASSWORD", "unused")
        .env("TAP_POSTGRES_DATABASE", database)
        .env("TARGET_NATS_KV_URL", &services().nats_url)
        .env("TARGET_NATS_KV_BUCKET", bucket)
        .env(
            "MELTANO_STATE_BACKEND_URI",
            format!("file://{}", state_dir.join("state").display()),
        )
        .env(
            "MELTANO_DATABASE_URI",
            format!("sqlite:///{}", state_dir.join("meltano.db").display()),
        )
        .env("MELTANO_SEND_ANONYMOUS_USAGE_STATS", "false")
        .env_remove("NATS_URL")
        .output()
        .await
        .expect("run meltano")
}

fn assert_ok(out: &std::process::Output) {
    assert!(
        out.status.success(),
        "meltano failed:\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[tokio::test]
async fn meltano_runs_tap_postgres_into_target_nats_kv_and_resumes() {
    let install = tokio::process::Command::new("bash")
        .arg(repo().join("scripts/meltano.sh"))
        .arg("install")
        .output()
        .await
        .unwrap();
    assert!(
        install.status.success(),
        "scripts/meltano.sh install: {}",
        String::from_utf8_lossy(&install.stderr)
    );

    let db = TestDb::seeded().await;
    let (_c, js) = js().await;
    let (bucket, store) = new_bucket(&js, -1).await;
    let dir = tempfile::tempdir().unwrap();

    assert_ok(&meltano_run(&db, &bucket, dir.path()).await);
    let first = contents(&store).await;
    let expected = tap_records("tap-postgres-full.singer.jsonl");
    assert_eq!(first.len(), expected.len());
    for (key, record) in &expected {
        assert_eq!(&without_sdc(&first[key]), record, "{key}");
    }
    let state_file = dir
        .path()
        .join("state/dev:tap-postgres-to-target-nats-kv/state.json");
    let read_state = || -> Value {
        serde_json::from_str(&std::fs::read_to_string(&state_file).expect("Meltano stored state"))
            .unwrap()
    };
    let tap_first: Value =
        serde_json::from_str(&read_fixture("tap-postgres-incremental.state.json")).unwrap();
    assert_eq!(read_state()["completed"]["singer_state"], tap_first);

    db.exec(&read_fixture("lfx_v1_update.sql")).await;
    assert_ok(&meltano_run(&db, &bucket, dir.path()).await);
    let second = contents(&store).await;
    let changed: Vec<&String> = second
        .keys()
        .filter(|k| first.get(*k) != second.get(*k))
        .collect();
    // 3 projects, 1 committee, 1 membership updated; 2 memberships created.
    assert_eq!(changed.len(), 7, "{changed:?}");
    let tap_resume: Value =
        serde_json::from_str(&read_fixture("tap-postgres-incremental-resume.state.json")).unwrap();
    assert_eq!(read_state()["completed"]["singer_state"], tap_resume);
}
