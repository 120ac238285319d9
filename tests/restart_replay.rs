//! Records pushed and synced, sink shut down before the drain saw them: a reopen
//! delivers all of them once, in order, and new records continue the seqs.

mod common;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::*;
use tokio_util::sync::CancellationToken;
use walsink::DurableSink;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reopen_replays_undelivered_records_once_and_seqs_continue()
-> Result<(), Box<dyn std::error::Error>> {
    let tmp = tempfile::tempdir()?;
    let mut cfg = small_config(tmp.path());
    cfg.shutdown_timeout = Duration::from_millis(20);

    // Run 1: the drain never acknowledges.
    let shutdown = CancellationToken::new();
    let (sink, handle) = DurableSink::<u64>::open(cfg.clone(), Stuck, shutdown.clone()).await?;
    for i in 0..2000u64 {
        sink.push(i).await?;
    }
    sink.sync().await?;
    shutdown.cancel();
    handle.join().await?;
    assert!(
        segment_files(tmp.path()).len() > 1,
        "test wants several segments"
    );

    // Run 2: everything is replayed, once, in order; new records get higher seqs.
    let log = new_log();
    let shutdown = CancellationToken::new();
    let (sink, handle) =
        DurableSink::<u64>::open(cfg.clone(), Collect::new(&log), shutdown.clone()).await?;
    assert_eq!(
        sink.recovery().next_seq,
        2001,
        "a clean shutdown leaves no seq gap"
    );
    for i in 2000..2100u64 {
        sink.push(i).await?;
    }
    sink.flush().await?;
    let got = snapshot(&log);
    assert_eq!(
        got.iter().map(|p| p.1).collect::<Vec<_>>(),
        (0..2100).collect::<Vec<_>>()
    );
    assert_eq!(
        got.iter().map(|p| p.0).collect::<Vec<_>>(),
        (1..=2100).collect::<Vec<_>>()
    );
    assert_eq!(sink.stats().replayed, 2000);
    shutdown.cancel();
    handle.join().await?;

    // Run 3: nothing left, nothing delivered twice; seqs still continue.
    let log3 = new_log();
    let shutdown = CancellationToken::new();
    let (sink, handle) =
        DurableSink::<u64>::open(cfg, Collect::new(&log3), shutdown.clone()).await?;
    sink.flush().await?;
    assert!(snapshot(&log3).is_empty());
    let seq = sink.push_durable(7).await?;
    assert_eq!(seq, 2101);
    shutdown.cancel();
    handle.join().await?;
    Ok(())
}

/// Dropping every sink clone (without cancelling) also shuts down gracefully.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropping_all_handles_shuts_down_and_delivers() -> Result<(), Box<dyn std::error::Error>> {
    let tmp = tempfile::tempdir()?;
    let log = new_log();
    let (sink, handle) = DurableSink::<u64>::open(
        small_config(tmp.path()),
        Collect::new(&log),
        CancellationToken::new(),
    )
    .await?;
    for i in 0..100u64 {
        sink.try_push(i)?;
    }
    let clone = sink.clone();
    drop(sink);
    drop(clone);
    let report = handle.join().await?;
    assert_eq!(report.left_on_disk, 0);
    assert_eq!(values(&log), (0..100).collect::<Vec<_>>());
    Ok(())
}

/// Regression (cold review): `max_record_bytes` limits new records only. Lowered
/// between runs, it took the larger records already synced for damage: the last one
/// was truncated as a torn tail, the others skipped and counted corrupt, with no
/// dead letter. Both cases here: a large record with smaller ones after it (skipped
/// before), and a large record last in the WAL (truncated before).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn records_larger_than_a_lowered_max_record_bytes_are_still_delivered()
-> Result<(), Box<dyn std::error::Error>> {
    for large_last in [false, true] {
        let tmp = tempfile::tempdir()?;
        let mut cfg = small_config(tmp.path());
        cfg.shutdown_timeout = Duration::from_millis(20);
        cfg.max_record_bytes = 64 << 10;
        let big = |i: u8| vec![i; 32 << 10];
        let mut pushed = vec![b"small 1".to_vec(), big(1)];
        if !large_last {
            pushed.extend([b"small 2".to_vec(), big(2), b"small 3".to_vec()]);
        }

        // Run 1: every record synced, none delivered.
        let shutdown = CancellationToken::new();
        let (sink, handle) =
            DurableSink::<Vec<u8>>::open(cfg.clone(), Stuck, shutdown.clone()).await?;
        for r in &pushed {
            sink.push_durable(r.clone()).await?;
        }
        shutdown.cancel();
        handle.join().await?;

        // Run 2: a limit below the large records. Nothing is damage; all are delivered.
        cfg.max_record_bytes = 16 << 10;
        let got = Arc::new(Mutex::new(Vec::new()));
        let shutdown = CancellationToken::new();
        let (sink, handle) = DurableSink::<Vec<u8>>::open(
            cfg.clone(),
            CollectBytes(Arc::clone(&got)),
            shutdown.clone(),
        )
        .await?;
        let report = sink.recovery().clone();
        assert_eq!(
            report.truncated_bytes, 0,
            "large_last {large_last}: {report:?}"
        );
        assert!(
            report.quarantined.is_empty(),
            "large_last {large_last}: {report:?}"
        );
        sink.flush().await?;
        // (length, first byte) of each record: a failure prints a short line.
        let shape = |v: &[Vec<u8>]| v.iter().map(|r| (r.len(), r[0])).collect::<Vec<_>>();
        let got = got.lock().map_err(|e| e.to_string())?.clone();
        assert_eq!(shape(&got), shape(&pushed), "large_last {large_last}");
        assert_eq!(
            got, pushed,
            "large_last {large_last}: same shapes, other bytes"
        );
        assert_eq!(sink.stats().corrupt_records, 0, "large_last {large_last}");
        // The lowered limit holds for new records.
        assert!(sink.try_push(big(3)).is_err(), "large_last {large_last}");
        shutdown.cancel();
        handle.join().await?;
    }
    Ok(())
}
