//! The WAL writer: assigns seqs, appends frames, rolls segments, group-commits fsyncs.
//!
//! It runs on its own OS thread (`walsink-writer`) with a current-thread tokio runtime
//! used only for waiting (the queue, the sync timer, cancellation). Its file I/O
//! and fsyncs are plain blocking calls on that thread, so they never stall a worker of
//! the application's runtime, and a slow fsync delays only this sink's writes. A
//! dedicated thread (rather than `spawn_blocking` per batch) keeps one thread hot,
//! keeps the write position in one owner, and costs no hand-off per batch.
//!
//! # One round
//!
//! 1. Take every queued message at once (chunk pointers moved under the queue's
//!    lock; see [`crate::inbox`]), so a round holds at most `queue_capacity` messages.
//! 2. Frame each record into the write buffer under the next seq; roll first if the
//!    frame would push the segment past `segment_bytes` (and the segment holds a frame).
//! 3. Write the buffer with one `pwrite` and publish `written_seq`.
//! 4. If anyone in the round waits for durability, or the mode asks for it, one
//!    fdatasync covers them all (group commit, see [`thread`]); then answer the
//!    waiters.
//! 5. Wake the delivery task, if `written_seq` reached the threshold it asked for
//!    (`Shared::wake_at`): after the fsync, so the wake-up is off the waiters' path.
//!
//! # Full disk
//!
//! ENOSPC (or EDQUOT) from a *write* is recoverable: the writer cuts the file back to
//! its last complete frame, keeps the unwritten frames and the messages it has not
//! processed, and stops taking new ones, so the queue fills: `try_push` reports
//! `Overflow` and `push` waits. It retries with backoff (10 ms doubling to 1 s) until
//! space is freed, typically by the drain acknowledging segments that are then
//! deleted. No record accepted is dropped and no waiter is answered before its data
//! is written and synced. If shutdown comes while the disk is still full, the writer
//! gives up: the unwritten records are lost and their waiters get the error.
//!
//! # Failure
//!
//! Every other write error, and every fsync error (ENOSPC included: at fsync time it
//! means writeback failed), is sticky ([`Shared::fail`]). The writer answers every
//! later message with it, never retries an fsync (after a failed fsync the page cache
//! may have dropped the dirty pages, so a second fsync "succeeding" proves nothing),
//! and never reports durability again. Records queued behind the failure are not
//! written.

use std::collections::VecDeque;
use std::io;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use tokio::time::Instant;

use super::format::{MAX_SEQ, SEGMENT_HEADER_BYTES, SegmentHeader, encode_frame, frame_bytes};
use super::prefill::Prefill;
use super::register::Register;
use super::segment::{SegmentInfo, SegmentSet, create_segment, segment_path};
use super::storage::{LockGuard, Storage, StorageFile};
use crate::error::SinkError;
use crate::shared::Shared;

mod message;
mod round;
mod thread;

pub(crate) use message::{DoneReply, DurableReply, FlushRequest, WriterMsg};
pub(crate) use thread::{WriterExit, panic_message, spawn_writer};

/// The write buffer is written out when it reaches this size, so one round never
/// holds more than about this much plus one frame.
pub(crate) const WRITE_BUF_BYTES: usize = 1 << 20;
/// Seqs reserved per lease renewal: three fsyncs (the active segment, then each lease
/// slot) per this many records.
#[cfg(not(test))]
pub(crate) const LEASE_BLOCK: u64 = 1 << 20;
/// Small in unit tests, so that the model and fault tests renew the lease (and jump
/// after crashes) every few dozen records instead of once per million.
#[cfg(test)]
pub(crate) const LEASE_BLOCK: u64 = 1 << 6;
/// First and largest pause between write attempts while the disk is full.
const NO_SPACE_RETRY_FIRST: Duration = Duration::from_millis(10);
const NO_SPACE_RETRY_MAX: Duration = Duration::from_secs(1);

/// When the writer fsyncs on its own (it always does on request: `sync`,
/// `push_durable`, rollover, shutdown). The log's own type: the user-facing
/// [`Durability`](crate::Durability) maps onto it at open.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum SyncPolicy {
    /// At the end of every round that wrote something (group commit).
    EveryRound,
    /// Within this long of the oldest unsynced write.
    Within(Duration),
    /// Never on its own.
    OnRequest,
}

