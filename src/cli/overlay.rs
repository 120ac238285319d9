//! A copy-on-write [`Storage`] over a real directory, for `walsink repair --dry-run`.
//!
//! The dry run runs the very recovery `repair` (and the sink's open) runs, on this
//! overlay: reads see the real files; writes, truncations, creates, renames and
//! deletes land in memory and never reach the disk. Comparing the directory before
//! and after, through the overlay, gives the exact changes a repair would make, by
//! construction the same ones.
//!
//! Memory: a write keeps only the bytes written (registers, a segment header); a
//! truncation keeps only the new length; the real file's bytes are read through.

use std::collections::{BTreeMap, BTreeSet};
use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};

use crate::wal::storage::{
    DirEntryInfo, LockError, LockGuard, RealStorage, Storage, StorageFile, read_full_at,
};

/// One file as the overlay sees it: a real file's bytes (if any) up to `len`, with
/// the writes made since on top (later ones win).
#[derive(Debug)]
struct Shadow {
    real: Option<Box<dyn StorageFile>>,
    /// Bytes of the real file that still show (below a truncation).
    real_len: u64,
    len: u64,
    writes: Vec<(u64, Vec<u8>)>,
}

impl Shadow {
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<usize> {
        if offset >= self.len {
            return Ok(0);
        }
        let n = usize::try_from(self.len - offset).map_or(buf.len(), |rest| rest.min(buf.len()));
        let out = buf.get_mut(..n).unwrap_or_default();
        out.fill(0);
        if let Some(real) = &self.real
            && offset < self.real_len
        {
            let upto = usize::try_from(self.real_len - offset).map_or(n, |r| r.min(n));
            read_full_at(
                real.as_ref(),
                out.get_mut(..upto).unwrap_or_default(),
                offset,
            )?;
        }
        for (at, bytes) in &self.writes {
            let (start, end) = (*at, at.saturating_add(bytes.len() as u64));
            let (lo, hi) = (start.max(offset), end.min(offset + n as u64));
            if lo < hi {
                let src = bytes
                    .get((lo - start) as usize..(hi - start) as usize)
                    .unwrap_or_default();
                if let Some(dst) = out.get_mut((lo - offset) as usize..(hi - offset) as usize) {
                    dst.copy_from_slice(src);
                }
            }
        }
        Ok(n)
    }

    fn set_len(&mut self, len: u64) {
        self.real_len = self.real_len.min(len);
        self.len = len;
        for (at, bytes) in &mut self.writes {
            bytes.truncate(usize::try_from(len.saturating_sub(*at)).unwrap_or(usize::MAX));
        }
        self.writes.retain(|(_, b)| !b.is_empty());
    }
}

#[derive(Debug, Default)]
struct State {
    /// Files opened, created or renamed through the overlay, by path.
    shadows: BTreeMap<PathBuf, Arc<Mutex<Shadow>>>,
    /// Real paths deleted or renamed away.
    gone: BTreeSet<PathBuf>,
    /// Directories created.
    dirs: BTreeSet<PathBuf>,
}

/// The overlay: see the module docs.
#[derive(Debug)]
pub(super) struct Overlay {
    real: RealStorage,
    state: Mutex<State>,
}

impl Overlay {
    pub(super) fn new() -> Self {
        Self {
            real: RealStorage,
            state: Mutex::new(State::default()),
        }
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The shadow of `path`: one already made, or one over the real file.
    fn shadow(&self, st: &mut State, path: &Path) -> io::Result<Arc<Mutex<Shadow>>> {
        if let Some(s) = st.shadows.get(path) {
            return Ok(Arc::clone(s));
        }
        if st.gone.contains(path) {
            return Err(io::Error::from(io::ErrorKind::NotFound));
        }
        let real = self.real.open(path, false)?;
        let len = real.len()?;
        let s = Arc::new(Mutex::new(Shadow {
            real: Some(real),
            real_len: len,
            len,
            writes: Vec::new(),
        }));
        st.shadows.insert(path.to_path_buf(), Arc::clone(&s));
        Ok(s)
    }

    fn exists(&self, st: &State, path: &Path) -> bool {
        st.shadows.contains_key(path) || (!st.gone.contains(path) && path.exists())
    }
}

/// A handle on a shadow.
#[derive(Debug)]
struct OverlayFile(Arc<Mutex<Shadow>>);

impl OverlayFile {
    fn lock(&self) -> std::sync::MutexGuard<'_, Shadow> {
        self.0.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl StorageFile for OverlayFile {
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<usize> {
        self.lock().read_at(buf, offset)
    }

    fn write_all_at(&self, buf: &[u8], offset: u64) -> io::Result<()> {
        let mut s = self.lock();
        s.len = s.len.max(offset.saturating_add(buf.len() as u64));
        s.writes.push((offset, buf.to_vec()));
        Ok(())
    }

    fn sync(&self) -> io::Result<()> {
        Ok(())
    }

    fn set_len(&self, len: u64) -> io::Result<()> {
        self.lock().set_len(len);
        Ok(())
    }

    fn allocate(&self, len: u64) -> io::Result<()> {
        let mut s = self.lock();
        s.len = s.len.max(len);
        Ok(())
    }

    fn len(&self) -> io::Result<u64> {
        Ok(self.lock().len)
    }
}

/// The dry run takes no lock: `repair` has checked that no live sink holds one.
#[derive(Debug)]
struct NoLock;

impl LockGuard for NoLock {}

impl Storage for Overlay {
    fn create_dir(&self, path: &Path) -> io::Result<()> {
        // As on a real disk: `AlreadyExists` if anything has that name, `NotFound`
        // if the parent is missing (so recovery's directory walk behaves the same).
        let mut st = self.state();
        if st.dirs.contains(path) || self.exists(&st, path) || path.is_dir() {
            return Err(io::Error::from(io::ErrorKind::AlreadyExists));
        }
        let parent_there = path
            .parent()
            .is_none_or(|p| p.as_os_str().is_empty() || st.dirs.contains(p) || p.is_dir());
        if !parent_there {
            return Err(io::Error::from(io::ErrorKind::NotFound));
        }
        st.dirs.insert(path.to_path_buf());
        Ok(())
    }

