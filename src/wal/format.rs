//! Bytes only: the segment header, the record frame and the register slot.
//!
//! This module knows no files, no tokio and no configuration beyond the limits it is
//! handed, which is what makes it fuzzable. Every decoder takes untrusted bytes and
//! returns a status; none of them indexes past a slice, panics or allocates from a
//! length read off disk. The layouts are specified in `docs/FORMAT.md`; the constant
//! names here are the field names there, and the golden-bytes tests at the end of this
//! file print the same hex the document shows.
//!
//! All integers are little-endian.

use std::fmt;

/// Magic bytes opening every segment file (modelled on PNG's: a high-bit byte catches
/// 7-bit transfers, `\r\n` and `\n` catch line-ending conversion, `\x1a` stops `type`).
pub(crate) const SEGMENT_MAGIC: [u8; 8] = *b"\x89WSK\r\n\x1a\n";
/// The only segment format version this build reads and writes.
pub(crate) const SEGMENT_VERSION: u16 = 1;
/// Bytes in a version-1 segment header.
pub(crate) const SEGMENT_HEADER_BYTES: usize = 40;
/// Offset of the header CRC. Fixed for every version, so that a flipped version field
/// is detected as corruption instead of being read as "written by a newer walsink".
pub(crate) const SEGMENT_HEADER_CRC_OFFSET: usize = 36;

/// Bytes in a frame header (`len`, `crc`, `seq`) before the payload.
pub(crate) const FRAME_HEADER_BYTES: usize = 16;
/// Largest payload the format can describe; `max_record_bytes` must not exceed it.
/// 1 GiB keeps a frame far below `u32::MAX` and below any sane single allocation.
pub(crate) const FRAME_PAYLOAD_LIMIT_BYTES: usize = 1 << 30;

/// Highest seq a record may have. 2^62 records is beyond any real history, so a name,
/// header, frame or register value above it is damage (or forgery), refused where it is
/// decoded; with it, no seq arithmetic anywhere can overflow.
pub(crate) const MAX_SEQ: u64 = 1 << 62;
/// Highest value a register slot may hold: a seq plus the lease's headroom.
pub(crate) const REGISTER_VALUE_MAX: u64 = MAX_SEQ + (1 << 32);
/// Highest generation a register slot read from disk may carry. One generation is spent
/// per write, so 2^62 is beyond any real history; a larger one is damage (or forgery).
/// A register opened above half of it is renumbered (see `Register::open`), so its
/// writes never reach the bound, and a generation never overflows and wraps below a
/// stale slot.
pub(crate) const REGISTER_GENERATION_MAX: u64 = 1 << 62;

/// Magic bytes opening each register slot (cursor and sequence lease files).
pub(crate) const REGISTER_MAGIC: [u8; 4] = *b"WSRG";
/// The only register slot version this build reads and writes.
pub(crate) const REGISTER_VERSION: u16 = 1;
/// Bytes in one register slot.
pub(crate) const REGISTER_SLOT_BYTES: usize = 32;
/// File offsets of the two slots. They sit in different 4 KiB blocks, so a torn write
/// of one can never touch the other.
pub(crate) const REGISTER_SLOT_OFFSETS: [u64; 2] = [0, 4096];
/// Size of a register file: both slots.
pub(crate) const REGISTER_FILE_BYTES: u64 = 4096 + REGISTER_SLOT_BYTES as u64;

const _: () = assert!(SEGMENT_HEADER_CRC_OFFSET + 4 == SEGMENT_HEADER_BYTES);
const _: () = assert!(FRAME_PAYLOAD_LIMIT_BYTES + FRAME_HEADER_BYTES <= u32::MAX as usize);
const _: () = assert!(REGISTER_SLOT_BYTES as u64 <= REGISTER_SLOT_OFFSETS[1]);

/// What kind of value a register file holds; recorded in every slot so that a cursor
/// file copied over a lease file (or the reverse) is refused instead of trusted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum RegisterKind {
    /// `CURSOR`: every record with a seq at or below the value was acknowledged.
    Cursor = 1,
    /// `SEQ_LEASE`: no seq at or above the value was ever handed out.
    SeqLease = 2,
}

