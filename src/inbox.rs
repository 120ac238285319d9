//! The bounded queue between producers and the WAL writer thread.
//!
//! # Why not `tokio::sync::mpsc`
//!
//! A tokio channel wakes its receiver on every send: each `try_send` does two atomic
//! read-modify-writes on the receiver's waker, a cache line the receiver rewrites each
//! time it registers. With the WAL writer draining as fast as producers push, `perf`
//! put 31 % of the producer's CPU in `AtomicWaker::wake` (a `lock cmpxchg` loop) on
//! this project's 2-core machine. The writer does not need a wake-up per message: it
//! takes everything queued at once, and only needs waking when it has gone idle.
//!
//! # Shape
//!
//! A mutex around a list of message chunks and two counts, plus an `idle` flag on its
//! own cache line:
//! - a producer locks, checks the bound, appends, unlocks, and then reads `idle`; only
//!   if the writer said it is idle does it wake it (a [`Notify`]);
//! - the writer takes every chunk in one critical section (it moves the chunk
//!   pointers, not the messages, whatever the backlog) and hands the emptied chunks
//!   back on its next take, so a steady state allocates nothing;
//! - `push` callers waiting for room wait on another `Notify`, signalled after takes.
//! - a message may carry bytes (an encoded record): they are copied once, under the
//!   lock, into the queue's byte arena (64 KiB chunks), and the message holds their
//!   place ([`BytesAt`]). The writer takes the arena chunks with the messages and
//!   reads the bytes from there. Without the arena, a record travelled inside a
//!   144-byte message that was copied on every move: `perf` put a third of
//!   `try_push`'s CPU in `memmove`.
//!
//! The writer locks once per round, so the lock's cache line stays with the producers
//! between rounds; producers pay one uncontended lock and unlock per message.
//!
//! # Invariants
//!
//! - `queued + reserved <= capacity` (checked under the lock; `reserved` counts
//!   [`Permit`]s not yet used).
//! - FIFO: messages are taken in the order their critical sections ran.
//! - Arena chunks are numbered by a serial that grows by one per new chunk, and are
//!   taken in serial order with no gap, so a [`BytesAt`] (serial, offset, length)
//!   names the same bytes in the receiver's [`Taken`] whatever the takes in between.
//!   A record's bytes never straddle two chunks. The receiver gives chunks back only
//!   when every message it took was handled (all its message chunks are empty).
//! - After [`Receiver::close`], nothing new is accepted; what was queued or reserved
//!   before is still received. [`Receiver::recv`] returns 0 only when the queue is
//!   closed (or every sender is gone), empty, and no permit is outstanding.
//! - No lost wake-up: the writer raises `idle` *before* it checks the queue under the
//!   lock. If that check missed a message, the producer's critical section came after
//!   the writer's, so the producer's read of `idle` (after its unlock) happens after
//!   the writer raised it, and the producer wakes it. A wake-up with nothing to take is
//!   harmless (one empty pass).
//! - When the receiver is dropped, every queued message is dropped too (so a
//!   `push_durable` waiting on one sees its reply channel closed, never a hang).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use crate::shared::CachePadded;

/// Messages per chunk: a chunk is allocated when the queue grows past a multiple of
/// this, so a burst never reallocates (and copies) the whole backlog under the lock.
const CHUNK: usize = 256;

/// Bytes per arena chunk. A message's bytes never straddle two chunks.
const ARENA_CHUNK_BYTES: usize = 64 << 10;
/// Largest byte string a message may carry in the arena; larger ones travel on their
/// own allocation inside the message.
pub(crate) const MAX_ARENA_BYTES: usize = 4 << 10;
const _: () = assert!(MAX_ARENA_BYTES <= ARENA_CHUNK_BYTES);
/// Emptied arena chunks kept for reuse (2 MiB): enough for the bursts a writer round
/// takes at once without making an idle sink hold a large backlog's memory.
const ARENA_SPARE_CHUNKS: usize = 32;

/// Where [`Sender::try_send_bytes`] put a message's bytes in the arena.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct BytesAt {
    serial: u64,
    offset: u32,
    len: u32,
}

impl BytesAt {
    /// Number of bytes.
    pub(crate) fn len(self) -> usize {
        self.len as usize
    }
}

