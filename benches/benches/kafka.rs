//! KafkaDrain into a local Kafka-protocol broker, beside the no-op drain in the same run.
//!
//! One producer pushes N events of about 100 B (`support::Event`, default `SinkConfig`)
//! and waits for `flush`, which returns once the drain acknowledged every record: for
//! the KafkaDrain that is once the broker acknowledged each message (idempotent
//! producer, `acks=all`, JSON payload, `walsink-seq` header). The same workload with the
//! no-op drain is measured alternately with it, so the ratio is the cost of reaching the
//! broker on this machine. Each KafkaDrain run writes to a fresh topic of 3 partitions.
//!
//! `WALSINK_KAFKA_BROKERS=127.0.0.1:19092 cargo bench --features kafka --bench kafka`
//! (`-- --test` for a small smoke run). Without `WALSINK_KAFKA_BROKERS` it prints
//! `SKIPPED` and exits 0, except under `CI`, where it fails.

mod support;

use std::time::{Duration, Instant};

use rdkafka::ClientConfig;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use support::{Event, Noop, event, rt};
use tokio_util::sync::CancellationToken;
use walsink::drains::KafkaDrain;
use walsink::{DurableSink, SinkConfig, SinkDrain};

/// Seconds from the first push until `flush` returned for `n` records.
fn run<D: SinkDrain<Event>>(rt: &tokio::runtime::Runtime, drain: D, n: u64) -> f64 {
    let tmp = tempfile::tempdir().expect("tempdir");
    let shutdown = CancellationToken::new();
    let (sink, handle) = rt
        .block_on(DurableSink::<Event>::open(
            SinkConfig::new(tmp.path()),
            drain,
            shutdown.clone(),
        ))
        .expect("open");
    let secs = rt.block_on(async {
        let start = Instant::now();
        for id in 0..n {
            sink.push(event(id)).await.expect("push");
        }
        sink.flush().await.expect("flush");
        start.elapsed().as_secs_f64()
    });
    let stats = sink.stats();
    assert_eq!(
        stats.dead_lettered, 0,
        "no record may be dead-lettered: {stats:?}"
    );
    shutdown.cancel();
    rt.block_on(handle.join()).expect("join");
    secs
}

fn create_topic(rt: &tokio::runtime::Runtime, brokers: &str, topic: &str) {
    let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .create()
        .expect("admin client");
    let results = rt
        .block_on(admin.create_topics(
            &[NewTopic::new(topic, 3, TopicReplication::Fixed(1))],
            &AdminOptions::new().operation_timeout(Some(Duration::from_secs(10))),
        ))
        .expect("create topics");
    for r in results {
        r.unwrap_or_else(|(t, e)| panic!("create topic {t}: {e}"));
    }
}

fn main() {
    let smoke = std::env::args().any(|a| a == "--test");
    let brokers = match std::env::var("WALSINK_KAFKA_BROKERS") {
        Ok(b) if !b.is_empty() => b,
        _ if std::env::var_os("CI").is_some() => {
            panic!("CI must run the Kafka bench against a broker: set WALSINK_KAFKA_BROKERS")
        }
        _ => {
            println!(
                "SKIPPED kafka bench: no broker (set WALSINK_KAFKA_BROKERS=HOST:PORT; .ci/run starts tansu)"
            );
            return;
        }
    };
    let rt = rt();
    let n: u64 = if smoke { 2_000 } else { 100_000 };
    let reps = if smoke { 1 } else { 3 };
    let mut noop = Vec::new();
    let mut kafka = Vec::new();
    for rep in 0..reps {
        noop.push(run(&rt, Noop, n));
        let topic = format!("walsink-bench-{}-{rep}", std::process::id());
        create_topic(&rt, &brokers, &topic);
        let mut builder = KafkaDrain::<Event>::json(&brokers, &topic);
        // Another librdkafka setting for an experiment: WALSINK_BENCH_KAFKA_SET=key=value.
        if let Ok(kv) = std::env::var("WALSINK_BENCH_KAFKA_SET")
            && let Some((k, v)) = kv.split_once('=')
        {
            builder = builder.set(k, v);
        }
        let drain = builder.build().expect("KafkaDrain");
        let errors = drain.errors();
        kafka.push(run(&rt, drain, n));
        println!(
            "run {rep}: no-op {:.0} rec/s, KafkaDrain {:.0} rec/s, drain errors {:?}",
            n as f64 / noop[rep],
            n as f64 / kafka[rep],
            errors.get()
        );
    }
    let med = |mut v: Vec<f64>| {
        v.sort_by(|a, b| a.total_cmp(b));
        v[v.len() / 2]
    };
    let (noop, kafka) = (n as f64 / med(noop), n as f64 / med(kafka));
    println!(
        "== {n} events of ~100 B, push then flush, median of {reps}: no-op drain {noop:.0} rec/s | KafkaDrain ({brokers}) {kafka:.0} rec/s | KafkaDrain/no-op {:.3}",
        kafka / noop
    );
}
