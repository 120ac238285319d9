//! One segment file: creating it, scanning its frames, and the set of live segments.
//!
//! # Invariants
//!
//! - Within a segment, frames are contiguous: each seq is the previous one plus one,
//!   starting at the header's `first_seq`. A jump inside a segment therefore means lost
//!   (corrupt) records, and the size of the jump counts them exactly.
//! - Gaps between segments are legal (after a crash the writer starts above its seq
//!   lease). Each header records the previous segment's last seq when it was created,
//!   so a sealed segment that lost frames at its end is still noticed.
//! - Bytes below a segment's *logical* length are final: the writer only appends, so a
//!   reader may cache what it read below it. The active segment is preallocated, so
//!   its file is longer than its logical length and the bytes past it are zeros that
//!   the writer will overwrite: the reader bounds every read by the logical length the
//!   writer publishes in the [`SegmentSet`]. Sealed segments are trimmed to their
//!   last frame. Nothing is trusted before its CRC is checked.
//! - No frame header is 16 zero bytes (a seq is at least 1), so a run of zeros (a
//!   preallocated tail after a crash) is skipped in one step, not byte by byte.
//! - The scanner's buffer holds at most `max(READ_CHUNK_BYTES, largest frame)` bytes,
//!   and while it checks a damaged length whose seq looks right, up to the rest of that
//!   segment file (a length is read only as far as the file extends); it is freed with
//!   the scanner, at the end of the segment. Memory does not grow with the backlog.

use std::collections::BTreeMap;
use std::io;
use std::path::{Path, PathBuf};

use super::format::{
    CorruptionKind, FRAME_HEADER_BYTES, FrameHeader, FrameStatus, HeaderStatus, MAX_SEQ,
    SEGMENT_HEADER_BYTES, SegmentHeader, segment_file_name,
};
use super::storage::{Storage, StorageFile, read_full_at};

/// Bytes read from a segment at a time.
pub(crate) const READ_CHUNK_BYTES: usize = 256 * 1024;

/// What the set knows about one segment file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct SegmentInfo {
    /// First seq (and file name).
    pub(crate) first_seq: u64,
    /// Header field: the previous segment's last seq at creation, 0 if unknown.
    pub(crate) prev_last_seq: u64,
    /// Bytes on disk, as counted against the disk budget.
    pub(crate) len: u64,
}

/// The live segments, ordered by first seq. The last one is the writer's active
/// segment and is never deleted. Shared by the writer (adds, grows) and the actor
/// (reads, deletes) behind one mutex with short critical sections.
#[derive(Debug, Default)]
pub(crate) struct SegmentSet {
    map: BTreeMap<u64, SegmentInfo>,
}

impl SegmentSet {
    /// Adds a segment; its first seq must be above every existing one.
    pub(crate) fn push(&mut self, info: SegmentInfo) {
        if let Some((&last, _)) = self.map.last_key_value() {
            assert!(
                info.first_seq > last,
                "invariant violation: new segment {} not above last segment {last}",
                info.first_seq
            );
        }
        self.map.insert(info.first_seq, info);
    }

    /// Sets the byte length of a segment (the active one grows as the writer appends).
    pub(crate) fn set_len(&mut self, first_seq: u64, len: u64) {
        if let Some(info) = self.map.get_mut(&first_seq) {
            info.len = len;
        }
    }

    /// The segment that may contain `seq`: the last one starting at or below it, or the
    /// first one if `seq` lies below every segment.
    pub(crate) fn for_seq(&self, seq: u64) -> Option<SegmentInfo> {
        self.map
            .range(..=seq)
            .next_back()
            .or_else(|| self.map.first_key_value())
            .map(|(_, i)| i.clone())
    }

    /// The segment after the one starting at `first_seq`, if any.
    pub(crate) fn after(&self, first_seq: u64) -> Option<SegmentInfo> {
        self.map
            .range(first_seq.saturating_add(1)..)
            .next()
            .map(|(_, i)| i.clone())
    }

    /// Sealed segments whose every seq is at or below `acked_through`: those before a
    /// segment starting at or below `acked_through + 1`. Never the last (active) one.
    pub(crate) fn fully_acked(&self, acked_through: u64) -> Vec<SegmentInfo> {
        let mut out = Vec::new();
        let mut iter = self.map.values().peekable();
        while let Some(seg) = iter.next() {
            match iter.peek() {
                Some(next) if next.first_seq.saturating_sub(1) <= acked_through => {
                    out.push(seg.clone())
                }
                _ => break,
            }
        }
        out
    }

