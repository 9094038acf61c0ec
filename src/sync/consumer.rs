//! One input of the daemon: a JetStream durable pull consumer with explicit
//! acknowledgement, feeding a fixed set of lanes.
//!
//! - Ordering: a message's key picks its lane (hash of the key), and each
//!   lane applies its messages one after the other, so two events for one key
//!   are applied in the order the consumer delivered them. Lanes run
//!   concurrently.
//! - Bounded work: a message is only pulled with a permit of `max_in_flight`,
//!   held until it is acknowledged; the consumer's `max_ack_pending` is the
//!   same bound on the server.
//! - Retries: a transient failure is negatively acknowledged with a delay
//!   growing with the delivery count; once the count reaches `max_deliver`,
//!   or at once for a message that can never be applied, it goes to the
//!   dead-letter stream and the original is terminated. The consumer's own
//!   `max_deliver` stays unlimited: the server would otherwise stop
//!   redelivering without anyone publishing a dead letter.
//! - A redelivery (a retry, or an acknowledgement that timed out) can bring
//!   an older event of a key after a newer one: the guarded writer's
//!   timestamp comparison and compare-and-set keep the newest version.

use std::collections::hash_map::DefaultHasher;
use std::future::Future;
use std::hash::{Hash, Hasher};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use async_nats::HeaderMap;
use async_nats::jetstream::consumer::{AckPolicy, DeliverPolicy, PullConsumer, pull};
use async_nats::jetstream::{self, AckKind};
use futures::StreamExt;
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc, watch};
use tokio::task::JoinSet;

use super::dlq::DeadLetters;
use super::metrics::InputStats;

/// How an input turns messages into writes.
pub trait Handler: Send + Sync + 'static {
    type Job: Send + 'static;

    /// Parses a message: the work and the key that orders it, or why it can
    /// never be applied. Runs on the pulling task, so it must not block.
    /// `headers` are the message's own (a KV entry's `KV-Operation` is one).
    fn prepare(
        &self,
        subject: &str,
        headers: Option<&HeaderMap>,
        payload: &[u8],
    ) -> Prepared<Self::Job>;

    /// Applies one job; the outcome label on success.
    fn apply(&self, job: Self::Job) -> impl Future<Output = Result<&'static str, Failure>> + Send;
}

pub enum Prepared<J> {
    /// Work applied in order with every other message of the same key.
    Apply { key: String, job: J },
    /// Nothing to write: acknowledged and counted under this outcome.
    Skip(&'static str),
    /// Can never be applied: dead-lettered at once.
    Reject(Rejection),
}

/// Why a message is given up on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rejection {
    /// A short code, the metrics label (`malformed_json`, `unknown_table` …).
    pub reason: &'static str,
    pub detail: String,
}

impl Rejection {
    pub fn new(reason: &'static str, detail: impl Into<String>) -> Self {
        Self {
            reason,
            detail: detail.into(),
        }
    }
}

#[derive(Debug)]
pub enum Failure {
    /// Worth another attempt later (NATS errors, conflicts that did not settle).
    Transient(String),
    /// Another attempt would fail the same way.
    Permanent(Rejection),
}

#[derive(Debug, Clone)]
pub struct InputSettings {
    /// The metrics label, e.g. `wal`.
    pub input: &'static str,
    pub stream: String,
    /// The consumer's filter subject.
    pub subject: String,
    pub consumer: String,
    /// Where a new consumer starts: `All` for an event log (the WAL), where
    /// every event counts; `LastPerSubject` for a KV bucket, whose current
    /// value per key is all there is to sync.
    pub deliver_policy: DeliverPolicy,
    pub workers: usize,
    pub max_in_flight: usize,
    pub max_deliver: u32,
    pub ack_wait: Duration,
}

#[derive(Debug, thiserror::Error)]
pub enum BindError {
    #[error("stream `{stream}` is not available: {reason}")]
    Stream { stream: String, reason: String },
    #[error("cannot create or update consumer `{consumer}` on stream `{stream}`: {reason}")]
    Consumer {
        stream: String,
        consumer: String,
        reason: String,
    },
}

/// A pull request asks for messages for this long at most; it is also the
/// longest a drain waits for the last request to end.
const PULL_EXPIRES: Duration = Duration::from_secs(2);
/// How often the consumer's pending counts are refreshed for the metrics.
const INFO_EVERY: Duration = Duration::from_secs(5);

