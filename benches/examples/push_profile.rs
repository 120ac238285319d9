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

/// On a thread named `name` (so `perf report --comm pusher` shows the push path
/// alone), builds the messages with `build` (as a service builds records on the thread
/// that pushes them), then times `work` over them and prints its cost.
fn timed<M: Send + 'static>(
    name: &str,
    n: usize,
    verb: &str,
    what: &str,
    build: impl FnOnce() -> Vec<M> + Send + 'static,
    work: impl FnOnce(Vec<M>) + Send + 'static,
) {
    let comm = std::ffi::CString::new(name).expect("thread name");
    let (wall, cpu) = std::thread::Builder::new()
        .name("builder".into())
        .spawn(move || {
            let msgs = build();
            // Renamed once the messages are built, so `--comm` selects the timed loop.
            // SAFETY: PR_SET_NAME reads a NUL-terminated string through a valid pointer.
            unsafe { libc::prctl(libc::PR_SET_NAME, comm.as_ptr()) };
            let (start, cpu) = (Instant::now(), thread_cpu_ns());
            work(msgs);
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
        let s = sink.clone();
        let build = move || (0..n).map(|_| vec![7u8; 100]).collect();
        timed("pusher", n, "push", "Vec<u8>", build, move |msgs| {
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
        let s = sink.clone();
        let build = move || (0..n as u64).map(event).collect();
        timed("pusher", n, "push", "event", build, move |msgs| {
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
        let build = move || (0..n as u64).map(event).collect();
        timed(
            "baseline",
            n,
            "send",
            "mpsc baseline, event",
            build,
            move |msgs| {
                for m in msgs {
                    tx.try_send(m).expect("room");
                }
            },
        );
        rt.block_on(sink.sync())?;
        shutdown.cancel();
        rt.block_on(handle.join())?;
    }
    Ok(())
}
