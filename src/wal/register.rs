//! A durable `u64` in two checksummed slots: the cursor and the seq lease.
//!
//! # Protocol
//!
//! The file holds two [`RegisterSlot`]s in different 4 KiB blocks. Each write bumps a
//! generation and goes to the *scratch* slot; the other slot, the *durable* one, holds
//! the last value made durable by [`Register::sync`] and is never written until a newer
//! value is durable. `sync` fsyncs the file and swaps the roles.
//!
//! On open, both slots are decoded and the valid one with the higher generation wins.
//! Why that is safe after a power loss at any point:
//! - the durable slot was not touched since its fsync, so it decodes;
//! - the scratch slot holds either a newer value (higher generation, correctly wins),
//!   a torn write (CRC fails, ignored), or the value from two syncs ago (lower
//!   generation, loses).
//!
//! So the register never reads back below the last durable value, and a torn write
//! can never make it unreadable. Between syncs, writes survive a process crash (they
//! are in the page cache) but not a power loss.

use std::io;
use std::path::Path;

use super::format::{
    REGISTER_FILE_BYTES, REGISTER_SLOT_BYTES, REGISTER_SLOT_OFFSETS, REGISTER_VALUE_MAX,
    RegisterKind, RegisterSlot, SlotError,
};
use super::storage::{Storage, StorageFile, read_full_at};

/// A register opened with a generation above this is renumbered (half the decode bound,
/// `REGISTER_GENERATION_MAX`: 2^61 writes, never reached by a real one).
const REGISTER_RENUMBER_ABOVE: u64 = 1 << 61;

/// An open register file.
#[derive(Debug)]
pub(crate) struct Register {
    file: Box<dyn StorageFile>,
    kind: RegisterKind,
    /// Generation of the most recently written slot.
    generation: u64,
    /// Most recently written value.
    value: u64,
    /// Value known durable.
    durable_value: u64,
    /// Index of the slot holding `durable_value`.
    durable_slot: usize,
    /// A value was written to the scratch slot since the last sync.
    dirty: bool,
    /// The last fsync failed and no write came since: the scratch slot's pages may be
    /// clean in the page cache without being on disk, so the next sync rewrites them.
    sync_failed: bool,
}

/// What was found when opening a register file.
#[derive(Debug)]
pub(crate) enum RegisterOpen {
    /// A valid slot was found; the register is open.
    Loaded(Register),
    /// The file does not exist.
    Missing,
    /// The file exists but neither slot decodes.
    Unreadable,
    /// A CRC-valid slot of an unknown version.
    UnsupportedVersion(u16),
}

/// What [`Register::peek`] found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum RegisterPeek {
    /// The value of the winning slot.
    Value(u64),
    /// The file does not exist.
    Missing,
    /// Neither slot decodes.
    Unreadable,
    /// A CRC-valid slot of an unknown version.
    UnsupportedVersion(u16),
}

/// The slot a reader trusts: the valid one with the higher generation.
enum Winner {
    Slot(usize, RegisterSlot),
    Unreadable,
    UnsupportedVersion(u16),
}

/// Decodes both slots and picks the winner (see the module doc).
fn winning_slot(file: &dyn StorageFile, kind: RegisterKind) -> io::Result<Winner> {
    let mut best: Option<(usize, RegisterSlot)> = None;
    for (i, &offset) in REGISTER_SLOT_OFFSETS.iter().enumerate() {
        let mut buf = [0u8; REGISTER_SLOT_BYTES];
        let n = read_full_at(file, &mut buf, offset)?;
        match RegisterSlot::decode(buf.get(..n).unwrap_or_default(), kind) {
            Ok(slot) => {
                if best.is_none_or(|(_, b)| slot.generation > b.generation) {
                    best = Some((i, slot));
                }
            }
            Err(SlotError::UnsupportedVersion(v)) => return Ok(Winner::UnsupportedVersion(v)),
            Err(SlotError::Corrupt(_)) => {}
        }
    }
    Ok(best.map_or(Winner::Unreadable, |(i, slot)| Winner::Slot(i, slot)))
}

