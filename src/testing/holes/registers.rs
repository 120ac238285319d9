//! Holes 4, 5 and 10: impossible or missing register values (a forged or damaged
//! cursor or seq lease).

use super::*;

/// Writes a CRC-valid slot into both slots of a register file (so it wins whatever the
/// generation of the real slots).
fn forge_register(disk: &SimDisk, path: &Path, kind: RegisterKind, generation: u64, value: u64) {
    let slot = RegisterSlot {
        kind,
        generation,
        value,
    }
    .encode();
    for offset in REGISTER_SLOT_OFFSETS {
        disk.damage(path, offset, &slot).expect("forge");
    }
}

/// Writes `n` records (ids `0..n`) that stay undelivered, and shuts down cleanly.
pub(super) async fn write_undelivered(disk: &Arc<SimDisk>, dir: &Path, n: u64) {
    let (sink, handle, shutdown) = open(disk, config(dir), Stuck).await.expect("open");
    for id in 0..n {
        within("push", sink.push(id)).await.expect("push");
    }
    within("sync", sink.sync()).await.expect("sync");
    stop(sink, handle, shutdown).await;
}

/// Hole: a CRC-valid cursor far above the seq lease made open delete every sealed
/// segment (0 of 5 000 records delivered). A cursor at or above the lease is damage:
/// quarantined, and delivery restarts at the oldest segment.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cursor_above_the_lease_deletes_nothing() {
    let disk = SimDisk::new(4);
    let dir = Path::new("/wal");
    write_undelivered(&disk, dir, 2_000).await;
    forge_register(
        &disk,
        &dir.join("CURSOR"),
        RegisterKind::Cursor,
        1_000,
        1 << 40,
    );
    let got: Vec<u64> = records_delivered(&disk, config(dir)).await;
    assert_eq!(got, (0..2_000).collect::<Vec<_>>());
    assert!(
        disk.names_in(dir).iter().any(|n| n.starts_with("CURSOR.")),
        "the forged cursor is kept aside: {:?}",
        disk.names_in(dir)
    );
}

/// The same forged cursor with the lease file gone: the seqs handed out are still
/// bounded by what the segments could hold plus a lease block, so it is damage too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cursor_above_what_the_segments_could_hold_deletes_nothing_without_a_lease() {
    let disk = SimDisk::new(16);
    let dir = Path::new("/wal");
    write_undelivered(&disk, dir, 2_000).await;
    forge_register(
        &disk,
        &dir.join("CURSOR"),
        RegisterKind::Cursor,
        1_000,
        1 << 40,
    );
    disk.storage()
        .rename(&dir.join("SEQ_LEASE"), &dir.join("SEQ_LEASE.lost"))
        .expect("lose the lease");
    let got: Vec<u64> = records_delivered(&disk, config(dir)).await;
    assert_eq!(got, (0..2_000).collect::<Vec<_>>());
}

/// Hole: a lease just below the end of the seq space let `push_durable` confirm
/// records with seqs the reader rejects (100 confirmed, 6 delivered). The writer now
/// fails closed at the end of the seq space: every confirmed record is delivered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_writer_fails_closed_at_the_end_of_the_seq_space() {
    let disk = SimDisk::new(5);
    let dir = Path::new("/wal");
    write_undelivered(&disk, dir, 3).await;
    forge_register(
        &disk,
        &dir.join("SEQ_LEASE"),
        RegisterKind::SeqLease,
        1_000,
        MAX_SEQ - 5,
    );
    let (sink, handle, shutdown) = open(&disk, config(dir), Stuck).await.expect("open");
    let mut confirmed = vec![0, 1, 2];
    let mut refused = 0;
    for id in 100..200u64 {
        match within("push_durable", sink.push_durable(id)).await {
            Ok(seq) => {
                assert!(seq <= MAX_SEQ, "seq {seq} beyond the seq space");
                confirmed.push(id);
            }
            Err(SinkError::Io(_)) => refused += 1,
            Err(e) => panic!("unexpected {e}"),
        }
    }
    assert!(refused > 0, "the seq space should have run out");
    wind_down(sink, handle, shutdown).await;
    let got: Vec<u64> = records_delivered(&disk, config(dir)).await;
    assert_eq!(got, confirmed);
}

/// Hole: a lease beyond the seq space (CRC-valid) was trusted. It is damage: set aside,
/// and the lease restarts past every seq the directory shows.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lease_beyond_the_seq_space_is_damage() {
    let disk = SimDisk::new(6);
    let dir = Path::new("/wal");
    write_undelivered(&disk, dir, 50).await;
    forge_register(
        &disk,
        &dir.join("SEQ_LEASE"),
        RegisterKind::SeqLease,
        1_000,
        MAX_SEQ + 100,
    );
    let log = Log::default();
    let (sink, handle, shutdown) = open(&disk, config(dir), Collect(Arc::clone(&log)))
        .await
        .expect("open");
    let seq = within("push_durable", sink.push_durable(50))
        .await
        .expect("push_durable");
    assert!(seq > 50 && seq <= MAX_SEQ, "seq {seq}");
    within("flush", sink.flush()).await.expect("flush");
    stop(sink, handle, shutdown).await;
    let got: Vec<u64> = log_of(&log).into_iter().map(|p| p.1).collect();
    assert_eq!(got, (0..=50).collect::<Vec<_>>());
}

