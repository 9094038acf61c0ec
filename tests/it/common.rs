//! Shared helpers: services, per-test databases and buckets, fixtures, the CLI.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Output;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU32, Ordering};

use async_nats::jetstream::{self, kv};
use futures::{StreamExt, TryStreamExt};
use serde_json::{Map, Value};
use sqlx::{Connection, PgConnection};

pub struct Services {
    /// Admin connection URL (database `postgres`).
    pub database_url: String,
    pub nats_url: String,
}

/// The services the tests use: LFX_TEST_DATABASE_URL / LFX_TEST_NATS_URL, or
/// the ones `scripts/services.sh up` starts (never the user's DATABASE_URL).
pub fn services() -> &'static Services {
    static SERVICES: OnceLock<Services> = OnceLock::new();
    SERVICES.get_or_init(|| {
        if let (Ok(database_url), Ok(nats_url)) = (
            std::env::var("LFX_TEST_DATABASE_URL"),
            std::env::var("LFX_TEST_NATS_URL"),
        ) {
            return Services {
                database_url,
                nats_url,
            };
        }
        let out = std::process::Command::new("bash")
            .arg(repo().join("scripts/services.sh"))
            .arg("up")
            .output()
            .expect("run scripts/services.sh up");
        assert!(
            out.status.success(),
            "scripts/services.sh up failed:\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let stdout = String::from_utf8_lossy(&out.stdout);
        let env_file = stdout
            .lines()
            .last()
            .expect("env file path")
            .trim()
            .to_string();
        let text = std::fs::read_to_string(&env_file).expect("read services env file");
        let get = |name: &str| {
            text.lines()
                .filter_map(|l| l.trim().strip_prefix("export ").or(Some(l.trim())))
                .find_map(|l| l.strip_prefix(&format!("{name}=")))
                .map(|v| v.trim_matches(['"', '\'']).to_string())
                .unwrap_or_else(|| panic!("{name} missing from {env_file}"))
        };
        Services {
            database_url: get("DATABASE_URL"),
            nats_url: get("NATS_URL"),
        }
    })
}

pub fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

pub fn fixture(rel: &str) -> PathBuf {
    repo().join("tests/fixtures/singer").join(rel)
}

/// A name no other test or run uses: lowercase letters, digits and `_`.
pub fn unique(prefix: &str) -> String {
    static COUNTER: AtomicU32 = AtomicU32::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    format!(
        "{prefix}_{}_{}_{nanos}",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed)
    )
}

pub struct TestDb {
    pub url: String,
}

