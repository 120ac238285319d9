//! `try_push_batch` and `push_batch`: a batch is accepted whole or not at all
//! (`try_push_batch`), or as a prefix that leaves exactly the rest in the caller's
//! `Vec` (`push_batch`, even when cancelled); accepted records arrive once, in order;
//! the disk budget and the queue bound hold for batches as for single pushes.

mod common;

use std::sync::{Arc, Mutex, OnceLock};

use common::*;
use tokio_util::sync::CancellationToken;
use walsink::{BincodeCodec, Codec, CodecError, DurableSink, Overflow, RawCodec, SinkError};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_batches_each_arrive_whole_in_order_with_consecutive_seqs()
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
    // 3 200 records in all, under the queue bound and the budget: every push_batch
    // finds room for its whole batch, so it too goes in as one run.
    let mut tasks = Vec::new();
    for p in 0..4u64 {
        let s = sink.clone();
        tasks.push(tokio::spawn(async move {
            for b in 0..50u64 {
                let mut batch: Vec<u64> = (0..16).map(|i| p * 1_000_000 + b * 100 + i).collect();
                if b % 2 == 0 {
                    s.push_batch(&mut batch).await?;
                } else {
                    // Drop mode with room to spare: the non-waiting form takes it too.
                    s.try_push_batch(&mut batch)?;
                }
                assert!(batch.is_empty(), "an accepted batch leaves the Vec empty");
            }
            Ok::<_, SinkError>(())
        }));
    }
    for t in tasks {
        t.await??;
    }
    sink.flush().await?;
    let got = snapshot(&log);
    assert_eq!(got.len(), 4 * 50 * 16);
    assert_seqs_increase(&got);
    // Each batch was queued in one critical section: 16 consecutive seqs, in order.
    for run in got.chunks(16) {
        let first = run[0];
        for (i, r) in run.iter().enumerate() {
            assert_eq!(
                (r.0, r.1),
                (first.0 + i as u64, first.1 + i as u64),
                "batch starting {first:?} split or reordered"
            );
        }
    }
    assert_eq!(sink.stats().pushed, 3200);
    shutdown.cancel();
    assert_eq!(handle.join().await?.left_on_disk, 0);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn try_push_batch_is_all_or_nothing_against_the_disk_budget()
-> Result<(), Box<dyn std::error::Error>> {
    let tmp = tempfile::tempdir()?;
    let cfg = budget_config(tmp.path());
    let (limit, segment) = (cfg.max_disk_bytes, cfg.segment_bytes);
    let log = new_log();
    let (drain, gate) = Gated::closed(&log);
    let shutdown = CancellationToken::new();
    let (sink, handle) = DurableSink::<u64>::open(cfg, drain, shutdown.clone()).await?;

    let mut accepted: Vec<u64> = Vec::new();
    let (mut refused_batches, mut refused_records) = (0u64, 0u64);
    for b in 0..200u64 {
        let mut batch: Vec<u64> = (b * 7..b * 7 + 7).collect();
        let before = batch.clone();
        match sink.try_push_batch(&mut batch) {
            Ok(()) => {
                assert!(batch.is_empty());
                accepted.extend(before);
            }
            Err(SinkError::Overflow) => {
                assert_eq!(batch, before, "a refused batch is left as it was");
                refused_batches += 1;
                refused_records += 7;
            }
            Err(e) => return Err(e.into()),
        }
        sink.sync().await?;
        let on_disk = segment_bytes_on_disk(tmp.path());
        assert!(
            on_disk <= limit + segment,
            "{on_disk} bytes on disk, budget {limit} + one segment {segment}"
        );
    }
    assert!(refused_batches > 0, "the budget never filled");
    assert_eq!(
        sink.dropped(),
        refused_records,
        "every refused record counted"
    );
    assert_eq!(sink.stats().pushed, accepted.len() as u64);

    gate.add_permits(1 << 20);
    sink.flush().await?;
    assert_eq!(
        values(&log),
        accepted,
        "exactly the accepted batches, whole, in order"
    );
    shutdown.cancel();
    handle.join().await?;
    Ok(())
}

