//! Retryable errors deliver the same records again, in order, with no gap; a permanent
//! error is bisected down to the single poison record, and the rest is delivered.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use common::*;
use tokio_util::sync::CancellationToken;
use walsink::DurableSink;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retryable_errors_redeliver_every_record_in_order() -> Result<(), Box<dyn std::error::Error>>
{
    let tmp = tempfile::tempdir()?;
    let log = new_log();
    let calls = Arc::new(AtomicUsize::new(0));
    let drain = FlakyThenOk {
        log: log.clone(),
        calls: calls.clone(),
        fail_first: 7,
    };
    let shutdown = CancellationToken::new();
    let (sink, handle) =
        DurableSink::<u64>::open(small_config(tmp.path()), drain, shutdown.clone()).await?;
    for i in 0..500u64 {
        sink.push(i).await?;
    }
    sink.flush().await?;
    let got = snapshot(&log);
    assert_eq!(
        got.iter().map(|p| p.1).collect::<Vec<_>>(),
        (0..500).collect::<Vec<_>>()
    );
    assert_eq!(
        got.iter().map(|p| p.0).collect::<Vec<_>>(),
        (1..=500).collect::<Vec<_>>()
    );
    let stats = sink.stats();
    assert_eq!(stats.retries, 7);
    assert_eq!(stats.write_errors, 7);
    assert!(calls.load(Ordering::SeqCst) >= 8);
    shutdown.cancel();
    handle.join().await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_poison_record_among_1000_is_isolated() -> Result<(), Box<dyn std::error::Error>> {
    let tmp = tempfile::tempdir()?;
    let log = new_log();
    let calls = Arc::new(AtomicUsize::new(0));
    let drain = Poisoned {
        log: log.clone(),
        poison: 500,
        calls: calls.clone(),
    };
    let mut cfg = small_config(tmp.path());
    cfg.batch_size = 256;
    let shutdown = CancellationToken::new();
    let (sink, handle) = DurableSink::<u64>::open(cfg, drain, shutdown.clone()).await?;
    for i in 0..1000u64 {
        sink.push(i).await?;
    }
    sink.flush().await?;
    let got = snapshot(&log);
    let expect: Vec<u64> = (0..1000).filter(|&v| v != 500).collect();
    assert_eq!(got.iter().map(|p| p.1).collect::<Vec<_>>(), expect);
    assert_seqs_increase(&got);
    let stats = sink.stats();
    assert_eq!(stats.rejected, 1);
    assert_eq!(
        stats.acked_seq, 1000,
        "the poison record is handled, not blocking the cursor"
    );
    // Bisection of one batch of at most 256 records takes at most 2*log2(256)+1 calls
    // beyond the batches themselves.
    assert!(
        calls.load(Ordering::SeqCst) <= 4 + 2 * 8 + 1,
        "calls = {}",
        calls.load(Ordering::SeqCst)
    );
    shutdown.cancel();
    handle.join().await?;
    Ok(())
}
