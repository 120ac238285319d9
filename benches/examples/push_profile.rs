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

/// Runs `work` (the timed loop over pre-built messages) on a thread named `name`, so
/// `perf report --comm pusher` shows the push path alone, and prints its cost.
fn timed(name: &str, n: usize, verb: &str, what: &str, work: impl FnOnce() + Send + 'static) {
    let (wall, cpu) = std::thread::Builder::new()
        .name(name.into())
        .spawn(move || {
            let (start, cpu) = (Instant::now(), thread_cpu_ns());
            work();
            (
                start.elapsed().as_nanos() as f64,
                (thread_cpu_ns() - cpu) as f64,
            )
        })
        .expect("spawn")
        .join()
        .expect("join");
    println!(
        "{:.1} ns/{verb} wall, {:.1} ns/{verb} producer CPU ({what})",
        wall / n as f64,
        cpu / n as f64
    );
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
        let s = sink.clone();
        timed("pusher", n, "push", "Vec<u8>", move || {
            for m in msgs {
                s.try_push(m).expect("room");
            }
        });
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
        let s = sink.clone();
        timed("pusher", n, "push", "event", move || {
            for m in msgs {
                s.try_push(m).expect("room");
            }
        });
        // Baseline: the same messages through a bounded mpsc with a draining task.
        let (tx, mut rx) = tokio::sync::mpsc::channel::<support::Event>(1 << 22);
        rt.spawn(async move {
            let mut buf = Vec::with_capacity(4096);
            while rx.recv_many(&mut buf, 4096).await > 0 {
                buf.clear();
            }
        });
        let msgs: Vec<_> = (0..n as u64).map(event).collect();
        timed("baseline", n, "send", "mpsc baseline, event", move || {
            for m in msgs {
                tx.try_send(m).expect("room");
            }
        });
        rt.block_on(sink.sync())?;
        shutdown.cancel();
        rt.block_on(handle.join())?;
    }
    Ok(())
}
