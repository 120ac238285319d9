//! Errors at the public edge: [`OpenError`] (opening a sink) and [`SinkError`] (using
//! one). [`DrainError`](crate::DrainError) lives with the drain trait.
//!
//! I/O errors are carried as `Arc<io::Error>` so that one failure can be handed to every
//! waiter it affects (a failed fsync fails every `sync()` waiting on it).

use std::io;
use std::path::PathBuf;
use std::sync::Arc;

use crate::codec::CodecError;

/// Why [`DurableSink::open`](crate::DurableSink::open) failed. Nothing was started;
/// the directory lock, if taken, was released.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum OpenError {
    /// Another sink (in this process or another) holds the directory. Retrying is
    /// useful once that sink has shut down or its process has died.
    #[error("WAL directory {dir} is locked by another sink")]
    Locked {
        /// The WAL directory.
        dir: PathBuf,
    },
    /// A configuration field cannot work; the message names it.
    #[error("invalid config: {field}: {reason}")]
    InvalidConfig {
        /// The field at fault.
        field: &'static str,
        /// Why it cannot work.
        reason: String,
    },
    /// `dir` exists and is not a directory.
    #[error("WAL path {path} is not a directory")]
    NotADirectory {
        /// The configured `dir`.
        path: PathBuf,
    },
    /// A file in the directory was written by a format version this build does not
    /// read (a newer walsink, most likely). Nothing was changed.
    #[error(
        "{path}: format version {found} is not supported (this build reads version {supported})"
    )]
    UnsupportedVersion {
        /// The file.
        path: PathBuf,
        /// Version found.
        found: u16,
        /// Version this build supports.
        supported: u16,
    },
    /// A segment was written with a different codec than the one given to `open`.
    /// Decoding it with this codec would produce garbage, so nothing was changed.
    #[error(
        "{path}: written with codec id {found}, but the sink was opened with codec id {expected}"
    )]
    CodecMismatch {
        /// The segment.
        path: PathBuf,
        /// Codec id in the segment header.
        found: u32,
        /// Codec id of the codec passed to `open`.
        expected: u32,
    },
    /// An I/O operation failed.
    #[error("{op} {path}: {source}")]
    Io {
        /// What was being done.
        op: &'static str,
        /// The file or directory.
        path: PathBuf,
        /// The error.
        #[source]
        source: io::Error,
    },
}

/// Why a push, `sync` or `flush` failed.
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum SinkError {
    /// The sink is full: the in-memory queue or the disk budget (`max_disk_bytes`).
    /// With [`Overflow::Drop`](crate::Overflow::Drop) the record was dropped and counted;
    /// with [`Overflow::Block`](crate::Overflow::Block), `try_push` always answers this:
    /// use `push`.
    #[error("sink is full (record dropped)")]
    Overflow,
    /// The sink has shut down (cancelled, or all handles dropped); the record was not
    /// accepted.
    #[error("sink is closed")]
    Closed,
    /// The encoded record is larger than `max_record_bytes`; it was not accepted. The
    /// sink keeps working.
    #[error("record of {len} bytes is over max_record_bytes ({limit})")]
    TooLarge {
        /// Encoded length.
        len: usize,
        /// The configured limit.
        limit: usize,
    },
    /// The codec could not encode the record; it was not accepted.
    #[error("encode failed: {0}")]
    Encode(#[source] Arc<CodecError>),
    /// A WAL write or fsync failed. The failure is sticky: from then on the sink refuses
    /// pushes and `sync()` rather than claim durability it no longer has. Reopen the
    /// sink (after fixing the disk) to recover what was durable.
    #[error("WAL I/O failed: {0}")]
    Io(#[source] Arc<io::Error>),
    /// A background task stopped on a violated invariant (a bug). The message says which.
    #[error("sink task failed: {0}")]
    Internal(String),
}

impl PartialEq for SinkError {
    /// Compares variants and, for I/O errors, their kinds: enough for tests to assert
    /// that two failures are the same failure.
    fn eq(&self, other: &Self) -> bool {
        match (self, other) {
            (Self::Overflow, Self::Overflow) | (Self::Closed, Self::Closed) => true,
            (Self::TooLarge { len: a, limit: b }, Self::TooLarge { len: c, limit: d }) => {
                a == c && b == d
            }
            (Self::Encode(a), Self::Encode(b)) => a.to_string() == b.to_string(),
            (Self::Io(a), Self::Io(b)) => a.kind() == b.kind(),
            (Self::Internal(a), Self::Internal(b)) => a == b,
            _ => false,
        }
    }
}
