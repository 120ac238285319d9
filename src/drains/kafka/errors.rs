//! How a failed delivery is classified and counted (see "Error classes" in the
//! parent module).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use rdkafka::error::RDKafkaErrorCode;

/// How a failed delivery is handled (see the module docs).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum ErrorClass {
    /// Transient: deliver again after backoff.
    Retryable,
    /// The record will never be accepted: bisect, then keep it as a dead letter.
    Permanent,
    /// Topic, authorization or client configuration: retried, logged at `error`.
    Config,
    /// The idempotent producer is unusable: rebuilt, then retried.
    Fatal,
}

impl ErrorClass {
    /// The metric label: `retryable`, `permanent`, `config` or `fatal`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Retryable => "retryable",
            Self::Permanent => "permanent",
            Self::Config => "config",
            Self::Fatal => "fatal",
        }
    }

    /// The class of a librdkafka error code, after librdkafka's documentation of it.
    pub fn of(code: RDKafkaErrorCode) -> Self {
        use RDKafkaErrorCode as C;
        match code {
            C::MessageSizeTooLarge
            | C::InvalidMessageSize
            | C::InvalidMessage
            | C::InvalidRecord
            | C::MessageBatchTooLarge
            | C::KeySerialization
            | C::ValueSerialization => Self::Permanent,
            // The drain sets no timestamp: librdkafka stamps the produce time, so a
            // refused timestamp means the clocks of this host and the broker disagree
            // (`message.timestamp.difference.max.ms`), which is not the record's fault
            // and would otherwise send the whole stream to the dead-letter store.
            C::InvalidTimestamp
            | C::UnknownTopicOrPartition
            | C::UnknownTopic
            | C::UnknownPartition
            | C::InvalidTopic
            | C::TopicAuthorizationFailed
            | C::ClusterAuthorizationFailed
            | C::TransactionalIdAuthorizationFailed
            | C::InvalidRequiredAcks
            | C::Authentication
            | C::SaslAuthenticationFailed
            | C::UnsupportedSASLMechanism
            | C::IllegalSASLState
            | C::SecurityDisabled
            | C::SSL
            | C::PolicyViolation
            | C::InvalidConfig
            | C::UnsupportedVersion
            | C::UnsupportedForMessageFormat
            | C::UnsupportedCompressionType
            | C::NotConfigured => Self::Config,
            C::Fatal
            | C::Fenced
            | C::ProducerFenced
            | C::OutOfOrderSequenceNumber
            | C::InvalidProducerEpoch
            | C::InvalidProducerIdMapping
            | C::UnknownProducerId => Self::Fatal,
            // Also retryable, deliberately: `BadMessage` (librdkafka could not parse the
            // broker's *response*, so the record may well be stored: never the
            // record's fault, and a dead letter of it could be redriven as a
            // duplicate under a new seq) and `InvalidDifferentRecord` (the broker
            // refused another record of the same request; `write_batch` lets the
            // sink bisect when that record is in the batch).
            _ => Self::Retryable,
        }
    }
}

/// Delivery errors by class since the drain was built.
#[derive(Debug, Default)]
pub(super) struct ErrorCounters {
    pub(super) retryable: AtomicU64,
    pub(super) permanent: AtomicU64,
    pub(super) config: AtomicU64,
    pub(super) fatal: AtomicU64,
    pub(super) rebuilds: AtomicU64,
}

/// A snapshot of [`KafkaDrain::errors`](super::KafkaDrain::errors): failed deliveries by class, and producer
/// rebuilds.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct KafkaErrorCounts {
    /// Retryable failures (records).
    pub retryable: u64,
    /// Records refused for good: counted once the sink's bisection has narrowed a
    /// failed batch to that one record (the step that makes it a dead letter).
    pub permanent: u64,
    /// Configuration or authorization failures (records).
    pub config: u64,
    /// Fatal producer errors (each rebuilds the producer; counted once per batch).
    pub fatal: u64,
    /// Producers rebuilt: after a fatal error, or after
    /// `REBUILD_AFTER_FAILED_BATCHES` (5) failed batches in a row.
    pub rebuilds: u64,
}

/// A cloneable view of a drain's error counters, usable after the drain moved into a
/// sink.
#[derive(Debug, Clone)]
pub struct KafkaErrors(pub(super) Arc<ErrorCounters>);

impl KafkaErrors {
    /// The counts now.
    pub fn get(&self) -> KafkaErrorCounts {
        let c = &self.0;
        KafkaErrorCounts {
            retryable: c.retryable.load(Ordering::Relaxed),
            permanent: c.permanent.load(Ordering::Relaxed),
            config: c.config.load(Ordering::Relaxed),
            fatal: c.fatal.load(Ordering::Relaxed),
            rebuilds: c.rebuilds.load(Ordering::Relaxed),
        }
    }
}
