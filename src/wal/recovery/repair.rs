//! Step 3 of recovery: set aside what cannot be read or trusted (renamed to
//! `*.quarantined`, never deleted), check the registers against each other, recreate a
//! missing cursor, and delete segments the durable cursor has passed.

use std::collections::HashSet;
use std::io;
use std::path::{Path, PathBuf};

use crate::error::OpenError;
use crate::wal::format::{
    CURSOR_FILE, FRAME_HEADER_BYTES, MAX_SEQ, QUARANTINE_SUFFIX, RegisterKind, SEQ_LEASE_FILE,
    segment_file_name,
};
use crate::wal::register::{Register, RegisterOpen};
use crate::wal::segment::{SegmentSet, segment_path};
use crate::wal::storage::Storage;
use crate::wal::writer::LEASE_BLOCK;

use super::inspect::{Inspected, Inspection};
use super::{RecoveryReport, io_err};

/// What step 3 leaves: the readable segments and trusted registers.
#[derive(Debug)]
pub(super) struct Repaired {
    pub(super) segments: SegmentSet,
    pub(super) cursor: Register,
    /// `None`: missing, unreadable or damaged; created in step 5 once `next_seq` is known.
    pub(super) lease: Option<Register>,
    /// Highest seq that readable evidence shows was handed out: the cursor, readable
    /// segment names (0: none).
    pub(super) seen_seq_max: u64,
    /// Highest seq that quarantined segments could have held (their names and sizes).
    /// Unverifiable: it counts only without a trusted lease, and only far from the end
    /// of the seq space (see `choose_active`).
    pub(super) unverified_seq_max: u64,
    /// Anything shows that seqs were handed out before (a segment, a cursor above 0).
    pub(super) has_history: bool,
}

