//! PEM certificates for local clusters, the demo and tests.
//!
//! rustls refuses a CA certificate used as an end entity, so this is a two-level PKI: a
//! self-signed CA (which clients trust, e.g. `sslrootcert=ca.crt`) issues leaf certificates
//! (CA:FALSE, serverAuth) that servers present. Leaves carry an authority key identifier
//! equal to the CA's subject key identifier, so OpenSSL and webpki chain them without
//! guessing.

use std::io::Write;
use std::net::IpAddr;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::Path;
use std::time::{Duration, SystemTime};

use rcgen::{
    BasicConstraints, Certificate, CertificateParams, DistinguishedName, DnType,
    ExtendedKeyUsagePurpose, IsCa, KeyPair, KeyUsagePurpose, SanType, SerialNumber,
    PKCS_ECDSA_P256_SHA256,
};

use crate::Error;

const DAY: Duration = Duration::from_secs(24 * 60 * 60);
/// Ten years, counting the leap days.
const LIFETIME: Duration = Duration::from_secs((10 * 365 + 3) * 24 * 60 * 60);

/// A certificate authority: a self-signed CA certificate and its private key.
pub struct CertificateAuthority {
    /// The PEM clients trust: as generated, or exactly as loaded from disk.
    cert_pem: String,
    /// rcgen's view of the CA, used as the issuer when signing leaves.
    issuer: Certificate,
    key: KeyPair,
}

impl std::fmt::Debug for CertificateAuthority {
    /// Shows the certificate but never the key.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CertificateAuthority")
            .field("subject", &self.issuer.params().distinguished_name)
            .finish_non_exhaustive()
    }
}

impl CertificateAuthority {
    /// Generates a new ECDSA P-256 CA named `common_name`, valid from a day ago for ten years.
    pub fn generate(common_name: &str) -> Result<Self, Error> {
        let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256)
            .map_err(|e| certificate_error("generating the CA key", e))?;
        let mut params = CertificateParams::default();
        params.distinguished_name = name(common_name);
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        set_validity(&mut params);
        let issuer = params
            .self_signed(&key)
            .map_err(|e| certificate_error("self-signing the CA", e))?;
        Ok(CertificateAuthority {
            cert_pem: issuer.pem(),
            issuer,
            key,
        })
    }

    /// Loads a CA written earlier by [`CertificateAuthority::write`] (certificate and PKCS#8
    /// key PEM) so later runs reuse the same CA.
    pub fn load(cert_pem_path: &Path, key_pem_path: &Path) -> Result<Self, Error> {
        let cert_pem = read(cert_pem_path)?;
        let key_pem = read(key_pem_path)?;
        let key = KeyPair::from_pem(&key_pem)
            .map_err(|e| certificate_error(format!("parsing key {}", key_pem_path.display()), e))?;
        let params = CertificateParams::from_ca_cert_pem(&cert_pem)
            .map_err(|e| certificate_error(format!("parsing CA {}", cert_pem_path.display()), e))?;
        // Re-signing gives rcgen an issuer with the same subject and key identifier (taken
        // from the file); the re-signed bytes are never handed out, `cert_pem` is.
        let issuer = params
            .self_signed(&key)
            .map_err(|e| certificate_error(format!("using CA {}", cert_pem_path.display()), e))?;
        Ok(CertificateAuthority {
            cert_pem,
            issuer,
            key,
        })
    }

    /// The CA certificate, PEM-encoded: what clients put in `sslrootcert`.
    pub fn cert_pem(&self) -> String {
        self.cert_pem.clone()
    }

    /// Writes the certificate (mode 0644) and the private key (mode 0600).
    pub fn write(&self, cert_path: &Path, key_path: &Path) -> Result<(), Error> {
        write_pair(
            cert_path,
            &self.cert_pem,
            key_path,
            &self.key.serialize_pem(),
        )
    }

    /// Issues a server certificate (CA:FALSE, serverAuth, ECDSA P-256, valid from a day ago
    /// for ten years) for `names`: strings that parse as IP addresses become IP SANs, the
    /// rest DNS SANs. The first name is also the subject's common name.
    pub fn issue(&self, names: &[&str]) -> Result<IssuedCert, Error> {
        let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256)
            .map_err(|e| certificate_error("generating a leaf key", e))?;
        let mut params = CertificateParams::default();
        params.distinguished_name = name(names.first().copied().unwrap_or("localpg"));
        params.subject_alt_names = names
            .iter()
            .map(|name| san(name))
            .collect::<Result<_, _>>()?;
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        params.use_authority_key_identifier_extension = true;
        set_validity(&mut params);
        let cert = params
            .signed_by(&key, &self.issuer, &self.key)
            .map_err(|e| certificate_error(format!("signing a leaf for {names:?}"), e))?;
        Ok(IssuedCert {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
        })
    }
}

/// A leaf certificate and its private key, PEM-encoded.
#[derive(Clone)]
pub struct IssuedCert {
    pub cert_pem: String,
    /// PKCS#8 private key.
    pub key_pem: String,
}

impl std::fmt::Debug for IssuedCert {
    /// Shows the certificate but never the key.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IssuedCert")
            .field("cert_pem", &self.cert_pem)
            .finish_non_exhaustive()
    }
}

impl IssuedCert {
    /// Writes the certificate (mode 0644) and the private key (mode 0600).
    pub fn write(&self, cert_path: &Path, key_path: &Path) -> Result<(), Error> {
        write_pair(cert_path, &self.cert_pem, key_path, &self.key_pem)
    }
}

fn name(common_name: &str) -> DistinguishedName {
    let mut name = DistinguishedName::new();
    name.push(DnType::CommonName, common_name);
    name
}

fn san(name: &str) -> Result<SanType, Error> {
    if let Ok(ip) = name.parse::<IpAddr>() {
        return Ok(SanType::IpAddress(ip));
    }
    let dns = name
        .to_owned()
        .try_into()
        .map_err(|e| certificate_error(format!("DNS name {name:?}"), e))?;
    Ok(SanType::DnsName(dns))
}

/// Backdated a day so that a peer with a slightly slow clock accepts it at once; a random
/// serial so that two certificates from one CA never share issuer and serial.
fn set_validity(params: &mut CertificateParams) {
    let now = SystemTime::now();
    params.not_before = (now - DAY).into();
    params.not_after = (now + LIFETIME).into();
    let mut serial: [u8; 16] = rand::random();
    serial[0] &= 0x7f; // a positive INTEGER without a leading zero byte
    params.serial_number = Some(SerialNumber::from_slice(&serial));
}

fn certificate_error(what: impl Into<String>, source: rcgen::Error) -> Error {
    Error::Certificate {
        what: what.into(),
        source,
    }
}

fn read(path: &Path) -> Result<String, Error> {
    std::fs::read_to_string(path).map_err(|e| Error::io(format!("reading {}", path.display()), e))
}

fn write_pair(cert_path: &Path, cert: &str, key_path: &Path, key: &str) -> Result<(), Error> {
    write_with_mode(cert_path, cert, 0o644)?;
    write_with_mode(key_path, key, 0o600)
}

/// Writes `contents` to `path` with exactly `mode`, also when the file already existed with
/// another mode (the open mode only applies to new files).
fn write_with_mode(path: &Path, contents: &str, mode: u32) -> Result<(), Error> {
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(mode)
        .open(path)
        .map_err(|e| Error::io(format!("creating {}", path.display()), e))?;
    file.set_permissions(std::fs::Permissions::from_mode(mode))
        .and_then(|()| file.write_all(contents.as_bytes()))
        .map_err(|e| Error::io(format!("writing {}", path.display()), e))
}
