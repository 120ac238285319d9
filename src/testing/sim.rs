//! A simulated disk for fault testing: power loss, torn writes, bit flips, failing
//! fsync and ENOSPC, deterministic from a seed.
//!
//! # Model
//!
//! Each file (an inode) has *live* bytes (what reads see: the page cache) and *durable*
//! bytes (what survives a power loss), plus the list of dirty writes since its last
//! fsync. A successful fsync applies the dirty writes to the durable bytes.
//! The directory has *live* and *durable* entries (name → inode). What makes what
//! durable:
//! - `StorageFile::sync` (fdatasync): the file's live bytes and size become durable;
//! - `Storage::sync_dir`: the directory's live entries (creates, renames, deletes, of
//!   files and of subdirectories) become durable. A directory is an entry of its parent
//!   like a file: one created and never covered by a `sync_dir` of its parent is gone
//!   after a power loss, with everything in it, durable or not.
//!
//! [`SimDisk::crash`] ends the current "process": every handle of the old epoch fails
//! with EIO from then on, and locks are released. What the next epoch sees:
//! - [`Crash::Process`]: everything live (the kernel survives a process crash);
//! - [`Crash::PowerLoss`]: durable entries with durable contents; then, per file, a
//!   random prefix of the unsynced writes is applied in order, and the last one applied
//!   may be torn at a random byte (`tear`) or have one bit flipped (`flip`).
//!
//! # Faults
//!
//! - `fail_sync_after(n)`: the n-th and every later fsync (file or directory) fails
//!   with EIO. Like Linux after a writeback error, the writes that sync covered are
//!   then never made durable by a later sync ("fsyncgate").
//! - `space_bytes(n)`: writes beyond `n` live bytes in all files fail with ENOSPC after
//!   writing a random prefix (as a real partial write does).
//! - `flaky_reads(p)`: each `read_at`, and each open for reading, fails with a
//!   transient error (EIO, EMFILE) with probability `p`/1000, drawn from the seed.
//! - `damage(path, offset, bytes)`: overwrites bytes in both the live and the durable
//!   image (bit rot, or a forged file), without going through a write.
//! - `hold_syncs(true)`: every file fsync blocks until `hold_syncs(false)` (a gate to
//!   stop a thread at a known point; `syncs_held` says how many wait there).
//! - `fail_writes(true)`: every write and `fallocate` fails with ENOSPC and writes
//!   nothing, overwrites included (a disk that is full for every purpose).
//! - `panic_on_write(thread)`: the next file write by the thread of that name panics (a
//!   bug in that thread).

use std::collections::{BTreeMap, HashMap, HashSet};
use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};

use crate::actor::SplitMix64;
use crate::wal::storage::{DirEntryInfo, LockError, LockGuard, Storage, StorageFile};

/// How a crash happens.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Crash {
    /// The process dies; the kernel keeps every write.
    Process,
    /// The machine loses power: only durable data survives, plus a random prefix of
    /// unsynced writes, the last one possibly torn or bit-flipped.
    PowerLoss {
        /// The last applied unsynced write may stop at a random byte.
        tear: bool,
        /// The last applied unsynced write may have one bit flipped.
        flip: bool,
    },
}

#[derive(Debug, Clone)]
enum Write {
    At { offset: u64, data: Vec<u8> },
    SetLen(u64),
}

#[derive(Debug, Default, Clone)]
struct Inode {
    live: Vec<u8>,
    durable: Vec<u8>,
    unsynced: Vec<Write>,
}

fn apply(buf: &mut Vec<u8>, w: &Write) {
    match w {
        Write::At { offset, data } => {
            let start = usize::try_from(*offset).unwrap_or(usize::MAX);
            let end = start.saturating_add(data.len());
            if buf.len() < end {
                buf.resize(end, 0);
            }
            if let Some(dst) = buf.get_mut(start..end) {
                dst.copy_from_slice(data);
            }
        }
        Write::SetLen(n) => buf.resize(usize::try_from(*n).unwrap_or(usize::MAX), 0),
    }
}

