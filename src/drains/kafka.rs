//! [`KafkaDrain`]: records to a Kafka topic through librdkafka (feature `kafka`).
//!
//! # Acknowledgement
//!
//! `write_batch` returns `Ok` only when the broker acknowledged every record of the
//! batch. The producer is idempotent (`enable.idempotence=true`, hence `acks=all`), so
//! librdkafka's own retries never duplicate or reorder a record within a partition.
//! Every record carries its WAL seq in the header `walsink-seq` (decimal ASCII): after a
//! crash the sink delivers again, with the same seqs, what its cursor had not passed,
//! and a consumer deduplicates by that header.
//!
//! # Error classes
//!
//! Each failed delivery is classified by its librdkafka error code ([`ErrorClass`]):
//!
//! - **retryable** (timeouts, transport errors, queue full, leader changes, not enough
//!   replicas, a broker response librdkafka could not parse, a record refused only
//!   because another record of its request was invalid, and any code not listed
//!   below): the batch comes again after backoff.
//! - **permanent** for that record (too large, invalid or corrupt; also a record
//!   whose payload, key and header bytes exceed `message.max.bytes`, checked before
//!   producing, with librdkafka's own check at produce time the final word): the sink bisects the batch down to that record and keeps it
//!   as a dead letter.
//! - **configuration** (unknown topic, topic or cluster authorization failed, invalid
//!   acks, authentication; and an invalid timestamp: the drain sets none, so it means
//!   clock skew between this host and the broker): not the record's fault, so *retryable*, logged at `error`
//!   and counted, never poison; a misconfigured ACL must not send the whole stream to
//!   the dead-letter store.
//! - **fatal** (librdkafka's fatal idempotence errors, a fenced producer): the producer
//!   is rebuilt and the batch delivered again from the WAL. After
//!   `REBUILD_AFTER_FAILED_BATCHES` (5) failed batches in a row it is rebuilt too: a
//!   broker that restarted without the idempotent producer's state can otherwise time
//!   out every message for good (seen with tansu 0.6 in `tests/kafka_broker.rs`).
//!
//! After a failure, a record can reach the topic after later ones, or twice; the
//! `walsink-seq` header orders and deduplicates them.
//!
//! Records of a batch the broker already acknowledged are remembered (seqs, at most
//! one batch's worth) and not produced again when the sink redelivers that batch or
//! bisects it: a retry after a partial failure resends only what failed.
//!
//! # Metrics
//!
//! With [`KafkaDrainBuilder::metric_prefix`]: `{prefix}_kafka_delivery_seconds`
//! (histogram, time from a batch's first produce to its last acknowledgement) and
//! `{prefix}_kafka_errors_total{class="retryable|permanent|config|fatal"}`. The same
//! counts are readable without a recorder through [`KafkaDrain::errors`].

use std::collections::BTreeSet;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use rdkafka::ClientConfig;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{DeliveryFuture, FutureProducer, FutureRecord, Producer};
use serde::Serialize;

use crate::dead_letter::DeadLetter;
use crate::drain::{Batch, DrainError, SinkDrain};

mod builder;
mod errors;

pub use builder::KafkaDrainBuilder;
use builder::{HeadersFn, KeyFn, PayloadFn};
use errors::ErrorCounters;
pub use errors::{ErrorClass, KafkaErrorCounts, KafkaErrors};

/// The header holding a record's WAL seq, in decimal ASCII.
pub const SEQ_HEADER: &str = "walsink-seq";

/// Headers a [`KafkaDrain::dead_letters`] drain adds to each dead letter: the context
/// the sink kept with it. Times are milliseconds since the Unix epoch, in decimal.
pub mod dead_letter_headers {
    /// The seq the record had in the WAL it failed in.
    pub const ORIGINAL_SEQ: &str = "walsink-dlq-original-seq";
    /// `rejected` (the drain refused it for good) or `undecodable`.
    pub const REASON: &str = "walsink-dlq-reason";
    /// The last error, as text.
    pub const ERROR: &str = "walsink-dlq-error";
    /// How many deliveries included it.
    pub const ATTEMPTS: &str = "walsink-dlq-attempts";
    /// When its first failure was seen.
    pub const FIRST_FAILED_AT_MS: &str = "walsink-dlq-first-failed-at-ms";
    /// When it was stored as a dead letter.
    pub const DEAD_LETTERED_AT_MS: &str = "walsink-dlq-dead-lettered-at-ms";
    /// The id of the codec that encoded the payload (1 bincode, 2 raw).
    pub const CODEC_ID: &str = "walsink-dlq-codec-id";
}

