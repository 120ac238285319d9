//! Dead letters: records the sink could not deliver, kept with their context,
//! inspectable, and redrivable once the cause is fixed.
//!
//! A record becomes a dead letter when the drain rejects it with a permanent error
//! (after bisection isolated it) or when it no longer decodes with the sink's codec.
//! With [`DeadLetterPolicy::Keep`] (the default) the delivery task stores it in
//! `DIR/dead-letters/` ([`files`]: walsink's own segment format) *before* the WAL
//! cursor passes its record, so no crash loses it, and at most once per original seq,
//! so a replay after a crash stores nothing twice. When the store is full
//! (`max_dead_letter_bytes`), delivery does not stall: the record is refused, logged
//! with its seq, counted (`dead_letters_refused_total`) and skipped.
//!
//! [`DeadLetterStore`] reads the store (while a sink runs, too) and changes it:
//! [`purge`](DeadLetterStore::purge) removes entries, [`redrive`](DeadLetterStore::redrive)
//! appends them back to the WAL as new records, durable before they leave the store,
//! so a crash mid-redrive leaves each record in the store, in the WAL, or both.

mod entry;
mod files;
mod letter;
mod redrive;

use std::fmt;
use std::future::Future;
use std::io;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError, Weak};

use crate::error::SinkError;
use crate::wal::format::{CURSOR_FILE, LOCK_FILE, RegisterKind, SEQ_LEASE_FILE};
use crate::wal::register::{Register, RegisterOpen};
use crate::wal::storage::{LockError, LockGuard, RealStorage, Storage};

pub use entry::DeadLetterReason;
pub(crate) use entry::EntryMeta;
#[cfg(feature = "cli")]
pub(crate) use entry::rfc3339;
#[cfg(feature = "kafka")]
pub(crate) use entry::to_millis as millis_since_epoch;
#[cfg(feature = "cli")]
pub(crate) use files::StoredEntry;
pub(crate) use files::{Appended, DEAD_LETTER_DIR, StoreFiles};
pub use letter::DeadLetter;

/// What the sink does with a record the drain rejects permanently or that no longer
/// decodes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum DeadLetterPolicy {
    /// Keep it in `DIR/dead-letters/` with its context (the default).
    #[default]
    Keep,
    /// Log it with its seq, count it, and skip it.
    Discard,
}

/// Which dead letters a [`purge`](DeadLetterStore::purge) or
/// [`redrive`](DeadLetterStore::redrive) takes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Selection {
    /// Every dead letter.
    All,
    /// These original seqs (absent ones are ignored).
    Seqs(Vec<u64>),
}

/// Why a dead-letter store operation failed.
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum DeadLetterError {
    /// The directory is locked by a live sink and the operation would change it (use
    /// the store that sink's [`DurableSink::dead_letters`](crate::DurableSink::dead_letters)
    /// returns, or stop it first). Reading works while it is locked.
    #[error("WAL directory {dir} is locked by a live sink")]
    Locked {
        /// The WAL directory.
        dir: PathBuf,
    },
    /// `dir` is not a WAL directory (missing, or not a directory).
    #[error("{dir} is not a walsink directory: {why}")]
    NotAWalDirectory {
        /// The path given.
        dir: PathBuf,
        /// What is wrong with it.
        why: String,
    },
    /// The sink this store belongs to has shut down; open the store again offline.
    #[error("the sink has shut down")]
    Closed,
    /// Reading or writing the store (or the WAL) failed.
    #[error("dead-letter store I/O failed: {0}")]
    Io(#[source] Arc<io::Error>),
    /// Appending to the WAL during a redrive failed. The dead letters in `redriven`
    /// (original seq, new seq) were appended and left the store before the failure.
    #[error("redrive failed after {} dead letters were redriven: {source}", redriven.len())]
    Sink {
        /// What was redriven before the failure.
        redriven: Vec<(u64, u64)>,
        /// The WAL's error.
        #[source]
        source: SinkError,
    },
    /// A redrive appended the dead letters in `redriven` (original seq, new seq) to the
    /// WAL, durable there, but removing them from the store failed: they are in both.
    /// Purge those original seqs rather than redrive them again (which would deliver
    /// them twice more).
    #[error("redrive appended {} dead letters to the WAL but could not remove them from the store: {source}", redriven.len())]
    Purge {
        /// What was appended to the WAL; those still in the store are there twice.
        redriven: Vec<(u64, u64)>,
        /// The store's error.
        #[source]
        source: Arc<io::Error>,
    },
}

impl From<io::Error> for DeadLetterError {
    fn from(e: io::Error) -> Self {
        Self::Io(Arc::new(e))
    }
}

/// Appends encoded records to a running sink's WAL, durable before it answers (the
/// running sink's side of a redrive).
pub(crate) trait WalAppend: Send + Sync {
    /// Appends `payload` as a new record; its seq once durable.
    fn append_durable(
        &self,
        payload: Vec<u8>,
    ) -> Pin<Box<dyn Future<Output = Result<u64, SinkError>> + Send + '_>>;
}

/// A running sink's claim on the store: its lock, released when delivery ends.
#[derive(Debug)]
struct Online {
    /// The WAL directory lock, held while the sink runs; `None` once it ended.
    lock: Option<Arc<dyn LockGuard>>,
}

#[derive(Debug)]
struct State {
    /// A running sink's store: its files, open for appends, and its lock.
    files: Option<StoreFiles>,
    online: Option<Online>,
}

struct StoreInner {
    storage: Arc<dyn Storage>,
    wal_dir: PathBuf,
    max_bytes: u64,
    state: Mutex<State>,
    appender: Option<Weak<dyn WalAppend>>,
    /// A running sink's durable WAL cursor, published by its delivery task: only dead
    /// letters at or below it may leave the store (above it, a crash could replay the
    /// record and store it again).
    durable_cursor: AtomicU64,
    /// One redrive at a time through this store: two at once would read the same
    /// entries and append each twice.
    redrive: tokio::sync::Mutex<()>,
}

impl fmt::Debug for StoreInner {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DeadLetterStore")
            .field("dir", &self.wal_dir)
            .field("online", &self.appender.is_some())
            .finish_non_exhaustive()
    }
}

