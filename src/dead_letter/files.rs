//! The dead-letter store on disk: `DIR/dead-letters/`, segment files in the WAL's own
//! format (docs/FORMAT.md), each frame one entry (`entry.rs`).
//!
//! # Layout and invariants
//!
//! - Segment files are named by the number of their first entry, like WAL segments;
//!   within a file, entry numbers are contiguous (the frame seq), so the WAL's scanner
//!   reads them and counts damage exactly. Entry numbers are internal: a dead letter is
//!   named by its *original seq* (the seq its record had in the WAL).
//! - At most one entry per original seq. The index (original seq → file, offset) is
//!   built by scanning at open; `append` refuses a seq it already holds, so a replay
//!   after a crash that fell between storing a dead letter and the cursor passing its
//!   record stores nothing twice.
//! - An append is durable before `append` returns: the frame is written and the file
//!   fsynced; a new file is created and its directory synced first
//!   (`create_segment`). Only the last file is appended to.
//! - Bytes on disk never exceed `max_bytes` by an append: one that would is refused.
//! - A purge rewrites each affected file to `<name>.purge`, fsyncs it, renames it over
//!   the original and fsyncs the directory; a file left with no entry is deleted. A
//!   crash leaves either file whole; a leftover `.purge` file (the rename never
//!   happened) is deleted at the next writable open.
//! - Nothing read from disk is trusted before its CRC is checked; damage is counted and
//!   skipped, never a panic. A read-only open changes nothing on disk.

use std::collections::BTreeMap;
use std::collections::btree_map::Entry;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use super::entry::{EntryMeta, decode_entry, encode_entry};
pub(crate) use crate::wal::format::DEAD_LETTER_DIR;
use crate::wal::format::{
    FRAME_HEADER_BYTES, FRAME_PAYLOAD_LIMIT_BYTES, FrameHeader, HeaderStatus, SegmentHeader,
    encode_frame, frame_bytes, parse_segment_file_name,
};
use crate::wal::segment::{ScanStep, SegmentScanner, create_segment, read_header, segment_path};
use crate::wal::storage::{Storage, StorageFile, read_full_at};

/// A file is rolled once it passes this many bytes.
const FILE_ROLL_BYTES: u64 = 16 << 20;
/// Suffix of a purge's rewrite before it is renamed into place.
const PURGE_SUFFIX: &str = ".purge";

/// Where one entry is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Loc {
    file: u64,
    offset: u64,
    frame_len: u64,
}

/// One file of the store.
#[derive(Debug, Clone, Copy)]
struct FileInfo {
    /// Codec id in its header (0 if the header is unreadable).
    codec_id: u32,
    /// Bytes in the file up to the end of its last valid frame.
    len: u64,
    /// Entry number its next frame gets.
    next_entry: u64,
    /// Entries in it (live, indexed).
    entries: u64,
}

/// What happened to an append.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Appended {
    /// Stored and durable.
    Stored,
    /// An entry for that original seq was already stored (nothing written).
    AlreadyStored,
    /// It would pass the store's byte cap (nothing written).
    Full,
}

/// An entry read back.
#[derive(Debug, Clone)]
pub(crate) struct StoredEntry {
    pub(crate) meta: EntryMeta,
    pub(crate) payload: Vec<u8>,
}

/// The store's files, index and (when writable) its append position.
#[derive(Debug)]
pub(crate) struct StoreFiles {
    storage: Arc<dyn Storage>,
    dir: PathBuf,
    codec_id: u32,
    max_bytes: u64,
    writable: bool,
    files: BTreeMap<u64, FileInfo>,
    index: BTreeMap<u64, Loc>,
    /// Bytes of all files.
    bytes: u64,
    /// Frames or entries found damaged (skipped) at the last scan.
    damaged: u64,
    /// The last file, open for appends (writable stores, opened lazily).
    active: Option<(u64, Box<dyn StorageFile>)>,
}

impl StoreFiles {
    /// Opens the store of the WAL directory `wal_dir`. Read-only: a missing store is
    /// empty and nothing on disk changes. Writable (the caller holds the WAL lock):
    /// the directory is created if missing, leftover purge files are deleted, and a
    /// torn tail of the last file is cut.
    pub(crate) fn open(
        storage: Arc<dyn Storage>,
        wal_dir: &Path,
        codec_id: u32,
        max_bytes: u64,
        writable: bool,
    ) -> io::Result<Self> {
        let dir = wal_dir.join(DEAD_LETTER_DIR);
        let mut store = Self {
            storage,
            dir,
            codec_id,
            max_bytes,
            writable,
            files: BTreeMap::new(),
            index: BTreeMap::new(),
            bytes: 0,
            damaged: 0,
            active: None,
        };
        if writable {
            store.prepare_dir(wal_dir)?;
        }
        store.scan()?;
        Ok(store)
    }

