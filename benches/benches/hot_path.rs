//! Hot path: `try_push` against a bounded `tokio::mpsc` `try_send` of the same message
//! (the in-memory design's cost), 1 and 4 producers, for a ~100-byte event and for a
//! 100-byte `Vec<u8>` with the default (bincode) codec. Both queues are drained
//! concurrently and sized so that nothing overflows. Time per message, median of the
//! samples; the report prints walsink / baseline. Target (docs/PERFORMANCE.md): within 2x.

mod support;

use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

use criterion::{BenchmarkId, Criterion};
use support::{Event, Noop, event, report};
use tokio_util::sync::CancellationToken;
use walsink::{BincodeCodec, Codec, Durability, DurableSink, SinkConfig};

const QUEUE: usize = 1 << 22;

thread_local! {
    static SCRATCH: std::cell::RefCell<Vec<u8>> = const { std::cell::RefCell::new(Vec::new()) };
}

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime")
}

fn sink_config(dir: &std::path::Path) -> SinkConfig {
    let mut c = SinkConfig::new(dir);
    c.queue_capacity = QUEUE;
    c.durability = Durability::Never;
    c.max_disk_bytes = 64 << 30;
    c.batch_size = 4096;
    c
}

/// Times `producers` threads pushing `iters` pre-built messages in total. Each thread
/// builds its own messages before the clock starts, as a service builds a record on
/// the thread that pushes it: a design that drops the record on the caller (walsink
/// encodes it there) then frees memory of its own thread. Messages built on another
/// thread made every such free a remote free, a quarter of `try_push`'s profile,
/// which no service pays.
fn timed<M: Send + 'static>(
    iters: u64,
    producers: usize,
    make: fn(u64) -> M,
    push: Arc<dyn Fn(M) + Send + Sync>,
) -> Duration {
    let per = (iters as usize).div_ceil(producers);
    let barrier = Arc::new(Barrier::new(producers + 1));
    let mut handles = Vec::new();
    for p in 0..producers {
        let (barrier, push) = (Arc::clone(&barrier), Arc::clone(&push));
        handles.push(std::thread::spawn(move || {
            let msgs: Vec<M> = (0..per).map(|i| make((p * per + i) as u64)).collect();
            barrier.wait();
            let start = Instant::now();
            for m in msgs {
                push(m);
            }
            start.elapsed()
        }));
    }
    barrier.wait();
    handles
        .into_iter()
        .map(|h| h.join().expect("producer"))
        .max()
        .unwrap_or_default()
}

fn bench_message<M>(c: &mut Criterion, group: &str, make: fn(u64) -> M)
where
    M: Clone + Send + serde::Serialize + serde::de::DeserializeOwned + 'static,
{
    let rt = rt();
    let mut g = c.benchmark_group(group);
    g.measurement_time(Duration::from_secs(4))
        .warm_up_time(Duration::from_secs(1));
    for producers in [1usize, 4] {
        // Baseline: bounded mpsc, drained by a task.
        let (tx, mut rx) = tokio::sync::mpsc::channel::<M>(QUEUE);
        rt.spawn(async move {
            let mut buf = Vec::with_capacity(4096);
            while rx.recv_many(&mut buf, 4096).await > 0 {
                buf.clear();
            }
        });
        let push: Arc<dyn Fn(M) + Send + Sync> =
            Arc::new(move |m| tx.try_send(m).expect("mpsc has room"));
        g.bench_function(BenchmarkId::new("mpsc_try_send", producers), |b| {
            b.iter_custom(|iters| timed(iters, producers, make, Arc::clone(&push)))
        });

        // What any design that encodes on the caller (as the contract asks, so encode
        // errors reach it) pays before queueing anything: encode with the default
        // codec into a reused buffer, then drop the record. No queue.
        let push: Arc<dyn Fn(M) + Send + Sync> = Arc::new(|m: M| {
            SCRATCH.with(|b| {
                let mut b = b.borrow_mut();
                b.clear();
                BincodeCodec.encode(&m, &mut b).expect("encode");
                std::hint::black_box(&*b);
            });
            drop(m);
        });
        g.bench_function(BenchmarkId::new("encode_and_drop", producers), |b| {
            b.iter_custom(|iters| timed(iters, producers, make, Arc::clone(&push)))
        });

        // walsink, Durability::Never, noop drain.
        let dir = tempfile::tempdir().expect("tempdir");
        let shutdown = CancellationToken::new();
        let (sink, handle) = rt
            .block_on(DurableSink::<M>::open(
                sink_config(dir.path()),
                Noop,
                shutdown.clone(),
            ))
            .expect("open");
        let s = sink.clone();
        let push: Arc<dyn Fn(M) + Send + Sync> =
            Arc::new(move |m| s.try_push(m).expect("sink has room"));
        g.bench_function(BenchmarkId::new("walsink_try_push", producers), |b| {
            b.iter_custom(|iters| {
                let d = timed(iters, producers, make, Arc::clone(&push));
                // Let the writer catch up (not timed), so the next sample starts idle.
                rt.block_on(sink.sync()).expect("sync");
                d
            })
        });
        drop(sink);
        drop(push);
        shutdown.cancel();
        rt.block_on(handle.join()).expect("join");
    }
    g.finish();
}

/// try_push minus what encoding on the caller costs alone, against mpsc try_send:
/// the queueing part of walsink's hot path against the in-memory queue's.
fn report_floor(rows: &[(&str, &str)]) {
    println!("\n== hot path beyond encoding: (try_push - encode_and_drop) / mpsc try_send");
    for (group, producers) in rows {
        let get = |name: &str| support::median_ns(group, &format!("{name}/{producers}"));
        match (
            get("walsink_try_push"),
            get("encode_and_drop"),
            get("mpsc_try_send"),
        ) {
            (Some(w), Some(e), Some(m)) => println!(
                "{group}/{producers}: ({w:.1} - {e:.1}) ns vs {m:.1} ns = {:.2}x",
                (w - e) / m
            ),
            _ => println!("{group}/{producers}: no estimates (run without --test)"),
        }
    }
}

fn main() {
    let mut c = Criterion::default().configure_from_args();
    bench_message::<Event>(&mut c, "try_push_event", event);
    bench_message::<Vec<u8>>(&mut c, "try_push_bytes100", |i| {
        let mut v = vec![7u8; 100];
        v[..8].copy_from_slice(&i.to_le_bytes());
        v
    });
    c.final_summary();
    report(
        "hot path: the part of try_push that encoding on the caller costs by itself",
        &[
            ("try_push_event", "encode_and_drop/1", "walsink_try_push/1"),
            ("try_push_event", "encode_and_drop/4", "walsink_try_push/4"),
            (
                "try_push_bytes100",
                "encode_and_drop/1",
                "walsink_try_push/1",
            ),
            (
                "try_push_bytes100",
                "encode_and_drop/4",
                "walsink_try_push/4",
            ),
        ],
    );
    report_floor(&[
        ("try_push_event", "1"),
        ("try_push_event", "4"),
        ("try_push_bytes100", "1"),
        ("try_push_bytes100", "4"),
    ]);
    report(
        "hot path (target: within 2x of mpsc try_send)",
        &[
            ("try_push_event", "mpsc_try_send/1", "walsink_try_push/1"),
            ("try_push_event", "mpsc_try_send/4", "walsink_try_push/4"),
            ("try_push_bytes100", "mpsc_try_send/1", "walsink_try_push/1"),
            ("try_push_bytes100", "mpsc_try_send/4", "walsink_try_push/4"),
        ],
    );
}
