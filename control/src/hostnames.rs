//! A tenant's own host names (`db.customer.com`), each with its own certificate: what
//! one must be before the store takes it.
//!
//! [`inspect`] checks a host name with the certificate chain and private key offered
//! for it, the way a client would see them: the name is a DNS name (not an IP address,
//! no wildcard), not under the proxy's own `sni_suffix`; the chain is PEM and its first
//! certificate parses; the key is PEM and is that certificate's key; the certificate
//! covers the name (its subject alternative names, by the rules TLS clients use) and has
//! not expired. Each failure names the field at fault ([`HostnameError`]). What passes
//! is summed up for listings ([`CertSummary`]: subject, DNS names, expiry, fingerprint).
//!
//! The key is stored sealed under [`key_secret`]'s name; the proxy serves the pair when
//! a client's TLS server name is exactly the host name (docs/routing.md).

use std::time::{Duration, SystemTime};

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use sha2::{Digest, Sha256};

/// Longest certificate chain or key accepted, in bytes of PEM (the API's body is at most
/// 64 KiB anyway).
const MAX_PEM: usize = 32 * 1024;

/// Why a host name, certificate or key was refused, and which field (`hostname`,
/// `cert`, `key`) it was.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {message}")]
pub struct HostnameError {
    pub field: &'static str,
    pub message: String,
}

fn refuse(field: &'static str, message: impl Into<String>) -> HostnameError {
    HostnameError {
        field,
        message: message.into(),
    }
}

/// What a listing shows of a host name's certificate (never the key).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertSummary {
    /// The leaf certificate's subject, as `CN=db.customer.com, O=...`.
    pub subject: String,
    /// Its DNS subject alternative names.
    pub sans: Vec<String>,
    pub not_after: SystemTime,
    /// SHA-256 of the leaf certificate (DER), lowercase hex.
    pub fingerprint: String,
}

/// The secret name a host name's key is sealed under (its associated data).
pub fn key_secret(tenant: &str, hostname: &str) -> String {
    format!("tenant/{tenant}/hostnames/{hostname}")
}

/// The host name as stored: lowercase, without a trailing dot; refused unless it is a
/// DNS name of at least two labels (letters, digits, hyphens; 1–63 bytes each, 253 in
/// all), not an IP address and not a wildcard.
pub fn normalize(hostname: &str) -> Result<String, HostnameError> {
    let name = hostname.strip_suffix('.').unwrap_or(hostname);
    let name = name.to_ascii_lowercase();
    if name.is_empty() {
        return Err(refuse("hostname", "must not be empty"));
    }
    if name.len() > 253 {
        return Err(refuse("hostname", "at most 253 bytes"));
    }
    if name.parse::<std::net::IpAddr>().is_ok() {
        return Err(refuse(
            "hostname",
            format!(
                "{hostname:?} is an IP address; a host name is needed (SNI carries no addresses)"
            ),
        ));
    }
    if name.starts_with("*.") {
        return Err(refuse(
            "hostname",
            format!("{hostname:?}: wildcards are not host names; add each name"),
        ));
    }
    let labels: Vec<&str> = name.split('.').collect();
    if labels.len() < 2 {
        return Err(refuse(
            "hostname",
            format!("{hostname:?}: a fully qualified name is needed (at least two labels)"),
        ));
    }
    for label in &labels {
        let ok = (1..=63).contains(&label.len())
            && label
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
            && !label.starts_with('-')
            && !label.ends_with('-');
        if !ok {
            return Err(refuse(
                "hostname",
                format!(
                    "{hostname:?} is not a DNS name (labels of 1 to 63 letters, digits and \
                     inner hyphens, separated by dots)"
                ),
            ));
        }
    }
    if labels
        .last()
        .is_some_and(|l| l.bytes().all(|b| b.is_ascii_digit()))
    {
        return Err(refuse(
            "hostname",
            format!("{hostname:?}: the last label cannot be all digits"),
        ));
    }
    Ok(name)
}

