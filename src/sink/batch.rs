//! Pushing many records in one call: [`DurableSink::try_push_batch`] and
//! [`DurableSink::push_batch`].
//!
//! A single push pays, per record, one queue lock, one disk-budget reservation (an
//! atomic read-modify-write on a line the writer also touches) and a check for
//! whether the writer must be woken. A batch encodes every record first, then pays
//! those once per run: one reservation of the run's bytes, one critical section that
//! queues every record of the run, at most one wake-up.
//!
//! # Invariants
//!
//! - Nothing is queued unless its bytes are reserved in the disk budget first. A run
//!   reserves only what fits in the budget (a compare-and-swap, never an add that is
//!   then undone) and in the queue's room as it looked just before; what it reserved
//!   and did not queue (room another producer took in between) is given back, and
//!   waiting pushes woken, before the call returns. So a batch holds budget for
//!   records it cannot queue only for that moment.
//! - Records are accepted in the order of the caller's `Vec`, and only as a prefix:
//!   on every return, and when a `push_batch` future is dropped, the `Vec` holds
//!   exactly the records that were not accepted, in order ([`Accepted`]).
//! - Every record is encoded and checked against `max_record_bytes` before any is
//!   queued, so an encode error or an oversized record leaves the whole batch
//!   unaccepted.
//! - Bounded: a run holds the queue lock for at most [`MAX_RUN`] records (a
//!   `try_push_batch`, all or none, for its whole batch); each thread keeps at most
//!   [`POOLED_ENCODINGS`] encode buffers of [`POOLED_BYTES`] in all.

use std::cell::RefCell;

use super::{DurableSink, with_scratch};
use crate::config::Overflow;
use crate::error::SinkError;
use crate::inbox::TrySendError;
use crate::wal::format::frame_bytes;
use crate::wal::writer::WriterMsg;

/// Most records `push_batch` tries to queue in one critical section: bounds the time
/// the queue lock is held and the work of a try that finds little room.
const MAX_RUN: usize = 1024;
/// Encode buffers kept per thread between batches (their allocations are reused).
const POOLED_ENCODINGS: usize = 1024;
/// Bytes of encode buffers kept per thread between batches, at most.
const POOLED_BYTES: usize = 1 << 20;

thread_local! {
    /// Per-thread encode buffers for batches, reused across calls.
    static BATCH_SCRATCH: RefCell<Vec<Vec<u8>>> = const { RefCell::new(Vec::new()) };
}

/// How much of a batch went in, from [`DurableSink::queue_run`].
enum Queued {
    /// This many records (maybe 0: the queue or the budget has no room now).
    Some(usize),
    /// The queue is closed: the sink shut down or failed.
    Closed,
}

/// Removes the accepted records (a prefix) from the caller's `Vec` when dropped:
/// on every return, and when a `push_batch` future is dropped at an await. One
/// `drain` in all, however many parts the batch went in.
struct Accepted<'a, T> {
    records: &'a mut Vec<T>,
    n: usize,
}

impl<T> Drop for Accepted<'_, T> {
    fn drop(&mut self) {
        self.records.drain(..self.n.min(self.records.len()));
    }
}

