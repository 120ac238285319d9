//! Unit tests of [`super`].

use super::*;
use crate::wal::format::encode_frame;
use crate::wal::storage::RealStorage;

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

/// An in-memory segment file for scanner tests: its bytes can change while a scanner
/// reads them, it counts reads, and it can fail the next read, or every n-th one
/// (after scribbling over the caller's buffer, as a failed read may).
#[derive(Debug, Default, Clone)]
struct MemFile {
    bytes: Arc<Mutex<Vec<u8>>>,
    reads: Arc<AtomicUsize>,
    fail_next_read: Arc<AtomicBool>,
    /// When nonzero, every read whose count is a multiple of it fails.
    fail_every: Arc<AtomicUsize>,
}

impl MemFile {
    fn with(bytes: Vec<u8>) -> Self {
        Self {
            bytes: Arc::new(Mutex::new(bytes)),
            ..Self::default()
        }
    }
}

impl StorageFile for MemFile {
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<usize> {
        let count = self.reads.fetch_add(1, Ordering::Relaxed) + 1;
        let every = self.fail_every.load(Ordering::Relaxed);
        if self.fail_next_read.swap(false, Ordering::SeqCst)
            || (every > 0 && count.is_multiple_of(every))
        {
            buf.fill(0xAB);
            return Err(io::Error::other("injected read failure"));
        }
        let bytes = self
            .bytes
            .lock()
            .map_err(|_| io::Error::other("poisoned"))?;
        let start = (offset as usize).min(bytes.len());
        let n = buf.len().min(bytes.len() - start);
        buf[..n].copy_from_slice(&bytes[start..start + n]);
        Ok(n)
    }
    fn write_all_at(&self, _: &[u8], _: u64) -> io::Result<()> {
        Ok(())
    }
    fn sync(&self) -> io::Result<()> {
        Ok(())
    }
    fn set_len(&self, _: u64) -> io::Result<()> {
        Ok(())
    }
    fn len(&self) -> io::Result<u64> {
        let bytes = self
            .bytes
            .lock()
            .map_err(|_| io::Error::other("poisoned"))?;
        Ok(bytes.len() as u64)
    }
    fn allocate(&self, _: u64) -> io::Result<()> {
        Ok(())
    }
}

fn segment_with(frames: &[(u64, Vec<u8>)]) -> io::Result<(tempfile::TempDir, Vec<u8>)> {
    let tmp = tempfile::tempdir()?;
    let mut bytes = SegmentHeader {
        codec_id: 1,
        first_seq: frames.first().map_or(1, |f| f.0),
        prev_last_seq: 0,
    }
    .encode()
    .to_vec();
    for (seq, p) in frames {
        encode_frame(&mut bytes, *seq, p);
    }
    Ok((tmp, bytes))
}

fn scan_all(path: &Path, first_seq: u64) -> io::Result<(Vec<u64>, usize, u64)> {
    let file = RealStorage.open(path, false)?;
    let mut s = SegmentScanner::new(file, first_seq, 1 << 20);
    let (mut seqs, mut corrupt) = (Vec::new(), 0);
    for _ in 0..100_000 {
        match s.next_step()? {
            ScanStep::Frame { seq, .. } => seqs.push(seq),
            ScanStep::Corrupt { .. } => corrupt += 1,
            ScanStep::End { trailing_bytes } => return Ok((seqs, corrupt, trailing_bytes)),
        }
    }
    panic!("scanner did not end");
}

#[test]
fn scanner_skips_a_flipped_byte_and_resyncs() -> io::Result<()> {
    let frames: Vec<_> = (1..=50u64)
        .map(|s| (s, vec![s as u8; 30 + s as usize]))
        .collect();
    let (tmp, mut bytes) = segment_with(&frames)?;
    // Flip a payload byte of seq 10.
    let off10 = SEGMENT_HEADER_BYTES + (1..10).map(|s| FRAME_HEADER_BYTES + 30 + s).sum::<usize>();
    bytes[off10 + FRAME_HEADER_BYTES + 3] ^= 0xFF;
    let path = tmp.path().join("s");
    std::fs::write(&path, &bytes)?;
    let (seqs, corrupt, trailing) = scan_all(&path, 1)?;
    assert_eq!(corrupt, 1);
    assert_eq!(trailing, 0);
    let expect: Vec<u64> = (1..=50).filter(|&s| s != 10).collect();
    assert_eq!(seqs, expect);
    Ok(())
}

