//! Opening a WAL directory: lock, inspect, repair, and hand the writer its position.
//!
//! # Steps
//!
//! 1. Create the directory (`0700`) and take the lock (`LOCK`, flock): a second open
//!    gets `Locked`.
//! 2. Inspect without changing anything: list files, read both registers (cursor, seq
//!    lease) and every segment header. A CRC-valid file of an unknown format version, or
//!    a segment written with another codec, refuses the open here, with nothing changed.
//! 3. Repair: quarantine what cannot be read (segments with a bad header, registers with
//!    no valid slot) by renaming it to `*.quarantined`, never deleting it; recreate
//!    missing registers; delete segments wholly at or below the durable cursor (left by a
//!    crash between cursor sync and delete).
//! 4. Scan the tail segment (the only one scanned: open time does not depend on
//!    history) to find its last valid frame, and truncate a torn tail after it.
//! 5. Choose `next_seq` above every seq that may have been handed out: past the tail's
//!    last frame, at or above the seq lease, above the cursor, and past whatever a
//!    quarantined segment could have held. Continue appending to the tail if that is
//!    contiguous; otherwise start a new segment there.
//!
//! What recovery never does: guess at a version, delete an unreadable file, or stop
//! because of damage inside a segment (the reader skips and counts it).

use std::collections::HashSet;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use super::format::{
    CURSOR_FILE, CorruptionKind, FRAME_HEADER_BYTES, HeaderStatus, LOCK_FILE, QUARANTINE_SUFFIX,
    REGISTER_VERSION, RegisterKind, SEGMENT_HEADER_BYTES, SEGMENT_VERSION, SEQ_LEASE_FILE,
    SegmentHeader, parse_segment_file_name, segment_file_name,
};
use super::register::{Register, RegisterOpen};
use super::segment::{
    ScanStep, SegmentInfo, SegmentScanner, SegmentSet, create_segment, preallocate, read_header,
    segment_path,
};
use super::storage::{LockError, LockGuard, Storage, StorageFile};
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
    /// Upper bound of records recovered for replay: seqs between the cursor and the
    /// last valid frame (gaps and damage make the true number smaller).
    pub replay_seqs: u64,
    /// Bytes of torn tail truncated from the last segment.
    pub truncated_bytes: u64,
    /// Files renamed aside because they could not be read.
    pub quarantined: Vec<PathBuf>,
    /// Segments deleted because the durable cursor had already passed them.
    pub deleted_acked_segments: usize,
    /// Files in the directory that are not walsink's; left alone.
    pub stray_files: Vec<String>,
    /// The cursor was missing or unreadable while segments existed: delivery restarts
    /// at the oldest segment (duplicates, not loss).
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
    pub(crate) report: RecoveryReport,
}

/// Limits recovery needs from the config.
#[derive(Debug, Clone, Copy)]
pub(crate) struct RecoveryLimits {
    pub(crate) codec_id: u32,
    pub(crate) segment_bytes: u64,
    pub(crate) max_record_bytes: usize,
}

fn io_err(op: &'static str, path: &Path) -> impl FnOnce(io::Error) -> OpenError + use<> {
    let path = path.to_path_buf();
    move |source| OpenError::Io { op, path, source }
}

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

