//! The counters every writer of `v1-objects` reports (SPEC §3).

use serde::Serialize;

use super::Outcome;

/// What happened to the records of one stream.
#[derive(Debug, Default, Clone, Serialize, PartialEq, Eq)]
pub struct Counters {
    pub read: u64,
    pub created: u64,
    pub updated: u64,
    pub unchanged: u64,
    pub skipped_deleted: u64,
    pub skipped_newer: u64,
    pub invalid_key: u64,
    pub failed: u64,
}

impl Counters {
    pub const HEADINGS: [&'static str; 8] = [
        "read",
        "created",
        "updated",
        "unchanged",
        "skipped_deleted",
        "skipped_newer",
        "invalid_key",
        "failed",
    ];

    pub fn count(&mut self, outcome: Outcome) {
        match outcome {
            Outcome::Created => self.created += 1,
            Outcome::Updated => self.updated += 1,
            Outcome::Unchanged => self.unchanged += 1,
            Outcome::SkippedDeleted => self.skipped_deleted += 1,
            Outcome::SkippedNewer => self.skipped_newer += 1,
        }
    }

    pub fn add(&mut self, other: &Counters) {
        self.read += other.read;
        self.created += other.created;
        self.updated += other.updated;
        self.unchanged += other.unchanged;
        self.skipped_deleted += other.skipped_deleted;
        self.skipped_newer += other.skipped_newer;
        self.invalid_key += other.invalid_key;
        self.failed += other.failed;
    }

    /// The counters in the order of `HEADINGS`, for tables.
    pub fn columns(&self) -> [u64; 8] {
        [
            self.read,
            self.created,
            self.updated,
            self.unchanged,
            self.skipped_deleted,
            self.skipped_newer,
            self.invalid_key,
            self.failed,
        ]
    }
}
