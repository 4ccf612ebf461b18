//! The routing fallbacks (docs/routing.md): `[proxy] default_tenant` for clients that
//! name no tenant, and `[proxy] tenant_from_user` for user names `<role>.<tenant>`,
//! with real clients (psql and tokio-postgres) and no SNI.

use testkit::cluster::{APP_ROLE, MD5_ROLE};
use testkit::http::get;
use testkit::{pg_connect, psql, scalar, PgTarget, TwoTenants};

const BIN: &str = env!("CARGO_BIN_EXE_sluice");

fn sqlstate(err: &tokio_postgres::Error) -> String {
    err.as_db_error()
        .map(|e| e.code().code().to_owned())
        .unwrap_or_else(|| format!("no db error: {err}"))
}

fn message(err: &tokio_postgres::Error) -> String {
    err.as_db_error()
        .map(|e| e.message().to_owned())
        .unwrap_or_default()
}

/// `tenant`'s credentials, connecting over TLS to Sluice's IP address: libpq and
/// rustls send no SNI for an address, so no tenant is named by the server name.
fn no_sni(env: &TwoTenants, tenant: &str) -> PgTarget {
    let mut target = env.target(tenant);
    target.sni_host = None;
    target.sslmode = "require";
    target
}

/// Which tenant's backend the client reached, and as which role.
async fn where_am_i(target: &PgTarget) -> Result<(String, String), tokio_postgres::Error> {
    let client = pg_connect(target).await?;
    let tenant: String = scalar(&client, "select tenant from tenant_marker").await;
    let role: String = scalar(&client, "select current_user::text").await;
    Ok((tenant, role))
}

#[tokio::test]
async fn default_tenant_takes_clients_that_name_none() {
    let env = TwoTenants::start(BIN.as_ref(), |c| {
        c.proxy_extra = vec!["default_tenant = \"globex\"".into()];
    })
    .expect("test environment");

    // No SNI, no options: the default tenant, with tokio-postgres and psql.
    let target = no_sni(&env, "globex");
    let (tenant, role) = where_am_i(&target).await.expect("default tenant");
    assert_eq!((tenant.as_str(), role.as_str()), ("globex", APP_ROLE));
    let out = psql(&target, "select tenant from tenant_marker");
    assert!(out.success, "psql: {}", out.stderr);
    assert_eq!(out.stdout, "globex");

    // Every way of naming a tenant wins over the default.
    let (tenant, _) = where_am_i(&env.target("acme")).await.expect("SNI");
    assert_eq!(tenant, "acme");
    let mut by_options = no_sni(&env, "acme");
    by_options.options = Some("-c tenant=acme".into());
    let (tenant, _) = where_am_i(&by_options).await.expect("options");
    assert_eq!(tenant, "acme");
    let out = psql(&by_options, "select tenant from tenant_marker");
    assert!(out.success, "psql: {}", out.stderr);
    assert_eq!(out.stdout, "acme");

    // The default does not relax require_tls.
    let mut plaintext = no_sni(&env, "globex");
    plaintext.sslmode = "disable";
    let err = where_am_i(&plaintext).await.unwrap_err();
    assert_eq!(sqlstate(&err), "28000", "{err}");

    // tenant_from_user is off: `app.acme` is a role name of the default tenant.
    let mut dotted = no_sni(&env, "acme");
    dotted.user = "app.acme".into();
    let err = where_am_i(&dotted).await.unwrap_err();
    assert_eq!(sqlstate(&err), "28P01", "{err}");
    assert!(message(&err).contains("user \"app.acme\""), "{err}");
}

#[tokio::test]
async fn default_tenant_over_plaintext_when_tls_is_not_required() {
    let env = TwoTenants::start(BIN.as_ref(), |c| {
        c.require_tls = false;
        c.tenant_from_options = false;
        c.proxy_extra = vec!["default_tenant = \"acme\"".into()];
    })
    .expect("test environment");
    let mut plaintext = no_sni(&env, "acme");
    plaintext.sslmode = "disable";
    let out = psql(&plaintext, "select tenant from tenant_marker");
    assert!(out.success, "psql: {}", out.stderr);
    assert_eq!(out.stdout, "acme");
    // tenant_from_options = false: the word is the backend's, which rejects it, so
    // the client is not routed by it.
    plaintext.options = Some("-c tenant=globex".into());
    let out = psql(&plaintext, "select tenant from tenant_marker");
    assert!(!out.success, "options must not route: {}", out.stdout);
}

