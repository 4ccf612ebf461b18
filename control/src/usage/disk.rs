//! The disk a tenant uses: every `[usage] disk_sample_interval_s`, the size of the
//! databases on each backend of the catalog (`pg_database_size`), read as the tenant's
//! auth role (the one Sluice reads secrets with), recorded as the latest sample of
//! the hour and measured against the tenant's disk limit ([`Watermarks`]).

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use provision::BackendAddress;
use router::{Backend, BackendAddr, BackendTls, CatalogHandle};
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

use super::UsageMeter;
use crate::watermarks::Watermarks;

/// Backends sampled at once.
const AT_ONCE: usize = 8;
/// How long one sample may take (the login has its own 10 s).
const QUERY_TIMEOUT: Duration = Duration::from_secs(10);

/// Every database of the backend the role may connect to, templates aside: a tenant's
/// backend is its own cluster (local, lxc, proxmox), so this is its disk.
const SIZE: &str = "SELECT coalesce(sum(pg_catalog.pg_database_size(oid)), 0)::int8 \
    FROM pg_catalog.pg_database \
    WHERE NOT datistemplate AND pg_catalog.has_database_privilege(oid, 'CONNECT')";

/// Samples every tenant of `catalog` now and then every `interval`, until `stop`.
pub async fn run(
    meter: Arc<UsageMeter>,
    catalog: Arc<CatalogHandle>,
    watermarks: Arc<Watermarks>,
    interval: Duration,
    stop: CancellationToken,
) {
    let mut tick = tokio::time::interval(interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tick.tick() => {}
        }
        let limit = Arc::new(Semaphore::new(AT_ONCE));
        let mut samples = tokio::task::JoinSet::new();
        for tenant in catalog.snapshot().iter() {
            let (id, tenant) = (tenant.id.to_string(), tenant.clone());
            let (meter, limit, watermarks) = (meter.clone(), limit.clone(), watermarks.clone());
            samples.spawn(async move {
                let _permit = limit.acquire_owned().await;
                match size_of(&tenant.backend).await {
                    Ok(bytes) => {
                        let now = SystemTime::now();
                        meter.disk(&id, now, bytes);
                        watermarks.sampled(&tenant, bytes, now);
                    }
                    Err(e) => {
                        tracing::debug!(tenant = %id, error = %format!("{e:#}"), "sampling the tenant's database sizes")
                    }
                }
            });
        }
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = async { while samples.join_next().await.is_some() {} } => {}
        }
    }
}

/// The bytes of the backend's databases, as its auth role sees them.
pub async fn size_of(backend: &Backend) -> anyhow::Result<u64> {
    let (host, port) = match &backend.addr {
        BackendAddr::Tcp { host, port } => (host.clone(), *port),
        BackendAddr::Unix { dir, port } => (dir.display().to_string(), *port),
    };
    let tls = match backend.tls {
        BackendTls::Disable => "disable",
        BackendTls::Prefer => "prefer",
        BackendTls::Require => "require",
        BackendTls::VerifyFull => "verify-full",
    };
    let address = BackendAddress {
        host,
        port,
        tls: tls.into(),
        tls_ca: backend.tls_ca.clone(),
        admin_user: backend.auth_user.clone(),
        admin_database: backend.auth_database.clone(),
    };
    let client = provision::sql::connect_admin(&address, &backend.auth_password, None).await?;
    let row = tokio::time::timeout(QUERY_TIMEOUT, client.query_one(SIZE, &[]))
        .await
        .map_err(|_| anyhow::anyhow!("no answer within {QUERY_TIMEOUT:?}"))??;
    Ok(u64::try_from(row.get::<_, i64>(0)).unwrap_or(0))
}
