//! Dead letters under process death (feature `crashpoints`): a child process is
//! aborted at a named crash point (`walsink::crashpoint::DEAD_LETTER_CRASH_POINTS`),
//! like `kill -9` (no destructor runs, the page cache keeps what was written), and the
//! parent checks what the directory holds.
//!
//! - `dead_letter.after_store`: the dead letter is durable, the cursor not past its
//!   record. The next run replays the record, the drain rejects it again, and the
//!   store still holds exactly one entry for it.
//! - `dead_letter.redrive.before_purge`: an offline redrive appended the record to the
//!   WAL (durable) and died before removing it from the store: the record is in both,
//!   never in neither, and the next run delivers it.
//!
//! `cargo test --features crashpoints --test dead_letter_kill`

mod common;

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use common::*;
use tokio_util::sync::CancellationToken;
use walsink::{Batch, DeadLetterStore, DrainError, DurableSink, Selection, SinkDrain};

/// Rejects permanently any batch holding `poison`; collects the rest.
struct Rejects {
    log: Log,
    poison: u64,
    rejections: Arc<AtomicUsize>,
}

impl SinkDrain<u64> for Rejects {
    async fn write_batch(&mut self, batch: Batch<u64>) -> Result<(), DrainError> {
        if batch.iter().any(|(_, &v)| v == self.poison) {
            self.rejections.fetch_add(1, Ordering::SeqCst);
            return Err(DrainError::permanent(format!("{} is poison", self.poison)));
        }
        self.log.lock().expect("log").extend(batch.into_pairs());
        Ok(())
    }
}

fn rejects(log: &Log, poison: u64) -> (Rejects, Arc<AtomicUsize>) {
    let n = Arc::new(AtomicUsize::new(0));
    (
        Rejects {
            log: Arc::clone(log),
            poison,
            rejections: Arc::clone(&n),
        },
        n,
    )
}

#[test]
#[ignore = "the child process's entry point: run only by the parent tests, with --ignored"]
fn dead_letter_child_entry() -> Result<(), Box<dyn std::error::Error>> {
    let dir = std::env::var("WALSINK_CHILD_DIR")
        .map_err(|_| "WALSINK_CHILD_DIR is not set: this entry point runs only as a child")?;
    let task = std::env::var("WALSINK_CHILD_TASK")?;
    let rt = child_runtime()?;
    rt.block_on(async move {
        let dir = Path::new(&dir);
        match task.as_str() {
            "reject" => {
                let log = new_log();
                let (drain, _) = rejects(&log, 5);
                let (sink, _handle) =
                    DurableSink::<u64>::open(small_config(dir), drain, CancellationToken::new())
                        .await?;
                for v in 0..10u64 {
                    sink.push(v).await?;
                }
                sink.flush().await?;
            }
            "redrive" => {
                let store = DeadLetterStore::open(dir).await?;
                store.redrive(Selection::All).await?;
            }
            other => return Err(format!("unknown task {other}").into()),
        }
        Err::<(), Box<dyn std::error::Error>>("the crash point was not reached".into())
    })
}

/// Bytes of the dead-letter store's files.
fn dead_letter_bytes(dir: &Path) -> u64 {
    std::fs::read_dir(dir.join("dead-letters"))
        .map(|rd| {
            rd.filter_map(Result::ok)
                .filter_map(|e| e.metadata().ok())
                .map(|m| m.len())
                .sum()
        })
        .unwrap_or(0)
}

/// Runs the child on `dir` until it aborts at `point`.
fn crash_child_at(dir: &Path, task: &str, point: &str) -> Result<(), Box<dyn std::error::Error>> {
    assert!(walsink::crashpoint::DEAD_LETTER_CRASH_POINTS.contains(&point));
    let status = child_command("dead_letter_child_entry")?
        .env("WALSINK_CHILD_DIR", dir)
        .env("WALSINK_CHILD_TASK", task)
        .env("WALSINK_CRASH_AT", format!("{point}:1"))
        .status()?;
    // An abort is SIGABRT: no exit code.
    assert_eq!(
        status.code(),
        None,
        "the child did not abort at {point}: {status}"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crash_between_storing_a_dead_letter_and_the_cursor_leaves_exactly_one_entry()
-> Result<(), Box<dyn std::error::Error>> {
    let tmp = tempfile::tempdir()?;
    crash_child_at(tmp.path(), "reject", "dead_letter.after_store")?;
    let offline = DeadLetterStore::open(tmp.path()).await?;
    assert_eq!(offline.count().await?, 1, "durable before the crash");
    let bytes_before = dead_letter_bytes(tmp.path());

    let log = new_log();
    let (drain, rejections) = rejects(&log, 5);
    let (sink, handle) =
        DurableSink::<u64>::open(small_config(tmp.path()), drain, CancellationToken::new()).await?;
    sink.flush().await?;
    assert!(
        rejections.load(Ordering::SeqCst) >= 1,
        "the record was replayed and rejected again"
    );
    let store = sink.dead_letters();
    assert_eq!(store.count().await?, 1, "one entry per original seq");
    assert_eq!(
        dead_letter_bytes(tmp.path()),
        bytes_before,
        "the replayed rejection wrote nothing"
    );
    assert_eq!(store.list(0, 10).await?[0].decode::<u64>()?, 5);
    let mut delivered = values(&log);
    delivered.sort_unstable();
    delivered.dedup();
    assert!(!delivered.contains(&5));
    drop(sink);
    handle.join().await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crash_mid_redrive_leaves_the_record_in_the_store_and_the_wal()
-> Result<(), Box<dyn std::error::Error>> {
    let tmp = tempfile::tempdir()?;
    // A dead letter, made by a sink that ran to completion.
    let log = new_log();
    let (drain, _) = rejects(&log, 5);
    let (sink, handle) =
        DurableSink::<u64>::open(small_config(tmp.path()), drain, CancellationToken::new()).await?;
    for v in 0..10u64 {
        sink.push(v).await?;
    }
    sink.flush().await?;
    drop(sink);
    handle.join().await?;
    assert_eq!(DeadLetterStore::open(tmp.path()).await?.count().await?, 1);

    crash_child_at(tmp.path(), "redrive", "dead_letter.redrive.before_purge")?;
    assert_eq!(
        DeadLetterStore::open(tmp.path()).await?.count().await?,
        1,
        "still in the store"
    );
    let log = new_log();
    let (sink, handle) = DurableSink::<u64>::open(
        small_config(tmp.path()),
        Collect::new(&log),
        CancellationToken::new(),
    )
    .await?;
    sink.flush().await?;
    assert_eq!(values(&log), vec![5], "and durable in the WAL");
    drop(sink);
    handle.join().await?;
    Ok(())
}
