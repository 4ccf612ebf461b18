//! The pools' state as the admin API and the backends report it, waiting for the pools
//! to settle at their baseline, and Sluice's RSS.

use std::fmt;
use std::time::{Duration, Instant};

use tokio::task::block_in_place;

use crate::load::Conn;
use crate::run::TenantCtx;
use crate::{Env, SETTLE_DEADLINE, TENANTS};

/// A process's resident set size in KiB.
pub(crate) fn rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find_map(|l| l.strip_prefix("VmRSS:"))?;
    line.trim().trim_end_matches("kB").trim().parse().ok()
}

/// One tenant's pool counts as the admin API reports them, and the `app` sessions its
/// backend reports.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct PoolState {
    clients: u64,
    servers_active: u64,
    servers_idle: u64,
    servers_connecting: u64,
    backend_sessions: usize,
}

impl PoolState {
    pub(crate) fn at_baseline(&self, baseline: usize) -> bool {
        self.clients == 0
            && self.servers_active == 0
            && self.servers_connecting == 0
            && self.servers_idle == baseline as u64
            && self.backend_sessions == baseline
    }
}

impl fmt::Display for PoolState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "servers active {} idle {} connecting {}, clients {}, backend sessions {}",
            self.servers_active,
            self.servers_idle,
            self.servers_connecting,
            self.clients,
            self.backend_sessions
        )
    }
}

/// Every tenant's [`PoolState`] (blocking: HTTP and psql).
fn pool_states(env: &Env) -> Vec<PoolState> {
    let key = Some(env.sluice.admin_key.as_str());
    let pools = testkit::http::get(env.sluice.admin_addr, "/v1/pools", key).json();
    let pools = pools["pools"].as_array().expect("pools").clone();
    let mut states = vec![PoolState::default(); TENANTS.len()];
    for (i, (spec, s)) in TENANTS.iter().zip(&mut states).enumerate() {
        for p in pools.iter().filter(|p| p["tenant"] == spec.id) {
            let n = |group: &str, key: &str| p[group][key].as_u64().unwrap_or(0);
            s.clients += n("clients", "active") + n("clients", "waiting") + n("clients", "idle");
            s.servers_active += n("servers", "active");
            s.servers_idle += n("servers", "idle");
            s.servers_connecting += n("servers", "connecting");
        }
        s.backend_sessions = env.clusters[i].lock().unwrap().sessions_of("app");
    }
    states
}

/// Polls until every tenant is at its baseline or `deadline` passes; the last states.
pub(crate) fn settle(env: &Env, deadline: Instant) -> Vec<PoolState> {
    loop {
        let states = pool_states(env);
        let done = states
            .iter()
            .zip(&TENANTS)
            .all(|(s, spec)| s.at_baseline(spec.baseline));
        if done || Instant::now() >= deadline {
            return states;
        }
        std::thread::sleep(Duration::from_millis(500));
    }
}

/// Makes each pool exist (one login per tenant) and waits for the idle steady state.
pub(crate) async fn prime_pools(env: &Env, tenants: &[TenantCtx]) -> Vec<PoolState> {
    for t in tenants {
        let conn = Conn::open(t, false)
            .await
            .unwrap_or_else(|e| panic!("{}: first login: {e}\n{}", t.id, env.sluice.log()));
        conn.client
            .simple_query("select 1")
            .await
            .expect("select 1");
        conn.close().await;
    }
    block_in_place(|| settle(env, Instant::now() + SETTLE_DEADLINE))
}
