//! Why connections were turned away, counted per tenant, what became of cancel
//! requests, and the cap that keeps the number of per-tenant series bounded however
//! many tenants there are.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;

use dashmap::DashMap;

use crate::TenantId;

/// Label for tenants past the series cap.
pub const OTHER: &str = "_other";
/// Label for connections that named a tenant that does not exist. Kept apart from real
/// tenants so that scanning names cannot take series slots.
pub const UNKNOWN: &str = "_unknown";
/// Label for connections that named no tenant at all.
pub const NONE: &str = "_none";

/// Why a connection was refused before it got a server session. The label value is
/// part of the metrics contract (docs/observability.md).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Reason {
    NoTenant,
    UnknownTenant,
    TlsRequired,
    AuthFailed,
    PoolTimeout,
    BackendUnavailable,
    BackendRefused,
    ProtocolError,
    Unsupported,
    LoginTimeout,
    ShuttingDown,
    TooManyConnections,
    ConnectRate,
    QueryRate,
    Banned,
    AddressNotAllowed,
    Suspended,
    MessageTooLarge,
    MemoryBudget,
    TooManyPendingLogins,
    AuthUserLogin,
}

impl Reason {
    pub const ALL: [Reason; 21] = [
        Reason::NoTenant,
        Reason::UnknownTenant,
        Reason::TlsRequired,
        Reason::AuthFailed,
        Reason::PoolTimeout,
        Reason::BackendUnavailable,
        Reason::BackendRefused,
        Reason::ProtocolError,
        Reason::Unsupported,
        Reason::LoginTimeout,
        Reason::ShuttingDown,
        Reason::TooManyConnections,
        Reason::ConnectRate,
        Reason::QueryRate,
        Reason::Banned,
        Reason::AddressNotAllowed,
        Reason::Suspended,
        Reason::MessageTooLarge,
        Reason::MemoryBudget,
        Reason::TooManyPendingLogins,
        Reason::AuthUserLogin,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Reason::NoTenant => "no_tenant",
            Reason::UnknownTenant => "unknown_tenant",
            Reason::TlsRequired => "tls_required",
            Reason::AuthFailed => "auth_failed",
            Reason::PoolTimeout => "pool_timeout",
            Reason::BackendUnavailable => "backend_unavailable",
            Reason::BackendRefused => "backend_refused",
            Reason::ProtocolError => "protocol_error",
            Reason::Unsupported => "unsupported",
            Reason::LoginTimeout => "login_timeout",
            Reason::ShuttingDown => "shutting_down",
            Reason::TooManyConnections => "too_many_connections",
            Reason::ConnectRate => "connect_rate",
            Reason::QueryRate => "query_rate",
            Reason::Banned => "banned",
            Reason::AddressNotAllowed => "address_not_allowed",
            Reason::Suspended => "suspended",
            Reason::MessageTooLarge => "message_too_large",
            Reason::MemoryBudget => "memory_budget",
            Reason::TooManyPendingLogins => "too_many_pending_logins",
            Reason::AuthUserLogin => "auth_user_login",
        }
    }
}

/// What became of a CancelRequest (which gets no answer in the protocol either way).
/// The label value is part of the metrics contract (docs/observability.md).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum CancelOutcome {
    /// Sent on to the backend running the client's request.
    Forwarded,
    /// Meant to be forwarded, but the backend could not be reached in time.
    Failed,
    /// No live client has that key (a forged or stale one).
    UnknownKey,
    /// Over the per-address or the per-key rate: dropped.
    RateLimited,
    /// The client had no request running (or held no server connection): there was
    /// nothing to cancel, so nothing was sent (Postgres ignores such a cancel too).
    Idle,
    /// A cancel for the same server connection was still on its way: not sent twice.
    InFlight,
    /// The key is a client's of another replica of the fleet: sent on to it (which
    /// counts what it did with it).
    ToReplica,
}

impl CancelOutcome {
    pub const ALL: [CancelOutcome; 7] = [
        CancelOutcome::Forwarded,
        CancelOutcome::Failed,
        CancelOutcome::UnknownKey,
        CancelOutcome::RateLimited,
        CancelOutcome::Idle,
        CancelOutcome::InFlight,
        CancelOutcome::ToReplica,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            CancelOutcome::Forwarded => "forwarded",
            CancelOutcome::Failed => "failed",
            CancelOutcome::UnknownKey => "unknown_key",
            CancelOutcome::RateLimited => "rate_limited",
            CancelOutcome::Idle => "idle",
            CancelOutcome::InFlight => "in_flight",
            CancelOutcome::ToReplica => "to_replica",
        }
    }
}

