//! Guarantee 7: damage in the directory gives a working sink or a clear error, never a
//! panic; intact records are delivered; the damage is counted and reported.
//!
//! Each test writes a WAL with a drain that never acknowledges (so every record stays
//! on disk), damages the files the way a crash, a bad disk or an operator would, then
//! reopens with a collecting drain.

mod common;

use std::path::Path;
use std::time::Duration;

use common::*;
use tokio_util::sync::CancellationToken;
use walsink::{DurableSink, OpenError, RawCodec, SinkConfig};

fn config(dir: &Path) -> SinkConfig {
    let mut c = small_config(dir);
    c.shutdown_timeout = Duration::from_millis(20);
    c
}

/// Writes values `0..n` (synced, undelivered) and shuts down.
async fn write_wal(dir: &Path, n: u64) -> Result<(), Box<dyn std::error::Error>> {
    let shutdown = CancellationToken::new();
    let (sink, handle) = DurableSink::<u64>::open(config(dir), Stuck, shutdown.clone()).await?;
    for i in 0..n {
        sink.push(i).await?;
    }
    sink.sync().await?;
    shutdown.cancel();
    handle.join().await?;
    Ok(())
}

/// Reopens, delivers everything, returns `(log, stats, recovery report)`.
async fn reopen_and_drain(
    dir: &Path,
) -> Result<
    (Vec<(u64, u64)>, walsink::SinkStats, walsink::RecoveryReport),
    Box<dyn std::error::Error>,
