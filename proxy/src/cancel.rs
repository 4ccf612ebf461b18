//! Cancel keys: each client gets its own BackendKeyData from Sluice, mapped to the
//! server connection it holds; a CancelRequest is forwarded only on an exact match.
//!
//! A forwarded cancel travels on a connection of its own and may land after the query
//! it was meant for has finished, and Postgres (up to 17) may signal the backend a
//! second time later still. So a server connection that a cancel was forwarded to is
//! never handed to another client: [`CancelHandle::set_target`] says so when the
//! client lets it go, and the client then closes it. Marking happens under the same lock
//! that moves the key, so a cancel either finds the connection still the client's (and
//! marks it) or finds nothing to cancel.

use std::sync::{Arc, Mutex};

use dashmap::DashMap;
use rand::Rng;
use router::BackendAddr;
use subtle::ConstantTimeEq;
use wire::startup::CancelKey;

/// The server connection a client key currently points at.
#[derive(Debug, Clone)]
pub struct CancelTarget {
    pub addr: Arc<BackendAddr>,
    pub key: CancelKey,
}

#[derive(Debug)]
struct Slot {
    secret: i32,
    target: Mutex<Target>,
}

#[derive(Debug, Default)]
struct Target {
    current: Option<CancelTarget>,
    /// A cancel was forwarded to `current`.
    cancelled: bool,
}

#[derive(Debug, Default)]
pub struct CancelRegistry {
    slots: DashMap<i32, Arc<Slot>>,
}

/// A client's registration; dropping it forgets the key.
#[derive(Debug)]
pub struct CancelHandle {
    registry: Arc<CancelRegistry>,
    pub key: CancelKey,
    slot: Arc<Slot>,
}

impl CancelHandle {
    /// Points the key at the server connection the client now holds (or at nothing).
    /// True if a cancel was forwarded to the connection it pointed at until now: that
    /// connection must be closed, not handed to another client.
    #[must_use = "a connection a cancel was sent to must not be reused"]
    pub fn set_target(&self, target: Option<CancelTarget>) -> bool {
        let mut slot = self.slot.target.lock().expect("cancel slot poisoned");
        let cancelled = slot.cancelled;
        *slot = Target {
            current: target,
            cancelled: false,
        };
        cancelled
    }
}

impl Drop for CancelHandle {
    fn drop(&mut self) {
        self.registry.slots.remove(&self.key.pid);
    }
}

impl CancelRegistry {
    /// A fresh random key, unique among live clients.
    pub fn register(self: &Arc<Self>) -> CancelHandle {
        let mut rng = rand::thread_rng();
        loop {
            let key = CancelKey {
                pid: rng.gen_range(1..=i32::MAX),
                secret: rng.gen(),
            };
            let slot = Arc::new(Slot {
                secret: key.secret,
                target: Mutex::new(Target::default()),
            });
            if let dashmap::Entry::Vacant(v) = self.slots.entry(key.pid) {
                v.insert(slot.clone());
                return CancelHandle {
                    registry: self.clone(),
                    key,
                    slot,
                };
            }
        }
    }

    /// The server connection `key` may cancel, if the key is exactly right; it is
    /// marked as cancelled (see the module documentation).
    pub fn resolve(&self, key: CancelKey) -> Option<CancelTarget> {
        let slot = self.slots.get(&key.pid)?.clone();
        let matches: bool = slot
            .secret
            .to_be_bytes()
            .ct_eq(&key.secret.to_be_bytes())
            .into();
        if !matches {
            return None;
        }
        let mut target = slot.target.lock().expect("cancel slot poisoned");
        target.cancelled |= target.current.is_some();
        target.current.clone()
    }

    pub fn len(&self) -> usize {
        self.slots.len()
    }

    pub fn is_empty(&self) -> bool {
        self.slots.is_empty()
    }
}

/// Sends a CancelRequest for `target` to its backend.
pub async fn forward(target: &CancelTarget) -> std::io::Result<()> {
    pooler::cancel::send_cancel(&target.addr, target.key).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_exact_key_resolves() {
        let registry = Arc::new(CancelRegistry::default());
        let handle = registry.register();
        let target = CancelTarget {
            addr: Arc::new(BackendAddr::from_host("/tmp", 5432)),
            key: CancelKey { pid: 7, secret: 9 },
        };
        assert!(!handle.set_target(Some(target.clone())));
        assert!(registry.resolve(handle.key).is_some());
        assert!(
            handle.set_target(Some(target)),
            "the connection a cancel was sent to is reported when the key moves on"
        );
        assert!(!handle.set_target(None), "and only once");
        assert!(registry.resolve(handle.key).is_none(), "nothing to cancel");
        assert!(
            !handle.set_target(None),
            "a cancel that found nothing marks nothing"
        );
        let forged = CancelKey {
            pid: handle.key.pid,
            secret: handle.key.secret.wrapping_add(1),
        };
        assert!(registry.resolve(forged).is_none());
        let key = handle.key;
        drop(handle);
        assert!(registry.resolve(key).is_none(), "stale key cancels nothing");
        assert!(registry.is_empty());
    }
}
