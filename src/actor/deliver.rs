//! Delivering one read batch to the drain.
//!
//! # Failures
//!
//! - `retryable`: the same records, decoded again from the frames read from the WAL,
//!   are delivered again after a full-jitter backoff. Forever: a batch is never skipped
//!   because a backend was down for long. Each retry is counted.
//! - `permanent`: the batch is split in halves, each delivered in order, until the
//!   rejected records are single; those are logged with their seq, counted in
//!   `rejected_total` and become dead letters. Depth is at most `log2(batch_size) + 1`.
//! - A record that passed its CRC but does not decode is logged, counted as corrupt and
//!   becomes a dead letter (no drain could accept it).
//!
//! # The settled prefix
//!
//! Ranges are delivered in seq order (the lower half of a split first), so when one
//! settles every good frame below its end has settled too. `deliver_frames` keeps
//! that count in `settled`; on `Interrupted` the caller moves the cursor through it,
//! so the halves the drain acknowledged before the shutdown deadline are not
//! delivered again.

use std::time::SystemTime;

use tokio::time::Instant;

use super::dead_letters::error_chain;
use super::{Actor, Interrupted};
use crate::dead_letter::DeadLetterReason;
use crate::deadline::sleep_until_opt;
use crate::drain::{Batch, DrainError, SinkDrain};
use crate::wal::reader::FrameBatch;
use crate::wal::writer::WriterExit;

/// A range of a batch still to deliver, with what its records went through already.
#[derive(Debug, Clone, Copy)]
struct Pending {
    lo: usize,
    hi: usize,
    /// `write_batch` calls that included these records so far.
    calls: u32,
    /// When the first of those failed.
    first_failed_at: Option<SystemTime>,
}