#[tokio::test]
async fn user_suffix_names_tenant_and_role() {
    let mut env = TwoTenants::start(BIN.as_ref(), |c| {
        c.require_tls = false;
        c.proxy_extra = vec!["tenant_from_user = true".into()];
    })
    .expect("test environment");

    // psql over plaintext, no SNI: `app.globex` is role app of tenant globex.
    let mut plain = no_sni(&env, "globex");
    plain.sslmode = "disable";
    plain.user = "app.globex".into();
    let out = psql(
        &plain,
        "select tenant || ' ' || current_user from tenant_marker",
    );
    assert!(out.success, "psql: {}", out.stderr);
    assert_eq!(out.stdout, "globex app");

    // tokio-postgres over TLS without SNI (SCRAM-SHA-256-PLUS).
    let mut tls = no_sni(&env, "acme");
    tls.user = "app.acme".into();
    let client = pg_connect(&tls).await.expect("app.acme");
    let tenant: String = scalar(&client, "select tenant from tenant_marker").await;
    let role: String = scalar(&client, "select current_user::text").await;
    assert_eq!((tenant.as_str(), role.as_str()), ("acme", "app"));
    // The pool and the stats are the stripped role's.
    let key = env.sluice.admin_key.as_str();
    let stats = get(env.sluice.admin_addr, "/v1/tenants/acme/stats", Some(key));
    assert_eq!(stats.status, 200, "{}", stats.body);
    let stats = stats.json();
    let roles: Vec<&str> = stats["pools"]
        .as_array()
        .expect("pools")
        .iter()
        .map(|p| p["role"].as_str().unwrap())
        .collect();
    assert_eq!(roles, ["app"], "{stats}");
    drop(client);

    // SNI (or options) and the user name must agree.
    let mut both = env.target("acme");
    both.user = "app.acme".into();
    let (tenant, role) = where_am_i(&both).await.expect("SNI acme, user app.acme");
    assert_eq!((tenant.as_str(), role.as_str()), ("acme", "app"));
    both.user = "app.globex".into();
    let err = where_am_i(&both).await.unwrap_err();
    assert_eq!(sqlstate(&err), "08004", "{err}");
    assert_eq!(
        message(&err),
        "the server name names tenant \"acme\" but the user name names tenant \"globex\""
    );
    let mut by_options = no_sni(&env, "acme");
    by_options.options = Some("tenant=acme".into());
    by_options.user = "app.globex".into();
    let err = where_am_i(&by_options).await.unwrap_err();
    assert_eq!(sqlstate(&err), "08004", "{err}");
    let out = psql(&by_options, "select 1");
    assert!(!out.success);
    assert!(
        out.stderr
            .contains("the options parameter names tenant \"acme\" but the user name"),
        "{}",
        out.stderr
    );

    // A wrong password is refused for the stripped role.
    let mut wrong = tls.clone();
    wrong.password = "wrong".into();
    let err = where_am_i(&wrong).await.unwrap_err();
    assert_eq!(sqlstate(&err), "28P01", "{err}");
    assert!(message(&err).contains("user \"app\""), "{err}");

    // md5 cannot work: the client hashes the name it sent (`md5user.acme`).
    let mut md5 = tls.clone();
    md5.user = format!("{MD5_ROLE}.acme");
    let err = where_am_i(&md5).await.unwrap_err();
    assert_eq!(sqlstate(&err), "28P01", "{err}");

    // A role whose suffix is no tenant keeps its dots.
    env.acme
        .stop(localpg::StopMode::Fast)
        .expect("stopping acme");
    let verifier = testkit::cluster::scram_verifier("dotted-pw");
    env.acme
        .cluster
        .run_single_user(&format!(
            "CREATE ROLE \"first.last\" LOGIN PASSWORD '{verifier}';\n\
             GRANT {APP_ROLE} TO \"first.last\""
        ))
        .expect("creating first.last");
    env.acme.restart().expect("restarting acme");
    let mut dotted = env.target("acme");
    dotted.user = "first.last".into();
    dotted.password = "dotted-pw".into();
    let (tenant, role) = where_am_i(&dotted).await.expect("first.last via SNI");
    assert_eq!((tenant.as_str(), role.as_str()), ("acme", "first.last"));
    // Without SNI or options it names no tenant at all.
    let mut dotted_no_sni = no_sni(&env, "acme");
    dotted_no_sni.user = "first.last".into();
    dotted_no_sni.password = "dotted-pw".into();
    let err = where_am_i(&dotted_no_sni).await.unwrap_err();
    assert_eq!(sqlstate(&err), "08004", "{err}");
    assert!(message(&err).contains("<role>.<tenant>"), "{err}");
}
