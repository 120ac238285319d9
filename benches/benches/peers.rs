//! walsink against its Rust peers on the same workloads, in one run (custom harness).
//!
//! - the three shapes users run (push everything; batches of 64 made durable; one
//!   producer and one consumer with an fsync every 100 ms), against yaque 0.6, okaywal
//!   0.3, raft-engine 0.4 and a raw framing loop: see `peer_shapes.rs`. Each subject
//!   runs 3 times, alternating with the others; medians, and ratios to the raw loop
//!   of the same run.
//! - fsync per commit: 1 and 8 concurrent committers of 100-byte records for 4 s.
//!   walsink `Durability::Always` + `push_durable` against okaywal 0.3
//!   (`begin_entry` / `write_chunk` / `commit`, which fsyncs, batching concurrent commits)
//!   and raft-engine 0.4 (`LogBatch::put` + `Engine::write(.., sync = true)`, whose
//!   write groups batch concurrent writers).
//!
//! `cargo bench --bench peers` (add `-- --test` for a small smoke run).

mod peer_shapes;
mod support;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use support::{rt, walsink_durable};

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
    let measure = if smoke {
        Duration::from_millis(200)
    } else {
        Duration::from_secs(4)
    };
    shapes(&rt, smoke);
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

/// Writes back every dirty page before a run (`sync`), so that no run pays for the
/// writeback of the one before it (on this machine a raw loop after a run that left
/// ~100 MB dirty took 4x as long).
fn settle() {
    let _ = std::process::Command::new("sync").status();
}

/// The median of `v`.
fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v.get(v.len() / 2).copied().unwrap_or_default()
}

/// Runs `subjects` `reps` times each, alternating (one of each per rep); the median
/// time of each.
fn alternate(reps: usize, subjects: &mut [&mut dyn FnMut() -> Duration]) -> Vec<Duration> {
    let mut times = vec![Vec::new(); subjects.len()];
    for _ in 0..reps {
        for (i, s) in subjects.iter_mut().enumerate() {
            settle();
            times[i].push(s());
        }
    }
    times.into_iter().map(median).collect()
}

fn line(name: &str, n: usize, t: Duration, raw: Duration) {
    println!(
        "  {name:<44} {:>9.1} ms {:>10.0} rec/s  {:.2}x raw",
        t.as_secs_f64() * 1e3,
        n as f64 / t.as_secs_f64(),
        raw.as_secs_f64() / t.as_secs_f64()
    );
}

