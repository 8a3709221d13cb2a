//! Where the process stands on its way out (DESIGN.md rule 6): one value that every accept
//! loop, session and health check follows ([`channel`]).
//!
//! A watch channel carries it, with a [`Notify`] beside it for the sessions' waits
//! ([`Watch::poll_change`]): a session waits for its peers a dozen times, and a watch's
//! `changed()` registers with the channel and deregisters again each time (two locks, a
//! waker stored), where the session needs to register once and check a version at each wait.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, Waker};

use tokio::sync::futures::OwnedNotified;
use tokio::sync::{watch, Notify};

/// Where shutdown stands; every session watches it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Shutdown {
    Running,
    /// Stop accepting; sessions finish their transaction, then get `421 4.3.2`.
    Draining,
    /// `shutdown_grace` is over: `421 4.3.2` to whatever is left.
    GraceOver,
}

/// The process's shutdown state, [`Shutdown::Running`] at first, and a watch of it.
pub fn channel() -> (Sender, Watch) {
    let (tx, rx) = watch::channel(Shutdown::Running);
    let wake = Arc::new(Notify::new());
    let watch = Watch {
        rx,
        wake: Arc::clone(&wake),
        registered: None,
    };
    (Sender { tx, wake }, watch)
}

/// Sets the shutdown state.
#[derive(Debug)]
pub struct Sender {
    tx: watch::Sender<Shutdown>,
    wake: Arc<Notify>,
}

impl Sender {
    /// The new state, for every watch: those waiting in [`Watch::changed`] and the sessions
    /// registered by [`Watch::poll_change`].
    pub fn send(&self, state: Shutdown) {
        self.tx.send_replace(state);
        // After the version moved: a session that registered before it sees the new version
        // when woken, and one that registers after it sees it at once.
        self.wake.notify_waiters();
    }

    /// A watch of the state, which has seen the current one.
    pub fn subscribe(&self) -> Watch {
        Watch {
            rx: self.tx.subscribe(),
            wake: Arc::clone(&self.wake),
            registered: None,
        }
    }
}

impl Drop for Sender {
    /// Gone, the sender leaves the state at [`Shutdown::GraceOver`], as a closed watch reads
    /// to the sessions ([`Watch::poll_change`]), and wakes them; those that saw it already
    /// are on their way out.
    fn drop(&mut self) {
        if *self.tx.borrow() != Shutdown::GraceOver {
            self.tx.send_replace(Shutdown::GraceOver);
        }
        self.wake.notify_waiters();
    }
}

/// Follows the shutdown state; a clone has seen what this one has.
pub struct Watch {
    rx: watch::Receiver<Shutdown>,
    wake: Arc<Notify>,
    /// [`Watch::poll_change`]'s registration: woken by the next [`Sender::send`], and the
    /// waker it wakes.
    registered: Option<(Pin<Box<OwnedNotified>>, Waker)>,
}

impl Clone for Watch {
    /// Not registered: a registration wakes one task.
    fn clone(&self) -> Self {
        Watch {
            rx: self.rx.clone(),
            wake: Arc::clone(&self.wake),
            registered: None,
        }
    }
}

impl std::fmt::Debug for Watch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Watch")
            .field("state", &*self.rx.borrow())
            .field("registered", &self.registered.is_some())
            .finish()
    }
}

impl Watch {
    /// The current state.
    pub fn borrow(&self) -> Shutdown {
        *self.rx.borrow()
    }

    /// Waits until the state changes from the last one seen; an error once the sender is gone
    /// (the process is on its way out).
    pub async fn changed(&mut self) -> Result<(), watch::error::RecvError> {
        // It takes the version [`Watch::poll_change`]'s registration waits for.
        self.registered = None;
        self.rx.changed().await
    }

