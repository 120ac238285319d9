//! Dead letters: a record the drain rejects permanently, or one that no longer
//! decodes, is kept with its context in `DIR/dead-letters/`, readable while the sink
//! runs and offline, purgeable, and redrivable back into the WAL (through the running
//! sink, or offline).

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use common::*;
use tokio_util::sync::CancellationToken;
use walsink::{
    Batch, Codec, CodecError, DeadLetterError, DeadLetterPolicy, DeadLetterReason, DeadLetterStore,
    DrainError, DurableSink, Selection, SinkDrain,
};

/// Rejects permanently every batch holding a value in `poison` while `strict` is set;
/// collects the others.
struct Strict {
    log: Log,
    poison: Vec<u64>,
    strict: Arc<AtomicBool>,
    calls: Arc<AtomicUsize>,
}

impl SinkDrain<u64> for Strict {
    async fn write_batch(&mut self, batch: Batch<u64>) -> Result<(), DrainError> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        if self.strict.load(Ordering::SeqCst)
            && let Some((_, v)) = batch.iter().find(|(_, v)| self.poison.contains(v))
        {
            let cause = std::io::Error::other(format!("schema check failed for {v}"));
            return Err(DrainError::permanent(cause));
        }
        self.log.lock().expect("log").extend(batch.into_pairs());
        Ok(())
    }
}

