//! Integration tests against real PostgreSQL, NATS and moto (S3, DynamoDB),
//! started by `scripts/services.sh`; each test uses its own database and buckets.

mod backfill;
mod common;
mod dynamodb;
mod guard;
mod meltano;
mod s3_state;
mod sync;
mod target;
mod v2_daemon;
mod v2_kv;
mod v2_standin;
mod v2_sync;
