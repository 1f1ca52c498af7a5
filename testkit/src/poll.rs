//! Waiting for what cannot be awaited as an event (a row, a process, a metric),
//! the one way: check, and check again — quickly at first, then every 100 ms —
//! until it holds or a deadline passes.

use std::fmt::Display;
use std::time::{Duration, Instant};

use devpocket_actors::backoff::Backoff;

/// Between two checks: 10 ms, doubling up to 100 ms.
const PACE: Backoff =
    Backoff::doubling(Duration::from_millis(10)).at_most(Duration::from_millis(100));

/// The waits between one check and the next, on [`PACE`]: none once `within` has
/// passed.
fn waits(within: Duration) -> impl Iterator<Item = Duration> {
    let deadline = Instant::now() + within;
    (0..).map_while(move |attempt| (Instant::now() < deadline).then(|| PACE.delay(attempt)))
}

/// Checks until `check` gives `Ok`, and returns that; once `within` has passed,
/// the last `Err`: what was seen instead. Checks at least once.
pub async fn poll<T, E>(
    within: Duration,
    mut check: impl AsyncFnMut() -> Result<T, E>,
) -> Result<T, E> {
    let mut waits = waits(within);
    loop {
        let seen = match check().await {
            Ok(done) => return Ok(done),
            Err(seen) => seen,
        };
        let Some(wait) = waits.next() else {
            return Err(seen);
        };
        tokio::time::sleep(wait).await;
    }
}

/// [`poll`] in a test: the answer, or a panic saying what was awaited (`what`:
/// "the environment to run") and what was seen instead.
pub async fn eventually<T, E: Display>(
    within: Duration,
    what: &str,
    check: impl AsyncFnMut() -> Result<T, E>,
) -> T {
    match poll(within, check).await {
        Ok(done) => done,
        Err(seen) => panic!("waited {within:?} for: {what}; last seen: {seen}"),
    }
}

/// [`poll`] for a thread that blocks (no runtime): the fake machines' start-up
/// and shutdown, a server's stop.
pub fn poll_blocking<T, E>(
    within: Duration,
    mut check: impl FnMut() -> Result<T, E>,
) -> Result<T, E> {
    let mut waits = waits(within);
    loop {
        match check() {
            Ok(done) => break Ok(done),
            Err(seen) => match waits.next() {
                Some(wait) => std::thread::sleep(wait),
                None => break Err(seen),
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LONG: Duration = Duration::from_secs(60);

    #[tokio::test]
    async fn the_first_answer_that_holds_is_returned() {
        let mut checks = 0;
        let answer = poll(LONG, async || {
            checks += 1;
            if checks == 3 { Ok(checks) } else { Err(checks) }
        })
        .await;
        assert_eq!(answer, Ok(3));
    }

    #[tokio::test]
    async fn past_the_deadline_the_last_thing_seen_is_the_answer() {
        let mut checks = 0;
        let answer: Result<(), u32> = poll(Duration::ZERO, async || {
            checks += 1;
            Err(checks)
        })
        .await;
        assert_eq!(answer, Err(1), "checked once, then gave up");
    }

    #[tokio::test]
    #[should_panic(expected = "for: the door to open; last seen: still shut")]
    async fn eventually_says_what_it_waited_for_and_what_it_saw() {
        eventually(Duration::ZERO, "the door to open", async || {
            Err::<(), _>("still shut")
        })
        .await;
    }

    #[test]
    fn the_blocking_poll_answers_alike() {
        let mut checks = 0;
        let answer = poll_blocking(LONG, || {
            checks += 1;
            if checks == 2 { Ok("open") } else { Err("shut") }
        });
        assert_eq!(answer, Ok("open"));
        assert_eq!(
            poll_blocking(Duration::ZERO, || Err::<(), _>("shut")),
            Err("shut")
        );
    }
}