/// Why bytes read from disk were not accepted. Carried inside `WalError` and counted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum CorruptionKind {
    /// The first bytes are not the expected magic.
    BadMagic,
    /// A header or slot CRC does not match its bytes.
    HeaderCrc {
        /// CRC stored in the header.
        stored: u32,
        /// CRC computed over the header bytes.
        computed: u32,
    },
    /// A frame CRC does not match its bytes.
    FrameCrc {
        /// CRC stored in the frame.
        stored: u32,
        /// CRC computed over the frame.
        computed: u32,
    },
    /// A frame claims more payload bytes than the configured maximum.
    LengthOverLimit {
        /// The length field.
        len: u64,
        /// The limit in force.
        limit: u64,
    },
    /// A frame's seq is not the next one expected in its segment.
    SeqNotIncreasing {
        /// The seq expected (or the lowest acceptable one).
        expected: u64,
        /// The seq found.
        found: u64,
    },
    /// The file ends inside a header or frame.
    Truncated {
        /// Bytes needed to finish the structure.
        needed: u64,
        /// Bytes available.
        available: u64,
    },
    /// A frame's length reaches past the end of the file, and valid frames follow it:
    /// a damaged length, not a torn tail.
    LengthPastEnd {
        /// Bytes the frame claims, header included.
        needed: u64,
        /// Bytes left in the file from the frame's start.
        available: u64,
    },
    /// A header names a different first seq than the file name.
    NameMismatch {
        /// First seq from the file name.
        named: u64,
        /// First seq from the header.
        header: u64,
    },
    /// A register slot belongs to another kind of register.
    WrongRegister,
    /// A seq or register value outside `1..=MAX_SEQ` (or above `REGISTER_VALUE_MAX`).
    OutOfRange {
        /// The value found.
        value: u64,
    },
}

impl fmt::Display for CorruptionKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            Self::BadMagic => write!(f, "bad magic"),
            Self::HeaderCrc { stored, computed } => {
                write!(
                    f,
                    "header crc mismatch: stored {stored:#010x}, computed {computed:#010x}"
                )
            }
            Self::FrameCrc { stored, computed } => {
                write!(
                    f,
                    "frame crc mismatch: stored {stored:#010x}, computed {computed:#010x}"
                )
            }
            Self::LengthOverLimit { len, limit } => {
                write!(f, "frame length {len} over limit {limit}")
            }
            Self::SeqNotIncreasing { expected, found } => {
                write!(f, "seq not increasing: expected {expected}, found {found}")
            }
            Self::Truncated { needed, available } => {
                write!(f, "truncated: needed {needed} bytes, {available} available")
            }
            Self::LengthPastEnd { needed, available } => write!(
                f,
                "frame claims {needed} bytes but {available} are left, and valid frames follow"
            ),
            Self::NameMismatch { named, header } => {
                write!(f, "file name says first seq {named}, header says {header}")
            }
            Self::WrongRegister => write!(f, "slot belongs to another register"),
            Self::OutOfRange { value } => write!(f, "value {value} outside the seq space"),
        }
    }
}

fn u16_at(b: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_le_bytes(b.get(at..at + 2)?.try_into().ok()?))
}
fn u32_at(b: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_le_bytes(b.get(at..at + 4)?.try_into().ok()?))
}
fn u64_at(b: &[u8], at: usize) -> Option<u64> {
    Some(u64::from_le_bytes(b.get(at..at + 8)?.try_into().ok()?))
}

// ---------------------------------------------------------------------------------------
// Segment header
// ---------------------------------------------------------------------------------------

/// The header at the start of every segment file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct SegmentHeader {
    /// Codec that encoded every payload in this segment.
    pub(crate) codec_id: u32,
    /// Seq of the first frame this segment may hold (also its file name).
    pub(crate) first_seq: u64,
    /// Seq of the last frame of the previous segment when this one was created, or 0 if
    /// unknown. Lets a reader notice that a sealed segment lost frames at its end.
    pub(crate) prev_last_seq: u64,
}

/// Outcome of decoding a segment header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum HeaderStatus {
    /// A valid header of the supported version.
    Valid(SegmentHeader),
    /// A CRC-valid header written by a format version this build does not know.
    UnsupportedVersion(u16),
    /// Not a readable header.
    Corrupt(CorruptionKind),
}

impl SegmentHeader {
    /// Encodes the header.
    pub(crate) fn encode(&self) -> [u8; SEGMENT_HEADER_BYTES] {
        let mut b = [0u8; SEGMENT_HEADER_BYTES];
        b[0..8].copy_from_slice(&SEGMENT_MAGIC);
        b[8..10].copy_from_slice(&SEGMENT_VERSION.to_le_bytes());
        // 10..12 flags, 32..36 reserved: zero in version 1.
        b[12..16].copy_from_slice(&self.codec_id.to_le_bytes());
        b[16..24].copy_from_slice(&self.first_seq.to_le_bytes());
        b[24..32].copy_from_slice(&self.prev_last_seq.to_le_bytes());
        let crc = crc32fast::hash(&b[..SEGMENT_HEADER_CRC_OFFSET]);
        b[SEGMENT_HEADER_CRC_OFFSET..].copy_from_slice(&crc.to_le_bytes());
        b
    }

