use super::*;
use crate::wal::storage::RealStorage;

fn loaded(r: RegisterOpen) -> Register {
    match r {
        RegisterOpen::Loaded(r) => r,
        other => panic!("expected a loaded register, got {other:?}"),
    }
}

#[test]
fn reopen_returns_last_written_value() -> io::Result<()> {
    let tmp = tempfile::tempdir()?;
    let s = RealStorage;
    let path = tmp.path().join("CURSOR");
    assert!(matches!(
        Register::open(&s, &path, RegisterKind::Cursor)?,
        RegisterOpen::Missing
    ));
    let mut r = Register::create(&s, tmp.path(), "CURSOR", RegisterKind::Cursor, 5)?;
    for v in 6..20 {
        r.write(v)?;
        if v % 3 == 0 {
            r.sync()?;
        }
    }
    drop(r);
    let r = loaded(Register::open(&s, &path, RegisterKind::Cursor)?);
    assert_eq!(r.value(), 19);
    assert!(matches!(
        Register::open(&s, &path, RegisterKind::SeqLease)?,
        RegisterOpen::Unreadable
    ));
    Ok(())
}

/// A torn scratch write falls back to the durable slot, never below it.
#[test]
fn torn_scratch_slot_falls_back_to_durable_value() -> io::Result<()> {
    let tmp = tempfile::tempdir()?;
    let s = RealStorage;
    let path = tmp.path().join("CURSOR");
    let mut r = Register::create(&s, tmp.path(), "CURSOR", RegisterKind::Cursor, 1)?;
    r.write_durable(10)?; // durable in slot 1
    r.write(11)?; // scratch is slot 0
    let scratch = REGISTER_SLOT_OFFSETS[1 - r.durable_slot];
    drop(r);
    let f = s.open(&path, true)?;
    f.write_all_at(&[0xAB; 7], scratch + 9)?; // tear it
    let r = loaded(Register::open(&s, &path, RegisterKind::Cursor)?);
    assert_eq!(r.value(), 10);
    Ok(())
}

#[test]
fn garbage_file_is_unreadable_not_a_panic() -> io::Result<()> {
    let tmp = tempfile::tempdir()?;
    let path = tmp.path().join("CURSOR");
    std::fs::write(&path, b"not a cursor")?;
    assert!(matches!(
        Register::open(&RealStorage, &path, RegisterKind::Cursor)?,
        RegisterOpen::Unreadable
    ));
    Ok(())
}

/// A cursor register holding `value`, created durably on a fresh simulated disk.
fn sim_cursor(
    seed: u64,
    value: u64,
) -> io::Result<(
    std::sync::Arc<crate::testing::sim::SimDisk>,
    std::path::PathBuf,
    Register,
)> {
    let disk = crate::testing::sim::SimDisk::new(seed);
    let dir = Path::new("/w");
    disk.storage().create_dir(dir)?;
    disk.storage().sync_dir(Path::new("/"))?;
    let r = Register::create(
        disk.storage().as_ref(),
        dir,
        "CURSOR",
        RegisterKind::Cursor,
        value,
    )?;
    Ok((disk, dir.join("CURSOR"), r))
}

/// Regression (model test seed 45138056503): after a failed fsync, a slot can be
/// left in the page cache, clean but not durable. A restart that trusted it and
/// then overwrote the other slot lost both to a power loss.
#[test]
fn a_slot_dropped_by_a_failed_fsync_is_made_durable_before_trusting_it() -> io::Result<()> {
    use crate::testing::sim::Crash;
    for seed in 0..64 {
        let (disk, path, mut r) = sim_cursor(seed, 5)?;
        r.write_durable(6)?; // durable: gen 2 = 6
        r.write(7)?; // scratch: gen 3 = 7
        disk.fail_sync_after(Some(1));
        assert!(r.sync().is_err()); // fsyncgate: gen 3 is live but never durable
        disk.fail_sync_after(None);
        drop(r);
        disk.crash(Crash::Process); // restart; the page cache still shows gen 3
        let mut r = loaded(Register::open(
            disk.storage().as_ref(),
            &path,
            RegisterKind::Cursor,
        )?);
        assert_eq!(r.value(), 7);
        r.write(8)?; // goes to the other slot
        disk.crash(Crash::PowerLoss {
            tear: true,
            flip: false,
        });
        match Register::open(disk.storage().as_ref(), &path, RegisterKind::Cursor)? {
            RegisterOpen::Loaded(r) => {
                assert!(r.value() >= 7, "seed {seed}: moved back to {}", r.value())
            }
            other => panic!("seed {seed}: register unreadable after power loss: {other:?}"),
        }
    }
    Ok(())
}

