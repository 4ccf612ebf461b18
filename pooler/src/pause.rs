//! A tenant's PAUSE (the console's `PAUSE`, `POST /v1/tenants/{id}/pause`): while it
//! holds, checkouts of the tenant's pools wait instead of taking a server connection;
//! those already out finish; `RESUME` lets the waiting ones go on.
//!
//! Unlike a suspension (a tenant status that refuses logins), a pause refuses nobody:
//! a client waits at most its pool's `max_wait`, then gets the pool timeout.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use tokio::sync::watch;
use tokio::time::Instant;

/// One tenant's pause switch, shared by all its pools.
#[derive(Debug)]
pub struct Pause {
    /// Read on every checkout without waking anything: the fast path.
    paused: AtomicBool,
    /// Wakes the waiting checkouts on RESUME.
    changed: watch::Sender<bool>,
    /// Checkouts past their pause check that have not yet counted their connection
    /// as active: `PAUSE` waits for them too (see [`Pause::enter`]).
    entering: AtomicUsize,
}

impl Default for Pause {
    fn default() -> Self {
        Pause {
            paused: AtomicBool::new(false),
            changed: watch::channel(false).0,
            entering: AtomicUsize::new(0),
        }
    }
}

/// A checkout let past the pause; counted in `entering` until dropped.
#[derive(Debug)]
pub struct Entered<'a>(&'a Pause);

impl Drop for Entered<'_> {
    fn drop(&mut self) {
        self.0.entering.fetch_sub(1, Ordering::SeqCst);
    }
}

impl Pause {
    pub fn is_paused(&self) -> bool {
        self.paused.load(Ordering::SeqCst)
    }

    /// Pauses (true) or resumes (false); whether that changed anything.
    pub fn set(&self, paused: bool) -> bool {
        let was = self.paused.swap(paused, Ordering::SeqCst);
        self.changed.send_replace(paused);
        was != paused
    }

    /// Checkouts between their pause check and a counted connection.
    pub fn entering(&self) -> usize {
        self.entering.load(Ordering::SeqCst)
    }

    /// Lets a checkout in once the tenant is not paused, waiting until `deadline` at
    /// most (`None`: it ran out). The count goes up before the flag is read again, and
    /// PAUSE sets the flag before it reads the count, so a checkout either sees the
    /// pause or is seen by it.
    pub async fn enter(&self, deadline: Instant) -> Option<Entered<'_>> {
        loop {
            if !self.is_paused() {
                self.entering.fetch_add(1, Ordering::SeqCst);
                let entered = Entered(self);
                if !self.is_paused() {
                    return Some(entered);
                }
                drop(entered);
            }
            let mut resumed = self.changed.subscribe();
            let wait = resumed.wait_for(|paused| !*paused);
            if tokio::time::timeout_at(deadline, wait).await.is_err() {
                return None;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::time::Duration;

    #[tokio::test]
    async fn a_paused_checkout_waits_for_resume_and_is_counted_once_in() {
        let pause = Arc::new(Pause::default());
        assert!(pause.set(true));
        let waiting = {
            let pause = pause.clone();
            tokio::spawn(async move {
                let far = Instant::now() + Duration::from_secs(3600);
                pause.enter(far).await.is_some()
            })
        };
        tokio::task::yield_now().await;
        assert!(!waiting.is_finished());
        assert_eq!(pause.entering(), 0);
        assert!(pause.set(false));
        assert!(waiting.await.unwrap());
        assert_eq!(pause.entering(), 0, "the guard was dropped with the task");
    }

    #[tokio::test]
    async fn a_paused_checkout_gives_up_at_its_deadline() {
        let pause = Pause::default();
        pause.set(true);
        let deadline = Instant::now() + Duration::from_millis(10);
        assert!(pause.enter(deadline).await.is_none());
    }
}
