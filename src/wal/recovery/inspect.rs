//! Step 2 of recovery: list the files, read both registers and every segment header,
//! and refuse what this build cannot read, with nothing changed.

use std::collections::HashSet;
use std::path::Path;

use crate::error::OpenError;
use crate::wal::format::{
    CURSOR_FILE, CorruptionKind, DEAD_LETTER_DIR, HeaderStatus, LOCK_FILE, QUARANTINE_SUFFIX,
    REGISTER_VERSION, RegisterKind, SEGMENT_NAME_DIGITS, SEGMENT_SUFFIX, SEGMENT_VERSION,
    SEQ_LEASE_FILE, parse_segment_file_name,
};
use crate::wal::register::{Register, RegisterOpen};
use crate::wal::segment::{SegmentInfo, read_header, segment_path};
use crate::wal::storage::Storage;

use super::{RecoveryLimits, io_err};

/// A segment header as inspected in step 2.
#[derive(Debug)]
pub(super) enum Inspected {
    Good(SegmentInfo),
    Bad {
        first_seq: u64,
        len: u64,
        why: String,
    },
}

/// What step 2 found, before anything changed.
#[derive(Debug)]
pub(super) struct Inspection {
    pub(super) names: HashSet<String>,
    /// Segment files, in seq order.
    pub(super) segments: Vec<Inspected>,
    pub(super) cursor: RegisterOpen,
    pub(super) lease: RegisterOpen,
    /// Entries with one of our names that are not regular files (a directory named
    /// like a segment, ...): set aside, or the writer would collide with them.
    pub(super) not_files: Vec<String>,
    pub(super) strays: Vec<String>,
    /// Highest first seq named by a segment quarantined by an earlier open.
    pub(super) quarantined_seq_max: u64,
}

/// Step 2: list the files, read both registers and every segment header. Refuses a
/// version or codec this build cannot read, with nothing changed.
pub(super) fn inspect(
    s: &dyn Storage,
    dir: &Path,
    limits: RecoveryLimits,
) -> Result<Inspection, OpenError> {
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
pub(super) fn quarantined_segment_seq(name: &str) -> Option<u64> {
    let stem = name.strip_suffix(QUARANTINE_SUFFIX)?;
    let seg = stem.get(..SEGMENT_NAME_DIGITS + SEGMENT_SUFFIX.len())?;
    parse_segment_file_name(seg)
}

pub(super) fn inspect_segment(
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

pub(super) fn open_register(
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
