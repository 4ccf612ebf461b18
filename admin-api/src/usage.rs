//! Usage metering's reader of the data plane: every second it reads the pools'
//! counters (the ones `/metrics` sums: logins, logged-in time, queries, transactions,
//! bytes) and each tenant's peak of open server connections, and adds what moved to
//! the control plane's [`UsageMeter`] under the hour of the reading; a task of its own
//! flushes the meter to the control store every `[usage] flush_interval_s`. At the end
//! (after the proxy drained) a last reading, and a last flush or the spool.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use control::open::Control;
use control::store::{Store, UsageTotals};
use control::usage::UsageMeter;
use pooler::{Pool, PoolCounts, Pools};
use tokio_util::sync::CancellationToken;

use crate::state::State;

/// How often the pools are read: a delta goes to the hour it is read in, so at most
/// this much of an hour's usage lands in the next one.
pub const SAMPLE_PERIOD: Duration = Duration::from_secs(1);

/// How long the last flush at shutdown keeps trying before it spools.
const LAST_FLUSH_PATIENCE: Duration = Duration::from_secs(5);

/// The pools read so far, with their counters as last read. A pool is kept (and read)
/// after it left `Pools` (retired) for as long as anyone else holds it: its clients
/// still count there.
#[derive(Default)]
pub struct PoolReader {
    seen: HashMap<usize, (Arc<Pool>, PoolCounts)>,
}

/// What moved between two readings of a pool.
fn delta(now: &PoolCounts, before: &PoolCounts) -> UsageTotals {
    UsageTotals {
        connection_us: now.client_us.saturating_sub(before.client_us),
        client_connections: now.logins.saturating_sub(before.logins),
        queries: now.queries.saturating_sub(before.queries),
        transactions: now.transactions.saturating_sub(before.transactions),
        bytes_from_clients: now
            .bytes_from_clients
            .saturating_sub(before.bytes_from_clients),
        bytes_to_clients: now.bytes_to_clients.saturating_sub(before.bytes_to_clients),
        ..UsageTotals::default()
    }
}

impl PoolReader {
    /// Reads every pool and each tenant's server peak into `meter`, at `at`.
    pub fn read(&mut self, pools: &Pools, meter: &UsageMeter, at: SystemTime) {
        for pool in pools.all() {
            self.seen
                .entry(Arc::as_ptr(&pool) as usize)
                .or_insert_with(|| (pool.clone(), PoolCounts::default()));
        }
        self.seen.retain(|_, (pool, last)| {
            let now = pool.counts();
            meter.add(pool.key.tenant.as_str(), at, &delta(&now, last));
            *last = now;
            // Only this reader holds it: out of `Pools`, no client left.
            Arc::strong_count(pool) > 1
        });
        for (tenant, peak) in pools.take_server_peaks() {
            meter.peak(tenant.as_str(), at, peak as u64);
        }
    }
}

/// Runs metering until `stop`: the reader every second, the flusher every flush
/// interval, the disk sampler every disk interval; then a last reading and flush.
pub async fn run(state: Arc<State>, stop: CancellationToken) {
    let meter = state.usage.clone();
    meter.load_spool();
    // A connection of its own, so that a flush never waits behind an API request.
    let store: Option<Arc<Store>> = match &state.plane.control {
        Control::Ok { store, .. } => Some(Arc::new(store.another())),
        Control::Unreachable(_) => None,
    };
    let disk = meter.config.disk_interval.map(|interval| {
        // Storage watermarks are measured at each sample, and at once when a limit
        // changes; their changes go to the audit log.
        let (watermarks, changes) =
            control::watermarks::Watermarks::new(state.sources.disk.clone());
        watermarks.follow(&state.sources.catalog);
        tokio::spawn(control::watermarks::write_events(
            state.plane.control.clone(),
            changes,
            stop.clone(),
        ));
        tokio::spawn(control::usage::disk::run(
            meter.clone(),
            state.sources.catalog.clone(),
            watermarks,
            interval,
            stop.clone(),
        ))
    });
    let flusher = store
        .clone()
        .map(|store| tokio::spawn(flush_every(meter.clone(), store, stop.clone())));
    let pools = state.sources.pools.clone();
    let mut reader = PoolReader::default();
    let mut tick = tokio::time::interval(SAMPLE_PERIOD);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = stop.cancelled() => break,
            _ = tick.tick() => reader.read(&pools, &meter, SystemTime::now()),
        }
    }
    if let Some(flusher) = flusher {
        let _ = flusher.await;
    }
    if let Some(disk) = disk {
        let _ = disk.await;
    }
    reader.read(&pools, &meter, SystemTime::now());
    meter
        .flush_or_spool(store.as_deref(), LAST_FLUSH_PATIENCE)
        .await;
}

/// Flushes the meter every `flush_interval` until `stop` (a flush still running then
/// is dropped: the last flush writes the same totals again).
async fn flush_every(meter: Arc<UsageMeter>, store: Arc<Store>, stop: CancellationToken) {
    let mut tick = tokio::time::interval(meter.config.flush_interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tick.tick().await;
    let mut failing = false;
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tick.tick() => {}
        }
        let flushed = tokio::select! {
            _ = stop.cancelled() => return,
            flushed = meter.flush(&store) => flushed,
        };
        match flushed {
            Ok(rows) => {
                if failing {
                    tracing::info!(rows, "usage written to the control store again");
                }
                failing = false;
            }
            Err(e) => {
                if !failing {
                    tracing::warn!(error = %format!("{e:#}"), "writing usage to the control store; kept in memory until it answers");
                }
                failing = true;
            }
        }
    }
}
