//! The rootfs template every tenant's container is copied from: Debian with PostgreSQL,
//! built once with mmdebstrap (unshare mode, no root filesystem tricks on the host),
//! configured for Sluice (unix socket only, SCRAM only, logs in the container), then
//! shifted to the driver's subordinate id range so that a tenant's rootfs is a plain
//! `cp -a` that the unprivileged container can use as it is.
//!
//! Layout of the template directory (`[provisioner.lxc] template`, default
//! `<root>/template`; one directory may serve every Sluice on a machine, as the tests'
//! does): `rootfs/` and `sluice-template.json` (what it was built from; a template whose
//! description differs from the configuration is rebuilt). A build happens in
//! `<template>.new.<pid>/` and appears through one rename, under the flock of
//! `<template>.lock`, so that two processes never build one template twice at once.

use std::collections::HashSet;
use std::io::{BufRead, BufReader};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use anyhow::{anyhow, bail, Context};
use nix::fcntl::{Flock, FlockArg};
use serde::{Deserialize, Serialize};

use super::config::{LxcConfig, ID_COUNT};
use crate::driver::remove_dir_if_exists;

const ROOTFS: &str = "rootfs";
const DESCRIPTION: &str = "sluice-template.json";
/// Bumped whenever what `configure` writes changes, so that old templates are rebuilt.
const FORMAT: u32 = 1;

/// What a template was built from, and what the driver needs to know about it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TemplateInfo {
    pub format: u32,
    pub suite: String,
    pub mirror: String,
    pub subid_base: u32,
    /// PostgreSQL's major version in the template (Debian's paths depend on it).
    pub pg_major: u32,
    /// The `postgres` user's uid and gid inside the container (before the shift).
    pub postgres_uid: u32,
    pub postgres_gid: u32,
}

impl TemplateInfo {
    /// The cluster's data directory inside the container (Debian's layout).
    pub fn data_dir(&self) -> String {
        format!("/var/lib/postgresql/{}/main", self.pg_major)
    }

    pub fn config_dir(&self) -> String {
        format!("/etc/postgresql/{}/main", self.pg_major)
    }

    pub fn postgres_bin(&self) -> String {
        format!("/usr/lib/postgresql/{}/bin/postgres", self.pg_major)
    }

    /// The `postgres` user's ids as the host sees them.
    pub fn host_postgres_ids(&self) -> (u32, u32) {
        (
            self.subid_base + self.postgres_uid,
            self.subid_base + self.postgres_gid,
        )
    }

    fn matches(&self, config: &LxcConfig) -> bool {
        self.format == FORMAT
            && self.suite == config.suite
            && self.mirror == config.mirror
            && self.subid_base == config.subid_base
    }
}

/// The template's rootfs directory.
pub fn rootfs(config: &LxcConfig) -> PathBuf {
    config.template.join(ROOTFS)
}

/// `<template>` with `suffix` appended to its last component.
fn sibling(config: &LxcConfig, suffix: &str) -> PathBuf {
    let mut name = config.template.as_os_str().to_owned();
    name.push(suffix);
    PathBuf::from(name)
}

/// The description of a usable template, if there is one for this configuration.
pub fn current(config: &LxcConfig) -> Option<TemplateInfo> {
    let text = std::fs::read_to_string(config.template.join(DESCRIPTION)).ok()?;
    let info: TemplateInfo = serde_json::from_str(&text).ok()?;
    info.matches(config).then_some(info)
}