impl TestDb {
    /// A fresh database loaded with the given SQL scripts.
    pub async fn create(scripts: &[&str]) -> TestDb {
        let name = unique("lfx_test");
        let admin = &services().database_url;
        let mut conn = PgConnection::connect(admin)
            .await
            .expect("connect admin db");
        sqlx::raw_sql(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
            .execute(&mut conn)
            .await
            .expect("create database");
        let base = admin
            .rsplit_once('/')
            .map(|(b, _)| b)
            .expect("database url has a path");
        let db = TestDb {
            url: format!("{base}/{name}"),
        };
        for script in scripts {
            db.exec(script).await;
        }
        db
    }

    pub async fn seeded() -> TestDb {
        Self::create(&[&read_fixture("lfx_v1_seed.sql")]).await
    }

    pub async fn exec(&self, sql: &str) {
        let mut conn = PgConnection::connect(&self.url)
            .await
            .expect("connect test db");
        sqlx::raw_sql(sqlx::AssertSqlSafe(sql.to_string()))
            .execute(&mut conn)
            .await
            .expect("run SQL");
    }
}

pub fn read_fixture(rel: &str) -> String {
    std::fs::read_to_string(fixture(rel)).expect("read fixture")
}

/// SQL for a `bench.project__c` table of `rows` rows shaped like the fixture's
/// benchmark data (needs the seed's `platform.project__c`).
pub fn bench_table_sql(rows: u32) -> String {
    read_fixture("lfx_v1_bench_200k.sql").replace(
        "generate_series(1, 200000)",
        &format!("generate_series(1, {rows})"),
    )
}

pub async fn js() -> (async_nats::Client, jetstream::Context) {
    let client = async_nats::connect(&services().nats_url)
        .await
        .expect("connect NATS");
    let js = jetstream::new(client.clone());
    (client, js)
}

/// A WAL stream as wal-listener creates it (`<name>.*`), under a unique name.
pub async fn new_wal_stream(js: &jetstream::Context) -> String {
    let wal = unique("wal");
    js.create_stream(jetstream::stream::Config {
        name: wal.clone(),
        subjects: vec![format!("{wal}.*")],
        ..Default::default()
    })
    .await
    .expect("create WAL stream");
    wal
}

pub async fn new_bucket(js: &jetstream::Context, max_value_size: i32) -> (String, kv::Store) {
    let name = unique("t");
    let store = js
        .create_key_value(kv::Config {
            bucket: name.clone(),
            history: 5,
            max_value_size,
            ..Default::default()
        })
        .await
        .expect("create bucket");
    (name, store)
}

/// Every live key of a bucket with its decoded value.
pub async fn contents(store: &kv::Store) -> BTreeMap<String, Map<String, Value>> {
    let keys: Vec<String> = store
        .keys()
        .await
        .expect("list keys")
        .try_collect()
        .await
        .expect("keys");
    futures::stream::iter(keys)
        .map(|key| async move {
            let value = store.get(&key).await.expect("get");
            (key, value)
        })
        .buffer_unordered(256)
        .filter_map(|(key, value)| async move {
            value.map(|v| {
                (
                    key,
                    lfx_sync::kv::writer::decode(&v).expect("decodable value"),
                )
            })
        })
        .collect()
        .await
}

pub fn without_sdc(map: &Map<String, Value>) -> Map<String, Value> {
    map.iter()
        .filter(|(k, _)| !k.starts_with("_sdc_"))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect()
}

/// RECORDs of a Singer fixture by stream, with their key as lfx-sync builds it.
pub fn tap_records(rel: &str) -> BTreeMap<String, Map<String, Value>> {
    let mut keys: BTreeMap<String, Vec<String>> = BTreeMap::new();
    let mut out = BTreeMap::new();
    for line in read_fixture(rel).lines() {
        let msg: Value = serde_json::from_str(line).expect("fixture line is JSON");
        let stream = msg["stream"].as_str().unwrap_or_default().to_string();
        match msg["type"].as_str() {
            Some("SCHEMA") => {
                let props = msg["key_properties"]
                    .as_array()
                    .expect("key_properties")
                    .iter()
                    .map(|v| v.as_str().unwrap_or_default().to_string())
                    .collect();
                keys.insert(stream, props);
            }
            Some("RECORD") => {
                let record = msg["record"].as_object().expect("record").clone();
                out.insert(singer_key(&stream, &keys[&stream], &record), record);
            }
            _ => {}
        }
    }
    out
}

/// The key lfx-sync gives a Singer record, built independently of its code.
pub fn singer_key(stream: &str, key_properties: &[String], record: &Map<String, Value>) -> String {
    let id: Vec<String> = key_properties
        .iter()
        .map(|p| match &record[p] {
            Value::String(s) => s.replace(':', "_"),
            v => v.to_string(),
        })
        .collect();
    format!("{stream}.{}", id.join("-"))
}

/// Runs the CLI binary; `NATS_URL`/`DATABASE_URL` are cleared so only the
/// given arguments count.
pub async fn lfx_sync(args: &[&str]) -> Output {
    tokio::process::Command::new(env!("CARGO_BIN_EXE_lfx-sync"))
        .args(args)
        .env_remove("DATABASE_URL")
        .env_remove("NATS_URL")
        .env("NO_COLOR", "1")
        .output()
        .await
        .expect("run lfx-sync")
}

/// Arguments for a backfill of `config` from `db` into `bucket`, state in `state_dir`.
pub fn backfill_args(config: &Path, db: &TestDb, bucket: &str, state_dir: &Path) -> Vec<String> {
    vec![
        "backfill".into(),
        "--config".into(),
        config.display().to_string(),
        "--database-url".into(),
        db.url.clone(),
        "--nats-url".into(),
        services().nats_url.clone(),
        "--bucket".into(),
        bucket.into(),
        "--state".into(),
        format!("file://{}", state_dir.display()),
        "--quiet".into(),
        "--report".into(),
        "json".into(),
    ]
}

pub async fn run(args: &[String]) -> Output {
    let refs: Vec<&str> = args.iter().map(String::as_str).collect();
    lfx_sync(&refs).await
}

/// The JSON report a `--report json` run printed.
pub fn report(out: &Output) -> Value {
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "no JSON report ({e}); exit {:?}\nstdout: {}\nstderr: {}",
            out.status.code(),
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    })
}