/// Hands out per-tenant label values, first come first served, up to a cap; every
/// tenant after that is labelled [`OTHER`]. A tenant keeps the label it got for the
/// life of the process, so counters summed under a label never go backwards.
#[derive(Debug)]
pub struct TenantLabels {
    max: usize,
    named: DashMap<TenantId, Arc<str>>,
    taken: AtomicUsize,
    other: Arc<str>,
}

impl TenantLabels {
    pub fn new(max_tenant_series: usize) -> Self {
        TenantLabels {
            max: max_tenant_series,
            named: DashMap::new(),
            taken: AtomicUsize::new(0),
            other: Arc::from(OTHER),
        }
    }

    /// The label value for `tenant`: its id while there is room, else `_other`.
    pub fn label(&self, tenant: &TenantId) -> Arc<str> {
        if let Some(label) = self.named.get(tenant) {
            return label.clone();
        }
        // Reserve a slot first so racing callers cannot overshoot the cap.
        if self.taken.fetch_add(1, Ordering::Relaxed) >= self.max {
            self.taken.fetch_sub(1, Ordering::Relaxed);
            return self.other.clone();
        }
        let mut reserved = true;
        let label = self
            .named
            .entry(tenant.clone())
            .or_insert_with(|| {
                reserved = false;
                Arc::from(tenant.as_str())
            })
            .clone();
        if reserved {
            // Another caller named it first: give the slot back.
            self.taken.fetch_sub(1, Ordering::Relaxed);
        }
        label
    }

    /// The label `tenant` already has, without handing out a new one.
    pub fn existing(&self, tenant: &TenantId) -> Option<Arc<str>> {
        self.named.get(tenant).map(|l| l.clone())
    }

    /// How many tenants have a label of their own.
    pub fn named(&self) -> usize {
        self.named.len()
    }
}

/// Refused connections per (tenant label, reason), failed password checks per tenant
/// label, and cancel requests per (tenant label, outcome). Updated once per refused
/// connection or cancel request, never on the relay path.
#[derive(Debug)]
pub struct Rejections {
    labels: Arc<TenantLabels>,
    refused: DashMap<(Arc<str>, Reason), AtomicU64>,
    auth_failures: DashMap<Arc<str>, AtomicU64>,
    cancels: DashMap<(Arc<str>, CancelOutcome), AtomicU64>,
}

/// Who a refused connection was for, as far as Sluice got.
#[derive(Debug, Clone, Copy)]
pub enum Who<'a> {
    /// The connection named no tenant (or did not get that far).
    Nobody,
    /// It named one that is not in the catalog.
    Unknown,
    Tenant(&'a TenantId),
}

impl Rejections {
    pub fn new(labels: Arc<TenantLabels>) -> Self {
        Rejections {
            labels,
            refused: DashMap::new(),
            auth_failures: DashMap::new(),
            cancels: DashMap::new(),
        }
    }

    pub fn labels(&self) -> &Arc<TenantLabels> {
        &self.labels
    }

    fn label(&self, who: Who<'_>) -> Arc<str> {
        match who {
            Who::Nobody => Arc::from(NONE),
            Who::Unknown => Arc::from(UNKNOWN),
            Who::Tenant(id) => self.labels.label(id),
        }
    }

    pub fn record(&self, who: Who<'_>, reason: Reason) {
        let label = self.label(who);
        if reason == Reason::AuthFailed {
            self.auth_failures
                .entry(label.clone())
                .or_default()
                .fetch_add(1, Ordering::Relaxed);
        }
        self.refused
            .entry((label, reason))
            .or_default()
            .fetch_add(1, Ordering::Relaxed);
    }

    /// A cancel request and what became of it; `who` is the tenant of the client whose
    /// key it carried (`Nobody` for a key no live client has).
    pub fn record_cancel(&self, who: Who<'_>, outcome: CancelOutcome) {
        self.cancels
            .entry((self.label(who), outcome))
            .or_default()
            .fetch_add(1, Ordering::Relaxed);
    }

    /// (tenant label, outcome, count), sorted.
    pub fn cancels(&self) -> Vec<(Arc<str>, CancelOutcome, u64)> {
        sorted_counts(&self.cancels)
    }

    /// (tenant label, reason, count), sorted.
    pub fn refused(&self) -> Vec<(Arc<str>, Reason, u64)> {
        sorted_counts(&self.refused)
    }