/// Returns the template, building it first if there is none for this configuration
/// (≈ 30 s and ≈ 500 MB; needs the Debian mirror). `progress` gets a line per step
/// and mmdebstrap's own progress lines.
pub fn ensure(config: &LxcConfig, progress: &mut dyn FnMut(&str)) -> anyhow::Result<TemplateInfo> {
    if let Some(info) = current(config) {
        return Ok(info);
    }
    if let Some(parent) = config.template.parent() {
        std::fs::create_dir_all(parent)
            .with_context(|| format!("creating {}", parent.display()))?;
    }
    let lock_path = sibling(config, ".lock");
    let _lock = lock_exclusive(&lock_path)?;
    // Another process may have built it while we waited for the lock.
    if let Some(info) = current(config) {
        return Ok(info);
    }
    let problems = super::requirements::missing(config, true);
    if !problems.is_empty() {
        bail!("{}", super::requirements::describe(&problems));
    }
    // A build that died may have left a mmdebstrap running into its own staging
    // directory: ours is another (by pid); stale ones are removed when they can be.
    remove_stale_builds(config);
    let staging = sibling(config, &format!(".new.{}", std::process::id()));
    remove_dir_if_exists(&staging)?;
    std::fs::create_dir_all(&staging).with_context(|| format!("creating {}", staging.display()))?;
    let rootfs = staging.join(ROOTFS);

    progress(&format!(
        "building a {} rootfs with PostgreSQL from {} (mmdebstrap, unshare mode)",
        config.suite, config.mirror
    ));
    debootstrap(config, &rootfs, progress)?;

    progress("configuring PostgreSQL for Sluice (unix socket only, SCRAM only)");
    let mut info = configure(&rootfs)?;
    info.suite = config.suite.clone();
    info.mirror = config.mirror.clone();
    info.subid_base = config.subid_base;

    progress(&format!(
        "shifting owners by {} (the containers' id range)",
        config.subid_base
    ));
    shift_owners(&rootfs, config.subid_base)?;

    let description = serde_json::to_string_pretty(&info).expect("serializes");
    std::fs::write(staging.join(DESCRIPTION), description)
        .context("writing the template's description")?;
    let dir = &config.template;
    remove_dir_if_exists(dir)?;
    std::fs::rename(&staging, dir)
        .with_context(|| format!("renaming {} to {}", staging.display(), dir.display()))?;
    progress(&format!("template ready in {}", dir.display()));
    Ok(info)
}

/// Removes the staging directories of builds that died (their processes are gone: we
/// hold the build lock).
fn remove_stale_builds(config: &LxcConfig) {
    let (Some(parent), Some(name)) = (config.template.parent(), config.template.file_name()) else {
        return;
    };
    let prefix = format!("{}.new.", name.to_string_lossy());
    let Ok(entries) = std::fs::read_dir(parent) else {
        return;
    };
    for entry in entries.flatten() {
        if entry.file_name().to_string_lossy().starts_with(&prefix) {
            if let Err(e) = remove_dir_if_exists(&entry.path()) {
                tracing::warn!(error = %format!("{e:#}"), "removing a stale template build");
            }
        }
    }
}

/// Runs mmdebstrap, passing its progress lines on. Its output is kept in memory only to
/// be quoted when it fails.
fn debootstrap(
    config: &LxcConfig,
    rootfs: &Path,
    progress: &mut dyn FnMut(&str),
) -> anyhow::Result<()> {
    let source = format!("deb {} {} main", config.mirror, config.suite);
    let mut child = Command::new("mmdebstrap")
        .args([
            "--mode=unshare",
            "--variant=minbase",
            "--include=postgresql",
        ])
        .arg(&config.suite)
        .arg(rootfs)
        .arg(&source)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .context("starting mmdebstrap")?;
    let stderr = child.stderr.take().expect("piped");
    let mut tail = std::collections::VecDeque::new();
    for line in BufReader::new(stderr).lines() {
        let line = line.context("reading mmdebstrap's output")?;
        if line.starts_with("I: ") {
            progress(&line);
        }
        if tail.len() == 20 {
            tail.pop_front();
        }
        tail.push_back(line);
    }
    let status = child.wait().context("waiting for mmdebstrap")?;
    if !status.success() {
        let tail: Vec<String> = tail.into();
        bail!(
            "mmdebstrap failed ({status}); its last lines:\n{}",
            tail.join("\n")
        );
    }
    Ok(())
}

