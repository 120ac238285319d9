//! The three shapes users run, each measured for walsink, its peers and a raw loop in
//! the same run (a module of the `peers` bench).
//!
//! Every subject gets the same records: 100 bytes each, incompressible (a fixed-seed
//! xorshift stream), built before the clock starts on the thread that pushes them.
//! The raw loop frames each record as walsink does (length, CRC-32 of length + seq +
//! payload, seq, payload) into a 1 MiB buffer and appends it with `write_all`; it is
//! the floor of "write these records to a file", without a queue, a thread hand-off
//! or a reader.
//!
//! - **push_all**: push every record, then wait until all are delivered; no fsync.
//!   walsink: `Durability::Never`, `push` each record, then `flush` (the drain, a
//!   no-op, runs concurrently and has acknowledged everything when `flush` returns).
//!   yaque: `send_batch` of 1 024 records, a consumer task taking `recv_batch_up_to(4
//!   096)` + `commit` until it has them all. Raw: the loop, no fsync.
//! - **batch64_sync**: batches of 64 records, each made durable before the next.
//!   walsink: 64 × `try_push`, then `sync()`. okaywal: one entry per batch (64
//!   `write_chunk`, `commit`, which fsyncs). raft-engine: one `LogBatch` of 64 `put`s
//!   per `write(.., sync = true)`. Raw: the loop appends the batch, then `fdatasync`.
//!   Per-batch latency is recorded; the ratio is of records/s.
//! - **e2e_interval**: one producer and one consumer at once, fsync every 100 ms.
//!   walsink: `Durability::Interval(100 ms)`, `push` each record, then `flush`; the
//!   no-op drain consumes concurrently. yaque: as in push_all (it never fsyncs).
//!   Raw: the loop with an `fdatasync` whenever 100 ms passed since the last one, and
//!   one at the end. A tokio mpsc pipeline (in memory, `recv_many`) is printed too, as
//!   a yardstick only: it is bimodal on this machine.

use std::io::Write;
use std::time::{Duration, Instant};

use support::{Noop, raw_frame};
use tokio_util::sync::CancellationToken;
use walsink::{Durability, DurableSink, RawCodec, SinkConfig};

use crate::support;

/// Payload bytes of every record.
pub const RECORD_BYTES: usize = 100;
/// Records per batch in batch64_sync.
pub const BATCH: usize = 64;

/// `n` incompressible records (xorshift64*, fixed seed).
pub fn records(n: usize) -> Vec<Vec<u8>> {
    let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
    (0..n)
        .map(|_| {
            let mut r = Vec::with_capacity(RECORD_BYTES);
            while r.len() < RECORD_BYTES {
                x ^= x >> 12;
                x ^= x << 25;
                x ^= x >> 27;
                let w = x.wrapping_mul(0x2545_F491_4F6C_DD1D).to_le_bytes();
                let take = (RECORD_BYTES - r.len()).min(8);
                r.extend_from_slice(&w[..take]);
            }
            r
        })
        .collect()
}

fn append_file(dir: &std::path::Path) -> std::fs::File {
    std::fs::OpenOptions::new()
        .create(true)
        .truncate(true)
        .write(true)
        .open(dir.join("raw.log"))
        .expect("open raw log")
}

/// The raw loop: frames every record into a 1 MiB buffer, appends it with
/// `write_all`; with `sync_every`, fdatasyncs whenever that much time passed since the
/// last one, and once at the end. Returns the elapsed time.
pub fn raw_loop(recs: &[Vec<u8>], sync_every: Option<Duration>) -> Duration {
    let tmp = tempfile::tempdir().expect("tempdir");
    let mut f = append_file(tmp.path());
    let start = Instant::now();
    let mut last_sync = start;
    let mut buf = Vec::with_capacity((1 << 20) + 256);
    for (i, r) in recs.iter().enumerate() {
        raw_frame(&mut buf, i as u64 + 1, r);
        if buf.len() >= 1 << 20 {
            f.write_all(&buf).expect("write");
            buf.clear();
            if let Some(every) = sync_every
                && last_sync.elapsed() >= every
            {
                f.sync_data().expect("fdatasync");
                last_sync = Instant::now();
            }
        }
    }
    f.write_all(&buf).expect("write");
    if sync_every.is_some() {
        f.sync_data().expect("fdatasync");
    }
    start.elapsed()
}

