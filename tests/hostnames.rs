//! Tenants' own host names with their own certificates (docs/routing.md "Custom host
//! names"), end to end: `POST /v1/tenants/{id}/hostnames` with a certificate from the
//! customer's own CA; psql (`verify-full`, `channel_binding=require`: SCRAM-SHA-256-PLUS
//! bound to that certificate) and tokio-postgres reach the tenant by that name and
//! verify that certificate; a
//! replaced certificate is served to the next connection; a removed name is refused;
//! another tenant cannot take the name; invalid requests are 422 naming the field; the
//! CLI lists and removes; the audit log has every change and no key.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use localpg::tls::CertificateAuthority;
use serde_json::{json, Value};
use testkit::{pg_connect, psql, PgTarget, TwoTenants};

const BIN: &str = env!("CARGO_BIN_EXE_sluice");
const NAME: &str = "db.customer.test";

/// A customer's CA and a certificate it issued for `names`, written under `dir/<tag>`:
/// (CA file, cert PEM, key PEM).
fn customer_pki(dir: &Path, tag: &str, names: &[&str]) -> (PathBuf, String, String) {
    let ca = CertificateAuthority::generate(&format!("Customer CA {tag}")).unwrap();
    let ca_file = dir.join(format!("customer-{tag}-ca.crt"));
    std::fs::write(&ca_file, ca.cert_pem()).unwrap();
    let issued = ca.issue(names).unwrap();
    (ca_file, issued.cert_pem, issued.key_pem)
}

/// How `app` reaches acme by the custom name, trusting `ca`.
fn by_name(env: &TwoTenants, ca: &Path) -> PgTarget {
    let mut target = env.target("acme");
    target.sni_host = Some(NAME.into());
    target.ca = ca.to_owned();
    target
}

fn add(env: &TwoTenants, tenant: &str, body: &Value) -> testkit::http::HttpResponse {
    env.sluice.api(
        "POST",
        &format!("/v1/tenants/{tenant}/hostnames"),
        &body.to_string(),
        "",
    )
}

/// tokio-postgres over rustls, which checks the certificate against `target.ca` and
/// the host name; the tenant reached. (tokio-postgres-rustls 0.13 gives tokio-postgres
/// no channel-binding data for any certificate, the listener's included, so
/// SCRAM-SHA-256-PLUS is required with psql instead.)
async fn login(target: &PgTarget) -> Result<String, tokio_postgres::Error> {
    let config = testkit::clients::pg_config(target);
    let (client, connection) = config
        .connect(testkit::clients::tls_connector(&target.ca))
        .await?;
    tokio::spawn(connection);
    let row = client
        .query_one("select tenant from tenant_marker", &[])
        .await?;
    Ok(row.get(0))
}

/// A client that checks no certificate at all (what `sslmode=require` does in libpq),
/// so the test can see what Sluice answers for a name it does not serve.
mod trust_anything {
    use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
    use rustls::crypto::{verify_tls12_signature, verify_tls13_signature, CryptoProvider};
    use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
    use rustls::{DigitallySignedStruct, SignatureScheme};

    #[derive(Debug)]
    pub struct Verifier(pub CryptoProvider);

