//! One round of the writer (see "One round" in the parent module): handling each
//! message taken from the queue, refusing what comes after a sticky failure, holding
//! what a full disk left unwritten, and answering the waiters once a round is synced.

use std::io;
use std::time::Duration;

use tokio::sync::mpsc;
use tokio::time::Instant;

use super::{
    FlushRequest, NO_SPACE_RETRY_MAX, Progress, Stop, SyncPolicy, WRITE_BUF_BYTES, WalWriter,
    WriterMsg, missing_payload,
};
use crate::error::SinkError;
use crate::inbox::{Arena, Taken};
use crate::wal::format::frame_bytes;

impl WalWriter {
    /// Answers `push_durable` and `sync` waiters: with the failure if there is one,
    /// else with success (the caller has just synced).
    pub(super) fn answer_waiters(&mut self) {
        self.expected_waiters = self.waiting_durable.len() + self.waiting_sync.len();
        let failure = self.failure();
        for (seq, tx) in self.waiting_durable.drain(..) {
            let _ = tx.send(failure.clone().map_or(Ok(seq), Err));
        }
        for tx in self.waiting_sync.drain(..) {
            let _ = tx.send(failure.clone().map_or(Ok(()), Err));
        }
    }

    /// Answers a message that arrives after a sticky failure (in place: its reply
    /// channel is taken, so it is answered once).
    pub(super) fn refuse(&mut self, msg: &mut WriterMsg) {
        let err = self.failure().unwrap_or(SinkError::Closed);
        match msg {
            WriterMsg::Record { payload, durable } => {
                self.untallied += 1;
                self.log.shared.release(frame_bytes(payload.len()));
                if let Some(tx) = durable.take() {
                    let _ = tx.send(Err(err));
                }
            }
            WriterMsg::Sync(tx) | WriterMsg::Flush(tx) => {
                if let Some(tx) = tx.take() {
                    let _ = tx.send(Err(err));
                }
            }
        }
    }

    /// Handles one message in place (its reply channel is taken out, so the message
    /// needs no move). On a stop, says whether the message was consumed (a record
    /// appended to the buffer before the write failed) or must be handled again.
    pub(super) fn handle(
        &mut self,
        msg: &mut WriterMsg,
        arena: &Arena,
        flushes: &mpsc::UnboundedSender<FlushRequest>,
    ) -> Option<(Stop, bool)> {
        if self.failed.is_some() {
            self.refuse(msg);
            return None;
        }
        match msg {
            WriterMsg::Record { payload, durable } => match payload
                .bytes(arena)
                .ok_or_else(missing_payload)
                .and_then(|bytes| self.append(bytes))
            {
                Ok(seq) => {
                    self.untallied += 1;
                    if let Some(tx) = durable.take() {
                        self.waiting_durable.push((seq, tx));
                    }
                    if self.buf.len() >= WRITE_BUF_BYTES {
                        let res = self.write_out();
                        // A long round: let delivery start on what is written.
                        self.wake_delivery();
                        res.err().map(|stop| (stop, true))
                    } else {
                        None
                    }
                }
                Err(stop) => Some((stop, false)),
            },
            WriterMsg::Sync(tx) => {
                self.waiting_sync.extend(tx.take());
                None
            }
            WriterMsg::Flush(tx) => match self.write_out() {
                Ok(()) => {
                    if let Some(done) = tx.take() {
                        let req = FlushRequest {
                            target: self.last_seq(),
                            done,
                        };
                        if let Err(mpsc::error::SendError(req)) = flushes.send(req) {
                            let _ = req.done.send(Err(SinkError::Closed));
                        }
                    }
                    None
                }
                Err(stop) => Some((stop, false)),
            },
        }
    }

