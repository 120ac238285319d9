//! docs/OPERATIONS.md, Metrics: with `metric_prefix` set, every named metric is published through the
//! `metrics` facade and moves with what the sink does. A minimal in-test recorder
//! (counters and gauges as atomics, histograms as sample counts) stands in for an
//! exporter.

mod common;

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};

use common::*;
use metrics::{Counter, Gauge, Histogram, Key, KeyName, Metadata, Recorder, SharedString, Unit};
use tokio_util::sync::CancellationToken;
use walsink::DurableSink;

#[derive(Default)]
struct TestRecorder {
    values: Mutex<HashMap<String, Arc<AtomicU64>>>,
    described: Mutex<Vec<String>>,
}

struct Samples(Arc<AtomicU64>);
impl metrics::HistogramFn for Samples {
    fn record(&self, _value: f64) {
        self.0.fetch_add(1, Ordering::Relaxed);
    }
}

impl TestRecorder {
    fn slot(&self, key: &Key) -> Arc<AtomicU64> {
        let mut m = self.values.lock().expect("recorder lock");
        Arc::clone(m.entry(key.name().to_string()).or_default())
    }
    fn get(&self, name: &str) -> Option<u64> {
        self.values
            .lock()
            .expect("recorder lock")
            .get(name)
            .map(|a| a.load(Ordering::Relaxed))
    }
    fn gauge(&self, name: &str) -> Option<f64> {
        self.get(name).map(f64::from_bits)
    }
}

impl Recorder for TestRecorder {
    fn describe_counter(&self, key: KeyName, _: Option<Unit>, _: SharedString) {
        self.described
            .lock()
            .expect("lock")
            .push(key.as_str().to_string());
    }
    fn describe_gauge(&self, key: KeyName, _: Option<Unit>, _: SharedString) {
        self.described
            .lock()
            .expect("lock")
            .push(key.as_str().to_string());
    }
    fn describe_histogram(&self, key: KeyName, _: Option<Unit>, _: SharedString) {
        self.described
            .lock()
            .expect("lock")
            .push(key.as_str().to_string());
    }
    fn register_counter(&self, key: &Key, _: &Metadata<'_>) -> Counter {
        Counter::from_arc(self.slot(key))
    }
    fn register_gauge(&self, key: &Key, _: &Metadata<'_>) -> Gauge {
        Gauge::from_arc(self.slot(key))
    }
    fn register_histogram(&self, key: &Key, _: &Metadata<'_>) -> Histogram {
        Histogram::from_arc(Arc::new(Samples(self.slot(key))))
    }
}

static RECORDER: OnceLock<&'static TestRecorder> = OnceLock::new();

