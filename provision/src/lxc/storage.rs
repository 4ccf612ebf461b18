//! Where the containers' root filesystems live (`[provisioner.lxc] storage`).
//!
//! - `dir` (the default): `<root>/containers/<tenant>/rootfs` is a full copy of the
//!   template ([`super::template::copy_tree`]) on whatever filesystem the root is on.
//!   Nothing limits its size.
//! - `btrfs`: `<root>/containers` is a btrfs filesystem with quotas enabled: the
//!   operator's (`Existing`), or one the driver makes and mounts there, from an image
//!   file `<root>/btrfs.img` (loop-mounted) or a block device. The template's rootfs is
//!   copied once into the read-only subvolume `containers/.template` (its description
//!   beside it, `.template.json`); each container's rootfs is a snapshot of it (made in
//!   milliseconds, sharing every unchanged block). The snapshot's qgroup limits its
//!   *exclusive* bytes (what the tenant wrote, not what it shares with the template) to
//!   the plan's `disk_gib` less the WAL's part ([`wal_mib`]). The whole rootfs has
//!   copy-on-write off (`chattr +C`, see [`ensure_base`]); the cluster's `pg_wal` is
//!   a subvolume of its own, without copy-on-write (a recycled segment is rewritten in
//!   place) and without a limit, bounded by PostgreSQL's `max_wal_size` instead (see
//!   [`apply_limit`]: a WAL write that fails is a PANIC, a table's an ERROR). A tenant
//!   that fills its disk gets "could not extend file ...: Disk quota exceeded" (or, in
//!   some runs, a PANIC of one of its server's processes first), while every other
//!   tenant writes on. A resize changes the limit at
//!   once; a destroy deletes the subvolumes, and the kernel their qgroups.
//!
//! Everything is done by the `btrfs`, `mkfs.btrfs` and `mount` commands, each failure
//! quoting the command's own error.

use std::os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use anyhow::{anyhow, bail, Context};

use super::config::{BtrfsSource, LxcConfig, Storage};
use super::requirements::is_btrfs;
use super::template::{self, TemplateInfo};
use crate::driver::{remove_dir_if_exists, PlanSize};

/// The base subvolume every rootfs is a snapshot of, under `<root>/containers`.
const BASE: &str = ".template";
/// The inode number of a btrfs subvolume's root directory.
const SUBVOLUME_INO: u64 = 256;

/// `<root>/containers`: LXC's lxcpath, and with `btrfs` the filesystem's mount point.
pub fn containers_dir(config: &LxcConfig) -> PathBuf {
    config.root.join("containers")
}

/// The image file of `btrfs_image_gib`.
pub fn image_path(config: &LxcConfig) -> PathBuf {
    config.root.join("btrfs.img")
}

/// Makes `<root>/containers` ready for containers: with `btrfs`, the filesystem made
/// (an image file) and mounted when it is not yet, quotas enabled, mode 0711. Safe to
/// run again. `progress` gets a line per step taken.
pub fn setup(config: &LxcConfig, progress: &mut dyn FnMut(&str)) -> anyhow::Result<()> {
    let Storage::Btrfs(source) = &config.storage else {
        return Ok(());
    };
    let dir = containers_dir(config);
    if !is_btrfs(&dir)? {
        match source {
            BtrfsSource::Existing => bail!(
                "{} is not on a btrfs filesystem: mount one there, or set [provisioner.lxc] \
                 btrfs_image_gib (an image file the driver makes) or btrfs_device",
                dir.display()
            ),
            BtrfsSource::Image { gib } => {
                let image = image_path(config);
                if !image.exists() {
                    progress(&format!(
                        "making a {gib} GiB btrfs image (sparse) in {}",
                        image.display()
                    ));
                    make_image(&image, *gib)?;
                }
                ensure_empty(&dir)?;
                progress(&format!(
                    "mounting {} at {} (loop)",
                    image.display(),
                    dir.display()
                ));
                run(
                    "mount",
                    &[
                        OsArg::s("-o"),
                        OsArg::s("loop"),
                        (&image).into(),
                        (&dir).into(),
                    ],
                )
                .context("mounting the btrfs image (a free loop device is needed: losetup -f)")?;
            }
            BtrfsSource::Device(device) => {
                ensure_empty(&dir)?;
                progress(&format!(
                    "mounting {} at {}",
                    device.display(),
                    dir.display()
                ));
                run(
                    "mount",
                    &[
                        OsArg::s("-t"),
                        OsArg::s("btrfs"),
                        device.into(),
                        (&dir).into(),
                    ],
                )
                .with_context(|| {
                    format!(
                        "mounting {} (it must hold a btrfs filesystem: mkfs.btrfs {} erases it \
                         and makes one)",
                        device.display(),
                        device.display()
                    )
                })?;
            }
        }
    }
    // A no-op when quotas are on already.
    run(
        "btrfs",
        &[OsArg::s("quota"), OsArg::s("enable"), (&dir).into()],
    )
    .context("enabling btrfs quotas")?;
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o711))
        .with_context(|| format!("setting the mode of {}", dir.display()))?;
    Ok(())
}