/// Regression (cold review): a sync retried after a failed one, with no write in
/// between (the delivery's stall path, shutdown's persist), fsynced nothing and took
/// the scratch slot for durable; the next write then went to the other slot, the
/// last value truly durable, and a power loss brought back the value of two syncs ago.
#[test]
fn a_sync_retried_after_a_failed_one_rewrites_before_it_trusts() -> io::Result<()> {
    use crate::testing::sim::Crash;
    for seed in 0..64 {
        let (disk, path, mut r) = sim_cursor(seed, 5)?;
        r.write_durable(6)?; // durable: 6
        r.write(7)?;
        disk.fail_sync_after(Some(1));
        assert!(r.sync().is_err()); // 7's slot: clean in the cache, not on disk
        disk.fail_sync_after(None);
        r.sync()?; // no write in between
        assert_eq!(r.durable_value(), 7);
        r.write(8)?; // the other slot: the one that held 6
        disk.crash(Crash::PowerLoss {
            tear: true,
            flip: false,
        });
        match Register::open(disk.storage().as_ref(), &path, RegisterKind::Cursor)? {
            RegisterOpen::Loaded(r) => assert!(
                r.value() >= 7,
                "seed {seed}: below the durable value 7: {}",
                r.value()
            ),
            other => panic!("seed {seed}: register unreadable after power loss: {other:?}"),
        }
    }
    Ok(())
}

/// Regression: a CRC-valid slot with a generation near `u64::MAX` won every
/// comparison, and the next write overflowed the generation (a panic in debug, a
/// wrap to 0 in release, after which the stale slot won again). Such a generation
/// is damage: the slot is ignored, and the other slot's value stands.
#[test]
fn a_generation_at_the_end_of_its_range_is_damage_not_a_winner() -> io::Result<()> {
    let tmp = tempfile::tempdir()?;
    let s = RealStorage;
    let path = tmp.path().join("CURSOR");
    let mut r = Register::create(&s, tmp.path(), "CURSOR", RegisterKind::Cursor, 5)?;
    r.write_durable(10)?;
    let scratch = REGISTER_SLOT_OFFSETS[1 - r.durable_slot];
    drop(r);
    use crate::wal::format::REGISTER_GENERATION_MAX;
    for generation in [u64::MAX, u64::MAX - 1, REGISTER_GENERATION_MAX + 1] {
        let forged = RegisterSlot {
            kind: RegisterKind::Cursor,
            generation,
            value: 99,
        };
        s.open(&path, true)?
            .write_all_at(&forged.encode(), scratch)?;
        let mut r = loaded(Register::open(&s, &path, RegisterKind::Cursor)?);
        assert_eq!(r.value(), 10, "generation {generation}");
        r.write_durable(11)?;
        drop(r);
        let mut r = loaded(Register::open(&s, &path, RegisterKind::Cursor)?);
        assert_eq!(r.value(), 11, "generation {generation}");
        r.write_durable(10)?; // back to the starting state for the next round
    }
    // The highest generation accepted wins, and the register stays writable.
    let top = RegisterSlot {
        kind: RegisterKind::Cursor,
        generation: REGISTER_GENERATION_MAX,
        value: 12,
    };
    for offset in REGISTER_SLOT_OFFSETS {
        s.open(&path, true)?.write_all_at(&top.encode(), offset)?;
    }
    let mut r = loaded(Register::open(&s, &path, RegisterKind::Cursor)?);
    assert_eq!(r.value(), 12);
    for v in 13..20 {
        r.write_durable(v)?;
    }
    drop(r);
    assert_eq!(
        loaded(Register::open(&s, &path, RegisterKind::Cursor)?).value(),
        19
    );
    Ok(())
}

/// Regression (tests/disk_full.rs hung): a register created with `set_len` left its
/// second slot's block sparse; on a full disk the first cursor write there failed,
/// so nothing could be deleted and no space ever freed. Every block must be
/// allocated at creation.
#[test]
fn a_new_register_file_has_every_block_allocated() -> io::Result<()> {
    use std::os::unix::fs::MetadataExt;
    let tmp = tempfile::tempdir()?;
    Register::create(&RealStorage, tmp.path(), "CURSOR", RegisterKind::Cursor, 0)?;
    let meta = std::fs::metadata(tmp.path().join("CURSOR"))?;
    assert_eq!(meta.len(), REGISTER_FILE_BYTES);
    assert!(
        meta.blocks() > 0,
        "this filesystem reports no allocated blocks: the test cannot check anything here"
    );
    assert!(
        meta.blocks() * 512 >= REGISTER_FILE_BYTES,
        "sparse register: {} blocks of 512 bytes",
        meta.blocks()
    );
    Ok(())
}