pub struct Input<H: Handler> {
    handler: Arc<H>,
    js: jetstream::Context,
    settings: InputSettings,
    stats: Arc<InputStats>,
    dead_letters: Arc<DeadLetters>,
    room: Arc<Semaphore>,
    /// Spreads messages without a key over the lanes.
    next_lane: AtomicUsize,
}

impl<H: Handler> Input<H> {
    pub fn new(
        handler: H,
        js: jetstream::Context,
        settings: InputSettings,
        dead_letters: Arc<DeadLetters>,
    ) -> Self {
        let stats = Arc::new(InputStats::new(settings.input, &settings.consumer));
        let room = Arc::new(Semaphore::new(settings.max_in_flight));
        Self {
            handler: Arc::new(handler),
            js,
            settings,
            stats,
            dead_letters,
            room,
            next_lane: AtomicUsize::new(0),
        }
    }

    pub fn stats(&self) -> Arc<InputStats> {
        Arc::clone(&self.stats)
    }

    /// Creates the durable consumer, or brings an existing one to this
    /// configuration.
    pub async fn bind(&self) -> Result<PullConsumer, BindError> {
        let s = &self.settings;
        let stream = self
            .js
            .get_stream(&s.stream)
            .await
            .map_err(|e| BindError::Stream {
                stream: s.stream.clone(),
                reason: e.to_string(),
            })?;
        let consumer = stream
            .create_consumer(pull::Config {
                durable_name: Some(s.consumer.clone()),
                description: Some(format!("lfx-sync sync: {} input", s.input)),
                filter_subject: s.subject.clone(),
                deliver_policy: s.deliver_policy,
                ack_policy: AckPolicy::Explicit,
                ack_wait: s.ack_wait,
                max_deliver: -1,
                max_ack_pending: i64::try_from(s.max_in_flight).unwrap_or(i64::MAX),
                ..Default::default()
            })
            .await
            .map_err(|e| BindError::Consumer {
                stream: s.stream.clone(),
                consumer: s.consumer.clone(),
                reason: e.to_string(),
            })?;
        self.stats.set_bound(true);
        Ok(consumer)
    }

    /// Pulls and applies messages until `stop` turns true, then lets the last
    /// pull request end, finishes every message taken and returns.
    pub async fn run(self, consumer: PullConsumer, mut stop: watch::Receiver<bool>) {
        let shared = Arc::new(Lanes {
            handler: Arc::clone(&self.handler),
            stats: Arc::clone(&self.stats),
            dead_letters: Arc::clone(&self.dead_letters),
            consumer: self.settings.consumer.clone(),
            max_deliver: self.settings.max_deliver,
        });
        let mut workers = JoinSet::new();
        let mut lanes = Vec::with_capacity(self.settings.workers);
        for _ in 0..self.settings.workers.max(1) {
            // Never full: the permits bound what is queued in all lanes together.
            let (tx, rx) = mpsc::channel(self.settings.max_in_flight.max(1));
            lanes.push(tx);
            workers.spawn(lane(Arc::clone(&shared), rx));
        }
        self.pull(consumer, &lanes, &mut stop).await;
        self.stats.set_bound(false);
        drop(lanes);
        while let Some(joined) = workers.join_next().await {
            if let Err(e) = joined
                && e.is_panic()
            {
                // Its messages were not acknowledged: they come back after the ack wait.
                tracing::error!(input = self.settings.input, "a lane panicked: {e}");
            }
        }
    }

