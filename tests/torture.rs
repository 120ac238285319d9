//! Crash torture: many kills of a busy sink, on one WAL directory that accumulates
//! every run's state.
//!
//! Each round starts a child (this test binary, `torture_child_entry`) on the shared
//! directory: three concurrent producers push `(round, producer, i)` ids and call
//! `sync()` every ten records, printing what was synced. A slow drain (about 1 ms a
//! batch) appends every acknowledged `(seq, id)` to a shared log file before it
//! acknowledges. Small segments make rollover, cursor writes and deletions happen
//! every few milliseconds. The parent kills the child either at a named crash point
//! (`WALSINK_CRASH_AT`, see `walsink::crashpoint::CRASH_POINTS`: inside rollover,
//! after a cursor write, between cursor sync and delete, after a delete, ...) or with
//! SIGKILL after a seeded delay, under a random durability mode.
//!
//! At the end the parent opens the directory, delivers what is left, and checks every
//! run's records:
//! - lost: an id reported synced that was never delivered (must be 0);
//! - holes: a missing id below a delivered one of the same producer and round (must
//!   be 0: a process crash loses only the tail still queued in memory);
//! - a seq that names two ids (must be 0);
//! - duplicates (allowed after crashes) and open (recovery) times are reported.
//!
//! `WALSINK_TORTURE_ROUNDS` (default 120, about a minute) and `WALSINK_SEED` size and
//! seed it: `WALSINK_TORTURE_ROUNDS=1000 cargo test --release --features crashpoints
//! --test torture -- --nocapture`.

mod common;

use common::{Rng, child_command, child_runtime, drain_log_lines, parse_drain_log};
use std::collections::{BTreeMap, HashMap};
use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;
use walsink::{Batch, DrainError, Durability, DurableSink, RetryPolicy, SinkConfig, SinkDrain};

const PRODUCERS: u64 = 3;

fn id(round: u64, producer: u64, i: u64) -> u64 {
    (round << 40) | (producer << 32) | i
}

fn split(id: u64) -> (u64, u64, u64) {
    (id >> 40, (id >> 32) & 0xFF, id & 0xFFFF_FFFF)
}

fn config(dir: &Path, durability: Durability) -> SinkConfig {
    let mut c = SinkConfig::new(dir);
    c.segment_bytes = 4096;
    c.max_disk_bytes = 64 << 20;
    c.max_record_bytes = 256;
    c.batch_size = 32;
    c.flush_interval = Duration::from_millis(1);
    c.durability = durability;
    c.retry = RetryPolicy {
        initial_delay: Duration::from_millis(1),
        max_delay: Duration::from_millis(10),
        multiplier: 2.0,
    };
    c.shutdown_timeout = Duration::from_secs(30);
    c
}

/// Appends checked `seq id` lines (`common::drain_log_lines`), one write per batch, then
/// acknowledges after ~1 ms.
struct SlowFileLog {
    file: std::fs::File,
}

impl SinkDrain<u64> for SlowFileLog {
    async fn write_batch(&mut self, batch: Batch<u64>) -> Result<(), DrainError> {
        let text = drain_log_lines(batch.iter());
        self.file
            .write_all(text.as_bytes())
            .map_err(DrainError::retryable)?;
        tokio::time::sleep(Duration::from_millis(1)).await;
        Ok(())
    }
}

