//! The main demo: push 1 M events through a durable sink into a file-backed drain.
//!
//! ```text
//! cargo run --release --example quickstart [DIR] [COUNT]
//! ```
//!
//! Opens (or reopens) a sink with its WAL in `DIR/wal` (default: a fresh directory
//! under the system temp dir), pushes `COUNT` events (default 1 000 000) of about 100
//! bytes, and delivers them to `DIR/delivered.txt`, one line per event with its seq.
//! Prints progress, then throughput and where the data is. Run it twice on the same
//! `DIR` and kill the first run with Ctrl-C (or `kill -9`): the second run delivers what
//! the first left undelivered before its own events.

use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use tokio::io::AsyncWriteExt;
use tokio_util::sync::CancellationToken;
use walsink::{Batch, DrainError, DurableSink, SinkConfig, SinkDrain};

/// A typical dead-letter event.
#[derive(Debug, Serialize, Deserialize)]
struct Event {
    id: u64,
    source: String,
    reason: String,
    attempt: u32,
}

/// Appends one line per event to a file. A real drain would produce to Kafka or
/// insert into a store; `write_batch` returning `Ok` acknowledges the whole batch.
struct FileDrain {
    out: tokio::io::BufWriter<tokio::fs::File>,
    delivered: std::sync::Arc<std::sync::atomic::AtomicU64>,
}

impl SinkDrain<Event> for FileDrain {
    async fn write_batch(&mut self, batch: Batch<Event>) -> Result<(), DrainError> {
        let mut text = String::with_capacity(batch.len() * 96);
        for (seq, ev) in batch.iter() {
            text.push_str(&format!(
                "{seq}\t{}\t{}\t{}\t{}\n",
                ev.id, ev.source, ev.reason, ev.attempt
            ));
        }
        self.out
            .write_all(text.as_bytes())
            .await
            .map_err(DrainError::retryable)?;
        // Acknowledge only what the file has: write it out before returning Ok.
        self.out.flush().await.map_err(DrainError::retryable)?;
        self.delivered
            .fetch_add(batch.len() as u64, std::sync::atomic::Ordering::Relaxed);
        Ok(())
    }

    async fn close(&mut self) -> Result<(), DrainError> {
        self.out.flush().await.map_err(DrainError::retryable)?;
        self.out
            .get_ref()
            .sync_all()
            .await
            .map_err(DrainError::retryable)
    }
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let base = match args.next() {
        Some(d) => std::path::PathBuf::from(d),
        None => std::env::temp_dir().join(format!("walsink-quickstart-{}", std::process::id())),
    };
    let count: u64 = args
        .next()
        .map(|c| c.parse())
        .transpose()?
        .unwrap_or(1_000_000);
    tokio::fs::create_dir_all(&base).await?;
    let out_path = base.join("delivered.txt");
    let out = tokio::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&out_path)
        .await?;
    let delivered = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
    let drain = FileDrain {
        out: tokio::io::BufWriter::with_capacity(1 << 20, out),
        delivered: delivered.clone(),
    };

    let cfg = SinkConfig {
        batch_size: 4096,
        ..SinkConfig::new(base.join("wal"))
    };
    let shutdown = CancellationToken::new();
    let (sink, handle) = DurableSink::<Event>::open(cfg, drain, shutdown.clone()).await?;
    let rec = sink.recovery();
    println!("walsink quickstart");
    println!("  WAL:    {}", sink.dir().display());
    println!("  output: {}", out_path.display());
    if rec.replay_records > 0 {
        println!(
            "  recovered up to {} undelivered records from an earlier run; they are delivered first",
            rec.replay_records
        );
    }

    let ctrl_c = shutdown.clone();
    tokio::spawn(async move {
        if tokio::signal::ctrl_c().await.is_ok() {
            eprintln!(
                "\ninterrupted: shutting down gracefully (undelivered records stay in the WAL)"
            );
            ctrl_c.cancel();
        }
    });

    let start = Instant::now();
    let mut last_report = Instant::now();
    for id in 0..count {
        if shutdown.is_cancelled() {
            break;
        }
        let ev = Event {
            id,
            source: "orders-service".into(),
            reason: "schema validation failed: missing field 'sku'".into(),
            attempt: 3,
        };
        sink.push(ev).await?;
        if last_report.elapsed() > Duration::from_millis(250) {
            last_report = Instant::now();
            eprint!(
                "\r  pushed {id:>9} / {count}   delivered {:>9}",
                delivered.load(std::sync::atomic::Ordering::Relaxed)
            );
        }
    }
    let pushed_in = start.elapsed();
    sink.sync().await?;
    let synced_in = start.elapsed();
    if !shutdown.is_cancelled() {
        sink.flush().await?;
    }
    let delivered_in = start.elapsed();
    let stats = sink.stats();
    eprintln!(
        "\r  pushed {:>9} / {count}   delivered {:>9}",
        stats.pushed,
        delivered.load(std::sync::atomic::Ordering::Relaxed)
    );
    shutdown.cancel();
    let report = handle.join().await?;

    let rate = |n: u64, d: Duration| n as f64 / d.as_secs_f64().max(1e-9);
    println!(
        "pushed    {} records in {:.2} s ({:.0} records/s)",
        stats.pushed,
        pushed_in.as_secs_f64(),
        rate(stats.pushed, pushed_in)
    );
    println!("synced    (fsync) after {:.2} s", synced_in.as_secs_f64());
    let delivered_now = delivered.load(std::sync::atomic::Ordering::Relaxed);
    println!(
        "delivered {delivered_now} records after {:.2} s ({:.0} records/s end to end, replayed ones included)",
        delivered_in.as_secs_f64(),
        rate(delivered_now, delivered_in)
    );
    println!(
        "shutdown: acked through seq {}, {} left on disk for the next run",
        report.acked_seq, report.left_on_disk
    );
    println!(
        "data:     {} (WAL, {} segment file(s) left)",
        sink.dir().display(),
        stats.wal_segments
    );
    println!("          {} (what the drain received)", out_path.display());
    Ok(())
}
