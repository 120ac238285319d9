//! A profiling target: one producer `try_push`es pre-built events into a sink
//! (Durability::Never, noop drain), in rounds, for `perf record`/callgrind.
//! `cargo run --release --example push_profile [EVENTS] [bytes]`

#[path = "../benches/support.rs"]
mod support;

use std::time::Instant;

use support::{Noop, event};
use tokio_util::sync::CancellationToken;
use walsink::{Durability, DurableSink, SinkConfig};

fn thread_cpu_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes one timespec through a valid pointer.
    unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let n: usize = std::env::args()
        .nth(1)
        .map(|s| s.parse())
        .transpose()?
        .unwrap_or(2_000_000);
    let bytes = std::env::args().nth(2).as_deref() == Some("bytes");
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let dir = tempfile::tempdir()?;
    let mut cfg = SinkConfig::new(dir.path());
    cfg.queue_capacity = 1 << 22;
    cfg.durability = Durability::Never;
    cfg.max_disk_bytes = 64 << 30;
    cfg.batch_size = 4096;
    let shutdown = CancellationToken::new();
    if bytes {
        let (sink, handle) =
            rt.block_on(DurableSink::<Vec<u8>>::open(cfg, Noop, shutdown.clone()))?;
        let msgs: Vec<Vec<u8>> = (0..n).map(|_| vec![7u8; 100]).collect();
        let (start, cpu) = (Instant::now(), thread_cpu_ns());
        for m in msgs {
            sink.try_push(m)?;
        }
        println!(
            "{:.1} ns/push wall, {:.1} ns/push producer CPU (Vec<u8>)",
            start.elapsed().as_nanos() as f64 / n as f64,
            (thread_cpu_ns() - cpu) as f64 / n as f64
        );
        rt.block_on(sink.sync())?;
        shutdown.cancel();
        rt.block_on(handle.join())?;
    } else {
        let (sink, handle) = rt.block_on(DurableSink::<support::Event>::open(
            cfg,
            Noop,
            shutdown.clone(),
        ))?;
        let msgs: Vec<_> = (0..n as u64).map(event).collect();
        let (start, cpu) = (Instant::now(), thread_cpu_ns());
        for m in msgs {
            sink.try_push(m)?;
        }
        println!(
            "{:.1} ns/push wall, {:.1} ns/push producer CPU (event)",
            start.elapsed().as_nanos() as f64 / n as f64,
            (thread_cpu_ns() - cpu) as f64 / n as f64
        );
        // Baseline: the same messages through a bounded mpsc with a draining task.
        let (tx, mut rx) = tokio::sync::mpsc::channel::<support::Event>(1 << 22);
        rt.spawn(async move {
            let mut buf = Vec::with_capacity(4096);
            while rx.recv_many(&mut buf, 4096).await > 0 {
                buf.clear();
            }
        });
        let msgs: Vec<_> = (0..n as u64).map(event).collect();
        let (start, cpu) = (Instant::now(), thread_cpu_ns());
        for m in msgs {
            tx.try_send(m)?;
        }
        println!(
            "{:.1} ns/send wall, {:.1} ns/send producer CPU (mpsc baseline, event)",
            start.elapsed().as_nanos() as f64 / n as f64,
            (thread_cpu_ns() - cpu) as f64 / n as f64
        );
        rt.block_on(sink.sync())?;
        shutdown.cancel();
        rt.block_on(handle.join())?;
    }
    Ok(())
}
