//! Waiting between attempts: backoff that watches shutdown, and answers `flush`
//! callers while delivery cannot move; the jitter and its PRNG.

use std::time::Duration;

use tokio::time::Instant;

use super::{Actor, Interrupted};
use crate::deadline::sleep_until_opt;
use crate::drain::SinkDrain;
use crate::error::SinkError;

impl<T: Send + 'static, D: SinkDrain<T>> Actor<T, D> {
    /// Waits `delay` (or until the shutdown deadline: `Interrupted`). With `failure`,
    /// delivery cannot move: every flush waiting now or arriving meanwhile is answered
    /// with it instead of waiting for a store that may not recover (a disk whose fsyncs
    /// fail).
    pub(super) async fn backoff_failing_flushes(
        &mut self,
        delay: Duration,
        failure: Option<&SinkError>,
    ) -> Result<(), Interrupted> {
        if let Some(failure) = failure {
            // Flushes already satisfied get their `Ok` first.
            self.answer_flushes();
            for w in std::mem::take(&mut self.waiting) {
                let _ = w.done.send(Err(failure.clone()));
            }
        }
        let wake = Instant::now() + delay;
        loop {
            tokio::select! {
                biased;
                () = self.shutdown.cancelled(), if self.stop_at.is_none() => self.begin_stop(),
                res = &mut self.writer_exit, if self.writer_result.is_none() => {
                    self.writer_ended(res);
                }
                () = sleep_until_opt(self.stop_at) => return Err(Interrupted),
                req = self.flushes.recv(), if failure.is_some() && self.flushes_open => match (req, failure) {
                    (Some(req), Some(failure)) => {
                        let _ = req.done.send(Err(failure.clone()));
                    }
                    (Some(req), None) => self.waiting.push(req),
                    (None, _) => self.flushes_open = false,
                },
                () = tokio::time::sleep_until(wake) => return Ok(()),
            }
        }
    }

    pub(super) async fn backoff(&mut self, delay: Duration) -> Result<(), Interrupted> {
        self.backoff_failing_flushes(delay, None).await
    }

    pub(super) async fn pause(&mut self, attempt: u32) {
        let delay = self.retry.delay_cap(attempt);
        let _ = self.backoff(delay).await;
    }

    pub(super) fn jittered(&mut self, attempt: u32) -> Duration {
        let cap = self.retry.delay_cap(attempt);
        let nanos = u64::try_from(cap.as_nanos()).unwrap_or(u64::MAX);
        Duration::from_nanos(if nanos == 0 {
            0
        } else {
            self.rng.next() % (nanos + 1)
        })
    }
}

#[derive(Debug)]
pub(crate) struct SplitMix64(pub(crate) u64);

impl SplitMix64 {
    pub(crate) fn from_entropy() -> Self {
        use std::hash::{BuildHasher, RandomState};
        Self(RandomState::new().hash_one(std::time::SystemTime::now()))
    }
    pub(crate) fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
}
