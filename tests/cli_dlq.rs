//! `walsink dlq` driven as a real process on healthy, damaged, locked and unusable
//! directories: output, exit codes (0 done, 1 damage or nothing matched, 2 unusable
//! directory or bad arguments, 3 locked and the command would change it), and never a
//! panic.

mod common;

use std::path::Path;

use assert_cmd::Command;
use common::*;
use tokio_util::sync::CancellationToken;
use walsink::{Batch, DrainError, DurableSink, SinkDrain, SinkHandle};

/// Rejects permanently the values in `poison`; collects the rest.
struct Rejects {
    log: Log,
    poison: Vec<u64>,
}

impl SinkDrain<u64> for Rejects {
    async fn write_batch(&mut self, batch: Batch<u64>) -> Result<(), DrainError> {
        if let Some((_, v)) = batch.iter().find(|(_, v)| self.poison.contains(v)) {
            return Err(DrainError::permanent(format!(
                "value {v} failed:\nbad field"
            )));
        }
        self.log.lock().expect("log").extend(batch.into_pairs());
        Ok(())
    }
}

/// A sink on `dir` whose drain rejects 3 and 6 (seqs 4 and 7), after 0..8 delivered.
async fn with_dead_letters(dir: &Path) -> (DurableSink<u64>, SinkHandle) {
    let drain = Rejects {
        log: new_log(),
        poison: vec![3, 6],
    };
    let (sink, handle) =
        DurableSink::<u64>::open(small_config(dir), drain, CancellationToken::new())
            .await
            .expect("open");
    for v in 0..8u64 {
        sink.push(v).await.expect("push");
    }
    sink.flush().await.expect("flush");
    (sink, handle)
}

async fn stopped_with_dead_letters(dir: &Path) {
    let (sink, handle) = with_dead_letters(dir).await;
    drop(sink);
    handle.join().await.expect("join");
}

fn walsink(args: &[&str], dir: &Path) -> assert_cmd::assert::Assert {
    let mut cmd = Command::cargo_bin("walsink").expect("the walsink binary");
    cmd.arg("dlq").arg(args[0]).arg(dir).args(&args[1..]);
    cmd.assert()
}

fn stdout(a: &assert_cmd::assert::Assert) -> String {
    String::from_utf8_lossy(&a.get_output().stdout).into_owned()
}