#[test]
#[ignore = "the child process's entry point: run only by the parent test, with --ignored"]
fn torture_child_entry() -> Result<(), Box<dyn std::error::Error>> {
    let dir = std::env::var("WALSINK_TORTURE_DIR").map_err(
        |_| "WALSINK_TORTURE_DIR is not set: this entry point runs only as a child process",
    )?;
    let round: u64 = std::env::var("WALSINK_TORTURE_ROUND")?.parse()?;
    let durability = match std::env::var("WALSINK_TORTURE_DURABILITY").as_deref() {
        Ok("always") => Durability::Always,
        Ok("interval") => Durability::Interval(Duration::from_millis(2)),
        _ => Durability::Never,
    };
    let rt = child_runtime()?;
    rt.block_on(async move {
        let dir = Path::new(&dir);
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(dir.join("drained.log"))?;
        let started = Instant::now();
        let (sink, _handle) = DurableSink::<u64>::open(
            config(&dir.join("wal"), durability),
            SlowFileLog { file },
            CancellationToken::new(),
        )
        .await?;
        let out = Arc::new(Mutex::new(std::io::stdout()));
        {
            let mut o = out.lock().map_err(|e| e.to_string())?;
            writeln!(o, "opened {}", started.elapsed().as_micros())?;
            o.flush()?;
        }
        let mut tasks = Vec::new();
        for p in 0..PRODUCERS {
            let sink = sink.clone();
            let out = Arc::clone(&out);
            tasks.push(tokio::spawn(async move {
                let mut i = 0u64;
                loop {
                    sink.push(id(round, p, i))
                        .await
                        .map_err(|e| e.to_string())?;
                    if i % 10 == 9 {
                        sink.sync().await.map_err(|e| e.to_string())?;
                        let mut o = out.lock().map_err(|e| e.to_string())?;
                        writeln!(o, "synced {p} {i}").map_err(|e| e.to_string())?;
                        o.flush().map_err(|e| e.to_string())?;
                    }
                    i += 1;
                }
                #[allow(unreachable_code)]
                Ok::<(), String>(())
            }));
        }
        for t in tasks {
            t.await??;
        }
        Ok(())
    })
}

struct Collect(Arc<Mutex<Vec<(u64, u64)>>>);
impl SinkDrain<u64> for Collect {
    async fn write_batch(&mut self, batch: Batch<u64>) -> Result<(), DrainError> {
        self.0
            .lock()
            .map_err(|e| DrainError::retryable(e.to_string()))?
            .extend(batch.into_pairs());
        Ok(())
    }
}

fn env_u64(name: &str) -> Option<u64> {
    std::env::var(name).ok().and_then(|v| v.parse().ok())
}

