//! The embedded control store: a private PostgreSQL cluster under `data_dir`, used when
//! the config names no `control.database_url`, so that a single machine needs nothing but
//! the PostgreSQL server binaries.
//!
//! Layout, all under `<data_dir>/control` (mode 0700):
//!
//! - `pgdata/`: the cluster, made by `localpg` (copied from its initdb template);
//! - `run/`: its unix socket directory (mode 0700). There is no TCP listener: only this
//!   machine's root (Sluice) can reach the store;
//! - `superuser.password` (0600): the password of the `postgres` superuser. localpg's
//!   pg_hba.conf asks for SCRAM on the socket too, so that a process that gets into the
//!   socket directory is still not a superuser; the server keeps only the SCRAM verifier.
//!
//! Creation happens in `pgdata.new/` and ends with a rename to `pgdata/`, after the
//! password file is written: an existing `pgdata/` is always complete, and a creation that
//! died half-way is simply redone.
//!
//! `owner.lock` is flock'ed by the Sluice that runs the store, for as long as it does: a
//! second Sluice on the same `data_dir` fails at once. A postmaster found running while
//! the lock was free was left by a Sluice that died (SIGKILL: the postmaster, its child,
//! outlives it); it is stopped and the store started again.
//!
//! Starting and stopping block (about 0.2 s to start an existing cluster, 1 s for the
//! first creation); async callers use `spawn_blocking`.

use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{anyhow, bail, Context};
use localpg::{Cluster, ClusterConfig, Installation, StopMode, Template};

use provision::private_file::{create_private_dir, take_ownership};

/// The database holding Sluice's tables.
pub const DATABASE: &str = "sluice";
/// The role Sluice connects as (the cluster's bootstrap superuser).
pub const SUPERUSER: &str = "postgres";

const HOME: &str = "control";
const PGDATA: &str = "pgdata";
const STAGING: &str = "pgdata.new";
const SOCKET_DIR: &str = "run";
const PASSWORD_FILE: &str = "superuser.password";

/// A running embedded control cluster. Dropping it stops the postmaster (fast shutdown:
/// open transactions roll back, clients are disconnected, the data is flushed).
#[derive(Debug)]
pub struct EmbeddedControl {
    cluster: Cluster,
    /// The postmaster this handle started; Drop stops only that one.
    pid: Option<u32>,
    password: String,
    /// Held (flock) while this process owns the store; released after the postmaster
    /// has been stopped (fields drop after `Drop::drop`).
    _owner: nix::fcntl::Flock<std::fs::File>,
}

impl EmbeddedControl {
    /// Creates the cluster under `data_dir/control` on first use, then starts it and waits
    /// until it accepts connections. Fails if a postmaster already runs on it.
    pub fn start(data_dir: &Path) -> anyhow::Result<EmbeddedControl> {
        let home = data_dir.join(HOME);
        create_private_dir(&home)?;
        let owner = take_ownership(&home, "the embedded control store")?;
        let install = Installation::discover()
            .context("finding the PostgreSQL server binaries for the embedded control store")?;
        let pgdata = home.join(PGDATA);
        if !pgdata.exists() {
            create_cluster(&install, &home)?;
        }
        let password = read_password(&home.join(PASSWORD_FILE))?;
        let mut cluster = Cluster::open(&install, &pgdata)
            .with_context(|| format!("opening the embedded control store {}", pgdata.display()))?;
        match cluster.start() {
            Err(localpg::Error::AlreadyRunning { pid, .. }) => {
                // We hold the owner lock, so no live Sluice runs this postmaster.
                tracing::warn!(
                    pid,
                    "stopping the embedded control store's postmaster left by a Sluice that died"
                );
                cluster
                    .stop(StopMode::Fast)
                    .with_context(|| format!("stopping the leftover postmaster {pid}"))?;
                cluster.start().map_err(|e| start_error(e, &pgdata))?;
            }
            other => other.map_err(|e| start_error(e, &pgdata))?,
        }
        let pid = cluster.pid();
        tracing::info!(data_dir = %pgdata.display(), pid, "embedded control store started");
        Ok(EmbeddedControl {
            cluster,
            pid,
            password,
            _owner: owner,
        })
    }

    /// How to connect: the unix socket, as the superuser, to database `sluice`.
    pub fn config(&self) -> tokio_postgres::Config {
        let mut config = tokio_postgres::Config::new();
        config
            .host_path(self.cluster.socket_dir())
            .port(self.cluster.socket_port())
            .user(SUPERUSER)
            .password(&self.password)
            .dbname(DATABASE)
            .application_name("sluice")
            .connect_timeout(Duration::from_secs(10));
        config
    }

    /// [`EmbeddedControl::config`] as a libpq `key=value` string, for other processes
    /// on this host to use as their `[control] database_url` (`sluice demo
    /// --replicas`). It carries the superuser password.
    pub fn conninfo(&self) -> String {
        format!(
            "host={} port={} user={SUPERUSER} password={} dbname={DATABASE}",
            self.cluster.socket_dir().display(),
            self.cluster.socket_port(),
            self.password,
        )
    }

