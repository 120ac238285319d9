//! Drains shipped with walsink: [`FileDrain`] (size-rotated files, exactly once across
//! crashes), with the `sled` feature `SledDrain` (an embedded key-value store), and
//! with the `kafka` feature `KafkaDrain` (a Kafka topic, through librdkafka; the seq
//! travels in the `walsink-seq` header for consumers to deduplicate).
//!
//! Both use the seq of every record (see [`Batch`](crate::Batch)) to be idempotent:
//! after a crash the sink delivers again what the cursor had not passed, with the same
//! seqs, and these drains recognise what they already hold.

mod file;
#[cfg(feature = "kafka")]
pub mod kafka;
#[cfg(feature = "sled")]
mod sled;

pub use file::{FileDrain, FileFormat};
#[cfg(feature = "kafka")]
pub use kafka::KafkaDrain;
#[cfg(feature = "sled")]
pub use sled::SledDrain;
