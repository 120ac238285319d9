//! The handles the code under test holds: [`Storage`] and [`StorageFile`] over the
//! simulated disk's state, each checking the epoch so that a handle from before a
//! crash fails like one of a dead process.

use super::*;

#[derive(Debug)]
pub(super) struct SimStorage {
    pub(super) disk: Arc<SimDisk>,
    pub(super) epoch: u64,
}

#[derive(Debug)]
struct SimFile {
    pub(super) disk: Arc<SimDisk>,
    pub(super) epoch: u64,
    inode: u64,
    writable: bool,
}

#[derive(Debug)]
struct SimLock {
    pub(super) disk: Arc<SimDisk>,
    pub(super) epoch: u64,
    path: PathBuf,
}

impl LockGuard for SimLock {}

impl Drop for SimLock {
    fn drop(&mut self) {
        let mut s = self.disk.lock();
        if s.epoch == self.epoch {
            s.locks.remove(&self.path);
        }
    }
}

pub(super) fn not_found(p: &Path) -> io::Error {
    io::Error::new(
        io::ErrorKind::NotFound,
        format!("{}: no such file", p.display()),
    )
}

impl Storage for SimStorage {
    fn create_dir(&self, path: &Path) -> io::Result<()> {
        let mut s = self.disk.lock();
        s.check(self.epoch)?;
        s.changes += 1;
        if is_root(path) || s.live_entries.contains_key(path) {
            return Err(io::Error::from(io::ErrorKind::AlreadyExists));
        }
        s.check_parent(path)?;
        s.live_entries.insert(path.to_path_buf(), Node::Dir);
        Ok(())
    }

    fn list(&self, dir: &Path) -> io::Result<Vec<DirEntryInfo>> {
        let s = self.disk.lock();
        s.check(self.epoch)?;
        if !is_root(dir) && s.live_entries.get(dir) != Some(&Node::Dir) {
            return Err(not_found(dir));
        }
        Ok(s.live_entries
            .iter()
            .filter(|(p, _)| p.parent() == Some(dir))
            .filter_map(|(p, n)| Some((p.file_name()?, n)))
            .map(|(name, n)| DirEntryInfo {
                name: name.to_string_lossy().into_owned(),
                is_file: matches!(n, Node::File(_)),
            })
            .collect())
    }

    fn create_new(&self, path: &Path) -> io::Result<Box<dyn StorageFile>> {
        let mut s = self.disk.lock();
        s.check(self.epoch)?;
        s.changes += 1;
        if s.live_entries.contains_key(path) {
            return Err(io::Error::from(io::ErrorKind::AlreadyExists));
        }
        s.check_parent(path)?;
        let inode = s.next_inode;
        s.next_inode += 1;
        s.inodes.insert(inode, Inode::default());
        s.live_entries.insert(path.to_path_buf(), Node::File(inode));
        Ok(Box::new(SimFile {
            disk: Arc::clone(&self.disk),
            epoch: self.epoch,
            inode,
            writable: true,
        }))
    }

    fn open(&self, path: &Path, write: bool) -> io::Result<Box<dyn StorageFile>> {
        let mut s = self.disk.lock();
        s.check(self.epoch)?;
        if !write && s.read_fails() {
            return Err(io::Error::from_raw_os_error(24)); // EMFILE: out of descriptors
        }
        let inode = s.file_at(path)?;
        Ok(Box::new(SimFile {
            disk: Arc::clone(&self.disk),
            epoch: self.epoch,
            inode,
            writable: write,
        }))
    }

    fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        let mut s = self.disk.lock();
        s.check(self.epoch)?;
        s.changes += 1;
        s.check_parent(to)?;
        let node = s.live_entries.remove(from).ok_or_else(|| not_found(from))?;
        if node == Node::Dir {
            // A directory moves with everything below it.
            let below: Vec<PathBuf> = s
                .live_entries
                .keys()
                .filter(|p| p.starts_with(from))
                .cloned()
                .collect();
            for p in below {
                if let (Some(n), Ok(rest)) = (s.live_entries.remove(&p), p.strip_prefix(from)) {
                    s.live_entries.insert(to.join(rest), n);
                }
            }
        }
        s.live_entries.insert(to.to_path_buf(), node);
        Ok(())
    }

    fn remove_file(&self, path: &Path) -> io::Result<()> {
        let mut s = self.disk.lock();
        s.check(self.epoch)?;
        s.changes += 1;
        s.file_at(path)?;
        s.live_entries
            .remove(path)
            .map(|_| ())
            .ok_or_else(|| not_found(path))
    }

    fn sync_dir(&self, dir: &Path) -> io::Result<()> {
        let mut s = self.disk.lock();
        s.check(self.epoch)?;
        s.changes += 1;
        let once = s.fail_dir_sync.as_deref() == Some(dir);
        if once {
            s.fail_dir_sync = None;
        }
        if s.sync_fails() || once {
            return Err(io::Error::other("simulated EIO on directory fsync"));
        }
        let live: Vec<(PathBuf, Node)> = s
            .live_entries
            .iter()
            .filter(|(p, _)| p.parent() == Some(dir))
            .map(|(p, i)| (p.clone(), *i))
            .collect();
        s.durable_entries.retain(|p, _| p.parent() != Some(dir));
        s.durable_entries.extend(live);
        Ok(())
    }

    fn try_lock(&self, path: &Path) -> Result<Box<dyn LockGuard>, LockError> {
        let mut s = self.disk.lock();
        s.check(self.epoch).map_err(LockError::Io)?;
        // Like the real one: open (creating if missing) the lock file first.
        match s.live_entries.get(path) {
            Some(Node::File(_)) => {}
            Some(Node::Dir) => {
                return Err(LockError::Io(io::Error::from(io::ErrorKind::IsADirectory)));
            }
            None => {
                s.check_parent(path).map_err(LockError::Io)?;
                let inode = s.next_inode;
                s.next_inode += 1;
                s.inodes.insert(inode, Inode::default());
                s.live_entries.insert(path.to_path_buf(), Node::File(inode));
            }
        }
        if !s.locks.insert(path.to_path_buf()) {
            return Err(LockError::Held);
        }
        Ok(Box::new(SimLock {
            disk: Arc::clone(&self.disk),
            epoch: self.epoch,
            path: path.to_path_buf(),
        }))
    }
}

