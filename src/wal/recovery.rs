//! Opening a WAL directory: lock, inspect, repair, and hand the writer its position.
//!
//! # Steps
//!
//! 1. Create the directory (`0700`) and each missing parent, sync the parent of each
//!    one created (and, best effort, the parent of one found in place), and take the
//!    lock (`LOCK`, flock): a second open gets `Locked`.
//! 2. Inspect: list files, read both registers (cursor, seq lease) and every segment
//!    header. A CRC-valid file of an unknown format version, or a segment written with
//!    another codec, refuses the open here, with nothing changed but the registers'
//!    winning slots, which reading rewrites in place and syncs (see `register`).
//! 3. Repair: quarantine what cannot be read or trusted by renaming it to
//!    `*.quarantined`, never deleting it: segments with a bad header, registers with no
//!    valid slot, a lease at or below a seq the segment names show or beyond the seq
//!    space, a cursor at or above the lease, and entries named like ours that are not
//!    regular files. Recreate a missing cursor (at 0: replay from the oldest segment);
//!    delete segments wholly at or below the durable cursor (left by a crash between
//!    cursor sync and delete).
//! 4. Scan the tail segment (the only one scanned: open time does not depend on
//!    history) to find its last valid frame, and truncate a torn tail after it.
//! 5. Choose `next_seq` above every seq that may have been handed out: past the tail's
//!    last frame, at or above the seq lease, above the cursor, and past whatever a
//!    quarantined segment could have held. Without a trusted lease, jump a lease block
//!    past every seq the directory shows, and create the lease there. Continue
//!    appending to the tail if that is contiguous; otherwise start a new segment there.
//!
//! What recovery never does: guess at a version, delete an unreadable file, trust a
//! register value that contradicts the other register or the segment names (a forged or
//! damaged value costs duplicates, never deleted segments), or stop because of damage
//! inside a segment (the reader skips and counts it).

use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use super::format::{LOCK_FILE, MAX_SEQ};
use super::register::Register;
use super::segment::SegmentSet;
use super::storage::{LockError, LockGuard, Storage, StorageFile, create_dir_chain, parent_dir};
use crate::error::OpenError;

mod active;
mod inspect;
mod repair;

use active::{choose_active, scan_tail};
use inspect::inspect;
use repair::repair;

/// What `open` found and did. Available from
/// [`DurableSink::recovery`](crate::DurableSink::recovery) and logged at open.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct RecoveryReport {
    /// Segment files in use after recovery.
    pub segments: usize,
    /// Cursor at open: every record at or below it was acknowledged in an earlier run.
    pub acked_seq: u64,
    /// Seq the first new record gets.
    pub next_seq: u64,
    /// Records recovered for replay: those between the cursor and the last valid
    /// frame (seqs left unused by a crash are not counted; records found damaged when
    /// they are read make the true number smaller).
    pub replay_records: u64,
    /// Bytes of torn tail truncated from the last segment.
    pub truncated_bytes: u64,
    /// Files renamed aside because they could not be read.
    pub quarantined: Vec<PathBuf>,
    /// Segments deleted because the durable cursor had already passed them.
    pub deleted_acked_segments: usize,
    /// Files in the directory that are not walsink's; left alone.
    pub stray_files: Vec<String>,
    /// The cursor was missing, unreadable or impossible while segments existed:
    /// delivery restarts at the oldest segment (duplicates, not loss).
    pub cursor_reset: bool,
}

/// Everything `open` needs to start the writer and the delivery task.
#[derive(Debug)]
pub(crate) struct Recovered {
    pub(crate) lock: Box<dyn LockGuard>,
    pub(crate) segments: SegmentSet,
    pub(crate) cursor: Register,
    pub(crate) lease: Register,
    pub(crate) active: Box<dyn StorageFile>,
    pub(crate) active_first_seq: u64,
    pub(crate) active_len: u64,
    pub(crate) next_seq: u64,
    /// Seqs above the cursor that name no record (see [`seq_gaps`]).
    pub(crate) gaps: Vec<(u64, u64)>,
    pub(crate) report: RecoveryReport,
}

/// Limits recovery needs from the config.
#[derive(Debug, Clone, Copy)]
pub(crate) struct RecoveryLimits {
    pub(crate) codec_id: u32,
    pub(crate) segment_bytes: u64,
    pub(crate) max_record_bytes: usize,
    /// Reserve the active segment's space (`segment_bytes`) ahead of appends. The sink
    /// does; `walsink repair` does not, so that it changes only what it reports.
    pub(crate) preallocate: bool,
}

