//! Zero-filling the active segment ahead of the writer, on a thread of its own.
//!
//! # Why
//!
//! A new segment is preallocated with `fallocate`, which leaves *unwritten* extents: on
//! ext4 (and XFS) the first write into each block converts its extent, a metadata
//! change, so an fdatasync after such a write also commits the journal. Writing zeros
//! over the region first, and syncing them, makes the extents plain written blocks:
//! the writer's later fdatasyncs then flush data only. On the project's machine that
//! took 100 000 records in batches of 64 + `sync` from 382–390 ms to 251–277 ms (3
//! alternating runs; docs/PERFORMANCE.md). On a copy-on-write filesystem (btrfs) the
//! zeros use up the preallocated extents' one in-place write, so it gains nothing
//! there.
//! The zeros are written off the writer's path, by this thread, ahead of the writer.
//!
//! # The protocol (no byte the writer wrote is ever overwritten)
//!
//! A *job* is one segment file, from `floor` (at least `lead` bytes past the writer's
//! position when the job starts) to the file's length when it starts (the
//! preallocated size: the thread never extends a file). The thread zeroes
//! `chunk`-sized pieces upward from `floor`, each `pwrite` under the job lock, then
//! publishes `zeroed_to` (the end of the zeros written, release) and syncs them
//! outside the lock. It stays within `window` of the writer's last write, so its disk
//! traffic follows the writer's pace (zeroing a whole segment at once competed with
//! the writer's own fsyncs and was slower than not zeroing). The writer, before each `pwrite` ending at `end`:
//! - writes freely if `end <= floor` (the thread never writes below `floor`) or
//!   `end <= zeroed_to` (acquire: every zero below is already in the file, and the
//!   thread never writes below `zeroed_to` again);
//! - otherwise takes the job over: under the lock it ends the job, so the thread
//!   writes nothing more into the file, and any chunk it was writing has landed
//!   before the writer's bytes. The writer then writes into unwritten extents as
//!   before, which is only slower.
//!
//! The writer also takes the job over before it changes the file's length (sealing a
//! segment, cutting a partial write on a full disk) and before it moves to a new
//! segment; it joins the thread before it releases the directory lock.
//!
//! # Errors and crashes
//!
//! Zeros land only where the file already reads as zeros (a preallocated, never
//! written region), so a crash at any point leaves what recovery already handles: a
//! zero tail after the last frame. A failed zero `pwrite` only ends the job. A failed
//! *fsync* is different: it may have dropped the writer's dirty pages of the same file
//! too (fsyncgate), so it is recorded, and the writer, after each of its own fsyncs,
//! waits for any of this thread's fsyncs in progress and fails (sticky) if one failed:
//! a record is never confirmed durable on the strength of an fsync that came after a
//! failed one. The thread opens its own file handle, and drops it when the job ends,
//! so a deleted segment's space is not held.

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::thread::JoinHandle;

use super::storage::{Storage, StorageFile};

/// Bytes zeroed per `pwrite` + fsync (at most; see [`Sizes`]).
pub(crate) const CHUNK: u64 = 256 << 10;
/// Gap left between the writer's position and the first zero of a job: the writer
/// writes there while the thread gets ahead.
pub(crate) const LEAD: u64 = 128 << 10;
/// How far ahead of the writer the thread zeroes: it waits beyond that, so its disk
/// traffic follows the writer's pace instead of competing with its fsyncs.
pub(crate) const WINDOW: u64 = 1 << 20;

static ZEROS: [u8; CHUNK as usize] = [0; CHUNK as usize];

/// A job's chunk, lead and window: the constants above for segments of 2 MiB and
/// more, an eighth of the segment (at least 512 bytes) per chunk below that, so that
/// small segments (the tests', the simulator's) run the same protocol.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Sizes {
    pub(crate) chunk: u64,
    pub(crate) lead: u64,
    pub(crate) window: u64,
}

impl Sizes {
    pub(crate) fn for_segment(bytes: u64) -> Self {
        let chunk = (bytes / 8).clamp(512, CHUNK) / 512 * 512;
        Self {
            chunk,
            lead: chunk.min(LEAD),
            window: chunk.saturating_mul(4).min(WINDOW),
        }
    }
}

/// The zero-filling thread and the writer's side of the protocol (see the module docs).
#[derive(Debug)]
pub(crate) struct Prefill {
    inner: Arc<Inner>,
    thread: Option<JoinHandle<()>>,
}

#[derive(Debug)]
struct Inner {
    state: Mutex<State>,
    /// Signals a new job or stop to the thread, and the end of an fsync to the writer.
    changed: Condvar,
    /// The current job's floor (`u64::MAX` when there is no job: the writer is free).
    floor: AtomicU64,
    /// The current job's zeros end here (at or above `floor` once it started).
    zeroed_to: AtomicU64,
    /// Where the writer's last write ended (the thread stays within `window` of it).
    position: AtomicU64,
    /// The current job's window.
    window: AtomicU64,
    /// The thread waits for the writer to advance.
    parked: std::sync::atomic::AtomicBool,
}

