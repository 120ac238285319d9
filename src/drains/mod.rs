//! Drains shipped with walsink: [`FileDrain`] (size-rotated files, exactly once across
//! crashes) and, with the `sled` feature, `SledDrain` (an embedded key-value store).
//!
//! Both use the seq of every record (see [`Batch`](crate::Batch)) to be idempotent:
//! after a crash the sink delivers again what the cursor had not passed, with the same
//! seqs, and these drains recognise what they already hold.

mod file;
#[cfg(feature = "sled")]
mod sled;

pub use file::{FileDrain, FileFormat};
#[cfg(feature = "sled")]
pub use sled::SledDrain;
