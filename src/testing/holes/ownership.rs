//! Holes 6, 7 and 8: ownership and shutdown (the directory lock outliving every writer,
//! a writer panic reported as such, `drain.close()` bounded).

use super::*;

/// Panics on a batch holding record 1.
struct Panicking;

impl SinkDrain<u64> for Panicking {
    async fn write_batch(&mut self, batch: Batch<u64>) -> Result<(), DrainError> {
        if batch.iter().any(|(_, &id)| id == 1) {
            panic!("drain bug");
        }
        Ok(())
    }
}

/// Opens the fsync gate when dropped, so a failing test does not leave threads
/// blocked behind it.
struct OpenGateOnDrop<'a>(&'a SimDisk);

impl Drop for OpenGateOnDrop<'_> {
    fn drop(&mut self) {
        self.0.hold_syncs(false);
    }
}

/// Waits until `handle`'s delivery task has ended (a condition, polled with a bound).
async fn task_ended(handle: &SinkHandle) {
    within("delivery task end", async {
        while !handle.task_finished() {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    })
    .await;
}

/// Hole: the directory lock lived in the delivery task, so a drain that panicked
/// released it while the writer thread could still write (its final fsync and lease):
/// a second owner could open the directory under it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_lock_outlives_a_panicking_drain_until_the_writer_is_done() {
    let disk = SimDisk::new(8);
    let dir = Path::new("/wal");
    let cfg = SinkConfig {
        durability: Durability::Never,
        ..config(dir)
    };
    let (sink, handle, _shutdown) = open(&disk, cfg.clone(), Panicking).await.expect("open");
    // Renews the seq lease (an fsync) and is delivered.
    within("push_durable", sink.push_durable(0))
        .await
        .expect("push_durable");
    within("flush", sink.flush()).await.expect("flush");
    // The writer's last act, its final fsync, waits at this gate.
    disk.hold_syncs(true);
    let gate = OpenGateOnDrop(&disk);
    sink.try_push(1).expect("push");
    task_ended(&handle).await;
    match within("second open", open(&disk, cfg.clone(), Stuck)).await {
        Err(OpenError::Locked { .. }) => {}
        Err(e) => panic!("expected Locked, got {e}"),
        Ok(_) => panic!("a second sink opened the directory while the writer still runs"),
    }
    drop(gate);
    let joined = within("join", handle.join()).await;
    assert!(
        matches!(joined, Err(SinkError::Internal(ref m)) if m.contains("drain bug")),
        "{joined:?}"
    );
    drop(sink);
    let (sink, handle, shutdown) = open(&disk, cfg, Stuck).await.expect("open after exit");
    stop(sink, handle, shutdown).await;
}

/// Same hole, other path: the application drops its runtime. The delivery task is
/// dropped with it; the writer thread still finishes, and holds the lock until then.
#[test]
fn the_lock_outlives_a_dropped_runtime_until_the_writer_is_done() {
    let disk = SimDisk::new(9);
    let dir = Path::new("/wal");
    let cfg = SinkConfig {
        durability: Durability::Never,
        ..config(dir)
    };
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let sink = rt.block_on(async {
        let (sink, handle, _shutdown) = open(&disk, cfg.clone(), Stuck).await.expect("open");
        within("push_durable", sink.push_durable(1))
            .await
            .expect("push_durable");
        std::mem::forget(handle);
        sink
    });
    disk.hold_syncs(true);
    drop(rt);
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    // Declared after the runtime, so a failure opens the gate before the runtime's
    // drop waits for its blocking threads.
    let gate = OpenGateOnDrop(&disk);
    rt.block_on(async {
        match within("second open", open(&disk, cfg.clone(), Stuck)).await {
            Err(OpenError::Locked { .. }) => {}
            Err(e) => panic!("expected Locked, got {e}"),
            Ok(_) => panic!("a second sink opened the directory while the writer still runs"),
        }
    });
    drop(gate);
    drop(sink);
    rt.block_on(async {
        // The writer ends once its queue closes (the last handle is gone).
        within("open after the writer ended", async {
            loop {
                match within("second open", open(&disk, cfg.clone(), Stuck)).await {
                    Ok((sink, handle, shutdown)) => {
                        shutdown.cancel();
                        drop(sink);
                        return handle.join().await;
                    }
                    Err(OpenError::Locked { .. }) => {
                        tokio::time::sleep(Duration::from_millis(1)).await;
                    }
                    Err(e) => panic!("reopen: {e}"),
                }
            }
        })
        .await
        .expect("join");
    });
}

