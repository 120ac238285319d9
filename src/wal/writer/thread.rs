//! The writer thread: its loop, one round per take from the queue, and the waits
//! around group commit.
//!
//! # Group commit with few callers
//!
//! Two measured effects shape the waits around a round (`benches/group_commit.rs`):
//! - *gather*: when a round will fsync for fewer waiters than the previous round
//!   answered, the others are usually resubmitting at that moment. The round polls
//!   the queue (yielding the CPU) for up to half an average fsync (at most 500 µs)
//!   until they are in. Without it, 8 or 64 callers split into alternating small and
//!   large rounds, each paying a full fsync.
//! - *linger*: after answering waiters, the writer polls the queue for up to half an
//!   average fsync before parking, so the next `push_durable` of a lone caller does
//!   not pay the writer thread's wake-up.
//!
//! Neither waits when nobody waits for an fsync: `try_push` traffic never lingers.
//!

use std::io;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;

use crate::deadline::sleep_until_opt;

use super::message::{FlushRequest, WriterMsg, waiters_in};
use super::{NO_SPACE_RETRY_FIRST, Progress, Stop, WalWriter};
use crate::inbox::{self, Taken};

/// Longest a round waits for returning waiters before its fsync (see `gather`).
const MAX_GATHER: Duration = Duration::from_micros(500);

impl WalWriter {
    /// One round over a take from the queue (already in `chunks`).
    fn round(
        &mut self,
        rx: &mut inbox::Receiver<WriterMsg>,
        chunks: &mut Taken<WriterMsg>,
        flushes: &mpsc::UnboundedSender<FlushRequest>,
    ) -> Progress {
        // Counting waiters costs a pass over the take: only when gathering may apply.
        if self.expected_waiters > 0 {
            self.gather(rx, chunks);
        }
        self.process(chunks, flushes)
    }

    /// After a round answered fsync waiters, they usually come straight back with
    /// their next record. Rather than park at once (and have the next caller pay the
    /// writer thread's wake-up, tens of µs on a VM), poll the queue for at most half an
    /// average fsync (and [`MAX_GATHER`]), yielding the CPU between polls. Returns how
    /// many messages it took; 0 (and no more lingering until waiters are answered
    /// again) if none came.
    fn linger(
        &mut self,
        rx: &mut inbox::Receiver<WriterMsg>,
        chunks: &mut Taken<WriterMsg>,
    ) -> usize {
        if self.expected_waiters == 0 {
            return 0;
        }
        let deadline = std::time::Instant::now() + (self.fsync_avg / 2).min(MAX_GATHER);
        loop {
            let n = rx.try_take(chunks);
            if n > 0 {
                return n;
            }
            if std::time::Instant::now() >= deadline {
                self.expected_waiters = 0;
                return 0;
            }
            std::thread::yield_now();
        }
    }

    /// Group commit for a few concurrent callers. When a round will fsync for fewer
    /// waiters than the last synced round answered, those callers are probably
    /// resubmitting right now: wait for them, yielding the CPU, for at most half an
    /// average fsync (and [`MAX_GATHER`]), then take what arrived. Without this, 8 or
    /// 64 callers split into alternating small and large rounds (the first caller back
    /// starts a round alone). A lone caller never waits: its round already holds the one
    /// waiter expected.
    fn gather(&self, rx: &mut inbox::Receiver<WriterMsg>, chunks: &mut Taken<WriterMsg>) {
        let mut waiters = waiters_in(&chunks.msgs);
        if waiters == 0 || waiters >= self.expected_waiters {
            return;
        }
        let deadline = std::time::Instant::now() + (self.fsync_avg / 2).min(MAX_GATHER);
        while waiters < self.expected_waiters && std::time::Instant::now() < deadline {
            std::thread::yield_now();
            let from = chunks.msgs.len();
            if rx.try_take(chunks) > 0 {
                waiters += waiters_in(chunks.msgs.get(from..).unwrap_or_default());
            }
        }
    }

