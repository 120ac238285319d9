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
    // Other tests here spawn processes: a child forked while the first sink still
    // held the lock keeps the lock's file description until it execs, for a moment
    // after the first sink let go. Bounded retry on that.
    let mut tries = 0;
    let (sink, handle) = loop {
        match DurableSink::<u64>::open(cfg.clone(), Stuck, CancellationToken::new()).await {
            Err(walsink::OpenError::Locked { .. }) if tries < 100 => {
                tries += 1;
                tokio::time::sleep(std::time::Duration::from_millis(10)).await;
            }
            r => break r.expect("open"),
        }
    };
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

/// `repair` on a healthy directory a crash left changes only what it reports: it trims
/// the active segment's unused preallocated zeros (as open does) and says so, never
/// grows a file (no preallocation of its own), keeps every waiting record, and a
/// second run has nothing to do.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn repair_of_a_healthy_directory_reports_each_change_and_keeps_every_record() {
    let tmp = tempfile::tempdir().expect("tmp");
    let dir = tmp.path();
    let (sink, handle) = sink_with_backlog(dir).await;
    drop(sink);
    handle.join().await.expect("join");
    // A clean stop trims the active segment; a crash leaves its preallocated zeros.
    let last = std::fs::read_dir(dir)
        .expect("dir")
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|e| e == "seg"))
        .max()
        .expect("a segment");
    let f = std::fs::OpenOptions::new()
        .write(true)
        .open(&last)
        .expect("open");
    f.set_len(f.metadata().expect("meta").len() + 8192)
        .expect("extend");
    drop(f);
    let sizes = |d: &Path| {
        let mut v: Vec<(String, u64)> = std::fs::read_dir(d)
            .expect("dir")
            .filter_map(Result::ok)
            .filter_map(|e| {
                Some((
                    e.file_name().to_string_lossy().into_owned(),
                    e.metadata().ok()?.len(),
                ))
            })
            .collect();
        v.sort();
        v
    };
    let dumped = |d: &Path| {
        stdout(
            &walsink(
                &[
                    "dump", "--from", "101", "--limit", "1000", "--format", "json",
                ],
                d,
            )
            .code(0),
        )
    };
    let before = sizes(dir);
    let records = dumped(dir);
    assert_eq!(records.lines().count(), 200);

    let a = walsink(&["repair", "--dry-run"], dir).code(0);
    let plan = stdout(&a);
    assert_eq!(sizes(dir), before, "a dry run changed a file");
    let a = walsink(&["repair"], dir).code(0);
    let done = stdout(&a);
    let after = sizes(dir);
    assert_eq!(
        before.iter().map(|(n, _)| n).collect::<Vec<_>>(),
        after.iter().map(|(n, _)| n).collect::<Vec<_>>(),
        "repair added or removed a file:\n{done}"
    );
    let trimmed: Vec<_> = before
        .iter()
        .zip(&after)
        .filter(|(b, a)| a.1 != b.1)
        .collect();
    // The zeros a crash leaves after the last frame are the only thing to trim.
    assert_eq!(trimmed.len(), 1, "{before:?} -> {after:?}:\n{done}");
    for (b, a) in &trimmed {
        assert!(a.1 < b.1, "repair grew {}: {} -> {}", b.0, b.1, a.1);
        let line = format!(
            "trimmed {} bytes of unused preallocated space (zeros) from {}",
            b.1 - a.1,
            b.0
        );
        assert!(
            done.contains(&line),
            "unreported change to {}:\n{done}",
            b.0
        );
        assert_eq!(as_repair(&plan), done.trim_end(), "dry run:\n{plan}");
    }
    assert!(
        done.contains(&format!("repaired: {} changes;", trimmed.len()))
            && done.contains("200 records to deliver"),
        "{done}"
    );
    assert_eq!(dumped(dir), records, "repair changed what waits");
    let a = walsink(&["repair"], dir).code(0);
    assert!(
        stdout(&a).contains("repaired: 0 changes;"),
        "{}",
        stdout(&a)
    );
    assert_eq!(sizes(dir), after);
}

