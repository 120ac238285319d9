//! The write-ahead log: design, limits, the life of a record, and what survives a crash.
//!
//! # Files
//!
//! One directory per sink (`0700`), files `0600`:
//!
//! | file | what |
//! |---|---|
//! | `LOCK` | flock'ed while a sink owns the directory |
//! | `CURSOR` | two-slot register: every seq at or below it was acknowledged |
//! | `SEQ_LEASE` | two-slot register: no seq at or above it was ever handed out |
//! | `<20-digit first seq>.seg` | a segment: header, then frames with contiguous seqs |
//! | `*.quarantined` | a file that could not be read, renamed aside (never deleted) |
//!
//! Byte layouts are in `docs/FORMAT.md` and [`format`]. Only [`storage`] touches the
//! filesystem, so a simulated disk can stand in for it.
//!
//! # Entry points
//!
//! - [`Wal::open`] (in `open.rs`): the sink's one door. It recovers the directory and
//!   hands back the writer (for the writer thread), the reader and the cursor (for the
//!   delivery task) and the state they share.
//! - [`view::WalView`]: a read-only look at a directory that a live sink may own: no
//!   lock, no repair, no byte changed. For tools.
//!
//! # Limits
//!
//! - a frame's payload: `max_record_bytes` for new records (at most 1 GiB, the format
//!   limit). Reading judges lengths by the format limit alone, so lowering
//!   `max_record_bytes` never turns records already written into damage; a length
//!   above the format limit is corruption, and one below it is read only as far as the
//!   file extends, never an allocation beyond it;
//! - a segment: `segment_bytes`, except a segment holding a single larger record;
//! - disk: `max_disk_bytes` counts segment bytes plus frames reserved by queued records;
//! - memory: the queue (`queue_capacity` records, and as many again in the writer's
//!   hands while it works through one take; records up to 4 KiB sit in its byte
//!   arena, which keeps at most 2 MiB of emptied chunks for reuse), the writer buffer (1 MiB plus one
//!   frame), the reader buffer (256 KiB or one frame; on a damaged length, up to the rest of that segment file while it is checked), one batch (`batch_size` records,
//!   cut at 8 MiB plus one record), and per thread that pushes batches, 1 024 encode
//!   buffers of 1 MiB in all kept for its next batch. None of them grows with the
//!   backlog on disk.
//!
//! # Life of a record
//!
//! 1. `try_push` encodes it on the caller, reserves its frame bytes from the budget and
//!    queues it ([`crate::inbox`]: a bounded queue that copies a small record's bytes
//!    once into its arena and wakes the writer only when it is idle). A batch push
//!    does the same for a run of records at once.
//! 2. The writer thread assigns the next seq, frames it (length, CRC-32, seq, payload),
//!    and writes the round's frames with one `pwrite` into the active segment, which
//!    was preallocated when it was created and is zero-filled a little ahead of the
//!    writer by the prefill thread ([`prefill`]: never over a byte the writer wrote). Then it publishes the segment's logical
//!    length and `written_seq`; readers never look past that length.
//!    From here on a process crash cannot lose the record (it is in the page cache).
//! 3. An fdatasync (per [`Durability`](crate::Durability), or requested by `sync` /
//!    `push_durable`) makes it durable: it now survives power loss. Concurrent
//!    waiters share it (group commit; the writer briefly gathers the callers it
//!    answered last round, see [`writer`]). Only then is the delivery task woken, and
//!    only if the backlog reached its threshold.
//! 4. The delivery task reads it back from the segment file (the same path as crash
//!    replay), decodes it and hands it to the drain in a batch.
//! 5. When the drain acknowledges, the cursor is written (page cache).
//! 6. When the cursor passes a whole sealed segment, the cursor is fsynced, then the
//!    segment is deleted and its bytes return to the budget.
//!
//! # Crash table
//!
//! | crash after step | process crash (`kill -9`) | power loss |
//! |---|---|---|
//! | 1 (queued) | lost: the record was never written | lost |
//! | 2 (written) | kept, replayed | lost unless a later fsync covered it |
//! | 3 (synced) | kept, replayed | kept, replayed |
//! | 4 (delivered, not acked) | replayed (duplicate) | replayed (duplicate) |
//! | 5 (cursor written) | not replayed | replayed if the cursor write was not yet synced |
//! | 6 (cursor synced, deleted) | not replayed | not replayed; an undone delete is redone at open |
//!
//! A seq always names one record: before handing out seqs past the lease, the writer
//! syncs its frames and fsyncs a higher lease into both register slots, and every open
//! starts at or above the lease (or, if the lease cannot be trusted, a lease block past
//! every seq the directory shows). A record that was delivered before a power loss
//! erased it from the WAL therefore never has its seq reused by a different record.
//! The writer refuses to hand out a seq past `MAX_SEQ` rather than write a frame no
//! reader would accept.
//!
//! The directory itself is made durable before anything in it is confirmed: open
//! fsyncs the parent of every directory it creates.
//!
//! # Invariants checked with `assert!`
//!
//! - seq strictly increases as frames are built; seq 0 is never written;
//! - `written_seq`, `synced_seq` and the cursor never move back; `synced_seq <=
//!   written_seq`;
//! - a segment is deleted only when the durable cursor is past it, and the active
//!   segment never is; the cursor recovery trusts is below the seq lease;
//! - a new segment starts above every existing one.

pub(crate) mod cursor;
pub(crate) mod format;
mod open;
pub(crate) mod prefill;
pub(crate) mod reader;
pub(crate) mod recovery;
pub(crate) mod register;
pub(crate) mod segment;
pub(crate) mod storage;
pub(crate) mod view;
pub(crate) mod writer;

pub(crate) use open::{Wal, WalConfig};
