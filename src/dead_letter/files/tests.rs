use std::time::{Duration, UNIX_EPOCH};

use super::*;
use crate::dead_letter::entry::DeadLetterReason;
use crate::testing::sim::{Crash, SimDisk};

const WAL: &str = "/wal";

fn meta(seq: u64) -> EntryMeta {
    EntryMeta {
        reason: if seq.is_multiple_of(2) {
            DeadLetterReason::Rejected
        } else {
            DeadLetterReason::Undecodable
        },
        attempts: 2,
        seq,
        first_failed_at: UNIX_EPOCH + Duration::from_millis(1_000 + seq),
        dead_lettered_at: UNIX_EPOCH + Duration::from_millis(2_000 + seq),
        error: format!("error for {seq}"),
    }
}

fn payload(seq: u64) -> Vec<u8> {
    vec![seq as u8; (seq as usize * 13) % 300]
}

fn disk() -> Arc<SimDisk> {
    let disk = SimDisk::new(7);
    let st = disk.storage();
    st.create_dir(Path::new(WAL)).expect("wal dir");
    st.sync_dir(Path::new("/")).expect("root");
    disk
}

fn open(disk: &Arc<SimDisk>, writable: bool) -> StoreFiles {
    StoreFiles::open(disk.storage(), Path::new(WAL), 1, 1 << 30, writable).expect("open")
}

fn check(store: &StoreFiles, seqs: &[u64]) {
    assert_eq!(store.seqs(0, usize::MAX), seqs);
    for &s in seqs {
        let e = store.get(s).expect("read").expect("held");
        assert_eq!(e.meta, meta(s));
        assert_eq!(e.payload, payload(s), "payload of {s}");
    }
}

#[test]
fn appends_survive_power_loss_and_a_seq_is_stored_once() {
    let disk = disk();
    let mut store = open(&disk, true);
    for s in [5, 9, 12] {
        assert_eq!(
            store.append(&meta(s), &payload(s)).expect("append"),
            Appended::Stored
        );
    }
    assert_eq!(
        store.append(&meta(9), &payload(9)).expect("again"),
        Appended::AlreadyStored
    );
    disk.crash(Crash::PowerLoss {
        tear: true,
        flip: true,
    });
    let mut store = open(&disk, true);
    check(&store, &[5, 9, 12]);
    // A replay after the crash stores nothing twice.
    assert_eq!(
        store.append(&meta(12), &payload(12)).expect("replay"),
        Appended::AlreadyStored
    );
    assert_eq!(store.damaged(), 0);
}

#[test]
fn a_torn_append_is_cut_and_never_reported() {
    let disk = disk();
    let mut store = open(&disk, true);
    store.append(&meta(1), &payload(1)).expect("append");
    // The next append's fsync never happens: power is lost with its frame unsynced.
    disk.fail_sync_after(Some(0));
    assert!(store.append(&meta(2), &payload(2)).is_err());
    disk.fail_sync_after(None);
    disk.crash(Crash::PowerLoss {
        tear: true,
        flip: false,
    });
    let mut store = open(&disk, true);
    check(&store, &[1]);
    store
        .append(&meta(3), &payload(3))
        .expect("append after the cut");
    let store = open(&disk, false);
    check(&store, &[1, 3]);
    assert_eq!(store.damaged(), 0);
}

#[test]
fn the_cap_refuses_without_writing() {
    let disk = disk();
    let st = disk.storage();
    let mut store = StoreFiles::open(st, Path::new(WAL), 1, 400, true).expect("open");
    assert_eq!(
        store.append(&meta(1), &payload(1)).expect("fits"),
        Appended::Stored
    );
    let before = store.bytes();
    assert_eq!(
        store.append(&meta(20), &vec![0; 400]).expect("full"),
        Appended::Full
    );
    assert_eq!(store.bytes(), before);
    check(&store, &[1]);
}

