//! [`SinkConfig`] and its parts: defaults (each field's doc gives its default) and validation at open.
//!
//! Every knob is a `pub` field, so struct-update syntax works:
//! `SinkConfig { batch_size: 64, ..SinkConfig::new(dir) }`. Contradictions are refused
//! by `open` with [`OpenError::InvalidConfig`] naming the field; nothing is clamped.

use crate::dead_letter::{DEFAULT_MAX_DEAD_LETTER_BYTES, DeadLetterPolicy};
use std::path::PathBuf;
use std::time::Duration;

use crate::error::OpenError;
use crate::wal::format::{FRAME_PAYLOAD_LIMIT_BYTES, SEGMENT_HEADER_BYTES, frame_bytes};

/// What `try_push` does when the sink is full.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum Overflow {
    /// `try_push` fails fast with [`SinkError::Overflow`](crate::SinkError::Overflow)
    /// and counts the record in `dropped()`.
    #[default]
    Drop,
    /// `try_push` is refused (always `Overflow`): this sink may not lose records to
    /// back-pressure, so callers must use `push`, which waits for room.
    Block,
}

/// When the WAL writer fsyncs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Durability {
    /// fsync after every write batch (group commit: concurrent pushes share one fsync).
    /// Every record is durable shortly after it is written.
    Always,
    /// fsync when written data has been unsynced for this long. A power loss can lose
    /// at most about this much of the most recent data.
    Interval(Duration),
    /// fsync only on `sync()` / `push_durable()`, on segment rollover and at shutdown.
    Never,
}

impl Default for Durability {
    fn default() -> Self {
        Self::Interval(Duration::from_millis(100))
    }
}

/// Backoff for retryable drain errors: exponential with full jitter, retried forever.
///
/// The delay before attempt `n` (counting from 1) is uniform in
/// `[0, min(max_delay, initial_delay * multiplier^(n-1))]`. There is deliberately no
/// attempt limit: a record is never given up because a backend was down for long; each
/// retry is counted in `retries_total`, and `permanent` errors are the way to reject data.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RetryPolicy {
    /// Cap of the first delay.
    pub initial_delay: Duration,
    /// Upper bound of any delay.
    pub max_delay: Duration,
    /// Growth factor per attempt (at least 1).
    pub multiplier: f64,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self {
            initial_delay: Duration::from_millis(100),
            max_delay: Duration::from_secs(30),
            multiplier: 2.0,
        }
    }
}

impl RetryPolicy {
    /// The upper bound of the delay before retry number `attempt` (1-based).
    pub fn delay_cap(&self, attempt: u32) -> Duration {
        let exp = self
            .multiplier
            .powi(attempt.saturating_sub(1).min(1000) as i32);
        let secs = self.initial_delay.as_secs_f64() * exp;
        if !secs.is_finite() || secs >= self.max_delay.as_secs_f64() {
            self.max_delay
        } else {
            Duration::from_secs_f64(secs)
        }
    }
}

/// Configuration of a [`DurableSink`](crate::DurableSink). See the field docs for
/// defaults; [`SinkConfig::new`] sets them.
///
/// Not `#[non_exhaustive]` on purpose: struct-update syntax from `SinkConfig::new` is the
/// intended way to build one, and it keeps working when fields are added.
#[derive(Debug, Clone)]
pub struct SinkConfig {
    /// WAL directory; created `0700` if missing. One sink per directory.
    pub dir: PathBuf,
    /// Records in the in-memory hand-off between producers and the WAL writer.
    /// Default 10 000.
    pub queue_capacity: usize,
    /// Most records per `write_batch`. Default 256.
    pub batch_size: usize,
    /// Deliver a partial batch once its first record has waited this long. Default 100 ms.
    pub flush_interval: Duration,
    /// What `try_push` does when full. Default [`Overflow::Drop`].
    pub overflow: Overflow,
    /// When the writer fsyncs. Default [`Durability::Interval`] of 100 ms.
    pub durability: Durability,
    /// Segment roll threshold in bytes. A record never spans two segments; one larger
    /// than this gets a segment of its own. Default 64 MiB.
    pub segment_bytes: u64,
    /// Disk budget for segments (plus at most one segment). Default 1 GiB.
    pub max_disk_bytes: u64,
    /// Largest encoded record accepted; larger ones get `TooLarge`. Default 16 MiB.
    /// Lowering it later applies to new records only: records already in the WAL are
    /// still read and delivered.
    pub max_record_bytes: usize,
    /// Backoff for retryable drain errors. Default 100 ms → 30 s, ×2, full jitter.
    pub retry: RetryPolicy,
    /// How long shutdown keeps delivering before leaving the rest on disk. Default 5 s.
    pub shutdown_timeout: Duration,
    /// When set, metrics are published through the `metrics` facade with this prefix.
    /// Default `None`.
    pub metric_prefix: Option<String>,
    /// What happens to a record the drain rejects permanently or that no longer
    /// decodes. Default [`DeadLetterPolicy::Keep`]: stored in `dir/dead-letters/`.
    pub dead_letters: DeadLetterPolicy,
    /// Cap on the dead-letter store's files. A dead letter that would pass it is
    /// refused (logged with its seq, counted in `dead_letters_refused`) and skipped;
    /// delivery never stalls on it. Default 256 MiB.
    pub max_dead_letter_bytes: u64,
}