/// What the receiver took: messages (as chunks, oldest first) and the arena chunks
/// holding their bytes.
#[derive(Debug)]
pub(crate) struct Taken<M> {
    /// Messages, oldest first. The caller empties the chunks as it handles them.
    pub(crate) msgs: Vec<Vec<M>>,
    /// The bytes the messages refer to.
    pub(crate) arena: Arena,
}

impl<M> Default for Taken<M> {
    fn default() -> Self {
        Self {
            msgs: Vec::new(),
            arena: Arena::default(),
        }
    }
}

/// Arena chunks taken from the queue, consecutive serials from `first_serial`.
#[derive(Debug, Default)]
pub(crate) struct Arena {
    chunks: Vec<Vec<u8>>,
    first_serial: u64,
}

impl Arena {
    /// The bytes at `at`; `None` only if `at` came from another queue or its chunk
    /// was given back (a bug, reported by the caller rather than panicking).
    pub(crate) fn get(&self, at: BytesAt) -> Option<&[u8]> {
        let i = usize::try_from(at.serial.checked_sub(self.first_serial)?).ok()?;
        let start = at.offset as usize;
        self.chunks
            .get(i)?
            .get(start..start.checked_add(at.len as usize)?)
    }
}

#[derive(Debug)]
struct State<M> {
    /// Queued messages, oldest first; every chunk but the last is full.
    chunks: Vec<Vec<M>>,
    /// Emptied chunks, ready for reuse.
    spare: Vec<Vec<M>>,
    /// Arena chunks holding the queued messages' bytes; the last one is filling.
    bytes: Vec<Vec<u8>>,
    /// Serial the next new arena chunk gets.
    next_serial: u64,
    /// Emptied arena chunks, ready for reuse.
    spare_bytes: Vec<Vec<u8>>,
    queued: usize,
    reserved: usize,
    /// Counted messages ever accepted (see [`Sender::counted`]).
    counted: u64,
    /// `close` was called or the receiver was dropped: accept nothing new.
    closed: bool,
    /// The receiver was dropped: drop messages instead of queueing them.
    receiver_gone: bool,
    /// The sender was dropped: the receiver ends once the queue is empty.
    sender_gone: bool,
}

#[derive(Debug)]
struct Chan<M> {
    state: Mutex<State<M>>,
    capacity: usize,
    /// Raised by the receiver before it waits; producers wake it only if set.
    idle: CachePadded<AtomicBool>,
    /// Producers → the idle receiver.
    data: Notify,
    /// Receiver → producers waiting in [`Sender::reserve`].
    room: Notify,
    /// Cancelled when the receiver closes or is dropped.
    closed: CancellationToken,
}

impl<M> Chan<M> {
    fn lock(&self) -> MutexGuard<'_, State<M>> {
        // Critical sections only move values and update counts; a panic in one (an
        // allocation failure) leaves the state consistent.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Moves the emptied chunks of `out` back to the spares; chunks still holding
    /// messages stay in `out`, in order. Spares are kept up to what a full queue
    /// needs (memory the bound allows anyway), so steady traffic allocates nothing:
    /// freeing and reallocating chunks each round showed as `malloc_consolidate` in
    /// the writer's profile. The arena chunks go back only once every message taken
    /// was handled; then `out`'s arena restarts at the queue's oldest chunk.
    fn recycle(&self, st: &mut State<M>, out: &mut Taken<M>) {
        let limit = self.capacity.div_ceil(CHUNK);
        let mut all_handled = true;
        for chunk in std::mem::take(&mut out.msgs) {
            if !chunk.is_empty() {
                all_handled = false;
                out.msgs.push(chunk);
            } else if st.spare.len() < limit {
                st.spare.push(chunk);
            }
        }
        if all_handled {
            for mut chunk in out.arena.chunks.drain(..) {
                if st.spare_bytes.len() < ARENA_SPARE_CHUNKS
                    && chunk.capacity() == ARENA_CHUNK_BYTES
                {
                    chunk.clear();
                    st.spare_bytes.push(chunk);
                }
            }
        }
    }

