//! The dead-letter store on disk: `DIR/dead-letters/`, segment files in the WAL's own
//! format (docs/FORMAT.md), each frame one entry (`entry.rs`).
//!
//! # Layout and invariants
//!
//! - Segment files are named by the number of their first entry, like WAL segments;
//!   within a file, entry numbers are contiguous (the frame seq), so the WAL's scanner
//!   reads them and counts damage exactly. A new file is named above every existing
//!   one. Entry numbers are internal: a dead letter is named by its *original seq* (the
//!   seq its record had in the WAL).
//! - At most one entry per original seq. The index (original seq → file, offset) is
//!   built by scanning at open; `append` writes nothing for a seq it already holds, so
//!   a replay after a crash that fell between storing a dead letter and the cursor
//!   passing its record stores nothing twice.
//! - An append is durable before `append` returns: the frame is written and the file
//!   fsynced; a new file is created, synced and its directory synced first
//!   (`create_segment`). Only the last file is appended to, and only while its header
//!   names the sink's codec. A writable open rewrites the last file in place and
//!   fsyncs it, then the directories, before trusting what a crashed process (or an
//!   append whose fsync failed) left in the page cache; after a failed fsync the next
//!   append rewrites the bytes from the failed entry on, and rescans, before it answers
//!   from the index. After a purge that failed part way, the next append syncs the
//!   directory first (the purge's rename may not be durable).
//! - The store's files never pass `max_bytes` by an append: one that would is refused.
//! - A purge removes only entries whose record the *durable* WAL cursor has passed
//!   (others could be replayed and stored again after a crash). It rewrites each
//!   affected file to `<name>.purge` keeping every other frame verbatim (undecodable
//!   ones included), fsyncs it, renames it over the original and fsyncs the directory;
//!   a file with damaged bytes is first copied whole to `<name>.quarantined`. A crash
//!   leaves either file whole; a leftover `.purge` file (the rename never happened) is
//!   deleted at the next writable open.
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
    FRAME_HEADER_BYTES, FRAME_PAYLOAD_LIMIT_BYTES, FrameHeader, HeaderStatus, MAX_SEQ,
    SEGMENT_HEADER_BYTES, SegmentHeader, encode_frame, frame_bytes, parse_segment_file_name,
};
use crate::wal::segment::{ScanStep, SegmentScanner, create_segment, read_header, segment_path};
use crate::wal::storage::{Storage, StorageFile, read_full_at};

/// A file is rolled once it passes this many bytes.
const FILE_ROLL_BYTES: u64 = 16 << 20;
/// Bytes read and written back per step when the last file is rewritten in place.
const REWRITE_CHUNK_BYTES: u64 = 1 << 20;
/// Suffix of a purge's rewrite before it is renamed into place.
const PURGE_SUFFIX: &str = ".purge";
/// Most quarantined copies of one file name kept before a purge that needs another
/// refuses (an operator should look long before).
const MAX_QUARANTINE_COPIES: u32 = 1000;

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
    /// Codec id in its header; `None` if the header is unreadable (never appended to).
    codec_id: Option<u32>,
    /// Bytes in the file up to the end of its last valid frame.
    len: u64,
    /// Entry number its next frame gets.
    next_entry: u64,
    /// Entries in it that the index points to.
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
    /// The entry is larger than a frame may be (nothing written).
    TooLarge,
}

/// An entry read back.
#[derive(Debug, Clone)]
pub(crate) struct StoredEntry {
    pub(crate) meta: EntryMeta,
    pub(crate) payload: Vec<u8>,
    /// Codec id of the file that holds it.
    pub(crate) codec_id: u32,
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
    /// A scan failed part way: the index is incomplete and must not be used (an
    /// append could take the name of a file it does not list, or store a seq twice)
    /// until a scan succeeds.
    stale: bool,
    /// An append's fsync failed: from this file and offset on, the file may hold bytes
    /// the kernel marked clean without writing them, which a rescan would index and a
    /// plain fsync would not persist. The next append rewrites them in place and
    /// rescans first.
    unsynced_from: Option<(u64, u64)>,
    /// A purge failed part way, maybe at its directory fsync (a rename or delete may
    /// not be durable, and an append into the renamed file would be lost with it), or a
    /// create failed (its file may be left with an entry that is not durable). The next
    /// append syncs the directory first.
    dir_unsynced: bool,
}