#[test]
fn files_roll_and_purge_rewrites_them_crash_safely() {
    let disk = disk();
    let mut store = open(&disk, true);
    let big = vec![1u8; 5 << 20];
    let mut seqs = Vec::new();
    for s in 1..=12u64 {
        let p = if s % 3 == 0 { big.clone() } else { payload(s) };
        store.append(&meta(s), &p).expect("append");
        seqs.push(s);
    }
    let files = disk.names_in(&Path::new(WAL).join(DEAD_LETTER_DIR));
    assert!(files.len() >= 2, "rolled: {files:?}");
    let small: Vec<u64> = seqs.iter().copied().filter(|s| s % 3 != 0).collect();
    // Purge the large ones; the rest keep their bytes.
    let big_seqs: Vec<u64> = seqs.iter().copied().filter(|s| s % 3 == 0).collect();
    assert_eq!(store.purge(Some(&big_seqs), u64::MAX).expect("purge"), 4);
    check(&store, &small);
    disk.crash(Crash::PowerLoss {
        tear: true,
        flip: true,
    });
    let mut store = open(&disk, true);
    check(&store, &small);
    // Appends go on after a purge, and a purge of everything empties the store.
    store.append(&meta(40), &payload(40)).expect("append");
    assert_eq!(store.count(), small.len() as u64 + 1);
    assert_eq!(
        store.purge(None, u64::MAX).expect("purge all"),
        small.len() as u64 + 1
    );
    assert_eq!(store.count(), 0);
    disk.crash(Crash::PowerLoss {
        tear: false,
        flip: false,
    });
    assert_eq!(open(&disk, false).count(), 0);
}

#[test]
fn a_crash_at_any_sync_of_a_purge_leaves_each_entry_whole() {
    // The purge's syncs, in order: rewrite file, rename (dir). Fail each in turn and
    // lose power: every entry is either still there whole or purged, never damaged.
    for fail_at in 0..4u64 {
        let disk = disk();
        let mut store = open(&disk, true);
        for s in 1..=6 {
            store.append(&meta(s), &payload(s)).expect("append");
        }
        disk.fail_sync_after(Some(fail_at));
        let _ = store.purge(Some(&[2, 4]), u64::MAX);
        disk.fail_sync_after(None);
        disk.crash(Crash::PowerLoss {
            tear: true,
            flip: true,
        });
        let store = open(&disk, true);
        let held = store.seqs(0, usize::MAX);
        for s in [1, 3, 5, 6] {
            assert!(
                held.contains(&s),
                "fail_at {fail_at}: kept entry {s} lost: {held:?}"
            );
        }
        check(&store, &held);
        assert_eq!(store.damaged(), 0, "fail_at {fail_at}");
        let names = disk.names_in(&Path::new(WAL).join(DEAD_LETTER_DIR));
        assert!(
            names.iter().all(|n| !n.ends_with(PURGE_SUFFIX)),
            "fail_at {fail_at}: {names:?}"
        );
    }
}

#[test]
fn damage_is_counted_and_skipped_and_a_read_only_open_changes_nothing() {
    let disk = disk();
    let mut store = open(&disk, true);
    for s in 1..=3 {
        store.append(&meta(s), &payload(s)).expect("append");
    }
    let file = Path::new(WAL)
        .join(DEAD_LETTER_DIR)
        .join(crate::wal::format::segment_file_name(1));
    let loc = store.index[&2];
    disk.damage(&file, loc.offset + FRAME_HEADER_BYTES as u64 + 3, &[0xee])
        .expect("damage");
    let changes = disk.changes();
    let ro = open(&disk, false);
    assert_eq!(ro.seqs(0, 10), vec![1, 3]);
    assert_eq!(ro.damaged(), 1);
    assert_eq!(disk.changes(), changes, "a read-only open wrote");
    // No store at all reads as empty.
    let empty = SimDisk::new(1);
    empty.storage().create_dir(Path::new(WAL)).expect("dir");
    assert_eq!(open(&empty, false).count(), 0);
}