    /// Moves every queued message and arena chunk to `out` (under the lock).
    fn take_all(&self, st: &mut State<M>, out: &mut Taken<M>) -> usize {
        self.recycle(st, out);
        if out.arena.chunks.is_empty() {
            out.arena.first_serial = st.next_serial - st.bytes.len() as u64;
        }
        out.arena.chunks.append(&mut st.bytes);
        out.msgs.append(&mut st.chunks);
        std::mem::take(&mut st.queued)
    }

    fn wake_receiver(&self) {
        // See "No lost wake-up" in the module doc. The first load keeps the common
        // case (writer busy) to a read of a line that rarely changes.
        if self.idle.load(Ordering::SeqCst) && self.idle.swap(false, Ordering::SeqCst) {
            self.data.notify_one();
        }
    }
}

impl<M> State<M> {
    fn push(&mut self, msg: M) {
        let need_chunk = self.chunks.last().is_none_or(|c| c.len() >= CHUNK);
        if need_chunk {
            let chunk = self
                .spare
                .pop()
                .unwrap_or_else(|| Vec::with_capacity(CHUNK));
            self.chunks.push(chunk);
        }
        if let Some(last) = self.chunks.last_mut() {
            last.push(msg);
        }
        self.queued += 1;
    }

    /// Copies `bytes` into the arena (in the last chunk if they fit, else in a new
    /// one) and says where.
    fn push_bytes(&mut self, bytes: &[u8]) -> BytesAt {
        let fits = self
            .bytes
            .last()
            .is_some_and(|c| c.capacity() - c.len() >= bytes.len());
        if !fits {
            let chunk = self
                .spare_bytes
                .pop()
                .unwrap_or_else(|| Vec::with_capacity(ARENA_CHUNK_BYTES));
            self.bytes.push(chunk);
            self.next_serial += 1;
        }
        let serial = self.next_serial - 1;
        let chunk = self.bytes.last_mut();
        let offset = chunk.as_ref().map_or(0, |c| c.len());
        if let Some(c) = chunk {
            c.extend_from_slice(bytes);
        }
        BytesAt {
            serial,
            // Both fit: senders pass at most `MAX_ARENA_BYTES`, so no chunk grows past
            // `ARENA_CHUNK_BYTES`.
            offset: offset as u32,
            len: bytes.len() as u32,
        }
    }
}

/// Creates a queue holding at most `capacity` messages.
pub(crate) fn channel<M>(capacity: usize) -> (Sender<M>, Receiver<M>) {
    let chan = Arc::new(Chan {
        state: Mutex::new(State {
            chunks: Vec::new(),
            spare: Vec::new(),
            bytes: Vec::new(),
            next_serial: 0,
            spare_bytes: Vec::new(),
            queued: 0,
            reserved: 0,
            counted: 0,
            closed: false,
            receiver_gone: false,
            sender_gone: false,
        }),
        capacity,
        idle: CachePadded(AtomicBool::new(false)),
        data: Notify::new(),
        room: Notify::new(),
        closed: CancellationToken::new(),
    });
    (
        Sender {
            chan: Arc::clone(&chan),
        },
        Receiver { chan },
    )
}

/// Why [`Sender::try_send`] refused a message (returned with it).
#[derive(Debug)]
pub(crate) enum TrySendError<M> {
    /// `capacity` messages are queued or reserved.
    Full(M),
    /// The receiver closed.
    Closed(M),
}

impl<M> TrySendError<M> {
    /// The same refusal, with what came back transformed.
    pub(crate) fn map<N>(self, f: impl FnOnce(M) -> N) -> TrySendError<N> {
        match self {
            Self::Full(m) => TrySendError::Full(f(m)),
            Self::Closed(m) => TrySendError::Closed(f(m)),
        }
    }
}

/// The producers' end (one per sink; shared by reference).
#[derive(Debug)]
pub(crate) struct Sender<M> {
    chan: Arc<Chan<M>>,
}

impl<M> Sender<M> {
    /// Queues `msg` if there is room, without waiting (uncounted; the sink sends
    /// its requests through a [`Permit`]).
    #[cfg(test)]
    pub(crate) fn try_send(&self, msg: M) -> Result<(), TrySendError<M>> {
        self.try_send_with(msg, 0, |_, msg| msg)
    }