/// walsink: push every record, then `flush`. Returns the elapsed time.
pub fn walsink_push_all(
    rt: &tokio::runtime::Runtime,
    recs: Vec<Vec<u8>>,
    durability: Durability,
) -> Duration {
    let tmp = tempfile::tempdir().expect("tempdir");
    let mut cfg = SinkConfig::new(tmp.path());
    cfg.durability = durability;
    cfg.batch_size = 4096;
    cfg.queue_capacity = 1 << 16;
    cfg.max_disk_bytes = 4 << 30;
    let shutdown = CancellationToken::new();
    let (sink, handle) = rt
        .block_on(DurableSink::<Vec<u8>>::open_with_codec(
            cfg,
            RawCodec,
            Noop,
            shutdown.clone(),
        ))
        .expect("open");
    let elapsed = rt.block_on(async {
        let start = Instant::now();
        for r in recs {
            sink.push(r).await.expect("push");
        }
        sink.flush().await.expect("flush");
        start.elapsed()
    });
    shutdown.cancel();
    rt.block_on(handle.join()).expect("join");
    elapsed
}

/// yaque: `send_batch` of 1 024, a concurrent consumer (`recv_batch_up_to(4096)` +
/// `commit`) until it has every record. Returns the elapsed time.
pub fn yaque_push_all(rt: &tokio::runtime::Runtime, recs: Vec<Vec<u8>>) -> Duration {
    let tmp = tempfile::tempdir().expect("tempdir");
    let n = recs.len();
    let (mut tx, mut rx) = yaque::channel(tmp.path().join("q")).expect("yaque channel");
    rt.block_on(async move {
        let consumer = tokio::spawn(async move {
            let mut got = 0usize;
            while got < n {
                let batch = rx.recv_batch_up_to(4096).await.expect("recv");
                got += batch.len();
                batch.commit().expect("commit");
            }
        });
        let start = Instant::now();
        for chunk in recs.chunks(1024) {
            tx.send_batch(chunk).await.expect("send_batch");
        }
        consumer.await.expect("consumer");
        start.elapsed()
    })
}

/// A tokio mpsc pipeline in memory: the yardstick of e2e_interval.
pub fn mpsc_push_all(rt: &tokio::runtime::Runtime, recs: Vec<Vec<u8>>) -> Duration {
    let n = recs.len();
    rt.block_on(async move {
        let (tx, mut rx) = tokio::sync::mpsc::channel::<Vec<u8>>(1 << 16);
        let consumer = tokio::spawn(async move {
            let mut got = 0usize;
            let mut buf = Vec::with_capacity(4096);
            while got < n {
                got += rx.recv_many(&mut buf, 4096).await;
                buf.clear();
            }
        });
        let start = Instant::now();
        for r in recs {
            tx.send(r).await.expect("send");
        }
        consumer.await.expect("consumer");
        start.elapsed()
    })
}

/// Per-batch latencies of one batch64_sync run.
pub struct Batches {
    pub total: Duration,
    pub per_batch: Vec<Duration>,
}

impl Batches {
    pub fn p50(&self) -> Duration {
        let mut v = self.per_batch.clone();
        v.sort();
        v.get(v.len() / 2).copied().unwrap_or_default()
    }
}

fn batches(recs: &[Vec<u8>], mut one: impl FnMut(&[Vec<u8>])) -> Batches {
    let start = Instant::now();
    let mut per_batch = Vec::with_capacity(recs.len() / BATCH + 1);
    for chunk in recs.chunks(BATCH) {
        let t = Instant::now();
        one(chunk);
        per_batch.push(t.elapsed());
    }
    Batches {
        total: start.elapsed(),
        per_batch,
    }
}

