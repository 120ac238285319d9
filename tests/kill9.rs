//! Guarantee 1 and 3 under `kill -9`.
//!
//! Method: this test binary re-runs itself as a child (`child_process_entry`, a no-op
//! unless `WALSINK_CHILD_DIR` is set). The child pushes values 0, 1, 2, ... with `push`,
//! calls `sync()` every few records and prints `synced <last value>` once it returns;
//! its drain appends every acknowledged `(seq, value)` to a log file before
//! acknowledging. The parent kills the child with SIGKILL after a seeded number of
//! `synced` lines, reopens the WAL with a collecting drain, and checks:
//! - every value up to the last one reported synced was delivered (by the child or
//!   by the replay): nothing synced is lost;
//! - the replay is in strictly increasing seq and value order;
//! - child log and replay together hold the values `0..=max` without a hole, and a
//!   seq seen in both names the same value: nothing unknown, nothing reordered.
//!
//! Rerun a failure with `WALSINK_SEED=<seed> cargo test --test kill9`.

mod common;

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use common::*;
use tokio_util::sync::CancellationToken;
use walsink::{Batch, DrainError, Durability, DurableSink, SinkDrain};

const ROUNDS: u64 = 6;

/// The child's drain: appends checked `seq value` lines (`common::drain_log_lines`) to
/// a file, then acknowledges.
struct FileLog {
    file: std::fs::File,
}

impl SinkDrain<u64> for FileLog {
    async fn write_batch(&mut self, batch: Batch<u64>) -> Result<(), DrainError> {
        let text = drain_log_lines(batch.iter());
        self.file
            .write_all(text.as_bytes())
            .map_err(DrainError::retryable)?;
        Ok(())
    }
}

#[test]
#[ignore = "the child process's entry point: run only by the parent test, with --ignored"]
fn child_process_entry() -> Result<(), Box<dyn std::error::Error>> {
    let dir = std::env::var("WALSINK_CHILD_DIR").map_err(
        |_| "WALSINK_CHILD_DIR is not set: this entry point runs only as a child process",
    )?;
    let durability = match std::env::var("WALSINK_CHILD_DURABILITY").as_deref() {
        Ok("always") => Durability::Always,
        Ok("interval") => Durability::Interval(Duration::from_millis(5)),
        _ => Durability::Never,
    };
    let rt = child_runtime()?;
    rt.block_on(async move {
        let dir = Path::new(&dir);
        let log_file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(dir.with_extension("drained"))?;
        let mut cfg = small_config(&dir.join("wal"));
        cfg.durability = durability;
        cfg.batch_size = 16;
        cfg.flush_interval = Duration::from_millis(1);
        let (sink, _handle) =
            DurableSink::<u64>::open(cfg, FileLog { file: log_file }, CancellationToken::new())
                .await?;
        let stdout = std::io::stdout();
        let mut v = 0u64;
        loop {
            sink.push(v).await?;
            if v % 7 == 6 {
                sink.sync().await?;
                let mut out = stdout.lock();
                writeln!(out, "synced {v}")?;
                out.flush()?;
            }
            v += 1;
        }
    })
}

fn read_child_log(path: &Path) -> Vec<(u64, u64)> {
    parse_drain_log(&std::fs::read_to_string(path).unwrap_or_default())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_at_random_points_loses_nothing_that_was_synced()
-> Result<(), Box<dyn std::error::Error>> {
    let seed = seed_or(0x5EED_0001);
    eprintln!("kill9 seed {seed} (rerun: WALSINK_SEED={seed} cargo test --test kill9)");
    let mut rng = Rng(seed);
    for round in 0..ROUNDS {
        let tmp = tempfile::tempdir()?;
        let base = tmp.path().join("child");
        std::fs::create_dir_all(&base)?;
        let durability = ["never", "interval", "always"][(round % 3) as usize];
        let kill_after = 1 + rng.next() % 60;
        let mut child = child_command("child_process_entry")?
            .env("WALSINK_CHILD_DIR", &base)
            .env("WALSINK_CHILD_DURABILITY", durability)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()?;
        let stdout = child.stdout.take().ok_or("no child stdout")?;
        let mut last_synced: Option<u64> = None;
        let mut seen = 0;
        for line in BufReader::new(stdout).lines() {
            let line = line?;
            // libtest may print "test child_process_entry ... " before the first line.
            if let Some(v) = line.find("synced ").map(|at| &line[at + "synced ".len()..]) {
                last_synced = Some(v.trim().parse()?);
                seen += 1;
                if seen >= kill_after {
                    break;
                }
            }
        }
        child.kill()?; // SIGKILL
        child.wait()?;
        let last_synced = last_synced
            .ok_or_else(|| format!("round {round}: child reported nothing (seed {seed})"))?;

        let child_log = read_child_log(&base.with_extension("drained"));
        let log = new_log();
        let shutdown = CancellationToken::new();
        let cfg = small_config(&base.join("wal"));
        let (sink, handle) =
            DurableSink::<u64>::open(cfg, Collect::new(&log), shutdown.clone()).await?;
        sink.flush().await?;
        let replay = snapshot(&log);
        shutdown.cancel();
        handle.join().await?;

        let ctx = format!(
            "round {round}, durability {durability}, kill after {kill_after} syncs, seed {seed}"
        );
        assert_seqs_increase(&replay);
        for w in replay.windows(2) {
            assert!(w[0].1 < w[1].1, "{ctx}: replay values out of order: {w:?}");
        }
        let mut by_seq: BTreeMap<u64, u64> = BTreeMap::new();
        for &(seq, v) in child_log.iter().chain(replay.iter()) {
            if let Some(&old) = by_seq.get(&seq) {
                assert_eq!(old, v, "{ctx}: seq {seq} named two records");
            }
            by_seq.insert(seq, v);
        }
        let mut all: Vec<u64> = by_seq.values().copied().collect();
        all.sort_unstable();
        all.dedup();
        let max = all
            .last()
            .copied()
            .ok_or_else(|| format!("{ctx}: nothing delivered"))?;
        assert!(
            max >= last_synced,
            "{ctx}: synced value {last_synced} lost (max delivered {max})"
        );
        assert_eq!(
            all,
            (0..=max).collect::<Vec<_>>(),
            "{ctx}: values with holes"
        );
        eprintln!(
            "{ctx}: last synced {last_synced}, delivered 0..={max}, replayed {}",
            replay.len()
        );
    }
    Ok(())
}
