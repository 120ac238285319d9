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

use std::collections::HashSet;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use super::format::{
    CURSOR_FILE, CorruptionKind, DEAD_LETTER_DIR, FRAME_HEADER_BYTES, HeaderStatus, LOCK_FILE,
    MAX_SEQ, QUARANTINE_SUFFIX, REGISTER_VERSION, RegisterKind, SEGMENT_HEADER_BYTES,
    SEGMENT_NAME_DIGITS, SEGMENT_SUFFIX, SEGMENT_VERSION, SEQ_LEASE_FILE, SegmentHeader,
    parse_segment_file_name, segment_file_name,
};
use super::register::{Register, RegisterOpen};
use super::segment::{
    ScanStep, SegmentInfo, SegmentScanner, SegmentSet, create_segment, preallocate, read_header,
    segment_path,
};
use super::storage::{LockError, LockGuard, Storage, StorageFile, create_dir_chain, parent_dir};
use super::writer::LEASE_BLOCK;
use crate::error::OpenError;

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

/// A segment header as inspected in step 2.
#[derive(Debug)]
enum Inspected {
    Good(SegmentInfo),
    Bad {
        first_seq: u64,
        len: u64,
        why: String,
    },
}

/// Opens (recovers) the WAL in `dir`. See the module doc; each step is a function below.
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
    if created.is_empty() {
        // Sync every directory above one found in place: the process that created it
        // (and maybe its parents) may have died before its own syncs, leaving entries in
        // the page cache only. Best effort: a directory this process may not read is
        // left alone (and logged). Cheap: a clean directory has nothing to write.
        let mut at = dir.to_path_buf();
        for _ in 0..MAX_DIR_DEPTH {
            let parent = parent_dir(&at);
            if parent == at {
                break;
            }
            if let Err(e) = s.sync_dir(&parent) {
                tracing::warn!(dir = %parent.display(), error = %e, "could not sync a directory above the WAL directory");
            }
            at = parent;
        }
    }
    Ok(lock)
}

/// What step 2 found, before anything changed.
#[derive(Debug)]
struct Inspection {
    names: HashSet<String>,
    /// Segment files, in seq order.
    segments: Vec<Inspected>,
    cursor: RegisterOpen,
    lease: RegisterOpen,
    /// Entries with one of our names that are not regular files (a directory named
    /// like a segment, ...): set aside, or the writer would collide with them.
    not_files: Vec<String>,
    strays: Vec<String>,
    /// Highest first seq named by a segment quarantined by an earlier open.
    quarantined_seq_max: u64,
}

/// Step 2: list the files, read both registers and every segment header. Refuses a
/// version or codec this build cannot read, with nothing changed.
fn inspect(s: &dyn Storage, dir: &Path, limits: RecoveryLimits) -> Result<Inspection, OpenError> {
    let entries = s.list(dir).map_err(io_err("list", dir))?;
    let names: HashSet<String> = entries.iter().map(|e| e.name.clone()).collect();
    let mut segment_seqs = Vec::new();
    let mut not_files = Vec::new();
    let mut strays = Vec::new();
    let mut quarantined_seq_max = 0;
    for e in &entries {
        match e.name.as_str() {
            LOCK_FILE | DEAD_LETTER_DIR => {}
            CURSOR_FILE | SEQ_LEASE_FILE if !e.is_file => not_files.push(e.name.clone()),
            CURSOR_FILE | SEQ_LEASE_FILE => {}
            n if n.ends_with(QUARANTINE_SUFFIX) => {
                if let Some(seq) = quarantined_segment_seq(n) {
                    quarantined_seq_max = quarantined_seq_max.max(seq);
                }
            }
            n => match parse_segment_file_name(n) {
                Some(seq) if e.is_file => segment_seqs.push(seq),
                Some(_) => not_files.push(n.to_string()),
                None => strays.push(n.to_string()),
            },
        }
    }
    segment_seqs.sort_unstable();
    if !strays.is_empty() {
        tracing::warn!(dir = %dir.display(), files = ?strays, "files in the WAL directory that are not walsink's; left alone");
    }
    let register = |name: &str, kind| {
        if not_files.iter().any(|n| n == name) {
            return Ok(RegisterOpen::Missing);
        }
        open_register(s, &dir.join(name), kind)
    };
    let cursor = register(CURSOR_FILE, RegisterKind::Cursor)?;
    let lease = register(SEQ_LEASE_FILE, RegisterKind::SeqLease)?;
    let mut segments = Vec::with_capacity(segment_seqs.len());
    for &seq in &segment_seqs {
        segments.push(inspect_segment(s, dir, seq, limits)?);
    }
    Ok(Inspection {
        names,
        segments,
        cursor,
        lease,
        not_files,
        strays,
        quarantined_seq_max,
    })
}