/// The dead letters of a WAL directory. Cheap to clone.
///
/// From [`DurableSink::dead_letters`](crate::DurableSink::dead_letters), it is the
/// running sink's store: every operation works, and a redrive goes through the sink.
/// From [`open`](Self::open), it is a view of the directory: reading works even while
/// a sink runs there; `purge` and `redrive` take the directory lock for their duration
/// and fail with [`DeadLetterError::Locked`] if a live sink holds it.
///
/// Operations do blocking file I/O on tokio's blocking pool.
#[derive(Debug, Clone)]
pub struct DeadLetterStore {
    inner: Arc<StoreInner>,
}

/// Default for `SinkConfig::max_dead_letter_bytes`: 256 MiB.
pub const DEFAULT_MAX_DEAD_LETTER_BYTES: u64 = 256 << 20;

impl DeadLetterStore {
    /// The store of a running sink, around `files` (opened writable under `lock`).
    pub(crate) fn online(
        storage: Arc<dyn Storage>,
        wal_dir: PathBuf,
        files: StoreFiles,
        lock: Arc<dyn LockGuard>,
        appender: Weak<dyn WalAppend>,
    ) -> Self {
        Self {
            inner: Arc::new(StoreInner {
                storage,
                wal_dir,
                max_bytes: u64::MAX,
                state: Mutex::new(State {
                    files: Some(files),
                    online: Some(Online { lock: Some(lock) }),
                }),
                appender: Some(appender),
                durable_cursor: AtomicU64::new(0),
                redrive: tokio::sync::Mutex::new(()),
            }),
        }
    }

    /// Opens the dead letters of the WAL directory `dir` without taking its lock.
    ///
    /// # Errors
    ///
    /// [`DeadLetterError::NotAWalDirectory`] if `dir` is not a directory.
    pub async fn open(dir: impl AsRef<Path>) -> Result<Self, DeadLetterError> {
        let storage: Arc<dyn Storage> = Arc::new(RealStorage);
        Self::open_on(storage, dir.as_ref().to_path_buf()).await
    }

    pub(crate) async fn open_on(
        storage: Arc<dyn Storage>,
        dir: PathBuf,
    ) -> Result<Self, DeadLetterError> {
        let meta = blocking(move || {
            let meta = std::fs::metadata(&dir);
            (dir, meta)
        })
        .await?;
        let (dir, meta) = meta;
        match meta {
            Ok(m) if m.is_dir() => {}
            Ok(_) => {
                return Err(DeadLetterError::NotAWalDirectory {
                    dir,
                    why: "not a directory".into(),
                });
            }
            Err(e) => {
                return Err(DeadLetterError::NotAWalDirectory {
                    dir,
                    why: e.to_string(),
                });
            }
        }
        Ok(Self {
            inner: Arc::new(StoreInner {
                storage,
                wal_dir: dir,
                max_bytes: u64::MAX,
                state: Mutex::new(State {
                    files: None,
                    online: None,
                }),
                appender: None,
                durable_cursor: AtomicU64::new(0),
                redrive: tokio::sync::Mutex::new(()),
            }),
        })
    }