impl<T: Send + 'static, D: SinkDrain<T>> Actor<T, D> {
    /// Decodes frames `idx` into a batch.
    fn build(&self, frames: &FrameBatch, idx: &[usize]) -> Batch<T> {
        let mut seqs = Vec::with_capacity(idx.len());
        let mut items = Vec::with_capacity(idx.len());
        for &i in idx {
            // Decoded successfully once already (see `deliver_frames`); the codec is
            // deterministic, so a failure here is skipped the same way.
            if let Ok(v) = self.codec.decode(frames.payload(i)) {
                seqs.push(frames.seqs().get(i).copied().unwrap_or(0));
                items.push(v);
            }
        }
        Batch::new(seqs, items)
    }

    /// Delivers frames with retry and bisection (see the module doc).
    ///
    /// `settled` counts the leading frames that are done with: acknowledged by the drain
    /// or stored as dead letters. It is all of them on `Ok`; on `Interrupted` it is the
    /// prefix the cursor may still pass.
    pub(super) async fn deliver_frames(
        &mut self,
        frames: &FrameBatch,
        settled: &mut usize,
    ) -> Result<(), Interrupted> {
        let mut good = Vec::with_capacity(frames.len());
        let mut first_seqs = Vec::with_capacity(frames.len());
        let mut first_items = Vec::with_capacity(frames.len());
        for (i, &seq) in frames.seqs().iter().enumerate() {
            match self.codec.decode(frames.payload(i)) {
                Ok(v) => {
                    good.push(i);
                    first_seqs.push(seq);
                    first_items.push(v);
                }
                Err(e) => {
                    tracing::error!(seq, error = %e, "WAL record does not decode with this codec");
                    self.shared.counters().corrupt_records.add(1);
                    let payload = frames.payload(i).to_vec();
                    let meta = self.entry_meta(
                        DeadLetterReason::Undecodable,
                        seq,
                        error_chain(&e),
                        0,
                        None,
                    );
                    self.dead_letter(meta, payload).await?;
                    if good.is_empty() {
                        // Every frame so far was undecodable and is stored.
                        *settled = i + 1;
                    }
                }
            }
        }
        // Undecodable frames are all stored now: the prefix ends at the first frame
        // still to deliver.
        *settled = good.first().copied().unwrap_or(frames.len());
        // The first attempt delivers what was just decoded; retries and halves decode
        // again from the frames (records are not `Clone`).
        let mut first = Some(Batch::new(first_seqs, first_items));
        // Ranges of `good` still to deliver, in order (last pushed = next).
        let mut todo = vec![Pending {
            lo: 0,
            hi: good.len(),
            calls: 0,
            first_failed_at: None,
        }];
        // Ranges are taken in order (the lower half of a split is pushed last), so
        // when one settles, so has every good frame below its end: the settled prefix
        // then reaches the next good frame (undecodable ones are stored already).
        let settled_through = |hi: usize| good.get(hi).copied().unwrap_or(frames.len());
        while let Some(range) = todo.pop() {
            let Pending { lo, hi, .. } = range;
            let idx = good.get(lo..hi).unwrap_or_default();
            if idx.is_empty() {
                continue;
            }
            let mut attempt: u32 = 0;
            let mut calls = range.calls;
            let mut first_failed_at = range.first_failed_at;
            loop {
                let batch = match first.take() {
                    Some(b) => b,
                    None => self.build(frames, idx),
                };
                let replayed = batch
                    .seqs()
                    .iter()
                    .filter(|&&s| s <= self.replay_through)
                    .count() as u64;
                self.shared.counters().writes.add(1);
                calls = calls.saturating_add(1);
                let res = self.call_drain(batch).await?;
                if res.is_err() {
                    first_failed_at.get_or_insert_with(SystemTime::now);
                }
                match res {
                    Ok(()) => {
                        if replayed > 0 {
                            self.shared.counters().replayed.add(replayed);
                        }
                        *settled = settled_through(hi);
                        break;
                    }
                    Err(e) if e.is_retryable() => {
                        self.shared.counters().write_errors.add(1);
                        attempt = attempt.saturating_add(1);
                        let delay = self.jittered(attempt);
                        tracing::warn!(error = %e, attempt, ?delay, records = idx.len(), "drain failed (retryable); delivering again after backoff");
                        self.backoff(delay).await?;
                        self.shared.counters().retries.add(1);
                    }
                    Err(e) => {
                        self.shared.counters().write_errors.add(1);
                        if let [i] = *idx {
                            let seq = frames.seqs().get(i).copied().unwrap_or(0);
                            tracing::error!(seq, error = %e, "drain rejected record permanently");
                            self.shared.counters().rejected.add(1);
                            let payload = frames.payload(i).to_vec();
                            let meta = self.entry_meta(
                                DeadLetterReason::Rejected,
                                seq,
                                error_chain(&e),
                                calls,
                                first_failed_at,
                            );
                            self.dead_letter(meta, payload).await?;
                            *settled = settled_through(hi);
                        } else {
                            let mid = lo + (hi - lo) / 2;
                            let half = |lo, hi| Pending {
                                lo,
                                hi,
                                calls,
                                first_failed_at,
                            };
                            todo.push(half(mid, hi));
                            todo.push(half(lo, mid));
                        }
                        break;
                    }
                }
            }
        }
        debug_assert_eq!(*settled, frames.len(), "every frame settled");
        Ok(())
    }

    /// One `write_batch`, watching for shutdown and its deadline.
    async fn call_drain(&mut self, batch: Batch<T>) -> Result<Result<(), DrainError>, Interrupted> {
        let fut = self.drain.write_batch(batch);
        tokio::pin!(fut);
        loop {
            tokio::select! {
                biased;
                res = &mut fut => return Ok(res),
                () = self.shutdown.cancelled(), if self.stop_at.is_none() => {
                    if self.stop_at.is_none() {
                        self.stop_at = Some(Instant::now() + self.shutdown_timeout);
                    }
                }
                // Every sink handle dropped (or the writer failed) while the drain
                // hangs: shutdown begins here too, or `join` would wait forever.
                // (Fields, not `writer_ended`: `fut` borrows the drain.)
                res = &mut self.writer_exit, if self.writer_result.is_none() => {
                    self.writer_result = Some(res.unwrap_or_else(|_| {
                        WriterExit::Panicked("the writer thread ended without a result".into())
                    }));
                    if self.stop_at.is_none() {
                        self.stop_at = Some(Instant::now() + self.shutdown_timeout);
                    }
                }
                () = sleep_until_opt(self.stop_at) => return Err(Interrupted),
            }
        }
    }
}