/// librdkafka's default `message.max.bytes`.
const DEFAULT_MESSAGE_MAX_BYTES: usize = 1_000_000;
/// Failed batches in a row after which the producer is rebuilt even without a fatal
/// error: a producer whose broker came back without its state (a restarted broker
/// that lost the idempotent producer's id) can time out every message for good, and
/// a new producer (new id, new connections) is cheap next to a stalled stream.
const REBUILD_AFTER_FAILED_BATCHES: u32 = 5;
/// How long to wait before producing again when librdkafka's local queue is full.
const QUEUE_FULL_BACKOFF: Duration = Duration::from_millis(5);
/// How long a record may wait for room in librdkafka's local queue before the batch
/// fails (retryable): an outage fills the queue until messages time out. (A record
/// that can never fit, larger than `queue.buffering.max.kbytes`, is refused at once
/// as permanent: the queue is full with nothing in it.)
const QUEUE_FULL_LIMIT: Duration = Duration::from_secs(30);

/// Metric handles, resolved once.
struct KafkaMetrics {
    delivery: metrics::Histogram,
    errors: [metrics::Counter; 4],
}

impl KafkaMetrics {
    fn new(prefix: &str) -> Self {
        let delivery = format!("{prefix}_kafka_delivery_seconds");
        let errors = format!("{prefix}_kafka_errors_total");
        metrics::describe_histogram!(
            delivery.clone(),
            metrics::Unit::Seconds,
            "Time from a batch's first produce to the broker's last acknowledgement"
        );
        metrics::describe_counter!(
            errors.clone(),
            "Kafka delivery failures by class (retryable, permanent, config, fatal)"
        );
        let class = |c: ErrorClass| metrics::counter!(errors.clone(), "class" => c.as_str());
        Self {
            delivery: metrics::histogram!(delivery),
            errors: [
                class(ErrorClass::Retryable),
                class(ErrorClass::Permanent),
                class(ErrorClass::Config),
                class(ErrorClass::Fatal),
            ],
        }
    }
}

/// Delivers records to one Kafka topic (see the [module docs](self)).
///
/// ```no_run
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// use walsink::drains::KafkaDrain;
/// use walsink::{DurableSink, SinkConfig};
///
/// #[derive(serde::Serialize, serde::Deserialize)]
/// struct Order { id: u64, sku: String }
///
/// let drain = KafkaDrain::<Order>::json("kafka-1:9092,kafka-2:9092", "orders")
///     .key(|o: &Order| Some(o.id.to_string().into_bytes()))
///     .set("client.id", "orders-service")
///     .metric_prefix("walsink")
///     .build()?;
/// let shutdown = tokio_util::sync::CancellationToken::new();
/// let (sink, handle) =
///     DurableSink::open(SinkConfig::new("/var/lib/app/orders-wal"), drain, shutdown).await?;
/// sink.try_push(Order { id: 1, sku: "A-1".into() })?;
/// drop(sink);
/// handle.join().await?; // the producer flushed within its close timeout
/// # Ok(()) }
/// ```
pub struct KafkaDrain<T> {
    /// Always `Some` until drop, which destroys it off the runtime's workers.
    producer: Option<FutureProducer>,
    config: ClientConfig,
    topic: String,
    payload: PayloadFn<T>,
    key: Option<KeyFn<T>>,
    headers: Option<HeadersFn<T>>,
    message_max_bytes: usize,
    close_timeout: Duration,
    /// Seqs the broker acknowledged in a batch that did not succeed as a whole.
    acked: BTreeSet<u64>,
    /// Batches in a row that failed (retryable or configuration errors).
    failed_in_a_row: u32,
    errors: Arc<ErrorCounters>,
    metrics: Option<KafkaMetrics>,
}

impl<T> std::fmt::Debug for KafkaDrain<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KafkaDrain")
            .field("topic", &self.topic)
            .field("message_max_bytes", &self.message_max_bytes)
            .finish_non_exhaustive()
    }
}

impl<T: Serialize> KafkaDrain<T> {
    /// A drain whose messages are the records as JSON (`serde_json`).
    pub fn json(brokers: &str, topic: &str) -> KafkaDrainBuilder<T> {
        KafkaDrainBuilder::new(
            brokers,
            topic,
            Box::new(|r: &T| serde_json::to_vec(r).map_err(|e| e.to_string())),
        )
    }
}