    /// The writer loop; returns when the queue is closed and empty (cancellation, or
    /// every sink handle dropped). The one loop of the writer that ends only then.
    ///
    /// Everything that holds a caller's reply (the queue, the current take, the writer's
    /// waiters) is borrowed, not owned: if this panics, [`spawn_writer`] fails the sink
    /// before any reply is dropped, so no caller reads the panic as `Closed`.
    async fn run(
        &mut self,
        rx: &mut inbox::Receiver<WriterMsg>,
        chunks: &mut Taken<WriterMsg>,
        flushes: mpsc::UnboundedSender<FlushRequest>,
        shutdown: CancellationToken,
    ) -> Result<(), Arc<io::Error>> {
        let mut closing = false;
        let mut stalled: Option<Duration> = None;
        loop {
            // Every write is followed by this wake-up before the writer waits again.
            self.wake_delivery();
            if let Some(pause) = stalled {
                // Disk full: take nothing new (the queue fills and pushes back), retry.
                tokio::select! {
                    biased;
                    () = shutdown.cancelled(), if !closing => {
                        closing = true;
                        rx.close();
                    }
                    () = tokio::time::sleep(pause) => {}
                }
                stalled = self.retry_held(&flushes, pause, closing);
                continue;
            }
            if !closing && self.failed.is_none() && self.linger(rx, chunks) > 0 {
                if self.round(rx, chunks, &flushes) == Progress::Stalled {
                    stalled = Some(NO_SPACE_RETRY_FIRST);
                }
                continue;
            }
            let deadline = self.sync_deadline();
            tokio::select! {
                biased;
                () = shutdown.cancelled(), if !closing => {
                    // Stop accepting; what is queued is still taken and written below.
                    closing = true;
                    rx.close();
                }
                () = sleep_until_opt(deadline), if deadline.is_some() && self.failed.is_none() => {
                    match self.sync() {
                        Ok(()) => {}
                        Err(Stop::NoSpace(e)) => {
                            self.stall(e);
                            stalled = Some(NO_SPACE_RETRY_FIRST);
                        }
                        Err(Stop::Fatal(e)) => {
                            self.fail(e);
                        }
                    }
                }
                n = rx.recv(chunks) => {
                    if n == 0 {
                        break;
                    }
                    if self.round(rx, chunks, &flushes) == Progress::Stalled {
                        stalled = Some(NO_SPACE_RETRY_FIRST);
                    }
                }
            }
        }
        self.finish()
    }
}

/// How the writer thread ended; sent to the delivery task.
#[derive(Debug)]
pub(crate) enum WriterExit {
    /// The queue closed, the last records were synced and the lease written.
    Clean,
    /// A write or fsync failed (sticky); see [`Shared::fail`](crate::shared::Shared::fail).
    Failed(Arc<io::Error>),
    /// The thread panicked: a violated invariant in this crate, or a panicking storage.
    Panicked(String),
}

/// The text of a panic payload.
pub(crate) fn panic_message(payload: &(dyn std::any::Any + Send)) -> String {
    payload
        .downcast_ref::<String>()
        .cloned()
        .or_else(|| payload.downcast_ref::<&str>().map(|s| s.to_string()))
        .unwrap_or_else(|| "panic".to_string())
}

/// Starts the writer thread. `on_exit` is answered with how it ended. The directory
/// lock is released (this clone of it) only after the thread's last write.
pub(crate) fn spawn_writer(
    mut writer: WalWriter,
    mut rx: inbox::Receiver<WriterMsg>,
    flushes: mpsc::UnboundedSender<FlushRequest>,
    shutdown: CancellationToken,
    on_exit: oneshot::Sender<WriterExit>,
) -> io::Result<std::thread::JoinHandle<()>> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()?;
    std::thread::Builder::new()
        .name("walsink-writer".into())
        .spawn(move || {
            let shared = Arc::clone(&writer.log.shared);
            let mut chunks: Taken<WriterMsg> = Taken::default();
            let ran = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                rt.block_on(writer.run(&mut rx, &mut chunks, flushes, shutdown))
            }));
            let exit = match ran {
                Ok(Ok(())) => WriterExit::Clean,
                Ok(Err(e)) => WriterExit::Failed(e),
                Err(payload) => {
                    let msg = panic_message(payload.as_ref());
                    // Fail the sink first, then answer the waiters with that failure:
                    // only then are the queue and the unprocessed take dropped, so every
                    // caller sees an error, never `Closed` and never "durable".
                    writer.fail(io::Error::other(format!(
                        "internal error: the WAL writer thread panicked: {msg}"
                    )));
                    WriterExit::Panicked(msg)
                }
            };
            drop(chunks);
            drop(rx);
            // Releases the writer's clone of the directory lock: nothing more is written.
            drop(writer);
            let _ = on_exit.send(exit);
            // Wake the delivery task: it must notice that writing has ended.
            shared.data_ready.notify_one();
        })
}
