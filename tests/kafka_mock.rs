//! `KafkaDrain` against librdkafka's in-process mock cluster: every record arrives once
//! acknowledged, in order per partition, with its seq header; produce errors of each
//! class take the path their class says (retry, dead letter, retry with a loud log,
//! rebuild the producer); brokers down then up lose nothing.
#![cfg(feature = "kafka")]

mod common;

use std::collections::BTreeMap;
use std::time::Duration;

use common::kafka::{Event, Got, event, ids_and_seqs, kafka_sink_config, read_topic};
use rdkafka::bindings::rd_kafka_resp_err_t as RespErr;
use rdkafka::mocking::MockCluster;
use rdkafka::producer::DefaultProducerContext;
use rdkafka::types::RDKafkaApiKey;
use tokio_util::sync::CancellationToken;
use walsink::drains::KafkaDrain;
use walsink::drains::kafka::dead_letter_headers as dlq;
use walsink::{DeadLetter, DeadLetterStore, DurableSink};

const READ_WITHIN: Duration = Duration::from_secs(30);

fn config(dir: &std::path::Path) -> walsink::SinkConfig {
    kafka_sink_config(dir, 64)
}

/// A drain to `topic` on the mock cluster, keyed by id (so order per key is order
/// per partition), with librdkafka's own retries short.
fn drain(brokers: &str, topic: &str) -> walsink::drains::kafka::KafkaDrainBuilder<Event> {
    KafkaDrain::<Event>::json(brokers, topic)
        .key(|e: &Event| Some((e.id % 7).to_string().into_bytes()))
        .set("retry.backoff.ms", "10")
        .set("retry.backoff.max.ms", "50")
        .set("message.timeout.ms", "2000")
}

/// A mock cluster of `brokers` brokers with `topics` (name, partitions) created.
fn cluster(
    brokers: i32,
    topics: &[(&str, i32)],
) -> (MockCluster<'static, DefaultProducerContext>, String) {
    let mock = MockCluster::new(brokers).expect("mock cluster");
    for (t, partitions) in topics {
        mock.create_topic(t, *partitions, 1).expect("topic");
    }
    let bootstrap = mock.bootstrap_servers();
    (mock, bootstrap)
}

/// A sink on `dir` through `drain`: pushes `events`, waits until the broker
/// acknowledged all (or they were dead-lettered), shuts down; the stats at the end.
async fn deliver(
    dir: &std::path::Path,
    drain: KafkaDrain<Event>,
    events: impl IntoIterator<Item = Event>,
) -> walsink::SinkStats {
    let (sink, handle) = DurableSink::open(config(dir), drain, CancellationToken::new())
        .await
        .expect("open");
    for e in events {
        sink.push(e).await.expect("push");
    }
    sink.flush().await.expect("flush");
    let stats = sink.stats();
    drop(sink);
    handle.join().await.expect("join");
    stats
}

