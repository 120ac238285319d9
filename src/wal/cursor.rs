//! The cursor: how far the drain has acknowledged, and deleting what it passed.
//!
//! `advance` writes the new value to the cursor register's scratch slot (page cache:
//! survives a process crash, not a power loss) after every acknowledged batch. A power
//! loss can therefore move the cursor back to its last durable value, which costs
//! duplicates, never loss.
//!
//! Segments are deleted only after the cursor that passes them is durable: "persist the
//! cursor, then delete". The reverse order is Vector's crash loop (a ledger pointing
//! into a deleted file). The active segment is never deleted.

use std::io;
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, PoisonError};

use super::register::Register;
use super::segment::{SegmentSet, segment_path};
use super::storage::{LockGuard, Storage};
use crate::shared::Shared;

/// The persisted acked seq and the deletion of fully acknowledged segments.
#[derive(Debug)]
pub(crate) struct Cursor {
    register: Register,
    storage: Arc<dyn Storage>,
    dir: PathBuf,
    segments: Arc<Mutex<SegmentSet>>,
    shared: Arc<Shared>,
    /// The directory lock: the cursor writes and deletes, so it holds a clone for as
    /// long as it lives (the writer thread holds the other).
    _lock: Arc<dyn LockGuard>,
}

impl Cursor {
    pub(crate) fn new(
        register: Register,
        storage: Arc<dyn Storage>,
        dir: PathBuf,
        segments: Arc<Mutex<SegmentSet>>,
        shared: Arc<Shared>,
        lock: Arc<dyn LockGuard>,
    ) -> Self {
        Self {
            register,
            storage,
            dir,
            segments,
            shared,
            _lock: lock,
        }
    }

    /// Seq through which everything is acknowledged.
    pub(crate) fn acked(&self) -> u64 {
        self.register.value()
    }

    /// Seq through which the acknowledgement is durable (survives a power loss).
    pub(crate) fn durable(&self) -> u64 {
        self.register.durable_value()
    }

    /// Records that everything through `acked_through` is acknowledged, and deletes the
    /// segments that lie wholly at or below it.
    pub(crate) fn advance(&mut self, acked_through: u64) -> io::Result<()> {
        let current = self.register.value();
        assert!(
            acked_through >= current,
            "invariant violation: cursor moving back from {current} to {acked_through}"
        );
        if acked_through > current {
            self.register.write(acked_through)?;
            crate::crashpoint::hit("cursor.after_write");
        }
        self.retire()
    }

    /// Makes the cursor durable (shutdown).
    pub(crate) fn persist(&mut self) -> io::Result<()> {
        self.register.sync()
    }

    fn retire(&mut self) -> io::Result<()> {
        let doomed = self
            .segments
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .fully_acked(self.register.value());
        if doomed.is_empty() {
            return Ok(());
        }
        // fsync the cursor before deleting: otherwise a power loss could leave a durable
        // cursor that still needs a segment that is gone.
        self.register.sync()?;
        crate::crashpoint::hit("cursor.before_delete");
        for seg in doomed {
            assert!(
                self.register.durable_value() >= seg.first_seq,
                "invariant violation: deleting segment {} with durable cursor {}",
                seg.first_seq,
                self.register.durable_value()
            );
            match self
                .storage
                .remove_file(&segment_path(&self.dir, seg.first_seq))
            {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => return Err(e),
            }
            crate::crashpoint::hit("cursor.after_delete");
            // No directory fsync here: if a power loss undoes this delete, the segment
            // reappears wholly at or below the durable cursor and the next open
            // deletes it again.
            let mut set = self.segments.lock().unwrap_or_else(PoisonError::into_inner);
            if let Some(info) = set.remove(seg.first_seq) {
                self.shared.release(info.len);
            }
            self.shared
                .wal_segments
                .store(set.count() as u64, Ordering::Relaxed);
        }
        self.shared.room.notify_waiters();
        Ok(())
    }
}
