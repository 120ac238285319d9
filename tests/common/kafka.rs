//! Reading a topic back, for the Kafka tests (mock cluster and real broker).

use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{Headers, Message};
use rdkafka::{ClientConfig, Offset, TopicPartitionList};

/// One message as read back.
#[derive(Debug, Clone)]
pub struct Got {
    pub partition: i32,
    pub offset: i64,
    pub key: Option<Vec<u8>>,
    pub payload: Vec<u8>,
    pub headers: Vec<(String, Vec<u8>)>,
}

impl Got {
    /// A header's value as text.
    pub fn header(&self, key: &str) -> Option<String> {
        self.headers
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| String::from_utf8_lossy(v).into_owned())
    }

    /// The `walsink-seq` header, parsed.
    pub fn seq(&self) -> u64 {
        self.header("walsink-seq")
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| panic!("no walsink-seq header: {self:?}"))
    }
}

/// Every message in `topic` (partitions `0..partitions`), read until the partitions'
/// high watermarks are reached (exact on librdkafka's mock cluster). `within` only
/// bounds a broken run.
pub fn read_topic(brokers: &str, topic: &str, partitions: i32, within: Duration) -> Vec<Got> {
    let consumer = consumer(brokers);
    let mut expected = 0i64;
    for p in 0..partitions {
        let (low, high) = consumer
            .fetch_watermarks(topic, p, within)
            .expect("watermarks");
        expected += high - low;
    }
    let mut n = 0i64;
    read_until(
        consumer,
        topic,
        partitions,
        within,
        expected == 0,
        move |_| {
            n += 1;
            n >= expected
        },
    )
}

/// Messages of `topic` read until `arrived`, told of each new message, says every
/// message the test waits for is there, then until the topic has been quiet for a second (so that duplicates
/// delivered with them are seen too). For brokers whose watermarks lag what a
/// consumer reads (tansu 0.6 reports fewer than it serves). `within` bounds a broken
/// run.
pub fn read_topic_until(
    brokers: &str,
    topic: &str,
    partitions: i32,
    within: Duration,
    arrived: impl FnMut(&Got) -> bool,
) -> Vec<Got> {
    let mut got = read_until(consumer(brokers), topic, partitions, within, false, arrived);
    got.sort_by_key(|g| (g.partition, g.offset));
    got
}

fn consumer(brokers: &str) -> BaseConsumer {
    ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("group.id", "walsink-tests")
        .set("enable.auto.commit", "false")
        // tansu 0.6 reports high watermarks below what it serves (measured: 19 459
        // against 20 000 read): should a fetch ever be answered "out of range", start
        // over rather than jump to the end ("latest"); messages read twice are
        // dropped by (partition, offset).
        .set("auto.offset.reset", "earliest")
        .create()
        .expect("consumer")
}

fn read_until(
    consumer: BaseConsumer,
    topic: &str,
    partitions: i32,
    within: Duration,
    mut done: bool,
    mut arrived: impl FnMut(&Got) -> bool,
) -> Vec<Got> {
    let mut tpl = TopicPartitionList::new();
    for p in 0..partitions {
        tpl.add_partition_offset(topic, p, Offset::Beginning)
            .expect("partition");
    }
    consumer.assign(&tpl).expect("assign");
    let deadline = Instant::now() + within;
    let mut got = Vec::new();
    let mut seen = std::collections::BTreeSet::new();
    let mut quiet_since: Option<Instant> = None;
    loop {
        if done {
            let since = *quiet_since.get_or_insert_with(Instant::now);
            if since.elapsed() >= Duration::from_secs(1) {
                return got;
            }
        }
        assert!(
            Instant::now() < deadline,
            "read {} messages of {topic} within {within:?}, and not all the test waits for",
            got.len()
        );
        let Some(m) = consumer.poll(Duration::from_millis(100)) else {
            continue;
        };
        let m = m.expect("consume");
        if !seen.insert((m.partition(), m.offset())) {
            continue;
        }
        quiet_since = None;
        let headers = m
            .headers()
            .map(|h| {
                (0..h.count())
                    .map(|i| {
                        let h = h.get(i);
                        (h.key.to_owned(), h.value.unwrap_or_default().to_vec())
                    })
                    .collect()
            })
            .unwrap_or_default();
        let g = Got {
            partition: m.partition(),
            offset: m.offset(),
            key: m.key().map(<[u8]>::to_vec),
            payload: m.payload().unwrap_or_default().to_vec(),
            headers,
        };
        done |= arrived(&g);
        got.push(g);
    }
}

/// Creates `topic` with `partitions` partitions (replication 1) on a real broker.
pub async fn create_topic(brokers: &str, topic: &str, partitions: i32) {
    use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
    use rdkafka::client::DefaultClientContext;
    let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .create()
        .expect("admin client");
    let results = admin
        .create_topics(
            &[NewTopic::new(topic, partitions, TopicReplication::Fixed(1))],
            &AdminOptions::new().operation_timeout(Some(Duration::from_secs(10))),
        )
        .await
        .expect("create topics");
    for r in results {
        r.unwrap_or_else(|(t, e)| panic!("create topic {t}: {e}"));
    }
}

/// The brokers of a real Kafka-protocol cluster for the end-to-end tests, from
/// `WALSINK_KAFKA_BROKERS`. Without it: a failure under CI (where `.ci/run` starts
/// one), else `None`, and the caller says clearly that it skipped.
pub fn real_brokers(test: &str) -> Option<String> {
    match std::env::var("WALSINK_KAFKA_BROKERS") {
        Ok(b) if !b.is_empty() => Some(b),
        _ if std::env::var_os("CI").is_some() => {
            panic!(
                "{test}: CI must run against a broker: set WALSINK_KAFKA_BROKERS (.ci/run starts tansu)"
            )
        }
        _ => {
            eprintln!(
                "SKIPPED {test}: no Kafka-protocol broker (set WALSINK_KAFKA_BROKERS=HOST:PORT, and WALSINK_TANSU_BIN for the outage test; .ci/run does both)"
            );
            None
        }
    }
}

/// The record the Kafka tests push: JSON on the topic.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Event {
    pub id: u64,
    pub body: String,
}

pub fn event(id: u64) -> Event {
    Event {
        id,
        body: format!(
            "event {id}: customer {:05} payment gateway timeout",
            id % 7919
        ),
    }
}

/// A sink config for the Kafka tests: batches of `batch_size`, short backoff.
pub fn kafka_sink_config(dir: &std::path::Path, batch_size: usize) -> walsink::SinkConfig {
    walsink::SinkConfig {
        batch_size,
        retry: walsink::RetryPolicy {
            initial_delay: Duration::from_millis(5),
            max_delay: Duration::from_millis(100),
            multiplier: 2.0,
        },
        ..walsink::SinkConfig::new(dir)
    }
}

/// `(id, seq)` of every message read back (payload JSON, `walsink-seq` header).
pub fn ids_and_seqs(got: &[Got]) -> Vec<(u64, u64)> {
    got.iter()
        .map(|g| {
            let e: Event = serde_json::from_slice(&g.payload).expect("json payload");
            (e.id, g.seq())
        })
        .collect()
}