> {
    let log = new_log();
    let shutdown = CancellationToken::new();
    let (sink, handle) =
        DurableSink::<u64>::open(config(dir), Collect::new(&log), shutdown.clone()).await?;
    sink.flush().await?;
    // The sink keeps working after recovery.
    sink.push(1_000_000).await?;
    sink.flush().await?;
    let stats = sink.stats();
    let report = sink.recovery().clone();
    shutdown.cancel();
    handle.join().await?;
    let mut got = snapshot(&log);
    assert_eq!(got.pop().map(|p| p.1), Some(1_000_000));
    assert_seqs_increase(&got);
    Ok((got, stats, report))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_torn_tail_is_truncated_and_the_prefix_delivered()
-> Result<(), Box<dyn std::error::Error>> {
    let tmp = tempfile::tempdir()?;
    write_wal(tmp.path(), 100).await?;
    let last = segment_files(tmp.path()).pop().ok_or("no segment")?;
    let len = std::fs::metadata(&last)?.len();
    // Cut 5 bytes off the last frame: a write torn by a crash.
    std::fs::OpenOptions::new()
        .write(true)
        .open(&last)?
        .set_len(len - 5)?;
    let (got, stats, report) = reopen_and_drain(tmp.path()).await?;
    assert!(report.truncated_bytes > 0);
    let vals: Vec<u64> = got.iter().map(|p| p.1).collect();
    assert_eq!(
        vals,
        (0..99).collect::<Vec<_>>(),
        "all but the torn last record"
    );
    assert_eq!(
        stats.corrupt_records, 0,
        "a torn tail is a crash artifact, not corruption"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flipped_byte_mid_segment_skips_one_record_and_counts_it()
-> Result<(), Box<dyn std::error::Error>> {
    let tmp = tempfile::tempdir()?;
    write_wal(tmp.path(), 600).await?;
    let segs = segment_files(tmp.path());
    assert!(segs.len() >= 3);
    let victim = &segs[1];
    let mut bytes = std::fs::read(victim)?;
    let at = bytes.len() / 2;
    bytes[at] ^= 0x40;
    std::fs::write(victim, &bytes)?;
    let (got, stats, _) = reopen_and_drain(tmp.path()).await?;
    assert_eq!(got.len(), 599, "exactly one record lost");
    assert_eq!(stats.corrupt_records, 1);
    let vals: Vec<u64> = got.iter().map(|p| p.1).collect();
    let missing: Vec<u64> = (0..600).filter(|v| !vals.contains(v)).collect();
    assert_eq!(missing.len(), 1);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_empty_segment_file_is_quarantined_not_fatal() -> Result<(), Box<dyn std::error::Error>>
{
    let tmp = tempfile::tempdir()?;
    write_wal(tmp.path(), 50).await?;
    let empty = tmp.path().join(format!("{:020}.seg", 99_999));
    std::fs::write(&empty, b"")?;
    let (got, _, report) = reopen_and_drain(tmp.path()).await?;
    assert_eq!(
        got.iter().map(|p| p.1).collect::<Vec<_>>(),
        (0..50).collect::<Vec<_>>()
    );
    assert_eq!(report.quarantined.len(), 1);
    assert!(!empty.exists());
    assert_eq!(
        quarantined_files(tmp.path()).len(),
        1,
        "quarantined, never deleted"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_segment_with_a_damaged_header_is_quarantined_and_its_records_counted()
-> Result<(), Box<dyn std::error::Error>> {
    let tmp = tempfile::tempdir()?;
    write_wal(tmp.path(), 600).await?;
    let segs = segment_files(tmp.path());
    let victim = &segs[1];
    let mut bytes = std::fs::read(victim)?;
    bytes[20] ^= 0xFF; // inside first_seq: header CRC fails
    std::fs::write(victim, &bytes)?;
    let (got, stats, report) = reopen_and_drain(tmp.path()).await?;
    assert_eq!(report.quarantined.len(), 1);
    assert_eq!(stats.quarantined_segments, 1);
    let lost = 600 - got.len() as u64;
    assert!(lost > 0);
    assert_eq!(
        stats.corrupt_records, lost,
        "every record of the quarantined segment is counted"
    );
    let vals: Vec<u64> = got.iter().map(|p| p.1).collect();
    assert_eq!(vals[0], 0);
    assert_eq!(*vals.last().ok_or("empty")?, 599);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_garbage_cursor_falls_back_to_the_oldest_segment()
-> Result<(), Box<dyn std::error::Error>> {
    let tmp = tempfile::tempdir()?;
    // Deliver half, leave half.
    {
        let log = new_log();
        let shutdown = CancellationToken::new();
        let (sink, handle) =
            DurableSink::<u64>::open(config(tmp.path()), Collect::new(&log), shutdown.clone())
                .await?;
        for i in 0..100u64 {
            sink.push(i).await?;
        }
        sink.flush().await?;
        shutdown.cancel();
        handle.join().await?;
    }
    write_wal(tmp.path(), 10).await?;
    std::fs::write(tmp.path().join("CURSOR"), vec![0xA5u8; 5000])?;
    let (got, _, report) = reopen_and_drain(tmp.path()).await?;
    assert!(report.cursor_reset);
    assert_eq!(report.quarantined.len(), 1);
    // Duplicates, not loss: the 10 undelivered records are there, and nothing else
    // than what the WAL still held.
    let vals: Vec<u64> = got.iter().map(|p| p.1).collect();
    assert!(vals.ends_with(&(0..10).collect::<Vec<_>>()), "{vals:?}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stray_files_are_left_alone_and_reported() -> Result<(), Box<dyn std::error::Error>> {
    let tmp = tempfile::tempdir()?;
    write_wal(tmp.path(), 10).await?;
    std::fs::write(tmp.path().join("notes.txt"), b"hello")?;
    std::fs::write(tmp.path().join("123.seg"), b"not ours")?;
    let (got, _, report) = reopen_and_drain(tmp.path()).await?;
    assert_eq!(got.len(), 10);
    let mut strays = report.stray_files.clone();
    strays.sort();
    assert_eq!(strays, vec!["123.seg".to_string(), "notes.txt".to_string()]);
    assert!(tmp.path().join("notes.txt").exists());
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_in_every_file_still_opens() -> Result<(), Box<dyn std::error::Error>> {
    let tmp = tempfile::tempdir()?;
    write_wal(tmp.path(), 300).await?;
    let mut seed = 7u64;
    for p in segment_files(tmp.path()) {
        let mut bytes = std::fs::read(&p)?;
        for b in bytes.iter_mut().skip(40) {
            seed = seed
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            *b = (seed >> 33) as u8;
        }
        std::fs::write(&p, &bytes)?;
    }
    std::fs::write(tmp.path().join("SEQ_LEASE"), b"\x00\x01")?;
    let (got, stats, _) = reopen_and_drain(tmp.path()).await?;
    assert!(got.is_empty());
    assert!(stats.corrupt_records > 0);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unknown_format_version_is_refused_clearly() -> Result<(), Box<dyn std::error::Error>> {
    let tmp = tempfile::tempdir()?;
    write_wal(tmp.path(), 5).await?;
    let seg = segment_files(tmp.path()).remove(0);
    let mut bytes = std::fs::read(&seg)?;
    bytes[8] = 9; // version 9, with a recomputed header CRC: written by a future walsink
    let crc = crc32(&bytes[..36]);
    bytes[36..40].copy_from_slice(&crc.to_le_bytes());
    std::fs::write(&seg, &bytes)?;
    let err = DurableSink::<u64>::open(config(tmp.path()), Stuck, CancellationToken::new())
        .await
        .err()
        .ok_or("open succeeded")?;
    assert!(
        matches!(
            err,
            OpenError::UnsupportedVersion {
                found: 9,
                supported: 1,
                ..
            }
        ),
        "{err}"
    );
    assert!(err.to_string().contains("version 9"), "{err}");
    assert_eq!(std::fs::read(&seg)?, bytes, "nothing changed");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wal_written_with_another_codec_is_refused() -> Result<(), Box<dyn std::error::Error>> {
    let tmp = tempfile::tempdir()?;
    write_wal(tmp.path(), 5).await?;
    let err = DurableSink::<Vec<u8>>::open_with_codec(
        config(tmp.path()),
        RawCodec,
        RawStuck,
        CancellationToken::new(),
    )
    .await
    .err()
    .ok_or("open succeeded")?;
    assert!(
        matches!(
            err,
            OpenError::CodecMismatch {
                found: 1,
                expected: 2,
                ..
            }
        ),
        "{err}"
    );
    Ok(())
}

struct RawStuck;
impl walsink::SinkDrain<Vec<u8>> for RawStuck {
    async fn write_batch(
        &mut self,
        _b: walsink::Batch<Vec<u8>>,
    ) -> Result<(), walsink::DrainError> {
        std::future::pending().await
    }
}

/// A CRC-valid segment header for `first_seq`, built with the test's own CRC.
fn forged_segment(first_seq: u64) -> Vec<u8> {
    let mut b = vec![0x89, b'W', b'S', b'K', b'\r', b'\n', 0x1a, b'\n'];
    b.extend_from_slice(&1u16.to_le_bytes()); // version
    b.extend_from_slice(&0u16.to_le_bytes()); // flags
    b.extend_from_slice(&1u32.to_le_bytes()); // codec: bincode
    b.extend_from_slice(&first_seq.to_le_bytes());
    b.extend_from_slice(&0u64.to_le_bytes()); // prev_last_seq
    b.extend_from_slice(&0u32.to_le_bytes()); // reserved
    let crc = crc32(&b);
    b.extend_from_slice(&crc.to_le_bytes());
    b
}

/// Seqs at the edges of `u64` (0 is "none"; the top would overflow when incremented)
/// come only from forged or damaged files: they are quarantined, and the sink keeps
/// working with its real records and seqs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forged_segments_at_the_edges_of_the_seq_space_are_quarantined()
-> Result<(), Box<dyn std::error::Error>> {
    for forged in [0u64, u64::MAX, u64::MAX - 5, 1 << 63] {
        let tmp = tempfile::tempdir()?;
        write_wal(tmp.path(), 20).await?;
        std::fs::write(
            tmp.path().join(format!("{forged:020}.seg")),
            forged_segment(forged),
        )?;
        let (got, _, report) = reopen_and_drain(tmp.path())
            .await
            .map_err(|e| format!("forged {forged}: {e}"))?;
        assert_eq!(
            got.iter().map(|p| p.1).collect::<Vec<_>>(),
            (0..20).collect::<Vec<_>>(),
            "forged {forged}"
        );
        assert!(
            got.iter().all(|p| p.0 <= 21),
            "forged {forged}: seqs {:?}",
            got.iter().map(|p| p.0).collect::<Vec<_>>()
        );
        assert_eq!(
            report.quarantined.len() + report.stray_files.len(),
            1,
            "forged {forged}: {report:?}"
        );
    }
    Ok(())
}

/// A CRC-valid cursor slot claiming an impossible value is damage: the cursor is
/// quarantined and delivery restarts at the oldest segment (duplicates, not a skip of
/// everything).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_forged_cursor_beyond_the_seq_space_is_quarantined()
-> Result<(), Box<dyn std::error::Error>> {
    let tmp = tempfile::tempdir()?;
    write_wal(tmp.path(), 20).await?;
    // Acked "everything", in one slot.
    let mut file = vec![0u8; 4096 + 32];
    file[..32].copy_from_slice(&register_slot(1, 1_000, u64::MAX));
    std::fs::write(tmp.path().join("CURSOR"), file)?;
    let (got, _, report) = reopen_and_drain(tmp.path()).await?;
    assert!(report.cursor_reset, "{report:?}");
    assert_eq!(
        got.iter().map(|p| p.1).collect::<Vec<_>>(),
        (0..20).collect::<Vec<_>>()
    );
    Ok(())
}

/// A config whose record limit lets a damaged length through the limit check: the
/// length then reaches past the end of its segment.
fn config_large_records(dir: &Path) -> SinkConfig {
    SinkConfig {
        max_record_bytes: 16 << 20,
        max_disk_bytes: 64 << 20,
        ..config(dir)
    }
}

/// `(offset, seq)` of every frame in a segment file (the test's own parser).
fn frames_of(bytes: &[u8]) -> Vec<(usize, u64)> {
    let mut out = Vec::new();
    let mut at = 40; // segment header
    while let (Some(len), Some(seq)) = (bytes.get(at..at + 4), bytes.get(at + 8..at + 16)) {
        let len = u32::from_le_bytes(len.try_into().expect("4 bytes")) as usize;
        let seq = u64::from_le_bytes(seq.try_into().expect("8 bytes"));
        out.push((at, seq));
        at += 16 + len;
    }
    out
}

/// Regression: a flipped bit in a frame's `len` that still passed `max_record_bytes`
/// but reached past the end of the file was read as a torn tail. At open the rest of
/// the tail segment was truncated (records confirmed durable deleted); in a sealed
/// segment the reader skipped to the next segment and the cursor passed the rest. Now
/// only the damaged record is lost, in the first, a middle and the last segment, for
/// each of bits 16..24 of the length.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flipped_length_bit_loses_exactly_that_record() -> Result<(), Box<dyn std::error::Error>>
{
    let n = 600u64;
    let source = tempfile::tempdir()?;
    {
        let shutdown = CancellationToken::new();
        let (sink, handle) =
            DurableSink::<u64>::open(config_large_records(source.path()), Stuck, shutdown.clone())
                .await?;
        for i in 0..n {
            sink.push(i).await?;
        }
        sink.sync().await?;
        shutdown.cancel();
        handle.join().await?;
    }
    let segs = segment_files(source.path());
    assert!(segs.len() >= 3, "{segs:?}");
    for which in [0, segs.len() / 2, segs.len() - 1] {
        for bit in 16..24 {
            let tmp = tempfile::tempdir()?;
            for entry in std::fs::read_dir(source.path())? {
                let entry = entry?;
                // Files only: the (empty) dead-letter store is recreated at open.
                if entry.file_type()?.is_file() {
                    std::fs::copy(entry.path(), tmp.path().join(entry.file_name()))?;
                }
            }
            let victim = tmp.path().join(segs[which].file_name().ok_or("name")?);
            let mut bytes = std::fs::read(&victim)?;
            let frames = frames_of(&bytes);
            let (offset, seq) = frames[frames.len() / 2];
            bytes[offset + bit / 8] ^= 1 << (bit % 8);
            std::fs::write(&victim, &bytes)?;

            let log = new_log();
            let shutdown = CancellationToken::new();
            let (sink, handle) = DurableSink::<u64>::open(
                config_large_records(tmp.path()),
                Collect::new(&log),
                shutdown.clone(),
            )
            .await?;
            sink.flush().await?;
            let stats = sink.stats();
            shutdown.cancel();
            handle.join().await?;
            // Seqs start at 1 in a fresh directory and record `i` got seq `i + 1`.
            let lost = seq - 1;
            let expected: Vec<u64> = (0..n).filter(|&v| v != lost).collect();
            assert_eq!(
                values(&log),
                expected,
                "segment {which}, bit {bit}: only record {lost} may be lost"
            );
            assert_eq!(stats.corrupt_records, 1, "segment {which}, bit {bit}");
        }
    }
    Ok(())
}
