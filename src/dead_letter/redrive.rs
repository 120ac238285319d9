//! Redrive: dead letters back into the WAL as new records.
//!
//! Both paths work in chunks of at most `CHUNK_ENTRIES` entries (memory stays bounded
//! whatever the store holds): read the chunk, append each record to the WAL and wait
//! until it is durable there, then purge the chunk from the store. A crash before the
//! purge leaves the record in both (the drain may see it twice); nothing is removed
//! from the store before its copy in the WAL is durable.
//!
//! The selection is fixed when the redrive starts: at most the seqs held then, and
//! only those the durable cursor has passed (see `purge`). A redriven record the drain
//! rejects again becomes a new dead letter under its new seq, which this redrive does
//! not take again.

use std::sync::{Arc, Weak};

use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;

use super::{DeadLetterError, Selection, StoreFiles, StoreInner, WalAppend, blocking};
use crate::error::{OpenError, SinkError};
use crate::inbox;
use crate::metrics::Metrics;
use crate::wal::writer::{SyncPolicy, WriterMsg, spawn_writer};
use crate::wal::{Wal, WalConfig};

/// Entries read, appended and purged at a time.
const CHUNK_ENTRIES: usize = 256;
/// Segment size for an offline redrive's new segments (the sink's default).
const OFFLINE_SEGMENT_BYTES: u64 = 64 << 20;

/// What a redrive takes: the selection, bounded when it starts.
#[derive(Debug, Clone)]
struct Plan {
    which: Selection,
    /// No seq above this is taken (the highest held at the start, capped by the
    /// durable cursor).
    upper: u64,
}

impl Plan {
    fn new(which: Selection, files: &StoreFiles, through: u64) -> Self {
        let upper = files.last_seq().unwrap_or(0).min(through);
        let which = match which {
            Selection::All => Selection::All,
            Selection::Seqs(mut s) => {
                s.sort_unstable();
                s.dedup();
                Selection::Seqs(s)
            }
        };
        Self { which, upper }
    }

    /// The next chunk of selected seqs above `after`: `(seq, payload)` in seq order.
    ///
    /// Entries written with a codec other than `wal_codec` are left in the store
    /// (logged): appended to this WAL they would be decoded with the wrong codec, and
    /// dead-lettered again under a codec id that no longer names them.
    fn read_chunk(
        &self,
        files: &StoreFiles,
        after: Option<u64>,
        wal_codec: u32,
    ) -> std::io::Result<Vec<(u64, Option<Vec<u8>>)>> {
        let from = after.map_or(0, |a| a.saturating_add(1));
        let seqs: Vec<u64> = match &self.which {
            Selection::All => files.seqs(from, CHUNK_ENTRIES),
            Selection::Seqs(s) => s
                .iter()
                .copied()
                .filter(|&q| q >= from && files.contains(q))
                .take(CHUNK_ENTRIES)
                .collect(),
        };
        let mut out = Vec::new();
        for seq in seqs.into_iter().filter(|&s| s <= self.upper) {
            match files.get(seq)? {
                Some(e) if e.codec_id == wal_codec => out.push((seq, Some(e.payload))),
                Some(e) => {
                    tracing::warn!(
                        seq,
                        codec_id = e.codec_id,
                        wal_codec,
                        "dead letter left in the store: written with another codec than the WAL's"
                    );
                    out.push((seq, None));
                }
                None => {}
            }
        }
        Ok(out)
    }
}

/// Through a running sink.
pub(super) async fn online(
    inner: &Arc<StoreInner>,
    appender: &Weak<dyn WalAppend>,
    which: Selection,
) -> Result<Vec<(u64, u64)>, DeadLetterError> {
    let store = Arc::clone(inner);
    let (plan, wal_codec) = blocking(move || {
        store.with_writable(|files, through| {
            Ok((Plan::new(which, files, through), files.writer_codec_id()))
        })
    })
    .await??;
    let mut done = Vec::new();
    let mut after = None;
    loop {
        let store = Arc::clone(inner);
        let p = plan.clone();
        let chunk = blocking(move || {
            store.with_writable(|files, _| Ok(p.read_chunk(files, after, wal_codec)?))
        })
        .await??;
        let Some(&(last, _)) = chunk.last() else {
            return Ok(done);
        };
        after = Some(last);
        let app = appender.upgrade().ok_or(DeadLetterError::Closed)?;
        let mut appended = Vec::with_capacity(chunk.len());
        let mut failure = None;
        for (seq, payload) in chunk {
            let Some(payload) = payload else { continue };
            match app.append_durable(payload).await {
                Ok(new) => appended.push((seq, new)),
                Err(e) => {
                    failure = Some(e);
                    break;
                }
            }
        }
        drop(app);
        let purged = purge_appended(inner, &appended).await;
        done.extend(appended);
        if let Err(e) = purged {
            return Err(purge_failed(done, e));
        }
        if let Some(source) = failure {
            return Err(DeadLetterError::Sink {
                redriven: done,
                source,
            });
        }
    }
}

