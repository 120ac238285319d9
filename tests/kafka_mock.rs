//! `KafkaDrain` against librdkafka's in-process mock cluster: every record arrives once
//! acknowledged, in order per partition, with its seq header; produce errors of each
//! class take the path their class says (retry, dead letter, retry with a loud log,
//! rebuild the producer); brokers down then up lose nothing.
#![cfg(feature = "kafka")]

mod common;

use std::collections::BTreeMap;
use std::time::Duration;

use common::kafka::{Got, read_topic};
use rdkafka::bindings::rd_kafka_resp_err_t as RespErr;
use rdkafka::mocking::MockCluster;
use rdkafka::types::RDKafkaApiKey;
use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;
use walsink::drains::KafkaDrain;
use walsink::drains::kafka::dead_letter_headers as dlq;
use walsink::{DeadLetter, DurableSink, RetryPolicy, SinkConfig};

const READ_WITHIN: Duration = Duration::from_secs(30);

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Event {
    id: u64,
    body: String,
}

fn event(id: u64) -> Event {
    Event {
        id,
        body: format!("event {id}"),
    }
}

fn config(dir: &std::path::Path) -> SinkConfig {
    SinkConfig {
        batch_size: 64,
        retry: RetryPolicy {
            initial_delay: Duration::from_millis(5),
            max_delay: Duration::from_millis(50),
            multiplier: 2.0,
        },
        ..SinkConfig::new(dir)
    }
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

fn events_of(got: &[Got]) -> Vec<(Event, u64)> {
    got.iter()
        .map(|g| {
            let e: Event = serde_json::from_slice(&g.payload).expect("json payload");
            (e, g.seq())
        })
        .collect()
}

/// Each id arrived, with the seq it had in the WAL (pushes 0..n into a fresh sink get
/// seqs 1..=n), and within each partition in seq order.
fn assert_all_arrived(got: &[Got], n: u64) {
    let mut first: BTreeMap<u64, u64> = BTreeMap::new();
    for (e, seq) in events_of(got) {
        assert_eq!(seq, e.id + 1, "{e:?} under the wrong seq");
        first.entry(e.id).or_insert(seq);
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
    let mock = MockCluster::new(3).expect("mock cluster");
    mock.create_topic("events", 3, 1).expect("topic");
    let brokers = mock.bootstrap_servers();
    let tmp = tempfile::tempdir().expect("tmp");
    let drain = drain(&brokers, "events").build().expect("drain");
    let errors = drain.errors();
    let (sink, handle) = DurableSink::open(config(tmp.path()), drain, CancellationToken::new())
        .await
        .expect("open");
    for id in 0..1000 {
        sink.push(event(id)).await.expect("push");
    }
    sink.flush().await.expect("flush");
    drop(sink);
    handle.join().await.expect("join");
    let got = read_topic(&brokers, "events", 3, READ_WITHIN);
    assert_eq!(got.len(), 1000, "once each: no error, no redelivery");
    assert_all_arrived(&got, 1000);
    assert!(got.iter().all(|g| g.key.is_some()));
    assert_eq!(errors.get().retryable, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retryable_produce_errors_are_delivered_again_until_acknowledged() {
    let mock = MockCluster::new(1).expect("mock cluster");
    mock.create_topic("events", 1, 1).expect("topic");
    let brokers = mock.bootstrap_servers();
    // More failures than librdkafka retries within message.timeout.ms: some reach
    // the drain as retryable errors, and the sink delivers those batches again.
    mock.request_errors(
        RDKafkaApiKey::Produce,
        &[RespErr::RD_KAFKA_RESP_ERR_NOT_ENOUGH_REPLICAS; 200],
    );
    let tmp = tempfile::tempdir().expect("tmp");
    let drain = drain(&brokers, "events")
        .set("message.timeout.ms", "300")
        .build()
        .expect("drain");
    let errors = drain.errors();
    let (sink, handle) = DurableSink::open(config(tmp.path()), drain, CancellationToken::new())
        .await
        .expect("open");
    for id in 0..200 {
        sink.push(event(id)).await.expect("push");
    }
    sink.flush().await.expect("flush");
    let stats = sink.stats();
    drop(sink);
    handle.join().await.expect("join");
    assert!(errors.get().retryable > 0, "{:?}", errors.get());
    assert!(stats.retries > 0);
    assert_eq!(stats.rejected, 0, "a retryable error is never poison");
    let got = read_topic(&brokers, "events", 1, READ_WITHIN);
    assert_all_arrived(&got, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn authorization_errors_are_retried_loudly_never_dead_lettered() {
    let mock = MockCluster::new(1).expect("mock cluster");
    mock.create_topic("events", 1, 1).expect("topic");
    let brokers = mock.bootstrap_servers();
    mock.request_errors(
        RDKafkaApiKey::Produce,
        &[RespErr::RD_KAFKA_RESP_ERR_TOPIC_AUTHORIZATION_FAILED; 5],
    );
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
    let dead = sink.dead_letters().count().await.expect("count");
    let stats = sink.stats();
    drop(sink);
    handle.join().await.expect("join");
    assert!(errors.get().config > 0, "{:?}", errors.get());
    assert_eq!(
        dead, 0,
        "an ACL problem sent records to the dead-letter store"
    );
    assert_eq!(stats.rejected, 0);
    let got = read_topic(&brokers, "events", 1, READ_WITHIN);
    assert_all_arrived(&got, 50);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_record_over_message_max_bytes_is_dead_lettered_alone() {
    let mock = MockCluster::new(1).expect("mock cluster");
    mock.create_topic("events", 1, 1).expect("topic");
    let brokers = mock.bootstrap_servers();
    let tmp = tempfile::tempdir().expect("tmp");
    let drain = drain(&brokers, "events")
        .set("message.max.bytes", "4000")
        .build()
        .expect("drain");
    let errors = drain.errors();
    let (sink, handle) = DurableSink::open(config(tmp.path()), drain, CancellationToken::new())
        .await
        .expect("open");
    for id in 0..100 {
        let mut e = event(id);
        if id == 37 {
            e.body = "x".repeat(10_000);
        }
        sink.push(e).await.expect("push");
    }
    sink.flush().await.expect("flush");
    let dead = sink
        .dead_letters()
        .list(0, 10)
        .await
        .expect("list dead letters");
    drop(sink);
    handle.join().await.expect("join");
    assert_eq!(dead.len(), 1, "{dead:?}");
    assert_eq!(dead[0].seq(), 38);
    assert!(
        dead[0].error().contains("message.max.bytes"),
        "{}",
        dead[0].error()
    );
    assert!(errors.get().permanent >= 1);
    let got = read_topic(&brokers, "events", 1, READ_WITHIN);
    let ids: Vec<u64> = events_of(&got).iter().map(|(e, _)| e.id).collect();
    assert_eq!(
        ids,
        (0..100).filter(|&i| i != 37).collect::<Vec<_>>(),
        "the others arrived, in order, once: the bisection did not produce again what the broker had acknowledged"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn brokers_down_then_up_lose_nothing() {
    let mock = MockCluster::new(2).expect("mock cluster");
    mock.create_topic("events", 2, 1).expect("topic");
    let brokers = mock.bootstrap_servers();
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
    let mock = MockCluster::new(1).expect("mock cluster");
    mock.create_topic("events", 1, 1).expect("topic");
    mock.create_topic("events-dlq", 1, 1).expect("topic");
    let brokers = mock.bootstrap_servers();
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
    assert!(g.header(dlq::FIRST_FAILED_AT_MS).is_some());
    assert!(g.header(dlq::DEAD_LETTERED_AT_MS).is_some());
    assert_eq!(g.seq(), 1, "the DLQ sink's own seq");
    let back: Event = l.decode().expect("decodes");
    assert_eq!(back.id, 4);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fatal_idempotence_error_rebuilds_the_producer_and_delivers_from_the_wal() {
    let mock = MockCluster::new(1).expect("mock cluster");
    mock.create_topic("events", 1, 1).expect("topic");
    let brokers = mock.bootstrap_servers();
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
    // An out-of-order sequence number is fatal to an idempotent producer.
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
