//! [`DurableSink`]: the producer side. Encodes on the caller, reserves disk budget,
//! queues to the WAL writer.

mod batch;
mod open;

use std::fmt;
use std::future::Future;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use serde::Serialize;
use serde::de::DeserializeOwned;
use tokio::sync::oneshot;

use crate::inbox::{self, TrySendError};
use tokio_util::sync::CancellationToken;

use crate::codec::{BincodeCodec, Codec, CodecError};
use crate::config::{Overflow, SinkConfig};
use crate::dead_letter::{DeadLetterStore, WalAppend};
use crate::drain::SinkDrain;
use crate::error::{OpenError, SinkError};
use crate::handle::SinkHandle;
use crate::shared::Shared;
use crate::stats::SinkStats;
use crate::wal::format::frame_bytes;
use crate::wal::recovery::RecoveryReport;
use crate::wal::storage::RealStorage;
use crate::wal::writer::{DurableReply, WriterMsg};

/// Runs `f` on this thread's scratch value in `key`, or on a fresh one when it is
/// already borrowed: a codec that pushes from inside `encode` finds it in use.
fn with_scratch<B: Default + 'static, R>(
    key: &'static std::thread::LocalKey<std::cell::RefCell<B>>,
    f: impl FnOnce(&mut B) -> R,
) -> R {
    key.with(|cell| match cell.try_borrow_mut() {
        Ok(mut borrowed) => f(&mut borrowed),
        Err(_) => f(&mut B::default()),
    })
}

