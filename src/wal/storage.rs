//! The only door to the disk.
//!
//! Every byte the WAL reads or writes, every fsync, rename, delete and lock goes through
//! [`Storage`] and [`StorageFile`]. [`RealStorage`] is the production implementation on
//! `std::fs`; a simulated disk (power loss, torn writes, failing fsync, ENOSPC) plugs in
//! at the same place. Both traits are object safe and synchronous: they are only called
//! from the WAL writer thread and from `spawn_blocking` closures, never from a tokio
//! worker directly.
//!
//! Semantics the WAL relies on (and a simulated disk must model):
//! - `write_all_at` puts bytes in the page cache: they survive a process crash, not a
//!   power loss.
//! - `sync` (fdatasync) makes a file's written bytes and its size durable; it does not
//!   make the file's directory entry durable.
//! - `sync_dir` makes creates, renames and deletes in that directory durable.
//! - A lock is held until its guard is dropped or the process dies.

use std::fmt::Debug;
use std::fs::{self, File, OpenOptions};
use std::io;
use std::os::unix::fs::{DirBuilderExt, FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

/// One directory entry, as listed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct DirEntryInfo {
    /// File name (lossily converted; a name that is not UTF-8 is never one of ours).
    pub(crate) name: String,
    /// Whether it is a regular file.
    pub(crate) is_file: bool,
}

/// A held lock; dropping it releases the lock.
pub(crate) trait LockGuard: Send + Sync + Debug {}

/// Why a lock was not taken.
#[derive(Debug)]
pub(crate) enum LockError {
    /// Another holder (this process or another) has it.
    Held,
    /// The lock file could not be opened or locked.
    Io(io::Error),
}

/// Directory-level operations.
pub(crate) trait Storage: Send + Sync + Debug + 'static {
    /// Creates the directory `path` (one level, mode `0700`). `AlreadyExists` if
    /// anything has that name; `NotFound` if the parent is missing.
    fn create_dir(&self, path: &Path) -> io::Result<()>;
    /// Lists the entries of a directory (not recursive).
    fn list(&self, dir: &Path) -> io::Result<Vec<DirEntryInfo>>;
    /// Creates a new file (mode `0600`), failing if it exists; opened for read and write.
    fn create_new(&self, path: &Path) -> io::Result<Box<dyn StorageFile>>;
    /// Opens an existing file for reading, and for writing if `write`.
    fn open(&self, path: &Path, write: bool) -> io::Result<Box<dyn StorageFile>>;
    /// Renames a file within the directory.
    fn rename(&self, from: &Path, to: &Path) -> io::Result<()>;
    /// Removes a file.
    fn remove_file(&self, path: &Path) -> io::Result<()>;
    /// Makes the directory's entries (creates, renames, deletes) durable.
    fn sync_dir(&self, dir: &Path) -> io::Result<()>;
    /// Takes an exclusive lock on `path` (created `0600` if missing), without waiting.
    fn try_lock(&self, path: &Path) -> Result<Box<dyn LockGuard>, LockError>;
}

/// One open file.
pub(crate) trait StorageFile: Send + Sync + Debug {
    /// Reads up to `buf.len()` bytes at `offset`; returns how many (0 at end of file).
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<usize>;
    /// Writes all of `buf` at `offset`.
    fn write_all_at(&self, buf: &[u8], offset: u64) -> io::Result<()>;
    /// fdatasync: written bytes and the file size become durable.
    fn sync(&self) -> io::Result<()>;
    /// Truncates or extends the file to `len` bytes.
    fn set_len(&self, len: u64) -> io::Result<()>;
    /// Reserves blocks for the first `len` bytes (extending the file with zeros), so
    /// that later writes there need no allocation and an fdatasync no size update.
    /// A filesystem without support may do nothing.
    fn allocate(&self, len: u64) -> io::Result<()>;
    /// Current size in bytes.
    fn len(&self) -> io::Result<u64>;
}

