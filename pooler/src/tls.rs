//! TLS client configurations for backends, built once and shared.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use dashmap::DashMap;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme};

/// Client TLS configs: one that verifies nothing (libpq's `prefer`/`require`) and one
/// per CA file for `verify-full`, loaded on first use.
#[derive(Debug)]
pub struct TlsConnectors {
    unverified: Arc<ClientConfig>,
    verified: DashMap<PathBuf, Arc<ClientConfig>>,
}

#[derive(Debug, thiserror::Error)]
#[error("cannot load backend CA file {path}: {reason}")]
pub struct CaError {
    pub path: PathBuf,
    pub reason: String,
}

impl Default for TlsConnectors {
    fn default() -> Self {
        Self::new()
    }
}

impl TlsConnectors {
    pub fn new() -> Self {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut unverified = ClientConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .expect("ring supports the default protocol versions")
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(NoVerification(provider)))
            .with_no_client_auth();
        unverified.alpn_protocols = vec![b"postgresql".to_vec()];
        TlsConnectors {
            unverified: Arc::new(unverified),
            verified: DashMap::new(),
        }
    }

    pub fn unverified(&self) -> Arc<ClientConfig> {
        self.unverified.clone()
    }

    /// A config that trusts exactly the certificates in `ca_file`.
    pub fn verified(&self, ca_file: &Path) -> Result<Arc<ClientConfig>, CaError> {
        if let Some(config) = self.verified.get(ca_file) {
            return Ok(config.clone());
        }
        let err = |reason: String| CaError {
            path: ca_file.to_owned(),
            reason,
        };
        let mut roots = RootCertStore::empty();
        for cert in CertificateDer::pem_file_iter(ca_file).map_err(|e| err(e.to_string()))? {
            roots
                .add(cert.map_err(|e| err(e.to_string()))?)
                .map_err(|e| err(e.to_string()))?;
        }
        if roots.is_empty() {
            return Err(err("no certificate in file".into()));
        }
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut config = ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .expect("ring supports the default protocol versions")
            .with_root_certificates(roots)
            .with_no_client_auth();
        config.alpn_protocols = vec![b"postgresql".to_vec()];
        let config = Arc::new(config);
        self.verified.insert(ca_file.to_owned(), config.clone());
        Ok(config)
    }
}

/// libpq's `sslmode=require`: encryption without authentication of the server. The
/// handshake signatures are still checked so the session keys are sound.
#[derive(Debug)]
struct NoVerification(Arc<CryptoProvider>);

impl ServerCertVerifier for NoVerification {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}
