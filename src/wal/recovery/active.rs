//! Steps 4 and 5 of recovery: scan the tail segment and truncate a torn tail, then
//! choose `next_seq`, make the lease say so and open the active segment.

use std::io;
use std::path::Path;

use crate::error::OpenError;
use crate::wal::format::{
    MAX_SEQ, RegisterKind, SEGMENT_HEADER_BYTES, SEQ_LEASE_FILE, SegmentHeader,
};
use crate::wal::register::Register;
use crate::wal::segment::{
    ScanStep, SegmentInfo, SegmentScanner, SegmentSet, create_segment, preallocate, segment_path,
};
use crate::wal::storage::{LockGuard, Storage, StorageFile};
use crate::wal::writer::LEASE_BLOCK;

use super::repair::Repaired;
use super::{Recovered, RecoveryLimits, RecoveryReport, UNVERIFIED_SEQ_MAX, io_err};

/// The tail segment after step 4.
#[derive(Debug, Clone, Copy)]
pub(super) struct Tail {
    pub(super) first_seq: u64,
    /// Seq of its last valid frame (`first_seq - 1` if it holds none).
    pub(super) last_seq: u64,
    /// File offset just past that frame.
    pub(super) valid_end: u64,
}

/// Step 4: scan the tail segment (the only one scanned: open time does not depend on
/// history) to its last valid frame, and truncate a torn tail after it.
pub(super) fn scan_tail(
    s: &dyn Storage,
    dir: &Path,
    set: &SegmentSet,
    limits: RecoveryLimits,
    report: &mut RecoveryReport,
) -> Result<Option<Tail>, OpenError> {
    let Some(info) = set.for_seq(u64::MAX) else {
        return Ok(None);
    };
    let path = segment_path(dir, info.first_seq);
    let file = s
        .open(&path, true)
        .map_err(io_err("open tail segment", &path))?;
    let mut scanner = SegmentScanner::new(file, info.first_seq, limits.max_record_bytes);
    // One pass over the tail; each step moves forward in the file.
    let trailing = loop {
        match scanner
            .next_step()
            .map_err(io_err("scan tail segment", &path))?
        {
            ScanStep::Frame { .. } => {}
            ScanStep::Corrupt { offset, kind } => {
                tracing::warn!(path = %path.display(), offset, %kind, "corrupt bytes in the tail segment; later valid frames are kept");
            }
            ScanStep::End { trailing_bytes } => break trailing_bytes,
        }
    };
    let valid_end = scanner.valid_end();
    let last_seq = scanner.expected_seq() - 1;
    drop(scanner);
    if trailing > 0 {
        let file = s
            .open(&path, true)
            .map_err(io_err("open tail segment", &path))?;
        // Zeros after the last frame are the preallocated tail of a segment that was
        // active at a crash, not damage; anything else is a torn write.
        let torn = !all_zero(file.as_ref(), valid_end, valid_end + trailing)
            .map_err(io_err("read tail segment", &path))?;
        file.set_len(valid_end)
            .map_err(io_err("truncate torn tail", &path))?;
        // fsync the truncation: a power loss must not bring the torn bytes back
        // behind frames appended after them.
        file.sync().map_err(io_err("sync truncated tail", &path))?;
        if torn {
            tracing::warn!(path = %path.display(), bytes = trailing, valid_end, "torn tail truncated");
            report.truncated_bytes = trailing;
        } else {
            tracing::debug!(path = %path.display(), bytes = trailing, "unused preallocated tail trimmed");
        }
    }
    Ok(Some(Tail {
        first_seq: info.first_seq,
        last_seq,
        valid_end,
    }))
}