    async fn pull(
        &self,
        consumer: PullConsumer,
        lanes: &[mpsc::Sender<Work<H::Job>>],
        stop: &mut watch::Receiver<bool>,
    ) {
        let input = self.settings.input;
        let mut consumer = Some(consumer);
        let mut failures: u32 = 0;
        let mut info_at = Instant::now();
        loop {
            if *stop.borrow() {
                return;
            }
            let Some(current) = consumer.as_mut() else {
                match self.bind().await {
                    Ok(c) => {
                        tracing::info!(input, consumer = %self.settings.consumer, "consumer bound again");
                        consumer = Some(c);
                        failures = 0;
                    }
                    Err(e) => {
                        failures += 1;
                        tracing::warn!(input, error = %e, "cannot bind the consumer, retrying");
                        if sleep_unless_stopped(rebind_delay(failures), stop).await {
                            return;
                        }
                    }
                }
                continue;
            };
            if info_at.elapsed() >= INFO_EVERY {
                info_at = Instant::now();
                self.refresh_pending(current).await;
            }
            let Some(permits) = self.room_for_a_batch(stop).await else {
                return;
            };
            let batch = current
                .batch()
                .max_messages(permits.num_permits())
                .expires(PULL_EXPIRES)
                .messages()
                .await;
            let result = match batch {
                Ok(batch) => self.take(batch, permits, lanes, stop).await,
                Err(e) => Err(e.to_string()),
            };
            match result {
                Ok(stopping) => {
                    failures = 0;
                    self.stats.set_bound(true);
                    if stopping {
                        return;
                    }
                }
                Err(error) => {
                    // The consumer may be gone (deleted, stream re-created):
                    // bind again after a pause, which also rides out outages.
                    failures += 1;
                    self.stats.set_bound(false);
                    consumer = None;
                    tracing::warn!(input, error, "pulling messages failed, binding again");
                    if sleep_unless_stopped(rebind_delay(failures), stop).await {
                        return;
                    }
                }
            }
        }
    }

    /// Waits until a quarter of the in-flight room is free (so pulls are not
    /// one message at a time under load), then takes all that is free.
    async fn room_for_a_batch(
        &self,
        stop: &mut watch::Receiver<bool>,
    ) -> Option<OwnedSemaphorePermit> {
        let least = (self.settings.max_in_flight / 4).max(1);
        let least = u32::try_from(least).unwrap_or(u32::MAX);
        let mut permits = tokio::select! {
            biased;
            _ = stop.wait_for(|s| *s) => return None,
            permits = Arc::clone(&self.room).acquire_many_owned(least) => permits.ok()?,
        };
        let more = u32::try_from(self.room.available_permits()).unwrap_or(u32::MAX);
        if more > 0
            && let Ok(extra) = Arc::clone(&self.room).try_acquire_many_owned(more)
        {
            permits.merge(extra);
        }
        Some(permits)
    }

    /// Dispatches every message of one pull request. `Ok(true)` when a stop
    /// was seen: the request was still read to its end, so nothing delivered
    /// to this process is left behind.
    async fn take(
        &self,
        mut batch: pull::Batch,
        mut permits: OwnedSemaphorePermit,
        lanes: &[mpsc::Sender<Work<H::Job>>],
        stop: &mut watch::Receiver<bool>,
    ) -> Result<bool, String> {
        let mut stopping = *stop.borrow();
        loop {
            let next = if stopping {
                batch.next().await
            } else {
                tokio::select! {
                    biased;
                    _ = stop.wait_for(|s| *s) => {
                        stopping = true;
                        continue;
                    }
                    next = batch.next() => next,
                }
            };
            let message = match next {
                None => return Ok(stopping),
                Some(Err(e)) => return Err(e.to_string()),
                Some(Ok(message)) => message,
            };
            let permit = match permits.split(1) {
                Some(permit) => permit,
                // More messages than asked for: wait for room like any other.
                None => match Arc::clone(&self.room).acquire_owned().await {
                    Ok(permit) => permit,
                    Err(_) => {
                        nak(&message, None).await;
                        continue;
                    }
                },
            };
            self.dispatch(message, permit, lanes).await;
        }
    }

    async fn dispatch(
        &self,
        message: jetstream::Message,
        permit: OwnedSemaphorePermit,
        lanes: &[mpsc::Sender<Work<H::Job>>],
    ) {
        let received = Instant::now();
        let (published_nanos, delivered) = match message.info() {
            Ok(info) => {
                self.stats.set_pending(info.pending);
                (Some(info.published.unix_timestamp_nanos()), info.delivered)
            }
            Err(_) => (None, 1),
        };
        let prepared = self.handler.prepare(
            message.subject.as_str(),
            message.headers.as_ref(),
            &message.payload,
        );
        let (lane, task) = match prepared {
            Prepared::Apply { key, job } => (lane_of(&key, lanes.len()), Task::Apply(job)),
            Prepared::Skip(outcome) => (self.any_lane(lanes.len()), Task::Skip(outcome)),
            Prepared::Reject(rejection) => (self.any_lane(lanes.len()), Task::Reject(rejection)),
        };
        self.stats.entered();
        let work = Work {
            message,
            received,
            published_nanos,
            delivered,
            permit,
            task,
        };
        if let Err(mpsc::error::SendError(work)) = lanes[lane].send(work).await {
            // Only after a lane panicked: hand the message to someone else.
            self.stats.left();
            nak(&work.message, None).await;
        }
    }

