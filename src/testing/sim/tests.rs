use super::*;

fn write_file(st: &dyn Storage, p: &Path, data: &[u8]) -> io::Result<Box<dyn StorageFile>> {
    let f = st.create_new(p)?;
    f.write_all_at(data, 0)?;
    Ok(f)
}

#[test]
fn power_loss_keeps_only_what_barriers_made_durable() -> io::Result<()> {
    let disk = SimDisk::new(1);
    let st = disk.storage();
    let dir = Path::new("/w");
    st.create_dir(dir)?;
    st.sync_dir(Path::new("/"))?;
    let a = write_file(st.as_ref(), &dir.join("a"), b"durable")?;
    a.sync()?;
    st.sync_dir(dir)?;
    a.write_all_at(b"+lost", 7)?;
    let _b = write_file(st.as_ref(), &dir.join("b"), b"never synced")?;
    disk.crash(Crash::PowerLoss {
        tear: false,
        flip: false,
    });
    assert!(a.len().is_err(), "old handles fail after a crash");
    let st = disk.storage();
    let names: Vec<String> = st.list(dir)?.into_iter().map(|e| e.name).collect();
    assert_eq!(names, vec!["a"]);
    let a = st.open(&dir.join("a"), false)?;
    let mut buf = [0u8; 32];
    let n = a.read_at(&mut buf, 0)?;
    // Either the durable prefix alone, or with the unsynced append applied.
    assert!(
        &buf[..n] == b"durable" || &buf[..n] == b"durable+lost",
        "{:?}",
        &buf[..n]
    );
    Ok(())
}

#[test]
fn process_crash_keeps_everything_written_and_frees_locks() -> io::Result<()> {
    let disk = SimDisk::new(2);
    let st = disk.storage();
    let dir = Path::new("/w");
    st.create_dir(dir)?;
    let _f = write_file(st.as_ref(), &dir.join("a"), b"page cache")?;
    let _lock = st
        .try_lock(&dir.join("LOCK"))
        .map_err(|_| io::Error::other("lock"))?;
    disk.crash(Crash::Process);
    let st = disk.storage();
    assert!(st.try_lock(&dir.join("LOCK")).is_ok());
    assert_eq!(st.open(&dir.join("a"), false)?.len()?, 10);
    Ok(())
}

#[test]
fn a_failed_fsync_never_makes_its_writes_durable() -> io::Result<()> {
    let disk = SimDisk::new(3);
    let st = disk.storage();
    let dir = Path::new("/w");
    st.create_dir(dir)?;
    st.sync_dir(Path::new("/"))?;
    let f = write_file(st.as_ref(), &dir.join("a"), b"x")?;
    st.sync_dir(dir)?;
    disk.fail_sync_after(Some(1));
    assert!(f.sync().is_err());
    disk.fail_sync_after(None);
    f.sync()?; // "succeeds", but the lost writes stay lost
    disk.crash(Crash::PowerLoss {
        tear: false,
        flip: false,
    });
    assert_eq!(disk.storage().open(&dir.join("a"), false)?.len()?, 0);
    Ok(())
}

#[test]
fn enospc_writes_a_prefix_then_fails() -> io::Result<()> {
    let disk = SimDisk::new(4);
    disk.space_bytes(Some(10));
    let st = disk.storage();
    st.create_dir(Path::new("/w"))?;
    let f = st.create_new(Path::new("/w/a"))?;
    let err = f
        .write_all_at(&[1u8; 50], 0)
        .err()
        .ok_or_else(|| io::Error::other("no ENOSPC"))?;
    assert_eq!(err.kind(), io::ErrorKind::StorageFull);
    assert!(f.len()? <= 10);
    Ok(())
}