/// The log as the writer holds it: where it writes (the active segment, its length,
/// the next seq), the lease it hands seqs out under, and what it needs to roll and sync.
/// Produced by recovery; the writer keeps it current.
#[derive(Debug)]
pub(crate) struct WriterLog {
    pub(crate) storage: Arc<dyn Storage>,
    pub(crate) dir: PathBuf,
    pub(crate) codec_id: u32,
    pub(crate) segment_bytes: u64,
    pub(crate) sync_policy: SyncPolicy,
    pub(crate) segments: Arc<Mutex<SegmentSet>>,
    pub(crate) shared: Arc<Shared>,
    pub(crate) active: Box<dyn StorageFile>,
    pub(crate) active_first_seq: u64,
    pub(crate) active_len: u64,
    pub(crate) next_seq: u64,
    pub(crate) lease: Register,
    /// Zero-fill the active segment ahead of the writer ([`super::prefill`]).
    pub(crate) prefill: bool,
    /// The directory lock, held (with the cursor's clone) while anything may write.
    #[allow(dead_code, reason = "held for its drop, never read")]
    pub(crate) lock: Arc<dyn LockGuard>,
}

/// Why a write path stopped.
#[derive(Debug)]
enum Stop {
    /// The disk is full; nothing partial was left behind; retry later.
    NoSpace(io::Error),
    /// Anything else: sticky failure.
    Fatal(io::Error),
}

/// A queued payload that is not in the arena of its take: a bug in this crate. The
/// sink fails (sticky) instead of writing other bytes under the record's seq.
fn missing_payload() -> Stop {
    Stop::Fatal(io::Error::other(
        "internal error: a queued record's bytes are missing from the queue arena",
    ))
}

fn is_no_space(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::StorageFull | io::ErrorKind::QuotaExceeded
    )
}

impl From<io::Error> for Stop {
    fn from(e: io::Error) -> Self {
        Stop::Fatal(e)
    }
}

/// Whether processing finished or must wait for disk space.
#[derive(Debug, PartialEq, Eq)]
enum Progress {
    Done,
    Stalled,
}

/// The writer's state. See the module doc.
#[derive(Debug)]
pub(crate) struct WalWriter {
    /// Declared first, so dropped first: its thread is joined before `log` releases
    /// the directory lock.
    prefill: Option<Prefill>,
    log: WriterLog,
    buf: Vec<u8>,
    /// Written bytes not yet covered by an fsync.
    unsynced: bool,
    /// When the oldest unsynced write happened (for `SyncPolicy::Within`).
    unsynced_since: Option<Instant>,
    /// `written_seq` moved and the delivery task has not been woken for it yet.
    wake_pending: bool,
    /// Waiters (`push_durable`, `sync`) answered by the last synced round: callers
    /// likely to come back with the next one (see [`gather`](Self::gather)).
    expected_waiters: usize,
    /// Moving average of fsync durations (1/8 weight per sample).
    fsync_avg: Duration,
    /// Records handled (written or refused) but not yet added to `Shared::taken`.
    untallied: u64,
    failed: Option<Arc<io::Error>>,
    /// Messages taken from the queue but not yet processed (kept while the disk is full).
    held: VecDeque<WriterMsg>,
    /// `push_durable` callers waiting for their records to be synced.
    waiting_durable: Vec<(u64, DurableReply)>,
    /// `sync` callers waiting.
    waiting_sync: Vec<DoneReply>,
}

impl WalWriter {
    pub(crate) fn new(log: WriterLog) -> Self {
        let prefill = if log.prefill { Prefill::spawn() } else { None };
        if let Some(p) = &prefill {
            p.start(
                log.storage.as_ref(),
                segment_path(&log.dir, log.active_first_seq),
                log.active_len,
            );
        }
        Self {
            prefill,
            log,
            buf: Vec::with_capacity(WRITE_BUF_BYTES),
            unsynced: false,
            unsynced_since: None,
            wake_pending: false,
            expected_waiters: 0,
            fsync_avg: Duration::ZERO,
            untallied: 0,
            failed: None,
            held: VecDeque::new(),
            waiting_durable: Vec::new(),
            waiting_sync: Vec::new(),
        }
    }

    fn last_seq(&self) -> u64 {
        self.log.next_seq - 1
    }

