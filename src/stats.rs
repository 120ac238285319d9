//! [`SinkStats`], a snapshot of what a sink counts, and the counters behind it.
//!
//! Each event counter is defined once, in the `counters` list below: its `SinkStats`
//! field and doc, the atomic that keeps it, its metric name and help text. The
//! `counters!` macro derives the rest, so a counter cannot be in `stats()` and missing
//! from the metrics, or the other way round. The values that are not event counts
//! (seqs, gauges, `pushed`, kept by the queue itself) are listed in `values` and
//! filled by [`DurableSink::stats`](crate::DurableSink::stats).

use std::sync::atomic::{AtomicU64, Ordering};

use metrics::Counter;

/// One event counter: an atomic (for `stats()`) and its metric handle.
#[derive(Debug)]
pub(crate) struct Counted {
    value: AtomicU64,
    metric: Counter,
}

impl Counted {
    fn new(metric: Counter) -> Self {
        Self {
            value: AtomicU64::new(0),
            metric,
        }
    }

    /// Counts `n` events.
    pub(crate) fn add(&self, n: u64) {
        self.value.fetch_add(n, Ordering::Relaxed);
        self.metric.increment(n);
    }

    /// Events counted since open.
    pub(crate) fn get(&self) -> u64 {
        self.value.load(Ordering::Relaxed)
    }
}

macro_rules! counters {
    (
        values { $( $(#[$vdoc:meta])* $value:ident : $vty:ty, )* }
        counters { $( $(#[$cdoc:meta])* $counter:ident => $metric:literal, $help:literal; )* }
    ) => {
        /// A snapshot of a sink's counters (see
        /// [`DurableSink::stats`](crate::DurableSink::stats)).
        #[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
        #[non_exhaustive]
        pub struct SinkStats {
            $( $(#[$vdoc])* pub $value: $vty, )*
            $( $(#[$cdoc])* pub $counter: u64, )*
        }

        /// The sink's event counters (see the module doc).
        #[derive(Debug)]
        pub(crate) struct Counters {
            $( pub(crate) $counter: Counted, )*
        }

        /// Each counter's metric name suffix and help text.
        #[cfg(test)]
        pub(crate) const COUNTER_METRICS: &[(&str, &str)] = &[ $( ($metric, $help), )* ];

        impl Counters {
            /// Counters whose metrics are named `{prefix}_{name}`, or not exported.
            pub(crate) fn new(prefix: Option<&str>) -> Self {
                let metric = |name: &str, help: &'static str| match prefix {
                    Some(p) => {
                        let full = format!("{p}_{name}");
                        metrics::describe_counter!(full.clone(), help);
                        metrics::counter!(full)
                    }
                    None => Counter::noop(),
                };
                Self { $( $counter: Counted::new(metric($metric, $help)), )* }
            }

            /// Copies every counter into `stats`.
            pub(crate) fn fill(&self, stats: &mut SinkStats) {
                $( stats.$counter = self.$counter.get(); )*
            }
        }
    };
}

counters! {
    values {
        /// Records accepted by push calls since open.
        pushed: u64,
        /// Records accepted and not yet acknowledged, recovered ones included (seqs a
        /// crash left unused are not counted).
        pending: u64,
        /// Every record at or below this seq is in a segment file.
        written_seq: u64,
        /// Every record at or below this seq is durable.
        synced_seq: u64,
        /// Every record at or below this seq is acknowledged (or rejected, or lost).
        acked_seq: u64,
        /// Bytes of segment files plus frames reserved by queued records.
        wal_bytes: u64,
        /// Segment files.
        wal_segments: u64,
        /// The writer is holding writes because the disk is full (ENOSPC); pushes see
        /// `Overflow` or wait until space is freed.
        disk_full: bool,
        /// Bytes of the dead-letter store's files.
        dead_letter_bytes: u64,
    }
    counters {
        /// Records refused as `Overflow` (queue or disk budget full) since open.
        dropped => "dropped_total", "Records refused because the sink was full (Overflow::Drop)";
        /// `write_batch` calls.
        writes => "writes_total", "write_batch calls made to the drain";
        /// `write_batch` calls that failed, plus WAL write failures.
        write_errors => "write_errors_total", "write_batch calls that returned an error";
        /// Batches delivered again after a retryable error.
        retries => "retries_total", "Batches delivered again after a retryable drain error";
        /// Records rejected by the drain (permanent error) and skipped.
        rejected => "rejected_total", "Records rejected by the drain with a permanent error and skipped";
        /// Recovered records delivered.
        replayed => "replayed_total", "Records delivered that were recovered from an earlier run";
        /// Records lost to corruption (or undecodable) and skipped.
        corrupt_records => "corrupt_records_total", "Records lost to corruption and skipped";
        /// Files quarantined at open.
        quarantined_segments => "quarantined_segments_total", "Files renamed aside because they could not be read";
        /// Records stored in the dead-letter store (rejected or undecodable).
        dead_lettered => "dead_lettered_total", "Records stored as dead letters (rejected or undecodable)";
        /// Dead letters refused because the store was full (logged with their seq and
        /// skipped).
        dead_letters_refused => "dead_letters_refused_total", "Dead letters refused because the store was full (skipped)";
        /// Dead letters appended back to the WAL by a redrive through this sink.
        redriven => "redriven_total", "Dead letters appended back to the WAL by a redrive";
    }
}

#[cfg(test)]
mod tests;