impl<T> KafkaDrain<T> {
    /// A drain whose messages are `payload(record)`.
    pub fn builder(
        brokers: &str,
        topic: &str,
        payload: impl Fn(&T) -> Vec<u8> + Send + Sync + 'static,
    ) -> KafkaDrainBuilder<T> {
        KafkaDrainBuilder::new(brokers, topic, Box::new(move |r: &T| Ok(payload(r))))
    }

    /// The drain's error counters, readable after it moved into a sink.
    pub fn errors(&self) -> KafkaErrors {
        KafkaErrors(Arc::clone(&self.errors))
    }

    fn count(&self, class: ErrorClass, n: u64) {
        let c = &self.errors;
        let (counter, i) = match class {
            ErrorClass::Retryable => (&c.retryable, 0),
            ErrorClass::Permanent => (&c.permanent, 1),
            ErrorClass::Config => (&c.config, 2),
            ErrorClass::Fatal => (&c.fatal, 3),
        };
        counter.fetch_add(n, Ordering::Relaxed);
        if let Some(m) = &self.metrics {
            m.errors[i].increment(n);
        }
    }

    /// The producer (present from `build` until drop).
    fn producer(&self) -> &FutureProducer {
        self.producer
            .as_ref()
            .expect("invariant: the producer is taken only by drop")
    }

    /// Replaces a producer librdkafka declared unusable (fatal idempotence error), or
    /// one that failed `REBUILD_AFTER_FAILED_BATCHES` batches in a row.
    fn rebuild(&mut self, why: &str, fatal: bool) -> Result<(), DrainError> {
        if fatal {
            tracing::error!(topic = %self.topic, error = why, "fatal Kafka producer error: rebuilding the producer; the batch is delivered again from the WAL");
            self.count(ErrorClass::Fatal, 1);
        } else {
            tracing::warn!(topic = %self.topic, error = why, "Kafka deliveries failed {REBUILD_AFTER_FAILED_BATCHES} batches in a row: rebuilding the producer");
        }
        self.failed_in_a_row = 0;
        let producer: FutureProducer = self
            .config
            .create()
            .map_err(|e| DrainError::retryable(format!("rebuild the Kafka producer: {e}")))?;
        let old = self.producer.replace(producer);
        destroy_off_runtime(old);
        self.errors.rebuilds.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }

    /// Turns a record into a message, checking its size against `message.max.bytes`.
    /// Synchronous, so no reference to the record is held across an await (records
    /// need not be `Sync`).
    fn prepare(&self, seq: u64, record: &T) -> Result<Message, (ErrorClass, String)> {
        let payload = (self.payload)(record)
            .map_err(|e| (ErrorClass::Permanent, format!("seq {seq}: encode: {e}")))?;
        let key = self.key.as_ref().and_then(|k| k(record));
        let seq_text = seq.to_string();
        let mut extra = self.headers.as_ref().map(|h| h(record)).unwrap_or_default();
        extra.retain(|(k, _)| *k != SEQ_HEADER);
        let size = payload.len()
            + key.as_ref().map_or(0, Vec::len)
            + SEQ_HEADER.len()
            + seq_text.len()
            + extra.iter().map(|(k, v)| k.len() + v.len()).sum::<usize>();
        if size > self.message_max_bytes {
            return Err((
                ErrorClass::Permanent,
                format!(
                    "seq {seq}: {size} bytes with key and headers, above message.max.bytes ({})",
                    self.message_max_bytes
                ),
            ));
        }
        let mut headers = OwnedHeaders::new_with_capacity(1 + extra.len()).insert(Header {
            key: SEQ_HEADER,
            value: Some(seq_text.as_bytes()),
        });
        for (k, v) in &extra {
            headers = headers.insert(Header {
                key: k,
                value: Some(v.as_slice()),
            });
        }
        Ok(Message {
            seq,
            payload,
            key,
            headers,
        })
    }

