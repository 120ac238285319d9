//! Sticky I/O failure and a full disk, through the storage trait, on the simulated
//! disk's fault knobs (failing fsync, every write failing with ENOSPC, the fsync gate).
//! The rules under test: after a failed fsync the sink refuses pushes and `sync()`
//! (`SinkError::Io`; docs/GUARANTEES.md §1), never claims durability again (even once
//! the disk "recovers"), and a reopen recovers what was durable; a full disk holds
//! writes without losing accepted records and resumes when space returns.

use std::io;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::testing::sim::SimDisk;
use crate::{
    Batch, BincodeCodec, Codec, DrainError, Durability, DurableSink, SinkConfig, SinkDrain,
    SinkError,
};

/// Collects records (not seqs).
struct Collect(Arc<Mutex<Vec<u64>>>);

impl SinkDrain<u64> for Collect {
    async fn write_batch(&mut self, batch: Batch<u64>) -> Result<(), DrainError> {
        self.0
            .lock()
            .map_err(|e| DrainError::retryable(e.to_string()))?
            .extend(batch.into_items());
        Ok(())
    }
}

/// The WAL directory on the simulated disk.
const DIR: &str = "/wal";

/// Yields until `n` records have been accepted (no sleeping, no timing).
async fn wait_until_pushed(sink: &DurableSink<u64>, n: u64) {
    while sink.stats().pushed < n {
        tokio::task::yield_now().await;
    }
}

fn config(dir: &Path) -> SinkConfig {
    let mut c = SinkConfig::new(dir);
    c.durability = Durability::Never;
    c.segment_bytes = 4096;
    c.max_disk_bytes = 1 << 20;
    c.max_record_bytes = 1024;
    c.flush_interval = Duration::from_secs(3600);
    c.queue_capacity = 64;
    c
}