/// The first seq in the name of a quarantined segment (`<seq>.seg[.N].quarantined`).
fn quarantined_segment_seq(name: &str) -> Option<u64> {
    let stem = name.strip_suffix(QUARANTINE_SUFFIX)?;
    let seg = stem.get(..SEGMENT_NAME_DIGITS + SEGMENT_SUFFIX.len())?;
    parse_segment_file_name(seg)
}

fn inspect_segment(
    s: &dyn Storage,
    dir: &Path,
    seq: u64,
    limits: RecoveryLimits,
) -> Result<Inspected, OpenError> {
    let path = segment_path(dir, seq);
    let file = s
        .open(&path, false)
        .map_err(io_err("open segment", &path))?;
    let len = file.len().map_err(io_err("stat segment", &path))?;
    let bad = |kind: CorruptionKind| Inspected::Bad {
        first_seq: seq,
        len,
        why: kind.to_string(),
    };
    Ok(
        match read_header(file.as_ref()).map_err(io_err("read segment header", &path))? {
            HeaderStatus::Valid(h) if h.first_seq != seq => bad(CorruptionKind::NameMismatch {
                named: seq,
                header: h.first_seq,
            }),
            HeaderStatus::Valid(h) if h.codec_id != limits.codec_id => {
                return Err(OpenError::CodecMismatch {
                    path,
                    found: h.codec_id,
                    expected: limits.codec_id,
                });
            }
            HeaderStatus::Valid(h) => Inspected::Good(SegmentInfo {
                first_seq: seq,
                prev_last_seq: h.prev_last_seq,
                len,
            }),
            HeaderStatus::UnsupportedVersion(found) => {
                return Err(OpenError::UnsupportedVersion {
                    path,
                    found,
                    supported: SEGMENT_VERSION,
                });
            }
            HeaderStatus::Corrupt(kind) => bad(kind),
        },
    )
}

/// What step 3 leaves: the readable segments and trusted registers.
#[derive(Debug)]
struct Repaired {
    segments: SegmentSet,
    cursor: Register,
    /// `None`: missing, unreadable or damaged; created in step 5 once `next_seq` is known.
    lease: Option<Register>,
    /// Highest seq that readable evidence shows was handed out: the cursor, readable
    /// segment names (0: none).
    seen_seq_max: u64,
    /// Highest seq that quarantined segments could have held (their names and sizes).
    /// Unverifiable: it counts only without a trusted lease, and only far from the end
    /// of the seq space (see `choose_active`).
    unverified_seq_max: u64,
    /// Anything shows that seqs were handed out before (a segment, a cursor above 0).
    has_history: bool,
}