impl StorageFile for SimFile {
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<usize> {
        let mut s = self.disk.lock();
        s.check(self.epoch)?;
        if s.read_fails() {
            return Err(io::Error::other("simulated transient EIO on read"));
        }
        let live = &s
            .inodes
            .get(&self.inode)
            .ok_or_else(|| io::Error::other("inode gone"))?
            .live;
        let start = usize::try_from(offset)
            .unwrap_or(usize::MAX)
            .min(live.len());
        let n = buf.len().min(live.len() - start);
        buf[..n].copy_from_slice(&live[start..start + n]);
        Ok(n)
    }

    fn write_all_at(&self, buf: &[u8], offset: u64) -> io::Result<()> {
        let mut s = self.disk.lock();
        s.check(self.epoch)?;
        s.changes += 1;
        if s.panic_on_write.is_some()
            && s.panic_on_write == std::thread::current().name()
            && s.panic_on_write.take().is_some()
        {
            drop(s);
            panic!("simulated bug: panic inside a file write");
        }
        if s.fail_writes {
            return Err(io::Error::from(io::ErrorKind::StorageFull));
        }
        if !self.writable {
            return Err(io::Error::from(io::ErrorKind::PermissionDenied));
        }
        let old_len = s.inodes.get(&self.inode).map_or(0, |n| n.live.len() as u64);
        let grows = (offset + buf.len() as u64).saturating_sub(old_len);
        let mut data = buf.to_vec();
        let mut full = false;
        if let Some(space) = s.space_bytes {
            let free = space.saturating_sub(s.live_bytes());
            if grows > free {
                // A real write fills the space it can, then fails.
                let keep_growth = s.rng.next() % (free + 1);
                let keep = (old_len.saturating_sub(offset) + keep_growth).min(buf.len() as u64);
                data.truncate(keep as usize);
                full = true;
            }
        }
        let inode = s
            .inodes
            .get_mut(&self.inode)
            .ok_or_else(|| io::Error::other("inode gone"))?;
        let w = Write::At { offset, data };
        apply(&mut inode.live, &w);
        inode.unsynced.push(w);
        if full {
            return Err(io::Error::from(io::ErrorKind::StorageFull));
        }
        Ok(())
    }

    fn sync(&self) -> io::Result<()> {
        self.disk.wait_sync_gate();
        let mut s = self.disk.lock();
        s.check(self.epoch)?;
        s.changes += 1;
        let mut fails = s.sync_fails();
        if s.fail_sync_in.is_some() && s.fail_sync_in == std::thread::current().name() {
            s.fail_sync_in = None;
            fails = true;
        }
        if fails {
            s.failed_syncs += 1;
        }
        let inode = s
            .inodes
            .get_mut(&self.inode)
            .ok_or_else(|| io::Error::other("inode gone"))?;
        if fails {
            // fsyncgate: the kernel drops the failed writes' dirty state; a later sync
            // will not make them durable, though reads still see them.
            inode.unsynced.clear();
            return Err(io::Error::other("simulated EIO on fsync"));
        }
        // Durable = what was durable plus the writes still dirty; writes dropped by an
        // earlier failed sync stay lost although reads see them.
        for w in std::mem::take(&mut inode.unsynced) {
            apply(&mut inode.durable, &w);
        }
        Ok(())
    }

    fn set_len(&self, len: u64) -> io::Result<()> {
        let mut s = self.disk.lock();
        s.check(self.epoch)?;
        s.changes += 1;
        let inode = s
            .inodes
            .get_mut(&self.inode)
            .ok_or_else(|| io::Error::other("inode gone"))?;
        let w = Write::SetLen(len);
        apply(&mut inode.live, &w);
        inode.unsynced.push(w);
        Ok(())
    }

    fn len(&self) -> io::Result<u64> {
        let s = self.disk.lock();
        s.check(self.epoch)?;
        Ok(s.inodes.get(&self.inode).map_or(0, |n| n.live.len() as u64))
    }

    fn allocate(&self, len: u64) -> io::Result<()> {
        let mut s = self.disk.lock();
        s.check(self.epoch)?;
        s.changes += 1;
        let old = s.inodes.get(&self.inode).map_or(0, |n| n.live.len() as u64);
        if len <= old {
            return Ok(());
        }
        if s.fail_writes {
            return Err(io::Error::from(io::ErrorKind::StorageFull));
        }
        if let Some(space) = s.space_bytes
            && len - old > space.saturating_sub(s.live_bytes())
        {
            // fallocate is all or nothing.
            return Err(io::Error::from(io::ErrorKind::StorageFull));
        }
        let inode = s
            .inodes
            .get_mut(&self.inode)
            .ok_or_else(|| io::Error::other("inode gone"))?;
        // The size change is metadata: durable only after an fsync, like a write.
        let w = Write::SetLen(len);
        apply(&mut inode.live, &w);
        inode.unsynced.push(w);
        Ok(())
    }
}