impl SinkConfig {
    /// The defaults (each field's doc gives its default) for a sink in `dir`.
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        Self {
            dir: dir.into(),
            queue_capacity: 10_000,
            batch_size: 256,
            flush_interval: Duration::from_millis(100),
            overflow: Overflow::Drop,
            durability: Durability::default(),
            segment_bytes: 64 << 20,
            max_disk_bytes: 1 << 30,
            max_record_bytes: 16 << 20,
            retry: RetryPolicy::default(),
            shutdown_timeout: Duration::from_secs(5),
            metric_prefix: None,
            dead_letters: DeadLetterPolicy::Keep,
            max_dead_letter_bytes: DEFAULT_MAX_DEAD_LETTER_BYTES,
        }
    }

    /// Checks the configuration; `open` calls this first.
    pub fn validate(&self) -> Result<(), OpenError> {
        let bad =
            |field: &'static str, reason: String| Err(OpenError::InvalidConfig { field, reason });
        if self.dir.as_os_str().is_empty() {
            return bad("dir", "must not be empty".into());
        }
        if self.queue_capacity == 0 {
            return bad("queue_capacity", "must be at least 1".into());
        }
        if self.queue_capacity > MAX_QUEUE_CAPACITY {
            return bad(
                "queue_capacity",
                format!("must be at most {MAX_QUEUE_CAPACITY}"),
            );
        }
        if self.batch_size == 0 {
            return bad("batch_size", "must be at least 1".into());
        }
        if self.max_record_bytes == 0 || self.max_record_bytes > FRAME_PAYLOAD_LIMIT_BYTES {
            return bad(
                "max_record_bytes",
                format!("must be in 1..={FRAME_PAYLOAD_LIMIT_BYTES}"),
            );
        }
        if self.segment_bytes < MIN_SEGMENT_BYTES {
            return bad(
                "segment_bytes",
                format!("must be at least {MIN_SEGMENT_BYTES}"),
            );
        }
        if self.max_disk_bytes < self.segment_bytes.saturating_mul(2) {
            return bad(
                "max_disk_bytes",
                format!(
                    "{} is smaller than two segments (2 × segment_bytes = {})",
                    self.max_disk_bytes,
                    self.segment_bytes.saturating_mul(2)
                ),
            );
        }
        // Room for the largest record next to the largest active segment, or a `push`
        // of such a record could wait forever for budget that no deletion can free.
        let max_frame = frame_bytes(self.max_record_bytes);
        let max_active = self
            .segment_bytes
            .max(SEGMENT_HEADER_BYTES as u64 + max_frame);
        if max_active.saturating_add(max_frame) > self.max_disk_bytes {
            return bad(
                "max_disk_bytes",
                format!(
                    "{} cannot hold the largest record ({} bytes framed, from max_record_bytes) beside a full segment ({max_active} bytes)",
                    self.max_disk_bytes, max_frame
                ),
            );
        }
        if let Durability::Interval(d) = self.durability
            && d.is_zero()
        {
            return bad(
                "durability",
                "Interval(0) would fsync continuously: use Durability::Always".into(),
            );
        }
        let r = &self.retry;
        if r.initial_delay.is_zero() || r.max_delay < r.initial_delay {
            return bad("retry", "need 0 < initial_delay <= max_delay".into());
        }
        if !(r.multiplier.is_finite() && r.multiplier >= 1.0) {
            return bad(
                "retry",
                format!("multiplier must be finite and >= 1, got {}", r.multiplier),
            );
        }
        Ok(())
    }
}

/// Smallest accepted `segment_bytes`: a header plus room for frames.
pub const MIN_SEGMENT_BYTES: u64 = 4096;
/// Largest accepted `queue_capacity` (tokio's bounded channel limit is far higher; this
/// is a sanity bound on memory held by queued records).
pub const MAX_QUEUE_CAPACITY: usize = 1 << 24;

#[cfg(test)]
mod tests;
