//! Guarantee 10: one record pushed into an idle sink reaches the drain within
//! `flush_interval` plus scheduling noise. The delivery task has no periodic tick: it
//! sleeps on the writer's notification, so a lost wake-up would leave the record
//! undelivered forever, and the bound below (50 × the interval, far above any
//! scheduling noise) would fail. Repeated to give a wake-up race many chances.

mod common;

use std::time::{Duration, Instant};

use common::*;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use walsink::DurableSink;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_single_record_into_an_idle_sink_is_delivered() -> Result<(), Box<dyn std::error::Error>>
{
    let tmp = tempfile::tempdir()?;
    let mut cfg = small_config(tmp.path());
    let interval = Duration::from_millis(10);
    cfg.flush_interval = interval;
    let log = new_log();
    let (tx, mut batches) = mpsc::unbounded_channel();
    let drain = Collect {
        log: log.clone(),
        batches: Some(tx),
    };
    let shutdown = CancellationToken::new();
    let (sink, handle) = DurableSink::<u64>::open(cfg, drain, shutdown.clone()).await?;
    let bound = interval * 50;
    for i in 0..30u64 {
        let start = Instant::now();
        sink.try_push(i)?;
        let n = tokio::time::timeout(bound, batches.recv())
            .await
            .map_err(|_| format!("record {i} not delivered within {bound:?}: lost wake-up"))?
            .ok_or("drain gone")?;
        assert_eq!(n, 1);
        let waited = start.elapsed();
        assert!(waited < bound, "record {i} took {waited:?}");
    }
    assert_eq!(values(&log), (0..30).collect::<Vec<_>>());
    shutdown.cancel();
    handle.join().await?;
    Ok(())
}

/// A sink that delivers only full batches of 10 (its interval is an hour), with a
/// drain that logs the records and reports each batch's size.
async fn open_batching(
    dir: &std::path::Path,
) -> Result<
    (
        DurableSink<u64>,
        walsink::SinkHandle,
        CancellationToken,
        Log,
        mpsc::UnboundedReceiver<usize>,
    ),
    Box<dyn std::error::Error>,
> {
    let mut cfg = small_config(dir);
    cfg.flush_interval = Duration::from_secs(3600);
    cfg.batch_size = 10;
    let log = new_log();
    let (tx, batches) = mpsc::unbounded_channel();
    let drain = Collect {
        log: log.clone(),
        batches: Some(tx),
    };
    let shutdown = CancellationToken::new();
    let (sink, handle) = DurableSink::<u64>::open(cfg, drain, shutdown.clone()).await?;
    Ok((sink, handle, shutdown, log, batches))
}

/// A partial batch is held for the interval (batching works), not delivered record by
/// record: ten quick pushes arrive as fewer than ten batches.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn records_pushed_together_are_batched() -> Result<(), Box<dyn std::error::Error>> {
    let tmp = tempfile::tempdir()?;
    let (sink, handle, shutdown, log, mut batches) = open_batching(tmp.path()).await?;
    for i in 0..10u64 {
        sink.try_push(i)?;
    }
    // A full batch is delivered without waiting for the (hour-long) interval.
    let mut total = 0;
    while total < 10 {
        total += batches.recv().await.ok_or("drain gone")?;
    }
    assert_eq!(values(&log), (0..10).collect::<Vec<_>>());
    shutdown.cancel();
    handle.join().await?;
    Ok(())
}

/// The delivery task asks the writer to wake it only when the backlog reaches
/// `batch_size` (it sleeps on an hour-long deadline otherwise). Batch after batch, with
/// the records of each written in separate rounds, each full batch must still be
/// delivered: a missed threshold would hang here until the timeout names it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_full_batch_wakes_delivery_without_the_deadline()
-> Result<(), Box<dyn std::error::Error>> {
    let tmp = tempfile::tempdir()?;
    let (sink, handle, shutdown, log, mut batches) = open_batching(tmp.path()).await?;
    for batch in 0..20u64 {
        for i in 0..10u64 {
            sink.try_push(batch * 10 + i)?;
            // Another round for the writer, most of the time.
            tokio::task::yield_now().await;
        }
        let mut total = 0;
        while total < 10 {
            total += tokio::time::timeout(Duration::from_secs(60), batches.recv())
                .await
                .map_err(|_| format!("batch {batch} never delivered: lost wake-up"))?
                .ok_or("drain gone")?;
        }
        assert_eq!(total, 10, "batch {batch}");
    }
    assert_eq!(values(&log), (0..200).collect::<Vec<_>>());
    shutdown.cancel();
    handle.join().await?;
    Ok(())
}
