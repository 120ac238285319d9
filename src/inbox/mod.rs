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
//! A mutex around a list of message chunks, two counts and an `idle` flag:
//! - a producer locks, checks the bound, appends, lowers `idle` if it was raised, and
//!   unlocks; only if it lowered `idle` does it wake the writer (a [`Notify`]);
//! - the writer takes every chunk in one critical section (it moves the chunk
//!   pointers, not the messages, whatever the backlog) and hands the emptied chunks
//!   back on its next take, so a steady state allocates nothing;
//! - `push` callers waiting for room wait on another `Notify`, signalled after takes;
//! - a record's bytes travel in the queue's byte arena when small ([`arena`]).
//!
//! Two ways in: [`Sender::try_send_record`] (no waiting: the sink's fast path) and a
//! [`Permit`] from [`Sender::reserve`] (waits for room), which sends a record or a
//! request. Records are counted ([`Sender::records`]) inside the critical section a
//! send pays anyway.
//!
//! The writer locks once per round, so the lock's cache line stays with the producers
//! between rounds; producers pay one uncontended lock and unlock per message.
//!
//! # Invariants
//!
//! - `queued + reserved <= capacity` (checked under the lock; `reserved` counts
//!   [`Permit`]s not yet used).
//! - FIFO: messages are taken in the order their critical sections ran.
//! - After [`Receiver::close`], nothing new is accepted; what was queued or reserved
//!   before is still received. [`Receiver::recv`] returns 0 only when the queue is
//!   closed (or every sender is gone), empty, and no permit is outstanding.
//! - No lost wake-up: the writer registers its wait, then, under the lock, finds the
//!   queue empty and raises `idle`. The first producer to queue after that critical
//!   section lowers `idle` in its own and wakes the writer after unlocking, which the
//!   registered wait receives. Producers after it see `idle` lowered and pay nothing:
//!   the writer, once awake, takes everything queued. A wake-up with nothing to take
//!   is harmless (one empty pass). Checked by the loom test in `loom.rs` under every
//!   interleaving loom explores, and by a real-time stress test.
//! - When the receiver is dropped, every queued message is dropped too (so a
//!   `push_durable` waiting on one sees its reply channel closed, never a hang).
//!
//! `idle` lives in the locked state rather than in an atomic beside it: the producer
//! already owns that cache line when it reads the flag, so the check is free, and the
//! protocol needs no memory-ordering argument beyond the lock's.

mod arena;
#[cfg(all(test, walsink_loom))]
mod loom;
mod sync;

pub(crate) use arena::{Arena, Payload};

use std::sync::{Arc, PoisonError};

use tokio_util::sync::CancellationToken;

use arena::ArenaQueue;
use sync::{Mutex, MutexGuard, Notify};

/// Messages per chunk: a chunk is allocated when the queue grows past a multiple of
/// this, so a burst never reallocates (and copies) the whole backlog under the lock.
const CHUNK: usize = 256;

/// What the receiver took: messages (as chunks, oldest first) and the arena chunks
/// holding their records' bytes.
#[derive(Debug)]
pub(crate) struct Taken<M> {
    /// Messages, oldest first. The caller empties the chunks as it handles them.
    pub(crate) msgs: Vec<Vec<M>>,
    /// The bytes the messages' payloads refer to.
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

#[derive(Debug)]
struct State<M> {
    /// Queued messages, oldest first; every chunk but the last is full.
    chunks: Vec<Vec<M>>,
    /// Emptied chunks, ready for reuse.
    spare: Vec<Vec<M>>,
    /// The queued records' bytes.
    arena: ArenaQueue,
    queued: usize,
    reserved: usize,
    /// Records ever accepted (see [`Sender::records`]).
    records: u64,
    /// Raised by the receiver when it found the queue empty and is about to wait;
    /// lowered by the first producer to queue after that, which then wakes it.
    idle: bool,
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
    /// was handled.
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
            st.arena.recycle(&mut out.arena);
        }
    }

    /// Moves every queued message and arena chunk to `out` (under the lock).
    fn take_all(&self, st: &mut State<M>, out: &mut Taken<M>) -> usize {
        // Awake: no producer needs to wake it until it next finds the queue empty.
        st.idle = false;
        self.recycle(st, out);
        st.arena.take_into(&mut out.arena);
        out.msgs.append(&mut st.chunks);
        std::mem::take(&mut st.queued)
    }

    /// Wakes the receiver if the message just queued (in a critical section that
    /// returned `wake`) was the first since it went idle. Call after unlocking.
    fn wake_receiver(&self, wake: bool) {
        if wake {
            self.data.notify_one();
        }
    }
}

impl<M> State<M> {
    /// Queues `msg`; true if the receiver was idle and must be woken (see
    /// [`Chan::wake_receiver`]).
    fn push(&mut self, msg: M) -> bool {
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
        std::mem::take(&mut self.idle)
    }
}

