//! [`FileDrain`]: batches appended to size-rotated files, each record with its seq,
//! fsynced before the batch is acknowledged, exactly once across crashes.
//!
//! # Files
//!
//! `DIR/NNNNNNNNNNNNNNNNNNNN.jsonl` (or `.bin`), named by the seq of the first record
//! in the file, or one above the previous file's name if that is taken (20 digits, so
//! names sort like seqs). One format per directory:
//! - [`FileFormat::JsonLines`]: one line per record, `{"seq":N,"record":<json>}`;
//! - [`FileFormat::LengthPrefixed`]: per record `seq` (u64 LE), `len` (u32 LE), the
//!   bytes, and a CRC-32 (u32 LE) of the three.
//!
//! # Exactly once
//!
//! At open the drain reads each file from its start to its last complete record (a
//! record that is whole, parses, passes its CRC for the byte format, and carries a
//! higher seq than the one before): the newest such record's seq is the highest the
//! directory holds (seqs only grow). A batch skips every record at or below it, so a
//! replay after a crash writes nothing twice.
//!
//! Nothing is ever cut or rewritten. If the newest file has bytes after its last
//! complete record (a write torn by a crash, never acknowledged, or damage), it is
//! closed as it is and the next batch starts a new file; a reader takes each file up to
//! its first incomplete or invalid record. Scanning forward, not back from the end,
//! matters after a power loss: a torn write can leave a later page on disk and an
//! earlier one zeroed, and a record after the hole was never acknowledged.
//!
//! A `LOCK` file in the directory is held (`flock`) while the drain or a write it
//! started is alive: two drains never write one directory.
//!
//! Every batch is written and fsynced before `write_batch` returns `Ok`; a new file's
//! directory entry is fsynced before the first batch in it is acknowledged, and the
//! directory itself (and its parent) when the drain creates it.

use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::marker::PhantomData;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use serde::Serialize;

use crate::drain::{Batch, DrainError, SinkDrain};
use crate::wal::storage::{LockError, LockGuard, RealStorage, Storage};

/// The lock file in a FileDrain's directory.
const LOCK_FILE: &str = "LOCK";

/// How a [`FileDrain`] writes records.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FileFormat {
    /// JSON lines (`{"seq":N,"record":...}`), through serde.
    JsonLines,
    /// Length-prefixed raw bytes with a CRC (records that are bytes).
    LengthPrefixed,
}

impl FileFormat {
    fn extension(self) -> &'static str {
        match self {
            Self::JsonLines => "jsonl",
            Self::LengthPrefixed => "bin",
        }
    }
}

/// Default rotation size: 64 MiB.
const DEFAULT_MAX_FILE_BYTES: u64 = 64 << 20;
/// Bytes of a length-prefixed record around its payload.
const RAW_OVERHEAD: usize = 8 + 4 + 4;

type Encode<T> = fn(&T, u64, &mut Vec<u8>) -> io::Result<()>;

/// Appends batches to size-rotated files in a directory; see the module doc.
pub struct FileDrain<T> {
    dir: PathBuf,
    format: FileFormat,
    max_file_bytes: u64,
    encode: Encode<T>,
    /// The open newest file (`None` only while a write is in flight).
    state: Option<State>,
    /// Records skipped because the directory already held their seq.
    skipped: u64,
    _records: PhantomData<fn(T)>,
}

impl<T> std::fmt::Debug for FileDrain<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FileDrain")
            .field("dir", &self.dir)
            .field("format", &self.format)
            .field("high_seq", &self.state.as_ref().map(|s| s.high_seq))
            .finish_non_exhaustive()
    }
}

#[derive(Debug)]
struct State {
    /// Highest seq held in the directory (0: none).
    high_seq: u64,
    /// The newest file, open for appends, and its length; `None` if the next batch
    /// starts a new file.
    file: Option<(File, u64)>,
    /// Name (number) of the newest file.
    last_name: Option<u64>,
    /// The directory's lock, held while this state (and a write using it) lives.
    _lock: Box<dyn LockGuard>,
}