/// A purge after appends failed: the caller learns what is now in both places.
fn purge_failed(redriven: Vec<(u64, u64)>, e: DeadLetterError) -> DeadLetterError {
    match e {
        DeadLetterError::Io(source) => DeadLetterError::Purge { redriven, source },
        other => other,
    }
}

/// Removes from the store what is now durable in the WAL (all at or below the durable
/// cursor, as the plan chose them).
async fn purge_appended(
    inner: &Arc<StoreInner>,
    appended: &[(u64, u64)],
) -> Result<(), DeadLetterError> {
    if appended.is_empty() {
        return Ok(());
    }
    crate::crashpoint::hit("dead_letter.redrive.before_purge");
    let seqs: Vec<u64> = appended.iter().map(|&(s, _)| s).collect();
    let store = Arc::clone(inner);
    blocking(move || store.with_writable(|files, through| Ok(files.purge(Some(&seqs), through)?)))
        .await??;
    Ok(())
}

/// With no sink running: open the WAL as a sink would, run its writer thread, append.
pub(super) async fn offline(
    inner: &Arc<StoreInner>,
    which: Selection,
) -> Result<Vec<(u64, u64)>, DeadLetterError> {
    let storage = Arc::clone(&inner.storage);
    let dir = inner.wal_dir.clone();
    let opened = blocking(move || -> Result<_, DeadLetterError> {
        // The store's records carry the codec id of its files; the WAL must agree.
        let probe = StoreFiles::open(Arc::clone(&storage), &dir, 0, u64::MAX, false)?;
        let Some(codec_id) = probe.codec_id() else {
            return Ok(None);
        };
        drop(probe);
        let cfg = WalConfig {
            dir: dir.clone(),
            codec_id,
            segment_bytes: OFFLINE_SEGMENT_BYTES,
            max_disk_bytes: u64::MAX,
            sync_policy: SyncPolicy::OnRequest,
            // A short-lived writer of a few records: no thread for it.
            prefill: false,
        };
        let wal =
            Wal::open(Arc::clone(&storage), cfg, Metrics::new(None)).map_err(|e| match e {
                OpenError::Locked { dir } => DeadLetterError::Locked { dir },
                e => DeadLetterError::NotAWalDirectory {
                    dir: dir.clone(),
                    why: e.to_string(),
                },
            })?;
        // The WAL's lock is held (by its writer and cursor) from here on; recovery
        // made the cursor durable.
        let files = StoreFiles::open(storage, &dir, codec_id, u64::MAX, true)?;
        let plan = Plan::new(which, &files, wal.cursor.durable());
        Ok(Some((wal, files, plan)))
    })
    .await??;
    let Some((wal, mut files, plan)) = opened else {
        return Ok(Vec::new());
    };
    let through = wal.cursor.durable();
    let wal_codec = files.writer_codec_id();
    let Wal {
        writer,
        reader,
        cursor,
        ..
    } = wal;
    let (tx, rx) = inbox::channel::<WriterMsg>(CHUNK_ENTRIES);
    let (flush_tx, _flush_rx) = mpsc::unbounded_channel();
    let (exit_tx, _exit_rx) = oneshot::channel();
    let stop = CancellationToken::new();
    let thread = spawn_writer(writer, rx, flush_tx, stop.clone(), exit_tx)?;

    let mut done = Vec::new();
    let mut after = None;
    let mut failure = None;
    loop {
        let p = plan.clone();
        let (f, read) = blocking(move || {
            let read = p.read_chunk(&files, after, wal_codec);
            (files, read)
        })
        .await?;
        files = f;
        let chunk = match read {
            Ok(c) => c,
            Err(e) => {
                failure = Some(DeadLetterError::from(e));
                break;
            }
        };
        let Some(&(last, _)) = chunk.last() else {
            break;
        };
        after = Some(last);
        let mut replies = Vec::with_capacity(chunk.len());
        let mut sink_error = None;
        for (seq, payload) in chunk {
            let Some(payload) = payload else { continue };
            let Ok(permit) = tx.reserve().await else {
                // The writer is gone: what was not sent stays in the store, and the
                // caller must hear that the redrive stopped short.
                sink_error = Some(SinkError::Closed);
                break;
            };
            let (reply, wait) = oneshot::channel();
            permit.send_record(payload, Some(reply), WriterMsg::record);
            replies.push((seq, wait));
        }
        let mut appended = Vec::with_capacity(replies.len());
        for (seq, wait) in replies {
            match wait.await {
                Ok(Ok(new)) => appended.push((seq, new)),
                Ok(Err(e)) => {
                    sink_error.get_or_insert(e);
                }
                Err(_) => {
                    sink_error.get_or_insert(SinkError::Closed);
                }
            }
        }
        if !appended.is_empty() {
            crate::crashpoint::hit("dead_letter.redrive.before_purge");
            let seqs: Vec<u64> = appended.iter().map(|&(s, _)| s).collect();
            let (f, purged) = blocking(move || {
                let purged = files.purge(Some(&seqs), through);
                (files, purged)
            })
            .await?;
            files = f;
            done.extend(appended);
            if let Err(e) = purged {
                failure = Some(purge_failed(std::mem::take(&mut done), e.into()));
                break;
            }
        }
        if let Some(source) = sink_error {
            failure = Some(DeadLetterError::Sink {
                redriven: std::mem::take(&mut done),
                source,
            });
            break;
        }
    }
    // Stop the writer (it drains what is queued first), wait for its last write, and
    // release the lock with the reader and cursor.
    drop(tx);
    stop.cancel();
    blocking(move || thread.join()).await?.map_err(|_| {
        DeadLetterError::Io(Arc::new(std::io::Error::other(
            "the WAL writer thread panicked",
        )))
    })?;
    drop((reader, cursor, files));
    match failure {
        Some(e) => Err(e),
        None => Ok(done),
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;
    use std::time::{Duration, UNIX_EPOCH};

    use super::*;
    use crate::dead_letter::entry::{DeadLetterReason, EntryMeta};
    use crate::testing::sim::SimDisk;

    fn meta(seq: u64) -> EntryMeta {
        EntryMeta {
            reason: DeadLetterReason::Rejected,
            attempts: 1,
            seq,
            first_failed_at: UNIX_EPOCH + Duration::from_millis(seq),
            dead_lettered_at: UNIX_EPOCH + Duration::from_millis(seq),
            error: "no".into(),
        }
    }

    /// Dead letters written under another codec than the WAL's are not taken: the
    /// chunk names them (so the redrive moves past them) without their bytes.
    #[test]
    fn a_chunk_leaves_entries_of_another_codec_in_the_store() {
        let disk = SimDisk::new(3);
        let st = disk.storage();
        st.create_dir(Path::new("/wal")).expect("dir");
        let mut old =
            StoreFiles::open(disk.storage(), Path::new("/wal"), 1, 1 << 30, true).expect("open");
        for s in [1, 2] {
            old.append(&meta(s), &[s as u8]).expect("append");
        }
        drop(old);
        let mut new =
            StoreFiles::open(disk.storage(), Path::new("/wal"), 2, 1 << 30, true).expect("open");
        new.append(&meta(3), &[3]).expect("append");
        let plan = Plan::new(Selection::All, &new, u64::MAX);
        let chunk = plan.read_chunk(&new, None, 2).expect("read");
        assert_eq!(chunk, vec![(1, None), (2, None), (3, Some(vec![3]))]);
        let chunk = plan.read_chunk(&new, None, 1).expect("read");
        assert_eq!(
            chunk,
            vec![(1, Some(vec![1])), (2, Some(vec![2])), (3, None)]
        );
    }
}