    fn any_lane(&self, lanes: usize) -> usize {
        self.next_lane.fetch_add(1, Ordering::Relaxed) % lanes
    }

    async fn refresh_pending(&self, consumer: &mut PullConsumer) {
        match tokio::time::timeout(Duration::from_secs(2), consumer.info()).await {
            Ok(Ok(info)) => {
                self.stats.set_pending(info.num_pending);
                self.stats.set_ack_pending(info.num_ack_pending as u64);
            }
            Ok(Err(e)) => tracing::debug!(error = %e, "consumer info failed"),
            Err(_) => tracing::debug!("consumer info timed out"),
        }
    }
}

fn lane_of(key: &str, lanes: usize) -> usize {
    let mut hasher = DefaultHasher::new();
    key.hash(&mut hasher);
    (hasher.finish() % lanes as u64) as usize
}

/// Sleeps unless a stop comes first; `true` when stopped.
async fn sleep_unless_stopped(delay: Duration, stop: &mut watch::Receiver<bool>) -> bool {
    let stopped = tokio::select! {
        _ = stop.wait_for(|s| *s) => true,
        _ = tokio::time::sleep(delay) => false,
    };
    stopped || *stop.borrow()
}

/// Pauses between attempts to bind: short, so an input is back soon after
/// an outage ends.
fn rebind_delay(failures: u32) -> Duration {
    Duration::from_millis(250u64 << failures.min(4)).min(Duration::from_secs(4))
}

/// The delay before the next attempt, after `attempts` deliveries or failures:
/// 1 s, 2 s, 4 s … up to a minute.
pub fn retry_delay(attempts: i64) -> Duration {
    let exponent = attempts.clamp(1, 7) - 1;
    Duration::from_secs((1u64 << exponent).min(60))
}

struct Work<J> {
    message: jetstream::Message,
    received: Instant,
    /// When the event reached the stream (its JetStream timestamp).
    published_nanos: Option<i128>,
    /// Deliveries of this message so far, this one included.
    delivered: i64,
    /// Released when the message is acknowledged one way or another.
    permit: OwnedSemaphorePermit,
    task: Task<J>,
}