/// Step 5: choose `next_seq` above every seq that may have been handed out, make the
/// lease say so, and open the active segment (the tail, or a new one).
pub(super) fn choose_active(
    s: &dyn Storage,
    dir: &Path,
    limits: RecoveryLimits,
    lock: Box<dyn LockGuard>,
    repaired: Repaired,
    tail: Option<Tail>,
    mut report: RecoveryReport,
) -> Result<Recovered, OpenError> {
    let Repaired {
        segments: mut set,
        cursor,
        lease,
        seen_seq_max,
        unverified_seq_max,
        has_history,
    } = repaired;
    let acked = cursor.value();
    let tail_last = tail.map_or(0, |t| t.last_seq);
    let mut next_seq = acked.saturating_add(1).max(tail_last.saturating_add(1));
    // A lease at or below a frame's seq is stale (damage put an older slot back): as
    // untrustworthy as a missing one.
    let lease_trusted = lease.as_ref().is_some_and(|l| l.value() > tail_last);
    if let (Some(l), false) = (&lease, lease_trusted) {
        tracing::error!(
            lease = l.value(),
            tail_last,
            "the seq lease is below a frame's seq: damaged; continuing past every seq seen"
        );
    }
    match &lease {
        // Every seq this directory ever handed out lies below a trusted lease, the
        // records of quarantined segments included.
        Some(l) if lease_trusted => next_seq = next_seq.max(l.value()),
        // Without a lease, seqs of records delivered and then erased by a power loss
        // leave no trace. They lie within one lease block of the last frame the writer
        // had synced when it last renewed the lease (it syncs before each renewal), so
        // jump a block past every seq the directory shows.
        _ if has_history => {
            let mut seen = seen_seq_max.max(tail_last);
            if unverified_seq_max > seen {
                // A quarantined file's name is not verified: honour it only in the
                // lower half of the seq space, or one stray empty file named near
                // 2^62 would leave the sink with few seqs, or none, to hand out.
                if unverified_seq_max <= UNVERIFIED_SEQ_MAX {
                    seen = unverified_seq_max;
                } else {
                    tracing::error!(
                        unverified_seq_max,
                        "a quarantined file names seqs near the end of the seq space; not honoured"
                    );
                }
            }
            next_seq = next_seq.max(seen.saturating_add(1).saturating_add(LEASE_BLOCK));
        }
        _ => {}
    }
    // Past the seq space the writer refuses every record; the sink still opens so that
    // what is on disk is delivered.
    let next_seq = next_seq.min(MAX_SEQ + 1);
    let lease = match lease {
        Some(mut l) => {
            if l.value() < next_seq {
                // A distrusted lease kept in place: raise it before anything names a
                // seq above it (a new segment), or the next open finds it impossible.
                let path = dir.join(SEQ_LEASE_FILE);
                l.write_durable_mirrored(next_seq)
                    .map_err(io_err("write register", &path))?;
            }
            l
        }
        None => {
            let path = dir.join(SEQ_LEASE_FILE);
            Register::create(s, dir, SEQ_LEASE_FILE, RegisterKind::SeqLease, next_seq)
                .map_err(io_err("create register", &path))?
        }
    };
    let reuse_tail = tail.filter(|t| {
        let contiguous =
            t.last_seq.saturating_add(1) == next_seq && t.valid_end < limits.segment_bytes;
        contiguous || next_seq > MAX_SEQ
    });
    let (active, active_first_seq, active_len) = match reuse_tail {
        Some(t) => {
            let path = segment_path(dir, t.first_seq);
            let file = s
                .open(&path, true)
                .map_err(io_err("open tail segment", &path))?;
            // fsync the tail kept as the active segment: a process that crashed may have
            // left its last frames in the page cache only. The writer relies on what it
            // continues from being durable (its syncs cover only what it writes, and a
            // lost lease is rebuilt from the last frame found after a power loss).
            file.sync().map_err(io_err("sync tail segment", &path))?;
            if limits.preallocate {
                preallocate(file.as_ref(), limits.segment_bytes);
            }
            set.set_len(t.first_seq, t.valid_end);
            (file, t.first_seq, t.valid_end)
        }
        None if next_seq > MAX_SEQ => {
            return Err(OpenError::Io {
                op: "choose the next seq",
                path: dir.to_path_buf(),
                source: io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!("the seq space is exhausted (next seq {next_seq} above {MAX_SEQ})"),
                ),
            });
        }
        None => {
            if let Some(t) = tail {
                set.set_len(t.first_seq, t.valid_end);
            }
            let header = SegmentHeader {
                codec_id: limits.codec_id,
                first_seq: next_seq,
                prev_last_seq: tail_last,
            };
            let path = segment_path(dir, next_seq);
            let reserve = if limits.preallocate {
                limits.segment_bytes
            } else {
                0
            };
            let file =
                create_segment(s, dir, header, reserve).map_err(io_err("create segment", &path))?;
            set.push(SegmentInfo {
                first_seq: next_seq,
                prev_last_seq: tail_last,
                len: SEGMENT_HEADER_BYTES as u64,
            });
            (file, next_seq, SEGMENT_HEADER_BYTES as u64)
        }
    };

    let last_written = next_seq - 1;
    let gaps = seq_gaps(&set, acked, last_written);
    let gap_seqs: u64 = gaps.iter().map(|&(lo, hi)| hi - lo + 1).sum();
    report.segments = set.count();
    report.acked_seq = acked;
    report.next_seq = next_seq;
    report.replay_records = last_written.saturating_sub(acked).saturating_sub(gap_seqs);
    tracing::info!(dir = %dir.display(), ?report, "WAL opened");
    Ok(Recovered {
        lock,
        segments: set,
        cursor,
        lease,
        active,
        active_first_seq,
        active_len,
        next_seq,
        gaps,
        report,
    })
}

/// The seqs in `(acked, last_written]` that name no record (inclusive ranges, in
/// order): below the first segment, and between a segment and the next one's first
/// seq when its header says where the previous one ended (after a crash the writer
/// continues at the lease, leaving up to a lease block unused). `pending()` counts
/// records, so it leaves these out.
pub(crate) fn seq_gaps(set: &SegmentSet, acked: u64, last_written: u64) -> Vec<(u64, u64)> {
    let mut gaps = Vec::new();
    let mut push = |lo: u64, hi: u64| {
        let lo = lo.max(acked.saturating_add(1));
        let hi = hi.min(last_written);
        if lo <= hi {
            gaps.push((lo, hi));
        }
    };
    let mut first = true;
    for seg in set.iter() {
        if first {
            push(0, seg.first_seq.saturating_sub(1));
            first = false;
        } else if seg.prev_last_seq != 0 {
            push(seg.prev_last_seq.saturating_add(1), seg.first_seq - 1);
        }
    }
    gaps
}

/// Whether bytes `[from, to)` of `file` are all zero (read in bounded chunks).
pub(super) fn all_zero(file: &dyn StorageFile, from: u64, to: u64) -> io::Result<bool> {
    let mut buf = vec![0u8; 256 * 1024];
    let mut at = from;
    while at < to {
        let want = usize::try_from(to - at)
            .unwrap_or(usize::MAX)
            .min(buf.len());
        let n =
            crate::wal::storage::read_full_at(file, buf.get_mut(..want).unwrap_or_default(), at)?;
        if n == 0 {
            break;
        }
        if buf.get(..n).unwrap_or_default().iter().any(|&b| b != 0) {
            return Ok(false);
        }
        at += n as u64;
    }
    Ok(true)
}
