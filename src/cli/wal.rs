//! `walsink inspect | verify | dump | repair`: the WAL directory itself, read through
//! the same view and decoders the sink uses (`crate::wal::view`).

use std::fmt::Write as _;
use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use clap::ValueEnum;

use super::{Exit, Failure, walsink_dir};
use crate::dead_letter::StoreFiles;
use crate::error::OpenError;
use crate::wal::format::{
    FRAME_PAYLOAD_LIMIT_BYTES, HeaderStatus, LOCK_FILE, frame_bytes, segment_file_name,
};
use crate::wal::recovery::{RecoveryLimits, recover};
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
struct Problem {
    file: String,
    offset: Option<u64>,
    kind: String,
}

/// What a walk over the segments found.
#[derive(Debug, Default)]
struct SegmentStats {
    file: String,
    first_seq: u64,
    last_seq: Option<u64>,
    records: u64,
    bytes: u64,
    damaged_frames: u64,
    pending_records: u64,
    pending_bytes: u64,
}

fn open_view(dir: &Path) -> Result<(PathBuf, WalView), Failure> {
    let dir = walsink_dir(dir)?;
    let storage: Arc<dyn Storage> = Arc::new(RealStorage);
    let view = WalView::open(storage, &dir, FRAME_PAYLOAD_LIMIT_BYTES).map_err(|e| {
        Failure::new(
            Exit::Unusable,
            format!("{}: cannot read: {e}", dir.display()),
        )
    })?;
    Ok((dir, view))
}

fn register_value(peek: &RegisterPeek) -> Option<u64> {
    match peek {
        RegisterPeek::Value(v) => Some(*v),
        _ => None,
    }
}

