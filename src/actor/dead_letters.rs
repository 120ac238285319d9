//! Dead letters on the delivery side.
//!
//! With `DeadLetterPolicy::Keep`, a dead letter is stored (and fsynced) in the
//! dead-letter store *before* the cursor may pass its record: the cursor advances only
//! after `deliver_frames` returns, and that waits for the store. If storing fails, the
//! task retries after backoff and the cursor waits (every `flush` waiting meanwhile is
//! answered with the store's error rather than left hanging on a disk that may not
//! recover, except for a full disk, which holds flushes until space is freed, as it
//! holds the writer); at the shutdown deadline it gives up with the cursor still below the
//! record, which is delivered again next run. The
//! store keeps one entry per original seq, so that replay stores nothing twice. A full
//! store refuses (logged with the seq, counted) and the record is skipped: delivery
//! never stalls on the store's cap. With `Discard`, the record is logged and skipped.
//!

use std::sync::Arc;
use std::time::SystemTime;

use super::{Actor, Interrupted};
use crate::dead_letter::{
    Appended, DeadLetterPolicy, DeadLetterReason, DeadLetterStore, EntryMeta,
};
use crate::drain::SinkDrain;
use crate::error::SinkError;

/// The sink's dead-letter store; releases the directory lock it holds when the task
/// ends, however it ends (panic included).
pub(super) struct DeadLetters {
    pub(super) store: DeadLetterStore,
    pub(super) policy: DeadLetterPolicy,
    /// A dead letter was stored since the cursor was last made durable: the next
    /// cursor advance fsyncs, so that purging it cannot be undone by a replay.
    pub(super) stored: bool,
}

impl Drop for DeadLetters {
    fn drop(&mut self) {
        self.store.release();
    }
}

/// `e` and its sources, `a: b: c` (a source already in the text is not repeated).
pub(super) fn error_chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut next = e.source();
    while let Some(s) = next {
        let t = s.to_string();
        if !out.ends_with(&t) {
            out.push_str(": ");
            out.push_str(&t);
        }
        next = s.source();
    }
    out
}

impl<T: Send + 'static, D: SinkDrain<T>> Actor<T, D> {
    pub(super) fn entry_meta(
        &self,
        reason: DeadLetterReason,
        seq: u64,
        error: String,
        attempts: u32,
        first_failed_at: Option<SystemTime>,
    ) -> EntryMeta {
        let now = SystemTime::now();
        EntryMeta {
            reason,
            attempts,
            seq,
            first_failed_at: first_failed_at.unwrap_or(now),
            dead_lettered_at: now,
            error,
        }
    }

    /// Keeps a dead letter (see the module doc): returns once it is
    /// durable in the store, refused by a full store, or discarded by policy. Retries
    /// a failing store after backoff; `Interrupted` at the shutdown deadline, with the
    /// cursor still below the record.
    pub(super) async fn dead_letter(
        &mut self,
        meta: EntryMeta,
        payload: Vec<u8>,
    ) -> Result<(), Interrupted> {
        let seq = meta.seq;
        if self.dead_letters.policy == DeadLetterPolicy::Discard {
            tracing::error!(seq, reason = %meta.reason, "record discarded (dead-letter policy Discard)");
            return Ok(());
        }
        let entry = Arc::new((meta, payload));
        let mut attempt: u32 = 0;
        loop {
            let store = self.dead_letters.store.clone();
            let e = Arc::clone(&entry);
            match tokio::task::spawn_blocking(move || store.append(&e.0, &e.1)).await {
                Ok(Ok(Appended::Stored)) => {
                    crate::crashpoint::hit("dead_letter.after_store");
                    self.dead_letters.stored = true;
                    tracing::warn!(seq, reason = %entry.0.reason, "record kept as a dead letter");
                    self.shared.counters().dead_lettered.add(1);
                    self.shared
                        .metrics
                        .dead_letter_bytes
                        .set(self.dead_letters.store.bytes() as f64);
                    return Ok(());
                }
                Ok(Ok(Appended::AlreadyStored)) => {
                    // A replay after a crash between storing it and the durable cursor.
                    tracing::info!(
                        seq,
                        "dead letter already stored (a delivery repeated after a crash)"
                    );
                    self.dead_letters.stored = true;
                    return Ok(());
                }
                Ok(Ok(Appended::Full)) => {
                    tracing::error!(seq, reason = %entry.0.reason, "dead-letter store full (max_dead_letter_bytes); record skipped");
                    self.shared.counters().dead_letters_refused.add(1);
                    return Ok(());
                }
                Ok(Ok(Appended::TooLarge)) => {
                    tracing::error!(seq, reason = %entry.0.reason, bytes = entry.1.len(), "dead letter larger than a frame may be; record skipped");
                    self.shared.counters().dead_letters_refused.add(1);
                    return Ok(());
                }
                Ok(Err(e)) => {
                    tracing::error!(seq, error = %e, "storing a dead letter failed; retrying after backoff (the cursor waits)");
                    let failure = SinkError::Io(Arc::new(std::io::Error::new(
                        e.kind(),
                        format!(
                            "storing the dead letter of seq {seq} failed (retried; the record stays in the WAL): {e}"
                        ),
                    )));
                    attempt = attempt.saturating_add(1);
                    let delay = self.jittered(attempt);
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::StorageFull | std::io::ErrorKind::QuotaExceeded
                    ) {
                        // A full disk holds delivery until space is freed, as it holds
                        // the writer: flushes wait for it.
                        self.backoff(delay).await?;
                    } else {
                        self.backoff_failing_flushes(delay, Some(&failure)).await?;
                    }
                }
                Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
                Err(_) => return Err(Interrupted),
            }
        }
    }
}
