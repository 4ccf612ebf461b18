//! A token bucket per client address, in bounded memory: what limits a request that
//! carries no tenant (a CancelRequest) by where it comes from.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv6Addr};
use std::time::{Duration, Instant};

use super::bucket::TokenBucket;

/// Most addresses tracked at once, unless told otherwise.
pub const DEFAULT_MAX_ADDRESSES: usize = 10_000;

/// A full table is searched for buckets it may forget at most this often; in between,
/// newcomers share the overflow bucket.
const PRUNE_EVERY: Duration = Duration::from_secs(1);

/// Token buckets keyed by client address: `rate` per second, `burst` at most, each
/// full when first seen.
///
/// An IPv4 address (also seen as `::ffff:a.b.c.d`) is one key; an IPv6 address counts
/// by its /64, the block one host or one customer usually gets, so an attacker cannot
/// get a bucket per address of its prefix. A bucket that has filled up again behaves
/// exactly like a new one, so it is forgotten when room is needed: memory is bounded by
/// `max_addresses`. When the table is full of buckets still in use, newcomers share one
/// overflow bucket with the same rate (rather than none: an attacker who filled the
/// table must not switch the limit off for every other address).
///
/// Not synchronised: callers wrap it in a `Mutex`.
#[derive(Debug)]
pub struct AddressBuckets {
    rate: f64,
    burst: f64,
    max_addresses: usize,
    buckets: HashMap<IpAddr, TokenBucket>,
    overflow: TokenBucket,
    /// When a full table was last searched for buckets to forget.
    pruned: Option<Instant>,
}

impl AddressBuckets {
    pub fn new(rate: f64, burst: f64, max_addresses: usize, now: Instant) -> Self {
        AddressBuckets {
            rate,
            burst,
            max_addresses,
            buckets: HashMap::new(),
            overflow: TokenBucket::new(rate, burst, now),
            pruned: None,
        }
    }

    /// Takes one token of `ip`'s bucket, if it has one at `now`.
    pub fn try_take(&mut self, ip: IpAddr, now: Instant) -> bool {
        let key = key_of(ip);
        if let Some(bucket) = self.buckets.get_mut(&key) {
            return bucket.try_take(now);
        }
        if self.buckets.len() >= self.max_addresses {
            let due = self
                .pruned
                .is_none_or(|at| now.saturating_duration_since(at) >= PRUNE_EVERY);
            if due {
                self.pruned = Some(now);
                self.prune(now);
            }
            if self.buckets.len() >= self.max_addresses {
                return self.overflow.try_take(now);
            }
        }
        let mut bucket = TokenBucket::new(self.rate, self.burst, now);
        let taken = bucket.try_take(now);
        self.buckets.insert(key, bucket);
        taken
    }

    /// Forgets the buckets that are full again at `now`.
    pub fn prune(&mut self, now: Instant) {
        self.buckets
            .retain(|_, bucket| bucket.tokens(now) < bucket.burst() - 1e-9);
    }

    /// Addresses (IPv6: /64 prefixes) tracked now.
    pub fn len(&self) -> usize {
        self.buckets.len()
    }

    pub fn is_empty(&self) -> bool {
        self.buckets.is_empty()
    }
}

/// The key `ip` is counted under: IPv4 in canonical form, IPv6 by its /64.
fn key_of(ip: IpAddr) -> IpAddr {
    match ip.to_canonical() {
        IpAddr::V4(v4) => IpAddr::V4(v4),
        IpAddr::V6(v6) => {
            let prefix = u128::from(v6) & !((1u128 << 64) - 1);
            IpAddr::V6(Ipv6Addr::from(prefix))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn each_address_has_its_own_bucket() {
        let t0 = Instant::now();
        let mut b = AddressBuckets::new(1.0, 2.0, 100, t0);
        assert!(b.try_take(ip("10.0.0.1"), t0));
        assert!(b.try_take(ip("10.0.0.1"), t0));
        assert!(!b.try_take(ip("10.0.0.1"), t0));
        // Seen through a dual-stack socket it is the same client.
        assert!(!b.try_take(ip("::ffff:10.0.0.1"), t0));
        assert!(b.try_take(ip("10.0.0.2"), t0));
        assert!(b.try_take(ip("10.0.0.1"), t0 + Duration::from_secs(1)));
    }

    #[test]
    fn an_ipv6_prefix_shares_one_bucket() {
        let t0 = Instant::now();
        let mut b = AddressBuckets::new(1.0, 1.0, 100, t0);
        assert!(b.try_take(ip("2001:db8:1:2::1"), t0));
        assert!(!b.try_take(ip("2001:db8:1:2:ffff::9"), t0), "same /64");
        assert!(b.try_take(ip("2001:db8:1:3::1"), t0), "another /64");
        assert_eq!(b.len(), 2);
    }

    #[test]
    fn a_full_table_forgets_refilled_buckets_and_else_shares_the_overflow() {
        let t0 = Instant::now();
        let mut b = AddressBuckets::new(1.0, 1.0, 2, t0);
        assert!(b.try_take(ip("10.0.0.1"), t0));
        assert!(b.try_take(ip("10.0.0.2"), t0));
        // Full of buckets in use: newcomers share the overflow bucket.
        assert!(b.try_take(ip("10.0.0.3"), t0));
        assert!(!b.try_take(ip("10.0.0.4"), t0));
        assert_eq!(b.len(), 2);
        // A second later both buckets are full again, so they make room.
        let t1 = t0 + Duration::from_secs(1);
        assert!(b.try_take(ip("10.0.0.5"), t1));
        assert!(!b.try_take(ip("10.0.0.5"), t1));
        assert_eq!(b.len(), 1);
        // Nobody kept more than its own bucket: the earlier ones start afresh.
        assert!(b.try_take(ip("10.0.0.1"), t1));
    }

    proptest! {
        /// However many addresses a /64 uses and however the table fills, the prefix
        /// gets at most `rate × t + burst` tokens of its own bucket plus what the
        /// overflow bucket hands out (itself bounded the same way).
        #[test]
        fn a_prefix_never_beats_two_buckets(
            hosts in proptest::collection::vec(any::<u64>(), 1..500),
            others in proptest::collection::vec(any::<u32>(), 0..500),
            gaps in proptest::collection::vec(0u64..50_000_000, 1000),
            cap in 1usize..20,
        ) {
            let (rate, burst) = (10.0, 20.0);
            let t0 = Instant::now();
            let mut b = AddressBuckets::new(rate, burst, cap, t0);
            let mut at = 0u64;
            let mut taken = 0u64;
            let mut other = others.iter().cycle();
            for (i, host) in hosts.iter().cycle().take(1000).enumerate() {
                at += gaps[i];
                let now = t0 + Duration::from_nanos(at);
                let attacker = IpAddr::V6(Ipv6Addr::from((0x2001_0db8_u128 << 96) | u128::from(*host)));
                if b.try_take(attacker, now) {
                    taken += 1;
                }
                if let Some(v4) = other.next() {
                    b.try_take(IpAddr::V4((*v4).into()), now);
                }
                let bound = 2.0 * (rate * (at as f64 / 1e9) + burst) + 1e-6;
                prop_assert!(taken as f64 <= bound, "{taken} > {bound}");
                prop_assert!(b.len() <= cap);
            }
        }
    }
}
