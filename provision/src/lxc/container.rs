//! One tenant's container: its LXC configuration and the `lxc-*` commands that start,
//! stop, inspect and resize it.
//!
//! The container's init is the PostgreSQL server itself (as the container's `postgres`
//! user): no systemd, no getty, nothing else runs. The container stops when the server
//! does, so "the container runs" and "the server runs" are one fact, which is what the
//! health check reads.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use anyhow::{bail, Context};

use super::config::ID_COUNT;
use super::template::TemplateInfo;
use crate::driver::PlanSize;

/// The file names PostgreSQL leaves in its socket directory; a killed container leaves
/// them behind, and a stale lock file stops the next start.
const SOCKET_LEFTOVERS: [&str; 2] = [".s.PGSQL.5432", ".s.PGSQL.5432.lock"];

/// Where one tenant's container lives.
#[derive(Debug, Clone)]
pub struct Container {
    /// `<root>/containers`: LXC's "lxcpath".
    pub lxcpath: PathBuf,
    /// The tenant id, also the container's name.
    pub name: String,
    /// `<root>/sockets/<tenant>`: the server's socket directory, bind-mounted into the
    /// container; the tenant's backend address.
    pub socket_dir: PathBuf,
}

/// What `lxc-info` says of a container.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum State {
    Running,
    Stopped,
    /// STARTING, STOPPING, ABORTING, FREEZING...
    Other(String),
}

impl Container {
    pub fn dir(&self) -> PathBuf {
        self.lxcpath.join(&self.name)
    }

    pub fn rootfs(&self) -> PathBuf {
        self.dir().join("rootfs")
    }

    pub fn config_path(&self) -> PathBuf {
        self.dir().join("config")
    }

    /// The LXC configuration of the container, for rootfs `rootfs` (where the container
    /// will be once its staging directory is renamed) and plan `size`.
    pub fn config_text(&self, info: &TemplateInfo, size: &PlanSize) -> String {
        let base = info.subid_base;
        let (rootfs, sockets, log) = (
            self.rootfs(),
            self.socket_dir.display().to_string(),
            self.dir().join("lxc.log"),
        );
        let mut text = format!(
            "# Written by Sluice's lxc driver; rewritten when the tenant's plan changes.
lxc.include = /usr/share/lxc/config/common.conf
lxc.include = /usr/share/lxc/config/userns.conf
lxc.arch = linux64
lxc.uts.name = {name}
lxc.rootfs.path = dir:{rootfs}
lxc.idmap = u 0 {base} {ID_COUNT}
lxc.idmap = g 0 {base} {ID_COUNT}
lxc.apparmor.profile = unconfined
# No network at all: the server is reached through its unix socket only.
lxc.net.0.type = empty
lxc.mount.entry = tmpfs dev/shm tmpfs rw,nosuid,nodev,mode=1777,create=dir 0 0
lxc.mount.entry = tmpfs run tmpfs rw,nosuid,nodev,mode=755,create=dir 0 0
lxc.mount.entry = {sockets} run/postgresql none bind,create=dir 0 0
# The server is the container's init, as the container's postgres user.
lxc.init.uid = {uid}
lxc.init.gid = {gid}
lxc.init.cmd = {postgres} -D {data} -c config_file={config}/postgresql.conf
# lxc-stop asks for PostgreSQL's fast shutdown; a kill is SIGKILL.
lxc.signal.halt = SIGINT
lxc.signal.stop = SIGKILL
lxc.console.path = none
lxc.log.file = {log}
lxc.log.level = WARN
",
            name = self.name,
            rootfs = rootfs.display(),
            uid = info.postgres_uid,
            gid = info.postgres_gid,
            postgres = info.postgres_bin(),
            data = info.data_dir(),
            config = info.config_dir(),
            log = log.display(),
        );
        for (key, value) in cgroup_limits(size) {
            text.push_str(&format!("{key} = {value}\n"));
        }
        text
    }

    pub fn state(&self) -> anyhow::Result<State> {
        let out = self.lxc("lxc-info", &["-s", "-H"])?;
        Ok(match out.trim() {
            "RUNNING" => State::Running,
            "STOPPED" => State::Stopped,
            other => State::Other(other.to_owned()),
        })
    }