pub fn demo_config() -> PathBuf {
    repo().join("tap-configs/demo.toml")
}

pub fn write_config(dir: &Path, streams: &str) -> PathBuf {
    let path = dir.join(format!("{}.toml", unique("config")));
    std::fs::write(&path, format!("state_id = \"test\"\n[postgres]\n{streams}"))
        .expect("write config");
    path
}

pub fn stored_state(state_dir: &Path, state_id: &str) -> Option<Value> {
    let text = std::fs::read_to_string(state_dir.join(state_id).join("state.json")).ok()?;
    serde_json::from_str(&text).ok()
}

// ---------------------------------------------------------------- AWS (moto) ---

/// The S3/DynamoDB endpoint: LFX_TEST_AWS_ENDPOINT_URL, or the moto that
/// `scripts/services.sh up` starts.
pub fn aws_endpoint() -> &'static str {
    static ENDPOINT: OnceLock<String> = OnceLock::new();
    ENDPOINT.get_or_init(|| {
        if let Ok(url) = std::env::var("LFX_TEST_AWS_ENDPOINT_URL") {
            return url;
        }
        services();
        let out = std::process::Command::new("bash")
            .arg(repo().join("scripts/services.sh"))
            .arg("env")
            .output()
            .expect("run scripts/services.sh env");
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .find_map(|l| l.trim().strip_prefix("export AWS_ENDPOINT_URL="))
            .map(|v| v.trim_matches(['"', '\'']).to_string())
            .expect("AWS_ENDPOINT_URL in the services env file")
    })
}

/// SDK configuration for moto at `endpoint`, independent of this process's
/// environment (dummy credentials, a region, no instance metadata).
pub async fn aws_config(endpoint: &str) -> aws_config::SdkConfig {
    use aws_smithy_http_client::tls::{self, rustls_provider::CryptoMode};
    aws_config::defaults(aws_config::BehaviorVersion::latest())
        .region(aws_config::Region::new("us-east-1"))
        .endpoint_url(endpoint)
        .credentials_provider(aws_sdk_s3::config::Credentials::new(
            "testing", "testing", None, None, "tests",
        ))
        .http_client(
            aws_smithy_http_client::Builder::new()
                .tls_provider(tls::Provider::Rustls(CryptoMode::Ring))
                .build_https(),
        )
        .load()
        .await
}

pub async fn s3_client() -> aws_sdk_s3::Client {
    let config = aws_config(aws_endpoint()).await;
    aws_sdk_s3::Client::from_conf(
        aws_sdk_s3::config::Builder::from(&config)
            .force_path_style(true)
            .build(),
    )
}

pub async fn dynamodb_client() -> aws_sdk_dynamodb::Client {
    aws_sdk_dynamodb::Client::new(&aws_config(aws_endpoint()).await)
}

/// A new S3 bucket (names allow lowercase letters, digits and dashes only).
pub async fn new_s3_bucket(s3: &aws_sdk_s3::Client) -> String {
    let name = unique("lfx").replace('_', "-");
    s3.create_bucket()
        .bucket(&name)
        .send()
        .await
        .expect("create S3 bucket");
    name
}

/// The object's text, or `None` when it does not exist.
pub async fn s3_text(s3: &aws_sdk_s3::Client, bucket: &str, key: &str) -> Option<String> {
    let out = s3.get_object().bucket(bucket).key(key).send().await.ok()?;
    let bytes = out.body.collect().await.expect("read object").into_bytes();
    Some(String::from_utf8(bytes.to_vec()).expect("UTF-8 object"))
}

pub async fn s3_put(s3: &aws_sdk_s3::Client, bucket: &str, key: &str, text: &str) {
    s3.put_object()
        .bucket(bucket)
        .key(key)
        .body(text.as_bytes().to_vec().into())
        .send()
        .await
        .expect("put object");
}