/// A sparse image file of `gib` GiB with a btrfs filesystem, mode 0600.
fn make_image(image: &Path, gib: u64) -> anyhow::Result<()> {
    let file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(image)
        .with_context(|| format!("creating {}", image.display()))?;
    let made = file
        .set_len(gib << 30)
        .with_context(|| format!("sizing {}", image.display()))
        .and_then(|()| run("mkfs.btrfs", &[OsArg::s("-q"), image.into()]).map(drop));
    if made.is_err() {
        let _ = std::fs::remove_file(image);
    }
    made
}

/// Refuses to mount over a directory that holds something (containers of the `dir`
/// storage would disappear under the mount).
fn ensure_empty(dir: &Path) -> anyhow::Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let mut entries =
        std::fs::read_dir(dir).with_context(|| format!("reading {}", dir.display()))?;
    if entries.next().is_some() {
        bail!(
            "{} is not empty (containers of the dir storage?): the btrfs filesystem would \
             hide them; destroy those tenants or move them away first",
            dir.display()
        );
    }
    Ok(())
}

/// Makes the rootfs of a new container at `rootfs` (which must not exist) with `size`'s
/// disk limit.
pub fn make_rootfs(
    config: &LxcConfig,
    info: &TemplateInfo,
    rootfs: &Path,
    size: &PlanSize,
) -> anyhow::Result<()> {
    match &config.storage {
        Storage::Dir => template::copy_tree(&template::rootfs(config), rootfs)
            .context("copying the template's rootfs"),
        Storage::Btrfs(_) => {
            let base = ensure_base(config, info, &mut |line| {
                tracing::info!("lxc storage: {line}")
            })?;
            run(
                "btrfs",
                &[
                    OsArg::s("subvolume"),
                    OsArg::s("snapshot"),
                    (&base).into(),
                    rootfs.into(),
                ],
            )
            .context("snapshotting the template's subvolume")?;
            // pg_wal into a subvolume of its own (a snapshot stops at nested
            // subvolumes, so the base has it as a plain directory).
            let wal = wal_dir(rootfs, info);
            let moved = wal.with_file_name("pg_wal.sluice-move");
            std::fs::rename(&wal, &moved)
                .with_context(|| format!("renaming {} to {}", wal.display(), moved.display()))?;
            run(
                "btrfs",
                &[OsArg::s("subvolume"), OsArg::s("create"), (&wal).into()],
            )?;
            // No copy-on-write for the WAL (PostgreSQL checksums it itself): a recycled
            // segment is overwritten in place instead of taking new blocks that its old
            // ones only give back at the next btrfs commit, which could put the WAL over
            // its limit between two commits.
            run("chattr", &[OsArg::s("+C"), (&wal).into()])
                .context("turning copy-on-write off for pg_wal")?;
            template::copy_tree_into(&moved, &wal).context("copying pg_wal into its subvolume")?;
            remove_dir_if_exists(&moved)?;
            apply_limit(config, info, rootfs, size)
        }
    }
}