    /// The host pid of the container's init (the postmaster), when it runs.
    pub fn init_pid(&self) -> Option<u32> {
        self.lxc("lxc-info", &["-p", "-H"])
            .ok()?
            .trim()
            .parse()
            .ok()
    }

    /// Starts the container in the background, after removing what a killed server left
    /// in its socket directory. Returns once LXC reports it running.
    pub fn start(&self) -> anyhow::Result<()> {
        for name in SOCKET_LEFTOVERS {
            remove_file_if_exists(&self.socket_dir.join(name))?;
        }
        // Debian's setting of the postmaster's external pid file, in the same directory.
        if let Ok(entries) = std::fs::read_dir(&self.socket_dir) {
            for entry in entries.flatten() {
                if entry.file_name().to_string_lossy().ends_with(".pid") {
                    remove_file_if_exists(&entry.path())?;
                }
            }
        }
        self.lxc("lxc-start", &["-d"]).with_context(|| {
            format!(
                "starting container {} (its log: {})",
                self.name,
                self.dir().join("lxc.log").display()
            )
        })?;
        Ok(())
    }

    /// Stops the container: PostgreSQL's fast shutdown, then a kill after `timeout`.
    pub fn stop(&self, timeout: Duration) -> anyhow::Result<()> {
        if self.state()? == State::Stopped {
            return Ok(());
        }
        let seconds = timeout.as_secs().max(1).to_string();
        self.lxc("lxc-stop", &["-t", &seconds]).map(drop)
    }

    /// Applies `size` to the running container's cgroup at once.
    pub fn apply_limits(&self, size: &PlanSize) -> anyhow::Result<()> {
        let mut limits = cgroup_limits(size);
        // cgroup v1 keeps memory+swap at least memory: a larger plan raises memsw
        // first, a smaller one lowers memory first (the order of `cgroup_limits`).
        let growing = self
            .cgroup("memory.limit_in_bytes")
            .ok()
            .and_then(|v| v.parse::<u64>().ok())
            .is_some_and(|current| current < size.memory_mib << 20);
        if growing {
            limits.sort_by_key(|(key, _)| !key.ends_with("memsw.limit_in_bytes"));
        }
        for (key, value) in limits {
            let key = key
                .strip_prefix("lxc.cgroup2.")
                .or_else(|| key.strip_prefix("lxc.cgroup."))
                .expect("cgroup keys");
            self.lxc("lxc-cgroup", &[key, &value])?;
        }
        Ok(())
    }

    /// A cgroup value of the running container, e.g. `memory.limit_in_bytes`.
    pub fn cgroup(&self, key: &str) -> anyhow::Result<String> {
        Ok(self.lxc("lxc-cgroup", &[key])?.trim().to_owned())
    }