/// Runs the CLI with the AWS settings of the tests (moto) plus `env`;
/// `NATS_URL`/`DATABASE_URL` are cleared so only the given arguments count.
pub fn lfx_sync_aws(args: &[String], env: &[(&str, &str)]) -> tokio::process::Command {
    let mut cmd = tokio::process::Command::new(env!("CARGO_BIN_EXE_lfx-sync"));
    cmd.args(args)
        .env_remove("DATABASE_URL")
        .env_remove("NATS_URL")
        .env_remove("AWS_PROFILE")
        .env("NO_COLOR", "1")
        .env("AWS_ENDPOINT_URL", aws_endpoint())
        .env("AWS_REGION", "us-east-1")
        .env("AWS_ACCESS_KEY_ID", "testing")
        .env("AWS_SECRET_ACCESS_KEY", "testing")
        .env("AWS_EC2_METADATA_DISABLED", "true");
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd
}

pub async fn run_aws(args: &[String], env: &[(&str, &str)]) -> Output {
    lfx_sync_aws(args, env)
        .output()
        .await
        .expect("run lfx-sync")
}

/// A TCP relay on loopback to `target` that a test can cut, making the
/// service behind it unreachable in the middle of a run. Each chunk of the
/// answers is held back by `delay`, to make a run last long enough.
pub struct CuttableProxy {
    pub url: String,
    task: tokio::task::JoinHandle<()>,
}

impl CuttableProxy {
    pub async fn start(target: &str, delay: std::time::Duration) -> CuttableProxy {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let target = target
            .trim_start_matches("http://")
            .trim_end_matches('/')
            .to_string();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind proxy");
        let url = format!("http://{}", listener.local_addr().expect("proxy address"));
        let task = tokio::spawn(async move {
            // Dropped with the task: every relayed connection ends with it.
            let mut connections = tokio::task::JoinSet::new();
            while let Ok((inbound, _)) = listener.accept().await {
                let target = target.clone();
                connections.spawn(async move {
                    let Ok(outbound) = tokio::net::TcpStream::connect(&target).await else {
                        return;
                    };
                    let (mut client_rx, mut client_tx) = inbound.into_split();
                    let (mut server_rx, mut server_tx) = outbound.into_split();
                    let up = tokio::io::copy(&mut client_rx, &mut server_tx);
                    let down = async {
                        let mut buf = vec![0u8; 64 * 1024];
                        loop {
                            let n = server_rx.read(&mut buf).await?;
                            if n == 0 {
                                return client_tx.shutdown().await;
                            }
                            tokio::time::sleep(delay).await;
                            client_tx.write_all(&buf[..n]).await?;
                        }
                    };
                    // Either side closing ends the relay, as a socket would.
                    tokio::select! {
                        _ = up => {}
                        _ = down => {}
                    }
                });
            }
        });
        CuttableProxy { url, task }
    }

    /// Closes the listener and every relayed connection: from now on,
    /// connections are refused.
    pub fn cut(&self) {
        self.task.abort();
    }
}

impl Drop for CuttableProxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

pub fn expect_exit(out: &Output, code: i32) {
    assert_eq!(
        out.status.code(),
        Some(code),
        "stdout: {}\nstderr: {}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A nats-server of a test's own, which it can stop and start again on the
/// same port and store (outage and restart tests).
pub struct OwnNats {
    bin: PathBuf,
    port: u16,
    store: tempfile::TempDir,
    child: Option<std::process::Child>,
}

impl OwnNats {
    pub fn start() -> OwnNats {
        let bin = std::env::var("LFX_NATS_SERVER_BIN")
            .map(PathBuf::from)
            .unwrap_or_else(|_| repo().join(".tools/nats/bin/nats-server"));
        assert!(
            bin.exists(),
            "nats-server not found at {} (run scripts/services.sh up)",
            bin.display()
        );
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map(|a| a.port())
            .expect("free port");
        let mut nats = OwnNats {
            bin,
            port,
            store: tempfile::tempdir().expect("nats store dir"),
            child: None,
        };
        nats.spawn();
        nats
    }

    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    /// Starts the server (again) and waits until it accepts connections.
    pub fn spawn(&mut self) {
        let child = std::process::Command::new(&self.bin)
            .args([
                "-a",
                "127.0.0.1",
                "-p",
                &self.port.to_string(),
                "-js",
                "-sd",
            ])
            .arg(self.store.path())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("start {}: {e}", self.bin.display()));
        self.child = Some(child);
        for _ in 0..250 {
            if std::net::TcpStream::connect(("127.0.0.1", self.port)).is_ok() {
                return;
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        panic!("own nats-server did not start");
    }

    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for OwnNats {
    fn drop(&mut self) {
        self.stop();
    }
}
