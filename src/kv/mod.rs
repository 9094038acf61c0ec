//! The replica bucket `v1-objects`: keys, guard timestamps, value encodings and
//! the guarded writer every input goes through.

mod counters;
pub mod key;
pub mod msgpack;
pub mod queue;
pub mod timestamp;
pub mod writer;

pub use counters::Counters;
pub use queue::{Completion, WriteQueue};
pub use writer::{
    Body, DeleteOutcome, Encoding, GuardedWriter, Outcome, RefreshMode, WriteError, WriteRequest,
};
