//! The write deadline's wait ([`super::within`]) on tokio's paused clock.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::future::{pending, ready, Future};
use std::pin::Pin;
use std::task::Poll;
use std::time::Duration;

use tokio::time::{sleep_until, Instant, Sleep};

use super::within;

const LIMIT: Duration = Duration::from_secs(10);

/// The session's timer, set to its own deadline (far off).
fn timer() -> Pin<Box<Sleep>> {
    Box::pin(sleep_until(Instant::now() + Duration::from_secs(3600)))
}

#[tokio::test(start_paused = true)]
async fn work_done_at_once_leaves_the_timer_alone() {
    let mut timer = timer();
    let deadline = timer.deadline();
    assert_eq!(within(&mut timer, LIMIT, ready(7)).await, Some(7));
    assert_eq!(timer.deadline(), deadline, "no clock read, no timer set");
}

#[tokio::test(start_paused = true)]
async fn work_that_never_finishes_ends_after_the_limit_from_its_first_wait() {
    let mut timer = timer();
    let began = Instant::now();
    assert_eq!(within(&mut timer, LIMIT, pending::<()>()).await, None);
    assert_eq!(began.elapsed(), LIMIT);
}

#[tokio::test(start_paused = true)]
async fn work_that_finishes_in_time_wins_and_is_not_cut() {
    let mut timer = timer();
    let began = Instant::now();
    let work = Box::pin(tokio::time::sleep(LIMIT - Duration::from_millis(1)));
    assert_eq!(within(&mut timer, LIMIT, work).await, Some(()));
    assert_eq!(began.elapsed(), LIMIT - Duration::from_millis(1));
}

/// When the work and the deadline are both ready at the same poll, the work counts: what it
/// did is done.
#[tokio::test(start_paused = true)]
async fn work_ready_with_the_deadline_counts() {
    let mut timer = timer();
    let mut polls = 0;
    // Pending at its first poll (which sets the deadline), ready at every later one.
    let work = std::future::poll_fn(|cx| {
        polls += 1;
        if polls == 1 {
            return Poll::Pending;
        }
        cx.waker().wake_by_ref();
        Poll::Ready("done")
    });
    let mut wait = within(&mut timer, LIMIT, work);
    assert!(
        std::future::poll_fn(|cx| Poll::Ready(Pin::new(&mut wait).poll(cx).is_pending())).await
    );
    tokio::time::advance(LIMIT).await;
    assert_eq!(wait.await, Some("done"));
}
