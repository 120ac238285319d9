//! State shared by producers, the WAL writer thread and the delivery task.
//!
//! Only atomics and wake-ups live here; each piece has one writer:
//! - producers: `disk_used` (reserve), the `dropped` counter; records accepted are counted by
//!   the queue itself (`inbox::Sender::records`), under the lock a push takes anyway;
//! - the WAL writer: `written_seq`, `synced_seq`, `taken`, `failure`;
//! - the delivery task: `acked_seq`, `disk_used` (release on delete), the counters of
//!   delivery.
//!
//! Invariants (checked where they are published): `synced_seq <= written_seq`,
//! `acked_seq <= written_seq`, and each of the three only grows.

use std::io;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};

use tokio::sync::Notify;

use crate::error::SinkError;
use crate::metrics::Metrics;

/// Keeps a value on its own cache line(s): 128 bytes, because x86 prefetches lines in
/// adjacent pairs. Fields written often by one thread are padded, so that a producer's
/// `try_push` does not miss in cache each time the writer or the delivery task
/// publishes progress (measured: the read of `failed` alone was 7 % of the producer's
/// CPU while it shared a line with the writer's `written_seq`).
#[derive(Debug, Default)]
#[repr(align(128))]
pub(crate) struct CachePadded<T>(pub(crate) T);

impl<T> std::ops::Deref for CachePadded<T> {
    type Target = T;
    fn deref(&self) -> &T {
        &self.0
    }
}

/// See the module doc.
#[derive(Debug)]
pub(crate) struct Shared {
    pub(crate) metrics: Metrics,
    pub(crate) max_disk_bytes: u64,
    /// Seqs that name no record, found at open (inclusive ranges, in order): what a
    /// crash left unused between segments. Fixed for the sink's life (the writer never
    /// leaves gaps), so backlog counts subtract them without any synchronization.
    gaps: Vec<(u64, u64)>,

    /// Records the writer has taken off the queue (accepted minus taken are queued).
    /// Kept by the writer alone, so the hot path pays no extra atomic for it.
    pub(crate) taken: CachePadded<AtomicU64>,
    /// Bytes of segment files plus frames reserved by accepted, unwritten records.
    pub(crate) disk_used: CachePadded<AtomicU64>,
    /// Segment files.
    pub(crate) wal_segments: AtomicU64,

    /// Every record with a seq at or below this is in a segment file (or will never
    /// exist: seqs skipped after a crash).
    pub(crate) written_seq: CachePadded<AtomicU64>,
    /// Every record at or below this is durable.
    pub(crate) synced_seq: CachePadded<AtomicU64>,
    /// Every record at or below this was acknowledged (or rejected, or lost to damage).
    pub(crate) acked_seq: CachePadded<AtomicU64>,

    failed: AtomicBool,
    failure: OnceLock<Arc<io::Error>>,
    /// The writer is holding writes because the disk is full (ENOSPC).
    pub(crate) disk_full: AtomicBool,

    /// Delivery task → writer: the lowest `written_seq` at which the task wants waking
    /// (it raises it to `acked + batch_size` while a batch waits for its deadline, so
    /// the writer does not wake it once per round). See `Actor::run`.
    pub(crate) wake_at: CachePadded<AtomicU64>,
    /// Writer → delivery task: `written_seq` reached `wake_at` (or the writer stopped).
    pub(crate) data_ready: CachePadded<Notify>,
    /// Delivery task → blocked `push` callers: segments were deleted.
    pub(crate) room: CachePadded<Notify>,
}

impl Shared {
    pub(crate) fn new(metrics: Metrics, max_disk_bytes: u64, gaps: Vec<(u64, u64)>) -> Self {
        Self {
            metrics,
            max_disk_bytes,
            gaps,
            taken: CachePadded(AtomicU64::new(0)),
            disk_used: CachePadded(AtomicU64::new(0)),
            wal_segments: AtomicU64::new(0),
            written_seq: CachePadded(AtomicU64::new(0)),
            synced_seq: CachePadded(AtomicU64::new(0)),
            acked_seq: CachePadded(AtomicU64::new(0)),
            failed: AtomicBool::new(false),
            failure: OnceLock::new(),
            disk_full: AtomicBool::new(false),
            wake_at: CachePadded(AtomicU64::new(0)),
            data_ready: CachePadded(Notify::new()),
            room: CachePadded(Notify::new()),
        }
    }

    /// The event counters (`stats.rs`).
    pub(crate) fn counters(&self) -> &crate::stats::Counters {
        &self.metrics.counters
    }

