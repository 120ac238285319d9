//! ENOSPC on a real filesystem: a 512 KiB tmpfs, which only root may mount. The test is
//! `#[ignore]`d, so a plain `cargo test` lists it as ignored instead of passing it
//! without running; CI runs it as root with `--ignored`, where a refused mount fails. A stalled drain lets segments fill the
//! filesystem. Writes then fail with ENOSPC: the writer holds them, pushes see
//! `Overflow`, nothing durable is damaged. Once the drain acknowledges, segments are
//! deleted, space returns, the held writes go through, and every accepted record is
//! delivered.

mod common;

use std::path::Path;
use std::process::Command;
use std::sync::Arc;

use common::*;
use tokio::sync::{Semaphore, mpsc};
use tokio_util::sync::CancellationToken;
use walsink::{DurableSink, SinkError};

struct Mount<'a>(&'a Path);

impl Drop for Mount<'_> {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(self.0).status();
    }
}

fn mount_tmpfs<'a>(at: &'a Path, size: &str) -> Result<Mount<'a>, String> {
    let out = Command::new("mount")
        .args([
            "-t",
            "tmpfs",
            "-o",
            &format!("size={size},mode=0700"),
            "tmpfs",
        ])
        .arg(at)
        .output()
        .map_err(|e| format!("cannot run mount: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "mount refused: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    Ok(Mount(at))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs root to mount a tmpfs; CI runs it: cargo test --test disk_full -- --ignored"]
async fn a_full_filesystem_holds_writes_and_resumes_when_segments_are_deleted()
-> Result<(), Box<dyn std::error::Error>> {
    let tmp = tempfile::tempdir()?;
    let mnt = tmp.path().join("mnt");
    std::fs::create_dir(&mnt)?;
    let _mount = mount_tmpfs(&mnt, "512k")
        .map_err(|why| format!("this test needs a tmpfs it can mount (run it as root): {why}"))?;
    let mut cfg = small_config(&mnt.join("wal"));
    cfg.segment_bytes = 64 * 1024;
    cfg.max_disk_bytes = 64 << 20; // far above the filesystem: the disk fills first
    cfg.max_record_bytes = 1024;
    cfg.queue_capacity = 256;
    let log = new_log();
    let gate = Arc::new(Semaphore::new(0));
    let (entered_tx, _entered) = mpsc::unbounded_channel();
    let drain = Gated {
        log: log.clone(),
        gate: gate.clone(),
        entered: entered_tx,
    };
    let shutdown = CancellationToken::new();
    let (sink, handle) = DurableSink::<Vec<u8>>::open_with_codec(
        cfg,
        walsink::RawCodec,
        GatedBytes(drain),
        shutdown.clone(),
    )
    .await?;

    // Durable before the disk fills.
    for i in 0..100u64 {
        sink.push(record(i)).await?;
    }
    sink.sync().await?;

    // Fill the filesystem until pushes overflow behind the held writer. An overflow
    // only counts once the writer reports the disk full (the queue can also fill for a
    // moment because the producer outruns the writer).
    let wal = mnt.join("wal");
    let mut accepted: Vec<u64> = (0..100).collect();
    let mut full = false;
    for i in 100..1_000_000u64 {
        // Read before the push: a full queue seen once the writer is stalled stays full.
        let stalled = sink.stats().disk_full;
        match sink.try_push(record(i)) {
            Ok(()) => accepted.push(i),
            Err(SinkError::Overflow) if stalled => {
                full = true;
                break;
            }
            Err(SinkError::Overflow) => {
                for _ in 0..10 {
                    tokio::task::yield_now().await;
                }
            }
            Err(e) => return Err(format!("push {i}: {e}").into()),
        }
        if i % 64 == 0 {
            tokio::task::yield_now().await;
        }
    }
    assert!(full, "the filesystem never filled");
    eprintln!(
        "filesystem full after {} records, {} segment bytes",
        accepted.len(),
        segment_bytes_on_disk(&wal)
    );
    let sync = {
        let sink = sink.clone();
        tokio::spawn(async move { sink.sync().await })
    };
    for _ in 0..100 {
        tokio::task::yield_now().await;
    }
    assert!(
        !sync.is_finished(),
        "sync reported durability while the disk was full"
    );

    // The drain resumes: acknowledged segments are deleted, space returns.
    gate.add_permits(1 << 24);
    // Deadlines turn a regression (space never freed) into a failure, not a hang.
    let deadline = std::time::Duration::from_secs(60);
    tokio::time::timeout(deadline, sync)
        .await
        .map_err(|_| "sync never completed after the drain resumed")???;
    tokio::time::timeout(deadline, sink.flush())
        .await
        .map_err(|_| "flush never completed")??;
    let got: Vec<u64> = values(&log);
    assert_eq!(got, accepted, "every accepted record, in order, none lost");
    assert!(
        sink.stats().write_errors == 0,
        "a full disk is not a write failure"
    );
    shutdown.cancel();
    handle.join().await?;
    Ok(())
}

fn record(i: u64) -> Vec<u8> {
    let mut v = i.to_le_bytes().to_vec();
    v.resize(200, (i % 251) as u8);
    v
}

/// Adapts the `u64` gated drain to raw records (the first 8 bytes are the id).
struct GatedBytes(Gated);

impl walsink::SinkDrain<Vec<u8>> for GatedBytes {
    async fn write_batch(
        &mut self,
        batch: walsink::Batch<Vec<u8>>,
    ) -> Result<(), walsink::DrainError> {
        let pairs: Vec<(u64, u64)> = batch
            .iter()
            .map(|(seq, r)| {
                (
                    seq,
                    u64::from_le_bytes(r[..8].try_into().unwrap_or_default()),
                )
            })
            .collect();
        let permit = self
            .0
            .gate
            .acquire()
            .await
            .map_err(walsink::DrainError::retryable)?;
        permit.forget();
        self.0
            .log
            .lock()
            .map_err(|e| walsink::DrainError::retryable(e.to_string()))?
            .extend(pairs);
        Ok(())
    }
}