    fn prepare_dir(&self, wal_dir: &Path) -> io::Result<()> {
        match self.storage.create_dir(&self.dir) {
            Ok(()) => {
                // Sync the parent: a power loss could drop the new directory's entry,
                // and every dead letter stored in it with it.
                self.storage.sync_dir(wal_dir)?;
            }
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
            Err(e) => return Err(e),
        }
        let mut removed = false;
        for e in self.storage.list(&self.dir)? {
            if e.is_file && e.name.ends_with(PURGE_SUFFIX) {
                // A purge's rewrite that was never renamed into place: the original
                // still holds every entry.
                self.storage.remove_file(&self.dir.join(&e.name))?;
                removed = true;
            }
        }
        if removed {
            // Sync the deletes: otherwise a power loss could bring the partial rewrite
            // back (harmless, but it would be deleted again at the next open).
            self.storage.sync_dir(&self.dir)?;
        }
        Ok(())
    }

    /// Rebuilds the file list and index from disk.
    fn scan(&mut self) -> io::Result<()> {
        self.files.clear();
        self.index.clear();
        self.bytes = 0;
        self.damaged = 0;
        self.active = None;
        let entries = match self.storage.list(&self.dir) {
            Ok(v) => v,
            Err(e) if e.kind() == io::ErrorKind::NotFound && !self.writable => return Ok(()),
            Err(e) => return Err(e),
        };
        let mut firsts: Vec<u64> = entries
            .iter()
            .filter(|e| e.is_file)
            .filter_map(|e| parse_segment_file_name(&e.name))
            .collect();
        firsts.sort_unstable();
        let last = firsts.last().copied();
        for first in firsts {
            self.scan_file(first, Some(first) == last)?;
        }
        Ok(())
    }

    fn scan_file(&mut self, first: u64, is_last: bool) -> io::Result<()> {
        let path = segment_path(&self.dir, first);
        let file = self.storage.open(&path, false)?;
        let file_len = file.len()?;
        let codec_id = match read_header(file.as_ref())? {
            HeaderStatus::Valid(h) if h.first_seq == first => h.codec_id,
            _ => {
                // Not a store file we can read: counted, never appended to (a new
                // append goes to a new file above it).
                self.damaged += 1;
                self.bytes += file_len;
                self.files.insert(
                    first,
                    FileInfo {
                        codec_id: 0,
                        len: file_len,
                        next_entry: u64::MAX,
                        entries: 0,
                    },
                );
                return Ok(());
            }
        };
        let mut scanner = SegmentScanner::new(file, first, FRAME_PAYLOAD_LIMIT_BYTES);
        let mut entries = 0;
        loop {
            match scanner.next_step()? {
                ScanStep::Frame { payload, .. } => {
                    let frame_len = frame_bytes(payload.len());
                    let decoded = decode_entry(payload);
                    let offset = scanner.valid_end() - frame_len;
                    match decoded {
                        Ok((meta, _)) => {
                            let loc = Loc {
                                file: first,
                                offset,
                                frame_len,
                            };
                            // A seq twice (possible only by damage or a foreign file):
                            // the first stays.
                            match self.index.entry(meta.seq) {
                                Entry::Vacant(v) => {
                                    v.insert(loc);
                                    entries += 1;
                                }
                                Entry::Occupied(_) => self.damaged += 1,
                            }
                        }
                        Err(_) => self.damaged += 1,
                    }
                }
                ScanStep::Corrupt { .. } => self.damaged += 1,
                ScanStep::End { trailing_bytes } => {
                    // Trailing bytes of the last file are an append in progress (a
                    // reader beside a running sink) or torn by a crash (cut below by
                    // a writable open): neither is damage.
                    if trailing_bytes > 0 && !is_last {
                        self.damaged += 1;
                    }
                    break;
                }
            }
        }
        let valid_end = scanner.valid_end();
        let next_entry = scanner.expected_seq();
        drop(scanner);
        let mut len = file_len;
        if is_last && self.writable && file_len > valid_end {
            // A torn tail from a crash mid-append (never acknowledged): cut it so the
            // next append starts on a frame boundary.
            let f = self.storage.open(&path, true)?;
            f.set_len(valid_end)?;
            // Sync the cut: a power loss must not bring the torn bytes back under
            // frames appended after them.
            f.sync()?;
            len = valid_end;
        }
        self.bytes += len;
        self.files.insert(
            first,
            FileInfo {
                codec_id,
                len,
                next_entry,
                entries,
            },
        );
        Ok(())
    }