/// Reads as many bytes as the file has at `offset`, up to `buf.len()`: short only at
/// end of file. Interrupted reads are retried; the loop is bounded by `buf.len()`.
pub(crate) fn read_full_at(
    file: &dyn StorageFile,
    buf: &mut [u8],
    offset: u64,
) -> io::Result<usize> {
    let mut done = 0;
    while done < buf.len() {
        let at = offset.checked_add(done as u64).ok_or_else(|| {
            io::Error::new(io::ErrorKind::InvalidInput, "read offset overflows u64")
        })?;
        let rest = buf.get_mut(done..).unwrap_or_default();
        match file.read_at(rest, at) {
            Ok(0) => break,
            Ok(n) => done += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(done)
}

/// Creates `dir` and each missing directory above it (mode `0700`); returns the
/// directories it created, outermost first. Nothing is made durable here: the caller
/// syncs the parent of each one it returns. The walk up is bounded by the path's depth.
pub(crate) fn create_dir_chain(s: &dyn Storage, dir: &Path) -> io::Result<Vec<PathBuf>> {
    let mut created = Vec::new();
    let mut missing = Vec::new();
    let mut at = dir.to_path_buf();
    loop {
        match s.create_dir(&at) {
            Ok(()) => {
                created.push(at);
                break;
            }
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => break,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                let parent = parent_dir(&at);
                if parent == at {
                    return Err(e);
                }
                missing.push(at);
                at = parent;
            }
            Err(e) => return Err(e),
        }
    }
    while let Some(next) = missing.pop() {
        match s.create_dir(&next) {
            Ok(()) => created.push(next),
            // Made by someone else meanwhile: not ours to sync.
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
            Err(e) => return Err(e),
        }
    }
    Ok(created)
}

/// The directory holding `path` (`.` for a bare relative name).
pub(crate) fn parent_dir(path: &Path) -> PathBuf {
    match path.parent() {
        Some(p) if p.as_os_str().is_empty() => PathBuf::from("."),
        Some(p) => p.to_path_buf(),
        None => path.to_path_buf(),
    }
}

/// The real filesystem.
#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct RealStorage;

#[derive(Debug)]
struct RealFile(File);

#[derive(Debug)]
struct RealLock(#[allow(dead_code)] File);

impl LockGuard for RealLock {}

impl Storage for RealStorage {
    fn create_dir(&self, path: &Path) -> io::Result<()> {
        fs::DirBuilder::new().mode(0o700).create(path)
    }

    fn list(&self, dir: &Path) -> io::Result<Vec<DirEntryInfo>> {
        let mut out = Vec::new();
        for entry in fs::read_dir(dir)? {
            let entry = entry?;
            out.push(DirEntryInfo {
                name: entry.file_name().to_string_lossy().into_owned(),
                is_file: entry.file_type()?.is_file(),
            });
        }
        Ok(out)
    }

    fn create_new(&self, path: &Path) -> io::Result<Box<dyn StorageFile>> {
        let f = OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(path)?;
        Ok(Box::new(RealFile(f)))
    }

    fn open(&self, path: &Path, write: bool) -> io::Result<Box<dyn StorageFile>> {
        let f = OpenOptions::new().read(true).write(write).open(path)?;
        Ok(Box::new(RealFile(f)))
    }

    fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        fs::rename(from, to)
    }

    fn remove_file(&self, path: &Path) -> io::Result<()> {
        fs::remove_file(path)
    }

    fn sync_dir(&self, dir: &Path) -> io::Result<()> {
        File::open(dir)?.sync_all()
    }

    fn try_lock(&self, path: &Path) -> Result<Box<dyn LockGuard>, LockError> {
        let f = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .open(path)
            .map_err(LockError::Io)?;
        // flock(2) on an open file description: a second open of the same file, in this
        // process or another, conflicts; the kernel drops it when the process dies.
        match f.try_lock() {
            Ok(()) => Ok(Box::new(RealLock(f))),
            Err(fs::TryLockError::WouldBlock) => Err(LockError::Held),
            Err(fs::TryLockError::Error(e)) => Err(LockError::Io(e)),
        }
    }
}

impl StorageFile for RealFile {
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<usize> {
        self.0.read_at(buf, offset)
    }
    fn write_all_at(&self, buf: &[u8], offset: u64) -> io::Result<()> {
        self.0.write_all_at(buf, offset)
    }
    fn sync(&self) -> io::Result<()> {
        self.0.sync_data()
    }
    fn set_len(&self, len: u64) -> io::Result<()> {
        self.0.set_len(len)
    }
    fn len(&self) -> io::Result<u64> {
        Ok(self.0.metadata()?.len())
    }
    fn allocate(&self, len: u64) -> io::Result<()> {
        match rustix::fs::fallocate(&self.0, rustix::fs::FallocateFlags::empty(), 0, len) {
            Ok(()) => Ok(()),
            // Not supported here: preallocation is an optimization, not a requirement.
            Err(rustix::io::Errno::OPNOTSUPP) => Ok(()),
            Err(e) => Err(e.into()),
        }
    }
}

#[cfg(test)]
mod tests;