#[test]
fn scanner_reports_torn_tail_bytes_at_every_cut() -> io::Result<()> {
    let frames: Vec<_> = (1..=5u64).map(|s| (s, vec![7u8; 40])).collect();
    let (tmp, bytes) = segment_with(&frames)?;
    let path = tmp.path().join("s");
    let frame = FRAME_HEADER_BYTES + 40;
    for cut in SEGMENT_HEADER_BYTES..bytes.len() {
        std::fs::write(&path, &bytes[..cut])?;
        let (seqs, _, trailing) = scan_all(&path, 1)?;
        let whole = (cut - SEGMENT_HEADER_BYTES) / frame;
        assert_eq!(seqs.len(), whole, "cut {cut}");
        assert_eq!(
            trailing as usize,
            (cut - SEGMENT_HEADER_BYTES) % frame,
            "cut {cut}"
        );
    }
    Ok(())
}

#[test]
fn fully_acked_never_returns_the_active_segment() {
    let mut set = SegmentSet::default();
    for first in [1, 11, 21] {
        set.push(SegmentInfo {
            first_seq: first,
            prev_last_seq: 0,
            len: 100,
        });
    }
    assert!(set.fully_acked(9).is_empty());
    assert_eq!(set.fully_acked(10).len(), 1);
    assert_eq!(set.fully_acked(u64::MAX).len(), 2);
    assert_eq!(set.for_seq(15).map(|s| s.first_seq), Some(11));
    assert_eq!(set.for_seq(0).map(|s| s.first_seq), Some(1));
    assert_eq!(set.after(11).map(|s| s.first_seq), Some(21));
}

/// A damaged region is skipped in linear time: resync checks the cheap fields
/// first and never re-reads what it has. Counted in reads, not seconds.
#[test]
fn resync_over_garbage_reads_each_chunk_once() -> io::Result<()> {
    let mut bytes = SegmentHeader {
        codec_id: 1,
        first_seq: 1,
        prev_last_seq: 0,
    }
    .encode()
    .to_vec();
    let mut x = 0x1234_5678_9abc_def0u64;
    for _ in 0..(4 << 20) {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        bytes.push(x as u8);
    }
    let len = bytes.len();
    let file = MemFile::with(bytes);
    let reads = Arc::clone(&file.reads);
    let mut s = SegmentScanner::new(Box::new(file), 1, 16 << 20);
    let mut steps = 0;
    loop {
        steps += 1;
        assert!(steps < 1000, "scanner did not end");
        match s.next_step()? {
            ScanStep::End { .. } => break,
            ScanStep::Frame { seq, .. } => panic!("garbage accepted as frame {seq}"),
            ScanStep::Corrupt { .. } => {}
        }
    }
    let max_reads = len / READ_CHUNK_BYTES + 4;
    assert!(
        reads.load(Ordering::Relaxed) <= max_reads,
        "{} reads for {len} bytes",
        reads.load(Ordering::Relaxed)
    );
    Ok(())
}

/// Preallocation invariant: on an active segment whose file is preallocated with
/// zeros, a scanner bounded by the logical length never reads (so never caches)
/// the zeros the writer overwrites next; frames appended later are read as frames.
#[test]
fn a_bounded_scanner_never_caches_preallocated_zeros() -> io::Result<()> {
    let tmp = tempfile::tempdir()?;
    let dir = tmp.path();
    let st = RealStorage;
    let header = SegmentHeader {
        codec_id: 1,
        first_seq: 1,
        prev_last_seq: 0,
    };
    let writer = create_segment(&st, dir, header, 1 << 20)?;
    assert_eq!(writer.len()?, 1 << 20, "preallocated");
    let mut len = SEGMENT_HEADER_BYTES as u64;
    let append = |seqs: std::ops::RangeInclusive<u64>, len: &mut u64| -> io::Result<()> {
        let mut buf = Vec::new();
        for seq in seqs {
            encode_frame(&mut buf, seq, &seq.to_le_bytes());
        }
        writer.write_all_at(&buf, *len)?;
        *len += buf.len() as u64;
        Ok(())
    };
    append(1..=3, &mut len)?;
    let mut sc = SegmentScanner::new(st.open(&segment_path(dir, 1), false)?, 1, 1024);
    sc.set_valid_len(len);
    let mut seen = Vec::new();
    loop {
        match sc.next_step()? {
            ScanStep::Frame { seq, .. } => seen.push(seq),
            ScanStep::End { trailing_bytes } => {
                assert_eq!(
                    trailing_bytes, 0,
                    "zeros past the logical end are not trailing garbage"
                );
                break;
            }
            ScanStep::Corrupt { offset, kind } => panic!("corrupt at {offset}: {kind}"),
        }
    }
    append(4..=5, &mut len)?;
    sc.set_valid_len(len);
    loop {
        match sc.next_step()? {
            ScanStep::Frame { seq, .. } => seen.push(seq),
            ScanStep::End { .. } => break,
            ScanStep::Corrupt { offset, kind } => {
                panic!("appended frames read as corrupt at {offset}: {kind}")
            }
        }
    }
    assert_eq!(seen, vec![1, 2, 3, 4, 5]);
    Ok(())
}