    /// (tenant label, failed password checks), sorted.
    pub fn auth_failures(&self) -> Vec<(Arc<str>, u64)> {
        let mut all: Vec<_> = self
            .auth_failures
            .iter()
            .map(|e| (e.key().clone(), e.value().load(Ordering::Relaxed)))
            .collect();
        all.sort();
        all
    }

    /// Refusals of `tenant` by reason (for the stats API).
    pub fn refused_for(&self, tenant: &TenantId) -> Vec<(Reason, u64)> {
        let Some(label) = self.labels.existing(tenant) else {
            return Vec::new();
        };
        let mut all: Vec<_> = Reason::ALL
            .iter()
            .filter_map(|&r| {
                let n = self.refused.get(&(label.clone(), r))?;
                Some((r, n.load(Ordering::Relaxed)))
            })
            .collect();
        all.sort();
        all
    }
}

/// A counter map's (tenant label, key, count) rows, sorted.
fn sorted_counts<K: Copy + Ord + std::hash::Hash>(
    map: &DashMap<(Arc<str>, K), AtomicU64>,
) -> Vec<(Arc<str>, K, u64)> {
    let mut all: Vec<_> = map
        .iter()
        .map(|e| {
            (
                e.key().0.clone(),
                e.key().1,
                e.value().load(Ordering::Relaxed),
            )
        })
        .collect();
    all.sort();
    all
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(s: &str) -> TenantId {
        TenantId::parse(s).unwrap()
    }

    #[test]
    fn labels_are_sticky_and_capped() {
        let labels = TenantLabels::new(2);
        assert_eq!(&*labels.label(&id("a")), "a");
        assert_eq!(&*labels.label(&id("b")), "b");
        assert_eq!(&*labels.label(&id("c")), OTHER);
        assert_eq!(&*labels.label(&id("a")), "a");
        assert_eq!(&*labels.label(&id("c")), OTHER);
        assert_eq!(labels.named(), 2);
    }

    #[test]
    fn racing_callers_never_exceed_the_cap() {
        let labels = Arc::new(TenantLabels::new(50));
        let threads: Vec<_> = (0..8)
            .map(|t| {
                let labels = labels.clone();
                std::thread::spawn(move || {
                    for i in 0..200 {
                        labels.label(&id(&format!("t{}", (i * 7 + t) % 120)));
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        assert_eq!(labels.named(), 50);
    }

    #[test]
    fn unknown_and_missing_tenants_take_no_slot() {
        let rejections = Rejections::new(Arc::new(TenantLabels::new(1)));
        for _ in 0..3 {
            rejections.record(Who::Unknown, Reason::UnknownTenant);
        }
        rejections.record(Who::Nobody, Reason::NoTenant);
        rejections.record(Who::Tenant(&id("acme")), Reason::AuthFailed);
        rejections.record(Who::Tenant(&id("globex")), Reason::AuthFailed);
        let refused: Vec<(String, &str, u64)> = rejections
            .refused()
            .into_iter()
            .map(|(t, r, n)| (t.to_string(), r.as_str(), n))
            .collect();
        assert_eq!(
            refused,
            vec![
                ("_none".into(), "no_tenant", 1),
                ("_other".into(), "auth_failed", 1),
                ("_unknown".into(), "unknown_tenant", 3),
                ("acme".into(), "auth_failed", 1),
            ]
        );
        assert_eq!(rejections.auth_failures().len(), 2);
        assert_eq!(
            rejections.refused_for(&id("acme")),
            vec![(Reason::AuthFailed, 1)]
        );
    }

    #[test]
    fn cancels_are_counted_by_tenant_and_outcome() {
        let rejections = Rejections::new(Arc::new(TenantLabels::new(1)));
        rejections.record_cancel(Who::Nobody, CancelOutcome::UnknownKey);
        rejections.record_cancel(Who::Tenant(&id("acme")), CancelOutcome::Forwarded);
        rejections.record_cancel(Who::Tenant(&id("acme")), CancelOutcome::RateLimited);
        rejections.record_cancel(Who::Tenant(&id("acme")), CancelOutcome::RateLimited);
        rejections.record_cancel(Who::Tenant(&id("globex")), CancelOutcome::Idle);
        let counted: Vec<(String, &str, u64)> = rejections
            .cancels()
            .into_iter()
            .map(|(t, o, n)| (t.to_string(), o.as_str(), n))
            .collect();
        assert_eq!(
            counted,
            vec![
                ("_none".into(), "unknown_key", 1),
                ("_other".into(), "idle", 1),
                ("acme".into(), "forwarded", 1),
                ("acme".into(), "rate_limited", 2),
            ]
        );
        assert!(
            rejections.refused().is_empty(),
            "a cancel is no refused login"
        );
    }
}
