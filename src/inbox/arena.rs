//! The queue's byte arena: where a small record's encoded bytes travel from a producer
//! to the writer.
//!
//! A producer copies a record of at most [`MAX_ARENA_BYTES`] into the arena once,
//! under the queue lock, and its message holds the place ([`BytesAt`]). The writer
//! takes the arena chunks with the messages and reads the bytes from its [`Arena`].
//! Without the arena, a record travelled inside a 144-byte message that was copied on
//! every move: `perf` put a third of `try_push`'s CPU in `memmove`. A larger record
//! travels in its own allocation ([`Payload::Heap`]).
//!
//! # Invariants
//!
//! - Chunks are numbered by a serial that grows by one per new chunk, and are taken in
//!   serial order with no gap, so a [`BytesAt`] (serial, offset, length) names the same
//!   bytes in the receiver's [`Arena`] whatever the takes in between.
//! - A record's bytes never straddle two chunks, so no chunk grows past
//!   [`ARENA_CHUNK_BYTES`] and offsets and lengths fit in `u32`.
//! - The receiver gives chunks back only when every message it took was handled.

/// Bytes per arena chunk. A record's bytes never straddle two chunks.
const ARENA_CHUNK_BYTES: usize = 64 << 10;
/// Largest record copied into the arena; larger ones travel in their own allocation.
const MAX_ARENA_BYTES: usize = 4 << 10;
const _: () = assert!(MAX_ARENA_BYTES <= ARENA_CHUNK_BYTES);
/// Emptied arena chunks kept for reuse (2 MiB): enough for the bursts a writer round
/// takes at once without making an idle sink hold a large backlog's memory.
const ARENA_SPARE_CHUNKS: usize = 32;

/// Where a record's bytes are in the arena.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct BytesAt {
    pub(super) serial: u64,
    pub(super) offset: u32,
    pub(super) len: u32,
}

/// An encoded record on its way to the writer: in the queue's arena when small (copied
/// there once, under the queue lock), else in its own allocation.
#[derive(Debug)]
pub(crate) enum Payload {
    /// In the arena of the take that holds the message.
    Queued(BytesAt),
    /// A larger record, or one detached from the arena.
    Heap(Vec<u8>),
}

impl Payload {
    /// The bytes; `None` if a queued payload is not in `arena` (a bug: the caller
    /// fails the sink rather than write something else).
    pub(crate) fn bytes<'a>(&'a self, arena: &'a Arena) -> Option<&'a [u8]> {
        match self {
            Self::Queued(at) => arena.get(*at),
            Self::Heap(v) => Some(v),
        }
    }

    /// Number of bytes.
    pub(crate) fn len(&self) -> usize {
        match self {
            Self::Queued(at) => at.len as usize,
            Self::Heap(v) => v.len(),
        }
    }

    /// Copies a queued payload out of `arena`, for a message that outlives its take
    /// (held while the disk is full). A payload missing from `arena` is left as it is:
    /// its serial is older than any later take's, so the writer finds it missing and
    /// fails the sink.
    pub(crate) fn detach(&mut self, arena: &Arena) {
        if let Self::Queued(at) = self
            && let Some(bytes) = arena.get(*at)
        {
            *self = Self::Heap(bytes.to_vec());
        }
    }
}

/// Arena chunks taken from the queue, consecutive serials from `first_serial`.
#[derive(Debug, Default)]
pub(crate) struct Arena {
    pub(super) chunks: Vec<Vec<u8>>,
    first_serial: u64,
}

impl Arena {
    /// The bytes at `at`; `None` only if `at` came from another queue or its chunk
    /// was given back (a bug, reported by the caller rather than panicking).
    pub(crate) fn get(&self, at: BytesAt) -> Option<&[u8]> {
        let i = usize::try_from(at.serial.checked_sub(self.first_serial)?).ok()?;
        let start = at.offset as usize;
        self.chunks
            .get(i)?
            .get(start..start.checked_add(at.len as usize)?)
    }
}

/// The queue's side of the arena (under the queue lock): the chunks holding queued
/// records' bytes, and the spares.
#[derive(Debug, Default)]
pub(super) struct ArenaQueue {
    /// Chunks holding queued records' bytes; the last one is filling.
    chunks: Vec<Vec<u8>>,
    /// Serial the next new chunk gets.
    next_serial: u64,
    /// Emptied chunks, ready for reuse.
    spare: Vec<Vec<u8>>,
}

impl ArenaQueue {
    /// The payload for `bytes`: copied into the arena when small (the caller keeps
    /// its buffer), else moved out of `bytes`.
    pub(super) fn payload(&mut self, bytes: &mut Vec<u8>) -> Payload {
        if bytes.len() <= MAX_ARENA_BYTES {
            Payload::Queued(self.push(bytes))
        } else {
            Payload::Heap(std::mem::take(bytes))
        }
    }

    /// Copies `bytes` (at most [`MAX_ARENA_BYTES`]) into the last chunk if they fit,
    /// else into a new one, and says where.
    fn push(&mut self, bytes: &[u8]) -> BytesAt {
        debug_assert!(bytes.len() <= MAX_ARENA_BYTES);
        let fits = self
            .chunks
            .last()
            .is_some_and(|c| c.capacity() - c.len() >= bytes.len());
        if !fits {
            let chunk = self
                .spare
                .pop()
                .unwrap_or_else(|| Vec::with_capacity(ARENA_CHUNK_BYTES));
            self.chunks.push(chunk);
            self.next_serial += 1;
        }
        let serial = self.next_serial - 1;
        let chunk = self.chunks.last_mut();
        let offset = chunk.as_ref().map_or(0, |c| c.len());
        if let Some(c) = chunk {
            c.extend_from_slice(bytes);
        }
        BytesAt {
            serial,
            // Both fit: at most `MAX_ARENA_BYTES` at a time, so no chunk grows past
            // `ARENA_CHUNK_BYTES`.
            offset: offset as u32,
            len: bytes.len() as u32,
        }
    }

    /// Moves every chunk to `out`, which restarts at the oldest one if it was empty.
    pub(super) fn take_into(&mut self, out: &mut Arena) {
        if out.chunks.is_empty() {
            out.first_serial = self.next_serial - self.chunks.len() as u64;
        }
        out.chunks.append(&mut self.chunks);
    }

    /// Takes back `out`'s chunks for reuse (every message taken with them was handled).
    pub(super) fn recycle(&mut self, out: &mut Arena) {
        for mut chunk in out.chunks.drain(..) {
            if self.spare.len() < ARENA_SPARE_CHUNKS && chunk.capacity() == ARENA_CHUNK_BYTES {
                chunk.clear();
                self.spare.push(chunk);
            }
        }
    }

    /// No emptied chunk is kept for reuse.
    #[cfg(test)]
    pub(super) fn spare_is_empty(&self) -> bool {
        self.spare.is_empty()
    }

    /// Frees every chunk (the receiver is gone).
    pub(super) fn clear(&mut self) {
        self.chunks = Vec::new();
        self.spare = Vec::new();
    }
}