impl<T: Send + 'static> DurableSink<T> {
    /// Queues every record of `records` without waiting, all or none.
    ///
    /// The batch form of [`try_push`](Self::try_push): every record is encoded first,
    /// then the batch takes its disk budget and its queue room at once, and is copied
    /// into the queue in one critical section (a few atomic operations and at most one
    /// wake-up of the writer for the whole batch, instead of per record). The records
    /// are queued together, in order, under consecutive seqs.
    ///
    /// On `Ok`, `records` is empty and every record was accepted as by `try_push`. On
    /// `Err`, none was and `records` is as it was: retry, or drop them. A batch larger
    /// than `queue_capacity` records, or than `max_disk_bytes`, can never fit; and
    /// while the batch is copied into the queue, other producers and the writer wait
    /// for the queue's lock. Keep batches to hundreds of records, not millions.
    ///
    /// # Errors
    ///
    /// - `Overflow`: the queue or the disk budget lacks room for the whole batch (its
    ///   records are counted in `dropped`), or the sink is in [`Overflow::Block`] mode,
    ///   where `try_push_batch` is always refused: use
    ///   [`push_batch`](Self::push_batch);
    /// - `TooLarge`, `Encode`: a record cannot be accepted (the first such record's
    ///   error); nothing was;
    /// - `Closed`: the sink has shut down; `Io`: the WAL failed earlier.
    pub fn try_push_batch(&self, records: &mut Vec<T>) -> Result<(), SinkError> {
        if self.inner.overflow == Overflow::Block {
            return Err(SinkError::Overflow);
        }
        let n = records.len();
        if n == 0 {
            return Ok(());
        }
        let queued =
            self.with_encoded_batch(records, |encodings| self.queue_run(encodings, true))?;
        match queued {
            Queued::Some(k) if k == n => {
                records.clear();
                Ok(())
            }
            Queued::Some(_) => {
                self.inner.shared.counters().dropped.add(n as u64);
                Err(SinkError::Overflow)
            }
            Queued::Closed => Err(self.closed_error()),
        }
    }

    /// Queues every record of `records`, in order, waiting for room as
    /// [`push`](Self::push) does (whatever the [`Overflow`] mode).
    ///
    /// The batch form of `push`: every record is encoded first; then they go in as
    /// runs of up to 1 024 records, each run as long as the queue and the disk budget
    /// have room for at that moment (one critical section and at most one wake-up
    /// each, see [`try_push_batch`](Self::try_push_batch)). When not even the next
    /// record fits, it waits for room for that one as `push` does, and goes on. Records
    /// of other producers may be queued between two runs.
    ///
    /// Accepted records leave `records` from the front: on `Ok` it is empty.
    ///
    /// # Example
    ///
    /// ```
    /// # use walsink::{Batch, DrainError, DurableSink, SinkConfig, SinkDrain};
    /// # struct Ack;
    /// # impl SinkDrain<String> for Ack {
    /// #     async fn write_batch(&mut self, _: Batch<String>) -> Result<(), DrainError> { Ok(()) }
    /// # }
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// # let dir = tempfile::tempdir()?;
    /// # let shutdown = tokio_util::sync::CancellationToken::new();
    /// # let (sink, handle) =
    /// #     DurableSink::<String>::open(SinkConfig::new(dir.path()), Ack, shutdown.clone()).await?;
    /// let mut batch: Vec<String> = (0..100).map(|i| format!("event {i}")).collect();
    /// sink.push_batch(&mut batch).await?;
    /// assert!(batch.is_empty()); // all accepted; the Vec keeps its allocation for the next batch
    /// sink.sync().await?; // all hundred durable, one fsync
    /// # shutdown.cancel();
    /// # handle.join().await?;
    /// # Ok(())
    /// # }
    /// ```
    ///
    /// # Cancel safety
    ///
    /// If the future is dropped, `records` holds exactly the records that were not
    /// accepted (a suffix of the batch, in order; all of it if none was), and the
    /// disk budget reserved for them is given back.
    ///
    /// # Errors
    ///
    /// `TooLarge`, `Encode` (nothing accepted), `Closed`, `Io` as for `push`; never
    /// `Overflow`. On `Closed` or `Io` part of the batch may have been accepted:
    /// `records` holds the rest.
    pub async fn push_batch(&self, records: &mut Vec<T>) -> Result<(), SinkError> {
        if records.is_empty() {
            return Ok(());
        }
        let mut accepted = Accepted { records, n: 0 };
        // Fast path: runs straight from this thread's encode buffers. What does not
        // fit is moved out of them to wait (a wait may resume on another thread).
        let (queued, closed, mut rest) =
            self.with_encoded_batch(accepted.records, |encodings| {
                let mut done = 0;
                while done < encodings.len() {
                    match self.queue_run(&mut encodings[done..], false) {
                        Queued::Some(0) => break,
                        Queued::Some(k) => done += k,
                        Queued::Closed => return (done, true, Vec::new()),
                    }
                }
                let rest = encodings[done..].iter_mut().map(std::mem::take).collect();
                (done, false, rest)
            })?;
        accepted.n = queued;
        if closed {
            return Err(self.closed_error());
        }
        let rest: &mut [Vec<u8>] = &mut rest;
        let mut done = 0;
        while done < rest.len() {
            match self.queue_run(&mut rest[done..], false) {
                Queued::Closed => return Err(self.closed_error()),
                Queued::Some(0) => {
                    // No room for even the next record: wait for it the way `push`
                    // does (budget first, then the queue), then try a run again.
                    let encoded = std::mem::take(&mut rest[done]);
                    self.inner.send_waiting(encoded, None).await?;
                    accepted.n += 1;
                    done += 1;
                }
                Queued::Some(k) => {
                    accepted.n += k;
                    done += k;
                }
            }
        }
        Ok(())
    }

    /// Queues a run from the front of `encodings`: with `all`, every one of them or
    /// none; else the longest prefix (of at most [`MAX_RUN`], and of the queue's room
    /// when it looks) that both the disk budget and the queue have room for, possibly
    /// none. Reserves the budget before queueing and gives back, waking waiting
    /// pushes, whatever it reserved and did not queue (room taken by others between
    /// the look and the send).
    fn queue_run(&self, encodings: &mut [Vec<u8>], all: bool) -> Queued {
        let shared = &*self.inner.shared;
        // Reserve no more budget than the queue can take right now: budget held for
        // records that then find no room would refuse other pushes for nothing.
        let room = self.inner.tx.room();
        let len = if all {
            if room < encodings.len() {
                return Queued::Some(0);
            }
            encodings.len()
        } else {
            encodings.len().min(MAX_RUN).min(room)
        };
        if len == 0 {
            return Queued::Some(0);
        }
        let run = &mut encodings[..len];
        let (k, bytes) = shared.try_reserve_prefix(run.iter().map(|e| frame_bytes(e.len())), all);
        if k == 0 {
            return Queued::Some(0);
        }
        let run = &mut run[..k];
        let sent = self
            .inner
            .tx
            .try_send_records(run, all, |payload| WriterMsg::record(payload, None));
        match sent {
            Ok(q) => {
                // The unsent encodings are untouched: give their budget back.
                let unsent: u64 = run[q..].iter().map(|e| frame_bytes(e.len())).sum();
                shared.release_unused(unsent);
                Queued::Some(q)
            }
            Err(TrySendError::Full(())) => {
                shared.release_unused(bytes);
                Queued::Some(0)
            }
            Err(TrySendError::Closed(())) => {
                shared.release_unused(bytes);
                Queued::Closed
            }
        }
    }

    /// Encodes every record of `records` into this thread's batch buffers (fresh ones
    /// if a codec pushes from inside `encode`) and runs `then` on the encodings; fails
    /// on the first record that cannot be encoded or is over `max_record_bytes`.
    /// Afterwards, whatever happened, the buffers kept for the next batch are trimmed
    /// to [`POOLED_ENCODINGS`] and [`POOLED_BYTES`].
    fn with_encoded_batch<R>(
        &self,
        records: &[T],
        then: impl FnOnce(&mut [Vec<u8>]) -> R,
    ) -> Result<R, SinkError> {
        let inner = &*self.inner;
        if let Some(e) = inner.shared.failure() {
            return Err(e);
        }
        with_scratch(&BATCH_SCRATCH, |pool: &mut Vec<Vec<u8>>| {
            if pool.len() < records.len() {
                pool.resize_with(records.len(), Vec::new);
            }
            let encoded = records
                .iter()
                .zip(pool.iter_mut())
                .try_for_each(|(record, buf)| {
                    buf.clear();
                    inner.encode_checked(record, buf)
                });
            let out = encoded.map(|()| then(&mut pool[..records.len()]));
            trim_pool(pool);
            out
        })
    }
}

/// Keeps at most [`POOLED_ENCODINGS`] buffers holding at most [`POOLED_BYTES`] in all.
fn trim_pool(pool: &mut Vec<Vec<u8>>) {
    pool.truncate(POOLED_ENCODINGS);
    pool.shrink_to(POOLED_ENCODINGS);
    let mut kept = 0usize;
    for buf in pool.iter_mut() {
        if kept.saturating_add(buf.capacity()) > POOLED_BYTES {
            *buf = Vec::new();
        } else {
            kept += buf.capacity();
        }
    }
}
