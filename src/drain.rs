//! The user's side: the [`SinkDrain`] trait, the [`Batch`] it receives and the
//! [`DrainError`] it answers with.

use std::error::Error;
use std::fmt;
use std::future::Future;

/// Where records go: a Kafka topic, a file, an embedded store.
///
/// The delivery task owns the drain and calls it from one task, never concurrently.
/// `write_batch` returning `Ok` acknowledges every record of the batch: the cursor moves
/// past them and their segments may be deleted. Use async I/O (or `spawn_blocking`)
/// inside: the call runs on a tokio worker.
///
/// Delivery is at-least-once: after a crash, records acknowledged after the last
/// persisted cursor are delivered again with the same seqs. Use [`Batch::iter`]'s seqs
/// to make a drain idempotent.
pub trait SinkDrain<T: Send>: Send + 'static {
    /// Delivers one batch. `Err(DrainError::retryable(..))`: the same records come again
    /// after backoff. `Err(DrainError::permanent(..))`: the batch is split until the
    /// rejected records are single; those are skipped and counted.
    fn write_batch(
        &mut self,
        batch: Batch<T>,
    ) -> impl Future<Output = Result<(), DrainError>> + Send;

    /// Called once at shutdown, after the last `write_batch`. Default: nothing.
    fn close(&mut self) -> impl Future<Output = Result<(), DrainError>> + Send {
        std::future::ready(Ok(()))
    }
}

/// Records in seq order with their WAL sequence numbers.
///
/// Seqs strictly increase within a batch and across batches, and a seq always names
/// the same record, also across restarts (gaps are possible: after a crash, or where
/// a corrupt record was skipped).
#[derive(Debug, Clone, PartialEq)]
pub struct Batch<T> {
    seqs: Vec<u64>,
    items: Vec<T>,
}

impl<T> Batch<T> {
    /// Builds a batch; `seqs` must strictly increase and match `items` in length.
    pub(crate) fn new(seqs: Vec<u64>, items: Vec<T>) -> Self {
        debug_assert_eq!(seqs.len(), items.len());
        debug_assert!(seqs.windows(2).all(|w| w[0] < w[1]));
        Self { seqs, items }
    }

    /// Number of records.
    pub fn len(&self) -> usize {
        self.items.len()
    }

    /// Whether there are no records (never the case for a delivered batch).
    pub fn is_empty(&self) -> bool {
        self.items.is_empty()
    }

    /// Seq of the first record.
    pub fn first_seq(&self) -> Option<u64> {
        self.seqs.first().copied()
    }

    /// Seq of the last record.
    pub fn last_seq(&self) -> Option<u64> {
        self.seqs.last().copied()
    }

    /// The seqs, in order.
    pub fn seqs(&self) -> &[u64] {
        &self.seqs
    }

    /// `(seq, &record)` pairs in order.
    pub fn iter(&self) -> impl Iterator<Item = (u64, &T)> {
        self.seqs.iter().copied().zip(self.items.iter())
    }

    /// The records, in order, without seqs.
    pub fn into_items(self) -> Vec<T> {
        self.items
    }

    /// `(seq, record)` pairs, in order.
    pub fn into_pairs(self) -> Vec<(u64, T)> {
        self.seqs.into_iter().zip(self.items).collect()
    }
}

/// How a drain failed: transient or permanent.
#[derive(Debug)]
pub struct DrainError {
    kind: DrainErrorKind,
    source: Box<dyn Error + Send + Sync + 'static>,
}

/// The two kinds of drain failure.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum DrainErrorKind {
    /// Transient: deliver the same records again after backoff.
    Retryable,
    /// This data will never be accepted (poison).
    Permanent,
}

impl DrainError {
    /// A transient failure: the batch is delivered again after backoff.
    pub fn retryable(err: impl Into<Box<dyn Error + Send + Sync + 'static>>) -> Self {
        Self {
            kind: DrainErrorKind::Retryable,
            source: err.into(),
        }
    }

    /// A permanent failure: the batch is bisected down to the rejected records.
    pub fn permanent(err: impl Into<Box<dyn Error + Send + Sync + 'static>>) -> Self {
        Self {
            kind: DrainErrorKind::Permanent,
            source: err.into(),
        }
    }

    /// Which kind of failure this is.
    pub fn kind(&self) -> DrainErrorKind {
        self.kind
    }

    /// Whether the batch should be delivered again.
    pub fn is_retryable(&self) -> bool {
        self.kind == DrainErrorKind::Retryable
    }
}

impl fmt::Display for DrainError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let kind = match self.kind {
            DrainErrorKind::Retryable => "retryable",
            DrainErrorKind::Permanent => "permanent",
        };
        write!(f, "{kind} drain error: {}", self.source)
    }
}

impl Error for DrainError {
    fn source(&self) -> Option<&(dyn Error + 'static)> {
        Some(&*self.source)
    }
}