/// The cluster's WAL directory in a rootfs.
fn wal_dir(rootfs: &Path, info: &TemplateInfo) -> PathBuf {
    rootfs
        .join(info.data_dir().trim_start_matches('/'))
        .join("pg_wal")
}

/// The part of a plan's disk left to its WAL with `btrfs` (a quarter, from 256 MiB to
/// 4 GiB): the rootfs's limit is the rest, and PostgreSQL's `max_wal_size` a quarter of
/// it (`min_wal_size` two segments).
pub fn wal_mib(size: &PlanSize) -> u64 {
    ((size.disk_gib << 10) / 4).clamp(256, 4096)
}

/// Sets the disk limit of the container whose rootfs is `rootfs` to `size`'s, at once
/// (nothing with `dir`): the plan's disk less [`wal_mib`]. The WAL's subvolume has no
/// limit of its own: btrfs counts the blocks of a removed or rewritten segment until its
/// next commit, so a limit there is reached by the WAL's churn, not its size, and a WAL
/// write that fails is a PANIC; `max_wal_size` bounds it instead.
pub fn apply_limit(
    config: &LxcConfig,
    _info: &TemplateInfo,
    rootfs: &Path,
    size: &PlanSize,
) -> anyhow::Result<()> {
    if config.storage == Storage::Dir {
        return Ok(());
    }
    let bytes = data_limit(size).to_string();
    run(
        "btrfs",
        &[
            OsArg::s("qgroup"),
            OsArg::s("limit"),
            OsArg::s("-e"),
            OsArg::s(&bytes),
            rootfs.into(),
        ],
    )
    .with_context(|| format!("setting the disk limit of {}", rootfs.display()))?;
    Ok(())
}

/// Whether `size`'s limit is above the current one of the rootfs (or it has none).
pub fn grows(config: &LxcConfig, rootfs: &Path, size: &PlanSize) -> bool {
    config.storage != Storage::Dir
        && exclusive_bytes(rootfs)
            .ok()
            .and_then(|(_, limit)| limit)
            .is_none_or(|limit| data_limit(size) >= limit)
}

/// The limit of a rootfs's qgroup: the plan's disk less the WAL's part (at least that
/// part again, for a plan smaller than twice it).
pub fn data_limit(size: &PlanSize) -> u64 {
    let wal = wal_mib(size) << 20;
    (size.disk_gib << 30).saturating_sub(wal).max(wal)
}

/// Removes a container's directory (nothing if it does not exist); its rootfs first
/// when that is a subvolume, with the subvolume's qgroup.
pub fn remove_container_dir(config: &LxcConfig, dir: &Path) -> anyhow::Result<()> {
    let rootfs = dir.join("rootfs");
    if config.storage != Storage::Dir && is_subvolume(&rootfs) {
        let mount = containers_dir(config);
        // The WAL's subvolume first: a subvolume holding another cannot be deleted.
        if let Ok(entries) = std::fs::read_dir(rootfs.join("var/lib/postgresql")) {
            for entry in entries.flatten() {
                let wal = entry.path().join("main/pg_wal");
                if is_subvolume(&wal) {
                    delete_subvolume(&mount, &wal)?;
                }
            }
        }
        delete_subvolume(&mount, &rootfs)?;
    }
    remove_dir_if_exists(dir)
}

fn is_subvolume(path: &Path) -> bool {
    path.symlink_metadata()
        .is_ok_and(|meta| meta.is_dir() && meta.ino() == SUBVOLUME_INO)
        && is_btrfs(path).unwrap_or(false)
}