#[test]
fn a_create_torn_before_its_header_is_removed_and_a_garbage_file_is_kept_below_new_ones() {
    let disk = disk();
    let mut store = open(&disk, true);
    store.append(&meta(1), &payload(1)).expect("append");
    let dl = Path::new(WAL).join(DEAD_LETTER_DIR);
    let st = disk.storage();
    // A torn create: an empty file named above the others.
    st.create_new(&dl.join(crate::wal::format::segment_file_name(50)))
        .expect("create");
    let mut store = open(&disk, true);
    assert_eq!(store.damaged(), 0, "removed, not damage");
    store
        .append(&meta(2), &payload(2))
        .expect("append after a torn create");
    // A garbage file with a store name, the last one: kept, counted, never written.
    let garbage = dl.join(crate::wal::format::segment_file_name(900));
    st.create_new(&garbage)
        .expect("create")
        .write_all_at(&[0xab; 100], 0)
        .expect("write");
    let mut store = open(&disk, true);
    assert_eq!(store.damaged(), 1);
    store
        .append(&meta(3), &payload(3))
        .expect("append beside garbage");
    disk.crash(Crash::PowerLoss {
        tear: true,
        flip: true,
    });
    let store = open(&disk, true);
    check(&store, &[1, 2, 3]);
    assert_eq!(disk.read_live(&garbage).expect("kept"), vec![0xab; 100]);
}

#[test]
fn an_append_a_crashed_process_left_unsynced_is_made_durable_before_it_is_trusted() {
    let disk = disk();
    let mut store = open(&disk, true);
    store.append(&meta(1), &payload(1)).expect("append");
    // The process dies between the write and the fsync of the next append: its frame
    // is in the page cache only.
    let file = Path::new(WAL)
        .join(DEAD_LETTER_DIR)
        .join(crate::wal::format::segment_file_name(1));
    let mut entry = Vec::new();
    encode_entry(&mut entry, &meta(2), &payload(2));
    let mut frame = Vec::new();
    encode_frame(&mut frame, 2, &entry);
    let f = disk.storage().open(&file, true).expect("open");
    f.write_all_at(&frame, store.bytes()).expect("write");
    drop((f, store));
    disk.crash(Crash::Process);
    // The next run finds it in the page cache and indexes it (a replay of seq 2
    // would then store nothing): the open must make it durable.
    let store = open(&disk, true);
    check(&store, &[1, 2]);
    disk.crash(Crash::PowerLoss {
        tear: true,
        flip: true,
    });
    check(&open(&disk, true), &[1, 2]);
}

#[test]
fn purge_keeps_what_it_cannot_decode_and_what_the_cursor_has_not_passed() {
    let disk = disk();
    let mut store = open(&disk, true);
    for s in 1..=4 {
        store.append(&meta(s), &payload(s)).expect("append");
    }
    // A frame whose entry this build cannot decode (a newer entry version), appended
    // to the same file with a valid CRC.
    let file = Path::new(WAL)
        .join(DEAD_LETTER_DIR)
        .join(crate::wal::format::segment_file_name(1));
    let mut foreign = Vec::new();
    encode_entry(&mut foreign, &meta(9), b"future");
    foreign[0] = 2;
    let mut frame = Vec::new();
    encode_frame(&mut frame, 5, &foreign);
    let f = disk.storage().open(&file, true).expect("open");
    let len = f.len().expect("len");
    f.write_all_at(&frame, len).expect("write");
    f.sync().expect("sync");
    drop(f);
    let mut store = open(&disk, true);
    assert_eq!(store.damaged(), 1);
    // The cursor has passed seqs up to 2 only: 3 stays.
    assert_eq!(store.purge(Some(&[2, 3, 2]), 2).expect("purge"), 1);
    check(&store, &[1, 3, 4]);
    assert_eq!(store.damaged(), 1, "the undecodable frame was kept");
    let bytes = disk.read_live(&file).expect("read");
    assert!(
        bytes.windows(6).any(|w| w == b"future"),
        "its bytes are still in the file"
    );
    assert_eq!(store.purge(None, 3).expect("purge all passed"), 2);
    check(&store, &[4]);
}

