//! The standard test setup: two tenants behind one Sluice.
//!
//! `acme` is reached over its unix socket (no backend TLS); `globex` over TCP with
//! `verify-full` TLS to its backend, so both backend paths run in every test that
//! uses both tenants.

use std::path::Path;

use crate::clients::PgTarget;
use crate::cluster::{TestCluster, TestClusterOptions};
use crate::pki::Pki;
use crate::sluice::{SluiceConfig, SluiceProcess, TenantEntry};

pub struct TwoTenants {
    // Field order is drop order: Sluice first, then the clusters, then the files.
    pub sluice: SluiceProcess,
    pub acme: TestCluster,
    pub globex: TestCluster,
    pub pki: Pki,
    pub dir: tempfile::TempDir,
}

impl TwoTenants {
    /// Starts both clusters and Sluice; `tweak` may adjust the config first.
    pub fn start(bin: &Path, tweak: impl FnOnce(&mut SluiceConfig)) -> anyhow::Result<Self> {
        let dir = tempfile::Builder::new().prefix("sluice-test-").tempdir()?;
        let pki = Pki::generate(&dir.path().join("pki"))?;
        let acme = TestCluster::start(
            dir.path(),
            "acme",
            TestClusterOptions {
                md5_role: true,
                ..Default::default()
            },
        )?;
        let globex = TestCluster::start(
            dir.path(),
            "globex",
            TestClusterOptions {
                tcp_tls: Some(&pki),
                ..Default::default()
            },
        )?;
        let mut config = SluiceConfig::new(&pki);
        config.tenants = vec![
            TenantEntry::for_cluster(&acme, &pki),
            TenantEntry::for_cluster(&globex, &pki),
        ];
        tweak(&mut config);
        let sluice = SluiceProcess::start(bin, &dir.path().join("sluice"), &config)?;
        Ok(TwoTenants {
            sluice,
            acme,
            globex,
            pki,
            dir,
        })
    }

    /// How `app` reaches `tenant` through Sluice with SNI and verify-full TLS.
    pub fn target(&self, tenant: &str) -> PgTarget {
        let password = match tenant {
            "acme" => &self.acme.app_password,
            "globex" => &self.globex.app_password,
            _ => "no-such-tenant",
        };
        PgTarget::tenant(self.sluice.addr, tenant, password, &self.pki.ca_cert)
    }
}

/// One tenant cluster (`acme`, TCP with TLS and its unix socket) with its PKI in a
/// temporary directory: what the benchmarks start from.
pub struct OneTenant {
    pub dir: tempfile::TempDir,
    pub pki: Pki,
    pub cluster: TestCluster,
}

impl OneTenant {
    pub fn start(prefix: &str) -> anyhow::Result<Self> {
        let dir = tempfile::Builder::new().prefix(prefix).tempdir()?;
        let pki = Pki::generate(&dir.path().join("pki"))?;
        let cluster = TestCluster::start(
            dir.path(),
            "acme",
            TestClusterOptions {
                tcp_tls: Some(&pki),
                max_connections: 100,
                ..Default::default()
            },
        )?;
        Ok(OneTenant { dir, pki, cluster })
    }
}
