//! Waiting on a deadline that may not be set: the writer's sync deadline, the delivery
//! task's batch and shutdown deadlines.

use tokio::time::Instant;

/// Sleeps until `deadline`; never completes if there is none (for `select!` arms).
pub(crate) async fn sleep_until_opt(deadline: Option<Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(d).await,
        None => std::future::pending().await,
    }
}