fn shapes(rt: &tokio::runtime::Runtime, smoke: bool) {
    use peer_shapes::*;
    let reps = if smoke { 1 } else { 3 };
    let n = if smoke { 20_000 } else { 1_000_000 };
    let nb = if smoke { 6_400 } else { 100_000 };

    println!(
        "== push_all: {n} records of {RECORD_BYTES} B, no fsync, until delivered; median of {reps}"
    );
    let t = alternate(
        reps,
        &mut [
            &mut || raw_loop(records(n), None),
            &mut || walsink_push_all(rt, records(n), walsink::Durability::Never, None),
            &mut || yaque_push_all(rt, records(n)),
            &mut || raw_pipeline(records(n), None),
            &mut || walsink_push_all(rt, records(n), walsink::Durability::Never, Some(1024)),
        ],
    );
    line("raw frame+CRC+write_all", n, t[0], t[0]);
    line("walsink Never, push each, flush", n, t[1], t[0]);
    line("yaque send_batch(1024)/recv_batch_up_to", n, t[2], t[0]);
    line(
        "floor: raw pipeline, writer+consumer threads",
        n,
        t[3],
        t[0],
    );
    line("walsink Never, push_batch(1024), flush", n, t[4], t[0]);
    println!(
        "  walsink/floor {:.2} (push_batch {:.2})",
        t[3].as_secs_f64() / t[1].as_secs_f64(),
        t[3].as_secs_f64() / t[4].as_secs_f64()
    );
    println!(
        "  walsink/yaque {:.2} (push_batch {:.2})",
        t[2].as_secs_f64() / t[1].as_secs_f64(),
        t[2].as_secs_f64() / t[4].as_secs_f64()
    );

    println!(
        "== batch64_sync: {nb} records in batches of {BATCH}, each durable before the next; median of {reps}"
    );
    let mut runs: Vec<Vec<Batches>> = (0..8).map(|_| Vec::new()).collect();
    for _ in 0..reps {
        settle();
        runs[0].push(raw_batches(records(nb)));
        settle();
        runs[1].push(walsink_batches(rt, records(nb), false));
        settle();
        runs[2].push(okaywal_batches(records(nb)));
        settle();
        runs[3].push(raft_engine_batches(records(nb)));
        settle();
        runs[4].push(raw_batches_zeroed(records(nb)));
        settle();
        runs[5].push(raw_batches_zeroed_handoff(rt, records(nb), false));
        settle();
        runs[6].push(walsink_batches(rt, records(nb), true));
        settle();
        runs[7].push(raw_batches_zeroed_handoff(rt, records(nb), true));
    }
    let med: Vec<(Duration, Duration)> = runs
        .into_iter()
        .map(|r| {
            let total = median(r.iter().map(|b| b.total).collect());
            let p50 = median(r.iter().map(|b| b.p50()).collect());
            (total, p50)
        })
        .collect();
    let names = [
        "raw write_all+fdatasync per batch",
        "walsink 64 try_push + sync",
        "okaywal one entry per batch, commit",
        "raft-engine one LogBatch, write(sync)",
        "floor: raw pwrite+fdatasync, zero-filled file",
        "floor: the same behind an async hand-off",
        "walsink try_push_batch(64) + sync",
        "floor: the hand-off, and a consumer reading back",
    ];
    for (name, (total, p50)) in names.iter().zip(&med) {
        line(name, nb, *total, med[0].0);
        println!("  {:<44} p50 {:.3} ms/batch", "", p50.as_secs_f64() * 1e3);
    }
    for (name, w) in [("try_push", 1), ("try_push_batch", 6)] {
        println!(
            "  {name}: walsink/okaywal {:.2}, walsink/raft-engine {:.2}, walsink/floor-with-hand-off {:.2}, walsink/floor-with-hand-off-and-consumer {:.2}",
            med[2].0.as_secs_f64() / med[w].0.as_secs_f64(),
            med[3].0.as_secs_f64() / med[w].0.as_secs_f64(),
            med[5].0.as_secs_f64() / med[w].0.as_secs_f64(),
            med[7].0.as_secs_f64() / med[w].0.as_secs_f64()
        );
    }

    println!(
        "== e2e_interval: {n} records, one producer and one consumer, fsync every 100 ms; median of {reps}"
    );
    let every = Duration::from_millis(100);
    let t = alternate(
        reps,
        &mut [
            &mut || raw_loop(records(n), Some(every)),
            &mut || walsink_push_all(rt, records(n), walsink::Durability::Interval(every), None),
            &mut || yaque_push_all(rt, records(n)),
            &mut || mpsc_push_all(rt, records(n)),
            &mut || raw_pipeline(records(n), Some(every)),
            &mut || {
                walsink_push_all(
                    rt,
                    records(n),
                    walsink::Durability::Interval(every),
                    Some(1024),
                )
            },
        ],
    );
    line("raw frame+CRC+write_all, fdatasync/100 ms", n, t[0], t[0]);
    line("walsink Interval(100 ms), push each, flush", n, t[1], t[0]);
    line(
        "yaque send_batch/recv_batch_up_to (no fsync)",
        n,
        t[2],
        t[0],
    );
    line("tokio mpsc in memory (yardstick)", n, t[3], t[0]);
    line("floor: raw pipeline, fdatasync/100 ms", n, t[4], t[0]);
    line("walsink Interval(100 ms), push_batch(1024)", n, t[5], t[0]);
    for (name, w) in [("push", 1), ("push_batch", 5)] {
        println!(
            "  {name}: walsink/yaque {:.2}, walsink/floor {:.2}",
            t[2].as_secs_f64() / t[w].as_secs_f64(),
            t[4].as_secs_f64() / t[w].as_secs_f64()
        );
    }
}
