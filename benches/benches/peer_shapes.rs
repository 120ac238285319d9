//! The three shapes users run, each measured for walsink, its peers and a raw loop in
//! the same run (a module of the `peers` bench).
//!
//! Every subject gets the same records: 100 bytes each, incompressible (a fixed-seed
//! xorshift stream), built before the clock starts on the thread that pushes them
//! (and cut into the batches a subject sends, where it sends batches). Every subject
//! owns them and drops each one inside the timed region once it has taken it, as the
//! program that built them would: walsink drops a record after encoding it, the
//! others after framing, writing or sending it. (Until 2026-12-05 the raw loops,
//! yaque and okaywal borrowed the records and freed them after the clock stopped,
//! which charged freeing them to walsink alone: 20–23 ms for 1 M records here, a
//! third of the raw loop's time.)
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

use support::{open_noop, raw_frame};
use walsink::{Durability, SinkConfig};

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

/// `recs` moved into batches of `size` (the last may be shorter), before the clock.
pub fn chunked(recs: Vec<Vec<u8>>, size: usize) -> Vec<Vec<Vec<u8>>> {
    let mut out: Vec<Vec<Vec<u8>>> = Vec::with_capacity(recs.len().div_ceil(size));
    for r in recs {
        match out.last_mut() {
            Some(last) if last.len() < size => last.push(r),
            _ => {
                let mut chunk = Vec::with_capacity(size);
                chunk.push(r);
                out.push(chunk);
            }
        }
    }
    out
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
pub fn raw_loop(recs: Vec<Vec<u8>>, sync_every: Option<Duration>) -> Duration {
    let tmp = tempfile::tempdir().expect("tempdir");
    let mut f = append_file(tmp.path());
    let start = Instant::now();
    let mut last_sync = start;
    let mut buf = Vec::with_capacity((1 << 20) + 256);
    for (i, r) in recs.into_iter().enumerate() {
        raw_frame(&mut buf, i as u64 + 1, &r);
        drop(r);
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

/// walsink: push every record (one `push` each, or with `batch`, `push_batch` of that
/// many, as yaque's `send_batch`), then `flush`. Returns the elapsed time.
pub fn walsink_push_all(
    rt: &tokio::runtime::Runtime,
    recs: Vec<Vec<u8>>,
    durability: Durability,
    batch: Option<usize>,
) -> Duration {
    let tmp = tempfile::tempdir().expect("tempdir");
    let mut cfg = SinkConfig::new(tmp.path());
    cfg.durability = durability;
    cfg.batch_size = 4096;
    cfg.queue_capacity = 1 << 16;
    cfg.max_disk_bytes = 4 << 30;
    let (sink, handle, shutdown) = open_noop(rt, cfg);
    // One of the two is empty.
    let (recs, chunks) = match batch {
        None => (recs, Vec::new()),
        Some(b) => (Vec::new(), chunked(recs, b)),
    };
    let elapsed = rt.block_on(async {
        let start = Instant::now();
        for r in recs {
            sink.push(r).await.expect("push");
        }
        for mut chunk in chunks {
            sink.push_batch(&mut chunk).await.expect("push_batch");
        }
        sink.flush().await.expect("flush");
        start.elapsed()
    });
    shutdown.cancel();
    rt.block_on(handle.join()).expect("join");
    elapsed
}

/// yaque: `send_batch` of 1 024 (each batch dropped once sent), a concurrent consumer
/// (`recv_batch_up_to(4096)` + `commit`) until it has every record. Returns the
/// elapsed time.
pub fn yaque_push_all(rt: &tokio::runtime::Runtime, recs: Vec<Vec<u8>>) -> Duration {
    let tmp = tempfile::tempdir().expect("tempdir");
    let n = recs.len();
    let chunks = chunked(recs, 1024);
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
        for chunk in chunks {
            tx.send_batch(&chunk).await.expect("send_batch");
            drop(chunk);
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

/// Runs `one` on each batch of [`BATCH`] records (cut before the clock); `one`
/// consumes the batch, so its records are dropped inside the timing.
fn batches(recs: Vec<Vec<u8>>, mut one: impl FnMut(Vec<Vec<u8>>)) -> Batches {
    let chunks = chunked(recs, BATCH);
    let start = Instant::now();
    let mut per_batch = Vec::with_capacity(chunks.len());
    for chunk in chunks {
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
pub fn raw_batches(recs: Vec<Vec<u8>>) -> Batches {
    let tmp = tempfile::tempdir().expect("tempdir");
    let mut f = append_file(tmp.path());
    let mut buf = Vec::with_capacity(BATCH * (RECORD_BYTES + 16));
    let mut seq = 0u64;
    batches(recs, |chunk| {
        buf.clear();
        for r in chunk {
            seq += 1;
            raw_frame(&mut buf, seq, &r);
        }
        f.write_all(&buf).expect("write");
        f.sync_data().expect("fdatasync");
    })
}

/// walsink: 64 × `try_push` (or, `batched`, one `try_push_batch` of 64), then
/// `sync()`.
pub fn walsink_batches(rt: &tokio::runtime::Runtime, recs: Vec<Vec<u8>>, batched: bool) -> Batches {
    let tmp = tempfile::tempdir().expect("tempdir");
    let mut cfg = SinkConfig::new(tmp.path());
    cfg.durability = Durability::Never;
    let (sink, handle, shutdown) = open_noop(rt, cfg);
    let owned = chunked(recs, BATCH);
    let result = rt.block_on(async {
        let start = Instant::now();
        let mut per_batch = Vec::with_capacity(owned.len());
        for mut chunk in owned {
            let t = Instant::now();
            if batched {
                sink.try_push_batch(&mut chunk).expect("try_push_batch");
            } else {
                for r in chunk {
                    sink.try_push(r).expect("try_push");
                }
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
pub fn okaywal_batches(recs: Vec<Vec<u8>>) -> Batches {
    let tmp = tempfile::tempdir().expect("tempdir");
    let log = okaywal::WriteAheadLog::recover(tmp.path(), okaywal::LogVoid).expect("okaywal");
    let result = batches(recs, |chunk| {
        let mut entry = log.begin_entry().expect("begin");
        for r in &chunk {
            entry.write_chunk(r).expect("write");
        }
        entry.commit().expect("commit");
        drop(chunk);
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

// ---- Floors: the raw loop with the costs a durable queue cannot avoid ----

/// A file of `bytes` zeros, written and synced before the clock (as okaywal's
/// recycled segments and walsink's prefilled ones are).
fn zeroed_file(dir: &std::path::Path, bytes: usize) -> std::fs::File {
    let f = std::fs::OpenOptions::new()
        .create(true)
        .truncate(true)
        .read(true)
        .write(true)
        .open(dir.join("zeroed.log"))
        .expect("open zeroed file");
    let zeros = vec![0u8; 1 << 20];
    let mut left = bytes;
    while left > 0 {
        let n = left.min(zeros.len());
        (&f).write_all(&zeros[..n]).expect("zero");
        left -= n;
    }
    f.sync_all().expect("sync zeros");
    f
}

/// Floor of batch64_sync without a hand-off: each batch framed, `pwrite` into a
/// zero-filled file and fdatasync, on the caller's thread.
pub fn raw_batches_zeroed(recs: Vec<Vec<u8>>) -> Batches {
    use std::os::unix::fs::FileExt;
    let tmp = tempfile::tempdir().expect("tempdir");
    let f = zeroed_file(tmp.path(), recs.len() * (RECORD_BYTES + 16) + (1 << 20));
    let mut buf = Vec::with_capacity(BATCH * (RECORD_BYTES + 16));
    let (mut seq, mut at) = (0u64, 0u64);
    batches(recs, |chunk| {
        buf.clear();
        for r in chunk {
            seq += 1;
            raw_frame(&mut buf, seq, &r);
        }
        f.write_all_at(&buf, at).expect("pwrite");
        at += buf.len() as u64;
        f.sync_data().expect("fdatasync");
    })
}

/// Checks the CRC of each whole frame at the start of `buf` and copies its payload
/// into a `Vec` of its own (what a drain receives), handing `delivered` on (clearing
/// it) every `batch` records. Returns the bytes and the frames consumed.
fn consume_frames(buf: &[u8], delivered: &mut Vec<Vec<u8>>, batch: usize) -> (usize, usize) {
    let (mut at, mut frames) = (0usize, 0usize);
    while at + 16 <= buf.len() {
        let len = u32::from_le_bytes(buf[at..at + 4].try_into().expect("4")) as usize;
        let crc = u32::from_le_bytes(buf[at + 4..at + 8].try_into().expect("4"));
        let mut h = crc32fast::Hasher::new();
        h.update(&buf[at..at + 4]);
        h.update(&buf[at + 8..at + 16 + len]);
        assert_eq!(h.finalize(), crc, "frame at {at}");
        delivered.push(buf[at + 16..at + 16 + len].to_vec());
        if delivered.len() == batch {
            delivered.clear(); // the drain took the batch
        }
        at += 16 + len;
        frames += 1;
    }
    (at, frames)
}

/// Records a delivering consumer takes at a time: walsink's default `batch_size`.
pub const CONSUMER_BATCH: usize = 256;

/// Floor of batch64_sync behind an async API: the caller (a task, as walsink's
/// callers are) frames each batch and hands it to a writer thread through a tokio
/// channel; the thread `pwrite`s it into a zero-filled file, fdatasyncs and answers
/// through a oneshot. walsink's `sync` makes the same two thread hand-offs.
///
/// With `consumer`, also what walsink does beside it with its drain running: once
/// every [`CONSUMER_BATCH`] records written, the writer (after answering) passes the
/// written end to a consumer thread, which reads the frames back, checks each CRC and
/// copies each payload into a `Vec` of its own, as `raw_pipeline`'s consumer does.
pub fn raw_batches_zeroed_handoff(
    rt: &tokio::runtime::Runtime,
    recs: Vec<Vec<u8>>,
    consumer: bool,
) -> Batches {
    use std::os::unix::fs::FileExt;
    type Job = (Vec<u8>, tokio::sync::oneshot::Sender<()>);
    let tmp = tempfile::tempdir().expect("tempdir");
    let f = zeroed_file(tmp.path(), recs.len() * (RECORD_BYTES + 16) + (1 << 20));
    let input = f.try_clone().expect("clone for reading");
    let chunks = chunked(recs, BATCH);
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<Job>();
    let (to_consumer, from_writer) = std::sync::mpsc::channel::<u64>();
    let consumer = consumer.then(|| {
        std::thread::spawn(move || {
            let (mut read_to, mut buf) = (0u64, Vec::new());
            let mut delivered: Vec<Vec<u8>> = Vec::with_capacity(CONSUMER_BATCH);
            for end in from_writer {
                buf.resize((end - read_to) as usize, 0);
                input.read_exact_at(&mut buf, read_to).expect("read back");
                read_to += consume_frames(&buf, &mut delivered, CONSUMER_BATCH).0 as u64;
            }
        })
    });
    let writer = std::thread::spawn(move || {
        let (mut at, mut unsent) = (0u64, 0usize);
        while let Some((buf, done)) = rx.blocking_recv() {
            f.write_all_at(&buf, at).expect("pwrite");
            at += buf.len() as u64;
            f.sync_data().expect("fdatasync");
            let _ = done.send(());
            unsent += BATCH;
            if unsent >= CONSUMER_BATCH {
                unsent = 0;
                let _ = to_consumer.send(at);
            }
        }
    });
    let result = rt.block_on(async {
        let start = Instant::now();
        let mut per_batch = Vec::with_capacity(chunks.len());
        let mut seq = 0u64;
        for chunk in chunks {
            let t = Instant::now();
            let mut buf = Vec::with_capacity(BATCH * (RECORD_BYTES + 16));
            for r in chunk {
                seq += 1;
                raw_frame(&mut buf, seq, &r);
            }
            let (done, answer) = tokio::sync::oneshot::channel();
            tx.send((buf, done)).expect("writer alive");
            answer.await.expect("answered");
            per_batch.push(t.elapsed());
        }
        Batches {
            total: start.elapsed(),
            per_batch,
        }
    });
    drop(tx);
    writer.join().expect("writer thread");
    if let Some(c) = consumer {
        c.join().expect("consumer thread");
    }
    result
}

/// Floor of push_all and e2e_interval: the raw loop split the way any durable queue
/// with a consumer must split it. The producer frames records into 1 MiB buffers and
/// hands each to a writer thread (`write_all`; with `sync_every`, an fdatasync
/// whenever that long passed, and at the end), which passes the written end to a
/// consumer thread; the consumer reads the frames back, checks each CRC and copies
/// each payload into a `Vec` of its own (what a drain receives). Done when the
/// consumer has every record.
pub fn raw_pipeline(recs: Vec<Vec<u8>>, sync_every: Option<Duration>) -> Duration {
    use std::os::unix::fs::FileExt;
    let tmp = tempfile::tempdir().expect("tempdir");
    let out = append_file(tmp.path());
    let input = std::fs::File::open(tmp.path().join("raw.log")).expect("open for reading");
    let n = recs.len();
    let (to_writer, from_producer) = std::sync::mpsc::sync_channel::<Vec<u8>>(4);
    let (to_consumer, from_writer) = std::sync::mpsc::channel::<u64>();
    let start = Instant::now();
    let writer = std::thread::spawn(move || {
        let mut out = out;
        let (mut end, mut last_sync) = (0u64, Instant::now());
        for buf in from_producer {
            out.write_all(&buf).expect("write");
            end += buf.len() as u64;
            if let Some(every) = sync_every
                && last_sync.elapsed() >= every
            {
                out.sync_data().expect("fdatasync");
                last_sync = Instant::now();
            }
            let _ = to_consumer.send(end);
        }
        if sync_every.is_some() {
            out.sync_data().expect("fdatasync");
        }
    });
    let consumer = std::thread::spawn(move || {
        let (mut read_to, mut got) = (0u64, 0usize);
        let mut buf = Vec::new();
        let mut delivered: Vec<Vec<u8>> = Vec::with_capacity(4096);
        for end in from_writer {
            buf.resize((end - read_to) as usize, 0);
            input.read_exact_at(&mut buf, read_to).expect("read back");
            let (at, frames) = consume_frames(&buf, &mut delivered, 4096);
            got += frames;
            read_to += at as u64;
        }
        got
    });
    let mut buf = Vec::with_capacity((1 << 20) + 256);
    for (i, r) in recs.into_iter().enumerate() {
        raw_frame(&mut buf, i as u64 + 1, &r);
        drop(r);
        if buf.len() >= 1 << 20 {
            to_writer
                .send(std::mem::replace(
                    &mut buf,
                    Vec::with_capacity((1 << 20) + 256),
                ))
                .expect("writer alive");
        }
    }
    to_writer.send(buf).expect("writer alive");
    drop(to_writer);
    writer.join().expect("writer thread");
    let got = consumer.join().expect("consumer thread");
    assert_eq!(got, n, "the consumer got every record");
    start.elapsed()
}
