//! The main demo: a dead-letter queue that loses nothing, through a flaky downstream,
//! poison records and a `kill -9`.
//!
//! ```text
//! cargo run --release --example quickstart [DIR]
//! ```
//!
//! A service's failed orders (20 000 events) go through a durable sink into the
//! shipped `FileDrain` (JSON lines, exactly once across crashes), behind a downstream
//! that has outages (retryable errors) and rejects malformed records (permanent errors,
//! which walsink isolates and keeps as dead letters). Halfway, the producing process is
//! killed with SIGKILL; a new process opens the same directory and finishes. At the end
//! the demo accounts for every event: delivered, dead-lettered, or lost (must be none
//! of those the sink confirmed), with the duplicates the drain caught by seq, and the
//! commands that show the dead letters.
//!
//! `DIR` defaults to a fresh directory under the system temp dir.

use std::collections::BTreeSet;
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;
use walsink::drains::FileDrain;
use walsink::{Batch, DrainError, DurableSink, RetryPolicy, SinkConfig, SinkDrain};

/// Events the demo pushes, in two processes.
const EVENTS: u64 = 20_000;
/// The first process is killed once this many events are confirmed durable.
const KILL_AFTER: u64 = EVENTS / 2;

/// A failed order, as a service would dead-letter it.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct FailedOrder {
    id: u64,
    customer: String,
    amount_cents: i64,
    reason: String,
}

fn order(id: u64) -> FailedOrder {
    FailedOrder {
        id,
        customer: format!("cust-{:05}", id % 7919),
        // One order in 997 is malformed: the downstream rejects it for good.
        amount_cents: if id.is_multiple_of(997) {
            -1
        } else {
            (id * 37 % 100_000) as i64
        },
        reason: "payment gateway timeout".into(),
    }
}

/// The downstream: the shipped FileDrain behind an outage every 50th call (three
/// retryable failures in a row) and a schema check that rejects negative amounts.
struct Downstream {
    files: FileDrain<FailedOrder>,
    calls: u64,
    outage_left: u32,
    replays_skipped: Arc<AtomicU64>,
}

impl SinkDrain<FailedOrder> for Downstream {
    async fn write_batch(&mut self, batch: Batch<FailedOrder>) -> Result<(), DrainError> {
        self.calls += 1;
        if self.calls.is_multiple_of(50) {
            self.outage_left = 3;
        }
        if self.outage_left > 0 {
            self.outage_left -= 1;
            return Err(DrainError::retryable("downstream unavailable (HTTP 503)"));
        }
        if let Some((_, bad)) = batch.iter().find(|(_, o)| o.amount_cents < 0) {
            let cause = std::io::Error::other(format!(
                "order {}: amount_cents must be >= 0, got {}",
                bad.id, bad.amount_cents
            ));
            return Err(DrainError::permanent(cause));
        }
        let res = self.files.write_batch(batch).await;
        self.replays_skipped
            .store(self.files.replays_skipped(), Ordering::Relaxed);
        res
    }
}

fn config(dir: &Path) -> SinkConfig {
    SinkConfig {
        batch_size: 64,
        flush_interval: Duration::from_millis(5),
        retry: RetryPolicy {
            initial_delay: Duration::from_millis(1),
            max_delay: Duration::from_millis(20),
            multiplier: 2.0,
        },
        ..SinkConfig::new(dir.join("wal"))
    }
}

async fn open(
    dir: &Path,
) -> Result<
    (
        DurableSink<FailedOrder>,
        walsink::SinkHandle,
        Arc<AtomicU64>,
    ),
    Box<dyn std::error::Error>,
> {
    let skipped = Arc::new(AtomicU64::new(0));
    let downstream = Downstream {
        files: FileDrain::json_lines(dir.join("delivered"))?,
        calls: 0,
        outage_left: 0,
        replays_skipped: Arc::clone(&skipped),
    };
    let (sink, handle) =
        DurableSink::open(config(dir), downstream, CancellationToken::new()).await?;
    Ok((sink, handle, skipped))
}