/// A directory entry: a file (its inode) or a subdirectory.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Node {
    File(u64),
    Dir,
}

impl Node {
    fn inode(self) -> Option<u64> {
        match self {
            Node::File(i) => Some(i),
            Node::Dir => None,
        }
    }
}

#[derive(Debug)]
struct State {
    epoch: u64,
    inodes: HashMap<u64, Inode>,
    next_inode: u64,
    live_entries: BTreeMap<PathBuf, Node>,
    durable_entries: BTreeMap<PathBuf, Node>,
    locks: HashSet<PathBuf>,
    rng: SplitMix64,
    syncs: u64,
    fail_sync_after: Option<u64>,
    space_bytes: Option<u64>,
    /// Per mille of reads and read-only opens that fail transiently.
    flaky_reads: u32,
    /// Every write fails with ENOSPC.
    fail_writes: bool,
    /// Calls that could change the disk (writes, syncs, creates, renames, deletes).
    changes: u64,
    panic_on_write: Option<&'static str>,
    /// The next fsync by the thread of this name fails (once).
    fail_sync_in: Option<&'static str>,
    /// The next fsync of this directory fails (once).
    fail_dir_sync: Option<PathBuf>,
    /// Fsyncs that failed so far.
    failed_syncs: u64,
}

/// Whether `path` is the root (always present, always durable).
fn is_root(path: &Path) -> bool {
    path.parent().is_none()
}

impl State {
    fn check(&self, epoch: u64) -> io::Result<()> {
        if epoch != self.epoch {
            return Err(io::Error::other("simulated crash: this process is gone"));
        }
        Ok(())
    }

    fn live_bytes(&self) -> u64 {
        self.live_entries
            .values()
            .filter_map(|n| n.inode())
            .filter_map(|i| self.inodes.get(&i))
            .map(|n| n.live.len() as u64)
            .sum()
    }

    /// ENOENT unless `path`'s parent is a live directory.
    fn check_parent(&self, path: &Path) -> io::Result<()> {
        match path.parent() {
            Some(p) if is_root(p) || self.live_entries.get(p) == Some(&Node::Dir) => Ok(()),
            _ => Err(not_found(path)),
        }
    }

    /// The file at `path`, or the error a real open gives.
    fn file_at(&self, path: &Path) -> io::Result<u64> {
        match self.live_entries.get(path) {
            Some(Node::File(i)) => Ok(*i),
            Some(Node::Dir) => Err(io::Error::from(io::ErrorKind::IsADirectory)),
            None => Err(not_found(path)),
        }
    }

    /// Whether this read fails transiently (drawn from the seed).
    fn read_fails(&mut self) -> bool {
        self.flaky_reads > 0 && self.rng.next() % 1000 < u64::from(self.flaky_reads)
    }

    fn sync_fails(&mut self) -> bool {
        self.syncs += 1;
        self.fail_sync_after.is_some_and(|n| self.syncs >= n)
    }
}

/// The fsync gate's state.
#[derive(Debug, Default)]
struct Gate {
    held: bool,
    /// Fsyncs waiting at the gate now.
    waiting: u32,
}

/// The simulated disk. Clone the `Arc` to share it; [`SimDisk::storage`] gives the
/// `Storage` of the current epoch.
#[derive(Debug)]
pub(crate) struct SimDisk {
    state: Mutex<State>,
    /// `hold_syncs`: while held, fsyncs wait on the condvar.
    sync_gate: (Mutex<Gate>, Condvar),
}

impl SimDisk {
    pub(crate) fn new(seed: u64) -> Arc<Self> {
        Arc::new(Self {
            state: Mutex::new(State {
                epoch: 0,
                inodes: HashMap::new(),
                next_inode: 1,
                live_entries: BTreeMap::new(),
                durable_entries: BTreeMap::new(),
                locks: HashSet::new(),
                rng: SplitMix64(seed),
                syncs: 0,
                fail_sync_after: None,
                space_bytes: None,
                flaky_reads: 0,
                fail_writes: false,
                changes: 0,
                panic_on_write: None,
                fail_sync_in: None,
                fail_dir_sync: None,
                failed_syncs: 0,
            }),
            sync_gate: (Mutex::new(Gate::default()), Condvar::new()),
        })
    }

