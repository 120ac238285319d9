//! Writes seed corpora for the fuzz targets from real WAL directories.
//!
//! ```text
//! cd fuzz && cargo run --features seeds --bin fuzz_seeds [OUT_DIR]   # default: seeds
//! ```
//!
//! Scenarios: records delivered (cursor moved, segments deleted), records left on disk
//! across several segments, and a large record. For each, every segment file seeds
//! `segment`, `CURSOR` and `SEQ_LEASE` seed `register`, and the whole directory packed
//! with `walsink::fuzzing::pack` seeds `directory`.

use std::path::Path;
use std::time::Duration;

use tokio_util::sync::CancellationToken;
use walsink::{Batch, DrainError, Durability, DurableSink, SinkConfig, SinkDrain};

struct Noop;
impl SinkDrain<Vec<u8>> for Noop {
    async fn write_batch(&mut self, _b: Batch<Vec<u8>>) -> Result<(), DrainError> {
        Ok(())
    }
}

struct Stuck;
impl SinkDrain<Vec<u8>> for Stuck {
    async fn write_batch(&mut self, _b: Batch<Vec<u8>>) -> Result<(), DrainError> {
        std::future::pending().await
    }
}

fn config(dir: &Path) -> SinkConfig {
    let mut c = SinkConfig::new(dir);
    c.segment_bytes = 4096;
    c.max_disk_bytes = 1 << 20;
    c.max_record_bytes = 8192;
    c.durability = Durability::Never;
    c.shutdown_timeout = Duration::from_millis(20);
    c
}

async fn scenario(
    dir: &Path,
    records: &[Vec<u8>],
    deliver: bool,
) -> Result<(), Box<dyn std::error::Error>> {
    let shutdown = CancellationToken::new();
    let (sink, handle) = if deliver {
        DurableSink::<Vec<u8>>::open(config(dir), Noop, shutdown.clone()).await?
    } else {
        DurableSink::<Vec<u8>>::open(config(dir), Stuck, shutdown.clone()).await?
    };
    for r in records {
        sink.push(r.clone()).await?;
    }
    sink.sync().await?;
    if deliver {
        sink.flush().await?;
    }
    shutdown.cancel();
    handle.join().await?;
    Ok(())
}

fn write_seeds(name: &str, wal: &Path, out: &Path) -> Result<(), Box<dyn std::error::Error>> {
    let mut files = Vec::new();
    let mut entries: Vec<_> = std::fs::read_dir(wal)?.collect::<Result<_, _>>()?;
    entries.sort_by_key(|e| e.file_name());
    for e in entries {
        let fname = e.file_name().to_string_lossy().into_owned();
        if fname == "LOCK" {
            continue;
        }
        let bytes = std::fs::read(e.path())?;
        let target = if fname.ends_with(".seg") {
            "segment"
        } else {
            "register"
        };
        std::fs::create_dir_all(out.join(target))?;
        // Keep segment seeds small: libFuzzer works best on short inputs.
        let seed = if bytes.len() > 4096 {
            bytes[..4096].to_vec()
        } else {
            bytes.clone()
        };
        std::fs::write(out.join(target).join(format!("{name}-{fname}")), seed)?;
        files.push((fname, bytes));
    }
    std::fs::create_dir_all(out.join("directory"))?;
    std::fs::write(
        out.join("directory").join(name),
        walsink::fuzzing::pack(&files),
    )?;
    Ok(())
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let out = std::path::PathBuf::from(
        std::env::args()
            .nth(1)
            .unwrap_or_else(|| "seeds".into()),
    );
    let tmp = std::env::temp_dir().join(format!("walsink-fuzz-seeds-{}", std::process::id()));
    let small: Vec<Vec<u8>> = (0..40u32)
        .map(|i| format!("record {i}").into_bytes())
        .collect();
    let many: Vec<Vec<u8>> = (0..600u32)
        .map(|i| vec![(i % 251) as u8; (i % 13) as usize])
        .collect();
    let large = vec![vec![7u8; 5000], b"after".to_vec()];
    for (name, records, deliver) in [
        ("delivered", &small, true),
        ("backlog", &many, false),
        ("large", &large, false),
    ] {
        let dir = tmp.join(name);
        scenario(&dir, records, deliver).await?;
        write_seeds(name, &dir, &out)?;
    }
    std::fs::remove_dir_all(&tmp)?;
    println!("seed corpora written under {}", out.display());
    Ok(())
}