#[test]
fn torture_many_kills_lose_nothing_synced() -> Result<(), Box<dyn std::error::Error>> {
    let seed = common::seed_or(0x7077);
    let rounds = env_u64("WALSINK_TORTURE_ROUNDS").unwrap_or(120);
    eprintln!(
        "torture: seed {seed}, {rounds} rounds (rerun: WALSINK_SEED={seed} cargo test --features crashpoints --test torture)"
    );
    let mut rng = Rng(seed);
    let tmp = tempfile::tempdir()?;
    let base = tmp.path();
    let points = walsink::crashpoint::CRASH_POINTS;

    let mut synced: HashMap<(u64, u64), u64> = HashMap::new();
    let mut open_us: Vec<u64> = Vec::new();
    let mut kills: BTreeMap<String, u64> = BTreeMap::new();
    for round in 0..rounds {
        let durability = ["never", "interval", "always"][(rng.next() % 3) as usize];
        let mut cmd = child_command("torture_child_entry")?;
        cmd.env("WALSINK_TORTURE_DIR", base)
            .env("WALSINK_TORTURE_ROUND", round.to_string())
            .env("WALSINK_TORTURE_DURABILITY", durability)
            .stdout(Stdio::piped())
            .stderr(Stdio::null());
        // Two rounds in three stop at a named crash point, the rest by SIGKILL.
        let point = if rng.next() % 3 < 2 {
            Some(points[(rng.next() % points.len() as u64) as usize])
        } else {
            None
        };
        if let Some(p) = point {
            cmd.env("WALSINK_CRASH_AT", format!("{p}:{}", 1 + rng.next() % 20));
        }
        let kill_after = Duration::from_millis(5 + rng.next() % 60);
        let mut child = cmd.spawn()?;
        let stdout = child.stdout.take().ok_or("no stdout")?;
        let reader = std::thread::spawn(move || {
            let mut lines = Vec::new();
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                lines.push(line);
            }
            lines
        });
        // A child stopped by a crash point exits by itself; otherwise (or if the point
        // is not reached in time) SIGKILL it.
        let deadline = Instant::now()
            + if point.is_some() {
                Duration::from_secs(3)
            } else {
                kill_after
            };
        let status = loop {
            if let Some(st) = child.try_wait()? {
                break Some(st);
            }
            if Instant::now() >= deadline {
                break None;
            }
            std::thread::sleep(Duration::from_millis(1));
        };
        let how = match (status, point) {
            (Some(_), Some(p)) => format!("abort at {p}"),
            (Some(st), None) => {
                return Err(
                    format!("round {round}: child exited by itself: {st} (seed {seed})").into(),
                );
            }
            (None, _) => {
                child.kill()?;
                child.wait()?;
                "SIGKILL".to_string()
            }
        };
        *kills.entry(how).or_default() += 1;
        let lines = reader.join().map_err(|_| "reader thread panicked")?;
        for line in lines {
            // libtest prints "test torture_child_entry ... " without a newline, so the
            // child's first line may follow it: parse from the keyword on.
            let Some(at) = line.find("opened ").or_else(|| line.find("synced ")) else {
                continue;
            };
            let mut it = line[at..].split(' ');
            match (it.next(), it.next(), it.next()) {
                (Some("opened"), Some(us), None) => open_us.push(us.parse()?),
                (Some("synced"), Some(p), Some(i)) => {
                    let e = synced.entry((round, p.parse()?)).or_default();
                    *e = (*e).max(i.parse()?);
                }
                _ => {}
            }
        }
    }

    // Final: deliver what is left.
    let got = Arc::new(Mutex::new(Vec::new()));
    let rt = child_runtime()?;
    rt.block_on(async {
        let shutdown = CancellationToken::new();
        let started = Instant::now();
        let (sink, handle) = DurableSink::<u64>::open(
            config(&base.join("wal"), Durability::Never),
            Collect(Arc::clone(&got)),
            shutdown.clone(),
        )
        .await?;
        open_us.push(started.elapsed().as_micros() as u64);
        sink.flush().await?;
        shutdown.cancel();
        handle.join().await?;
        Ok::<_, Box<dyn std::error::Error>>(())
    })?;

    let text = std::fs::read_to_string(base.join("drained.log")).unwrap_or_default();
    let mut all: Vec<(u64, u64)> = parse_drain_log(&text);
    all.extend(got.lock().map_err(|e| e.to_string())?.iter().copied());

    let mut id_of_seq: HashMap<u64, u64> = HashMap::new();
    let mut seen: HashMap<u64, u64> = HashMap::new();
    let mut bad_seq = 0u64;
    for &(seq, v) in &all {
        if let Some(&old) = id_of_seq.get(&seq)
            && old != v
        {
            bad_seq += 1;
        }
        id_of_seq.insert(seq, v);
        *seen.entry(v).or_default() += 1;
    }
    let duplicates: u64 = seen.values().map(|&n| n - 1).sum();
    let mut max_of: HashMap<(u64, u64), u64> = HashMap::new();
    for &v in seen.keys() {
        let (r, p, i) = split(v);
        assert!(
            r < rounds && p < PRODUCERS,
            "unknown id {v:#x} delivered (seed {seed})"
        );
        let e = max_of.entry((r, p)).or_default();
        *e = (*e).max(i);
    }
    let mut lost = 0u64;
    let mut holes = 0u64;
    for (&(r, p), &max) in &max_of {
        for i in 0..=max {
            if !seen.contains_key(&id(r, p, i)) {
                holes += 1;
            }
        }
        let _ = (r, p);
    }
    for (&(r, p), &last) in &synced {
        for i in 0..=last {
            if !seen.contains_key(&id(r, p, i)) {
                lost += 1;
            }
        }
    }
    open_us.sort_unstable();
    let median = open_us.get(open_us.len() / 2).copied().unwrap_or(0);
    let max = open_us.last().copied().unwrap_or(0);
    eprintln!(
        "torture: {rounds} rounds, kills {kills:?}; {} records delivered ({} distinct), duplicates {duplicates}, \
         lost synced {lost}, holes {holes}, seqs naming two records {bad_seq}; open time median {median} us, max {max} us",
        all.len(),
        seen.len()
    );
    assert_eq!(lost, 0, "synced records lost (seed {seed})");
    assert_eq!(holes, 0, "holes below delivered records (seed {seed})");
    assert_eq!(bad_seq, 0, "a seq named two records (seed {seed})");
    Ok(())
}
