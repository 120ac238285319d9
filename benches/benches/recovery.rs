//! Replay and open time (custom harness: each measurement needs a freshly built
//! backlog, so it runs a few repetitions and prints medians).
//!
//! - replay: 1 M unacknowledged 100-byte records, reopen, time until a noop drain has
//!   them all (target, docs/PERFORMANCE.md: at least 1 M records/s). RSS is sampled
//!   during the replay.
//! - open time: an empty WAL; a WAL with a long acknowledged history (everything
//!   delivered, segments deleted); a WAL holding ~1 GiB unacknowledged (target:
//!   well under a second, independent of acknowledged history).
//! - end to end: `push` → drain acknowledgement latency with `Interval(100 ms)` at a
//!   light load (one record every 2 ms), p50/p99.
//!
//! `cargo bench --bench recovery` (add `-- --test` for a small smoke run).

mod support;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use support::{Count, Noop, Stuck, backlog, backlog_config as config, rss_mib, rt};
use tokio_util::sync::CancellationToken;
use walsink::{Batch, DrainError, Durability, DurableSink, RawCodec, SinkDrain};

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

fn main() {
    let smoke = std::env::args().any(|a| a == "--test");
    let rt = rt();
    let reps = if smoke { 1 } else { 3 };
    let n: u64 = if smoke { 20_000 } else { 1_000_000 };

    // Replay.
    let mut rates = Vec::new();
    let mut peak_rss = 0f64;
    let base_rss = rss_mib();
    for _ in 0..reps {
        let tmp = tempfile::tempdir().expect("tempdir");
        backlog(&rt, tmp.path(), n, 100);
        let count = Arc::new(AtomicU64::new(0));
        let shutdown = CancellationToken::new();
        let start = Instant::now();
        let (sink, handle) = rt
            .block_on(DurableSink::<Vec<u8>>::open_with_codec(
                config(tmp.path()),
                RawCodec,
                Count(count.clone()),
                shutdown.clone(),
            ))
            .expect("open");
        while count.load(Ordering::Relaxed) < n {
            peak_rss = peak_rss.max(rss_mib());
            std::thread::sleep(Duration::from_millis(5));
        }
        let secs = start.elapsed().as_secs_f64();
        rates.push(n as f64 / secs);
        drop(sink);
        shutdown.cancel();
        let _ = rt.block_on(handle.join());
    }
    println!("== replay: {n} x 100 B unacknowledged records, open + deliver to a noop drain");
    println!(
        "replay: median {:.2} M records/s over {reps} runs (target: >= 1 M/s); RSS before {base_rss:.0} MiB, peak during replay {peak_rss:.0} MiB",
        median(rates) / 1e6
    );

    // Open time.
    let open_ms = |dir: &std::path::Path| -> f64 {
        let shutdown = CancellationToken::new();
        let start = Instant::now();
        let (sink, handle) = rt
            .block_on(DurableSink::<Vec<u8>>::open_with_codec(
                config(dir),
                RawCodec,
                Stuck,
                shutdown.clone(),
            ))
            .expect("open");
        let ms = start.elapsed().as_secs_f64() * 1e3;
        drop(sink);
        shutdown.cancel();
        let _ = rt.block_on(handle.join());
        ms
    };
    let empty = tempfile::tempdir().expect("tempdir");
    let e: Vec<f64> = (0..reps.max(3)).map(|_| open_ms(empty.path())).collect();
    let history = tempfile::tempdir().expect("tempdir");
    {
        let shutdown = CancellationToken::new();
        let mut cfg = config(history.path());
        cfg.segment_bytes = 1 << 20;
        cfg.max_disk_bytes = 8 << 20;
        let (sink, handle) = rt
            .block_on(DurableSink::<Vec<u8>>::open_with_codec(
                cfg,
                RawCodec,
                Noop,
                shutdown.clone(),
            ))
            .expect("open");
        rt.block_on(async {
            for _ in 0..(n * 2) {
                sink.push(vec![7u8; 100]).await.expect("push");
            }
            sink.flush().await.expect("flush");
        });
        shutdown.cancel();
        let _ = rt.block_on(handle.join());
    }
    let h: Vec<f64> = (0..reps.max(3)).map(|_| open_ms(history.path())).collect();
    let big = tempfile::tempdir().expect("tempdir");
    let big_n = if smoke { 50_000 } else { 9_000_000 };
    backlog(&rt, big.path(), big_n, 100);
    let bytes: u64 = std::fs::read_dir(big.path())
        .expect("dir")
        .filter_map(|e| e.ok()?.metadata().ok())
        .map(|m| m.len())
        .sum();
    let b: Vec<f64> = (0..reps.max(3)).map(|_| open_ms(big.path())).collect();
    println!("== open time (median of {} opens)", reps.max(3));
    println!(
        "open: empty WAL {:.1} ms; after {} records acknowledged and deleted {:.1} ms; with {:.2} GiB unacknowledged ({big_n} records) {:.1} ms",
        median(e),
        n * 2,
        median(h),
        bytes as f64 / (1u64 << 30) as f64,
        median(b)
    );

    // End to end.
    let tmp = tempfile::tempdir().expect("tempdir");
    let mut cfg = config(tmp.path());
    cfg.durability = Durability::Interval(Duration::from_millis(100));
    cfg.flush_interval = Duration::from_millis(100);
    let seen = Arc::new(std::sync::Mutex::new(Vec::<(u64, Instant)>::new()));
    struct Stamp(Arc<std::sync::Mutex<Vec<(u64, Instant)>>>);
    impl SinkDrain<Vec<u8>> for Stamp {
        async fn write_batch(&mut self, b: Batch<Vec<u8>>) -> Result<(), DrainError> {
            let now = Instant::now();
            self.0
                .lock()
                .expect("lock")
                .extend(b.iter().map(|(s, _)| (s, now)));
            Ok(())
        }
    }
    let shutdown = CancellationToken::new();
    let (sink, handle) = rt
        .block_on(DurableSink::<Vec<u8>>::open_with_codec(
            cfg,
            RawCodec,
            Stamp(seen.clone()),
            shutdown.clone(),
        ))
        .expect("open");
    let k = if smoke { 50 } else { 1000 };
    let mut sent = Vec::new();
    rt.block_on(async {
        for i in 0..k {
            sent.push((i as u64 + 1, Instant::now()));
            sink.push(vec![1u8; 100]).await.expect("push");
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        sink.flush().await.expect("flush");
    });
    let got = seen.lock().expect("lock").clone();
    let mut lat: Vec<f64> = sent
        .iter()
        .filter_map(|(seq, t)| {
            got.iter()
                .find(|(s, _)| s == seq)
                .map(|(_, r)| r.duration_since(*t).as_secs_f64() * 1e3)
        })
        .collect();
    lat.sort_by(|a, b| a.total_cmp(b));
    println!("== end to end, Interval(100 ms), flush_interval 100 ms, one record every 2 ms");
    println!(
        "push -> drain ack: p50 {:.1} ms, p99 {:.1} ms over {} records",
        lat[lat.len() / 2],
        lat[lat.len() * 99 / 100],
        lat.len()
    );
    shutdown.cancel();
    let _ = rt.block_on(handle.join());
}