/// Hole: a panic in the writer thread dropped its exit channel, which the delivery task
/// read as a clean exit: `join()` said Ok and producers saw `Closed`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_panic_in_the_writer_is_an_error_not_a_clean_shutdown() {
    let disk = SimDisk::new(10);
    let dir = Path::new("/wal");
    let (sink, handle, _shutdown) = open(&disk, config(dir), Stuck).await.expect("open");
    disk.panic_on_write("walsink-writer");
    let pushed = within("push_durable", sink.push_durable(1)).await;
    assert!(matches!(pushed, Err(SinkError::Io(_))), "{pushed:?}");
    let joined = within("join", handle.join()).await;
    assert!(
        matches!(joined, Err(SinkError::Internal(ref m)) if m.contains("writer")),
        "{joined:?}"
    );
    let after = sink.try_push(2);
    assert!(matches!(after, Err(SinkError::Io(_))), "{after:?}");
}

/// Hole (found in review): the prefill thread fsyncs the active segment through its
/// own handle. When that fsync fails, the writer's dirty pages of the same file may be
/// gone (fsyncgate), and the writer's next fsync "succeeds" with nothing left to
/// flush. The writer checks the thread's fsyncs after its own, so `sync` fails.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_fsync_of_the_prefill_thread_is_never_followed_by_a_confirmation() {
    let disk = SimDisk::new(12);
    let mut cfg = config(Path::new("/wal"));
    // Large enough that the thread zeroes ahead of the header from the start.
    cfg.segment_bytes = 64 << 10;
    cfg.durability = crate::Durability::Never;
    disk.fail_next_sync_in("walsink-prefill");
    let (sink, handle, shutdown) = open(&disk, cfg, Stuck).await.expect("open");
    within("the prefill thread's failed fsync", async {
        while disk.failed_syncs() == 0 {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    })
    .await;
    sink.push(1).await.expect("push");
    let synced = within("sync", sink.sync()).await;
    assert!(matches!(synced, Err(SinkError::Io(_))), "{synced:?}");
    // Sticky: never confirmed later either.
    let again = within("push_durable", sink.push_durable(2)).await;
    assert!(again.is_err(), "{again:?}");
    wind_down(sink, handle, shutdown).await;
}

/// Refuses every record for good.
struct RejectsAll;

impl SinkDrain<u64> for RejectsAll {
    async fn write_batch(&mut self, _batch: Batch<u64>) -> Result<(), DrainError> {
        Err(DrainError::permanent("poison"))
    }
}

/// Hole (found by the model, seed 111498950728): a dead letter whose store kept failing
/// (every fsync failing) was retried forever while the cursor waited, as designed, but
/// a `flush` waiting for it never returned: with no WAL fsync due, nothing failed the
/// sink. Flushes now get the store's error while it fails.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flush_behind_a_dead_letter_the_store_cannot_keep_fails_instead_of_hanging() {
    let disk = SimDisk::new(13);
    let mut cfg = config(Path::new("/wal"));
    cfg.durability = crate::Durability::Never;
    let (sink, handle, shutdown) = open(&disk, cfg, RejectsAll).await.expect("open");
    // A first record renews the seq lease (an fsync) and is kept as a dead letter.
    sink.push(1).await.expect("push");
    within("first flush", sink.flush())
        .await
        .expect("first flush");
    assert_eq!(sink.stats().dead_lettered, 1);
    // From here on every fsync fails: the store cannot keep the next dead letter.
    disk.fail_sync_after(Some(1));
    sink.push(7).await.expect("push");
    let flushed = within("flush", sink.flush()).await;
    assert!(
        matches!(&flushed, Err(SinkError::Io(e)) if e.to_string().contains("dead letter")),
        "{flushed:?}"
    );
    // Another flush while it still fails: answered too.
    let again = within("second flush", sink.flush()).await;
    assert!(again.is_err(), "{again:?}");
    assert_eq!(sink.stats().dead_lettered, 1);
    wind_down(sink, handle, shutdown).await;
}

/// Never finishes closing.
struct SlowClose;

impl SinkDrain<u64> for SlowClose {
    async fn write_batch(&mut self, _batch: Batch<u64>) -> Result<(), DrainError> {
        Ok(())
    }
    async fn close(&mut self) -> Result<(), DrainError> {
        std::future::pending().await
    }
}

/// Hole: `drain.close()` was awaited without a bound, so a drain that never finished
/// closing hung shutdown forever. It gets what is left of `shutdown_timeout`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drain_close_is_bounded_by_the_shutdown_timeout() {
    let disk = SimDisk::new(11);
    let (sink, handle, shutdown) = open(&disk, config(Path::new("/wal")), SlowClose)
        .await
        .expect("open");
    sink.try_push(1).expect("push");
    within("flush", sink.flush()).await.expect("flush");
    shutdown.cancel();
    let report = within("join", handle.join()).await.expect("join");
    let why = report.drain_close_error.unwrap_or_default();
    assert!(why.contains("timed out"), "{why}");
}