/// Bytes a u64 record takes in the budget: a 16-byte frame header plus bincode's
/// varint (1 byte below 251, 3 up to 65 535).
fn frame_bytes(values: &[u64]) -> u64 {
    values
        .iter()
        .map(|&v| 16 + if v < 251 { 1 } else { 3 })
        .sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_over_the_queue_bound_is_refused_whole_and_push_batch_takes_it_in_parts()
-> Result<(), Box<dyn std::error::Error>> {
    let tmp = tempfile::tempdir()?;
    let mut cfg = small_config(tmp.path());
    cfg.queue_capacity = 8;
    let log = new_log();
    // The drain holds everything until the end: no segment is deleted, so the budget
    // accounting can be checked exactly.
    let (drain, gate) = Gated::closed(&log);
    let shutdown = CancellationToken::new();
    let (sink, handle) = DurableSink::<u64>::open(cfg, drain, shutdown.clone()).await?;
    let header = sink.stats().wal_bytes;

    let mut too_many: Vec<u64> = (0..9).collect();
    assert!(matches!(
        sink.try_push_batch(&mut too_many),
        Err(SinkError::Overflow)
    ));
    assert_eq!(too_many.len(), 9);
    assert_eq!(sink.dropped(), 9);
    assert_eq!(
        sink.stats().wal_bytes,
        header,
        "the budget of a refused batch is given back"
    );
    let mut empty: Vec<u64> = Vec::new();
    sink.try_push_batch(&mut empty)?;
    sink.push_batch(&mut empty).await?;

    // 1 000 records through a queue of 8: runs cut by the queue's room, each giving
    // back the budget of the records it reserved and could not queue.
    let all: Vec<u64> = (100..1100).collect();
    let mut big = all.clone();
    sink.push_batch(&mut big).await?;
    assert!(big.is_empty());
    sink.sync().await?;
    let s = sink.stats();
    assert_eq!(s.wal_bytes, frame_bytes(&all) + s.wal_segments * header);
    gate.add_permits(1 << 20);
    sink.flush().await?;
    assert_eq!(values(&log), all);
    shutdown.cancel();
    handle.join().await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_oversized_record_refuses_the_whole_batch() -> Result<(), Box<dyn std::error::Error>> {
    let tmp = tempfile::tempdir()?;
    let cfg = small_config(tmp.path());
    let limit = cfg.max_record_bytes;
    let got = Arc::new(Mutex::new(Vec::new()));
    let shutdown = CancellationToken::new();
    let (sink, handle) = DurableSink::<Vec<u8>>::open_with_codec(
        cfg,
        RawCodec,
        CollectBytes(got.clone()),
        shutdown.clone(),
    )
    .await?;
    let batch = vec![vec![1u8; 10], vec![2u8; limit + 1], vec![3u8; 10]];
    let mut a = batch.clone();
    let err = sink.try_push_batch(&mut a).err();
    assert_eq!(
        err,
        Some(SinkError::TooLarge {
            len: limit + 1,
            limit
        })
    );
    let mut b = batch.clone();
    let err = sink.push_batch(&mut b).await.err();
    assert!(matches!(err, Some(SinkError::TooLarge { .. })));
    assert_eq!((a, b), (batch.clone(), batch));
    assert_eq!(
        sink.stats().pushed,
        0,
        "nothing of either batch was accepted"
    );
    assert_eq!(sink.dropped(), 0, "a refused record is not a drop");
    // Large records (moved rather than copied into the queue) go through a batch too.
    let mut ok = vec![vec![7u8; limit], vec![8u8; 1]];
    sink.push_batch(&mut ok).await?;
    sink.flush().await?;
    let delivered = got.lock().map_err(|e| e.to_string())?.clone();
    assert_eq!(delivered, vec![vec![7u8; limit], vec![8u8; 1]]);
    shutdown.cancel();
    handle.join().await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancelled_push_batch_leaves_exactly_the_records_it_did_not_accept()
-> Result<(), Box<dyn std::error::Error>> {
    let tmp = tempfile::tempdir()?;
    let mut cfg = budget_config(tmp.path());
    cfg.overflow = Overflow::Block;
    let limit = cfg.max_disk_bytes;
    let log = new_log();
    let (drain, gate) = Gated::closed(&log);
    let shutdown = CancellationToken::new();
    let (sink, handle) = DurableSink::<u64>::open(cfg, drain, shutdown.clone()).await?;
    let mut none: Vec<u64> = vec![1];
    assert!(matches!(
        sink.try_push_batch(&mut none),
        Err(SinkError::Overflow)
    ));
    assert_eq!(sink.dropped(), 0, "refused in Block mode is not a drop");

    // A fresh sink accounts one segment header and nothing else.
    let header = sink.stats().wal_bytes;
    assert_eq!(sink.stats().wal_segments, 1);
    let all: Vec<u64> = (0..5_000).collect();
    let mut records = all.clone();
    {
        let push = sink.push_batch(&mut records);
        tokio::pin!(push);
        // Poll the push until the budget is exhausted and it waits for room.
        loop {
            tokio::select! {
                biased;
                res = &mut push => panic!("push_batch finished without hitting the budget: {res:?}"),
                () = tokio::task::yield_now() => {}
            }
            if sink.stats().wal_bytes + 64 > limit {
                break;
            }
        }
        for _ in 0..100 {
            tokio::select! {
                biased;
                res = &mut push => panic!("push_batch did not wait for room: {res:?}"),
                () = tokio::task::yield_now() => {}
            }
        }
        // Dropped here, while waiting: cancelled.
    }
    let accepted = all.len() - records.len();
    assert!(accepted > 0 && !records.is_empty(), "accepted {accepted}");
    assert_eq!(
        records,
        all[accepted..].to_vec(),
        "the Vec holds the unaccepted suffix"
    );
    assert_eq!(sink.stats().pushed, accepted as u64);
    // The budget holds exactly the accepted frames and the segment headers: nothing
    // reserved for a record left in the Vec stays reserved.
    sink.sync().await?;
    let s = sink.stats();
    assert_eq!(
        s.wal_bytes,
        frame_bytes(&all[..accepted]) + s.wal_segments * header
    );

    gate.add_permits(1 << 20);
    sink.flush().await?;
    assert_eq!(values(&log), all[..accepted].to_vec());
    // The rest goes in after the cancellation, and the budget given back lets it.
    sink.push_batch(&mut records).await?;
    sink.flush().await?;
    assert_eq!(values(&log), all);
    shutdown.cancel();
    handle.join().await?;
    Ok(())
}

/// Bincode, except that 13 cannot be encoded and encoding 7 first pushes 1 000 through
/// the sink it belongs to (a codec that pushes from inside `encode`).
struct Picky(Arc<OnceLock<DurableSink<u64>>>);

impl Codec<u64> for Picky {
    fn id(&self) -> u32 {
        Codec::<u64>::id(&BincodeCodec)
    }
    fn encode(&self, value: &u64, out: &mut Vec<u8>) -> Result<(), CodecError> {
        if *value == 13 {
            return Err(CodecError::new("13 cannot be encoded"));
        }
        if *value == 7
            && let Some(sink) = self.0.get()
        {
            sink.try_push_batch(&mut vec![1_000])
                .map_err(|e| CodecError::new(e.to_string()))?;
        }
        BincodeCodec.encode(value, out)
    }
    fn decode(&self, bytes: &[u8]) -> Result<u64, CodecError> {
        BincodeCodec.decode(bytes)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_encode_error_refuses_the_whole_batch_and_a_codec_may_push_while_encoding()
-> Result<(), Box<dyn std::error::Error>> {
    let tmp = tempfile::tempdir()?;
    let log = new_log();
    let shutdown = CancellationToken::new();
    let cell = Arc::new(OnceLock::new());
    let (sink, handle) = DurableSink::<u64>::open_with_codec(
        small_config(tmp.path()),
        Picky(cell.clone()),
        Collect::new(&log),
        shutdown.clone(),
    )
    .await?;
    let _ = cell.set(sink.clone());
    let mut bad: Vec<u64> = vec![11, 12, 13, 14];
    assert!(matches!(
        sink.try_push_batch(&mut bad),
        Err(SinkError::Encode(_))
    ));
    assert!(matches!(
        sink.push_batch(&mut bad).await,
        Err(SinkError::Encode(_))
    ));
    assert_eq!(bad, vec![11, 12, 13, 14], "nothing of the batch accepted");
    assert_eq!(sink.stats().pushed, 0);
    // Encoding 7 pushes 1 000 from inside the codec, while this thread's batch
    // buffers are in use: it goes in first, and both batches arrive whole.
    let mut outer: Vec<u64> = vec![5, 6, 7, 8];
    sink.try_push_batch(&mut outer)?;
    let mut again: Vec<u64> = vec![7, 9];
    sink.push_batch(&mut again).await?;
    sink.flush().await?;
    assert_eq!(values(&log), vec![1_000, 5, 6, 7, 8, 1_000, 7, 9]);
    shutdown.cancel();
    handle.join().await?;
    Ok(())
}