impl<T: Serialize> FileDrain<T> {
    /// A drain writing JSON lines to `dir` (created if missing).
    ///
    /// # Errors
    ///
    /// If `dir` cannot be created or its newest file cannot be read.
    pub fn json_lines(dir: impl Into<PathBuf>) -> io::Result<Self> {
        Self::new(dir.into(), FileFormat::JsonLines, encode_json::<T>)
    }
}

impl<T: AsRef<[u8]>> FileDrain<T> {
    /// A drain writing length-prefixed raw bytes to `dir` (created if missing).
    ///
    /// # Errors
    ///
    /// If `dir` cannot be created or its newest file cannot be read.
    pub fn length_prefixed(dir: impl Into<PathBuf>) -> io::Result<Self> {
        Self::new(dir.into(), FileFormat::LengthPrefixed, encode_raw::<T>)
    }
}

impl<T> FileDrain<T> {
    fn new(dir: PathBuf, format: FileFormat, encode: Encode<T>) -> io::Result<Self> {
        if !dir.is_dir() {
            std::fs::create_dir_all(&dir)?;
        }
        // The directory's entry in its parent, and the directory itself, durable before
        // a record in it is acknowledged: also when it existed already, since a process
        // that created it may have died before these syncs, and a power loss would
        // then drop the directory with every acknowledged record in it.
        if let Some(parent) = dir.parent().filter(|p| !p.as_os_str().is_empty()) {
            File::open(parent)?.sync_all()?;
        }
        File::open(&dir)?.sync_all()?;
        let lock = match RealStorage.try_lock(&dir.join(LOCK_FILE)) {
            Ok(l) => l,
            Err(LockError::Held) => {
                return Err(io::Error::new(
                    io::ErrorKind::WouldBlock,
                    format!("{} is in use by another FileDrain", dir.display()),
                ));
            }
            Err(LockError::Io(e)) => return Err(e),
        };
        let state = State::open(&dir, format, lock)?;
        Ok(Self {
            dir,
            format,
            max_file_bytes: DEFAULT_MAX_FILE_BYTES,
            encode,
            state: Some(state),
            skipped: 0,
            _records: PhantomData,
        })
    }

    /// Moves to a new file once the current one reaches `bytes` (default 64 MiB; a
    /// batch is never split, so a file may pass it by one batch).
    #[must_use]
    pub fn with_max_file_bytes(mut self, bytes: u64) -> Self {
        self.max_file_bytes = bytes.max(1);
        self
    }

    /// The highest seq the directory holds (0 if none).
    pub fn high_seq(&self) -> u64 {
        self.state.as_ref().map_or(0, |s| s.high_seq)
    }

    /// Records this drain skipped because the directory already held their seq
    /// (deliveries repeated after a crash).
    pub fn replays_skipped(&self) -> u64 {
        self.skipped
    }

    /// The directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }
}

fn encode_json<T: Serialize>(record: &T, seq: u64, out: &mut Vec<u8>) -> io::Result<()> {
    let start = out.len();
    write!(out, "{{\"seq\":{seq},\"record\":")?;
    serde_json::to_writer(&mut *out, record).map_err(io::Error::other)?;
    if out[start..].contains(&b'\n') {
        // Only raw JSON values can carry one; it would end the line early.
        out.truncate(start);
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("record {seq} serializes with a newline"),
        ));
    }
    out.extend_from_slice(b"}\n");
    Ok(())
}

fn encode_raw<T: AsRef<[u8]>>(record: &T, seq: u64, out: &mut Vec<u8>) -> io::Result<()> {
    let bytes = record.as_ref();
    let len = u32::try_from(bytes.len()).map_err(io::Error::other)?;
    let start = out.len();
    out.extend_from_slice(&seq.to_le_bytes());
    out.extend_from_slice(&len.to_le_bytes());
    out.extend_from_slice(bytes);
    let crc = crc32fast::hash(&out[start..]);
    out.extend_from_slice(&crc.to_le_bytes());
    Ok(())
}