/// A repair's output with a dry run's wording turned into a repair's: the two must
/// then be equal.
fn as_repair(dry_run_output: &str) -> String {
    dry_run_output
        .lines()
        .map(|l| {
            l.strip_prefix("[dry run] ")
                .map(str::to_owned)
                .or_else(|| {
                    l.strip_prefix("dry run, nothing changed:")
                        .map(|rest| format!("repaired:{rest}"))
                })
                .unwrap_or_else(|| l.to_owned())
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// Child process: a sink with a backlog (100 acknowledged, 200 waiting), synced, then
/// killed (abort: no shutdown, like `kill -9`).
#[test]
#[ignore = "child process entry point for repair_after_a_crash_*"]
fn crash_with_backlog_child_entry() -> Result<(), Box<dyn std::error::Error>> {
    let dir = std::env::var("WALSINK_CHILD_DIR")?;
    child_runtime()?.block_on(async move {
        let (sink, _handle) = sink_with_backlog(Path::new(&dir)).await;
        sink.sync().await?;
        std::process::abort()
    })
}

/// After a real crash (preallocated tail, lease ahead of the last frame), the dry run
/// prints exactly what the repair then does, the repair reports every change and
/// grows nothing, every waiting record is still delivered by the next sink, and a
/// second repair has nothing to do.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn repair_after_a_crash_does_what_its_dry_run_said_and_loses_no_record() {
    let tmp = tempfile::tempdir().expect("tmp");
    let dir = tmp.path();
    let status = child_command("crash_with_backlog_child_entry")
        .expect("child")
        .env("WALSINK_CHILD_DIR", dir)
        .status()
        .expect("run child");
    assert_eq!(status.code(), None, "the child did not abort: {status}");
    let listing = |d: &Path| {
        let mut v: Vec<(String, u64, Vec<u8>)> = std::fs::read_dir(d)
            .expect("dir")
            .filter_map(Result::ok)
            .filter(|e| e.path().is_file())
            .map(|e| {
                let bytes = std::fs::read(e.path()).expect("read");
                (
                    e.file_name().to_string_lossy().into_owned(),
                    bytes.len() as u64,
                    bytes,
                )
            })
            .collect();
        v.sort();
        v
    };
    let before = listing(dir);
    let plan = stdout(&walsink(&["repair", "--dry-run"], dir).code(0));
    assert_eq!(listing(dir), before, "the dry run changed a file");
    let done = stdout(&walsink(&["repair"], dir).code(0));
    assert_eq!(
        as_repair(&plan),
        done.trim_end(),
        "dry run:\n{plan}\nrepair:\n{done}"
    );
    assert!(
        done.contains("trimmed "),
        "a crash leaves preallocated zeros:\n{done}"
    );
    assert!(done.contains("200 records to deliver"), "{done}");
    let after = listing(dir);
    let changed = before.iter().filter(|b| !after.contains(b)).count()
        + after
            .iter()
            .filter(|a| !before.iter().any(|b| b.0 == a.0))
            .count();
    let reported = done.lines().filter(|l| !l.starts_with("repaired:")).count();
    assert_eq!(
        changed, reported,
        "every change reported:\n{done}\n{before:?}"
    );
    for (name, len, _) in &after {
        if let Some((_, was, _)) = before.iter().find(|b| &b.0 == name) {
            assert!(
                len <= was || name == "SEQ_LEASE" || name == "CURSOR",
                "{name} grew"
            );
        }
    }
    let again = stdout(&walsink(&["repair"], dir).code(0));
    assert!(again.starts_with("repaired: 0 changes;"), "{again}");

    let log = new_log();
    let (sink, handle) = DurableSink::<u64>::open(
        small_config(dir),
        Collect::new(&log),
        CancellationToken::new(),
    )
    .await
    .expect("open after repair");
    sink.flush().await.expect("flush");
    drop(sink);
    handle.join().await.expect("join");
    let got: Vec<u64> = log.lock().expect("log").iter().map(|(_, v)| *v).collect();
    assert_eq!(
        got,
        (100..300).collect::<Vec<_>>(),
        "every waiting record, in order"
    );
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
        stdout(&a).contains("[dry run] quarantined 00000000000000999999.seg"),
        "{}",
        stdout(&a)
    );
    assert!(
        stdout(&a).contains("[dry run] rewrote CURSOR"),
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

/// The recovery tests' corruption matrix (tests/corruption.rs), each case on a fresh
/// stopped directory: every reading command answers without a panic, `verify` exits 1
/// on header, frame and register damage and 0 on strays and on a torn tail of the last
/// segment (noted: what a crash mid-append leaves; `repair` cuts it), `repair
/// --dry-run` changes nothing and says exactly what `repair` then does, and `repair`
/// leaves no file the next open would set aside.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_recovery_corruption_matrix_through_every_command() {
    type Damage = fn(&Path);
    let cases: Vec<(&str, i32, Damage)> = vec![
        ("torn tail", 0, |d| {
            let seg = segment_files(d).into_iter().last().expect("seg");
            let mut b = std::fs::read(&seg).expect("r");
            let end = b.iter().rposition(|&x| x != 0).expect("data") + 1;
            b.truncate(end - 5);
            std::fs::write(&seg, &b).expect("w");
        }),
        ("flipped byte mid-segment", 1, |d| {
            let seg = segment_files(d).into_iter().next().expect("seg");
            let mut b = std::fs::read(&seg).expect("r");
            let i = b.len() / 2;
            b[i] ^= 0x40;
            std::fs::write(&seg, &b).expect("w");
        }),
        ("empty segment file", 1, |d| {
            std::fs::write(d.join("00000000000000000002.seg"), b"").expect("w");
        }),
        ("damaged header", 1, |d| {
            let seg = segment_files(d).into_iter().next().expect("seg");
            let mut b = std::fs::read(&seg).expect("r");
            b[3] ^= 0xff;
            std::fs::write(&seg, &b).expect("w");
        }),
        ("garbage cursor", 1, |d| {
            std::fs::write(d.join("CURSOR"), vec![0xa5; 4128]).expect("w");
        }),
        ("stray files", 0, |d| {
            std::fs::write(d.join("notes.txt"), b"hello").expect("w");
            std::fs::create_dir(d.join("subdir")).expect("mkdir");
        }),
        ("unknown format version", 1, |d| {
            let seg = segment_files(d).into_iter().next().expect("seg");
            let mut b = std::fs::read(&seg).expect("r");
            // Version field after the 8-byte magic, with the header CRC fixed up.
            b[8] = 9;
            let crc = crc32(&b[..36]);
            b[36..40].copy_from_slice(&crc.to_le_bytes());
            std::fs::write(&seg, &b).expect("w");
        }),
        ("a segment name beyond the seq space", 0, |d| {
            std::fs::write(d.join("09999999999999999999.seg"), vec![7u8; 100]).expect("w");
        }),
        ("a register forged past the seq space", 1, |d| {
            let slot = register_slot(1, 1, u64::MAX);
            let mut f = vec![0u8; 4128];
            f[..slot.len()].copy_from_slice(&slot);
            std::fs::write(d.join("CURSOR"), f).expect("w");
        }),
    ];
    for (name, verify_exit, damage) in cases {
        let tmp = tempfile::tempdir().expect("tmp");
        let dir = tmp.path();
        let (sink, handle) = sink_with_backlog(dir).await;
        drop(sink);
        handle.join().await.expect("join");
        damage(dir);
        for args in [
            vec!["inspect"],
            vec!["inspect", "--json"],
            vec!["verify"],
            vec!["verify", "--json"],
            vec!["dump", "--format", "json"],
        ] {
            let a = walsink(&args, dir);
            let code = a.get_output().status.code();
            assert!(
                matches!(code, Some(0 | 1)),
                "{name}: {args:?}: {code:?} {}",
                stderr(&a)
            );
            assert!(!stderr(&a).contains("panicked"), "{name}: {args:?}");
        }
        let v = walsink(&["verify"], dir).code(verify_exit);
        if name == "torn tail" {
            assert!(
                stdout(&v).contains("torn tail: "),
                "a torn tail is noted: {}",
                stdout(&v)
            );
        }
        let listing = |d: &Path| {
            let mut v: Vec<String> = std::fs::read_dir(d)
                .expect("dir")
                .filter_map(Result::ok)
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect();
            v.sort();
            v
        };
        let before = listing(dir);
        let p = walsink(&["repair", "--dry-run"], dir);
        let plan = stdout(&p);
        assert_eq!(
            listing(dir),
            before,
            "{name}: a dry run changed the directory"
        );
        let a = walsink(&["repair"], dir);
        let code = a.get_output().status.code();
        assert_eq!(
            p.get_output().status.code(),
            code,
            "{name}: the dry run and the repair disagree"
        );
        assert!(!stderr(&a).contains("panicked"), "{name}");
        if code == Some(0) {
            let done = stdout(&a);
            // What open would set aside is set aside: no header or register problem
            // is left (damaged frames stay, skipped at delivery).
            let a = walsink(&["verify"], dir);
            let damage_left = a.get_output().status.code() == Some(1);
            let out = stdout(&a);
            assert!(
                !out.contains("header") && !out.contains("CURSOR") && !out.contains("SEQ_LEASE"),
                "{name}: after repair:\n{out}"
            );
            // The repair says whether damaged frames stay, and is right; the dry run
            // said exactly what the repair did.
            let stays = "damaged frames stay in place";
            assert_eq!(done.contains(stays), damage_left, "{name}: {done}\n{out}");
            assert_eq!(
                as_repair(&plan),
                done.trim_end(),
                "{name}: dry run:\n{plan}\nrepair:\n{done}"
            );
        } else {
            // Refused (an unknown format version): exit 2, nothing changed.
            assert_eq!(code, Some(2), "{name}: {}", stderr(&a));
            assert_eq!(
                listing(dir),
                before,
                "{name}: a refused repair changed the directory"
            );
        }
    }
}