/// Opens (recovers) the WAL in `dir`. See the module doc.
pub(crate) fn recover(
    storage: &Arc<dyn Storage>,
    dir: &Path,
    limits: RecoveryLimits,
) -> Result<Recovered, OpenError> {
    let s = storage.as_ref();
    // Step 1.
    if let Err(e) = s.create_dir_all(dir) {
        return Err(match e.kind() {
            io::ErrorKind::AlreadyExists | io::ErrorKind::NotADirectory => {
                OpenError::NotADirectory {
                    path: dir.to_path_buf(),
                }
            }
            _ => OpenError::Io {
                op: "create directory",
                path: dir.to_path_buf(),
                source: e,
            },
        });
    }
    let lock_path = dir.join(LOCK_FILE);
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

    // Step 2: inspect.
    let mut report = RecoveryReport::default();
    let entries = s.list(dir).map_err(io_err("list", dir))?;
    let names: HashSet<String> = entries.iter().map(|e| e.name.clone()).collect();
    let mut segment_seqs = Vec::new();
    for e in &entries {
        match e.name.as_str() {
            LOCK_FILE | CURSOR_FILE | SEQ_LEASE_FILE => {}
            n if n.ends_with(QUARANTINE_SUFFIX) => {}
            n => match parse_segment_file_name(n) {
                Some(seq) if e.is_file => segment_seqs.push(seq),
                _ => report.stray_files.push(n.to_string()),
            },
        }
    }
    segment_seqs.sort_unstable();
    if !report.stray_files.is_empty() {
        tracing::warn!(dir = %dir.display(), files = ?report.stray_files, "files in the WAL directory that are not walsink's; left alone");
    }

    let cursor_path = dir.join(CURSOR_FILE);
    let lease_path = dir.join(SEQ_LEASE_FILE);
    let cursor_found = open_register(s, &cursor_path, RegisterKind::Cursor)?;
    let lease_found = open_register(s, &lease_path, RegisterKind::SeqLease)?;

    let mut inspected = Vec::with_capacity(segment_seqs.len());
    for &seq in &segment_seqs {
        let path = segment_path(dir, seq);
        let file = s
            .open(&path, false)
            .map_err(io_err("open segment", &path))?;
        let len = file.len().map_err(io_err("stat segment", &path))?;
        inspected.push(
            match read_header(file.as_ref()).map_err(io_err("read segment header", &path))? {
                HeaderStatus::Valid(h) if h.first_seq != seq => Inspected::Bad {
                    first_seq: seq,
                    len,
                    why: CorruptionKind::NameMismatch {
                        named: seq,
                        header: h.first_seq,
                    }
                    .to_string(),
                },
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
                HeaderStatus::Corrupt(kind) => Inspected::Bad {
                    first_seq: seq,
                    len,
                    why: kind.to_string(),
                },
            },
        );
    }

    // Step 3: repair. Everything from here on may change the directory.
    let mut names = names;
    let mut seq_floor = 1u64;
    let mut quarantined_any = false;
    let mut set = SegmentSet::default();
    for seg in inspected {
        match seg {
            Inspected::Good(info) => set.push(info),
            Inspected::Bad {
                first_seq,
                len,
                why,
            } => {
                let path = segment_path(dir, first_seq);
                let to = quarantine(s, dir, &segment_file_name(first_seq), &mut names)
                    .map_err(io_err("quarantine", &path))?;
                tracing::error!(from = %path.display(), to = %to.display(), reason = %why, "unreadable WAL segment quarantined");
                report.quarantined.push(to);
                quarantined_any = true;
                // It may have held up to one record per frame header's worth of bytes;
                // never hand out those seqs again.
                let bound = first_seq
                    .saturating_add(len / FRAME_HEADER_BYTES as u64)
                    .saturating_add(1);
                seq_floor = seq_floor.max(bound);
            }
        }
    }
    let (cursor, cursor_fresh) = register_or_replace(
        s,
        dir,
        cursor_found,
        CURSOR_FILE,
        RegisterKind::Cursor,
        &mut names,
        &mut report,
        &mut quarantined_any,
    )?;
    report.cursor_reset = cursor_fresh && set.count() > 0;
    let (lease, _) = register_or_replace(
        s,
        dir,
        lease_found,
        SEQ_LEASE_FILE,
        RegisterKind::SeqLease,
        &mut names,
        &mut report,
        &mut quarantined_any,
    )?;
    if quarantined_any {
        // Sync the directory: make the quarantine renames durable, so a power loss does
        // not bring back a segment this open already reported as quarantined.
        s.sync_dir(dir).map_err(io_err("sync directory", dir))?;
    }
    let acked = cursor.value();
    for seg in set.fully_acked(acked) {
        let path = segment_path(dir, seg.first_seq);
        // The cursor is durable (Register::open synced it), so these can go.
        s.remove_file(&path)
            .map_err(io_err("delete acknowledged segment", &path))?;
        set.remove(seg.first_seq);
        report.deleted_acked_segments += 1;
    }

    // Step 4: scan the tail.
    let tail = set.for_seq(u64::MAX);
    let mut tail_state = None;
    if let Some(info) = &tail {
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
            // Zeros after the last frame are the preallocated tail of a segment that
            // was active at a crash, not damage; anything else is a torn write.
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
        set.set_len(info.first_seq, valid_end);
        tail_state = Some((info.first_seq, last_seq, valid_end));
    }

    // Step 5: choose next_seq and the active segment.
    let mut next_seq = seq_floor.max(lease.value()).max(acked.saturating_add(1));
    if let Some((_, last_seq, _)) = tail_state {
        next_seq = next_seq.max(last_seq.saturating_add(1));
    }
    let reuse_tail = tail_state.filter(|&(_, last_seq, valid_end)| {
        last_seq.saturating_add(1) == next_seq && valid_end < limits.segment_bytes
    });
    let (active, active_first_seq, active_len) = match reuse_tail {
        Some((first_seq, _, valid_end)) => {
            let path = segment_path(dir, first_seq);
            let file = s
                .open(&path, true)
                .map_err(io_err("open tail segment", &path))?;
            preallocate(file.as_ref(), limits.segment_bytes);
            (file, first_seq, valid_end)
        }
        None => {
            let prev_last_seq = tail_state.map_or(0, |(_, last, _)| last);
            let header = SegmentHeader {
                codec_id: limits.codec_id,
                first_seq: next_seq,
                prev_last_seq,
            };
            let path = segment_path(dir, next_seq);
            let file = create_segment(s, dir, header, limits.segment_bytes)
                .map_err(io_err("create segment", &path))?;
            set.push(SegmentInfo {
                first_seq: next_seq,
                prev_last_seq,
                len: SEGMENT_HEADER_BYTES as u64,
            });
            (file, next_seq, SEGMENT_HEADER_BYTES as u64)
        }
    };

    report.segments = set.count();
    report.acked_seq = acked;
    report.next_seq = next_seq;
    let last_written = tail_state.map_or(next_seq - 1, |(_, last, _)| last);
    report.replay_seqs = last_written.saturating_sub(acked);
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
        report,
    })
}