/// A scan that fails part way (reads failing after a purge) leaves no half index in
/// use: the next call scans again, and every entry is found where it is.
#[test]
fn a_failed_rescan_is_redone_before_the_index_is_used() {
    let disk = disk();
    let mut store = open(&disk, true);
    for s in [3, 4, 5] {
        store.append(&meta(s), &payload(s)).expect("append");
    }
    disk.flaky_reads(1000);
    assert!(store.purge(Some(&[4]), 10).is_err(), "reads fail");
    disk.flaky_reads(0);
    store.append(&meta(6), &payload(6)).expect("append after");
    let held = store.seqs(0, usize::MAX);
    assert!(
        held == [3, 5, 6] || held == [3, 4, 5, 6],
        "the purge happened or not, nothing else: {held:?}"
    );
    check(&store, &held);
}

/// A file the index does not list under the name a new file would take is someone
/// else's: creating over it fails, and it is never removed.
#[test]
fn a_file_the_index_does_not_list_is_never_removed_to_make_room() {
    let disk = disk();
    let mut store = open(&disk, true);
    let st = disk.storage();
    let dir = Path::new(WAL).join(crate::dead_letter::DEAD_LETTER_DIR);
    let name = segment_path(&dir, 1);
    let f = st.create_new(&name).expect("create");
    f.write_all_at(b"not yet scanned", 0).expect("write");
    f.sync().expect("sync");
    st.sync_dir(&dir).expect("sync dir");
    assert!(store.append(&meta(7), &payload(7)).is_err() || store.count() >= 1);
    assert_eq!(
        disk.read_live(&name).expect("still there"),
        b"not yet scanned",
        "the unlisted file was removed"
    );
}

/// A purge of a file holding damage first copies it, whole and durable, to an unused
/// `.quarantined` name: a second damaged file under the same (reused) name gets its
/// own copy, never "the copy that exists already".
#[test]
fn each_damaged_file_a_purge_replaces_is_copied_whole_under_its_own_name() {
    let disk = disk();
    let dir = Path::new(WAL).join(DEAD_LETTER_DIR);
    let file = dir.join(crate::wal::format::segment_file_name(1));
    let mut copies = Vec::new();
    for round in 0..2u8 {
        let mut store = open(&disk, true);
        for s in 1..=3 {
            store.append(&meta(s), &payload(s)).expect("append");
        }
        let loc = store.index[&2];
        disk.damage(
            &file,
            loc.offset + FRAME_HEADER_BYTES as u64 + 3,
            &[0xe0 + round],
        )
        .expect("damage");
        let damaged = disk.read_live(&file).expect("read");
        let mut store = open(&disk, true);
        // Purge everything readable: the file goes, its damaged bytes stay in a copy.
        store.purge(None, u64::MAX).expect("purge");
        disk.crash(Crash::PowerLoss {
            tear: true,
            flip: true,
        });
        let name = if round == 0 {
            "00000000000000000001.seg.quarantined".to_string()
        } else {
            "00000000000000000001.seg.1.quarantined".to_string()
        };
        assert_eq!(
            disk.read_live(&dir.join(&name))
                .expect("the copy survived power loss"),
            damaged,
            "round {round}"
        );
        copies.push(name);
    }
    assert!(disk.names_in(&dir).iter().all(|n| !n.ends_with(".purge")));
}

