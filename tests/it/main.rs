//! Integration tests against real PostgreSQL and NATS (started by
//! `scripts/services.sh`); each test uses its own database and buckets.

mod backfill;
mod common;
mod guard;
mod meltano;
mod target;
