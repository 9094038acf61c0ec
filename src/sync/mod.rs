//! `lfx-sync sync`: the long-running daemon of SPEC §7.
//!
//! Its inputs are JetStream durable pull consumers ([`consumer`]); replicas
//! share them, so it scales out by running more processes. The WAL ingest
//! ([`wal`]) writes wal-listener's PostgreSQL change feed into `v1-objects`
//! through the guarded writer; when the v2 services are configured, the KV
//! consumer ([`v2`]) pushes the changes of `v1-objects` to them. Messages an
//! input gives up on go to a dead-letter stream ([`dlq`]). [`ops`] serves
//! `/livez`, `/readyz` and `/metrics` ([`metrics`]).
//!
//! Lifecycle: a stop request (SIGTERM/SIGINT) ends pulling, lets the last
//! pull request end, finishes every message taken (within the drain
//! timeout), flushes the acknowledgements and returns `Ok`. A NATS outage is
//! ridden out (the client reconnects, inputs bind again) until it has lasted
//! the `nats_down_timeout`: then [`SyncError::NatsGone`].

pub mod config;
pub mod consumer;
pub mod dlq;
pub mod metrics;
pub mod ops;
pub mod v2;
pub mod wal;

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use async_nats::connection::State;
use async_nats::jetstream::consumer::DeliverPolicy;
use async_nats::jetstream::{self, stream};
use tokio::sync::watch;

pub use config::{SettingsError, SyncOptions, SyncSettings};
use consumer::{BindError, Input, InputSettings};
use dlq::{DeadLetters, DlqError};
use metrics::InputStats;
use v2::client::ClientSetupError;
use wal::{WalHandler, WalParser};

use crate::kv::{Encoding, GuardedWriter, RefreshMode};
use crate::nats::NatsError;