    /// Queues the message `make(extra)` if there is room, without waiting, and counts
    /// it in [`counted`](Self::counted) (the sink counts accepted records this way,
    /// inside the critical section it pays anyway). `make` runs under the lock: it
    /// must only build the message. When refused, `extra` comes back.
    pub(crate) fn try_send_counted<X>(
        &self,
        extra: X,
        make: impl FnOnce(X) -> M,
    ) -> Result<(), TrySendError<X>> {
        self.try_send_with(extra, 1, |_, x| make(x))
    }

    /// The one non-waiting send: under the lock, checks for room, then queues the
    /// message `build` makes (it may put bytes in the arena first) and counts it.
    fn try_send_with<X>(
        &self,
        extra: X,
        count: u64,
        build: impl FnOnce(&mut State<M>, X) -> M,
    ) -> Result<(), TrySendError<X>> {
        let chan = &*self.chan;
        {
            let mut st = chan.lock();
            if st.closed {
                return Err(TrySendError::Closed(extra));
            }
            if st.queued + st.reserved >= chan.capacity {
                return Err(TrySendError::Full(extra));
            }
            let msg = build(&mut st, extra);
            st.push(msg);
            st.counted += count;
        }
        chan.wake_receiver();
        Ok(())
    }

    /// Counted messages accepted so far: those sent with `try_send_counted`,
    /// `send_counted`, or with bytes. Exact: read under the lock.
    pub(crate) fn counted(&self) -> u64 {
        self.chan.lock().counted
    }

    /// Queues the message `make(at, extra)` if there is room, without waiting, after
    /// copying `bytes` (at most [`MAX_ARENA_BYTES`]) into the arena at `at`; counts it.
    /// `make` runs under the lock: it must only build the message. When refused,
    /// nothing was copied and `extra` comes back.
    pub(crate) fn try_send_bytes<X>(
        &self,
        bytes: &[u8],
        extra: X,
        make: impl FnOnce(BytesAt, X) -> M,
    ) -> Result<(), TrySendError<X>> {
        debug_assert!(bytes.len() <= MAX_ARENA_BYTES);
        self.try_send_with(extra, 1, |st, x| make(st.push_bytes(bytes), x))
    }

    /// Waits for room and reserves it. Cancel safe: a dropped future reserved nothing.
    ///
    /// Errors with `()` once the receiver has closed.
    pub(crate) async fn reserve(&self) -> Result<Permit<'_, M>, ()> {
        let chan = &*self.chan;
        loop {
            let room = chan.room.notified();
            tokio::pin!(room);
            // Registered before the check, so a take between the check and the wait
            // still wakes this caller.
            room.as_mut().enable();
            {
                let mut st = chan.lock();
                if st.closed {
                    return Err(());
                }
                if st.queued + st.reserved < chan.capacity {
                    st.reserved += 1;
                    return Ok(Permit { sender: Some(self) });
                }
            }
            room.await;
        }
    }

    /// Completes when the receiver has closed (or was dropped).
    pub(crate) async fn closed(&self) {
        self.chan.closed.cancelled().await;
    }
}

impl<M> Drop for Sender<M> {
    fn drop(&mut self) {
        self.chan.lock().sender_gone = true;
        // Unconditionally: the receiver must notice even if it is mid-take.
        self.chan.data.notify_one();
    }
}

/// Room for one message, reserved by [`Sender::reserve`]; returned if dropped unused.
#[derive(Debug)]
pub(crate) struct Permit<'a, M> {
    sender: Option<&'a Sender<M>>,
}