/// Deletes the subvolume at `path` (committed at once, so that the kernel cleans it and
/// drops its qgroup soon), then its qgroup if the kernel left it.
fn delete_subvolume(mount: &Path, path: &Path) -> anyhow::Result<()> {
    let id = run(
        "btrfs",
        &[
            OsArg::s("inspect-internal"),
            OsArg::s("rootid"),
            path.into(),
        ],
    )?
    .trim()
    .to_owned();
    // A snapshot of the read-only base is writable, but a base being replaced is not.
    let _ = run(
        "btrfs",
        &[
            OsArg::s("property"),
            OsArg::s("set"),
            path.into(),
            OsArg::s("ro"),
            OsArg::s("false"),
        ],
    );
    run(
        "btrfs",
        &[
            OsArg::s("subvolume"),
            OsArg::s("delete"),
            OsArg::s("-c"),
            path.into(),
        ],
    )
    .with_context(|| format!("deleting the subvolume {}", path.display()))?;
    // Kernels since 6.8 remove the qgroup of a deleted subvolume once it is cleaned;
    // older ones keep it, and this removes it once the cleaner is done (a qgroup that
    // still counts bytes cannot be destroyed yet: `btrfs qgroup clear-stale` later).
    let qgroup = format!("0/{id}");
    if qgroup_exists(mount, &qgroup) {
        let _ = run(
            "btrfs",
            &[
                OsArg::s("subvolume"),
                OsArg::s("sync"),
                mount.into(),
                OsArg::s(&id),
            ],
        );
        if qgroup_exists(mount, &qgroup) {
            if let Err(e) = run(
                "btrfs",
                &[
                    OsArg::s("qgroup"),
                    OsArg::s("destroy"),
                    OsArg::s(&qgroup),
                    mount.into(),
                ],
            ) {
                tracing::warn!(qgroup, error = %format!("{e:#}"), "removing a deleted container's qgroup");
            }
        }
    }
    Ok(())
}

fn qgroup_exists(mount: &Path, qgroup: &str) -> bool {
    run(
        "btrfs",
        &[OsArg::s("qgroup"), OsArg::s("show"), mount.into()],
    )
    .is_ok_and(|out| {
        out.lines()
            .any(|line| line.split_whitespace().next() == Some(qgroup))
    })
}

/// The exclusive bytes (what it does not share) and limit of the qgroup of the
/// subvolume at `path`, as the last committed transaction counted them.
pub fn exclusive_bytes(path: &Path) -> anyhow::Result<(u64, Option<u64>)> {
    let id = run(
        "btrfs",
        &[
            OsArg::s("inspect-internal"),
            OsArg::s("rootid"),
            path.into(),
        ],
    )?;
    let qgroup = format!("0/{}", id.trim());
    let out = run(
        "btrfs",
        &[
            OsArg::s("qgroup"),
            OsArg::s("show"),
            OsArg::s("--raw"),
            OsArg::s("-e"),
            path.into(),
        ],
    )?;
    // Columns: qgroupid rfer excl max_excl [path].
    let fields: Vec<&str> = out
        .lines()
        .map(|line| line.split_whitespace().collect::<Vec<_>>())
        .find(|f| f.first() == Some(&qgroup.as_str()))
        .ok_or_else(|| anyhow!("btrfs qgroup show lists no {qgroup}"))?;
    let excl = fields
        .get(2)
        .and_then(|v| v.parse().ok())
        .ok_or_else(|| anyhow!("unexpected btrfs qgroup show line: {fields:?}"))?;
    Ok((excl, fields.get(3).and_then(|v| v.parse().ok())))
}

