//! What producers send the writer thread: encoded records (their bytes in the queue's
//! arena when small) and requests, in FIFO order through [`crate::inbox`].

use tokio::sync::oneshot;

use crate::error::SinkError;
use crate::inbox::Payload;

/// Result of `push_durable`: the record's seq once it is durable.
pub(crate) type DurableReply = oneshot::Sender<Result<u64, SinkError>>;
/// Result of `sync` / `flush`.
pub(crate) type DoneReply = oneshot::Sender<Result<(), SinkError>>;

/// What producers send to the writer, in FIFO order.
#[derive(Debug)]
pub(crate) enum WriterMsg {
    /// An encoded record; its frame bytes were reserved from the disk budget.
    Record {
        /// Encoded payload.
        payload: Payload,
        /// Answered once the record is durable, for `push_durable`.
        durable: Option<DurableReply>,
    },
    /// `sync()`: answer once every record before it is durable.
    Sync(Option<DoneReply>),
    /// `flush()`: forwarded to the delivery task with the seq it must see acknowledged.
    Flush(Option<DoneReply>),
}

impl WriterMsg {
    /// The message for an encoded record (what the queue's record sends build).
    pub(crate) fn record(payload: Payload, durable: Option<DurableReply>) -> Self {
        Self::Record { payload, durable }
    }
}

/// A `flush()` the delivery task must answer once `acked_seq >= target`.
#[derive(Debug)]
pub(crate) struct FlushRequest {
    /// Last seq assigned before the flush.
    pub(crate) target: u64,
    /// The caller.
    pub(crate) done: DoneReply,
}

/// Messages in `chunks` that wait for an fsync (`push_durable` records, `sync`).
pub(super) fn waiters_in(chunks: &[Vec<WriterMsg>]) -> usize {
    chunks
        .iter()
        .flatten()
        .filter(|m| {
            matches!(
                m,
                WriterMsg::Record {
                    durable: Some(_),
                    ..
                } | WriterMsg::Sync(_)
            )
        })
        .count()
}