/// Step 3: set aside what cannot be read or trusted (renamed to `*.quarantined`, never
/// deleted), check the registers against each other, recreate a missing cursor, and
/// delete segments the durable cursor has passed.
fn repair(
    s: &dyn Storage,
    dir: &Path,
    found: Inspection,
    report: &mut RecoveryReport,
) -> Result<Repaired, OpenError> {
    let Inspection {
        mut names,
        segments,
        cursor,
        lease,
        not_files,
        strays: _,
        quarantined_seq_max,
    } = found;
    let mut renamed = false;
    let mut set_aside = |name: &str, why: &str, names: &mut HashSet<String>| {
        let path = dir.join(name);
        let to = quarantine(s, dir, name, names).map_err(io_err("quarantine", &path))?;
        tracing::error!(from = %path.display(), to = %to.display(), reason = %why, "WAL file quarantined");
        report.quarantined.push(to);
        renamed = true;
        Ok::<(), OpenError>(())
    };
    for name in &not_files {
        set_aside(name, "not a regular file", &mut names)?;
    }

    // Seqs that readable segment names show were handed out (a quarantined name may be
    // garbage, so it never condemns a register).
    let mut named_seq_max = 0;
    let mut unverified_seq_max = quarantined_seq_max;
    let mut has_history = quarantined_seq_max > 0;
    let mut set = SegmentSet::default();
    for seg in segments {
        has_history = true;
        match seg {
            Inspected::Good(info) => {
                // A segment named N was created when N was the next seq: every seq below
                // it may have been handed out.
                named_seq_max = named_seq_max.max(info.first_seq - 1);
                set.push(info);
            }
            Inspected::Bad {
                first_seq,
                len,
                why,
            } => {
                set_aside(&segment_file_name(first_seq), &why, &mut names)?;
                // It may have held up to one record per frame header's worth of bytes.
                let bound = first_seq.saturating_add(len / FRAME_HEADER_BYTES as u64);
                unverified_seq_max = unverified_seq_max.max(bound);
            }
        }
    }

    // The lease: no seq at or above it was ever handed out. So it must lie above every
    // seq the segment names show, and within the seq space.
    let lease = match lease {
        RegisterOpen::Loaded(r) if r.value() > MAX_SEQ + 1 || r.value() <= named_seq_max => {
            let why = format!(
                "seq lease {} impossible: segments show seqs up to {named_seq_max}, the seq space ends at {MAX_SEQ}",
                r.value()
            );
            drop(r);
            set_aside(SEQ_LEASE_FILE, &why, &mut names)?;
            None
        }
        RegisterOpen::Loaded(r) => Some(r),
        RegisterOpen::Unreadable => {
            set_aside(SEQ_LEASE_FILE, "no valid slot", &mut names)?;
            None
        }
        RegisterOpen::Missing | RegisterOpen::UnsupportedVersion(_) => None,
    };
    // The cursor names an acknowledged seq: one that was handed out, so below the lease.
    // A value that is not is damage: trusting it would delete unacknowledged segments.
    // Without a trusted lease, the seqs handed out are still bounded: by what the
    // segments could hold (the newest one at most one frame per frame header's bytes),
    // plus the lease block the writer may have run ahead of its last synced frame.
    let held_seq_max = set
        .iter()
        .last()
        .map_or(0, |t| {
            t.first_seq
                .saturating_add(t.len / FRAME_HEADER_BYTES as u64)
        })
        .max(named_seq_max)
        .max(unverified_seq_max);
    let cursor_max = match &lease {
        Some(l) => l.value().saturating_sub(1),
        None => held_seq_max.saturating_add(LEASE_BLOCK),
    }
    .min(MAX_SEQ);
    let cursor = match cursor {
        RegisterOpen::Loaded(r) if r.value() > 0 && r.value() > cursor_max => {
            let why = format!(
                "cursor {} impossible: no seq above {cursor_max} was handed out (seq lease {})",
                r.value(),
                lease.as_ref().map_or(0, Register::value)
            );
            drop(r);
            set_aside(CURSOR_FILE, &why, &mut names)?;
            None
        }
        RegisterOpen::Loaded(r) => Some(r),
        RegisterOpen::Unreadable => {
            set_aside(CURSOR_FILE, "no valid slot", &mut names)?;
            None
        }
        RegisterOpen::Missing | RegisterOpen::UnsupportedVersion(_) => None,
    };
    if renamed {
        // Sync the directory: make the quarantine renames durable before new files take
        // the old names, so a power loss can neither bring back a file this open
        // reported as quarantined nor put it back beside its replacement.
        s.sync_dir(dir).map_err(io_err("sync directory", dir))?;
    }
    let cursor = match cursor {
        Some(r) => r,
        None => {
            report.cursor_reset = set.count() > 0;
            if report.cursor_reset {
                tracing::error!(dir = %dir.display(), "no usable cursor: delivery restarts at the oldest segment (duplicates, not loss)");
            }
            let path = dir.join(CURSOR_FILE);
            Register::create(s, dir, CURSOR_FILE, RegisterKind::Cursor, 0)
                .map_err(io_err("create register", &path))?
        }
    };
    let acked = cursor.value();
    has_history |= acked > 0;
    let seen_seq_max = named_seq_max.max(acked);
    for seg in set.fully_acked(acked) {
        let path = segment_path(dir, seg.first_seq);
        // The cursor is durable (Register::open synced it), so these can go.
        s.remove_file(&path)
            .map_err(io_err("delete acknowledged segment", &path))?;
        set.remove(seg.first_seq);
        report.deleted_acked_segments += 1;
    }
    Ok(Repaired {
        segments: set,
        cursor,
        lease,
        seen_seq_max,
        unverified_seq_max,
        has_history,
    })
}