fn recorder() -> &'static TestRecorder {
    RECORDER.get_or_init(|| {
        let r: &'static TestRecorder = Box::leak(Box::default());
        metrics::set_global_recorder(r).expect("install recorder");
        r
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_metric_is_published_and_moves() -> Result<(), Box<dyn std::error::Error>> {
    let rec = recorder();
    let tmp = tempfile::tempdir()?;
    let mut cfg = small_config(tmp.path());
    cfg.metric_prefix = Some("dlq".to_string());
    let log = new_log();
    let calls = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let drain = Poisoned {
        log: log.clone(),
        poison: 3,
        calls,
    };
    let shutdown = CancellationToken::new();
    let (sink, handle) = DurableSink::<u64>::open(cfg, drain, shutdown.clone()).await?;
    for i in 0..10u64 {
        sink.push(i).await?;
    }
    sink.sync().await?;
    sink.flush().await?;

    let names = [
        "pushed_total",
        "dropped_total",
        "writes_total",
        "write_errors_total",
        "pending",
        "wal_bytes",
        "wal_segments",
        "fsync_seconds",
        "acked_seq",
        "replayed_total",
        "retries_total",
        "rejected_total",
        "corrupt_records_total",
        "quarantined_segments_total",
        "dead_lettered_total",
        "dead_letters_refused_total",
        "redriven_total",
        "dead_letter_bytes",
    ];
    let described = rec.described.lock().map_err(|e| e.to_string())?.clone();
    for n in names {
        assert!(
            described.contains(&format!("dlq_{n}")),
            "dlq_{n} not described"
        );
    }
    assert_eq!(rec.get("dlq_pushed_total"), Some(10));
    assert_eq!(rec.get("dlq_rejected_total"), Some(1));
    assert_eq!(rec.get("dlq_dead_lettered_total"), Some(1));
    assert!(rec.gauge("dlq_dead_letter_bytes").unwrap_or(0.0) > 0.0);
    assert!(rec.get("dlq_writes_total").unwrap_or(0) >= 2);
    assert!(rec.get("dlq_write_errors_total").unwrap_or(0) >= 1);
    assert!(
        rec.get("dlq_fsync_seconds").unwrap_or(0) >= 1,
        "no fsync latency sample"
    );
    assert_eq!(rec.gauge("dlq_acked_seq"), Some(10.0));
    assert_eq!(rec.gauge("dlq_pending"), Some(0.0));
    assert!(rec.gauge("dlq_wal_bytes").unwrap_or(0.0) > 0.0);
    assert!(rec.gauge("dlq_wal_segments").unwrap_or(0.0) >= 1.0);
    shutdown.cancel();
    handle.join().await?;
    Ok(())
}

/// After a crash the writer continues at the seq lease, so up to a lease block of seqs
/// name no record. The `pending` gauge counts records: here a lease 1 000 seqs ahead of
/// 10 unacknowledged records (what a crash leaves), 4 of them acknowledged, leaves 6
/// pending, not 995.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_pending_gauge_counts_records_not_seqs_a_crash_left_unused()
-> Result<(), Box<dyn std::error::Error>> {
    let rec = recorder();
    let tmp = tempfile::tempdir()?;
    let mut cfg = small_config(tmp.path());
    cfg.batch_size = 4;
    cfg.flush_interval = std::time::Duration::from_millis(1);
    // The first run's drain never acknowledges: its shutdown waits this long.
    cfg.shutdown_timeout = std::time::Duration::from_millis(20);
    let shutdown = CancellationToken::new();
    let (sink, handle) = DurableSink::<u64>::open(cfg.clone(), Stuck, shutdown.clone()).await?;
    for i in 0..10u64 {
        sink.push(i).await?;
    }
    sink.sync().await?;
    shutdown.cancel();
    handle.join().await?;
    // The lease a crash would have left: durable, a block ahead of the last frame.
    let mut lease = vec![0u8; 4096 + 32];
    lease[..32].copy_from_slice(&register_slot(2, 1_000, 1_000));
    lease[4096..].copy_from_slice(&register_slot(2, 999, 1_000));
    std::fs::write(tmp.path().join("SEQ_LEASE"), lease)?;

    cfg.metric_prefix = Some("gap".to_string());
    let gate = Arc::new(tokio::sync::Semaphore::new(1));
    let (entered, mut batches) = tokio::sync::mpsc::unbounded_channel();
    let drain = Gated {
        log: new_log(),
        gate: Arc::clone(&gate),
        entered,
    };
    let shutdown = CancellationToken::new();
    let (sink, handle) = DurableSink::<u64>::open(cfg, drain, shutdown.clone()).await?;
    assert_eq!(sink.recovery().replay_records, 10);
    assert_eq!(sink.pending(), 10);
    // The first batch is acknowledged; the second waits at the gate, which means the
    // first one's cursor advance (and gauge update) is done.
    assert_eq!(batches.recv().await.ok_or("no batch")?, vec![1, 2, 3, 4]);
    assert_eq!(batches.recv().await.ok_or("no batch")?, vec![5, 6, 7, 8]);
    assert_eq!(rec.gauge("gap_pending"), Some(6.0));
    assert_eq!(sink.pending(), 6);
    gate.add_permits(100);
    sink.flush().await?;
    assert_eq!(rec.gauge("gap_pending"), Some(0.0));
    shutdown.cancel();
    let report = handle.join().await?;
    assert_eq!(report.left_on_disk, 0);
    Ok(())
}