fn stderr(a: &assert_cmd::assert::Assert) -> String {
    String::from_utf8_lossy(&a.get_output().stderr).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reading_commands_on_a_healthy_directory() {
    let tmp = tempfile::tempdir().expect("tmp");
    stopped_with_dead_letters(tmp.path()).await;
    let dir = tmp.path();

    let a = walsink(&["count"], dir).code(0);
    assert_eq!(stdout(&a), "2\n");

    let a = walsink(&["list"], dir).code(0);
    let out = stdout(&a);
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.len(), 3, "{out}");
    assert!(lines[0].starts_with("seq\treason"));
    assert!(lines[1].starts_with("4\trejected\t"), "{out}");
    assert!(
        lines[1].contains("value 3 failed:\\nbad field"),
        "one line per entry: {out}"
    );

    let a = walsink(&["list", "--json", "--from", "5"], dir).code(0);
    let out = stdout(&a);
    let rows: Vec<serde_json::Value> = out
        .lines()
        .map(|l| serde_json::from_str(l).expect("a JSON object per line"))
        .collect();
    assert_eq!(rows.len(), 1);
    let row = rows[0].as_object().expect("object");
    let mut keys: Vec<&str> = row.keys().map(String::as_str).collect();
    keys.sort_unstable();
    assert_eq!(
        keys,
        [
            "attempts",
            "dead_lettered_at",
            "error",
            "first_failed_at",
            "len",
            "payload_hex",
            "reason",
            "seq"
        ]
    );
    assert_eq!(row["seq"], 7);
    assert_eq!(row["reason"], "rejected");
    assert!(row["attempts"].as_u64().is_some_and(|n| n >= 1));
    // bincode's u64 6 is one byte.
    assert_eq!(row["payload_hex"], "06");
    assert_eq!(row["len"], 1);
    let ts = row["first_failed_at"].as_str().expect("string");
    assert!(
        ts.len() == 24 && ts.ends_with('Z') && ts.as_bytes()[10] == b'T',
        "{ts}"
    );

    walsink(&["list", "--from", "8"], dir).code(1);

    let a = walsink(&["show", "4", "--format", "hex"], dir).code(0);
    assert!(stdout(&a).contains("00000000  03"), "{}", stdout(&a));
    let a = walsink(&["show", "4", "--format", "json"], dir).code(0);
    let v: serde_json::Value = serde_json::from_str(stdout(&a).trim()).expect("json");
    assert_eq!(v["seq"], 4);
    walsink(&["show", "4"], dir).code(0);
    let a = walsink(&["show", "5"], dir).code(1);
    assert!(stderr(&a).contains("no dead letter with seq 5"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_live_sink_allows_reading_and_refuses_changes_with_exit_3() {
    let tmp = tempfile::tempdir().expect("tmp");
    let (sink, handle) = with_dead_letters(tmp.path()).await;
    let dir = tmp.path();
    let a = walsink(&["count"], dir).code(0);
    assert_eq!(stdout(&a), "2\n");
    walsink(&["list", "--json"], dir).code(0);
    let a = walsink(&["purge", "--all"], dir).code(3);
    assert!(stderr(&a).contains("locked"), "{}", stderr(&a));
    walsink(&["redrive", "--seq", "4"], dir).code(3);
    drop(sink);
    handle.join().await.expect("join");
    assert_eq!(
        stdout(&walsink(&["count"], dir).code(0)),
        "2\n",
        "nothing changed"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn purge_and_redrive_change_a_stopped_directory() {
    let tmp = tempfile::tempdir().expect("tmp");
    stopped_with_dead_letters(tmp.path()).await;
    let dir = tmp.path();
    let a = walsink(&["purge", "--seq", "4"], dir).code(0);
    assert_eq!(stdout(&a), "purged 1 dead letters\n");
    walsink(&["purge", "--seq", "4"], dir).code(1);
    let a = walsink(&["redrive", "--all"], dir).code(0);
    assert!(stdout(&a).contains("seq 7 -> "), "{}", stdout(&a));
    assert_eq!(stdout(&walsink(&["count"], dir).code(0)), "0\n");
    walsink(&["redrive", "--all"], dir).code(1);

    // The redriven record reaches the next sink's drain.
    let log = new_log();
    let (sink, handle) = DurableSink::<u64>::open(
        small_config(dir),
        Collect::new(&log),
        CancellationToken::new(),
    )
    .await
    .expect("open");
    sink.flush().await.expect("flush");
    assert_eq!(values(&log), vec![6]);
    drop(sink);
    handle.join().await.expect("join");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn damage_is_reported_with_exit_1_and_never_a_panic() {
    let tmp = tempfile::tempdir().expect("tmp");
    stopped_with_dead_letters(tmp.path()).await;
    let dir = tmp.path();
    let dl = dir.join("dead-letters");
    let file = std::fs::read_dir(&dl)
        .expect("dead-letters")
        .filter_map(Result::ok)
        .map(|e| e.path())
        .find(|p| p.extension().is_some_and(|x| x == "seg"))
        .expect("a store file");
    let mut bytes = std::fs::read(&file).expect("read");
    // Flip a byte inside the first entry (after the 40-byte header and its frame
    // header): its CRC fails, the second entry is still read.
    bytes[40 + 16 + 20] ^= 0xff;
    std::fs::write(&file, &bytes).expect("write");
    let a = walsink(&["list"], dir).code(1);
    assert!(stdout(&a).contains("7\trejected"), "{}", stdout(&a));
    assert!(stderr(&a).contains("damaged"), "{}", stderr(&a));
    walsink(&["count"], dir).code(1);

    // Garbage in a file named like a store segment, and random bytes everywhere.
    std::fs::write(dl.join("00000000000000000100.seg"), b"not a segment at all").expect("w");
    let mut rng = Rng(7);
    let noise: Vec<u8> = (0..5000).map(|_| rng.next() as u8).collect();
    std::fs::write(dl.join("00000000000000000200.seg"), &noise).expect("w");
    let a = walsink(&["list", "--json"], dir).code(1);
    assert!(!stderr(&a).contains("panicked"), "{}", stderr(&a));
    walsink(&["show", "7", "--format", "hex"], dir).code(1);
    walsink(&["purge", "--seq", "7"], dir).code(0);
}

#[test]
fn unusable_directories_and_bad_arguments_exit_2() {
    let tmp = tempfile::tempdir().expect("tmp");
    let missing = tmp.path().join("missing");
    let a = walsink(&["count"], &missing).code(2);
    assert_eq!(stderr(&a).lines().count(), 1, "one line: {}", stderr(&a));
    let file = tmp.path().join("a-file");
    std::fs::write(&file, b"x").expect("w");
    walsink(&["list"], &file).code(2);
    walsink(&["list"], tmp.path()).code(2);
    walsink(&["purge", "--all"], tmp.path()).code(2);
    walsink(&["purge"], tmp.path()).code(2);
    walsink(&["show", "not-a-seq"], tmp.path()).code(2);
}
