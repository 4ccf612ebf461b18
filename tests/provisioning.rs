//! Provisioning end to end on a real `sluice serve` (embedded control store, the `local`
//! driver making a real Postgres cluster per tenant): the whole story through raw HTTP
//! (create → job → role → connect by SNI → PATCH seen live → rotate → suspend/terminate
//! → resume → delete → 3D000), `Idempotency-Key`, and bad create requests that leave
//! nothing behind.

use std::path::Path;
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use testkit::clients::{pg_connect, PgTarget};
use testkit::http::{request, HttpResponse};
use testkit::{Pki, SluiceConfig, SluiceProcess};

const BIN: &str = env!("CARGO_BIN_EXE_sluice");

fn call(sluice: &SluiceProcess, method: &str, path: &str, body: &str, extra: &str) -> HttpResponse {
    let mut headers = String::from(extra);
    if !body.is_empty() {
        headers.push_str("Content-Type: application/json\r\n");
    }
    request(
        sluice.admin_addr,
        method,
        path,
        Some(&sluice.admin_key),
        &headers,
        body.as_bytes(),
    )
    .unwrap_or_else(|e| panic!("{method} {path}: {e}"))
}

fn expect(sluice: &SluiceProcess, method: &str, path: &str, body: &str, status: u16) -> Value {
    let r = call(sluice, method, path, body, "");
    assert_eq!(r.status, status, "{method} {path}: {}", r.body);
    if r.body.is_empty() {
        Value::Null
    } else {
        r.json()
    }
}

