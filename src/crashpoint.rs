//! Named crash points for the crash-torture test (`tests/torture.rs`).
//!
//! With the `crashpoints` cargo feature, `WALSINK_CRASH_AT=<name>:<n>` makes the process
//! abort the n-th time it passes the point `<name>`. An abort, like `kill -9`, runs no
//! destructor and flushes nothing, and the page cache keeps what was written. Without
//! the feature (the default), `hit` is an empty inline function.

/// Every crash point, with what has and has not happened when it fires.
pub const CRASH_POINTS: &[&str] = &[
    // Frames written (page cache), not yet fsynced.
    "writer.after_write",
    // fsync returned, waiters not yet answered.
    "writer.after_sync",
    // Rollover: old segment synced, new one not yet created.
    "writer.roll.before_create",
    // Rollover: new segment created and durable, not yet in use.
    "writer.roll.after_create",
    // Seq lease renewed and durable, the seq not yet used.
    "lease.after_renew",
    // Cursor written to its scratch slot, not synced.
    "cursor.after_write",
    // Cursor synced, acknowledged segments not yet deleted.
    "cursor.before_delete",
    // One acknowledged segment deleted, the directory not synced.
    "cursor.after_delete",
    // A chunk of zeros written ahead of the writer into the active segment, not synced.
    "prefill.after_zero",
];

/// Crash points of the dead-letter store (`tests/dead_letter_kill.rs`), apart from
/// [`CRASH_POINTS`] because the torture workload never reaches them.
pub const DEAD_LETTER_CRASH_POINTS: &[&str] = &[
    // A dead letter stored and fsynced; the cursor not yet past its record.
    "dead_letter.after_store",
    // Redriven records durable in the WAL; not yet purged from the store.
    "dead_letter.redrive.before_purge",
];

/// Aborts the process if `WALSINK_CRASH_AT` names this point and count.
#[cfg(feature = "crashpoints")]
pub(crate) fn hit(name: &'static str) {
    use std::sync::OnceLock;
    use std::sync::atomic::{AtomicU64, Ordering};
    static TARGET: OnceLock<Option<(String, u64)>> = OnceLock::new();
    static COUNT: AtomicU64 = AtomicU64::new(0);
    debug_assert!(
        CRASH_POINTS.contains(&name) || DEAD_LETTER_CRASH_POINTS.contains(&name),
        "unlisted crash point {name}"
    );
    let target = TARGET.get_or_init(|| {
        let v = std::env::var("WALSINK_CRASH_AT").ok()?;
        let (point, nth) = v.rsplit_once(':')?;
        Some((point.to_string(), nth.parse().ok()?))
    });
    if let Some((point, nth)) = target
        && point == name
        && COUNT.fetch_add(1, Ordering::Relaxed) + 1 == *nth
    {
        std::process::abort();
    }
}

/// Without the `crashpoints` feature: nothing.
#[cfg(not(feature = "crashpoints"))]
#[inline(always)]
pub(crate) fn hit(_name: &'static str) {}