    /// The postmaster's pid while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.cluster.pid()
    }

    /// The cluster's data directory (`<data_dir>/control/pgdata`).
    pub fn data_dir(&self) -> &Path {
        self.cluster.data_dir()
    }

    /// The server log, for diagnosing a store that misbehaves.
    pub fn log_path(&self) -> PathBuf {
        self.cluster.log_path()
    }

    /// Stops the postmaster (fast shutdown) and waits for it to exit.
    pub fn stop(mut self) -> anyhow::Result<()> {
        self.stop_own()
    }

    fn stop_own(&mut self) -> anyhow::Result<()> {
        let Some(pid) = self.pid.take() else {
            return Ok(());
        };
        // Only ours: if our postmaster died and another took the directory, leave it be.
        if self.cluster.pid() != Some(pid) {
            return Ok(());
        }
        self.cluster
            .stop(StopMode::Fast)
            .with_context(|| format!("stopping the embedded control store (pid {pid})"))
    }
}

impl Drop for EmbeddedControl {
    fn drop(&mut self) {
        if let Err(e) = self.stop_own() {
            tracing::warn!(error = %format!("{e:#}"), "embedded control store");
        }
    }
}

/// Makes the cluster in `home/pgdata.new` (redoing a creation that died half-way), sets
/// the superuser's password and the `sluice` database, writes the password file, and
/// renames the directory into place.
fn create_cluster(install: &Installation, home: &Path) -> anyhow::Result<()> {
    let staging = home.join(STAGING);
    if staging.symlink_metadata().is_ok() {
        std::fs::remove_dir_all(&staging).with_context(|| {
            format!(
                "removing the unfinished control cluster {}",
                staging.display()
            )
        })?;
    }
    let template = Template::ensure(install, &localpg::default_template_cache())
        .context("preparing the initdb template for the embedded control store")?;
    let config = ClusterConfig::new(&staging, home.join(SOCKET_DIR));
    let cluster = Cluster::create(install, &template, config)
        .context("creating the embedded control store")?;
    let password = random_password();
    // Single-user mode reads the statements from a pipe; password_encryption is
    // scram-sha-256 (localpg's settings), so only the verifier reaches the catalog.
    let sql = format!("ALTER ROLE {SUPERUSER} PASSWORD '{password}'\nCREATE DATABASE {DATABASE}");
    cluster
        .run_single_user(&sql)
        .context("setting up the embedded control store")?;
    drop(cluster);
    write_private(&home.join(PASSWORD_FILE), &password)?;
    let pgdata = home.join(PGDATA);
    std::fs::rename(&staging, &pgdata)
        .with_context(|| format!("renaming {} to {}", staging.display(), pgdata.display()))?;
    tracing::info!(data_dir = %pgdata.display(), "created the embedded control store");
    Ok(())
}

/// A clear message for the one failure an operator can fix by themselves.
fn start_error(error: localpg::Error, pgdata: &Path) -> anyhow::Error {
    match error {
        localpg::Error::AlreadyRunning { pid, .. } => anyhow!(
            "the embedded control store {} is already running (postmaster pid {pid}): \
             is another Sluice using this data_dir?",
            pgdata.display()
        ),
        other => anyhow::Error::new(other).context(format!(
            "starting the embedded control store {}",
            pgdata.display()
        )),
    }
}

/// 32 hex digits: nothing that needs quoting in SQL or in a connection string.
fn random_password() -> String {
    let bytes: [u8; 16] = rand::random();
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Writes `contents` to `path` with mode 0600 through a fresh temporary file and a rename,
/// so the file is never readable by others, nor seen half-written.
fn write_private(path: &Path, contents: &str) -> anyhow::Result<()> {
    let temporary = path.with_extension("tmp");
    let _ = std::fs::remove_file(&temporary);
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&temporary)
        .with_context(|| format!("creating {}", temporary.display()))?;
    file.write_all(contents.as_bytes())
        .and_then(|()| file.sync_all())
        .with_context(|| format!("writing {}", temporary.display()))?;
    std::fs::rename(&temporary, path)
        .with_context(|| format!("renaming {} to {}", temporary.display(), path.display()))
}

/// The password, refusing a file that others can read.
fn read_password(path: &Path) -> anyhow::Result<String> {
    let metadata = std::fs::metadata(path).with_context(|| {
        format!(
            "reading {} (the embedded control store exists but its password file does not)",
            path.display()
        )
    })?;
    let mode = metadata.permissions().mode() & 0o777;
    if mode & 0o077 != 0 {
        bail!(
            "{} is readable by others (mode {mode:o}); chmod 600 it",
            path.display()
        );
    }
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let password = text.trim();
    if password.is_empty() {
        bail!("{} is empty", path.display());
    }
    Ok(password.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn password_files_are_private() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("pw");
        write_private(&path, "secret").unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        assert_eq!(read_password(&path).unwrap(), "secret");
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        let error = read_password(&path).unwrap_err().to_string();
        assert!(error.contains("chmod 600"), "{error}");
    }

    #[test]
    fn passwords_need_no_quoting() {
        let password = random_password();
        assert_eq!(password.len(), 32);
        assert!(password.bytes().all(|b| b.is_ascii_hexdigit()));
    }
}
