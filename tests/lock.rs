//! Guarantee 8: one owner per directory. A second open (same process here; the kill -9
//! test covers a dead process's lock) is `Locked`; after the first shuts down, reopen
//! works.

mod common;

use common::*;
use tokio_util::sync::CancellationToken;
use walsink::{DurableSink, OpenError};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_open_is_locked_until_the_first_shuts_down()
-> Result<(), Box<dyn std::error::Error>> {
    let tmp = tempfile::tempdir()?;
    let mut cfg = small_config(tmp.path());
    cfg.shutdown_timeout = std::time::Duration::from_millis(10);
    let shutdown = CancellationToken::new();
    let (sink, handle) = DurableSink::<u64>::open(cfg, Stuck, shutdown.clone()).await?;
    sink.push(1).await?;

    let second =
        DurableSink::<u64>::open(small_config(tmp.path()), Stuck, CancellationToken::new()).await;
    match second {
        Err(OpenError::Locked { dir }) => assert_eq!(dir, tmp.path()),
        other => panic!("expected Locked, got {:?}", other.map(|_| ())),
    }

    shutdown.cancel();
    handle.join().await?;

    let log = new_log();
    let shutdown = CancellationToken::new();
    let (sink2, handle) = DurableSink::<u64>::open(
        small_config(tmp.path()),
        Collect::new(&log),
        shutdown.clone(),
    )
    .await?;
    sink2.flush().await?;
    assert_eq!(
        values(&log),
        vec![1],
        "the record of the first owner is delivered by the second"
    );
    shutdown.cancel();
    handle.join().await?;
    drop(sink);
    Ok(())
}
