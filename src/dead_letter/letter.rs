//! [`DeadLetter`]: one dead letter as read back, its context, and decoding it.

use std::any::Any;
use std::time::SystemTime;

use serde::Serialize;
use serde::de::DeserializeOwned;

use super::entry::{self, DeadLetterReason};
use super::files::StoredEntry;
use crate::codec::{BINCODE_CODEC_ID, BincodeCodec, Codec, CodecError, RAW_CODEC_ID};

/// One dead letter: the record's encoded bytes, unchanged, and why it failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeadLetter {
    seq: u64,
    reason: DeadLetterReason,
    error: String,
    attempts: u32,
    first_failed_at: SystemTime,
    dead_lettered_at: SystemTime,
    codec_id: u32,
    payload: Vec<u8>,
}

impl DeadLetter {
    pub(super) fn new(e: StoredEntry) -> Self {
        let StoredEntry {
            meta,
            payload,
            codec_id,
        } = e;
        Self {
            seq: meta.seq,
            reason: meta.reason,
            error: meta.error,
            attempts: meta.attempts,
            first_failed_at: meta.first_failed_at,
            dead_lettered_at: meta.dead_lettered_at,
            codec_id,
            payload,
        }
    }

    /// The seq the record had in the WAL (a dead letter's name).
    pub fn seq(&self) -> u64 {
        self.seq
    }

    /// Why it failed.
    pub fn reason(&self) -> DeadLetterReason {
        self.reason
    }

    /// The drain's error and its source chain (`a: b: c`), or the codec's error.
    pub fn error(&self) -> &str {
        &self.error
    }

    /// `write_batch` calls that included the record (0 for an undecodable one).
    pub fn attempts(&self) -> u32 {
        self.attempts
    }

    /// When the first of those calls failed.
    pub fn first_failed_at(&self) -> SystemTime {
        self.first_failed_at
    }

    /// When it was stored.
    pub fn dead_lettered_at(&self) -> SystemTime {
        self.dead_lettered_at
    }

    /// Id of the codec that encoded it (recorded in the store's file header).
    pub fn codec_id(&self) -> u32 {
        self.codec_id
    }

    /// The record's encoded bytes, exactly as they were in the WAL.
    pub fn payload(&self) -> &[u8] {
        &self.payload
    }

    /// Decodes the record with the built-in codec that encoded it, by
    /// [`codec_id`](Self::codec_id): [`BincodeCodec`], or [`RawCodec`](crate::RawCodec)
    /// (whose records decode as `Vec<u8>`). A sink with its own codec decodes with
    /// [`decode_with`](Self::decode_with).
    ///
    /// # Errors
    ///
    /// The codec's error, or an error naming the codec id if it is not built in.
    pub fn decode<T>(&self) -> Result<T, CodecError>
    where
        T: Serialize + DeserializeOwned + Send + 'static,
    {
        match self.codec_id {
            BINCODE_CODEC_ID => Codec::<T>::decode(&BincodeCodec, &self.payload),
            RAW_CODEC_ID => {
                let raw: Box<dyn Any> = Box::new(self.payload.clone());
                raw.downcast::<T>()
                    .map(|v| *v)
                    .map_err(|_| CodecError::new("raw-codec records decode only as Vec<u8>"))
            }
            id => Err(CodecError::new(format!(
                "codec id {id} is not built in: use decode_with and the sink's codec"
            ))),
        }
    }

    /// Decodes the record with `codec` (the sink's).
    ///
    /// # Errors
    ///
    /// The codec's error.
    pub fn decode_with<T: 'static>(&self, codec: &dyn Codec<T>) -> Result<T, CodecError> {
        codec.decode(&self.payload)
    }
}

/// A dead letter is itself a record: a `DurableSink<DeadLetter>` carries dead letters to
/// a dead-letter topic (see `KafkaDrain::dead_letters` with the `kafka` feature). The
/// form is a tuple of its fields (times as milliseconds since the Unix epoch), stable
/// under the sink's codec.
impl Serialize for DeadLetter {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        (
            self.seq,
            self.reason.code(),
            &self.error,
            self.attempts,
            entry::to_millis(self.first_failed_at),
            entry::to_millis(self.dead_lettered_at),
            self.codec_id,
            &self.payload,
        )
            .serialize(s)
    }
}

impl<'de> serde::Deserialize<'de> for DeadLetter {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        type Form = (u64, u8, String, u32, i64, i64, u32, Vec<u8>);
        let (seq, reason, error, attempts, first, last, codec_id, payload) =
            <Form as serde::Deserialize>::deserialize(d)?;
        let reason = DeadLetterReason::from_code(reason).ok_or_else(|| {
            <D::Error as serde::de::Error>::custom(format!("unknown dead-letter reason {reason}"))
        })?;
        Ok(Self {
            seq,
            reason,
            error,
            attempts,
            first_failed_at: entry::from_millis(first),
            dead_lettered_at: entry::from_millis(last),
            codec_id,
            payload,
        })
    }
}

#[cfg(test)]
mod serde_tests {
    use std::time::{Duration, UNIX_EPOCH};

    use super::*;
    use crate::codec::{BincodeCodec, Codec};

    #[test]
    fn a_dead_letter_is_a_record_the_sink_codec_round_trips() {
        for (reason, payload) in [
            (DeadLetterReason::Rejected, vec![1, 2, 3]),
            (DeadLetterReason::Undecodable, Vec::new()),
        ] {
            let l = DeadLetter::new(StoredEntry {
                meta: entry::EntryMeta {
                    reason,
                    attempts: 7,
                    seq: 42,
                    first_failed_at: UNIX_EPOCH + Duration::from_millis(1_700_000_000_123),
                    dead_lettered_at: UNIX_EPOCH + Duration::from_millis(1_700_000_000_456),
                    error: "permanent drain error: no".into(),
                },
                payload,
                codec_id: 1,
            });
            let mut bytes = Vec::new();
            Codec::<DeadLetter>::encode(&BincodeCodec, &l, &mut bytes).expect("encode");
            let back: DeadLetter =
                Codec::<DeadLetter>::decode(&BincodeCodec, &bytes).expect("decode");
            assert_eq!(back, l);
        }
        // An unknown reason code is an error, not a panic.
        let mut bad = Vec::new();
        Codec::<(u64, u8, String, u32, i64, i64, u32, Vec<u8>)>::encode(
            &BincodeCodec,
            &(1, 99, String::new(), 0, 0, 0, 1, Vec::new()),
            &mut bad,
        )
        .expect("encode");
        assert!(Codec::<DeadLetter>::decode(&BincodeCodec, &bad).is_err());
    }
}
