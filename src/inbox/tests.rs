use super::arena::BytesAt;
use super::*;

fn drain<M>(out: &mut Taken<M>) -> Vec<M> {
    out.msgs.iter_mut().flat_map(|c| c.drain(..)).collect()
}

#[tokio::test]
async fn fifo_bound_and_take_everything_at_once() {
    let (tx, mut rx) = channel::<u32>(600);
    for i in 0..600 {
        tx.try_send(i).expect("room");
    }
    assert!(matches!(tx.try_send(600), Err(TrySendError::Full(600))));
    let mut out = Taken::default();
    assert_eq!(rx.recv(&mut out).await, 600);
    assert_eq!(out.msgs.len(), 3, "600 messages in chunks of {CHUNK}");
    assert_eq!(drain(&mut out), (0..600).collect::<Vec<_>>());
    // Room again, and the emptied chunks are reused.
    tx.try_send(7).expect("room after the take");
    assert_eq!(rx.recv(&mut out).await, 1);
    assert_eq!(drain(&mut out), vec![7]);
    assert_eq!(
        rx.chan.lock().spare.len(),
        3,
        "the first take's chunks came back"
    );
    tx.try_send(8).expect("room");
    assert_eq!(
        rx.chan.lock().spare.len(),
        2,
        "and the next message reused one"
    );
}

/// Bytes message `i` carries: 0 to 2 999 of them, ~1.5 KB on average.
fn bytes_of(i: u32) -> Vec<u8> {
    vec![i as u8; (i * 37 % 3000) as usize]
}

/// Sends messages `from..from + n`, each carrying `bytes_of(i)`, through `tx`.
fn send_bytes(tx: &Sender<(u32, Payload)>, from: u32, n: u32) {
    for i in from..from + n {
        let mut bytes = bytes_of(i);
        tx.try_send_record(&mut bytes, i, |p, i| (i, p))
            .expect("room");
        assert_eq!(bytes, bytes_of(i), "a small record is copied, not moved");
    }
}

fn check_bytes(out: &mut Taken<(u32, Payload)>) -> Vec<u32> {
    let arena = std::mem::take(&mut out.arena);
    let got: Vec<u32> = out
        .msgs
        .iter_mut()
        .flat_map(|c| c.drain(..))
        .map(|(i, payload)| {
            assert!(
                matches!(payload, Payload::Queued(_)),
                "message {i} in the arena"
            );
            let bytes = payload.bytes(&arena).expect("bytes of a taken message");
            assert_eq!(bytes, bytes_of(i), "message {i}");
            i
        })
        .collect();
    out.arena = arena;
    got
}

#[tokio::test]
async fn arena_bytes_survive_takes_that_leave_messages_unhandled() {
    let (tx, mut rx) = channel::<(u32, Payload)>(10_000);
    let mut out = Taken::default();
    // Several arena chunks per take (≈1.5 KB a message, 64 KiB a chunk), and a
    // second take appended before the first is handled, as the writer's gather does.
    send_bytes(&tx, 0, 100);
    assert_eq!(rx.recv(&mut out).await, 100);
    send_bytes(&tx, 100, 150);
    assert_eq!(rx.try_take(&mut out), 150);
    assert!(out.arena.chunks.len() >= 4);
    assert_eq!(check_bytes(&mut out), (0..250).collect::<Vec<_>>());
    // Everything was handled: the chunks go back and the arena restarts.
    send_bytes(&tx, 250, 10);
    assert_eq!(rx.try_take(&mut out), 10);
    assert_eq!(out.arena.chunks.len(), 1);
    assert!(!rx.chan.lock().arena.spare_is_empty(), "chunks recycled");
    assert_eq!(check_bytes(&mut out), (250..260).collect::<Vec<_>>());
    // Through a permit too.
    let permit = tx.reserve().await.expect("room");
    permit.send_record(bytes_of(260), 260, |p, i| (i, p));
    assert_eq!(rx.recv(&mut out).await, 1);
    assert_eq!(check_bytes(&mut out), vec![260]);
    assert_eq!(tx.records(), 261, "every record is counted");
}

#[tokio::test]
async fn a_large_record_moves_in_its_own_allocation_and_comes_back_when_refused() {
    let (tx, mut rx) = channel::<Payload>(1);
    let big = vec![7u8; 5000];
    let mut bytes = big.clone();
    tx.try_send_record(&mut bytes, (), |p, ()| p).expect("room");
    assert!(bytes.is_empty(), "moved, not copied");
    let mut refused = big.clone();
    assert!(matches!(
        tx.try_send_record(&mut refused, (), |p, ()| p),
        Err(TrySendError::Full(()))
    ));
    assert_eq!(refused, big, "a refused record stays with the caller");
    let mut out = Taken::default();
    assert_eq!(rx.recv(&mut out).await, 1);
    let got = drain(&mut out);
    assert!(matches!(&got[0], Payload::Heap(v) if *v == big));
    assert_eq!(got[0].len(), 5000);
    let permit = tx.reserve().await.expect("room");
    permit.send_record(big.clone(), (), |p, ()| p);
    assert_eq!(rx.recv(&mut out).await, 1);
    assert!(matches!(&drain(&mut out)[0], Payload::Heap(v) if *v == big));
    assert_eq!(tx.records(), 2);
}

