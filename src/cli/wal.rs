//! `walsink inspect | verify | dump | repair`: the WAL directory itself, read through
//! the same view and decoders the sink uses (`crate::wal::view`).

use std::fmt::Write as _;
use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use clap::ValueEnum;

use super::{Exit, Failure, walsink_dir};
use crate::dead_letter::StoreFiles;
use crate::wal::format::{
    FRAME_PAYLOAD_LIMIT_BYTES, HeaderStatus, LOCK_FILE, frame_bytes, segment_file_name,
};
use crate::wal::register::RegisterPeek;
use crate::wal::segment::ScanStep;
use crate::wal::storage::{RealStorage, Storage};
use crate::wal::view::WalView;

/// Record formats for `dump`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub(super) enum DumpFormat {
    /// `seq`, `len` and the payload as text (invalid UTF-8 replaced).
    Text,
    /// `seq`, `len` and a hex dump of the payload.
    Hex,
    /// One JSON object per line: `seq`, `len`, `payload_hex`.
    Json,
}

/// One problem `verify` found.
#[derive(Debug, Clone)]
pub(super) struct Problem {
    file: String,
    offset: Option<u64>,
    kind: String,
}

/// What a walk over the segments found.
#[derive(Debug, Default)]
pub(super) struct SegmentStats {
    file: String,
    first_seq: u64,
    last_seq: Option<u64>,
    records: u64,
    bytes: u64,
    pub(super) damaged_frames: u64,
    pub(super) pending_records: u64,
    pending_bytes: u64,
    /// Offset and length of bytes after the last segment's last frame that are not the
    /// preallocated zeros, seen with no live sink: a crash mid-append (no confirmed
    /// record is there; the next open cuts them).
    torn_tail: Option<(u64, u64)>,
}

fn open_view(dir: &Path) -> Result<(PathBuf, WalView), Failure> {
    open_view_on(Arc::new(RealStorage), dir)
}

/// The read-only view of `dir` through `storage`.
pub(super) fn open_view_on(
    storage: Arc<dyn Storage>,
    dir: &Path,
) -> Result<(PathBuf, WalView), Failure> {
    let dir = walsink_dir(dir)?;
    let view = WalView::open(storage, &dir, FRAME_PAYLOAD_LIMIT_BYTES).map_err(|e| {
        Failure::new(
            Exit::Unusable,
            format!("{}: cannot read: {e}", dir.display()),
        )
    })?;
    Ok((dir, view))
}

