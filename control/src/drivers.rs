//! The provisioning drivers this process can run, by name (`[provisioner] driver`), and
//! those the configuration enables that cannot run on this host, with the reason.

use std::collections::HashMap;
use std::sync::Arc;

use provision::{Driver, StaticDriver};

use crate::catalog_sync::CatalogSync;

/// The drivers this process can run, by name.
#[derive(Debug, Default, Clone)]
pub struct Drivers {
    by_name: HashMap<&'static str, Arc<dyn Driver>>,
    /// Drivers the configuration enables that cannot run here, with the reason.
    unavailable: HashMap<&'static str, String>,
    /// The driver of a `POST /v1/tenants` that names none.
    pub default: Option<&'static str>,
}

impl Drivers {
    pub fn add(&mut self, driver: Arc<dyn Driver>) {
        self.by_name.insert(driver.name(), driver);
    }

    /// Records that the configured driver `name` cannot run here (logged now; a request
    /// for it is refused with `reason`).
    pub fn unavailable(&mut self, name: &'static str, reason: String) {
        tracing::error!(driver = name, reason = %reason, "a provisioner driver is unavailable");
        self.unavailable.insert(name, reason);
    }

    /// Why the configured driver `name` cannot run here, if it cannot.
    pub fn why_unavailable(&self, name: &str) -> Option<&str> {
        self.unavailable.get(name).map(String::as_str)
    }

    pub fn get(&self, name: &str) -> Option<&Arc<dyn Driver>> {
        self.by_name.get(name)
    }

    pub fn names(&self) -> Vec<&'static str> {
        let mut names: Vec<_> = self.by_name.keys().copied().collect();
        names.sort_unstable();
        names
    }

    /// Stops every backend the drivers run (at shutdown).
    pub fn shutdown(&self) {
        for driver in self.by_name.values() {
            driver.shutdown();
        }
    }
}

/// Starts the backends of the tenants in the catalog (local clusters after a restart),
/// before the proxy listens. Uses the records behind the catalog, so it works from the
/// snapshot while the store is away.
pub async fn start_backends(sync: &CatalogSync, drivers: &Drivers) {
    for record in sync.records() {
        if record.status == "provisioning" || record.backend.host.is_none() {
            continue; // its create job will start it
        }
        let Some(driver) = drivers.get(&record.backend.driver) else {
            continue;
        };
        if let Err(e) = driver.ensure_running(&record.id).await {
            tracing::error!(tenant = %record.id, error = %format!("{e:#}"), "starting the tenant's backend");
        }
    }
}

/// What a `static` tenant's create job would find wrong with its backend parameters
/// (`host`, `port`, `tls`, `tls_ca`, `admin_user`, `admin_database`), so the API can
/// refuse it at once.
pub fn check_static_params(params: &serde_json::Value) -> Result<(), String> {
    StaticDriver::address_from_params(params).map(drop)
}