/// Walks every frame of every segment. `frame` sees each valid frame; problems are
/// collected. A segment deleted by a live sink since the listing is skipped.
fn walk(
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
fn first_codec(view: &WalView) -> Option<u32> {
    view.segments.iter().find_map(|s| match s.header {
        HeaderStatus::Valid(h) => Some(h.codec_id),
        _ => None,
    })
}

/// Whether a live process holds the directory's lock, from `/proc/locks` (Linux):
/// taking the lock, even briefly, could make a sink starting at that moment fail.
/// `Some(true)` if seen there, `None` if it cannot be told.
fn locked(dir: &Path) -> Option<bool> {
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
    if json {
        for p in &problems {
            outln!(
                "{}",
                serde_json::json!({"file": p.file, "offset": p.offset, "kind": p.kind})
            );
        }
    } else {
        for p in &problems {
            match p.offset {
                Some(o) => outln!("{} at offset {o}: {}", p.file, p.kind),
                None => outln!("{}: {}", p.file, p.kind),
            }
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

pub(super) fn repair(dir: &Path, dry_run: bool, codec: Option<u32>) -> Result<Exit, Failure> {
    let (dir, view) = open_view(dir)?;
    if locked(&dir) == Some(true) {
        return Err(Failure::new(
            Exit::Locked,
            format!(
                "{} is locked by a live sink: stop it first (it repairs at open anyway)",
                dir.display()
            ),
        ));
    }
    if dry_run {
        return repair_plan(&view);
    }
    // The codec the segments name; recovery stamps it on any segment it creates, and a
    // wrong one would make the sink's own open refuse the directory.
    let storage: Arc<dyn Storage> = Arc::new(RealStorage);
    let codec_id = codec
        .or_else(|| first_codec(&view))
        .or_else(|| {
            StoreFiles::open(Arc::clone(&storage), &dir, 0, u64::MAX, false)
                .ok()?
                .codec_id()
        })
        .ok_or_else(|| {
            Failure::new(
                Exit::Unusable,
                "no readable segment or dead letter names the sink's codec: pass --codec-id (1 bincode, 2 raw, or your codec's id)",
            )
        })?;
    let had_segments: Vec<u64> = view.segments.iter().map(|s| s.first_seq).collect();
    let tail_before = view.segments.last().map(|s| (s.first_seq, s.len));
    drop(view);
    let limits = RecoveryLimits {
        codec_id,
        segment_bytes: 64 << 20,
        max_record_bytes: FRAME_PAYLOAD_LIMIT_BYTES,
        preallocate: false,
    };
    let rec = recover(&storage, &dir, limits).map_err(|e| match e {
        OpenError::Locked { dir } => Failure::new(
            Exit::Locked,
            format!(
                "{} is locked by a live sink: stop it first (it repairs at open anyway)",
                dir.display()
            ),
        ),
        e => Failure::new(Exit::Unusable, e),
    })?;
    let r = &rec.report;
    let mut changes = 0;
    if r.truncated_bytes > 0 {
        outln!(
            "truncated a torn tail of {} bytes from the last segment",
            r.truncated_bytes
        );
        changes += 1;
    } else if let Some((first, len)) = tail_before
        && let Ok(now) = std::fs::metadata(dir.join(segment_file_name(first)))
        && now.len() < len
    {
        outln!(
            "trimmed {} bytes of unused preallocated space (zeros) from {}",
            len - now.len(),
            segment_file_name(first)
        );
        changes += 1;
    }
    for q in &r.quarantined {
        outln!("quarantined {}", q.display());
        changes += 1;
    }
    if r.deleted_acked_segments > 0 {
        outln!(
            "deleted {} segments the durable cursor had passed",
            r.deleted_acked_segments
        );
        changes += 1;
    }
    if r.cursor_reset {
        outln!("the cursor was missing or unreadable: delivery will restart at the oldest segment");
        changes += 1;
    }
    if !had_segments.contains(&rec.active_first_seq) {
        outln!(
            "created {} (empty) for the records from seq {} on",
            segment_file_name(rec.active_first_seq),
            rec.next_seq
        );
        changes += 1;
    }
    drop(rec);
    summarize_repair(&dir, changes)?;
    Ok(Exit::Done)
}

/// The state `repair` left, read back through the view.
fn summarize_repair(dir: &Path, changes: usize) -> Result<(), Failure> {
    let (_, view) = open_view(dir)?;
    let acked = register_value(&view.cursor).unwrap_or(0);
    let (stats, _) = walk(&view, false, acked, |_, _| true, |_| {})?;
    let pending: u64 = stats.iter().map(|s| s.pending_records).sum();
    outln!(
        "repaired: {changes} changes; {} segments, acked seq {acked}, {pending} records to deliver",
        stats.len()
    );
    note_damaged_frames(stats.iter().map(|s| s.damaged_frames).sum());
    Ok(())
}

/// Says how many damaged frames stay in readable segments: open does not rewrite
/// them (delivery skips and counts them), and they go with their segment once the
/// cursor passes it.
fn note_damaged_frames(damaged: u64) {
    if damaged > 0 {
        outln!(
            "{damaged} damaged frames stay in place: delivery skips them (counted in corrupt_records_total), and they go with their segment once the cursor passes it"
        );
    }
}

/// Whether the file at `path` holds only zeros from `from` on (read in bounded chunks).
fn zeros_from(path: &Path, from: u64) -> bool {
    use std::os::unix::fs::FileExt;
    let Ok(f) = std::fs::File::open(path) else {
        return true;
    };
    let mut buf = vec![0u8; 64 << 10];
    let mut at = from;
    loop {
        match f.read_at(&mut buf, at) {
            Ok(0) | Err(_) => return true,
            Ok(n) => {
                if buf[..n].iter().any(|&b| b != 0) {
                    return false;
                }
                at += n as u64;
            }
        }
    }
}

/// What `repair` would do, from the view (nothing changes).
fn repair_plan(view: &WalView) -> Result<Exit, Failure> {
    let acked = register_value(&view.cursor).unwrap_or(0);
    let mut actions = Vec::new();
    // The torn tail, if any: (file, offset) from which the repair cuts.
    let mut cut_from: Option<(String, u64)> = None;
    for s in &view.segments {
        let name = segment_file_name(s.first_seq);
        match s.header {
            HeaderStatus::Valid(h) if h.first_seq == s.first_seq => {}
            HeaderStatus::Valid(_) => actions.push(format!(
                "would quarantine {name} (its header names another first seq)"
            )),
            HeaderStatus::UnsupportedVersion(v) => actions.push(format!(
                "would refuse: {name} has format version {v}, which this build does not read (exit 2, nothing changed)"
            )),
            HeaderStatus::Corrupt(_) => {
                actions.push(format!("would quarantine {name} (unreadable header)"))
            }
        }
    }
    for (name, peek) in [("CURSOR", &view.cursor), ("SEQ_LEASE", &view.lease)] {
        if matches!(peek, RegisterPeek::Unreadable) {
            actions.push(format!("would quarantine {name} (no valid slot)"));
        }
    }
    if let Some(last) = view
        .segments
        .iter()
        .rev()
        .find(|s| matches!(s.header, HeaderStatus::Valid(_)))
    {
        let end = match view.scan(last) {
            Ok(Some(mut sc)) => loop {
                match sc.next_step() {
                    Ok(ScanStep::End { .. }) => break Some(sc.valid_end()),
                    Ok(_) => {}
                    Err(_) => break None,
                }
            },
            _ => None,
        };
        // Past the last valid frame: zeros are the preallocated tail, kept; anything
        // else is a torn write the next open truncates.
        let path = view.dir().join(segment_file_name(last.first_seq));
        if let Some(end) = end
            && end < last.len
        {
            actions.push(if zeros_from(&path, end) {
                format!(
                    "would trim {} bytes of unused preallocated space (zeros) from {}",
                    last.len - end,
                    segment_file_name(last.first_seq)
                )
            } else {
                cut_from = Some((segment_file_name(last.first_seq), end));
                format!(
                    "would truncate {} after its last valid frame, at offset {end}",
                    segment_file_name(last.first_seq)
                )
            });
        }
    }
    let passed = view
        .segments
        .windows(2)
        .filter(|w| w[1].first_seq.saturating_sub(1) <= acked)
        .count();
    if passed > 0 {
        actions.push(format!(
            "would delete {passed} segments the cursor has passed (if the cursor is durable)"
        ));
    }
    for a in &actions {
        outln!("{a}");
    }
    outln!("dry run: {} actions, nothing changed", actions.len());
    let (stats, problems) = walk(view, false, acked, |_, _| true, |_| {})?;
    // Damage in the torn tail goes with the cut; the rest stays.
    let in_tail = problems
        .iter()
        .filter(|p| {
            cut_from
                .as_ref()
                .is_some_and(|(f, end)| p.file == *f && p.offset.is_some_and(|o| o >= *end))
        })
        .count() as u64;
    let damaged: u64 = stats.iter().map(|s| s.damaged_frames).sum();
    note_damaged_frames(damaged.saturating_sub(in_tail));
    Ok(Exit::Done)
}
