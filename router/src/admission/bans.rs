//! Brute-force protection: a client address that fails to log in to a tenant too often
//! in a short time is refused for a while, before it gets another password check.

use std::collections::{HashMap, VecDeque};
use std::net::IpAddr;
use std::time::{Duration, Instant};

use crate::tenant_id::TenantId;

/// How many (tenant, address) pairs [`FailedLogins::new`] tracks at most.
pub const DEFAULT_MAX_KEYS: usize = 100_000;

/// When failed logins turn into a ban.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BanPolicy {
    /// Failures within `window` that trigger a ban; 0 disables banning.
    pub max_failures: u32,
    /// How far back failures count.
    pub window: Duration,
    /// How long a ban lasts; zero also disables banning.
    pub ban: Duration,
}

impl BanPolicy {
    pub const DISABLED: BanPolicy = BanPolicy {
        max_failures: 0,
        window: Duration::ZERO,
        ban: Duration::ZERO,
    };

    pub fn is_enabled(&self) -> bool {
        self.max_failures > 0 && !self.ban.is_zero()
    }
}

/// One active ban, as the admin API shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ban {
    pub ip: IpAddr,
    pub until_remaining: Duration,
    /// Failures that triggered the ban, plus any recorded while it was in force.
    pub failures: u32,
}

/// Failed logins and bans per (tenant, client address).
///
/// Addresses are compared in canonical form, so an IPv4 client seen through a
/// dual-stack socket as `::ffff:a.b.c.d` is the same client as `a.b.c.d`.
///
/// Memory is bounded twice over: each pair keeps at most `max_failures` timestamps, and
/// at most `max_keys` pairs are tracked. When the table is full and a new pair fails,
/// expired state is pruned first; if that is not enough, pairs are evicted, those
/// without an active ban first and, within each group, the least recently active first.
/// We evict rather than refuse to track newcomers because an attacker who filled the
/// table (easy with an IPv6 prefix) would otherwise switch the protection off for
/// every address after it; evicting bans last means filling the table costs the
/// attacker `max_failures` failed logins per slot before anyone's ban is lost.
///
/// Not synchronised: callers wrap it in a `Mutex`. Every method is bounded by the
/// table size, and a full table is trimmed by a sixteenth at a time so the cost of
/// eviction is spread over many insertions.
#[derive(Debug)]
pub struct FailedLogins {
    policy: BanPolicy,
    max_keys: usize,
    entries: HashMap<(TenantId, IpAddr), Entry>,
}

#[derive(Debug)]
struct Entry {
    /// Recent failures, oldest first; never more than `max_failures`. Cleared when a
    /// ban starts, so serving a ban wipes the slate.
    failures: VecDeque<Instant>,
    ban: Option<BanRecord>,
    last_activity: Instant,
}

#[derive(Debug, Clone, Copy)]
struct BanRecord {
    since: Instant,
    /// Fixed when the ban starts: a policy change affects only later bans.
    length: Duration,
    failures: u32,
}

impl BanRecord {
    /// Zero once the ban is over. Kept as start + length rather than an end instant so
    /// that no ban length can overflow `Instant`.
    fn remaining(&self, now: Instant) -> Duration {
        self.length
            .saturating_sub(now.saturating_duration_since(self.since))
    }
}

impl Entry {
    fn active_ban(&self, now: Instant) -> Option<&BanRecord> {
        self.ban.as_ref().filter(|b| !b.remaining(now).is_zero())
    }

    fn forget_stale(&mut self, window: Duration, now: Instant) {
        while let Some(&oldest) = self.failures.front() {
            if now.saturating_duration_since(oldest) < window {
                break;
            }
            self.failures.pop_front();
        }
    }
}

impl FailedLogins {
    /// Tracks up to [`DEFAULT_MAX_KEYS`] pairs.
    pub fn new(policy: BanPolicy) -> Self {
        Self::with_max_keys(policy, DEFAULT_MAX_KEYS)
    }

    /// Tracks up to `max_keys` (tenant, address) pairs; 0 tracks none, which disables
    /// banning.
    pub fn with_max_keys(policy: BanPolicy, max_keys: usize) -> Self {
        FailedLogins {
            policy,
            max_keys,
            entries: HashMap::new(),
        }
    }

    pub fn policy(&self) -> BanPolicy {
        self.policy
    }

    pub fn max_keys(&self) -> usize {
        self.max_keys
    }

    /// Pairs currently tracked (banned or with failures on record).
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Changes the policy live. Bans already in force keep their length; failure counts
    /// are re-judged against the new window and threshold at the next failure.
    /// Disabling the policy lifts every ban and forgets all failures, because an
    /// operator who turns banning off expects nobody to stay banned.
    pub fn set_policy(&mut self, policy: BanPolicy) {
        self.policy = policy;
        if !policy.is_enabled() {
            self.entries.clear();
        }
    }

