//! `[provisioner.lxc]` resolved, and the id range every container maps.

use std::collections::HashMap;
use std::path::PathBuf;

use crate::driver::PlanSize;

/// Ids a container maps (its uid and gid 0 to 65535).
pub const ID_COUNT: u32 = 65536;

/// `[provisioner.lxc]`, resolved.
#[derive(Debug, Clone)]
pub struct LxcConfig {
    /// Where the containers and their sockets live.
    pub root: PathBuf,
    /// The pre-shifted rootfs template (default `<root>/template`).
    pub template: PathBuf,
    /// The first host id the containers' ids map to (root's range in /etc/subuid and
    /// /etc/subgid); 65536 ids from there.
    pub subid_base: u32,
    /// The Debian mirror and suite the template is built from.
    pub mirror: String,
    pub suite: String,
    /// Container sizes by Sluice plan name.
    pub plans: HashMap<String, PlanSize>,
    /// The size for a tenant without a plan, or whose plan is not in `plans`.
    pub default_plan: PlanSize,
    /// What the containers' root filesystems are made of.
    pub storage: Storage,
}

/// `[provisioner.lxc] storage`: where the containers' root filesystems live.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum Storage {
    /// A plain directory per container, a full copy of the template, on whatever
    /// filesystem `<root>/containers` is on; no disk quota.
    #[default]
    Dir,
    /// `<root>/containers` is a btrfs filesystem with quotas enabled: the template is a
    /// read-only subvolume there, each rootfs a snapshot of it with the plan's disk size
    /// as the limit of its qgroup's exclusive bytes (see [`super::storage`]).
    Btrfs(BtrfsSource),
}

/// Which btrfs filesystem `<root>/containers` is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BtrfsSource {
    /// Whatever the operator put there: `<root>/containers` must already be on btrfs.
    Existing,
    /// An image file `<root>/btrfs.img` of this many GiB (sparse), made by the driver
    /// and loop-mounted at `<root>/containers`.
    Image { gib: u64 },
    /// A block device holding a btrfs filesystem, mounted at `<root>/containers`.
    Device(PathBuf),
}

impl LxcConfig {
    pub const DEFAULT_SUBID_BASE: u32 = 200_000;
    pub const DEFAULT_SUITE: &'static str = "bookworm";

    /// The size of `plan`'s containers.
    pub fn plan_size(&self, plan: Option<&str>) -> PlanSize {
        plan.and_then(|name| self.plans.get(name))
            .copied()
            .unwrap_or(self.default_plan)
    }
}