    /// Processes the held messages, then `incoming` in place (each chunk is cleared
    /// once handled), then ends the round with a write (and a sync when someone waits
    /// for one or the mode asks). `Stalled` if the disk is full: what is left moves to
    /// `held` for the next attempt.
    pub(super) fn process(
        &mut self,
        incoming: &mut Taken<WriterMsg>,
        flushes: &mpsc::UnboundedSender<FlushRequest>,
    ) -> Progress {
        let Taken { msgs, arena } = incoming;
        let mut held = std::mem::take(&mut self.held);
        while let Some(mut msg) = held.pop_front() {
            // Held messages own their payloads (see `hold_rest`).
            if let Some((e, consumed)) = self.step(&mut msg, &Arena::default(), flushes) {
                // Keep the order: this message (unless consumed), the rest, then
                // everything taken in this round.
                if !consumed {
                    held.push_front(msg);
                }
                self.held = held;
                self.hold_rest(msgs, 0, 0, arena);
                return self.stall(e);
            }
        }
        for c in 0..msgs.len() {
            let mut i = 0;
            while let Some(msg) = msgs.get_mut(c).and_then(|chunk| chunk.get_mut(i)) {
                if let Some((e, consumed)) = self.step(msg, arena, flushes) {
                    self.hold_rest(msgs, c, if consumed { i + 1 } else { i }, arena);
                    return self.stall(e);
                }
                i += 1;
            }
            if let Some(chunk) = msgs.get_mut(c) {
                // Handled: every reply was taken, so dropping them does nothing.
                chunk.clear();
            }
        }
        self.tally();
        if self.failed.is_some() {
            return Progress::Done;
        }
        let wants_sync = !self.waiting_durable.is_empty()
            || !self.waiting_sync.is_empty()
            || self.log.sync_policy == SyncPolicy::EveryRound
            || self.sync_deadline().is_some_and(|d| d <= Instant::now());
        let res = if wants_sync {
            self.sync()
        } else {
            self.write_out()
        };
        match res {
            Ok(()) => {
                if wants_sync {
                    self.answer_waiters();
                }
                Progress::Done
            }
            Err(Stop::NoSpace(e)) => self.stall(e),
            Err(Stop::Fatal(e)) => {
                self.fail(e);
                Progress::Done
            }
        }
    }

    /// Handles one message of a round. A fatal error fails the sink (and refuses the
    /// message if `handle` had not consumed it) and the round goes on, refusing the
    /// rest; a full disk returns the error and whether the message was consumed, for
    /// the caller to hold what is left.
    pub(super) fn step(
        &mut self,
        msg: &mut WriterMsg,
        arena: &Arena,
        flushes: &mpsc::UnboundedSender<FlushRequest>,
    ) -> Option<(io::Error, bool)> {
        match self.handle(msg, arena, flushes)? {
            (Stop::NoSpace(e), consumed) => Some((e, consumed)),
            (Stop::Fatal(e), consumed) => {
                self.fail(e);
                if !consumed {
                    self.refuse(msg);
                }
                None
            }
        }
    }

    /// Moves the unhandled messages of a take (from message `from` of chunk `c` on) to
    /// `held`, in order, copying their payloads out of the arena: the take's chunks go
    /// back to the queue before they are retried.
    pub(super) fn hold_rest(
        &mut self,
        msgs: &mut [Vec<WriterMsg>],
        c: usize,
        from: usize,
        arena: &Arena,
    ) {
        for (k, chunk) in msgs.iter_mut().enumerate().skip(c) {
            let start = if k == c { from.min(chunk.len()) } else { 0 };
            for mut msg in chunk.drain(start..) {
                if let WriterMsg::Record { payload, .. } = &mut msg {
                    payload.detach(arena);
                }
                self.held.push_back(msg);
            }
            chunk.clear();
        }
    }

    pub(super) fn stall(&mut self, e: io::Error) -> Progress {
        self.log
            .shared
            .disk_full
            .store(true, std::sync::atomic::Ordering::Release);
        tracing::warn!(dir = %self.log.dir.display(), error = %e, held = self.held.len(), "WAL disk full; holding writes until space is freed");
        Progress::Stalled
    }

    /// One retry while the disk is full (see "Full disk" in the module doc): write what
    /// is held. Returns the pause before the next retry, or `None` once it went through,
    /// or once shutdown (`closing`) gave up on it.
    pub(super) fn retry_held(
        &mut self,
        flushes: &mpsc::UnboundedSender<FlushRequest>,
        pause: Duration,
        closing: bool,
    ) -> Option<Duration> {
        match self.process(&mut Taken::default(), flushes) {
            Progress::Done => {
                self.log
                    .shared
                    .disk_full
                    .store(false, std::sync::atomic::Ordering::Release);
                tracing::info!(dir = %self.log.dir.display(), "WAL disk space available again; writing resumed");
                None
            }
            Progress::Stalled if closing => {
                self.log
                    .shared
                    .disk_full
                    .store(false, std::sync::atomic::Ordering::Release);
                self.abandon(io::Error::from(io::ErrorKind::StorageFull));
                None
            }
            Progress::Stalled => Some((pause * 2).min(NO_SPACE_RETRY_MAX)),
        }
    }

    /// Gives up on what is held (shutdown while the disk is full).
    pub(super) fn abandon(&mut self, why: io::Error) {
        let lost = self
            .held
            .iter()
            .filter(|m| matches!(m, WriterMsg::Record { .. }))
            .count();
        tracing::error!(dir = %self.log.dir.display(), error = %why, lost_records = lost, "shutdown while the disk is full: unwritten records are lost");
        self.fail(why);
        while let Some(mut msg) = self.held.pop_front() {
            self.refuse(&mut msg);
        }
    }
}
