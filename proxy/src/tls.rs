//! The client-facing TLS configuration: the listener's certificate, and tenants' own
//! host names with theirs (`hostnames.rs`).

pub mod hostnames;

use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::ServerConfig;

use crate::config::TlsFiles;

/// ALPN protocol name for PostgreSQL (required for direct TLS, PostgreSQL 17+).
pub const ALPN_POSTGRESQL: &[u8] = b"postgresql";

/// The server TLS setup: the rustls config and the `tls-server-end-point` channel
/// binding data of its certificate (for SCRAM-SHA-256-PLUS).
#[derive(Debug, Clone)]
pub struct ServerTls {
    pub config: Arc<ServerConfig>,
    pub channel_binding: Option<Vec<u8>>,
}

#[derive(Debug, thiserror::Error)]
#[error("TLS setup from {path}: {reason}")]
pub struct TlsSetupError {
    pub path: String,
    pub reason: String,
}

impl ServerTls {
    pub fn load(files: &TlsFiles) -> Result<Self, TlsSetupError> {
        let cert_err = |reason: String| TlsSetupError {
            path: files.cert.display().to_string(),
            reason,
        };
        let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(&files.cert)
            .map_err(|e| cert_err(e.to_string()))?
            .collect::<Result<_, _>>()
            .map_err(|e| cert_err(e.to_string()))?;
        let key = PrivateKeyDer::from_pem_file(&files.key).map_err(|e| TlsSetupError {
            path: files.key.display().to_string(),
            reason: e.to_string(),
        })?;
        Self::build(chain, key).map_err(cert_err)
    }

    /// From a certificate chain and its key in PEM text (a tenant's own host name,
    /// hostnames.rs). The key must be the certificate's.
    pub fn from_pem(cert_pem: &str, key_pem: &str) -> Result<Self, String> {
        let chain: Vec<CertificateDer<'static>> =
            CertificateDer::pem_slice_iter(cert_pem.as_bytes())
                .collect::<Result<_, _>>()
                .map_err(|e| format!("certificate: {e}"))?;
        let key = PrivateKeyDer::from_pem_slice(key_pem.as_bytes())
            .map_err(|e| format!("private key: {e}"))?;
        Self::build(chain, key)
    }

    fn build(
        chain: Vec<CertificateDer<'static>>,
        key: PrivateKeyDer<'static>,
    ) -> Result<Self, String> {
        if chain.is_empty() {
            return Err("no certificate in file".into());
        }
        let channel_binding = wire::scram::tls_server_end_point(&chain[0]);
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut config = ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| e.to_string())?
            .with_no_client_auth()
            .with_single_cert(chain, key)
            .map_err(|e| e.to_string())?;
        config.alpn_protocols = vec![ALPN_POSTGRESQL.to_vec()];
        Ok(ServerTls {
            config: Arc::new(config),
            channel_binding,
        })
    }
}
