//! lfx-sync keeps the LFX One (v2) platform fed with data from LFX v1.
//!
//! Data passes through, in order: a [`source`] (PostgreSQL, DynamoDB), the guarded
//! writer into the `v1-objects` bucket ([`kv`]), and bookmarks in a [`state`]
//! backend; [`backfill`] drives a run and [`cli`] is the thin edge.

pub mod aws;
pub mod backfill;
pub mod cli;
pub mod config;
pub mod kv;
pub mod nats;
pub mod singer;
pub mod source;
pub mod state;
pub mod sync;