/// The tail segment after step 4.
#[derive(Debug, Clone, Copy)]
struct Tail {
    first_seq: u64,
    /// Seq of its last valid frame (`first_seq - 1` if it holds none).
    last_seq: u64,
    /// File offset just past that frame.
    valid_end: u64,
}

/// Step 4: scan the tail segment (the only one scanned: open time does not depend on
/// history) to its last valid frame, and truncate a torn tail after it.
fn scan_tail(
    s: &dyn Storage,
    dir: &Path,
    set: &SegmentSet,
    limits: RecoveryLimits,
    report: &mut RecoveryReport,
) -> Result<Option<Tail>, OpenError> {
    let Some(info) = set.for_seq(u64::MAX) else {
        return Ok(None);
    };
    let path = segment_path(dir, info.first_seq);
    let file = s
        .open(&path, true)
        .map_err(io_err("open tail segment", &path))?;
    let mut scanner = SegmentScanner::new(file, info.first_seq, limits.max_record_bytes);
    // One pass over the tail; each step moves forward in the file.
    let trailing = loop {
        match scanner
            .next_step()
            .map_err(io_err("scan tail segment", &path))?
        {
            ScanStep::Frame { .. } => {}
            ScanStep::Corrupt { offset, kind } => {
                tracing::warn!(path = %path.display(), offset, %kind, "corrupt bytes in the tail segment; later valid frames are kept");
            }
            ScanStep::End { trailing_bytes } => break trailing_bytes,
        }
    };
    let valid_end = scanner.valid_end();
    let last_seq = scanner.expected_seq() - 1;
    drop(scanner);
    if trailing > 0 {
        let file = s
            .open(&path, true)
            .map_err(io_err("open tail segment", &path))?;
        // Zeros after the last frame are the preallocated tail of a segment that was
        // active at a crash, not damage; anything else is a torn write.
        let torn = !all_zero(file.as_ref(), valid_end, valid_end + trailing)
            .map_err(io_err("read tail segment", &path))?;
        file.set_len(valid_end)
            .map_err(io_err("truncate torn tail", &path))?;
        // fsync the truncation: a power loss must not bring the torn bytes back
        // behind frames appended after them.
        file.sync().map_err(io_err("sync truncated tail", &path))?;
        if torn {
            tracing::warn!(path = %path.display(), bytes = trailing, valid_end, "torn tail truncated");
            report.truncated_bytes = trailing;
        } else {
            tracing::debug!(path = %path.display(), bytes = trailing, "unused preallocated tail trimmed");
        }
    }
    Ok(Some(Tail {
        first_seq: info.first_seq,
        last_seq,
        valid_end,
    }))
}

