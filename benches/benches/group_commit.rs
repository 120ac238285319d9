//! Group commit, `Durability::Always`: 1, 8 and 64 concurrent `push_durable` callers,
//! 100-byte records, against a raw loop that appends the same number of framed records
//! in one write and calls fdatasync on a file whose space was reserved ahead with
//! fallocate. Reports records/s and per-call latency p50/p99 for both. Target
//! (docs/PERFORMANCE.md): walsink at least 70 % of the raw loop's records/s.

mod support;

use std::os::fd::AsRawFd;
use std::os::unix::fs::FileExt;
use std::time::{Duration, Instant};

use support::{raw_frame, rt, walsink_durable};

/// Size of the zero-filled file of the `RawFile::Zeroed` loop.
const ZEROED_BYTES: u64 = 256 << 20;

fn measure() -> Duration {
    if std::env::args().any(|a| a == "--test") {
        Duration::from_millis(200)
    } else {
        Duration::from_secs(4)
    }
}

fn pct(v: &mut [Duration], p: f64) -> Duration {
    v.sort();
    v.get(((v.len().saturating_sub(1)) as f64 * p) as usize)
        .copied()
        .unwrap_or_default()
}

/// How the raw loop's file was prepared.
#[derive(Clone, Copy, PartialEq, Eq)]
enum RawFile {
    /// Empty: each fdatasync also commits the file's new size.
    Growing,
    /// Space reserved with fallocate: unwritten extents, which ext4 converts (a
    /// journal commit) at the fdatasync after they are first written.
    Preallocated,
    /// Written with zeros and synced beforehand: an fdatasync only flushes data (what a
    /// recycled segment file gives, as okaywal does).
    Zeroed,
}

/// Creates `name` in `dir` laid out as `file` says, synced, for the raw loops.
fn raw_file(dir: &std::path::Path, name: &str, file: RawFile) -> std::fs::File {
    let f = std::fs::OpenOptions::new()
        .create(true)
        .truncate(true)
        .read(true)
        .write(true)
        .open(dir.join(name))
        .expect("open");
    match file {
        RawFile::Growing => {}
        RawFile::Preallocated => {
            let reserve: i64 = 1 << 30;
            // SAFETY: fallocate on a valid, open file descriptor with in-range arguments.
            let rc = unsafe { libc::fallocate(f.as_raw_fd(), 0, 0, reserve) };
            assert_eq!(rc, 0, "fallocate failed");
        }
        RawFile::Zeroed => {
            // Enough for the run: ~200 k rounds of up to 64 records would not fit, so
            // the loop wraps around (offsets modulo the zeroed size).
            let zeros = vec![0u8; 1 << 20];
            for i in 0..ZEROED_BYTES >> 20 {
                f.write_all_at(&zeros, i << 20).expect("zero fill");
            }
        }
    }
    f.sync_all().expect("sync");
    f
}

/// Raw: rounds of `callers` framed records in one pwrite + fdatasync.
fn raw(dir: &std::path::Path, callers: usize, file: RawFile) -> (f64, Duration, Duration) {
    let f = raw_file(dir, "raw.wal", file);
    let payload = [7u8; 100];
    let mut buf = Vec::new();
    let (mut seq, mut offset, mut records) = (1u64, 0u64, 0u64);
    let mut lat = Vec::new();
    let start = Instant::now();
    while start.elapsed() < measure() {
        let t = Instant::now();
        buf.clear();
        for _ in 0..callers {
            raw_frame(&mut buf, seq, &payload);
            seq += 1;
        }
        if file == RawFile::Zeroed && offset + buf.len() as u64 > ZEROED_BYTES {
            offset = 0;
        }
        f.write_all_at(&buf, offset).expect("write");
        f.sync_data().expect("fdatasync");
        offset += buf.len() as u64;
        records += callers as u64;
        lat.push(t.elapsed());
    }
    let rate = records as f64 / start.elapsed().as_secs_f64();
    (rate, pct(&mut lat, 0.5), pct(&mut lat, 0.99))
}

