//! walsink against its Rust peers on the same workloads, in one run (custom harness).
//!
//! - no fsync, end to end: 200 000 records of 100 B pushed by one producer and received
//!   by one consumer (drain) until all are acknowledged. walsink `Durability::Never`
//!   + `flush` against yaque 0.6 (`send`, then `recv_batch_up_to` + `commit`).
//! - fsync per commit: 1 and 8 concurrent committers of 100-byte records for 4 s.
//!   walsink `Durability::Always` + `push_durable` against okaywal 0.3
//!   (`begin_entry` / `write_chunk` / `commit`, which fsyncs, batching concurrent commits)
//!   and raft-engine 0.4 (`LogBatch::put` + `Engine::write(.., sync = true)`, whose
//!   write groups batch concurrent writers).
//!
//! `cargo bench --bench peers` (add `-- --test` for a small smoke run).

mod support;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use support::{Noop, rt, walsink_durable};
use tokio_util::sync::CancellationToken;
use walsink::{Durability, DurableSink, RawCodec, SinkConfig};

fn walsink_no_fsync(rt: &tokio::runtime::Runtime, n: u64) -> f64 {
    let tmp = tempfile::tempdir().expect("tempdir");
    let mut cfg = SinkConfig::new(tmp.path());
    cfg.durability = Durability::Never;
    cfg.batch_size = 4096;
    let shutdown = CancellationToken::new();
    let (sink, handle) = rt
        .block_on(DurableSink::<Vec<u8>>::open_with_codec(
            cfg,
            RawCodec,
            Noop,
            shutdown.clone(),
        ))
        .expect("open");
    let secs = rt.block_on(async {
        let start = Instant::now();
        for _ in 0..n {
            sink.push(vec![7u8; 100]).await.expect("push");
        }
        sink.flush().await.expect("flush");
        start.elapsed().as_secs_f64()
    });
    shutdown.cancel();
    rt.block_on(handle.join()).expect("join");
    n as f64 / secs
}

fn yaque_no_fsync(rt: &tokio::runtime::Runtime, n: u64) -> f64 {
    let tmp = tempfile::tempdir().expect("tempdir");
    let (mut tx, mut rx) = yaque::channel(tmp.path().join("q")).expect("yaque channel");
    rt.block_on(async move {
        let consumer = tokio::spawn(async move {
            let mut got = 0u64;
            while got < n {
                let batch = rx.recv_batch_up_to(4096).await.expect("recv");
                got += batch.len() as u64;
                batch.commit().expect("commit");
            }
        });
        let start = Instant::now();
        for _ in 0..n {
            tx.send(vec![7u8; 100]).await.expect("send");
        }
        consumer.await.expect("consumer");
        n as f64 / start.elapsed().as_secs_f64()
    })
}

fn walsink_fsync(rt: &tokio::runtime::Runtime, callers: usize, measure: Duration) -> f64 {
    let tmp = tempfile::tempdir().expect("tempdir");
    walsink_durable(rt, tmp.path(), callers, measure).0
}

fn okaywal_fsync(callers: usize, measure: Duration) -> f64 {
    let tmp = tempfile::tempdir().expect("tempdir");
    let log = okaywal::WriteAheadLog::recover(tmp.path(), okaywal::LogVoid).expect("okaywal");
    let count = Arc::new(AtomicU64::new(0));
    let start = Instant::now();
    let threads: Vec<_> = (0..callers)
        .map(|_| {
            let (log, count) = (log.clone(), Arc::clone(&count));
            std::thread::spawn(move || {
                while start.elapsed() < measure {
                    let mut entry = log.begin_entry().expect("begin");
                    entry.write_chunk(&[7u8; 100]).expect("write");
                    entry.commit().expect("commit");
                    count.fetch_add(1, Ordering::Relaxed);
                }
            })
        })
        .collect();
    for t in threads {
        t.join().expect("thread");
    }
    count.load(Ordering::Relaxed) as f64 / start.elapsed().as_secs_f64()
}

fn raft_engine_fsync(callers: usize, measure: Duration) -> f64 {
    let tmp = tempfile::tempdir().expect("tempdir");
    let cfg = raft_engine::Config {
        dir: tmp.path().to_string_lossy().into_owned(),
        ..Default::default()
    };
    let engine = Arc::new(raft_engine::Engine::open(cfg).expect("raft-engine"));
    let count = Arc::new(AtomicU64::new(0));
    let start = Instant::now();
    let threads: Vec<_> = (0..callers)
        .map(|t| {
            let (engine, count) = (Arc::clone(&engine), Arc::clone(&count));
            std::thread::spawn(move || {
                let mut i = 0u64;
                while start.elapsed() < measure {
                    let mut batch = raft_engine::LogBatch::default();
                    batch
                        .put(t as u64 + 1, i.to_le_bytes().to_vec(), vec![7u8; 100])
                        .expect("put");
                    engine.write(&mut batch, true).expect("write");
                    count.fetch_add(1, Ordering::Relaxed);
                    i += 1;
                }
            })
        })
        .collect();
    for t in threads {
        t.join().expect("thread");
    }
    count.load(Ordering::Relaxed) as f64 / start.elapsed().as_secs_f64()
}

fn main() {
    let smoke = std::env::args().any(|a| a == "--test");
    let rt = rt();
    let n = if smoke { 5_000 } else { 200_000 };
    let measure = if smoke {
        Duration::from_millis(200)
    } else {
        Duration::from_secs(4)
    };
    let reps = if smoke { 1 } else { 3 };
    let med = |mut v: Vec<f64>| {
        v.sort_by(|a, b| a.total_cmp(b));
        v[v.len() / 2]
    };
    println!("== no fsync, end to end: {n} records of 100 B, median of {reps}");
    let w = med((0..reps).map(|_| walsink_no_fsync(&rt, n)).collect());
    let y = med((0..reps).map(|_| yaque_no_fsync(&rt, n)).collect());
    println!(
        "walsink Never + flush {:>10.0} rec/s | yaque 0.6 send/recv/commit {:>10.0} rec/s | walsink/yaque {:.2}",
        w,
        y,
        w / y
    );
    println!("== fsync per commit, 100 B records, {measure:?} per run");
    for callers in [1usize, 8] {
        let w = walsink_fsync(&rt, callers, measure);
        let o = okaywal_fsync(callers, measure);
        let r = raft_engine_fsync(callers, measure);
        println!(
            "callers {callers}: walsink Always push_durable {:>8.0} rec/s | okaywal 0.3 commit {:>8.0} rec/s | raft-engine 0.4 write(sync) {:>8.0} rec/s | walsink/okaywal {:.2}, walsink/raft-engine {:.2}",
            w,
            o,
            r,
            w / o,
            w / r
        );
    }
}
