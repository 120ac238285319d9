//! Drains and helpers shared by the scenario tests.
#![allow(dead_code, unreachable_pub, missing_docs)]

#[cfg(feature = "kafka")]
pub mod kafka;

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{Semaphore, mpsc};
use walsink::{Batch, DrainError, Durability, RetryPolicy, SinkConfig, SinkDrain};

/// `(seq, value)` pairs in delivery order.
pub type Log = Arc<Mutex<Vec<(u64, u64)>>>;

pub fn new_log() -> Log {
    Arc::new(Mutex::new(Vec::new()))
}

pub fn snapshot(log: &Log) -> Vec<(u64, u64)> {
    log.lock().expect("log lock").clone()
}

pub fn values(log: &Log) -> Vec<u64> {
    snapshot(log).into_iter().map(|(_, v)| v).collect()
}

/// A config with tiny limits so tests reach rollover and budgets fast.
pub fn small_config(dir: &Path) -> SinkConfig {
    let mut c = SinkConfig::new(dir);
    c.batch_size = 64;
    c.flush_interval = Duration::from_millis(20);
    c.segment_bytes = 4096;
    c.max_disk_bytes = 1 << 20;
    c.max_record_bytes = 1024;
    c.durability = Durability::Never;
    c.retry = RetryPolicy {
        initial_delay: Duration::from_millis(1),
        max_delay: Duration::from_millis(5),
        multiplier: 2.0,
    };
    c.shutdown_timeout = Duration::from_secs(10);
    c
}

/// A budget of 16 KiB over 4 KiB segments and records of at most 512 bytes, with a
/// queue too large to fill first: the disk budget is what runs out.
pub fn budget_config(dir: &Path) -> SinkConfig {
    let mut c = small_config(dir);
    c.segment_bytes = 4096;
    c.max_disk_bytes = 16 * 1024;
    c.max_record_bytes = 512;
    c.queue_capacity = 100_000;
    c
}

/// Appends every delivered record to a log; optionally reports each batch.
pub struct Collect {
    pub log: Log,
    pub batches: Option<mpsc::UnboundedSender<usize>>,
}

impl Collect {
    pub fn new(log: &Log) -> Self {
        Self {
            log: Arc::clone(log),
            batches: None,
        }
    }
}

impl SinkDrain<u64> for Collect {
    async fn write_batch(&mut self, batch: Batch<u64>) -> Result<(), DrainError> {
        let n = batch.len();
        self.log
            .lock()
            .expect("log lock")
            .extend(batch.into_pairs());
        if let Some(tx) = &self.batches {
            let _ = tx.send(n);
        }
        Ok(())
    }
}

/// Each `write_batch` announces itself on `entered`, then waits for one permit of
/// `gate` before acknowledging.
pub struct Gated {
    pub log: Log,
    pub gate: Arc<Semaphore>,
    pub entered: mpsc::UnboundedSender<Vec<u64>>,
}

impl Gated {
    /// A gated drain that nobody watches enter, and its gate (closed).
    pub fn closed(log: &Log) -> (Self, Arc<Semaphore>) {
        let gate = Arc::new(Semaphore::new(0));
        let (entered, _) = mpsc::unbounded_channel();
        let drain = Self {
            log: Arc::clone(log),
            gate: Arc::clone(&gate),
            entered,
        };
        (drain, gate)
    }
}

impl SinkDrain<u64> for Gated {
    async fn write_batch(&mut self, batch: Batch<u64>) -> Result<(), DrainError> {
        let _ = self.entered.send(batch.seqs().to_vec());
        let permit = self.gate.acquire().await.map_err(DrainError::retryable)?;
        permit.forget();
        self.log
            .lock()
            .expect("log lock")
            .extend(batch.into_pairs());
        Ok(())
    }
}

/// Never acknowledges: `write_batch` waits forever (shutdown abandons it).
pub struct Stuck;

impl<T: Send + 'static> SinkDrain<T> for Stuck {
    async fn write_batch(&mut self, _batch: Batch<T>) -> Result<(), DrainError> {
        std::future::pending().await
    }
}

/// Fails the first `fail_first` calls with a retryable error, then collects.
pub struct FlakyThenOk {
    pub log: Log,
    pub calls: Arc<AtomicUsize>,
    pub fail_first: usize,
}

impl SinkDrain<u64> for FlakyThenOk {
    async fn write_batch(&mut self, batch: Batch<u64>) -> Result<(), DrainError> {
        let n = self.calls.fetch_add(1, Ordering::SeqCst);
        if n < self.fail_first {
            return Err(DrainError::retryable(format!("transient failure {n}")));
        }
        self.log
            .lock()
            .expect("log lock")
            .extend(batch.into_pairs());
        Ok(())
    }
}

/// Rejects permanently any batch containing `poison`; collects the others.
pub struct Poisoned {
    pub log: Log,
    pub poison: u64,
    pub calls: Arc<AtomicUsize>,
}

impl SinkDrain<u64> for Poisoned {
    async fn write_batch(&mut self, batch: Batch<u64>) -> Result<(), DrainError> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        if batch.iter().any(|(_, &v)| v == self.poison) {
            return Err(DrainError::permanent(format!(
                "value {} is poison",
                self.poison
            )));
        }
        self.log
            .lock()
            .expect("log lock")
            .extend(batch.into_pairs());
        Ok(())
    }
}

