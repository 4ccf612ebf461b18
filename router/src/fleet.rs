//! A fleet of Sluice processes sharing one control store: who is in it, and each
//! process's share of a tenant's fleet-wide limits.
//!
//! Pool sizes, connection caps and rates are fleet totals. Each live replica that is not
//! draining takes a part of each total by its rank among them (ordered by slot):
//! `total / n`, one more for the first `total % n` ranks, so the parts add up to the
//! total exactly, but never less than one (a replica with nothing could serve no one),
//! which lets a total below the replica count be exceeded up to `n`. docs/fleet.md has
//! the bound while replicas join and leave.

use crate::tenant::{Limits, PoolSettings, Tenant};

/// One process of the fleet, as the control store lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Replica {
    /// `[fleet] id`: the operator's name for the replica, kept across restarts.
    pub id: String,
    /// This process (random at its start), so a restarted replica beside its old
    /// process is another row.
    pub instance: i64,
    /// The tag in the cancel keys it hands out: small, kept by its `[fleet] id` (the
    /// new process of a restart takes its old one's), unique among the live ids.
    pub slot: u8,
    /// Where the other replicas reach it (`[fleet] listen`).
    pub internal_addr: String,
    /// Its proxy and admin listeners.
    pub proxy_addrs: Vec<String>,
    pub admin_addr: String,
    pub version: String,
    /// RFC 3339.
    pub started_at: String,
    /// Milliseconds since its last heartbeat, by the store's clock.
    pub heartbeat_age_ms: u64,
    /// Stopping: it takes no new clients and no share of the budgets.
    pub draining: bool,
}

/// The live replicas, and which of them is this process.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Membership {
    /// Ordered by slot (then instance: the processes of one `[fleet] id` during a
    /// restart share a slot).
    pub replicas: Vec<Replica>,
    /// This process's instance, once registered.
    pub me: Option<i64>,
}

impl Membership {
    pub fn new(mut replicas: Vec<Replica>, me: Option<i64>) -> Self {
        replicas.sort_by_key(|r| (r.slot, r.instance));
        Membership { replicas, me }
    }

    /// This process's row.
    pub fn this(&self) -> Option<&Replica> {
        let me = self.me?;
        self.replicas.iter().find(|r| r.instance == me)
    }

    /// The live replica in `slot` (the first, if a restart has two there).
    pub fn by_slot(&self, slot: u8) -> Option<&Replica> {
        self.in_slot(slot).next()
    }

    /// The live processes in `slot`: one, or during a restart the old and the new
    /// process of the replica.
    pub fn in_slot(&self, slot: u8) -> impl Iterator<Item = &Replica> {
        self.replicas.iter().filter(move |r| r.slot == slot)
    }

    /// The live process `instance`.
    pub fn by_instance(&self, instance: i64) -> Option<&Replica> {
        self.replicas.iter().find(|r| r.instance == instance)
    }

    /// This process's share, or `None` when it cannot tell (not registered, or
    /// draining: it keeps the share it had).
    pub fn share(&self) -> Option<Share> {
        let me = self.this().filter(|r| !r.draining)?;
        let serving = self.replicas.iter().filter(|r| !r.draining);
        let replicas = serving.clone().count() as u32;
        let rank = serving.take_while(|r| r.instance != me.instance).count() as u32;
        Some(Share { replicas, rank })
    }
}

/// A replica's part of fleet-wide totals: rank `rank` of `replicas` serving ones.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Share {
    pub replicas: u32,
    pub rank: u32,
}

impl Default for Share {
    fn default() -> Self {
        Share::WHOLE
    }
}

impl Share {
    /// A process alone: every total is its own.
    pub const WHOLE: Share = Share {
        replicas: 1,
        rank: 0,
    };

    /// This replica's part of `total` (the parts of all ranks add up to `total`); at
    /// least one of a total that is not zero.
    pub fn of(self, total: u64) -> u64 {
        self.exact(total).max(u64::from(total > 0))
    }

    /// This replica's part of `total`, possibly zero (for amounts a replica may do
    /// without: spare connections kept open or in reserve).
    pub fn exact(self, total: u64) -> u64 {
        let n = u64::from(self.replicas.max(1));
        let rank = u64::from(self.rank);
        total / n + u64::from(rank < total % n)
    }

    fn of_usize(self, total: usize) -> usize {
        self.of(total as u64) as usize
    }

