//! The memory clients can make Sluice hold, bounded: a process-wide budget with a share
//! per tenant ([`MemoryBudget`]), drawn on by each client through a [`Grant`]. The
//! proxy draws on it; the admin listener reports it (`/metrics`).
//!
//! What is charged is what a client chooses the size of: a client message held whole
//! beyond the read buffer every busy client has anyway (a message over
//! `max_client_message_buffer` is streamed, never held), and the statement texts a
//! transaction-mode client prepared (kept to prepare them again on other server
//! connections). Buffers of fixed size are not charged, and a client that sends small
//! messages never draws on the budget, so one tenant exhausting its share costs other
//! tenants nothing.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use crate::TenantId;
use dashmap::DashMap;

/// The budget and what is drawn on it, process-wide and per tenant.
#[derive(Debug)]
pub struct MemoryBudget {
    limit: usize,
    per_tenant: usize,
    used: AtomicUsize,
    tenants: DashMap<TenantId, Arc<AtomicUsize>>,
}

/// Which bound a grant ran into.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Exhausted {
    /// `[proxy] memory_budget_per_tenant`.
    Tenant,
    /// `[proxy] memory_budget`.
    Process,
}

impl MemoryBudget {
    pub fn new(limit: usize, per_tenant: usize) -> Arc<Self> {
        Arc::new(MemoryBudget {
            limit,
            per_tenant,
            used: AtomicUsize::new(0),
            tenants: DashMap::new(),
        })
    }

    /// Bytes drawn on the budget now, by every tenant.
    pub fn used(&self) -> usize {
        self.used.load(Ordering::Relaxed)
    }

    pub fn limit(&self) -> usize {
        self.limit
    }

    pub fn per_tenant(&self) -> usize {
        self.per_tenant
    }

    /// Bytes drawn now by each tenant that has drawn any since it was first seen.
    pub fn tenants(&self) -> Vec<(TenantId, usize)> {
        self.tenants
            .iter()
            .map(|t| (t.key().clone(), t.value().load(Ordering::Relaxed)))
            .collect()
    }

    /// Bytes drawn by `tenant` now.
    pub fn used_by(&self, tenant: &TenantId) -> usize {
        self.tenants
            .get(tenant)
            .map_or(0, |t| t.load(Ordering::Relaxed))
    }

    /// An empty grant for one client of `tenant`.
    pub fn grant(self: &Arc<Self>, tenant: &TenantId) -> Grant {
        let share = self
            .tenants
            .entry(tenant.clone())
            .or_insert_with(|| Arc::new(AtomicUsize::new(0)))
            .clone();
        Grant {
            budget: self.clone(),
            share,
            held: 0,
        }
    }
}

/// Adds `bytes` to `counter` unless that takes it past `limit`.
fn draw(counter: &AtomicUsize, bytes: usize, limit: usize) -> bool {
    counter
        .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |used| {
            used.checked_add(bytes).filter(|&total| total <= limit)
        })
        .is_ok()
}

/// What one client holds of the budget; given back when dropped.
#[derive(Debug)]
pub struct Grant {
    budget: Arc<MemoryBudget>,
    share: Arc<AtomicUsize>,
    held: usize,
}

impl Grant {
    /// Makes the grant `bytes`: a smaller one always succeeds, a larger one only if the
    /// tenant's share and the process budget both have room (else nothing changes).
    pub fn resize(&mut self, bytes: usize) -> Result<(), Exhausted> {
        if bytes <= self.held {
            let freed = self.held - bytes;
            self.share.fetch_sub(freed, Ordering::Relaxed);
            self.budget.used.fetch_sub(freed, Ordering::Relaxed);
            self.held = bytes;
            return Ok(());
        }
        let more = bytes - self.held;
        if !draw(&self.share, more, self.budget.per_tenant) {
            return Err(Exhausted::Tenant);
        }
        if !draw(&self.budget.used, more, self.budget.limit) {
            self.share.fetch_sub(more, Ordering::Relaxed);
            return Err(Exhausted::Process);
        }
        self.held = bytes;
        Ok(())
    }

    pub fn held(&self) -> usize {
        self.held
    }
}

impl Drop for Grant {
    fn drop(&mut self) {
        let _ = self.resize(0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_tenant_cannot_take_more_than_its_share_and_gives_it_back() {
        let budget = MemoryBudget::new(1000, 600);
        let acme = TenantId::parse("acme").unwrap();
        let globex = TenantId::parse("globex").unwrap();
        let mut a1 = budget.grant(&acme);
        let mut a2 = budget.grant(&acme);
        assert_eq!(a1.resize(400), Ok(()));
        assert_eq!(a2.resize(300), Err(Exhausted::Tenant));
        assert_eq!(a2.held(), 0, "a refused resize changes nothing");
        assert_eq!(a2.resize(200), Ok(()));
        let mut g = budget.grant(&globex);
        assert_eq!(g.resize(500), Err(Exhausted::Process));
        assert_eq!(budget.used_by(&globex), 0);
        assert_eq!(g.resize(400), Ok(()));
        assert_eq!(budget.used(), 1000);
        drop(a1);
        assert_eq!(budget.used_by(&acme), 200);
        assert_eq!(a2.resize(50), Ok(()));
        drop(a2);
        drop(g);
        assert_eq!(budget.used(), 0);
        assert_eq!(budget.used_by(&acme), 0);
    }
}
