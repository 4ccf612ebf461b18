//! The one error type of this crate.
//!
//! Every variant names the file or command involved and, for failed commands, carries the
//! program's stderr (or the server log tail), because the caller usually cannot reproduce
//! the failure by hand once the temporary directory is gone.

use std::path::PathBuf;

/// Why a local PostgreSQL operation failed.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A filesystem or process operation failed; `what` says which and on what path.
    #[error("{what}: {source}")]
    Io {
        what: String,
        #[source]
        source: std::io::Error,
    },

    /// No PostgreSQL server binaries were found.
    #[error("no PostgreSQL installation found (looked at: {searched})")]
    NoInstallation { searched: String },

    /// An external command (initdb, cp, postgres --version, ...) failed.
    #[error("`{command}` failed ({status}): {stderr}")]
    Command {
        command: String,
        status: String,
        stderr: String,
    },

    /// A statement run in single-user mode failed.
    #[error("single-user backend on {data_dir} reported an error: {stderr}")]
    SingleUser { data_dir: PathBuf, stderr: String },

    /// `Cluster::create` refuses to overwrite anything.
    #[error("cluster data directory {0} already exists")]
    DataDirExists(PathBuf),

    /// The directory was not created by `Cluster::create` (or its metadata is unreadable).
    #[error("{path} is not a readable localpg cluster description: {reason}")]
    NotACluster { path: PathBuf, reason: String },

    /// The cluster's on-disk major version differs from the installation's.
    #[error("cluster {data_dir} is PostgreSQL {cluster_major} but the installation is {installed_major}")]
    MajorMismatch {
        data_dir: PathBuf,
        cluster_major: u32,
        installed_major: u32,
    },

    /// A `ClusterConfig::settings` entry cannot be written to postgresql.conf.
    #[error("invalid setting {name:?}: {reason}")]
    InvalidSetting { name: String, reason: &'static str },

    /// Unix socket paths are limited to 107 bytes by the kernel.
    #[error("unix socket path {0} is too long (at most 107 bytes)")]
    SocketPathTooLong(PathBuf),

    /// A postmaster that this handle did not start is using the data directory.
    #[error("a postmaster (pid {pid}) is already running on {data_dir}")]
    AlreadyRunning { data_dir: PathBuf, pid: u32 },

    /// The postmaster exited before it accepted connections.
    #[error(
        "postgres on {data_dir} exited during startup ({status}); server log tail:\n{log_tail}"
    )]
    StartupExited {
        data_dir: PathBuf,
        status: String,
        log_tail: String,
    },

    /// The postmaster did not report "ready" in time.
    #[error(
        "postgres on {data_dir} was not ready after {seconds} s; server log tail:\n{log_tail}"
    )]
    StartupTimeout {
        data_dir: PathBuf,
        seconds: u64,
        log_tail: String,
    },

    /// Certificate generation, signing or parsing failed.
    #[error("TLS certificate: {what}: {source}")]
    Certificate {
        what: String,
        #[source]
        source: rcgen::Error,
    },
}

impl Error {
    /// Wraps an `io::Error` with a description of what was being done.
    pub(crate) fn io(what: impl Into<String>, source: std::io::Error) -> Self {
        Error::Io {
            what: what.into(),
            source,
        }
    }
}