impl StoreFiles {
    /// Opens the store of the WAL directory `wal_dir`. Read-only: a missing store is
    /// empty and nothing on disk changes. Writable (the caller holds the WAL lock): the
    /// directory is created if missing, leftover purge files are deleted, a torn tail
    /// of the last file is cut, and what is on disk is made durable.
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
            stale: false,
            unsynced_from: None,
            dir_unsynced: false,
        };
        if writable {
            store.prepare_dir(wal_dir)?;
            store.rewrite_last_file()?;
        }
        store.scan()?;
        if writable {
            store.make_durable()?;
        }
        Ok(store)
    }

    /// Rebuilds the file list and index from disk.
    fn scan(&mut self) -> io::Result<()> {
        self.stale = true;
        self.scan_all()?;
        self.stale = false;
        Ok(())
    }

    /// Scans again if an earlier scan failed part way; every use of the index goes
    /// through here first.
    pub(crate) fn fresh(&mut self) -> io::Result<()> {
        if self.stale { self.scan() } else { Ok(()) }
    }

    fn scan_all(&mut self) -> io::Result<()> {
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
            match self.scan_file(first, Some(first) == last) {
                Ok(()) => {}
                // Deleted by a purge of a running sink since the listing (read-only).
                Err(e) if e.kind() == io::ErrorKind::NotFound && !self.writable => {}
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }

    fn scan_file(&mut self, first: u64, is_last: bool) -> io::Result<()> {
        let path = segment_path(&self.dir, first);
        let file = self.storage.open(&path, false)?;
        let file_len = file.len()?;
        let codec_id = match read_header(file.as_ref())? {
            HeaderStatus::Valid(h) if h.first_seq == first => h.codec_id,
            _ if is_last && self.writable && file_len < SEGMENT_HEADER_BYTES as u64 => {
                // A create torn by a crash or a full disk before its header was
                // synced: it never held an entry. (Its delete is made durable by
                // `make_durable`.)
                drop(file);
                return self.storage.remove_file(&path);
            }
            _ => {
                // Not a store file we can read: counted, kept, never appended to.
                self.damaged += 1;
                self.bytes += file_len;
                self.files.insert(
                    first,
                    FileInfo {
                        codec_id: None,
                        len: file_len,
                        next_entry: first.saturating_add(1),
                        entries: 0,
                    },
                );
                return Ok(());
            }
        };
        let mut scanner = SegmentScanner::new(file, first, FRAME_PAYLOAD_LIMIT_BYTES);
        let (mut entries, mut damaged) = (0, 0);
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
                                Entry::Occupied(_) => damaged += 1,
                            }
                        }
                        Err(_) => damaged += 1,
                    }
                }
                ScanStep::Corrupt { .. } => damaged += 1,
                ScanStep::End { trailing_bytes } => {
                    // Trailing bytes of the last file are an append in progress (a
                    // reader beside a running sink) or torn by a crash (cut below by
                    // a writable open): neither is damage.
                    if trailing_bytes > 0 && !is_last {
                        damaged += 1;
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
        self.damaged += damaged;
        self.bytes += len;
        self.files.insert(
            first,
            FileInfo {
                codec_id: Some(codec_id),
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

    /// The codec id this store stamps on files it creates: the WAL's.
    pub(crate) fn writer_codec_id(&self) -> u32 {
        self.codec_id
    }

    /// Codec id of the records held (from the first readable file header), `None` if
    /// the store holds no readable file.
    pub(crate) fn codec_id(&self) -> Option<u32> {
        self.files.values().find_map(|f| f.codec_id)
    }

    /// Damaged frames or files found by the last scan.
    #[cfg(any(feature = "cli", test))]
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

    /// The highest original seq held.
    pub(crate) fn last_seq(&self) -> Option<u64> {
        self.index.last_key_value().map(|(&s, _)| s)
    }

    /// Reads the entry for `seq`.
    pub(crate) fn get(&self, seq: u64) -> io::Result<Option<StoredEntry>> {
        let Some(loc) = self.index.get(&seq).copied() else {
            return Ok(None);
        };
        let file = self
            .storage
            .open(&segment_path(&self.dir, loc.file), false)?;
        // At most a frame the scan accepted (bounded by the file's length).
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
        let codec_id = self
            .files
            .get(&loc.file)
            .and_then(|f| f.codec_id)
            .unwrap_or(self.codec_id);
        Ok(Some(StoredEntry {
            meta,
            payload: payload.get(at..).unwrap_or_default().to_vec(),
            codec_id,
        }))
    }

    /// Appends a dead letter, durable before it returns (see the module doc).
    pub(crate) fn append(&mut self, meta: &EntryMeta, payload: &[u8]) -> io::Result<Appended> {
        self.fresh()?;
        if !self.writable {
            return Err(io::Error::other("the dead-letter store is open read-only"));
        }
        if let Some((file, from)) = self.unsynced_from {
            // Before trusting the index (a rescan since the failure may have indexed
            // the very entry whose fsync failed): make those bytes durable, rescan.
            let _rewritten = self.rewrite_in_place(file, from)?;
            self.unsynced_from = None;
            self.scan()?;
        }
        if self.dir_unsynced {
            // Sync the directory before appending: a purge's rename that is not durable
            // would take this append with it at a power loss.
            self.storage.sync_dir(&self.dir)?;
            self.dir_unsynced = false;
        }
        if self.index.contains_key(&meta.seq) {
            return Ok(Appended::AlreadyStored);
        }
        let mut entry = Vec::new();
        encode_entry(&mut entry, meta, payload);
        if entry.len() > FRAME_PAYLOAD_LIMIT_BYTES {
            return Ok(Appended::TooLarge);
        }
        let frame_len = frame_bytes(entry.len());
        let target = self.append_target(frame_len);
        let new_file_bytes = if target.is_some() {
            0
        } else {
            SEGMENT_HEADER_BYTES as u64
        };
        if self
            .bytes
            .saturating_add(frame_len)
            .saturating_add(new_file_bytes)
            > self.max_bytes
        {
            return Ok(Appended::Full);
        }
        let (first, info) = match target {
            Some(t) => self.open_active(t)?,
            None => self.create_file()?,
        };
        let mut frame = Vec::with_capacity(entry.len() + FRAME_HEADER_BYTES);
        encode_frame(&mut frame, info.next_entry, &entry);
        let Some((_, file)) = self.active.as_ref() else {
            return Err(io::Error::other("no active dead-letter file"));
        };
        file.write_all_at(&frame, info.len)?;
        // Sync before answering: the caller advances the WAL cursor past this record
        // next, and a power loss must not lose the only copy.
        if let Err(e) = file.sync() {
            self.unsynced_from = Some((first, info.len));
            return Err(e);
        }
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
                len: info.len + frame_len,
                next_entry: info.next_entry + 1,
                entries: info.entries + 1,
                ..info
            },
        );
        Ok(Appended::Stored)
    }

    /// The last file, if the next frame may go there: readable, of the sink's codec,
    /// not full, with room for another entry number.
    fn append_target(&self, frame_len: u64) -> Option<u64> {
        let (&first, info) = self.files.last_key_value()?;
        let fits = info.len + frame_len <= FILE_ROLL_BYTES || info.entries == 0;
        (info.codec_id == Some(self.codec_id) && fits && info.next_entry < MAX_SEQ).then_some(first)
    }

    fn open_active(&mut self, first: u64) -> io::Result<(u64, FileInfo)> {
        let info = self
            .files
            .get(&first)
            .copied()
            .ok_or_else(|| io::Error::other("dead-letter file vanished from the index"))?;
        if self.active.as_ref().is_none_or(|(f, _)| *f != first) {
            let file = self.storage.open(&segment_path(&self.dir, first), true)?;
            self.active = Some((first, file));
        }
        Ok((first, info))
    }

    /// Creates a new file named above every existing one.
    fn create_file(&mut self) -> io::Result<(u64, FileInfo)> {
        let first = self
            .files
            .last_key_value()
            .map_or(1, |(&f, i)| i.next_entry.max(f.saturating_add(1)));
        if first >= MAX_SEQ {
            return Err(io::Error::other(
                "dead-letter store: entry numbers exhausted",
            ));
        }
        let header = SegmentHeader {
            codec_id: self.codec_id,
            first_seq: first,
            prev_last_seq: first - 1,
        };
        // Creates, syncs the file and syncs the directory (see `create_segment`).
        let file = match create_segment(self.storage.as_ref(), &self.dir, header, 0) {
            Ok(f) => f,
            // Not ours: a file the index does not list holds that name. Never remove
            // it (it may hold entries); the next scan lists it.
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
                self.stale = true;
                // It may be our own create whose directory fsync failed and whose
                // removal failed too: a later append into it must sync the directory.
                self.dir_unsynced = true;
                return Err(e);
            }
            Err(e) => {
                // We created it and a later step failed (a full disk after the
                // create): it holds no entry, and left there it would make every
                // retry fail with AlreadyExists. If the removal fails too, the next
                // append syncs the directory before it writes (the file's entry may
                // not be durable).
                let _ = self.storage.remove_file(&segment_path(&self.dir, first));
                self.dir_unsynced = true;
                return Err(e);
            }
        };
        let info = FileInfo {
            codec_id: Some(self.codec_id),
            len: SEGMENT_HEADER_BYTES as u64,
            next_entry: first,
            entries: 0,
        };
        self.bytes += info.len;
        self.files.insert(first, info);
        self.active = Some((first, file));
        Ok((first, info))
    }
}

mod durable;
mod purge;

#[cfg(test)]
mod tests;