fn io_err(op: &'static str, path: &Path) -> impl FnOnce(io::Error) -> OpenError + use<> {
    let path = path.to_path_buf();
    move |source| OpenError::Io { op, path, source }
}

/// Highest seq a quarantined file's name (unverified evidence) may push `next_seq` to:
/// half the seq space, so that honouring it always leaves 2^61 seqs to hand out.
const UNVERIFIED_SEQ_MAX: u64 = MAX_SEQ / 2;

/// Most directories above the WAL directory synced at open (deeper paths stop there).
const MAX_DIR_DEPTH: usize = 64;

/// Opens (recovers) the WAL in `dir`. See the module doc; step 1 is below, steps 2 to 5
/// are in [`inspect`], [`repair`] and [`active`].
pub(crate) fn recover(
    storage: &Arc<dyn Storage>,
    dir: &Path,
    limits: RecoveryLimits,
) -> Result<Recovered, OpenError> {
    let s = storage.as_ref();
    let lock = create_and_lock(s, dir)?;
    let found = inspect(s, dir, limits)?;
    let mut report = RecoveryReport {
        stray_files: found.strays.clone(),
        ..RecoveryReport::default()
    };
    let repaired = repair(s, dir, found, &mut report)?;
    let tail = scan_tail(s, dir, &repaired.segments, limits, &mut report)?;
    choose_active(s, dir, limits, lock, repaired, tail, report)
}

/// Step 1: create the directory (durably) and take its lock.
fn create_and_lock(s: &dyn Storage, dir: &Path) -> Result<Box<dyn LockGuard>, OpenError> {
    let created = create_dir_chain(s, dir).map_err(|e| match e.kind() {
        io::ErrorKind::AlreadyExists | io::ErrorKind::NotADirectory => OpenError::NotADirectory {
            path: dir.to_path_buf(),
        },
        _ => OpenError::Io {
            op: "create directory",
            path: dir.to_path_buf(),
            source: e,
        },
    })?;
    for made in &created {
        let parent = parent_dir(made);
        // Sync the parent of each directory created here: a power loss could drop the
        // new directory's entry, and with it every record later confirmed durable in it.
        s.sync_dir(&parent)
            .map_err(io_err("sync parent directory", &parent))?;
    }
    let lock_path = dir.join(LOCK_FILE);
    // A `LOCK` that is not a file is an error here, not quarantined: renaming it without
    // holding the lock could race another open doing the same, and give both a lock.
    let lock = match s.try_lock(&lock_path) {
        Ok(l) => l,
        Err(LockError::Held) => {
            return Err(OpenError::Locked {
                dir: dir.to_path_buf(),
            });
        }
        Err(LockError::Io(e)) if e.kind() == io::ErrorKind::NotADirectory => {
            return Err(OpenError::NotADirectory {
                path: dir.to_path_buf(),
            });
        }
        Err(LockError::Io(e)) => {
            return Err(OpenError::Io {
                op: "lock",
                path: lock_path,
                source: e,
            });
        }
    };
    sync_ancestors(s, dir)?;
    Ok(lock)
}

/// Syncs every directory above `dir` (see the comment inside).
fn sync_ancestors(s: &dyn Storage, dir: &Path) -> Result<(), OpenError> {
    // Sync every directory above the WAL directory, also above the ones created
    // here (whose parents are synced already): a directory found in place may have
    // been created by a process that died before its own syncs, leaving entries in
    // the page cache only, and a power loss would take the directory with every
    // record this run confirms. A directory this process may not open, or whose
    // filesystem cannot sync it, is left alone (and logged); any other failure
    // (EIO) fails the open, as it would for a directory created here. Cheap: a clean
    // directory has nothing to write.
    let mut at = dir.to_path_buf();
    for _ in 0..MAX_DIR_DEPTH {
        let parent = parent_dir(&at);
        if parent == at {
            break;
        }
        match s.sync_dir(&parent) {
            Ok(()) => {}
            // Not a failure to persist what is there: a directory this process may
            // not open, one on a read-only filesystem (nothing new can be in it), or
            // a filesystem that does not sync directories.
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::PermissionDenied
                        | io::ErrorKind::ReadOnlyFilesystem
                        | io::ErrorKind::InvalidInput
                        | io::ErrorKind::Unsupported
                ) =>
            {
                tracing::warn!(dir = %parent.display(), error = %e, "could not sync a directory above the WAL directory");
            }
            Err(e) => return Err(io_err("sync a directory above", &parent)(e)),
        }
        at = parent;
    }
    Ok(())
}