/// The first process: pushes events and reports each confirmed (synced) one, until
/// the parent kills it.
async fn first_process(dir: &Path) -> Result<(), Box<dyn std::error::Error>> {
    let (sink, _handle, _) = open(dir).await?;
    let mut out = std::io::stdout().lock();
    for id in 0..EVENTS {
        sink.push(order(id)).await?;
        if id % 100 == 99 {
            sink.sync().await?;
            writeln!(out, "confirmed {id}")?;
            out.flush()?;
        }
    }
    // Not reached in the demo: the parent kills this process first.
    std::future::pending::<()>().await;
    Ok(())
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    if args.next().as_deref() == Some("--first-process") {
        let dir = PathBuf::from(args.next().ok_or("--first-process DIR")?);
        return first_process(&dir).await;
    }
    let dir = match std::env::args().nth(1) {
        Some(d) => PathBuf::from(d),
        None => std::env::temp_dir().join(format!("walsink-dlq-demo-{}", std::process::id())),
    };
    std::fs::create_dir_all(&dir)?;
    println!("walsink DLQ demo in {}", dir.display());

    // 1. A producing process, killed with SIGKILL once half the events are confirmed.
    println!("1. process A pushes failed orders; `sync()` confirms them in groups of 100");
    let mut child = Command::new(std::env::current_exe()?)
        .arg("--first-process")
        .arg(&dir)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()?;
    let mut confirmed = 0u64;
    for line in BufReader::new(child.stdout.take().ok_or("no stdout")?).lines() {
        if let Some(id) = line?.strip_prefix("confirmed ") {
            confirmed = id.parse::<u64>()? + 1;
            if confirmed >= KILL_AFTER {
                break;
            }
        }
    }
    child.kill()?; // SIGKILL: no destructor runs, nothing is flushed.
    child.wait()?;
    println!("   kill -9 after {confirmed} events confirmed durable");

    // 2. A new process opens the same directory: it delivers what A left, then pushes
    //    the rest.
    let (sink, handle, skipped) = open(&dir).await?;
    let report = sink.recovery().clone();
    println!(
        "2. process B reopens the directory: {} records to replay ({} segments)",
        report.replay_records, report.segments
    );
    for id in confirmed..EVENTS {
        sink.push(order(id)).await?;
    }
    sink.flush().await?;
    let stats = sink.stats();
    let dead = sink.dead_letters().list(0, usize::MAX).await?;
    drop(sink);
    handle.join().await?;

    // 3. Where every event went.
    let mut delivered = BTreeSet::new();
    let mut seqs = BTreeSet::new();
    let mut lines = 0u64;
    let mut paths: Vec<PathBuf> = std::fs::read_dir(dir.join("delivered"))?
        .filter_map(Result::ok)
        .map(|e| e.path())
        .collect();
    paths.sort();
    for path in &paths {
        for line in std::fs::read_to_string(path)?.lines() {
            let v: serde_json::Value = serde_json::from_str(line)?;
            seqs.insert(v["seq"].as_u64().ok_or("seq")?);
            delivered.insert(v["record"]["id"].as_u64().ok_or("id")?);
            lines += 1;
        }
    }
    let dead_ids: BTreeSet<u64> = dead
        .iter()
        .map(|d| d.decode::<FailedOrder>().map(|o| o.id))
        .collect::<Result<_, _>>()?;
    let lost: Vec<u64> = (0..EVENTS)
        .filter(|id| !delivered.contains(id) && !dead_ids.contains(id))
        .collect();
    println!("3. where every event went:");
    println!(
        "   delivered to {}: {} events in {} file(s)",
        dir.join("delivered").display(),
        delivered.len(),
        paths.len()
    );
    println!(
        "   kept as dead letters: {} (rejected by the downstream, with their error)",
        dead_ids.len()
    );
    println!(
        "   duplicates caught by seq: {} records delivered again after the kill were already in the files, and skipped",
        skipped.load(Ordering::Relaxed)
    );
    println!(
        "   pushed twice by the producers: {} events A pushed after its last confirmation made it to disk before the kill, and B pushed them again (new seqs: deduplicate by event id downstream)",
        lines - delivered.len() as u64
    );
    println!(
        "   downstream outages retried: {} batches; drain calls: {}",
        stats.retries, stats.writes
    );
    println!("   lost: {} (of {EVENTS})", lost.len());
    // The accounting itself: dead letters are exactly the malformed orders, and an
    // event delivered twice (under two seqs) is one A pushed after its last
    // confirmation, which B pushed again.
    let malformed: BTreeSet<u64> = (0..EVENTS).filter(|id| id.is_multiple_of(997)).collect();
    if dead_ids != malformed {
        return Err("the dead letters are not exactly the malformed orders".into());
    }
    let mut seen = BTreeSet::new();
    for path in &paths {
        for line in std::fs::read_to_string(path)?.lines() {
            let v: serde_json::Value = serde_json::from_str(line)?;
            let id = v["record"]["id"].as_u64().ok_or("id")?;
            if !seen.insert(id) && id < confirmed {
                return Err(
                    format!("event {id}, confirmed before the kill, was delivered twice").into(),
                );
            }
        }
    }
    if !lost.is_empty() || lines != seqs.len() as u64 {
        return Err(format!(
            "lost {} events, or a seq written twice ({lines} lines, {} seqs)",
            lost.len(),
            seqs.len()
        )
        .into());
    }
    if let Some(d) = dead.first() {
        println!(
            "   e.g. dead letter seq {}: \"{}\" ({} drain calls included it)",
            d.seq(),
            d.error(),
            d.attempts()
        );
    }
    let wal = dir.join("wal");
    println!("inspect and redrive them:");
    println!(
        "   cargo run --release --bin walsink -- dlq list {}",
        wal.display()
    );
    println!(
        "   cargo run --release --bin walsink -- dlq show {} {} --format json",
        wal.display(),
        dead.first().map_or(1, |d| d.seq())
    );
    println!(
        "   cargo run --release --bin walsink -- dlq redrive {} --all   # once the cause is fixed",
        wal.display()
    );
    Ok(())
}