#[derive(Debug, Default)]
struct State {
    job: Option<Job>,
    stop: bool,
    /// An fsync of this thread is running.
    syncing: bool,
    /// An fsync of this thread failed: the writer must fail.
    sync_failed: Option<String>,
    /// Bytes of zeros written since start (for tests and logs).
    zeroed_bytes: u64,
}

#[derive(Debug)]
struct Job {
    file: Arc<dyn StorageFile>,
    next: u64,
    end: u64,
    chunk: u64,
}

fn lock(m: &Mutex<State>) -> MutexGuard<'_, State> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Prefill {
    /// Starts the thread (idle until [`start`](Self::start)). `None` if it cannot be
    /// spawned: zero-filling is an optimization only.
    pub(crate) fn spawn() -> Option<Self> {
        let inner = Arc::new(Inner {
            state: Mutex::new(State::default()),
            changed: Condvar::new(),
            floor: AtomicU64::new(u64::MAX),
            zeroed_to: AtomicU64::new(0),
            position: AtomicU64::new(0),
            window: AtomicU64::new(WINDOW),
            parked: std::sync::atomic::AtomicBool::new(false),
        });
        let run = Arc::clone(&inner);
        match std::thread::Builder::new()
            .name("walsink-prefill".into())
            .spawn(move || run.run_guarded())
        {
            Ok(thread) => Some(Self {
                inner,
                thread: Some(thread),
            }),
            Err(e) => {
                tracing::debug!(error = %e, "no prefill thread; segments are not zero-filled ahead");
                None
            }
        }
    }

    /// Starts zero-filling `path` (the active segment, whose writer is at `position`)
    /// from `position + lead` to its current length ([`Sizes`]). Ends any earlier job
    /// first.
    pub(crate) fn start(&self, storage: &dyn Storage, path: PathBuf, position: u64) {
        self.take_over();
        let file: Arc<dyn StorageFile> = match storage.open(&path, true) {
            Ok(f) => Arc::from(f),
            Err(e) => {
                tracing::debug!(path = %path.display(), error = %e, "prefill: cannot open the segment");
                return;
            }
        };
        let end = match file.len() {
            Ok(len) => len,
            Err(_) => return,
        };
        let sizes = Sizes::for_segment(end);
        let floor = position
            .div_ceil(sizes.chunk.min(4096))
            .saturating_mul(sizes.chunk.min(4096))
            .saturating_add(sizes.lead);
        if floor >= end {
            return;
        }
        let mut st = lock(&self.inner.state);
        self.inner.position.store(position, Ordering::Release);
        self.inner.window.store(sizes.window, Ordering::Release);
        self.inner.zeroed_to.store(floor, Ordering::Release);
        self.inner.floor.store(floor, Ordering::Release);
        st.job = Some(Job {
            file,
            next: floor,
            end,
            chunk: sizes.chunk,
        });
        drop(st);
        self.inner.changed.notify_all();
    }

    /// Called by the writer before it writes bytes ending at `end` into the job's
    /// file: returns at once when the thread cannot touch that range, else ends the
    /// job first.
    pub(crate) fn before_write(&self, end: u64) {
        let inner = &*self.inner;
        let zeroed_to = inner.zeroed_to.load(Ordering::Acquire);
        if end <= inner.floor.load(Ordering::Acquire) || end <= zeroed_to {
            // SeqCst with the thread's `parked` store then `position` load: either it
            // sees this position, or this sees it parked and wakes it (taking the lock
            // first, so the wake-up cannot fall before its wait).
            inner.position.store(end, Ordering::SeqCst);
            let half = inner.window.load(Ordering::Relaxed) / 2;
            if zeroed_to < end.saturating_add(half) && inner.parked.load(Ordering::SeqCst) {
                drop(lock(&inner.state));
                inner.changed.notify_all();
            }
            return;
        }
        self.take_over();
    }

    /// Ends the current job: once this returns, the thread writes nothing more into
    /// its file (a chunk it was writing has landed) and has let go of the handle,
    /// except for an fsync in progress.
    pub(crate) fn take_over(&self) {
        let mut st = lock(&self.inner.state);
        st.job = None;
        self.inner.floor.store(u64::MAX, Ordering::Release);
    }

    /// Called by the writer after each fsync of its own that succeeded: waits for an
    /// fsync of the thread in progress, then reports one that failed (sticky).
    pub(crate) fn check_syncs(&self) -> std::io::Result<()> {
        let mut st = lock(&self.inner.state);
        while st.syncing {
            st = self
                .inner
                .changed
                .wait(st)
                .unwrap_or_else(PoisonError::into_inner);
        }
        match &st.sync_failed {
            Some(e) => Err(std::io::Error::other(format!(
                "a segment being zero-filled ahead could not be made durable: {e}"
            ))),
            None => Ok(()),
        }
    }

    /// Bytes of zeros written since the thread started.
    #[cfg(test)]
    pub(crate) fn zeroed_bytes(&self) -> u64 {
        lock(&self.inner.state).zeroed_bytes
    }

    /// Waits until the thread waits for the writer (or has no job).
    #[cfg(test)]
    pub(crate) fn wait_parked(&self) {
        let mut st = lock(&self.inner.state);
        while st.job.is_some() && !self.inner.parked.load(Ordering::Acquire) {
            let (next, _) = self
                .inner
                .changed
                .wait_timeout(st, std::time::Duration::from_millis(1))
                .unwrap_or_else(PoisonError::into_inner);
            st = next;
        }
    }

    /// Waits until at least `bytes` zeros were written since start.
    #[cfg(test)]
    pub(crate) fn wait_zeroed_bytes(&self, bytes: u64) {
        let mut st = lock(&self.inner.state);
        while st.zeroed_bytes < bytes {
            st = self
                .inner
                .changed
                .wait(st)
                .unwrap_or_else(PoisonError::into_inner);
        }
    }

    /// Waits until the current job has zeroed up to `offset` or ended.
    #[cfg(test)]
    pub(crate) fn wait_zeroed(&self, offset: u64) {
        let mut st = lock(&self.inner.state);
        loop {
            let done = match &st.job {
                None => true,
                Some(j) => j.next >= offset.min(j.end) && !st.syncing,
            };
            if done {
                return;
            }
            st = self
                .inner
                .changed
                .wait(st)
                .unwrap_or_else(PoisonError::into_inner);
        }
    }
}