/// Returns the register if it loaded; otherwise quarantines an unreadable file,
/// creates a fresh register holding 0, and says so (`true`).
#[allow(clippy::too_many_arguments)]
fn register_or_replace(
    s: &dyn Storage,
    dir: &Path,
    found: RegisterOpen,
    name: &str,
    kind: RegisterKind,
    names: &mut HashSet<String>,
    report: &mut RecoveryReport,
    renames_pending: &mut bool,
) -> Result<(Register, bool), OpenError> {
    let path = dir.join(name);
    match found {
        RegisterOpen::Loaded(r) => return Ok((r, false)),
        RegisterOpen::Unreadable => {
            let to = quarantine(s, dir, name, names).map_err(io_err("quarantine", &path))?;
            tracing::error!(to = %to.display(), "unreadable {name} quarantined and replaced (a cursor restarts at the oldest segment)");
            report.quarantined.push(to);
            *renames_pending = true;
        }
        RegisterOpen::Missing | RegisterOpen::UnsupportedVersion(_) => {}
    }
    if *renames_pending {
        // Sync the directory: the renames must be durable before new files take the
        // old names, or a power loss could bring back the unreadable file.
        s.sync_dir(dir).map_err(io_err("sync directory", dir))?;
        *renames_pending = false;
    }
    let r = Register::create(s, dir, name, kind, 0).map_err(io_err("create register", &path))?;
    Ok((r, true))
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