    fn of_u32(self, total: u32) -> u32 {
        self.of(u64::from(total)) as u32
    }

    /// `tenant` with its pool and limits cut to this share.
    pub fn of_tenant(self, tenant: &Tenant) -> Tenant {
        let pool = &tenant.pool;
        let limits = &tenant.limits;
        Tenant {
            pool: PoolSettings {
                size: self.of_usize(pool.size),
                min_idle: self.exact(pool.min_idle as u64) as usize,
                reserve: self.exact(pool.reserve as u64) as usize,
                ..pool.clone()
            },
            limits: Limits {
                max_client_connections: limits.max_client_connections.map(|n| self.of_usize(n)),
                max_server_connections: limits.max_server_connections.map(|n| self.of_usize(n)),
                connect_rate: limits.connect_rate.map(|n| self.of_u32(n)),
                query_rate: limits.query_rate.map(|n| self.of_u32(n)),
                client_bytes_rate: limits.client_bytes_rate.map(|n| self.of(n)),
                server_bytes_rate: limits.server_bytes_rate.map(|n| self.of(n)),
                max_concurrent_logins: self.of_usize(limits.max_concurrent_logins),
                ..limits.clone()
            },
            ..tenant.clone()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn replica(slot: u8, instance: i64, draining: bool) -> Replica {
        Replica {
            id: format!("r{slot}"),
            instance,
            slot,
            internal_addr: String::new(),
            proxy_addrs: Vec::new(),
            admin_addr: String::new(),
            version: String::new(),
            started_at: String::new(),
            heartbeat_age_ms: 0,
            draining,
        }
    }

    #[test]
    fn the_parts_add_up_to_the_total() {
        for replicas in 1..=7u32 {
            for total in 0..=40u64 {
                let parts: Vec<u64> = (0..replicas)
                    .map(|rank| Share { replicas, rank }.exact(total))
                    .collect();
                assert_eq!(parts.iter().sum::<u64>(), total, "{total} over {replicas}");
                let (min, max) = (parts.iter().min().unwrap(), parts.iter().max().unwrap());
                assert!(max - min <= 1, "{parts:?}");
                for rank in 0..replicas {
                    let share = Share { replicas, rank };
                    assert_eq!(
                        share.of(total),
                        share.exact(total).max(u64::from(total > 0))
                    );
                }
            }
        }
        assert_eq!(
            Share {
                replicas: 3,
                rank: 2
            }
            .of(6),
            2
        );
        assert_eq!(
            Share {
                replicas: 3,
                rank: 2
            }
            .of(2),
            1,
            "never zero"
        );
    }

    #[test]
    fn draining_replicas_take_no_share_and_keep_theirs() {
        let all = vec![
            replica(4, 40, false),
            replica(0, 10, false),
            replica(2, 20, true),
        ];
        let me = |instance| Membership::new(all.clone(), Some(instance));
        assert_eq!(
            me(10).share(),
            Some(Share {
                replicas: 2,
                rank: 0
            })
        );
        assert_eq!(
            me(40).share(),
            Some(Share {
                replicas: 2,
                rank: 1
            })
        );
        assert_eq!(me(20).share(), None, "draining");
        assert_eq!(me(99).share(), None, "not registered");
        assert_eq!(me(10).by_slot(2).map(|r| r.instance), Some(20));
    }

    #[test]
    fn the_old_and_new_process_of_a_restart_share_a_slot_and_not_a_rank() {
        // r0's new process (instance 5) beside its old one (instance 10), both serving
        // until the old one drains: each has a rank of its own, so the shares still add
        // up to the totals.
        let all = vec![
            replica(0, 10, false),
            replica(1, 30, false),
            replica(0, 5, false),
        ];
        let me = |instance| Membership::new(all.clone(), Some(instance));
        let ranks: Vec<u32> = [5, 10, 30]
            .iter()
            .map(|&i| me(i).share().unwrap().rank)
            .collect();
        assert_eq!(ranks, [0, 1, 2]);
        assert_eq!(me(5).share().unwrap().replicas, 3);
        let in_zero: Vec<i64> = me(5).in_slot(0).map(|r| r.instance).collect();
        assert_eq!(in_zero, [5, 10]);
        assert_eq!(me(5).by_instance(30).map(|r| r.slot), Some(1));
    }
}