    /// Hands a message to librdkafka, waiting while its local queue is full.
    async fn produce(&self, m: Message) -> Result<DeliveryFuture, (ErrorClass, String)> {
        let seq = m.seq;
        let mut rec = FutureRecord::<[u8], [u8]>::to(&self.topic)
            .payload(&m.payload)
            .headers(m.headers);
        if let Some(k) = &m.key {
            rec = rec.key(k.as_slice());
        }
        let since = Instant::now();
        loop {
            match self.producer().send_result(rec) {
                Ok(f) => return Ok(f),
                Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), back)) => {
                    if self.producer().in_flight_count() == 0 {
                        // Nothing queued, and still no room: this record alone exceeds
                        // `queue.buffering.max.kbytes` and never will fit.
                        return Err((
                            ErrorClass::Permanent,
                            format!(
                                "seq {seq}: larger than librdkafka's whole local queue (queue.buffering.max.kbytes)"
                            ),
                        ));
                    }
                    if since.elapsed() >= QUEUE_FULL_LIMIT {
                        return Err((
                            ErrorClass::Retryable,
                            format!(
                                "seq {seq}: librdkafka's local queue stayed full for {QUEUE_FULL_LIMIT:?}"
                            ),
                        ));
                    }
                    rec = back;
                    tokio::time::sleep(QUEUE_FULL_BACKOFF).await;
                }
                Err((e, _)) => {
                    let class = e
                        .rdkafka_error_code()
                        .map_or(ErrorClass::Retryable, ErrorClass::of);
                    return Err((class, format!("seq {seq}: produce: {e}")));
                }
            }
        }
    }
}

/// A record made into a Kafka message.
struct Message {
    seq: u64,
    payload: Vec<u8>,
    key: Option<Vec<u8>>,
    headers: OwnedHeaders,
}

impl KafkaDrain<DeadLetter> {
    /// A drain for dead letters (a `DurableSink<DeadLetter>`), to a dead-letter topic:
    /// the message is the record's payload exactly as the WAL held it, keyed by its
    /// original seq, with its context as headers ([`dead_letter_headers`]).
    pub fn dead_letters(brokers: &str, topic: &str) -> KafkaDrainBuilder<DeadLetter> {
        use dead_letter_headers as h;
        KafkaDrain::builder(brokers, topic, |d: &DeadLetter| d.payload().to_vec())
            .key(|d: &DeadLetter| Some(d.seq().to_string().into_bytes()))
            .headers(|d: &DeadLetter| {
                let ms = |t: std::time::SystemTime| {
                    crate::dead_letter::millis_since_epoch(t)
                        .to_string()
                        .into_bytes()
                };
                vec![
                    (h::ORIGINAL_SEQ, d.seq().to_string().into_bytes()),
                    (h::REASON, d.reason().as_str().as_bytes().to_vec()),
                    (h::ERROR, d.error().as_bytes().to_vec()),
                    (h::ATTEMPTS, d.attempts().to_string().into_bytes()),
                    (h::FIRST_FAILED_AT_MS, ms(d.first_failed_at())),
                    (h::DEAD_LETTERED_AT_MS, ms(d.dead_lettered_at())),
                    (h::CODEC_ID, d.codec_id().to_string().into_bytes()),
                ]
            })
    }
}

