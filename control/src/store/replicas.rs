//! The fleet's replicas in the store (`replicas`): registering with a slot, the
//! heartbeat, the live list, leaving. Times are the store's (`now()`), so the
//! replicas' clocks never need to agree.

use std::time::{Duration, SystemTime};

use anyhow::Context;
use router::Replica;

use super::connection::Store;
use super::rfc3339::format_micros;

/// What a replica says about itself when it registers.
#[derive(Debug, Clone)]
pub struct ReplicaInfo {
    pub id: String,
    pub instance: i64,
    pub internal_addr: String,
    pub proxy_addrs: Vec<String>,
    pub admin_addr: String,
    pub version: String,
}

/// The fleet is full: every slot is held by a live replica.
#[derive(Debug, thiserror::Error)]
#[error("all 256 fleet slots are held by live replicas")]
pub struct FleetFull;

impl Store {
    /// Registers `me` (or renews its row) and returns its slot: the one it holds, else
    /// the one a live process of the same `[fleet] id` holds (the old process of a
    /// restart: cancel keys its clients take along name that slot), else the lowest one
    /// no live replica holds. Rows of replicas silent for longer than `expire_after` are
    /// deleted first. The table is locked for the transaction, so two replicas
    /// registering at once get different slots.
    pub async fn register_replica(
        &self,
        me: &ReplicaInfo,
        expire_after: Duration,
    ) -> anyhow::Result<u8> {
        let mut client = self.client().await?;
        let tx = client.transaction().await?;
        tx.batch_execute("LOCK TABLE replicas IN EXCLUSIVE MODE")
            .await?;
        tx.execute(
            "DELETE FROM replicas WHERE heartbeat_at < now() - make_interval(secs => $1)",
            &[&expire_after.as_secs_f64()],
        )
        .await?;
        let held = tx
            .query_opt(
                "SELECT slot FROM replicas WHERE instance = $1",
                &[&me.instance],
            )
            .await?;
        let slot: i16 = match held {
            Some(row) => row.get(0),
            None => {
                let same_id = tx
                    .query_opt(
                        "SELECT slot FROM replicas WHERE id = $1 ORDER BY started_at LIMIT 1",
                        &[&me.id],
                    )
                    .await?;
                let slot = match same_id {
                    Some(row) => row.get(0),
                    None => {
                        let taken: Vec<i16> = tx
                            .query("SELECT slot FROM replicas ORDER BY slot", &[])
                            .await?
                            .iter()
                            .map(|r| r.get(0))
                            .collect();
                        (0..=255i16).find(|s| !taken.contains(s)).ok_or(FleetFull)?
                    }
                };
                tx.execute(
                    "INSERT INTO replicas (instance, id, slot, internal_addr, proxy_addrs, \
                     admin_addr, version) VALUES ($1, $2, $3, $4, $5, $6, $7)",
                    &[
                        &me.instance,
                        &me.id,
                        &slot,
                        &me.internal_addr,
                        &me.proxy_addrs,
                        &me.admin_addr,
                        &me.version,
                    ],
                )
                .await?;
                slot
            }
        };
        tx.commit().await.context("registering the replica")?;
        Ok(slot as u8)
    }

    /// Renews `instance`'s row; false if it is gone (expired while this process was
    /// silent, and deleted by another): it must register again.
    pub async fn replica_heartbeat(&self, instance: i64, draining: bool) -> anyhow::Result<bool> {
        let renewed = self
            .client()
            .await?
            .execute(
                "UPDATE replicas SET heartbeat_at = now(), draining = $2 WHERE instance = $1",
                &[&instance, &draining],
            )
            .await
            .context("renewing the replica's heartbeat")?;
        Ok(renewed == 1)
    }

    /// The replicas whose last heartbeat is within `expire_after`, by slot.
    pub async fn live_replicas(&self, expire_after: Duration) -> anyhow::Result<Vec<Replica>> {
        let rows = self
            .client()
            .await?
            .query(
                "SELECT id, instance, slot, internal_addr, proxy_addrs, admin_addr, version, \
                 started_at, (extract(epoch FROM now() - heartbeat_at) * 1000)::float8, draining \
                 FROM replicas WHERE heartbeat_at >= now() - make_interval(secs => $1) \
                 ORDER BY slot",
                &[&expire_after.as_secs_f64()],
            )
            .await
            .context("listing the replicas")?;
        Ok(rows
            .iter()
            .map(|row| Replica {
                id: row.get(0),
                instance: row.get(1),
                slot: row.get::<_, i16>(2) as u8,
                internal_addr: row.get(3),
                proxy_addrs: row.get(4),
                admin_addr: row.get(5),
                version: row.get(6),
                started_at: format_micros(row.get::<_, SystemTime>(7)),
                heartbeat_age_ms: row.get::<_, f64>(8).max(0.0) as u64,
                draining: row.get(9),
            })
            .collect())
    }

    /// Takes `instance` out of the fleet (a clean stop).
    pub async fn deregister_replica(&self, instance: i64) -> anyhow::Result<()> {
        self.client()
            .await?
            .execute("DELETE FROM replicas WHERE instance = $1", &[&instance])
            .await
            .context("leaving the fleet")?;
        Ok(())
    }
}
