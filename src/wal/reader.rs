//! Frames from the cursor onward, across segments.
//!
//! Live delivery and crash replay are the same code path: the delivery task always
//! reads records back from the segment files, whether they were written a microsecond
//! ago by this process or before a crash by another. The reader never goes past
//! `written_seq`, whose frames are complete in their files before it is published.
//!
//! # Counting what was lost
//!
//! Seqs are contiguous inside a segment, and each segment header names the previous
//! segment's last seq, so the reader counts records lost to damage exactly: a jump
//! inside a segment, a sealed segment ending early, a segment quarantined at open, or
//! bytes missing from the active segment.
//!
//! # Bounds
//!
//! One segment file open at a time; one scanner buffer (see `segment`); a batch stops at
//! `max_records` or once it holds `max_bytes` (so at most `max_bytes` plus one record).

use std::io;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, PoisonError};

use super::format::HeaderStatus;
use super::segment::{
    ScanStep, SegmentInfo, SegmentScanner, SegmentSet, read_header, segment_path,
};
use super::storage::Storage;

/// Frames read for one delivery, payloads in one buffer.
#[derive(Debug, Default)]
pub(crate) struct FrameBatch {
    seqs: Vec<u64>,
    data: Vec<u8>,
    ends: Vec<usize>,
}

impl FrameBatch {
    pub(crate) fn len(&self) -> usize {
        self.seqs.len()
    }
    pub(crate) fn is_empty(&self) -> bool {
        self.seqs.is_empty()
    }
    pub(crate) fn seqs(&self) -> &[u64] {
        &self.seqs
    }
    /// Payload of frame `i`.
    pub(crate) fn payload(&self, i: usize) -> &[u8] {
        let start = if i == 0 {
            0
        } else {
            self.ends.get(i - 1).copied().unwrap_or(0)
        };
        let end = self.ends.get(i).copied().unwrap_or(start);
        self.data.get(start..end).unwrap_or_default()
    }
    fn push(&mut self, seq: u64, payload: &[u8]) {
        self.seqs.push(seq);
        self.data.extend_from_slice(payload);
        self.ends.push(self.data.len());
    }
}

#[derive(Debug)]
struct Current {
    first_seq: u64,
    scanner: SegmentScanner,
}

/// Reads frames in seq order. See the module doc.
#[derive(Debug)]
pub(crate) struct WalReader {
    storage: Arc<dyn Storage>,
    dir: PathBuf,
    segments: Arc<Mutex<SegmentSet>>,
    max_payload_bytes: usize,
    /// Next seq to read: every record below it has been read (or is lost).
    position: u64,
    current: Option<Current>,
    /// Frames and payload bytes of the last batch: the next batch's buffers are sized
    /// from them, so steady delivery does not grow (and copy) them frame by frame.
    last_batch: (usize, usize),
}

impl WalReader {
    pub(crate) fn new(
        storage: Arc<dyn Storage>,
        dir: PathBuf,
        segments: Arc<Mutex<SegmentSet>>,
        max_payload_bytes: usize,
        position: u64,
    ) -> Self {
        Self {
            storage,
            dir,
            segments,
            max_payload_bytes,
            position,
            current: None,
            last_batch: (0, 0),
        }
    }

    /// Next seq to read.
    pub(crate) fn position(&self) -> u64 {
        self.position
    }

    /// Reads the next frames with seqs up to `written_seq` into a new batch. Returns the
    /// batch and how many records were found lost to damage on the way.
    pub(crate) fn read_batch(
        &mut self,
        written_seq: u64,
        max_records: usize,
        max_bytes: usize,
    ) -> io::Result<(FrameBatch, u64)> {
        let (frames_hint, bytes_hint) = self.last_batch;
        let frames_hint = frames_hint.min(max_records);
        let mut out = FrameBatch {
            seqs: Vec::with_capacity(frames_hint),
            data: Vec::with_capacity(bytes_hint.min(max_bytes)),
            ends: Vec::with_capacity(frames_hint),
        };
        let mut lost = 0u64;
        if let Err(e) = self.fill(&mut out, &mut lost, written_seq, max_records, max_bytes) {
            // The position has moved past every frame in `out` (and every record counted
            // in `lost`): dropping them here would lose them for good, since the next
            // call starts after them. Hand them over; the next call meets the error
            // again if it persists. With nothing read, the caller backs off and retries.
            if out.is_empty() && lost == 0 {
                return Err(e);
            }
            tracing::warn!(error = %e, frames = out.len(), "reading the WAL failed part way; delivering what was read first");
        }
        self.last_batch = (out.len(), out.data.len());
        Ok((out, lost))
    }