thread_local! {
    /// Per-thread encode buffer, reused across pushes.
    static SCRATCH: std::cell::RefCell<Vec<u8>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// A durable, WAL-backed background sink. Cheap to clone; share it among producers.
///
/// Records pushed here are appended to an on-disk write-ahead log by a writer thread,
/// then read back and delivered in batches to the [`SinkDrain`] given to
/// [`open`](Self::open) by a background task. Whatever the drain has not acknowledged
/// when the process dies is delivered after the next `open` of the same directory.
///
/// # Which call to use
///
/// | call | returns when | a crash right after it loses the record? |
/// |---|---|---|
/// | [`try_push`](Self::try_push) | queued (never waits) | yes, until the writer wrote it (well under 1 ms at idle) |
/// | [`push`](Self::push) | queued (waits for room) | same as `try_push` |
/// | [`try_push_batch`](Self::try_push_batch), [`push_batch`](Self::push_batch) | as `try_push` (all or none) and `push`, for many records at once | same as `try_push` |
/// | [`push_durable`](Self::push_durable) | fsynced | no, not even on power loss |
/// | [`sync`](Self::sync) | all earlier records fsynced | no, for every earlier record |
/// | [`flush`](Self::flush) | all earlier records acknowledged by the drain | nothing left to lose |
///
/// # Example
///
/// A drain that collects, a sink in a temporary directory, a flush, a clean shutdown:
///
/// ```
/// use std::sync::{Arc, Mutex};
/// use walsink::{Batch, DrainError, DurableSink, SinkConfig, SinkDrain};
///
/// struct Collect(Arc<Mutex<Vec<(u64, String)>>>);
///
/// impl SinkDrain<String> for Collect {
///     async fn write_batch(&mut self, batch: Batch<String>) -> Result<(), DrainError> {
///         // `Ok` acknowledges the batch: its records will not be delivered again.
///         self.0.lock().map_err(|e| DrainError::retryable(e.to_string()))?.extend(batch.into_pairs());
///         Ok(())
///     }
/// }
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let dir = tempfile::tempdir()?;
/// let got = Arc::new(Mutex::new(Vec::new()));
/// let shutdown = tokio_util::sync::CancellationToken::new();
/// let (sink, handle) =
///     DurableSink::<String>::open(SinkConfig::new(dir.path()), Collect(got.clone()), shutdown.clone()).await?;
///
/// sink.try_push("first".to_string())?;
/// let seq = sink.push_durable("second".to_string()).await?; // fsynced when this returns
/// sink.flush().await?; // both acknowledged by the drain
/// assert_eq!(seq, 2);
/// assert_eq!(got.lock().unwrap().clone(), vec![(1, "first".to_string()), (2, "second".to_string())]);
///
/// shutdown.cancel();
/// let report = handle.join().await?;
/// assert_eq!(report.left_on_disk, 0);
/// # Ok(())
/// # }
/// ```
///
/// # Comparison to an in-memory queue
///
/// A bounded `tokio::mpsc` with an actor is the same shape and loses everything queued
/// on a crash. `DurableSink` pays an encode and a write per record, in exchange for
/// replay after `kill -9`, power-loss durability on request, and a disk-sized buffer
/// for drain outages.
pub struct DurableSink<T> {
    inner: Arc<Inner<T>>,
}

struct Inner<T> {
    tx: inbox::Sender<WriterMsg>,
    shared: Arc<Shared>,
    codec: Arc<dyn Codec<T>>,
    overflow: Overflow,
    max_record_bytes: usize,
    dead_letters: DeadLetterStore,
    dir: PathBuf,
    report: RecoveryReport,
}

impl<T> Clone for DurableSink<T> {
    fn clone(&self) -> Self {
        Self {
            inner: Arc::clone(&self.inner),
        }
    }
}

impl<T> Inner<T> {
    /// Encodes `record` into the empty `buf` and checks it against
    /// `max_record_bytes` (an oversized encoding is cleared from `buf`).
    fn encode_checked(&self, record: &T, buf: &mut Vec<u8>) -> Result<(), SinkError>
    where
        T: 'static,
    {
        self.codec
            .encode(record, buf)
            .map_err(|e: CodecError| SinkError::Encode(Arc::new(e)))?;
        if buf.len() > self.max_record_bytes {
            let len = buf.len();
            buf.clear();
            return Err(SinkError::TooLarge {
                len,
                limit: self.max_record_bytes,
            });
        }
        Ok(())
    }

    fn closed_error(&self) -> SinkError {
        self.shared.failure().unwrap_or(SinkError::Closed)
    }

    /// Queues the record `encoded`, waiting for room: its frame's bytes in the disk
    /// budget first, then a place in the queue. Cancel safe: dropped before it
    /// returns, nothing was queued and the budget it held is given back.
    async fn send_waiting(
        &self,
        encoded: Vec<u8>,
        durable: Option<DurableReply>,
    ) -> Result<(), SinkError> {
        let reservation = self.reserve_waiting(frame_bytes(encoded.len())).await?;
        let permit = self.tx.reserve().await.map_err(|_| self.closed_error())?;
        reservation.commit();
        permit.send_record(encoded, durable, WriterMsg::record);
        Ok(())
    }

    /// Waits until `bytes` fit in the disk budget, or the sink closes or fails.
    async fn reserve_waiting(&self, bytes: u64) -> Result<Reservation<'_>, SinkError> {
        let shared = &*self.shared;
        // Bounded by deletions: each pass either reserves, or waits for a wake-up
        // from a deletion, a failure, or the queue closing.
        loop {
            let room = shared.room.notified();
            tokio::pin!(room);
            room.as_mut().enable();
            if let Some(e) = shared.failure() {
                return Err(e);
            }
            if shared.try_reserve(bytes) {
                return Ok(Reservation { shared, bytes });
            }
            tokio::select! {
                () = room => {}
                () = self.tx.closed() => return Err(self.closed_error()),
            }
        }
    }
}

/// A redrive through the running sink: the record's encoded bytes, queued as a new
/// record (waiting for room like `push`), answered once durable.
impl<T: Send + 'static> WalAppend for Inner<T> {
    fn append_durable(
        &self,
        payload: Vec<u8>,
    ) -> Pin<Box<dyn Future<Output = Result<u64, SinkError>> + Send + '_>> {
        Box::pin(async move {
            if payload.len() > self.max_record_bytes {
                return Err(SinkError::TooLarge {
                    len: payload.len(),
                    limit: self.max_record_bytes,
                });
            }
            let (tx, rx) = oneshot::channel();
            self.send_waiting(payload, Some(tx)).await?;
            let seq = rx.await.map_err(|_| self.closed_error())??;
            self.shared.counters().redriven.add(1);
            Ok(seq)
        })
    }
}