#[test]
fn arena_lookups_outside_what_was_taken_are_refused() {
    let (tx, mut rx) = channel::<(u32, Payload)>(8);
    send_bytes(&tx, 1, 1);
    let mut out = Taken::default();
    assert_eq!(rx.try_take(&mut out), 1);
    let (_, Payload::Queued(at)) = out.msgs[0][0] else {
        panic!("a small record is queued in the arena");
    };
    assert!(out.arena.get(at).is_some());
    for bad in [
        BytesAt {
            serial: at.serial + 1,
            ..at
        },
        BytesAt { offset: 1, ..at },
        BytesAt {
            len: at.len + 1,
            ..at
        },
    ] {
        assert_eq!(out.arena.get(bad), None, "{bad:?}");
    }
}

#[tokio::test]
async fn try_take_appends_what_arrived_since() {
    let (tx, mut rx) = channel::<u32>(8);
    let mut out = Taken::default();
    assert_eq!(rx.try_take(&mut out), 0);
    tx.try_send(1).expect("room");
    assert_eq!(rx.recv(&mut out).await, 1);
    tx.try_send(2).expect("room");
    assert_eq!(rx.try_take(&mut out), 1);
    assert_eq!(drain(&mut out), vec![1, 2]);
}

#[tokio::test]
async fn permits_count_against_the_bound_and_return_when_dropped() {
    let (tx, mut rx) = channel::<u32>(2);
    let a = tx.reserve().await.expect("room");
    let b = tx.reserve().await.expect("room");
    assert!(matches!(tx.try_send(1), Err(TrySendError::Full(1))));
    assert!(matches!(
        tx.try_send_record(&mut vec![1], 1, |_, m| m),
        Err(TrySendError::Full(1))
    ));
    drop(a);
    tx.try_send_record(&mut vec![1], 1, |_, m| m)
        .expect("a's room came back");
    b.send(2);
    assert_eq!(tx.records(), 1, "only the accepted record");
    let mut out = Taken::default();
    assert_eq!(rx.recv(&mut out).await, 2);
    assert_eq!(drain(&mut out), vec![1, 2]);
}

#[tokio::test]
async fn reserve_waits_for_a_take() {
    let (tx, mut rx) = channel::<u32>(1);
    tx.try_send(1).expect("room");
    let tx = Arc::new(tx);
    let waiter = {
        let tx = Arc::clone(&tx);
        tokio::spawn(async move {
            let permit = tx.reserve().await.expect("room after the take");
            permit.send(2);
        })
    };
    tokio::task::yield_now().await;
    assert!(!waiter.is_finished(), "no room yet");
    let mut out = Taken::default();
    assert_eq!(rx.recv(&mut out).await, 1);
    waiter.await.expect("waiter");
    drain(&mut out);
    assert_eq!(rx.recv(&mut out).await, 1);
    assert_eq!(drain(&mut out), vec![2]);
}

#[tokio::test]
async fn close_refuses_new_messages_but_delivers_queued_and_reserved_ones() {
    let (tx, mut rx) = channel::<u32>(8);
    tx.try_send(1).expect("room");
    let permit = tx.reserve().await.expect("room");
    rx.close();
    assert!(matches!(tx.try_send(2), Err(TrySendError::Closed(2))));
    assert!(tx.reserve().await.is_err());
    tx.closed().await; // completes
    let mut out = Taken::default();
    assert_eq!(rx.recv(&mut out).await, 1);
    drain(&mut out);
    // The outstanding permit holds the end back until it is used.
    let end = tokio::spawn(async move {
        let mut out = Taken::default();
        let n = rx.recv(&mut out).await;
        (n, drain(&mut out), rx.recv(&mut out).await)
    });
    tokio::task::yield_now().await;
    permit.send(3);
    assert_eq!(end.await.expect("receiver"), (1, vec![3], 0));
}

#[tokio::test]
async fn dropping_the_sender_ends_the_receiver_after_the_backlog() {
    let (tx, mut rx) = channel::<u32>(8);
    tx.try_send(1).expect("room");
    drop(tx);
    let mut out = Taken::default();
    assert_eq!(rx.recv(&mut out).await, 1);
    drain(&mut out);
    assert_eq!(rx.recv(&mut out).await, 0);
}

#[tokio::test]
async fn dropping_the_receiver_drops_queued_messages() {
    let (tx, rx) = channel::<tokio::sync::oneshot::Sender<()>>(8);
    let (reply, answer) = tokio::sync::oneshot::channel();
    tx.try_send(reply).expect("room");
    let permit = tx.reserve().await.expect("room");
    drop(rx);
    assert!(answer.await.is_err(), "the queued reply was dropped");
    let (late, late_answer) = tokio::sync::oneshot::channel();
    permit.send(late);
    assert!(late_answer.await.is_err(), "sent after the drop: dropped");
    assert!(matches!(
        tx.try_send(tokio::sync::oneshot::channel().0),
        Err(TrySendError::Closed(_))
    ));
}

