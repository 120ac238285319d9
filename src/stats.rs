//! [`SinkStats`]: a snapshot of a sink's counters.

/// A snapshot of a sink's counters (see [`DurableSink::stats`](crate::DurableSink::stats)).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct SinkStats {
    /// Records accepted by push calls since open.
    pub pushed: u64,
    /// Records refused as `Overflow` (queue or disk budget full) since open.
    pub dropped: u64,
    /// Records accepted and not yet acknowledged, recovered ones included (an upper
    /// bound when seqs have gaps).
    pub pending: u64,
    /// Every record at or below this seq is in a segment file.
    pub written_seq: u64,
    /// Every record at or below this seq is durable.
    pub synced_seq: u64,
    /// Every record at or below this seq is acknowledged (or rejected, or lost).
    pub acked_seq: u64,
    /// Bytes of segment files plus frames reserved by queued records.
    pub wal_bytes: u64,
    /// Segment files.
    pub wal_segments: u64,
    /// `write_batch` calls.
    pub writes: u64,
    /// `write_batch` calls that failed, plus WAL write failures.
    pub write_errors: u64,
    /// Batches delivered again after a retryable error.
    pub retries: u64,
    /// Records rejected by the drain (permanent error) and skipped.
    pub rejected: u64,
    /// Recovered records delivered.
    pub replayed: u64,
    /// Records lost to corruption (or undecodable) and skipped.
    pub corrupt_records: u64,
    /// Files quarantined at open.
    pub quarantined_segments: u64,
    /// The writer is holding writes because the disk is full (ENOSPC); pushes see
    /// `Overflow` or wait until space is freed.
    pub disk_full: bool,
}