/// Step 5: choose `next_seq` above every seq that may have been handed out, make the
/// lease say so, and open the active segment (the tail, or a new one).
fn choose_active(
    s: &dyn Storage,
    dir: &Path,
    limits: RecoveryLimits,
    lock: Box<dyn LockGuard>,
    repaired: Repaired,
    tail: Option<Tail>,
    mut report: RecoveryReport,
) -> Result<Recovered, OpenError> {
    let Repaired {
        segments: mut set,
        cursor,
        lease,
        seen_seq_max,
        unverified_seq_max,
        has_history,
    } = repaired;
    let acked = cursor.value();
    let tail_last = tail.map_or(0, |t| t.last_seq);
    let mut next_seq = acked.saturating_add(1).max(tail_last.saturating_add(1));
    // A lease at or below a frame's seq is stale (damage put an older slot back): as
    // untrustworthy as a missing one.
    let lease_trusted = lease.as_ref().is_some_and(|l| l.value() > tail_last);
    if let (Some(l), false) = (&lease, lease_trusted) {
        tracing::error!(
            lease = l.value(),
            tail_last,
            "the seq lease is below a frame's seq: damaged; continuing past every seq seen"
        );
    }
    match &lease {
        // Every seq this directory ever handed out lies below a trusted lease, the
        // records of quarantined segments included.
        Some(l) if lease_trusted => next_seq = next_seq.max(l.value()),
        // Without a lease, seqs of records delivered and then erased by a power loss
        // leave no trace. They lie within one lease block of the last frame the writer
        // had synced when it last renewed the lease (it syncs before each renewal), so
        // jump a block past every seq the directory shows.
        _ if has_history => {
            let mut seen = seen_seq_max.max(tail_last);
            if unverified_seq_max > seen {
                // A quarantined file's name is not verified: honour it only in the
                // lower half of the seq space, or one stray empty file named near
                // 2^62 would leave the sink with few seqs, or none, to hand out.
                if unverified_seq_max <= UNVERIFIED_SEQ_MAX {
                    seen = unverified_seq_max;
                } else {
                    tracing::error!(
                        unverified_seq_max,
                        "a quarantined file names seqs near the end of the seq space; not honoured"
                    );
                }
            }
            next_seq = next_seq.max(seen.saturating_add(1).saturating_add(LEASE_BLOCK));
        }
        _ => {}
    }
    // Past the seq space the writer refuses every record; the sink still opens so that
    // what is on disk is delivered.
    let next_seq = next_seq.min(MAX_SEQ + 1);
    let lease = match lease {
        Some(mut l) => {
            if l.value() < next_seq {
                // A distrusted lease kept in place: raise it before anything names a
                // seq above it (a new segment), or the next open finds it impossible.
                let path = dir.join(SEQ_LEASE_FILE);
                l.write_durable_mirrored(next_seq)
                    .map_err(io_err("write register", &path))?;
            }
            l
        }
        None => {
            let path = dir.join(SEQ_LEASE_FILE);
            Register::create(s, dir, SEQ_LEASE_FILE, RegisterKind::SeqLease, next_seq)
                .map_err(io_err("create register", &path))?
        }
    };
    let reuse_tail = tail.filter(|t| {
        let contiguous =
            t.last_seq.saturating_add(1) == next_seq && t.valid_end < limits.segment_bytes;
        contiguous || next_seq > MAX_SEQ
    });
    let (active, active_first_seq, active_len) = match reuse_tail {
        Some(t) => {
            let path = segment_path(dir, t.first_seq);
            let file = s
                .open(&path, true)
                .map_err(io_err("open tail segment", &path))?;
            // fsync the tail kept as the active segment: a process that crashed may have
            // left its last frames in the page cache only. The writer relies on what it
            // continues from being durable (its syncs cover only what it writes, and a
            // lost lease is rebuilt from the last frame found after a power loss).
            file.sync().map_err(io_err("sync tail segment", &path))?;
            if limits.preallocate {
                preallocate(file.as_ref(), limits.segment_bytes);
            }
            set.set_len(t.first_seq, t.valid_end);
            (file, t.first_seq, t.valid_end)
        }
        None if next_seq > MAX_SEQ => {
            return Err(OpenError::Io {
                op: "choose the next seq",
                path: dir.to_path_buf(),
                source: io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!("the seq space is exhausted (next seq {next_seq} above {MAX_SEQ})"),
                ),
            });
        }
        None => {
            if let Some(t) = tail {
                set.set_len(t.first_seq, t.valid_end);
            }
            let header = SegmentHeader {
                codec_id: limits.codec_id,
                first_seq: next_seq,
                prev_last_seq: tail_last,
            };
            let path = segment_path(dir, next_seq);
            let reserve = if limits.preallocate {
                limits.segment_bytes
            } else {
                0
            };
            let file =
                create_segment(s, dir, header, reserve).map_err(io_err("create segment", &path))?;
            set.push(SegmentInfo {
                first_seq: next_seq,
                prev_last_seq: tail_last,
                len: SEGMENT_HEADER_BYTES as u64,
            });
            (file, next_seq, SEGMENT_HEADER_BYTES as u64)
        }
    };

    let last_written = next_seq - 1;
    let gaps = seq_gaps(&set, acked, last_written);
    let gap_seqs: u64 = gaps.iter().map(|&(lo, hi)| hi - lo + 1).sum();
    report.segments = set.count();
    report.acked_seq = acked;
    report.next_seq = next_seq;
    report.replay_records = last_written.saturating_sub(acked).saturating_sub(gap_seqs);
    tracing::info!(dir = %dir.display(), ?report, "WAL opened");
    Ok(Recovered {
        lock,
        segments: set,
        cursor,
        lease,
        active,
        active_first_seq,
        active_len,
        next_seq,
        gaps,
        report,
    })
}