impl Register {
    /// Opens an existing register file and makes its current value durable (a value
    /// read back from the page cache may not be durable yet; see the comment inside).
    pub(crate) fn open(
        storage: &dyn Storage,
        path: &Path,
        kind: RegisterKind,
    ) -> io::Result<RegisterOpen> {
        let file = match storage.open(path, true) {
            Ok(f) => f,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(RegisterOpen::Missing),
            Err(e) => return Err(e),
        };
        let (slot_index, slot) = match winning_slot(file.as_ref(), kind)? {
            Winner::Slot(index, slot) => (index, slot),
            Winner::Unreadable => return Ok(RegisterOpen::Unreadable),
            Winner::UnsupportedVersion(v) => return Ok(RegisterOpen::UnsupportedVersion(v)),
        };
        // Rewrite the winning slot in place, then fsync. The slot may be in the page
        // cache only: written before a process crash, or, worse, left clean-but-not-
        // durable by a failed fsync of an earlier process (after which a plain fsync
        // would write nothing). Rewriting identical bytes makes them dirty, so the fsync
        // really persists them; a power loss during it tears only this slot, while the
        // other slot, which may hold the last truly durable value, is never touched.
        // Only then is this slot treated as the durable one.
        file.write_all_at(&slot.encode(), REGISTER_SLOT_OFFSETS[slot_index])?;
        file.sync()?;
        let mut generation = slot.generation;
        if generation > REGISTER_RENUMBER_ABOVE {
            // Only a forged or damaged slot gets here. Renumber both slots to 1 and 2, the
            // other slot first, each synced: at every point in between, both slots that
            // decode hold this value, and later writes stay far below the decode bound.
            for (index, renumbered) in [(1 - slot_index, 1), (slot_index, 2)] {
                let slot = RegisterSlot {
                    generation: renumbered,
                    ..slot
                };
                file.write_all_at(&slot.encode(), REGISTER_SLOT_OFFSETS[index])?;
                file.sync()?;
            }
            generation = 2;
        }
        Ok(RegisterOpen::Loaded(Self {
            file,
            kind,
            generation,
            value: slot.value,
            durable_value: slot.value,
            durable_slot: slot_index,
            dirty: false,
            sync_failed: false,
        }))
    }

    /// Creates a new register file holding `value`, durable (file and directory entry)
    /// before it returns. Fails if the file exists.
    pub(crate) fn create(
        storage: &dyn Storage,
        dir: &Path,
        name: &str,
        kind: RegisterKind,
        value: u64,
    ) -> io::Result<Self> {
        let file = storage.create_new(&dir.join(name))?;
        let slot = RegisterSlot {
            kind,
            generation: 1,
            value,
        };
        // Write the whole file, both slots' blocks included, rather than extending it
        // with set_len: a sparse block would need allocating at the first write to the
        // other slot, and on a full disk that write fails. The cursor must always be
        // writable, because advancing it is what frees space (found by the tmpfs test).
        let mut image = vec![0u8; REGISTER_FILE_BYTES as usize];
        image[..REGISTER_SLOT_BYTES].copy_from_slice(&slot.encode());
        file.write_all_at(&image, REGISTER_SLOT_OFFSETS[0])?;
        // Sync the file: a power loss must not leave the new register with no valid slot.
        file.sync()?;
        // Sync the directory: a power loss could drop the new file's entry, and the next
        // open would treat the register as missing (cursor: replay from the oldest
        // segment; lease: no bound on seqs handed out).
        storage.sync_dir(dir)?;
        Ok(Self {
            file,
            kind,
            generation: 1,
            value,
            durable_value: value,
            durable_slot: 0,
            dirty: false,
            sync_failed: false,
        })
    }

    /// The most recently written value.
    pub(crate) fn value(&self) -> u64 {
        self.value
    }

