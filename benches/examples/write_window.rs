//! Measures guarantee 2's window: the time from `try_push` returning until the WAL
//! writer has written the record (`stats().written_seq` covers it), at idle.
//! From then on a `kill -9` cannot lose the record.
//!
//! ```text
//! cd benches && cargo run --release --example write_window [SAMPLES]
//! ```
//!
//! Each sample pushes one record into an idle sink and busy-polls `written_seq`.
//! Prints the median, p99 and max over the samples.

use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;
use walsink::{Batch, DrainError, Durability, DurableSink, SinkConfig, SinkDrain};

struct Noop;
impl SinkDrain<u64> for Noop {
    async fn write_batch(&mut self, _batch: Batch<u64>) -> Result<(), DrainError> {
        Ok(())
    }
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let samples: usize = std::env::args()
        .nth(1)
        .map(|s| s.parse())
        .transpose()?
        .unwrap_or(2000);
    let dir = std::env::temp_dir().join(format!("walsink-write-window-{}", std::process::id()));
    let cfg = SinkConfig {
        durability: Durability::Never,
        ..SinkConfig::new(&dir)
    };
    let shutdown = CancellationToken::new();
    let (sink, handle) = DurableSink::<u64>::open(cfg, Noop, shutdown.clone()).await?;
    let mut waits = Vec::with_capacity(samples);
    for i in 0..samples as u64 {
        let target = sink.stats().written_seq + 1;
        let start = Instant::now();
        sink.try_push(i)?;
        while sink.stats().written_seq < target {
            std::thread::yield_now();
            if start.elapsed() > Duration::from_secs(5) {
                return Err("record not written within 5 s".into());
            }
        }
        waits.push(start.elapsed());
        // Let the sink go idle again before the next sample.
        tokio::time::sleep(Duration::from_micros(200)).await;
    }
    // Baseline in the same run: the same hand-off (tokio mpsc to a thread that waits in
    // a current-thread runtime) without any file I/O, to separate wake-up cost from WAL cost.
    let (tx, mut rx) = tokio::sync::mpsc::channel::<u64>(16);
    let done = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
    let seen = done.clone();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()?;
    let thread = std::thread::spawn(move || {
        rt.block_on(async move {
            while let Some(v) = rx.recv().await {
                seen.store(v + 1, std::sync::atomic::Ordering::Release);
            }
        })
    });
    let mut base = Vec::with_capacity(samples);
    for i in 0..samples as u64 {
        let start = Instant::now();
        tx.try_send(i)?;
        while done.load(std::sync::atomic::Ordering::Acquire) < i + 1 {
            std::thread::yield_now();
        }
        base.push(start.elapsed());
        tokio::time::sleep(Duration::from_micros(200)).await;
    }
    drop(tx);
    let _ = thread.join();
    base.sort();
    let bp = |p: f64| base[((base.len() - 1) as f64 * p) as usize];
    println!(
        "baseline hand-off only (no I/O),  {samples} samples: median {:?}, p99 {:?}, max {:?}",
        bp(0.5),
        bp(0.99),
        base[base.len() - 1]
    );
    waits.sort();
    let pct = |p: f64| waits[((waits.len() - 1) as f64 * p) as usize];
    println!(
        "try_push -> written, at idle, {samples} samples: median {:?}, p99 {:?}, max {:?}",
        pct(0.5),
        pct(0.99),
        waits[waits.len() - 1]
    );
    shutdown.cancel();
    handle.join().await?;
    std::fs::remove_dir_all(&dir)?;
    Ok(())
}