/// A preallocated zero tail after the last frame ends the scan quietly: no
/// `Corrupt` step (recovery would log damage on every crash otherwise).
#[test]
fn a_zero_tail_ends_the_scan_without_a_corruption_report() -> io::Result<()> {
    let frames: Vec<_> = (1..=3u64).map(|s| (s, vec![1u8; 10])).collect();
    let (tmp, mut bytes) = segment_with(&frames)?;
    bytes.resize(bytes.len() + 100_000, 0);
    let path = tmp.path().join("s");
    std::fs::write(&path, &bytes)?;
    let (seqs, corrupt, trailing) = scan_all(&path, 1)?;
    assert_eq!(seqs, vec![1, 2, 3]);
    assert_eq!(corrupt, 0, "zeros to the end are not damage");
    assert_eq!(trailing, 100_000);
    Ok(())
}

/// Frames (seq, payload), corruption reports, trailing bytes, frames taken in bulk.
type Scan = (Vec<(u64, Vec<u8>)>, usize, u64, usize);

/// Scans with `take_buffered` first and `next_step` for the rest, as the reader does;
/// `take` declines every `decline_every`-th frame it is offered (0: never). Returns
/// every frame (seq, payload), the corruption reports and the trailing bytes.
fn scan_mixed(path: &Path, first_seq: u64, decline_every: usize) -> io::Result<Scan> {
    let file = RealStorage.open(path, false)?;
    let mut s = SegmentScanner::new(file, first_seq, 1 << 20);
    let (mut frames, mut corrupt, mut offered, mut bulk) = (Vec::new(), 0, 0usize, 0);
    for _ in 0..100_000 {
        bulk += s.take_buffered(|seq, payload| {
            offered += 1;
            if decline_every > 0 && offered % decline_every == 0 {
                return false;
            }
            frames.push((seq, payload.to_vec()));
            true
        });
        match s.next_step()? {
            ScanStep::Frame { seq, payload } => frames.push((seq, payload.to_vec())),
            ScanStep::Corrupt { .. } => corrupt += 1,
            ScanStep::End { trailing_bytes } => {
                return Ok((frames, corrupt, trailing_bytes, bulk));
            }
        }
    }
    panic!("scanner did not end");
}

/// The fast path changes nothing but speed: over damaged and torn segments (flipped
/// bytes, a seq jump, cuts anywhere), a scan that takes buffered frames in bulk (and
/// declines some, as a full batch does) sees exactly the frames, payloads, corruption
/// reports and trailing bytes that `next_step` alone sees.
#[test]
fn taking_buffered_frames_sees_what_next_step_sees() -> io::Result<()> {
    let seed = 0x5eed_u64;
    let mut rng = seed;
    let mut next = move || {
        rng = rng
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (rng >> 33) as usize
    };
    // Enough frames to span several 256 KiB reads.
    let mut frames: Vec<(u64, Vec<u8>)> = (1..=3000u64)
        .map(|s| (s, vec![s as u8; 50 + (s as usize * 37) % 400]))
        .collect();
    // A seq jump: records 1500..1510 lost.
    frames.retain(|(s, _)| !(1500..1510).contains(s));
    let (tmp, clean) = segment_with(&frames)?;
    let path = tmp.path().join("s");
    let (mut all, mut in_bulk, mut damaged) = (0, 0, 0);
    for case in 0..40 {
        let mut bytes = clean.clone();
        for _ in 0..case % 4 {
            let at = SEGMENT_HEADER_BYTES + next() % (bytes.len() - SEGMENT_HEADER_BYTES);
            bytes[at] ^= 1 << (next() % 8);
        }
        if case % 3 == 0 {
            let cut = SEGMENT_HEADER_BYTES + next() % (bytes.len() - SEGMENT_HEADER_BYTES);
            bytes.truncate(cut);
        }
        std::fs::write(&path, &bytes)?;
        let file = RealStorage.open(&path, false)?;
        let mut slow = SegmentScanner::new(file, 1, 1 << 20);
        let (mut want, mut want_corrupt) = (Vec::new(), 0);
        let want_trailing = loop {
            match slow.next_step()? {
                ScanStep::Frame { seq, payload } => want.push((seq, payload.to_vec())),
                ScanStep::Corrupt { .. } => want_corrupt += 1,
                ScanStep::End { trailing_bytes } => break trailing_bytes,
            }
        };
        for decline_every in [0, 7] {
            let (got, corrupt, trailing, bulk) = scan_mixed(&path, 1, decline_every)?;
            (all, in_bulk) = (all + got.len(), in_bulk + bulk);
            damaged += usize::from(corrupt > 0);
            let ctx = format!("seed {seed:#x}, case {case}, decline every {decline_every}");
            assert_eq!(got.len(), want.len(), "{ctx}");
            assert!(got == want, "frames differ; {ctx}");
            assert_eq!((corrupt, trailing), (want_corrupt, want_trailing), "{ctx}");
        }
    }
    // The comparison means something only if both paths were exercised.
    assert!(
        in_bulk * 10 > all * 8,
        "bulk path took {in_bulk} of {all} frames"
    );
    assert!(damaged >= 10, "only {damaged} scans met damage");
    Ok(())
}

