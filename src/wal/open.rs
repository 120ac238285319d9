//! The log's one entry point for the sink: [`Wal::open`] recovers a directory and
//! wires the pieces that share it (the segment set, the directory lock, the state
//! shared with producers), so the sink needs to know nothing of registers, segments or
//! recovery.
//!
//! Who holds what afterwards: the writer thread owns the active segment and the seq
//! lease; the delivery task owns the reader and the cursor; both see the segment set
//! (behind one mutex) and hold a clone of the directory lock, which is released only
//! when both are gone.

use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};

use super::cursor::Cursor;
use super::format::FRAME_PAYLOAD_LIMIT_BYTES;
use super::reader::WalReader;
use super::recovery::{RecoveryLimits, RecoveryReport, recover};
use super::storage::{LockGuard, Storage};
use super::writer::{SyncPolicy, WalWriter, WriterLog};
use crate::error::OpenError;
use crate::metrics::Metrics;
use crate::shared::Shared;

/// What the log needs to know from the sink's configuration.
#[derive(Debug, Clone)]
pub(crate) struct WalConfig {
    /// The WAL directory.
    pub(crate) dir: PathBuf,
    /// Codec id recorded in (and checked against) every segment header.
    pub(crate) codec_id: u32,
    /// Roll threshold.
    pub(crate) segment_bytes: u64,
    /// Disk budget for segments.
    pub(crate) max_disk_bytes: u64,
    /// When the writer fsyncs on its own.
    pub(crate) sync_policy: SyncPolicy,
    /// Zero-fill the active segment ahead of the writer (a thread; see `prefill`).
    pub(crate) prefill: bool,
}

/// An opened log, ready to be handed to the writer thread and the delivery task.
#[derive(Debug)]
pub(crate) struct Wal {
    /// State shared by producers, the writer and the delivery task, initialised from
    /// what recovery found (disk use, seqs, seq gaps, counters).
    pub(crate) shared: Arc<Shared>,
    pub(crate) writer: WalWriter,
    pub(crate) reader: WalReader,
    pub(crate) cursor: Cursor,
    /// Last seq written by an earlier run: records up to it are replayed.
    pub(crate) replay_through: u64,
    pub(crate) report: RecoveryReport,
    /// The directory lock (the writer and the cursor hold clones): another holder, the
    /// dead-letter store, keeps it no longer than the sink runs.
    pub(crate) lock: Arc<dyn LockGuard>,
}

impl Wal {
    /// Recovers the directory (blocking I/O: call it from a blocking context) and wires
    /// the writer, reader and cursor around it.
    pub(crate) fn open(
        storage: Arc<dyn Storage>,
        cfg: WalConfig,
        metrics: Metrics,
    ) -> Result<Self, OpenError> {
        let limits = RecoveryLimits {
            codec_id: cfg.codec_id,
            segment_bytes: cfg.segment_bytes,
            // Whatever the format allows, not the configured `max_record_bytes`: that
            // limit is on new records, and a directory keeps the records written under
            // a larger one (taken for damage, they were truncated or skipped).
            max_record_bytes: FRAME_PAYLOAD_LIMIT_BYTES,
            preallocate: true,
        };
        let rec = recover(&storage, &cfg.dir, limits)?;

        let shared = Arc::new(Shared::new(metrics, cfg.max_disk_bytes, rec.gaps));
        shared
            .disk_used
            .store(rec.segments.total_bytes(), Ordering::Relaxed);
        shared
            .wal_segments
            .store(rec.segments.count() as u64, Ordering::Relaxed);
        shared
            .counters()
            .quarantined_segments
            .add(rec.report.quarantined.len() as u64);
        let last_seq = rec.next_seq - 1;
        shared.written_seq.store(last_seq, Ordering::Relaxed);
        shared.synced_seq.store(last_seq, Ordering::Relaxed);
        let acked = rec.cursor.value();
        shared.acked_seq.store(acked, Ordering::Relaxed);

        let segments = Arc::new(Mutex::new(rec.segments));
        // Held by the cursor and by the writer thread: released only when both are done
        // with the directory, however either ends.
        let lock: Arc<dyn LockGuard> = Arc::from(rec.lock);
        let reader = WalReader::new(
            Arc::clone(&storage),
            cfg.dir.clone(),
            Arc::clone(&segments),
            FRAME_PAYLOAD_LIMIT_BYTES,
            acked.saturating_add(1),
        );
        let cursor = Cursor::new(
            rec.cursor,
            Arc::clone(&storage),
            cfg.dir.clone(),
            Arc::clone(&segments),
            Arc::clone(&shared),
            Arc::clone(&lock),
        );
        let writer = WalWriter::new(WriterLog {
            storage,
            dir: cfg.dir,
            codec_id: cfg.codec_id,
            segment_bytes: cfg.segment_bytes,
            sync_policy: cfg.sync_policy,
            segments,
            shared: Arc::clone(&shared),
            active: rec.active,
            active_first_seq: rec.active_first_seq,
            active_len: rec.active_len,
            next_seq: rec.next_seq,
            lease: rec.lease,
            prefill: cfg.prefill,
            lock: Arc::clone(&lock),
        });
        Ok(Self {
            lock,
            shared,
            writer,
            reader,
            cursor,
            replay_through: last_seq,
            report: rec.report,
        })
    }
}
