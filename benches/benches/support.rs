//! Shared by the benches: the 100-byte event, drains, and the ratio report.
#![allow(dead_code)]

use std::path::PathBuf;

use serde::{Deserialize, Serialize};
use walsink::{Batch, DrainError, SinkDrain};

/// A typical dead-letter event, about 100 bytes encoded with the default codec.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Event {
    pub id: u64,
    pub source: String,
    pub reason: String,
    pub attempt: u32,
}

pub fn event(id: u64) -> Event {
    Event {
        id,
        source: "orders-service".into(),
        reason: "schema validation failed: missing field 'sku' in line".into(),
        attempt: 3,
    }
}

/// Acknowledges everything.
pub struct Noop;

impl<T: Send + 'static> SinkDrain<T> for Noop {
    async fn write_batch(&mut self, _batch: Batch<T>) -> Result<(), DrainError> {
        Ok(())
    }
}

/// Median (ns) of a criterion benchmark from `target/criterion/<group>/<id>/new/estimates.json`.
pub fn median_ns(group: &str, id: &str) -> Option<f64> {
    let root = std::env::var("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|_| PathBuf::from("target"));
    let path = root
        .join("criterion")
        .join(group)
        .join(id)
        .join("new")
        .join("estimates.json");
    let text = std::fs::read_to_string(path).ok()?;
    let v: serde_json::Value = serde_json::from_str(&text).ok()?;
    v.get("median")?.get("point_estimate")?.as_f64()
}

/// Prints `subject / baseline` for each pair, from this run's medians.
pub fn report(title: &str, pairs: &[(&str, &str, &str)]) {
    println!("\n== {title}: medians of this run");
    for (group, baseline, subject) in pairs {
        match (median_ns(group, baseline), median_ns(group, subject)) {
            (Some(b), Some(s)) => println!(
                "{group}: {subject} {s:.1} ns vs {baseline} {b:.1} ns = {:.2}x",
                s / b
            ),
            _ => println!("{group}: no estimates (run without --test)"),
        }
    }
}

/// Appends one frame in walsink's format (len, CRC of len+seq+payload, seq, payload):
/// the raw baselines do the same work as the WAL writer, without the sink.
pub fn raw_frame(out: &mut Vec<u8>, seq: u64, payload: &[u8]) {
    let len = payload.len() as u32;
    let mut h = crc32fast::Hasher::new();
    h.update(&len.to_le_bytes());
    h.update(&seq.to_le_bytes());
    h.update(payload);
    out.extend_from_slice(&len.to_le_bytes());
    out.extend_from_slice(&h.finalize().to_le_bytes());
    out.extend_from_slice(&seq.to_le_bytes());
    out.extend_from_slice(payload);
}

pub fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime")
}

/// A sink of raw bytes (`RawCodec`) with the no-op drain, and its shutdown token.
pub fn open_noop(
    rt: &tokio::runtime::Runtime,
    cfg: walsink::SinkConfig,
) -> (
    walsink::DurableSink<Vec<u8>>,
    walsink::SinkHandle,
    tokio_util::sync::CancellationToken,
) {
    let shutdown = tokio_util::sync::CancellationToken::new();
    let (sink, handle) = rt
        .block_on(walsink::DurableSink::<Vec<u8>>::open_with_codec(
            cfg,
            walsink::RawCodec,
            Noop,
            shutdown.clone(),
        ))
        .expect("open");
    (sink, handle, shutdown)
}

/// Never acknowledges (builds an unacknowledged backlog).
pub struct Stuck;

impl<T: Send + 'static> SinkDrain<T> for Stuck {
    async fn write_batch(&mut self, _batch: Batch<T>) -> Result<(), DrainError> {
        std::future::pending().await
    }
}

/// Counts acknowledged records.
pub struct Count(pub std::sync::Arc<std::sync::atomic::AtomicU64>);

impl<T: Send + 'static> SinkDrain<T> for Count {
    async fn write_batch(&mut self, batch: Batch<T>) -> Result<(), DrainError> {
        self.0
            .fetch_add(batch.len() as u64, std::sync::atomic::Ordering::Relaxed);
        Ok(())
    }
}

/// Resident set size of this process, MiB.
pub fn rss_mib() -> f64 {
    let statm = std::fs::read_to_string("/proc/self/statm").unwrap_or_default();
    let pages: f64 = statm
        .split_whitespace()
        .nth(1)
        .and_then(|p| p.parse().ok())
        .unwrap_or(0.0);
    pages * 4096.0 / (1 << 20) as f64
}

/// `callers` tasks calling `push_durable` (100 B, `Durability::Always`) for `measure`;
/// returns records/s and every call's latency.
pub fn walsink_durable(
    rt: &tokio::runtime::Runtime,
    dir: &std::path::Path,
    callers: usize,
    measure: std::time::Duration,
) -> (f64, Vec<std::time::Duration>) {
    use std::time::Instant;
    let mut cfg = walsink::SinkConfig::new(dir);
    cfg.durability = walsink::Durability::Always;
    let (sink, handle, shutdown) = open_noop(rt, cfg);
    let start = Instant::now();
    let lat = rt.block_on(async {
        let mut tasks = Vec::new();
        for _ in 0..callers {
            let sink = sink.clone();
            tasks.push(tokio::spawn(async move {
                let mut lat = Vec::new();
                while start.elapsed() < measure {
                    let t = Instant::now();
                    sink.push_durable(vec![7u8; 100])
                        .await
                        .expect("push_durable");
                    lat.push(t.elapsed());
                }
                lat
            }));
        }
        let mut all = Vec::new();
        for t in tasks {
            all.extend(t.await.expect("task"));
        }
        all
    });
    let rate = lat.len() as f64 / start.elapsed().as_secs_f64();
    drop(sink);
    shutdown.cancel();
    rt.block_on(handle.join()).expect("join");
    (rate, lat)
}

/// Sink settings for building and replaying large backlogs.
pub fn backlog_config(dir: &std::path::Path) -> walsink::SinkConfig {
    let mut c = walsink::SinkConfig::new(dir);
    c.durability = walsink::Durability::Never;
    c.batch_size = 4096;
    c.max_disk_bytes = 4 << 30;
    c.max_record_bytes = 4096;
    c.shutdown_timeout = std::time::Duration::from_millis(10);
    c
}

/// Writes `n` records of `size` bytes that stay unacknowledged.
pub fn backlog(rt: &tokio::runtime::Runtime, dir: &std::path::Path, n: u64, size: usize) {
    let shutdown = tokio_util::sync::CancellationToken::new();
    let (sink, handle) = rt
        .block_on(walsink::DurableSink::<Vec<u8>>::open_with_codec(
            backlog_config(dir),
            walsink::RawCodec,
            Stuck,
            shutdown.clone(),
        ))
        .expect("open");
    rt.block_on(async {
        for _ in 0..n {
            sink.push(vec![7u8; size]).await.expect("push");
        }
        sink.sync().await.expect("sync");
    });
    shutdown.cancel();
    let _ = rt.block_on(handle.join());
}
