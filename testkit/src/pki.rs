//! A throwaway CA with a wildcard certificate for the proxy and one for backends.

use std::path::{Path, PathBuf};

use localpg::tls::CertificateAuthority;

/// The SNI suffix every test uses: the proxy certificate is a wildcard for it.
pub const SNI_SUFFIX: &str = "db.example.test";

#[derive(Debug, Clone)]
pub struct Pki {
    pub ca_cert: PathBuf,
    pub proxy_cert: PathBuf,
    pub proxy_key: PathBuf,
    pub backend_cert: PathBuf,
    pub backend_key: PathBuf,
}

impl Pki {
    pub fn generate(dir: &Path) -> anyhow::Result<Self> {
        std::fs::create_dir_all(dir)?;
        let ca = CertificateAuthority::generate("Sluice test CA")?;
        let pki = Pki {
            ca_cert: dir.join("ca.crt"),
            proxy_cert: dir.join("proxy.crt"),
            proxy_key: dir.join("proxy.key"),
            backend_cert: dir.join("backend.crt"),
            backend_key: dir.join("backend.key"),
        };
        ca.write(&pki.ca_cert, &dir.join("ca.key"))?;
        let wildcard = format!("*.{}", SNI_SUFFIX);
        ca.issue(&[&wildcard, "localhost", "127.0.0.1"])?
            .write(&pki.proxy_cert, &pki.proxy_key)?;
        ca.issue(&["localhost", "127.0.0.1"])?
            .write(&pki.backend_cert, &pki.backend_key)?;
        Ok(pki)
    }
}