    /// Decodes untrusted bytes. Order: magic, CRC, then version (see the constant doc).
    pub(crate) fn decode(b: &[u8]) -> HeaderStatus {
        let truncated = CorruptionKind::Truncated {
            needed: SEGMENT_HEADER_BYTES as u64,
            available: b.len() as u64,
        };
        let Some(magic) = b.get(0..8) else {
            return HeaderStatus::Corrupt(truncated);
        };
        if magic != SEGMENT_MAGIC {
            return HeaderStatus::Corrupt(CorruptionKind::BadMagic);
        }
        let (Some(covered), Some(stored)) = (
            b.get(..SEGMENT_HEADER_CRC_OFFSET),
            u32_at(b, SEGMENT_HEADER_CRC_OFFSET),
        ) else {
            return HeaderStatus::Corrupt(truncated);
        };
        let computed = crc32fast::hash(covered);
        if computed != stored {
            return HeaderStatus::Corrupt(CorruptionKind::HeaderCrc { stored, computed });
        }
        match (u16_at(b, 8), u32_at(b, 12), u64_at(b, 16), u64_at(b, 24)) {
            (Some(SEGMENT_VERSION), _, Some(first_seq), _)
                if first_seq == 0 || first_seq > MAX_SEQ =>
            {
                HeaderStatus::Corrupt(CorruptionKind::OutOfRange { value: first_seq })
            }
            (Some(SEGMENT_VERSION), _, _, Some(prev)) if prev > MAX_SEQ => {
                HeaderStatus::Corrupt(CorruptionKind::OutOfRange { value: prev })
            }
            (Some(SEGMENT_VERSION), Some(codec_id), Some(first_seq), Some(prev_last_seq)) => {
                HeaderStatus::Valid(SegmentHeader {
                    codec_id,
                    first_seq,
                    prev_last_seq,
                })
            }
            (Some(version), ..) => HeaderStatus::UnsupportedVersion(version),
            _ => HeaderStatus::Corrupt(truncated),
        }
    }
}

// ---------------------------------------------------------------------------------------
// Record frame
// ---------------------------------------------------------------------------------------

/// CRC of a frame: covers `len`, `seq` and the payload, i.e. everything that identifies
/// the record (the CRC field itself is the only byte range left out).
pub(crate) fn frame_crc(len: u32, seq: u64, payload: &[u8]) -> u32 {
    let mut head = [0u8; 12];
    head[..4].copy_from_slice(&len.to_le_bytes());
    head[4..].copy_from_slice(&seq.to_le_bytes());
    // A clone skips the CPU feature detection `Hasher::new` runs each time.
    static PROTOTYPE: std::sync::OnceLock<crc32fast::Hasher> = std::sync::OnceLock::new();
    let mut h = PROTOTYPE.get_or_init(crc32fast::Hasher::new).clone();
    if payload.len() <= FRAME_CRC_INLINE_BYTES {
        // A small record's header and payload in one contiguous update: crc32fast
        // checksums 16 bytes and more with carry-less multiplication, but takes a
        // table path for the 12 header bytes alone, which cost a third as many
        // instructions as the whole 100-byte payload (callgrind over
        // `benches/examples/shape_profile.rs`; see PERFORMANCE.md).
        let mut block = [0u8; 12 + FRAME_CRC_INLINE_BYTES];
        block[..12].copy_from_slice(&head);
        let end = 12 + payload.len();
        if let Some(dst) = block.get_mut(12..end) {
            dst.copy_from_slice(payload);
        }
        h.update(block.get(..end).unwrap_or_default());
    } else {
        h.update(&head);
        h.update(payload);
    }
    h.finalize()
}

/// Payloads up to this size are checksummed with their header in one update (see
/// [`frame_crc`]); above it, the header's separate update is a small share.
const FRAME_CRC_INLINE_BYTES: usize = 244;

/// Appends one frame to `out`. The caller has checked the payload against
/// `max_record_bytes`, which never exceeds [`FRAME_PAYLOAD_LIMIT_BYTES`].
pub(crate) fn encode_frame(out: &mut Vec<u8>, seq: u64, payload: &[u8]) {
    assert!(seq > 0, "invariant violation: seq 0 is reserved for 'none'");
    assert!(
        payload.len() <= FRAME_PAYLOAD_LIMIT_BYTES,
        "invariant violation: payload of {} bytes over the format limit {FRAME_PAYLOAD_LIMIT_BYTES}",
        payload.len()
    );
    // The assert above bounds the length, so this conversion cannot fail.
    let len = u32::try_from(payload.len()).unwrap_or(u32::MAX);
    out.extend_from_slice(&len.to_le_bytes());
    out.extend_from_slice(&frame_crc(len, seq, payload).to_le_bytes());
    out.extend_from_slice(&seq.to_le_bytes());
    out.extend_from_slice(payload);
}

