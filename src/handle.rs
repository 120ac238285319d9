//! [`SinkHandle`]: awaiting a sink's shutdown and learning how it went.

use std::thread::JoinHandle as ThreadHandle;

use tokio::task::JoinHandle;

use crate::error::SinkError;

/// What a graceful shutdown achieved.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct ShutdownReport {
    /// Every record at or below this seq was acknowledged; the cursor is durable there.
    pub acked_seq: u64,
    /// Last seq written to the WAL.
    pub written_seq: u64,
    /// Last seq made durable (equals `written_seq` after a clean writer stop).
    pub synced_seq: u64,
    /// Upper bound of records left on disk for the next open (0 when everything was
    /// delivered within `shutdown_timeout`).
    pub left_on_disk: u64,
    /// The error `drain.close()` returned, if any.
    pub drain_close_error: Option<String>,
}

/// Owned by whoever opened the sink; [`join`](Self::join) waits for shutdown.
///
/// Shutdown starts when the `CancellationToken` given to `open` is cancelled, or when
/// every clone of the [`DurableSink`](crate::DurableSink) has been dropped. Dropping the
/// handle does not stop the sink.
#[derive(Debug)]
pub struct SinkHandle {
    task: JoinHandle<Result<ShutdownReport, SinkError>>,
    writer: Option<ThreadHandle<()>>,
}

impl SinkHandle {
    pub(crate) fn new(
        task: JoinHandle<Result<ShutdownReport, SinkError>>,
        writer: ThreadHandle<()>,
    ) -> Self {
        Self {
            task,
            writer: Some(writer),
        }
    }

    /// Waits until the sink has shut down: the writer synced, delivery stopped (all
    /// written records acknowledged, or `shutdown_timeout` passed), the cursor made
    /// durable, `drain.close()` called, and the directory lock released.
    ///
    /// # Cancel safety
    ///
    /// Not cancel safe in the sense that the handle is consumed: dropping the future
    /// leaves the sink shutting down in the background, with no way to learn the outcome.
    ///
    /// # Errors
    ///
    /// `Io` if the WAL failed during the sink's life (what was durable is recovered by
    /// the next open); `Internal` if the delivery task panicked (an invariant violation,
    /// or a panic inside the drain).
    pub async fn join(mut self) -> Result<ShutdownReport, SinkError> {
        let result = match (&mut self.task).await {
            Ok(r) => r,
            Err(e) if e.is_panic() => {
                let payload = e.into_panic();
                let msg = payload
                    .downcast_ref::<String>()
                    .cloned()
                    .or_else(|| payload.downcast_ref::<&str>().map(|s| s.to_string()))
                    .unwrap_or_else(|| "panic".to_string());
                Err(SinkError::Internal(msg))
            }
            Err(e) => Err(SinkError::Internal(e.to_string())),
        };
        if let Some(writer) = self.writer.take() {
            // The writer has sent its exit result before ending; joining is quick.
            let _ = tokio::task::spawn_blocking(move || writer.join()).await;
        }
        result
    }
}