    /// Runs `f` on the store's files: the running sink's, or a fresh read-only scan.
    async fn read<R: Send + 'static>(
        &self,
        f: impl FnOnce(&StoreFiles) -> io::Result<R> + Send + 'static,
    ) -> Result<R, DeadLetterError> {
        let inner = Arc::clone(&self.inner);
        blocking(move || {
            let mut st = inner.state.lock().unwrap_or_else(PoisonError::into_inner);
            // The running sink's index; once it has ended, the files may change under
            // an offline tool, so read them afresh.
            let live = st.online.as_ref().is_some_and(|o| o.lock.is_some());
            match &mut st.files {
                Some(files) if live => {
                    files.fresh()?;
                    f(files)
                }
                _ => {
                    drop(st);
                    let files = StoreFiles::open(
                        Arc::clone(&inner.storage),
                        &inner.wal_dir,
                        0,
                        inner.max_bytes,
                        false,
                    )?;
                    f(&files)
                }
            }
        })
        .await?
        .map_err(DeadLetterError::from)
    }

    /// Dead letters held.
    ///
    /// # Errors
    ///
    /// [`DeadLetterError::Io`] if the store cannot be read.
    pub async fn count(&self) -> Result<u64, DeadLetterError> {
        self.read(|files| Ok(files.count())).await
    }

    /// Up to `limit` dead letters with a seq at or above `from_seq`, in seq order.
    ///
    /// # Errors
    ///
    /// [`DeadLetterError::Io`] if the store cannot be read.
    pub async fn list(
        &self,
        from_seq: u64,
        limit: usize,
    ) -> Result<Vec<DeadLetter>, DeadLetterError> {
        self.read(move |files| {
            let mut out = Vec::new();
            for seq in files.seqs(from_seq, limit) {
                if let Some(e) = files.get(seq)? {
                    out.push(DeadLetter::new(e));
                }
            }
            Ok(out)
        })
        .await
    }

    /// The dead letter of original seq `seq`, if held.
    ///
    /// # Errors
    ///
    /// [`DeadLetterError::Io`] if the store cannot be read.
    pub async fn get(&self, seq: u64) -> Result<Option<DeadLetter>, DeadLetterError> {
        self.read(move |files| Ok(files.get(seq)?.map(DeadLetter::new)))
            .await
    }

    /// Removes the selected dead letters for good; returns how many were removed.
    ///
    /// Only dead letters whose record the sink's durable cursor has passed are removed
    /// (a running sink makes its cursor durable right after storing a dead letter, so
    /// this is every one but those stored in the last moments; offline, after a crash,
    /// those whose record the next run will deliver again): removing one above it
    /// could see it stored again after a crash. They stay; run the sink, then retry.
    ///
    /// # Errors
    ///
    /// [`DeadLetterError::Locked`] (offline, while a sink runs),
    /// [`DeadLetterError::Closed`] (the sink has shut down), or
    /// [`DeadLetterError::Io`].
    pub async fn purge(&self, which: Selection) -> Result<u64, DeadLetterError> {
        let inner = Arc::clone(&self.inner);
        blocking(move || {
            inner.with_writable(|files, through| {
                let seqs = match &which {
                    Selection::All => None,
                    Selection::Seqs(s) => Some(s.as_slice()),
                };
                Ok(files.purge(seqs, through)?)
            })
        })
        .await?
    }

    /// Appends the selected dead letters back to the WAL as new records (the drain
    /// sees them again) and removes them from the store once they are durable there.
    /// Returns `(original seq, new seq)` for each, in seq order.
    ///
    /// A crash part way leaves each record in the store, in the WAL, or both (then the
    /// drain may see it twice), never neither. Offline, the WAL directory is opened and
    /// recovered as a sink would (its lock held for the duration).
    ///
    /// # Errors
    ///
    /// As [`purge`](Self::purge), and [`DeadLetterError::Sink`] if the WAL append
    /// fails (what was appended before stays appended and leaves the store).
    pub async fn redrive(&self, which: Selection) -> Result<Vec<(u64, u64)>, DeadLetterError> {
        let _one_at_a_time = self.inner.redrive.lock().await;
        match &self.inner.appender {
            Some(appender) => redrive::online(&self.inner, appender, which).await,
            None => redrive::offline(&self.inner, which).await,
        }
    }

    /// Publishes the running sink's durable cursor (the delivery task, after it made
    /// the cursor durable).
    pub(crate) fn set_durable_cursor(&self, seq: u64) {
        self.inner.durable_cursor.fetch_max(seq, Ordering::AcqRel);
    }

    /// Releases a running sink's lock (the delivery task calls this as it ends); from
    /// then on changes fail with `Closed`.
    pub(crate) fn release(&self) {
        let mut st = self
            .inner
            .state
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if let Some(online) = st.online.as_mut() {
            online.lock = None;
        }
    }

    /// Stores a dead letter (the delivery task, while the sink runs).
    pub(crate) fn append(&self, meta: &EntryMeta, payload: &[u8]) -> io::Result<Appended> {
        self.inner.with_files(|files| files.append(meta, payload))
    }

    /// Bytes of the store's files (a running sink's store).
    pub(crate) fn bytes(&self) -> u64 {
        self.inner.with_files(|f| Ok(f.bytes())).unwrap_or(0)
    }
}

