//! Opening a sink: recover the WAL and the dead-letter store under one lock (on the
//! blocking pool), then start the writer thread and the delivery task, wired so that
//! either one ending stops the other.

use std::sync::{Arc, Weak};

use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;

use super::{DurableSink, Inner};
use crate::actor::{Actor, ActorInit};
use crate::codec::Codec;
use crate::config::{Durability, SinkConfig};
use crate::dead_letter::{DeadLetterStore, StoreFiles, WalAppend};
use crate::drain::SinkDrain;
use crate::error::OpenError;
use crate::handle::SinkHandle;
use crate::inbox;
use crate::metrics::Metrics;
use crate::wal::storage::Storage;
use crate::wal::writer::{SyncPolicy, spawn_writer};
use crate::wal::{Wal, WalConfig};

impl<T: Send + 'static> DurableSink<T> {
    /// Opens on `storage` (the real filesystem, or a fault-injecting one in tests).
    pub(crate) async fn open_on<D: SinkDrain<T>>(
        storage: Arc<dyn Storage>,
        config: SinkConfig,
        codec: Arc<dyn Codec<T>>,
        drain: D,
        shutdown: CancellationToken,
    ) -> Result<(Self, SinkHandle), OpenError> {
        config.validate()?;
        let wal_config = WalConfig {
            dir: config.dir.clone(),
            codec_id: codec.id(),
            segment_bytes: config.segment_bytes,
            max_disk_bytes: config.max_disk_bytes,
            sync_policy: match config.durability {
                Durability::Always => SyncPolicy::EveryRound,
                Durability::Interval(d) => SyncPolicy::Within(d),
                Durability::Never => SyncPolicy::OnRequest,
            },
            prefill: true,
        };
        let metrics = Metrics::new(config.metric_prefix.as_deref());
        let dir = config.dir.clone();
        let codec_id = codec.id();
        let max_dead_letter_bytes = config.max_dead_letter_bytes;
        let wal_storage = Arc::clone(&storage);
        let (wal, dead_letter_files) = tokio::task::spawn_blocking(move || {
            let wal = Wal::open(wal_storage, wal_config, metrics)?;
            // Under the lock `Wal::open` took.
            let files = StoreFiles::open(
                Arc::clone(&storage),
                &dir,
                codec_id,
                max_dead_letter_bytes,
                true,
            )
            .map_err(|source| OpenError::Io {
                op: "open the dead-letter store",
                path: dir.join(crate::dead_letter::DEAD_LETTER_DIR),
                source,
            })?;
            Ok::<_, OpenError>(((wal, storage, dir), files))
        })
        .await
        .map_err(|e| OpenError::Io {
            op: "recover",
            path: config.dir.clone(),
            source: std::io::Error::other(e.to_string()),
        })??;
        let (wal, storage, dir) = wal;
        let Wal {
            shared,
            writer,
            reader,
            cursor,
            replay_through,
            report,
            lock,
        } = wal;

        // The writer stops on the user's token, or when the delivery task ends for any
        // reason (including a panic): producers then see `Closed`, never a hang.
        let stop_writer = shutdown.child_token();
        let (tx, rx) = inbox::channel(config.queue_capacity);
        let (flush_tx, flush_rx) = mpsc::unbounded_channel();
        let (exit_tx, exit_rx) = oneshot::channel();
        let thread =
            spawn_writer(writer, rx, flush_tx, stop_writer.clone(), exit_tx).map_err(|e| {
                OpenError::Io {
                    op: "start writer thread",
                    path: dir.clone(),
                    source: e,
                }
            })?;

        let inner = Arc::new_cyclic(|me: &Weak<Inner<T>>| {
            let appender: Weak<dyn WalAppend> = me.clone();
            Inner {
                tx,
                shared: Arc::clone(&shared),
                codec: Arc::clone(&codec),
                overflow: config.overflow,
                max_record_bytes: config.max_record_bytes,
                dead_letters: DeadLetterStore::online(
                    storage,
                    dir.clone(),
                    dead_letter_files,
                    lock,
                    appender,
                ),
                dir,
                report,
            }
        });
        let actor = Actor::new(ActorInit {
            drain,
            codec: Arc::clone(&codec),
            dead_letters: inner.dead_letters.clone(),
            dead_letter_policy: config.dead_letters,
            reader,
            cursor,
            shared: Arc::clone(&shared),
            flushes: flush_rx,
            writer_exit: exit_rx,
            shutdown,
            stop_writer,
            replay_through,
            batch_size: config.batch_size,
            flush_interval: config.flush_interval,
            retry: config.retry,
            shutdown_timeout: config.shutdown_timeout,
        });
        let task = tokio::spawn(actor.run());
        Ok((Self { inner }, SinkHandle::new(task, thread)))
    }
}