/// Whether the file at `path` holds a non-zero byte at or after `from` (read in
/// bounded chunks).
fn nonzero_after(path: &Path, from: u64) -> std::io::Result<bool> {
    use std::os::unix::fs::FileExt;
    let f = std::fs::File::open(path)?;
    let mut buf = vec![0u8; 64 << 10];
    let mut at = from;
    loop {
        match f.read_at(&mut buf, at) {
            Ok(0) => return Ok(false),
            Ok(n) => {
                if buf.get(..n).unwrap_or_default().iter().any(|&b| b != 0) {
                    return Ok(true);
                }
                at += n as u64;
            }
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
}

pub(super) fn register_value(peek: &RegisterPeek) -> Option<u64> {
    match peek {
        RegisterPeek::Value(v) => Some(*v),
        _ => None,
    }
}

/// Walks every frame of every segment. `frame` sees each valid frame; problems are
/// collected. A segment deleted by a live sink since the listing is skipped.
pub(super) fn walk(
    view: &WalView,
    live: bool,
    acked: u64,
    mut frame: impl FnMut(u64, &[u8]) -> bool,
    mut progress: impl FnMut(u64),
) -> Result<(Vec<SegmentStats>, Vec<Problem>), Failure> {
    let mut stats = Vec::new();
    let mut problems = Vec::new();
    let last = view.segments.last().map(|s| s.first_seq);
    let codec = first_codec(view);
    'segments: for seg in &view.segments {
        let file = segment_file_name(seg.first_seq);
        let mut st = SegmentStats {
            file: file.clone(),
            first_seq: seg.first_seq,
            bytes: seg.len,
            ..SegmentStats::default()
        };
        match seg.header {
            HeaderStatus::Valid(h) if h.first_seq != seg.first_seq => {
                problems.push(Problem {
                    file: file.clone(),
                    offset: Some(0),
                    kind: format!(
                        "header says first seq {}, not its name's (open quarantines it)",
                        h.first_seq
                    ),
                });
            }
            HeaderStatus::Valid(h) if codec.is_some_and(|c| c != h.codec_id) => {
                problems.push(Problem {
                    file: file.clone(),
                    offset: Some(0),
                    kind: format!(
                        "codec id {} differs from the other segments' {} (open refuses)",
                        h.codec_id,
                        codec.unwrap_or(0)
                    ),
                });
            }
            HeaderStatus::Valid(_) => {}
            HeaderStatus::UnsupportedVersion(v) => {
                problems.push(Problem {
                    file,
                    offset: Some(0),
                    kind: format!("segment format version {v} is not supported by this build"),
                });
                stats.push(st);
                continue;
            }
            HeaderStatus::Corrupt(_)
                if live
                    && Some(seg.first_seq) == last
                    && seg.len < crate::wal::format::SEGMENT_HEADER_BYTES as u64 =>
            {
                // A live sink is creating it: its header is not written yet.
                stats.push(st);
                continue;
            }
            HeaderStatus::Corrupt(kind) => {
                problems.push(Problem {
                    file,
                    offset: Some(0),
                    kind: format!("unreadable header: {kind}"),
                });
                stats.push(st);
                continue;
            }
        }
        let mut scanner = match view.scan(seg) {
            Ok(Some(s)) => s,
            Ok(None) => continue,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => {
                return Err(Failure::new(
                    Exit::Unusable,
                    format!("{file}: cannot read: {e}"),
                ));
            }
        };
        loop {
            let step = match scanner.next_step() {
                Ok(s) => s,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => break,
                Err(e) => {
                    return Err(Failure::new(
                        Exit::Unusable,
                        format!("{file}: cannot read: {e}"),
                    ));
                }
            };
            match step {
                ScanStep::Frame { seq, payload } => {
                    st.records += 1;
                    st.last_seq = Some(seq);
                    if seq > acked {
                        st.pending_records += 1;
                        st.pending_bytes += frame_bytes(payload.len());
                    }
                    progress(frame_bytes(payload.len()));
                    if !frame(seq, payload) {
                        stats.push(st);
                        break 'segments;
                    }
                }
                ScanStep::Corrupt { offset, kind } => {
                    st.damaged_frames += 1;
                    problems.push(Problem {
                        file: file.clone(),
                        offset: Some(offset),
                        kind: kind.to_string(),
                    });
                }
                ScanStep::End { trailing_bytes } => {
                    // The last segment's tail is preallocated or being written by a
                    // live sink (the next open cuts a torn one); elsewhere it is damage.
                    if trailing_bytes > 0 && Some(seg.first_seq) != last {
                        st.damaged_frames += 1;
                        problems.push(Problem {
                            file: file.clone(),
                            offset: Some(scanner.valid_end()),
                            kind: format!("{trailing_bytes} bytes after the last valid frame"),
                        });
                    } else if trailing_bytes > 0 && !live {
                        // No sink is writing: bytes other than the preallocated zeros
                        // are a torn write.
                        let from = scanner.valid_end();
                        match nonzero_after(&view.dir().join(&file), from) {
                            Ok(false) => {}
                            Ok(true) => st.torn_tail = Some((from, trailing_bytes)),
                            Err(e) => problems.push(Problem {
                                file: file.clone(),
                                offset: Some(from),
                                kind: format!("tail unreadable: {e}"),
                            }),
                        }
                    }
                    break;
                }
            }
        }
        stats.push(st);
    }
    Ok((stats, problems))
}

/// The codec id of the first segment with a valid header.
pub(super) fn first_codec(view: &WalView) -> Option<u32> {
    view.segments.iter().find_map(|s| match s.header {
        HeaderStatus::Valid(h) => Some(h.codec_id),
        _ => None,
    })
}

/// Whether a live process holds the directory's lock, from `/proc/locks` (Linux):
/// taking the lock, even briefly, could make a sink starting at that moment fail.
/// `Some(true)` if seen there, `None` if it cannot be told.
pub(super) fn locked(dir: &Path) -> Option<bool> {
    use std::os::unix::fs::MetadataExt;
    let meta = std::fs::metadata(dir.join(LOCK_FILE)).ok()?;
    let locks = std::fs::read_to_string("/proc/locks").ok()?;
    let dev = meta.dev();
    // The kernel prints the device as major:minor in hex, then the inode.
    let (major, minor) = (
        ((dev >> 32) & 0xffff_f000) | ((dev >> 8) & 0xfff),
        ((dev >> 12) & 0xffff_ff00) | (dev & 0xff),
    );
    let want = format!("{major:02x}:{minor:02x}:{}", meta.ino());
    // Seen: a live process holds it. Not seen is not proof: a holder in another PID
    // namespace (a sidecar container) may not be listed.
    locks
        .lines()
        .any(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            f.get(1) == Some(&"FLOCK") && f.iter().any(|x| *x == want)
        })
        .then_some(true)
}

