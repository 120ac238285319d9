//! `walsink repair DIR [--dry-run]`: the sink's own recovery, run offline, with every
//! change it makes reported.
//!
//! Both modes run the same `recover` the sink's open runs, without preallocation (a
//! repair reserves no space) and with no segment size limit (a segment is created only
//! when the seqs require one). The repair runs it on the directory; the dry run runs
//! it on an [`Overlay`] that keeps every change in memory. Each lists the changes by
//! comparing the directory before and after (file names, sizes, and the contents of
//! the small register files) with what the recovery report says about them, so the
//! dry run prints, line for line, what the repair would print (each change marked
//! `[dry run]`), and fails where the repair would fail, with the same exit code.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;

use super::wal::{first_codec, locked, open_view_on, register_value, walk};
use super::{Exit, Failure};
use crate::dead_letter::StoreFiles;
use crate::error::OpenError;
use crate::wal::format::FRAME_PAYLOAD_LIMIT_BYTES;
use crate::wal::recovery::{RecoveryLimits, RecoveryReport, recover};
use crate::wal::storage::{RealStorage, Storage, read_full_at};

use super::overlay::Overlay;

/// Files up to this size are compared by content (the registers); larger ones (the
/// segments) by size: recovery changes a segment only by cutting it.
const COMPARE_CONTENT_BYTES: u64 = 64 << 10;

/// What one directory entry looks like, for the before/after comparison.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Seen {
    len: u64,
    /// Contents of a small file.
    bytes: Option<Vec<u8>>,
}

fn snapshot(s: &dyn Storage, dir: &Path) -> Result<BTreeMap<String, Seen>, Failure> {
    let unusable = |e: std::io::Error| {
        Failure::new(
            Exit::Unusable,
            format!("{}: cannot read: {e}", dir.display()),
        )
    };
    let mut out = BTreeMap::new();
    for e in s.list(dir).map_err(unusable)? {
        if !e.is_file {
            continue;
        }
        let Ok(f) = s.open(&dir.join(&e.name), false) else {
            continue;
        };
        let len = f.len().map_err(unusable)?;
        let bytes = if len <= COMPARE_CONTENT_BYTES {
            let mut buf = vec![0u8; len as usize];
            let n = read_full_at(f.as_ref(), &mut buf, 0).map_err(unusable)?;
            buf.truncate(n);
            Some(buf)
        } else {
            None
        };
        out.insert(e.name, Seen { len, bytes });
    }
    Ok(out)
}

/// The changes between `before` and `after`, explained with the recovery report.
fn changes(
    before: &BTreeMap<String, Seen>,
    after: &BTreeMap<String, Seen>,
    report: &RecoveryReport,
) -> Vec<String> {
    let quarantined: BTreeMap<String, String> = report
        .quarantined
        .iter()
        .filter_map(|q| {
            let to = q.file_name()?.to_string_lossy().into_owned();
            let from = to.strip_suffix(".quarantined").unwrap_or(&to).to_owned();
            Some((from, to))
        })
        .collect();
    let quarantine_targets: Vec<&String> = quarantined.values().collect();
    let mut out = Vec::new();
    for (name, was) in before {
        match after.get(name) {
            None => match quarantined.get(name) {
                Some(to) => out.push(format!("quarantined {name} as {to} (unreadable)")),
                None if name.ends_with(".seg") => {
                    out.push(format!("deleted {name} (the durable cursor had passed it)"))
                }
                None => out.push(format!("removed {name}")),
            },
            Some(now) if now.len < was.len => {
                let cut = was.len - now.len;
                out.push(if report.truncated_bytes == cut {
                    format!("truncated a torn tail of {cut} bytes from {name}")
                } else {
                    format!("trimmed {cut} bytes of unused preallocated space (zeros) from {name}")
                });
            }
            Some(now) if now.len > was.len => {
                out.push(format!("grew {name} from {} to {} bytes", was.len, now.len))
            }
            Some(now) if now.bytes != was.bytes => out.push(format!("rewrote {name}")),
            Some(_) => {}
        }
    }
    for name in after.keys() {
        if !before.contains_key(name) && !quarantine_targets.contains(&name) {
            out.push(format!("created {name}"));
        }
    }
    if report.cursor_reset {
        out.push(
            "reset the cursor (missing or unreadable): delivery restarts at the oldest segment"
                .to_owned(),
        );
    }
    out
}

pub(super) fn repair(dir: &Path, dry_run: bool, codec: Option<u32>) -> Result<Exit, Failure> {
    let real: Arc<dyn Storage> = Arc::new(RealStorage);
    let (dir, view) = open_view_on(Arc::clone(&real), dir)?;
    let locked_failure = |dir: &Path| {
        Failure::new(
            Exit::Locked,
            format!(
                "{} is locked by a live sink: stop it first (it repairs at open anyway)",
                dir.display()
            ),
        )
    };
    if locked(&dir) == Some(true) {
        return Err(locked_failure(&dir));
    }
    // The codec the segments name; recovery stamps it on any segment it creates, and a
    // wrong one would make the sink's own open refuse the directory.
    let codec_id = codec
        .or_else(|| first_codec(&view))
        .or_else(|| {
            StoreFiles::open(Arc::clone(&real), &dir, 0, u64::MAX, false)
                .ok()?
                .codec_id()
        })
        .ok_or_else(|| {
            Failure::new(
                Exit::Unusable,
                "no readable segment or dead letter names the sink's codec: pass --codec-id (1 bincode, 2 raw, or your codec's id)",
            )
        })?;
    drop(view);
    let storage: Arc<dyn Storage> = if dry_run {
        Arc::new(Overlay::new())
    } else {
        real
    };
    let before = snapshot(storage.as_ref(), &dir)?;
    let limits = RecoveryLimits {
        codec_id,
        segment_bytes: u64::MAX,
        max_record_bytes: FRAME_PAYLOAD_LIMIT_BYTES,
        preallocate: false,
    };
    let rec = recover(&storage, &dir, limits).map_err(|e| match e {
        OpenError::Locked { dir } => locked_failure(&dir),
        e => Failure::new(Exit::Unusable, e),
    })?;
    let report = rec.report.clone();
    drop(rec);
    let after = snapshot(storage.as_ref(), &dir)?;
    let changes = changes(&before, &after, &report);
    let would = if dry_run { "[dry run] " } else { "" };
    for c in &changes {
        outln!("{would}{c}");
    }
    // What the sink will find, read back through the same storage.
    let (_, view) = open_view_on(storage, &dir)?;
    let acked = register_value(&view.cursor).unwrap_or(0);
    let (stats, _) = walk(&view, false, acked, |_, _| true, |_| {})?;
    let pending: u64 = stats.iter().map(|s| s.pending_records).sum();
    outln!(
        "{}: {} changes; {} segments, acked seq {acked}, {pending} records to deliver",
        if dry_run {
            "dry run, nothing changed"
        } else {
            "repaired"
        },
        changes.len(),
        stats.len()
    );
    note_damaged_frames(stats.iter().map(|s| s.damaged_frames).sum());
    Ok(Exit::Done)
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
