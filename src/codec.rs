//! How records become bytes: the [`Codec`] trait, the default [`BincodeCodec`] and the
//! [`RawCodec`] for byte payloads.
//!
//! Encoding runs on the producer (inside `try_push`), so an encode error is returned
//! to the caller that caused it. Decoding runs on the delivery task, for records read
//! back from the WAL. Each codec has an id, recorded in every segment header: a WAL
//! written with one codec is refused (not misread) when opened with another.

use std::any::{Any, TypeId};
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
        // serde hands a `Vec<u8>` to bincode one byte at a time; write the same bytes
        // bincode would (varint length, then the bytes) in one copy instead.
        if let Some(bytes) = (value as &dyn Any).downcast_ref::<Vec<u8>>() {
            put_varint(out, bytes.len() as u64);
            out.extend_from_slice(bytes);
            return Ok(());
        }
        bincode::serde::encode_into_std_write(value, out, bincode::config::standard())
            .map(|_| ())
            .map_err(CodecError::new)
    }

    fn decode(&self, bytes: &[u8]) -> Result<T, CodecError> {
        if TypeId::of::<T>() == TypeId::of::<Vec<u8>>() {
            let (len, used) =
                get_varint(bytes).ok_or_else(|| CodecError::new("bad length prefix"))?;
            let body = bytes.get(used..).unwrap_or_default();
            if len != body.len() as u64 {
                return Err(CodecError::new(format!(
                    "length prefix {len} does not match {} bytes",
                    body.len()
                )));
            }
            let boxed: Box<dyn Any> = Box::new(body.to_vec());
            return boxed
                .downcast::<T>()
                .map(|b| *b)
                .map_err(|_| CodecError::new("type mismatch"));
        }
        let (value, used) = decode_bounded::<T>(bytes).map_err(CodecError::new)?;
        if used != bytes.len() {
            return Err(CodecError::new(format!(
                "{} trailing bytes after the record",
                bytes.len() - used
            )));
        }
        Ok(value)
    }
}

/// How much memory a record's decode may claim, per byte of the record: bincode claims
/// a container's length times its element's in-memory size before reading it (24 for
/// a `String`, 8 for a varint `u64` of one byte). Generous for real records; a length
/// that no record of this size could hold is refused instead of allocated.
const DECODE_CLAIM_PER_BYTE: usize = 64;

/// bincode's standard decode with a limit on what lengths may claim. Without one, a
/// record whose bytes read as a huge length (written by another version of the type,
/// or forged with a valid checksum) makes bincode allocate that length: the process
/// aborts, and the replay after the restart aborts again. With it, the record fails
/// to decode (a dead letter) and the sink goes on. The limit is a const generic, so
/// it is picked from steps of 4x: at most 4x above what the record's size needs.
fn decode_bounded<T: DeserializeOwned>(
    bytes: &[u8],
) -> Result<(T, usize), bincode::error::DecodeError> {
    use bincode::config::standard;
    use bincode::serde::decode_from_slice as decode;
    let need = bytes.len().saturating_mul(DECODE_CLAIM_PER_BYTE);
    const MIB: usize = 1 << 20;
    if need <= MIB {
        decode(bytes, standard().with_limit::<MIB>())
    } else if need <= 4 * MIB {
        decode(bytes, standard().with_limit::<{ 4 * MIB }>())
    } else if need <= 16 * MIB {
        decode(bytes, standard().with_limit::<{ 16 * MIB }>())
    } else if need <= 64 * MIB {
        decode(bytes, standard().with_limit::<{ 64 * MIB }>())
    } else if need <= 256 * MIB {
        decode(bytes, standard().with_limit::<{ 256 * MIB }>())
    } else if need <= 1024 * MIB {
        decode(bytes, standard().with_limit::<{ 1024 * MIB }>())
    } else if need <= 4096 * MIB {
        decode(bytes, standard().with_limit::<{ 4096 * MIB }>())
    } else if need <= 16384 * MIB {
        decode(bytes, standard().with_limit::<{ 16384 * MIB }>())
    } else {
        decode(bytes, standard().with_limit::<{ 65536 * MIB }>())
    }
}

/// bincode 2's varint (standard config): < 251 in one byte; else a marker (251: u16,
/// 252: u32, 253: u64) and the little-endian value.
fn put_varint(out: &mut Vec<u8>, v: u64) {
    if v < 251 {
        out.push(v as u8);
    } else if v <= u64::from(u16::MAX) {
        out.push(251);
        out.extend_from_slice(&(v as u16).to_le_bytes());
    } else if v <= u64::from(u32::MAX) {
        out.push(252);
        out.extend_from_slice(&(v as u32).to_le_bytes());
    } else {
        out.push(253);
        out.extend_from_slice(&v.to_le_bytes());
    }
}

fn get_varint(b: &[u8]) -> Option<(u64, usize)> {
    match *b.first()? {
        x @ 0..=250 => Some((u64::from(x), 1)),
        251 => Some((
            u64::from(u16::from_le_bytes(b.get(1..3)?.try_into().ok()?)),
            3,
        )),
        252 => Some((
            u64::from(u32::from_le_bytes(b.get(1..5)?.try_into().ok()?)),
            5,
        )),
        253 => Some((u64::from_le_bytes(b.get(1..9)?.try_into().ok()?), 9)),
        _ => None,
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
mod tests;