/// The first seq in a file name of this format.
fn file_seq(name: &str, format: FileFormat) -> Option<u64> {
    let stem = name.strip_suffix(format.extension())?.strip_suffix('.')?;
    (stem.len() == 20 && stem.bytes().all(|b| b.is_ascii_digit()))
        .then(|| stem.parse().ok())
        .flatten()
}

fn file_name(first_seq: u64, format: FileFormat) -> String {
    format!("{first_seq:020}.{}", format.extension())
}

/// The files of `dir` in this format, by first seq.
fn files(dir: &Path, format: FileFormat) -> io::Result<Vec<(u64, PathBuf)>> {
    let mut out: Vec<(u64, PathBuf)> = std::fs::read_dir(dir)?
        .filter_map(Result::ok)
        .filter_map(|e| {
            let name = e.file_name();
            file_seq(&name.to_string_lossy(), format).map(|s| (s, e.path()))
        })
        .collect();
    out.sort_unstable();
    Ok(out)
}

/// The complete records at the start of `bytes`: the last one's seq and the offset
/// just past it (see the module doc: each whole, valid, with a higher seq than the one
/// before). Stops at the first record that is not.
fn valid_prefix(bytes: &[u8], format: FileFormat) -> (Option<u64>, usize) {
    let mut at = 0usize;
    let mut last: Option<u64> = None;
    let higher = |seq: u64, last: Option<u64>| last.is_none_or(|l| seq > l);
    match format {
        FileFormat::JsonLines => {
            while let Some(nl) = bytes
                .get(at..)
                .and_then(|b| b.iter().position(|&c| c == b'\n'))
            {
                let line = &bytes[at..at + nl];
                let seq = serde_json::from_slice::<serde_json::Value>(line)
                    .ok()
                    .and_then(|v| v.get("seq").and_then(serde_json::Value::as_u64));
                match seq {
                    Some(seq) if higher(seq, last) => {
                        last = Some(seq);
                        at += nl + 1;
                    }
                    _ => break,
                }
            }
        }
        FileFormat::LengthPrefixed => {
            while let Some(head) = bytes.get(at..at + 12) {
                let mut seq_b = [0u8; 8];
                seq_b.copy_from_slice(&head[..8]);
                let mut len_b = [0u8; 4];
                len_b.copy_from_slice(&head[8..12]);
                let seq = u64::from_le_bytes(seq_b);
                let len = u32::from_le_bytes(len_b) as usize;
                let Some(end) = at.checked_add(len + RAW_OVERHEAD) else {
                    break;
                };
                let Some(rec) = bytes.get(at..end) else { break };
                let (body, crc) = rec.split_at(rec.len() - 4);
                if crc32fast::hash(body).to_le_bytes() != crc || !higher(seq, last) {
                    break;
                }
                last = Some(seq);
                at = end;
            }
        }
    }
    (last, at)
}

impl State {
    /// Reads the directory back (see the module doc): the highest seq, and the newest
    /// file if the next batch may be appended to it.
    fn open(dir: &Path, format: FileFormat, lock: Box<dyn LockGuard>) -> io::Result<Self> {
        let all = files(dir, format)?;
        let mut high_seq = 0;
        let mut file = None;
        for (i, (_, path)) in all.iter().enumerate().rev() {
            let bytes = std::fs::read(path)?;
            let (last, end) = valid_prefix(&bytes, format);
            if i + 1 == all.len() {
                if end == bytes.len() {
                    let f = OpenOptions::new().read(true).write(true).open(path)?;
                    file = Some((f, end as u64));
                } else {
                    tracing::warn!(file = %path.display(), valid_bytes = end, bytes = bytes.len(), "bytes after the last complete record (a torn write or damage): the file is kept as it is and the next batch starts a new one");
                }
            }
            if let Some(seq) = last {
                high_seq = seq;
                break;
            }
        }
        // What a crashed process left in the page cache is now trusted (a replay of
        // it is skipped): make it durable first.
        if let Some((_, path)) = all.last() {
            File::open(path)?.sync_all()?;
        }
        File::open(dir)?.sync_all()?;
        let last_name = all.last().map(|(n, _)| *n);
        Ok(Self {
            high_seq,
            file,
            last_name,
            _lock: lock,
        })
    }

