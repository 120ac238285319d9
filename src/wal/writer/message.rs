//! What producers send the writer thread: encoded records (inline when small) and
//! requests, in FIFO order through [`crate::inbox`].

use tokio::sync::oneshot;

use crate::error::SinkError;

/// Payloads up to this many bytes travel inside the queue message, so a typical
/// record costs no allocation between the producer and the writer.
pub(crate) const INLINE_PAYLOAD_BYTES: usize = 119;
const _: () = assert!(INLINE_PAYLOAD_BYTES <= u8::MAX as usize);

/// An encoded record on its way to the writer: inline when small, else on the heap.
#[derive(Debug)]
pub(crate) enum Payload {
    /// `bytes[..len]`.
    Inline {
        /// Bytes used.
        len: u8,
        /// Storage.
        bytes: [u8; INLINE_PAYLOAD_BYTES],
    },
    /// A larger payload.
    Heap(Vec<u8>),
}

impl Payload {
    /// Takes the encoding in `buf`: copied inline if it fits, else moved (leaving `buf`
    /// empty).
    pub(crate) fn take(buf: &mut Vec<u8>) -> Self {
        if buf.len() <= INLINE_PAYLOAD_BYTES {
            let mut bytes = [0u8; INLINE_PAYLOAD_BYTES];
            bytes[..buf.len()].copy_from_slice(buf);
            Self::Inline {
                len: buf.len() as u8,
                bytes,
            }
        } else {
            Self::Heap(std::mem::take(buf))
        }
    }

    pub(crate) fn as_slice(&self) -> &[u8] {
        match self {
            Self::Inline { len, bytes } => bytes.get(..*len as usize).unwrap_or_default(),
            Self::Heap(v) => v,
        }
    }

    pub(crate) fn len(&self) -> usize {
        self.as_slice().len()
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