    /// Makes reads and read-only opens fail transiently with probability
    /// `per_mille`/1000 (0 heals).
    pub(crate) fn flaky_reads(&self, per_mille: u32) {
        self.lock().flaky_reads = per_mille;
    }

    /// Overwrites `bytes` at `offset` of the file at `path` in both its live and its
    /// durable image: damage that no write and no crash undoes.
    pub(crate) fn damage(&self, path: &Path, offset: u64, bytes: &[u8]) -> io::Result<()> {
        let mut s = self.lock();
        let id = s.file_at(path)?;
        let inode = s
            .inodes
            .get_mut(&id)
            .ok_or_else(|| io::Error::other("inode gone"))?;
        for image in [&mut inode.live, &mut inode.durable] {
            let start = usize::try_from(offset).unwrap_or(usize::MAX);
            if let Some(dst) = image.get_mut(start..start.saturating_add(bytes.len())) {
                dst.copy_from_slice(bytes);
            }
        }
        Ok(())
    }

    /// The live bytes of the file at `path`.
    pub(crate) fn read_live(&self, path: &Path) -> io::Result<Vec<u8>> {
        let s = self.lock();
        let id = s.file_at(path)?;
        Ok(s.inodes
            .get(&id)
            .map(|n| n.live.clone())
            .unwrap_or_default())
    }

    /// Names of the live entries of `dir`.
    pub(crate) fn names_in(&self, dir: &Path) -> Vec<String> {
        let s = self.lock();
        s.live_entries
            .keys()
            .filter(|p| p.parent() == Some(dir))
            .filter_map(|p| p.file_name())
            .map(|n| n.to_string_lossy().into_owned())
            .collect()
    }

    /// While `true`, every file fsync blocks until it is set back to `false`.
    pub(crate) fn hold_syncs(&self, hold: bool) {
        let (m, cv) = &self.sync_gate;
        m.lock().unwrap_or_else(PoisonError::into_inner).held = hold;
        cv.notify_all();
    }

    /// How many fsyncs wait at the gate now.
    pub(crate) fn syncs_held(&self) -> u32 {
        self.sync_gate
            .0
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .waiting
    }

    fn wait_sync_gate(&self) {
        // The gate parks the sink's own threads; the prefill thread's fsyncs of zeros
        // pass (a test holding the writer must not find the prefill thread held instead).
        if std::thread::current().name() == Some("walsink-prefill") {
            return;
        }
        let (m, cv) = &self.sync_gate;
        let mut gate = m.lock().unwrap_or_else(PoisonError::into_inner);
        while gate.held {
            gate.waiting += 1;
            gate = cv.wait(gate).unwrap_or_else(PoisonError::into_inner);
            gate.waiting -= 1;
        }
    }

    /// How many calls that could change the disk were made (a read-only user must
    /// leave this unchanged).
    pub(crate) fn changes(&self) -> u64 {
        self.lock().changes
    }

    /// While `true`, every write and `fallocate` fails with ENOSPC, writing nothing.
    pub(crate) fn fail_writes(&self, fail: bool) {
        self.lock().fail_writes = fail;
    }

    /// Makes the next fsync by the thread named `thread` fail (once).
    pub(crate) fn fail_next_sync_in(&self, thread: &'static str) {
        self.lock().fail_sync_in = Some(thread);
    }

    /// Makes the next fsync of directory `dir` fail (once).
    pub(crate) fn fail_next_dir_sync(&self, dir: &Path) {
        self.lock().fail_dir_sync = Some(dir.to_path_buf());
    }

