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

#![allow(dead_code, reason = "the read side of the tools to come; tested below")]

use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use super::format::{
    CURSOR_FILE, HeaderStatus, LOCK_FILE, QUARANTINE_SUFFIX, RegisterKind, SEQ_LEASE_FILE,
    parse_segment_file_name,
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
                (LOCK_FILE | CURSOR_FILE | SEQ_LEASE_FILE, true) => {}
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
mod tests {
    use super::*;
    use crate::testing::sim::SimDisk;
    use crate::wal::segment::ScanStep;
    use crate::wal::writer::SyncPolicy;
    use crate::wal::{Wal, WalConfig};

    fn config(dir: &Path) -> WalConfig {
        WalConfig {
            dir: dir.to_path_buf(),
            codec_id: 1,
            segment_bytes: 4096,
            max_record_bytes: 64,
            max_disk_bytes: 1 << 20,
            sync_policy: SyncPolicy::OnRequest,
        }
    }

    /// Every frame of every readable segment, in order.
    fn frames(view: &WalView) -> io::Result<Vec<(u64, Vec<u8>)>> {
        let mut out = Vec::new();
        for seg in &view.segments {
            let Some(mut scanner) = view.scan(seg)? else {
                continue;
            };
            // Each step moves forward in the file: bounded by its length.
            for _ in 0..=seg.len {
                match scanner.next_step()? {
                    ScanStep::Frame { seq, payload } => out.push((seq, payload.to_vec())),
                    ScanStep::Corrupt { .. } => {}
                    ScanStep::End { .. } => break,
                }
            }
        }
        Ok(out)
    }

    /// The view reads a directory whose lock a live sink holds, and changes nothing.
    #[test]
    fn a_view_reads_a_locked_directory_and_changes_nothing() -> Result<(), OpenErrorOrIo> {
        let disk = SimDisk::new(1);
        let dir = Path::new("/wal");
        // Open the log as a sink would (lock held), and write frames by hand through
        // a second, independent file handle: the view must see them.
        let wal = Wal::open(
            disk.storage(),
            config(dir),
            crate::metrics::Metrics::new(None),
        )?;
        let segment = crate::wal::segment::segment_path(dir, 1);
        let file = disk.storage().open(&segment, true)?;
        let mut buf = Vec::new();
        for seq in 1..=5u64 {
            crate::wal::format::encode_frame(&mut buf, seq, &[seq as u8; 3]);
        }
        file.write_all_at(&buf, crate::wal::format::SEGMENT_HEADER_BYTES as u64)?;
        let before: Vec<(String, Vec<u8>)> = disk
            .names_in(dir)
            .into_iter()
            .map(|n| {
                let bytes = disk.read_live(&dir.join(&n)).unwrap_or_default();
                (n, bytes)
            })
            .collect();

        let view = WalView::open(disk.storage(), dir, 64)?;
        assert_eq!(view.segments.len(), 1);
        assert_eq!(view.cursor, RegisterPeek::Value(0));
        assert_eq!(view.lease, RegisterPeek::Value(1));
        let got = frames(&view)?;
        assert_eq!(
            got,
            (1..=5u64)
                .map(|s| (s, vec![s as u8; 3]))
                .collect::<Vec<_>>()
        );
        let after: Vec<(String, Vec<u8>)> = disk
            .names_in(dir)
            .into_iter()
            .map(|n| {
                let bytes = disk.read_live(&dir.join(&n)).unwrap_or_default();
                (n, bytes)
            })
            .collect();
        assert_eq!(before, after, "the view changed the directory");
        drop(wal);
        Ok(())
    }

    /// Damage is reported as found, not repaired: an unreadable cursor, a segment with
    /// a bad header, a stray, a directory named like a segment.
    #[test]
    fn a_view_reports_damage_without_repairing_it() -> Result<(), OpenErrorOrIo> {
        let disk = SimDisk::new(2);
        let dir = Path::new("/wal");
        drop(Wal::open(
            disk.storage(),
            config(dir),
            crate::metrics::Metrics::new(None),
        )?);
        let s = disk.storage();
        disk.damage(&dir.join(CURSOR_FILE), 0, &[0xFF; 32])?;
        disk.damage(&dir.join(CURSOR_FILE), 4096, &[0xFF; 32])?;
        s.create_new(&dir.join("00000000000000000500.seg"))?
            .write_all_at(b"not a header", 0)?;
        s.create_new(&dir.join("notes.txt"))?;
        s.create_dir(&dir.join("00000000000000000900.seg"))?;
        let view = WalView::open(disk.storage(), dir, 64)?;
        assert_eq!(view.cursor, RegisterPeek::Unreadable);
        assert_eq!(view.segments.len(), 2);
        assert!(matches!(view.segments[1].header, HeaderStatus::Corrupt(_)));
        assert!(view.scan(&view.segments[1])?.is_none());
        assert_eq!(
            view.strays,
            vec![
                "00000000000000000900.seg".to_string(),
                "notes.txt".to_string()
            ]
        );
        // Nothing was quarantined or rewritten.
        assert!(
            disk.names_in(dir)
                .iter()
                .all(|n| !n.ends_with(QUARANTINE_SUFFIX))
        );
        Ok(())
    }

    #[derive(Debug)]
    #[allow(dead_code, reason = "read through Debug when a test fails")]
    enum OpenErrorOrIo {
        Open(crate::OpenError),
        Io(io::Error),
    }
    impl From<crate::OpenError> for OpenErrorOrIo {
        fn from(e: crate::OpenError) -> Self {
            Self::Open(e)
        }
    }
    impl From<io::Error> for OpenErrorOrIo {
        fn from(e: io::Error) -> Self {
            Self::Io(e)
        }
    }
}
