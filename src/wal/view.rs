//! A read-only view of a WAL directory: what it holds, without the lock and without
//! changing a byte. For tools that look at a directory a live sink may own (an
//! inspector, the dead-letter store's readers): they see what the next open would
//! start from, before its repairs.
//!
//! # Consistency with a running sink
//!
//! The view lists the directory once, then reads each file when asked. A sink may
//! append to the active segment meanwhile (its bytes below the length read are final),
//! delete acknowledged segments (a segment gone when scanned is reported as `NotFound`,
//! never as damage) or write the cursor (a register read returns a value it held at
//! some point after the listing). Nothing the view does can disturb the sink: files
//! are opened read-only, and no lock is taken.

#![cfg_attr(
    not(any(feature = "cli", feature = "fuzzing", test)),
    allow(
        dead_code,
        reason = "read by the `walsink` tool (feature cli) and the fuzz entry points"
    )
)]

use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use super::format::{
    CURSOR_FILE, DEAD_LETTER_DIR, HeaderStatus, LOCK_FILE, QUARANTINE_SUFFIX, RegisterKind,
    SEQ_LEASE_FILE, parse_segment_file_name,
};
use super::register::{Register, RegisterPeek};
use super::segment::{SegmentScanner, read_header, segment_path};
use super::storage::Storage;

/// One segment file as listed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct SegmentView {
    /// First seq (from the file name).
    pub(crate) first_seq: u64,
    /// File length in bytes when it was read (the active segment may be preallocated).
    pub(crate) len: u64,
    /// Its header as decoded.
    pub(crate) header: HeaderStatus,
}

/// A WAL directory as found. See the module doc.
#[derive(Debug)]
pub(crate) struct WalView {
    storage: Arc<dyn Storage>,
    dir: PathBuf,
    max_record_bytes: usize,
    /// Segment files, in seq order.
    pub(crate) segments: Vec<SegmentView>,
    /// The cursor register.
    pub(crate) cursor: RegisterPeek,
    /// The seq lease register.
    pub(crate) lease: RegisterPeek,
    /// Files renamed aside by earlier opens.
    pub(crate) quarantined: Vec<String>,
    /// Entries that are not walsink's, or not regular files with one of its names.
    pub(crate) strays: Vec<String>,
}

impl WalView {
    /// Lists `dir` and reads every segment header and both registers. A segment that
    /// disappears between the listing and its read (deleted by a live sink) is left out.
    /// The directory.
    pub(crate) fn dir(&self) -> &Path {
        &self.dir
    }

    pub(crate) fn open(
        storage: Arc<dyn Storage>,
        dir: &Path,
        max_record_bytes: usize,
    ) -> io::Result<Self> {
        let mut segments = Vec::new();
        let mut quarantined = Vec::new();
        let mut strays = Vec::new();
        for entry in storage.list(dir)? {
            let name = entry.name;
            match (name.as_str(), entry.is_file) {
                (LOCK_FILE | CURSOR_FILE | SEQ_LEASE_FILE, true) | (DEAD_LETTER_DIR, false) => {}
                (n, _) if n.ends_with(QUARANTINE_SUFFIX) => quarantined.push(name),
                (n, true) => match parse_segment_file_name(n) {
                    Some(first_seq) => {
                        let file = match storage.open(&segment_path(dir, first_seq), false) {
                            Ok(f) => f,
                            Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                            Err(e) => return Err(e),
                        };
                        segments.push(SegmentView {
                            first_seq,
                            len: file.len()?,
                            header: read_header(file.as_ref())?,
                        });
                    }
                    None => strays.push(name),
                },
                _ => strays.push(name),
            }
        }
        segments.sort_by_key(|s| s.first_seq);
        quarantined.sort();
        strays.sort();
        Ok(Self {
            cursor: Register::peek(
                storage.as_ref(),
                &dir.join(CURSOR_FILE),
                RegisterKind::Cursor,
            )?,
            lease: Register::peek(
                storage.as_ref(),
                &dir.join(SEQ_LEASE_FILE),
                RegisterKind::SeqLease,
            )?,
            storage,
            dir: dir.to_path_buf(),
            max_record_bytes,
            segments,
            quarantined,
            strays,
        })
    }

    /// A scanner over the frames of `segment` (read-only), bounded by the seq that
    /// starts the next segment. `None` if its header is not valid. `NotFound` if it was
    /// deleted since the listing.
    pub(crate) fn scan(&self, segment: &SegmentView) -> io::Result<Option<SegmentScanner>> {
        if !matches!(segment.header, HeaderStatus::Valid(_)) {
            return Ok(None);
        }
        let file = self
            .storage
            .open(&segment_path(&self.dir, segment.first_seq), false)?;
        let mut scanner = SegmentScanner::new(file, segment.first_seq, self.max_record_bytes);
        if let Some(next) = self
            .segments
            .iter()
            .find(|s| s.first_seq > segment.first_seq)
        {
            scanner.set_upper_seq(next.first_seq - 1);
        }
        Ok(Some(scanner))
    }
}

#[cfg(test)]
mod tests;