    /// Records (not seqs) in `(acked, written]`: the seq distance less the gaps found at
    /// open that lie in between. Bounded by the number of gaps (one per crash whose
    /// segments are still on disk).
    pub(crate) fn records_between(&self, acked: u64, written: u64) -> u64 {
        let unused: u64 = self
            .gaps
            .iter()
            .map(|&(lo, hi)| {
                let (lo, hi) = (lo.max(acked.saturating_add(1)), hi.min(written));
                if lo <= hi { hi - lo + 1 } else { 0 }
            })
            .sum();
        written.saturating_sub(acked).saturating_sub(unused)
    }

    /// Reserves `bytes` of the disk budget; false if that would exceed it.
    pub(crate) fn try_reserve(&self, bytes: u64) -> bool {
        let before = self.disk_used.fetch_add(bytes, Ordering::AcqRel);
        if before.saturating_add(bytes) > self.max_disk_bytes {
            self.release(bytes);
            return false;
        }
        true
    }

    /// Reserves the bytes of the longest prefix of `sizes` that fits in the budget
    /// (with `all`, all of them or none); returns how many it reserved and their bytes.
    /// Unlike [`try_reserve`](Self::try_reserve) it never adds more than fits, not even
    /// for a moment, so a large batch cannot make a concurrent `try_push` see the
    /// budget as full when it is not.
    pub(crate) fn try_reserve_prefix(
        &self,
        sizes: impl Iterator<Item = u64> + Clone,
        all: bool,
    ) -> (usize, u64) {
        let mut used = self.disk_used.load(Ordering::Acquire);
        loop {
            let room = self.max_disk_bytes.saturating_sub(used);
            let (mut k, mut sum, mut fits_all) = (0usize, 0u64, true);
            for size in sizes.clone() {
                match sum.checked_add(size).filter(|s| *s <= room) {
                    Some(s) => {
                        sum = s;
                        k += 1;
                    }
                    None => {
                        fits_all = false;
                        break;
                    }
                }
            }
            if k == 0 || (all && !fits_all) {
                return (0, 0);
            }
            match self.disk_used.compare_exchange_weak(
                used,
                used + sum,
                Ordering::AcqRel,
                Ordering::Acquire,
            ) {
                Ok(_) => return (k, sum),
                Err(now) => used = now,
            }
        }
    }

    /// Returns `bytes` reserved and then not used to the disk budget, and wakes the
    /// pushes waiting for room (one of them may have looked while they were held).
    pub(crate) fn release_unused(&self, bytes: u64) {
        if bytes > 0 {
            self.release(bytes);
            self.room.notify_waiters();
        }
    }

    /// Returns `bytes` to the disk budget.
    pub(crate) fn release(&self, bytes: u64) {
        self.disk_used.fetch_sub(bytes, Ordering::AcqRel);
    }

    /// Records a sticky WAL failure (the first one wins) and wakes everybody.
    pub(crate) fn fail(&self, err: io::Error) -> Arc<io::Error> {
        let err = Arc::clone(self.failure.get_or_init(|| Arc::new(err)));
        self.failed.store(true, Ordering::Release);
        self.data_ready.notify_one();
        self.room.notify_waiters();
        err
    }

    /// The sticky failure, if any, as the error every later call gets.
    pub(crate) fn failure(&self) -> Option<SinkError> {
        if !self.failed.load(Ordering::Relaxed) {
            return None;
        }
        self.failure.get().map(|e| SinkError::Io(Arc::clone(e)))
    }

    /// Publishes a new `written_seq` (monotonic). The caller wakes the delivery task
    /// (`data_ready`) before it next waits: the writer defers that wake-up past the
    /// round's fsync, off the path of the callers waiting for it.
    pub(crate) fn publish_written(&self, seq: u64) {
        // SeqCst: pairs with the delivery task's store of `wake_at` then load of
        // `written_seq` (each side sees the other's store, so no wake-up is lost).
        let before = self.written_seq.swap(seq, Ordering::SeqCst);
        assert!(
            seq >= before,
            "invariant violation: written_seq moved back from {before} to {seq}"
        );
    }

    /// Whether the delivery task wants waking for `written_seq` as it is now.
    pub(crate) fn delivery_wants_wake(&self) -> bool {
        self.written_seq.load(Ordering::SeqCst) >= self.wake_at.load(Ordering::SeqCst)
    }

    /// Publishes a new `synced_seq` (monotonic, never above `written_seq`).
    pub(crate) fn publish_synced(&self, seq: u64) {
        let written = self.written_seq.load(Ordering::Acquire);
        assert!(
            seq <= written,
            "invariant violation: synced_seq {seq} above written_seq {written}"
        );
        self.synced_seq.fetch_max(seq, Ordering::AcqRel);
    }
}