impl Drop for Prefill {
    fn drop(&mut self) {
        {
            let mut st = lock(&self.inner.state);
            st.job = None;
            st.stop = true;
        }
        self.inner.changed.notify_all();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Inner {
    /// Runs the thread; a panic (a bug) fails the writer at its next sync, as a failed
    /// fsync does: the thread may have died inside one, and an fsync whose outcome is
    /// unknown proves nothing.
    fn run_guarded(&self) {
        let ran = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| self.run()));
        if let Err(payload) = ran {
            let msg = super::writer::panic_message(payload.as_ref());
            let mut st = lock(&self.state);
            st.syncing = false;
            st.job = None;
            st.sync_failed = Some(format!("the prefill thread panicked: {msg}"));
            drop(st);
            self.floor.store(u64::MAX, Ordering::Release);
            self.changed.notify_all();
        }
    }

    fn run(&self) {
        let mut st = lock(&self.state);
        loop {
            if st.stop {
                return;
            }
            let Some(job) = st.job.as_mut().filter(|j| j.next < j.end) else {
                st.job = None;
                st = self
                    .changed
                    .wait(st)
                    .unwrap_or_else(PoisonError::into_inner);
                continue;
            };
            let at = job.next;
            let window = self.window.load(Ordering::Relaxed);
            // `parked` before reading the position (see `before_write`).
            self.parked.store(true, Ordering::SeqCst);
            if at >= self.position.load(Ordering::SeqCst).saturating_add(window) {
                st = self
                    .changed
                    .wait(st)
                    .unwrap_or_else(PoisonError::into_inner);
                self.parked.store(false, Ordering::SeqCst);
                continue;
            }
            self.parked.store(false, Ordering::SeqCst);
            let n = (job.end - at).min(job.chunk);
            // `n <= CHUNK`, so the slice is in bounds.
            let zeros = ZEROS.get(..n as usize).unwrap_or(&ZEROS);
            if let Err(e) = job.file.write_all_at(zeros, at) {
                tracing::debug!(error = %e, "prefill: zero write failed; the segment is not zero-filled further");
                st.job = None;
                self.changed.notify_all();
                continue;
            }
            job.next = at + n;
            let file = Arc::clone(&job.file);
            st.zeroed_bytes += n;
            self.zeroed_to.store(at + n, Ordering::Release);
            crate::crashpoint::hit("prefill.after_zero");
            st.syncing = true;
            drop(st);
            // fsync the zeros, so that the writer's later fdatasyncs in this range
            // commit data only. Its failure fails the writer (module docs).
            let synced = file.sync();
            drop(file);
            st = lock(&self.state);
            st.syncing = false;
            if let Err(e) = synced {
                tracing::warn!(error = %e, "prefill: fsync failed; the sink fails at its next sync");
                st.sync_failed = Some(e.to_string());
                st.job = None;
            }
            self.changed.notify_all();
        }
    }
}

#[cfg(test)]
mod tests;
