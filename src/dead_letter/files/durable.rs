//! Making what a writable open finds durable before the index trusts it: the store's
//! directory, leftover purge files, and the last file's bytes (rewritten in place: a
//! crash or a failed fsync may have left an entry readable but not durable).

use std::io;
use std::path::Path;

use super::{PURGE_SUFFIX, REWRITE_CHUNK_BYTES, StoreFiles};
use crate::wal::format::{HeaderStatus, parse_segment_file_name};
use crate::wal::segment::{read_header, segment_path};
use crate::wal::storage::read_full_at;

impl StoreFiles {
    pub(super) fn prepare_dir(&self, wal_dir: &Path) -> io::Result<()> {
        match self.storage.create_dir(&self.dir) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
            Err(e) => return Err(e),
        }
        // Sync the parent, also when the directory existed: a process that created it
        // may have died before syncing, and a power loss would drop it with every dead
        // letter in it.
        self.storage.sync_dir(wal_dir)?;
        for e in self.storage.list(&self.dir)? {
            if e.is_file && e.name.ends_with(PURGE_SUFFIX) {
                // A purge's rewrite that was never renamed into place: the original
                // still holds every entry. (Made durable by `make_durable`.)
                self.storage.remove_file(&self.dir.join(&e.name))?;
            }
        }
        Ok(())
    }

    /// Fsyncs the directory (writable opens): a crashed process may have left a create
    /// in the page cache only, and the index now trusts it. (The last file's contents
    /// were made durable before the scan, by [`rewrite_last_file`](Self::rewrite_last_file).)
    pub(super) fn make_durable(&mut self) -> io::Result<()> {
        // Covers creates, the cut of a torn file and leftover deletes of an earlier run.
        self.storage.sync_dir(&self.dir)
    }

    /// Writes the last file's bytes back in place, then fsyncs it. Appends go only to
    /// the last file whose header is valid, so any byte of the store
    /// not yet durable is there: written by a process that crashed before its fsync, or
    /// by an append whose fsync failed. After a failed fsync the kernel may mark those
    /// pages clean without having written them, so a plain fsync would persist nothing
    /// while reads still show the entry; rewriting makes them dirty again. Done before
    /// the scan of a writable open, so the index is built from bytes that are durable.
    /// Costs one read and one write of that file: at most `FILE_ROLL_BYTES` plus one
    /// entry. A file whose header is not valid is never appended to and never written
    /// (only fsynced).
    pub(super) fn rewrite_last_file(&mut self) -> io::Result<()> {
        let mut names: Vec<u64> = self
            .storage
            .list(&self.dir)?
            .into_iter()
            .filter(|e| e.is_file)
            .filter_map(|e| parse_segment_file_name(&e.name))
            .collect();
        names.sort_unstable();
        // From the highest name down to the first file with a valid header: a file
        // named above it with a damaged header (never appended to) does not hide it.
        for first in names.into_iter().rev() {
            if self.rewrite_in_place(first, 0)? {
                break;
            }
        }
        Ok(())
    }

    /// Writes the bytes of file `first` from `from` on back in place and fsyncs it (see
    /// [`rewrite_last_file`](Self::rewrite_last_file)); a file whose header is not
    /// valid is only fsynced. A file that is gone (purged) has nothing left to make
    /// durable. Returns whether the header was valid (the bytes were rewritten).
    pub(super) fn rewrite_in_place(&mut self, first: u64, from: u64) -> io::Result<bool> {
        self.active = None;
        let file = match self.storage.open(&segment_path(&self.dir, first), true) {
            Ok(f) => f,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(false),
            Err(e) => return Err(e),
        };
        if !matches!(read_header(file.as_ref())?, HeaderStatus::Valid(h) if h.first_seq == first) {
            // Never appended to, never written: only made durable as it is.
            file.sync()?;
            return Ok(false);
        }
        let len = file.len()?;
        let mut buf = vec![0u8; usize::try_from(len.min(REWRITE_CHUNK_BYTES)).unwrap_or(0)];
        let mut at = from;
        while at < len {
            let want = usize::try_from((len - at).min(REWRITE_CHUNK_BYTES)).unwrap_or(0);
            let n = read_full_at(file.as_ref(), buf.get_mut(..want).unwrap_or_default(), at)?;
            if n == 0 {
                break;
            }
            file.write_all_at(buf.get(..n).unwrap_or_default(), at)?;
            at += n as u64;
        }
        // fsync: the bytes rewritten above are dirty, so this persists them; a power
        // loss must not drop an entry the index is about to trust.
        file.sync()?;
        Ok(true)
    }
}
