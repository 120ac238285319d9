//! A downstream outage, as an operator sees it: the sink keeps accepting, the backlog
//! waits in the WAL, and `walsink inspect` / `walsink dump` show what is waiting.
//!
//! ```text
//! cargo run --release --example outage DIR           # drain up, then down: leaves a backlog
//! cargo run --release --bin walsink -- inspect DIR/wal
//! cargo run --release --example outage DIR resume    # drain back up: delivers the backlog
//! ```
//!
//! The first run delivers 1 000 events, then the downstream refuses connections
//! (retryable errors) while 4 000 more events are pushed and made durable with
//! `sync()`. Shutdown gives up after its budget and leaves them on disk. The second run
//! opens the same directory with the downstream back, delivers exactly the events the
//! first left, and checks none is missing.
//!
//! `DIR` defaults to a fresh directory under the system temp dir (first run only).

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio_util::sync::CancellationToken;
use walsink::{Batch, DrainError, DurableSink, RetryPolicy, SinkConfig, SinkDrain};

/// Events delivered before the outage.
const BEFORE: u64 = 1_000;
/// Events pushed during the outage.
const DURING: u64 = 4_000;

/// The downstream: up or down; counts what it receives and checks the order.
struct Downstream {
    up: bool,
    delivered: Arc<AtomicU64>,
    next_id: Option<u64>,
}

impl SinkDrain<String> for Downstream {
    async fn write_batch(&mut self, batch: Batch<String>) -> Result<(), DrainError> {
        if !self.up {
            return Err(DrainError::retryable(
                "connect to orders-db:5432: connection refused",
            ));
        }
        for (_, event) in batch.iter() {
            let id = event_id(event).ok_or_else(|| DrainError::permanent("no id"))?;
            if let Some(next) = self.next_id
                && id != next
            {
                return Err(DrainError::permanent(format!(
                    "event {id} arrived, {next} expected"
                )));
            }
            self.next_id = Some(id + 1);
        }
        self.delivered
            .fetch_add(batch.len() as u64, Ordering::Relaxed);
        Ok(())
    }
}

fn event(id: u64) -> String {
    format!("event {id}: user {} checked out cart {}", id % 613, id * 7)
}

fn event_id(event: &str) -> Option<u64> {
    event
        .strip_prefix("event ")?
        .split(':')
        .next()?
        .parse()
        .ok()
}

fn config(dir: PathBuf) -> SinkConfig {
    SinkConfig {
        shutdown_timeout: Duration::from_secs(1),
        retry: RetryPolicy {
            initial_delay: Duration::from_millis(10),
            max_delay: Duration::from_millis(200),
            multiplier: 2.0,
        },
        ..SinkConfig::new(dir)
    }
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let root = match args.next() {
        Some(d) => PathBuf::from(d),
        None => std::env::temp_dir().join(format!("walsink-outage-{}", std::process::id())),
    };
    let resume = match args.next().as_deref() {
        None => false,
        Some("resume") => true,
        Some(other) => return Err(format!("unknown mode {other:?}: expected `resume`").into()),
    };
    let wal = root.join("wal");
    if resume {
        deliver_backlog(wal).await
    } else {
        leave_backlog(root, wal).await
    }
}

async fn leave_backlog(root: PathBuf, wal: PathBuf) -> Result<(), Box<dyn std::error::Error>> {
    if wal.exists() {
        return Err(format!("{} exists: pass a new DIR, or `resume`", wal.display()).into());
    }
    println!("walsink outage demo in {}", root.display());
    let delivered = Arc::new(AtomicU64::new(0));
    let shutdown = CancellationToken::new();
    let drain = Downstream {
        up: true,
        delivered: delivered.clone(),
        next_id: Some(0),
    };
    let (sink, handle) = DurableSink::open(config(wal.clone()), drain, shutdown.clone()).await?;
    for id in 0..BEFORE {
        sink.push(event(id)).await?;
    }
    sink.flush().await?;
    let n = delivered.load(Ordering::Relaxed);
    println!("1. downstream up: {n} events delivered");
    if n != BEFORE {
        return Err(format!("expected {BEFORE} delivered").into());
    }
    drop(sink);
    handle.join().await?;

    let shutdown = CancellationToken::new();
    let drain = Downstream {
        up: false,
        delivered: delivered.clone(),
        next_id: None,
    };
    let (sink, handle) = DurableSink::open(config(wal.clone()), drain, shutdown.clone()).await?;
    for id in BEFORE..BEFORE + DURING {
        sink.push(event(id)).await?;
    }
    sink.sync().await?;
    while sink.stats().write_errors < 5 {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let s = sink.stats();
    println!("2. downstream down: {DURING} more events pushed and synced; the sink kept accepting");
    println!(
        "   stats: pending {}, acked_seq {}, write_errors {}, retries {}, wal_bytes {}",
        s.pending, s.acked_seq, s.write_errors, s.retries, s.wal_bytes
    );
    shutdown.cancel();
    let report = handle.join().await?;
    println!(
        "3. shutdown after its budget: acked seq {}, {} records left on disk for the next open",
        report.acked_seq, report.left_on_disk
    );
    if report.left_on_disk != DURING {
        return Err(format!("expected {DURING} left on disk").into());
    }
    let dir = wal.display();
    println!("   see what waits:  walsink inspect {dir}");
    println!(
        "                    walsink dump {dir} --from {} --limit 3 --format text",
        report.acked_seq + 1
    );
    println!(
        "   deliver it:      cargo run --release --example outage {} resume",
        root.display()
    );
    Ok(())
}

async fn deliver_backlog(wal: PathBuf) -> Result<(), Box<dyn std::error::Error>> {
    if !wal.exists() {
        return Err(format!(
            "{} does not exist: run without `resume` first",
            wal.display()
        )
        .into());
    }
    let delivered = Arc::new(AtomicU64::new(0));
    let drain = Downstream {
        up: true,
        delivered: delivered.clone(),
        // The backlog starts at the first event pushed during the outage.
        next_id: Some(BEFORE),
    };
    let (sink, handle) = DurableSink::open(config(wal), drain, CancellationToken::new()).await?;
    let backlog = sink.stats().pending;
    sink.flush().await?;
    let s = sink.stats();
    drop(sink);
    let report = handle.join().await?;
    let n = delivered.load(Ordering::Relaxed);
    println!(
        "downstream back: {backlog} records recovered, {n} delivered ({} replayed), acked seq {}, {} left",
        s.replayed, report.acked_seq, report.left_on_disk
    );
    if backlog == 0 {
        println!("nothing was waiting: the backlog was delivered before");
        return Ok(());
    }
    // Every event of the outage, in order (the drain checks the order), none dead-lettered.
    if n != DURING || backlog != DURING || report.left_on_disk != 0 || s.rejected != 0 {
        return Err(format!(
            "the backlog was not delivered in full: expected {DURING} events from id {BEFORE}"
        )
        .into());
    }
    Ok(())
}
