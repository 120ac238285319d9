//! Purging dead letters the durable cursor has passed: each affected file rewritten
//! without them and renamed into place (see "Layout and invariants" in the parent
//! module for the crash argument).

use std::collections::BTreeMap;
use std::io;
use std::path::Path;

use super::{MAX_QUARANTINE_COPIES, PURGE_SUFFIX, StoreFiles};
use crate::dead_letter::entry::decode_entry;
use crate::wal::format::{
    FRAME_PAYLOAD_LIMIT_BYTES, QUARANTINE_SUFFIX, SegmentHeader, encode_frame,
};
use crate::wal::segment::{ScanStep, SegmentScanner, segment_path};
use crate::wal::storage::read_full_at;

impl StoreFiles {
    /// Removes the entries for `seqs` (every entry if `None`) whose seq is at most
    /// `through` (the durable WAL cursor); returns how many were removed. See the
    /// module doc for the crash argument. The index is rebuilt from disk afterwards,
    /// also when a rewrite failed.
    pub(crate) fn purge(&mut self, seqs: Option<&[u64]>, through: u64) -> io::Result<u64> {
        if !self.writable {
            return Err(io::Error::other("the dead-letter store is open read-only"));
        }
        self.fresh()?;
        let mut doomed: Vec<u64> = match seqs {
            None => self.index.range(..=through).map(|(&s, _)| s).collect(),
            Some(s) => s
                .iter()
                .copied()
                .filter(|&s| s <= through && self.index.contains_key(&s))
                .collect(),
        };
        doomed.sort_unstable();
        doomed.dedup();
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
        let mut result = Ok(doomed.len() as u64);
        for (first, gone) in by_file {
            if let Err(e) = self.rewrite_without(first, &gone) {
                // A rename or delete may have happened without its directory fsync.
                self.dir_unsynced = true;
                result = Err(e);
                break;
            }
        }
        self.scan()?;
        result
    }

    /// Rewrites file `first` without the entries for `gone` (sorted), keeping every
    /// other frame verbatim, or deletes it if it held nothing else.
    pub(super) fn rewrite_without(&mut self, first: u64, gone: &[u64]) -> io::Result<()> {
        let path = segment_path(&self.dir, first);
        let info = self
            .files
            .get(&first)
            .copied()
            .ok_or_else(|| io::Error::other("dead-letter file vanished from the index"))?;
        let codec_id = info.codec_id.unwrap_or(self.codec_id);
        let mut bytes = SegmentHeader {
            codec_id,
            first_seq: first,
            prev_last_seq: first - 1,
        }
        .encode()
        .to_vec();
        let mut kept = 0u64;
        let mut damaged = false;
        let mut scanner = SegmentScanner::new(
            self.storage.open(&path, false)?,
            first,
            FRAME_PAYLOAD_LIMIT_BYTES,
        );
        loop {
            match scanner.next_step()? {
                ScanStep::Frame { payload, .. } => {
                    let purged = decode_entry(payload)
                        .is_ok_and(|(m, _)| gone.binary_search(&m.seq).is_ok());
                    if !purged {
                        encode_frame(&mut bytes, first + kept, payload);
                        kept += 1;
                    }
                }
                ScanStep::Corrupt { .. } => damaged = true,
                ScanStep::End { trailing_bytes } => {
                    damaged |= trailing_bytes > 0;
                    break;
                }
            }
        }
        drop(scanner);
        let name = path
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or_default()
            .to_string();
        if damaged {
            self.quarantine_copy(&path, &name)?;
        }
        if kept == 0 {
            self.storage.remove_file(&path)?;
            // Sync the delete before more changes, so that the store never comes back
            // with a purged entry after a power loss.
            self.storage.sync_dir(&self.dir)?;
            return Ok(());
        }
        let tmp = self.dir.join(format!("{name}{PURGE_SUFFIX}"));
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

    /// Copies a file holding damaged bytes to an unused `<name>[.N].quarantined` before
    /// a purge replaces it, so that no byte is lost to the purge. The copy is written
    /// to a temporary name, synced, then renamed: a crash never leaves a partial copy
    /// under the final name (a leftover temporary ends in `.purge` and is removed at
    /// the next writable open). A name already taken is never trusted to hold these
    /// bytes: file names are reused once a purge deleted the last file.
    pub(super) fn quarantine_copy(&self, path: &Path, name: &str) -> io::Result<()> {
        let src = self.storage.open(path, false)?;
        let len = usize::try_from(src.len()?).map_err(io::Error::other)?;
        let mut all = vec![0u8; len];
        let n = read_full_at(src.as_ref(), &mut all, 0)?;
        all.truncate(n);
        let tmp = self.dir.join(format!("{name}.copy{PURGE_SUFFIX}"));
        if let Err(e) = self.storage.remove_file(&tmp)
            && e.kind() != io::ErrorKind::NotFound
        {
            return Err(e);
        }
        let dst = self.storage.create_new(&tmp)?;
        dst.write_all_at(&all, 0)?;
        // Sync the copy before it takes its name: a power loss after the rename must
        // find every byte in it.
        dst.sync()?;
        drop(dst);
        let mut copy = None;
        for n in 0..MAX_QUARANTINE_COPIES {
            let candidate = if n == 0 {
                self.dir.join(format!("{name}{QUARANTINE_SUFFIX}"))
            } else {
                self.dir.join(format!("{name}.{n}{QUARANTINE_SUFFIX}"))
            };
            match self.storage.open(&candidate, false) {
                Err(e) if e.kind() == io::ErrorKind::NotFound => {
                    copy = Some(candidate);
                    break;
                }
                Err(e) => return Err(e),
                Ok(_) => {}
            }
        }
        let copy = copy.ok_or_else(|| {
            io::Error::other(format!(
                "{MAX_QUARANTINE_COPIES} quarantined copies of {name} exist already"
            ))
        })?;
        self.storage.rename(&tmp, &copy)?;
        // Sync the rename before the original is replaced: a power loss must not lose
        // both the copy's name and the damaged original.
        self.storage.sync_dir(&self.dir)
    }
}
