//! Storage watermarks: each tenant's latest database size against its disk limit
//! (`limits.disk_limit_mb`, or its plan's `[plans.NAME.backend] disk_gib`), as plain
//! shared state. The control plane's disk sampler writes it, the relays read one
//! atomic of it per server connection they hand a client, and `/metrics` and the
//! stats API show it. See docs/limits.md ("Storage watermarks").

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, AtomicU8, Ordering};
use std::sync::{Arc, Mutex, RwLock};

use crate::tenant_id::TenantId;

/// Where a tenant's database size stands against its disk limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum DiskLevel {
    /// Under 80 % of the limit, no limit, or not sampled yet.
    Ok = 0,
    /// At or over 80 % of the limit.
    Warning = 1,
    /// At or over the limit: the tenant is read-only for new transactions.
    Full = 2,
}

impl DiskLevel {
    /// The word the stats API and the audit log use.
    pub fn as_str(self) -> &'static str {
        match self {
            DiskLevel::Ok => "ok",
            DiskLevel::Warning => "warning",
            DiskLevel::Full => "full",
        }
    }

    fn from_u8(v: u8) -> DiskLevel {
        match v {
            2 => DiskLevel::Full,
            1 => DiskLevel::Warning,
            _ => DiskLevel::Ok,
        }
    }
}

/// The level of `bytes` against `limit`: full at 100 %, warning from 80 %.
pub fn level_of(bytes: u64, limit: Option<u64>) -> DiskLevel {
    match limit {
        None | Some(0) => DiskLevel::Ok,
        Some(limit) if bytes >= limit => DiskLevel::Full,
        Some(limit) if u128::from(bytes) * 5 >= u128::from(limit) * 4 => DiskLevel::Warning,
        Some(_) => DiskLevel::Ok,
    }
}

/// A size as the refusal message gives it: MiB under a GiB, else GiB, one decimal.
pub fn human_bytes(bytes: u64) -> String {
    const MIB: f64 = 1024.0 * 1024.0;
    let b = bytes as f64;
    if b < 1024.0 * MIB {
        format!("{:.1} MiB", b / MIB)
    } else {
        format!("{:.1} GiB", b / (1024.0 * MIB))
    }
}

/// The message of the 53100 a write of an over-quota tenant gets.
pub fn quota_message(tenant: &str, bytes: u64, limit: u64) -> String {
    format!(
        "tenant \"{tenant}\" is over its disk quota ({} of {}): read-only until it is \
         under again or its plan grows",
        human_bytes(bytes),
        human_bytes(limit)
    )
}

/// A change of level, to be written to the audit log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Transition {
    pub tenant: TenantId,
    pub from: DiskLevel,
    pub to: DiskLevel,
    pub bytes: u64,
    pub limit: Option<u64>,
    /// The first sample of the tenant in this process: `from` is only a guess (the
    /// audit log knows what was said before, see control's watermarks).
    pub first: bool,
}

/// No sample / no limit, in the atomics below.
const NONE: u64 = u64::MAX;

/// One tenant's watermark state. Readers load atomics without a lock; the writers
/// (a sample, a changed limit) take `write` so a level and its inputs change together.
#[derive(Debug)]
pub struct TenantDisk {
    bytes: AtomicU64,
    /// Seconds since the Unix epoch of the latest sample.
    sampled_at: AtomicU64,
    limit: AtomicU64,
    level: AtomicU8,
    write: Mutex<()>,
}

impl Default for TenantDisk {
    fn default() -> Self {
        TenantDisk {
            bytes: AtomicU64::new(NONE),
            sampled_at: AtomicU64::new(NONE),
            limit: AtomicU64::new(NONE),
            level: AtomicU8::new(DiskLevel::Ok as u8),
            write: Mutex::new(()),
        }
    }
}

fn some(v: u64) -> Option<u64> {
    (v != NONE).then_some(v)
}

impl TenantDisk {
    /// Whether new transactions must be read-only: the relays' one check.
    pub fn full(&self) -> bool {
        self.level.load(Ordering::Relaxed) == DiskLevel::Full as u8
    }

    pub fn level(&self) -> DiskLevel {
        DiskLevel::from_u8(self.level.load(Ordering::Relaxed))
    }

    /// The latest sample's bytes.
    pub fn bytes(&self) -> Option<u64> {
        some(self.bytes.load(Ordering::Relaxed))
    }

    /// When the latest sample was taken (seconds since the Unix epoch).
    pub fn sampled_at(&self) -> Option<u64> {
        some(self.sampled_at.load(Ordering::Relaxed))
    }

    /// The limit the level was last evaluated against.
    pub fn limit(&self) -> Option<u64> {
        some(self.limit.load(Ordering::Relaxed))
    }

    /// The 53100 message for this tenant now.
    pub fn refusal(&self, tenant: &str) -> String {
        let bytes = self.bytes().unwrap_or(0);
        let limit = self.limit().unwrap_or(0);
        quota_message(tenant, bytes, limit)
    }

    fn set(
        &self,
        tenant: &TenantId,
        bytes: Option<u64>,
        limit: Option<u64>,
        first: bool,
    ) -> Option<Transition> {
        self.limit.store(limit.unwrap_or(NONE), Ordering::Relaxed);
        let bytes = bytes?;
        let to = level_of(bytes, limit);
        let from = DiskLevel::from_u8(self.level.swap(to as u8, Ordering::Relaxed));
        (from != to || first).then(|| Transition {
            tenant: tenant.clone(),
            from,
            to,
            bytes,
            limit,
            first,
        })
    }