fn strict(log: &Log, poison: Vec<u64>) -> (Strict, Arc<AtomicBool>) {
    let flag = Arc::new(AtomicBool::new(true));
    (
        Strict {
            log: Arc::clone(log),
            poison,
            strict: Arc::clone(&flag),
            calls: Arc::new(AtomicUsize::new(0)),
        },
        flag,
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_poison_record_is_kept_with_its_context_and_its_neighbours_are_delivered()
-> Result<(), Box<dyn std::error::Error>> {
    let tmp = tempfile::tempdir()?;
    let log = new_log();
    let (drain, _) = strict(&log, vec![42]);
    let (sink, handle) =
        DurableSink::<u64>::open(small_config(tmp.path()), drain, CancellationToken::new()).await?;
    for v in 0..100u64 {
        sink.push(v).await?;
    }
    sink.flush().await?;
    let delivered = values(&log);
    assert_eq!(delivered, (0..100).filter(|&v| v != 42).collect::<Vec<_>>());

    let store = sink.dead_letters();
    assert_eq!(store.count().await?, 1);
    let dl = store.list(0, 10).await?;
    assert_eq!(dl.len(), 1);
    let d = &dl[0];
    assert_eq!(d.seq(), 43, "seqs start at 1");
    assert_eq!(d.reason(), DeadLetterReason::Rejected);
    assert!(
        d.error().contains("schema check failed for 42"),
        "{}",
        d.error()
    );
    assert!(
        d.attempts() >= 2,
        "bisection calls included it: {}",
        d.attempts()
    );
    assert!(d.first_failed_at() <= d.dead_lettered_at());
    assert_eq!(d.decode::<u64>()?, 42);
    assert_eq!(store.get(43).await?.as_ref(), Some(d));
    assert_eq!(store.get(44).await?, None);
    let stats = sink.stats();
    assert_eq!((stats.rejected, stats.dead_lettered), (1, 1));
    assert!(stats.dead_letter_bytes > 0);
    drop(sink);
    handle.join().await?;

    // Offline, after the sink is gone: the same dead letter.
    let offline = DeadLetterStore::open(tmp.path()).await?;
    assert_eq!(offline.list(0, 10).await?, dl);
    Ok(())
}

/// u64 as 8 little-endian bytes; 13 encodes but never decodes.
struct Unlucky;

impl Codec<u64> for Unlucky {
    fn id(&self) -> u32 {
        77
    }
    fn encode(&self, value: &u64, out: &mut Vec<u8>) -> Result<(), CodecError> {
        out.extend_from_slice(&value.to_le_bytes());
        Ok(())
    }
    fn decode(&self, bytes: &[u8]) -> Result<u64, CodecError> {
        let b: [u8; 8] = bytes.try_into().map_err(CodecError::new)?;
        match u64::from_le_bytes(b) {
            13 => Err(CodecError::new("13 is unlucky")),
            v => Ok(v),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_undecodable_record_is_kept_and_decodes_with_the_sinks_codec_once_fixed()
-> Result<(), Box<dyn std::error::Error>> {
    let tmp = tempfile::tempdir()?;
    let log = new_log();
    let (sink, handle) = DurableSink::open_with_codec(
        small_config(tmp.path()),
        Unlucky,
        Collect::new(&log),
        CancellationToken::new(),
    )
    .await?;
    for v in 10..16u64 {
        sink.push(v).await?;
    }
    sink.flush().await?;
    assert_eq!(values(&log), vec![10, 11, 12, 14, 15]);
    let dl = sink.dead_letters().list(0, 10).await?;
    assert_eq!(dl.len(), 1);
    assert_eq!(dl[0].reason(), DeadLetterReason::Undecodable);
    assert_eq!(dl[0].attempts(), 0);
    assert!(dl[0].error().contains("unlucky"));
    assert_eq!(dl[0].codec_id(), 77);
    assert_eq!(dl[0].payload(), 13u64.to_le_bytes());
    assert!(dl[0].decode::<u64>().is_err(), "not a built-in codec");
    assert!(dl[0].decode_with(&Unlucky).is_err());
    assert_eq!(sink.stats().corrupt_records, 1);
    drop(sink);
    handle.join().await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redrive_through_the_running_sink_delivers_again_and_empties_the_store()
-> Result<(), Box<dyn std::error::Error>> {
    let tmp = tempfile::tempdir()?;
    let log = new_log();
    let (drain, strict_flag) = strict(&log, vec![3, 7]);
    let (sink, handle) =
        DurableSink::<u64>::open(small_config(tmp.path()), drain, CancellationToken::new()).await?;
    for v in 0..10u64 {
        sink.push(v).await?;
    }
    sink.flush().await?;
    let store = sink.dead_letters();
    assert_eq!(store.count().await?, 2);
    // The cause is fixed: the drain accepts them now.
    strict_flag.store(false, Ordering::SeqCst);
    let moved = store.redrive(Selection::All).await?;
    assert_eq!(moved.iter().map(|m| m.0).collect::<Vec<_>>(), vec![4, 8]);
    assert!(
        moved.iter().all(|&(_, new)| new > 10),
        "new seqs: {moved:?}"
    );
    sink.flush().await?;
    let mut delivered = values(&log);
    delivered.sort_unstable();
    assert_eq!(delivered, (0..10).collect::<Vec<_>>());
    assert_eq!(store.count().await?, 0);
    assert_eq!(sink.stats().redriven, 2);
    drop(sink);
    handle.join().await?;
    // Closed: a change through the finished sink's store is refused.
    assert!(matches!(
        store.purge(Selection::All).await,
        Err(DeadLetterError::Closed)
    ));
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn offline_reads_work_while_locked_changes_wait_for_the_lock_then_redrive_offline()
-> Result<(), Box<dyn std::error::Error>> {
    let tmp = tempfile::tempdir()?;
    let log = new_log();
    let (drain, _) = strict(&log, vec![1, 2, 5]);
    let (sink, handle) =
        DurableSink::<u64>::open(small_config(tmp.path()), drain, CancellationToken::new()).await?;
    for v in 0..8u64 {
        sink.push(v).await?;
    }
    sink.flush().await?;
    let offline = DeadLetterStore::open(tmp.path()).await?;
    assert_eq!(
        offline.count().await?,
        3,
        "reading works while the sink runs"
    );
    assert!(matches!(
        offline.purge(Selection::Seqs(vec![2])).await,
        Err(DeadLetterError::Locked { .. })
    ));
    assert!(matches!(
        offline.redrive(Selection::All).await,
        Err(DeadLetterError::Locked { .. })
    ));
    drop(sink);
    handle.join().await?;

    assert_eq!(offline.purge(Selection::Seqs(vec![3, 999])).await?, 1);
    let moved = offline.redrive(Selection::Seqs(vec![2])).await?;
    assert_eq!(moved.len(), 1);
    assert_eq!(
        offline
            .list(0, 10)
            .await?
            .iter()
            .map(|d| d.seq())
            .collect::<Vec<_>>(),
        vec![6]
    );

    // The next sink delivers the redriven record (to a drain that accepts it).
    let log2 = new_log();
    let (sink, handle) = DurableSink::<u64>::open(
        small_config(tmp.path()),
        Collect::new(&log2),
        CancellationToken::new(),
    )
    .await?;
    sink.flush().await?;
    assert_eq!(values(&log2), vec![1]);
    assert_eq!(snapshot(&log2)[0].0, moved[0].1);
    drop(sink);
    handle.join().await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_store_refuses_without_stalling_delivery_and_discard_keeps_nothing()
-> Result<(), Box<dyn std::error::Error>> {
    let tmp = tempfile::tempdir()?;
    let log = new_log();
    let (drain, _) = strict(&log, vec![2, 4, 6]);
    let mut cfg = small_config(tmp.path());
    // Room for the file header and one entry, not two.
    cfg.max_dead_letter_bytes = 40 + 140;
    let (sink, handle) = DurableSink::<u64>::open(cfg, drain, CancellationToken::new()).await?;
    for v in 0..8u64 {
        sink.push(v).await?;
    }
    sink.flush().await?;
    assert_eq!(values(&log), vec![0, 1, 3, 5, 7]);
    let stats = sink.stats();
    assert_eq!((stats.dead_lettered, stats.dead_letters_refused), (1, 2));
    assert_eq!(sink.dead_letters().count().await?, 1);
    drop(sink);
    handle.join().await?;

    let tmp = tempfile::tempdir()?;
    let log = new_log();
    let (drain, _) = strict(&log, vec![2]);
    let mut cfg = small_config(tmp.path());
    cfg.dead_letters = DeadLetterPolicy::Discard;
    let (sink, handle) = DurableSink::<u64>::open(cfg, drain, CancellationToken::new()).await?;
    for v in 0..4u64 {
        sink.push(v).await?;
    }
    sink.flush().await?;
    assert_eq!(values(&log), vec![0, 1, 3]);
    assert_eq!(sink.dead_letters().count().await?, 0);
    assert_eq!(sink.stats().rejected, 1);
    drop(sink);
    handle.join().await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redrive_the_drain_rejects_again_ends_and_keeps_the_record_under_its_new_seq()
-> Result<(), Box<dyn std::error::Error>> {
    let tmp = tempfile::tempdir()?;
    let log = new_log();
    let (drain, _) = strict(&log, vec![3]);
    let (sink, handle) =
        DurableSink::<u64>::open(small_config(tmp.path()), drain, CancellationToken::new()).await?;
    for v in 0..6u64 {
        sink.push(v).await?;
    }
    sink.flush().await?;
    let store = sink.dead_letters();
    // The cause is not fixed: the redrive appends it once and returns.
    let moved = store.redrive(Selection::All).await?;
    assert_eq!(moved.len(), 1);
    let new_seq = moved[0].1;
    sink.flush().await?;
    let dl = store.list(0, 10).await?;
    assert_eq!(
        dl.iter().map(|d| d.seq()).collect::<Vec<_>>(),
        vec![new_seq]
    );
    assert_eq!(dl[0].decode::<u64>()?, 3);
    drop(sink);
    handle.join().await?;
    Ok(())
}

/// A schema change: records written as one type are read as another whose decode sees
/// a huge length. Each such record becomes an undecodable dead letter; the sink neither
/// allocates that length (an abort, again at every replay) nor stops.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn records_of_an_older_type_that_read_as_huge_lengths_are_dead_letters_not_aborts()
-> Result<(), Box<dyn std::error::Error>> {
    let tmp = tempfile::tempdir()?;
    let cfg = small_config(tmp.path());
    let mut stuck = cfg.clone();
    stuck.shutdown_timeout = std::time::Duration::from_millis(50);
    let (sink, handle) = DurableSink::<u64>::open(stuck, Stuck, CancellationToken::new()).await?;
    // As bincode varints these start with the u64 marker: read as a String's length,
    // 2^62 and u64::MAX bytes.
    for v in [1u64 << 62, u64::MAX, 5] {
        sink.push(v).await?;
    }
    sink.sync().await?;
    drop(sink);
    handle.join().await?;

    let got = Arc::new(std::sync::Mutex::new(Vec::new()));
    struct Strings(Arc<std::sync::Mutex<Vec<String>>>);
    impl SinkDrain<String> for Strings {
        async fn write_batch(&mut self, b: Batch<String>) -> Result<(), DrainError> {
            self.0
                .lock()
                .map_err(|e| DrainError::retryable(e.to_string()))?
                .extend(b.into_items());
            Ok(())
        }
    }
    let (sink, handle) =
        DurableSink::<String>::open(cfg, Strings(got.clone()), CancellationToken::new()).await?;
    sink.flush().await?;
    let dl = sink.dead_letters().list(0, 10).await?;
    assert_eq!(
        dl.iter().map(|d| (d.seq(), d.reason())).collect::<Vec<_>>(),
        vec![
            (1, DeadLetterReason::Undecodable),
            (2, DeadLetterReason::Undecodable),
            (3, DeadLetterReason::Undecodable),
        ],
        "5 reads as a length with no bytes behind it: undecodable too"
    );
    assert_eq!(
        dl[0].decode::<u64>()?,
        1 << 62,
        "the bytes are kept as written"
    );
    drop(sink);
    handle.join().await?;
    assert!(got.lock().map_err(|e| e.to_string())?.is_empty());
    Ok(())
}

/// Two redrives at once through one running sink take each dead letter once: the
/// store serializes them, so no record is appended (and delivered) twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_concurrent_redrives_take_each_dead_letter_once()
-> Result<(), Box<dyn std::error::Error>> {
    let tmp = tempfile::tempdir()?;
    let log = new_log();
    let poison: Vec<u64> = (0..300).filter(|v| v % 3 == 0).collect();
    let (drain, strict_flag) = strict(&log, poison.clone());
    let (sink, handle) =
        DurableSink::<u64>::open(small_config(tmp.path()), drain, CancellationToken::new()).await?;
    for v in 0..300u64 {
        sink.push(v).await?;
    }
    sink.flush().await?;
    let store = sink.dead_letters();
    assert_eq!(store.count().await?, poison.len() as u64);
    strict_flag.store(false, Ordering::SeqCst);
    let (a, b) = tokio::join!(store.redrive(Selection::All), store.redrive(Selection::All));
    let (a, b) = (a?, b?);
    assert_eq!(a.len() + b.len(), poison.len(), "{} + {}", a.len(), b.len());
    sink.flush().await?;
    let mut delivered = values(&log);
    delivered.sort_unstable();
    assert_eq!(delivered, (0..300).collect::<Vec<_>>(), "each value once");
    drop(sink);
    handle.join().await?;
    Ok(())
}