async fn open_faulty(
    disk: &Arc<SimDisk>,
    got: &Arc<Mutex<Vec<u64>>>,
) -> (DurableSink<u64>, crate::SinkHandle, CancellationToken) {
    let shutdown = CancellationToken::new();
    let codec: Arc<dyn Codec<u64>> = Arc::new(BincodeCodec);
    let (sink, handle) = DurableSink::open_on(
        disk.storage(),
        config(Path::new(DIR)),
        codec,
        Collect(Arc::clone(got)),
        shutdown.clone(),
    )
    .await
    .expect("open");
    (sink, handle, shutdown)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_fsync_is_sticky_and_never_reported_as_durable() {
    let disk = SimDisk::new(1);
    let got = Arc::new(Mutex::new(Vec::new()));
    let (sink, handle, shutdown) = open_faulty(&disk, &got).await;
    assert_eq!(sink.push_durable(1).await, Ok(1));

    disk.fail_sync_after(Some(1));
    assert!(matches!(sink.push_durable(2).await, Err(SinkError::Io(_))));
    assert!(matches!(sink.sync().await, Err(SinkError::Io(_))));
    assert!(matches!(sink.try_push(3), Err(SinkError::Io(_))));
    assert!(matches!(sink.push(4).await, Err(SinkError::Io(_))));

    // The disk "recovers": the sink still refuses to claim durability.
    disk.fail_sync_after(None);
    assert!(matches!(sink.sync().await, Err(SinkError::Io(_))));
    assert!(matches!(sink.push_durable(5).await, Err(SinkError::Io(_))));
    assert!(sink.stats().write_errors >= 1);
    shutdown.cancel();
    assert!(
        matches!(handle.join().await, Err(SinkError::Io(_))),
        "join reports the failure"
    );

    // A reopen recovers what was durable.
    let got2 = Arc::new(Mutex::new(Vec::new()));
    disk.fail_writes(false);
    let (sink, handle, shutdown) = open_faulty(&disk, &got2).await;
    sink.flush().await.expect("flush");
    let all: Vec<u64> = got
        .lock()
        .expect("lock")
        .iter()
        .chain(got2.lock().expect("lock").iter())
        .copied()
        .collect();
    assert!(
        all.contains(&1),
        "the record reported durable was lost: {all:?}"
    );
    assert!(
        !all.contains(&3) && !all.contains(&4) && !all.contains(&5),
        "refused records appeared: {all:?}"
    );
    shutdown.cancel();
    handle.join().await.expect("join");
}

/// ENOSPC from a write holds the writer instead of failing it: `push_durable` and
/// `sync` wait, `try_push` overflows once the queue is full, nothing durable is
/// damaged, and everything completes once space is back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_holds_writes_and_resumes_when_space_returns() {
    let disk = SimDisk::new(1);
    let got = Arc::new(Mutex::new(Vec::new()));
    let (sink, handle, shutdown) = open_faulty(&disk, &got).await;
    for i in 0..50 {
        sink.push(i).await.expect("push");
    }
    sink.sync().await.expect("sync");
    disk.fail_writes(true);
    // Queued in this order, deterministically: 98, then 99 (durable), then the sync.
    sink.try_push(98).expect("queue has room");
    let durable = {
        let sink = sink.clone();
        tokio::spawn(async move { sink.push_durable(99).await })
    };
    wait_until_pushed(&sink, 52).await;
    let sync = {
        let sink = sink.clone();
        tokio::spawn(async move { sink.sync().await })
    };
    // Fill the queue behind the stalled writer: try_push must report Overflow, not lose.
    let mut accepted = Vec::new();
    let mut overflowed = false;
    for i in 100..100_000u64 {
        // Read before the push: once the writer is stalled it takes nothing until space
        // returns, so a full queue seen after that stays full. (An overflow seen just
        // before the stall can be followed by the writer taking the whole queue.)
        let stalled = sink.stats().disk_full;
        match sink.try_push(i) {
            Ok(()) => accepted.push(i),
            // The queue can also fill for a moment before the writer meets the full
            // disk: only an overflow behind a stalled writer ends the loop.
            Err(SinkError::Overflow) if stalled => {
                overflowed = true;
                break;
            }
            Err(SinkError::Overflow) => {}
            Err(e) => panic!("unexpected {e}"),
        }
        tokio::task::yield_now().await;
    }
    assert!(overflowed, "the queue never filled while the disk was full");
    assert!(
        !durable.is_finished() && !sync.is_finished(),
        "durability reported while the disk was full"
    );

    disk.fail_writes(false);
    let seq = durable
        .await
        .expect("task")
        .expect("push_durable after space returned");
    sync.await
        .expect("task")
        .expect("sync after space returned");
    assert_eq!(seq, 52, "98 took seq 51, 99 the next");
    sink.flush().await.expect("flush");
    let mut want: Vec<u64> = (0..50)
        .chain([98, 99])
        .chain(accepted.iter().copied())
        .collect();
    want.sort_unstable();
    let mut all = got.lock().expect("lock").clone();
    all.sort_unstable();
    assert_eq!(all, want, "every accepted record delivered once");
    shutdown.cancel();
    handle.join().await.expect("join");
}