/// Each id arrived, with the seq it had in the WAL (pushes 0..n into a fresh sink get
/// seqs 1..=n), and within each partition in seq order.
fn assert_all_arrived(got: &[Got], n: u64) {
    let mut first: BTreeMap<u64, u64> = BTreeMap::new();
    for (id, seq) in ids_and_seqs(got) {
        assert_eq!(seq, id + 1, "record {id} under the wrong seq");
        first.entry(id).or_insert(seq);
    }
    assert_eq!(
        first.keys().copied().collect::<Vec<_>>(),
        (0..n).collect::<Vec<_>>(),
        "every record arrived"
    );
    let mut by_partition: BTreeMap<i32, Vec<&Got>> = BTreeMap::new();
    for g in got {
        by_partition.entry(g.partition).or_default().push(g);
    }
    for (p, mut msgs) in by_partition {
        msgs.sort_by_key(|g| g.offset);
        let seqs: Vec<u64> = msgs.iter().map(|g| g.seq()).collect();
        let mut sorted = seqs.clone();
        sorted.sort_unstable();
        assert_eq!(seqs, sorted, "partition {p} out of seq order");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_record_arrives_once_in_order_per_partition_with_its_seq() {
    let (_mock, brokers) = cluster(3, &[("events", 3)]);
    let tmp = tempfile::tempdir().expect("tmp");
    let drain = drain(&brokers, "events").build().expect("drain");
    let errors = drain.errors();
    deliver(tmp.path(), drain, (0..1000).map(event)).await;
    let got = read_topic(&brokers, "events", 3, READ_WITHIN);
    assert_eq!(got.len(), 1000, "once each: no error, no redelivery");
    assert_all_arrived(&got, 1000);
    assert!(got.iter().all(|g| g.key.is_some()));
    assert_eq!(errors.get().retryable, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retryable_produce_errors_are_delivered_again_until_acknowledged() {
    let (mock, brokers) = cluster(1, &[("events", 1)]);
    // librdkafka retries a request at most every retry.backoff.ms (10 ms), with at
    // most 5 requests in flight: within message.timeout.ms (200 ms) it can use up at
    // most ~100 injected errors, so with 300 its messages time out and reach the
    // drain as retryable errors, and the sink delivers those batches again until the
    // errors run out.
    mock.request_errors(
        RDKafkaApiKey::Produce,
        &[RespErr::RD_KAFKA_RESP_ERR_NOT_ENOUGH_REPLICAS; 300],
    );
    let tmp = tempfile::tempdir().expect("tmp");
    let drain = drain(&brokers, "events")
        .set("message.timeout.ms", "200")
        .build()
        .expect("drain");
    let errors = drain.errors();
    let stats = deliver(tmp.path(), drain, (0..200).map(event)).await;
    assert!(errors.get().retryable > 0, "{:?}", errors.get());
    assert!(stats.retries > 0);
    assert_eq!(stats.rejected, 0, "a retryable error is never poison");
    let got = read_topic(&brokers, "events", 1, READ_WITHIN);
    assert_all_arrived(&got, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn authorization_errors_are_retried_loudly_never_dead_lettered() {
    let (mock, brokers) = cluster(1, &[("events", 1)]);
    mock.request_errors(
        RDKafkaApiKey::Produce,
        &[RespErr::RD_KAFKA_RESP_ERR_TOPIC_AUTHORIZATION_FAILED; 5],
    );
    let tmp = tempfile::tempdir().expect("tmp");
    let drain = drain(&brokers, "events").build().expect("drain");
    let errors = drain.errors();
    let stats = deliver(tmp.path(), drain, (0..50).map(event)).await;
    assert!(errors.get().config > 0, "{:?}", errors.get());
    assert_eq!(
        stats.dead_lettered, 0,
        "an ACL problem sent records to the dead-letter store"
    );
    assert_eq!(stats.rejected, 0);
    let got = read_topic(&brokers, "events", 1, READ_WITHIN);
    assert_all_arrived(&got, 50);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_count_deliveries_and_errors_by_class() {
    // The only test in this binary that installs a recorder (process-wide).
    let recorder = metrics_exporter_prometheus::PrometheusBuilder::new()
        .install_recorder()
        .expect("recorder");
    let (mock, brokers) = cluster(1, &[("events", 1)]);
    mock.request_errors(
        RDKafkaApiKey::Produce,
        &[RespErr::RD_KAFKA_RESP_ERR_TOPIC_AUTHORIZATION_FAILED; 3],
    );
    let tmp = tempfile::tempdir().expect("tmp");
    let drain = drain(&brokers, "events")
        .metric_prefix("kmock")
        .build()
        .expect("drain");
    let errors = drain.errors();
    deliver(tmp.path(), drain, (0..20).map(event)).await;
    let text = recorder.render();
    let value = |line_start: &str| -> f64 {
        text.lines()
            .find(|l| l.starts_with(line_start))
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("no {line_start} in:\n{text}"))
    };
    let config = value("kmock_kafka_errors_total{class=\"config\"}");
    assert!(config >= 1.0, "{text}");
    assert_eq!(config as u64, errors.get().config, "{text}");
    assert_eq!(value("kmock_kafka_errors_total{class=\"permanent\"}"), 0.0);
    assert!(value("kmock_kafka_delivery_seconds_count") >= 1.0, "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_record_over_message_max_bytes_is_dead_lettered_alone() {
    let (_mock, brokers) = cluster(1, &[("events", 1)]);
    let tmp = tempfile::tempdir().expect("tmp");
    let drain = drain(&brokers, "events")
        .set("message.max.bytes", "4000")
        .build()
        .expect("drain");
    let errors = drain.errors();
    let events = (0..100).map(|id| {
        let mut e = event(id);
        if id == 37 {
            e.body = "x".repeat(10_000);
        }
        e
    });
    deliver(tmp.path(), drain, events).await;
    let dead = DeadLetterStore::open(tmp.path())
        .await
        .expect("store")
        .list(0, 10)
        .await
        .expect("list dead letters");
    assert_eq!(dead.len(), 1, "{dead:?}");
    assert_eq!(dead[0].seq(), 38);
    assert!(
        dead[0].error().contains("message.max.bytes"),
        "{}",
        dead[0].error()
    );
    assert_eq!(
        errors.get().permanent,
        1,
        "one record refused for good, counted once however deep the bisection"
    );
    let got = read_topic(&brokers, "events", 1, READ_WITHIN);
    let ids: Vec<u64> = ids_and_seqs(&got).iter().map(|&(id, _)| id).collect();
    assert_eq!(
        ids,
        (0..100).filter(|&i| i != 37).collect::<Vec<_>>(),
        "the others arrived, in order, once: the bisection did not produce again what the broker had acknowledged"
    );
}

/// The broker refuses a produce request for good (message too large, as a broker
/// with a lower `message.max.bytes` says): the batch is bisected, the halves go
/// through once the refusal is spent, and nothing good is dead-lettered or sent twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broker_side_permanent_refusal_is_bisected_and_nothing_good_is_lost() {
    let (mock, brokers) = cluster(1, &[("events", 1)]);
    let tmp = tempfile::tempdir().expect("tmp");
    let drain = drain(&brokers, "events").build().expect("drain");
    let errors = drain.errors();
    mock.request_errors(
        RDKafkaApiKey::Produce,
        &[RespErr::RD_KAFKA_RESP_ERR_MSG_SIZE_TOO_LARGE],
    );
    let stats = deliver(tmp.path(), drain, (0..40).map(event)).await;
    assert!(
        stats.write_errors >= 1,
        "the refusal reached the sink: {stats:?}"
    );
    assert_eq!(
        errors.get().permanent,
        0,
        "no record was refused for good: {:?}",
        errors.get()
    );
    assert_eq!(stats.dead_lettered, 0, "{stats:?}");
    let got = read_topic(&brokers, "events", 1, READ_WITHIN);
    assert_eq!(got.len(), 40, "once each");
    assert_all_arrived(&got, 40);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn brokers_down_then_up_lose_nothing() {
    let (mock, brokers) = cluster(2, &[("events", 2)]);
    let tmp = tempfile::tempdir().expect("tmp");
    let drain = drain(&brokers, "events")
        .set("message.timeout.ms", "500")
        .build()
        .expect("drain");
    let errors = drain.errors();
    let (sink, handle) = DurableSink::open(config(tmp.path()), drain, CancellationToken::new())
        .await
        .expect("open");
    for id in 0..100 {
        sink.push(event(id)).await.expect("push");
    }
    sink.flush().await.expect("flush");
    for b in 1..=2 {
        mock.broker_down(b).expect("down");
    }
    for id in 100..300 {
        sink.push(event(id)).await.expect("push while down");
    }
    sink.sync().await.expect("durable while down");
    // Wait (bounded) until the outage reached the drain as retryable errors.
    let mut waited = 0;
    while errors.get().retryable == 0 {
        assert!(
            waited < 600,
            "no retryable error within 30 s of the brokers going down"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
        waited += 1;
    }
    for b in 1..=2 {
        mock.broker_up(b).expect("up");
    }
    sink.flush().await.expect("flush after the outage");
    drop(sink);
    handle.join().await.expect("join");
    let got = read_topic(&brokers, "events", 2, READ_WITHIN);
    assert_all_arrived(&got, 300);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dead_letters_go_to_a_dlq_topic_with_their_context_as_headers() {
    let (_mock, brokers) = cluster(1, &[("events", 1), ("events-dlq", 1)]);
    let tmp = tempfile::tempdir().expect("tmp");

    // A sink whose drain rejects one record for good: it becomes a dead letter.
    let (sink, handle) = DurableSink::open(
        config(&tmp.path().join("events")),
        drain(&brokers, "events")
            .set("message.max.bytes", "4000")
            .build()
            .expect("drain"),
        CancellationToken::new(),
    )
    .await
    .expect("open");
    for id in 0..10 {
        let mut e = event(id);
        if id == 4 {
            e.body = "y".repeat(8_000);
        }
        sink.push(e).await.expect("push");
    }
    sink.flush().await.expect("flush");
    let letters: Vec<DeadLetter> = sink.dead_letters().list(0, 100).await.expect("list");
    assert_eq!(letters.len(), 1);

    // Dead letters through their own durable sink to the DLQ topic.
    let dlq_drain = KafkaDrain::dead_letters(&brokers, "events-dlq")
        .build()
        .expect("dlq drain");
    let (dlq_sink, dlq_handle) = DurableSink::<DeadLetter>::open(
        config(&tmp.path().join("dlq")),
        dlq_drain,
        CancellationToken::new(),
    )
    .await
    .expect("open dlq sink");
    for l in &letters {
        dlq_sink
            .push_durable(l.clone())
            .await
            .expect("push dead letter");
    }
    dlq_sink.flush().await.expect("flush dlq");
    drop((sink, dlq_sink));
    handle.join().await.expect("join");
    dlq_handle.join().await.expect("join dlq");

    let got = read_topic(&brokers, "events-dlq", 1, READ_WITHIN);
    assert_eq!(got.len(), 1);
    let (g, l) = (&got[0], &letters[0]);
    assert_eq!(g.payload, l.payload(), "the record's bytes, unchanged");
    assert_eq!(
        g.key.as_deref(),
        Some(b"5".as_slice()),
        "keyed by original seq"
    );
    assert_eq!(g.header(dlq::ORIGINAL_SEQ).as_deref(), Some("5"));
    assert_eq!(g.header(dlq::REASON).as_deref(), Some("rejected"));
    assert_eq!(g.header(dlq::ERROR).as_deref(), Some(l.error()));
    assert_eq!(g.header(dlq::ATTEMPTS), Some(l.attempts().to_string()));
    assert_eq!(g.header(dlq::CODEC_ID).as_deref(), Some("1"));
    let ms = |t: std::time::SystemTime| {
        t.duration_since(std::time::UNIX_EPOCH)
            .expect("after the epoch")
            .as_millis()
            .to_string()
    };
    assert_eq!(
        g.header(dlq::FIRST_FAILED_AT_MS),
        Some(ms(l.first_failed_at()))
    );
    assert_eq!(
        g.header(dlq::DEAD_LETTERED_AT_MS),
        Some(ms(l.dead_lettered_at()))
    );
    assert_eq!(g.seq(), 1, "the DLQ sink's own seq");
    let back: Event = l.decode().expect("decodes");
    assert_eq!(back.id, 4);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fatal_idempotence_error_rebuilds_the_producer_and_delivers_from_the_wal() {
    let (mock, brokers) = cluster(1, &[("events", 1)]);
    let tmp = tempfile::tempdir().expect("tmp");
    let drain = drain(&brokers, "events").build().expect("drain");
    let errors = drain.errors();
    let (sink, handle) = DurableSink::open(config(tmp.path()), drain, CancellationToken::new())
        .await
        .expect("open");
    for id in 0..50 {
        sink.push(event(id)).await.expect("push");
    }
    sink.flush().await.expect("flush");
    // An out-of-order sequence number is fatal to an idempotent, non-transactional
    // producer in the bundled librdkafka (2.12.1, pinned by Cargo.lock).
    mock.request_errors(
        RDKafkaApiKey::Produce,
        &[RespErr::RD_KAFKA_RESP_ERR_OUT_OF_ORDER_SEQUENCE_NUMBER],
    );
    for id in 50..100 {
        sink.push(event(id)).await.expect("push");
    }
    sink.flush().await.expect("flush after the fatal error");
    let stats = sink.stats();
    drop(sink);
    handle.join().await.expect("join");
    let e = errors.get();
    assert!(e.fatal >= 1 && e.rebuilds >= 1, "{e:?}");
    assert_eq!(stats.rejected, 0);
    let got = read_topic(&brokers, "events", 1, READ_WITHIN);
    assert_all_arrived(&got, 100);
}