/// Checks `hostname` (already [`normalize`]d) with its certificate chain and key, at
/// `now`, for a proxy whose own names are under `sni_suffix`.
pub fn inspect(
    hostname: &str,
    cert_pem: &str,
    key_pem: &str,
    sni_suffix: Option<&str>,
    now: SystemTime,
) -> Result<CertSummary, HostnameError> {
    if let Some(suffix) = sni_suffix.map(|s| s.trim_matches('.').to_ascii_lowercase()) {
        if !suffix.is_empty() && (hostname == suffix || hostname.ends_with(&format!(".{suffix}"))) {
            return Err(refuse(
                "hostname",
                format!(
                    "{hostname:?} is under the proxy's own sni_suffix {suffix:?}: clients reach \
                     tenants there as <tenant>.{suffix} already"
                ),
            ));
        }
    }
    if cert_pem.len() > MAX_PEM {
        return Err(refuse("cert", format!("at most {MAX_PEM} bytes of PEM")));
    }
    if key_pem.len() > MAX_PEM {
        return Err(refuse("key", format!("at most {MAX_PEM} bytes of PEM")));
    }
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(cert_pem.as_bytes())
        .collect::<Result<_, _>>()
        .map_err(|e| refuse("cert", format!("not a PEM certificate chain: {e}")))?;
    let Some(leaf) = chain.first() else {
        return Err(refuse(
            "cert",
            "no certificate in it (expected -----BEGIN CERTIFICATE-----)",
        ));
    };
    let (_, parsed) = x509_parser::parse_x509_certificate(leaf)
        .map_err(|e| refuse("cert", format!("the first certificate does not parse: {e}")))?;
    for (i, der) in chain.iter().enumerate().skip(1) {
        x509_parser::parse_x509_certificate(der).map_err(|e| {
            refuse(
                "cert",
                format!("certificate {} of the chain does not parse: {e}", i + 1),
            )
        })?;
    }
    let key = PrivateKeyDer::from_pem_slice(key_pem.as_bytes()).map_err(|e| {
        refuse(
            "key",
            format!("not a PEM private key (PKCS#8, PKCS#1 or SEC1): {e}"),
        )
    })?;
    let provider = rustls::crypto::ring::default_provider();
    let signing = provider
        .key_provider
        .load_private_key(key)
        .map_err(|e| refuse("key", format!("unusable private key: {e}")))?;
    rustls::sign::CertifiedKey::new(chain.clone(), signing)
        .keys_match()
        .map_err(|e| {
            refuse(
                "key",
                format!("is not the key of the certificate (the first of cert): {e}"),
            )
        })?;
    let server_name = ServerName::try_from(hostname.to_owned())
        .map_err(|e| refuse("hostname", format!("{hostname:?}: {e}")))?;
    let end_entity = webpki::EndEntityCert::try_from(leaf).map_err(|e| {
        refuse(
            "cert",
            format!("the first certificate does not parse: {e:?}"),
        )
    })?;
    let sans = dns_names(&parsed);
    end_entity
        .verify_is_valid_for_subject_name(&server_name)
        .map_err(|_| {
            refuse(
                "cert",
                format!(
                    "does not cover {hostname:?}: its subject alternative names are {}",
                    if sans.is_empty() {
                        "none (a DNS name is needed)".to_owned()
                    } else {
                        sans.join(", ")
                    }
                ),
            )
        })?;
    let not_after_s = parsed.validity().not_after.timestamp();
    let not_after = SystemTime::UNIX_EPOCH
        .checked_add(Duration::from_secs(u64::try_from(not_after_s).unwrap_or(0)))
        .unwrap_or(SystemTime::UNIX_EPOCH);
    if not_after <= now {
        return Err(refuse(
            "cert",
            format!("expired at {} (not_after)", parsed.validity().not_after),
        ));
    }
    Ok(CertSummary {
        subject: parsed.subject().to_string(),
        sans,
        not_after,
        fingerprint: Sha256::digest(leaf.as_ref())
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect(),
    })
}