    /// The segment starting at `first_seq`.
    pub(crate) fn get(&self, first_seq: u64) -> Option<SegmentInfo> {
        self.map.get(&first_seq).cloned()
    }

    /// Removes a segment from the set.
    pub(crate) fn remove(&mut self, first_seq: u64) -> Option<SegmentInfo> {
        self.map.remove(&first_seq)
    }

    /// The segments in seq order.
    pub(crate) fn iter(&self) -> impl Iterator<Item = &SegmentInfo> {
        self.map.values()
    }

    /// Number of segments.
    pub(crate) fn count(&self) -> usize {
        self.map.len()
    }

    /// Sum of segment lengths.
    pub(crate) fn total_bytes(&self) -> u64 {
        self.map.values().map(|i| i.len).sum()
    }
}

/// Path of the segment starting at `first_seq`.
pub(crate) fn segment_path(dir: &Path, first_seq: u64) -> PathBuf {
    dir.join(segment_file_name(first_seq))
}

/// Creates a segment file with its header, preallocated to `preallocate_bytes`, durable
/// (data, size and directory entry) before it returns.
pub(crate) fn create_segment(
    storage: &dyn Storage,
    dir: &Path,
    header: SegmentHeader,
    preallocate_bytes: u64,
) -> io::Result<Box<dyn StorageFile>> {
    let file = storage.create_new(&segment_path(dir, header.first_seq))?;
    file.write_all_at(&header.encode(), 0)?;
    if preallocate_bytes > 0 {
        preallocate(file.as_ref(), preallocate_bytes);
    }
    // Sync the file: a power loss must not leave a segment whose header is missing or
    // torn, which the next open would have to quarantine.
    file.sync()?;
    // Sync the directory: a power loss could drop the new segment's entry, and records
    // later reported durable in it would vanish with it.
    storage.sync_dir(dir)?;
    Ok(file)
}

/// Reserves the segment's space ahead, so that appends need no block allocation and
/// an fdatasync no size update. Only an optimization: on failure (a full disk, a
/// filesystem without fallocate) the segment grows as it is written.
pub(crate) fn preallocate(file: &dyn StorageFile, bytes: u64) {
    if let Err(e) = file.allocate(bytes) {
        tracing::debug!(error = %e, bytes, "segment preallocation failed; the segment will grow as written");
    }
}

/// Reads and decodes a segment header from an open file.
pub(crate) fn read_header(file: &dyn StorageFile) -> io::Result<HeaderStatus> {
    let mut buf = [0u8; SEGMENT_HEADER_BYTES];
    let n = read_full_at(file, &mut buf, 0)?;
    Ok(SegmentHeader::decode(buf.get(..n).unwrap_or_default()))
}

/// One step of a [`SegmentScanner`].
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum ScanStep<'a> {
    /// A valid frame. `seq` is at or above the seq expected; a jump means records lost.
    Frame {
        /// Its seq.
        seq: u64,
        /// Its payload.
        payload: &'a [u8],
    },
    /// Damaged bytes start at `offset`; the scanner has moved past them (to the next
    /// valid frame, or to the end).
    Corrupt {
        /// File offset of the damage.
        offset: u64,
        /// What was wrong there.
        kind: CorruptionKind,
    },
    /// No further valid frame (yet). `trailing_bytes` follow the last valid frame.
    End {
        /// Bytes after the last valid frame that do not form a valid frame.
        trailing_bytes: u64,
    },
}

/// Reads the frames of one segment in order, skipping damage.
#[derive(Debug)]
pub(crate) struct SegmentScanner {
    file: Box<dyn StorageFile>,
    max_payload_bytes: usize,
    /// Read buffer. Only `buf[..filled]` holds file contents; the rest is initialized
    /// space kept for the next read, so a refill does not zero it again (zeroing up to
    /// a whole chunk per refill was a quarter of the delivery reader's instructions
    /// while it followed the writer's tail).
    buf: Vec<u8>,
    /// Bytes of `buf` that hold file contents.
    filled: usize,
    /// File offset of `buf[0]`.
    buf_offset: u64,
    /// File offset of the next frame to decode.
    offset: u64,
    /// Seq the next frame should have.
    expected_seq: u64,
    /// Highest seq a frame of this segment may have.
    upper_seq: u64,
    /// File offset just past the last valid frame.
    valid_end: u64,
    /// Set when the bytes from this offset on did not resync; retried on the next call.
    garbage_from: Option<u64>,
    /// The segment's first seq.
    first_seq: u64,
    /// Readable length as last seen (refreshed when a read wants more).
    file_len: u64,
    /// When set, nothing at or past this offset is read (the active segment's logical
    /// length; the file beyond it is preallocated zeros).
    valid_len: Option<u64>,
}