    /// Writes the encoded records (first seq `first`, last `last`) and fsyncs; starts a
    /// new file first if there is none to append to or the newest is full.
    fn write(
        &mut self,
        dir: &Path,
        format: FileFormat,
        max_file_bytes: u64,
        bytes: &[u8],
        first: u64,
        last: u64,
    ) -> io::Result<()> {
        if self
            .file
            .as_ref()
            .is_none_or(|(_, len)| *len >= max_file_bytes)
        {
            // Named by the first seq, above every existing name (a file closed with
            // a torn tail may hold that name already).
            let name = self
                .last_name
                .map_or(first, |n| first.max(n.saturating_add(1)));
            let path = dir.join(file_name(name, format));
            let f = OpenOptions::new()
                .read(true)
                .write(true)
                .create_new(true)
                .open(&path)?;
            // The new file's directory entry must be durable before a record in it is
            // acknowledged: a power loss could otherwise drop the whole file.
            if let Err(e) = File::open(dir).and_then(|d| d.sync_all()) {
                // Empty: remove it so the retry can create it again, and if that fails
                // too, let the retry take the next name.
                if std::fs::remove_file(&path).is_err() {
                    self.last_name = Some(name);
                }
                return Err(e);
            }
            self.last_name = Some(name);
            self.file = Some((f, 0));
        }
        let Some((f, len)) = self.file.as_mut() else {
            return Err(io::Error::other("no file to write"));
        };
        // Acknowledging means the records are durable here.
        let written = f.write_all_at(bytes, *len).and_then(|()| f.sync_data());
        if let Err(e) = written {
            // What reached the file is of unknown durability (a failed fsync may have
            // dropped pages it still shows): cut back to the last acknowledged byte so
            // the retry writes these records again, not past them.
            f.set_len(*len)?;
            f.sync_data()?;
            return Err(e);
        }
        *len += bytes.len() as u64;
        self.high_seq = last;
        Ok(())
    }
}

impl<T: Send + 'static> SinkDrain<T> for FileDrain<T> {
    async fn write_batch(&mut self, batch: Batch<T>) -> Result<(), DrainError> {
        let high = self.high_seq();
        let mut buf = Vec::new();
        let (mut first, mut last) = (None, 0);
        let mut skipped = 0;
        for (seq, record) in batch.iter() {
            if seq <= high {
                // Already in the directory: a replay after a crash.
                skipped += 1;
                continue;
            }
            (self.encode)(record, seq, &mut buf).map_err(DrainError::permanent)?;
            first.get_or_insert(seq);
            last = seq;
        }
        let Some(first) = first else {
            self.skipped += skipped;
            return Ok(());
        };
        let (dir, format, max) = (self.dir.clone(), self.format, self.max_file_bytes);
        let state = self.state.take();
        let (state, res) = tokio::task::spawn_blocking(move || {
            let mut state = match state {
                Some(s) => s,
                None => {
                    // A write task that panicked took the state (and the lock) with
                    // it: take the lock again and read the directory back.
                    let reopened = match RealStorage.try_lock(&dir.join(LOCK_FILE)) {
                        Ok(lock) => State::open(&dir, format, lock),
                        Err(LockError::Held) => {
                            Err(io::Error::other("FileDrain directory still locked"))
                        }
                        Err(LockError::Io(e)) => Err(e),
                    };
                    match reopened {
                        Ok(s) => s,
                        Err(e) => return (None, Err(e)),
                    }
                }
            };
            match state.write(&dir, format, max, &buf, first, last) {
                Ok(()) => (Some(state), Ok(())),
                // The retry writes at the same acknowledged offset, over whatever this
                // attempt left (`write` also cut it back when it could).
                Err(e) => (Some(state), Err(e)),
            }
        })
        .await
        .map_err(DrainError::retryable)?;
        self.state = state;
        res.map_err(DrainError::retryable)?;
        self.skipped += skipped;
        Ok(())
    }

    async fn close(&mut self) -> Result<(), DrainError> {
        // Every batch was fsynced before it was acknowledged: nothing is left to do.
        Ok(())
    }
}

#[cfg(test)]
mod tests;
