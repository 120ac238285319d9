//! Records pushed and synced, sink shut down before the drain saw them: a reopen
//! delivers all of them once, in order, and new records continue the seqs.

mod common;

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