impl SegmentScanner {
    /// A scanner over `file`, whose header (already checked) says `first_seq`.
    pub(crate) fn new(
        file: Box<dyn StorageFile>,
        first_seq: u64,
        max_payload_bytes: usize,
    ) -> Self {
        // A failed stat reads as empty; `ensure` looks again before concluding EOF.
        let file_len = file.len().unwrap_or(0);
        Self {
            valid_len: None,
            first_seq,
            file_len,
            file,
            max_payload_bytes,
            buf: Vec::new(),
            filled: 0,
            buf_offset: SEGMENT_HEADER_BYTES as u64,
            offset: SEGMENT_HEADER_BYTES as u64,
            expected_seq: first_seq,
            upper_seq: u64::MAX,
            valid_end: SEGMENT_HEADER_BYTES as u64,
            garbage_from: None,
        }
    }

    /// Bounds the seqs accepted as valid (the next segment's first seq minus one, or
    /// the last written seq for the active segment). Used by resync to reject stale or
    /// foreign frames.
    pub(crate) fn set_upper_seq(&mut self, upper_seq: u64) {
        self.upper_seq = upper_seq;
    }

    /// Bounds reads to the first `len` bytes (the active segment's logical length).
    pub(crate) fn set_valid_len(&mut self, len: u64) {
        self.valid_len = Some(len);
        self.file_len = len;
    }

    fn readable_len(&self) -> io::Result<u64> {
        match self.valid_len {
            Some(len) => Ok(len),
            None => self.file.len(),
        }
    }

    /// File offset just past the last valid frame: where a torn tail is truncated.
    pub(crate) fn valid_end(&self) -> u64 {
        self.valid_end
    }

    /// Seq the next valid frame is expected to carry.
    pub(crate) fn expected_seq(&self) -> u64 {
        self.expected_seq
    }

    /// Makes `buf` hold the bytes at `[offset, offset + need)` as far as the file has
    /// them; returns how many it holds from `offset` (less than `need` only at EOF).
    /// Reads at most once per call, and not at all when the file has nothing more.
    fn ensure(&mut self, offset: u64, need: usize) -> io::Result<usize> {
        let have_end = self.buf_offset + self.filled as u64;
        let covered = |n: usize| offset >= self.buf_offset && offset + n as u64 <= have_end;
        if covered(need) {
            return Ok(need);
        }
        if offset + need as u64 > self.file_len {
            // The active segment grows: look again before concluding EOF.
            self.file_len = self.readable_len()?;
        }
        let in_file = usize::try_from(self.file_len.saturating_sub(offset)).unwrap_or(usize::MAX);
        let need = need.min(in_file);
        if covered(need) {
            return Ok(need);
        }
        if offset >= self.buf_offset && offset <= have_end {
            let keep_from = usize::try_from(offset - self.buf_offset)
                .unwrap_or(self.filled)
                .min(self.filled);
            self.buf.copy_within(keep_from..self.filled, 0);
            self.filled -= keep_from;
        } else {
            self.filled = 0;
        }
        self.buf_offset = offset;
        let want = need.max(READ_CHUNK_BYTES).min(in_file);
        let have = self.filled;
        if have < want {
            if self.buf.len() < want {
                // Zeroes only bytes never used before.
                self.buf.resize(want, 0);
            }
            let read = read_full_at(
                self.file.as_ref(),
                self.buf.get_mut(have..want).unwrap_or_default(),
                offset + have as u64,
            );
            // On error `filled` stays at `have`: whatever the failed read left in the
            // buffer is never taken for file contents.
            let n = read?;
            // A storage that reported more than it was given must not move `filled`
            // past the buffer.
            self.filled = have + n.min(want - have);
        }
        Ok(self.filled.min(need))
    }

    fn window(&self, offset: u64, len: usize) -> &[u8] {
        let start = usize::try_from(offset.saturating_sub(self.buf_offset)).unwrap_or(usize::MAX);
        self.buf
            .get(start..self.filled)
            .and_then(|b| b.get(..len.min(b.len())))
            .unwrap_or_default()
    }