/// Configures the template's PostgreSQL (before the shift, while root owns the files)
/// and reads what the driver needs to know of it.
fn configure(rootfs: &Path) -> anyhow::Result<TemplateInfo> {
    let pg_major = installed_major(rootfs)?;
    let (postgres_uid, postgres_gid) = postgres_ids(rootfs)?;
    let info = TemplateInfo {
        format: FORMAT,
        suite: String::new(),
        mirror: String::new(),
        subid_base: 0,
        pg_major,
        postgres_uid,
        postgres_gid,
    };
    let etc = rootfs.join(info.config_dir().trim_start_matches('/'));
    anyhow::ensure!(
        etc.join("postgresql.conf").is_file()
            && rootfs
                .join(info.data_dir().trim_start_matches('/'))
                .is_dir(),
        "the template has no PostgreSQL {pg_major} cluster in Debian's layout ({} and {})",
        info.config_dir(),
        info.data_dir()
    );
    let settings = "\
# Written by Sluice's lxc driver: the container has no network; the server listens on
# its unix socket only (bind-mounted to a host directory only Sluice can reach).
listen_addresses = ''
unix_socket_directories = '/run/postgresql'
unix_socket_permissions = 0700
ssl = off
password_encryption = scram-sha-256
logging_collector = on
log_directory = '/var/log/postgresql'
log_filename = 'postgresql-%a.log'
log_truncate_on_rotation = on
log_rotation_age = 1d
log_rotation_size = 0
";
    std::fs::write(etc.join("conf.d").join("sluice.conf"), settings)
        .context("writing the template's PostgreSQL settings")?;
    // Every login, the control plane's included, with a SCRAM password: a host process
    // that could reach the socket gets no peer-authenticated superuser.
    std::fs::write(
        etc.join("pg_hba.conf"),
        "# Written by Sluice's lxc driver.\nlocal all all scram-sha-256\n",
    )
    .context("writing the template's pg_hba.conf")?;
    Ok(info)
}

/// The one PostgreSQL major version under `/usr/lib/postgresql`.
fn installed_major(rootfs: &Path) -> anyhow::Result<u32> {
    let dir = rootfs.join("usr/lib/postgresql");
    let mut majors: Vec<u32> = std::fs::read_dir(&dir)
        .with_context(|| format!("reading {}", dir.display()))?
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
        .collect();
    majors.sort_unstable();
    majors
        .pop()
        .ok_or_else(|| anyhow!("the template has no PostgreSQL server under /usr/lib/postgresql"))
}

/// The `postgres` user's uid and gid from the template's /etc/passwd.
fn postgres_ids(rootfs: &Path) -> anyhow::Result<(u32, u32)> {
    let passwd = std::fs::read_to_string(rootfs.join("etc/passwd"))
        .context("reading the template's /etc/passwd")?;
    passwd
        .lines()
        .find_map(|line| {
            let mut fields = line.split(':');
            (fields.next()? == "postgres").then_some(())?;
            let uid = fields.nth(1)?.parse().ok()?;
            let gid = fields.next()?.parse().ok()?;
            Some((uid, gid))
        })
        .ok_or_else(|| anyhow!("the template has no postgres user"))
}

