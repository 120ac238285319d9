//! Entry points shared by the fuzz targets in `fuzz/` and the stable corpus replay test
//! (`tests/fuzz_corpus.rs`). **Not API**: hidden from the docs and free to change.
//!
//! Each function takes arbitrary bytes, must return (bounded work), and must not panic
//! except on a violated invariant of walsink itself, which is what the fuzzer hunts.

use std::path::Path;
use std::sync::{Arc, Mutex};

use crate::codec::BINCODE_CODEC_ID;
use crate::testing::sim::SimDisk;
use crate::wal::format::{
    HeaderStatus, REGISTER_SLOT_BYTES, REGISTER_SLOT_OFFSETS, RegisterKind, RegisterSlot,
    decode_frame,
};
use crate::wal::reader::WalReader;
use crate::wal::recovery::{RecoveryLimits, recover};
use crate::wal::register::Register;
use crate::wal::segment::{ScanStep, SegmentScanner, read_header};
use crate::wal::storage::{Storage, StorageFile};

/// Largest payload the fuzz entry points accept (keeps executions fast).
const FUZZ_MAX_RECORD_BYTES: usize = 1 << 16;

/// `data` as a file on a fresh simulated disk, opened for reading.
fn sim_file(data: &[u8]) -> Option<Box<dyn StorageFile>> {
    let disk = SimDisk::new(0);
    let storage = disk.storage();
    let path = Path::new("/file");
    storage.create_new(path).ok()?.write_all_at(data, 0).ok()?;
    storage.open(path, false).ok()
}

/// Decodes `data` as a segment file: header, then every frame, skipping damage.
/// Returns the number of valid frames. Panics if the scan does not terminate within
/// one step per byte (it must: every step moves forward).
pub fn segment(data: &[u8]) -> usize {
    let _ = decode_frame(data, FUZZ_MAX_RECORD_BYTES);
    let Some(file) = sim_file(data) else {
        return 0;
    };
    let first_seq = match read_header(file.as_ref()) {
        Ok(HeaderStatus::Valid(h)) => h.first_seq.max(1),
        _ => 1,
    };
    let mut scanner = SegmentScanner::new(file, first_seq, FUZZ_MAX_RECORD_BYTES);
    let mut frames = 0;
    let mut last_seq = 0;
    for _ in 0..=data.len() + 2 {
        match scanner.next_step() {
            Ok(ScanStep::Frame { seq, payload }) => {
                assert!(
                    seq > last_seq,
                    "invariant violation: scanner returned seq {seq} after {last_seq}"
                );
                assert!(payload.len() <= FUZZ_MAX_RECORD_BYTES);
                last_seq = seq;
                frames += 1;
            }
            Ok(ScanStep::Corrupt { .. }) => {}
            Ok(ScanStep::End { .. }) | Err(_) => return frames,
        }
    }
    panic!(
        "invariant violation: segment scan did not terminate within {} steps",
        data.len() + 3
    );
}

/// Decodes `data` as a register file, slot by slot and through `Register::open`.
/// Returns the value opened, if any.
pub fn register(data: &[u8]) -> Option<u64> {
    for &offset in &REGISTER_SLOT_OFFSETS {
        let start = usize::try_from(offset).unwrap_or(usize::MAX);
        if let Some(slot) = data
            .get(start..)
            .map(|b| &b[..b.len().min(REGISTER_SLOT_BYTES)])
        {
            for kind in [RegisterKind::Cursor, RegisterKind::SeqLease] {
                if let Ok(s) = RegisterSlot::decode(slot, kind) {
                    assert_eq!(
                        RegisterSlot::decode(&s.encode(), kind),
                        Ok(s),
                        "invariant violation: slot round trip"
                    );
                }
            }
        }
    }
    let disk = SimDisk::new(0);
    let storage = disk.storage();
    let dir = Path::new("/fuzz");
    storage.create_dir(dir).ok()?;
    let path = dir.join("CURSOR");
    let f = storage.create_new(&path).ok()?;
    f.write_all_at(data, 0).ok()?;
    let crate::wal::register::RegisterOpen::Loaded(mut r) =
        Register::open(storage.as_ref(), &path, RegisterKind::Cursor).ok()?
    else {
        return None;
    };
    let opened = r.value();
    // Writes after open must neither panic (a generation at its bound) nor lose to a
    // stale slot: the value read back is the last one written (values that decode).
    let base = opened.min(crate::wal::format::REGISTER_VALUE_MAX - 2);
    for value in [base + 1, base + 2] {
        if let Err(e) = r.write_durable(value) {
            panic!("invariant violation: an opened register cannot be written: {e}");
        }
        drop(r);
        r = match Register::open(storage.as_ref(), &path, RegisterKind::Cursor) {
            Ok(crate::wal::register::RegisterOpen::Loaded(r)) => r,
            other => panic!("invariant violation: register unreadable after a write: {other:?}"),
        };
        assert_eq!(
            r.value(),
            value,
            "invariant violation: a stale slot won over the last write"
        );
    }
    Some(opened)
}

/// Splits fuzz input into files: repeated `[name_len u8][name][data_len u32 LE][data]`.
/// Names with anything but `[A-Za-z0-9._-]` are skipped.
pub fn unpack(mut data: &[u8]) -> Vec<(String, Vec<u8>)> {
    let mut files = Vec::new();
    while let Some((&name_len, rest)) = data.split_first() {
        let Some(name) = rest.get(..name_len as usize) else {
            break;
        };
        let rest = &rest[name_len as usize..];
        let Some(len) = rest
            .get(..4)
            .and_then(|b| b.try_into().ok())
            .map(u32::from_le_bytes)
        else {
            break;
        };
        let rest = &rest[4..];
        let take = (len as usize).min(rest.len());
        let body = rest[..take].to_vec();
        data = &rest[take..];
        let ok = !name.is_empty()
            && name
                .iter()
                .all(|c| c.is_ascii_alphanumeric() || b"._-".contains(c));
        if ok {
            files.push((String::from_utf8_lossy(name).into_owned(), body));
        }
    }
    files
}