#[derive(Debug, thiserror::Error)]
pub enum SyncError {
    #[error(transparent)]
    Nats(#[from] NatsError),
    #[error("cannot read the status of bucket {bucket}: {reason}")]
    BucketStatus { bucket: String, reason: String },
    #[error(
        "stream `{stream}` does not exist (wal-listener creates it on start; or pass --create-streams)"
    )]
    MissingStream { stream: String },
    #[error("cannot open stream `{stream}`: {reason}")]
    Stream { stream: String, reason: String },
    #[error(transparent)]
    DeadLetters(#[from] DlqError),
    #[error(transparent)]
    Bind(#[from] BindError),
    #[error("cannot listen on {addr}: {source}")]
    Listen {
        addr: std::net::SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("NATS has been unreachable for {0:?}: giving up")]
    NatsGone(Duration),
    #[error("cannot set up the v2 client: {0}")]
    V2Client(#[from] ClientSetupError),
}

/// What `/readyz` and `/metrics` report.
struct Health {
    client: async_nats::Client,
    inputs: Vec<Arc<InputStats>>,
    draining: AtomicBool,
}

impl ops::Probe for Health {
    fn readiness(&self) -> Result<(), String> {
        if self.draining.load(Ordering::Relaxed) {
            return Err("draining".to_string());
        }
        if self.client.connection_state() != State::Connected {
            return Err("NATS is not connected".to_string());
        }
        match self.inputs.iter().find(|s| !s.is_bound()) {
            Some(s) => Err(format!(
                "consumer {} ({} input) is not bound",
                s.consumer, s.input
            )),
            None => Ok(()),
        }
    }

    fn metrics(&self) -> String {
        let inputs: Vec<&InputStats> = self.inputs.iter().map(Arc::as_ref).collect();
        metrics::render(
            &inputs,
            self.client.connection_state() == State::Connected,
            self.readiness().is_ok(),
        )
    }
}

/// Runs the daemon until `shutdown` completes (then drains and returns `Ok`)
/// or NATS stays unreachable for too long.
pub async fn run(
    mut settings: SyncSettings,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<(), SyncError> {
    let client = crate::nats::connect(&settings.nats).await?;
    let js = jetstream::new(client.clone());
    let store = crate::nats::open_bucket(&js, &settings.bucket, settings.create_buckets).await?;
    let objects = store.clone();
    let writer = GuardedWriter::new(store, &client, RefreshMode::Newer, Encoding::Json, false)
        .await
        .map_err(|e| SyncError::BucketStatus {
            bucket: settings.bucket.clone(),
            reason: e.to_string(),
        })?;
    ensure_wal_stream(&js, &settings).await?;
    let dead_letters = Arc::new(DeadLetters::ensure(js.clone(), &settings.dlq_stream).await?);
    let listener = tokio::net::TcpListener::bind(settings.bind)
        .await
        .map_err(|source| SyncError::Listen {
            addr: settings.bind,
            source,
        })?;

    let handler = WalHandler::new(
        WalParser::new(settings.streams.clone(), settings.key_prefix.clone()),
        Arc::new(writer),
    );
    let input = Input::new(
        handler,
        js.clone(),
        InputSettings {
            input: "wal",
            stream: settings.wal_stream.clone(),
            subject: settings.wal_subject.clone(),
            consumer: settings.wal_consumer.clone(),
            // Every change event counts, not just the last one per table.
            deliver_policy: DeliverPolicy::All,
            workers: settings.workers,
            max_in_flight: settings.max_in_flight,
            max_deliver: settings.max_deliver,
            ack_wait: settings.ack_wait,
        },
        Arc::clone(&dead_letters),
    );
    // A consumer that cannot be bound at start is a configuration problem
    // (say, a filter outside the stream's subjects); later, it is an outage.
    let consumer = input.bind().await?;
    let mut inputs = vec![input.stats()];

    let kv_input = match settings.v2.take() {
        None => None,
        Some(v2) => {
            let mappings_bucket = v2.mappings_bucket.clone();
            let kv_consumer = v2.kv_consumer.clone();
            let mappings =
                crate::nats::open_bucket(&js, &mappings_bucket, settings.create_buckets).await?;
            let handler = v2.handler(
                client.clone(),
                objects,
                mappings,
                &settings.bucket,
                &settings.key_prefix,
                settings.known_streams.clone(),
            )?;
            let input = Input::new(
                handler,
                js.clone(),
                InputSettings {
                    input: "kv",
                    stream: format!("KV_{}", settings.bucket),
                    subject: kv_subject(&settings.bucket, &settings.key_prefix),
                    consumer: kv_consumer.clone(),
                    // A new deployment replays the current value of every
                    // key, not its whole history.
                    deliver_policy: DeliverPolicy::LastPerSubject,
                    workers: settings.workers,
                    max_in_flight: settings.max_in_flight,
                    max_deliver: settings.max_deliver,
                    ack_wait: settings.ack_wait,
                },
                Arc::clone(&dead_letters),
            );
            let consumer = input.bind().await?;
            inputs.push(input.stats());
            tracing::info!(
                mappings_bucket = %mappings_bucket,
                consumer = %kv_consumer,
                "v2 push on"
            );
            Some((input, consumer))
        }
    };

    let health = Arc::new(Health {
        client: client.clone(),
        inputs,
        draining: AtomicBool::new(false),
    });
    let ops = tokio::spawn(ops::serve(
        listener,
        Arc::clone(&health) as Arc<dyn ops::Probe>,
    ));
    tracing::info!(
        bucket = %settings.bucket,
        streams_config = %settings.streams_config.display(),
        wal_stream = %settings.wal_stream,
        wal_subject = %settings.wal_subject,
        consumer = %settings.wal_consumer,
        dlq_stream = %settings.dlq_stream,
        bind = %settings.bind,
        workers = settings.workers,
        max_in_flight = settings.max_in_flight,
        v2 = kv_input.is_some(),
        "sync started"
    );

    let (stop_tx, stop_rx) = watch::channel(false);
    let mut running = tokio::task::JoinSet::new();
    running.spawn(input.run(consumer, stop_rx.clone()));
    if let Some((input, consumer)) = kv_input {
        running.spawn(input.run(consumer, stop_rx));
    }
    let outcome = tokio::select! {
        () = shutdown => Ok(()),
        down = nats_gone(&client, settings.nats_down_timeout) => Err(SyncError::NatsGone(down)),
    };
    health.draining.store(true, Ordering::Relaxed);
    let _ = stop_tx.send(true);
    match &outcome {
        Ok(()) => {
            tracing::info!(timeout = ?settings.drain_timeout, "stopping: finishing the messages in flight");
            let started = Instant::now();
            // The inputs drain side by side, within one shared timeout.
            let drained = tokio::time::timeout(settings.drain_timeout, async {
                while running.join_next().await.is_some() {}
            })
            .await;
            if drained.is_err() {
                running.abort_all();
                tracing::warn!(
                    "drain timed out: unacknowledged messages will be redelivered after the ack wait"
                );
            } else {
                tracing::info!(took = ?started.elapsed(), "drained");
            }
        }
        // Nothing in flight can be acknowledged without NATS.
        Err(_) => running.abort_all(),
    }
    if tokio::time::timeout(Duration::from_secs(5), client.flush())
        .await
        .is_err()
    {
        tracing::warn!("acknowledgements could not be flushed: those messages will be redelivered");
    }
    ops.abort();
    outcome
}

/// The KV consumer's filter: the bucket's subjects, narrowed to the key
/// prefix when it is whole tokens (`lfx.`); another prefix cannot be
/// expressed as a filter, and the handler rejects keys outside it.
fn kv_subject(bucket: &str, key_prefix: &str) -> String {
    if key_prefix.ends_with('.') {
        format!("$KV.{bucket}.{key_prefix}>")
    } else {
        format!("$KV.{bucket}.>")
    }
}

/// The WAL stream must exist (wal-listener creates it); with
/// `--create-streams` it is created as wal-listener would.
async fn ensure_wal_stream(
    js: &jetstream::Context,
    settings: &SyncSettings,
) -> Result<(), SyncError> {
    let name = &settings.wal_stream;
    match js.get_stream(name).await {
        Ok(_) => Ok(()),
        Err(e) => {
            let missing = matches!(
                e.kind(),
                jetstream::context::GetStreamErrorKind::JetStream(js_err)
                    if js_err.error_code() == jetstream::ErrorCode::STREAM_NOT_FOUND
            );
            if !missing {
                return Err(SyncError::Stream {
                    stream: name.clone(),
                    reason: e.to_string(),
                });
            }
            if !settings.create_streams {
                return Err(SyncError::MissingStream {
                    stream: name.clone(),
                });
            }
            js.create_stream(stream::Config {
                name: name.clone(),
                subjects: vec![settings.wal_subject.clone()],
                ..Default::default()
            })
            .await
            .map_err(|e| SyncError::Stream {
                stream: name.clone(),
                reason: e.to_string(),
            })?;
            tracing::info!(stream = %name, subject = %settings.wal_subject, "created the WAL stream");
            Ok(())
        }
    }
}

/// Completes once NATS has been unreachable for `limit` without a break.
async fn nats_gone(client: &async_nats::Client, limit: Duration) -> Duration {
    let mut down_since: Option<Instant> = None;
    let mut tick = tokio::time::interval(Duration::from_millis(250));
    loop {
        tick.tick().await;
        if client.connection_state() == State::Connected {
            if down_since.take().is_some() {
                tracing::info!("NATS connection is back");
            }
            continue;
        }
        let since = *down_since.get_or_insert_with(|| {
            tracing::warn!(give_up_after = ?limit, "NATS connection lost, reconnecting");
            Instant::now()
        });
        if since.elapsed() >= limit {
            return since.elapsed();
        }
    }
}

/// Completes at the first SIGTERM or SIGINT.
pub async fn stop_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = term.recv() => tracing::info!("SIGTERM received"),
                    _ = tokio::signal::ctrl_c() => tracing::info!("SIGINT received"),
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, "cannot listen for SIGTERM; only SIGINT stops the daemon");
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}

#[cfg(test)]
mod tests {
    use super::kv_subject;

    #[test]
    fn the_kv_filter_follows_a_whole_token_key_prefix() {
        assert_eq!(kv_subject("v1-objects", ""), "$KV.v1-objects.>");
        assert_eq!(kv_subject("v1-objects", "lfx."), "$KV.v1-objects.lfx.>");
        assert_eq!(kv_subject("v1-objects", "lfx-"), "$KV.v1-objects.>");
    }
}
