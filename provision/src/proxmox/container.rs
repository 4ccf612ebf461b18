//! A tenant's container through its life: found by tag, created on the node with the
//! most free memory, started, its address read, resized, destroyed with purge.

use std::net::IpAddr;
use std::time::Instant;

use anyhow::{anyhow, bail, Context};
use serde_json::Value;

use super::client::{lenient_u64, segment, text, PveError};
use super::{backoff, bail_duplicates, handoff, tasks, tenant_tag, PlanSize, ProxmoxDriver};
use crate::driver::check_tenant;

/// How many times a step is tried before its error is returned (the job worker then
/// retries the whole job later).
const ATTEMPTS: u32 = 6;
/// The interface the driver gives containers, whose address is the backend's.
const NIC: &str = "eth0";
/// Seconds a parked container's shutdown may take before Proxmox kills it.
const SHUTDOWN_TIMEOUT_S: u32 = 60;

/// A container: its VMID and the node that owns it (every call about it goes there).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Ct {
    pub vmid: u64,
    pub node: String,
}

impl Ct {
    /// `nodes/{node}/lxc/{vmid}` plus `rest`.
    pub fn path(&self, rest: &str) -> String {
        let base = format!("nodes/{}/lxc/{}", segment(&self.node), self.vmid);
        if rest.is_empty() {
            base
        } else {
            format!("{base}/{rest}")
        }
    }
}

impl ProxmoxDriver {
    /// The tenant's container, if there is one. A container still being created (lock
    /// `create`) carries no tags yet, so it might be this tenant's: wait until no such
    /// container is left before answering None.
    pub(super) async fn find(&self, tenant: &str) -> anyhow::Result<Option<Ct>> {
        let tag = tenant_tag(tenant);
        let deadline = Instant::now() + self.timings.settle;
        loop {
            let list = self
                .client
                .get("cluster/resources", &[("type", "vm".to_owned())])
                .await
                .context("listing the Proxmox guests")?;
            let mut mine = Vec::new();
            let mut unknown = Vec::new();
            for entry in list.as_array().map(Vec::as_slice).unwrap_or_default() {
                if text(entry, "type").as_deref() != Some("lxc") {
                    continue;
                }
                let Some(ct) = ct_of(entry) else { continue };
                let tags = text(entry, "tags").unwrap_or_default();
                if split_tags(&tags).any(|t| t.eq_ignore_ascii_case(&tag)) {
                    mine.push(ct);
                } else if tags.is_empty() && text(entry, "lock").as_deref() == Some("create") {
                    unknown.push(ct.vmid);
                }
            }
            match mine.as_slice() {
                [ct] => return Ok(Some(ct.clone())),
                [] if unknown.is_empty() => return Ok(None),
                [] => {}
                many => {
                    let vmids: Vec<u64> = many.iter().map(|ct| ct.vmid).collect();
                    bail_duplicates(tenant, &vmids)?;
                }
            }
            if Instant::now() >= deadline {
                bail!(
                    "containers {unknown:?} are locked by a creation and may be tenant \
                     {tenant}'s; if no creation is running on Proxmox, an operator must \
                     remove the stale lock (`pct unlock VMID` on the node)"
                );
            }
            tokio::time::sleep(self.timings.poll).await;
        }
    }

    /// Finds the tenant's container or creates it, retrying what is worth retrying.
    pub(super) async fn find_or_create(
        &self,
        tenant: &str,
        size: &PlanSize,
        verifier: &str,
    ) -> anyhow::Result<Ct> {
        let mut attempt = 0;
        loop {
            if let Some(ct) = self.find(tenant).await? {
                tracing::info!(tenant, vmid = ct.vmid, node = %ct.node, "found the tenant's proxmox container");
                return Ok(ct);
            }
            match self.create_container(tenant, size, verifier).await {
                Ok(ct) => return Ok(ct),
                // A failed create task removes its container: look again, try again.
                Err(e) if (e.is_transient() || e.is_locked()) && attempt + 1 < ATTEMPTS => {
                    tracing::warn!(tenant, attempt, error = %e, "creating a proxmox container; retrying");
                    tokio::time::sleep(backoff(&self.timings, attempt)).await;
                    attempt += 1;
                }
                Err(e) => {
                    return Err(anyhow::Error::new(e)
                        .context(format!("creating tenant {tenant}'s Proxmox container")))
                }
            }
        }
    }

