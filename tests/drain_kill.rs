//! The shipped drains under `kill -9`: FileDrain holds every record exactly once, and
//! SledDrain (feature `sled`) every synced record, with one value per seq.
//!
//! Method: rounds on one directory. Each round a child process (this binary,
//! `drain_kill_child_entry`) opens a sink with the drain, pushes values
//! `round * 1_000_000 + i` with `push`, calls `sync()` every 7 records and prints
//! `synced <v>`; the parent SIGKILLs it after a seeded number of those lines. Then a
//! last sink delivers what is left and the parent reads the drain's output back:
//! - every value reported synced is there (nothing synced lost);
//! - FileDrain: no value twice, seqs strictly increasing across its files;
//! - SledDrain: each seq holds one value, and no value is under two seqs.
//!
//! `WALSINK_SEED=<seed> cargo test --features sled --test drain_kill` reruns a seed;
//! `WALSINK_DRAIN_KILL_ROUNDS=200` runs a longer campaign (default 5 kills per drain).

mod common;

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::Stdio;

use common::*;
use tokio_util::sync::CancellationToken;
use walsink::drains::FileDrain;
use walsink::{Durability, DurableSink};

/// Kills per test: `WALSINK_DRAIN_KILL_ROUNDS`, default 5.
fn rounds() -> u64 {
    std::env::var("WALSINK_DRAIN_KILL_ROUNDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(5)
}

fn config(dir: &Path) -> walsink::SinkConfig {
    let mut c = small_config(dir);
    c.batch_size = 16;
    c.flush_interval = std::time::Duration::from_millis(1);
    c.durability = Durability::Never;
    c
}

#[test]
#[ignore = "the child process's entry point: run only by the parent tests, with --ignored"]
fn drain_kill_child_entry() -> Result<(), Box<dyn std::error::Error>> {
    let dir = std::env::var("WALSINK_CHILD_DIR")
        .map_err(|_| "WALSINK_CHILD_DIR is not set: this entry point runs only as a child")?;
    let round: u64 = std::env::var("WALSINK_CHILD_ROUND")?.parse()?;
    let which = std::env::var("WALSINK_CHILD_DRAIN")?;
    let rt = child_runtime()?;
    rt.block_on(async move {
        let dir = Path::new(&dir);
        match which.as_str() {
            "file" => {
                let drain =
                    FileDrain::<u64>::json_lines(dir.join("out"))?.with_max_file_bytes(2048);
                run_child(dir, round, drain).await
            }
            #[cfg(feature = "sled")]
            "sled" => {
                let drain = walsink::drains::SledDrain::<u64>::open(dir.join("sled"), "records")?;
                run_child(dir, round, drain).await
            }
            other => Err(format!("unknown drain {other}").into()),
        }
    })
}

async fn run_child<D: walsink::SinkDrain<u64>>(
    dir: &Path,
    round: u64,
    drain: D,
) -> Result<(), Box<dyn std::error::Error>> {
    use std::io::Write;
    let (sink, _handle) =
        DurableSink::<u64>::open(config(&dir.join("wal")), drain, CancellationToken::new()).await?;
    let mut i = 0u64;
    loop {
        let v = round * 1_000_000 + i;
        sink.push(v).await?;
        if i % 7 == 6 {
            sink.sync().await?;
            let mut out = std::io::stdout().lock();
            writeln!(out, "synced {v}")?;
            out.flush()?;
        }
        i += 1;
    }
}

/// Runs the rounds; returns every value reported synced.
fn kill_rounds(dir: &Path, which: &str, seed: u64) -> Result<Vec<u64>, Box<dyn std::error::Error>> {
    let mut rng = Rng(seed);
    let mut synced = Vec::new();
    for round in 0..rounds() {
        let kill_after = 1 + rng.next() % 40;
        let mut child = child_command("drain_kill_child_entry")?
            .env("WALSINK_CHILD_DIR", dir)
            .env("WALSINK_CHILD_ROUND", round.to_string())
            .env("WALSINK_CHILD_DRAIN", which)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()?;
        let stdout = child.stdout.take().ok_or("no stdout")?;
        let mut seen = 0;
        for line in BufReader::new(stdout).lines() {
            let line = line?;
            if let Some(v) = line.strip_prefix("synced ") {
                synced.push(v.parse()?);
                seen += 1;
                if seen >= kill_after {
                    break;
                }
            }
        }
        child.kill()?;
        child.wait()?;
        assert!(
            seen >= kill_after,
            "round {round}: the child stopped early (seed {seed})"
        );
    }
    Ok(synced)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn file_drain_holds_every_record_exactly_once_across_kill_9()
-> Result<(), Box<dyn std::error::Error>> {
    let seed = seed_or(0xF11E);
    eprintln!(
        "drain_kill file seed {seed} (rerun: WALSINK_SEED={seed} cargo test --test drain_kill)"
    );
    let tmp = tempfile::tempdir()?;
    let dir = tmp.path();
    let synced = tokio::task::block_in_place(|| kill_rounds(dir, "file", seed))?;
    // A last sink delivers the rest.
    let drain = FileDrain::<u64>::json_lines(dir.join("out"))?;
    let (sink, handle) =
        DurableSink::<u64>::open(config(&dir.join("wal")), drain, CancellationToken::new()).await?;
    sink.flush().await?;
    drop(sink);
    handle.join().await?;

    let mut names: Vec<_> = std::fs::read_dir(dir.join("out"))?
        .filter_map(Result::ok)
        .map(|e| e.path())
        .collect();
    names.sort();
    assert!(names.len() > 1, "rotated: {names:?}");
    let mut pairs = Vec::new();
    for path in names {
        for line in std::fs::read_to_string(&path)?.lines() {
            let v: serde_json::Value = serde_json::from_str(line)?;
            pairs.push((
                v["seq"].as_u64().ok_or("seq")?,
                v["record"].as_u64().ok_or("record")?,
            ));
        }
    }
    assert!(
        pairs.windows(2).all(|w| w[0].0 < w[1].0),
        "seqs strictly increase across files (seed {seed})"
    );
    let mut values: Vec<u64> = pairs.iter().map(|p| p.1).collect();
    values.sort_unstable();
    let before = values.len();
    values.dedup();
    assert_eq!(values.len(), before, "a value written twice (seed {seed})");
    for v in &synced {
        assert!(
            values.binary_search(v).is_ok(),
            "synced {v} lost (seed {seed})"
        );
    }
    Ok(())
}

#[cfg(feature = "sled")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sled_drain_keeps_every_synced_record_once_per_seq_across_kill_9()
-> Result<(), Box<dyn std::error::Error>> {
    use std::collections::BTreeMap;
    use walsink::drains::SledDrain;
    let seed = seed_or(0x51ED);
    eprintln!(
        "drain_kill sled seed {seed} (rerun: WALSINK_SEED={seed} cargo test --features sled --test drain_kill)"
    );
    let tmp = tempfile::tempdir()?;
    let dir = tmp.path();
    let synced = tokio::task::block_in_place(|| kill_rounds(dir, "sled", seed))?;
    let drain = SledDrain::<u64>::open(dir.join("sled"), "records")?;
    let tree = drain.tree().clone();
    let (sink, handle) =
        DurableSink::<u64>::open(config(&dir.join("wal")), drain, CancellationToken::new()).await?;
    sink.flush().await?;
    drop(sink);
    handle.join().await?;
    let records = SledDrain::<u64>::records(&tree).map_err(|e| e.to_string())?;
    let mut by_value: BTreeMap<u64, u64> = BTreeMap::new();
    for (seq, v) in &records {
        assert!(
            by_value.insert(*v, *seq).is_none(),
            "value {v} under two seqs (seed {seed})"
        );
    }
    for v in &synced {
        assert!(by_value.contains_key(v), "synced {v} lost (seed {seed})");
    }
    eprintln!(
        "sled: {} records, {} synced values checked, {} kills",
        records.len(),
        synced.len(),
        rounds()
    );
    Ok(())
}
