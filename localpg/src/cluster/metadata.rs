//! `sluice-localpg.json`: what `Cluster::open` needs to know about a cluster made earlier.
//!
//! postgresql.conf is the source of truth for the server; this small file spares us from
//! parsing it back (include files, quoting, ALTER SYSTEM overrides).

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::config::ClusterConfig;
use crate::Error;

const FILE_NAME: &str = "sluice-localpg.json";
/// Bumped when the layout of a created cluster changes incompatibly.
const FORMAT: u32 = 1;

#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct Metadata {
    pub format: u32,
    pub major: u32,
    pub port: Option<u16>,
    pub socket_dir: PathBuf,
    pub tls: bool,
    /// Informational: the extra settings written at creation.
    pub settings: Vec<(String, String)>,
}

impl Metadata {
    pub fn new(major: u32, config: &ClusterConfig, socket_dir: &Path) -> Self {
        Metadata {
            format: FORMAT,
            major,
            port: config.port,
            socket_dir: socket_dir.to_path_buf(),
            tls: config.tls.is_some(),
            settings: config.settings.clone(),
        }
    }

    pub fn write(&self, data_dir: &Path) -> Result<(), Error> {
        let path = data_dir.join(FILE_NAME);
        let json = serde_json::to_vec_pretty(self).expect("metadata serialises");
        std::fs::write(&path, json).map_err(|e| Error::io(format!("writing {}", path.display()), e))
    }

    pub fn read(data_dir: &Path) -> Result<Self, Error> {
        let path = data_dir.join(FILE_NAME);
        let not_a_cluster = |reason: String| Error::NotACluster {
            path: path.clone(),
            reason,
        };
        let bytes = std::fs::read(&path).map_err(|e| not_a_cluster(e.to_string()))?;
        let metadata: Metadata =
            serde_json::from_slice(&bytes).map_err(|e| not_a_cluster(e.to_string()))?;
        if metadata.format != FORMAT {
            return Err(not_a_cluster(format!(
                "format {} (this version reads {FORMAT})",
                metadata.format
            )));
        }
        Ok(metadata)
    }
}
