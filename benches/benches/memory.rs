//! Memory does not grow with the backlog (guarantee 6): RSS of a sink replaying a
//! ≥ 2 GiB backlog against RSS of the same sink idle on an empty WAL, in one fresh
//! process. `cargo bench --bench memory` (add `-- --test` for a 64 MiB smoke run).
//!
//! The expected constant: the queue is empty during replay; the reader holds one
//! 256 KiB buffer; one batch of `batch_size` (4096) decoded 100-byte records is about
//! 1 MiB with its frames; the writer's 1 MiB buffer and the runtime's own threads and
//! allocator arenas account for the rest. Nothing scales with the backlog.

mod support;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use support::{Count, backlog, backlog_config as config, rss_mib, rt};
use tokio_util::sync::CancellationToken;
use walsink::{DurableSink, RawCodec};

fn main() {
    let smoke = std::env::args().any(|a| a == "--test");
    let target_bytes: u64 = if smoke { 64 << 20 } else { 2 << 30 };
    let records = target_bytes / 116 + 1;
    let rt = rt();

    // Idle sink on an empty WAL: the baseline.
    let empty = tempfile::tempdir().expect("tempdir");
    let shutdown = CancellationToken::new();
    let count = Arc::new(AtomicU64::new(0));
    let (sink, handle) = rt
        .block_on(DurableSink::<Vec<u8>>::open_with_codec(
            config(empty.path()),
            RawCodec,
            Count(count.clone()),
            shutdown.clone(),
        ))
        .expect("open");
    rt.block_on(async {
        for _ in 0..10_000 {
            sink.push(vec![7u8; 100]).await.expect("push");
        }
        sink.flush().await.expect("flush");
    });
    let idle_rss = rss_mib();
    drop(sink);
    shutdown.cancel();
    let _ = rt.block_on(handle.join());

    // Build the backlog in a separate sink that never acknowledges.
    let dir = tempfile::tempdir().expect("tempdir");
    backlog(&rt, dir.path(), records, 100);
    let on_disk: u64 = std::fs::read_dir(dir.path())
        .expect("dir")
        .filter_map(|e| e.ok()?.metadata().ok())
        .map(|m| m.len())
        .sum();

    // Replay it, sampling RSS.
    let count = Arc::new(AtomicU64::new(0));
    let shutdown = CancellationToken::new();
    let start = Instant::now();
    let (sink, handle) = rt
        .block_on(DurableSink::<Vec<u8>>::open_with_codec(
            config(dir.path()),
            RawCodec,
            Count(count.clone()),
            shutdown.clone(),
        ))
        .expect("open");
    let mut peak = 0f64;
    while count.load(Ordering::Relaxed) < records {
        peak = peak.max(rss_mib());
        std::thread::sleep(Duration::from_millis(20));
    }
    let secs = start.elapsed().as_secs_f64();
    drop(sink);
    shutdown.cancel();
    let _ = rt.block_on(handle.join());
    println!(
        "== memory: replay of {:.2} GiB ({records} records of 100 B)",
        on_disk as f64 / (1u64 << 30) as f64
    );
    println!(
        "RSS idle on an empty WAL {idle_rss:.1} MiB; peak while replaying {peak:.1} MiB (+{:.1} MiB); replay {:.2} M records/s",
        peak - idle_rss,
        records as f64 / secs / 1e6
    );
}