/// Adds `base` to the owner and group of everything under `root` (hard-linked files
/// once), keeping setuid/setgid bits, which chown clears. Ids must be below
/// [`ID_COUNT`]: the containers map no others. File capabilities are not kept (the
/// PostgreSQL template has none that matter).
pub fn shift_owners(root: &Path, base: u32) -> anyhow::Result<()> {
    let mut seen = HashSet::new();
    let mut pending = vec![root.to_path_buf()];
    while let Some(path) = pending.pop() {
        let meta = path
            .symlink_metadata()
            .with_context(|| format!("reading {}", path.display()))?;
        if meta.nlink() > 1 && !meta.is_dir() && !seen.insert((meta.dev(), meta.ino())) {
            continue;
        }
        let (uid, gid) = (meta.uid(), meta.gid());
        anyhow::ensure!(
            uid < ID_COUNT && gid < ID_COUNT,
            "{} is owned by {uid}:{gid}, outside the containers' {ID_COUNT} ids",
            path.display()
        );
        std::os::unix::fs::lchown(&path, Some(base + uid), Some(base + gid))
            .with_context(|| format!("changing the owner of {}", path.display()))?;
        let mode = meta.permissions().mode();
        if !meta.file_type().is_symlink() && mode & 0o6000 != 0 {
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode & 0o7777))
                .with_context(|| format!("restoring the mode of {}", path.display()))?;
        }
        if meta.is_dir() {
            for entry in
                std::fs::read_dir(&path).with_context(|| format!("reading {}", path.display()))?
            {
                pending.push(entry?.path());
            }
        }
    }
    Ok(())
}

/// Copies the tree at `from` to `to` (which must not exist) as `cp -a` would for a
/// rootfs: directories, regular files (by the kernel's copy_file_range where it can),
/// symlinks and hard links, with owners and modes (setuid bits included) and
/// modification times of files. Done in this process, so that a Sluice that dies stops
/// copying (a `cp` child would go on writing into a directory a retry is removing).
/// Device nodes, fifos and sockets are refused: a template has none.
pub fn copy_tree(from: &Path, to: &Path) -> anyhow::Result<()> {
    copy(from, to, false)
}

/// [`copy_tree`] into `to`, an existing empty directory (a fresh subvolume), which takes
/// the owner and mode of `from`.
pub fn copy_tree_into(from: &Path, to: &Path) -> anyhow::Result<()> {
    copy(from, to, true)
}

fn copy(from: &Path, to: &Path, into: bool) -> anyhow::Result<()> {
    let mut links: std::collections::HashMap<(u64, u64), PathBuf> = Default::default();
    let mut pending = vec![(from.to_path_buf(), to.to_path_buf())];
    let mut dirs = Vec::new();
    while let Some((src, dst)) = pending.pop() {
        let meta = src
            .symlink_metadata()
            .with_context(|| format!("reading {}", src.display()))?;
        let kind = meta.file_type();
        if kind.is_dir() {
            if !(into && dst == to) {
                std::fs::create_dir(&dst).with_context(|| format!("creating {}", dst.display()))?;
            }
            for entry in
                std::fs::read_dir(&src).with_context(|| format!("reading {}", src.display()))?
            {
                let name = entry?.file_name();
                pending.push((src.join(&name), dst.join(&name)));
            }
            dirs.push((dst, meta));
            continue;
        }
        if kind.is_symlink() {
            let target = std::fs::read_link(&src)?;
            std::os::unix::fs::symlink(&target, &dst)
                .with_context(|| format!("creating {}", dst.display()))?;
        } else if kind.is_file() {
            if meta.nlink() > 1 {
                if let Some(first) = links.get(&(meta.dev(), meta.ino())) {
                    std::fs::hard_link(first, &dst)
                        .with_context(|| format!("linking {}", dst.display()))?;
                    continue;
                }
                links.insert((meta.dev(), meta.ino()), dst.clone());
            }
            std::fs::copy(&src, &dst).with_context(|| format!("copying {}", src.display()))?;
            let file = std::fs::File::options().write(true).open(&dst)?;
            file.set_modified(meta.modified()?)?;
        } else {
            bail!("{} is not a file, directory or symlink", src.display());
        }
        std::os::unix::fs::lchown(&dst, Some(meta.uid()), Some(meta.gid()))
            .with_context(|| format!("changing the owner of {}", dst.display()))?;
        if !kind.is_symlink() {
            std::fs::set_permissions(&dst, std::fs::Permissions::from_mode(meta.mode() & 0o7777))?;
        }
    }
    // Directories last, deepest first: their owners and modes (a read-only directory
    // would have refused its own entries).
    for (dst, meta) in dirs.into_iter().rev() {
        std::os::unix::fs::lchown(&dst, Some(meta.uid()), Some(meta.gid()))
            .with_context(|| format!("changing the owner of {}", dst.display()))?;
        std::fs::set_permissions(&dst, std::fs::Permissions::from_mode(meta.mode() & 0o7777))?;
    }
    Ok(())
}

