//! How to set up a new cluster: where its data and socket go, TLS, extra settings.

use std::path::PathBuf;

/// The port number in the socket file name when a cluster listens on no TCP port.
pub(super) const DEFAULT_SOCKET_PORT: u16 = 5432;

/// How to set up a new cluster.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClusterConfig {
    /// Where the data directory goes; must not exist yet.
    pub data_dir: PathBuf,
    /// TCP port to listen on 127.0.0.1, or None for no TCP (listen_addresses = '').
    /// The unix socket file is named after this port, or after 5432 when it is None.
    pub port: Option<u16>,
    /// Directory for the unix socket (created with mode 0700 if missing: only root, i.e.
    /// Sluice, connects).
    pub socket_dir: PathBuf,
    /// Enables ssl=on with these PEM files (copied into the data dir with mode 0600).
    pub tls: Option<TlsFiles>,
    /// Extra postgresql.conf lines, e.g. ("max_connections", "50").
    pub settings: Vec<(String, String)>,
}

impl ClusterConfig {
    /// A unix-socket-only cluster without TLS or extra settings.
    pub fn new(data_dir: impl Into<PathBuf>, socket_dir: impl Into<PathBuf>) -> Self {
        ClusterConfig {
            data_dir: data_dir.into(),
            port: None,
            socket_dir: socket_dir.into(),
            tls: None,
            settings: Vec::new(),
        }
    }
}

/// Server certificate chain and private key, as PEM files.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsFiles {
    pub cert_pem: PathBuf,
    pub key_pem: PathBuf,
}
