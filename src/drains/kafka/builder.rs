//! [`KafkaDrainBuilder`]: brokers, topic, how a record becomes a Kafka message, and the
//! librdkafka settings the drain accepts.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use rdkafka::ClientConfig;
use rdkafka::error::KafkaError;
use rdkafka::producer::FutureProducer;

use super::errors::ErrorCounters;
use super::{DEFAULT_MESSAGE_MAX_BYTES, KafkaDrain, KafkaMetrics};

pub(super) type PayloadFn<T> = Box<dyn Fn(&T) -> Result<Vec<u8>, String> + Send + Sync>;
pub(super) type KeyFn<T> = Box<dyn Fn(&T) -> Option<Vec<u8>> + Send + Sync>;
pub(super) type HeadersFn<T> = Box<dyn Fn(&T) -> Vec<(&'static str, Vec<u8>)> + Send + Sync>;

/// Builds a [`KafkaDrain`]: brokers, topic, how a record becomes a Kafka message, and
/// any librdkafka setting.
///
/// Settings the drain starts from (each can be changed with [`set`](Self::set), within
/// what [`build`](Self::build) accepts): `enable.idempotence=true`, `acks=all`, and
/// `linger.ms=1` instead of librdkafka's 5: the drain hands librdkafka a whole batch at
/// once and then waits for its acknowledgements, so lingering for more messages only
/// delays them (on a local broker, `linger.ms=5` halved records/s; `benches/kafka.rs`).
pub struct KafkaDrainBuilder<T> {
    pub(super) config: ClientConfig,
    pub(super) topic: String,
    pub(super) payload: PayloadFn<T>,
    pub(super) key: Option<KeyFn<T>>,
    pub(super) headers: Option<HeadersFn<T>>,
    pub(super) metric_prefix: Option<String>,
    pub(super) close_timeout: Duration,
}

impl<T> std::fmt::Debug for KafkaDrainBuilder<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KafkaDrainBuilder")
            .field("topic", &self.topic)
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

impl<T> KafkaDrainBuilder<T> {
    pub(super) fn new(brokers: &str, topic: &str, payload: PayloadFn<T>) -> Self {
        let mut config = ClientConfig::new();
        config
            .set("bootstrap.servers", brokers)
            .set("enable.idempotence", "true")
            .set("acks", "all")
            .set("linger.ms", "1");
        Self {
            config,
            topic: topic.to_owned(),
            payload,
            key: None,
            headers: None,
            metric_prefix: None,
            close_timeout: Duration::from_secs(5),
        }
    }

    /// Any librdkafka producer setting (`linger.ms`, `compression.type` when built
    /// in, `security.protocol`, `message.max.bytes`, ...), passed through unchanged.
    /// `enable.idempotence` stays on: setting it to `false` is refused by `build`.
    pub fn set(mut self, key: &str, value: &str) -> Self {
        self.config.set(key, value);
        self
    }

    /// The message key, taken from the record (default: none, so librdkafka's
    /// partitioner spreads records). Records with one key go to one partition, in
    /// order, except after a failed delivery: what failed is delivered again after
    /// what the broker had already acknowledged (the `walsink-seq` header orders them).
    pub fn key(mut self, key: impl Fn(&T) -> Option<Vec<u8>> + Send + Sync + 'static) -> Self {
        self.key = Some(Box::new(key));
        self
    }

    /// Headers to add to each message, besides `walsink-seq` (a header of that name
    /// returned here is left out: the seq header is the drain's).
    pub fn headers(
        mut self,
        headers: impl Fn(&T) -> Vec<(&'static str, Vec<u8>)> + Send + Sync + 'static,
    ) -> Self {
        self.headers = Some(Box::new(headers));
        self
    }

    /// Publish `{prefix}_kafka_delivery_seconds` and `{prefix}_kafka_errors_total`
    /// through the `metrics` facade (use the sink's `metric_prefix`).
    pub fn metric_prefix(mut self, prefix: &str) -> Self {
        self.metric_prefix = Some(prefix.to_owned());
        self
    }

    /// How long `close()` waits for messages still in flight (default 5 s, the sink's
    /// default `shutdown_timeout`): keep it within the sink's shutdown budget.
    pub fn close_timeout(mut self, timeout: Duration) -> Self {
        self.close_timeout = timeout;
        self
    }

    /// Creates the producer. librdkafka connects in the background: a broker that is
    /// down now shows as retryable delivery errors later, not here.
    ///
    /// # Errors
    ///
    /// An invalid librdkafka setting, `enable.idempotence=false`, or an `acks` other
    /// than `all`/`-1`.
    pub fn build(self) -> Result<KafkaDrain<T>, KafkaError> {
        let refuse = |k: &str, v: &str, why: &str| {
            Err(KafkaError::ClientCreation(format!("{k}={v}: {why}")))
        };
        if let Some(v) = self.config.get("enable.idempotence")
            && v != "true"
        {
            return refuse(
                "enable.idempotence",
                v,
                "KafkaDrain needs the idempotent producer",
            );
        }
        if let Some(v) = self.config.get("acks")
            && v != "all"
            && v != "-1"
        {
            return refuse(
                "acks",
                v,
                "KafkaDrain acknowledges only what all in-sync replicas have",
            );
        }
        let message_max_bytes = self
            .config
            .get("message.max.bytes")
            .and_then(|v| v.parse().ok())
            .unwrap_or(DEFAULT_MESSAGE_MAX_BYTES);
        let producer: FutureProducer = self.config.create()?;
        let metrics = self.metric_prefix.as_deref().map(KafkaMetrics::new);
        Ok(KafkaDrain {
            producer: Some(producer),
            config: self.config,
            topic: self.topic,
            payload: self.payload,
            key: self.key,
            headers: self.headers,
            message_max_bytes,
            close_timeout: self.close_timeout,
            acked: BTreeSet::new(),
            failed_in_a_row: 0,
            errors: Arc::new(ErrorCounters::default()),
            metrics,
        })
    }
}
