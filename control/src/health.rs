//! What the backend supervisor last found of each tenant's backend
//! ([`supervise`](crate::supervise)): the driver's own check for backends this process
//! runs (local, lxc), else whether the backend's address takes a connection (static,
//! proxmox, tenants of the config file). `/metrics` (`sluice_backend_up`), the tenant
//! stats and `/readyz` read it, so a backend that is down is visible before any client
//! tried it, pool or no pool.

use std::collections::HashMap;
use std::sync::Mutex;

/// Tenant id → `None` (up) or `Some(why it is down)`; tenants never checked are absent.
#[derive(Debug, Default)]
pub struct BackendHealth(Mutex<HashMap<String, Option<String>>>);

impl BackendHealth {
    pub fn up(&self, id: &str) {
        self.set(id, None);
    }

    pub fn down(&self, id: &str, why: String) {
        self.set(id, Some(why));
    }

    fn set(&self, id: &str, state: Option<String>) {
        let mut map = self.0.lock().expect("health lock poisoned");
        match map.get_mut(id) {
            Some(slot) => *slot = state,
            None => {
                map.insert(id.to_owned(), state);
            }
        }
    }

    /// Whether the tenant's backend was up at its last check; `None` if never checked.
    pub fn is_up(&self, id: &str) -> Option<bool> {
        let map = self.0.lock().expect("health lock poisoned");
        map.get(id).map(Option::is_none)
    }

    /// The tenants whose backend was down at its last check, with why, sorted.
    pub fn down_now(&self) -> Vec<(String, String)> {
        let map = self.0.lock().expect("health lock poisoned");
        let mut down: Vec<_> = map
            .iter()
            .filter_map(|(id, why)| why.clone().map(|why| (id.clone(), why)))
            .collect();
        down.sort();
        down
    }

    /// Forgets tenants that are no longer there.
    pub fn retain(&self, keep: impl Fn(&str) -> bool) {
        self.0
            .lock()
            .expect("health lock poisoned")
            .retain(|id, _| keep(id));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tracks_the_last_verdict_per_tenant() {
        let health = BackendHealth::default();
        assert_eq!(health.is_up("a"), None);
        health.down("a", "connection refused".into());
        health.up("b");
        assert_eq!(health.is_up("a"), Some(false));
        assert_eq!(health.is_up("b"), Some(true));
        assert_eq!(
            health.down_now(),
            [("a".to_owned(), "connection refused".to_owned())]
        );
        health.up("a");
        assert!(health.down_now().is_empty());
        health.retain(|id| id == "a");
        assert_eq!(health.is_up("b"), None);
    }
}