/// Hole: a lost or unreadable lease was recreated at 0, so the seqs of records that
/// were delivered and then erased by a power loss could be handed out again, naming
/// two different records. The new lease jumps past every seq the directory shows by
/// the lease block.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_lease_never_lets_a_seq_name_two_records() {
    let disk = SimDisk::new(7);
    let dir = Path::new("/wal");
    let cfg = SinkConfig {
        durability: Durability::Never,
        ..config(dir)
    };
    // Seed the directory durably (segment and registers exist), then deliver records
    // that are never synced.
    drop(deliver_all(&disk, cfg.clone()).await);
    let log = Log::default();
    let (sink, handle, shutdown) = open(&disk, cfg.clone(), Collect(Arc::clone(&log)))
        .await
        .expect("open");
    for id in 0..20u64 {
        within("push", sink.push(id)).await.expect("push");
    }
    within("flush", sink.flush()).await.expect("flush");
    let delivered = log_of(&log);
    assert_eq!(delivered.len(), 20);
    // Power loss: the unsynced frames (and cursor writes) are gone; the lease file is
    // damaged too.
    disk.crash(POWER_LOSS);
    wind_down(sink, handle, shutdown).await;
    disk.damage(&dir.join("SEQ_LEASE"), 0, &[0xFF; 64])
        .expect("damage");
    disk.damage(&dir.join("SEQ_LEASE"), 4096, &[0xFF; 32])
        .expect("damage");
    let (sink, handle, shutdown) = open(&disk, cfg, Stuck).await.expect("reopen");
    let seq = within("push_durable", sink.push_durable(1_000))
        .await
        .expect("push_durable");
    let highest = delivered.iter().map(|p| p.0).max().unwrap_or(0);
    assert!(
        seq > highest,
        "seq {seq} handed out again (records up to seq {highest} were delivered)"
    );
    assert!(seq > LEASE_BLOCK, "seq {seq}: no jump by the lease block");
    wind_down(sink, handle, shutdown).await;
}

/// Hole (found in review): the writer renewed the lease without syncing the frames
/// before it. With the lease file then lost to damage, a power loss could erase every
/// frame back to the last sync, so the next open's jump (a lease block past the last
/// frame it finds) fell below seqs already delivered. The writer now syncs before each
/// renewal. Many renewals (the unit-test lease block is 64 seqs), no other sync.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_lease_after_many_renewals_never_lets_a_seq_name_two_records() {
    for seed in 0..8 {
        let disk = SimDisk::new(100 + seed);
        let dir = Path::new("/wal");
        let cfg = SinkConfig {
            durability: Durability::Never,
            segment_bytes: 1 << 16,
            max_disk_bytes: 1 << 20,
            ..config(dir)
        };
        drop(deliver_all(&disk, cfg.clone()).await);
        let log = Log::default();
        let (sink, handle, shutdown) = open(&disk, cfg.clone(), Collect(Arc::clone(&log)))
            .await
            .expect("open");
        for id in 0..10 * LEASE_BLOCK {
            within("push", sink.push(id)).await.expect("push");
        }
        within("flush", sink.flush()).await.expect("flush");
        disk.crash(POWER_LOSS);
        wind_down(sink, handle, shutdown).await;
        for offset in REGISTER_SLOT_OFFSETS {
            disk.damage(&dir.join("SEQ_LEASE"), offset, &[0xFF; 32])
                .expect("damage");
        }
        let (sink, handle, shutdown) = open(&disk, cfg, Stuck).await.expect("reopen");
        let seq = within("push_durable", sink.push_durable(u64::MAX))
            .await
            .expect("push_durable");
        let highest = log_of(&log).iter().map(|p| p.0).max().unwrap_or(0);
        assert!(
            seq > highest,
            "seed {seed}: seq {seq} handed out again (records up to seq {highest} were delivered)"
        );
        wind_down(sink, handle, shutdown).await;
    }
}

/// Hole (found in review): an empty file named like a segment near the end of the seq
/// space was quarantined, and the seqs it "could have held" pushed `next_seq` to the
/// end: the sink refused every record, and the lease made that permanent. A name that
/// cannot be verified is not honoured there.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stray_file_named_near_the_end_of_the_seq_space_does_not_exhaust_it() {
    for existing in [0u64, 40] {
        let disk = SimDisk::new(15 + existing);
        let dir = Path::new("/wal");
        if existing > 0 {
            write_undelivered(&disk, dir, existing).await;
        } else {
            crate::wal::storage::create_dir_chain(disk.storage().as_ref(), dir).expect("mkdir");
        }
        let s = disk.storage();
        // Just past the cutoff up to the end (a name at or below it is honoured).
        for seq in [MAX_SEQ, MAX_SEQ - 7, MAX_SEQ / 2 + 1] {
            s.create_new(&dir.join(segment_file_name(seq)))
                .expect("stray");
        }
        for round in 0..2 {
            let log = Log::default();
            let (sink, handle, shutdown) = open(&disk, config(dir), Collect(Arc::clone(&log)))
                .await
                .expect("open");
            let seq = within("push_durable", sink.push_durable(1_000 + round))
                .await
                .unwrap_or_else(|e| panic!("existing {existing}, round {round}: {e}"));
            assert!(seq < MAX_SEQ / 2, "seq {seq}");
            within("flush", sink.flush()).await.expect("flush");
            stop(sink, handle, shutdown).await;
            assert_eq!(log_of(&log).last().map(|p| p.1), Some(1_000 + round));
        }
    }
}