    /// A new sample of `bytes` at `at` (Unix seconds), against `limit`.
    pub fn sampled(
        &self,
        tenant: &TenantId,
        bytes: u64,
        at: u64,
        limit: Option<u64>,
    ) -> Option<Transition> {
        let _write = self.write.lock().expect("disk lock poisoned");
        let first = self.sampled_at().is_none();
        self.bytes.store(bytes, Ordering::Relaxed);
        self.sampled_at.store(at, Ordering::Relaxed);
        self.set(tenant, Some(bytes), limit, first)
    }

    /// The tenant's limit is now `limit` (a PATCH, a plan change, a reload): the latest
    /// sample is measured against it at once.
    pub fn limit_changed(&self, tenant: &TenantId, limit: Option<u64>) -> Option<Transition> {
        let _write = self.write.lock().expect("disk lock poisoned");
        if self.limit() == limit {
            return None;
        }
        self.set(tenant, self.bytes(), limit, false)
    }

    /// Forgets the samples (the tenant left the catalog): back to `Ok`, no transition.
    pub fn forget(&self) {
        let _write = self.write.lock().expect("disk lock poisoned");
        self.bytes.store(NONE, Ordering::Relaxed);
        self.sampled_at.store(NONE, Ordering::Relaxed);
        self.limit.store(NONE, Ordering::Relaxed);
        self.level.store(DiskLevel::Ok as u8, Ordering::Relaxed);
    }
}

/// Every tenant's [`TenantDisk`], created on first use and kept for the life of the
/// process (an admission gate holds its tenant's).
#[derive(Debug, Default)]
pub struct DiskQuotas {
    tenants: RwLock<HashMap<TenantId, Arc<TenantDisk>>>,
}

impl DiskQuotas {
    /// The state of `tenant`, made on first use.
    pub fn of(&self, tenant: &TenantId) -> Arc<TenantDisk> {
        if let Some(d) = self.get(tenant) {
            return d;
        }
        let mut tenants = self.tenants.write().expect("disk lock poisoned");
        tenants.entry(tenant.clone()).or_default().clone()
    }

    /// Forgets the samples of every tenant `keep` says no to (tenants that left the
    /// catalog); their entries stay, as gates hold them.
    pub fn forget_except(&self, keep: impl Fn(&TenantId) -> bool) {
        let tenants = self.tenants.read().expect("disk lock poisoned");
        for (id, disk) in tenants.iter() {
            if !keep(id) && disk.sampled_at().is_some() {
                disk.forget();
            }
        }
    }

    /// The state of `tenant`, if it has one.
    pub fn get(&self, tenant: &TenantId) -> Option<Arc<TenantDisk>> {
        let tenants = self.tenants.read().expect("disk lock poisoned");
        tenants.get(tenant).cloned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn levels_are_80_and_100_percent() {
        assert_eq!(level_of(100, None), DiskLevel::Ok);
        assert_eq!(level_of(79, Some(100)), DiskLevel::Ok);
        assert_eq!(level_of(80, Some(100)), DiskLevel::Warning);
        assert_eq!(level_of(99, Some(100)), DiskLevel::Warning);
        assert_eq!(level_of(100, Some(100)), DiskLevel::Full);
        assert_eq!(level_of(u64::MAX - 1, Some(u64::MAX - 1)), DiskLevel::Full);
        assert_eq!(level_of(5, Some(0)), DiskLevel::Ok);
    }

    #[test]
    fn transitions_are_reported_once() {
        let id = TenantId::parse("acme").unwrap();
        let disk = TenantDisk::default();
        assert_eq!(
            disk.limit_changed(&id, Some(100)),
            None,
            "nothing sampled yet"
        );
        let t = disk.sampled(&id, 10, 1, Some(100)).unwrap();
        assert!(
            t.first && t.to == DiskLevel::Ok,
            "the first sample is told: {t:?}"
        );
        assert_eq!(disk.sampled(&id, 11, 1, Some(100)), None);
        let t = disk.sampled(&id, 85, 2, Some(100)).unwrap();
        assert_eq!((t.from, t.to), (DiskLevel::Ok, DiskLevel::Warning));
        assert_eq!(
            disk.sampled(&id, 86, 3, Some(100)),
            None,
            "once per transition"
        );
        let t = disk.sampled(&id, 120, 4, Some(100)).unwrap();
        assert_eq!(
            (t.from, t.to, t.bytes),
            (DiskLevel::Warning, DiskLevel::Full, 120)
        );
        assert!(disk.full());
        assert_eq!(
            disk.refusal("acme"),
            "tenant \"acme\" is over its disk quota (0.0 MiB of 0.0 MiB): read-only until \
             it is under again or its plan grows"
        );
        // The plan grows: measured against the new limit at once.
        let t = disk.limit_changed(&id, Some(1000)).unwrap();
        assert_eq!((t.from, t.to), (DiskLevel::Full, DiskLevel::Ok));
        assert!(!disk.full());
        assert_eq!(disk.limit_changed(&id, Some(1000)), None);
        disk.forget();
        assert_eq!((disk.bytes(), disk.level()), (None, DiskLevel::Ok));
    }

    #[test]
    fn sizes_read_as_mib_or_gib() {
        assert_eq!(human_bytes(12 * 1024 * 1024 + 400 * 1024), "12.4 MiB");
        assert_eq!(human_bytes(3 * 1024 * 1024 * 1024 / 2), "1.5 GiB");
        assert_eq!(
            quota_message("acme", 1181116006, 1073741824),
            "tenant \"acme\" is over its disk quota (1.1 GiB of 1.0 GiB): read-only until \
             it is under again or its plan grows"
        );
    }
}
