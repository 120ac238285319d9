use super::*;
use crate::testing::sim::SimDisk;
use std::path::Path;

/// A preallocated file of `len` bytes on the simulated disk.
fn file(disk: &Arc<SimDisk>, path: &Path, len: u64) -> Box<dyn StorageFile> {
    let s = disk.storage();
    if let Some(dir) = path.parent() {
        let _ = s.create_dir(dir);
    }
    let f = s.create_new(path).expect("create");
    f.allocate(len).expect("allocate");
    f
}

fn read(f: &dyn StorageFile, at: u64, n: usize) -> Vec<u8> {
    let mut buf = vec![0u8; n];
    let got = f.read_at(&mut buf, at).expect("read");
    buf.truncate(got);
    buf
}

#[test]
fn zeros_go_only_above_the_floor_and_never_past_the_file() {
    let disk = SimDisk::new(1);
    let path = Path::new("/d/seg");
    let len = 3 * WINDOW + 100;
    let f = file(&disk, path, len);
    // What the writer wrote before the job: below the floor, never touched.
    f.write_all_at(&[7u8; 64], 0).expect("write");
    let p = Prefill::spawn().expect("thread");
    p.start(disk.storage().as_ref(), path.to_path_buf(), 64);
    let floor = 4096 + LEAD;
    // The writer follows the zeros (writing nothing) until they reach the end.
    loop {
        p.wait_parked();
        let z = floor + p.zeroed_bytes();
        if z >= len {
            break;
        }
        p.before_write(z);
        p.wait_zeroed_bytes(z - floor + 1);
    }
    assert_eq!(f.len().expect("len"), len, "the file was never extended");
    assert_eq!(read(f.as_ref(), 0, 64), vec![7u8; 64]);
    assert_eq!(p.zeroed_bytes(), len - floor);
}

#[test]
fn the_writer_overtaking_the_zeros_takes_the_job_over_and_keeps_its_bytes() {
    for seed in 0..20u64 {
        let disk = SimDisk::new(1);
        let path = Path::new("/d/seg");
        let len = LEAD + 8 * CHUNK;
        let f = file(&disk, path, len);
        let p = Prefill::spawn().expect("thread");
        p.start(disk.storage().as_ref(), path.to_path_buf(), 0);
        // The writer appends 64 KiB pieces as fast as it can, racing the thread.
        let piece = vec![0xA5u8; 64 << 10];
        let mut at = 0u64;
        let mut n = 0u64;
        while at + piece.len() as u64 <= len {
            p.before_write(at + piece.len() as u64);
            f.write_all_at(&piece, at).expect("write");
            at += piece.len() as u64;
            n += 1;
            if n.is_multiple_of(seed + 1) {
                std::thread::yield_now();
            }
        }
        p.wait_zeroed(len);
        drop(p); // joins the thread: nothing more can be written
        let all = read(f.as_ref(), 0, at as usize);
        let bad = all.iter().position(|&b| b != 0xA5);
        assert_eq!(bad, None, "seed {seed}: a byte the writer wrote was zeroed");
    }
}

#[test]
fn after_take_over_nothing_more_is_written() {
    let disk = SimDisk::new(1);
    let path = Path::new("/d/seg");
    let len = LEAD + 64 * CHUNK;
    let f = file(&disk, path, len);
    let p = Prefill::spawn().expect("thread");
    p.start(disk.storage().as_ref(), path.to_path_buf(), 0);
    p.wait_zeroed_bytes(1);
    p.take_over();
    let zeroed = p.zeroed_bytes();
    // The writer cuts the file (sealing a segment)...
    f.set_len(100).expect("set_len");
    // ...and moves far on: a job still running would now zero (and extend the file)
    // up to its old end, and only then end.
    p.inner.position.store(u64::MAX / 2, Ordering::SeqCst);
    drop(lock(&p.inner.state));
    p.inner.changed.notify_all();
    p.wait_parked();
    assert_eq!(p.zeroed_bytes(), zeroed, "zeros written after take_over");
    drop(p);
    assert_eq!(
        f.len().expect("len"),
        100,
        "the file was extended after take_over"
    );
}

