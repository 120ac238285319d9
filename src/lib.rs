//! A durable, write-ahead-log-backed background sink.
//!
//! Producers on hot paths push typed records; every accepted record is appended to an
//! on-disk WAL segment before a background task delivers it, in batches, to your async
//! [`SinkDrain`] (a Kafka topic, a dead-letter file, an embedded store). The drain's
//! acknowledgement advances a persisted cursor; fully acknowledged segments are
//! deleted. After a crash, everything not yet acknowledged is delivered again.
//!
//! ```no_run
//! # #![allow(dead_code)]
//! use walsink::{Batch, DrainError, Durability, DurableSink, OpenError, Overflow,
//!               SinkConfig, SinkDrain, SinkError, SinkHandle};
//! # #[derive(Clone, Copy, serde::Serialize, serde::Deserialize)]
//! # struct Event { id: u64 }
//! # struct MyDrain;
//! # impl SinkDrain<Event> for MyDrain {
//! #     async fn write_batch(&mut self, _batch: Batch<Event>) -> Result<(), DrainError> { Ok(()) }
//! # }
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! # let (my_drain, ev) = (MyDrain, Event { id: 1 });
//! let cfg = SinkConfig { batch_size: 512, ..SinkConfig::new("/var/lib/app/dlq-wal") };
//! let shutdown = tokio_util::sync::CancellationToken::new();
//! let (sink, handle) = DurableSink::<Event>::open(cfg, my_drain, shutdown.clone()).await?;
//!
//! sink.try_push(ev)?;          // sync-shaped, never blocks or awaits
//! sink.push(ev).await?;        // awaits room (disk budget / queue), whatever the Overflow mode
//! sink.push_durable(ev).await?; // resolves once this record is fsynced (group commit)
//! sink.sync().await?;          // every record accepted before the call is fsynced
//! sink.flush().await?;         // every record accepted before the call is acked by the drain
//! sink.dropped(); sink.pending(); sink.stats();
//!
//! shutdown.cancel();
//! handle.join().await?;        // graceful: writer synced, cursor persisted, drain closed
//! # let _: Option<(Durability, Overflow, OpenError, SinkError, SinkHandle)> = None;
//! # Ok(()) }
//! ```
//!
//! The snippet is the reference usage of the API, compiled as written. A runnable example follows on
//! [`DurableSink`]; a complete program is `examples/quickstart.rs`; the guarantees and the tests behind each are in
//! `docs/GUARANTEES.md`, the byte format in `docs/FORMAT.md`.
//!
//! # Data flow
//!
//! ```text
//! producers ──try_push/push──► bounded queue ──► WAL writer thread ──► segment files
//!                                                   (seq, frame, fsync)      │
//!            drain.write_batch ◄── delivery task ◄── reader ◄────────────────┘
//!                                      │
//!                                      └──► cursor (persisted) ──► delete acked segments
//! ```
//!
//! Live delivery and crash replay are one code path: the delivery task always reads
//! records back from the segment files.

#![doc(test(attr(deny(warnings))))]

mod actor;
#[cfg(feature = "cli")]
pub mod cli;
mod codec;
mod config;
#[doc(hidden)]
pub mod crashpoint;
mod dead_letter;
mod deadline;
mod drain;
pub mod drains;
mod error;
mod handle;
mod inbox;
mod metrics;
mod shared;
mod sink;
mod stats;
#[cfg(any(test, feature = "fuzzing"))]
#[cfg_attr(not(test), allow(dead_code))]
mod testing;
mod wal;

/// The fuzz targets' entry points (feature `fuzzing`). **Not API.**
#[cfg(feature = "fuzzing")]
#[doc(hidden)]
pub use testing::fuzzing;

/// The README's code blocks compile as doctests.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
struct ReadmeDoctests;

pub use codec::{BINCODE_CODEC_ID, BincodeCodec, Codec, CodecError, RAW_CODEC_ID, RawCodec};
pub use config::{
    Durability, MAX_QUEUE_CAPACITY, MIN_SEGMENT_BYTES, Overflow, RetryPolicy, SinkConfig,
};
pub use dead_letter::{
    DEFAULT_MAX_DEAD_LETTER_BYTES, DeadLetter, DeadLetterError, DeadLetterPolicy, DeadLetterReason,
    DeadLetterStore, Selection,
};
pub use drain::{Batch, DrainError, DrainErrorKind, SinkDrain};
pub use error::{OpenError, SinkError};
pub use handle::{ShutdownReport, SinkHandle};
pub use sink::DurableSink;
pub use stats::SinkStats;
pub use wal::recovery::RecoveryReport;