    /// Dead letters held.
    pub(crate) fn count(&self) -> u64 {
        self.index.len() as u64
    }

    /// Bytes of the store's files.
    pub(crate) fn bytes(&self) -> u64 {
        self.bytes
    }

    /// Codec id of the records held (from the first readable file header), `None` if
    /// the store holds no readable file.
    pub(crate) fn codec_id(&self) -> Option<u32> {
        self.files
            .values()
            .find(|f| f.next_entry != u64::MAX)
            .map(|f| f.codec_id)
    }

    /// Damaged frames or files found by the last scan.
    pub(crate) fn damaged(&self) -> u64 {
        self.damaged
    }

    /// Whether an entry for `seq` is stored.
    pub(crate) fn contains(&self, seq: u64) -> bool {
        self.index.contains_key(&seq)
    }

    /// Original seqs held, in order, from `from_seq` on, at most `limit`.
    pub(crate) fn seqs(&self, from_seq: u64, limit: usize) -> Vec<u64> {
        self.index
            .range(from_seq..)
            .take(limit)
            .map(|(&s, _)| s)
            .collect()
    }

    /// Reads the entry for `seq`.
    pub(crate) fn get(&self, seq: u64) -> io::Result<Option<StoredEntry>> {
        let Some(loc) = self.index.get(&seq).copied() else {
            return Ok(None);
        };
        let file = self
            .storage
            .open(&segment_path(&self.dir, loc.file), false)?;
        let len = usize::try_from(loc.frame_len).map_err(io::Error::other)?;
        let mut buf = vec![0u8; len];
        let n = read_full_at(file.as_ref(), &mut buf, loc.offset)?;
        let damaged = || {
            io::Error::new(
                io::ErrorKind::InvalidData,
                format!("dead letter {seq}: damaged since it was indexed"),
            )
        };
        let frame = buf.get(..n).ok_or_else(damaged)?;
        let header = FrameHeader::peek(frame).ok_or_else(damaged)?;
        let payload = frame.get(FRAME_HEADER_BYTES..).ok_or_else(damaged)?;
        header.verify(payload).map_err(|_| damaged())?;
        let (meta, at) = decode_entry(payload).map_err(|_| damaged())?;
        if meta.seq != seq {
            return Err(damaged());
        }
        Ok(Some(StoredEntry {
            meta,
            payload: payload.get(at..).unwrap_or_default().to_vec(),
        }))
    }

    /// Appends a dead letter, durable before it returns (see the module doc).
    pub(crate) fn append(&mut self, meta: &EntryMeta, payload: &[u8]) -> io::Result<Appended> {
        if !self.writable {
            return Err(io::Error::other("the dead-letter store is open read-only"));
        }
        if self.index.contains_key(&meta.seq) {
            return Ok(Appended::AlreadyStored);
        }
        let mut entry = Vec::new();
        encode_entry(&mut entry, meta, payload);
        let frame_len = frame_bytes(entry.len());
        if self.bytes.saturating_add(frame_len) > self.max_bytes {
            return Ok(Appended::Full);
        }
        let (first, info) = self.file_for_append(frame_len)?;
        let mut frame = Vec::with_capacity(entry.len() + FRAME_HEADER_BYTES);
        encode_frame(&mut frame, info.next_entry, &entry);
        let Some((_, file)) = self.active.as_ref() else {
            return Err(io::Error::other("no active dead-letter file"));
        };
        file.write_all_at(&frame, info.len)?;
        // Sync before answering: the caller advances the WAL cursor past this record
        // next, and a power loss must not lose the only copy.
        file.sync()?;
        self.index.insert(
            meta.seq,
            Loc {
                file: first,
                offset: info.len,
                frame_len,
            },
        );
        self.bytes += frame_len;
        self.files.insert(
            first,
            FileInfo {
                codec_id: info.codec_id,
                len: info.len + frame_len,
                next_entry: info.next_entry + 1,
                entries: info.entries + 1,
            },
        );
        Ok(Appended::Stored)
    }