    /// Frames one record into the buffer (rolling first if needed); returns its seq.
    fn append(&mut self, payload: &[u8]) -> Result<u64, Stop> {
        if self.log.next_seq > MAX_SEQ {
            // Fail closed: a frame above the seq space would be written, confirmed and
            // then refused by every reader as damage.
            return Err(Stop::Fatal(io::Error::other(format!(
                "the seq space is exhausted (next seq {} above {MAX_SEQ})",
                self.log.next_seq
            ))));
        }
        let frame = frame_bytes(payload.len());
        let used = self.log.active_len + self.buf.len() as u64;
        if used > SEGMENT_HEADER_BYTES as u64 && used + frame > self.log.segment_bytes {
            self.roll()?;
        }
        let seq = self.log.next_seq;
        if seq >= self.log.lease.value() {
            // Sync what is written first: should the lease file ever be lost, the next
            // open continues a lease block past the last frame it finds, and only a
            // synced frame is sure to be found. Once per lease block of records.
            self.sync()?;
            // fsync the lease before handing out seqs above it: after a power loss the
            // next open starts at the lease, above every seq that may have been
            // delivered, so a seq is never reused for another record.
            self.log
                .lease
                .write_durable_mirrored(seq.saturating_add(LEASE_BLOCK).min(MAX_SEQ + 1))?;
            crate::crashpoint::hit("lease.after_renew");
        }
        encode_frame(&mut self.buf, seq, payload);
        self.log.next_seq = seq + 1;
        Ok(seq)
    }

    /// Adds the records handled so far to `Shared::taken`: they no longer count as
    /// queued in `pending()`. Done before `written_seq` moves and before a flush is
    /// forwarded, so a record is never counted both as queued and as written. The
    /// `pushed_total` metric is counted here too, once per round rather than once per
    /// push on the producers' hot path (so it trails acceptance by one writer round).
    fn tally(&mut self) {
        let n = std::mem::take(&mut self.untallied);
        if n > 0 {
            let shared = &self.log.shared;
            shared
                .taken
                .fetch_add(n, std::sync::atomic::Ordering::Relaxed);
            shared.metrics.pushed.increment(n);
        }
    }

    fn write_out(&mut self) -> Result<(), Stop> {
        self.tally();
        if self.buf.is_empty() {
            return Ok(());
        }
        if let Some(p) = &self.prefill {
            p.before_write(self.log.active_len + self.buf.len() as u64);
        }
        if let Err(e) = self.log.active.write_all_at(&self.buf, self.log.active_len) {
            if !is_no_space(&e) {
                return Err(Stop::Fatal(e));
            }
            self.stop_prefill();
            // Cut off whatever part of the buffer did land, so the segment ends at its
            // last complete frame and the retry writes at the same offset. If even that
            // fails, the file's end is unknown: fatal. No fsync: the partial bytes were
            // never synced either, and recovery trims a torn tail after any crash.
            self.log.active.set_len(self.log.active_len)?;
            return Err(Stop::NoSpace(e));
        }
        crate::crashpoint::hit("writer.after_write");
        self.log.active_len += self.buf.len() as u64;
        self.buf.clear();
        self.log
            .segments
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .set_len(self.log.active_first_seq, self.log.active_len);
        self.unsynced = true;
        self.unsynced_since.get_or_insert_with(Instant::now);
        self.log.shared.publish_written(self.last_seq());
        self.wake_pending = true;
        Ok(())
    }

    /// Wakes the delivery task if records were written since the last wake-up and it
    /// asked to be woken at this `written_seq` (`Shared::wake_at`). Called
    /// before the writer waits and after each full write buffer, so the wake-up (a
    /// futex call when the task sleeps) comes after the round's fsync, not before it.
    fn wake_delivery(&mut self) {
        if std::mem::take(&mut self.wake_pending) && self.log.shared.delivery_wants_wake() {
            self.log.shared.data_ready.notify_one();
        }
    }

    fn sync(&mut self) -> Result<(), Stop> {
        self.write_out()?;
        if !self.unsynced {
            return Ok(());
        }
        let started = std::time::Instant::now();
        // fsync the active segment: until it returns, a power loss may drop any record
        // written since the last one, so no waiter is answered before it. Any error here
        // is fatal, ENOSPC included (writeback failed; the data may be gone).
        self.log.active.sync().map_err(Stop::Fatal)?;
        // An fsync of the prefill thread in between may have dropped this file's dirty
        // pages: then this one proves nothing (fsyncgate), and the sink fails.
        if let Some(p) = &self.prefill {
            p.check_syncs().map_err(Stop::Fatal)?;
        }
        crate::crashpoint::hit("writer.after_sync");
        let took = started.elapsed();
        self.fsync_avg = (self.fsync_avg * 7 + took) / 8;
        self.log
            .shared
            .metrics
            .fsync_seconds
            .record(took.as_secs_f64());
        self.unsynced = false;
        self.unsynced_since = None;
        self.log.shared.publish_synced(self.last_seq());
        Ok(())
    }

