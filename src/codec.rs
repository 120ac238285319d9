//! How records become bytes: the [`Codec`] trait, the default [`BincodeCodec`] and the
//! [`RawCodec`] for byte payloads.
//!
//! Encoding runs on the producer (inside `try_push`), so an encode error is returned
//! to the caller that caused it. Decoding runs on the delivery task, for records read
//! back from the WAL. Each codec has an id, recorded in every segment header: a WAL
//! written with one codec is refused (not misread) when opened with another.

use std::error::Error;
use std::fmt;

use serde::Serialize;
use serde::de::DeserializeOwned;

/// An encode or decode failure, wrapping the codec's own error.
#[derive(Debug)]
pub struct CodecError(Box<dyn Error + Send + Sync + 'static>);

impl CodecError {
    /// Wraps any error.
    pub fn new(err: impl Into<Box<dyn Error + Send + Sync + 'static>>) -> Self {
        Self(err.into())
    }
}

impl fmt::Display for CodecError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

impl Error for CodecError {
    fn source(&self) -> Option<&(dyn Error + 'static)> {
        Some(&*self.0)
    }
}

/// Turns records into payload bytes and back.
///
/// Ids `0..=0xFFFF` are reserved for codecs shipped by walsink; pick a custom codec's
/// id above that and never reuse it for another encoding.
pub trait Codec<T>: Send + Sync + 'static {
    /// The id recorded in segment headers.
    fn id(&self) -> u32;
    /// Appends the encoding of `value` to `out` (which is empty when called).
    fn encode(&self, value: &T, out: &mut Vec<u8>) -> Result<(), CodecError>;
    /// Decodes one record from exactly `bytes`.
    fn decode(&self, bytes: &[u8]) -> Result<T, CodecError>;
}

/// Codec id of [`BincodeCodec`].
pub const BINCODE_CODEC_ID: u32 = 1;
/// Codec id of [`RawCodec`].
pub const RAW_CODEC_ID: u32 = 2;

/// The default codec: serde with bincode 2's standard configuration (varint integers,
/// little-endian). bincode is pinned at 2.0.1; its id is recorded in each segment.
#[derive(Debug, Clone, Copy, Default)]
pub struct BincodeCodec;

impl<T: Serialize + DeserializeOwned + Send + 'static> Codec<T> for BincodeCodec {
    fn id(&self) -> u32 {
        BINCODE_CODEC_ID
    }

    fn encode(&self, value: &T, out: &mut Vec<u8>) -> Result<(), CodecError> {
        bincode::serde::encode_into_std_write(value, out, bincode::config::standard())
            .map(|_| ())
            .map_err(CodecError::new)
    }

    fn decode(&self, bytes: &[u8]) -> Result<T, CodecError> {
        let (value, used) =
            bincode::serde::decode_from_slice::<T, _>(bytes, bincode::config::standard())
                .map_err(CodecError::new)?;
        if used != bytes.len() {
            return Err(CodecError::new(format!(
                "{} trailing bytes after the record",
                bytes.len() - used
            )));
        }
        Ok(value)
    }
}

/// Stores `Vec<u8>` payloads as they are.
#[derive(Debug, Clone, Copy, Default)]
pub struct RawCodec;

impl Codec<Vec<u8>> for RawCodec {
    fn id(&self) -> u32 {
        RAW_CODEC_ID
    }

    fn encode(&self, value: &Vec<u8>, out: &mut Vec<u8>) -> Result<(), CodecError> {
        out.extend_from_slice(value);
        Ok(())
    }

    fn decode(&self, bytes: &[u8]) -> Result<Vec<u8>, CodecError> {
        Ok(bytes.to_vec())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bincode_round_trips_and_rejects_trailing_bytes() -> Result<(), CodecError> {
        let c = BincodeCodec;
        let mut out = Vec::new();
        Codec::<(u32, String)>::encode(&c, &(7, "x".to_string()), &mut out)?;
        let back: (u32, String) = c.decode(&out)?;
        assert_eq!(back, (7, "x".to_string()));
        out.push(0);
        assert!(Codec::<(u32, String)>::decode(&c, &out).is_err());
        assert!(Codec::<String>::decode(&c, &[0xFF, 0xFF, 0xFF]).is_err());
        Ok(())
    }
}
