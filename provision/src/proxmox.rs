//! The `proxmox` driver: one unprivileged LXC container per tenant on a Proxmox VE
//! cluster, through its HTTP API with an API token. The path past one machine: Proxmox is
//! the cluster. Operators' guide, with the API calls it makes: docs/drivers.md.
//!
//! A tenant's container is created from an `ostemplate` (a template with PostgreSQL,
//! see docs/drivers.md) on the node with the most free memory, with the plan's cores,
//! memory, swap and root disk, `unprivileged=1`, one NIC with the Proxmox firewall on,
//! and the tag `sluice-tenant.<tenant>` by which every later call finds it again: the API
//! has no idempotency keys, so the tag is the idempotency key. Then the container's
//! firewall is set to drop everything inbound except TCP 5432 from `sluice_hosts`, it
//! is started, and its address is read from its interfaces.
//!
//! Every step is safe to repeat: `create` first looks for the tenant's container
//! (waiting out containers still locked by a creation, whose tags are not written yet),
//! VMID races (`nextid` reserves nothing) pick another id, lock errors are waited out,
//! flock timeouts and the inter-node proxy's 59x answers are retried with backoff, and
//! `destroy` of a container that is gone is success. Creations by one driver are
//! serialised (one storage lock at a time on the Proxmox side).
//!
//! Submodules: [`client`] (HTTPS, token, envelope, errors), `tls` (pinned fingerprint or
//! CA), `tasks` (UPIDs), `container` (the container's life), `firewall`, `handoff` (how
//! the admin password's verifier reaches the container).

pub mod client;
mod container;
mod firewall;
mod handoff;
mod tasks;
mod tls;

use std::collections::HashMap;
use std::net::IpAddr;
use std::time::Duration;

use anyhow::{anyhow, bail, ensure};
use serde::Deserialize;

pub use crate::driver::PlanSize;
use crate::driver::{BackendAddress, BackendRequest, BoxFuture, Driver};
use crate::sql;
use client::Client;

pub use client::PveError;
pub use handoff::MARKER as HANDOFF_MARKER;
pub use tls::PveTls;

/// The PostgreSQL port inside every container (the template's default).
pub const POSTGRES_PORT: u16 = 5432;
/// The superuser the control plane manages a container's PostgreSQL as.
const SUPERUSER: &str = "postgres";

/// `[provisioner.proxmox]`.
#[derive(Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProxmoxConfig {
    /// `https://HOST:8006`.
    pub url: String,
    /// `USER@REALM!TOKENID`.
    pub token_id: String,
    pub token_secret: String,
    /// How the API's certificate is trusted.
    pub tls: PveTls,
    /// Nodes new containers may go to; empty: every online node of `GET /nodes`.
    #[serde(default)]
    pub nodes: Vec<String>,
    /// The template volume, e.g. `local:vztmpl/sluice-pg15.tar.zst`.
    pub ostemplate: String,
    /// Storage for root disks (it must have `rootdir` content).
    pub storage: String,
    /// Bridge of the containers' `net0`; default `vmbr0`.
    #[serde(default)]
    pub bridge: Option<String>,
    /// Addresses or CIDRs allowed to reach PostgreSQL (TCP 5432) in the containers.
    pub sluice_hosts: Vec<String>,
    /// Container sizes by Sluice plan name.
    #[serde(default)]
    pub plans: HashMap<String, PlanSize>,
    /// The size for a tenant without a plan, or whose plan is not in `plans`.
    #[serde(default)]
    pub default_plan: PlanSize,
}

impl std::fmt::Debug for ProxmoxConfig {
    /// Never shows the token secret.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ProxmoxConfig")
            .field("url", &self.url)
            .field("token_id", &self.token_id)
            .field("tls", &self.tls)
            .field("nodes", &self.nodes)
            .field("ostemplate", &self.ostemplate)
            .field("storage", &self.storage)
            .field("bridge", &self.bridge)
            .field("sluice_hosts", &self.sluice_hosts)
            .field("plans", &self.plans)
            .field("default_plan", &self.default_plan)
            .finish_non_exhaustive()
    }
}

/// How often and how long the driver waits. The defaults suit a real cluster; tests
/// against the fake poll faster.
#[derive(Debug, Clone, Copy)]
pub struct Timings {
    /// Between two polls of a task, a status or a lock; the base of retry backoff.
    pub poll: Duration,
    /// How long a task (create, start, destroy, resize) may run.
    pub task: Duration,
    /// How long a container may take to be running with an address, or to lose a lock.
    pub settle: Duration,
}