/// The certificate's DNS subject alternative names.
fn dns_names(cert: &x509_parser::certificate::X509Certificate<'_>) -> Vec<String> {
    use x509_parser::extensions::GeneralName;
    match cert.subject_alternative_name() {
        Ok(Some(san)) => san
            .value
            .general_names
            .iter()
            .filter_map(|name| match name {
                GeneralName::DNSName(dns) => Some((*dns).to_owned()),
                _ => None,
            })
            .collect(),
        _ => Vec::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const NAME: &str = "db.customer.test";

    fn cert_for(names: &[&str]) -> (String, String) {
        let key = rcgen::KeyPair::generate().unwrap();
        let names: Vec<String> = names.iter().map(|n| n.to_string()).collect();
        let cert = rcgen::CertificateParams::new(names)
            .unwrap()
            .self_signed(&key)
            .unwrap();
        (cert.pem(), key.serialize_pem())
    }

    fn check(hostname: &str, (cert, key): &(String, String)) -> Result<CertSummary, HostnameError> {
        inspect(
            hostname,
            cert,
            key,
            Some("db.example.test"),
            SystemTime::now(),
        )
    }

    #[test]
    fn host_names_are_dns_names_in_lowercase() {
        assert_eq!(normalize("DB.Customer.test.").unwrap(), NAME);
        for bad in [
            "",
            "localhost",
            "127.0.0.1",
            "::1",
            "*.customer.test",
            "db..customer.test",
            "-db.customer.test",
            "db_1.customer.test",
            "db.customer.123",
            "db customer.test",
            &format!("{}.test", "a".repeat(64)),
        ] {
            let e = normalize(bad).unwrap_err();
            assert_eq!(e.field, "hostname", "{bad:?}: {e}");
        }
    }

    #[test]
    fn a_matching_certificate_is_summed_up() {
        let pair = cert_for(&[NAME, "other.customer.test"]);
        let summary = check(NAME, &pair).unwrap();
        assert_eq!(summary.sans, [NAME, "other.customer.test"]);
        assert_eq!(summary.fingerprint.len(), 64);
        assert!(summary.not_after > SystemTime::now());
        // A wildcard certificate covers one label below it.
        let wildcard = cert_for(&["*.customer.test"]);
        assert!(check(NAME, &wildcard).is_ok());
        assert!(check("a.db.customer.test", &wildcard).is_err());
    }

    #[test]
    fn each_problem_names_its_field() {
        let pair = cert_for(&[NAME]);
        let other = cert_for(&[NAME]);
        let field = |r: Result<CertSummary, HostnameError>| r.unwrap_err().field;
        assert_eq!(field(check("pg.customer.test", &pair)), "cert");
        assert_eq!(field(check(NAME, &("junk".into(), pair.1.clone()))), "cert");
        assert_eq!(field(check(NAME, &(pair.0.clone(), "junk".into()))), "key");
        assert_eq!(
            field(check(NAME, &(pair.0.clone(), other.1.clone()))),
            "key"
        );
        let under_suffix = cert_for(&["acme.db.example.test"]);
        assert_eq!(
            field(check("acme.db.example.test", &under_suffix)),
            "hostname"
        );
        assert_eq!(field(check("db.example.test", &under_suffix)), "hostname");

        let key = rcgen::KeyPair::generate().unwrap();
        let mut params = rcgen::CertificateParams::new(vec![NAME.to_owned()]).unwrap();
        params.not_before = rcgen::date_time_ymd(2020, 1, 1);
        params.not_after = rcgen::date_time_ymd(2021, 1, 1);
        let expired = (params.self_signed(&key).unwrap().pem(), key.serialize_pem());
        let e = check(NAME, &expired).unwrap_err();
        assert_eq!(e.field, "cert");
        assert!(e.message.contains("expired"), "{e}");
    }
}