    /// Fsyncs that failed so far.
    pub(crate) fn failed_syncs(&self) -> u64 {
        self.lock().failed_syncs
    }

    /// Makes the next file write by the thread named `thread` panic (then clears
    /// itself).
    pub(crate) fn panic_on_write(&self, thread: &'static str) {
        self.lock().panic_on_write = Some(thread);
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The storage a process of the current epoch uses.
    pub(crate) fn storage(self: &Arc<Self>) -> Arc<dyn Storage> {
        let epoch = self.lock().epoch;
        Arc::new(SimStorage {
            disk: Arc::clone(self),
            epoch,
        })
    }

    /// Makes the n-th and every later fsync fail (counting from now); `None` heals.
    pub(crate) fn fail_sync_after(&self, n: Option<u64>) {
        let mut s = self.lock();
        s.syncs = 0;
        s.fail_sync_after = n;
    }

    /// Limits the live bytes of all files; `None` is unlimited.
    pub(crate) fn space_bytes(&self, n: Option<u64>) {
        self.lock().space_bytes = n;
    }

    /// Live bytes of the files whose names end in `suffix`.
    pub(crate) fn bytes_of(&self, suffix: &str) -> u64 {
        let s = self.lock();
        s.live_entries
            .iter()
            .filter(|(p, _)| p.to_string_lossy().ends_with(suffix))
            .filter_map(|(_, n)| n.inode())
            .filter_map(|i| s.inodes.get(&i))
            .map(|n| n.live.len() as u64)
            .sum()
    }

    /// Ends the current process (see the module doc); returns nothing, the next
    /// [`storage`](Self::storage) sees the surviving image.
    pub(crate) fn crash(&self, how: Crash) {
        let mut s = self.lock();
        s.epoch += 1;
        s.locks.clear();
        match how {
            // The kernel keeps the page cache: every write stays, still unsynced.
            Crash::Process => {}
            Crash::PowerLoss { tear, flip } => {
                // An entry survives only if every directory above it does.
                let durable = s.durable_entries.clone();
                let reachable = |p: &Path| {
                    p.ancestors()
                        .skip(1)
                        .all(|a| is_root(a) || durable.get(a) == Some(&Node::Dir))
                };
                s.durable_entries = durable
                    .iter()
                    .filter(|(p, _)| reachable(p))
                    .map(|(p, n)| (p.clone(), *n))
                    .collect();
                s.live_entries = s.durable_entries.clone();
                let ids: Vec<u64> = s.inodes.keys().copied().collect();
                for id in ids {
                    let draws = (s.rng.next(), s.rng.next(), s.rng.next(), s.rng.next());
                    let Some(inode) = s.inodes.get_mut(&id) else {
                        continue;
                    };
                    let mut image = inode.durable.clone();
                    let n = inode.unsynced.len();
                    let applied = if n == 0 {
                        0
                    } else {
                        (draws.0 % (n as u64 + 1)) as usize
                    };
                    for (k, w) in inode.unsynced.iter().take(applied).enumerate() {
                        let last = k + 1 == applied;
                        match w {
                            Write::At { offset, data }
                                if last && (tear || flip) && !data.is_empty() =>
                            {
                                let mut data = data.clone();
                                if tear {
                                    data.truncate((draws.1 % data.len() as u64) as usize);
                                }
                                if flip && !data.is_empty() {
                                    let bit = draws.2 % (data.len() as u64 * 8);
                                    if let Some(b) = data.get_mut((bit / 8) as usize) {
                                        *b ^= 1 << (bit % 8);
                                    }
                                }
                                apply(
                                    &mut image,
                                    &Write::At {
                                        offset: *offset,
                                        data,
                                    },
                                );
                            }
                            other => apply(&mut image, other),
                        }
                    }
                    inode.live = image.clone();
                    inode.durable = image;
                    inode.unsynced.clear();
                }
            }
        }
    }
}

mod handles;

use handles::{SimStorage, not_found};

#[cfg(test)]
mod tests;
