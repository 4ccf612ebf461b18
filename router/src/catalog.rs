//! The in-memory tenant catalog: read on every connection, replaced whole on change.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, RwLock};

use arc_swap::ArcSwap;

use crate::fleet::Share;
use crate::tenant::Tenant;
use crate::tenant_id::TenantId;

/// An immutable snapshot of all tenants. Lookups are one hash probe, so their cost does
/// not depend on how many tenants there are.
#[derive(Debug, Default, Clone)]
pub struct Catalog {
    tenants: HashMap<TenantId, Arc<Tenant>>,
}

impl Catalog {
    pub fn new(tenants: impl IntoIterator<Item = Tenant>) -> Self {
        Catalog {
            tenants: tenants
                .into_iter()
                .map(|t| (t.id.clone(), Arc::new(t)))
                .collect(),
        }
    }

    pub fn get(&self, id: &str) -> Option<&Arc<Tenant>> {
        // TenantId hashes and compares as its string (`Borrow<str>`), so the lookup
        // needs no allocation; an invalid id simply is not there.
        self.tenants.get(id)
    }

    pub fn len(&self) -> usize {
        self.tenants.len()
    }

    pub fn is_empty(&self) -> bool {
        self.tenants.is_empty()
    }

    pub fn iter(&self) -> impl Iterator<Item = &Arc<Tenant>> {
        self.tenants.values()
    }

    /// A copy of this catalog without the tenant `id`.
    pub fn without(&self, id: &str) -> Catalog {
        let mut tenants = self.tenants.clone();
        if let Ok(id) = TenantId::parse(id) {
            tenants.remove(&id);
        }
        Catalog { tenants }
    }

    /// A copy of this catalog with `tenant` added or replacing the one with its id.
    pub fn with(&self, tenant: Tenant) -> Catalog {
        let mut tenants = self.tenants.clone();
        tenants.insert(tenant.id.clone(), Arc::new(tenant));
        Catalog { tenants }
    }
}

type Listener = Box<dyn Fn(&Catalog) + Send + Sync>;
type RoleListener = Box<dyn Fn(&TenantId, &str) + Send + Sync>;

/// The live catalog shared by every connection task. Readers take a snapshot without
/// locking; a change (the admin API, later catalog sync) builds a new `Catalog`, swaps
/// it in whole, and tells the listeners (the proxy's admission gates and pools, which
/// apply changed limits and pool settings to what is already running).
#[derive(Default)]
pub struct CatalogHandle {
    /// What readers see: `full` cut to this process's fleet share.
    current: ArcSwap<Catalog>,
    /// The tenants with their fleet-wide totals: what writers change.
    full: ArcSwap<Catalog>,
    share: Mutex<Share>,
    /// Held by writers for their whole read-modify-write, so no change is lost.
    writer: Mutex<()>,
    listeners: RwLock<Vec<Listener>>,
    role_listeners: RwLock<Vec<RoleListener>>,
}

impl std::fmt::Debug for CatalogHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CatalogHandle")
            .field("tenants", &self.current.load().len())
            .finish_non_exhaustive()
    }
}

impl CatalogHandle {
    pub fn new(catalog: Catalog) -> Self {
        CatalogHandle {
            current: ArcSwap::from_pointee(catalog.clone()),
            full: ArcSwap::from_pointee(catalog),
            ..CatalogHandle::default()
        }
    }

    /// The catalog with fleet-wide totals (what the control store says), where
    /// [`CatalogHandle::snapshot`] has this process's share of them.
    pub fn full(&self) -> Arc<Catalog> {
        self.full.load_full()
    }

    /// Sets this process's share of every tenant's fleet-wide totals
    /// (`router::fleet`), publishing the catalog again if it changed.
    pub fn set_share(&self, share: Share) {
        let _writer = self.writer.lock().expect("catalog writer lock poisoned");
        let mut current = self.share.lock().expect("catalog share lock poisoned");
        if *current == share {
            return;
        }
        *current = share;
        drop(current);
        let full = self.full.load_full();
        self.publish((*full).clone());
    }

    pub fn snapshot(&self) -> Arc<Catalog> {
        self.current.load_full()
    }

    pub fn replace(&self, catalog: Catalog) {
        let _writer = self.writer.lock().expect("catalog writer lock poisoned");
        self.publish(catalog);
    }