/// The floor of any async API over a dedicated I/O thread: async callers hand framed
/// records to a thread (std channel) that appends everything queued in one pwrite,
/// fdatasyncs the preallocated file and answers each caller through a oneshot. No
/// encoding, budget, seqs, delivery or recovery: only the two cross-thread wake-ups
/// per commit that a blocking API (okaywal, raft-engine) does not pay.
fn raw_handoff(
    rt: &tokio::runtime::Runtime,
    dir: &std::path::Path,
    callers: usize,
) -> (f64, Duration, Duration) {
    type Req = (Vec<u8>, tokio::sync::oneshot::Sender<()>);
    let f = raw_file(dir, "handoff.wal", RawFile::Preallocated);
    let (tx, rx) = std::sync::mpsc::channel::<Req>();
    let io = std::thread::spawn(move || {
        let (mut buf, mut replies, mut offset, mut seq) = (Vec::new(), Vec::new(), 0u64, 1u64);
        while let Ok(first) = rx.recv() {
            buf.clear();
            for (payload, reply) in std::iter::once(first).chain(rx.try_iter()) {
                raw_frame(&mut buf, seq, &payload);
                seq += 1;
                replies.push(reply);
            }
            f.write_all_at(&buf, offset).expect("write");
            f.sync_data().expect("fdatasync");
            offset += buf.len() as u64;
            for r in replies.drain(..) {
                let _ = r.send(());
            }
        }
    });
    let start = Instant::now();
    let mut lat = rt.block_on(async {
        let tasks: Vec<_> = (0..callers)
            .map(|_| {
                let tx = tx.clone();
                tokio::spawn(async move {
                    let mut lat = Vec::new();
                    while start.elapsed() < measure() {
                        let t = Instant::now();
                        let (reply, done) = tokio::sync::oneshot::channel();
                        tx.send((vec![7u8; 100], reply)).expect("send");
                        done.await.expect("answer");
                        lat.push(t.elapsed());
                    }
                    lat
                })
            })
            .collect();
        let mut all = Vec::new();
        for t in tasks {
            all.extend(t.await.expect("task"));
        }
        all
    });
    let rate = lat.len() as f64 / start.elapsed().as_secs_f64();
    drop(tx);
    io.join().expect("io thread");
    (rate, pct(&mut lat, 0.5), pct(&mut lat, 0.99))
}

fn walsink(
    rt: &tokio::runtime::Runtime,
    dir: &std::path::Path,
    callers: usize,
) -> (f64, Duration, Duration) {
    let (rate, mut lat) =
        walsink_durable(rt, &dir.join(format!("wal-{callers}")), callers, measure());
    (rate, pct(&mut lat, 0.5), pct(&mut lat, 0.99))
}

fn main() {
    let smoke = std::env::args().any(|a| a == "--test");
    let rt = rt();
    let tmp = tempfile::tempdir().expect("tempdir");
    println!(
        "== group commit, Durability::Always, 100 B records, {:?} per run",
        measure()
    );
    let callers_list: &[usize] = if smoke { &[1] } else { &[1, 8, 64] };
    for &callers in callers_list {
        let (rr, rp50, rp99) = raw(tmp.path(), callers, RawFile::Preallocated);
        let (gr, gp50, gp99) = raw(tmp.path(), callers, RawFile::Growing);
        let (zr, zp50, zp99) = raw(tmp.path(), callers, RawFile::Zeroed);
        let (hr, hp50, hp99) = raw_handoff(&rt, tmp.path(), callers);
        let (wr, wp50, wp99) = walsink(&rt, tmp.path(), callers);
        println!(
            "callers {callers:>2}: raw behind an async hand-off (preallocated) {hr:>7.0} rec/s (p50 {hp50:>8.1?}, p99 {hp99:>8.1?}) | walsink/hand-off {:.2}",
            wr / hr
        );
        println!(
            "callers {callers:>2}: walsink {wr:>7.0} rec/s (p50 {wp50:>8.1?}, p99 {wp99:>8.1?}) | raw, preallocated {rr:>7.0} rec/s (p50 {rp50:>8.1?}, p99 {rp99:>8.1?}) | raw, growing file {gr:>7.0} rec/s (p50 {gp50:>8.1?}, p99 {gp99:>8.1?}) | raw, zero-filled {zr:>7.0} rec/s (p50 {zp50:>8.1?}, p99 {zp99:>8.1?}) | walsink/prealloc {:.2}, walsink/growing {:.2}, walsink/zeroed {:.2}",
            wr / rr,
            wr / gr,
            wr / zr
        );
    }
}