impl Default for Timings {
    fn default() -> Self {
        Timings {
            poll: Duration::from_secs(1),
            task: Duration::from_secs(600),
            settle: Duration::from_secs(120),
        }
    }
}

/// Tenant backends in Proxmox VE containers; see the module documentation.
#[derive(Debug)]
pub struct ProxmoxDriver {
    config: ProxmoxConfig,
    client: Client,
    timings: Timings,
    /// Held around a creation (the create call and its task): the Proxmox side takes
    /// storage and config locks that concurrent creations time out on.
    creating: tokio::sync::Mutex<()>,
}

impl ProxmoxDriver {
    /// Checks the configuration and builds the API client. Connects to nothing.
    pub fn new(config: ProxmoxConfig) -> anyhow::Result<ProxmoxDriver> {
        let client = Client::new(
            &config.url,
            &config.token_id,
            &config.token_secret,
            &config.tls,
        )?;
        ensure!(
            config
                .ostemplate
                .split_once(':')
                .is_some_and(|(storage, volume)| !storage.is_empty() && !volume.is_empty()),
            "proxmox ostemplate {:?} must be a volume id STORAGE:vztmpl/FILE (a path needs root@pam)",
            config.ostemplate
        );
        ensure!(!config.storage.is_empty(), "proxmox storage is required");
        ensure!(
            !config.sluice_hosts.is_empty(),
            "proxmox sluice_hosts is empty: the containers' firewall would let no Sluice in"
        );
        for host in &config.sluice_hosts {
            ensure!(
                valid_cidr(host),
                "proxmox sluice_hosts entry {host:?} is not an IP address or CIDR"
            );
        }
        for node in &config.nodes {
            ensure!(valid_node(node), "proxmox node name {node:?} is not valid");
        }
        if let Some(bridge) = &config.bridge {
            ensure!(
                !bridge.is_empty() && bridge.chars().all(|c| c.is_ascii_alphanumeric()),
                "proxmox bridge {bridge:?} is not a bridge name"
            );
        }
        config.default_plan.validate("proxmox default_plan")?;
        for (name, plan) in &config.plans {
            plan.validate(&format!("proxmox plans.{name}"))?;
        }
        Ok(ProxmoxDriver {
            config,
            client,
            timings: Timings::default(),
            creating: tokio::sync::Mutex::new(()),
        })
    }

    /// Replaces the default [`Timings`].
    pub fn with_timings(mut self, timings: Timings) -> Self {
        self.timings = timings;
        self
    }

    /// The size of `plan`'s containers.
    pub fn plan_size(&self, plan: Option<&str>) -> PlanSize {
        plan.and_then(|name| self.config.plans.get(name))
            .copied()
            .unwrap_or(self.config.default_plan)
    }

    async fn create_backend(&self, req: &BackendRequest) -> anyhow::Result<BackendAddress> {
        check_tenant(&req.tenant)?;
        ensure!(
            !req.admin_password.is_empty(),
            "the backend's admin password is required"
        );
        let tenant = req.tenant.as_str();
        let size = self.plan_size(req.plan.as_deref());
        // Only the verifier leaves this process (handoff.rs).
        let verifier = sql::scram_verifier(&req.admin_password);
        let ct = self.find_or_create(tenant, &size, &verifier).await?;
        self.wait_unlocked(&ct).await?;
        self.ensure_firewall(&ct).await?;
        self.start(&ct).await?;
        let host = self.address(&ct).await?;
        tracing::info!(tenant, vmid = ct.vmid, node = %ct.node, %host, "proxmox backend ready");
        Ok(BackendAddress {
            host,
            port: POSTGRES_PORT,
            tls: "require".to_owned(),
            tls_ca: None,
            admin_user: SUPERUSER.to_owned(),
            admin_database: SUPERUSER.to_owned(),
        })
    }

    async fn ensure_backend_running(&self, tenant: &str) -> anyhow::Result<()> {
        let ct = self.unlocked_container(tenant).await?;
        self.start(&ct).await
    }

