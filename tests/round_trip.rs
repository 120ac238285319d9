//! Records go in, come out of the drain in order with strictly increasing seqs; `flush`
//! cannot resolve before the drain acknowledged; `sync` then reopen finds everything.

mod common;

use std::sync::Arc;

use common::*;
use tokio::sync::{Semaphore, mpsc};
use tokio_util::sync::CancellationToken;
use walsink::DurableSink;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn records_arrive_in_order_with_increasing_seqs() -> Result<(), Box<dyn std::error::Error>> {
    let tmp = tempfile::tempdir()?;
    let log = new_log();
    let shutdown = CancellationToken::new();
    let (sink, handle) = DurableSink::<u64>::open(
        small_config(tmp.path()),
        Collect::new(&log),
        shutdown.clone(),
    )
    .await?;
    for i in 0..1000u64 {
        sink.push(i).await?;
    }
    sink.flush().await?;
    let got = snapshot(&log);
    assert_eq!(got.len(), 1000);
    assert_eq!(
        got.iter().map(|p| p.1).collect::<Vec<_>>(),
        (0..1000).collect::<Vec<_>>()
    );
    assert_seqs_increase(&got);
    assert_eq!(got[0].0, 1, "a fresh WAL starts at seq 1");
    assert_eq!(sink.pending(), 0);
    let stats = sink.stats();
    assert_eq!(stats.pushed, 1000);
    assert_eq!(stats.acked_seq, 1000);
    shutdown.cancel();
    let report = handle.join().await?;
    assert_eq!(report.left_on_disk, 0);
    assert_eq!(report.acked_seq, 1000);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_producers_all_records_arrive_each_producer_in_order()
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
    let mut tasks = Vec::new();
    for p in 0..4u64 {
        let s = sink.clone();
        tasks.push(tokio::spawn(async move {
            for i in 0..500u64 {
                s.push(p * 1_000_000 + i).await?;
            }
            Ok::<_, walsink::SinkError>(())
        }));
    }
    for t in tasks {
        t.await??;
    }
    sink.flush().await?;
    let got = snapshot(&log);
    assert_eq!(got.len(), 2000);
    assert_seqs_increase(&got);
    for p in 0..4u64 {
        let mine: Vec<u64> = got
            .iter()
            .map(|x| x.1)
            .filter(|v| v / 1_000_000 == p)
            .collect();
        assert_eq!(
            mine,
            (0..500).map(|i| p * 1_000_000 + i).collect::<Vec<_>>(),
            "producer {p}"
        );
    }
    shutdown.cancel();
    handle.join().await?;
    Ok(())
}

/// The drain holds the first batch at a gate; `flush` must still be waiting while the
/// drain has the records but has not acknowledged them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn flush_waits_for_the_drain_to_acknowledge() -> Result<(), Box<dyn std::error::Error>> {
    let tmp = tempfile::tempdir()?;
    let log = new_log();
    let gate = Arc::new(Semaphore::new(0));
    let (entered_tx, mut entered) = mpsc::unbounded_channel();
    let drain = Gated {
        log: log.clone(),
        gate: gate.clone(),
        entered: entered_tx,
    };
    let shutdown = CancellationToken::new();
    let (sink, handle) =
        DurableSink::<u64>::open(small_config(tmp.path()), drain, shutdown.clone()).await?;
    for i in 0..10u64 {
        sink.try_push(i)?;
    }
    let s = sink.clone();
    let flush = tokio::spawn(async move { s.flush().await });
    let seqs = entered.recv().await.ok_or("drain never called")?;
    assert!(!seqs.is_empty());
    for _ in 0..100 {
        tokio::task::yield_now().await;
    }
    assert!(
        !flush.is_finished(),
        "flush resolved while the drain still held the batch"
    );
    assert!(log.lock().map_err(|e| e.to_string())?.is_empty());
    gate.add_permits(1_000);
    flush.await??;
    assert_eq!(values(&log), (0..10).collect::<Vec<_>>());
    shutdown.cancel();
    handle.join().await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn flush_on_an_empty_sink_resolves() -> Result<(), Box<dyn std::error::Error>> {
    let tmp = tempfile::tempdir()?;
    let log = new_log();
    let shutdown = CancellationToken::new();
    let (sink, handle) = DurableSink::<u64>::open(
        small_config(tmp.path()),
        Collect::new(&log),
        shutdown.clone(),
    )
    .await?;
    sink.flush().await?;
    sink.flush().await?;
    assert!(snapshot(&log).is_empty());
    shutdown.cancel();
    handle.join().await?;
    Ok(())
}