/// Regression (cold review): an append whose fsync failed left its frame readable but
/// clean in the page cache. A later open (or a rescan in the same process) indexed it,
/// the retried append answered `AlreadyStored` without writing, the WAL cursor passed
/// the record, and a power loss lost both copies. Both paths must make the entry
/// durable before trusting it.
#[test]
fn an_entry_whose_fsync_failed_is_made_durable_before_it_is_trusted() {
    for reopen in [true, false] {
        let disk = disk();
        let mut store = open(&disk, true);
        store.append(&meta(1), &payload(1)).expect("append 1");
        disk.fail_sync_after(Some(1));
        assert!(
            store.append(&meta(2), &payload(2)).is_err(),
            "reopen {reopen}"
        );
        disk.fail_sync_after(None);
        if reopen {
            // The process gives up (shutdown) and a new one opens the store: the frame
            // is still in the page cache.
            drop(store);
            disk.crash(Crash::Process);
            store = open(&disk, true);
        } else {
            // A purge's rescan in the same process indexes the frame.
            store.scan().expect("rescan");
        }
        // The delivery retries the dead letter of seq 2.
        let got = store.append(&meta(2), &payload(2)).expect("retry");
        assert!(
            matches!(got, Appended::Stored | Appended::AlreadyStored),
            "reopen {reopen}: {got:?}"
        );
        drop(store);
        disk.crash(Crash::PowerLoss {
            tear: true,
            flip: true,
        });
        check(&open(&disk, true), &[1, 2]);
    }
}

/// Regression (cold review): a purge whose directory fsync failed after its rename
/// left the rename in the page cache only. The next append went into the renamed file
/// and fsynced only that file; a power loss brought back the old file under the name,
/// without the new entry, which the WAL cursor had already passed.
#[test]
fn an_append_after_a_purge_whose_directory_fsync_failed_survives_power_loss() {
    let disk = disk();
    let mut store = open(&disk, true);
    store.append(&meta(1), &payload(1)).expect("append 1");
    store.append(&meta(2), &payload(2)).expect("append 2");
    // Sync 1: the rewrite's fsync; sync 2: the directory after the rename.
    disk.fail_sync_after(Some(2));
    assert!(store.purge(Some(&[1]), 10).is_err());
    disk.fail_sync_after(None);
    assert_eq!(
        store.append(&meta(3), &payload(3)).expect("append 3"),
        Appended::Stored
    );
    drop(store);
    disk.crash(Crash::PowerLoss {
        tear: false,
        flip: false,
    });
    let store = open(&disk, true);
    assert!(store.contains(2), "a kept entry lost");
    assert!(
        store.contains(3),
        "the entry appended after the failed purge lost"
    );
}

/// Regression (third cold review): the open rewrote only the highest-named file. A
/// file with a damaged header named above the real last one (never appended to) hid
/// it, and an entry a crashed process left unsynced there was indexed untrusted.
#[test]
fn a_damaged_file_named_above_does_not_hide_the_last_file_from_the_open() {
    let disk = disk();
    let mut store = open(&disk, true);
    store.append(&meta(1), &payload(1)).expect("append");
    let dl = Path::new(WAL).join(DEAD_LETTER_DIR);
    let mut entry = Vec::new();
    encode_entry(&mut entry, &meta(2), &payload(2));
    let mut frame = Vec::new();
    encode_frame(&mut frame, 2, &entry);
    let f = disk
        .storage()
        .open(&dl.join(crate::wal::format::segment_file_name(1)), true)
        .expect("open");
    f.write_all_at(&frame, store.bytes()).expect("write");
    let garbage = disk
        .storage()
        .create_new(&dl.join(crate::wal::format::segment_file_name(900)))
        .expect("create");
    garbage.write_all_at(&[0xab; 100], 0).expect("write");
    garbage.sync().expect("sync");
    disk.storage().sync_dir(&dl).expect("sync dir");
    drop((f, garbage, store));
    disk.crash(Crash::Process);
    check(&open(&disk, true), &[1, 2]);
    disk.crash(Crash::PowerLoss {
        tear: true,
        flip: true,
    });
    check(&open(&disk, true), &[1, 2]);
}
