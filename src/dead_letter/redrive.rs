//! Redrive: dead letters back into the WAL as new records.
//!
//! Both paths work in chunks of at most `CHUNK_ENTRIES` entries (memory stays bounded
//! whatever the store holds): read the chunk, append each record to the WAL and wait
//! until it is durable there, then purge the chunk from the store. A crash before the
//! purge leaves the record in both (the drain may see it twice); nothing is removed
//! from the store before its copy in the WAL is durable.

use std::sync::{Arc, Weak};

use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;

use super::{DeadLetterError, Selection, StoreFiles, StoreInner, WalAppend, blocking};
use crate::error::{OpenError, SinkError};
use crate::inbox;
use crate::metrics::Metrics;
use crate::wal::format::FRAME_PAYLOAD_LIMIT_BYTES;
use crate::wal::writer::{SyncPolicy, WriterMsg, spawn_writer};
use crate::wal::{Wal, WalConfig};

/// Entries read, appended and purged at a time.
const CHUNK_ENTRIES: usize = 256;
/// Segment size for an offline redrive's new segments (the sink's default).
const OFFLINE_SEGMENT_BYTES: u64 = 64 << 20;

/// The next chunk of selected seqs above `after`.
fn next_chunk(files: &StoreFiles, which: &Selection, after: Option<u64>) -> Vec<u64> {
    let from = after.map_or(0, |a| a.saturating_add(1));
    match which {
        Selection::All => files.seqs(from, CHUNK_ENTRIES),
        Selection::Seqs(s) => {
            let mut s: Vec<u64> = s
                .iter()
                .copied()
                .filter(|&q| q >= from && after.is_none_or(|a| q > a) && files.contains(q))
                .collect();
            s.sort_unstable();
            s.dedup();
            s.truncate(CHUNK_ENTRIES);
            s
        }
    }
}

/// Reads the next chunk: `(seq, payload)` in seq order.
fn read_chunk(
    files: &StoreFiles,
    which: &Selection,
    after: Option<u64>,
) -> std::io::Result<Vec<(u64, Vec<u8>)>> {
    let mut out = Vec::new();
    for seq in next_chunk(files, which, after) {
        if let Some(e) = files.get(seq)? {
            out.push((seq, e.payload));
        }
    }
    Ok(out)
}

/// Through a running sink.
pub(super) async fn online(
    inner: &Arc<StoreInner>,
    appender: &Weak<dyn WalAppend>,
    which: Selection,
) -> Result<Vec<(u64, u64)>, DeadLetterError> {
    let mut done = Vec::new();
    let mut after = None;
    loop {
        let store = Arc::clone(inner);
        let w = which.clone();
        let chunk =
            blocking(move || store.with_writable(|files| Ok(read_chunk(files, &w, after)?)))
                .await??;
        let Some(&(last, _)) = chunk.last() else {
            return Ok(done);
        };
        after = Some(last);
        let app = appender.upgrade().ok_or(DeadLetterError::Closed)?;
        let mut appended = Vec::with_capacity(chunk.len());
        let mut failure = None;
        for (seq, payload) in chunk {
            match app.append_durable(payload).await {
                Ok(new) => appended.push((seq, new)),
                Err(e) => {
                    failure = Some(e);
                    break;
                }
            }
        }
        drop(app);
        purge_appended(inner, &appended).await?;
        done.extend(appended);
        if let Some(e) = failure {
            return Err(DeadLetterError::Sink(e));
        }
    }
}

/// Removes from the store what is now durable in the WAL.
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
    blocking(move || store.with_writable(|files| Ok(files.purge(Some(&seqs))?))).await??;
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
            // Any frame the format allows: a smaller limit would take the user's
            // larger records for damage.
            max_record_bytes: FRAME_PAYLOAD_LIMIT_BYTES,
            max_disk_bytes: u64::MAX,
            sync_policy: SyncPolicy::OnRequest,
        };
        let wal =
            Wal::open(Arc::clone(&storage), cfg, Metrics::new(None)).map_err(|e| match e {
                OpenError::Locked { dir } => DeadLetterError::Locked { dir },
                e => DeadLetterError::Io(Arc::new(std::io::Error::other(e.to_string()))),
            })?;
        // The WAL's lock is held (by its writer and cursor) from here on.
        let files = StoreFiles::open(storage, &dir, codec_id, u64::MAX, true)?;
        Ok(Some((wal, files)))
    })
    .await??;
    let Some((wal, mut files)) = opened else {
        return Ok(Vec::new());
    };
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
        let w = which.clone();
        let (f, read) = blocking(move || {
            let read = read_chunk(&files, &w, after);
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
        for (seq, payload) in chunk {
            let Ok(permit) = tx.reserve().await else {
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
                    failure.get_or_insert(DeadLetterError::Sink(e));
                }
                Err(_) => {
                    failure.get_or_insert(DeadLetterError::Sink(SinkError::Closed));
                }
            }
        }
        if !appended.is_empty() {
            crate::crashpoint::hit("dead_letter.redrive.before_purge");
            let seqs: Vec<u64> = appended.iter().map(|&(s, _)| s).collect();
            let (f, purged) = blocking(move || {
                let purged = files.purge(Some(&seqs));
                (files, purged)
            })
            .await?;
            files = f;
            if let Err(e) = purged {
                failure.get_or_insert(e.into());
            }
            done.extend(appended);
        }
        if failure.is_some() {
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
