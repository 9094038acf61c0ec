//! lfx-sync keeps the LFX One (v2) platform fed with data from LFX v1.
//!
//! Data passes through, in order: an input — a [`source`] (PostgreSQL,
//! DynamoDB) driven by [`backfill`], Singer messages ([`singer`]), or
//! wal-listener events ([`sync`]) — then the one guarded writer into the
//! `v1-objects` bucket ([`kv`]), with bookmarks in a [`state`] backend. The
//! [`sync`] daemon also pushes `v1-objects` changes to the v2 services.
//! [`cli`] is the thin edge; [`nats`] and [`aws`] set up the clients.

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