/// The inverse of [`unpack`], for building seed corpora from real directories.
pub fn pack(files: &[(String, Vec<u8>)]) -> Vec<u8> {
    let mut out = Vec::new();
    for (name, body) in files {
        let name = name.as_bytes();
        let n = name.len().min(255);
        out.push(n as u8);
        out.extend_from_slice(&name[..n]);
        out.extend_from_slice(&u32::try_from(body.len()).unwrap_or(u32::MAX).to_le_bytes());
        out.extend_from_slice(body);
    }
    out
}

/// Builds a WAL directory from fuzz input (see [`unpack`]) on a simulated disk, opens it
/// (recovery) and reads every record back. Returns how many records were read, or
/// `None` if open refused the directory with an error (allowed: unsupported version,
/// codec mismatch). Panics only on a walsink invariant violation or a read loop that
/// fails to make progress.
pub fn directory(data: &[u8]) -> Option<u64> {
    let disk = SimDisk::new(0);
    let storage: Arc<dyn Storage> = disk.storage();
    let dir = Path::new("/fuzz/wal");
    crate::wal::storage::create_dir_chain(storage.as_ref(), dir).ok()?;
    let mut total_bytes = 0u64;
    for (name, body) in unpack(data) {
        let f = storage.create_new(&dir.join(&name)).ok()?;
        f.write_all_at(&body, 0).ok()?;
        f.sync().ok()?;
        total_bytes += body.len() as u64;
    }
    storage.sync_dir(dir).ok()?;
    let limits = RecoveryLimits {
        codec_id: BINCODE_CODEC_ID,
        segment_bytes: 4096,
        max_record_bytes: FUZZ_MAX_RECORD_BYTES,
        preallocate: true,
    };
    let rec = recover(&storage, dir, limits).ok()?;
    let written = rec.next_seq - 1;
    let segments = Arc::new(Mutex::new(rec.segments));
    let mut reader = WalReader::new(
        Arc::clone(&storage),
        dir.to_path_buf(),
        segments,
        FUZZ_MAX_RECORD_BYTES,
        rec.cursor.value() + 1,
    );
    let mut read = 0u64;
    // Every pass reads at least one frame or moves the position; bounded by the bytes.
    for _ in 0..total_bytes + 16 {
        let before = reader.position();
        let (batch, _lost) = reader.read_batch(written, 1024, 1 << 20).ok()?;
        read += batch.len() as u64;
        if reader.position() > written || (batch.is_empty() && reader.position() == before) {
            return Some(read);
        }
    }
    panic!("invariant violation: reading a recovered directory did not finish");
}

/// Unpacks `data` as [`directory`] does (names starting `dl-` go to the dead-letter
/// store's directory, the rest to the WAL directory), then reads it the way the
/// `walsink` tool's reading commands do: the read-only view, every frame of every
/// segment, both registers, and every dead letter. Returns the frames and dead letters
/// read. Panics if the reading changed the disk or did not finish within one step per
/// byte.
pub fn view(data: &[u8]) -> Option<u64> {
    use crate::dead_letter::{DEAD_LETTER_DIR, StoreFiles};
    use crate::wal::view::WalView;
    let disk = SimDisk::new(0);
    let storage: Arc<dyn Storage> = disk.storage();
    let dir = Path::new("/fuzz/wal");
    let dl = dir.join(DEAD_LETTER_DIR);
    crate::wal::storage::create_dir_chain(storage.as_ref(), &dl).ok()?;
    let mut total_bytes = 0u64;
    for (name, body) in unpack(data) {
        let path = match name.strip_prefix("dl-") {
            Some(n) if !n.is_empty() => dl.join(n),
            _ => dir.join(&name),
        };
        let Ok(f) = storage.create_new(&path) else {
            continue;
        };
        f.write_all_at(&body, 0).ok()?;
        total_bytes += body.len() as u64;
    }
    let changes = disk.changes();
    let view = WalView::open(Arc::clone(&storage), dir, FUZZ_MAX_RECORD_BYTES).ok()?;
    let mut read = 0u64;
    for seg in &view.segments {
        let Ok(Some(mut scanner)) = view.scan(seg) else {
            continue;
        };
        let mut ended = false;
        for _ in 0..=total_bytes + 2 {
            match scanner.next_step() {
                Ok(ScanStep::Frame { .. }) => read += 1,
                Ok(ScanStep::Corrupt { .. }) => {}
                Ok(ScanStep::End { .. }) | Err(_) => {
                    ended = true;
                    break;
                }
            }
        }
        assert!(ended, "invariant violation: a segment scan did not finish");
    }
    if let Ok(store) = StoreFiles::open(Arc::clone(&storage), dir, 0, u64::MAX, false) {
        for seq in store.seqs(0, usize::MAX) {
            if let Ok(Some(e)) = store.get(seq) {
                assert_eq!(
                    e.meta.seq, seq,
                    "invariant violation: entry under another seq"
                );
                read += 1;
            }
        }
    }
    assert_eq!(
        disk.changes(),
        changes,
        "invariant violation: reading the directory changed it"
    );
    Some(read)
}