    /// One creation: a node, a VMID (another one if a racer took it), the create call
    /// and its task.
    async fn create_container(
        &self,
        tenant: &str,
        size: &PlanSize,
        verifier: &str,
    ) -> Result<Ct, PveError> {
        let _one_at_a_time = self.creating.lock().await;
        let node = self.choose_node(tenant, size).await?;
        let bridge = self.config.bridge.as_deref().unwrap_or("vmbr0");
        let mut taken = 0;
        loop {
            let vmid = lenient_u64(Some(&self.client.get("cluster/nextid", &[]).await?))
                .ok_or_else(|| PveError::Transport {
                    method: hyper::Method::GET,
                    path: "cluster/nextid".to_owned(),
                    reason: "the answer is not a number".to_owned(),
                })?;
            let params = [
                ("vmid", vmid.to_string()),
                ("ostemplate", self.config.ostemplate.clone()),
                ("hostname", tenant.to_owned()),
                ("tags", format!("sluice;{}", tenant_tag(tenant))),
                (
                    "description",
                    format!("Sluice tenant {tenant}. Managed by Sluice: do not edit or remove."),
                ),
                ("unprivileged", "1".to_owned()),
                ("cores", size.cores.to_string()),
                ("memory", size.memory_mib.to_string()),
                ("swap", size.swap_mib.to_string()),
                (
                    "rootfs",
                    format!("{}:{}", self.config.storage, size.disk_gib),
                ),
                (
                    "net0",
                    format!("name={NIC},bridge={bridge},firewall=1,ip=dhcp"),
                ),
                ("onboot", "1".to_owned()),
                ("start", "0".to_owned()),
                ("ssh-public-keys", handoff::key_line(verifier)),
            ];
            let path = format!("nodes/{}/lxc", segment(&node));
            match self.client.post(&path, &params).await {
                Ok(data) => {
                    let upid = tasks::upid_of(&data)?;
                    tracing::info!(tenant, vmid, node = %node, %upid, "creating a proxmox container");
                    tasks::wait(&self.client, &upid, self.timings.poll, self.timings.task).await?;
                    return Ok(Ct { vmid, node });
                }
                Err(e) if e.is_already_exists() && taken < ATTEMPTS => {
                    tracing::info!(
                        tenant,
                        vmid,
                        "VMID taken by a concurrent creation; another one"
                    );
                    taken += 1;
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// The online node (among `nodes`, if set) with the most free memory, if that is
    /// enough for `size`.
    async fn choose_node(&self, tenant: &str, size: &PlanSize) -> Result<String, PveError> {
        let list = self.client.get("nodes", &[]).await?;
        let need = size.memory_mib * 1024 * 1024;
        let mut seen = Vec::new();
        let mut best: Option<(u64, String)> = None;
        for entry in list.as_array().map(Vec::as_slice).unwrap_or_default() {
            let Some(node) = text(entry, "node") else {
                continue;
            };
            if !self.config.nodes.is_empty() && !self.config.nodes.contains(&node) {
                continue;
            }
            if text(entry, "status").as_deref() != Some("online") {
                seen.push(format!("{node} offline"));
                continue;
            }
            let (Some(mem), Some(max)) = (
                lenient_u64(entry.get("mem")),
                lenient_u64(entry.get("maxmem")),
            ) else {
                seen.push(format!(
                    "{node} without memory figures (the token needs Sys.Audit)"
                ));
                continue;
            };
            let free = max.saturating_sub(mem);
            seen.push(format!("{node} {} MiB free", free >> 20));
            if free >= need && best.as_ref().is_none_or(|(f, _)| free > *f) {
                best = Some((free, node));
            }
        }
        best.map(|(_, node)| node).ok_or_else(|| PveError::Api {
            method: hyper::Method::GET,
            path: "nodes".to_owned(),
            status: 507,
            message: format!(
                "no Proxmox node can hold tenant {tenant}'s container ({} MiB of memory): {}",
                size.memory_mib,
                if seen.is_empty() {
                    "no node found".to_owned()
                } else {
                    seen.join(", ")
                }
            ),
        })
    }

    /// `GET …/status/current`.
    async fn status(&self, ct: &Ct) -> Result<Value, PveError> {
        self.client.get(&ct.path("status/current"), &[]).await
    }

    /// Waits until the container holds no lock (a creation, backup or migration ends).
    pub(super) async fn wait_unlocked(&self, ct: &Ct) -> anyhow::Result<()> {
        let deadline = Instant::now() + self.timings.settle;
        loop {
            let status = self.status(ct).await?;
            let Some(lock) = text(&status, "lock") else {
                return Ok(());
            };
            if Instant::now() >= deadline {
                bail!(
                    "container {} on {} is still locked ({lock}); a stale lock needs an \
                     operator (`pct unlock {}` on the node)",
                    ct.vmid,
                    ct.node,
                    ct.vmid
                );
            }
            tokio::time::sleep(self.timings.poll).await;
        }
    }

    /// The tenant's container once it holds no lock, for a power change.
    pub(super) async fn unlocked_container(&self, tenant: &str) -> anyhow::Result<Ct> {
        check_tenant(tenant)?;
        let ct = self
            .find(tenant)
            .await?
            .ok_or_else(|| anyhow!("tenant {tenant} has no Proxmox container"))?;
        self.wait_unlocked(&ct).await?;
        Ok(ct)
    }

    /// Starts the container unless it runs, and waits until it does.
    pub(super) async fn start(&self, ct: &Ct) -> anyhow::Result<()> {
        let mut attempt = 0;
        loop {
            if text(&self.status(ct).await?, "status").as_deref() == Some("running") {
                return Ok(());
            }
            let started = match self.client.post(&ct.path("status/start"), &[]).await {
                Ok(data) => {
                    let upid = tasks::upid_of(&data)?;
                    tasks::wait(&self.client, &upid, self.timings.poll, self.timings.task).await
                }
                Err(e) if e.to_string().contains("already running") => Ok(()),
                Err(e) => Err(e),
            };
            match started {
                Ok(()) => break,
                Err(e) if (e.is_transient() || e.is_locked()) && attempt + 1 < ATTEMPTS => {
                    tracing::warn!(vmid = ct.vmid, error = %e, "starting a proxmox container; retrying");
                    tokio::time::sleep(backoff(&self.timings, attempt)).await;
                    attempt += 1;
                }
                Err(e) => {
                    return Err(anyhow::Error::new(e)
                        .context(format!("starting container {} on {}", ct.vmid, ct.node)))
                }
            }
        }
        let deadline = Instant::now() + self.timings.settle;
        while text(&self.status(ct).await?, "status").as_deref() != Some("running") {
            if Instant::now() >= deadline {
                bail!("container {} started but is not running", ct.vmid);
            }
            tokio::time::sleep(self.timings.poll).await;
        }
        Ok(())
    }

    /// Shuts the container down cleanly (its Postgres gets a fast shutdown from the
    /// container's init), killing it after [`SHUTDOWN_TIMEOUT_S`], and waits until it
    /// is stopped. A container that is not running is left so.
    pub(super) async fn shut_down(&self, ct: &Ct) -> anyhow::Result<()> {
        let form = [
            ("timeout", SHUTDOWN_TIMEOUT_S.to_string()),
            ("forceStop", "1".to_owned()),
        ];
        let stopped = match self.client.post(&ct.path("status/shutdown"), &form).await {
            Ok(data) => {
                let upid = tasks::upid_of(&data)?;
                tasks::wait(&self.client, &upid, self.timings.poll, self.timings.task).await
            }
            Err(e) if e.to_string().contains("not running") => Ok(()),
            Err(e) => Err(e),
        };
        stopped.map_err(|e| {
            anyhow::Error::new(e).context(format!(
                "shutting down container {} on {}",
                ct.vmid, ct.node
            ))
        })?;
        let deadline = Instant::now() + self.timings.settle;
        while text(&self.status(ct).await?, "status").as_deref() == Some("running") {
            if Instant::now() >= deadline {
                bail!("container {} was shut down but still runs", ct.vmid);
            }
            tokio::time::sleep(self.timings.poll).await;
        }
        Ok(())
    }

    /// The container's address on `eth0`, once it has one (IPv4 first, else a global
    /// IPv6), from `GET …/interfaces` (null while the container is stopped).
    pub(super) async fn address(&self, ct: &Ct) -> anyhow::Result<String> {
        let deadline = Instant::now() + self.timings.settle;
        loop {
            let interfaces = self.client.get(&ct.path("interfaces"), &[]).await?;
            if let Some(ip) = nic_address(&interfaces) {
                return Ok(ip.to_string());
            }
            if Instant::now() >= deadline {
                bail!(
                    "container {} on {} has no address on {NIC} after {:?}",
                    ct.vmid,
                    ct.node,
                    self.timings.settle
                );
            }
            tokio::time::sleep(self.timings.poll).await;
        }
    }

    /// Cores, memory and swap by config; the root disk grown by resize if smaller.
    pub(super) async fn apply_size(&self, ct: &Ct, size: &PlanSize) -> anyhow::Result<()> {
        let params = [
            ("cores", size.cores.to_string()),
            ("memory", size.memory_mib.to_string()),
            ("swap", size.swap_mib.to_string()),
        ];
        self.retry_locked(ct, "changing the size of", || async {
            self.client.put(&ct.path("config"), &params).await.map(drop)
        })
        .await?;
        let config = self.client.get(&ct.path("config"), &[]).await?;
        let current = text(&config, "rootfs").and_then(|r| rootfs_gib(&r));
        match current {
            Some(gib) if gib >= size.disk_gib => {
                if gib > size.disk_gib {
                    tracing::warn!(
                        vmid = ct.vmid,
                        gib,
                        plan_gib = size.disk_gib,
                        "a root disk cannot shrink; keeping it"
                    );
                }
                Ok(())
            }
            _ => {
                let params = [
                    ("disk", "rootfs".to_owned()),
                    ("size", format!("{}G", size.disk_gib)),
                ];
                self.retry_locked(ct, "growing the disk of", || async {
                    match self.client.put(&ct.path("resize"), &params).await {
                        Ok(data) => {
                            let upid = tasks::upid_of(&data)?;
                            tasks::wait(&self.client, &upid, self.timings.poll, self.timings.task)
                                .await
                        }
                        Err(e) if e.to_string().contains("already at specified size") => Ok(()),
                        Err(e) => Err(e),
                    }
                })
                .await
            }
        }
    }

    /// Stops and removes the tenant's container with purge; Ok when there is none.
    pub(super) async fn destroy_container(&self, tenant: &str) -> anyhow::Result<()> {
        let Some(ct) = self.find(tenant).await? else {
            tracing::info!(tenant, "no proxmox container to remove");
            return Ok(());
        };
        let query = [
            ("purge", "1".to_owned()),
            ("force", "1".to_owned()),
            ("destroy-unreferenced-disks", "1".to_owned()),
        ];
        self.retry_locked(&ct, "removing", || async {
            match self.client.delete(&ct.path(""), &query).await {
                Ok(data) => {
                    let upid = tasks::upid_of(&data)?;
                    tasks::wait(&self.client, &upid, self.timings.poll, self.timings.task).await
                }
                Err(e) if e.is_missing() => Ok(()),
                Err(e) => Err(e),
            }
        })
        .await?;
        tracing::info!(tenant, vmid = ct.vmid, node = %ct.node, "removed the proxmox container");
        Ok(())
    }

    /// Runs `call`, waiting out locks (re-reading the state) and transient errors.
    async fn retry_locked<F, Fut>(&self, ct: &Ct, what: &str, call: F) -> anyhow::Result<()>
    where
        F: Fn() -> Fut,
        Fut: std::future::Future<Output = Result<(), PveError>>,
    {
        let mut attempt = 0;
        loop {
            match call().await {
                Ok(()) => return Ok(()),
                Err(e) if (e.is_locked() || e.is_transient()) && attempt + 1 < ATTEMPTS => {
                    tracing::warn!(vmid = ct.vmid, error = %e, "{what} a proxmox container; retrying");
                    if e.is_locked() {
                        self.wait_unlocked(ct).await?;
                    } else {
                        tokio::time::sleep(backoff(&self.timings, attempt)).await;
                    }
                    attempt += 1;
                }
                Err(e) => {
                    return Err(anyhow::Error::new(e)
                        .context(format!("{what} container {} on {}", ct.vmid, ct.node)))
                }
            }
        }
    }
}

/// A guest entry of `/cluster/resources`: `vmid` (number or string, else from
/// `id` = `lxc/101`) and `node`.
fn ct_of(entry: &Value) -> Option<Ct> {
    let vmid = lenient_u64(entry.get("vmid")).or_else(|| {
        text(entry, "id")?
            .strip_prefix("lxc/")
            .and_then(|n| n.parse().ok())
    })?;
    Some(Ct {
        vmid,
        node: text(entry, "node")?,
    })
}

/// Proxmox stores tags joined with `;` but accepts `,`, `;` and spaces.
fn split_tags(tags: &str) -> impl Iterator<Item = &str> {
    tags.split([';', ',', ' ']).filter(|t| !t.is_empty())
}

/// The address of [`NIC`] in an `interfaces` answer: from `ip-addresses` (PVE ≥ 8.4),
/// else the older `inet`/`inet6` (`addr/prefix`). IPv4 first; no loopback, link-local
/// or unspecified addresses.
fn nic_address(interfaces: &Value) -> Option<IpAddr> {
    let nic = interfaces
        .as_array()?
        .iter()
        .find(|i| text(i, "name").as_deref() == Some(NIC))?;
    let mut found: Vec<IpAddr> = Vec::new();
    if let Some(list) = nic.get("ip-addresses").and_then(Value::as_array) {
        found.extend(
            list.iter()
                .filter_map(|a| text(a, "ip-address")?.parse::<IpAddr>().ok()),
        );
    }
    for key in ["inet", "inet6"] {
        if let Some(cidr) = text(nic, key) {
            found.extend(
                cidr.split('/')
                    .next()
                    .and_then(|a| a.parse::<IpAddr>().ok()),
            );
        }
    }
    let usable = |ip: &IpAddr| match ip {
        IpAddr::V4(v4) => !v4.is_unspecified() && !v4.is_link_local(),
        IpAddr::V6(v6) => {
            !v6.is_unspecified() && !v6.is_loopback() && (v6.segments()[0] & 0xffc0) != 0xfe80
        }
    };
    found
        .iter()
        .find(|ip| ip.is_ipv4() && usable(ip))
        .or_else(|| found.iter().find(|ip| usable(ip)))
        .copied()
}

/// The size of a `rootfs` value (`local-lvm:vm-101-disk-0,size=8G`) in whole GiB.
fn rootfs_gib(rootfs: &str) -> Option<u64> {
    let size = rootfs
        .split(',')
        .find_map(|part| part.strip_prefix("size="))?;
    let (number, unit) = size.split_at(size.find(|c: char| c.is_ascii_alphabetic())?);
    let value: f64 = number.parse().ok()?;
    let gib = match unit {
        "T" => value * 1024.0,
        "G" => value,
        "M" => value / 1024.0,
        "K" => value / (1024.0 * 1024.0),
        _ => return None,
    };
    Some(gib.floor() as u64)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn addresses_come_from_eth0_in_either_format() {
        let new = json!([
            {"name": "lo", "ip-addresses": [{"ip-address": "127.0.0.1", "prefix": 8, "ip-address-type": "inet"}]},
            {"name": "eth0", "hwaddr": "aa", "ip-addresses": [
                {"ip-address": "fe80::1", "prefix": 64, "ip-address-type": "inet6"},
                {"ip-address": "10.0.0.7", "prefix": 24, "ip-address-type": "inet"}]}
        ]);
        assert_eq!(nic_address(&new), Some("10.0.0.7".parse().unwrap()));
        let old =
            json!([{"name": "eth0", "hwaddr": "aa", "inet": "10.0.0.8/24", "inet6": "fe80::2/64"}]);
        assert_eq!(nic_address(&old), Some("10.0.0.8".parse().unwrap()));
        assert_eq!(nic_address(&Value::Null), None);
    }

    #[test]
    fn rootfs_sizes_and_tags() {
        assert_eq!(rootfs_gib("local-lvm:vm-101-disk-0,size=8G"), Some(8));
        assert_eq!(
            rootfs_gib("local:101/vm-101-disk-0.raw,size=1T"),
            Some(1024)
        );
        assert_eq!(rootfs_gib("local-lvm:vm-101-disk-0"), None);
        let tags: Vec<&str> = split_tags("sluice;sluice-tenant.acme").collect();
        assert_eq!(tags, ["sluice", "sluice-tenant.acme"]);
        assert_eq!(
            ct_of(&json!({"id": "lxc/101", "node": "pve1", "vmid": "101"})),
            Some(Ct {
                vmid: 101,
                node: "pve1".into()
            })
        );
    }
}