/// Polls the job until it ends; returns it.
fn wait_job(sluice: &SluiceProcess, job: i64, timeout: Duration) -> Value {
    let deadline = Instant::now() + timeout;
    loop {
        let job = expect(sluice, "GET", &format!("/v1/jobs/{job}"), "", 200);
        if job["state"] == "succeeded" || job["state"] == "failed" {
            return job;
        }
        assert!(
            Instant::now() < deadline,
            "job did not end: {job}\n{}",
            sluice.log()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn target(sluice: &SluiceProcess, pki: &Pki, tenant: &str, role: &str, password: &str) -> PgTarget {
    PgTarget {
        user: role.into(),
        ..PgTarget::tenant(sluice.addr, tenant, password, &pki.ca_cert)
    }
}

fn code(err: &tokio_postgres::Error) -> String {
    err.as_db_error()
        .map(|e| e.code().code().to_owned())
        .unwrap_or_else(|| format!("no SQLSTATE: {err}"))
}

struct Env {
    dir: tempfile::TempDir,
    pki: Pki,
    sluice: SluiceProcess,
}

fn start() -> Env {
    let dir = tempfile::Builder::new()
        .prefix("sluice-provisioning-")
        .tempdir()
        .unwrap();
    let pki = Pki::generate(&dir.path().join("pki")).unwrap();
    let config = SluiceConfig::new(&pki);
    let sluice = SluiceProcess::start(BIN.as_ref(), &dir.path().join("sluice"), &config)
        .expect("starting sluice");
    Env { dir, pki, sluice }
}

fn backend_dir(data_dir: &Path, tenant: &str) -> std::path::PathBuf {
    data_dir.join("backends").join(tenant)
}

#[tokio::test]
async fn a_tenant_lives_its_whole_life_through_the_api() {
    let env = start();
    let sluice = &env.sluice;
    let data_dir = env.dir.path().join("sluice/data");

    // Create: 202 with the job; the job provisions a real cluster.
    let created = expect(
        sluice,
        "POST",
        "/v1/tenants",
        r#"{"id": "shop", "plan": null}"#,
        202,
    );
    assert_eq!(created["tenant"]["status"], "provisioning", "{created}");
    assert_eq!(created["job"]["state"], "queued", "{created}");
    let job = wait_job(
        sluice,
        created["job"]["id"].as_i64().unwrap(),
        Duration::from_secs(120),
    );
    assert_eq!(job["state"], "succeeded", "{job}");
    assert_eq!(
        job["steps_done"],
        json!([
            "credentials",
            "create_backend",
            "wait_ready",
            "auth_role",
            "activate"
        ])
    );
    let tenant = expect(sluice, "GET", "/v1/tenants/shop", "", 200);
    assert_eq!(tenant["status"], "active", "{tenant}");
    assert_eq!(tenant["backend"]["driver"], "local");
    assert!(backend_dir(&data_dir, "shop").exists());
    assert_eq!(
        tenant["connection_string"],
        format!(
            "postgresql://shop.{}:{}/app?sslmode=require",
            testkit::SNI_SUFFIX,
            sluice.addr.port()
        )
    );

    // A role, its password shown once; psql-equivalent login by SNI through Sluice.
    let role = expect(
        sluice,
        "POST",
        "/v1/tenants/shop/roles",
        r#"{"name": "app"}"#,
        201,
    );
    let first_password = role["password"].as_str().unwrap().to_owned();
    assert!(first_password.len() >= 20);
    let t1 = target(sluice, &env.pki, "shop", "app", &first_password);
    let client = pg_connect(&t1).await.expect("login with the new role");
    client
        .batch_execute("CREATE TABLE orders (id int); INSERT INTO orders VALUES (1)")
        .await
        .expect("the role owns the app database");
    let psql = testkit::clients::psql(&t1, "select count(*) from orders");
    assert!(psql.success, "{}", psql.stderr);
    assert_eq!(psql.stdout.trim(), "1");
    let listed = expect(sluice, "GET", "/v1/tenants/shop/roles", "", 200);
    assert_eq!(listed["roles"][0]["name"], "app");
    assert!(listed["roles"][0].get("password").is_none());
    expect(
        sluice,
        "POST",
        "/v1/tenants/shop/roles",
        r#"{"name": "app"}"#,
        409,
    );

    // PATCH the pool: seen in stats while the client stays connected.
    let patched = expect(
        sluice,
        "PATCH",
        "/v1/tenants/shop",
        r#"{"pool": {"size": 3}}"#,
        200,
    );
    assert_eq!(patched["pool"]["size"], 3);
    let pools = expect(sluice, "GET", "/v1/pools?tenant=shop", "", 200);
    assert_eq!(pools["pools"][0]["size"], 3, "{pools}");
    client
        .simple_query("select 1")
        .await
        .expect("unaffected by the change");

    // Rotate: the old password stops working for new logins, the open session runs on.
    let rotated = expect(sluice, "POST", "/v1/tenants/shop/roles/app/rotate", "", 200);
    let second_password = rotated["password"].as_str().unwrap().to_owned();
    assert_ne!(first_password, second_password);
    let err = pg_connect(&t1).await.expect_err("old password");
    assert_eq!(code(&err), "28P01");
    let t2 = target(sluice, &env.pki, "shop", "app", &second_password);
    pg_connect(&t2).await.expect("new password");
    client
        .simple_query("select 1")
        .await
        .expect("existing session keeps running");

    // Suspend with terminate: new logins 28000, the running session ends with 57P01.
    let (running, running_conn) = {
        let config = testkit::clients::pg_config(&t2);
        config
            .connect(testkit::clients::tls_connector(&env.pki.ca_cert))
            .await
            .unwrap()
    };
    let running_conn = tokio::spawn(running_conn);
    running.simple_query("select 1").await.unwrap();
    let suspended = expect(
        sluice,
        "POST",
        "/v1/tenants/shop/suspend",
        r#"{"reason": "billing", "terminate": true}"#,
        200,
    );
    assert_eq!(suspended["status"], "suspended");
    let ended = tokio::time::timeout(Duration::from_secs(10), running_conn)
        .await
        .expect("the running session ends")
        .unwrap()
        .expect_err("ended by Sluice");
    assert_eq!(code(&ended), "57P01");
    assert_eq!(
        code(&pg_connect(&t2).await.expect_err("suspended")),
        "28000"
    );
    expect(sluice, "POST", "/v1/tenants/shop/resume", "", 200);
    pg_connect(&t2).await.expect("resumed");

    // Delete: a job drains and removes the backend; the tenant is gone (3D000).
    let deleted = expect(sluice, "DELETE", "/v1/tenants/shop", "", 202);
    let job = wait_job(
        sluice,
        deleted["job"]["id"].as_i64().unwrap(),
        Duration::from_secs(60),
    );
    assert_eq!(job["state"], "succeeded", "{job}");
    assert_eq!(code(&pg_connect(&t2).await.expect_err("deleted")), "3D000");
    expect(sluice, "GET", "/v1/tenants/shop", "", 404);
    assert!(!backend_dir(&data_dir, "shop").exists());

    // Every step is in the audit log, and the chain verifies.
    let audit = expect(
        sluice,
        "GET",
        "/v1/audit-events?tenant=shop&limit=100",
        "",
        200,
    );
    let actions: Vec<&str> = audit["events"]
        .as_array()
        .unwrap()
        .iter()
        .rev()
        .map(|e| e["action"].as_str().unwrap())
        .collect();
    assert_eq!(
        actions,
        [
            "tenant.create",
            "tenant.provisioned",
            "role.create",
            "tenant.update",
            "role.rotate",
            "tenant.suspend",
            "tenant.resume",
            "tenant.delete"
        ]
    );
    let verify = expect(sluice, "GET", "/v1/audit-events/verify", "", 200);
    assert_eq!(verify["ok"], true, "{verify}");
    let text = serde_json::to_string(&audit).unwrap();
    assert!(!text.contains(&first_password) && !text.contains(&second_password));
}

#[test]
fn a_retried_create_with_the_same_key_makes_one_tenant() {
    let env = start();
    let sluice = &env.sluice;
    let key = "Idempotency-Key: 5f0c-retry-1\r\n";
    let body = r#"{"id": "once"}"#;
    let first = call(sluice, "POST", "/v1/tenants", body, key);
    assert_eq!(first.status, 202, "{}", first.body);
    let again = call(sluice, "POST", "/v1/tenants", body, key);
    assert_eq!(again.status, 202, "{}", again.body);
    assert_eq!(again.header("idempotent-replayed"), Some("true"));
    assert_eq!(again.json()["job"]["id"], first.json()["job"]["id"]);
    // The same key for another request is refused; without a key it is a conflict.
    let other = call(sluice, "POST", "/v1/tenants", r#"{"id": "twice"}"#, key);
    assert_eq!(other.status, 422, "{}", other.body);
    assert_eq!(other.json()["error"]["code"], "idempotency_key_reused");
    assert_eq!(call(sluice, "POST", "/v1/tenants", body, "").status, 409);
    let list = expect(sluice, "GET", "/v1/tenants", "", 200);
    let ids: Vec<&str> = list["tenants"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, ["once"]);
    let jobs = expect(
        sluice,
        "GET",
        "/v1/audit-events?action=tenant.create",
        "",
        200,
    );
    assert_eq!(jobs["events"].as_array().unwrap().len(), 1);
    let bad = call(sluice, "POST", "/v1/tenants", body, "Idempotency-Key: \r\n");
    assert_eq!(bad.status, 400, "{}", bad.body);
}

#[test]
fn bad_create_requests_answer_4xx_and_create_nothing() {
    let env = start();
    let sluice = &env.sluice;
    for (body, status) in [
        ("{", 400),
        ("[]", 422),
        (r#"{"id": "Shop"}"#, 422),
        (r#"{"id": "-shop"}"#, 422),
        (r#"{"id": "a.b"}"#, 422),
        (&format!(r#"{{"id": "{}"}}"#, "a".repeat(64)), 422),
        (r#"{"id": "shop", "colour": "red"}"#, 422),
        (r#"{"id": "shop", "plan": "gold"}"#, 422),
        (r#"{"id": "shop", "backend": {"driver": "lxc"}}"#, 422),
        (r#"{"id": "shop", "backend": {"driver": "static"}}"#, 422),
        (r#"{"id": "shop", "pool": {"size": 0}}"#, 422),
        (
            r#"{"id": "shop", "limits": {"allow_cidrs": ["nope"]}}"#,
            422,
        ),
    ] {
        let r = call(sluice, "POST", "/v1/tenants", body, "");
        assert_eq!(r.status, status, "{body}: {}", r.body);
        assert!(
            r.json()["error"]["message"].is_string(),
            "{body}: {}",
            r.body
        );
    }
    let huge = format!(r#"{{"id": "shop", "plan": "{}"}}"#, "x".repeat(100_000));
    assert_eq!(call(sluice, "POST", "/v1/tenants", &huge, "").status, 413);
    let list = expect(sluice, "GET", "/v1/tenants", "", 200);
    assert_eq!(list["tenants"], json!([]));
    let audit = expect(
        sluice,
        "GET",
        "/v1/audit-events?action=tenant.create",
        "",
        200,
    );
    assert_eq!(audit["events"], json!([]));
    assert!(!env.dir.path().join("sluice/data/backends/shop").exists());
    expect(sluice, "GET", "/v1/jobs/1", "", 404);
    expect(sluice, "GET", "/v1/jobs/x", "", 404);
}
