//! Tenants' own host names (`db.acme-corp.com`), each with its own certificate, chosen
//! by the exact TLS server name.
//!
//! The set follows the catalog: the host names stored with
//! `POST /v1/tenants/{id}/hostnames` reach every process's catalog through the catalog
//! sync (`Tenant::hostnames`), and each catalog published replaces the set whole
//! ([`HostCerts::apply`]; hot-swapped, no restart), which is read lock-free at every
//! ClientHello. The TLS phase serves the matching certificate (and its channel binding
//! for SCRAM-SHA-256-PLUS) and names the tenant. A tenant that leaves the catalog takes
//! its host names with it.

use std::collections::HashMap;
use std::sync::Arc;

use arc_swap::ArcSwap;
use router::{Catalog, TenantId};

use super::ServerTls;

/// One host name's tenant and TLS setup.
#[derive(Debug)]
pub struct HostCert {
    pub tenant: TenantId,
    pub tls: ServerTls,
    /// The certificate chain and key it was built from.
    pem: (String, String),
}

/// A host name as stored: its tenant and its certificate chain and key in PEM.
#[derive(Debug, Clone)]
pub struct HostEntry {
    pub hostname: String,
    pub tenant: TenantId,
    pub cert_pem: String,
    pub key_pem: String,
}

/// A host name that could not be set up (its certificate or key is unusable).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("host name {hostname}: {reason}")]
pub struct HostCertError {
    pub hostname: String,
    pub reason: String,
}

/// The live set of host names. Lookups take no lock.
#[derive(Debug, Default)]
pub struct HostCerts {
    current: ArcSwap<HashMap<String, Arc<HostCert>>>,
}

impl HostCerts {
    /// The host name's certificate and tenant, for a TLS server name (any case, a
    /// trailing dot allowed).
    pub fn get(&self, server_name: &str) -> Option<Arc<HostCert>> {
        let name = normalize(server_name);
        self.current.load().get(&name).cloned()
    }

    pub fn len(&self) -> usize {
        self.current.load().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Replaces the whole set with the host names of the tenants in `catalog` (see
    /// [`HostCerts::replace`]).
    pub fn apply(&self, catalog: &Catalog) -> Vec<HostCertError> {
        let entries = catalog.iter().flat_map(|tenant| {
            tenant.hostnames.iter().map(|h| HostEntry {
                hostname: h.name.clone(),
                tenant: tenant.id.clone(),
                cert_pem: h.cert_pem.clone(),
                key_pem: h.key_pem.clone(),
            })
        });
        self.replace(entries)
    }

    /// Replaces the whole set with `entries`. An entry whose certificate or key is
    /// unusable is left out and reported; an unchanged entry keeps its parsed setup
    /// (no work per resync). Connections already past their ClientHello keep the
    /// certificate they were served.
    pub fn replace(&self, entries: impl IntoIterator<Item = HostEntry>) -> Vec<HostCertError> {
        let old = self.current.load_full();
        let mut next = HashMap::new();
        let mut errors = Vec::new();
        for entry in entries {
            let name = normalize(&entry.hostname);
            if let Some(had) = old.get(&name).filter(|had| had.is(&entry)) {
                next.insert(name, had.clone());
                continue;
            }
            match ServerTls::from_pem(&entry.cert_pem, &entry.key_pem) {
                Ok(tls) => {
                    let built = HostCert {
                        tenant: entry.tenant,
                        tls,
                        pem: (entry.cert_pem, entry.key_pem),
                    };
                    next.insert(name, Arc::new(built));
                }
                Err(reason) => errors.push(HostCertError {
                    hostname: name,
                    reason,
                }),
            }
        }
        self.current.store(Arc::new(next));
        errors
    }
}

impl HostCert {
    /// Built from this very entry: kept across a resync, with its rustls state.
    fn is(&self, entry: &HostEntry) -> bool {
        self.tenant == entry.tenant && self.pem.0 == entry.cert_pem && self.pem.1 == entry.key_pem
    }
}

fn normalize(name: &str) -> String {
    name.trim_end_matches('.').to_ascii_lowercase()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cert(names: &[&str]) -> (String, String) {
        let names: Vec<String> = names.iter().map(|n| n.to_string()).collect();
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = rcgen::CertificateParams::new(names)
            .unwrap()
            .self_signed(&key)
            .unwrap();
        (cert.pem(), key.serialize_pem())
    }

    fn entry(hostname: &str, tenant: &str, (cert_pem, key_pem): (String, String)) -> HostEntry {
        HostEntry {
            hostname: hostname.into(),
            tenant: TenantId::parse(tenant).unwrap(),
            cert_pem,
            key_pem,
        }
    }

    #[test]
    fn chosen_by_exact_name_and_hot_swapped() {
        let certs = HostCerts::default();
        assert!(certs.get("db.acme-corp.test").is_none());
        let errors = certs.replace([
            entry("db.acme-corp.test", "acme", cert(&["db.acme-corp.test"])),
            entry("pg.globex.test", "globex", cert(&["pg.globex.test"])),
        ]);
        assert_eq!(errors, []);
        let acme = certs
            .get("DB.acme-corp.test.")
            .expect("any case, trailing dot");
        assert_eq!(acme.tenant.as_str(), "acme");
        assert!(acme.tls.channel_binding.is_some());
        assert_eq!(
            certs.get("pg.globex.test").unwrap().tenant.as_str(),
            "globex"
        );
        // Exact names only: no suffix or wildcard matching.
        assert!(certs.get("x.db.acme-corp.test").is_none());
        assert!(certs.get("acme-corp.test").is_none());

        // A resync with the same entry keeps the same setup; a new certificate
        // replaces it; a removed name is gone.
        let same_cert = cert(&["db.acme-corp.test"]);
        certs.replace([entry("db.acme-corp.test", "acme", same_cert.clone())]);
        let first = certs.get("db.acme-corp.test").unwrap();
        certs.replace([entry("db.acme-corp.test", "acme", same_cert)]);
        assert!(Arc::ptr_eq(
            &first,
            &certs.get("db.acme-corp.test").unwrap()
        ));
        certs.replace([entry(
            "db.acme-corp.test",
            "acme",
            cert(&["db.acme-corp.test"]),
        )]);
        let renewed = certs.get("db.acme-corp.test").unwrap();
        assert!(!Arc::ptr_eq(&first, &renewed));
        assert_ne!(first.tls.channel_binding, renewed.tls.channel_binding);
        assert!(certs.get("pg.globex.test").is_none());
        assert_eq!(certs.len(), 1);
    }

    #[test]
    fn unusable_certificates_are_reported_and_left_out() {
        let certs = HostCerts::default();
        let (cert_a, _) = cert(&["a.test"]);
        let (_, key_b) = cert(&["b.test"]);
        let errors = certs.replace([
            entry("a.test", "acme", (cert_a, key_b)),
            entry("c.test", "acme", ("not pem".into(), "not pem".into())),
            entry("d.test", "acme", cert(&["d.test"])),
        ]);
        let names: Vec<&str> = errors.iter().map(|e| e.hostname.as_str()).collect();
        assert_eq!(names, ["a.test", "c.test"], "{errors:?}");
        assert!(certs.get("a.test").is_none());
        assert!(certs.get("d.test").is_some());
    }
}