/// The seqs in `(acked, last_written]` that name no record (inclusive ranges, in
/// order): below the first segment, and between a segment and the next one's first
/// seq when its header says where the previous one ended (after a crash the writer
/// continues at the lease, leaving up to a lease block unused). `pending()` counts
/// records, so it leaves these out.
pub(crate) fn seq_gaps(set: &SegmentSet, acked: u64, last_written: u64) -> Vec<(u64, u64)> {
    let mut gaps = Vec::new();
    let mut push = |lo: u64, hi: u64| {
        let lo = lo.max(acked.saturating_add(1));
        let hi = hi.min(last_written);
        if lo <= hi {
            gaps.push((lo, hi));
        }
    };
    let mut first = true;
    for seg in set.iter() {
        if first {
            push(0, seg.first_seq.saturating_sub(1));
            first = false;
        } else if seg.prev_last_seq != 0 {
            push(seg.prev_last_seq.saturating_add(1), seg.first_seq - 1);
        }
    }
    gaps
}

fn open_register(
    s: &dyn Storage,
    path: &Path,
    kind: RegisterKind,
) -> Result<RegisterOpen, OpenError> {
    match Register::open(s, path, kind).map_err(io_err("open register", path))? {
        RegisterOpen::UnsupportedVersion(found) => Err(OpenError::UnsupportedVersion {
            path: path.to_path_buf(),
            found,
            supported: REGISTER_VERSION,
        }),
        other => Ok(other),
    }
}

/// Whether bytes `[from, to)` of `file` are all zero (read in bounded chunks).
fn all_zero(file: &dyn StorageFile, from: u64, to: u64) -> io::Result<bool> {
    let mut buf = vec![0u8; 256 * 1024];
    let mut at = from;
    while at < to {
        let want = usize::try_from(to - at)
            .unwrap_or(usize::MAX)
            .min(buf.len());
        let n = super::storage::read_full_at(file, buf.get_mut(..want).unwrap_or_default(), at)?;
        if n == 0 {
            break;
        }
        if buf.get(..n).unwrap_or_default().iter().any(|&b| b != 0) {
            return Ok(false);
        }
        at += n as u64;
    }
    Ok(true)
}

/// Most `.N.quarantined` names tried for one file before giving up.
const QUARANTINE_NAME_ATTEMPTS: u32 = 1000;

/// Renames `name` to an unused `name[.N].quarantined`; returns the new path.
fn quarantine(
    s: &dyn Storage,
    dir: &Path,
    name: &str,
    names: &mut HashSet<String>,
) -> io::Result<PathBuf> {
    for n in 0..QUARANTINE_NAME_ATTEMPTS {
        let target = if n == 0 {
            format!("{name}{QUARANTINE_SUFFIX}")
        } else {
            format!("{name}.{n}{QUARANTINE_SUFFIX}")
        };
        if names.contains(&target) {
            continue;
        }
        let to = dir.join(&target);
        s.rename(&dir.join(name), &to)?;
        names.insert(target);
        names.remove(name);
        return Ok(to);
    }
    Err(io::Error::new(
        io::ErrorKind::AlreadyExists,
        format!("no free quarantine name for {name}"),
    ))
}
