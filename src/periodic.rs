//! Upkeep in the background: a task that does something to a shared value every
//! period for as long as that value lives, and ends with it.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

/// Calls `tick` with `target` every `period` (the first time one period from now)
/// until every other `Arc` of it is gone. A tick that overruns delays the next.
pub fn every<T, F>(target: &Arc<T>, period: Duration, mut tick: impl FnMut(Arc<T>) -> F + 'static)
where
    T: Send + Sync + 'static,
    F: Future<Output = ()>,
{
    let target = Arc::downgrade(target);
    actix_web::rt::spawn(async move {
        let mut every = tokio::time::interval(period);
        every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        every.tick().await;
        loop {
            every.tick().await;
            let Some(target) = target.upgrade() else {
                break;
            };
            tick(target).await;
        }
    });
}