    /// Records a failed login. Returns `Some(ban)` if this failure started a ban, and
    /// `Some(remaining)` if the pair was already banned (the failure is counted against
    /// the ban but does not extend it); `None` otherwise.
    pub fn record_failure(
        &mut self,
        tenant: &TenantId,
        ip: IpAddr,
        now: Instant,
    ) -> Option<Duration> {
        let policy = self.policy;
        if !policy.is_enabled() || self.max_keys == 0 {
            return None;
        }
        let key = (tenant.clone(), ip.to_canonical());
        if !self.entries.contains_key(&key) {
            self.make_room(now);
        }
        let entry = self.entries.entry(key).or_insert_with(|| Entry {
            failures: VecDeque::new(),
            ban: None,
            last_activity: now,
        });
        entry.last_activity = entry.last_activity.max(now);
        if let Some(ban) = &mut entry.ban {
            let remaining = ban.remaining(now);
            if !remaining.is_zero() {
                ban.failures = ban.failures.saturating_add(1);
                return Some(remaining);
            }
            entry.ban = None;
        }
        entry.forget_stale(policy.window, now);
        entry.failures.push_back(now);
        let max = policy.max_failures as usize;
        while entry.failures.len() > max {
            entry.failures.pop_front();
        }
        if entry.failures.len() < max {
            return None;
        }
        entry.failures.clear();
        entry.ban = Some(BanRecord {
            since: now,
            length: policy.ban,
            failures: policy.max_failures,
        });
        Some(policy.ban)
    }

    /// How much longer the pair is banned, if it is.
    pub fn check(&self, tenant: &TenantId, ip: IpAddr, now: Instant) -> Option<Duration> {
        let entry = self.entries.get(&(tenant.clone(), ip.to_canonical()))?;
        entry.active_ban(now).map(|b| b.remaining(now))
    }

    /// A successful login forgets the pair's failures. It does not lift a ban: a
    /// banned pair should not have reached a password check, and only expiry or
    /// [`clear`](Self::clear) ends a ban.
    pub fn record_success(&mut self, tenant: &TenantId, ip: IpAddr) {
        let key = (tenant.clone(), ip.to_canonical());
        if let Some(entry) = self.entries.get_mut(&key) {
            if entry.ban.is_some() {
                entry.failures.clear();
            } else {
                self.entries.remove(&key);
            }
        }
    }

    /// The tenant's bans in force at `now`, by address.
    pub fn list(&self, tenant: &TenantId, now: Instant) -> Vec<Ban> {
        let mut bans: Vec<Ban> = self
            .entries
            .iter()
            .filter(|((t, _), _)| t == tenant)
            .filter_map(|((_, ip), entry)| {
                let ban = entry.active_ban(now)?;
                Some(Ban {
                    ip: *ip,
                    until_remaining: ban.remaining(now),
                    failures: ban.failures,
                })
            })
            .collect();
        bans.sort_by_key(|b| b.ip);
        bans
    }

    /// Forgets one address of the tenant (`Some`) or all of them (`None`): bans and
    /// failures alike. Returns how many addresses were forgotten.
    pub fn clear(&mut self, tenant: &TenantId, ip: Option<IpAddr>) -> usize {
        match ip {
            Some(ip) => {
                let key = (tenant.clone(), ip.to_canonical());
                usize::from(self.entries.remove(&key).is_some())
            }
            None => {
                let before = self.entries.len();
                self.entries.retain(|(t, _), _| t != tenant);
                before - self.entries.len()
            }
        }
    }

    /// Drops bans that have run out and failures older than the window, and the pairs
    /// left with neither.
    pub fn prune(&mut self, now: Instant) {
        let window = self.policy.window;
        self.entries.retain(|_, entry| {
            entry.forget_stale(window, now);
            if entry.active_ban(now).is_none() {
                entry.ban = None;
            }
            entry.ban.is_some() || !entry.failures.is_empty()
        });
    }