    /// Trims the active segment's preallocated tail and fsyncs it: a sealed segment
    /// ends at its last frame, so readers and recovery never meet the zeros.
    fn seal_active(&mut self) -> Result<(), Stop> {
        self.write_out()?;
        self.stop_prefill();
        self.log.active.set_len(self.log.active_len)?;
        self.unsynced = true;
        // fsync: makes the frames and the trimmed size durable together.
        self.sync()
    }

    fn roll(&mut self) -> Result<(), Stop> {
        // Rollover fsync (in seal_active): later syncs cover only the active segment,
        // so what this segment holds must be durable before the writer moves on.
        self.seal_active()?;
        crate::crashpoint::hit("writer.roll.before_create");
        let first_seq = self.log.next_seq;
        let header = SegmentHeader {
            codec_id: self.log.codec_id,
            first_seq,
            prev_last_seq: self.last_seq(),
        };
        let file = match create_segment(
            self.log.storage.as_ref(),
            &self.log.dir,
            header,
            self.log.segment_bytes,
        ) {
            Ok(f) => f,
            Err(e) if is_no_space(&e) => {
                // Remove the half-made file (it is not registered and holds no frame);
                // the writer stays on the current segment and retries the roll later.
                // No directory fsync: if a crash undoes the delete, recovery finds an
                // empty segment, which it keeps like any other and deletes once the
                // cursor passes it.
                let path = segment_path(&self.log.dir, first_seq);
                match self.log.storage.remove_file(&path) {
                    Ok(()) => {}
                    Err(r) if r.kind() == io::ErrorKind::NotFound => {}
                    Err(r) => return Err(Stop::Fatal(r)),
                }
                return Err(Stop::NoSpace(e));
            }
            Err(e) => return Err(Stop::Fatal(e)),
        };
        crate::crashpoint::hit("writer.roll.after_create");
        let header_bytes = SEGMENT_HEADER_BYTES as u64;
        {
            let mut set = self
                .log
                .segments
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            set.push(SegmentInfo {
                first_seq,
                prev_last_seq: header.prev_last_seq,
                len: header_bytes,
            });
            self.log
                .shared
                .wal_segments
                .store(set.count() as u64, std::sync::atomic::Ordering::Relaxed);
        }
        // The header is not covered by any producer's reservation.
        self.log
            .shared
            .disk_used
            .fetch_add(header_bytes, std::sync::atomic::Ordering::AcqRel);
        self.log.active = file;
        self.log.active_first_seq = first_seq;
        self.log.active_len = header_bytes;
        if let Some(p) = &self.prefill {
            p.start(
                self.log.storage.as_ref(),
                segment_path(&self.log.dir, first_seq),
                header_bytes,
            );
        }
        Ok(())
    }

    /// Ends zero-filling of the active segment before the writer changes its length.
    fn stop_prefill(&self) {
        if let Some(p) = &self.prefill {
            p.take_over();
        }
    }

    fn sync_deadline(&self) -> Option<Instant> {
        match self.log.sync_policy {
            SyncPolicy::Within(d) => self.unsynced_since.map(|t| t + d),
            // `EveryRound` syncs at the end of every round; `OnRequest` only on request.
            _ => None,
        }
    }

    pub(crate) fn fail(&mut self, err: io::Error) -> Arc<io::Error> {
        tracing::error!(dir = %self.log.dir.display(), error = %err, "WAL write failed; the sink refuses further writes");
        self.log.shared.counters().write_errors.add(1);
        let err = self.log.shared.fail(err);
        self.failed = Some(Arc::clone(&err));
        // Nobody waiting may be told "durable" now.
        self.answer_waiters();
        err
    }

    fn failure(&self) -> Option<SinkError> {
        self.failed.as_ref().map(|e| SinkError::Io(Arc::clone(e)))
    }

    /// Final sync and exact lease, so a clean restart continues without a seq gap.
    fn finish(&mut self) -> Result<(), Arc<io::Error>> {
        if let Some(e) = &self.failed {
            return Err(Arc::clone(e));
        }
        let res = self.seal_active().and_then(|()| {
            // fsync the lease at its exact value: no seq at or above next_seq was handed out.
            self.log
                .lease
                .write_durable_mirrored(self.log.next_seq)
                .map_err(Stop::Fatal)
        });
        match res {
            Ok(()) => Ok(()),
            Err(Stop::NoSpace(e) | Stop::Fatal(e)) => Err(self.fail(e)),
        }
    }
}
