//! The Singer protocol: `target-nats-kv` reads Singer messages and loads their
//! records into `v1-objects` through the same guarded writer as the backfill.

mod input;
pub mod message;
pub mod settings;
pub mod target;

pub use settings::{TargetSettings, resolve};
pub use target::{Target, TargetSummary};