    impl ServerCertVerifier for Verifier {
        fn verify_server_cert(
            &self,
            _: &CertificateDer<'_>,
            _: &[CertificateDer<'_>],
            _: &ServerName<'_>,
            _: &[u8],
            _: UnixTime,
        ) -> Result<ServerCertVerified, rustls::Error> {
            Ok(ServerCertVerified::assertion())
        }
        fn verify_tls12_signature(
            &self,
            message: &[u8],
            cert: &CertificateDer<'_>,
            dss: &DigitallySignedStruct,
        ) -> Result<HandshakeSignatureValid, rustls::Error> {
            verify_tls12_signature(
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
            verify_tls13_signature(
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
}

/// Logs in by `target`'s host name without checking the certificate served.
async fn unverified_login(target: &PgTarget) -> Result<(), tokio_postgres::Error> {
    let provider = rustls::crypto::ring::default_provider();
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(provider.clone()))
        .with_safe_default_protocol_versions()
        .unwrap()
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(trust_anything::Verifier(provider)))
        .with_no_client_auth();
    let tls = tokio_postgres_rustls::MakeRustlsConnect::new(config);
    let (client, connection) = testkit::clients::pg_config(target).connect(tls).await?;
    tokio::spawn(connection);
    client.simple_query("select 1").await?;
    Ok(())
}

fn sqlstate(err: &tokio_postgres::Error) -> String {
    err.as_db_error()
        .map(|e| e.code().code().to_owned())
        .unwrap_or_else(|| format!("no db error: {err}"))
}

#[tokio::test]
async fn a_tenants_own_host_name_is_served_with_its_own_certificate() {
    let env = TwoTenants::start(BIN.as_ref(), |_| {}).expect("test environment");
    let dir = env.dir.path();
    let (ca1, cert1, key1) = customer_pki(dir, "1", &[NAME]);

    // Not served before it is added: a client that checks nothing is told no tenant.
    let err = unverified_login(&by_name(&env, &ca1)).await.unwrap_err();
    assert_eq!(sqlstate(&err), "08004", "{err}");

    let r = add(
        &env,
        "acme",
        &json!({"hostname": "DB.Customer.test", "cert": cert1, "key": key1}),
    );
    assert_eq!(r.status, 201, "{}", r.body);
    let added = r.json();
    assert_eq!(added["hostname"], NAME);
    assert_eq!(added["tenant"], "acme");
    assert_eq!(added["sans"], json!([NAME]));
    assert!(added.get("key").is_none(), "{added}");
    let first_fingerprint = added["fingerprint"].as_str().unwrap().to_owned();

    // psql, verify-full against the customer's CA, SNI from host=: the tenant, and
    // SCRAM-SHA-256-PLUS bound to the customer's certificate.
    let mut strict = by_name(&env, &ca1);
    strict.conninfo_extra = Some("channel_binding=require".into());
    let out = psql(&strict, "select tenant from tenant_marker");
    assert!(out.success, "psql: {}\n{}", out.stderr, env.sluice.log());
    assert_eq!(out.stdout, "acme");
    // tokio-postgres (rustls verifies the name against the customer's CA).
    let tenant = login(&by_name(&env, &ca1)).await.expect("tokio-postgres");
    assert_eq!(tenant, "acme");
    // The proxy's own names still get the proxy's certificate.
    let client = pg_connect(&env.target("globex")).await.expect("globex");
    drop(client);
    // A session open across the replacement keeps running.
    let open = pg_connect(&by_name(&env, &ca1))
        .await
        .expect("before replace");

    // Replacing the certificate (another CA this time): the next connection is served
    // the new one; a client still trusting only the old CA fails the handshake.
    let (ca2, cert2, key2) = customer_pki(dir, "2", &[NAME, "pg.customer.test"]);
    let r = add(
        &env,
        "acme",
        &json!({"hostname": NAME, "cert": cert2, "key": key2}),
    );
    assert_eq!(r.status, 201, "replaced: {}", r.body);
    assert_ne!(r.json()["updated_at"], r.json()["created_at"]);
    assert_ne!(r.json()["fingerprint"], first_fingerprint.as_str());
    let tenant = login(&by_name(&env, &ca2)).await.expect("new cert");
    assert_eq!(tenant, "acme");
    let mut strict = by_name(&env, &ca2);
    strict.conninfo_extra = Some("channel_binding=require".into());
    let out = psql(&strict, "select tenant from tenant_marker");
    assert!(out.success, "psql after replace: {}", out.stderr);
    let err = pg_connect(&by_name(&env, &ca1)).await.unwrap_err();
    assert!(err.as_db_error().is_none(), "a TLS failure: {err}");
    let out = psql(&by_name(&env, &ca1), "select 1");
    assert!(
        !out.success,
        "the old CA must not verify the new certificate"
    );
    let row = open.query_one("select 1", &[]).await.expect("still open");
    assert_eq!(row.get::<_, i32>(0), 1);

    // Another tenant cannot take the name, even with a valid certificate of its own.
    let (_, cert3, key3) = customer_pki(dir, "3", &[NAME]);
    let r = add(
        &env,
        "globex",
        &json!({"hostname": NAME, "cert": cert3, "key": key3}),
    );
    assert_eq!(r.status, 409, "{}", r.body);
    assert_eq!(r.json()["error"]["code"], "conflict");

    // A suspended tenant's name is refused as the tenant is (28000).
    let r = env.sluice.api(
        "POST",
        "/v1/tenants/acme/suspend",
        r#"{"reason": "test"}"#,
        "",
    );
    assert_eq!(r.status, 200, "{}", r.body);
    let err = login(&by_name(&env, &ca2)).await.unwrap_err();
    assert_eq!(sqlstate(&err), "28000", "{err}");
    let r = env.sluice.api("POST", "/v1/tenants/acme/resume", "", "");
    assert_eq!(r.status, 200, "{}", r.body);

    // Listed without the key.
    let r = env.sluice.api("GET", "/v1/tenants/acme/hostnames", "", "");
    assert_eq!(r.status, 200, "{}", r.body);
    let list = r.json();
    assert_eq!(list["hostnames"].as_array().unwrap().len(), 1, "{list}");
    assert_eq!(
        list["hostnames"][0]["sans"],
        json!([NAME, "pg.customer.test"])
    );
    assert!(!r.body.contains("PRIVATE KEY"), "{}", r.body);
    // Nor is the key in the catalog snapshot (sealed there).
    let snapshot = std::fs::read_to_string(dir.join("sluice/data/catalog.snapshot")).unwrap();
    assert!(snapshot.contains(NAME));
    assert!(!snapshot.contains("PRIVATE KEY"));

    // The CLI lists the name, and removes it.
    let cli = |args: &[&str]| {
        let out = std::process::Command::new(BIN)
            .args(args)
            .env("SLUICE_API", format!("http://{}", env.sluice.admin_addr))
            .env("SLUICE_TOKEN", &env.sluice.admin_key)
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        assert!(
            out.status.success(),
            "sluice {args:?}: {stdout}{}",
            String::from_utf8_lossy(&out.stderr)
        );
        stdout
    };
    let listed = cli(&["tenants", "hostnames", "list", "acme"]);
    assert!(listed.starts_with("HOSTNAME"), "{listed}");
    assert!(listed.contains(NAME), "{listed}");
    let removed = cli(&["tenants", "hostnames", "remove", "acme", NAME]);
    assert!(removed.contains("removed"), "{removed}");

    // Removed: refused from the next connection on (no tenant named: 08004); a client
    // that verifies the customer's certificate fails the handshake instead.
    let err = unverified_login(&by_name(&env, &ca2)).await.unwrap_err();
    assert_eq!(sqlstate(&err), "08004", "{err}");
    let out = psql(&by_name(&env, &ca2), "select 1");
    assert!(!out.success);
    let r = env.sluice.api(
        "DELETE",
        &format!("/v1/tenants/acme/hostnames/{NAME}"),
        "",
        "",
    );
    assert_eq!(r.status, 404, "{}", r.body);
    // The CLI adds from files too.
    let (cert_file, key_file) = (dir.join("c.pem"), dir.join("k.pem"));
    std::fs::write(&cert_file, &cert2).unwrap();
    std::fs::write(&key_file, &key2).unwrap();
    let cert_arg = cert_file.to_str().unwrap();
    let key_arg = key_file.to_str().unwrap();
    let added = cli(&[
        "tenants",
        "hostnames",
        "add",
        "acme",
        NAME,
        "--cert",
        cert_arg,
        "--key",
        key_arg,
    ]);
    assert!(added.contains(NAME), "{added}");
    let tenant = login(&by_name(&env, &ca2)).await.expect("added again");
    assert_eq!(tenant, "acme");

    // The audit log has every change (actor, target, certificate), never a key.
    let r = env
        .sluice
        .api("GET", "/v1/audit-events?tenant=acme&limit=100", "", "");
    assert_eq!(r.status, 200);
    assert!(!r.body.contains("PRIVATE KEY"));
    let events = r.json()["events"].as_array().unwrap().clone();
    let ours: Vec<(String, Value)> = events
        .iter()
        .filter(|e| e["action"].as_str().unwrap().starts_with("hostname."))
        .map(|e| {
            (
                e["action"].as_str().unwrap().to_owned(),
                e["details"].clone(),
            )
        })
        .collect();
    let actions: Vec<&str> = ours.iter().map(|(a, _)| a.as_str()).collect();
    // Newest first: added again by the CLI, removed by the CLI, replaced, added.
    assert_eq!(
        actions,
        [
            "hostname.add",
            "hostname.remove",
            "hostname.add",
            "hostname.add"
        ],
        "{events:?}"
    );
    assert_eq!(ours[2].1["replaced"], true);
    assert_eq!(ours[3].1["replaced"], false);
    assert_eq!(ours[3].1["fingerprint"], first_fingerprint.as_str());
    for e in &events {
        if e["action"].as_str().unwrap().starts_with("hostname.") {
            assert_eq!(e["target"], format!("acme/hostnames/{NAME}"));
            assert!(e["actor"].is_string());
        }
    }
}

#[tokio::test]
async fn invalid_host_names_and_certificates_are_422_naming_the_field() {
    let env = TwoTenants::start(BIN.as_ref(), |_| {}).expect("test environment");
    let dir = env.dir.path();
    let (_, cert, key) = customer_pki(dir, "1", &[NAME]);
    let (_, _, other_key) = customer_pki(dir, "2", &[NAME]);
    let (_, under_suffix_cert, under_suffix_key) =
        customer_pki(dir, "3", &["shop.db.example.test"]);
    let expired = {
        let key = rcgen::KeyPair::generate().unwrap();
        let mut params = rcgen::CertificateParams::new(vec![NAME.to_owned()]).unwrap();
        params.not_before = rcgen::date_time_ymd(2020, 1, 1);
        params.not_after = rcgen::date_time_ymd(2021, 1, 1);
        (params.self_signed(&key).unwrap().pem(), key.serialize_pem())
    };
    let cases = [
        (
            "hostname",
            json!({"hostname": "db_customer.test", "cert": cert, "key": key}),
        ),
        (
            "hostname",
            json!({"hostname": "127.0.0.1", "cert": cert, "key": key}),
        ),
        (
            "hostname",
            json!({"hostname": "*.customer.test", "cert": cert, "key": key}),
        ),
        (
            "hostname",
            json!({"hostname": "shop.db.example.test", "cert": under_suffix_cert, "key": under_suffix_key}),
        ),
        (
            "cert",
            json!({"hostname": NAME, "cert": "not a certificate", "key": key}),
        ),
        (
            "cert",
            json!({"hostname": "pg.customer.test", "cert": cert, "key": key}),
        ),
        (
            "cert",
            json!({"hostname": NAME, "cert": expired.0, "key": expired.1}),
        ),
        (
            "key",
            json!({"hostname": NAME, "cert": cert, "key": "not a key"}),
        ),
        (
            "key",
            json!({"hostname": NAME, "cert": cert, "key": other_key}),
        ),
        ("key", json!({"hostname": NAME, "cert": cert})),
        (
            "colour",
            json!({"hostname": NAME, "cert": cert, "key": key, "colour": 1}),
        ),
    ];
    for (field, body) in cases {
        let r = add(&env, "acme", &body);
        assert_eq!(r.status, 422, "{field}: {}", r.body);
        let error = r.json();
        assert_eq!(error["error"]["code"], "invalid_request");
        let message = error["error"]["message"].as_str().unwrap();
        assert!(
            message.starts_with(&format!("{field}: ")) || message.contains(&format!("`{field}`")),
            "{field}: {message}"
        );
    }
    // Nothing was stored, nothing audited; an unknown tenant is 404.
    let r = env.sluice.api("GET", "/v1/tenants/acme/hostnames", "", "");
    assert_eq!(r.json(), json!({"hostnames": []}));
    let r = env
        .sluice
        .api("GET", "/v1/audit-events?action=hostname.add", "", "");
    assert_eq!(r.json()["events"], json!([]), "{}", r.body);
    let r = add(
        &env,
        "nobody",
        &json!({"hostname": NAME, "cert": cert, "key": key}),
    );
    assert_eq!(r.status, 404, "{}", r.body);
}
