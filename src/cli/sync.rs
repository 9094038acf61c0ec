//! `lfx-sync sync`: the daemon.

use std::path::PathBuf;

use clap::Args;

use crate::sync::v2::config::V2Args;
use crate::sync::{self, SyncOptions};

#[derive(Debug, Args)]
pub struct SyncArgs {
    /// NATS URL (overrides the streams config's).
    #[arg(long, env = "NATS_URL", hide_env_values = true)]
    nats_url: Option<String>,
    /// KV bucket to write (default: the streams config's, else v1-objects).
    #[arg(long, env = "LFX_SYNC_BUCKET")]
    bucket: Option<String>,
    /// Create the bucket when it does not exist.
    #[arg(long)]
    create_buckets: bool,
    /// Create the WAL stream when it does not exist (wal-listener normally does).
    #[arg(long)]
    create_streams: bool,
    /// Address of /livez, /readyz and /metrics: HOST:PORT or :PORT.
    #[arg(long, env = "LFX_SYNC_BIND", default_value = ":8080")]
    bind: String,
    /// Tables of the WAL: replication key and key columns per `<schema>-<table>`.
    #[arg(
        long,
        env = "LFX_SYNC_STREAMS_CONFIG",
        default_value = "tap-configs/lfx-v1-postgres.toml"
    )]
    streams_config: PathBuf,
    /// JetStream stream wal-listener publishes to.
    #[arg(long, env = "LFX_SYNC_WAL_STREAM", default_value = "wal_listener")]
    wal_stream: String,
    /// Subjects of the WAL consumer (default: `<wal-stream>.*`).
    #[arg(long, env = "LFX_SYNC_WAL_SUBJECT")]
    wal_subject: Option<String>,
    /// Durable consumer of the WAL stream, shared by every replica.
    #[arg(long, env = "LFX_SYNC_WAL_CONSUMER", default_value = "lfx-sync-wal")]
    wal_consumer: String,
    /// Dead-letter stream (created when missing; subjects `<name>.>`).
    #[arg(long, env = "LFX_SYNC_DLQ_STREAM", default_value = "lfx-sync-dlq")]
    dlq_stream: String,
    /// Lanes applying messages concurrently; one key always takes the same lane.
    #[arg(long, env = "LFX_SYNC_WORKERS", default_value_t = 64)]
    workers: u64,
    /// Messages held at once (pulled, queued or being applied).
    #[arg(long, env = "LFX_SYNC_MAX_IN_FLIGHT", default_value_t = 1024)]
    max_in_flight: u64,
    /// Deliveries of a failing message before it is dead-lettered.
    #[arg(long, env = "LFX_SYNC_MAX_DELIVER", default_value_t = 5)]
    max_deliver: u64,
    /// How long the server waits for an acknowledgement before redelivering.
    #[arg(long, env = "LFX_SYNC_ACK_WAIT", default_value = "60s")]
    ack_wait: String,
    /// On SIGTERM/SIGINT, how long to finish the messages in flight.
    #[arg(long, env = "LFX_SYNC_DRAIN_TIMEOUT", default_value = "25s")]
    drain_timeout: String,
    /// Exit (code 2) once NATS has been unreachable this long.
    #[arg(long, env = "LFX_SYNC_NATS_DOWN_TIMEOUT", default_value = "5m")]
    nats_down_timeout: String,
    /// The v2 push: on when the service URLs are set. Boxed: its many
    /// settings would make every command's arguments this large.
    #[command(flatten)]
    v2: Box<V2Args>,
}

pub async fn run(args: SyncArgs) -> anyhow::Result<u8> {
    let settings = SyncOptions {
        nats_url: args.nats_url,
        bucket: args.bucket,
        create_buckets: args.create_buckets,
        create_streams: args.create_streams,
        bind: args.bind,
        streams_config: args.streams_config,
        wal_stream: args.wal_stream,
        wal_subject: args.wal_subject,
        wal_consumer: args.wal_consumer,
        dlq_stream: args.dlq_stream,
        workers: args.workers,
        max_in_flight: args.max_in_flight,
        max_deliver: args.max_deliver,
        ack_wait: args.ack_wait,
        drain_timeout: args.drain_timeout,
        nats_down_timeout: args.nats_down_timeout,
        v2: *args.v2,
    }
    .validate()?;
    let (first_tx, first_rx) = tokio::sync::oneshot::channel();
    tokio::spawn(async move {
        sync::stop_signal().await;
        let _ = first_tx.send(());
        // A second signal means the operator does not want to wait for the drain.
        sync::stop_signal().await;
        tracing::warn!("second signal: exiting without finishing the messages in flight");
        std::process::exit(1);
    });
    sync::run(settings, async {
        let _ = first_rx.await;
    })
    .await?;
    Ok(0)
}
