//! One local PostgreSQL cluster: a data directory copied from a [`Template`], and the
//! postmaster running on it.
//!
//! A [`Cluster`] handle owns the postmaster it started (it keeps the `Child`, reaps it, and
//! stops it on drop). A postmaster started by another handle or an earlier process is only
//! observed through `postmaster.pid`; such a handle can stop it but never kills it on drop.

mod config;
mod files;
mod metadata;
mod pid_file;
mod postmaster;
mod single_user;

use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::sync::{Mutex, MutexGuard, PoisonError};

use crate::{launcher, Error, Installation, Template};

use config::DEFAULT_SOCKET_PORT;
pub use config::{ClusterConfig, TlsFiles};
use metadata::Metadata;

/// How to stop a postmaster (the signals of `pg_ctl stop -m`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StopMode {
    /// SIGTERM: wait for clients to disconnect.
    Smart,
    /// SIGINT: roll back and disconnect clients, then shut down cleanly.
    Fast,
    /// SIGQUIT: abort everything; the next start runs crash recovery.
    Immediate,
}

/// A cluster directory on disk (not necessarily running).
#[derive(Debug)]
pub struct Cluster {
    install: Installation,
    /// Canonical path of the `postgres` binary, to recognise our server processes in /proc.
    postgres_exe: PathBuf,
    /// Canonical, because postgres reports its working directory that way.
    data_dir: PathBuf,
    port: Option<u16>,
    socket_dir: PathBuf,
    /// The postmaster this handle started, kept so that it can be reaped. Behind a mutex so
    /// that `&self` queries can reap an exited child and the handle stays `Send + Sync`.
    postmaster: Mutex<Option<Child>>,
}

impl Cluster {
    /// Copies the template to `config.data_dir` (which must not exist) and writes the
    /// cluster's settings (port, listen_addresses, unix_socket_directories, ssl,
    /// password_encryption=scram-sha-256, `config.settings`) into `sluice-localpg.conf`,
    /// included at the end of postgresql.conf, and a pg_hba.conf allowing only
    /// scram-sha-256 over the socket and loopback TCP.
    pub fn create(
        install: &Installation,
        template: &Template,
        config: ClusterConfig,
    ) -> Result<Self, Error> {
        let data_dir = absolute(&config.data_dir)?;
        let socket_dir = absolute(&config.socket_dir)?;
        if data_dir.symlink_metadata().is_ok() {
            return Err(Error::DataDirExists(data_dir));
        }
        let socket_port = config.port.unwrap_or(DEFAULT_SOCKET_PORT);
        check_socket_path(&socket_dir, socket_port)?;
        files::validate_settings(&config.settings)?;

        if let Some(parent) = data_dir.parent() {
            std::fs::create_dir_all(parent)
                .map_err(|e| Error::io(format!("creating {}", parent.display()), e))?;
        }
        let mut copy = Command::new("cp");
        copy.arg("-a").arg(&template.dir).arg(&data_dir);
        launcher::run(copy, b"")?;
        let data_dir = canonical(&data_dir)?;

        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&socket_dir)
            .map_err(|e| Error::io(format!("creating socket dir {}", socket_dir.display()), e))?;

