//! This process as a replica of a fleet: it registers in the control store, renews its
//! row every heartbeat, reads who else is alive, and publishes that
//! ([`router::Membership`]) to whoever follows it: the catalog's share of each
//! tenant's totals and the proxy's cancel forwarding (src/serve.rs wires them).
//!
//! A replica silent for `expire_after` is dead to the others; the first to notice
//! deletes its row when it next registers. A process that finds its own row gone (it
//! was silent that long itself) registers again, possibly in another slot. While the
//! store cannot be reached, the last membership read stays in force.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use router::Membership;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::open::Control;
use crate::store::{ReplicaInfo, Store};

/// `[fleet]`, as the member needs it.
#[derive(Debug, Clone)]
pub struct FleetConfig {
    pub heartbeat: Duration,
    pub expire_after: Duration,
}

/// This process's membership of the fleet.
#[derive(Debug)]
pub struct FleetMember {
    info: ReplicaInfo,
    config: FleetConfig,
    /// A connection of its own: a busy API call never delays a heartbeat.
    store: Option<Store>,
    draining: AtomicBool,
    membership: watch::Sender<Membership>,
}

impl FleetMember {
    /// Registers `info` (once; [`FleetMember::run`] keeps trying if the store is not
    /// there now) and reads the live replicas.
    pub async fn join(control: &Control, info: ReplicaInfo, config: FleetConfig) -> Arc<Self> {
        let store = control.store().ok().map(Store::another);
        let (membership, _) = watch::channel(Membership::default());
        let member = Arc::new(FleetMember {
            info,
            config,
            store,
            draining: AtomicBool::new(false),
            membership,
        });
        if let Err(e) = member.beat(true).await {
            tracing::error!(error = %format!("{e:#}"), "joining the fleet; retrying every heartbeat");
        }
        member
    }

    /// The membership as last read; `changed()` on the receiver wakes on every change.
    pub fn subscribe(&self) -> watch::Receiver<Membership> {
        self.membership.subscribe()
    }

    pub fn membership(&self) -> Membership {
        self.membership.borrow().clone()
    }

    /// Says this process is stopping: it gives up its share of the budgets (the others
    /// take it at their next heartbeat) and keeps serving the clients it has.
    pub async fn drain(&self) {
        self.draining.store(true, Ordering::Release);
        if let Err(e) = self.beat(false).await {
            tracing::warn!(error = %format!("{e:#}"), "telling the fleet this replica drains");
        }
    }

    /// Heartbeats until `stop`, then leaves the fleet.
    pub async fn run(self: Arc<Self>, stop: CancellationToken) {
        let mut tick = tokio::time::interval(self.config.heartbeat);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = stop.cancelled() => break,
                _ = tick.tick() => {}
            }
            if let Err(e) = self.beat(false).await {
                tracing::warn!(error = %format!("{e:#}"), "fleet heartbeat failed; keeping the last membership");
            }
        }
        if let Some(store) = &self.store {
            match store.deregister_replica(self.info.instance).await {
                Ok(()) => tracing::info!(id = %self.info.id, "left the fleet"),
                Err(e) => {
                    tracing::warn!(error = %format!("{e:#}"), "leaving the fleet; the row expires")
                }
            }
        }
    }

    /// Renews this process's row (registering if it has none, or if `register`), then
    /// reads the live replicas and publishes them if they changed.
    async fn beat(&self, register: bool) -> anyhow::Result<()> {
        let store = self
            .store
            .as_ref()
            .ok_or_else(|| anyhow::anyhow!("the control store was unreachable at start"))?;
        let draining = self.draining.load(Ordering::Acquire);
        let renewed = !register
            && store
                .replica_heartbeat(self.info.instance, draining)
                .await?;
        if !renewed {
            let slot = store
                .register_replica(&self.info, self.config.expire_after)
                .await?;
            if draining {
                store.replica_heartbeat(self.info.instance, true).await?;
            }
            tracing::info!(id = %self.info.id, instance = self.info.instance, slot, "registered in the fleet");
        }
        let live = store.live_replicas(self.config.expire_after).await?;
        let next = Membership::new(live, Some(self.info.instance));
        self.membership.send_if_modified(|current| {
            // Heartbeat ages change every time; only who is there, where and in which
            // state is news.
            let same = current.me == next.me
                && current.replicas.len() == next.replicas.len()
                && current.replicas.iter().zip(&next.replicas).all(|(a, b)| {
                    (a.instance, a.slot, a.draining, &a.internal_addr)
                        == (b.instance, b.slot, b.draining, &b.internal_addr)
                });
            let changed = !same;
            if changed {
                let ids: Vec<&str> = next.replicas.iter().map(|r| r.id.as_str()).collect();
                tracing::info!(replicas = next.replicas.len(), ids = ?ids, "fleet membership changed");
            }
            *current = next;
            changed
        });
        Ok(())
    }
}