/// Bytes a frame with `payload_len` payload bytes occupies on disk.
pub(crate) const fn frame_bytes(payload_len: usize) -> u64 {
    (FRAME_HEADER_BYTES + payload_len) as u64
}

/// Outcome of decoding the frame at the start of a buffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum FrameStatus {
    /// A whole, checksum-valid frame.
    Valid {
        /// Its seq.
        seq: u64,
        /// Payload length in bytes (payload starts at `FRAME_HEADER_BYTES`).
        payload_len: usize,
    },
    /// The buffer ends before the frame does: read `needed` bytes in all, or, at the end
    /// of the file, this is a torn tail.
    Incomplete {
        /// Total bytes the frame needs from its start.
        needed: usize,
    },
    /// Not a frame.
    Corrupt(CorruptionKind),
}

/// The fixed fields at the start of a frame, not yet checked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct FrameHeader {
    /// Payload length.
    pub(crate) len: u32,
    /// Stored CRC.
    pub(crate) crc: u32,
    /// Seq.
    pub(crate) seq: u64,
}

impl FrameHeader {
    /// Reads the header fields at the start of `b`, or `None` if `b` is shorter.
    pub(crate) fn peek(b: &[u8]) -> Option<Self> {
        Some(Self {
            len: u32_at(b, 0)?,
            crc: u32_at(b, 4)?,
            seq: u64_at(b, 8)?,
        })
    }

    /// Bytes the whole frame occupies.
    pub(crate) fn frame_len(&self) -> usize {
        FRAME_HEADER_BYTES + self.len as usize
    }

    /// Checks the CRC against `payload` (exactly `len` bytes).
    pub(crate) fn verify(&self, payload: &[u8]) -> Result<(), CorruptionKind> {
        let computed = frame_crc(self.len, self.seq, payload);
        if computed != self.crc {
            return Err(CorruptionKind::FrameCrc {
                stored: self.crc,
                computed,
            });
        }
        Ok(())
    }
}

/// Decodes the frame at the start of `b`. A length above `max_payload_bytes` is
/// corruption, decided before anything else is read, so no length from disk sizes an
/// allocation. Seq 0 is never written, so an all-zero region is corruption too.
/// (The reader decodes in place through [`FrameHeader`]; this whole-frame form is for
/// the tests and the fuzz targets.)
#[cfg(any(test, feature = "fuzzing"))]
pub(crate) fn decode_frame(b: &[u8], max_payload_bytes: usize) -> FrameStatus {
    let Some(h) = FrameHeader::peek(b) else {
        return FrameStatus::Incomplete {
            needed: FRAME_HEADER_BYTES,
        };
    };
    let payload_len = h.len as usize;
    if payload_len > max_payload_bytes {
        return FrameStatus::Corrupt(CorruptionKind::LengthOverLimit {
            len: u64::from(h.len),
            limit: max_payload_bytes as u64,
        });
    }
    let needed = h.frame_len();
    let Some(payload) = b.get(FRAME_HEADER_BYTES..needed) else {
        return FrameStatus::Incomplete { needed };
    };
    if let Err(kind) = h.verify(payload) {
        return FrameStatus::Corrupt(kind);
    }
    if h.seq == 0 || h.seq > MAX_SEQ {
        return FrameStatus::Corrupt(CorruptionKind::OutOfRange { value: h.seq });
    }
    FrameStatus::Valid {
        seq: h.seq,
        payload_len,
    }
}

// ---------------------------------------------------------------------------------------
// Register slot (cursor and seq lease)
// ---------------------------------------------------------------------------------------

/// One slot of a two-slot register file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct RegisterSlot {
    /// Which register this slot belongs to.
    pub(crate) kind: RegisterKind,
    /// Incremented on every write; the valid slot with the higher generation wins.
    pub(crate) generation: u64,
    /// The stored value (acked seq or lease end).
    pub(crate) value: u64,
}