fn dead_letter_count(dir: &Path) -> Option<u64> {
    let storage: Arc<dyn Storage> = Arc::new(RealStorage);
    StoreFiles::open(storage, dir, 0, u64::MAX, false)
        .ok()
        .map(|s| s.count())
}

pub(super) fn inspect(dir: &Path, json: bool) -> Result<Exit, Failure> {
    let (dir, view) = open_view(dir)?;
    let acked = register_value(&view.cursor).unwrap_or(0);
    let lease = register_value(&view.lease);
    let locked = locked(&dir);
    let (stats, problems) = walk(&view, locked == Some(true), acked, |_, _| true, |_| {})?;
    let pending_records: u64 = stats.iter().map(|s| s.pending_records).sum();
    let pending_bytes: u64 = stats.iter().map(|s| s.pending_bytes).sum();
    let dead_letters = dead_letter_count(&dir);
    if json {
        let segments: Vec<serde_json::Value> = stats
            .iter()
            .map(|s| {
                serde_json::json!({
                    "file": s.file,
                    "first_seq": s.first_seq,
                    "last_seq": s.last_seq,
                    "records": s.records,
                    "bytes": s.bytes,
                    "damaged_frames": s.damaged_frames,
                })
            })
            .collect();
        let v = serde_json::json!({
            "dir": dir.display().to_string(),
            "segments": segments,
            "acked_seq": acked,
            "seq_lease": lease,
            "pending_records": pending_records,
            "pending_bytes": pending_bytes,
            "dead_letters": dead_letters,
            "locked": locked,
            "quarantined": view.quarantined,
            "strays": view.strays,
            "problems": problems.len(),
        });
        outln!("{v}");
    } else {
        let mut out = String::new();
        let _ = writeln!(out, "directory:     {}", dir.display());
        let _ = writeln!(
            out,
            "live sink:     {}",
            match locked {
                Some(true) => "yes (the directory is locked)",
                _ => "not seen (no lock in /proc/locks)",
            }
        );
        let _ = writeln!(
            out,
            "acked seq:     {acked} (cursor{})",
            describe(&view.cursor)
        );
        let _ = writeln!(
            out,
            "seq lease:     {}{}",
            lease.map_or("-".to_string(), |l| l.to_string()),
            describe(&view.lease)
        );
        let _ = writeln!(
            out,
            "pending:       {pending_records} records, {pending_bytes} bytes"
        );
        let _ = writeln!(
            out,
            "dead letters:  {}",
            dead_letters.map_or("unreadable".into(), |n| n.to_string())
        );
        let _ = writeln!(out, "segments:      {}", stats.len());
        let _ = writeln!(
            out,
            "  file\tfirst_seq\tlast_seq\trecords\tbytes\tdamaged_frames"
        );
        for s in &stats {
            let _ = writeln!(
                out,
                "  {}\t{}\t{}\t{}\t{}\t{}",
                s.file,
                s.first_seq,
                s.last_seq.map_or("-".into(), |l| l.to_string()),
                s.records,
                s.bytes,
                s.damaged_frames
            );
        }
        let _ = writeln!(out, "quarantined:   {}", list(&view.quarantined));
        let _ = writeln!(out, "strays:        {}", list(&view.strays));
        if !problems.is_empty() {
            let _ = writeln!(
                out,
                "problems:      {} (run `walsink verify` for each)",
                problems.len()
            );
        }
        out!("{out}");
    }
    Ok(if problems.is_empty() {
        Exit::Done
    } else {
        Exit::DamageOrNoMatch
    })
}

fn describe(peek: &RegisterPeek) -> String {
    match peek {
        RegisterPeek::Value(_) => String::new(),
        RegisterPeek::Missing => ", file missing".into(),
        RegisterPeek::Unreadable => ", unreadable".into(),
        RegisterPeek::UnsupportedVersion(v) => format!(", unsupported version {v}"),
    }
}

fn list(v: &[String]) -> String {
    if v.is_empty() {
        "none".into()
    } else {
        v.join(", ")
    }
}

