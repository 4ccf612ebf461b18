//! Authentication through Sluice when a role's password changes on the tenant's own
//! backend (`ALTER ROLE … PASSWORD` on a direct connection), while Sluice's secret cache
//! still holds the old secret (docs/auth.md, "The secret cache").

use testkit::cluster::{APP_DATABASE, MD5_ROLE};
use testkit::{pg_connect, PgTarget, TestCluster, TwoTenants};

const BIN: &str = env!("CARGO_BIN_EXE_sluice");

/// An hour: nothing in these tests waits for the cache to expire.
fn env() -> TwoTenants {
    TwoTenants::start(BIN.as_ref(), |c| {
        c.proxy_extra = vec!["auth_cache_ttl_s = 3600".into()]
    })
    .expect("test environment")
}

fn sqlstate(err: &tokio_postgres::Error) -> String {
    err.as_db_error()
        .map(|e| e.code().code().to_owned())
        .unwrap_or_else(|| format!("no db error: {err}"))
}

/// Runs `sql` on `cluster` directly (not through Sluice) as `role`.
fn direct(cluster: &TestCluster, role: &str, password: &str, sql: &str) {
    let out = std::process::Command::new("psql")
        .arg(format!(
            "host={} port={} user={role} dbname={APP_DATABASE}",
            cluster.socket_dir.display(),
            cluster.cluster.socket_port()
        ))
        .args(["-XAtq", "-v", "ON_ERROR_STOP=1", "-c", sql])
        .env("PGPASSWORD", password)
        .output()
        .expect("running psql");
    assert!(
        out.status.success(),
        "{sql}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn with_password(target: &PgTarget, password: &str) -> PgTarget {
    PgTarget {
        password: password.into(),
        ..target.clone()
    }
}

#[tokio::test]
async fn an_md5_password_changed_on_the_backend_works_at_once() {
    let env = env();
    let old = PgTarget {
        user: MD5_ROLE.into(),
        ..env.target("acme")
    };
    pg_connect(&old)
        .await
        .expect("the old password, now cached");

    direct(
        &env.acme,
        MD5_ROLE,
        &old.password,
        "SET password_encryption = 'md5'; ALTER ROLE md5user PASSWORD 'changed-md5'",
    );
    // Sluice's md5 salt is its own, so the client's answer is checked again against
    // the secret read anew when the cached one does not match: the first attempt passes.
    let new = with_password(&old, "changed-md5");
    let client = pg_connect(&new)
        .await
        .expect("the new password, on the first attempt");
    client.simple_query("select 1").await.expect("a query");

    let err = pg_connect(&old).await.expect_err("the old password");
    assert_eq!(sqlstate(&err), "28P01", "{err}");
}

#[tokio::test]
async fn a_scram_password_changed_on_the_backend_works_from_the_next_attempt() {
    let env = env();
    let old = env.target("acme");
    pg_connect(&old)
        .await
        .expect("the old password, now cached");

    direct(
        &env.acme,
        "app",
        &old.password,
        "ALTER ROLE app PASSWORD 'changed-scram'",
    );
    let new = with_password(&old, "changed-scram");
    // The first attempt is checked against the cached verifier: Sluice has sent its
    // salt in server-first, and the client's proof is bound to it, so no second look
    // can accept it (docs/auth.md). The failure reads the verifier again at once ...
    let err = pg_connect(&new).await.expect_err("the first attempt");
    assert_eq!(sqlstate(&err), "28P01", "{err}");
    // ... so the next attempt passes, an hour before the cache entry would expire.
    let client = pg_connect(&new)
        .await
        .expect("the new password, on the next attempt");
    client.simple_query("select 1").await.expect("a query");

    let err = pg_connect(&old).await.expect_err("the old password");
    assert_eq!(sqlstate(&err), "28P01", "{err}");
}