enum Task<J> {
    Apply(J),
    Skip(&'static str),
    Reject(Rejection),
}

/// What happens to a message once handled.
#[derive(Debug, PartialEq)]
enum Disposition {
    Ack(&'static str),
    Retry { delay: Duration, error: String },
    DeadLetter(Rejection),
}

fn after_failure(failure: Failure, delivered: i64, max_deliver: u32) -> Disposition {
    match failure {
        Failure::Permanent(rejection) => Disposition::DeadLetter(rejection),
        Failure::Transient(error) if delivered >= i64::from(max_deliver) => {
            Disposition::DeadLetter(Rejection::new(
                "max_deliveries",
                format!("gave up after {delivered} attempts: {error}"),
            ))
        }
        Failure::Transient(error) => Disposition::Retry {
            delay: retry_delay(delivered),
            error,
        },
    }
}

/// What every lane shares.
struct Lanes<H> {
    handler: Arc<H>,
    stats: Arc<InputStats>,
    dead_letters: Arc<DeadLetters>,
    consumer: String,
    max_deliver: u32,
}

async fn lane<H: Handler>(shared: Arc<Lanes<H>>, mut rx: mpsc::Receiver<Work<H::Job>>) {
    while let Some(work) = rx.recv().await {
        shared.finish(work).await;
    }
}

impl<H: Handler> Lanes<H> {
    async fn finish(&self, work: Work<H::Job>) {
        let Work {
            message,
            received,
            published_nanos,
            delivered,
            permit,
            task,
        } = work;
        let disposition = match task {
            Task::Skip(outcome) => Disposition::Ack(outcome),
            Task::Reject(rejection) => Disposition::DeadLetter(rejection),
            Task::Apply(job) => match self.handler.apply(job).await {
                Ok(outcome) => Disposition::Ack(outcome),
                Err(failure) => after_failure(failure, delivered, self.max_deliver),
            },
        };
        let subject = message.subject.as_str();
        let settled = match disposition {
            Disposition::Ack(outcome) => {
                ack(&message, AckKind::Ack).await;
                self.stats.count(outcome);
                true
            }
            Disposition::Retry { delay, error } => {
                tracing::warn!(subject, delivered, retry_in = ?delay, error, "failed, will retry");
                nak(&message, Some(delay)).await;
                self.stats.count("retried");
                false
            }
            Disposition::DeadLetter(rejection) => {
                match self
                    .dead_letters
                    .publish(&message, &self.consumer, delivered, &rejection)
                    .await
                {
                    Ok(()) => {
                        tracing::warn!(
                            subject,
                            delivered,
                            reason = rejection.reason,
                            detail = %rejection.detail,
                            "dead-lettered"
                        );
                        ack(&message, AckKind::Term).await;
                        self.stats.dead_lettered(rejection.reason);
                        true
                    }
                    Err(e) => {
                        // Never acknowledge what is not stored somewhere.
                        tracing::error!(
                            subject,
                            reason = rejection.reason,
                            error = %e,
                            "cannot publish to the dead-letter stream, will retry"
                        );
                        nak(&message, Some(retry_delay(delivered))).await;
                        self.stats.count("retried");
                        false
                    }
                }
            }
        };
        self.stats.processing.observe(received.elapsed());
        if settled && let Some(published) = published_nanos {
            let now = chrono::Utc::now()
                .timestamp_nanos_opt()
                .map(i128::from)
                .unwrap_or(published);
            let nanos = u64::try_from(now - published).unwrap_or(0);
            self.stats.latency.observe(Duration::from_nanos(nanos));
        }
        self.stats.left();
        drop(permit);
    }
}

async fn ack(message: &jetstream::Message, kind: AckKind) {
    if let Err(e) = message.ack_with(kind).await {
        // Not acknowledged: the server delivers it again after the ack wait,
        // and the guard makes the repeat harmless.
        tracing::warn!(subject = message.subject.as_str(), error = %e, "acknowledgement failed");
    }
}

async fn nak(message: &jetstream::Message, delay: Option<Duration>) {
    ack(message, AckKind::Nak(delay)).await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retries_back_off_then_dead_letter() {
        assert_eq!(retry_delay(1), Duration::from_secs(1));
        assert_eq!(retry_delay(2), Duration::from_secs(2));
        assert_eq!(retry_delay(4), Duration::from_secs(8));
        assert_eq!(retry_delay(7), Duration::from_secs(60));
        assert_eq!(retry_delay(1000), Duration::from_secs(60));
        assert_eq!(retry_delay(0), Duration::from_secs(1));

        assert_eq!(
            after_failure(Failure::Transient("timed out".into()), 2, 5),
            Disposition::Retry {
                delay: Duration::from_secs(2),
                error: "timed out".into()
            }
        );
        assert_eq!(
            after_failure(Failure::Transient("timed out".into()), 5, 5),
            Disposition::DeadLetter(Rejection::new(
                "max_deliveries",
                "gave up after 5 attempts: timed out"
            ))
        );
        let permanent = Rejection::new("too_large", "value of 2 MB");
        assert_eq!(
            after_failure(Failure::Permanent(permanent.clone()), 1, 5),
            Disposition::DeadLetter(permanent)
        );
    }

    #[test]
    fn a_key_always_takes_the_same_lane() {
        let lanes = 64;
        let first = lane_of("salesforce-project__c.a0P5G0000000000001", lanes);
        for _ in 0..10 {
            assert_eq!(
                lane_of("salesforce-project__c.a0P5G0000000000001", lanes),
                first
            );
        }
        let used: std::collections::HashSet<usize> = (0..1000)
            .map(|i| lane_of(&format!("s.{i}"), lanes))
            .collect();
        assert!(
            used.len() > lanes / 2,
            "keys spread over {} lanes",
            used.len()
        );
    }
}
