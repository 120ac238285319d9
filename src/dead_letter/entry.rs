//! One dead letter as stored: the record's encoded bytes, unchanged, and the context
//! of its failure, in a fixed little-endian layout that is the payload of one frame of
//! a dead-letter segment (docs/FORMAT.md, "Dead letters").
//!
//! ```text
//! offset  size  field
//!      0     1  entry version (1)
//!      1     1  reason: 1 rejected, 2 undecodable
//!      2     2  reserved, 0
//!      4     4  attempts (drain calls that included the record)
//!      8     8  original seq (the record's seq in the WAL)
//!     16     8  first failure, milliseconds since the Unix epoch (i64)
//!     24     8  dead-lettered, milliseconds since the Unix epoch (i64)
//!     32     4  error text length E (at most MAX_ERROR_BYTES)
//!     36     E  error text, UTF-8 (the drain error and its source chain)
//!   36+E     …  the record's encoded bytes, to the end of the frame payload
//! ```
//!
//! The frame's CRC covers all of it. Decoding checks every length against what is
//! there and returns an error, never panics, on any bytes.

use std::fmt;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Entry layout version written today.
const ENTRY_VERSION: u8 = 1;
/// Bytes before the error text.
const FIXED_BYTES: usize = 36;
/// Longest error text kept; a longer one is cut at a character boundary.
pub(crate) const MAX_ERROR_BYTES: usize = 16 << 10;

/// Why a record became a dead letter.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DeadLetterReason {
    /// The drain rejected it with a permanent error (after bisection isolated it).
    Rejected,
    /// It no longer decodes with the sink's codec.
    Undecodable,
}

impl DeadLetterReason {
    /// `"rejected"` or `"undecodable"`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Rejected => "rejected",
            Self::Undecodable => "undecodable",
        }
    }

    pub(crate) fn code(self) -> u8 {
        match self {
            Self::Rejected => 1,
            Self::Undecodable => 2,
        }
    }

    pub(crate) fn from_code(code: u8) -> Option<Self> {
        match code {
            1 => Some(Self::Rejected),
            2 => Some(Self::Undecodable),
            _ => None,
        }
    }
}

impl fmt::Display for DeadLetterReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Why stored entry bytes do not decode (damage the frame CRC did not catch, or an
/// entry written by a newer version).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum EntryError {
    Short { len: usize },
    Version(u8),
    Reason(u8),
    ErrorLen { len: u64, available: usize },
}

impl fmt::Display for EntryError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Short { len } => write!(f, "entry of {len} bytes is shorter than its header"),
            Self::Version(v) => write!(f, "unknown entry version {v}"),
            Self::Reason(r) => write!(f, "unknown reason code {r}"),
            Self::ErrorLen { len, available } => {
                write!(f, "error text of {len} bytes but {available} bytes follow")
            }
        }
    }
}

/// The context of a dead letter, without its payload.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct EntryMeta {
    pub(crate) reason: DeadLetterReason,
    pub(crate) attempts: u32,
    pub(crate) seq: u64,
    pub(crate) first_failed_at: SystemTime,
    pub(crate) dead_lettered_at: SystemTime,
    pub(crate) error: String,
}

pub(crate) fn to_millis(t: SystemTime) -> i64 {
    match t.duration_since(UNIX_EPOCH) {
        Ok(d) => i64::try_from(d.as_millis()).unwrap_or(i64::MAX),
        Err(e) => i64::try_from(e.duration().as_millis()).map_or(i64::MIN, |m| -m),
    }
}

pub(crate) fn from_millis(ms: i64) -> SystemTime {
    let d = Duration::from_millis(ms.unsigned_abs());
    let t = if ms >= 0 {
        UNIX_EPOCH.checked_add(d)
    } else {
        UNIX_EPOCH.checked_sub(d)
    };
    t.unwrap_or(UNIX_EPOCH)
}

/// Cuts `s` to at most `max` bytes at a character boundary.
fn truncated(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

/// Appends the entry for `meta` and `payload` to `out`.
pub(crate) fn encode_entry(out: &mut Vec<u8>, meta: &EntryMeta, payload: &[u8]) {
    let error = truncated(&meta.error, MAX_ERROR_BYTES);
    out.reserve(FIXED_BYTES + error.len() + payload.len());
    out.push(ENTRY_VERSION);
    out.push(meta.reason.code());
    out.extend_from_slice(&0u16.to_le_bytes());
    out.extend_from_slice(&meta.attempts.to_le_bytes());
    out.extend_from_slice(&meta.seq.to_le_bytes());
    out.extend_from_slice(&to_millis(meta.first_failed_at).to_le_bytes());
    out.extend_from_slice(&to_millis(meta.dead_lettered_at).to_le_bytes());
    // At most MAX_ERROR_BYTES: fits.
    out.extend_from_slice(&(error.len() as u32).to_le_bytes());
    out.extend_from_slice(error.as_bytes());
    out.extend_from_slice(payload);
}

fn le_u32(b: &[u8], at: usize) -> u32 {
    let mut a = [0u8; 4];
    a.copy_from_slice(&b[at..at + 4]);
    u32::from_le_bytes(a)
}

fn le_u64(b: &[u8], at: usize) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[at..at + 8]);
    u64::from_le_bytes(a)
}

/// Decodes an entry: its context and where its payload starts in `b`.
pub(crate) fn decode_entry(b: &[u8]) -> Result<(EntryMeta, usize), EntryError> {
    if b.len() < FIXED_BYTES {
        return Err(EntryError::Short { len: b.len() });
    }
    // Every index below is within the FIXED_BYTES checked above.
    if b[0] != ENTRY_VERSION {
        return Err(EntryError::Version(b[0]));
    }
    let reason = DeadLetterReason::from_code(b[1]).ok_or(EntryError::Reason(b[1]))?;
    let attempts = le_u32(b, 4);
    let seq = le_u64(b, 8);
    let first_failed_at = from_millis(le_u64(b, 16) as i64);
    let dead_lettered_at = from_millis(le_u64(b, 24) as i64);
    let error_len = u64::from(le_u32(b, 32));
    let available = b.len() - FIXED_BYTES;
    let error_end = usize::try_from(error_len)
        .ok()
        .filter(|&n| n <= available)
        .map(|n| FIXED_BYTES + n)
        .ok_or(EntryError::ErrorLen {
            len: error_len,
            available,
        })?;
    let error = String::from_utf8_lossy(&b[FIXED_BYTES..error_end]).into_owned();
    Ok((
        EntryMeta {
            reason,
            attempts,
            seq,
            first_failed_at,
            dead_lettered_at,
            error,
        },
        error_end,
    ))
}

/// `t` as an RFC 3339 timestamp in UTC with milliseconds (`2026-12-02T07:22:17.123Z`).
#[cfg(any(feature = "cli", test))]
pub(crate) fn rfc3339(t: SystemTime) -> String {
    let ms = to_millis(t);
    let (secs, milli) = (ms.div_euclid(1000), ms.rem_euclid(1000));
    let (days, day_secs) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{milli:03}Z",
        day_secs / 3600,
        day_secs / 60 % 60,
        day_secs % 60
    )
}

#[cfg(test)]
mod tests;