    /// Decodes the frame at `offset`. Cheap checks first (length limit, seq in the
    /// acceptable window), the CRC last: resync tries every byte offset of a damaged
    /// region, and random bytes almost never pass the seq window, so a damaged
    /// segment is skipped in time linear in its size. `Ok(None)` at EOF.
    fn frame_at(&mut self, offset: u64) -> io::Result<Option<FrameStatus>> {
        let avail = self.ensure(offset, FRAME_HEADER_BYTES)?;
        if avail == 0 {
            return Ok(None);
        }
        let Some(h) = FrameHeader::peek(self.window(offset, avail)) else {
            return Ok(Some(FrameStatus::Incomplete {
                needed: FRAME_HEADER_BYTES,
            }));
        };
        if h.len as usize > self.max_payload_bytes {
            return Ok(Some(FrameStatus::Corrupt(
                CorruptionKind::LengthOverLimit {
                    len: u64::from(h.len),
                    limit: self.max_payload_bytes as u64,
                },
            )));
        }
        if !self.acceptable(h.seq) {
            return Ok(Some(FrameStatus::Corrupt(
                CorruptionKind::SeqNotIncreasing {
                    expected: self.expected_seq,
                    found: h.seq,
                },
            )));
        }
        let needed = h.frame_len();
        let avail = self.ensure(offset, needed)?;
        if avail < needed {
            return Ok(Some(FrameStatus::Incomplete { needed }));
        }
        let payload = self.window(offset + FRAME_HEADER_BYTES as u64, h.len as usize);
        Ok(Some(match h.verify(payload) {
            Ok(()) => FrameStatus::Valid {
                seq: h.seq,
                payload_len: h.len as usize,
            },
            Err(kind) => FrameStatus::Corrupt(kind),
        }))
    }

    /// A seq this segment may hold: at or above the one expected, at or below the
    /// configured upper bound, and below what the file could physically hold (one
    /// frame per `FRAME_HEADER_BYTES` bytes at most).
    fn acceptable(&self, seq: u64) -> bool {
        self.plausible(seq) && seq <= self.upper_seq
    }

    /// The seq window without the upper bound: a frame above `upper_seq` alone may be
    /// a record not yet published (the active segment's frames beyond `written_seq`).
    fn plausible(&self, seq: u64) -> bool {
        let physical = self
            .first_seq
            .saturating_add(self.file_len / FRAME_HEADER_BYTES as u64);
        seq >= self.expected_seq.max(1) && seq <= physical && seq <= MAX_SEQ
    }

    /// Searches forward from `from` for the next valid frame with an acceptable seq.
    /// Each offset is tried once. `Err(retry_from)` if none: retry from there once the
    /// file grows or the upper bound rises (the first offset whose frame was merely
    /// incomplete, or valid but above the upper bound, else the end). Skipping such a
    /// frame instead would lose it, and every record after it, for good.
    fn resync(&mut self, from: u64) -> io::Result<Result<u64, u64>> {
        let mut at = from;
        let mut first_incomplete = None;
        loop {
            if let Some(next) = self.skip_zeros(at)? {
                at = next;
                continue;
            }
            match self.frame_at(at)? {
                None => return Ok(Err(first_incomplete.unwrap_or(at))),
                Some(FrameStatus::Valid { .. }) => return Ok(Ok(at)),
                Some(FrameStatus::Incomplete { .. }) => {
                    first_incomplete.get_or_insert(at);
                    at += 1;
                }
                Some(FrameStatus::Corrupt(CorruptionKind::SeqNotIncreasing { found, .. }))
                    if found > self.upper_seq && self.plausible(found) =>
                {
                    first_incomplete.get_or_insert(at);
                    at += 1;
                }
                Some(FrameStatus::Corrupt(_)) => at += 1,
            }
        }
    }

    /// The common case in one tight loop: consecutive valid frames whose bytes are
    /// already buffered. Each frame that passes every check [`next_step`] would make
    /// (length limit, the expected seq, the seq window, complete in the buffer, CRC) is
    /// offered to `take`; the scanner moves past it only if `take` returns `true`.
    /// Stops at the first frame that is not such a frame, or that `take` declines, and
    /// leaves it to [`next_step`] (which reads more, reports damage, or ends). Returns
    /// how many frames were taken.
    ///
    /// [`next_step`]: Self::next_step
    pub(crate) fn take_buffered(&mut self, mut take: impl FnMut(u64, &[u8]) -> bool) -> usize {
        if self.garbage_from.is_some() {
            return 0;
        }
        let mut taken = 0;
        loop {
            let Some(start) = usize::try_from(self.offset.saturating_sub(self.buf_offset))
                .ok()
                .filter(|_| self.offset >= self.buf_offset)
            else {
                return taken;
            };
            let Some(h) = self.buf.get(start..self.filled).and_then(FrameHeader::peek) else {
                return taken;
            };
            if h.len as usize > self.max_payload_bytes
                || h.seq != self.expected_seq
                || !self.acceptable(h.seq)
            {
                return taken;
            }
            let payload_start = start + FRAME_HEADER_BYTES;
            let payload_end = payload_start.saturating_add(h.len as usize);
            let Some(payload) = self
                .buf
                .get(payload_start..payload_end)
                .filter(|_| payload_end <= self.filled)
            else {
                return taken;
            };
            if h.verify(payload).is_err() || !take(h.seq, payload) {
                return taken;
            }
            self.offset += h.frame_len() as u64;
            self.valid_end = self.offset;
            self.expected_seq = h.seq + 1;
            taken += 1;
        }
    }