/// Step 3: set aside what cannot be read or trusted (renamed to `*.quarantined`, never
/// deleted), check the registers against each other, recreate a missing cursor, and
/// delete segments the durable cursor has passed.
pub(super) fn repair(
    s: &dyn Storage,
    dir: &Path,
    found: Inspection,
    report: &mut RecoveryReport,
) -> Result<Repaired, OpenError> {
    let Inspection {
        mut names,
        segments,
        cursor,
        lease,
        not_files,
        strays: _,
        quarantined_seq_max,
    } = found;
    let mut renamed = false;
    let mut set_aside = |name: &str, why: &str, names: &mut HashSet<String>| {
        let path = dir.join(name);
        let to = quarantine(s, dir, name, names).map_err(io_err("quarantine", &path))?;
        tracing::error!(from = %path.display(), to = %to.display(), reason = %why, "WAL file quarantined");
        report.quarantined.push(to);
        renamed = true;
        Ok::<(), OpenError>(())
    };
    for name in &not_files {
        set_aside(name, "not a regular file", &mut names)?;
    }

    // Seqs that readable segment names show were handed out (a quarantined name may be
    // garbage, so it never condemns a register).
    let mut named_seq_max = 0;
    let mut unverified_seq_max = quarantined_seq_max;
    let mut has_history = quarantined_seq_max > 0;
    let mut set = SegmentSet::default();
    for seg in segments {
        has_history = true;
        match seg {
            Inspected::Good(info) => {
                // A segment named N was created when N was the next seq: every seq below
                // it may have been handed out.
                named_seq_max = named_seq_max.max(info.first_seq - 1);
                set.push(info);
            }
            Inspected::Bad {
                first_seq,
                len,
                why,
            } => {
                set_aside(&segment_file_name(first_seq), &why, &mut names)?;
                // It may have held up to one record per frame header's worth of bytes.
                let bound = first_seq.saturating_add(len / FRAME_HEADER_BYTES as u64);
                unverified_seq_max = unverified_seq_max.max(bound);
            }
        }
    }

    // The lease: no seq at or above it was ever handed out. So it must lie above every
    // seq the segment names show, and within the seq space.
    let lease = match lease {
        RegisterOpen::Loaded(r) if r.value() > MAX_SEQ + 1 || r.value() <= named_seq_max => {
            let why = format!(
                "seq lease {} impossible: segments show seqs up to {named_seq_max}, the seq space ends at {MAX_SEQ}",
                r.value()
            );
            drop(r);
            set_aside(SEQ_LEASE_FILE, &why, &mut names)?;
            None
        }
        RegisterOpen::Loaded(r) => Some(r),
        RegisterOpen::Unreadable => {
            set_aside(SEQ_LEASE_FILE, "no valid slot", &mut names)?;
            None
        }
        RegisterOpen::Missing | RegisterOpen::UnsupportedVersion(_) => None,
    };
    // The cursor names an acknowledged seq: one that was handed out, so below the lease.
    // A value that is not is damage: trusting it would delete unacknowledged segments.
    // Without a trusted lease, the seqs handed out are still bounded: by what the
    // segments could hold (the newest one at most one frame per frame header's bytes),
    // plus the lease block the writer may have run ahead of its last synced frame.
    let held_seq_max = set
        .iter()
        .last()
        .map_or(0, |t| {
            t.first_seq
                .saturating_add(t.len / FRAME_HEADER_BYTES as u64)
        })
        .max(named_seq_max)
        .max(unverified_seq_max);
    let cursor_max = match &lease {
        Some(l) => l.value().saturating_sub(1),
        None => held_seq_max.saturating_add(LEASE_BLOCK),
    }
    .min(MAX_SEQ);
    let cursor = match cursor {
        RegisterOpen::Loaded(r) if r.value() > 0 && r.value() > cursor_max => {
            let why = format!(
                "cursor {} impossible: no seq above {cursor_max} was handed out (seq lease {})",
                r.value(),
                lease.as_ref().map_or(0, Register::value)
            );
            drop(r);
            set_aside(CURSOR_FILE, &why, &mut names)?;
            None
        }
        RegisterOpen::Loaded(r) => Some(r),
        RegisterOpen::Unreadable => {
            set_aside(CURSOR_FILE, "no valid slot", &mut names)?;
            None
        }
        RegisterOpen::Missing | RegisterOpen::UnsupportedVersion(_) => None,
    };
    if renamed {
        // Sync the directory: make the quarantine renames durable before new files take
        // the old names, so a power loss can neither bring back a file this open
        // reported as quarantined nor put it back beside its replacement.
        s.sync_dir(dir).map_err(io_err("sync directory", dir))?;
    }
    let cursor = match cursor {
        Some(r) => r,
        None => {
            report.cursor_reset = set.count() > 0;
            if report.cursor_reset {
                tracing::error!(dir = %dir.display(), "no usable cursor: delivery restarts at the oldest segment (duplicates, not loss)");
            }
            let path = dir.join(CURSOR_FILE);
            Register::create(s, dir, CURSOR_FILE, RegisterKind::Cursor, 0)
                .map_err(io_err("create register", &path))?
        }
    };
    let acked = cursor.value();
    has_history |= acked > 0;
    let seen_seq_max = named_seq_max.max(acked);
    for seg in set.fully_acked(acked) {
        let path = segment_path(dir, seg.first_seq);
        // The cursor is durable (Register::open synced it), so these can go.
        s.remove_file(&path)
            .map_err(io_err("delete acknowledged segment", &path))?;
        set.remove(seg.first_seq);
        report.deleted_acked_segments += 1;
    }
    Ok(Repaired {
        segments: set,
        cursor,
        lease,
        seen_seq_max,
        unverified_seq_max,
        has_history,
    })
}

/// Most `.N.quarantined` names tried for one file before giving up.
const QUARANTINE_NAME_ATTEMPTS: u32 = 1000;

/// Renames `name` to an unused `name[.N].quarantined`; returns the new path.
pub(super) fn quarantine(
    s: &dyn Storage,
    dir: &Path,
    name: &str,
    names: &mut HashSet<String>,
) -> io::Result<PathBuf> {
    for n in 0..QUARANTINE_NAME_ATTEMPTS {
        let target = if n == 0 {
            format!("{name}{QUARANTINE_SUFFIX}")
        } else {
            format!("{name}.{n}{QUARANTINE_SUFFIX}")
        };
        if names.contains(&target) {
            continue;
        }
        let to = dir.join(&target);
        s.rename(&dir.join(name), &to)?;
        names.insert(target);
        names.remove(name);
        return Ok(to);
    }
    Err(io::Error::new(
        io::ErrorKind::AlreadyExists,
        format!("no free quarantine name for {name}"),
    ))
}