/// Raw: append each batch's frames, then fdatasync.
pub fn raw_batches(recs: &[Vec<u8>]) -> Batches {
    let tmp = tempfile::tempdir().expect("tempdir");
    let mut f = append_file(tmp.path());
    let mut buf = Vec::with_capacity(BATCH * (RECORD_BYTES + 16));
    let mut seq = 0u64;
    batches(recs, |chunk| {
        buf.clear();
        for r in chunk {
            seq += 1;
            raw_frame(&mut buf, seq, r);
        }
        f.write_all(&buf).expect("write");
        f.sync_data().expect("fdatasync");
    })
}

/// walsink: 64 × `try_push`, then `sync()`.
pub fn walsink_batches(rt: &tokio::runtime::Runtime, recs: Vec<Vec<u8>>) -> Batches {
    let tmp = tempfile::tempdir().expect("tempdir");
    let mut cfg = SinkConfig::new(tmp.path());
    cfg.durability = Durability::Never;
    let shutdown = CancellationToken::new();
    let (sink, handle) = rt
        .block_on(DurableSink::<Vec<u8>>::open_with_codec(
            cfg,
            RawCodec,
            Noop,
            shutdown.clone(),
        ))
        .expect("open");
    let mut owned: Vec<Vec<Vec<u8>>> = recs.chunks(BATCH).map(|c| c.to_vec()).collect();
    drop(recs);
    let result = rt.block_on(async {
        let start = Instant::now();
        let mut per_batch = Vec::with_capacity(owned.len());
        for chunk in owned.drain(..) {
            let t = Instant::now();
            for r in chunk {
                sink.try_push(r).expect("try_push");
            }
            sink.sync().await.expect("sync");
            per_batch.push(t.elapsed());
        }
        Batches {
            total: start.elapsed(),
            per_batch,
        }
    });
    shutdown.cancel();
    rt.block_on(handle.join()).expect("join");
    result
}

/// okaywal: one entry per batch (64 chunks), `commit` (fsync).
pub fn okaywal_batches(recs: &[Vec<u8>]) -> Batches {
    let tmp = tempfile::tempdir().expect("tempdir");
    let log = okaywal::WriteAheadLog::recover(tmp.path(), okaywal::LogVoid).expect("okaywal");
    let result = batches(recs, |chunk| {
        let mut entry = log.begin_entry().expect("begin");
        for r in chunk {
            entry.write_chunk(r).expect("write");
        }
        entry.commit().expect("commit");
    });
    log.shutdown().expect("okaywal shutdown");
    result
}

/// raft-engine: one `LogBatch` of 64 puts per `write(.., sync = true)`.
pub fn raft_engine_batches(recs: Vec<Vec<u8>>) -> Batches {
    let tmp = tempfile::tempdir().expect("tempdir");
    let cfg = raft_engine::Config {
        dir: tmp.path().to_string_lossy().into_owned(),
        ..Default::default()
    };
    let engine = raft_engine::Engine::open(cfg).expect("raft-engine");
    // Keys and values built before the clock, as for walsink: `put` takes them owned.
    let mut owned: Vec<Vec<(Vec<u8>, Vec<u8>)>> = Vec::with_capacity(recs.len() / BATCH + 1);
    for (i, r) in recs.into_iter().enumerate() {
        if i % BATCH == 0 {
            owned.push(Vec::with_capacity(BATCH));
        }
        if let Some(last) = owned.last_mut() {
            last.push(((i as u64 + 1).to_be_bytes().to_vec(), r));
        }
    }
    let start = Instant::now();
    let mut per_batch = Vec::with_capacity(owned.len());
    for chunk in owned {
        let t = Instant::now();
        let mut batch = raft_engine::LogBatch::default();
        for (k, v) in chunk {
            batch.put(1, k, v).expect("put");
        }
        engine.write(&mut batch, true).expect("write");
        per_batch.push(t.elapsed());
    }
    Batches {
        total: start.elapsed(),
        per_batch,
    }
}
