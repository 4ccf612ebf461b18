//! Ending a client's session from outside, as both pipelines do it (session mode in
//! session.rs, transaction mode in transaction.rs): the error the client is told, and
//! how long Sluice tries to tell it.

use std::time::Duration;

use crate::admit::TenantGate;
use crate::error::ClientError;
use crate::state::Proxy;

/// How long Sluice tries to tell a departing client why.
pub(crate) const REJECT_TIMEOUT: Duration = Duration::from_secs(2);

/// Why a session was ended from outside: Sluice's shutdown, or its tenant's
/// suspension.
pub(crate) fn terminated(proxy: &Proxy, gate: &TenantGate) -> ClientError {
    if proxy.terminate.is_cancelled() {
        ClientError::Terminating("Sluice is shutting down")
    } else {
        ClientError::TenantTerminated(gate.id.to_string())
    }
}
