//! What PgBouncer's SHOW POOLS and SHOW STATS answer, as JSON: per pool and per
//! tenant, live counts, totals since start, and rates over the last sampling period.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use pooler::{Pool, PoolCounts, PoolKey, Pools};
use router::{PoolMode, Rejections, TenantId};
use serde::Serialize;
use tokio_util::sync::CancellationToken;

/// How often rates are recomputed.
pub const SAMPLE_PERIOD: Duration = Duration::from_secs(5);

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct PoolStatsView {
    pub tenant: String,
    pub database: String,
    pub role: String,
    pub mode: &'static str,
    pub size: usize,
    #[serde(flatten)]
    pub counts: CountsView,
}

/// Counts of one pool, or summed over a tenant's pools.
#[derive(Debug, Clone, Serialize, PartialEq, Default)]
pub struct CountsView {
    pub clients: Clients,
    pub servers: Servers,
    pub totals: Totals,
    pub rates: Rates,
    pub wait: Wait,
    /// False when the last attempt to reach the backend failed.
    pub backend_up: bool,
}

#[derive(Debug, Clone, Copy, Serialize, PartialEq, Eq, Default)]
pub struct Clients {
    /// Holding a server connection.
    pub active: usize,
    /// Queued for a server connection.
    pub waiting: usize,
    /// Logged in, holding nothing (transaction mode between transactions).
    pub idle: usize,
    /// Of the active, transaction-mode clients that keep their server connection
    /// between transactions because their session holds state.
    pub pinned: usize,
}

#[derive(Debug, Clone, Copy, Serialize, PartialEq, Eq, Default)]
pub struct Servers {
    pub active: usize,
    pub idle: usize,
    pub connecting: usize,
}

#[derive(Debug, Clone, Copy, Serialize, PartialEq, Eq, Default)]
pub struct Totals {
    pub queries: u64,
    pub transactions: u64,
    pub bytes_from_clients: u64,
    pub bytes_to_clients: u64,
    /// Checkouts that had to queue.
    pub waits: u64,
}

/// Per second, over the last [`SAMPLE_PERIOD`].
#[derive(Debug, Clone, Copy, Serialize, PartialEq, Default)]
pub struct Rates {
    pub queries_per_s: f64,
    pub transactions_per_s: f64,
    pub bytes_from_clients_per_s: f64,
    pub bytes_to_clients_per_s: f64,
}

/// Of the checkouts that queued.
#[derive(Debug, Clone, Copy, Serialize, PartialEq, Default)]
pub struct Wait {
    pub avg_ms: f64,
    pub max_ms: f64,
}

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct TenantStatsView {
    pub tenant: String,
    #[serde(flatten)]
    pub counts: CountsView,
    /// The backend is stopped for scale to zero; the next login starts it.
    pub backend_parked: bool,
    /// Connections refused during login, by reason.
    pub rejected: std::collections::BTreeMap<&'static str, u64>,
    /// Storage watermarks: the latest disk sample against the tenant's limit.
    pub disk: DiskView,
    pub pools: Vec<PoolStatsView>,
}

/// A tenant's storage watermark (docs/limits.md, "Storage watermarks").
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct DiskView {
    /// The latest sample of its databases' size (`null`: none yet).
    pub bytes: Option<u64>,
    /// Its disk limit (`null`: none).
    pub limit_bytes: Option<u64>,
    /// `ok`, `warning` (at or over 80 % of the limit) or `full` (at or over it:
    /// read-only for new transactions).
    pub state: &'static str,
    /// When the latest sample was taken (RFC 3339 UTC).
    pub sampled_at: Option<String>,
}

impl DiskView {
    pub fn of(disk: Option<&router::TenantDisk>, limit: Option<u64>) -> DiskView {
        let Some(disk) = disk else {
            return DiskView {
                bytes: None,
                limit_bytes: limit,
                state: "ok",
                sampled_at: None,
            };
        };
        DiskView {
            bytes: disk.bytes(),
            limit_bytes: limit,
            state: disk.level().as_str(),
            sampled_at: disk.sampled_at().map(|secs| {
                control::store::rfc3339::format_micros(
                    std::time::UNIX_EPOCH + Duration::from_secs(secs),
                )
            }),
        }
    }
}

/// Rates need two samples; this keeps the last one per pool.
#[derive(Debug, Default)]
pub struct RateSampler {
    state: Mutex<SamplerState>,
}

#[derive(Debug, Default)]
struct SamplerState {
    previous: HashMap<PoolKey, (Instant, PoolCounts)>,
    rates: HashMap<PoolKey, Rates>,
}

impl RateSampler {
    /// Takes a sample of every pool now.
    pub fn sample(&self, pools: &Pools) {
        let now = Instant::now();
        let mut state = self.state.lock().expect("sampler lock poisoned");
        let SamplerState { previous, rates } = &mut *state;
        for pool in pools.all() {
            let counts = pool.counts();
            if let Some((then, before)) = previous.get(&pool.key) {
                let secs = now.duration_since(*then).as_secs_f64().max(1e-3);
                let per_s = |a: u64, b: u64| a.saturating_sub(b) as f64 / secs;
                rates.insert(
                    pool.key.clone(),
                    Rates {
                        queries_per_s: per_s(counts.queries, before.queries),
                        transactions_per_s: per_s(counts.transactions, before.transactions),
                        bytes_from_clients_per_s: per_s(
                            counts.bytes_from_clients,
                            before.bytes_from_clients,
                        ),
                        bytes_to_clients_per_s: per_s(
                            counts.bytes_to_clients,
                            before.bytes_to_clients,
                        ),
                    },
                );
            }
            previous.insert(pool.key.clone(), (now, counts));
        }
    }