impl StoreInner {
    /// Runs `f` on a running sink's files (never offline).
    fn with_files<R>(&self, f: impl FnOnce(&mut StoreFiles) -> io::Result<R>) -> io::Result<R> {
        let mut st = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        match st.files.as_mut() {
            Some(files) => {
                files.fresh()?;
                f(files)
            }
            None => Err(io::Error::other("no running sink owns this store")),
        }
    }

    /// Runs `f` on writable files and the durable cursor: the running sink's (while
    /// it holds the lock), or, offline, the directory's, with its lock taken for the
    /// call.
    fn with_writable<R>(
        &self,
        f: impl FnOnce(&mut StoreFiles, u64) -> Result<R, DeadLetterError>,
    ) -> Result<R, DeadLetterError> {
        let mut st = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(online) = &st.online {
            if online.lock.is_none() {
                return Err(DeadLetterError::Closed);
            }
            let through = self.durable_cursor.load(Ordering::Acquire);
            return match st.files.as_mut() {
                Some(files) => {
                    files.fresh()?;
                    f(files, through)
                }
                None => Err(DeadLetterError::Closed),
            };
        }
        drop(st);
        let _lock = self.lock_offline()?;
        let through = durable_cursor_offline(self.storage.as_ref(), &self.wal_dir)?;
        let mut files = StoreFiles::open(
            Arc::clone(&self.storage),
            &self.wal_dir,
            0,
            self.max_bytes,
            true,
        )?;
        f(&mut files, through)
    }

    /// Takes the WAL directory's lock for an offline change.
    fn lock_offline(&self) -> Result<Box<dyn LockGuard>, DeadLetterError> {
        match self.storage.try_lock(&self.wal_dir.join(LOCK_FILE)) {
            Ok(g) => Ok(g),
            Err(LockError::Held) => Err(DeadLetterError::Locked {
                dir: self.wal_dir.clone(),
            }),
            Err(LockError::Io(e)) => Err(e.into()),
        }
    }
}

/// The WAL cursor of a directory whose lock the caller holds, made durable (as the next
/// open would), or 0 where the next open would not trust it: a cursor at or above the
/// seq lease, or no readable lease (recovery then bounds or resets the cursor, and
/// records below it may be delivered, and dead-lettered, again).
fn durable_cursor_offline(storage: &dyn Storage, wal_dir: &Path) -> io::Result<u64> {
    let open = |name, kind| -> io::Result<Option<u64>> {
        Ok(match Register::open(storage, &wal_dir.join(name), kind)? {
            RegisterOpen::Loaded(r) => Some(r.durable_value()),
            _ => None,
        })
    };
    let cursor = open(CURSOR_FILE, RegisterKind::Cursor)?.unwrap_or(0);
    let lease = open(SEQ_LEASE_FILE, RegisterKind::SeqLease)?;
    Ok(match lease {
        Some(l) if cursor < l => cursor,
        _ => 0,
    })
}

/// Runs blocking file work on tokio's blocking pool.
async fn blocking<R: Send + 'static>(
    f: impl FnOnce() -> R + Send + 'static,
) -> Result<R, DeadLetterError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| DeadLetterError::Io(Arc::new(io::Error::other(e.to_string()))))
}
