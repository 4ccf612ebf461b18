//! What the `lxc` driver needs from the host, checked up front so that a missing piece is
//! named with its fix instead of failing deep inside a job.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use super::config::{BtrfsSource, LxcConfig, Storage, ID_COUNT};

/// One thing the host lacks, and how to fix it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Missing {
    pub what: String,
    pub fix: String,
}

/// Everything missing to run containers (and, with `build`, to build the template).
pub fn missing(config: &LxcConfig, build: bool) -> Vec<Missing> {
    let mut problems = Vec::new();
    if !nix::unistd::geteuid().is_root() {
        problems.push(Missing {
            what: "Sluice is not running as root".into(),
            fix: "run Sluice as root: it starts unprivileged containers mapped to root's \
                  subordinate ids"
                .into(),
        });
    }
    let mut commands = vec![
        ("lxc-start", "lxc"),
        ("lxc-stop", "lxc"),
        ("lxc-info", "lxc"),
        ("lxc-cgroup", "lxc"),
    ];
    if build {
        commands.push(("mmdebstrap", "mmdebstrap"));
        commands.push(("newuidmap", "uidmap"));
    }
    if let Storage::Btrfs(source) = &config.storage {
        commands.push(("btrfs", "btrfs-progs"));
        commands.push(("chattr", "e2fsprogs"));
        match source {
            BtrfsSource::Image { .. } => {
                commands.push(("mkfs.btrfs", "btrfs-progs"));
                commands.push(("mount", "mount"));
                commands.push(("losetup", "mount"));
            }
            BtrfsSource::Device(_) => commands.push(("mount", "mount")),
            BtrfsSource::Existing => {}
        }
    }
    for (command, package) in commands {
        if find_command(command).is_none() {
            problems.push(Missing {
                what: format!("{command} is not installed"),
                fix: format!("apt-get install -y {package}"),
            });
        }
    }
    for file in ["/etc/subuid", "/etc/subgid"] {
        let text = std::fs::read_to_string(file).unwrap_or_default();
        if !grants_root(&text, config.subid_base) {
            problems.push(Missing {
                what: format!(
                    "{file} gives root no subordinate ids {}-{}",
                    config.subid_base,
                    config.subid_base as u64 + ID_COUNT as u64 - 1
                ),
                fix: format!(
                    "echo root:{}:{ID_COUNT} >> {file} (or set [provisioner.lxc] \
                     subid_base to root's range)",
                    config.subid_base
                ),
            });
        }
    }
    let namespaces = std::fs::read_to_string("/proc/sys/user/max_user_namespaces")
        .ok()
        .and_then(|s| s.trim().parse::<u64>().ok());
    if namespaces == Some(0) || !Path::new("/proc/self/ns/user").exists() {
        problems.push(Missing {
            what: "the kernel offers no user namespaces".into(),
            fix: "sysctl -w user.max_user_namespaces=15000 (and a kernel with CONFIG_USER_NS)"
                .into(),
        });
    }
    if let Storage::Btrfs(source) = &config.storage {
        btrfs_missing(config, source, &mut problems);
    }
    for dir in untraversable_ancestors(&config.root) {
        problems.push(Missing {
            what: format!(
                "{} cannot be traversed by the containers' root (uid {})",
                dir, config.subid_base
            ),
            fix: format!(
                "chmod o+x {dir} (others may pass through it, not list it), or set \
                 [provisioner.lxc] path elsewhere"
            ),
        });
    }
    problems
}

