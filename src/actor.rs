//! The delivery task: reads records back from the WAL, batches them to the drain,
//! retries, isolates poison, answers `flush`, advances the cursor, shuts down.
//!
//! # Batching
//!
//! The task delivers as soon as `batch_size` records are written, or when the first
//! undelivered record has waited `flush_interval`, or at once when a `flush` waits,
//! recovered records are being replayed, or shutdown has begun. It sleeps only on three
//! wake-ups: the writer's `data_ready` notification (a permit is stored if it fires while
//! the task is busy, so no wake-up is lost), the batch deadline, and control messages.
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
//! # Dead letters
//!
//! With `DeadLetterPolicy::Keep`, a dead letter is stored (and fsynced) in the
//! dead-letter store *before* the cursor may pass its record: the cursor advances only
//! after `deliver_frames` returns, and that waits for the store. If storing fails, the
//! task retries after backoff and the cursor waits (every `flush` waiting meanwhile is
//! answered with the store's error rather than left hanging on a disk that may not
//! recover, except for a full disk, which holds flushes until space is freed, as it
//! holds the writer); at the shutdown deadline it gives up with the cursor still below the
//! record, which is delivered again next run. The
//! store keeps one entry per original seq, so that replay stores nothing twice. A full
//! store refuses (logged with the seq, counted) and the record is skipped: delivery
//! never stalls on the store's cap. With `Discard`, the record is logged and skipped.
//!
//! # File I/O
//!
//! Reading segments, writing the cursor and deleting segments are blocking file
//! operations, run on the blocking pool (`spawn_blocking`), so they never stall the
//! application's runtime workers. A batch takes two such calls, a read and a cursor
//! write, except when the delivery is behind: if the next batch is already due when
//! the cursor is written (a full batch waiting, replay, shutdown, a `flush` beyond
//! this batch), the cursor call reads it too, after the write, and the next delivery
//! starts from it. Not when the cursor answers a waiting `flush` (its answer would
//! wait for the read) and not when the cursor did not move (a stall backs off first).
//!
//! # Shutdown
//!
//! On cancellation (or when the writer stops because every sink handle was dropped),
//! the task keeps delivering until everything written is acknowledged or
//! `shutdown_timeout` has passed (an in-flight `write_batch` is abandoned at that
//! point; its records stay on disk). The cursor first moves past whatever the
//! interrupted batch had settled: the halves of a split batch the drain acknowledged
//! and the dead letters stored, in seq order up to the first record still open, so
//! that a graceful restart delivers none of them again. Then it makes the cursor
//! durable, calls `drain.close()`, and answers unfinished `flush` calls with `Closed`.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, SystemTime};

use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::deadline::sleep_until_opt;

use crate::codec::Codec;
use crate::config::RetryPolicy;
use crate::dead_letter::{
    Appended, DeadLetterPolicy, DeadLetterReason, DeadLetterStore, EntryMeta,
};
use crate::drain::{Batch, DrainError, SinkDrain};
use crate::error::SinkError;
use crate::handle::ShutdownReport;
use crate::shared::Shared;
use crate::wal::cursor::Cursor;
use crate::wal::reader::{FrameBatch, WalReader};
use crate::wal::writer::{FlushRequest, WriterExit};

/// A batch is cut once its payloads reach this many bytes (so it holds at most this
/// plus one record), bounding memory whatever `batch_size` is.
pub(crate) const BATCH_BYTES_SOFT_LIMIT: usize = 8 << 20;

/// Everything the task starts from.
pub(crate) struct ActorInit<T, D> {
    pub(crate) drain: D,
    pub(crate) codec: Arc<dyn Codec<T>>,
    pub(crate) dead_letters: DeadLetterStore,
    pub(crate) dead_letter_policy: DeadLetterPolicy,
    pub(crate) reader: WalReader,
    pub(crate) cursor: Cursor,
    pub(crate) shared: Arc<Shared>,
    pub(crate) flushes: mpsc::UnboundedReceiver<FlushRequest>,
    pub(crate) writer_exit: oneshot::Receiver<WriterExit>,
    pub(crate) shutdown: CancellationToken,
    pub(crate) stop_writer: CancellationToken,
    pub(crate) replay_through: u64,
    pub(crate) batch_size: usize,
    pub(crate) flush_interval: Duration,
    pub(crate) retry: RetryPolicy,
    pub(crate) shutdown_timeout: Duration,
}