/// The read buffer keeps its initialized space from one refill to the next (it is not
/// zeroed again), so after a refill that reads less than the last one, the buffer
/// holds stale bytes of earlier frames past the bytes just read. A scanner following
/// an active segment (frames written over a preallocated zero tail, the logical length
/// growing by less in some rounds than in the one before), through refills that cut
/// frames and reads that fail part way, must take each frame exactly once: never read
/// past the logical length into the zeros the next frames overwrite, and never take
/// stale or scribbled bytes for contents.
#[test]
fn refills_never_expose_bytes_of_an_earlier_read() -> io::Result<()> {
    let header = SegmentHeader {
        codec_id: 1,
        first_seq: 1,
        prev_last_seq: 0,
    };
    // The file is preallocated: the header, then zeros well past what is written.
    let mut initial = header.encode().to_vec();
    initial.resize(16 << 20, 0);
    let file = MemFile::with(initial);
    let (bytes, fail, fail_every) = (
        Arc::clone(&file.bytes),
        Arc::clone(&file.fail_next_read),
        Arc::clone(&file.fail_every),
    );
    let mut logical = SEGMENT_HEADER_BYTES;
    let mut append = |seqs: std::ops::Range<u64>| {
        let mut frames = Vec::new();
        for seq in seqs {
            // Payloads of varying sizes, so frames straddle every refill boundary.
            let payload = vec![seq as u8; 100 + (seq as usize * 37) % 3000];
            encode_frame(&mut frames, seq, &payload);
        }
        let mut b = bytes.lock().expect("lock");
        b[logical..logical + frames.len()].copy_from_slice(&frames);
        logical += frames.len();
        logical as u64
    };
    let mut sc = SegmentScanner::new(Box::new(file), 1, 1 << 20);
    let mut seen: Vec<u64> = Vec::new();
    let mut next = 1u64;
    // Rounds: append a different amount each time (small after large, so a refill
    // reads less than the one before); some rounds fail their first read (nothing
    // kept), others every 3rd read (failing part way, with a cut frame kept).
    for round in 0..40u64 {
        let add = [400u64, 3, 150, 1, 60, 250, 7][(round % 7) as usize];
        let len = append(next..next + add);
        next += add;
        sc.set_valid_len(len);
        fail.store(round % 5 == 2, Ordering::SeqCst);
        fail_every.store(if round % 4 == 1 { 3 } else { 0 }, Ordering::SeqCst);
        let mut steps = 0;
        loop {
            steps += 1;
            assert!(steps < 100_000, "round {round}: scanner did not end");
            let taken = sc.take_buffered(|seq, payload| {
                assert_eq!(
                    payload.first().copied(),
                    Some(seq as u8),
                    "payload of {seq}"
                );
                seen.push(seq);
                true
            });
            if taken > 0 {
                continue;
            }
            match sc.next_step() {
                Ok(ScanStep::Frame { seq, payload }) => {
                    assert_eq!(
                        payload.first().copied(),
                        Some(seq as u8),
                        "payload of {seq}"
                    );
                    seen.push(seq);
                }
                Ok(ScanStep::End { trailing_bytes }) => {
                    assert_eq!(
                        trailing_bytes, 0,
                        "round {round}: nothing after the last frame"
                    );
                    break;
                }
                Ok(ScanStep::Corrupt { offset, kind }) => {
                    panic!(
                        "round {round}: stale or unread bytes taken as contents at {offset}: {kind}"
                    )
                }
                // An injected failure: the next call retries the read.
                Err(_) => {}
            }
        }
        assert_eq!(seen, (1..next).collect::<Vec<_>>(), "round {round}");
    }
    Ok(())
}
