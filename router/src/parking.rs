//! Scale to zero: what the proxy asks of the control plane, which it cannot import, to
//! stop the backend of a tenant that has had no client for its `suspend_after_idle_s`
//! and to start it again for the next client's login. Implemented by
//! `control::park::Parking`, handed to the proxy by the binary.

use std::future::Future;
use std::pin::Pin;

/// The answer of a [`BackendPower`] call: Ok once done, or why not.
pub type PowerFuture<'a, T> = Pin<Box<dyn Future<Output = Result<T, String>> + Send + 'a>>;

/// Stopping and starting the backends this process runs.
pub trait BackendPower: std::fmt::Debug + Send + Sync {
    /// Whether the tenant's backend is parked (or being parked): a login must
    /// [`wake`](Self::wake) it first.
    fn is_parked(&self, tenant: &str) -> bool;

    /// Parks the tenant's backend if `still_idle` holds once nothing else can start
    /// or park it (checked after the tenant is marked parked, so that a login from
    /// then on waits for the backend to start again). Ok(true) once parked, Ok(false)
    /// if it was busy again or parked already; Err if its driver cannot park it.
    fn park<'a>(
        &'a self,
        tenant: &'a str,
        still_idle: Box<dyn FnOnce() -> bool + Send + 'a>,
    ) -> PowerFuture<'a, bool>;

    /// Starts the tenant's parked backend and returns once it takes connections;
    /// logins that come meanwhile wait for the same start. Ok(true) if this call
    /// started it (a cold start), Ok(false) if it was running.
    fn wake<'a>(&'a self, tenant: &'a str) -> PowerFuture<'a, bool>;
}
