//! The sink's metric handles besides its event counters (which `stats.rs` defines,
//! each once, with their metric names). The table in docs/OPERATIONS.md lists all.
//!
//! Handles are registered once at open through the `metrics` facade, so the hot path
//! pays an atomic increment, not a name lookup. With `metric_prefix: None` every handle
//! is a no-op. Install the recorder before opening the sink: handles are bound to the
//! recorder present at open.

use metrics::{Counter, Gauge, Histogram};

use crate::shared::CachePadded;
use crate::stats::Counters;

/// The sink's event counters, gauges, latency histogram and ingest counter.
#[derive(Debug)]
pub(crate) struct Metrics {
    /// Event counters, each an atomic for `stats()` and a metric. On lines of their
    /// own: the delivery task bumps them per batch, and producers read fields that
    /// would otherwise share their cache line on every push.
    pub(crate) counters: CachePadded<Counters>,
    /// Counted by the writer as it takes records (`stats().pushed` is the queue's
    /// exact count).
    pub(crate) pushed: Counter,
    pub(crate) pending: Gauge,
    pub(crate) wal_bytes: Gauge,
    pub(crate) wal_segments: Gauge,
    pub(crate) fsync_seconds: Histogram,
    pub(crate) acked_seq: Gauge,
    pub(crate) dead_letter_bytes: Gauge,
}

impl Metrics {
    /// Handles for `prefix`, or no-ops.
    pub(crate) fn new(prefix: Option<&str>) -> Self {
        let counters = CachePadded(Counters::new(prefix));
        let Some(p) = prefix else {
            return Self::noop(counters);
        };
        let name = |n: &str| format!("{p}_{n}");
        let gauge = |n: &str, help: &'static str| {
            metrics::describe_gauge!(name(n), help);
            metrics::gauge!(name(n))
        };
        metrics::describe_counter!(name("pushed_total"), "Records accepted by push calls");
        metrics::describe_histogram!(
            name("fsync_seconds"),
            metrics::Unit::Seconds,
            "Latency of WAL data fsyncs"
        );
        Self {
            counters,
            pushed: metrics::counter!(name("pushed_total")),
            pending: gauge(
                "pending",
                "Records accepted but not yet acknowledged by the drain",
            ),
            wal_bytes: gauge("wal_bytes", "Bytes in WAL segment files"),
            wal_segments: gauge("wal_segments", "WAL segment files"),
            fsync_seconds: metrics::histogram!(name("fsync_seconds")),
            acked_seq: gauge(
                "acked_seq",
                "Seq through which every record is acknowledged",
            ),
            dead_letter_bytes: gauge(
                "dead_letter_bytes",
                "Bytes of the dead-letter store's files",
            ),
        }
    }

    fn noop(counters: CachePadded<Counters>) -> Self {
        Self {
            counters,
            pushed: Counter::noop(),
            pending: Gauge::noop(),
            wal_bytes: Gauge::noop(),
            wal_segments: Gauge::noop(),
            fsync_seconds: Histogram::noop(),
            acked_seq: Gauge::noop(),
            dead_letter_bytes: Gauge::noop(),
        }
    }
}
