//! `walsink inspect | verify | dump | repair` driven as real processes on healthy,
//! damaged, locked and concurrently-written directories: output, exit codes (0 done,
//! 1 damage or nothing matched, 2 unusable, 3 locked and the command would change it),
//! never a panic.

mod common;

use std::path::Path;

use assert_cmd::Command;
use common::*;
use tokio_util::sync::CancellationToken;
use walsink::{DurableSink, SinkHandle};

fn walsink(args: &[&str], dir: &Path) -> assert_cmd::assert::Assert {
    let mut cmd = Command::cargo_bin("walsink").expect("the walsink binary");
    cmd.arg(args[0]).arg(dir).args(&args[1..]);
    cmd.assert()
}

fn stdout(a: &assert_cmd::assert::Assert) -> String {
    String::from_utf8_lossy(&a.get_output().stdout).into_owned()
}

fn stderr(a: &assert_cmd::assert::Assert) -> String {
    String::from_utf8_lossy(&a.get_output().stderr).into_owned()
}

/// A sink on `dir` with 300 records written, the first 100 acknowledged (by an
/// earlier sink) and the rest held by a drain that never acknowledges.
async fn sink_with_backlog(dir: &Path) -> (DurableSink<u64>, SinkHandle) {
    let mut cfg = small_config(dir);
    cfg.shutdown_timeout = std::time::Duration::from_millis(100);
    let log = new_log();
    let (sink, handle) =
        DurableSink::<u64>::open(cfg.clone(), Collect::new(&log), CancellationToken::new())
            .await
            .expect("open");
    for v in 0..100u64 {
        sink.push(v).await.expect("push");
    }
    sink.flush().await.expect("flush");
    drop(sink);
    handle.join().await.expect("join");
    let (sink, handle) = DurableSink::<u64>::open(cfg, Stuck, CancellationToken::new())
        .await
        .expect("open");
    for v in 100..300u64 {
        sink.push(v).await.expect("push");
    }
    sink.sync().await.expect("sync");
    (sink, handle)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_command_on_a_live_directory_reads_and_repair_refuses() {
    let tmp = tempfile::tempdir().expect("tmp");
    let dir = tmp.path();
    let (sink, handle) = sink_with_backlog(dir).await;

    let a = walsink(&["inspect", "--json"], dir).code(0);
    let v: serde_json::Value = serde_json::from_str(stdout(&a).trim()).expect("one object");
    for key in [
        "segments",
        "acked_seq",
        "pending_records",
        "pending_bytes",
        "dead_letters",
        "locked",
        "quarantined",
        "strays",
    ] {
        assert!(v.get(key).is_some(), "{key} missing: {v}");
    }
    assert_eq!(v["locked"], true);
    assert_eq!(v["acked_seq"], 100);
    assert_eq!(v["pending_records"], 200);
    assert!(v["pending_bytes"].as_u64().is_some_and(|b| b > 200 * 16));
    let segs = v["segments"].as_array().expect("segments");
    assert!(segs.len() > 1, "rolled: {v}");
    for s in segs {
        for key in [
            "file",
            "first_seq",
            "last_seq",
            "records",
            "bytes",
            "damaged_frames",
        ] {
            assert!(s.get(key).is_some(), "segment {key} missing: {s}");
        }
    }
    let a = walsink(&["inspect"], dir).code(0);
    assert!(stdout(&a).contains("live sink:     yes"), "{}", stdout(&a));

    let a = walsink(&["verify"], dir).code(0);
    assert!(stdout(&a).contains(": 0 problems"), "{}", stdout(&a));

    let a = walsink(
        &["dump", "--from", "101", "--limit", "2", "--format", "json"],
        dir,
    )
    .code(0);
    let lines: Vec<serde_json::Value> = stdout(&a)
        .lines()
        .map(|l| serde_json::from_str(l).expect("json line"))
        .collect();
    assert_eq!(lines.len(), 2);
    assert_eq!(lines[0]["seq"], 101);
    // bincode's u64 100 is one byte, 0x64.
    assert_eq!(lines[0]["payload_hex"], "64");
    walsink(&["dump", "--limit", "1", "--format", "hex"], dir).code(0);
    walsink(&["dump", "--from", "100000"], dir).code(1);

    let a = walsink(&["repair"], dir).code(3);
    assert!(stderr(&a).contains("locked"), "{}", stderr(&a));
    walsink(&["repair", "--dry-run"], dir).code(3);

    drop(sink);
    handle.join().await.expect("join");
    let a = walsink(&["inspect", "--json"], dir).code(0);
    let v: serde_json::Value = serde_json::from_str(stdout(&a).trim()).expect("json");
    assert_eq!(
        v["locked"],
        serde_json::Value::Null,
        "not seen is not proof"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reading_commands_beside_a_sink_that_keeps_writing_see_no_damage() {
    let tmp = tempfile::tempdir().expect("tmp");
    let dir = tmp.path().to_path_buf();
    let log = new_log();
    let mut cfg = small_config(&dir);
    cfg.flush_interval = std::time::Duration::from_millis(1);
    let (sink, handle) =
        DurableSink::<u64>::open(cfg, Collect::new(&log), CancellationToken::new())
            .await
            .expect("open");
    let writer = {
        let sink = sink.clone();
        tokio::spawn(async move {
            for v in 0..u64::MAX {
                if sink.push(v).await.is_err() {
                    break;
                }
                if v % 50 == 0 {
                    tokio::task::yield_now().await;
                }
            }
        })
    };
    // Segments roll and are deleted under the commands.
    for _ in 0..15 {
        let d = dir.clone();
        tokio::task::spawn_blocking(move || {
            walsink(&["verify"], &d).code(0);
            walsink(&["inspect", "--json"], &d).code(0);
            walsink(&["dump", "--limit", "3"], &d);
        })
        .await
        .expect("commands");
    }
    writer.abort();
    drop(sink);
    handle.join().await.expect("join");
    assert!(values(&log).len() > 100, "records flowed");
}

fn first_segment(dir: &Path) -> std::path::PathBuf {
    segment_files(dir).into_iter().next().expect("a segment")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn damage_is_reported_and_repair_quarantines_it() {
    let tmp = tempfile::tempdir().expect("tmp");
    let dir = tmp.path();
    let (sink, handle) = sink_with_backlog(dir).await;
    drop(sink);
    handle.join().await.expect("join");

    // A flipped byte inside a frame of the first remaining segment.
    let seg = first_segment(dir);
    let mut bytes = std::fs::read(&seg).expect("read");
    bytes[40 + 20] ^= 0xff;
    std::fs::write(&seg, &bytes).expect("write");
    let a = walsink(&["verify"], dir).code(1);
    let name = seg
        .file_name()
        .expect("name")
        .to_string_lossy()
        .into_owned();
    assert!(
        stdout(&a).contains(&format!("{name} at offset ")),
        "{}",
        stdout(&a)
    );
    let a = walsink(&["verify", "--json"], dir).code(1);
    let p: serde_json::Value =
        serde_json::from_str(stdout(&a).lines().next().expect("a problem")).expect("json");
    assert_eq!(p["file"], name.as_str());
    assert!(p["offset"].as_u64().is_some_and(|o| o >= 40), "{p}");
    assert!(p["kind"].as_str().is_some(), "{p}");
    walsink(&["inspect"], dir).code(1);
    walsink(&["dump", "--limit", "1000"], dir).code(1);

    // A segment name holding garbage, and an unreadable cursor.
    std::fs::write(dir.join("00000000000000999999.seg"), b"garbage").expect("w");
    std::fs::write(dir.join("CURSOR"), vec![0x5a; 4128]).expect("w");
    let a = walsink(&["verify"], dir).code(1);
    let out = stdout(&a);
    assert!(
        out.contains("00000000000000999999.seg at offset 0: unreadable header"),
        "{out}"
    );
    assert!(out.contains("CURSOR: no valid slot"), "{out}");
    let a = walsink(&["repair", "--dry-run"], dir).code(0);
    assert!(
        stdout(&a).contains("would quarantine 00000000000000999999.seg"),
        "{}",
        stdout(&a)
    );
    assert!(
        stdout(&a).contains("would quarantine CURSOR"),
        "{}",
        stdout(&a)
    );
    assert!(
        dir.join("00000000000000999999.seg").exists(),
        "dry run changed nothing"
    );

    let a = walsink(&["repair"], dir).code(0);
    let out = stdout(&a);
    assert!(out.contains("quarantined"), "{out}");
    assert!(!stderr(&a).contains("panicked"));
    // What remains is readable; the frame damage stays (delivery skips it, counted).
    let a = walsink(&["verify"], dir).code(1);
    assert!(!stdout(&a).contains("999999"), "{}", stdout(&a));
    let a = walsink(&["inspect", "--json"], dir).code(1);
    let v: serde_json::Value = serde_json::from_str(stdout(&a).trim()).expect("json");
    assert!(
        v["quarantined"].as_array().is_some_and(|q| q.len() == 2),
        "{v}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn random_bytes_in_every_file_never_panic() {
    let tmp = tempfile::tempdir().expect("tmp");
    let dir = tmp.path();
    let (sink, handle) = sink_with_backlog(dir).await;
    drop(sink);
    handle.join().await.expect("join");
    let mut rng = Rng(seed_or(0xC11));
    let files: Vec<_> = std::fs::read_dir(dir)
        .expect("dir")
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| p.is_file())
        .collect();
    for round in 0..8 {
        for f in &files {
            let Ok(mut b) = std::fs::read(f) else {
                continue;
            };
            if b.is_empty() {
                continue;
            }
            for _ in 0..4 {
                let i = rng.below(b.len());
                b[i] = rng.next() as u8;
            }
            if round % 3 == 2 {
                b.truncate(rng.below(b.len()));
            }
            std::fs::write(f, &b).expect("write");
        }
        for args in [
            vec!["verify"],
            vec!["inspect", "--json"],
            vec!["dump", "--format", "hex"],
            vec!["repair", "--dry-run"],
        ] {
            let a = walsink(&args, dir);
            let code = a.get_output().status.code();
            assert!(
                matches!(code, Some(0..=2)),
                "{args:?}: {code:?}\n{}",
                stderr(&a)
            );
            assert!(!stderr(&a).contains("panicked"), "{args:?}: {}", stderr(&a));
        }
    }
    let a = walsink(&["repair"], dir);
    assert!(!stderr(&a).contains("panicked"), "{}", stderr(&a));
}

#[test]
fn unusable_directories_exit_2() {
    let tmp = tempfile::tempdir().expect("tmp");
    for cmd in ["inspect", "verify", "dump", "repair"] {
        walsink(&[cmd], &tmp.path().join("missing")).code(2);
        walsink(&[cmd], tmp.path()).code(2);
    }
    let a = Command::cargo_bin("walsink")
        .expect("bin")
        .arg("--help")
        .assert()
        .code(0);
    let help = stdout(&a);
    for cmd in ["inspect", "verify", "dump", "repair", "dlq"] {
        assert!(help.contains(cmd), "{help}");
    }
}
