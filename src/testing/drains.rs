//! Drains for unit tests.

use std::sync::{Arc, Mutex, PoisonError};

use crate::{Batch, DrainError, SinkDrain};

/// `(seq, record)` pairs in delivery order.
pub(crate) type Log = Arc<Mutex<Vec<(u64, u64)>>>;

/// A snapshot of a log.
pub(crate) fn log_of(log: &Log) -> Vec<(u64, u64)> {
    log.lock().unwrap_or_else(PoisonError::into_inner).clone()
}

/// Acknowledges every batch and logs `(seq, record)`.
pub(crate) struct Collect(pub(crate) Log);

impl SinkDrain<u64> for Collect {
    async fn write_batch(&mut self, batch: Batch<u64>) -> Result<(), DrainError> {
        self.0
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .extend(batch.into_pairs());
        Ok(())
    }
}

/// Never acknowledges: everything stays on disk.
pub(crate) struct Stuck;

impl SinkDrain<u64> for Stuck {
    async fn write_batch(&mut self, _batch: Batch<u64>) -> Result<(), DrainError> {
        std::future::pending().await
    }
}