/// What one read of the WAL returns: the frames and how many were lost to damage.
type ReadResult = std::io::Result<(FrameBatch, u64)>;

/// WAL-side state moved into `spawn_blocking` for each delivery.
struct Wal {
    reader: WalReader,
    cursor: Cursor,
}

/// The delivery stopped because shutdown's deadline passed.
struct Interrupted;

/// The sink's dead-letter store; releases the directory lock it holds when the task
/// ends, however it ends (panic included).
struct DeadLetters {
    store: DeadLetterStore,
    policy: DeadLetterPolicy,
    /// A dead letter was stored since the cursor was last made durable: the next
    /// cursor advance fsyncs, so that purging it cannot be undone by a replay.
    stored: bool,
}

impl Drop for DeadLetters {
    fn drop(&mut self) {
        self.store.release();
    }
}

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

/// `e` and its sources, `a: b: c` (a source already in the text is not repeated).
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut next = e.source();
    while let Some(s) = next {
        let t = s.to_string();
        if !out.ends_with(&t) {
            out.push_str(": ");
            out.push_str(&t);
        }
        next = s.source();
    }
    out
}

pub(crate) struct Actor<T, D> {
    drain: D,
    codec: Arc<dyn Codec<T>>,
    dead_letters: DeadLetters,
    wal: Option<Wal>,
    shared: Arc<Shared>,
    flushes: mpsc::UnboundedReceiver<FlushRequest>,
    flushes_open: bool,
    waiting: Vec<FlushRequest>,
    writer_exit: oneshot::Receiver<WriterExit>,
    writer_result: Option<WriterExit>,
    shutdown: CancellationToken,
    /// Cancelled when this task ends, however it ends (panic included): stops the writer.
    _stop_writer: tokio_util::sync::DropGuard,
    replay_through: u64,
    batch_size: usize,
    flush_interval: Duration,
    retry: RetryPolicy,
    shutdown_timeout: Duration,
    /// Set once shutdown has begun: deliver until then.
    stop_at: Option<Instant>,
    /// Every record at or below this is acknowledged (the cursor's in-memory value).
    acked_through: u64,
    /// The next batch, read in the same blocking call that wrote the cursor because
    /// it was already due then (see `advance_cursor`); delivered before any new read.
    read_ahead: Option<ReadResult>,
    rng: SplitMix64,
}