/// Records synced but never delivered (the drain is stuck) are all there after a
/// reopen, with the same seqs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sync_then_reopen_finds_every_record() -> Result<(), Box<dyn std::error::Error>> {
    let tmp = tempfile::tempdir()?;
    let mut cfg = small_config(tmp.path());
    cfg.shutdown_timeout = std::time::Duration::from_millis(50);
    let shutdown = CancellationToken::new();
    let (sink, handle) = DurableSink::<u64>::open(cfg.clone(), Stuck, shutdown.clone()).await?;
    let mut seqs = Vec::new();
    for i in 0..300u64 {
        if i % 100 == 99 {
            seqs.push(sink.push_durable(i).await?);
        } else {
            sink.push(i).await?;
        }
    }
    sink.sync().await?;
    assert_eq!(sink.stats().synced_seq, 300);
    assert_eq!(seqs, vec![100, 200, 300]);
    shutdown.cancel();
    let report = handle.join().await?;
    assert_eq!(report.acked_seq, 0);
    assert_eq!(report.left_on_disk, 300);

    let log = new_log();
    let shutdown = CancellationToken::new();
    let (sink, handle) =
        DurableSink::<u64>::open(cfg, Collect::new(&log), shutdown.clone()).await?;
    assert_eq!(sink.recovery().acked_seq, 0);
    sink.flush().await?;
    let got = snapshot(&log);
    assert_eq!(
        got.iter().map(|p| p.1).collect::<Vec<_>>(),
        (0..300).collect::<Vec<_>>()
    );
    assert_eq!(
        got.iter().map(|p| p.0).collect::<Vec<_>>(),
        (1..=300).collect::<Vec<_>>()
    );
    assert_eq!(sink.stats().replayed, 300);
    shutdown.cancel();
    handle.join().await?;
    Ok(())
}

/// Records of every size class travel intact: empty, small (copied into the queue's
/// byte arena), just under, at and over the arena limit (4 KiB; larger ones keep their
/// own allocation), through `try_push`, `push` and `push_durable`, with a queue of 2
/// slots and a disk budget of 4 segments for ~7 MB of records, so that `push` often
/// waits and `try_push` is sometimes refused. How often depends on timing; the
/// deterministic version of those paths is `testing::faults::
/// records_held_or_refused_by_a_full_queue_arrive_whole`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn records_of_every_size_class_arrive_intact() -> Result<(), Box<dyn std::error::Error>> {
    let seed = seed_or(0xb17e5);
    let mut rng = Rng(seed);
    let tmp = tempfile::tempdir()?;
    let got = Arc::new(std::sync::Mutex::new(Vec::new()));
    let shutdown = CancellationToken::new();
    let mut cfg = small_config(tmp.path());
    cfg.queue_capacity = 2;
    cfg.max_record_bytes = 100_000;
    cfg.segment_bytes = 256 << 10;
    cfg.max_disk_bytes = 1 << 20;
    let (sink, handle) = DurableSink::<Vec<u8>>::open_with_codec(
        cfg,
        walsink::RawCodec,
        CollectBytes(Arc::clone(&got)),
        shutdown.clone(),
    )
    .await?;
    let sizes = [0usize, 1, 100, 4095, 4096, 4097, 70_000];
    let mut sent = Vec::new();
    let mut refused = 0;
    for i in 0..600u32 {
        let size = sizes[rng.below(sizes.len())];
        let mut record = vec![(i % 251) as u8; size];
        if let Some(first) = record.first_mut() {
            *first = rng.next() as u8;
        }
        match i % 3 {
            0 => match sink.try_push(record.clone()) {
                Ok(()) => sent.push(record),
                Err(walsink::SinkError::Overflow) => refused += 1,
                Err(e) => return Err(format!("seed {seed:#x}: {e}").into()),
            },
            1 => {
                sink.push(record.clone()).await?;
                sent.push(record);
            }
            _ => {
                sink.push_durable(record.clone()).await?;
                sent.push(record);
            }
        }
    }
    sink.flush().await?;
    let got = got.lock().map_err(|e| e.to_string())?.clone();
    assert_eq!(got.len(), sent.len(), "seed {seed:#x}: {refused} refused");
    assert!(got == sent, "seed {seed:#x}: records differ");
    assert_eq!(sink.stats().pushed, sent.len() as u64, "seed {seed:#x}");
    shutdown.cancel();
    handle.join().await?;
    Ok(())
}