    /// The body of [`read_batch`](Self::read_batch): appends frames to `out` and counts
    /// lost records in `lost` until a limit is reached, or an error stops it (what it
    /// added so far stays valid).
    fn fill(
        &mut self,
        out: &mut FrameBatch,
        lost: &mut u64,
        written_seq: u64,
        max_records: usize,
        max_bytes: usize,
    ) -> io::Result<()> {
        let mut layout: Option<(u64, Option<SegmentInfo>, Option<u64>)> = None;
        // Each pass either appends a frame, skips an acked one, or moves the scanner or
        // the position forward; both are bounded by the files and by `written_seq`.
        while self.position <= written_seq
            && out.len() < max_records
            && (out.is_empty() || out.data.len() < max_bytes)
        {
            let Some(cur) = self.current_segment(written_seq, lost)? else {
                break;
            };
            let first_seq = cur.first_seq;
            // Looked up once per segment per call, not per frame: the writer records a
            // segment (and its length) before it publishes any seq written there, so
            // what is seen now covers every frame up to `written_seq`.
            let (next, logical_len) = match &layout {
                Some((seg, next, len)) if *seg == first_seq => (next.clone(), *len),
                _ => {
                    let set = self.segments.lock().unwrap_or_else(PoisonError::into_inner);
                    let found = (set.after(first_seq), set.get(first_seq).map(|i| i.len));
                    layout = Some((first_seq, found.0.clone(), found.1));
                    found
                }
            };
            let upper = next.as_ref().map_or(written_seq, |n| n.first_seq - 1);
            let Some(cur) = self.current.as_mut() else {
                break;
            };
            cur.scanner.set_upper_seq(upper);
            if let Some(len) = logical_len {
                // Never read past what the writer has written (the rest of the active
                // segment is preallocated zeros it will overwrite).
                cur.scanner.set_valid_len(len);
            }
            // Frames already buffered, in one tight loop; anything else (a refill,
            // damage, the end) goes through `next_step` below.
            let mut position = self.position;
            let taken = cur.scanner.take_buffered(|seq, payload| {
                if seq > written_seq
                    || out.len() >= max_records
                    || (!out.is_empty() && out.data.len() >= max_bytes)
                {
                    return false;
                }
                if seq >= position {
                    *lost += seq - position;
                    out.push(seq, payload);
                    position = seq + 1;
                }
                true
            });
            self.position = position;
            if taken > 0 {
                continue;
            }
            match cur.scanner.next_step()? {
                ScanStep::Frame { seq, payload } => {
                    if seq < self.position {
                        continue;
                    }
                    *lost += seq - self.position;
                    out.push(seq, payload);
                    self.position = seq + 1;
                }
                ScanStep::Corrupt { offset, kind } => {
                    tracing::warn!(segment = first_seq, offset, %kind, "corrupt bytes in WAL segment; skipping to the next valid frame");
                }
                ScanStep::End { trailing_bytes } => {
                    if trailing_bytes > 0 {
                        tracing::warn!(
                            segment = first_seq,
                            trailing_bytes,
                            "WAL segment ends in bytes that are not a valid frame"
                        );
                    }
                    match next {
                        Some(n) => {
                            // The next header says where this segment should have ended.
                            let expected_last = if n.prev_last_seq == 0 {
                                0
                            } else {
                                n.prev_last_seq.min(n.first_seq - 1)
                            };
                            if expected_last >= self.position {
                                tracing::warn!(
                                    segment = first_seq,
                                    from = self.position,
                                    to = expected_last,
                                    "records missing at the end of a WAL segment"
                                );
                                *lost += expected_last - self.position + 1;
                            }
                            self.position = self.position.max(n.first_seq);
                            self.current = None;
                        }
                        None => {
                            // Every record up to `written_seq` is complete in the active
                            // segment, so reaching its end short of that is damage.
                            tracing::warn!(
                                segment = first_seq,
                                from = self.position,
                                to = written_seq,
                                "records missing from the active WAL segment"
                            );
                            *lost += written_seq - self.position + 1;
                            self.position = written_seq + 1;
                        }
                    }
                }
            }
        }
        Ok(())
    }

    /// Opens the segment holding `position` if none is open. `None` if there is none.
    fn current_segment(
        &mut self,
        written_seq: u64,
        lost: &mut u64,
    ) -> io::Result<Option<&Current>> {
        while self.current.is_none() {
            let (seg, next) = {
                let set = self.segments.lock().unwrap_or_else(PoisonError::into_inner);
                let Some(seg) = set.for_seq(self.position) else {
                    return Ok(None);
                };
                let next = set.after(seg.first_seq);
                (seg, next)
            };
            self.position = self.position.max(seg.first_seq);
            if self.position > written_seq {
                return Ok(None);
            }
            let path = segment_path(&self.dir, seg.first_seq);
            let file = self.storage.open(&path, false)?;
            match read_header(file.as_ref())? {
                HeaderStatus::Valid(h) if h.first_seq == seg.first_seq => {
                    self.current = Some(Current {
                        first_seq: seg.first_seq,
                        scanner: SegmentScanner::new(file, seg.first_seq, self.max_payload_bytes),
                    });
                }
                status => {
                    // Checked at open or written by this process: damaged since.
                    let upper = next.as_ref().map_or(written_seq, |n| n.first_seq - 1);
                    tracing::error!(path = %path.display(), ?status, "WAL segment header damaged while in use; its records are lost");
                    *lost += upper.saturating_sub(self.position) + 1;
                    self.position = upper + 1;
                    if next.is_none() {
                        return Ok(None);
                    }
                }
            }
        }
        Ok(self.current.as_ref())
    }
}
