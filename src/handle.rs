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
    /// Records left on disk for the next open (0 when everything was delivered within
    /// `shutdown_timeout`). Seqs a crash left unused are not counted; records found
    /// damaged when read make the true number smaller.
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

    /// Whether the delivery task has ended (tests wait on it without joining).
    #[cfg(test)]
    pub(crate) fn task_finished(&self) -> bool {
        self.task.is_finished()
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
            Err(e) if e.is_panic() => Err(SinkError::Internal(crate::wal::writer::panic_message(
                e.into_panic().as_ref(),
            ))),
            Err(e) => Err(SinkError::Internal(e.to_string())),
        };
        if let Some(writer) = self.writer.take() {
            // The writer has sent its exit result before ending; joining is quick.
            let _ = tokio::task::spawn_blocking(move || writer.join()).await;
        }
        result
    }
}