    /// Builds the next catalog from the current one and publishes it, unless `change`
    /// fails; writers go one at a time.
    pub fn update<E>(&self, change: impl FnOnce(&Catalog) -> Result<Catalog, E>) -> Result<(), E> {
        let _writer = self.writer.lock().expect("catalog writer lock poisoned");
        let next = change(&self.full.load())?;
        self.publish(next);
        Ok(())
    }

    fn publish(&self, catalog: Catalog) {
        let share = *self.share.lock().expect("catalog share lock poisoned");
        let shared = Arc::new(if share == Share::WHOLE {
            catalog.clone()
        } else {
            Catalog::new(catalog.iter().map(|t| share.of_tenant(t)))
        });
        self.full.store(Arc::new(catalog));
        let catalog = shared;
        self.current.store(catalog.clone());
        for listener in self.listeners.read().expect("catalog lock poisoned").iter() {
            listener(&catalog);
        }
    }

    /// Says that a login role of `tenant` was created, rotated or dropped, so whatever
    /// caches its secret (the proxy's auth cache) forgets it.
    pub fn role_changed(&self, tenant: &TenantId, role: &str) {
        for listener in self
            .role_listeners
            .read()
            .expect("catalog lock poisoned")
            .iter()
        {
            listener(tenant, role);
        }
    }

    /// Calls `listener` for every [`CatalogHandle::role_changed`] from now on.
    pub fn subscribe_roles(&self, listener: impl Fn(&TenantId, &str) + Send + Sync + 'static) {
        self.role_listeners
            .write()
            .expect("catalog lock poisoned")
            .push(Box::new(listener));
    }

    /// Calls `listener` with every catalog published from now on.
    pub fn subscribe(&self, listener: impl Fn(&Catalog) + Send + Sync + 'static) {
        self.listeners
            .write()
            .expect("catalog lock poisoned")
            .push(Box::new(listener));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tenant::{Backend, BackendAddr, BackendTls, PoolSettings};

    fn tenant(id: &str) -> Tenant {
        Tenant {
            id: TenantId::parse(id).unwrap(),
            backend: Arc::new(Backend {
                addr: BackendAddr::from_host("/tmp", 5432),
                tls: BackendTls::Disable,
                tls_ca: None,
                auth_user: "a".into(),
                allow_auth_user_login: false,
                auth_password: "p".into(),
                auth_database: "postgres".into(),
                auth_query: crate::tenant::DEFAULT_AUTH_QUERY.into(),
            }),
            pool: PoolSettings::default(),
            suspended: None,
            hostnames: Vec::new(),
            limits: Default::default(),
        }
    }

    #[test]
    fn lookup_and_replace() {
        let handle = CatalogHandle::new(Catalog::new([tenant("acme")]));
        let before = handle.snapshot();
        assert!(before.get("acme").is_some());
        assert!(before.get("globex").is_none());
        assert!(before.get("ACME").is_none());
        handle.replace(Catalog::new([tenant("globex")]));
        assert!(handle.snapshot().get("globex").is_some());
        // An old snapshot stays valid for whoever still holds it.
        assert!(before.get("acme").is_some());
    }

    #[test]
    fn readers_see_the_share_and_writers_the_totals() {
        let mut t = tenant("acme");
        t.pool.size = 6;
        t.limits.query_rate = Some(100);
        let handle = CatalogHandle::new(Catalog::new([t]));
        handle.set_share(Share {
            replicas: 3,
            rank: 0,
        });
        let shared = handle.snapshot();
        assert_eq!(shared.get("acme").unwrap().pool.size, 2);
        assert_eq!(shared.get("acme").unwrap().limits.query_rate, Some(34));
        assert_eq!(handle.full().get("acme").unwrap().pool.size, 6);
        // A change is made to the totals and published cut, never cut twice.
        handle
            .update(|c| Ok::<_, ()>(c.with(tenant("globex"))))
            .unwrap();
        assert_eq!(handle.snapshot().get("acme").unwrap().pool.size, 2);
        handle.set_share(Share::WHOLE);
        assert_eq!(handle.snapshot().get("acme").unwrap().pool.size, 6);
        assert_eq!(handle.snapshot().len(), 2);
    }
}
