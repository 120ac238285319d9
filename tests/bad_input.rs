//! Bad input gets a clear error and loses nothing: an oversize record is refused and the
//! sink keeps working; a config that cannot work is refused at open naming the field; a
//! `dir` that is a file or cannot be created is a clear `OpenError`.

mod common;

use common::*;
use tokio_util::sync::CancellationToken;
use walsink::{DurableSink, OpenError, SinkError};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_record_over_max_record_bytes_is_too_large_and_the_sink_keeps_working()
-> Result<(), Box<dyn std::error::Error>> {
    let tmp = tempfile::tempdir()?;
    let mut cfg = small_config(tmp.path());
    cfg.max_record_bytes = 100;
    let got = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let shutdown = CancellationToken::new();
    let (sink, handle) = DurableSink::<Vec<u8>>::open_with_codec(
        cfg,
        walsink::RawCodec,
        CollectBytes(got.clone()),
        shutdown.clone(),
    )
    .await?;
    sink.try_push(vec![0u8; 100])?;
    assert_eq!(
        sink.try_push(vec![0u8; 101]),
        Err(SinkError::TooLarge {
            len: 101,
            limit: 100
        })
    );
    assert_eq!(
        sink.push(vec![0u8; 5000]).await,
        Err(SinkError::TooLarge {
            len: 5000,
            limit: 100
        })
    );
    sink.try_push(vec![7u8; 3])?;
    sink.flush().await?;
    let lens: Vec<usize> = got
        .lock()
        .map_err(|e| e.to_string())?
        .iter()
        .map(Vec::len)
        .collect();
    assert_eq!(lens, vec![100, 3]);
    assert_eq!(sink.dropped(), 0, "a refused record is not a drop");
    shutdown.cancel();
    handle.join().await?;
    Ok(())
}

#[tokio::test]
async fn configs_that_cannot_work_are_refused_naming_the_field()
-> Result<(), Box<dyn std::error::Error>> {
    let tmp = tempfile::tempdir()?;
    let base = small_config(tmp.path());
    let mut zero_batch = base.clone();
    zero_batch.batch_size = 0;
    let mut zero_queue = base.clone();
    zero_queue.queue_capacity = 0;
    let mut tiny_budget = base.clone();
    tiny_budget.max_disk_bytes = base.segment_bytes * 2 - 1;
    for (cfg, field) in [
        (zero_batch, "batch_size"),
        (zero_queue, "queue_capacity"),
        (tiny_budget, "max_disk_bytes"),
    ] {
        match DurableSink::<u64>::open(cfg, Stuck, CancellationToken::new()).await {
            Err(e @ OpenError::InvalidConfig { .. }) => {
                assert!(
                    e.to_string().contains(field),
                    "message {e} should name {field}"
                );
            }
            other => panic!(
                "{field}: expected InvalidConfig, got {:?}",
                other.map(|_| ())
            ),
        }
    }
    assert!(
        std::fs::read_dir(tmp.path())?.next().is_none(),
        "a refused config touches nothing"
    );
    Ok(())
}

#[tokio::test]
async fn a_dir_that_is_a_file_is_a_clear_error() -> Result<(), Box<dyn std::error::Error>> {
    let tmp = tempfile::tempdir()?;
    let file = tmp.path().join("file");
    std::fs::write(&file, b"x")?;
    match DurableSink::<u64>::open(small_config(&file), Stuck, CancellationToken::new()).await {
        Err(OpenError::NotADirectory { path }) => assert_eq!(path, file),
        other => panic!("expected NotADirectory, got {:?}", other.map(|_| ())),
    }
    assert_eq!(std::fs::read(&file)?, b"x", "the file is untouched");
    match DurableSink::<u64>::open(
        small_config(&file.join("sub")),
        Stuck,
        CancellationToken::new(),
    )
    .await
    {
        Err(OpenError::NotADirectory { .. }) => {}
        other => panic!(
            "expected NotADirectory for a path below a file, got {:?}",
            other.map(|_| ())
        ),
    }
    Ok(())
}

#[tokio::test]
async fn a_dir_that_cannot_be_created_is_a_clear_error() -> Result<(), Box<dyn std::error::Error>> {
    use std::os::unix::fs::PermissionsExt;
    let tmp = tempfile::tempdir()?;
    let ro = tmp.path().join("ro");
    std::fs::create_dir(&ro)?;
    std::fs::set_permissions(&ro, std::fs::Permissions::from_mode(0o500))?;
    // Root ignores mode bits; then use a place no one may create directories in.
    let target = if std::fs::write(ro.join("probe"), b"").is_err() {
        ro.join("wal")
    } else {
        std::path::PathBuf::from(format!("/sys/walsink-test-{}", std::process::id()))
    };
    match DurableSink::<u64>::open(small_config(&target), Stuck, CancellationToken::new()).await {
        Err(e @ OpenError::Io { .. }) => {
            assert!(
                e.to_string().contains(&target.display().to_string()),
                "{e} should name the path"
            );
        }
        Ok(_) => panic!(
            "{} could be created on this machine: nothing was tested",
            target.display()
        ),
        Err(other) => panic!("expected Io, got {other}"),
    }
    Ok(())
}
