//! The model's oracle: the invariants checked after every step and the final checks
//! (what was confirmed durable is delivered, duplicates only where a crash allows
//! them, per epoch).

use super::*;

impl Case {
    /// The cursor recovery will trust, from the image the next open sees: the cursor
    /// register's value, unless it is impossible (at or above a trusted lease, or
    /// beyond the seq space), in which case delivery restarts at the oldest segment.
    pub(super) fn cursor_on_disk(&self) -> Option<u64> {
        let storage = self.disk.storage();
        let read =
            |name: &str, kind| match Register::open(storage.as_ref(), &self.dir.join(name), kind) {
                Ok(RegisterOpen::Loaded(r)) => Some(r.value()),
                Ok(RegisterOpen::Missing | RegisterOpen::Unreadable) => None,
                Ok(other) => panic!("{name}: {other:?}; {}", self.ctx()),
                Err(e) => panic!("reading {name} failed: {e}; {}", self.ctx()),
            };
        let cursor = read("CURSOR", RegisterKind::Cursor).unwrap_or(0);
        let lease = read("SEQ_LEASE", RegisterKind::SeqLease).filter(|&l| l <= MAX_SEQ + 1);
        let impossible = cursor > MAX_SEQ || (cursor > 0 && lease.is_some_and(|l| cursor >= l));
        Some(if impossible { 0 } else { cursor })
    }

    pub(super) fn check_invariants(&self) {
        let w = world(&self.world);
        let mut id_of_seq: BTreeMap<u64, u64> = BTreeMap::new();
        let mut seq_of_id: BTreeMap<u64, u64> = BTreeMap::new();
        let mut last: HashMap<u64, (u64, u64)> = HashMap::new();
        let mut last_inc: HashMap<u64, u64> = HashMap::new();
        for d in &w.log {
            assert!(
                !self.refused.contains(&d.id),
                "refused id {} was delivered; {}",
                d.id,
                self.ctx()
            );
            assert!(
                d.id < self.next_id,
                "unknown id {} delivered; {}",
                d.id,
                self.ctx()
            );
            if let Some(&id) = id_of_seq.get(&d.seq) {
                assert_eq!(
                    id,
                    d.id,
                    "seq {} named ids {id} and {}; {}",
                    d.seq,
                    d.id,
                    self.ctx()
                );
            }
            if let Some(&seq) = seq_of_id.get(&d.id) {
                assert_eq!(
                    seq,
                    d.seq,
                    "id {} had seqs {seq} and {}; {}",
                    d.id,
                    d.seq,
                    self.ctx()
                );
            }
            if let Some(&seq) = self.seq_of.get(&d.id) {
                assert_eq!(
                    seq,
                    d.seq,
                    "push_durable said seq {seq} for id {}, delivered as {}; {}",
                    d.id,
                    d.seq,
                    self.ctx()
                );
            }
            id_of_seq.insert(d.seq, d.id);
            seq_of_id.insert(d.id, d.seq);
            if let Some(&(seq, id)) = last.get(&d.incarnation) {
                assert!(
                    d.seq > seq && d.id > id,
                    "incarnation {} delivered {:?} after seq {seq} id {id}; {}",
                    d.incarnation,
                    d,
                    self.ctx()
                );
            }
            last.insert(d.incarnation, (d.seq, d.id));
            if let Some(&inc) = last_inc.get(&d.id) {
                assert!(
                    inc < d.incarnation,
                    "id {} delivered twice in incarnation {inc}; {}",
                    d.id,
                    self.ctx()
                );
                let epoch = self
                    .epoch_of
                    .get(&d.incarnation)
                    .copied()
                    .unwrap_or(Epoch { began: 1, floor: 0 });
                assert!(
                    inc < epoch.began,
                    "id {} (seq {}) delivered in incarnation {inc}, then again in {} with no crash between (epoch began in {}); {}",
                    d.id,
                    d.seq,
                    d.incarnation,
                    epoch.began,
                    self.ctx()
                );
                assert!(
                    d.seq > epoch.floor,
                    "id {} (seq {}) redelivered though the cursor {} had passed it; {}",
                    d.id,
                    d.seq,
                    epoch.floor,
                    self.ctx()
                );
            }
            last_inc.insert(d.id, d.incarnation);
        }
        drop(w);
        let seg = self.disk.bytes_of(".seg");
        let limit = self.cfg.max_disk_bytes + self.cfg.segment_bytes;
        assert!(
            seg <= limit,
            "segments hold {seg} bytes, budget {} + one segment {}; {}",
            self.cfg.max_disk_bytes,
            self.cfg.segment_bytes,
            self.ctx()
        );
    }

    pub(super) async fn finish(&mut self) {
        self.steps.push("final graceful restart and flush".into());
        self.graceful_restart().await;
        let sink = self.sink();
        world(&self.world).fail_next = 0;
        self.deadline("final flush", sink.flush())
            .await
            .unwrap_or_else(|e| panic!("final flush failed: {e}; {}", self.ctx()));
        self.check_invariants();
        self.check_final();
        let _ = self.stop_running().await;
    }

    /// Every durable id delivered; without bit flips, no hole in any incarnation.
    pub(super) fn check_final(&self) {
        let w = world(&self.world);
        let delivered: BTreeSet<u64> = w.log.iter().map(|d| d.id).collect();
        for id in &self.durable {
            assert!(
                delivered.contains(id) || w.poison.contains(id) || self.damaged.contains(id),
                "durable id {id} was never delivered; {}",
                self.ctx()
            );
        }
        if !self.flipped {
            // Without bit flips a crash loses only a suffix of what an incarnation
            // accepted (the queue, then unsynced frames in write order), so below the
            // highest id delivered from an incarnation there is no hole.
            let mut by_inc: BTreeMap<u64, Vec<u64>> = BTreeMap::new();
            for &(inc, id) in &self.accepted_log {
                by_inc.entry(inc).or_default().push(id);
            }
            for (inc, ids) in by_inc {
                let Some(&max) = ids.iter().filter(|id| delivered.contains(id)).max() else {
                    continue;
                };
                for id in ids.into_iter().filter(|&id| id < max) {
                    assert!(
                        delivered.contains(&id)
                            || w.poison.contains(&id)
                            || self.damaged.contains(&id),
                        "id {id} accepted by incarnation {inc} is missing below delivered id {max}; {}",
                        self.ctx()
                    );
                }
            }
        }
    }
}
