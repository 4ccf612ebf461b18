//! The in-memory tenant catalog: read on every connection, replaced whole on change.

use std::collections::HashMap;
use std::sync::Arc;

use arc_swap::ArcSwap;

use crate::tenant::{Tenant, TenantId};

/// An immutable snapshot of all tenants. Lookups are one hash probe, so their cost does
/// not depend on how many tenants there are.
#[derive(Debug, Default)]
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
        // TenantId hashes as its string, so a lookup needs no allocation when the id is
        // valid; an invalid id can never be in the catalog.
        let id = TenantId::parse(id).ok()?;
        self.tenants.get(&id)
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
}

/// The live catalog shared by every connection task. Readers take a snapshot without
/// locking; a change (config reload, later the control plane) builds a new `Catalog`
/// and swaps it in whole.
#[derive(Debug, Default)]
pub struct CatalogHandle {
    current: ArcSwap<Catalog>,
}

impl CatalogHandle {
    pub fn new(catalog: Catalog) -> Self {
        CatalogHandle {
            current: ArcSwap::from_pointee(catalog),
        }
    }

    pub fn snapshot(&self) -> Arc<Catalog> {
        self.current.load_full()
    }

    pub fn replace(&self, catalog: Catalog) {
        self.current.store(Arc::new(catalog));
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
                auth_password: "p".into(),
                auth_database: "postgres".into(),
                auth_query: crate::tenant::DEFAULT_AUTH_QUERY.into(),
            }),
            pool: PoolSettings::default(),
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
}