    /// Runs `command -n NAME -P LXCPATH args...`; its stdout, or an error quoting stderr.
    fn lxc(&self, command: &str, args: &[&str]) -> anyhow::Result<String> {
        let out = Command::new(command)
            .arg("-n")
            .arg(&self.name)
            .arg("-P")
            .arg(&self.lxcpath)
            .args(args)
            .stdin(Stdio::null())
            .output()
            .with_context(|| format!("running {command}"))?;
        if !out.status.success() {
            bail!(
                "{command} {} failed ({}): {}",
                args.join(" "),
                out.status,
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }
}

/// PostgreSQL settings that follow the plan (read at the server's next start).
pub fn plan_settings(size: &PlanSize) -> String {
    let shared_buffers = (size.memory_mib / 4).clamp(16, 8192);
    format!("# Written by Sluice's lxc driver from the tenant's plan.\nshared_buffers = '{shared_buffers}MB'\n")
}

/// The cgroup settings of a plan, for the cgroup version the host runs: memory (and
/// memory plus swap where the kernel accounts swap), CPU bandwidth (cores × 100 ms per
/// 100 ms), CPU weight in proportion to cores, and a cap on processes (room for
/// PostgreSQL's default 100 connections and its workers; a fork bomb stops there).
fn cgroup_limits(size: &PlanSize) -> Vec<(&'static str, String)> {
    let memory = size.memory_mib << 20;
    let swap = size.swap_mib << 20;
    let quota = u64::from(size.cores) * 100_000;
    if Path::new("/sys/fs/cgroup/cgroup.controllers").exists() {
        vec![
            ("lxc.cgroup2.memory.max", memory.to_string()),
            ("lxc.cgroup2.memory.swap.max", swap.to_string()),
            ("lxc.cgroup2.cpu.max", format!("{quota} 100000")),
            (
                "lxc.cgroup2.cpu.weight",
                (100 * u64::from(size.cores)).min(10_000).to_string(),
            ),
            ("lxc.cgroup2.pids.max", "512".into()),
        ]
    } else {
        let mut limits = vec![("lxc.cgroup.memory.limit_in_bytes", memory.to_string())];
        if Path::new("/sys/fs/cgroup/memory/memory.memsw.limit_in_bytes").exists() {
            limits.push((
                "lxc.cgroup.memory.memsw.limit_in_bytes",
                (memory + swap).to_string(),
            ));
        }
        limits.extend([
            ("lxc.cgroup.cpu.cfs_period_us", "100000".into()),
            ("lxc.cgroup.cpu.cfs_quota_us", quota.to_string()),
            (
                "lxc.cgroup.cpu.shares",
                (1024 * u64::from(size.cores)).to_string(),
            ),
            ("lxc.cgroup.pids.max", "512".into()),
        ]);
        limits
    }
}

/// Sets `role`'s password to a SCRAM `verifier` in a stopped container's cluster, with
/// a single-user server run in a user namespace with the container's id map, chrooted
/// into `rootfs`, as the container's `postgres` user: the verifier travels through a
/// pipe, nothing is written but the cluster's own files, and the server never listens.
pub fn set_verifier_offline(
    rootfs: &Path,
    info: &TemplateInfo,
    role: &str,
    verifier: &str,
) -> anyhow::Result<()> {
    let usernsexec = super::requirements::find_command("lxc-usernsexec")
        .ok_or_else(|| anyhow::anyhow!("lxc-usernsexec (package lxc) is not installed"))?;
    let chroot = super::requirements::find_command("chroot")
        .ok_or_else(|| anyhow::anyhow!("chroot (coreutils) is not installed"))?;
    let base = info.subid_base;
    let mut child = Command::new(usernsexec)
        .arg("-m")
        .arg(format!("u:0:{base}:{ID_COUNT}"))
        .arg("-m")
        .arg(format!("g:0:{base}:{ID_COUNT}"))
        .arg("--")
        .arg(chroot)
        .arg(format!(
            "--userspec={}:{}",
            info.postgres_uid, info.postgres_gid
        ))
        .arg(rootfs)
        .arg(info.postgres_bin())
        .args(["--single", "-D", &info.data_dir()])
        .arg(format!(
            "-cconfig_file={}/postgresql.conf",
            info.config_dir()
        ))
        // No /dev/shm in the chroot.
        .arg("-cdynamic_shared_memory_type=mmap")
        .args(["-clogging_collector=off", "postgres"])
        .env_clear()
        .env("PATH", "/usr/bin:/bin")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .context("starting the single-user server")?;
    let sql = format!("ALTER ROLE {role} PASSWORD '{verifier}'\n");
    child
        .stdin
        .take()
        .expect("piped")
        .write_all(sql.as_bytes())
        .context("writing to the single-user server")?;
    let out = child
        .wait_with_output()
        .context("waiting for the single-user server")?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    let stdout = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() || stderr.contains("ERROR") || stdout.contains("ERROR") {
        bail!(
            "the single-user server failed ({}): {} {}",
            out.status,
            stderr.trim(),
            stdout.trim()
        );
    }
    Ok(())
}

fn remove_file_if_exists(path: &Path) -> anyhow::Result<()> {
    match std::fs::remove_file(path) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
            Err(e).with_context(|| format!("removing {}", path.display()))
        }
        _ => Ok(()),
    }
}