    /// The next step. See [`ScanStep`].
    pub(crate) fn next_step(&mut self) -> io::Result<ScanStep<'_>> {
        if let Some(from) = self.garbage_from {
            match self.resync(from)? {
                Ok(at) => {
                    self.garbage_from = None;
                    self.offset = at;
                }
                Err(retry_from) => {
                    self.garbage_from = Some(retry_from);
                    return Ok(ScanStep::End {
                        trailing_bytes: self.trailing_bytes()?,
                    });
                }
            }
        }
        let at = self.offset;
        let corrupt = match self.frame_at(at)? {
            None => return Ok(ScanStep::End { trailing_bytes: 0 }),
            Some(FrameStatus::Incomplete { needed }) => {
                // A frame cut by the end of the file is a torn tail only if nothing valid
                // follows it. A damaged length can reach past the end from the middle of
                // a segment: the intact frames after it must not be taken for a torn
                // tail (and truncated, or skipped with the rest of the segment).
                let available = self.readable_len()?.saturating_sub(at);
                return match self.resync(at + 1)? {
                    Ok(next) => {
                        self.offset = next;
                        Ok(ScanStep::Corrupt {
                            offset: at,
                            kind: CorruptionKind::LengthPastEnd {
                                needed: needed as u64,
                                available,
                            },
                        })
                    }
                    // Nothing valid after it: a torn tail (or, in a file still growing,
                    // a frame not complete yet: the next call looks at `at` again).
                    Err(_) => Ok(ScanStep::End {
                        trailing_bytes: self.trailing_bytes()?,
                    }),
                };
            }
            Some(FrameStatus::Valid { seq, payload_len }) => {
                let end = at + (FRAME_HEADER_BYTES + payload_len) as u64;
                self.offset = end;
                self.valid_end = end;
                self.expected_seq = seq + 1;
                let start = at + FRAME_HEADER_BYTES as u64;
                return Ok(ScanStep::Frame {
                    seq,
                    payload: self.window(start, payload_len),
                });
            }
            Some(FrameStatus::Corrupt(kind)) => kind,
        };
        // Zeros from here to the end are a preallocated tail (of a segment that was
        // active at a crash), not damage: end quietly. Zeros followed by data are a hole
        // and reported below.
        if let Some(next) = self.skip_zeros(at)?
            && next >= self.readable_len()?
        {
            return Ok(ScanStep::End {
                trailing_bytes: self.trailing_bytes()?,
            });
        }
        match self.resync(at + 1)? {
            Ok(next) => self.offset = next,
            Err(retry_from) => self.garbage_from = Some(retry_from),
        }
        Ok(ScanStep::Corrupt {
            offset: at,
            kind: corrupt,
        })
    }

    fn trailing_bytes(&self) -> io::Result<u64> {
        Ok(self.readable_len()?.saturating_sub(self.valid_end))
    }

    /// If the bytes at `at` start a run of zeros, the first offset where a frame could
    /// start after it (at most 15 bytes before the next nonzero byte); else `None`.
    /// Looks only at buffered bytes, refilling once per chunk of zeros crossed.
    fn skip_zeros(&mut self, at: u64) -> io::Result<Option<u64>> {
        let mut pos = at;
        loop {
            let avail = self.ensure(pos, FRAME_HEADER_BYTES)?;
            if avail == 0 {
                return Ok(if pos > at { Some(pos) } else { None });
            }
            let start = usize::try_from(pos - self.buf_offset).unwrap_or(usize::MAX);
            let buffered = self.buf.get(start..self.filled).unwrap_or_default();
            if pos == at && buffered.iter().take(FRAME_HEADER_BYTES).any(|&b| b != 0) {
                return Ok(None);
            }
            match buffered.iter().position(|&b| b != 0) {
                Some(k) => {
                    let nonzero = pos + k as u64;
                    let next = nonzero.saturating_sub(FRAME_HEADER_BYTES as u64 - 1);
                    return Ok(if next > at { Some(next) } else { None });
                }
                None => pos += buffered.len().max(1) as u64,
            }
        }
    }
}

#[cfg(test)]
mod tests;