    /// Ready with the state once it differs from the last one seen (a gone sender reads as
    /// [`Shutdown::GraceOver`]). Registers the task once: while its waker stays the same, a
    /// poll that finds nothing new is a version check, nothing more.
    pub fn poll_change(&mut self, cx: &mut Context<'_>) -> Poll<Shutdown> {
        loop {
            match self.rx.has_changed() {
                Ok(false) => {}
                Ok(true) => {
                    self.registered = None;
                    return Poll::Ready(*self.rx.borrow_and_update());
                }
                Err(_) => {
                    self.registered = None;
                    return Poll::Ready(Shutdown::GraceOver);
                }
            }
            if let Some((_, waker)) = &self.registered {
                if waker.will_wake(cx.waker()) {
                    return Poll::Pending;
                }
            }
            // Registered before the version is checked again, so that a send in between
            // still wakes this task.
            let mut notified = Box::pin(Arc::clone(&self.wake).notified_owned());
            notified.as_mut().enable();
            if !matches!(self.rx.has_changed(), Ok(false)) {
                continue;
            }
            if notified.as_mut().poll(cx).is_ready() {
                continue;
            }
            self.registered = Some((notified, cx.waker().clone()));
            return Poll::Pending;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::future::poll_fn;
    use std::time::Duration;

    /// What a spawned waiter returns, within 5 s.
    async fn woken<T>(waiter: tokio::task::JoinHandle<T>) -> T {
        tokio::time::timeout(Duration::from_secs(5), waiter)
            .await
            .expect("woken")
            .unwrap()
    }

    #[tokio::test]
    async fn a_registered_watch_is_woken_by_each_change_and_sees_it_once() {
        let (tx, mut watch) = channel();
        let waiter = tokio::spawn(async move {
            let mut seen = Vec::new();
            for _ in 0..2 {
                seen.push(poll_fn(|cx| watch.poll_change(cx)).await);
            }
            seen
        });
        tokio::time::sleep(Duration::from_millis(50)).await;
        tx.send(Shutdown::Draining);
        tokio::time::sleep(Duration::from_millis(50)).await;
        tx.send(Shutdown::GraceOver);
        let seen = woken(waiter).await;
        assert_eq!(seen, [Shutdown::Draining, Shutdown::GraceOver]);
    }

    /// Polled again and again with nothing new, the watch stays registered: one send still
    /// wakes it, whatever the other wake-ups of its task.
    #[tokio::test]
    async fn other_wake_ups_of_the_task_do_not_lose_the_registration() {
        let (tx, mut watch) = channel();
        let (ping, mut pings) = tokio::sync::mpsc::channel::<()>(1);
        let waiter = tokio::spawn(async move {
            let mut polls = 0;
            loop {
                tokio::select! {
                    state = poll_fn(|cx| watch.poll_change(cx)) => return (state, polls),
                    Some(()) = pings.recv() => polls += 1,
                }
            }
        });
        for _ in 0..10 {
            ping.send(()).await.unwrap();
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        tx.send(Shutdown::Draining);
        let (state, polls) = woken(waiter).await;
        assert_eq!((state, polls), (Shutdown::Draining, 10));
    }

    /// A session waiting, registered, when the sender goes: woken, with the grace over.
    #[tokio::test]
    async fn a_sender_that_goes_wakes_the_registered_with_the_grace_over() {
        let (tx, mut watch) = channel();
        let waiter = tokio::spawn(async move { poll_fn(|cx| watch.poll_change(cx)).await });
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(!waiter.is_finished());
        drop(tx);
        let state = woken(waiter).await;
        assert_eq!(state, Shutdown::GraceOver);
    }

    /// Registered from one task, then polled from another (a watch handed on to another
    /// task): the new task is the one woken.
    #[tokio::test]
    async fn a_watch_polled_from_another_task_registers_that_task() {
        let (tx, mut watch) = channel();
        let first = std::future::poll_fn(|cx| Poll::Ready(watch.poll_change(cx))).await;
        assert!(first.is_pending());
        let waiter = tokio::spawn(async move { poll_fn(|cx| watch.poll_change(cx)).await });
        tokio::time::sleep(Duration::from_millis(50)).await;
        tx.send(Shutdown::Draining);
        let state = woken(waiter).await;
        assert_eq!(state, Shutdown::Draining);
    }

    /// A session that moves to the sessions' threads goes on with a clone of its watch, the
    /// original registered from the admission threads' task: the clone has seen what the
    /// original had (the drain is not told twice), and the next state wakes the clone's task.
    #[tokio::test]
    async fn a_clone_of_a_registered_watch_wakes_its_own_task() {
        let (tx, mut watch) = channel();
        tx.send(Shutdown::Draining);
        assert_eq!(
            poll_fn(|cx| watch.poll_change(cx)).await,
            Shutdown::Draining
        );
        let registered = std::future::poll_fn(|cx| Poll::Ready(watch.poll_change(cx))).await;
        assert!(registered.is_pending());
        let mut moved = watch.clone();
        let waiter = tokio::spawn(async move { poll_fn(|cx| moved.poll_change(cx)).await });
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(!waiter.is_finished(), "the drain told again");
        tx.send(Shutdown::GraceOver);
        assert_eq!(woken(waiter).await, Shutdown::GraceOver);
        drop(watch);
    }

    #[tokio::test]
    async fn a_gone_sender_reads_as_the_grace_over() {
        let (tx, mut watch) = channel();
        drop(tx);
        let state = poll_fn(|cx| watch.poll_change(cx)).await;
        assert_eq!(state, Shutdown::GraceOver);
    }

    #[tokio::test]
    async fn a_watch_subscribed_late_has_seen_the_state_of_then() {
        let (tx, _watch) = channel();
        tx.send(Shutdown::Draining);
        let mut late = tx.subscribe();
        assert_eq!(late.borrow(), Shutdown::Draining);
        let pending = std::future::poll_fn(|cx| Poll::Ready(late.poll_change(cx))).await;
        assert!(pending.is_pending());
    }
}