/// Segment files in `dir`, sorted.
pub fn segment_files(dir: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(dir)
        .expect("read dir")
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "seg"))
        .collect();
    v.sort();
    v
}

/// Sum of segment file sizes.
pub fn segment_bytes_on_disk(dir: &Path) -> u64 {
    segment_files(dir)
        .iter()
        .map(|p| std::fs::metadata(p).map(|m| m.len()).unwrap_or(0))
        .sum()
}

/// Files whose name ends in `.quarantined`.
pub fn quarantined_files(dir: &Path) -> Vec<PathBuf> {
    std::fs::read_dir(dir)
        .expect("read dir")
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.to_string_lossy().ends_with(".quarantined"))
        .collect()
}

/// Asserts seqs strictly increase along the log.
pub fn assert_seqs_increase(log: &[(u64, u64)]) {
    for w in log.windows(2) {
        assert!(
            w[0].0 < w[1].0,
            "seqs not increasing: {:?} then {:?}",
            w[0],
            w[1]
        );
    }
}

/// Collects raw byte records.
pub struct CollectBytes(pub Arc<Mutex<Vec<Vec<u8>>>>);

impl SinkDrain<Vec<u8>> for CollectBytes {
    async fn write_batch(&mut self, b: Batch<Vec<u8>>) -> Result<(), DrainError> {
        self.0
            .lock()
            .map_err(|e| DrainError::retryable(e.to_string()))?
            .extend(b.into_items());
        Ok(())
    }
}

/// SplitMix64: the seeded generator of the randomized tests.
pub struct Rng(pub u64);

impl Rng {
    pub fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    pub fn below(&mut self, n: usize) -> usize {
        if n == 0 {
            0
        } else {
            (self.next() % n as u64) as usize
        }
    }
}

/// `WALSINK_SEED` if set, else `default`.
pub fn seed_or(default: u64) -> u64 {
    std::env::var("WALSINK_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(default)
}

/// CRC-32 (IEEE), bitwise: the tests' own implementation, independent of the crate's.
pub fn crc32(data: &[u8]) -> u32 {
    let mut crc = !0u32;
    for &b in data {
        crc ^= u32::from(b);
        for _ in 0..8 {
            crc = if crc & 1 != 0 {
                (crc >> 1) ^ 0xEDB8_8320
            } else {
                crc >> 1
            };
        }
    }
    !crc
}

/// A CRC-valid register slot (docs/FORMAT.md §4) built with the tests' own CRC: `kind`
/// 1 is the cursor, 2 the seq lease.
pub fn register_slot(kind: u16, generation: u64, value: u64) -> Vec<u8> {
    let mut slot = b"WSRG".to_vec();
    slot.extend_from_slice(&1u16.to_le_bytes()); // version
    slot.extend_from_slice(&kind.to_le_bytes());
    slot.extend_from_slice(&generation.to_le_bytes());
    slot.extend_from_slice(&value.to_le_bytes());
    slot.extend_from_slice(&0u32.to_le_bytes()); // reserved
    let crc = crc32(&slot);
    slot.extend_from_slice(&crc.to_le_bytes());
    slot
}

/// Text a child process's drain appends to its log file for one batch: a leading
/// newline, then one `seq id check` line per record. A SIGKILL can cut a write to a
/// regular file short (the kernel checks for fatal signals between pages), and the
/// next child then appends after the torn line: the leading newline keeps its lines
/// apart, and the check makes the torn line unreadable instead of a wrong record. The
/// records of a torn write were never acknowledged, so they are delivered again.
pub fn drain_log_lines<'a>(records: impl Iterator<Item = (u64, &'a u64)>) -> String {
    let mut text = String::from("\n");
    for (seq, &v) in records {
        text.push_str(&format!("{seq} {v} {}\n", drain_log_check(seq, v)));
    }
    text
}

fn drain_log_check(seq: u64, v: u64) -> u64 {
    seq.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ v
}

/// The `(seq, id)` records of a drain log written with [`drain_log_lines`]; torn lines
/// are skipped.
pub fn parse_drain_log(text: &str) -> Vec<(u64, u64)> {
    text.lines()
        .filter_map(|l| {
            let mut it = l.split(' ');
            let (seq, v, check) = (
                it.next()?.parse().ok()?,
                it.next()?.parse().ok()?,
                it.next()?.parse::<u64>().ok()?,
            );
            (it.next().is_none() && check == drain_log_check(seq, v)).then_some((seq, v))
        })
        .collect()
}

/// The runtime a child-process entry point (kill9, torture, drain_kill,
/// dead_letter_kill) runs its sink on: two workers, as in the parent tests.
pub fn child_runtime() -> std::io::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
}

/// This test binary, set to run only the `#[ignore]`d child entry point `entry`.
pub fn child_command(entry: &str) -> std::io::Result<std::process::Command> {
    let mut cmd = std::process::Command::new(std::env::current_exe()?);
    cmd.args([
        "--exact",
        entry,
        "--ignored",
        "--nocapture",
        "--test-threads=1",
    ]);
    Ok(cmd)
}
