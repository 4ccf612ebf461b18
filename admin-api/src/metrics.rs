//! `/metrics`: OpenMetrics text, built at scrape time from the counters the data plane
//! keeps anyway (pool stats, rejections, histograms). The relay path never looks up a
//! label: per-tenant series are sums over pools, folded under the tenant-series cap.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use dashmap::DashMap;
use pooler::stats::PIN_REASONS;
use pooler::{HistogramSnapshot, Pools};
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric, NoLabelSet};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::info::Info;
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::{Registry, Unit};
use router::{CatalogHandle, MemoryBudget, Rejections};

/// The OpenMetrics content type `/metrics` answers with.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// Admin API requests by (route template, status).
#[derive(Debug, Default)]
pub struct AdminRequests {
    counts: DashMap<(&'static str, u16), AtomicU64>,
}

impl AdminRequests {
    pub fn record(&self, route: &'static str, status: u16) {
        self.counts
            .entry((route, status))
            .or_default()
            .fetch_add(1, Ordering::Relaxed);
    }

    fn sorted(&self) -> Vec<(&'static str, u16, u64)> {
        let mut all: Vec<_> = self
            .counts
            .iter()
            .map(|e| (e.key().0, e.key().1, e.value().load(Ordering::Relaxed)))
            .collect();
        all.sort();
        all
    }
}

/// Provisioning jobs per state, as last read from the control store (`known` once
/// read at least once).
#[derive(Debug, Default)]
pub struct JobCounts {
    known: std::sync::atomic::AtomicBool,
    counts: [AtomicU64; 4],
}

impl JobCounts {
    pub fn set(&self, counts: [u64; 4]) {
        for (slot, n) in self.counts.iter().zip(counts) {
            slot.store(n, Ordering::Relaxed);
        }
        self.known.store(true, Ordering::Relaxed);
    }
}

/// What `/metrics` reads.
#[derive(Debug, Clone)]
pub struct Sources {
    pub catalog: Arc<CatalogHandle>,
    pub pools: Arc<Pools>,
    pub rejections: Arc<Rejections>,
    pub memory: Arc<MemoryBudget>,
    /// The backend supervisor's verdicts, for `sluice_backend_up` before any pool.
    pub health: Arc<control::health::BackendHealth>,
    /// Scale to zero: parked backends and cold starts.
    pub parking: Arc<control::park::Parking>,
    pub admin_requests: Arc<AdminRequests>,
    pub jobs: Arc<JobCounts>,
    /// Storage watermarks: each tenant's latest disk sample.
    pub disk: Arc<router::DiskQuotas>,
}

/// The registry with every Sluice metric; encode it once per scrape.
pub fn registry(sources: Sources) -> Registry {
    let mut registry = Registry::with_prefix("sluice");
    registry.register(
        "build",
        "Version of this Sluice binary",
        Info::new(vec![("version", env!("CARGO_PKG_VERSION"))]),
    );
    registry.register_collector(Box::new(DataPlane(sources)));
    registry
}

/// Renders the registry as OpenMetrics text.
pub fn render(registry: &Registry) -> String {
    let mut out = String::with_capacity(16 * 1024);
    prometheus_client::encoding::text::encode(&mut out, registry)
        .expect("writing to a String cannot fail");
    out
}

#[derive(Debug)]
struct DataPlane(Sources);

/// One tenant label's share of the pools.
#[derive(Debug, Default)]
struct TenantSums {
    clients_active: u64,
    clients_waiting: u64,
    clients_idle: u64,
    servers_active: u64,
    servers_idle: u64,
    servers_connecting: u64,
    servers_opened: u64,
    logins: u64,
    client_us: u64,
    queries: u64,
    transactions: u64,
    bytes_from_clients: u64,
    bytes_to_clients: u64,
    pinned: u64,
    pins: [u64; PIN_REASONS.len()],
    backend_up: bool,
}

impl DataPlane {
    fn per_tenant(&self) -> BTreeMap<Arc<str>, TenantSums> {
        let labels = self.0.rejections.labels();
        let mut sums: BTreeMap<Arc<str>, TenantSums> = BTreeMap::new();
        for pool in self.0.pools.all() {
            let c = pool.counts();
            let s = sums
                .entry(labels.label(&pool.key.tenant))
                .or_insert_with(|| TenantSums {
                    backend_up: true,
                    ..TenantSums::default()
                });
            let active = c.active.min(c.clients);
            s.clients_active += active as u64;
            s.clients_waiting += c.waiting as u64;
            s.clients_idle += c.clients.saturating_sub(active + c.waiting) as u64;
            s.servers_active += c.active as u64;
            s.servers_idle += c.idle as u64;
            s.servers_connecting += c.connecting as u64;
            s.servers_opened += c.opened;
            s.logins += c.logins;
            s.client_us += c.client_us;
            s.queries += c.queries;
            s.transactions += c.transactions;
            s.bytes_from_clients += c.bytes_from_clients;
            s.bytes_to_clients += c.bytes_to_clients;
            s.pinned += c.pinned as u64;
            for (sum, n) in s.pins.iter_mut().zip(c.pins) {
                *sum += n;
            }
            s.backend_up &= !pool.backend_down();
        }
        sums
    }

