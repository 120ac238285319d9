use super::*;
use crate::testing::sim::SimDisk;
use crate::wal::segment::ScanStep;
use crate::wal::writer::SyncPolicy;
use crate::wal::{Wal, WalConfig};

fn config(dir: &Path) -> WalConfig {
    WalConfig {
        dir: dir.to_path_buf(),
        codec_id: 1,
        segment_bytes: 4096,
        max_disk_bytes: 1 << 20,
        sync_policy: SyncPolicy::OnRequest,
        prefill: false,
    }
}

/// Every frame of every readable segment, in order.
fn frames(view: &WalView) -> io::Result<Vec<(u64, Vec<u8>)>> {
    let mut out = Vec::new();
    for seg in &view.segments {
        let Some(mut scanner) = view.scan(seg)? else {
            continue;
        };
        // Each step moves forward in the file: bounded by its length.
        for _ in 0..=seg.len {
            match scanner.next_step()? {
                ScanStep::Frame { seq, payload } => out.push((seq, payload.to_vec())),
                ScanStep::Corrupt { .. } => {}
                ScanStep::End { .. } => break,
            }
        }
    }
    Ok(out)
}

/// The view reads a directory whose lock a live sink holds, and changes nothing.
#[test]
fn a_view_reads_a_locked_directory_and_changes_nothing() -> Result<(), OpenErrorOrIo> {
    let disk = SimDisk::new(1);
    let dir = Path::new("/wal");
    // Open the log as a sink would (lock held), and write frames by hand through
    // a second, independent file handle: the view must see them.
    let wal = Wal::open(
        disk.storage(),
        config(dir),
        crate::metrics::Metrics::new(None),
    )?;
    let segment = crate::wal::segment::segment_path(dir, 1);
    let file = disk.storage().open(&segment, true)?;
    let mut buf = Vec::new();
    for seq in 1..=5u64 {
        crate::wal::format::encode_frame(&mut buf, seq, &[seq as u8; 3]);
    }
    file.write_all_at(&buf, crate::wal::format::SEGMENT_HEADER_BYTES as u64)?;
    let changes = disk.changes();
    let view = WalView::open(disk.storage(), dir, 64)?;
    assert_eq!(view.segments.len(), 1);
    assert_eq!(view.cursor, RegisterPeek::Value(0));
    assert_eq!(view.lease, RegisterPeek::Value(1));
    let got = frames(&view)?;
    assert_eq!(
        got,
        (1..=5u64)
            .map(|s| (s, vec![s as u8; 3]))
            .collect::<Vec<_>>()
    );
    assert_eq!(
        disk.changes(),
        changes,
        "the view wrote, synced, created, renamed or deleted something"
    );
    drop(wal);
    Ok(())
}

/// Damage is reported as found, not repaired: an unreadable cursor, a segment with
/// a bad header, a stray, a directory named like a segment.
#[test]
fn a_view_reports_damage_without_repairing_it() -> Result<(), OpenErrorOrIo> {
    let disk = SimDisk::new(2);
    let dir = Path::new("/wal");
    drop(Wal::open(
        disk.storage(),
        config(dir),
        crate::metrics::Metrics::new(None),
    )?);
    let s = disk.storage();
    disk.damage(&dir.join(CURSOR_FILE), 0, &[0xFF; 32])?;
    disk.damage(&dir.join(CURSOR_FILE), 4096, &[0xFF; 32])?;
    s.create_new(&dir.join("00000000000000000500.seg"))?
        .write_all_at(b"not a header", 0)?;
    s.create_new(&dir.join("notes.txt"))?;
    s.create_dir(&dir.join("00000000000000000900.seg"))?;
    let changes = disk.changes();
    let view = WalView::open(disk.storage(), dir, 64)?;
    assert_eq!(view.cursor, RegisterPeek::Unreadable);
    assert_eq!(view.segments.len(), 2);
    assert!(matches!(view.segments[1].header, HeaderStatus::Corrupt(_)));
    assert!(view.scan(&view.segments[1])?.is_none());
    assert_eq!(
        view.strays,
        vec![
            "00000000000000000900.seg".to_string(),
            "notes.txt".to_string()
        ]
    );
    // Nothing was quarantined or rewritten.
    assert_eq!(disk.changes(), changes, "the view changed the directory");
    assert!(
        disk.names_in(dir)
            .iter()
            .all(|n| !n.ends_with(QUARANTINE_SUFFIX))
    );
    Ok(())
}

#[derive(Debug)]
#[allow(dead_code, reason = "read through Debug when a test fails")]
enum OpenErrorOrIo {
    Open(crate::OpenError),
    Io(io::Error),
}
impl From<crate::OpenError> for OpenErrorOrIo {
    fn from(e: crate::OpenError) -> Self {
        Self::Open(e)
    }
}
impl From<io::Error> for OpenErrorOrIo {
    fn from(e: io::Error) -> Self {
        Self::Io(e)
    }
}