impl<M> Permit<'_, M> {
    /// Queues `msg` in the reserved room. After the receiver was dropped, `msg` is
    /// dropped (as with a closed tokio channel).
    pub(crate) fn send(self, msg: M) {
        self.send_with(msg, 0, |_, msg| msg);
    }

    /// As [`send`](Self::send), and counts the message (see [`Sender::counted`]),
    /// unless the receiver was dropped.
    pub(crate) fn send_counted(self, msg: M) {
        self.send_with(msg, 1, |_, msg| msg);
    }

    /// Queues `make(at, extra)` in the reserved room after copying `bytes` (at most
    /// [`MAX_ARENA_BYTES`]) into the arena, as [`Sender::try_send_bytes`]. After the
    /// receiver was dropped, nothing is queued and the message is never built.
    pub(crate) fn send_bytes<X>(self, bytes: &[u8], extra: X, make: impl FnOnce(BytesAt, X) -> M) {
        debug_assert!(bytes.len() <= MAX_ARENA_BYTES);
        self.send_with(extra, 1, |st, x| make(st.push_bytes(bytes), x));
    }

    /// The one send through a permit: under the lock, gives the room back and queues
    /// the message `build` makes, unless the receiver is gone (then `extra` is dropped,
    /// outside the lock: dropping may run arbitrary drop code).
    fn send_with<X>(mut self, extra: X, count: u64, build: impl FnOnce(&mut State<M>, X) -> M) {
        let Some(sender) = self.sender.take() else {
            return;
        };
        let chan = &*sender.chan;
        let dropped = {
            let mut st = chan.lock();
            st.reserved -= 1;
            if st.receiver_gone {
                Some(extra)
            } else {
                let msg = build(&mut st, extra);
                st.push(msg);
                st.counted += count;
                None
            }
        };
        drop(dropped);
        chan.wake_receiver();
    }
}

impl<M> Drop for Permit<'_, M> {
    fn drop(&mut self) {
        if let Some(sender) = self.sender.take() {
            let chan = &*sender.chan;
            chan.lock().reserved -= 1;
            chan.room.notify_one();
            // The receiver may be waiting for this permit before it can end.
            chan.data.notify_one();
        }
    }
}

/// The WAL writer's end.
#[derive(Debug)]
pub(crate) struct Receiver<M> {
    chan: Arc<Chan<M>>,
}

impl<M> Receiver<M> {
    /// Waits for messages and appends every queued one to `out` (as chunks, oldest
    /// first); returns how many. Returns 0 once the queue is closed (or the sender is
    /// gone), empty and without outstanding permits.
    ///
    /// Chunks of `out` the caller has emptied are recycled here.
    /// Cancel safe: messages are only taken in the poll that returns them.
    pub(crate) async fn recv(&mut self, out: &mut Taken<M>) -> usize {
        let chan = &*self.chan;
        loop {
            let data = chan.data.notified();
            tokio::pin!(data);
            data.as_mut().enable();
            // Raised before the check: see "No lost wake-up" in the module doc.
            chan.idle.store(true, Ordering::SeqCst);
            let taken = {
                let mut st = chan.lock();
                if st.queued > 0 {
                    Some(chan.take_all(&mut st, out))
                } else if (st.closed || st.sender_gone) && st.reserved == 0 {
                    Some(0)
                } else {
                    None
                }
            };
            if let Some(n) = taken {
                chan.idle.store(false, Ordering::Relaxed);
                if n > 0 {
                    chan.room.notify_waiters();
                }
                return n;
            }
            data.await;
        }
    }

    /// Appends every queued message to `out` (as chunks) without waiting; returns how
    /// many. Recycles `out`'s emptied chunks as [`recv`](Self::recv) does.
    pub(crate) fn try_take(&mut self, out: &mut Taken<M>) -> usize {
        let chan = &*self.chan;
        let n = chan.take_all(&mut chan.lock(), out);
        if n > 0 {
            chan.room.notify_waiters();
        }
        n
    }

    /// Stops accepting messages; what is queued or reserved is still received.
    pub(crate) fn close(&mut self) {
        self.chan.lock().closed = true;
        self.chan.closed.cancel();
        self.chan.room.notify_waiters();
    }
}

impl<M> Drop for Receiver<M> {
    fn drop(&mut self) {
        let queued = {
            let mut st = self.chan.lock();
            st.closed = true;
            st.receiver_gone = true;
            st.queued = 0;
            st.bytes = Vec::new();
            st.spare_bytes = Vec::new();
            std::mem::take(&mut st.chunks)
        };
        self.chan.closed.cancel();
        self.chan.room.notify_waiters();
        // Outside the lock: their drop answers `push_durable` callers with `Closed`.
        drop(queued);
    }
}

#[cfg(test)]
mod tests;