    /// The file the next frame goes to (opening or creating it), and its state.
    fn file_for_append(&mut self, frame_len: u64) -> io::Result<(u64, FileInfo)> {
        if let Some((&first, &info)) = self.files.last_key_value() {
            let usable = info.next_entry != u64::MAX;
            let roll = info.len + frame_len > FILE_ROLL_BYTES && info.entries > 0;
            if usable && !roll {
                if self.active.as_ref().is_none_or(|(f, _)| *f != first) {
                    let file = self.storage.open(&segment_path(&self.dir, first), true)?;
                    self.active = Some((first, file));
                }
                return Ok((first, info));
            }
        }
        // A new file above every entry number used so far.
        let first = self.files.last_key_value().map_or(1, |(&f, i)| {
            i.next_entry.max(f.saturating_add(1)).min(u64::MAX - 1)
        });
        let header = SegmentHeader {
            codec_id: self.codec_id,
            first_seq: first,
            prev_last_seq: first - 1,
        };
        // Creates, syncs the file and syncs the directory (see `create_segment`).
        let file = create_segment(self.storage.as_ref(), &self.dir, header, 0)?;
        let info = FileInfo {
            codec_id: self.codec_id,
            len: crate::wal::format::SEGMENT_HEADER_BYTES as u64,
            next_entry: first,
            entries: 0,
        };
        self.bytes += info.len;
        self.files.insert(first, info);
        self.active = Some((first, file));
        Ok((first, info))
    }

    /// Removes the entries for `seqs` (every entry if `None`); returns how many were
    /// removed. See the module doc for the crash argument.
    pub(crate) fn purge(&mut self, seqs: Option<&[u64]>) -> io::Result<u64> {
        if !self.writable {
            return Err(io::Error::other("the dead-letter store is open read-only"));
        }
        let doomed: Vec<u64> = match seqs {
            None => self.index.keys().copied().collect(),
            Some(s) => s
                .iter()
                .copied()
                .filter(|s| self.index.contains_key(s))
                .collect(),
        };
        if doomed.is_empty() {
            return Ok(0);
        }
        let mut by_file: BTreeMap<u64, Vec<u64>> = BTreeMap::new();
        for seq in &doomed {
            if let Some(loc) = self.index.get(seq) {
                by_file.entry(loc.file).or_default().push(*seq);
            }
        }
        self.active = None;
        for (first, gone) in by_file {
            self.rewrite_without(first, &gone)?;
        }
        self.scan()?;
        Ok(doomed.len() as u64)
    }

    /// Rewrites file `first` without the entries for `gone` (or deletes it if nothing
    /// is left).
    fn rewrite_without(&mut self, first: u64, gone: &[u64]) -> io::Result<()> {
        let keep: Vec<u64> = self
            .index
            .iter()
            .filter(|(s, l)| l.file == first && !gone.contains(s))
            .map(|(&s, _)| s)
            .collect();
        let path = segment_path(&self.dir, first);
        if keep.is_empty() {
            self.storage.remove_file(&path)?;
            // Sync the delete before more changes, so that the store never comes back
            // with a purged entry after a power loss.
            self.storage.sync_dir(&self.dir)?;
            return Ok(());
        }
        let codec_id = self.files.get(&first).map_or(self.codec_id, |f| f.codec_id);
        let mut bytes = SegmentHeader {
            codec_id,
            first_seq: first,
            prev_last_seq: first - 1,
        }
        .encode()
        .to_vec();
        for (i, seq) in keep.iter().enumerate() {
            let Some(e) = self.get(*seq)? else { continue };
            let mut entry = Vec::new();
            encode_entry(&mut entry, &e.meta, &e.payload);
            encode_frame(&mut bytes, first + i as u64, &entry);
        }
        let tmp = self.dir.join(format!(
            "{}{PURGE_SUFFIX}",
            path.file_name()
                .and_then(|n| n.to_str())
                .unwrap_or_default()
        ));
        if let Err(e) = self.storage.remove_file(&tmp)
            && e.kind() != io::ErrorKind::NotFound
        {
            return Err(e);
        }
        let file = self.storage.create_new(&tmp)?;
        file.write_all_at(&bytes, 0)?;
        // Sync the rewrite before it replaces the original: a power loss after the
        // rename must find every kept entry in it.
        file.sync()?;
        drop(file);
        self.storage.rename(&tmp, &path)?;
        // Sync the rename: the purge is done only once the rewrite is the file.
        self.storage.sync_dir(&self.dir)?;
        Ok(())
    }
}

#[cfg(test)]
mod tests;