/// What btrfs storage needs beyond its commands: the kernel's btrfs, and for an image
/// not mounted yet a free loop device.
fn btrfs_missing(config: &LxcConfig, source: &BtrfsSource, problems: &mut Vec<Missing>) {
    if is_btrfs(&config.root.join("containers")).unwrap_or(false) {
        return;
    }
    let filesystems = std::fs::read_to_string("/proc/filesystems").unwrap_or_default();
    if !filesystems
        .lines()
        .any(|l| l.split_whitespace().last() == Some("btrfs"))
    {
        problems.push(Missing {
            what: "the kernel has no btrfs filesystem".into(),
            fix: "modprobe btrfs (a kernel with CONFIG_BTRFS_FS), or set [provisioner.lxc] \
                  storage = \"dir\""
                .into(),
        });
    }
    if let BtrfsSource::Image { .. } = source {
        let free_loop = find_command("losetup").is_some_and(|losetup| {
            std::process::Command::new(losetup)
                .arg("-f")
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::null())
                .status()
                .is_ok_and(|s| s.success())
        });
        if find_command("losetup").is_some() && !free_loop {
            problems.push(Missing {
                what: "no free loop device for the btrfs image".into(),
                fix: "modprobe loop (or free one: losetup -d /dev/loopN), or set \
                      [provisioner.lxc] btrfs_device to a partition"
                    .into(),
            });
        }
    }
}

/// One message naming every missing piece and its fix.
pub fn describe(problems: &[Missing]) -> String {
    let mut text = String::from("the lxc driver cannot run on this host:");
    for p in problems {
        text.push_str(&format!("\n  - {}: {}", p.what, p.fix));
    }
    text
}

/// Whether a subuid/subgid file gives root (by name or as uid 0) the whole range.
fn grants_root(text: &str, base: u32) -> bool {
    let want = base as u64..base as u64 + ID_COUNT as u64;
    text.lines().any(|line| {
        let mut fields = line.trim().split(':');
        let (Some(user), Some(start), Some(count)) = (fields.next(), fields.next(), fields.next())
        else {
            return false;
        };
        let (Ok(start), Ok(count)) = (start.parse::<u64>(), count.parse::<u64>()) else {
            return false;
        };
        (user == "root" || user == "0") && start <= want.start && start + count >= want.end
    })
}

/// The existing directories on the way to `root` (and `root` itself) that others may not
/// traverse. The container's root is an unprivileged uid on the host and must pass
/// through all of them to reach its rootfs and its socket directory.
fn untraversable_ancestors(root: &Path) -> Vec<String> {
    let absolute = std::path::absolute(root).unwrap_or_else(|_| root.to_path_buf());
    absolute
        .ancestors()
        .filter_map(|dir| {
            let mode = std::fs::metadata(dir).ok()?.permissions().mode();
            (mode & 0o001 == 0).then(|| dir.display().to_string())
        })
        .collect()
}

/// Whether `path` is on a btrfs filesystem.
pub fn is_btrfs(path: &Path) -> anyhow::Result<bool> {
    use anyhow::Context;
    let stat = nix::sys::statfs::statfs(path)
        .with_context(|| format!("reading the filesystem of {}", path.display()))?;
    Ok(stat.filesystem_type() == nix::sys::statfs::BTRFS_SUPER_MAGIC)
}

/// `command` on `PATH` (and the sbin directories, which root's PATH may lack).
pub fn find_command(command: &str) -> Option<std::path::PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/sbin", "/sbin", "/usr/bin"].map(Into::into))
        .map(|dir| dir.join(command))
        .find(|candidate| candidate.is_file())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn root_needs_a_line_covering_the_whole_range() {
        assert!(grants_root("root:200000:65536\n", 200_000));
        assert!(grants_root(
            "alice:100000:65536\nroot:100000:1000000\n",
            200_000
        ));
        assert!(grants_root("0:200000:65536", 200_000));
        assert!(!grants_root("root:200000:1000", 200_000));
        assert!(!grants_root("alice:200000:65536", 200_000));
        assert!(!grants_root("root:x:y\n\n:::", 200_000));
        assert!(!grants_root("", 200_000));
    }

    #[test]
    fn names_directories_others_cannot_pass() {
        let dir = tempfile::tempdir().unwrap();
        let inner = dir.path().join("a/b");
        std::fs::create_dir_all(&inner).unwrap();
        std::fs::set_permissions(dir.path().join("a"), std::fs::Permissions::from_mode(0o700))
            .unwrap();
        let blocked = untraversable_ancestors(&inner);
        assert!(
            blocked.contains(&dir.path().join("a").display().to_string()),
            "{blocked:?}"
        );
    }
}