    fn rates(&self, key: &PoolKey) -> Rates {
        let state = self.state.lock().expect("sampler lock poisoned");
        state.rates.get(key).copied().unwrap_or_default()
    }

    /// Samples every [`SAMPLE_PERIOD`] until `shutdown`.
    pub async fn run(self: Arc<Self>, pools: Arc<Pools>, shutdown: CancellationToken) {
        let mut tick = tokio::time::interval(SAMPLE_PERIOD);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tick.tick() => self.sample(&pools),
            }
        }
    }
}

fn counts_view(c: &PoolCounts, rates: Rates, backend_up: bool) -> CountsView {
    // Servers handed out are held by clients; the rest of the clients hold nothing.
    let active = c.active.min(c.clients);
    CountsView {
        clients: Clients {
            active,
            waiting: c.waiting,
            idle: c.clients.saturating_sub(active + c.waiting),
            pinned: c.pinned,
        },
        servers: Servers {
            active: c.active,
            idle: c.idle,
            connecting: c.connecting,
        },
        totals: Totals {
            queries: c.queries,
            transactions: c.transactions,
            bytes_from_clients: c.bytes_from_clients,
            bytes_to_clients: c.bytes_to_clients,
            waits: c.waits,
        },
        rates,
        wait: Wait {
            avg_ms: if c.waits == 0 {
                0.0
            } else {
                c.wait_us_total as f64 / c.waits as f64 / 1000.0
            },
            max_ms: c.wait_us_max as f64 / 1000.0,
        },
        backend_up,
    }
}

pub fn pool_view(pool: &Pool, sampler: &RateSampler) -> PoolStatsView {
    let settings = pool.settings();
    PoolStatsView {
        tenant: pool.key.tenant.to_string(),
        database: pool.key.database.clone(),
        role: pool.key.role.clone(),
        mode: match settings.mode {
            PoolMode::Session => "session",
            PoolMode::Transaction => "transaction",
        },
        size: settings.size,
        counts: counts_view(
            &pool.counts(),
            sampler.rates(&pool.key),
            !pool.backend_down(),
        ),
    }
}

/// Every pool, sorted by tenant, database, role.
pub fn all_pools(pools: &Pools, sampler: &RateSampler) -> Vec<PoolStatsView> {
    let mut views: Vec<PoolStatsView> = pools.all().iter().map(|p| pool_view(p, sampler)).collect();
    views.sort_by(|a, b| (&a.tenant, &a.database, &a.role).cmp(&(&b.tenant, &b.database, &b.role)));
    views
}

/// One tenant: its pools and their sum.
pub fn tenant_view(
    tenant: &TenantId,
    pools: &Pools,
    sampler: &RateSampler,
    rejections: &Rejections,
) -> TenantStatsView {
    let views: Vec<PoolStatsView> = all_pools(pools, sampler)
        .into_iter()
        .filter(|v| v.tenant == tenant.as_str())
        .collect();
    let mut sum = CountsView {
        backend_up: true,
        ..CountsView::default()
    };
    for v in &views {
        let c = &v.counts;
        sum.clients.active += c.clients.active;
        sum.clients.waiting += c.clients.waiting;
        sum.clients.idle += c.clients.idle;
        sum.clients.pinned += c.clients.pinned;
        sum.servers.active += c.servers.active;
        sum.servers.idle += c.servers.idle;
        sum.servers.connecting += c.servers.connecting;
        sum.totals.queries += c.totals.queries;
        sum.totals.transactions += c.totals.transactions;
        sum.totals.bytes_from_clients += c.totals.bytes_from_clients;
        sum.totals.bytes_to_clients += c.totals.bytes_to_clients;
        sum.totals.waits += c.totals.waits;
        sum.rates.queries_per_s += c.rates.queries_per_s;
        sum.rates.transactions_per_s += c.rates.transactions_per_s;
        sum.rates.bytes_from_clients_per_s += c.rates.bytes_from_clients_per_s;
        sum.rates.bytes_to_clients_per_s += c.rates.bytes_to_clients_per_s;
        // Weighted by each pool's number of waits.
        sum.wait.avg_ms += c.wait.avg_ms * c.totals.waits as f64;
        sum.wait.max_ms = sum.wait.max_ms.max(c.wait.max_ms);
        sum.backend_up &= c.backend_up;
    }
    if sum.totals.waits > 0 {
        sum.wait.avg_ms /= sum.totals.waits as f64;
    }
    TenantStatsView {
        tenant: tenant.to_string(),
        counts: sum,
        backend_parked: false,
        rejected: rejections
            .refused_for(tenant)
            .into_iter()
            .map(|(r, n)| (r.as_str(), n))
            .collect(),
        disk: DiskView::of(None, None),
        pools: views,
    }
}
