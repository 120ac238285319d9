//! Many small segments: everything acknowledged, old files gone, cursor past them, and
//! a reopen delivers nothing twice.

mod common;

use common::*;
use tokio_util::sync::CancellationToken;
use walsink::DurableSink;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledged_segments_are_deleted_and_not_replayed()
-> Result<(), Box<dyn std::error::Error>> {
    let tmp = tempfile::tempdir()?;
    let log = new_log();
    let shutdown = CancellationToken::new();
    let (sink, handle) = DurableSink::<u64>::open(
        small_config(tmp.path()),
        Collect::new(&log),
        shutdown.clone(),
    )
    .await?;
    let mut max_segments = 0;
    for i in 0..5_000u64 {
        sink.push(i).await?;
        if i % 250 == 0 {
            sink.sync().await?;
            max_segments = max_segments.max(segment_files(tmp.path()).len());
        }
    }
    sink.flush().await?;
    // ~12 bytes a record with 4 KiB segments: dozens of segments were written.
    assert!(sink.stats().written_seq == 5_000);
    let left = segment_files(tmp.path());
    assert!(
        left.len() <= 2,
        "acknowledged segments left behind: {left:?}"
    );
    assert_eq!(sink.stats().acked_seq, 5_000);
    assert_eq!(sink.stats().wal_segments, left.len() as u64);
    shutdown.cancel();
    let report = handle.join().await?;
    assert_eq!(report.acked_seq, 5_000);
    assert_eq!(values(&log), (0..5_000).collect::<Vec<_>>());

    let log2 = new_log();
    let shutdown = CancellationToken::new();
    let (sink, handle) = DurableSink::<u64>::open(
        small_config(tmp.path()),
        Collect::new(&log2),
        shutdown.clone(),
    )
    .await?;
    assert_eq!(sink.recovery().acked_seq, 5_000);
    sink.flush().await?;
    assert!(
        snapshot(&log2).is_empty(),
        "records delivered twice after a clean restart"
    );
    shutdown.cancel();
    handle.join().await?;
    Ok(())
}

/// A record larger than `segment_bytes` gets a segment of its own.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_record_larger_than_a_segment_gets_its_own() -> Result<(), Box<dyn std::error::Error>> {
    let tmp = tempfile::tempdir()?;
    let mut cfg = small_config(tmp.path());
    cfg.max_record_bytes = 20_000;
    cfg.max_disk_bytes = 1 << 20;
    let got = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let shutdown = CancellationToken::new();
    let (sink, handle) = DurableSink::<Vec<u8>>::open_with_codec(
        cfg,
        walsink::RawCodec,
        CollectBytes(got.clone()),
        shutdown.clone(),
    )
    .await?;
    sink.push(vec![1u8; 10]).await?;
    sink.push(vec![2u8; 10_000]).await?;
    sink.push(vec![3u8; 10]).await?;
    sink.sync().await?;
    sink.flush().await?;
    let lens: Vec<usize> = got
        .lock()
        .map_err(|e| e.to_string())?
        .iter()
        .map(Vec::len)
        .collect();
    assert_eq!(lens, vec![10, 10_000, 10]);
    shutdown.cancel();
    handle.join().await?;
    Ok(())
}
