//! Cancel keys: each client gets its own BackendKeyData from Sluice, mapped to the
//! server connection it holds; a CancelRequest is forwarded only on an exact match.
//!
//! The secret is always Sluice's own (random). The process id is the backend's real
//! one in session mode, where the client keeps its server connection, so that
//! `pg_backend_pid()` and a NOTIFY's sender pid match it as on a direct connection; in
//! transaction mode, where a client has no fixed backend, it is random. Two clients may
//! therefore share a process id (two tenants' backends, or a random one that hits a
//! real one): keys are registered by (process id, secret), unique among live clients.
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
    /// By process id, each client with its own secret.
    slots: DashMap<i32, Vec<Arc<Slot>>>,
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
        if let dashmap::Entry::Occupied(mut slots) = self.registry.slots.entry(self.key.pid) {
            slots.get_mut().retain(|s| !Arc::ptr_eq(s, &self.slot));
            if slots.get().is_empty() {
                slots.remove();
            }
        }
    }
}

impl CancelRegistry {
    /// A key for a new client: process id `pid` (the backend's, in session mode), or a
    /// random one; the secret random, and the pair unique among live clients.
    pub fn register(self: &Arc<Self>, pid: Option<i32>) -> CancelHandle {
        let mut rng = rand::thread_rng();
        loop {
            let key = CancelKey {
                pid: pid.unwrap_or_else(|| rng.gen_range(1..=i32::MAX)),
                secret: rng.gen(),
            };
            let mut slots = self.slots.entry(key.pid).or_default();
            if slots.iter().any(|s| s.secret == key.secret) {
                continue;
            }
            let slot = Arc::new(Slot {
                secret: key.secret,
                target: Mutex::new(Target::default()),
            });
            slots.push(slot.clone());
            return CancelHandle {
                registry: self.clone(),
                key,
                slot,
            };
        }
    }

    /// The server connection `key` may cancel, if the key is exactly right; it is
    /// marked as cancelled (see the module documentation). Every secret registered
    /// under the process id is compared, in constant time.
    pub fn resolve(&self, key: CancelKey) -> Option<CancelTarget> {
        let slot = {
            let slots = self.slots.get(&key.pid)?;
            let mut found = None;
            for slot in slots.iter() {
                let matches: bool = slot
                    .secret
                    .to_be_bytes()
                    .ct_eq(&key.secret.to_be_bytes())
                    .into();
                if matches {
                    found = Some(slot.clone());
                }
            }
            found?
        };
        let mut target = slot.target.lock().expect("cancel slot poisoned");
        target.cancelled |= target.current.is_some();
        target.current.clone()
    }

    /// Live clients.
    pub fn len(&self) -> usize {
        self.slots.iter().map(|slots| slots.len()).sum()
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
        let handle = registry.register(None);
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

    #[test]
    fn clients_sharing_a_backend_pid_keep_their_own_keys() {
        // Two tenants' backends may both have pid 4242: each client's key still reaches
        // only its own server connection, and only with its own secret.
        let registry = Arc::new(CancelRegistry::default());
        let target = |port| CancelTarget {
            addr: Arc::new(BackendAddr::from_host("/tmp", port)),
            key: CancelKey {
                pid: 4242,
                secret: 1,
            },
        };
        let a = registry.register(Some(4242));
        let b = registry.register(Some(4242));
        assert_eq!((a.key.pid, b.key.pid), (4242, 4242));
        assert_ne!(a.key.secret, b.key.secret);
        assert!(!a.set_target(Some(target(5432))));
        assert!(!b.set_target(Some(target(5433))));
        assert_eq!(registry.len(), 2);
        let resolved = |key| registry.resolve(key).map(|t| t.addr);
        assert_eq!(resolved(a.key), Some(target(5432).addr));
        assert_eq!(resolved(b.key), Some(target(5433).addr));
        let forged = CancelKey {
            pid: 4242,
            secret: a.key.secret.wrapping_add(1),
        };
        if forged.secret != b.key.secret {
            assert!(resolved(forged).is_none(), "the pid alone cancels nothing");
        }
        let b_key = b.key;
        drop(a);
        assert_eq!(resolved(b_key), Some(target(5433).addr), "b outlives a");
        drop(b);
        assert!(registry.is_empty());
    }
}
