//! Certificates from `localpg::tls`, checked by OpenSSL and by rustls.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Command;
use std::sync::Arc;

use localpg::tls::CertificateAuthority;
use rustls::client::danger::ServerCertVerifier;
use rustls::client::WebPkiServerVerifier;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, ServerName, UnixTime};

fn openssl(args: &[&str]) -> String {
    let output = Command::new("openssl")
        .args(args)
        .output()
        .expect("openssl");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(output.status.success(), "openssl {args:?}: {text}");
    text
}

fn mode(path: &Path) -> u32 {
    std::fs::metadata(path).unwrap().permissions().mode() & 0o777
}

#[test]
fn leaf_verifies_against_the_ca_with_openssl() {
    let dir = tempfile::tempdir().unwrap();
    let path = |name: &str| dir.path().join(name).to_str().unwrap().to_owned();
    let ca = CertificateAuthority::generate("localpg test CA").unwrap();
    ca.write(Path::new(&path("ca.crt")), Path::new(&path("ca.key")))
        .unwrap();
    let leaf = ca
        .issue(&["localhost", "127.0.0.1", "*.db.example.test"])
        .unwrap();
    leaf.write(Path::new(&path("leaf.crt")), Path::new(&path("leaf.key")))
        .unwrap();

    assert_eq!(mode(Path::new(&path("ca.key"))), 0o600);
    assert_eq!(mode(Path::new(&path("leaf.key"))), 0o600);
    assert_eq!(mode(Path::new(&path("leaf.crt"))), 0o644);

    let verified = openssl(&[
        "verify",
        "-x509_strict",
        "-purpose",
        "sslserver",
        "-CAfile",
        &path("ca.crt"),
        &path("leaf.crt"),
    ]);
    assert!(verified.contains(": OK"), "{verified}");

    let text = openssl(&["x509", "-noout", "-text", "-in", &path("leaf.crt")]);
    for expected in [
        "CA:FALSE",
        "TLS Web Server Authentication",
        "DNS:localhost",
        "IP Address:127.0.0.1",
        "DNS:*.db.example.test",
        "X509v3 Authority Key Identifier",
        "prime256v1",
    ] {
        assert!(text.contains(expected), "leaf lacks {expected}:\n{text}");
    }
    let ca_text = openssl(&["x509", "-noout", "-text", "-in", &path("ca.crt")]);
    assert!(ca_text.contains("CA:TRUE"), "{ca_text}");
}

#[test]
fn a_loaded_ca_issues_leaves_that_chain_to_the_original_file() {
    let dir = tempfile::tempdir().unwrap();
    let (ca_crt, ca_key) = (dir.path().join("ca.crt"), dir.path().join("ca.key"));
    let original = CertificateAuthority::generate("reloaded CA").unwrap();
    original.write(&ca_crt, &ca_key).unwrap();

    let loaded = CertificateAuthority::load(&ca_crt, &ca_key).unwrap();
    assert_eq!(loaded.cert_pem(), original.cert_pem());
    let leaf = loaded.issue(&["localhost"]).unwrap();
    let leaf_crt = dir.path().join("leaf.crt");
    leaf.write(&leaf_crt, &dir.path().join("leaf.key")).unwrap();

    let verified = openssl(&[
        "verify",
        "-CAfile",
        ca_crt.to_str().unwrap(),
        leaf_crt.to_str().unwrap(),
    ]);
    assert!(verified.contains(": OK"), "{verified}");
}

#[test]
fn rustls_accepts_the_leaf_for_its_names_only() {
    let ca = CertificateAuthority::generate("rustls CA").unwrap();
    let leaf = ca.issue(&["localhost", "127.0.0.1"]).unwrap();

    let mut roots = rustls::RootCertStore::empty();
    roots
        .add(CertificateDer::from_pem_slice(ca.cert_pem().as_bytes()).unwrap())
        .unwrap();
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let verifier = WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider)
        .build()
        .unwrap();
    let leaf_der = CertificateDer::from_pem_slice(leaf.cert_pem.as_bytes()).unwrap();
    let verify = |name: &str| {
        let name = ServerName::try_from(name.to_owned()).unwrap();
        verifier.verify_server_cert(&leaf_der, &[], &name, &[], UnixTime::now())
    };
    verify("localhost").expect("DNS name");
    verify("127.0.0.1").expect("IP address");
    assert!(verify("other.example").is_err());
}