    /// Applies `plan`'s size to the tenant's container: cores, memory and swap at once
    /// (hot-plugged on a running container), the root disk grown when the plan's is
    /// larger. A disk is never shrunk (Proxmox cannot): a smaller plan keeps the disk.
    pub async fn resize(&self, tenant: &str, plan: Option<&str>) -> anyhow::Result<()> {
        check_tenant(tenant)?;
        let ct = self
            .find(tenant)
            .await?
            .ok_or_else(|| anyhow!("tenant {tenant} has no Proxmox container"))?;
        self.apply_size(&ct, &self.plan_size(plan)).await
    }
}

impl Driver for ProxmoxDriver {
    fn name(&self) -> &'static str {
        "proxmox"
    }

    fn create<'a>(
        &'a self,
        req: &'a BackendRequest,
    ) -> BoxFuture<'a, anyhow::Result<BackendAddress>> {
        Box::pin(self.create_backend(req))
    }

    fn ensure_running<'a>(&'a self, tenant: &'a str) -> BoxFuture<'a, anyhow::Result<()>> {
        Box::pin(self.ensure_backend_running(tenant))
    }

    fn destroy<'a>(&'a self, tenant: &'a str) -> BoxFuture<'a, anyhow::Result<()>> {
        Box::pin(async move {
            check_tenant(tenant)?;
            self.destroy_container(tenant).await
        })
    }

    /// Shuts the tenant's container down (`status/shutdown`); `ensure_running` starts
    /// it again.
    fn park<'a>(&'a self, tenant: &'a str) -> BoxFuture<'a, anyhow::Result<()>> {
        Box::pin(async move {
            let ct = self.unlocked_container(tenant).await?;
            self.shut_down(&ct).await
        })
    }

    /// Containers run on Proxmox and outlive Sluice: nothing to stop.
    fn resize<'a>(
        &'a self,
        tenant: &'a str,
        plan: Option<&'a str>,
    ) -> BoxFuture<'a, anyhow::Result<()>> {
        Box::pin(ProxmoxDriver::resize(self, tenant, plan))
    }

    fn shutdown(&self) {}
}

/// The tag that marks a tenant's container (tags are lower case; tenant ids are DNS
/// labels, which hold no `.`, so the tag names one tenant).
pub fn tenant_tag(tenant: &str) -> String {
    format!("sluice-tenant.{tenant}")
}

fn check_tenant(tenant: &str) -> anyhow::Result<()> {
    router::TenantId::parse(tenant)
        .map(drop)
        .map_err(|_| anyhow!("{tenant:?} is not a valid tenant id"))
}

/// A PVE node name: `[a-zA-Z0-9]([a-zA-Z0-9-]*[a-zA-Z0-9])?`.
fn valid_node(node: &str) -> bool {
    !node.is_empty()
        && node.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
        && !node.starts_with('-')
        && !node.ends_with('-')
}

/// An IP address, or one with a `/prefix` in range (not `/0`: Proxmox refuses a zero
/// prefix in an IP set).
fn valid_cidr(text: &str) -> bool {
    let (addr, prefix) = match text.split_once('/') {
        Some((addr, prefix)) => (addr, Some(prefix)),
        None => (text, None),
    };
    let Ok(addr) = addr.parse::<IpAddr>() else {
        return false;
    };
    let max = if addr.is_ipv4() { 32 } else { 128 };
    prefix.is_none_or(|p| p.parse::<u8>().is_ok_and(|p| (1..=max).contains(&p)))
}

/// The retry pause after `attempt` failures: poll × 2^attempt, at most 30 s.
fn backoff(timings: &Timings, attempt: u32) -> Duration {
    timings
        .poll
        .saturating_mul(1 << attempt.min(5))
        .min(Duration::from_secs(30))
}

fn bail_duplicates(tenant: &str, vmids: &[u64]) -> anyhow::Result<()> {
    bail!(
        "tenant {tenant} has several Proxmox containers (VMIDs {vmids:?}, tag {}): an \
         operator must remove the extra ones",
        tenant_tag(tenant)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cidrs_and_nodes() {
        assert!(valid_cidr("10.0.0.5"));
        assert!(valid_cidr("10.0.0.0/24"));
        assert!(valid_cidr("fd00::1/64"));
        assert!(!valid_cidr("10.0.0.0/0"));
        assert!(!valid_cidr("10.0.0.0/33"));
        assert!(!valid_cidr("sluice.example"));
        assert!(valid_node("pve-1"));
        assert!(!valid_node("-pve"));
        assert_eq!(tenant_tag("acme"), "sluice-tenant.acme");
    }
}
