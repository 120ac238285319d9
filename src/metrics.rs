//! Every metric name in one place (the table in docs/OPERATIONS.md).
//!
//! Handles are registered once at open through the `metrics` facade, so the hot path
//! pays an atomic increment, not a name lookup. With `metric_prefix: None` every handle
//! is a no-op. Install the recorder before opening the sink: handles are bound to the
//! recorder present at open.

use metrics::{Counter, Gauge, Histogram};

/// The sink's metric handles.
#[derive(Debug)]
pub(crate) struct Metrics {
    pub(crate) pushed: Counter,
    pub(crate) dropped: Counter,
    pub(crate) writes: Counter,
    pub(crate) write_errors: Counter,
    pub(crate) pending: Gauge,
    pub(crate) wal_bytes: Gauge,
    pub(crate) wal_segments: Gauge,
    pub(crate) fsync_seconds: Histogram,
    pub(crate) acked_seq: Gauge,
    pub(crate) replayed: Counter,
    pub(crate) retries: Counter,
    pub(crate) rejected: Counter,
    pub(crate) corrupt_records: Counter,
    pub(crate) quarantined_segments: Counter,
}

/// Metric name suffixes with their descriptions, in the order of the table in docs/OPERATIONS.md.
pub(crate) const METRIC_NAMES: [(&str, &str); 14] = [
    ("pushed_total", "Records accepted by push calls"),
    (
        "dropped_total",
        "Records refused because the sink was full (Overflow::Drop)",
    ),
    ("writes_total", "write_batch calls made to the drain"),
    (
        "write_errors_total",
        "write_batch calls that returned an error",
    ),
    (
        "pending",
        "Records accepted but not yet acknowledged by the drain",
    ),
    ("wal_bytes", "Bytes in WAL segment files"),
    ("wal_segments", "WAL segment files"),
    ("fsync_seconds", "Latency of WAL data fsyncs"),
    (
        "acked_seq",
        "Seq through which every record is acknowledged",
    ),
    (
        "replayed_total",
        "Records delivered that were recovered from an earlier run",
    ),
    (
        "retries_total",
        "Batches delivered again after a retryable drain error",
    ),
    (
        "rejected_total",
        "Records rejected by the drain with a permanent error and skipped",
    ),
    (
        "corrupt_records_total",
        "Records lost to corruption and skipped",
    ),
    (
        "quarantined_segments_total",
        "Files renamed aside because they could not be read",
    ),
];

impl Metrics {
    /// Handles for `prefix`, or no-ops.
    pub(crate) fn new(prefix: Option<&str>) -> Self {
        let Some(p) = prefix else { return Self::noop() };
        for (name, help) in METRIC_NAMES {
            let full = format!("{p}_{name}");
            match name {
                "pending" | "wal_bytes" | "wal_segments" | "acked_seq" => {
                    metrics::describe_gauge!(full, help)
                }
                "fsync_seconds" => metrics::describe_histogram!(full, metrics::Unit::Seconds, help),
                _ => metrics::describe_counter!(full, help),
            }
        }
        let c = |n: &str| metrics::counter!(format!("{p}_{n}"));
        let g = |n: &str| metrics::gauge!(format!("{p}_{n}"));
        Self {
            pushed: c("pushed_total"),
            dropped: c("dropped_total"),
            writes: c("writes_total"),
            write_errors: c("write_errors_total"),
            pending: g("pending"),
            wal_bytes: g("wal_bytes"),
            wal_segments: g("wal_segments"),
            fsync_seconds: metrics::histogram!(format!("{p}_fsync_seconds")),
            acked_seq: g("acked_seq"),
            replayed: c("replayed_total"),
            retries: c("retries_total"),
            rejected: c("rejected_total"),
            corrupt_records: c("corrupt_records_total"),
            quarantined_segments: c("quarantined_segments_total"),
        }
    }

    fn noop() -> Self {
        Self {
            pushed: Counter::noop(),
            dropped: Counter::noop(),
            writes: Counter::noop(),
            write_errors: Counter::noop(),
            pending: Gauge::noop(),
            wal_bytes: Gauge::noop(),
            wal_segments: Gauge::noop(),
            fsync_seconds: Histogram::noop(),
            acked_seq: Gauge::noop(),
            replayed: Counter::noop(),
            retries: Counter::noop(),
            rejected: Counter::noop(),
            corrupt_records: Counter::noop(),
            quarantined_segments: Counter::noop(),
        }
    }
}
