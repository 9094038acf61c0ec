//! `lfx-sync backfill`: copies source streams into `v1-objects` through the
//! guarded writer, with bookmarks checkpointed as records are confirmed.

pub mod progress;
pub mod report;

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::kv::key::{self, InvalidKey};
use crate::kv::{Completion, Counters, GuardedWriter, WriteQueue, WriteRequest};
use crate::source::{Source, SourceError, StreamSpec};
use crate::state::{SingerState, StateBackend, StateDocument, StateError};

pub use progress::Progress;
pub use report::{RunReport, StreamReport};

#[derive(Debug, Clone)]
pub struct BackfillSettings {
    /// Read everything, ignoring stored bookmarks (a fresh one is written).
    pub full: bool,
    /// Decide but write nothing: neither records nor state.
    pub dry_run: bool,
    pub key_prefix: String,
    /// Guarded writes in flight at once.
    pub in_flight: usize,
    /// Checkpoint the bookmark at least every this many records…
    pub checkpoint_records: u64,
    /// …or this often.
    pub checkpoint_interval: Duration,
}

impl Default for BackfillSettings {
    fn default() -> Self {
        Self {
            full: false,
            dry_run: false,
            key_prefix: String::new(),
            in_flight: 1024,
            checkpoint_records: 10_000,
            checkpoint_interval: Duration::from_secs(5),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum BackfillError {
    #[error(transparent)]
    Source(#[from] SourceError),
    #[error(transparent)]
    State(#[from] StateError),
}

/// A run that stopped early still reports what it did.
#[derive(Debug, thiserror::Error)]
#[error("{error}")]
pub struct Interrupted {
    pub error: BackfillError,
    pub report: RunReport,
}

pub async fn run(
    source: &dyn Source,
    writer: Arc<GuardedWriter>,
    state: &dyn StateBackend,
    settings: &BackfillSettings,
    progress: Progress,
) -> Result<RunReport, Box<Interrupted>> {
    let started = Instant::now();
    let mut report = RunReport {
        streams: Default::default(),
        totals: Counters::default(),
        state: (!settings.dry_run).then(|| state.location()),
        dry_run: settings.dry_run,
        full: settings.full,
        seconds: 0.0,
    };
    let interrupt = |error: BackfillError, mut report: RunReport| {
        report.seconds = started.elapsed().as_secs_f64();
        Box::new(Interrupted { error, report })
    };
    let doc = match state.load().await {
        Ok(doc) => doc.unwrap_or_default(),
        Err(e) => return Err(interrupt(e.into(), report)),
    };
    let mut checkpoint = Checkpointer {
        state,
        current: doc.effective(),
        doc,
        enabled: !settings.dry_run,
    };
    for (index, spec) in source.streams().iter().enumerate() {
        let since = match (&spec.replication_key, settings.full) {
            (Some(rk), false) => checkpoint.current.bookmark(&spec.name, rk).cloned(),
            _ => None,
        };
        let outcome = run_stream(
            source,
            index,
            spec,
            since,
            &writer,
            settings,
            progress,
            &mut checkpoint,
        )
        .await;
        let (stream_report, error) = match outcome {
            Ok(r) => (r, None),
            Err((r, e)) => (r, Some(e)),
        };
        report.totals.add(&stream_report.counters);
        report.streams.0.push((spec.name.clone(), stream_report));
        if let Some(e) = error {
            return Err(interrupt(e, report));
        }
    }
    if !settings.dry_run {
        let doc = &mut checkpoint.doc;
        doc.completed = checkpoint.current.clone();
        doc.partial = None;
        if let Err(e) = state.store(doc).await {
            return Err(interrupt(e.into(), report));
        }
    }
    report.seconds = started.elapsed().as_secs_f64();
    Ok(report)
}

/// Writes the run's bookmarks as Meltano's partial state while it goes.
struct Checkpointer<'a> {
    state: &'a dyn StateBackend,
    /// The document as loaded at the start; the run holds the state id's
    /// lock, so it is not read again (a change underneath fails the store).
    doc: StateDocument,
    current: SingerState,
    enabled: bool,
}

impl Checkpointer<'_> {
    async fn save(&mut self, stream: &str, rk: &str, value: Value) -> Result<(), StateError> {
        if self.current.bookmark(stream, rk) == Some(&value) {
            return Ok(());
        }
        self.current.set_bookmark(stream, rk, value);
        if !self.enabled {
            return Ok(());
        }
        // Partial state is what Meltano resumes from after an interrupted run.
        self.doc.partial = Some(self.current.clone());
        self.state.store(&self.doc).await
    }
}

/// Tracks which replication key value every confirmed record has reached.
struct Bookmarks {
    /// (sequence number, replication key value) of records not yet confirmed.
    pending: VecDeque<(u64, Value)>,
    reached: Option<Value>,
    /// After a failure the bookmark cannot move past it: track no more records.
    frozen: bool,
}

impl Bookmarks {
    fn push(&mut self, seq: u64, value: &Value) {
        if !self.frozen && !value.is_null() {
            self.pending.push_back((seq, value.clone()));
        }
    }

    fn advance(&mut self, confirmed: u64) {
        while let Some((seq, _)) = self.pending.front() {
            if *seq >= confirmed {
                break;
            }
            if let Some((_, v)) = self.pending.pop_front() {
                self.reached = Some(v);
            }
        }
    }
}

#[allow(clippy::too_many_arguments)]
async fn run_stream(
    source: &dyn Source,
    index: usize,
    spec: &StreamSpec,
    since: Option<Value>,
    writer: &Arc<GuardedWriter>,
    settings: &BackfillSettings,
    progress: Progress,
    checkpoint: &mut Checkpointer<'_>,
) -> Result<StreamReport, (StreamReport, BackfillError)> {
    let mut counters = Counters::default();
    let estimate = source.estimate(index, since.as_ref()).await;
    // Logged before the bar exists: a log line would tear a drawn bar.
    tracing::info!(stream = %spec.name, since = ?since, estimate, "reading");
    let mut bar = progress.stream(&spec.name, estimate);
    let ts_field: Option<Arc<str>> = spec.replication_key.as_deref().map(Arc::from);
    // Records in no particular order can only move the bookmark once all of
    // them are in, and then only to when the read started: anything changed
    // after that may or may not have been seen, so the next run reads it again.
    let read_started = chrono::Utc::now();
    let mut queue = WriteQueue::new(Arc::clone(writer), settings.in_flight);
    let mut done: Vec<Completion> = Vec::new();
    let mut bookmarks = Bookmarks {
        pending: VecDeque::new(),
        reached: None,
        frozen: false,
    };
    let mut batches = source.read(index, since);
    let mut last_checkpoint = (0u64, Instant::now());
    let mut failure: Option<BackfillError> = None;

    while let Some(batch) = batches.recv().await {
        let batch = match batch {
            Ok(b) => b,
            Err(e) => {
                failure = Some(e.into());
                break;
            }
        };
        bar.advance(batch.len() as u64);
        for record in batch {
            counters.read += 1;
            let key = key::record_key(
                &settings.key_prefix,
                &spec.name,
                spec.key_properties
                    .iter()
                    .zip(&record.key)
                    .map(|(p, t)| (p.as_str(), t.as_deref())),
            );
            let rk_value = record.replication_value;
            let seq = match key {
                Ok(key) => {
                    let request = WriteRequest {
                        key,
                        timestamp_field: ts_field.clone(),
                        timestamp: record.timestamp,
                        body: record.body,
                    };
                    queue.submit(request, &mut done).await
                }
                Err(reason) => {
                    counters.invalid_key += 1;
                    log_invalid_key(spec, &record.key, &reason);
                    queue.pass()
                }
            };
            if let Some(v) = rk_value.as_ref().filter(|_| spec.ordered) {
                bookmarks.push(seq, v);
            }
        }
        queue.poll_ready(&mut done);
        tally(&mut counters, &mut done, &mut bookmarks);
        let since_last = counters.read - last_checkpoint.0;
        if since_last >= settings.checkpoint_records
            || last_checkpoint.1.elapsed() >= settings.checkpoint_interval
        {
            bookmarks.advance(queue.confirmed());
            if let (Some(rk), Some(v)) = (&spec.replication_key, &bookmarks.reached)
                && let Err(e) = checkpoint.save(&spec.name, rk, v.clone()).await
            {
                failure = Some(e.into());
                break;
            }
            last_checkpoint = (counters.read, Instant::now());
        }
    }
    drop(batches);
    queue.drain(&mut done).await;
    tally(&mut counters, &mut done, &mut bookmarks);
    bookmarks.advance(queue.confirmed());
    bar.finish();
    if !spec.ordered && failure.is_none() && !bookmarks.frozen {
        bookmarks.reached = Some(Value::String(
            read_started.to_rfc3339_opts(chrono::SecondsFormat::Micros, false),
        ));
    }
    if let (Some(rk), Some(v)) = (&spec.replication_key, &bookmarks.reached)
        && let Err(e) = checkpoint.save(&spec.name, rk, v.clone()).await
    {
        failure.get_or_insert(e.into());
    }
    let report = StreamReport {
        counters,
        replication_key: spec.replication_key.clone(),
        bookmark: spec
            .replication_key
            .as_deref()
            .and_then(|rk| checkpoint.current.bookmark(&spec.name, rk).cloned()),
        error: failure.as_ref().map(|e| e.to_string()),
    };
    match failure {
        Some(e) => Err((report, e)),
        None => Ok(report),
    }
}

fn tally(counters: &mut Counters, done: &mut Vec<Completion>, bookmarks: &mut Bookmarks) {
    for completion in done.drain(..) {
        match completion.result {
            Ok(outcome) => counters.count(outcome),
            Err(e) => {
                counters.failed += 1;
                bookmarks.frozen = true;
                tracing::error!(key = %completion.key, error = %e, "record failed");
            }
        }
    }
}

fn log_invalid_key(spec: &StreamSpec, key: &[Option<String>], reason: &InvalidKey) {
    let raw: Vec<String> = spec
        .key_properties
        .iter()
        .zip(key)
        .map(|(p, v)| match v {
            Some(v) => format!("{p}={v:?}"),
            None => format!("{p}=null"),
        })
        .collect();
    tracing::warn!(stream = %spec.name, key_values = %raw.join(", "), reason = %reason, "record not written: invalid key");
}
