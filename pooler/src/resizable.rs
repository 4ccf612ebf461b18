//! A semaphore whose number of permits can change while permits are lent out: what
//! pool sizes and tenant-wide connection caps need to be tunable live.

use std::sync::{Arc, Mutex};

use tokio::sync::Semaphore;

#[derive(Debug)]
pub struct Resizable {
    semaphore: Arc<Semaphore>,
    /// (the size asked for, permits still to withdraw as they come back).
    state: Mutex<(usize, usize)>,
}

impl Resizable {
    pub fn new(size: usize) -> Self {
        Resizable {
            semaphore: Arc::new(Semaphore::new(size)),
            state: Mutex::new((size, 0)),
        }
    }

    pub fn semaphore(&self) -> &Arc<Semaphore> {
        &self.semaphore
    }

    /// Sets the number of permits to `size`. Growing hands out the new permits at
    /// once (waiters get them); shrinking takes back free permits now and the rest as
    /// holders return them (see [`Resizable::settle`]); nobody holding one loses it.
    pub fn resize(&self, size: usize) {
        let mut state = self.state.lock().expect("semaphore lock poisoned");
        let (old, debt) = &mut *state;
        if size > *old {
            let mut grow = size - *old;
            let repaid = grow.min(*debt);
            *debt -= repaid;
            grow -= repaid;
            self.semaphore.add_permits(grow);
        } else {
            let shrink = *old - size;
            *debt += shrink - self.semaphore.forget_permits(shrink);
        }
        *old = size;
    }

    /// Withdraws permits still owed after a shrink; call after a permit came back.
    pub fn settle(&self) {
        let mut state = self.state.lock().expect("semaphore lock poisoned");
        if state.1 > 0 {
            state.1 -= self.semaphore.forget_permits(state.1);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shrinking_waits_for_permits_to_come_back() {
        let r = Resizable::new(3);
        let a = r.semaphore().clone().try_acquire_owned().unwrap();
        let b = r.semaphore().clone().try_acquire_owned().unwrap();
        r.resize(1);
        assert_eq!(r.semaphore().available_permits(), 0);
        drop(a);
        r.settle();
        // One of the two returned permits is withdrawn, so still none is free.
        assert_eq!(r.semaphore().available_permits(), 0);
        drop(b);
        r.settle();
        assert_eq!(r.semaphore().available_permits(), 1);
        // Growing again repays nothing owed and adds the rest.
        r.resize(4);
        assert_eq!(r.semaphore().available_permits(), 4);
    }

    #[test]
    fn growing_first_cancels_what_is_owed() {
        let r = Resizable::new(2);
        let held: Vec<_> = (0..2)
            .map(|_| r.semaphore().clone().try_acquire_owned().unwrap())
            .collect();
        r.resize(0);
        r.resize(1);
        drop(held);
        r.settle();
        assert_eq!(r.semaphore().available_permits(), 1);
    }
}
