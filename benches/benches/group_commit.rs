//! Group commit, `Durability::Always`: 1, 8 and 64 concurrent `push_durable` callers,
//! 100-byte records, against a raw loop that appends the same number of framed records
//! in one write and calls fdatasync on a file whose space was reserved ahead with
//! fallocate. Reports records/s and per-call latency p50/p99 for both. DESIGN §7
//! target: walsink at least 70 % of the raw loop's records/s.

mod support;

use std::os::fd::AsRawFd;
use std::os::unix::fs::FileExt;
use std::time::{Duration, Instant};

use support::{raw_frame, rt, walsink_durable};

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

/// Raw: rounds of `callers` framed records in one pwrite + fdatasync, on a file whose
/// space was reserved with fallocate (`prealloc`) or on a growing file.
fn raw(dir: &std::path::Path, callers: usize, prealloc: bool) -> (f64, Duration, Duration) {
    let f = std::fs::OpenOptions::new()
        .create(true)
        .truncate(true)
        .read(true)
        .write(true)
        .open(dir.join("raw.wal"))
        .expect("open");
    if prealloc {
        let reserve: i64 = 1 << 30;
        // SAFETY: fallocate on a valid, open file descriptor with in-range arguments.
        let rc = unsafe { libc::fallocate(f.as_raw_fd(), 0, 0, reserve) };
        assert_eq!(rc, 0, "fallocate failed");
    }
    f.sync_all().expect("sync");
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
        f.write_all_at(&buf, offset).expect("write");
        f.sync_data().expect("fdatasync");
        offset += buf.len() as u64;
        records += callers as u64;
        lat.push(t.elapsed());
    }
    let rate = records as f64 / start.elapsed().as_secs_f64();
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
        let (rr, rp50, rp99) = raw(tmp.path(), callers, true);
        let (gr, gp50, gp99) = raw(tmp.path(), callers, false);
        let (wr, wp50, wp99) = walsink(&rt, tmp.path(), callers);
        println!(
            "callers {callers:>2}: walsink {wr:>7.0} rec/s (p50 {wp50:>8.1?}, p99 {wp99:>8.1?}) | raw, preallocated {rr:>7.0} rec/s (p50 {rp50:>8.1?}, p99 {rp99:>8.1?}) | raw, growing file {gr:>7.0} rec/s (p50 {gp50:>8.1?}, p99 {gp99:>8.1?}) | walsink/prealloc {:.2}, walsink/growing {:.2}",
            wr / rr,
            wr / gr
        );
    }
}