/// A `push_batch` dropped while it waits for queue room behind a writer stalled on a
/// full disk holds the budget of the record it waits with: dropping it gives that
/// back, and the Vec keeps exactly what was not accepted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_push_batch_cancelled_at_the_queue_gives_its_budget_back() {
    let disk = SimDisk::new(1);
    let got = Arc::new(Mutex::new(Vec::new()));
    let (sink, handle, shutdown) = open_faulty(&disk, &got).await;
    sink.push(1).await.expect("push");
    sink.sync().await.expect("sync");
    disk.fail_writes(true);
    // Fill the queue behind the stalled writer.
    let mut accepted = vec![1u64];
    for i in 100..100_000u64 {
        // Read before the push: once the writer is stalled it takes nothing until space
        // returns, so a full queue seen after that stays full. (An overflow seen just
        // before the stall can be followed by the writer taking the whole queue.)
        let stalled = sink.stats().disk_full;
        match sink.try_push(i) {
            Ok(()) => accepted.push(i),
            Err(SinkError::Overflow) if stalled => break,
            Err(SinkError::Overflow) => {}
            Err(e) => panic!("unexpected {e}"),
        }
        tokio::task::yield_now().await;
    }
    assert!(sink.stats().disk_full, "the writer never stalled");
    let before = sink.stats().wal_bytes;
    let mut batch: Vec<u64> = (200_000..200_005).collect();
    {
        let push = sink.push_batch(&mut batch);
        tokio::pin!(push);
        // Poll until it holds the first record's budget while waiting for the queue.
        let mut polls = 0u32;
        while sink.stats().wal_bytes == before {
            tokio::select! {
                biased;
                res = &mut push => panic!("push_batch finished behind a full queue: {res:?}"),
                () = tokio::task::yield_now() => {}
            }
            polls += 1;
            assert!(
                polls < 1_000_000,
                "push_batch never reserved its first record"
            );
        }
        let frame = 16 + 5; // bincode's varint for 200 000: a marker byte and 4 bytes
        assert_eq!(sink.stats().wal_bytes, before + frame);
        // Dropped here: cancelled at the queue wait.
    }
    assert_eq!(
        sink.stats().wal_bytes,
        before,
        "the cancelled batch's budget came back"
    );
    assert_eq!(
        batch,
        (200_000..200_005).collect::<Vec<_>>(),
        "none accepted"
    );
    disk.fail_writes(false);
    sink.flush().await.expect("flush");
    let mut all = got.lock().expect("lock").clone();
    all.sort_unstable();
    assert_eq!(
        all, accepted,
        "what was accepted, nothing of the cancelled batch"
    );
    shutdown.cancel();
    handle.join().await.expect("join");
}

/// Shutdown while the disk is still full gives up on the unwritten records (the only
/// choice), reports it, and a reopen still has everything that was durable.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_while_the_disk_is_full_reports_and_keeps_what_was_durable() {
    let disk = SimDisk::new(1);
    let got = Arc::new(Mutex::new(Vec::new()));
    let (sink, handle, shutdown) = open_faulty(&disk, &got).await;
    for i in 0..20 {
        sink.push(i).await.expect("push");
    }
    sink.sync().await.expect("sync");
    disk.fail_writes(true);
    let durable = {
        let sink = sink.clone();
        tokio::spawn(async move { sink.push_durable(99).await })
    };
    // Cancel only once the record is queued: it must then be refused with the error.
    wait_until_pushed(&sink, 21).await;
    shutdown.cancel();
    match handle.join().await {
        Err(SinkError::Io(e)) => assert_eq!(e.kind(), io::ErrorKind::StorageFull),
        other => panic!("expected Io(StorageFull), got {other:?}"),
    }
    assert!(matches!(
        durable.await.expect("task"),
        Err(SinkError::Io(_))
    ));

    let got2 = Arc::new(Mutex::new(Vec::new()));
    disk.fail_writes(false);
    let (sink, handle, shutdown) = open_faulty(&disk, &got2).await;
    sink.flush().await.expect("flush");
    let mut all: Vec<u64> = got
        .lock()
        .expect("lock")
        .iter()
        .chain(got2.lock().expect("lock").iter())
        .copied()
        .collect();
    all.sort_unstable();
    all.dedup();
    assert_eq!(
        all,
        (0..20).collect::<Vec<_>>(),
        "every synced record, nothing the full disk refused"
    );
    shutdown.cancel();
    handle.join().await.expect("join");
}

/// Collects byte records.
struct CollectBytes(Arc<Mutex<Vec<Vec<u8>>>>);

impl SinkDrain<Vec<u8>> for CollectBytes {
    async fn write_batch(&mut self, batch: Batch<Vec<u8>>) -> Result<(), DrainError> {
        self.0
            .lock()
            .map_err(|e| DrainError::retryable(e.to_string()))?
            .extend(batch.into_items());
        Ok(())
    }
}