    /// Makes room for one more pair when the table is full.
    fn make_room(&mut self, now: Instant) {
        if self.entries.len() < self.max_keys {
            return;
        }
        self.prune(now);
        if self.entries.len() < self.max_keys {
            return;
        }
        // Trim to a sixteenth below the cap, so the next few newcomers do not each pay
        // for a full scan.
        let keep = self.max_keys - (self.max_keys / 16).max(1);
        let evict = self.entries.len() - keep;
        let mut order: Vec<(bool, Instant, (TenantId, IpAddr))> = self
            .entries
            .iter()
            .map(|(key, e)| (e.active_ban(now).is_some(), e.last_activity, key.clone()))
            .collect();
        order.select_nth_unstable_by_key(evict - 1, |(banned, last, _)| (*banned, *last));
        for (_, _, key) in order.drain(..evict) {
            self.entries.remove(&key);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(s: &str) -> TenantId {
        TenantId::parse(s).unwrap()
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    fn secs(n: u64) -> Duration {
        Duration::from_secs(n)
    }

    fn policy() -> BanPolicy {
        BanPolicy {
            max_failures: 10,
            window: secs(60),
            ban: secs(900),
        }
    }

    #[test]
    fn ten_failures_ban_that_address_for_that_tenant_only() {
        let t0 = Instant::now();
        let mut f = FailedLogins::new(policy());
        let acme = id("acme");
        for i in 0..9 {
            assert_eq!(f.record_failure(&acme, ip("127.0.0.2"), t0 + secs(i)), None);
            assert_eq!(f.check(&acme, ip("127.0.0.2"), t0 + secs(i)), None);
        }
        let now = t0 + secs(9);
        assert_eq!(
            f.record_failure(&acme, ip("127.0.0.2"), now),
            Some(secs(900))
        );
        assert_eq!(f.check(&acme, ip("127.0.0.2"), now), Some(secs(900)));
        // The same client seen through a dual-stack socket is the same client.
        assert_eq!(
            f.check(&acme, ip("::ffff:127.0.0.2"), now + secs(100)),
            Some(secs(800))
        );
        assert_eq!(f.check(&acme, ip("127.0.0.3"), now), None);
        assert_eq!(f.check(&id("globex"), ip("127.0.0.2"), now), None);
        assert_eq!(
            f.list(&acme, now + secs(1)),
            vec![Ban {
                ip: ip("127.0.0.2"),
                until_remaining: secs(899),
                failures: 10
            }]
        );
        assert!(f.list(&id("globex"), now).is_empty());
    }

    #[test]
    fn bans_expire_and_are_not_extended_by_more_failures() {
        let t0 = Instant::now();
        let mut f = FailedLogins::new(policy());
        let acme = id("acme");
        let a = ip("2001:db8::7");
        for _ in 0..10 {
            f.record_failure(&acme, a, t0);
        }
        assert_eq!(f.record_failure(&acme, a, t0 + secs(100)), Some(secs(800)));
        assert_eq!(f.list(&acme, t0 + secs(100))[0].failures, 11);
        assert_eq!(f.check(&acme, a, t0 + secs(899)), Some(secs(1)));
        assert_eq!(f.check(&acme, a, t0 + secs(900)), None);
        assert!(f.list(&acme, t0 + secs(900)).is_empty());
        // Serving the ban wiped the slate: one more failure does not re-ban.
        assert_eq!(f.record_failure(&acme, a, t0 + secs(901)), None);
        f.prune(t0 + secs(901));
        assert_eq!(f.len(), 1);
        f.prune(t0 + secs(901 + 60));
        assert!(f.is_empty());
    }

    #[test]
    fn failures_spread_wider_than_the_window_never_ban() {
        let t0 = Instant::now();
        let mut f = FailedLogins::new(policy());
        let acme = id("acme");
        // One failure every 7s: at most 9 fall inside any 60s window.
        for i in 0..1000 {
            let now = t0 + secs(i * 7);
            assert_eq!(f.record_failure(&acme, ip("10.0.0.1"), now), None);
            assert_eq!(f.check(&acme, ip("10.0.0.1"), now), None);
        }
        assert!(f.entries.values().all(|e| e.failures.len() <= 10));
    }

    #[test]
    fn success_resets_the_count() {
        let t0 = Instant::now();
        let mut f = FailedLogins::new(policy());
        let acme = id("acme");
        for _ in 0..9 {
            f.record_failure(&acme, ip("10.0.0.1"), t0);
        }
        f.record_success(&acme, ip("10.0.0.1"));
        assert!(f.is_empty());
        for _ in 0..9 {
            assert_eq!(f.record_failure(&acme, ip("10.0.0.1"), t0), None);
        }
        assert!(f.record_failure(&acme, ip("10.0.0.1"), t0).is_some());
        // Success does not lift a ban.
        f.record_success(&acme, ip("10.0.0.1"));
        assert!(f.check(&acme, ip("10.0.0.1"), t0).is_some());
    }

    #[test]
    fn clear_one_address_or_all_of_a_tenant() {
        let t0 = Instant::now();
        let mut f = FailedLogins::new(policy());
        let (acme, globex) = (id("acme"), id("globex"));
        for addr in ["10.0.0.1", "10.0.0.2", "10.0.0.3"] {
            for _ in 0..10 {
                f.record_failure(&acme, ip(addr), t0);
                f.record_failure(&globex, ip(addr), t0);
            }
        }
        assert_eq!(f.clear(&acme, Some(ip("10.0.0.2"))), 1);
        assert_eq!(f.clear(&acme, Some(ip("10.0.0.2"))), 0);
        assert_eq!(f.check(&acme, ip("10.0.0.2"), t0), None);
        assert_eq!(f.list(&acme, t0).len(), 2);
        assert_eq!(f.clear(&acme, None), 2);
        assert!(f.list(&acme, t0).is_empty());
        assert_eq!(f.list(&globex, t0).len(), 3);
    }

    #[test]
    fn policy_changes_apply_live() {
        let t0 = Instant::now();
        let mut f = FailedLogins::new(policy());
        let acme = id("acme");
        for _ in 0..10 {
            f.record_failure(&acme, ip("10.0.0.1"), t0);
        }
        for _ in 0..3 {
            f.record_failure(&acme, ip("10.0.0.2"), t0);
        }
        f.set_policy(BanPolicy {
            max_failures: 4,
            ban: secs(10),
            ..policy()
        });
        // The existing ban keeps its length; the stricter threshold applies at once.
        assert_eq!(f.check(&acme, ip("10.0.0.1"), t0), Some(secs(900)));
        assert_eq!(f.record_failure(&acme, ip("10.0.0.2"), t0), Some(secs(10)));
        // Turning banning off lifts every ban.
        f.set_policy(BanPolicy::DISABLED);
        assert_eq!(f.check(&acme, ip("10.0.0.1"), t0), None);
        assert!(f.is_empty());
        for _ in 0..100 {
            assert_eq!(f.record_failure(&acme, ip("10.0.0.1"), t0), None);
        }
        assert!(f.is_empty());
    }

    #[test]
    fn the_key_cap_holds_and_evicts_failures_before_bans() {
        let t0 = Instant::now();
        let cap = 64;
        let mut f = FailedLogins::with_max_keys(policy(), cap);
        let acme = id("acme");
        // Two banned addresses, banned first (least recently active of all).
        for addr in ["192.0.2.1", "192.0.2.2"] {
            for _ in 0..10 {
                f.record_failure(&acme, ip(addr), t0);
            }
        }
        // A spray of single failures from many addresses.
        for i in 0..10_000u32 {
            let addr = IpAddr::from(std::net::Ipv6Addr::from(
                0x2001_0db8_u128 << 96 | u128::from(i),
            ));
            let now = t0 + Duration::from_millis(u64::from(i));
            f.record_failure(&acme, addr, now);
            assert!(f.len() <= cap, "{} > {cap}", f.len());
        }
        let now = t0 + secs(10);
        assert!(f.check(&acme, ip("192.0.2.1"), now).is_some());
        assert!(f.check(&acme, ip("192.0.2.2"), now).is_some());
        // The newest failure is still on record; the oldest unbanned ones are gone.
        let newest = IpAddr::from(std::net::Ipv6Addr::from(0x2001_0db8_u128 << 96 | 9_999));
        assert!(f.entries.contains_key(&(acme.clone(), newest)));
        let oldest = IpAddr::from(std::net::Ipv6Addr::from(0x2001_0db8_u128 << 96));
        assert!(!f.entries.contains_key(&(acme.clone(), oldest)));

        // A table of nothing but bans still takes newcomers, at the oldest ban's cost.
        let mut f = FailedLogins::with_max_keys(policy(), 2);
        for (i, addr) in ["10.0.0.1", "10.0.0.2", "10.0.0.3"].into_iter().enumerate() {
            for _ in 0..10 {
                f.record_failure(&acme, ip(addr), t0 + secs(i as u64));
            }
        }
        assert_eq!(f.len(), 2);
        let now = t0 + secs(3);
        assert_eq!(f.check(&acme, ip("10.0.0.1"), now), None);
        assert!(f.check(&acme, ip("10.0.0.2"), now).is_some());
        assert!(f.check(&acme, ip("10.0.0.3"), now).is_some());

        // No room at all means nothing is tracked.
        let mut f = FailedLogins::with_max_keys(policy(), 0);
        for _ in 0..10 {
            assert_eq!(f.record_failure(&acme, ip("10.0.0.1"), t0), None);
        }
        assert!(f.is_empty());
    }

    #[test]
    fn full_table_prunes_stale_pairs_before_evicting() {
        let t0 = Instant::now();
        let mut f = FailedLogins::with_max_keys(policy(), 3);
        let acme = id("acme");
        for addr in ["10.0.0.1", "10.0.0.2", "10.0.0.3"] {
            f.record_failure(&acme, ip(addr), t0);
        }
        // All three windows have lapsed by now: they go, the fourth fits.
        let later = t0 + secs(61);
        f.record_failure(&acme, ip("10.0.0.4"), later);
        assert_eq!(f.len(), 1);
    }
}