#[test]
fn a_failed_fsync_of_the_thread_fails_the_writers_next_check() {
    let disk = SimDisk::new(1);
    let path = Path::new("/d/seg");
    let len = LEAD + 4 * CHUNK;
    let _f = file(&disk, path, len);
    let p = Prefill::spawn().expect("thread");
    assert!(p.check_syncs().is_ok());
    disk.fail_sync_after(Some(1));
    p.start(disk.storage().as_ref(), path.to_path_buf(), 0);
    p.wait_zeroed(len);
    let err = p.check_syncs().expect_err("the thread's fsync failed");
    assert!(err.to_string().contains("zero-filled"), "{err}");
    // Sticky.
    assert!(p.check_syncs().is_err());
}

#[test]
fn the_thread_stays_within_its_window_of_the_writer() {
    let disk = SimDisk::new(1);
    let path = Path::new("/d/seg");
    let len = 8 * WINDOW;
    let f = file(&disk, path, len);
    let p = Prefill::spawn().expect("thread");
    p.start(disk.storage().as_ref(), path.to_path_buf(), 0);
    p.wait_parked();
    let first = p.zeroed_bytes();
    assert!(first > 0 && first <= WINDOW + CHUNK, "{first}");
    // The writer moves on (inside what is zeroed): the thread follows.
    // floor = LEAD (the writer was at 0); zeros from there.
    let end = LEAD + first;
    p.before_write(end);
    f.write_all_at(&[1u8; 8], end - 8).expect("write");
    p.wait_zeroed_bytes(first + 1);
    p.wait_parked();
    let second = p.zeroed_bytes();
    assert!(second > first, "{first} -> {second}");
    assert!(LEAD + second <= end + WINDOW + CHUNK, "{second}");
    drop(p);
    assert_eq!(read(f.as_ref(), end - 8, 8), vec![1u8; 8]);
}

#[test]
fn sizes_scale_down_for_small_segments_and_cap_for_large_ones() {
    let big = Sizes::for_segment(64 << 20);
    assert_eq!(
        big,
        Sizes {
            chunk: CHUNK,
            lead: LEAD,
            window: WINDOW
        }
    );
    let small = Sizes::for_segment(4096);
    assert_eq!((small.chunk, small.lead, small.window), (512, 512, 2048));
    // A 4 KiB segment whose writer is at its header still gets zeros ahead.
    let disk = SimDisk::new(1);
    let path = Path::new("/d/seg");
    let f = file(&disk, path, 4096);
    f.write_all_at(&[9u8; 32], 0).expect("header");
    let p = Prefill::spawn().expect("thread");
    p.start(disk.storage().as_ref(), path.to_path_buf(), 32);
    p.wait_parked();
    // floor = 512 + 512; chunks start while below 32 + 2048: at 1024, 1536, 2048.
    assert_eq!(p.zeroed_bytes(), 1536);
    drop(p);
    assert_eq!(read(f.as_ref(), 0, 32), vec![9u8; 32]);
}

#[test]
fn a_panic_in_the_thread_fails_the_writers_next_check() {
    let disk = SimDisk::new(1);
    let path = Path::new("/d/seg");
    let _f = file(&disk, path, 64 << 10);
    let p = Prefill::spawn().expect("thread");
    disk.panic_on_write("walsink-prefill");
    p.start(disk.storage().as_ref(), path.to_path_buf(), 0);
    p.wait_parked();
    let err = p.check_syncs().expect_err("the thread died");
    assert!(err.to_string().contains("panicked"), "{err}");
    // The writer is free: nothing can write into the file any more.
    p.before_write(64 << 10);
}
