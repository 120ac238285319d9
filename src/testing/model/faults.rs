//! The model's faults beyond the simulated disk's own: bit rot in a frame, a forged
//! register, a crash of either kind, a graceful restart.

use super::*;

impl Case {
    /// Flips one bit of a frame already on disk (live and durable image alike: bit rot
    /// no crash undoes), in its length, CRC, seq or payload. Only that record may be
    /// lost.
    pub(super) fn rot_a_frame(&mut self) {
        let names = self.disk.names_in(&self.dir);
        let segments: Vec<&String> = names.iter().filter(|n| n.ends_with(".seg")).collect();
        if segments.is_empty() {
            return;
        }
        let name = segments[self.pick(segments.len() as u64) as usize].clone();
        let path = self.dir.join(&name);
        let Ok(bytes) = self.disk.read_live(&path) else {
            return;
        };
        // The case's own frame walk: header, then [len u32][crc u32][seq u64][payload].
        let mut frames = Vec::new();
        let mut at = SEGMENT_HEADER_BYTES;
        while let Some(h) = bytes.get(at..).and_then(FrameHeader::peek) {
            let end = at + h.frame_len();
            match bytes.get(at + FRAME_HEADER_BYTES..end) {
                Some(payload) if h.seq > 0 && h.verify(payload).is_ok() => {
                    frames.push((at, h.len as usize, payload.to_vec()));
                    at = end;
                }
                _ => break,
            }
        }
        if frames.is_empty() {
            return;
        }
        let (at, len, payload) = frames[self.pick(frames.len() as u64) as usize].clone();
        let Ok(id) = Codec::<u64>::decode(&BincodeCodec, &payload) else {
            return;
        };
        // Length bits 0..12 keep it within or near the record limit (a length reaching
        // past the end of the file, or a CRC mismatch); higher ones exceed the limit.
        let (field, bit) = match self.pick(4) {
            0 => {
                let bits = if self.pick(4) == 0 { 32 } else { 12 };
                ("len", self.pick(bits))
            }
            1 => ("crc", 32 + self.pick(32)),
            2 => ("seq", 64 + self.pick(64)),
            _ if len > 0 => ("payload", 128 + self.pick(len as u64 * 8)),
            _ => ("crc", 32 + self.pick(32)),
        };
        let byte = at + (bit / 8) as usize;
        let Some(&old) = bytes.get(byte) else {
            return;
        };
        self.steps.push(format!(
            "rot bit {bit} ({field}) of the frame of id {id} in {name}"
        ));
        if self
            .disk
            .damage(&path, byte as u64, &[old ^ (1 << (bit % 8))])
            .is_ok()
        {
            self.damaged.insert(id);
            ROTTED.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Forges a register after a crash, the way a bad disk or an operator could: CRC-
    /// valid slots holding values recovery must refuse (`cursor_on_disk` says what it
    /// then trusts).
    pub(super) fn forge_a_register(&mut self) {
        let (name, kind, generation, value, what) = match self.pick(4) {
            0 => (
                "CURSOR",
                RegisterKind::Cursor,
                1 << 40,
                (1 << 40) + self.pick(1000),
                "cursor far above the lease",
            ),
            1 => (
                "SEQ_LEASE",
                RegisterKind::SeqLease,
                1 << 40,
                MAX_SEQ + 2 + self.pick(1000),
                "lease beyond the seq space",
            ),
            2 => (
                "CURSOR",
                RegisterKind::Cursor,
                u64::MAX - self.pick(3),
                1 << 40,
                "cursor slot with an impossible generation",
            ),
            _ => (
                "SEQ_LEASE",
                RegisterKind::SeqLease,
                u64::MAX - self.pick(3),
                1,
                "lease slot with an impossible generation",
            ),
        };
        let slot = RegisterSlot {
            kind,
            generation,
            value,
        }
        .encode();
        let path = self.dir.join(name);
        let offsets: Vec<u64> = match generation {
            // A forged generation goes to the older slot: the one a torn or interrupted
            // write could have left. (Rot of the newest slot at rest is a double fault
            // for the cursor, which then moves back: duplicates, which the model allows
            // only above the cursor it read; the lease is written to both slots.)
            g if g > REGISTER_GENERATION_MAX => {
                older_slot(&self.disk, &path, kind).into_iter().collect()
            }
            // A forged winner goes to both slots.
            _ => REGISTER_SLOT_OFFSETS.to_vec(),
        };
        let mut forged = false;
        for offset in offsets {
            forged |= self.disk.damage(&path, offset, &slot).is_ok();
        }
        if forged {
            self.steps.push(format!("forge {name}: {what}"));
            FORGED.fetch_add(1, Ordering::Relaxed);
        }
    }

    pub(super) async fn stop_running(
        &mut self,
    ) -> Option<Result<crate::ShutdownReport, SinkError>> {
        let r = self.running.take()?;
        r.shutdown.cancel();
        drop(r.sink);
        let res = self.deadline("join", r.handle.join()).await;
        if let Err(SinkError::Internal(msg)) = &res {
            panic!("sink task panicked: {msg}; {}", self.ctx());
        }
        Some(res)
    }

    pub(super) async fn crash(&mut self, how: Crash) {
        // The process is dead from here: its drain acknowledges nothing more.
        world(&self.world).alive = 0;
        self.disk.flaky_reads(0);
        self.disk.crash(how);
        if how != Crash::Process {
            self.flipped |= matches!(how, Crash::PowerLoss { flip: true, .. });
        }
        // Wind the dead incarnation down (its I/O now fails).
        let _ = self.stop_running().await;
        self.disk.fail_sync_after(None);
        self.disk.space_bytes(None);
        // Accepted but not durable ids may or may not survive: forget them.
        self.accepted.clear();
        if self.pick(6) == 0 {
            self.forge_a_register();
        }
        let floor = self.cursor_on_disk();
        self.open(floor).await;
    }

    pub(super) async fn graceful_restart(&mut self) {
        self.disk.flaky_reads(0);
        let res = self.stop_running().await;
        let persisted = match &res {
            Some(Ok(report)) => Some(report.acked_seq),
            _ => None,
        };
        match res {
            Some(Ok(report)) => {
                if report.left_on_disk > 0 {
                    self.steps.push(format!(
                        "(shutdown deadline: {} records left on disk, cursor {})",
                        report.left_on_disk, report.acked_seq
                    ));
                }
                // A clean shutdown synced everything accepted.
                self.durable.extend(self.accepted.drain(..));
            }
            Some(Err(e)) => {
                self.note_err("join", &e);
                self.accepted.clear();
            }
            None => {}
        }
        self.disk.fail_sync_after(None);
        self.disk.space_bytes(None);
        // A graceful restart continues the epoch: it redelivers nothing the epoch
        // delivered... unless the sink had failed, in which case its cursor may be
        // behind, and a new epoch begins at the cursor on disk.
        let floor = if self.failed {
            self.cursor_on_disk()
        } else {
            None
        };
        self.open(floor).await;
        // Nor anything at or below the cursor the shutdown made durable.
        if let (None, Some(acked)) = (floor, persisted)
            && let Some(epoch) = self.epoch_of.get_mut(&self.incarnation)
        {
            epoch.floor = epoch.floor.max(acked);
        }
    }
}

/// Offset of the register slot with the lower generation (or an invalid one).
pub(super) fn older_slot(disk: &SimDisk, path: &Path, kind: RegisterKind) -> Option<u64> {
    let bytes = disk.read_live(path).ok()?;
    let generation = |offset: u64| {
        let at = usize::try_from(offset).ok()?;
        let slot = bytes.get(at..at + REGISTER_SLOT_BYTES)?;
        RegisterSlot::decode(slot, kind).ok().map(|s| s.generation)
    };
    let [a, b] = REGISTER_SLOT_OFFSETS;
    Some(if generation(a) < generation(b) { a } else { b })
}