        let metadata = Metadata::new(install.major, &config, &socket_dir);
        files::write_server_config(&data_dir, &config, &socket_dir)?;
        metadata.write(&data_dir)?;
        Ok(Self::from_parts(install, data_dir, metadata))
    }

    /// Opens a cluster directory created earlier by [`Cluster::create`], reading its port
    /// and socket directory back from `sluice-localpg.json` in the data directory.
    pub fn open(install: &Installation, data_dir: &Path) -> Result<Self, Error> {
        let data_dir = data_dir.canonicalize().map_err(|e| Error::NotACluster {
            path: data_dir.to_path_buf(),
            reason: e.to_string(),
        })?;
        let metadata = Metadata::read(&data_dir)?;
        let on_disk = files::read_major_version(&data_dir)?;
        if on_disk != install.major || metadata.major != install.major {
            return Err(Error::MajorMismatch {
                data_dir,
                cluster_major: on_disk,
                installed_major: install.major,
            });
        }
        Ok(Self::from_parts(install, data_dir, metadata))
    }

    fn from_parts(install: &Installation, data_dir: PathBuf, metadata: Metadata) -> Self {
        let postgres = install.bin_dir.join("postgres");
        Cluster {
            install: install.clone(),
            postgres_exe: postgres.canonicalize().unwrap_or(postgres),
            data_dir,
            port: metadata.port,
            socket_dir: metadata.socket_dir,
            postmaster: Mutex::new(None),
        }
    }

    /// TCP port on 127.0.0.1, if the cluster listens on TCP.
    pub fn port(&self) -> Option<u16> {
        self.port
    }

    /// The port number in the unix socket's file name: `port()`, or 5432 without TCP.
    /// libpq needs it as `port=` even when connecting through `host=<socket dir>`.
    pub fn socket_port(&self) -> u16 {
        self.port.unwrap_or(DEFAULT_SOCKET_PORT)
    }

    /// Directory holding the unix socket `.s.PGSQL.<socket_port>`.
    pub fn socket_dir(&self) -> &Path {
        &self.socket_dir
    }

    /// The (canonical) data directory.
    pub fn data_dir(&self) -> &Path {
        &self.data_dir
    }

    /// File receiving the postmaster's stdout and stderr.
    pub fn log_path(&self) -> PathBuf {
        self.data_dir.join("log").join("postgres.log")
    }

    /// Postmaster pid while running, whether this handle started it or not.
    pub fn pid(&self) -> Option<u32> {
        self.own_postmaster_pid()
            .or_else(|| self.foreign_postmaster_pid())
    }

    /// True while a postmaster serves this data directory.
    pub fn is_running(&self) -> bool {
        self.pid().is_some()
    }

    fn child(&self) -> MutexGuard<'_, Option<Child>> {
        self.postmaster
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// Pid of the postmaster this handle started, reaping it if it has exited.
    fn own_postmaster_pid(&self) -> Option<u32> {
        let mut guard = self.child();
        let child = guard.as_mut()?;
        match child.try_wait() {
            Ok(None) => Some(child.id()),
            Ok(Some(_)) | Err(_) => {
                *guard = None;
                None
            }
        }
    }

    /// Pid of a live postmaster (from `postmaster.pid`) that another handle or process started.
    fn foreign_postmaster_pid(&self) -> Option<u32> {
        let pid = pid_file::read(&self.data_dir)?.pid;
        crate::process::serves(pid, &self.data_dir, &self.postgres_exe).then_some(pid)
    }
}

impl Drop for Cluster {
    /// Never leaves a postmaster behind that this handle started; one it merely observed is
    /// left alone.
    fn drop(&mut self) {
        let started_here = self
            .postmaster
            .get_mut()
            .unwrap_or_else(PoisonError::into_inner)
            .is_some();
        if started_here {
            let _ = self.stop(StopMode::Immediate);
        }
    }
}

fn absolute(path: &Path) -> Result<PathBuf, Error> {
    std::path::absolute(path).map_err(|e| Error::io(format!("resolving {}", path.display()), e))
}

fn canonical(path: &Path) -> Result<PathBuf, Error> {
    path.canonicalize()
        .map_err(|e| Error::io(format!("resolving {}", path.display()), e))
}

/// The kernel limits a unix socket path to 107 bytes; postgres would only say so at start.
fn check_socket_path(socket_dir: &Path, port: u16) -> Result<(), Error> {
    let socket = socket_dir.join(format!(".s.PGSQL.{port}"));
    if socket.as_os_str().len() > 107 {
        return Err(Error::SocketPathTooLong(socket));
    }
    Ok(())
}
