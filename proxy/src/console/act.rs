//! The console's write commands on the data plane of this process: PAUSE, RESUME,
//! RECONNECT, KILL. Who may run them and their audit events are the caller's
//! (console.rs); here they are only carried out.

use router::TenantId;

use super::command::Command;
use super::reply::Refusal;
use crate::state::Proxy;

/// The tenants a command acts on: the one it names (which must be in the catalog), or
/// every tenant in the catalog.
pub fn targets(proxy: &Proxy, named: Option<&str>) -> Result<Vec<TenantId>, Refusal> {
    let catalog = proxy.catalog.snapshot();
    match named {
        Some(name) => catalog
            .get(name)
            .map(|t| vec![t.id.clone()])
            .ok_or_else(|| Refusal::new("42704", format!("tenant \"{name}\" does not exist"))),
        None => Ok(catalog.iter().map(|t| t.id.clone()).collect()),
    }
}

/// Carries out a write command on `tenants`. PAUSE returns once every server
/// connection of them is idle (in session mode: once their clients have left), or as
/// soon as one of them is resumed meanwhile.
pub async fn run(proxy: &Proxy, command: &Command, tenants: &[TenantId]) -> Result<(), Refusal> {
    match command {
        Command::Show(_) => unreachable!("SHOW is not a write command"),
        Command::Pause(_) => {
            for tenant in tenants {
                proxy.pools.pause(tenant);
                tracing::info!(tenant = %tenant, "console: paused");
            }
            for tenant in tenants {
                if !proxy.pools.wait_idle(tenant).await {
                    return Err(Refusal::new(
                        "57014",
                        format!("tenant \"{tenant}\" was resumed before PAUSE finished"),
                    ));
                }
            }
        }
        Command::Resume(_) => {
            for tenant in tenants {
                proxy.pools.resume(tenant);
                tracing::info!(tenant = %tenant, "console: resumed");
            }
        }
        Command::Reconnect(_) => {
            for tenant in tenants {
                let pools = proxy.pools.reconnect(tenant);
                tracing::info!(tenant = %tenant, pools, "console: reconnect");
            }
        }
        Command::Kill(_) => {
            for tenant in tenants {
                let clients = proxy.gates.kill_sessions(tenant);
                proxy.pools.reconnect(tenant);
                tracing::info!(tenant = %tenant, clients, "console: kill");
            }
        }
    }
    Ok(())
}