impl<T: Send + 'static> SinkDrain<T> for KafkaDrain<T> {
    async fn write_batch(&mut self, batch: Batch<T>) -> Result<(), DrainError> {
        if let Some((code, why)) = self.producer().client().fatal_error() {
            self.rebuild(&format!("{code}: {why}"), true)?;
        }
        // Acknowledgements older than this batch belong to batches the sink has since
        // moved past.
        if let Some(first) = batch.first_seq() {
            self.acked = self.acked.split_off(&first);
        }
        let started = Instant::now();
        let records = batch.len();
        let mut in_flight = Vec::with_capacity(records);
        let mut failures: Vec<(ErrorClass, String)> = Vec::new();
        // Records the broker refused only because another record of the same request
        // was invalid (`InvalidDifferentRecord`, KIP-467): not failures of their own.
        let mut innocent: Vec<String> = Vec::new();
        let last_seq = batch.last_seq();
        for (seq, record) in batch.into_pairs() {
            if self.acked.contains(&seq) {
                continue;
            }
            let message = match self.prepare(seq, &record) {
                Ok(m) => m,
                Err(failure) => {
                    failures.push(failure);
                    break;
                }
            };
            match self.produce(message).await {
                Ok(f) => in_flight.push((seq, f)),
                Err(failure) => {
                    // Stop producing; still collect what is in flight.
                    failures.push(failure);
                    break;
                }
            }
        }
        for (seq, delivery) in in_flight {
            match delivery.await {
                Ok(Ok(_)) => {
                    self.acked.insert(seq);
                }
                Ok(Err((e, _))) => {
                    let code = e.rdkafka_error_code();
                    if code == Some(RDKafkaErrorCode::InvalidDifferentRecord) {
                        innocent.push(format!("seq {seq}: {e}"));
                        continue;
                    }
                    let class = code.map_or(ErrorClass::Retryable, ErrorClass::of);
                    failures.push((class, format!("seq {seq}: {e}")));
                }
                Err(_) => failures.push((
                    ErrorClass::Retryable,
                    format!("seq {seq}: the producer dropped the delivery report"),
                )),
            }
        }
        let set_aside = fold_innocent(&mut failures, innocent);
        self.count(ErrorClass::Retryable, set_aside);
        if failures.is_empty() {
            self.failed_in_a_row = 0;
            if let Some(m) = &self.metrics {
                m.delivery.record(started.elapsed().as_secs_f64());
            }
            // Keep what a bisection's later halves will still need.
            if let Some(last) = last_seq {
                self.acked = self.acked.split_off(&last.saturating_add(1));
            }
            return Ok(());
        }
        for class in [
            ErrorClass::Retryable,
            ErrorClass::Permanent,
            ErrorClass::Config,
            ErrorClass::Fatal,
        ] {
            let n = failures.iter().filter(|(c, _)| *c == class).count() as u64;
            match class {
                // Counted by `rebuild`, once per batch.
                ErrorClass::Fatal => {}
                // Counted when the bisection reached the record (see `KafkaErrorCounts`).
                ErrorClass::Permanent if records > 1 => {}
                _ if n > 0 => self.count(class, n),
                _ => {}
            }
        }
        let first = |class: ErrorClass| failures.iter().find(|(c, _)| *c == class);
        if let Some((_, why)) = first(ErrorClass::Fatal) {
            let why = why.clone();
            self.rebuild(&why, true)?;
            return Err(DrainError::retryable(why));
        }
        if first(ErrorClass::Permanent).is_none() || first(ErrorClass::Retryable).is_some() {
            self.failed_in_a_row += 1;
        }
        if self.failed_in_a_row >= REBUILD_AFTER_FAILED_BATCHES {
            let why = failures.first().map(|(_, w)| w.clone()).unwrap_or_default();
            self.rebuild(&why, false)?;
        }
        let first = |class: ErrorClass| failures.iter().find(|(c, _)| *c == class);
        if let Some((_, why)) = first(ErrorClass::Config) {
            tracing::error!(topic = %self.topic, error = %why, "Kafka refused the batch for a configuration or authorization reason: retrying, not dead-lettering; fix the topic, ACLs or settings");
            return Err(DrainError::retryable(why.clone()));
        }
        if let Some((_, why)) = first(ErrorClass::Retryable) {
            return Err(DrainError::retryable(why.clone()));
        }
        // Only permanent failures: the sink bisects down to the record.
        let why = failures.first().map(|(_, w)| w.clone()).unwrap_or_default();
        Err(DrainError::permanent(why))
    }

    async fn close(&mut self) -> Result<(), DrainError> {
        let producer = self.producer().clone();
        let timeout = self.close_timeout;
        // flush blocks its thread: keep it off the runtime's workers.
        tokio::task::spawn_blocking(move || producer.flush(timeout))
            .await
            .map_err(|e| DrainError::retryable(format!("flush task: {e}")))?
            .map_err(|e| DrainError::retryable(format!("flush the Kafka producer: {e}")))
    }
}

/// Decides what records refused only for another record's sake (`innocent`) mean for
/// the batch. With the refused record in this batch (permanent failures and nothing
/// else), the sink's bisection separates it and the innocent ones go through in their
/// half: they are set aside (the count is returned, for the retryable counter) and the
/// batch fails as permanent. Without it (it was in one request with records of an
/// abandoned batch), or beside other failures, they are retryable failures: a
/// permanent verdict would dead-letter good records, and a retryable one that hid the
/// culprit would retry the same request forever.
fn fold_innocent(failures: &mut Vec<(ErrorClass, String)>, innocent: Vec<String>) -> u64 {
    let culprit_here =
        !failures.is_empty() && failures.iter().all(|(c, _)| *c == ErrorClass::Permanent);
    if culprit_here {
        innocent.len() as u64
    } else {
        failures.extend(innocent.into_iter().map(|w| (ErrorClass::Retryable, w)));
        0
    }
}

impl<T> Drop for KafkaDrain<T> {
    fn drop(&mut self) {
        destroy_off_runtime(self.producer.take());
    }
}

/// Drops a producer. Destroying the last handle flushes and joins librdkafka's
/// threads (up to about 0.6 s), so inside a tokio runtime it happens on the blocking
/// pool, never on a worker (a current-thread runtime would stall whole).
fn destroy_off_runtime(producer: Option<FutureProducer>) {
    let Some(producer) = producer else { return };
    match tokio::runtime::Handle::try_current() {
        Ok(rt) => drop(rt.spawn_blocking(move || drop(producer))),
        Err(_) => drop(producer),
    }
}

#[cfg(test)]
mod tests;