/// An exclusive flock on the file at `path` (made if missing), held while the result
/// lives: one template build or storage set-up at a time across processes.
pub(super) fn lock_exclusive(path: &Path) -> anyhow::Result<Flock<std::fs::File>> {
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(path)
        .with_context(|| format!("opening {}", path.display()))?;
    Flock::lock(file, FlockArg::LockExclusive)
        .map_err(|(_, e)| anyhow!("locking {}: {e}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shifting_keeps_setuid_bits_and_moves_hard_links_once() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("r");
        std::fs::create_dir(&root).unwrap();
        let file = root.join("suid");
        std::fs::write(&file, "x").unwrap();
        std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o4755)).unwrap();
        std::fs::hard_link(&file, root.join("link")).unwrap();
        std::os::unix::fs::symlink("suid", root.join("sym")).unwrap();
        if !nix::unistd::geteuid().is_root() {
            return; // chown needs root; the end-to-end test runs as root
        }
        shift_owners(&root, 200_000).unwrap();
        let meta = std::fs::metadata(&file).unwrap();
        assert_eq!((meta.uid(), meta.gid()), (200_000, 200_000));
        assert_eq!(meta.permissions().mode() & 0o7777, 0o4755);
        let sym = root.join("sym").symlink_metadata().unwrap();
        assert_eq!(sym.uid(), 200_000);
        // Shifting again moves everything once more, and refuses what would leave the range.
        let err = shift_owners(&root, ID_COUNT).unwrap_err();
        assert!(
            format!("{err:#}").contains("outside the containers'"),
            "{err:#}"
        );
    }

    #[test]
    fn copies_a_tree_with_links_and_modes() {
        let dir = tempfile::tempdir().unwrap();
        let from = dir.path().join("from");
        std::fs::create_dir_all(from.join("sub/deeper")).unwrap();
        std::fs::write(from.join("sub/file"), "data").unwrap();
        std::fs::set_permissions(
            from.join("sub/file"),
            std::fs::Permissions::from_mode(0o4750),
        )
        .unwrap();
        std::fs::hard_link(from.join("sub/file"), from.join("twin")).unwrap();
        std::os::unix::fs::symlink("sub/file", from.join("sym")).unwrap();
        std::fs::set_permissions(
            from.join("sub/deeper"),
            std::fs::Permissions::from_mode(0o500),
        )
        .unwrap();
        let to = dir.path().join("to");
        copy_tree(&from, &to).unwrap();
        assert_eq!(std::fs::read_to_string(to.join("twin")).unwrap(), "data");
        let (a, b) = (
            std::fs::metadata(to.join("sub/file")).unwrap(),
            std::fs::metadata(to.join("twin")).unwrap(),
        );
        assert_eq!(a.ino(), b.ino(), "hard link kept");
        assert_eq!(a.permissions().mode() & 0o7777, 0o4750);
        assert_eq!(
            std::fs::read_link(to.join("sym")).unwrap(),
            Path::new("sub/file")
        );
        let deeper = std::fs::metadata(to.join("sub/deeper")).unwrap();
        assert_eq!(deeper.permissions().mode() & 0o7777, 0o500);
        assert!(copy_tree(&from, &to).is_err(), "the target must not exist");
    }

    #[test]
    fn reads_the_postgres_ids_from_passwd() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("etc")).unwrap();
        std::fs::write(
            dir.path().join("etc/passwd"),
            "root:x:0:0:root:/root:/bin/bash\npostgres:x:100:102:PostgreSQL administrator,,,:/var/lib/postgresql:/bin/bash\n",
        )
        .unwrap();
        assert_eq!(postgres_ids(dir.path()).unwrap(), (100, 102));
    }
}