impl<T: Send + 'static, D: SinkDrain<T>> Actor<T, D> {
    pub(crate) fn new(init: ActorInit<T, D>) -> Self {
        let acked_through = init.cursor.acked();
        init.dead_letters.set_durable_cursor(init.cursor.durable());
        Self {
            drain: init.drain,
            codec: init.codec,
            dead_letters: DeadLetters {
                store: init.dead_letters,
                policy: init.dead_letter_policy,
                stored: false,
            },
            wal: Some(Wal {
                reader: init.reader,
                cursor: init.cursor,
            }),
            shared: init.shared,
            flushes: init.flushes,
            flushes_open: true,
            waiting: Vec::new(),
            writer_exit: init.writer_exit,
            writer_result: None,
            shutdown: init.shutdown,
            _stop_writer: init.stop_writer.drop_guard(),
            replay_through: init.replay_through,
            batch_size: init.batch_size,
            flush_interval: init.flush_interval,
            retry: init.retry,
            shutdown_timeout: init.shutdown_timeout,
            stop_at: None,
            acked_through,
            read_ahead: None,
            rng: SplitMix64::from_entropy(),
        }
    }

    /// The writer thread ended (every sink handle dropped, shutdown, or a failure):
    /// keep its result for `finish` and begin the shutdown.
    fn writer_ended(&mut self, res: Result<WriterExit, oneshot::error::RecvError>) {
        self.writer_result = Some(res.unwrap_or_else(|_| {
            WriterExit::Panicked("the writer thread ended without a result".into())
        }));
        self.begin_stop();
    }

    fn begin_stop(&mut self) {
        if self.stop_at.is_none() {
            self.stop_at = Some(Instant::now() + self.shutdown_timeout);
        }
    }

    fn answer_flushes(&mut self) {
        let acked = self.acked_through;
        let (done, keep): (Vec<_>, Vec<_>) = std::mem::take(&mut self.waiting)
            .into_iter()
            .partition(|w| w.target <= acked);
        self.waiting = keep;
        for w in done {
            let _ = w.done.send(Ok(()));
        }
    }

    /// The task. The one loop of the delivery side that ends only at shutdown.
    pub(crate) async fn run(mut self) -> Result<ShutdownReport, SinkError> {
        let mut batch_deadline: Option<Instant> = None;
        let mut stalls: u32 = 0;
        loop {
            while let Ok(req) = self.flushes.try_recv() {
                self.waiting.push(req);
            }
            self.answer_flushes();
            let written = self.shared.written_seq.load(Ordering::Acquire);
            let backlog = written.saturating_sub(self.acked_through);
            let now = Instant::now();
            if let Some(stop_at) = self.stop_at
                && ((backlog == 0 && self.writer_result.is_some()) || now >= stop_at)
            {
                break;
            }
            if backlog > 0 {
                let urgent = self.read_ahead.is_some() || self.due_now(self.acked_through, written);
                let deadline = *batch_deadline.get_or_insert(now + self.flush_interval);
                if urgent || now >= deadline {
                    batch_deadline = None;
                    let before = self.acked_through;
                    match self.deliver_next(written).await {
                        Ok(()) if self.acked_through > before => stalls = 0,
                        Ok(()) => {
                            // Nothing readable below `written_seq` and no progress: a
                            // damaged or missing file. Back off instead of spinning.
                            stalls = stalls.saturating_add(1);
                            self.pause(stalls).await;
                        }
                        Err(Interrupted) => break,
                    }
                    continue;
                }
            }
            // Ask the writer to wake this task only when it would act: at the first
            // new record when idle (to start the batch deadline), else when the
            // backlog reaches `batch_size`. Store, then re-check (both SeqCst, paired
            // with the writer's publish-then-check): a record written in between is
            // seen here, or the writer sees the new `wake_at` and notifies.
            let wake_at = if backlog == 0 {
                self.acked_through.saturating_add(1)
            } else {
                self.acked_through.saturating_add(self.batch_size as u64)
            };
            self.shared.wake_at.store(wake_at, Ordering::SeqCst);
            if self.shared.written_seq.load(Ordering::SeqCst) >= wake_at {
                continue;
            }
            let sleep_until = [batch_deadline, self.stop_at].into_iter().flatten().min();
            tokio::select! {
                biased;
                () = self.shutdown.cancelled(), if self.stop_at.is_none() => self.begin_stop(),
                res = &mut self.writer_exit, if self.writer_result.is_none() => {
                    self.writer_ended(res);
                }
                req = self.flushes.recv(), if self.flushes_open => match req {
                    Some(req) => self.waiting.push(req),
                    None => self.flushes_open = false,
                },
                () = self.shared.data_ready.notified() => {}
                () = sleep_until_opt(sleep_until) => {}
            }
        }
        self.finish().await
    }

    /// Whether records written through `written` must be delivered now, without
    /// waiting for the batch deadline, once everything through `acked` is acknowledged:
    /// a full batch is waiting, shutdown has begun, recovered records are being
    /// replayed, or a `flush` waits for them.
    fn due_now(&self, acked: u64, written: u64) -> bool {
        let backlog = written.saturating_sub(acked);
        backlog > 0
            && (backlog >= self.batch_size as u64
                || self.stop_at.is_some()
                || acked < self.replay_through
                || self.waiting.iter().any(|w| w.target > acked))
    }

    /// Runs blocking WAL I/O on the blocking pool, handing the WAL state there and
    /// back. A panic inside (an invariant violation) is re-raised here and ends the
    /// task; `None` if the runtime is shutting down.
    async fn on_wal<R: Send + 'static>(
        &mut self,
        f: impl FnOnce(&mut Wal) -> R + Send + 'static,
    ) -> Option<R> {
        let mut wal = self.wal.take()?;
        let joined = tokio::task::spawn_blocking(move || {
            let r = f(&mut wal);
            (wal, r)
        })
        .await;
        match joined {
            Ok((wal, r)) => {
                self.wal = Some(wal);
                Some(r)
            }
            Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
            Err(_) => None,
        }
    }

    /// Reads the next batch from the WAL, delivers it, advances the cursor.
    async fn deliver_next(&mut self, written: u64) -> Result<(), Interrupted> {
        let (max_records, max_bytes) = (self.batch_size, BATCH_BYTES_SOFT_LIMIT);
        let res = match self.read_ahead.take() {
            Some(res) => res,
            None => match self
                .on_wal(move |wal| wal.reader.read_batch(written, max_records, max_bytes))
                .await
            {
                Some(res) => res,
                None => return Err(Interrupted),
            },
        };
        let (frames, lost) = match res {
            Ok(v) => v,
            Err(e) => {
                tracing::error!(error = %e, "reading the WAL failed; retrying after backoff");
                return Ok(());
            }
        };
        if lost > 0 {
            self.shared.counters().corrupt_records.add(lost);
        }
        if !frames.is_empty() {
            let mut settled = 0;
            if let Err(Interrupted) = self.deliver_frames(&frames, &mut settled).await {
                // What the drain acknowledged (or the dead-letter store took) before the
                // deadline stays acknowledged: move the cursor past that prefix before
                // `finish` makes it durable, or the next open delivers it again.
                let through = settled
                    .checked_sub(1)
                    .and_then(|i| frames.seqs().get(i).copied());
                if let Some(through) = through.filter(|&t| t > self.acked_through) {
                    self.advance_cursor(through, false).await;
                }
                return Err(Interrupted);
            }
        }
        // Freed before a read ahead fills the next batch: one batch in memory at a time.
        drop(frames);
        let through = self
            .wal
            .as_ref()
            .map_or(self.acked_through, |w| w.reader.position() - 1);
        self.advance_cursor(through, true).await;
        Ok(())
    }

    /// Writes the cursor through `through` (the drain acknowledged everything up to
    /// it). With `may_read_next` (the reader stands just past `through`), if the next
    /// batch is already due, the same blocking call then reads it (kept in
    /// `read_ahead`): one round trip to the blocking pool a batch instead of two while
    /// the delivery is behind. The cursor is written first, exactly when it would be
    /// without the read. No read ahead when this call answers a `flush` (the answer
    /// would wait for the read) or moves nothing (a stall: the read would come before
    /// the backoff and return stale).
    async fn advance_cursor(&mut self, through: u64, may_read_next: bool) {
        // After storing dead letters, make the cursor durable at once: until it is,
        // a power loss could replay their records, and a purge in between be undone.
        let persist = std::mem::take(&mut self.dead_letters.stored);
        let written = self.shared.written_seq.load(Ordering::Acquire);
        while let Ok(req) = self.flushes.try_recv() {
            self.waiting.push(req);
        }
        let read_next = (may_read_next
            && through > self.acked_through
            && !self.waiting.iter().any(|w| w.target <= through)
            && self.due_now(through, written))
        .then_some(written);
        let (max_records, max_bytes) = (self.batch_size, BATCH_BYTES_SOFT_LIMIT);
        let Some((res, durable, ahead)) = self
            .on_wal(move |wal| {
                let res = wal.cursor.advance(through).and_then(|()| {
                    if persist {
                        wal.cursor.persist()
                    } else {
                        Ok(())
                    }
                });
                let durable = wal.cursor.durable();
                let ahead = read_next.map(|w| wal.reader.read_batch(w, max_records, max_bytes));
                (res, durable, ahead)
            })
            .await
        else {
            return;
        };
        self.read_ahead = ahead;
        self.dead_letters.store.set_durable_cursor(durable);
        if let Err(e) = res {
            // The acknowledgement stands in memory; the cursor file catches up on the
            // next advance. A crash meanwhile costs duplicates, not loss.
            tracing::error!(error = %e, through, "persisting the WAL cursor failed");
            self.dead_letters.stored |= persist;
        }
        assert!(
            through >= self.acked_through,
            "invariant violation: acked_through moving back from {} to {through}",
            self.acked_through
        );
        self.acked_through = through;
        let written = self.shared.written_seq.load(Ordering::Acquire);
        assert!(
            through <= written,
            "invariant violation: acked {through} above written {written}"
        );
        self.shared.acked_seq.store(through, Ordering::Release);
        let m = &self.shared.metrics;
        m.acked_seq.set(through as f64);
        m.wal_bytes
            .set(self.shared.disk_used.load(Ordering::Relaxed) as f64);
        m.wal_segments
            .set(self.shared.wal_segments.load(Ordering::Relaxed) as f64);
        m.pending
            .set(self.shared.records_between(through, written) as f64);
        self.answer_flushes();
    }

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
    async fn deliver_frames(
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

    /// Waits `delay` (or until the shutdown deadline: `Interrupted`). With `failure`,
    /// delivery cannot move: every flush waiting now or arriving meanwhile is answered
    /// with it instead of waiting for a store that may not recover (a disk whose fsyncs
    /// fail).
    async fn backoff_failing_flushes(
        &mut self,
        delay: Duration,
        failure: Option<&SinkError>,
    ) -> Result<(), Interrupted> {
        if let Some(failure) = failure {
            // Flushes already satisfied get their `Ok` first.
            self.answer_flushes();
            for w in std::mem::take(&mut self.waiting) {
                let _ = w.done.send(Err(failure.clone()));
            }
        }
        let wake = Instant::now() + delay;
        loop {
            tokio::select! {
                biased;
                () = self.shutdown.cancelled(), if self.stop_at.is_none() => self.begin_stop(),
                res = &mut self.writer_exit, if self.writer_result.is_none() => {
                    self.writer_ended(res);
                }
                () = sleep_until_opt(self.stop_at) => return Err(Interrupted),
                req = self.flushes.recv(), if failure.is_some() && self.flushes_open => match (req, failure) {
                    (Some(req), Some(failure)) => {
                        let _ = req.done.send(Err(failure.clone()));
                    }
                    (Some(req), None) => self.waiting.push(req),
                    (None, _) => self.flushes_open = false,
                },
                () = tokio::time::sleep_until(wake) => return Ok(()),
            }
        }
    }

    async fn backoff(&mut self, delay: Duration) -> Result<(), Interrupted> {
        self.backoff_failing_flushes(delay, None).await
    }

    fn entry_meta(
        &self,
        reason: DeadLetterReason,
        seq: u64,
        error: String,
        attempts: u32,
        first_failed_at: Option<SystemTime>,
    ) -> EntryMeta {
        let now = SystemTime::now();
        EntryMeta {
            reason,
            attempts,
            seq,
            first_failed_at: first_failed_at.unwrap_or(now),
            dead_lettered_at: now,
            error,
        }
    }

    /// Keeps a dead letter (see "Dead letters" in the module doc): returns once it is
    /// durable in the store, refused by a full store, or discarded by policy. Retries
    /// a failing store after backoff; `Interrupted` at the shutdown deadline, with the
    /// cursor still below the record.
    async fn dead_letter(&mut self, meta: EntryMeta, payload: Vec<u8>) -> Result<(), Interrupted> {
        let seq = meta.seq;
        if self.dead_letters.policy == DeadLetterPolicy::Discard {
            tracing::error!(seq, reason = %meta.reason, "record discarded (dead-letter policy Discard)");
            return Ok(());
        }
        let entry = Arc::new((meta, payload));
        let mut attempt: u32 = 0;
        loop {
            let store = self.dead_letters.store.clone();
            let e = Arc::clone(&entry);
            match tokio::task::spawn_blocking(move || store.append(&e.0, &e.1)).await {
                Ok(Ok(Appended::Stored)) => {
                    crate::crashpoint::hit("dead_letter.after_store");
                    self.dead_letters.stored = true;
                    tracing::warn!(seq, reason = %entry.0.reason, "record kept as a dead letter");
                    self.shared.counters().dead_lettered.add(1);
                    self.shared
                        .metrics
                        .dead_letter_bytes
                        .set(self.dead_letters.store.bytes() as f64);
                    return Ok(());
                }
                Ok(Ok(Appended::AlreadyStored)) => {
                    // A replay after a crash between storing it and the durable cursor.
                    tracing::info!(
                        seq,
                        "dead letter already stored (a delivery repeated after a crash)"
                    );
                    self.dead_letters.stored = true;
                    return Ok(());
                }
                Ok(Ok(Appended::Full)) => {
                    tracing::error!(seq, reason = %entry.0.reason, "dead-letter store full (max_dead_letter_bytes); record skipped");
                    self.shared.counters().dead_letters_refused.add(1);
                    return Ok(());
                }
                Ok(Ok(Appended::TooLarge)) => {
                    tracing::error!(seq, reason = %entry.0.reason, bytes = entry.1.len(), "dead letter larger than a frame may be; record skipped");
                    self.shared.counters().dead_letters_refused.add(1);
                    return Ok(());
                }
                Ok(Err(e)) => {
                    tracing::error!(seq, error = %e, "storing a dead letter failed; retrying after backoff (the cursor waits)");
                    let failure = SinkError::Io(Arc::new(std::io::Error::new(
                        e.kind(),
                        format!(
                            "storing the dead letter of seq {seq} failed (retried; the record stays in the WAL): {e}"
                        ),
                    )));
                    attempt = attempt.saturating_add(1);
                    let delay = self.jittered(attempt);
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::StorageFull | std::io::ErrorKind::QuotaExceeded
                    ) {
                        // A full disk holds delivery until space is freed, as it holds
                        // the writer: flushes wait for it.
                        self.backoff(delay).await?;
                    } else {
                        self.backoff_failing_flushes(delay, Some(&failure)).await?;
                    }
                }
                Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
                Err(_) => return Err(Interrupted),
            }
        }
    }

    async fn pause(&mut self, attempt: u32) {
        let delay = self.retry.delay_cap(attempt);
        let _ = self.backoff(delay).await;
    }

    fn jittered(&mut self, attempt: u32) -> Duration {
        let cap = self.retry.delay_cap(attempt);
        let nanos = u64::try_from(cap.as_nanos()).unwrap_or(u64::MAX);
        Duration::from_nanos(if nanos == 0 {
            0
        } else {
            self.rng.next() % (nanos + 1)
        })
    }

    async fn finish(mut self) -> Result<ShutdownReport, SinkError> {
        // Make the cursor durable, so a restart does not replay what was acknowledged.
        if let Some(Err(e)) = self.on_wal(|wal| wal.cursor.persist()).await {
            tracing::error!(error = %e, "persisting the WAL cursor at shutdown failed; acknowledged records may be delivered again");
        }
        // `close` gets what is left of `shutdown_timeout` (a drain that never finishes
        // closing must not hang shutdown); it is polled once even when nothing is left.
        let close_by = self
            .stop_at
            .unwrap_or_else(|| Instant::now() + self.shutdown_timeout);
        let close_error = match tokio::time::timeout_at(close_by, self.drain.close()).await {
            Ok(Ok(())) => None,
            Ok(Err(e)) => {
                tracing::warn!(error = %e, "drain close failed");
                Some(e.to_string())
            }
            Err(_) => {
                tracing::warn!(timeout = ?self.shutdown_timeout, "drain close did not finish within the shutdown timeout; abandoned");
                Some(format!(
                    "drain close timed out (shutdown_timeout {:?})",
                    self.shutdown_timeout
                ))
            }
        };
        self.answer_flushes();
        for w in self.waiting.drain(..) {
            let _ = w.done.send(Err(SinkError::Closed));
        }
        // Stop the writer (if only the delivery side was asked to stop) and wait for
        // its final sync.
        drop(self._stop_writer);
        let writer = match self.writer_result.take() {
            Some(r) => r,
            None => (&mut self.writer_exit).await.unwrap_or_else(|_| {
                WriterExit::Panicked("the writer thread ended without a result".into())
            }),
        };
        let written = self.shared.written_seq.load(Ordering::Acquire);
        let report = ShutdownReport {
            acked_seq: self.acked_through,
            written_seq: written,
            synced_seq: self.shared.synced_seq.load(Ordering::Acquire),
            left_on_disk: self.shared.records_between(self.acked_through, written),
            drain_close_error: close_error,
        };
        match writer {
            WriterExit::Clean => Ok(report),
            WriterExit::Failed(e) => Err(SinkError::Io(e)),
            WriterExit::Panicked(msg) => Err(SinkError::Internal(format!(
                "the WAL writer thread panicked: {msg}"
            ))),
        }
    }
}

/// A small PRNG for backoff jitter (SplitMix64): no dependency, no lock, good enough to
/// spread retries; not for anything secret.
#[derive(Debug)]
pub(crate) struct SplitMix64(pub(crate) u64);

impl SplitMix64 {
    pub(crate) fn from_entropy() -> Self {
        use std::hash::{BuildHasher, RandomState};
        Self(RandomState::new().hash_one(std::time::SystemTime::now()))
    }
    pub(crate) fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
}