impl RegisterSlot {
    /// Encodes the slot.
    pub(crate) fn encode(&self) -> [u8; REGISTER_SLOT_BYTES] {
        let mut b = [0u8; REGISTER_SLOT_BYTES];
        b[0..4].copy_from_slice(&REGISTER_MAGIC);
        b[4..6].copy_from_slice(&REGISTER_VERSION.to_le_bytes());
        b[6..8].copy_from_slice(&(self.kind as u16).to_le_bytes());
        b[8..16].copy_from_slice(&self.generation.to_le_bytes());
        b[16..24].copy_from_slice(&self.value.to_le_bytes());
        // 24..28 reserved: zero in version 1.
        let crc = crc32fast::hash(&b[..28]);
        b[28..32].copy_from_slice(&crc.to_le_bytes());
        b
    }

    /// Decodes untrusted bytes as a slot of register `kind`. An unknown version in a
    /// CRC-valid slot is reported as such, never guessed at.
    pub(crate) fn decode(b: &[u8], kind: RegisterKind) -> Result<Self, SlotError> {
        let magic = b
            .get(0..4)
            .ok_or(SlotError::Corrupt(CorruptionKind::Truncated {
                needed: REGISTER_SLOT_BYTES as u64,
                available: b.len() as u64,
            }))?;
        if magic != REGISTER_MAGIC {
            return Err(SlotError::Corrupt(CorruptionKind::BadMagic));
        }
        let truncated = SlotError::Corrupt(CorruptionKind::Truncated {
            needed: REGISTER_SLOT_BYTES as u64,
            available: b.len() as u64,
        });
        let covered = b.get(..28).ok_or(truncated)?;
        let stored = u32_at(b, 28).ok_or(truncated)?;
        let computed = crc32fast::hash(covered);
        if stored != computed {
            return Err(SlotError::Corrupt(CorruptionKind::HeaderCrc {
                stored,
                computed,
            }));
        }
        let version = u16_at(b, 4).ok_or(truncated)?;
        if version != REGISTER_VERSION {
            return Err(SlotError::UnsupportedVersion(version));
        }
        if u16_at(b, 6) != Some(kind as u16) {
            return Err(SlotError::Corrupt(CorruptionKind::WrongRegister));
        }
        let value = u64_at(b, 16).ok_or(truncated)?;
        if value > REGISTER_VALUE_MAX {
            return Err(SlotError::Corrupt(CorruptionKind::OutOfRange { value }));
        }
        let generation = u64_at(b, 8).ok_or(truncated)?;
        if generation > REGISTER_GENERATION_MAX {
            return Err(SlotError::Corrupt(CorruptionKind::OutOfRange {
                value: generation,
            }));
        }
        Ok(Self {
            kind,
            generation,
            value,
        })
    }
}

/// Why a register slot was not accepted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum SlotError {
    /// Damaged or never written.
    Corrupt(CorruptionKind),
    /// CRC-valid, but of a version this build does not know.
    UnsupportedVersion(u16),
}

// ---------------------------------------------------------------------------------------
// File names
// ---------------------------------------------------------------------------------------

/// Suffix of segment files.
pub(crate) const SEGMENT_SUFFIX: &str = ".seg";
/// Digits in a segment file name: enough for `u64::MAX`, so names sort like seqs.
pub(crate) const SEGMENT_NAME_DIGITS: usize = 20;
/// Name of the cursor register file.
pub(crate) const CURSOR_FILE: &str = "CURSOR";
/// Name of the seq lease register file.
pub(crate) const SEQ_LEASE_FILE: &str = "SEQ_LEASE";
/// Name of the lock file.
pub(crate) const LOCK_FILE: &str = "LOCK";
/// The dead-letter store's directory inside the WAL directory (its files are segments
/// of this format; see `crate::dead_letter`).
pub(crate) const DEAD_LETTER_DIR: &str = "dead-letters";
/// Suffix appended to a file that could not be read, instead of deleting it.
pub(crate) const QUARANTINE_SUFFIX: &str = ".quarantined";

/// Builds the file name of the segment whose first seq is `first_seq`.
pub(crate) fn segment_file_name(first_seq: u64) -> String {
    format!(
        "{first_seq:0width$}{SEGMENT_SUFFIX}",
        width = SEGMENT_NAME_DIGITS
    )
}

/// Parses a segment file name back into its first seq (in `1..=MAX_SEQ`). Anything
/// else is `None`: not one of ours.
pub(crate) fn parse_segment_file_name(name: &str) -> Option<u64> {
    let digits = name.strip_suffix(SEGMENT_SUFFIX)?;
    if digits.len() != SEGMENT_NAME_DIGITS || !digits.bytes().all(|c| c.is_ascii_digit()) {
        return None;
    }
    digits
        .parse()
        .ok()
        .filter(|&seq| seq != 0 && seq <= MAX_SEQ)
}

#[cfg(test)]
mod tests;