/// The base subvolume for the template `info`: made (a copy of the template's rootfs,
/// then read-only) when missing or made from another template. One made from another
/// template is kept as `.template-old-<secs>`: containers made from it share its
/// blocks, and deleting it would charge each of them with the blocks it alone still
/// shares. Serialised by the flock of `containers/.template.lock`.
pub fn ensure_base(
    config: &LxcConfig,
    info: &TemplateInfo,
    progress: &mut dyn FnMut(&str),
) -> anyhow::Result<PathBuf> {
    let dir = containers_dir(config);
    let base = dir.join(BASE);
    let description_path = dir.join(format!("{BASE}.json"));
    let description = serde_json::to_string_pretty(info).expect("serializes");
    let current = || {
        std::fs::read_to_string(&description_path).is_ok_and(|text| text == description)
            && is_subvolume(&base)
    };
    if current() {
        return Ok(base);
    }
    let lock_path = dir.join(format!("{BASE}.lock"));
    let _lock = template::lock_exclusive(&lock_path)?;
    if current() {
        return Ok(base);
    }
    if base.symlink_metadata().is_ok() {
        let secs = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or_default();
        let old = dir.join(format!("{BASE}-old-{secs}"));
        progress(&format!(
            "keeping the subvolume of the previous template as {}",
            old.display()
        ));
        std::fs::rename(&base, &old)
            .with_context(|| format!("renaming {} to {}", base.display(), old.display()))?;
    }
    let staging = dir.join(format!("{BASE}.new"));
    if is_subvolume(&staging) {
        delete_subvolume(&dir, &staging)?;
    }
    remove_dir_if_exists(&staging)?;
    progress(&format!(
        "copying the template into the btrfs subvolume {}",
        base.display()
    ));
    run(
        "btrfs",
        &[OsArg::s("subvolume"), OsArg::s("create"), (&staging).into()],
    )?;
    // No copy-on-write in the rootfs (every file and directory copied in inherits it):
    // once a block is the tenant's own, PostgreSQL rewrites it in place, as on any
    // other filesystem, so a tenant at its quota can still write back its pages and
    // its pg_control; only new blocks (a table that grows) and blocks still shared with
    // the template take room.
    run("chattr", &[OsArg::s("+C"), (&staging).into()])
        .context("turning copy-on-write off for the template's subvolume")?;
    template::copy_tree_into(&template::rootfs(config), &staging)
        .context("copying the template's rootfs into its subvolume")?;
    run(
        "btrfs",
        &[
            OsArg::s("property"),
            OsArg::s("set"),
            (&staging).into(),
            OsArg::s("ro"),
            OsArg::s("true"),
        ],
    )?;
    std::fs::rename(&staging, &base)
        .with_context(|| format!("renaming {} to {}", staging.display(), base.display()))?;
    std::fs::write(&description_path, description)
        .with_context(|| format!("writing {}", description_path.display()))?;
    Ok(base)
}

/// An argument of [`run`]: a string or a path.
struct OsArg<'a>(&'a std::ffi::OsStr);

impl<'a> OsArg<'a> {
    fn s(s: &'a str) -> Self {
        OsArg(s.as_ref())
    }
}

impl<'a> From<&'a Path> for OsArg<'a> {
    fn from(path: &'a Path) -> Self {
        OsArg(path.as_os_str())
    }
}

impl<'a> From<&'a PathBuf> for OsArg<'a> {
    fn from(path: &'a PathBuf) -> Self {
        OsArg(path.as_os_str())
    }
}

/// Runs `command args...`; its stdout, or an error quoting its stderr.
fn run(command: &str, args: &[OsArg]) -> anyhow::Result<String> {
    let shown = || {
        args.iter()
            .map(|a| a.0.to_string_lossy().into_owned())
            .collect::<Vec<_>>()
            .join(" ")
    };
    let program = super::requirements::find_command(command).ok_or_else(|| {
        anyhow!(
            "{command} is not installed (apt-get install -y {})",
            package(command)
        )
    })?;
    let out = Command::new(program)
        .args(args.iter().map(|a| a.0))
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("running {command}"))?;
    if !out.status.success() {
        bail!(
            "{command} {} failed ({}): {}",
            shown(),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// The Debian package of a command this module runs.
pub fn package(command: &str) -> &'static str {
    match command {
        "btrfs" | "mkfs.btrfs" => "btrfs-progs",
        "mount" | "umount" => "mount",
        "losetup" => "mount",
        "chattr" => "e2fsprogs",
        _ => "util-linux",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_plain_directory_is_not_a_subvolume() {
        let dir = tempfile::tempdir().unwrap();
        assert!(!is_subvolume(dir.path()));
        assert!(!is_subvolume(&dir.path().join("missing")));
    }
}
