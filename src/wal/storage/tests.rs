use super::*;
use std::os::unix::fs::PermissionsExt;

#[test]
fn files_are_0600_dirs_0700_and_locks_exclude() -> io::Result<()> {
    let tmp = tempfile::tempdir()?;
    let dir = tmp.path().join("a/b");
    let s = RealStorage;
    assert_eq!(
        create_dir_chain(&s, &dir)?,
        vec![tmp.path().join("a"), dir.clone()]
    );
    assert!(create_dir_chain(&s, &dir)?.is_empty());
    assert_eq!(fs::metadata(&dir)?.permissions().mode() & 0o777, 0o700);
    let f = s.create_new(&dir.join("x"))?;
    f.write_all_at(b"hello", 3)?;
    f.sync()?;
    assert_eq!(f.len()?, 8);
    assert_eq!(
        fs::metadata(dir.join("x"))?.permissions().mode() & 0o777,
        0o600
    );
    let mut buf = [0u8; 16];
    assert_eq!(read_full_at(f.as_ref(), &mut buf, 0)?, 8);
    assert_eq!(&buf[3..8], b"hello");
    let lock = s
        .try_lock(&dir.join("LOCK"))
        .map_err(|_| io::Error::other("lock"))?;
    assert!(matches!(
        s.try_lock(&dir.join("LOCK")),
        Err(LockError::Held)
    ));
    drop(lock);
    assert!(s.try_lock(&dir.join("LOCK")).is_ok());
    Ok(())
}