/// The queue's refusal and waiting paths, and records held while the disk is full,
/// made deterministic: the writer is parked in an fsync while the queue fills (64
/// records, a third of them over the 4 KiB arena limit), then the disk is full when
/// it takes them. Its round rolls the 16 KiB segment a few records in, that write
/// fails, and the rest of the take is held: copied out of the queue's arena, because
/// the queue reuses the arena's chunks. A large record refused by the full queue
/// comes back whole to the caller's `push`; small and large records wait for room.
/// Once space returns, exactly the accepted records arrive, byte for byte.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn records_held_or_refused_by_a_full_queue_arrive_whole() {
    let disk = SimDisk::new(4);
    let got = Arc::new(Mutex::new(Vec::new()));
    let mut cfg = config(Path::new(DIR));
    cfg.max_record_bytes = 16 << 10;
    cfg.segment_bytes = 16 << 10;
    cfg.max_disk_bytes = 16 << 20;
    let shutdown = CancellationToken::new();
    let codec: Arc<dyn Codec<Vec<u8>>> = Arc::new(crate::RawCodec);
    let (sink, handle) = DurableSink::open_on(
        disk.storage(),
        cfg,
        codec,
        CollectBytes(Arc::clone(&got)),
        shutdown.clone(),
    )
    .await
    .expect("open");
    let record = |i: usize| -> Vec<u8> {
        let len = if i.is_multiple_of(3) {
            5000 + i
        } else {
            40 + i
        };
        (0..len).map(|k| (k * 7 + i) as u8).collect()
    };
    // A first record renews the seq lease: this fault fails every write, register
    // overwrites too, which a real filesystem serves from allocated blocks (see
    // OPERATIONS, "When the disk fills up").
    let mut accepted = vec![record(1)];
    sink.push(record(1)).await.expect("push");
    sink.sync().await.expect("sync");

    // Park the writer in the fsync of a durable push, then fill the queue.
    disk.hold_syncs(true);
    let parked = {
        let sink = sink.clone();
        accepted.push(record(2));
        tokio::spawn(async move { sink.push_durable(record(2)).await })
    };
    while disk.syncs_held() == 0 {
        tokio::task::yield_now().await;
    }
    for i in 3..3 + 64 {
        sink.try_push(record(i)).expect("the queue has room for 64");
        accepted.push(record(i));
    }
    assert!(matches!(
        sink.try_push(record(67)),
        Err(SinkError::Overflow)
    ));
    // The disk is full when the writer takes them.
    disk.fail_writes(true);
    disk.hold_syncs(false);
    parked
        .await
        .expect("task")
        .expect("the parked push_durable was written before the disk filled");
    // The writer holds what it took and takes nothing more: the queue refills.
    let mut refilled = 0;
    while refilled < 64 {
        match sink.try_push(record(100 + refilled)) {
            Ok(()) => {
                accepted.push(record(100 + refilled));
                refilled += 1;
            }
            Err(SinkError::Overflow) => tokio::task::yield_now().await,
            Err(e) => panic!("unexpected {e}"),
        }
    }
    assert!(sink.stats().disk_full, "the writer is not stalled");
    // The queue is full and stays full: a large record is refused (and comes back
    // whole to the caller's `push`), a small one too; both wait for room.
    assert!(matches!(
        sink.try_push(record(3 * 1000)),
        Err(SinkError::Overflow)
    ));
    let waiting: Vec<_> = [3 * 1001, 3 * 1001 + 1]
        .into_iter()
        .map(|i| {
            let sink = sink.clone();
            accepted.push(record(i));
            tokio::spawn(async move { sink.push(record(i)).await })
        })
        .collect();
    disk.fail_writes(false);
    for w in waiting {
        w.await.expect("task").expect("push after space returned");
    }
    sink.flush().await.expect("flush");
    let mut got = got.lock().expect("lock").clone();
    assert_eq!(got.len(), accepted.len());
    got.sort_unstable();
    accepted.sort_unstable();
    assert!(
        got == accepted,
        "delivered records differ from the accepted ones"
    );
    shutdown.cancel();
    handle.join().await.expect("join");
}