pub(super) fn verify(dir: &Path, json: bool) -> Result<Exit, Failure> {
    let (dir, view) = open_view(dir)?;
    let live = locked(&dir) == Some(true);
    let total: u64 = view.segments.iter().map(|s| s.len).sum();
    // A bar only for people: on a terminal, and for directories worth waiting on.
    let bar = (std::io::stderr().is_terminal() && total > 64 << 20).then(|| {
        let b = indicatif::ProgressBar::new(total);
        b.set_style(
            indicatif::ProgressStyle::with_template("{bar:40} {bytes}/{total_bytes} {eta}")
                .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
        );
        b
    });
    let acked = register_value(&view.cursor).unwrap_or(0);
    let (stats, mut problems) = walk(
        &view,
        live,
        acked,
        |_, _| true,
        |n| {
            if let Some(b) = &bar {
                b.inc(n);
            }
        },
    )?;
    if let Some(b) = bar {
        b.finish_and_clear();
    }
    for (name, peek) in [("CURSOR", &view.cursor), ("SEQ_LEASE", &view.lease)] {
        let kind = match peek {
            RegisterPeek::Unreadable => Some("no valid slot".to_string()),
            RegisterPeek::UnsupportedVersion(v) => Some(format!("unsupported version {v}")),
            _ => None,
        };
        if let Some(kind) = kind {
            problems.push(Problem {
                file: name.into(),
                offset: None,
                kind,
            });
        }
    }
    let records: u64 = stats.iter().map(|s| s.records).sum();
    // Not damage (exit 0): what a crash mid-append leaves, cut by the next open.
    let torn = stats.iter().filter_map(|s| {
        let (offset, bytes) = s.torn_tail?;
        Some((&s.file, offset, format!("torn tail: {bytes} bytes after the last frame are not the preallocated zeros (a crash mid-append; no confirmed record is there, and the next open or `walsink repair` cuts them)")))
    });
    if json {
        for p in &problems {
            outln!(
                "{}",
                serde_json::json!({"file": p.file, "offset": p.offset, "kind": p.kind})
            );
        }
        for (file, offset, kind) in torn {
            outln!(
                "{}",
                serde_json::json!({"file": file, "offset": offset, "kind": kind, "note": true})
            );
        }
    } else {
        for p in &problems {
            match p.offset {
                Some(o) => outln!("{} at offset {o}: {}", p.file, p.kind),
                None => outln!("{}: {}", p.file, p.kind),
            }
        }
        for (file, offset, kind) in torn {
            outln!("note: {file} at offset {offset}: {kind}");
        }
        outln!(
            "checked {} segments, {records} records, 2 registers: {} problems",
            stats.len(),
            problems.len()
        );
    }
    Ok(if problems.is_empty() {
        Exit::Done
    } else {
        Exit::DamageOrNoMatch
    })
}

pub(super) fn dump(
    dir: &Path,
    from: u64,
    limit: usize,
    format: DumpFormat,
) -> Result<Exit, Failure> {
    let (dir, view) = open_view(dir)?;
    let live = locked(&dir) == Some(true);
    let mut printed = 0usize;
    let mut out = std::io::stdout().lock();
    let mut write_err = None;
    let (_, problems) = walk(
        &view,
        live,
        0,
        |seq, payload| {
            if seq < from {
                return true;
            }
            if printed >= limit {
                return false;
            }
            printed += 1;
            let line = match format {
                DumpFormat::Json => format!(
                    "{}\n",
                    serde_json::json!({"seq": seq, "len": payload.len(), "payload_hex": super::dlq::hex(payload)})
                ),
                DumpFormat::Text => format!(
                    "{seq}\t{}\t{}\n",
                    payload.len(),
                    super::dlq::one_line(&String::from_utf8_lossy(payload))
                ),
                DumpFormat::Hex => format!(
                    "seq {seq} len {}\n{}",
                    payload.len(),
                    super::dlq::hex_dump(payload)
                ),
            };
            if let Err(e) = std::io::Write::write_all(&mut out, line.as_bytes()) {
                write_err = Some(e);
                return false;
            }
            true
        },
        |_| {},
    )?;
    if let Some(e) = write_err
        && e.kind() != std::io::ErrorKind::BrokenPipe
    {
        return Err(Failure::new(Exit::Unusable, format!("stdout: {e}")));
    }
    if !problems.is_empty() {
        eprintln!(
            "walsink: {} damaged regions skipped (run `walsink verify`)",
            problems.len()
        );
    }
    if printed == 0 {
        eprintln!("walsink: no record at or above seq {from}");
        return Ok(Exit::DamageOrNoMatch);
    }
    Ok(if problems.is_empty() {
        Exit::Done
    } else {
        Exit::DamageOrNoMatch
    })
}
