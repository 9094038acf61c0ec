//! Many guarded writes in flight at once, with what a checkpoint needs to know:
//! the point up to which every record has been durably handled.

use std::collections::{BTreeSet, HashSet};
use std::sync::Arc;

use futures::StreamExt;
use futures::stream::FuturesUnordered;
use tokio::task::JoinHandle;

use super::writer::{GuardedWriter, Outcome, WriteError, WriteRequest};

/// The result of one submitted record.
#[derive(Debug)]
pub struct Completion {
    pub seq: u64,
    pub key: String,
    pub result: Result<Outcome, WriteError>,
}

pub struct WriteQueue {
    writer: Arc<GuardedWriter>,
    running: FuturesUnordered<JoinHandle<Completion>>,
    /// Keys with a write in flight: a second record for the same key waits, so
    /// records of one key are applied in the order they came.
    busy: HashSet<String>,
    limit: usize,
    next_seq: u64,
    /// Every sequence number below this one has been handled successfully.
    confirmed: u64,
    /// Handled successfully but above a gap.
    confirmed_ahead: BTreeSet<u64>,
}

impl WriteQueue {
    pub fn new(writer: Arc<GuardedWriter>, limit: usize) -> Self {
        Self {
            writer,
            running: FuturesUnordered::new(),
            busy: HashSet::new(),
            limit: limit.max(1),
            next_seq: 0,
            confirmed: 0,
            confirmed_ahead: BTreeSet::new(),
        }
    }

    /// The sequence number the next submitted record gets.
    pub fn next_seq(&self) -> u64 {
        self.next_seq
    }

    /// Every record with a sequence number below this has been written or
    /// definitively skipped. A failed record holds it back for good.
    pub fn confirmed(&self) -> u64 {
        self.confirmed
    }

    pub fn in_flight(&self) -> usize {
        self.running.len()
    }

    /// Starts the guarded write of one record, after waiting for room and for
    /// any earlier write of the same key. Finished writes land in `done`.
    pub async fn submit(&mut self, request: WriteRequest, done: &mut Vec<Completion>) -> u64 {
        while self.running.len() >= self.limit || self.busy.contains(&request.key) {
            self.next_completion(done).await;
        }
        let seq = self.next_seq;
        self.next_seq += 1;
        self.busy.insert(request.key.clone());
        let writer = Arc::clone(&self.writer);
        self.running.push(tokio::spawn(async move {
            let key = request.key.clone();
            let result = writer.write(request).await;
            Completion { seq, key, result }
        }));
        seq
    }

    /// Takes a sequence number for a record that is handled without a write
    /// (an unwritable key): it counts as done for checkpoints.
    pub fn pass(&mut self) -> u64 {
        let seq = self.next_seq;
        self.next_seq += 1;
        self.confirm(seq);
        seq
    }

    /// Collects writes that have already finished, without waiting.
    pub fn poll_ready(&mut self, done: &mut Vec<Completion>) {
        while let Some(Some(joined)) = self.running.next().now_or_never() {
            self.finish(joined, done);
        }
    }

    /// Waits for every write in flight.
    pub async fn drain(&mut self, done: &mut Vec<Completion>) {
        while !self.running.is_empty() {
            self.next_completion(done).await;
        }
    }

    async fn next_completion(&mut self, done: &mut Vec<Completion>) {
        if let Some(joined) = self.running.next().await {
            self.finish(joined, done);
        }
    }

    fn finish(
        &mut self,
        joined: Result<Completion, tokio::task::JoinError>,
        done: &mut Vec<Completion>,
    ) {
        let completion = match joined {
            Ok(c) => c,
            // A panicking write cannot name its record any more; the run must
            // still fail rather than lose it silently.
            Err(e) => panic!("a guarded write task failed: {e}"),
        };
        self.busy.remove(&completion.key);
        if completion.result.is_ok() {
            self.confirm(completion.seq);
        }
        done.push(completion);
    }

    fn confirm(&mut self, seq: u64) {
        if seq == self.confirmed {
            self.confirmed += 1;
            while self.confirmed_ahead.remove(&self.confirmed) {
                self.confirmed += 1;
            }
        } else {
            self.confirmed_ahead.insert(seq);
        }
    }
}

use futures::FutureExt;
