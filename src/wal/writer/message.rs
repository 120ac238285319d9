//! What producers send the writer thread: encoded records (their bytes in the queue's
//! arena when small) and requests, in FIFO order through [`crate::inbox`].

use tokio::sync::oneshot;

use crate::error::SinkError;
use crate::inbox::{Arena, BytesAt};

/// An encoded record on its way to the writer: in the queue's arena when small (copied
/// there once, under the queue lock), else in its own allocation.
#[derive(Debug)]
pub(crate) enum Payload {
    /// In the arena of the take that holds the message.
    Queued(BytesAt),
    /// A larger payload, or one detached from the arena.
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

    pub(crate) fn len(&self) -> usize {
        match self {
            Self::Queued(at) => at.len(),
            Self::Heap(v) => v.len(),
        }
    }

    /// Copies a queued payload out of `arena`, for a message that outlives its take
    /// (held while the disk is full). A payload missing from `arena` is left as it is:
    /// its serial is older than any later take's, so `handle` finds it missing and
    /// fails the sink.
    pub(crate) fn detach(&mut self, arena: &Arena) {
        if let Self::Queued(at) = self
            && let Some(bytes) = arena.get(*at)
        {
            *self = Self::Heap(bytes.to_vec());
        }
    }
}

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