impl<T> fmt::Debug for DurableSink<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DurableSink")
            .field("dir", &self.inner.dir)
            .field("overflow", &self.inner.overflow)
            .finish_non_exhaustive()
    }
}

/// Outcome of [`DurableSink::enqueue_now`].
enum Enqueue {
    Queued,
    /// The budget or the queue is full; the encoding stays with the caller and the
    /// `push_durable` reply comes back.
    NoRoom(Option<DurableReply>),
    /// The queue is closed (shutdown or WAL failure); nothing was queued.
    Closed,
}

/// Gives back reserved budget if a push is abandoned before its record is queued.
struct Reservation<'a> {
    shared: &'a Shared,
    bytes: u64,
}

impl Reservation<'_> {
    fn commit(self) {
        std::mem::forget(self);
    }
}

impl Drop for Reservation<'_> {
    fn drop(&mut self) {
        // Abandoned (a cancelled push): a push waiting for budget may have looked
        // while these bytes were held, so wake it.
        self.shared.release_unused(self.bytes);
    }
}

impl<T: Serialize + DeserializeOwned + Send + 'static> DurableSink<T> {
    /// Opens (or creates) the WAL in `config.dir` with the default [`BincodeCodec`],
    /// recovers it, and starts the writer thread and the delivery task.
    ///
    /// Records left unacknowledged by an earlier run are delivered first. Cancelling
    /// `shutdown` (or dropping every clone of the sink) shuts down gracefully; await
    /// [`SinkHandle::join`] to know when it is done.
    ///
    /// # Errors
    ///
    /// [`OpenError`]: another sink holds the directory (`Locked`), the config cannot
    /// work (`InvalidConfig`), the files are of an unsupported version or another codec,
    /// or an I/O error. Damage inside the WAL is not an error: it is repaired, skipped
    /// and reported (see [`recovery`](Self::recovery)).
    pub async fn open<D: SinkDrain<T>>(
        config: SinkConfig,
        drain: D,
        shutdown: CancellationToken,
    ) -> Result<(Self, SinkHandle), OpenError> {
        Self::open_with_codec(config, BincodeCodec, drain, shutdown).await
    }
}

