//! Throughput, `Durability::Never`, noop drain, 100 B and 1 KiB records (raw codec):
//! time from the first `push` until `sync()` returns for N records, against a raw loop
//! that frames + CRCs the same records and appends them to a file in 1 MiB writes,
//! then fdatasyncs once. Target (docs/PERFORMANCE.md): walsink at least 50 % of the raw loop's
//! records/s. Delivery to the noop drain runs concurrently (it reads records back).

mod support;

use std::io::Write;
use std::time::{Duration, Instant};

use criterion::{BenchmarkId, Criterion, Throughput};
use support::{open_noop, raw_frame, report, rt};
use walsink::{Durability, SinkConfig};

const RECORDS: u64 = 100_000;

fn raw_loop(dir: &std::path::Path, size: usize, records: u64) -> Duration {
    let payload = vec![7u8; size];
    let path = dir.join("raw.log");
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .truncate(true)
        .write(true)
        .open(&path)
        .expect("open");
    let start = Instant::now();
    let mut buf = Vec::with_capacity(1 << 20);
    for seq in 1..=records {
        raw_frame(&mut buf, seq, &payload);
        if buf.len() >= 1 << 20 {
            f.write_all(&buf).expect("write");
            buf.clear();
        }
    }
    f.write_all(&buf).expect("write");
    f.sync_data().expect("fdatasync");
    start.elapsed()
}

fn main() {
    let mut c = Criterion::default().configure_from_args();
    let rt = rt();
    let mut pairs = Vec::new();
    for size in [100usize, 1024] {
        let group = format!("throughput_{size}B");
        let mut g = c.benchmark_group(&group);
        g.sample_size(10)
            .measurement_time(Duration::from_secs(8))
            .throughput(Throughput::Elements(RECORDS));
        let tmp = tempfile::tempdir().expect("tempdir");
        g.bench_function(BenchmarkId::new("raw_frame_crc_write", RECORDS), |b| {
            b.iter_custom(|iters| {
                (0..iters)
                    .map(|_| raw_loop(tmp.path(), size, RECORDS))
                    .sum()
            })
        });
        let mut cfg = SinkConfig::new(tmp.path().join("wal"));
        cfg.durability = Durability::Never;
        cfg.batch_size = 4096;
        cfg.queue_capacity = 1 << 16;
        let (sink, handle, shutdown) = open_noop(&rt, cfg);
        g.bench_function(BenchmarkId::new("walsink_push_sync", RECORDS), |b| {
            b.iter_custom(|iters| {
                let mut total = Duration::ZERO;
                for _ in 0..iters {
                    let msgs: Vec<Vec<u8>> = (0..RECORDS).map(|_| vec![7u8; size]).collect();
                    total += rt.block_on(async {
                        let start = Instant::now();
                        for m in msgs {
                            sink.push(m).await.expect("push");
                        }
                        sink.sync().await.expect("sync");
                        start.elapsed()
                    });
                    rt.block_on(sink.flush()).expect("flush");
                }
                total
            })
        });
        shutdown.cancel();
        rt.block_on(handle.join()).expect("join");
        g.finish();
        pairs.push(group);
    }
    c.final_summary();
    let id = format!("{RECORDS}");
    let rows: Vec<(String, String, String)> = pairs
        .iter()
        .map(|g| {
            (
                g.clone(),
                format!("raw_frame_crc_write/{id}"),
                format!("walsink_push_sync/{id}"),
            )
        })
        .collect();
    let rows: Vec<(&str, &str, &str)> = rows
        .iter()
        .map(|(a, b, c)| (a.as_str(), b.as_str(), c.as_str()))
        .collect();
    report(
        "throughput (time for the same records; target: walsink <= 2x the raw loop's time)",
        &rows,
    );
}
