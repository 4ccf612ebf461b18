//! The console's SHOW result sets, read from the process's live state: pools and
//! their counters, the registry of clients and server connections, the catalog.
//! Column names follow PgBouncer's where the meaning is the same (`cl_active`,
//! `sv_idle`, `total_xact_count`, …), with `tenant` added in front.

use pooler::registry::{age_ms, rfc3339_ms};
use router::PoolMode;

use super::command::Show;
use super::reply::{text, Table};
use crate::state::Proxy;

pub fn table(proxy: &Proxy, what: Show) -> Table {
    match what {
        Show::Pools => pools(proxy),
        Show::Stats => stats(proxy),
        Show::Clients => clients(proxy),
        Show::Servers => servers(proxy),
        Show::Tenants => tenants(proxy),
        Show::Help => help(),
        Show::Version => {
            let mut t = Table::new(&["version"]);
            t.row(vec![text(version())]);
            t
        }
    }
}

/// What the console's SHOW VERSION and its `server_version` say.
pub fn version() -> String {
    format!("Sluice {}", env!("CARGO_PKG_VERSION"))
}

fn mode(mode: PoolMode) -> &'static str {
    match mode {
        PoolMode::Session => "session",
        PoolMode::Transaction => "transaction",
    }
}

fn sorted_pools(proxy: &Proxy) -> Vec<std::sync::Arc<pooler::Pool>> {
    let mut pools = proxy.pools.all();
    pools.sort_by(|a, b| {
        let key = |p: &pooler::Pool| {
            (
                p.key.tenant.as_str().to_owned(),
                p.key.database.clone(),
                p.key.role.clone(),
            )
        };
        key(a).cmp(&key(b))
    });
    pools
}

fn pools(proxy: &Proxy) -> Table {
    let mut t = Table::new(&[
        "tenant",
        "database",
        "user",
        "cl_active",
        "cl_idle",
        "cl_waiting",
        "sv_active",
        "sv_idle",
        "sv_login",
        "maxwait_us",
        "pool_mode",
        "paused",
    ]);
    for pool in sorted_pools(proxy) {
        let c = pool.counts();
        // As /v1/pools counts them: server connections handed out are held by clients;
        // the other logged-in clients hold nothing. A session-mode login waiting for
        // its first connection is waiting, not yet a client of the pool.
        let active = c.active.min(c.clients);
        t.row(vec![
            text(&pool.key.tenant),
            text(&pool.key.database),
            text(&pool.key.role),
            text(active),
            text(c.clients.saturating_sub(active + c.waiting)),
            text(c.waiting),
            text(c.active),
            text(c.idle),
            text(c.connecting),
            text(c.wait_us_max),
            text(mode(pool.settings().mode)),
            text(pool.pause.is_paused()),
        ]);
    }
    t
}

fn stats(proxy: &Proxy) -> Table {
    let mut t = Table::new(&[
        "tenant",
        "database",
        "user",
        "total_xact_count",
        "total_query_count",
        "total_received",
        "total_sent",
        "total_wait_count",
        "total_wait_time_us",
        "total_server_opened",
    ]);
    for pool in sorted_pools(proxy) {
        let c = pool.counts();
        t.row(vec![
            text(&pool.key.tenant),
            text(&pool.key.database),
            text(&pool.key.role),
            text(c.transactions),
            text(c.queries),
            text(c.bytes_from_clients),
            text(c.bytes_to_clients),
            text(c.waits),
            text(c.wait_us_total),
            text(c.opened),
        ]);
    }
    t
}

fn clients(proxy: &Proxy) -> Table {
    let mut t = Table::new(&[
        "id",
        "tenant",
        "database",
        "user",
        "state",
        "addr",
        "port",
        "tls",
        "pool_mode",
        "connect_time",
        "state_since",
        "state_ms",
        "server_id",
        "backend_pid",
        "bytes_received",
        "bytes_sent",
    ]);
    for c in proxy.pools.registry.clients(None) {
        t.row(vec![
            text(c.info.id),
            text(&c.info.key.tenant),
            text(&c.info.key.database),
            text(&c.info.key.role),
            text(c.state.as_str()),
            text(c.info.addr.ip()),
            text(c.info.addr.port()),
            text(c.info.tls),
            text(mode(c.info.mode)),
            text(rfc3339_ms(c.connected_at_ms)),
            text(rfc3339_ms(c.state_since_ms)),
            text(age_ms(c.state_since_ms)),
            c.server.map(|s| s.to_string()),
            c.backend_pid.map(|p| p.to_string()),
            text(c.bytes_from_client),
            text(c.bytes_to_client),
        ]);
    }
    t
}

fn servers(proxy: &Proxy) -> Table {
    let mut t = Table::new(&[
        "id",
        "tenant",
        "database",
        "user",
        "state",
        "addr",
        "backend_pid",
        "connect_time",
        "state_since",
        "state_ms",
        "client_id",
    ]);
    for s in proxy.pools.registry.servers(None) {
        t.row(vec![
            text(s.id),
            text(&s.key.tenant),
            text(&s.key.database),
            text(&s.key.role),
            text(s.state.as_str()),
            text(&s.addr),
            s.pid.map(|p| p.to_string()),
            text(rfc3339_ms(s.connected_at_ms)),
            text(rfc3339_ms(s.state_since_ms)),
            text(age_ms(s.state_since_ms)),
            s.client.map(|c| c.to_string()),
        ]);
    }
    t
}

fn tenants(proxy: &Proxy) -> Table {
    let mut t = Table::new(&[
        "tenant",
        "status",
        "paused",
        "pool_mode",
        "pool_size",
        "max_client_connections",
        "clients",
        "pools",
    ]);
    let catalog = proxy.catalog.snapshot();
    let mut tenants: Vec<_> = catalog.iter().collect();
    tenants.sort_by(|a, b| a.id.as_str().cmp(b.id.as_str()));
    let pools = proxy.pools.all();
    for tenant in tenants {
        let clients = proxy.gates.existing(&tenant.id).map_or(0, |g| g.clients());
        let status = if tenant.suspended.is_some() {
            "suspended"
        } else {
            "active"
        };
        t.row(vec![
            text(&tenant.id),
            text(status),
            text(proxy.pools.is_paused(&tenant.id)),
            text(mode(tenant.pool.mode)),
            text(tenant.pool.size),
            tenant.limits.max_client_connections.map(|n| n.to_string()),
            text(clients),
            text(pools.iter().filter(|p| p.key.tenant == tenant.id).count()),
        ]);
    }
    t
}

fn help() -> Table {
    let mut t = Table::new(&["command", "description"]);
    for (command, description) in [
        ("SHOW POOLS", "clients and server connections per pool"),
        (
            "SHOW STATS",
            "totals per pool: transactions, queries, bytes, waits",
        ),
        ("SHOW CLIENTS", "every logged-in client"),
        ("SHOW SERVERS", "every open server connection"),
        ("SHOW TENANTS", "every tenant in the catalog"),
        ("SHOW VERSION", "this Sluice's version"),
        (
            "PAUSE [tenant]",
            "new checkouts wait; returns once its server connections are idle",
        ),
        ("RESUME [tenant]", "waiting checkouts go on"),
        (
            "RECONNECT [tenant]",
            "server connections close as they are released; new ones open",
        ),
        (
            "KILL tenant",
            "disconnect the tenant's clients (57P01) and close its server connections",
        ),
    ] {
        t.row(vec![text(command), text(description)]);
    }
    t
}