/// Creates a queue holding at most `capacity` messages.
pub(crate) fn channel<M>(capacity: usize) -> (Sender<M>, Receiver<M>) {
    let chan = Arc::new(Chan {
        state: Mutex::new(State {
            chunks: Vec::new(),
            spare: Vec::new(),
            arena: ArenaQueue::default(),
            queued: 0,
            reserved: 0,
            records: 0,
            idle: false,
            closed: false,
            receiver_gone: false,
            sender_gone: false,
        }),
        capacity,
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

/// Why a send without waiting was refused (what was being sent comes back).
#[derive(Debug)]
pub(crate) enum TrySendError<X> {
    /// `capacity` messages are queued or reserved.
    Full(X),
    /// The receiver closed.
    Closed(X),
}

/// The producers' end (one per sink; shared by reference).
#[derive(Debug)]
pub(crate) struct Sender<M> {
    chan: Arc<Chan<M>>,
}

impl<M> Sender<M> {
    /// Queues `msg` if there is room, without waiting (not a record: uncounted).
    #[cfg(test)]
    pub(crate) fn try_send(&self, msg: M) -> Result<(), TrySendError<M>> {
        self.try_send_with(msg, 0, |_, msg| msg)
    }

    /// Queues the record message `make(payload, extra)` if there is room, without
    /// waiting, and counts it in [`records`](Self::records). The payload holds
    /// `bytes`: copied into the arena when small (`bytes` is left as it was), else
    /// moved out. `make` runs under the lock: it must only build the message. When
    /// refused, `bytes` is untouched and `extra` comes back.
    pub(crate) fn try_send_record<X>(
        &self,
        bytes: &mut Vec<u8>,
        extra: X,
        make: impl FnOnce(Payload, X) -> M,
    ) -> Result<(), TrySendError<X>> {
        self.try_send_with(extra, 1, |st, x| make(st.arena.payload(bytes), x))
    }

    /// Queues one record message `make(payload)` per encoding of `encodings`, in
    /// order, in one critical section and with at most one wake-up, without waiting.
    /// With `all`, either every one is queued or none is (`Full` if the queue lacks
    /// room for all of them); without, the longest prefix that fits is queued
    /// (possibly none). Returns how many were queued, each counted in
    /// [`records`](Self::records). Payloads are built as in
    /// [`try_send_record`](Self::try_send_record): a queued encoding is left as it
    /// was (copied into the arena) or emptied (moved out); the rest are untouched.
    pub(crate) fn try_send_records(
        &self,
        encodings: &mut [Vec<u8>],
        all: bool,
        mut make: impl FnMut(Payload) -> M,
    ) -> Result<usize, TrySendError<()>> {
        let chan = &*self.chan;
        let (n, wake) = {
            let mut st = chan.lock();
            if st.closed {
                return Err(TrySendError::Closed(()));
            }
            let room = chan.capacity.saturating_sub(st.queued + st.reserved);
            if all && room < encodings.len() {
                return Err(TrySendError::Full(()));
            }
            let n = room.min(encodings.len());
            let mut wake = false;
            for bytes in encodings.iter_mut().take(n) {
                let msg = make(st.arena.payload(bytes));
                wake |= st.push(msg);
            }
            st.records += n as u64;
            (n, wake)
        };
        chan.wake_receiver(wake);
        Ok(n)
    }

    /// The one non-waiting send: under the lock, checks for room, then queues the
    /// message `build` makes and counts it.
    fn try_send_with<X>(
        &self,
        extra: X,
        count: u64,
        build: impl FnOnce(&mut State<M>, X) -> M,
    ) -> Result<(), TrySendError<X>> {
        let chan = &*self.chan;
        let wake = {
            let mut st = chan.lock();
            if st.closed {
                return Err(TrySendError::Closed(extra));
            }
            if st.queued + st.reserved >= chan.capacity {
                return Err(TrySendError::Full(extra));
            }
            let msg = build(&mut st, extra);
            st.records += count;
            st.push(msg)
        };
        chan.wake_receiver(wake);
        Ok(())
    }

    /// Messages that fit in the queue right now (a snapshot: others may take or free
    /// room before the caller acts on it).
    pub(crate) fn room(&self) -> usize {
        let st = self.chan.lock();
        self.chan.capacity.saturating_sub(st.queued + st.reserved)
    }

    /// Records accepted so far (sent with [`try_send_record`](Self::try_send_record)
    /// or [`Permit::send_record`]). Exact: read under the lock.
    pub(crate) fn records(&self) -> u64 {
        self.chan.lock().records
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
    /// Queues `msg` (a request, not a record: uncounted) in the reserved room. After
    /// the receiver was dropped, `msg` is dropped (as with a closed tokio channel).
    pub(crate) fn send(self, msg: M) {
        self.send_with(msg, 0, |_, msg| msg);
    }

    /// Queues the record message `make(payload, extra)` in the reserved room, as
    /// [`Sender::try_send_record`], and counts it. After the receiver was dropped,
    /// nothing is queued and the message is never built.
    pub(crate) fn send_record<X>(
        self,
        mut bytes: Vec<u8>,
        extra: X,
        make: impl FnOnce(Payload, X) -> M,
    ) {
        self.send_with(extra, 1, |st, x| make(st.arena.payload(&mut bytes), x));
    }

    /// The one send through a permit: under the lock, gives the room back and queues
    /// the message `build` makes, unless the receiver is gone (then `extra` is dropped,
    /// outside the lock: dropping may run arbitrary drop code).
    fn send_with<X>(mut self, extra: X, count: u64, build: impl FnOnce(&mut State<M>, X) -> M) {
        let Some(sender) = self.sender.take() else {
            return;
        };
        let chan = &*sender.chan;
        let (dropped, wake) = {
            let mut st = chan.lock();
            st.reserved -= 1;
            if st.receiver_gone {
                (Some(extra), false)
            } else {
                let msg = build(&mut st, extra);
                st.records += count;
                (None, st.push(msg))
            }
        };
        drop(dropped);
        chan.wake_receiver(wake);
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
            // Registered before the check: see "No lost wake-up" in the module doc.
            data.as_mut().enable();
            let taken = {
                let mut st = chan.lock();
                if st.queued > 0 {
                    Some(chan.take_all(&mut st, out))
                } else if (st.closed || st.sender_gone) && st.reserved == 0 {
                    Some(0)
                } else {
                    st.idle = true;
                    None
                }
            };
            if let Some(n) = taken {
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
            st.arena.clear();
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