impl<T: Send + 'static> DurableSink<T> {
    /// Like [`open`](DurableSink::open), with any codec (for example
    /// [`RawCodec`](crate::RawCodec) for `Vec<u8>` records).
    ///
    /// # Errors
    ///
    /// As [`open`](DurableSink::open); also `CodecMismatch` if the WAL was written with
    /// another codec.
    pub async fn open_with_codec<C: Codec<T>, D: SinkDrain<T>>(
        config: SinkConfig,
        codec: C,
        drain: D,
        shutdown: CancellationToken,
    ) -> Result<(Self, SinkHandle), OpenError> {
        Self::open_on(
            Arc::new(RealStorage),
            config,
            Arc::new(codec),
            drain,
            shutdown,
        )
        .await
    }

    /// Encodes `record` on the caller's thread into a reused thread-local buffer and
    /// hands the encoding to `then` (which may take the buffer). A typical record is
    /// then copied once, into the queue's arena, with no allocation.
    fn with_encoded<R>(
        &self,
        record: &T,
        then: impl FnOnce(&mut Vec<u8>) -> R,
    ) -> Result<R, SinkError> {
        let inner = &*self.inner;
        if let Some(e) = inner.shared.failure() {
            return Err(e);
        }
        with_scratch(&SCRATCH, |buf: &mut Vec<u8>| {
            buf.clear();
            inner.encode_checked(record, buf)?;
            Ok(then(buf))
        })
    }

    fn count_drop(&self) -> SinkError {
        let s = &self.inner.shared;
        s.counters().dropped.add(1);
        SinkError::Overflow
    }

    /// Queues a record without waiting: never blocks, never awaits.
    ///
    /// The record is encoded here, so an encode error comes back to this caller. When
    /// this returns `Ok`, the record is accepted: the writer thread writes it to the WAL
    /// (normally within microseconds; a process crash before that loses it) and it will
    /// be delivered. Durability against power loss follows the configured
    /// [`Durability`](crate::Durability), or use [`push_durable`](Self::push_durable).
    ///
    /// # Errors
    ///
    /// - `Overflow`: the queue or the disk budget is full (counted in `dropped`), or the
    ///   sink is in [`Overflow::Block`] mode, where `try_push` is always refused;
    /// - `TooLarge`, `Encode`: this record cannot be accepted;
    /// - `Closed`: the sink has shut down; `Io`: the WAL failed earlier.
    pub fn try_push(&self, record: T) -> Result<(), SinkError> {
        if self.inner.overflow == Overflow::Block {
            return Err(SinkError::Overflow);
        }
        match self.with_encoded(&record, |buf| self.enqueue_now(buf, None))? {
            Enqueue::Queued => Ok(()),
            Enqueue::NoRoom(_) => Err(self.count_drop()),
            Enqueue::Closed => Err(self.closed_error()),
        }
    }

    /// Queues the encoded record in `buf` if the disk budget and the queue both have
    /// room right now (counted in `pushed` by the queue): a small one is copied into
    /// the queue's arena, a large one moves out of `buf`. Otherwise nothing is kept:
    /// the budget is given back, `buf` holds the encoding again and `durable` comes
    /// back.
    fn enqueue_now(&self, buf: &mut Vec<u8>, durable: Option<DurableReply>) -> Enqueue {
        let inner = &*self.inner;
        let bytes = frame_bytes(buf.len());
        if !inner.shared.try_reserve(bytes) {
            return Enqueue::NoRoom(durable);
        }
        let sent = inner.tx.try_send_record(buf, durable, WriterMsg::record);
        match sent {
            Ok(()) => Enqueue::Queued,
            Err(TrySendError::Full(durable)) => {
                inner.shared.release(bytes);
                Enqueue::NoRoom(durable)
            }
            Err(TrySendError::Closed(_)) => {
                inner.shared.release(bytes);
                Enqueue::Closed
            }
        }
    }

    /// Queues a record, waiting for room in the queue and in the disk budget (whatever
    /// the [`Overflow`] mode).
    ///
    /// # Cancel safety
    ///
    /// Cancel safe: if the future is dropped before it completes, the record was not
    /// accepted and its budget reservation is returned. Once it returns `Ok`, the
    /// record is accepted exactly as with [`try_push`](Self::try_push).
    ///
    /// # Errors
    ///
    /// `TooLarge`, `Encode`, `Closed`, `Io` as for `try_push`; never `Overflow`.
    pub async fn push(&self, record: T) -> Result<(), SinkError> {
        self.send(record, None).await
    }

    /// Queues a record and waits until it is durable (fsynced); returns its seq.
    /// Concurrent callers share fsyncs (group commit).
    ///
    /// # Cancel safety
    ///
    /// If dropped while waiting for room, the record was not accepted. If dropped after
    /// it was queued, the record is still written and synced; only the answer is lost.
    ///
    /// # Errors
    ///
    /// As [`push`](Self::push); `Io` if the write or fsync failed, in which case the
    /// record must be assumed not durable.
    pub async fn push_durable(&self, record: T) -> Result<u64, SinkError> {
        let (tx, rx) = oneshot::channel();
        self.send(record, Some(tx)).await?;
        rx.await.map_err(|_| self.closed_error())?
    }

    async fn send(&self, record: T, durable: Option<DurableReply>) -> Result<(), SinkError> {
        let inner = &*self.inner;
        // Fast path, as `try_push`: room in the budget and in the queue right now. A
        // caller here may overtake one that waits below; each keeps its own order.
        let waiting = self.with_encoded(&record, |buf| match self.enqueue_now(buf, durable) {
            Enqueue::Queued => Ok(None),
            // The encoding must outlive the wait (the thread's buffer serves others).
            Enqueue::NoRoom(durable) => Ok(Some((std::mem::take(buf), durable))),
            Enqueue::Closed => Err(()),
        })?;
        let (encoded, durable) = match waiting {
            Ok(None) => return Ok(()),
            Ok(Some(w)) => w,
            Err(()) => return Err(self.closed_error()),
        };
        inner.send_waiting(encoded, durable).await
    }

    fn closed_error(&self) -> SinkError {
        self.inner.closed_error()
    }

    async fn request(
        &self,
        make: impl FnOnce(oneshot::Sender<Result<(), SinkError>>) -> WriterMsg,
    ) -> Result<(), SinkError> {
        if let Some(e) = self.inner.shared.failure() {
            return Err(e);
        }
        let (tx, rx) = oneshot::channel();
        let permit = self
            .inner
            .tx
            .reserve()
            .await
            .map_err(|_| self.closed_error())?;
        permit.send(make(tx));
        rx.await.map_err(|_| self.closed_error())?
    }

    /// Waits until every record accepted before this call is durable (one fsync shared
    /// with concurrent callers).
    ///
    /// # Cancel safety
    ///
    /// Cancel safe, and can be retried freely: a dropped `sync` changes nothing but
    /// perhaps an extra fsync.
    ///
    /// # Errors
    ///
    /// `Io` if a write or fsync failed (now or earlier: the failure is sticky, and
    /// `sync` never reports durability after it); `Closed` after shutdown.
    pub async fn sync(&self) -> Result<(), SinkError> {
        self.request(|tx| WriterMsg::Sync(Some(tx))).await
    }

    /// Waits until the drain has acknowledged every record accepted before this call,
    /// including records recovered from an earlier run (rejected poison records count
    /// as handled; records refused with `Overflow` were never accepted).
    ///
    /// A flush makes the delivery task deliver at once instead of waiting for
    /// `flush_interval`.
    ///
    /// # Cancel safety
    ///
    /// Cancel safe, and can be retried freely.
    ///
    /// # Errors
    ///
    /// `Closed` if the sink shut down before the records were acknowledged (they stay
    /// on disk for the next open); `Io` if the WAL failed, or while a dead letter among
    /// them cannot be stored (the store's error; delivery retries it, the record stays
    /// in the WAL, and a later `flush` succeeds once the store does). A full disk is
    /// not an error: the flush waits until space is freed.
    pub async fn flush(&self) -> Result<(), SinkError> {
        self.request(|tx| WriterMsg::Flush(Some(tx))).await
    }

    /// Records refused as `Overflow` since open.
    pub fn dropped(&self) -> u64 {
        self.inner.shared.counters().dropped.get()
    }

    /// Records accepted but not yet acknowledged (recovered ones included).
    pub fn pending(&self) -> u64 {
        let s = &self.inner.shared;
        // Load `taken` first: `pushed` only grows, so the difference never goes
        // negative in a way that matters (saturating either way).
        let taken = s.taken.load(Ordering::Relaxed);
        let queued = self.inner.tx.records().saturating_sub(taken);
        let written = s.written_seq.load(Ordering::Acquire);
        let acked = s.acked_seq.load(Ordering::Acquire);
        queued.saturating_add(s.records_between(acked, written))
    }

    /// A snapshot of the sink's counters.
    pub fn stats(&self) -> SinkStats {
        let s = &self.inner.shared;
        let mut stats = SinkStats {
            pushed: self.inner.tx.records(),
            pending: self.pending(),
            written_seq: s.written_seq.load(Ordering::Acquire),
            synced_seq: s.synced_seq.load(Ordering::Acquire),
            acked_seq: s.acked_seq.load(Ordering::Acquire),
            wal_bytes: s.disk_used.load(Ordering::Relaxed),
            wal_segments: s.wal_segments.load(Ordering::Relaxed),
            disk_full: s.disk_full.load(Ordering::Acquire),
            dead_letter_bytes: self.inner.dead_letters.bytes(),
            ..SinkStats::default()
        };
        s.counters().fill(&mut stats);
        stats
    }

    /// The dead letters of this sink: records the drain rejected permanently or that
    /// no longer decode (see [`DeadLetterStore`]). Reading, purging and redriving work
    /// while the sink runs; a redrive appends through this sink.
    pub fn dead_letters(&self) -> DeadLetterStore {
        self.inner.dead_letters.clone()
    }

    /// What `open` found and repaired.
    pub fn recovery(&self) -> &RecoveryReport {
        &self.inner.report
    }

    /// The WAL directory.
    pub fn dir(&self) -> &std::path::Path {
        &self.inner.dir
    }
}