    /// The value that survives a power loss.
    pub(crate) fn durable_value(&self) -> u64 {
        self.durable_value
    }

    /// Reads a register file's current value without changing anything (no lock, no
    /// rewrite, no fsync): for reading a directory a live sink may own. The value is
    /// what the next open would start from, before its cross-checks.
    pub(crate) fn peek(
        storage: &dyn Storage,
        path: &Path,
        kind: RegisterKind,
    ) -> io::Result<RegisterPeek> {
        let file = match storage.open(path, false) {
            Ok(f) => f,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(RegisterPeek::Missing),
            Err(e) => return Err(e),
        };
        Ok(match winning_slot(file.as_ref(), kind)? {
            Winner::Slot(_, slot) => RegisterPeek::Value(slot.value),
            Winner::Unreadable => RegisterPeek::Unreadable,
            Winner::UnsupportedVersion(v) => RegisterPeek::UnsupportedVersion(v),
        })
    }

    /// Writes `value` to the scratch slot: survives a process crash, not a power loss.
    /// A value above `REGISTER_VALUE_MAX` is refused (it would not decode).
    pub(crate) fn write(&mut self, value: u64) -> io::Result<()> {
        if value > REGISTER_VALUE_MAX {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("register value {value} above {REGISTER_VALUE_MAX}"),
            ));
        }
        // Open renumbers a generation above 2^61, so this fails only after 2^61 more
        // writes: never in practice, and never by wrapping to a value a stale slot beats.
        let generation = self
            .generation
            .checked_add(1)
            .ok_or_else(|| io::Error::other("register generation exhausted"))?;
        let slot = RegisterSlot {
            kind: self.kind,
            generation,
            value,
        };
        let scratch = 1 - self.durable_slot;
        self.file
            .write_all_at(&slot.encode(), REGISTER_SLOT_OFFSETS[scratch])?;
        self.generation = generation;
        self.value = value;
        self.dirty = true;
        // The whole slot was just written again: its pages are dirty.
        self.sync_failed = false;
        Ok(())
    }

    /// Makes the last written value durable.
    pub(crate) fn sync(&mut self) -> io::Result<()> {
        if !self.dirty {
            return Ok(());
        }
        if self.sync_failed {
            // After a failed fsync the kernel may have marked the scratch slot's pages
            // clean without writing them: a second fsync would then "succeed" with
            // nothing on disk, and this slot be taken for durable while the next write
            // goes to the other one, the last value truly durable. Rewriting the same
            // bytes makes them dirty again, so the fsync below really persists them.
            let slot = RegisterSlot {
                kind: self.kind,
                generation: self.generation,
                value: self.value,
            };
            self.file
                .write_all_at(&slot.encode(), REGISTER_SLOT_OFFSETS[1 - self.durable_slot])?;
        }
        // fsync: until it returns, a power loss may revert the scratch slot, and the
        // durable slot (untouched) still holds the previous durable value.
        if let Err(e) = self.file.sync() {
            self.sync_failed = true;
            return Err(e);
        }
        self.sync_failed = false;
        self.durable_slot = 1 - self.durable_slot;
        self.durable_value = self.value;
        self.dirty = false;
        Ok(())
    }

    /// Writes and syncs `value`.
    pub(crate) fn write_durable(&mut self, value: u64) -> io::Result<()> {
        self.write(value)?;
        self.sync()
    }

    /// Writes and syncs `value` into both slots, one after the other. For the seq
    /// lease, where falling back to an older value is not harmless (it could hand out a
    /// seq again): after this returns, damage to either slot at rest leaves the other
    /// holding the same value. A crash between the two writes leaves the first durable
    /// and the second untouched or torn, as with a plain `write_durable`.
    pub(crate) fn write_durable_mirrored(&mut self, value: u64) -> io::Result<()> {
        self.write_durable(value)?;
        self.write_durable(value)
    }
}

#[cfg(test)]
mod tests;
