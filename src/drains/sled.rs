//! [`SledDrain`] (feature `sled`): records into one tree of an embedded sled 0.34
//! database, keyed by their seq in big-endian (so keys sort like seqs), values
//! encoded with the default codec ([`BincodeCodec`](crate::BincodeCodec)).
//!
//! A batch is applied as one sled batch and `flush` completes before `write_batch`
//! acknowledges it (both on tokio's blocking pool). A replay after a crash writes the same keys again
//! with the same values: the tree holds each record once.
//!
//! sled 0.34 is the last release of a project that has not shipped since 2021, and its
//! tracker has reports of corruption after abrupt stops; walsink tests this drain under
//! `kill -9` (`tests/drain_kill.rs`) and keeps the feature off by default. The README
//! says what was measured.

use std::marker::PhantomData;
use std::path::Path;

use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::codec::{BincodeCodec, Codec};
use crate::drain::{Batch, DrainError, SinkDrain};

/// Records into a sled tree keyed by big-endian seq; see the module doc.
pub struct SledDrain<T> {
    db: sled::Db,
    tree: sled::Tree,
    _records: PhantomData<fn(T)>,
}

impl<T> std::fmt::Debug for SledDrain<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SledDrain")
            .field("tree", &String::from_utf8_lossy(&self.tree.name()))
            .finish_non_exhaustive()
    }
}

impl<T: Serialize + DeserializeOwned + Send + 'static> SledDrain<T> {
    /// Opens (or creates) the database at `path` and its tree `tree`.
    ///
    /// # Errors
    ///
    /// sled's error if the database cannot be opened.
    pub fn open(path: impl AsRef<Path>, tree: &str) -> Result<Self, sled::Error> {
        let db = sled::open(path)?;
        Self::with_db(db, tree)
    }

    /// Uses tree `tree` of an open database.
    ///
    /// # Errors
    ///
    /// sled's error if the tree cannot be opened.
    pub fn with_db(db: sled::Db, tree: &str) -> Result<Self, sled::Error> {
        let tree = db.open_tree(tree)?;
        Ok(Self {
            db,
            tree,
            _records: PhantomData,
        })
    }

    /// The tree (for reading back: keys are `seq.to_be_bytes()`).
    pub fn tree(&self) -> &sled::Tree {
        &self.tree
    }

    /// Reads the tree back: `(seq, record)` in seq order.
    ///
    /// # Errors
    ///
    /// sled's error, or a record that does not decode.
    pub fn records(
        tree: &sled::Tree,
    ) -> Result<Vec<(u64, T)>, Box<dyn std::error::Error + Send + Sync>> {
        let mut out = Vec::new();
        for kv in tree.iter() {
            let (k, v) = kv?;
            let key: [u8; 8] = k.as_ref().try_into()?;
            out.push((
                u64::from_be_bytes(key),
                Codec::<T>::decode(&BincodeCodec, &v)?,
            ));
        }
        Ok(out)
    }
}

impl<T: Serialize + DeserializeOwned + Send + 'static> SinkDrain<T> for SledDrain<T> {
    async fn write_batch(&mut self, batch: Batch<T>) -> Result<(), DrainError> {
        let mut b = sled::Batch::default();
        let mut buf = Vec::new();
        for (seq, record) in batch.iter() {
            buf.clear();
            Codec::<T>::encode(&BincodeCodec, record, &mut buf).map_err(DrainError::permanent)?;
            b.insert(&seq.to_be_bytes(), buf.as_slice());
        }
        let (tree, db) = (self.tree.clone(), self.db.clone());
        // Blocking calls on the blocking pool; `flush` rather than `flush_async`,
        // which is reported to deadlock when flushes run concurrently (sled #1308).
        tokio::task::spawn_blocking(move || {
            tree.apply_batch(b)?;
            // Durable before acknowledged.
            db.flush()
        })
        .await
        .map_err(DrainError::retryable)?
        .map_err(DrainError::retryable)?;
        Ok(())
    }

    async fn close(&mut self) -> Result<(), DrainError> {
        let db = self.db.clone();
        tokio::task::spawn_blocking(move || db.flush())
            .await
            .map_err(DrainError::retryable)?
            .map_err(DrainError::retryable)?;
        Ok(())
    }
}
