//! The synchronization the queue is built from: the standard library's mutex and
//! tokio's `Notify`, or, when the crate's tests are built with `--cfg walsink_loom`
//! (see `loom.rs`), loom's mutex and a loom model of `Notify`, so the loom test checks
//! this very queue code under every interleaving it explores.
//!
//! tokio's own `Notify` cannot run under loom from outside tokio (its internals are
//! invisible to loom, and loom reports a waiter parked on it as a deadlock even when
//! it was notified), so the model below stands in for it with the same semantics the
//! queue relies on:
//! - `notify_one` goes to the oldest registered waiter (registered by `enable` or its
//!   first poll); with none, it stores one permit, taken by the next `Notified` to
//!   register;
//! - a waiter dropped after `notify_one` chose it, before it completed, passes the
//!   notification on (to the next waiter, or as the permit);
//! - `notify_waiters` wakes every `Notified` created before the call, and stores no
//!   permit (a `Notified` created after it does not see it).

#[cfg(all(test, walsink_loom))]
pub(super) use ::loom::sync::{Mutex, MutexGuard};
#[cfg(all(test, walsink_loom))]
pub(super) use model::Notify;
#[cfg(not(all(test, walsink_loom)))]
pub(super) use std::sync::{Mutex, MutexGuard};
#[cfg(not(all(test, walsink_loom)))]
pub(super) use tokio::sync::Notify;

#[cfg(all(test, walsink_loom))]
mod model {
    use std::collections::{HashMap, VecDeque};
    use std::future::Future;
    use std::pin::Pin;
    use std::sync::PoisonError;
    use std::task::{Context, Poll, Waker};

    use ::loom::sync::Mutex;

    #[derive(Debug, Default)]
    struct State {
        /// A `notify_one` that found no waiter.
        permit: bool,
        /// `notify_waiters` calls so far.
        generation: u64,
        /// Registered waiters, oldest first (the order tokio serves `notify_one` in).
        waiters: VecDeque<u64>,
        /// Waiters a `notify_one` chose, not yet completed.
        chosen: Vec<u64>,
        wakers: HashMap<u64, Waker>,
        next_id: u64,
    }

    impl State {
        /// `notify_one`: the oldest registered waiter gets it, else it is stored.
        /// Returns the waker to wake once the lock is released (as tokio does).
        fn notify_one(&mut self) -> Option<Waker> {
            match self.waiters.pop_front() {
                Some(id) => {
                    self.chosen.push(id);
                    self.wakers.remove(&id)
                }
                None => {
                    self.permit = true;
                    None
                }
            }
        }
    }

    /// A loom model of `tokio::sync::Notify` (see the module doc).
    #[derive(Debug, Default)]
    pub(in crate::inbox) struct Notify {
        state: Mutex<State>,
    }

    impl Notify {
        pub(in crate::inbox) fn new() -> Self {
            Self::default()
        }

        fn lock(&self) -> ::loom::sync::MutexGuard<'_, State> {
            self.state.lock().unwrap_or_else(PoisonError::into_inner)
        }

        pub(in crate::inbox) fn notified(&self) -> Notified<'_> {
            Notified {
                notify: self,
                generation: self.lock().generation,
                id: None,
                done: false,
            }
        }

        pub(in crate::inbox) fn notify_one(&self) {
            let waker = self.lock().notify_one();
            if let Some(w) = waker {
                w.wake();
            }
        }

        pub(in crate::inbox) fn notify_waiters(&self) {
            let wakers: Vec<Waker> = {
                let mut st = self.lock();
                st.generation += 1;
                st.waiters.clear();
                st.wakers.drain().map(|(_, w)| w).collect()
            };
            wakers.into_iter().for_each(Waker::wake);
        }
    }

    /// A wait on [`Notify`], as `tokio::sync::Notified`.
    #[derive(Debug)]
    pub(in crate::inbox) struct Notified<'a> {
        notify: &'a Notify,
        /// `notify_waiters` calls before this was created.
        generation: u64,
        /// Set once registered (by `enable` or the first poll).
        id: Option<u64>,
        done: bool,
    }

    impl Notified<'_> {
        /// Registers as a waiter without a waker, as tokio's `enable`; true if already
        /// notified.
        pub(in crate::inbox) fn enable(self: Pin<&mut Self>) -> bool {
            self.get_mut().check(None)
        }

        fn check(&mut self, waker: Option<&Waker>) -> bool {
            if self.done {
                return true;
            }
            let mut st = self.notify.lock();
            let notified = st.generation != self.generation
                || match self.id {
                    Some(id) => match st.chosen.iter().position(|&c| c == id) {
                        Some(i) => {
                            st.chosen.swap_remove(i);
                            true
                        }
                        None => false,
                    },
                    None => std::mem::take(&mut st.permit),
                };
            if notified {
                if let Some(id) = self.id {
                    st.waiters.retain(|&w| w != id);
                    st.wakers.remove(&id);
                }
                self.done = true;
                return true;
            }
            let id = match self.id {
                Some(id) => id,
                None => {
                    let id = st.next_id;
                    st.next_id += 1;
                    st.waiters.push_back(id);
                    self.id = Some(id);
                    id
                }
            };
            if let Some(w) = waker {
                st.wakers.insert(id, w.clone());
            }
            false
        }
    }

    impl Future for Notified<'_> {
        type Output = ();

        fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
            if self.get_mut().check(Some(cx.waker())) {
                Poll::Ready(())
            } else {
                Poll::Pending
            }
        }
    }

    impl Drop for Notified<'_> {
        /// As tokio: a waiter dropped after a `notify_one` chose it, before it
        /// completed, passes the notification on.
        fn drop(&mut self) {
            let (Some(id), false) = (self.id, self.done) else {
                return;
            };
            let waker = {
                let mut st = self.notify.lock();
                st.waiters.retain(|&w| w != id);
                st.wakers.remove(&id);
                match st.chosen.iter().position(|&c| c == id) {
                    Some(i) => {
                        st.chosen.swap_remove(i);
                        st.notify_one()
                    }
                    None => None,
                }
            };
            if let Some(w) = waker {
                w.wake();
            }
        }
    }
}