    fn list(&self, dir: &Path) -> io::Result<Vec<DirEntryInfo>> {
        let st = self.state();
        let mut out: BTreeMap<String, bool> = BTreeMap::new();
        if !st.dirs.contains(dir) {
            for e in self.real.list(dir)? {
                if !st.gone.contains(&dir.join(&e.name)) {
                    out.insert(e.name, e.is_file);
                }
            }
        }
        for p in st.shadows.keys().chain(st.dirs.iter()) {
            if p.parent() == Some(dir)
                && let Some(name) = p.file_name()
            {
                out.insert(
                    name.to_string_lossy().into_owned(),
                    st.shadows.contains_key(p),
                );
            }
        }
        Ok(out
            .into_iter()
            .map(|(name, is_file)| DirEntryInfo { name, is_file })
            .collect())
    }

    fn create_new(&self, path: &Path) -> io::Result<Box<dyn StorageFile>> {
        let mut st = self.state();
        if self.exists(&st, path) {
            return Err(io::Error::from(io::ErrorKind::AlreadyExists));
        }
        let s = Arc::new(Mutex::new(Shadow {
            real: None,
            real_len: 0,
            len: 0,
            writes: Vec::new(),
        }));
        st.shadows.insert(path.to_path_buf(), Arc::clone(&s));
        Ok(Box::new(OverlayFile(s)))
    }

    fn open(&self, path: &Path, _write: bool) -> io::Result<Box<dyn StorageFile>> {
        let mut st = self.state();
        let s = self.shadow(&mut st, path)?;
        Ok(Box::new(OverlayFile(s)))
    }

    fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        let mut st = self.state();
        let s = self.shadow(&mut st, from)?;
        st.shadows.remove(from);
        st.gone.insert(from.to_path_buf());
        st.gone.insert(to.to_path_buf());
        st.shadows.insert(to.to_path_buf(), s);
        Ok(())
    }

    fn remove_file(&self, path: &Path) -> io::Result<()> {
        let mut st = self.state();
        if !self.exists(&st, path) {
            return Err(io::Error::from(io::ErrorKind::NotFound));
        }
        st.shadows.remove(path);
        st.gone.insert(path.to_path_buf());
        Ok(())
    }

    fn sync_dir(&self, _dir: &Path) -> io::Result<()> {
        Ok(())
    }

    fn try_lock(&self, _path: &Path) -> Result<Box<dyn LockGuard>, LockError> {
        Ok(Box::new(NoLock))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_truncations_and_renames_stay_in_memory() {
        let tmp = tempfile::tempdir().expect("tmp");
        let dir = tmp.path();
        let a = dir.join("a");
        std::fs::write(&a, b"0123456789").expect("w");
        let o = Overlay::new();
        let f = o.open(&a, true).expect("open");
        f.write_all_at(b"xy", 8).expect("write");
        f.write_all_at(b"Z", 12).expect("grow");
        let mut buf = [0u8; 16];
        let n = f.read_at(&mut buf, 0).expect("read");
        assert_eq!(&buf[..n], b"01234567xy\0\0Z");
        f.set_len(4).expect("cut");
        let n = f.read_at(&mut buf, 0).expect("read");
        assert_eq!(&buf[..n], b"0123");
        f.set_len(6).expect("extend");
        let n = f.read_at(&mut buf, 0).expect("read");
        assert_eq!(&buf[..n], b"0123\0\0", "a cut hides the real bytes past it");
        o.rename(&a, &dir.join("b")).expect("rename");
        assert!(o.open(&a, false).is_err());
        let names: Vec<_> = o
            .list(dir)
            .expect("list")
            .into_iter()
            .map(|e| e.name)
            .collect();
        assert_eq!(names, ["b"]);
        o.create_new(&dir.join("c")).expect("create");
        assert!(o.create_new(&dir.join("b")).is_err());
        o.remove_file(&dir.join("b")).expect("remove");
        let names: Vec<_> = o
            .list(dir)
            .expect("list")
            .into_iter()
            .map(|e| e.name)
            .collect();
        assert_eq!(names, ["c"]);
        assert_eq!(
            std::fs::read(&a).expect("real"),
            b"0123456789",
            "the disk is untouched"
        );
        assert!(!dir.join("b").exists() && !dir.join("c").exists());
        // Directories: as on a real disk, and never on the real one.
        assert_eq!(
            o.create_dir(dir).map_err(|e| e.kind()),
            Err(io::ErrorKind::AlreadyExists)
        );
        assert_eq!(
            o.create_dir(&dir.join("x/y")).map_err(|e| e.kind()),
            Err(io::ErrorKind::NotFound)
        );
        o.create_dir(&dir.join("x")).expect("mkdir");
        o.create_dir(&dir.join("x/y")).expect("mkdir under it");
        assert!(!dir.join("x").exists());
    }
}
