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
//! # Where the rest lives
//!
//! - [`deliver`]: one read batch to the drain: decoding, retry, bisection around
//!   rejected records, the settled prefix an interrupted batch keeps.
//! - [`dead_letters`]: storing a dead letter before the cursor may pass its record.
//! - [`backoff`]: the waits between attempts, and what `flush` callers get meanwhile.
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

mod backoff;
mod dead_letters;
mod deliver;

pub(crate) use backoff::SplitMix64;
use dead_letters::DeadLetters;

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::deadline::sleep_until_opt;

use crate::codec::Codec;
use crate::config::RetryPolicy;
use crate::dead_letter::{DeadLetterPolicy, DeadLetterStore};
use crate::drain::SinkDrain;
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