/// Producers on other threads against a receiver that goes idle between bursts:
/// every message arrives (a lost wake-up would hang the receiver; the test then
/// fails on its timeout, not on a sleep).
#[test]
fn no_lost_wakeups_across_threads() {
    const PRODUCERS: u32 = 3;
    const EACH: u32 = 20_000;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .expect("runtime");
    let (tx, mut rx) = channel::<u32>(64);
    let tx = Arc::new(tx);
    let producers: Vec<_> = (0..PRODUCERS)
        .map(|p| {
            let tx = Arc::clone(&tx);
            std::thread::spawn(move || {
                for i in 0..EACH {
                    let mut msg = p * EACH + i;
                    // Spin on Full: the receiver makes room.
                    loop {
                        match tx.try_send(msg) {
                            Ok(()) => break,
                            Err(TrySendError::Full(m)) => {
                                msg = m;
                                std::thread::yield_now();
                            }
                            Err(TrySendError::Closed(_)) => panic!("closed"),
                        }
                    }
                }
            })
        })
        .collect();
    let got = rt.block_on(async {
        let mut seen = vec![0u32; PRODUCERS as usize];
        let mut out = Taken::default();
        let mut total = 0;
        while total < PRODUCERS * EACH {
            let n = tokio::time::timeout(std::time::Duration::from_secs(60), rx.recv(&mut out))
                .await
                .expect("a message was queued but the receiver was never woken");
            total += n as u32;
            for m in drain(&mut out) {
                let p = (m / EACH) as usize;
                assert_eq!(m % EACH, seen[p], "per-producer FIFO");
                seen[p] += 1;
            }
        }
        total
    });
    for p in producers {
        p.join().expect("producer");
    }
    assert_eq!(got, PRODUCERS * EACH);
}

#[tokio::test]
async fn a_run_of_records_is_queued_whole_or_as_the_prefix_that_fits() {
    let (tx, mut rx) = channel::<Payload>(10);
    tx.try_send(Payload::Heap(vec![0])).expect("room");
    let mut runs: Vec<Vec<u8>> = (1..=12u8).map(|i| vec![i; i as usize * 500]).collect();
    // All or none: 12 do not fit in the 9 free places; nothing is queued or counted.
    assert!(matches!(
        tx.try_send_records(&mut runs, true, |p| p),
        Err(TrySendError::Full(()))
    ));
    assert_eq!(tx.records(), 0);
    // The prefix that fits: 9 of them, counted, in order; the rest untouched.
    assert_eq!(tx.try_send_records(&mut runs, false, |p| p).ok(), Some(9));
    assert_eq!(tx.records(), 9);
    assert_eq!(runs[9], vec![10u8; 5000], "not queued: untouched");
    assert!(runs[8].is_empty(), "a large record is moved into the queue");
    assert_eq!(runs[0], vec![1u8; 500], "a small one is copied");
    assert_eq!(
        tx.try_send_records(&mut runs[9..], false, |p| p).ok(),
        Some(0)
    );
    let mut out = Taken::default();
    assert_eq!(rx.recv(&mut out).await, 10);
    let arena = std::mem::take(&mut out.arena);
    let lens: Vec<usize> = drain(&mut out)
        .iter()
        .map(|p| p.bytes(&arena).map_or(usize::MAX, <[u8]>::len))
        .collect();
    assert_eq!(
        lens,
        vec![1, 500, 1000, 1500, 2000, 2500, 3000, 3500, 4000, 4500]
    );
    rx.close();
    assert!(matches!(
        tx.try_send_records(&mut runs[9..], false, |p| p),
        Err(TrySendError::Closed(()))
    ));
}

#[tokio::test(start_paused = true)]
async fn a_run_of_records_wakes_an_idle_receiver() {
    let (tx, mut rx) = channel::<Payload>(10);
    let mut out = Taken::default();
    {
        let recv = rx.recv(&mut out);
        tokio::pin!(recv);
        // Polled once: the queue is empty, so the receiver raises `idle` and waits.
        assert!(futures_poll_once(recv.as_mut()).await.is_none());
        let mut runs: Vec<Vec<u8>> = (0..3u8).map(|i| vec![i; 10]).collect();
        assert_eq!(tx.try_send_records(&mut runs, true, |p| p).ok(), Some(3));
        // Only the first of the run lowered `idle`; the run must still wake it. With
        // time paused, a receiver nobody wakes lets the timeout fire at once.
        let got = tokio::time::timeout(std::time::Duration::from_secs(3600), recv).await;
        assert_eq!(got.ok(), Some(3), "the idle receiver was woken");
    }
}

/// Polls `fut` once: `Some(output)` if it was ready.
async fn futures_poll_once<F: std::future::Future + Unpin>(mut fut: F) -> Option<F::Output> {
    std::future::poll_fn(|cx| {
        std::task::Poll::Ready(match std::pin::Pin::new(&mut fut).poll(cx) {
            std::task::Poll::Ready(v) => Some(v),
            std::task::Poll::Pending => None,
        })
    })
    .await
}
