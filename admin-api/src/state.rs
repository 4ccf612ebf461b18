//! [`State`]: what every admin request can see. Imports no endpoint.

use std::sync::Arc;

use control::keys::ApiKeys;
use control::Plane;
use prometheus_client::registry::Registry;
use tokio_util::sync::CancellationToken;

use crate::metrics::{AdminRequests, Sources};
use crate::stats::RateSampler;

/// What every admin request can see.
#[derive(Debug)]
pub struct State {
    pub sources: Sources,
    /// Shared with the proxy's admin console (the same keys, roles and revocations).
    pub keys: Arc<ApiKeys>,
    /// The id of the bootstrap key (kept in the store like any other).
    pub(crate) bootstrap_id: String,
    pub admin_requests: Arc<AdminRequests>,
    pub sampler: Arc<RateSampler>,
    /// This process's usage, per tenant and hour, until it is in the control store
    /// (fed and flushed by [`crate::usage::run`]).
    pub usage: Arc<control::usage::UsageMeter>,
    /// The control plane: the store (tenants, API keys, the audit log; changes need
    /// it), catalog sync, provisioning drivers, the job worker's wake-up and the data
    /// plane's admission gates.
    pub plane: Plane,
    /// For the `connection_string` of tenant views.
    pub hint: Option<ConnectionHint>,
    pub(crate) registry: Registry,
    pub(crate) metrics_enabled: bool,
    /// Fired when the process starts draining: `/readyz` then answers 503.
    pub draining: CancellationToken,
}

/// How clients reach tenants, for the `connection_string` of a tenant view.
#[derive(Debug, Clone)]
pub struct ConnectionHint {
    /// `acme` → `acme.<sni_suffix>`.
    pub sni_suffix: String,
    pub port: u16,
}

impl ConnectionHint {
    pub(crate) fn connection_string(&self, id: &str) -> String {
        format!(
            "postgresql://{id}.{}:{}/{}?sslmode=require",
            self.sni_suffix,
            self.port,
            control::jobs::APP_DATABASE
        )
    }
}
