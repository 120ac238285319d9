//! The queue's wake-up protocol under loom: no interleaving of producers and the
//! writer loses a wake-up (the writer would stay parked with a message queued, which
//! loom reports as a deadlock) or a message.
//!
//! Built only with `--cfg walsink_loom` (the queue's lock and its `Notify` are then
//! loom's: see `sync.rs`). Run by `.ci/run`:
//!
//! ```text
//! RUSTFLAGS="--cfg walsink_loom" cargo test --release --lib inbox::loom
//! ```

use std::future::Future;
use std::sync::Arc;

use ::loom::future::block_on;
use ::loom::thread;

use super::*;

/// Receives until `want` messages came, and returns them in order.
fn receive(rx: &mut Receiver<u32>, want: usize) -> Vec<u32> {
    let mut out = Taken::default();
    let mut got = Vec::new();
    while got.len() < want {
        let n = block_on(rx.recv(&mut out));
        assert!(n > 0, "the queue ended with {got:?} of {want}");
        got.extend(out.msgs.iter_mut().flat_map(|c| c.drain(..)));
    }
    got
}

fn model(f: impl Fn() + Sync + Send + 'static) {
    let mut builder = ::loom::model::Builder::new();
    // Bounded so the run stays within CI's minutes; every wake-up race here needs at
    // most two preemptions (the writer between its check and its wait, a producer
    // between its unlock and its wake-up).
    builder.preemption_bound = Some(3);
    builder.check(f);
}

#[test]
fn a_producer_racing_the_writer_going_idle_always_wakes_it() {
    model(|| {
        let (tx, mut rx) = channel::<u32>(4);
        let producer = thread::spawn(move || {
            for i in 0..2 {
                tx.try_send(i).expect("room");
            }
            tx
        });
        assert_eq!(receive(&mut rx, 2), vec![0, 1]);
        drop(producer.join());
    });
}

#[test]
fn a_run_of_records_racing_the_writer_going_idle_always_wakes_it() {
    model(|| {
        let (tx, mut rx) = channel::<u32>(4);
        let producer = thread::spawn(move || {
            // Each message is its record's length: 1 and 2 in one run, then 3 alone.
            let mut run = vec![vec![0u8; 1], vec![0u8; 2]];
            let sent = tx.try_send_records(&mut run, true, |p| p.len() as u32);
            assert_eq!(sent.ok(), Some(2));
            tx.try_send(3).expect("room");
            tx
        });
        assert_eq!(receive(&mut rx, 3), vec![1, 2, 3]);
        drop(producer.join());
    });
}

#[test]
fn two_producers_are_both_received() {
    model(|| {
        let (tx, mut rx) = channel::<u32>(4);
        let tx = Arc::new(tx);
        let producers: Vec<_> = (0..2)
            .map(|i| {
                let tx = Arc::clone(&tx);
                thread::spawn(move || tx.try_send(i).expect("room"))
            })
            .collect();
        let mut got = receive(&mut rx, 2);
        got.sort_unstable();
        assert_eq!(got, vec![0, 1]);
        for p in producers {
            p.join().expect("producer");
        }
    });
}

#[test]
fn a_permit_waiting_for_room_is_woken_by_the_take_and_the_writer_by_its_send() {
    model(|| {
        let (tx, mut rx) = channel::<u32>(1);
        let producer = thread::spawn(move || {
            tx.try_send(0).expect("room");
            // The queue is full until the writer takes: this waits on `room`.
            let permit = block_on(tx.reserve()).expect("open");
            permit.send(1);
            tx
        });
        assert_eq!(receive(&mut rx, 2), vec![0, 1]);
        drop(producer.join());
    });
}

#[test]
fn the_writer_ends_once_the_sender_is_gone_and_the_queue_is_empty() {
    model(|| {
        let (tx, mut rx) = channel::<u32>(4);
        let producer = thread::spawn(move || {
            tx.try_send(7).expect("room");
            drop(tx);
        });
        let mut out = Taken::default();
        let mut got = Vec::new();
        while block_on(rx.recv(&mut out)) > 0 {
            got.extend(out.msgs.iter_mut().flat_map(|c| c.drain(..)));
        }
        assert_eq!(got, vec![7]);
        producer.join().expect("producer");
    });
}

#[test]
fn a_permit_returned_unused_after_close_lets_the_writer_end() {
    model(|| {
        let (tx, mut rx) = channel::<u32>(1);
        let producer = thread::spawn(move || {
            // Reserved before the close, or refused after it: either way nothing is
            // sent, and the writer must still end.
            drop(block_on(tx.reserve()));
            tx
        });
        rx.close();
        let mut out = Taken::default();
        assert_eq!(block_on(rx.recv(&mut out)), 0);
        drop(producer.join());
    });
}

#[test]
fn close_delivers_what_was_accepted_before_it() {
    model(|| {
        let (tx, mut rx) = channel::<u32>(4);
        let producer = thread::spawn(move || (tx.try_send(1).is_ok(), tx));
        rx.close();
        let mut out = Taken::default();
        let mut got = Vec::new();
        let (accepted, _tx) = loop {
            // The sender stays alive: only the close can end the queue.
            if block_on(rx.recv(&mut out)) == 0 {
                break producer.join().expect("producer");
            }
            got.extend(out.msgs.iter_mut().flat_map(|c| c.drain(..)));
        };
        assert_eq!(got, if accepted { vec![1] } else { vec![] });
    });
}

#[test]
fn a_writer_wait_cancelled_after_going_idle_loses_no_wake_up() {
    model(|| {
        let (tx, mut rx) = channel::<u32>(4);
        let producer = thread::spawn(move || {
            tx.try_send(5).expect("room");
            tx
        });
        let mut out = Taken::default();
        {
            // One poll, as when the writer's `select!` takes another branch: it may
            // raise `idle` and register its wait, then the future is dropped.
            let fut = std::pin::pin!(rx.recv(&mut out));
            let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
            if let std::task::Poll::Ready(n) = fut.poll(&mut cx) {
                assert_eq!(n, 1);
            }
        }
        let mut got: Vec<u32> = out.msgs.iter_mut().flat_map(|c| c.drain(..)).collect();
        if got.is_empty() {
            got = receive(&mut rx, 1);
        }
        assert_eq!(got, vec![5]);
        drop(producer.join());
    });
}
