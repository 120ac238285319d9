//! Records through a durable sink into a Kafka topic with the shipped `KafkaDrain`.
//!
//! ```text
//! cargo run --release --features kafka --example kafka -- --brokers HOST:PORT --topic T --records N --dir DIR
//! ```
//!
//! Pushes `N` records of about 100 bytes with ids `0..N` (JSON, keyed by id, the WAL
//! seq in the `walsink-seq` header), confirms them durable in groups of 1 000 with
//! `sync()`, waits until the broker acknowledged all of them, prints a summary and
//! exits 0. Killed (`kill -9`) and started again on the same `DIR`, it first delivers
//! what the killed run left; `--records 0` delivers only that and exits. Every line
//! `durable through id X` means the records up to `X` survive any crash from then on.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;
use walsink::drains::KafkaDrain;
use walsink::{DurableSink, SinkConfig};

/// One record: about 100 bytes as JSON.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Event {
    id: u64,
    kind: String,
    body: String,
}

fn event(id: u64) -> Event {
    Event {
        id,
        kind: "order.failed".into(),
        body: format!(
            "customer {:05} payment gateway timeout {:016x}",
            id % 7919,
            id.wrapping_mul(0x9e37_79b9_7f4a_7c15)
        ),
    }
}

struct Args {
    brokers: String,
    topic: String,
    records: u64,
    dir: PathBuf,
}

fn args() -> Result<Args, String> {
    let usage = "usage: kafka --brokers HOST:PORT --topic T --records N --dir DIR";
    let mut brokers = None;
    let mut topic = None;
    let mut records = None;
    let mut dir = None;
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let value = it
            .next()
            .ok_or_else(|| format!("{flag} needs a value; {usage}"))?;
        match flag.as_str() {
            "--brokers" => brokers = Some(value),
            "--topic" => topic = Some(value),
            "--records" => {
                records = Some(
                    value
                        .parse()
                        .map_err(|e| format!("--records {value}: {e}"))?,
                )
            }
            "--dir" => dir = Some(PathBuf::from(value)),
            other => return Err(format!("unknown flag {other}; {usage}")),
        }
    }
    Ok(Args {
        brokers: brokers.ok_or(usage)?,
        topic: topic.ok_or(usage)?,
        records: records.ok_or(usage)?,
        dir: dir.ok_or(usage)?,
    })
}

/// Records confirmed durable per `sync()`.
const GROUP: u64 = 1_000;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let a = args()?;
    let drain = KafkaDrain::<Event>::json(&a.brokers, &a.topic)
        .key(|e: &Event| Some(e.id.to_string().into_bytes()))
        .build()?;
    let errors = drain.errors();
    let shutdown = CancellationToken::new();
    let cfg = SinkConfig {
        batch_size: 1024,
        ..SinkConfig::new(&a.dir)
    };
    let (sink, handle) = DurableSink::open(cfg, drain, shutdown.clone()).await?;
    let recovered = sink.stats().pending;
    if recovered > 0 {
        println!("recovered {recovered} records an earlier run left; delivering them first");
    }
    let started = Instant::now();
    let mut last_report = Instant::now();
    for id in 0..a.records {
        sink.push(event(id)).await?;
        if (id + 1) % GROUP == 0 || id + 1 == a.records {
            sink.sync().await?;
            println!("durable through id {id}");
            if last_report.elapsed() >= Duration::from_secs(1) {
                let s = sink.stats();
                println!(
                    "  pushed {}, acknowledged by the broker through seq {}, pending {}",
                    id + 1,
                    s.acked_seq,
                    s.pending
                );
                last_report = Instant::now();
            }
        }
    }
    let pushed = Instant::now();
    sink.flush().await?;
    let done = started.elapsed();
    let s = sink.stats();
    drop(sink);
    let report = handle.join().await?;
    let e = errors.get();
    let total = a.records + recovered;
    println!(
        "delivered {total} records ({} pushed now, {recovered} recovered) to {} in {:.2} s: {:.0} records/s (push {:.2} s, then waiting for acknowledgements)",
        a.records,
        a.topic,
        done.as_secs_f64(),
        total as f64 / done.as_secs_f64().max(1e-9),
        (pushed - started).as_secs_f64(),
    );
    println!(
        "acked seq {}, left on disk {}, drain errors: retryable {}, config {}, permanent {}, fatal {} (producer rebuilt {}x), dead letters {}",
        report.acked_seq,
        report.left_on_disk,
        e.retryable,
        e.config,
        e.permanent,
        e.fatal,
        e.rebuilds,
        s.dead_lettered
    );
    if report.left_on_disk != 0 || s.dead_lettered != 0 {
        return Err("not every record was acknowledged".into());
    }
    Ok(())
}