    /// `sluice_backend_up` per tenant label: what its pools saw, and what the backend
    /// supervisor last found. Every tenant of the catalog is there from its first check
    /// on, pool or no pool; a backend the supervisor found down is down whatever the
    /// pools have seen.
    fn backend_up(&self, tenants: &BTreeMap<Arc<str>, TenantSums>) -> BTreeMap<Arc<str>, bool> {
        let mut up: BTreeMap<Arc<str>, bool> = tenants
            .iter()
            .map(|(label, sums)| (label.clone(), sums.backend_up))
            .collect();
        let labels = self.0.rejections.labels();
        for tenant in self.0.catalog.snapshot().iter() {
            if let Some(verdict) = self.0.health.is_up(tenant.id.as_str()) {
                *up.entry(labels.label(&tenant.id)).or_insert(true) &= verdict;
            }
        }
        up
    }
}

fn gauge(value: u64) -> ConstGauge<i64> {
    ConstGauge::new(i64::try_from(value).unwrap_or(i64::MAX))
}

fn histogram(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    h: &HistogramSnapshot,
) -> fmt::Result {
    // The encoder takes per-bucket counts (it accumulates them itself), and writes
    // le="+Inf" only for f64::MAX.
    let mut below = 0;
    let buckets: Vec<(f64, u64)> = h
        .buckets
        .iter()
        .map(|&(bound, cumulative)| {
            let n = cumulative - below;
            below = cumulative;
            (if bound.is_infinite() { f64::MAX } else { bound }, n)
        })
        .collect();
    encoder
        .encode_descriptor(name, help, Some(&Unit::Seconds), MetricType::Histogram)?
        .encode_histogram::<NoLabelSet>(h.sum_seconds, h.count, &buckets, None)
}

impl DataPlane {
    /// Scale to zero: which backends are parked, how many cold starts, how long each.
    fn encode_parking(&self, encoder: &mut DescriptorEncoder) -> fmt::Result {
        let labels = self.0.rejections.labels();
        let label = |id: &str| match router::TenantId::parse(id) {
            Ok(id) => labels.label(&id),
            Err(_) => Arc::from("_other"),
        };
        let (parked, starts) = self.0.parking.snapshot();
        let mut parked_by: BTreeMap<Arc<str>, u64> = BTreeMap::new();
        for tenant in self.0.catalog.snapshot().iter() {
            if tenant.limits.suspend_after_idle.is_some() {
                parked_by.entry(labels.label(&tenant.id)).or_default();
            }
        }
        for id in &parked {
            *parked_by.entry(label(id)).or_default() += 1;
        }
        let mut family = encoder.encode_descriptor(
            "backend_parked",
            "1 while the tenant's backend is stopped for scale to zero (suspend_after_idle_s)",
            None,
            MetricType::Gauge,
        )?;
        for (tenant, n) in &parked_by {
            gauge(*n).encode(family.encode_family(&[("tenant", &**tenant)])?)?;
        }
        let mut by_label: BTreeMap<Arc<str>, control::park::ColdStarts> = BTreeMap::new();
        for (id, s) in starts {
            let sum = by_label.entry(label(&id)).or_default();
            sum.count += s.count;
            sum.parks += s.parks;
            sum.sum_seconds += s.sum_seconds;
            for (a, b) in sum.buckets.iter_mut().zip(s.buckets) {
                *a += b;
            }
        }
        let mut family = encoder.encode_descriptor(
            "backend_parks",
            "Backends stopped for scale to zero",
            None,
            MetricType::Counter,
        )?;
        for (tenant, s) in &by_label {
            ConstCounter::new(s.parks).encode(family.encode_family(&[("tenant", &**tenant)])?)?;
        }
        let mut family = encoder.encode_descriptor(
            "cold_start",
            "Time a login waited for its tenant's parked backend to start",
            Some(&Unit::Seconds),
            MetricType::Histogram,
        )?;
        for (tenant, s) in &by_label {
            let mut buckets: Vec<(f64, u64)> = control::park::COLD_START_BUCKETS
                .iter()
                .copied()
                .zip(s.buckets)
                .collect();
            buckets.push((f64::MAX, s.buckets[control::park::COLD_START_BUCKETS.len()]));
            family
                .encode_family(&[("tenant", &**tenant)])?
                .encode_histogram::<NoLabelSet>(s.sum_seconds, s.count, &buckets, None)?;
        }
        Ok(())
    }
}

impl Collector for DataPlane {
    fn encode(&self, mut encoder: DescriptorEncoder) -> fmt::Result {
        let tenants = self.per_tenant();
        type Pick = fn(&TenantSums) -> u64;

        /// A family of per-state gauges: name, help, and where each state's value is.
        type StateGauges = (&'static str, &'static str, [(&'static str, Pick); 3]);
        let gauges: [StateGauges; 2] = [
            (
                "client_connections",
                "Logged-in client connections by state (active: holding a server connection)",
                [
                    ("active", |s| s.clients_active),
                    ("waiting", |s| s.clients_waiting),
                    ("idle", |s| s.clients_idle),
                ],
            ),
            (
                "server_connections",
                "Server connections to tenant backends by state",
                [
                    ("active", |s| s.servers_active),
                    ("idle", |s| s.servers_idle),
                    ("connecting", |s| s.servers_connecting),
                ],
            ),
        ];
        for (name, help, states) in gauges {
            let mut family = encoder.encode_descriptor(name, help, None, MetricType::Gauge)?;
            for (tenant, sums) in &tenants {
                for (state, pick) in states {
                    let labels = [("tenant", &**tenant), ("state", state)];
                    gauge(pick(sums)).encode(family.encode_family(&labels)?)?;
                }
            }
        }

        let counters: [(&str, &str, Pick); 4] = [
            (
                "client_logins",
                "Client logins accepted (a client moved here by a restart is not one)",
                |s| s.logins,
            ),
            (
                "queries",
                "Queries relayed (Query and Execute messages)",
                |s| s.queries,
            ),
            (
                "server_connections_opened",
                "Server connections opened to tenant backends",
                |s| s.servers_opened,
            ),
            (
                "transactions",
                "Transactions completed (ReadyForQuery reporting idle)",
                |s| s.transactions,
            ),
        ];
        for (name, help, pick) in counters {
            let mut family = encoder.encode_descriptor(name, help, None, MetricType::Counter)?;
            for (tenant, sums) in &tenants {
                let labels = [("tenant", &**tenant)];
                ConstCounter::new(pick(sums)).encode(family.encode_family(&labels)?)?;
            }
        }

        let mut family = encoder.encode_descriptor(
            "client_connection",
            "Time clients have been logged in, summed over clients",
            Some(&Unit::Seconds),
            MetricType::Counter,
        )?;
        for (tenant, sums) in &tenants {
            let seconds = sums.client_us as f64 / 1e6;
            ConstCounter::new(seconds).encode(family.encode_family(&[("tenant", &**tenant)])?)?;
        }

        let mut family = encoder.encode_descriptor(
            "pinned_clients",
            "Transaction-mode clients holding their server connection because their session holds state",
            None,
            MetricType::Gauge,
        )?;
        for (tenant, sums) in &tenants {
            gauge(sums.pinned).encode(family.encode_family(&[("tenant", &**tenant)])?)?;
        }
        let mut family = encoder.encode_descriptor(
            "pins",
            "Transaction-mode clients pinned to their server connection, by the statement that made session state",
            None,
            MetricType::Counter,
        )?;
        for (tenant, sums) in &tenants {
            for (reason, n) in PIN_REASONS.iter().zip(sums.pins) {
                let labels = [("tenant", &**tenant), ("reason", *reason)];
                ConstCounter::new(n).encode(family.encode_family(&labels)?)?;
            }
        }

        let mut family = encoder.encode_descriptor(
            "bytes",
            "Bytes relayed between clients and servers",
            None,
            MetricType::Counter,
        )?;
        for (tenant, sums) in &tenants {
            for (direction, n) in [
                ("from_client", sums.bytes_from_clients),
                ("to_client", sums.bytes_to_clients),
            ] {
                let labels = [("tenant", &**tenant), ("direction", direction)];
                ConstCounter::new(n).encode(family.encode_family(&labels)?)?;
            }
        }

        // Storage watermarks: a tenant's latest disk sample and its limit (tenants
        // folded into `_other` are summed, so a label never repeats).
        let labels = self.0.rejections.labels();
        let mut disk: BTreeMap<Arc<str>, (Option<u64>, Option<u64>)> = BTreeMap::new();
        for tenant in self.0.catalog.snapshot().iter() {
            let bytes = self.0.disk.get(&tenant.id).and_then(|d| d.bytes());
            let limit = tenant.limits.disk_limit;
            if bytes.is_none() && limit.is_none() {
                continue;
            }
            let add = |sum: &mut Option<u64>, v: Option<u64>| {
                if let Some(v) = v {
                    *sum = Some(sum.unwrap_or(0).saturating_add(v));
                }
            };
            let entry = disk.entry(labels.label(&tenant.id)).or_default();
            add(&mut entry.0, bytes);
            add(&mut entry.1, limit);
        }
        type DiskPick = fn(&(Option<u64>, Option<u64>)) -> Option<u64>;
        let families: [(&str, &str, DiskPick); 2] = [
            (
                "tenant_disk",
                "Size of the tenant's databases at the latest sample (pg_database_size)",
                |d| d.0,
            ),
            (
                "tenant_disk_limit",
                "The tenant's disk limit: 80 % of it is the warning watermark, 100 % makes it read-only",
                |d| d.1,
            ),
        ];
        for (name, help, pick) in families {
            let mut family =
                encoder.encode_descriptor(name, help, Some(&Unit::Bytes), MetricType::Gauge)?;
            for (tenant, d) in &disk {
                if let Some(v) = pick(d) {
                    gauge(v).encode(family.encode_family(&[("tenant", &**tenant)])?)?;
                }
            }
        }

        let mut family = encoder.encode_descriptor(
            "backend_up",
            "1 unless the last attempt to reach the tenant's backend failed",
            None,
            MetricType::Gauge,
        )?;
        for (tenant, up) in &self.backend_up(&tenants) {
            let labels = [("tenant", &**tenant)];
            gauge(u64::from(*up)).encode(family.encode_family(&labels)?)?;
        }

        let rejections = &self.0.rejections;
        let mut family = encoder.encode_descriptor(
            "connections_rejected",
            "Connections refused during login, by reason",
            None,
            MetricType::Counter,
        )?;
        for (tenant, reason, n) in rejections.refused() {
            let labels = [("tenant", &*tenant), ("reason", reason.as_str())];
            ConstCounter::new(n).encode(family.encode_family(&labels)?)?;
        }
        let memory = &self.0.memory;
        let mut family = encoder.encode_descriptor(
            "client_memory_bytes",
            "Bytes clients make Sluice hold beyond their read buffers (messages held whole, statement texts), drawn on [proxy] memory_budget",
            None,
            MetricType::Gauge,
        )?;
        let mut by_label: BTreeMap<Arc<str>, u64> = BTreeMap::new();
        for (tenant, bytes) in memory.tenants() {
            *by_label
                .entry(rejections.labels().label(&tenant))
                .or_default() += bytes as u64;
        }
        for (tenant, bytes) in &by_label {
            gauge(*bytes).encode(family.encode_family(&[("tenant", &**tenant)])?)?;
        }
        gauge(memory.limit() as u64).encode(encoder.encode_descriptor(
            "client_memory_budget_bytes",
            "[proxy] memory_budget: what all clients together may make Sluice hold",
            None,
            MetricType::Gauge,
        )?)?;
        let mut family = encoder.encode_descriptor(
            "cancel_requests",
            "Cancel requests by what became of them",
            None,
            MetricType::Counter,
        )?;
        for (tenant, outcome, n) in rejections.cancels() {
            let labels = [("tenant", &*tenant), ("outcome", outcome.as_str())];
            ConstCounter::new(n).encode(family.encode_family(&labels)?)?;
        }
        let mut family = encoder.encode_descriptor(
            "auth_failures",
            "Failed password checks",
            None,
            MetricType::Counter,
        )?;
        for (tenant, n) in rejections.auth_failures() {
            let labels = [("tenant", &*tenant)];
            ConstCounter::new(n).encode(family.encode_family(&labels)?)?;
        }

        let histograms = &self.0.pools.histograms;
        histogram(
            &mut encoder,
            "pool_wait",
            "Time from asking for a server connection to holding one",
            &histograms.pool_wait.snapshot(),
        )?;
        histogram(
            &mut encoder,
            "query_duration",
            "Time from a request reaching the server to its ReadyForQuery",
            &histograms.query_duration.snapshot(),
        )?;

        let mut family = encoder.encode_descriptor(
            "admin_requests",
            "Admin API requests by route and HTTP status",
            None,
            MetricType::Counter,
        )?;
        for (route, status, n) in self.0.admin_requests.sorted() {
            let status = status.to_string();
            let labels = [("route", route), ("status", status.as_str())];
            ConstCounter::new(n).encode(family.encode_family(&labels)?)?;
        }

        let jobs = &self.0.jobs;
        if jobs.known.load(Ordering::Relaxed) {
            let mut family = encoder.encode_descriptor(
                "provision_jobs",
                "Provisioning jobs in the control store by state",
                None,
                MetricType::Gauge,
            )?;
            for (state, n) in control::store::JOB_STATES.iter().zip(&jobs.counts) {
                let labels = [("state", *state)];
                gauge(n.load(Ordering::Relaxed)).encode(family.encode_family(&labels)?)?;
            }
        }

        self.encode_parking(&mut encoder)?;

        let catalog_len = self.0.catalog.snapshot().len() as u64;
        gauge(catalog_len).encode(encoder.encode_descriptor(
            "tenants",
            "Tenants in the catalog",
            None,
            MetricType::Gauge,
        )?)?;
        gauge(rejections.labels().named() as u64).encode(encoder.encode_descriptor(
            "metrics_tenant_series",
            "Tenants with a label of their own (the rest are tenant=\"_other\")",
            None,
            MetricType::Gauge,
        )?)?;
        Ok(())
    }
}
