//! Provisioning end to end on a real `sluice serve` (the `local` driver making a real
//! Postgres cluster per tenant): the whole story through raw HTTP (create → job → role →
//! connect by SNI → PATCH seen live → rotate → suspend/terminate → resume → delete →
//! 3D000), `Idempotency-Key`, bad create requests that leave nothing behind, a Sluice
//! killed mid-job, two Sluice processes on one external control store, and a control
//! store that goes away and comes back.

use std::path::Path;
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use testkit::clients::{pg_connect, PgTarget};
use testkit::http::{request, HttpResponse};
use testkit::{Pki, SluiceConfig, SluiceProcess};

const BIN: &str = env!("CARGO_BIN_EXE_sluice");

fn call(sluice: &SluiceProcess, method: &str, path: &str, body: &str, extra: &str) -> HttpResponse {
    sluice.api(method, path, body, extra)
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
    let sluice = start_sluice(&dir.path().join("sluice"), &pki, "");
    Env { dir, pki, sluice }
}

/// A Sluice under `dir` with `extra` config appended (e.g. a `[control]` section).
fn start_sluice(dir: &Path, pki: &Pki, extra: &str) -> SluiceProcess {
    let mut config = SluiceConfig::new(pki);
    config.plans = extra.to_owned();
    SluiceProcess::start(BIN.as_ref(), dir, &config).expect("starting sluice")
}

/// Creates tenant `id` and waits for its job.
fn provision(sluice: &SluiceProcess, id: &str) -> Value {
    provision_with(sluice, &format!(r#"{{"id": "{id}"}}"#))
}

/// Creates the tenant `body` describes and waits for its job to succeed.
fn provision_with(sluice: &SluiceProcess, body: &str) -> Value {
    let created = expect(sluice, "POST", "/v1/tenants", body, 202);
    let job = wait_job(
        sluice,
        created["job"]["id"].as_i64().unwrap(),
        Duration::from_secs(120),
    );
    assert_eq!(job["state"], "succeeded", "{job}");
    job
}

/// A role's password, made through the API.
fn make_role(sluice: &SluiceProcess, tenant: &str, role: &str) -> String {
    let made = expect(
        sluice,
        "POST",
        &format!("/v1/tenants/{tenant}/roles"),
        &format!(r#"{{"name": "{role}"}}"#),
        201,
    );
    made["password"].as_str().unwrap().to_owned()
}

/// An external control store: a throwaway cluster, and the `[control]` section that
/// points Sluice at it with a shared secrets key.
struct ExternalStore {
    cluster: testkit::TestCluster,
    section: String,
}

fn external_store(dir: &Path) -> ExternalStore {
    let cluster = testkit::TestCluster::start(dir, "control", Default::default()).unwrap();
    let section = format!(
        "\n[control]\ndatabase_url = \"host={} port={} user={} dbname={} password={}\"\nsecrets_key_file = {:?}\n",
        cluster.socket_dir.display(),
        cluster.cluster.socket_port(),
        testkit::cluster::APP_ROLE,
        testkit::cluster::APP_DATABASE,
        cluster.app_password,
        dir.join("secrets.key").display().to_string(),
    );
    ExternalStore { cluster, section }
}

/// Retries `attempt` every 50 ms until it succeeds or `timeout` passes; returns how long
/// it took.
async fn eventually<F, Fut, T>(timeout: Duration, what: &str, mut attempt: F) -> (T, Duration)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, String>>,
{
    let started = Instant::now();
    loop {
        match attempt().await {
            Ok(v) => return (v, started.elapsed()),
            Err(e) if started.elapsed() > timeout => panic!("{what}: still failing: {e}"),
            Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
        }
    }
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

    // A role, its password shown once (a retry with the same Idempotency-Key gets the
    // same answer); psql-equivalent login by SNI through Sluice.
    let key = "Idempotency-Key: role-app-1\r\n";
    let role = call(
        sluice,
        "POST",
        "/v1/tenants/shop/roles",
        r#"{"name": "app"}"#,
        key,
    );
    assert_eq!(role.status, 201, "{}", role.body);
    let replayed = call(
        sluice,
        "POST",
        "/v1/tenants/shop/roles",
        r#"{"name": "app"}"#,
        key,
    );
    assert_eq!(replayed.status, 201, "{}", replayed.body);
    assert_eq!(replayed.header("idempotent-replayed"), Some("true"));
    assert_eq!(replayed.json(), role.json());
    let first_password = role.json()["password"].as_str().unwrap().to_owned();
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

    // Delete: a job drains (a running session ends with 57P01) and removes the backend;
    // the tenant is gone (3D000).
    let (victim, victim_conn) = testkit::clients::pg_config(&t2)
        .connect(testkit::clients::tls_connector(&env.pki.ca_cert))
        .await
        .unwrap();
    let victim_conn = tokio::spawn(victim_conn);
    victim.simple_query("select 1").await.unwrap();
    let deleted = expect(sluice, "DELETE", "/v1/tenants/shop", "", 202);
    let drained = tokio::time::timeout(Duration::from_secs(30), victim_conn)
        .await
        .expect("the running session ends")
        .unwrap()
        .expect_err("ended by Sluice");
    assert_eq!(code(&drained), "57P01");
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

    // An UPDATE made directly in the store breaks the chain, and verify names the event.
    let rotate = audit["events"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["action"] == "role.rotate")
        .unwrap()["id"]
        .as_i64()
        .unwrap();
    let (store, connection) = testkit::sluice::embedded_store(&data_dir)
        .connect(tokio_postgres::NoTls)
        .await
        .expect("connecting to the embedded control store");
    tokio::spawn(connection);
    let changed = store
        .execute(
            "UPDATE audit_events SET actor = 'someone-else' WHERE id = $1",
            &[&rotate],
        )
        .await
        .unwrap();
    assert_eq!(changed, 1);
    let verify = expect(sluice, "GET", "/v1/audit-events/verify", "", 200);
    assert_eq!(verify["ok"], false, "{verify}");
    assert_eq!(verify["broken_at"], rotate, "{verify}");

    // No password is anywhere in the store in the clear, the kept answer included.
    for password in [&first_password, &second_password] {
        let found: i64 = store
            .query_one(
                "SELECT (SELECT count(*) FROM idempotency_keys WHERE body::text LIKE '%' || $1 || '%') \
                      + (SELECT count(*) FROM audit_events WHERE details::text LIKE '%' || $1 || '%') \
                      + (SELECT count(*) FROM roles WHERE scram_verifier LIKE '%' || $1 || '%')",
                &[password],
            )
            .await
            .unwrap()
            .get(0);
        assert_eq!(found, 0);
    }
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
        (r#"{"id": "shop", "backend": {"port": 5433}}"#, 422),
        (
            r#"{"id": "shop", "backend": {"driver": "static", "host": "db", "port": 0,
                "admin_user": "a", "admin_password": "p"}}"#,
            422,
        ),
        (
            r#"{"id": "shop", "backend": {"driver": "static", "host": "db", "tls": "verify-full",
                "admin_user": "a", "admin_password": "p"}}"#,
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

#[tokio::test]
async fn a_sluice_killed_mid_job_finishes_it_after_restart_with_one_backend() {
    let mut env = start();
    let data_dir = env.dir.path().join("sluice/data");
    let created = expect(&env.sluice, "POST", "/v1/tenants", r#"{"id": "shop"}"#, 202);
    let id = created["job"]["id"].as_i64().unwrap();
    // Kill as soon as a worker has the job: mid-way through its steps.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let job = expect(&env.sluice, "GET", &format!("/v1/jobs/{id}"), "", 200);
        assert_ne!(
            job["state"], "succeeded",
            "the job ended before it could be interrupted"
        );
        if job["state"] == "running" {
            break;
        }
        assert!(Instant::now() < deadline, "the job never started: {job}");
        std::thread::sleep(Duration::from_millis(5));
    }
    env.sluice
        .signal_and_wait(nix::sys::signal::Signal::SIGKILL, Duration::from_secs(10))
        .expect("sluice killed");

    env.sluice = start_sluice(&env.dir.path().join("sluice"), &env.pki, "");
    let job = wait_job(&env.sluice, id, Duration::from_secs(120));
    assert_eq!(job["state"], "succeeded", "{job}\n{}", env.sluice.log());
    assert!(
        job["attempts"].as_i64().unwrap() >= 2,
        "resumed, not redone from scratch: {job}"
    );
    // One backend, no half-made leftovers beside it.
    let mut entries: Vec<String> = std::fs::read_dir(data_dir.join("backends"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|name| name != "owner.lock")
        .collect();
    entries.sort();
    assert_eq!(entries, ["shop"]);
    let password = make_role(&env.sluice, "shop", "app");
    let client = pg_connect(&target(&env.sluice, &env.pki, "shop", "app", &password))
        .await
        .expect("the tenant works");
    client.simple_query("select 1").await.unwrap();
}

#[tokio::test]
async fn two_sluices_on_one_store_serve_each_others_changes() {
    let dir = tempfile::Builder::new()
        .prefix("sluice-two-")
        .tempdir()
        .unwrap();
    let pki = Pki::generate(&dir.path().join("pki")).unwrap();
    let store = external_store(dir.path());
    let one = start_sluice(&dir.path().join("one"), &pki, &store.section);
    let two = start_sluice(&dir.path().join("two"), &pki, &store.section);

    provision(&one, "shop");
    let password = make_role(&one, "shop", "app");
    let through_two = target(&two, &pki, "shop", "app", &password);
    // Made through process 1, reachable through process 2's proxy.
    let (_, took) = eventually(
        Duration::from_secs(10),
        "login through process 2",
        || async { pg_connect(&through_two).await.map_err(|e| e.to_string()) },
    )
    .await;
    println!("role created via process 1 -> first login via process 2: {took:?}");

    // A suspension through process 2 is enforced by process 1's proxy.
    let through_one = target(&one, &pki, "shop", "app", &password);
    expect(
        &two,
        "POST",
        "/v1/tenants/shop/suspend",
        r#"{"reason": "two"}"#,
        200,
    );
    let (_, took) = eventually(
        Duration::from_secs(10),
        "suspension seen by process 1",
        || async {
            match pg_connect(&through_one).await {
                Err(e) if code(&e) == "28000" => Ok(()),
                Err(e) => Err(e.to_string()),
                Ok(_) => Err("still admitted".into()),
            }
        },
    )
    .await;
    println!("suspend via process 2 -> refused by process 1: {took:?}");
    expect(&two, "POST", "/v1/tenants/shop/resume", "", 200);
    eventually(
        Duration::from_secs(10),
        "resumption seen by process 1",
        || async {
            pg_connect(&through_one)
                .await
                .map(|_| ())
                .map_err(|e| e.to_string())
        },
    )
    .await;
    // A tenant's own host name added through process 1 is served by process 2's proxy
    // (its certificate, verify-full against the customer's CA), without a restart; a
    // removal through process 2 is seen by process 1.
    let customer = localpg::tls::CertificateAuthority::generate("Customer CA").unwrap();
    let customer_ca = dir.path().join("customer-ca.crt");
    std::fs::write(&customer_ca, customer.cert_pem()).unwrap();
    let issued = customer.issue(&["db.shop.test"]).unwrap();
    let body = json!({"hostname": "db.shop.test", "cert": issued.cert_pem, "key": issued.key_pem});
    expect(
        &one,
        "POST",
        "/v1/tenants/shop/hostnames",
        &body.to_string(),
        201,
    );
    let by_name = |sluice: &SluiceProcess| {
        let mut t = target(sluice, &pki, "shop", "app", &password);
        t.sni_host = Some("db.shop.test".into());
        t.ca = customer_ca.clone();
        t
    };
    let (_, took) = eventually(
        Duration::from_secs(10),
        "host name served by process 2",
        || async { pg_connect(&by_name(&two)).await.map_err(|e| e.to_string()) },
    )
    .await;
    println!("host name added via process 1 -> first login by it via process 2: {took:?}");
    expect(
        &two,
        "DELETE",
        "/v1/tenants/shop/hostnames/db.shop.test",
        "",
        204,
    );
    let (_, took) = eventually(
        Duration::from_secs(10),
        "host name removal seen by process 1",
        || async {
            match pg_connect(&by_name(&one)).await {
                Err(e) if e.as_db_error().is_none() => Ok(()),
                Err(e) => Err(format!("refused otherwise: {e}")),
                Ok(_) => Err("still served".into()),
            }
        },
    )
    .await;
    println!("host name removed via process 2 -> not served by process 1: {took:?}");

    // A key revoked through one process stops working in the other.
    let made = expect(&one, "POST", "/v1/api-keys", r#"{"role": "viewer"}"#, 201);
    let viewer = made["key"].as_str().unwrap().to_owned();
    let key_id = made["id"].as_str().unwrap().to_owned();
    let status = |sluice: &SluiceProcess, key: &str| {
        request(sluice.admin_addr, "GET", "/v1/tenants", Some(key), "", b"")
            .unwrap()
            .status
    };
    eventually(
        Duration::from_secs(15),
        "new key accepted by process 2",
        || async {
            match status(&two, &viewer) {
                200 => Ok(()),
                s => Err(format!("status {s}")),
            }
        },
    )
    .await;
    expect(&one, "DELETE", &format!("/v1/api-keys/{key_id}"), "", 200);
    eventually(
        Duration::from_secs(15),
        "revoked key refused by process 2",
        || async {
            match status(&two, &viewer) {
                401 => Ok(()),
                s => Err(format!("status {s}")),
            }
        },
    )
    .await;
    drop(store);
}

#[tokio::test]
async fn the_data_plane_outlives_the_control_store_and_the_api_resumes_when_it_returns() {
    let dir = tempfile::Builder::new()
        .prefix("sluice-store-down-")
        .tempdir()
        .unwrap();
    let pki = Pki::generate(&dir.path().join("pki")).unwrap();
    let mut store = external_store(dir.path());
    let home = dir.path().join("sluice");
    let mut sluice = start_sluice(&home, &pki, &store.section);
    provision(&sluice, "shop");
    let password = make_role(&sluice, "shop", "app");
    let shop = target(&sluice, &pki, "shop", "app", &password);
    let existing = pg_connect(&shop).await.unwrap();

    store.cluster.stop(localpg::StopMode::Fast).unwrap();
    existing
        .simple_query("select 1")
        .await
        .expect("existing session");
    pg_connect(&shop)
        .await
        .expect("new connection while the store is down");
    let r = call(&sluice, "GET", "/v1/tenants", "", "");
    assert_eq!(r.status, 503, "{}", r.body);
    assert_eq!(r.json()["error"]["code"], "unavailable");
    let ready = expect(&sluice, "GET", "/readyz", "", 200);
    assert!(
        ready["control_store"]
            .as_str()
            .unwrap()
            .starts_with("unreachable"),
        "{ready}"
    );

    // A restart while the store is down serves the snapshot (and starts the backend).
    drop(existing);
    drop(sluice);
    sluice = start_sluice(&home, &pki, &store.section);
    let ready = expect(&sluice, "GET", "/readyz", "", 200);
    assert_eq!(ready["catalog"]["source"], "snapshot", "{ready}");
    let shop = target(&sluice, &pki, "shop", "app", &password);
    let client = eventually(
        Duration::from_secs(30),
        "login from the snapshot",
        || async {
            pg_connect(&shop)
                .await
                .map_err(|e| format!("{e:?}\n{}", sluice.log()))
        },
    )
    .await
    .0;

    // The store returns: the API answers again and the catalog follows it, no restart.
    store.cluster.restart().unwrap();
    eventually(Duration::from_secs(30), "API back", || async {
        match call(&sluice, "GET", "/v1/tenants/shop", "", "").status {
            200 => Ok(()),
            s => Err(format!("status {s}")),
        }
    })
    .await;
    eventually(
        Duration::from_secs(30),
        "catalog from the store again",
        || async {
            let ready = expect(&sluice, "GET", "/readyz", "", 200);
            match ready["catalog"]["source"].as_str() {
                Some("control store") => Ok(()),
                other => Err(format!("{other:?}")),
            }
        },
    )
    .await;
    // A change made directly in the store reaches the running pool (LISTEN/NOTIFY).
    client.simple_query("select 1").await.unwrap();
    let out = store.cluster.psql_direct(
        "UPDATE tenants SET pool = '{\"size\": 4}', version = version + 1 WHERE id = 'shop'",
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    eventually(
        Duration::from_secs(10),
        "pool resized from the store",
        || async {
            let pools = expect(&sluice, "GET", "/v1/pools?tenant=shop", "", 200);
            match pools["pools"][0]["size"].as_u64() {
                Some(4) => Ok(()),
                other => Err(format!("{other:?}")),
            }
        },
    )
    .await;
}

#[test]
fn a_tenant_deleted_while_it_is_provisioned_leaves_nothing() {
    let env = start();
    let sluice = &env.sluice;
    let created = expect(sluice, "POST", "/v1/tenants", r#"{"id": "brief"}"#, 202);
    let deleted = expect(sluice, "DELETE", "/v1/tenants/brief", "", 202);
    let delete = wait_job(
        sluice,
        deleted["job"]["id"].as_i64().unwrap(),
        Duration::from_secs(120),
    );
    assert_eq!(delete["state"], "succeeded", "{delete}");
    let create = wait_job(
        sluice,
        created["job"]["id"].as_i64().unwrap(),
        Duration::from_secs(10),
    );
    // Either it finished before the delete was queued, or it stopped when it saw it.
    if create["state"] == "failed" {
        assert_eq!(create["error"], "the tenant is being deleted", "{create}");
    }
    expect(sluice, "GET", "/v1/tenants/brief", "", 404);
    assert!(!backend_dir(&env.dir.path().join("sluice/data"), "brief").exists());
}

/// The `proxmox` driver end to end through Sluice, against testkit's fake Proxmox VE
/// (whose containers are real Postgres clusters on loopback addresses): the plan's size
/// reaches the container, the tenant is reachable by SNI, a plan change resizes it, a
/// second tenant gets its own container, suspend/resume work, and delete purges the CT.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_proxmox_tenant_is_provisioned_and_reachable_through_sluice() {
    use testkit::fake_pve::{FakePve, FakePveOptions};
    let fake = FakePve::start(FakePveOptions::default()).await.unwrap();
    let dir = tempfile::Builder::new()
        .prefix("sluice-proxmox-")
        .tempdir()
        .unwrap();
    let pki = Pki::generate(&dir.path().join("pki")).unwrap();
    let extra = format!(
        "\n[plans.nano.backend]\ncores = 2\nmemory_mib = 768\nswap_mib = 256\ndisk_gib = 4\n\
         [plans.lite.backend]\ncores = 3\nmemory_mib = 1536\nswap_mib = 512\ndisk_gib = 8\n{}",
        fake.provisioner_section(&dir.path().join("pve-token"))
    );
    let home = dir.path().join("sluice");
    let sluice = tokio::task::block_in_place(|| start_sluice(&home, &pki, &extra));
    let sluice = &sluice;
    let run = |f: &dyn Fn() -> Value| tokio::task::block_in_place(f);

    run(&|| provision_with(sluice, r#"{"id": "pve1", "plan": "nano"}"#));
    let tenant = run(&|| expect(sluice, "GET", "/v1/tenants/pve1", "", 200));
    assert_eq!(tenant["backend"]["driver"], "proxmox", "{tenant}");
    let guests = fake.guests();
    assert_eq!(guests.len(), 1);
    let config = &guests[0].config;
    assert_eq!(
        config.get("cores").map(String::as_str),
        Some("2"),
        "{config:?}"
    );
    assert_eq!(
        config.get("memory").map(String::as_str),
        Some("768"),
        "{config:?}"
    );
    assert_eq!(config.get("unprivileged").map(String::as_str), Some("1"));

    let password = tokio::task::block_in_place(|| make_role(sluice, "pve1", "app"));
    let client = pg_connect(&target(sluice, &pki, "pve1", "app", &password))
        .await
        .expect("login through Sluice to the container's Postgres");
    client
        .batch_execute("CREATE TABLE t (x int); INSERT INTO t VALUES (1)")
        .await
        .unwrap();
    drop(client);

    // A plan change resizes the container before the store records it.
    let patched = run(&|| {
        expect(
            sluice,
            "PATCH",
            "/v1/tenants/pve1",
            r#"{"plan": "lite"}"#,
            200,
        )
    });
    assert_eq!(patched["plan"], "lite", "{patched}");
    let config = &fake.guests()[0].config;
    assert_eq!(
        config.get("cores").map(String::as_str),
        Some("3"),
        "{config:?}"
    );
    assert_eq!(
        config.get("memory").map(String::as_str),
        Some("1536"),
        "{config:?}"
    );
    assert_eq!(
        config.get("swap").map(String::as_str),
        Some("512"),
        "{config:?}"
    );
    let client = pg_connect(&target(sluice, &pki, "pve1", "app", &password))
        .await
        .expect("the resized container serves");
    client.simple_query("SELECT 1").await.unwrap();
    drop(client);

    // A second tenant in a container of its own: each sees only its own data.
    run(&|| provision_with(sluice, r#"{"id": "pve2", "plan": "nano"}"#));
    assert_eq!(fake.guests().len(), 2);
    let password2 = tokio::task::block_in_place(|| make_role(sluice, "pve2", "app"));
    let other = pg_connect(&target(sluice, &pki, "pve2", "app", &password2))
        .await
        .expect("login to the second container");
    let missing = other.simple_query("SELECT x FROM t").await.unwrap_err();
    assert_eq!(
        code(&missing),
        "42P01",
        "pve1's table is not in pve2's container"
    );
    drop(other);

    // Suspend and resume are the gateway's, whatever the driver.
    run(&|| expect(sluice, "POST", "/v1/tenants/pve1/suspend", "", 200));
    let refused = pg_connect(&target(sluice, &pki, "pve1", "app", &password))
        .await
        .unwrap_err();
    assert_eq!(code(&refused), "28000");
    run(&|| expect(sluice, "POST", "/v1/tenants/pve1/resume", "", 200));
    let client = pg_connect(&target(sluice, &pki, "pve1", "app", &password))
        .await
        .expect("resumed");
    let row = client.query_one("SELECT x FROM t", &[]).await.unwrap();
    assert_eq!(row.get::<_, i32>(0), 1);
    drop(client);

    // Scale to zero: idle for its suspend_after_idle_s, the container is shut down
    // (status/shutdown); the next login starts it and finds the data.
    run(&|| {
        expect(
            sluice,
            "PATCH",
            "/v1/tenants/pve1",
            r#"{"limits": {"suspend_after_idle_s": 1}}"#,
            200,
        )
    });
    let pve1 = |fake: &FakePve| {
        fake.guests()
            .into_iter()
            .find(|g| g.config.get("hostname").is_some_and(|h| h.contains("pve1")))
            .expect("pve1's container")
    };
    eventually(Duration::from_secs(30), "pve1 is parked", || async {
        let stats = run(&|| expect(sluice, "GET", "/v1/tenants/pve1/stats", "", 200));
        match (stats["backend_parked"].as_bool(), pve1(&fake).running) {
            (Some(true), false) => Ok(()),
            other => Err(format!("parked, running: {other:?}")),
        }
    })
    .await;
    let client = pg_connect(&target(sluice, &pki, "pve1", "app", &password))
        .await
        .expect("a login starts the parked container");
    let row = client.query_one("SELECT x FROM t", &[]).await.unwrap();
    assert_eq!(row.get::<_, i32>(0), 1);
    assert!(pve1(&fake).running);
    drop(client);

    let deleted = run(&|| expect(sluice, "DELETE", "/v1/tenants/pve1", "", 202));
    let job = run(&|| {
        wait_job(
            sluice,
            deleted["job"]["id"].as_i64().unwrap(),
            Duration::from_secs(120),
        )
    });
    assert_eq!(job["state"], "succeeded", "{job}");
    let left: Vec<_> = fake
        .guests()
        .iter()
        .map(|g| g.config.get("hostname").cloned())
        .collect();
    assert_eq!(
        left.len(),
        1,
        "pve1's container is purged, pve2's stays: {left:?}"
    );
    assert_eq!(fake.destroyed().len(), 1);
}

/// A Sluice killed while its proxmox create job runs (the container exists, the job has
/// not finished) finishes the job after a restart with the same container: no duplicate.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sluice_killed_mid_proxmox_job_makes_no_second_container() {
    use testkit::fake_pve::{FakePve, FakePveOptions};
    let fake = FakePve::start(FakePveOptions {
        // Slow tasks, so that the kill lands while the creation runs.
        task_duration: Duration::from_millis(1500),
        ..Default::default()
    })
    .await
    .unwrap();
    let dir = tempfile::Builder::new()
        .prefix("sluice-proxmox-kill-")
        .tempdir()
        .unwrap();
    let pki = Pki::generate(&dir.path().join("pki")).unwrap();
    let extra = format!(
        "\n{}",
        fake.provisioner_section(&dir.path().join("pve-token"))
    );
    let home = dir.path().join("sluice");
    let mut sluice = tokio::task::block_in_place(|| start_sluice(&home, &pki, &extra));
    let created = tokio::task::block_in_place(|| {
        expect(&sluice, "POST", "/v1/tenants", r#"{"id": "pvek"}"#, 202)
    });
    let id = created["job"]["id"].as_i64().unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    while fake.guests().is_empty() {
        assert!(Instant::now() < deadline, "no container was ever created");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    tokio::task::block_in_place(|| {
        sluice
            .signal_and_wait(nix::sys::signal::Signal::SIGKILL, Duration::from_secs(10))
            .expect("sluice killed")
    });
    sluice = tokio::task::block_in_place(|| start_sluice(&home, &pki, &extra));
    let job = tokio::task::block_in_place(|| wait_job(&sluice, id, Duration::from_secs(120)));
    assert_eq!(job["state"], "succeeded", "{job}\n{}", sluice.log());
    assert_eq!(
        fake.guests().len(),
        1,
        "one container, adopted by the rerun"
    );
    let password = tokio::task::block_in_place(|| make_role(&sluice, "pvek", "app"));
    let client = pg_connect(&target(&sluice, &pki, "pvek", "app", &password))
        .await
        .expect("the tenant works");
    client.simple_query("SELECT 1").await.unwrap();
}

/// A tenant deleted and created again with the same id, while Sluice runs: the new
/// tenant gets new pools on its new backend (not the destroyed one's address), and the
/// deleted tenant's pools are gone from the stats.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tenant_deleted_and_created_again_is_reached_on_its_new_backend() {
    let env = start();
    let sluice = &env.sluice;
    for round in 0..2 {
        provision(sluice, "shop");
        let password = make_role(sluice, "shop", "web");
        let client = pg_connect(&target(sluice, &env.pki, "shop", "web", &password))
            .await
            .unwrap_or_else(|e| panic!("round {round}: {e}\n{}", sluice.log()));
        let one: i32 = client.query_one("select 1", &[]).await.unwrap().get(0);
        assert_eq!(one, 1);
        let pools = expect(sluice, "GET", "/v1/pools?tenant=shop", "", 200);
        assert_eq!(pools["pools"].as_array().unwrap().len(), 1, "{pools}");
        drop(client);
        let deleted = expect(sluice, "DELETE", "/v1/tenants/shop", "", 202);
        let job = wait_job(
            sluice,
            deleted["job"]["id"].as_i64().unwrap(),
            Duration::from_secs(120),
        );
        assert_eq!(job["state"], "succeeded", "{job}");
        let pools = expect(sluice, "GET", "/v1/pools?tenant=shop", "", 200);
        assert_eq!(pools["pools"], json!([]), "a deleted tenant's pools stay");
    }
}

/// The `static` driver against a real Postgres on TCP without TLS: errors that retrying
/// cannot fix (TLS the server does not offer, a wrong password, a database that does not
/// exist) fail the job, and the tenant, on its first attempt with the cause; a server
/// that is not there (connection refused) is retried; the right request succeeds.
#[test]
fn deterministic_static_backend_errors_fail_the_job_at_once() {
    let env = start();
    let sluice = &env.sluice;
    // A cluster on TCP, then with TLS turned off and a superuser password set.
    let mut backend = testkit::TestCluster::start(
        env.dir.path(),
        "plain",
        testkit::TestClusterOptions {
            tcp_tls: Some(&env.pki),
            ..Default::default()
        },
    )
    .unwrap();
    let port = backend.tcp_port.unwrap();
    backend.stop(localpg::StopMode::Fast).unwrap();
    backend
        .cluster
        .run_single_user("ALTER ROLE postgres PASSWORD 'admin-secret'")
        .unwrap();
    let auto_conf = backend.cluster.data_dir().join("postgresql.auto.conf");
    let mut settings = std::fs::read_to_string(&auto_conf).unwrap_or_default();
    settings.push_str("\nssl = off\n");
    std::fs::write(&auto_conf, settings).unwrap();
    backend.restart().unwrap();

    let create = |id: &str, backend: &str| {
        let body = format!(
            r#"{{"id": "{id}", "backend": {{"driver": "static", "host": "127.0.0.1",
                "admin_user": "postgres", {backend}}}}}"#
        );
        let created = expect(sluice, "POST", "/v1/tenants", &body, 202);
        created["job"]["id"].as_i64().unwrap()
    };
    for (id, backend, cause) in [
        (
            "needs-tls",
            format!(r#""port": {port}, "tls": "require", "admin_password": "admin-secret""#),
            "server does not support TLS",
        ),
        (
            "wrong-password",
            format!(r#""port": {port}, "tls": "disable", "admin_password": "wrong""#),
            "password authentication failed",
        ),
        (
            "no-database",
            format!(
                r#""port": {port}, "tls": "disable", "admin_password": "admin-secret",
                    "admin_database": "nodb""#
            ),
            "database \"nodb\" does not exist",
        ),
    ] {
        let began = Instant::now();
        let job = wait_job(sluice, create(id, &backend), Duration::from_secs(20));
        assert_eq!(job["state"], "failed", "{id}: {job}");
        assert_eq!(
            job["attempts"], 1,
            "{id}: failed on its first attempt: {job}"
        );
        let error = job["error"].as_str().unwrap_or_default();
        assert!(
            error.contains(cause),
            "{id}: the job names {cause:?}: {job}"
        );
        assert!(
            began.elapsed() < Duration::from_secs(15),
            "{id}: failed after {:?}",
            began.elapsed()
        );
        let tenant = expect(sluice, "GET", &format!("/v1/tenants/{id}"), "", 200);
        assert_eq!(tenant["status"], "failed", "{id}: {tenant}");
        // Creating it again says why not, and what to do.
        let body = format!(
            r#"{{"id": "{id}", "backend": {{"driver": "static", "host": "127.0.0.1", "port": {port}, "admin_user": "postgres", "admin_password": "x"}}}}"#
        );
        let again = expect(sluice, "POST", "/v1/tenants", &body, 409);
        let message = again["error"]["message"].as_str().unwrap_or_default();
        assert!(
            message.contains("already exists (status failed"),
            "{id}: {again}"
        );
        assert!(
            message.contains(&format!("DELETE /v1/tenants/{id}")),
            "{id}: {again}"
        );
    }

    // Nobody listens: transient, so the job is retried (and still running after its
    // first attempt).
    let closed = localpg::free_port().unwrap();
    let job = create(
        "not-there",
        &format!(r#""port": {closed}, "tls": "disable", "admin_password": "x""#),
    );
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let now = expect(sluice, "GET", &format!("/v1/jobs/{job}"), "", 200);
        assert_ne!(
            now["state"], "failed",
            "a refused connection is retried: {now}"
        );
        if now["attempts"].as_i64().unwrap_or(0) >= 2 {
            break;
        }
        assert!(Instant::now() < deadline, "no second attempt: {now}");
        std::thread::sleep(Duration::from_millis(100));
    }

    let job = wait_job(
        sluice,
        create(
            "plain",
            &format!(r#""port": {port}, "tls": "disable", "admin_password": "admin-secret""#),
        ),
        Duration::from_secs(60),
    );
    assert_eq!(job["state"], "succeeded", "{job}");
}

/// The postmaster's pid in `postmaster.pid`, once it is there.
fn postmaster_pid(pgdata: &Path) -> Option<i32> {
    std::fs::read_to_string(pgdata.join("postmaster.pid"))
        .ok()?
        .lines()
        .next()?
        .trim()
        .parse()
        .ok()
}

/// A `local` tenant's postmaster killed with SIGKILL is restarted by the supervisor;
/// while it is down, clients get 08006 and `sluice_backend_up` says 0; afterwards they
/// are served again and it says 1.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_local_backend_killed_with_sigkill_is_restarted() {
    use nix::sys::signal::{kill, Signal};
    use nix::unistd::Pid;

    let env = start();
    let sluice = &env.sluice;
    provision(sluice, "phoenix");
    let password = make_role(sluice, "phoenix", "app");
    let t = target(sluice, &env.pki, "phoenix", "app", &password);
    let client = pg_connect(&t).await.expect("a client before the kill");
    client.simple_query("SELECT 1").await.unwrap();
    drop(client);

    let pgdata = backend_dir(&env.dir.path().join("sluice/data"), "phoenix").join("pgdata");
    let killed = postmaster_pid(&pgdata).expect("the postmaster's pid");
    kill(Pid::from_raw(killed), Signal::SIGKILL).unwrap();
    let killed_at = Instant::now();

    // Down: the next logins fail (a restart takes a supervisor tick, up to 2 s, and a
    // start), and the metric says so.
    let down_until = Instant::now() + Duration::from_secs(1);
    let mut seen_down = false;
    while Instant::now() < down_until && !seen_down {
        if let Err(e) = pg_connect(&t).await {
            assert_eq!(code(&e), "08006", "{e}");
            let metrics = testkit::http::get(sluice.admin_addr, "/metrics", None).body;
            assert!(
                metrics.contains("sluice_backend_up{tenant=\"phoenix\"} 0"),
                "the backend is down in /metrics:\n{metrics}"
            );
            seen_down = true;
        }
    }
    assert!(seen_down, "no login failed in the second after the kill");

    eventually(
        Duration::from_secs(30),
        "serving after the restart",
        || async {
            let client = pg_connect(&t).await.map_err(|e| e.to_string())?;
            client
                .simple_query("SELECT 1")
                .await
                .map_err(|e| e.to_string())?;
            Ok(())
        },
    )
    .await;
    eprintln!("served again {:?} after the kill", killed_at.elapsed());
    let restarted = postmaster_pid(&pgdata).expect("a new postmaster");
    assert_ne!(restarted, killed, "a new postmaster runs");
    let log = sluice.log();
    assert!(
        log.contains("the tenant's backend is down; restarting it")
            && log.contains("restarted the tenant's backend"),
        "the supervisor logs the restart:\n{log}"
    );
    let metrics = testkit::http::get(sluice.admin_addr, "/metrics", None).body;
    assert!(
        metrics.contains("sluice_backend_up{tenant=\"phoenix\"} 1"),
        "the backend is up again in /metrics:\n{metrics}"
    );
    let tenant = expect(sluice, "GET", "/v1/tenants/phoenix", "", 200);
    assert_eq!(tenant["status"], "active", "{tenant}");
}

/// The value of one `/metrics` sample line (`name{labels} value`), if present.
fn metric(sluice: &SluiceProcess, series: &str) -> Option<f64> {
    let text = call(sluice, "GET", "/metrics", "", "").body;
    text.lines()
        .find_map(|line| line.strip_prefix(series)?.trim().parse().ok())
}

/// Scale to zero with the `local` driver: a tenant with `suspend_after_idle_s` has its
/// postmaster stopped once no client has been connected for that long (the supervisor
/// leaves it stopped); five clients logging in at once start it once and all get the
/// data it kept; while a client stays connected, it is never parked.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_tenant_is_parked_and_its_next_logins_start_it_once() {
    let env = start();
    let sluice = &env.sluice;
    let pgdata = backend_dir(&env.dir.path().join("sluice/data"), "nap").join("pgdata");
    provision_with(
        sluice,
        r#"{"id": "nap", "limits": {"suspend_after_idle_s": 2}}"#,
    );
    let password = make_role(sluice, "nap", "app");
    let t = target(sluice, &env.pki, "nap", "app", &password);
    let client = pg_connect(&t).await.expect("a client before parking");
    client
        .batch_execute("CREATE TABLE kept (n int); INSERT INTO kept VALUES (42)")
        .await
        .unwrap();
    // Connected clients keep it running, however long.
    tokio::time::sleep(Duration::from_secs(4)).await;
    assert!(postmaster_pid(&pgdata).is_some(), "parked under a client");
    drop(client);

    let parked = |sluice: &SluiceProcess| {
        expect(sluice, "GET", "/v1/tenants/nap/stats", "", 200)["backend_parked"] == json!(true)
    };
    eventually(Duration::from_secs(30), "the tenant is parked", || async {
        if parked(sluice) && postmaster_pid(&pgdata).is_none() {
            Ok(())
        } else {
            Err("not parked yet".to_owned())
        }
    })
    .await;
    assert_eq!(
        metric(sluice, r#"sluice_backend_parked{tenant="nap"}"#),
        Some(1.0)
    );
    // Two supervisor rounds later it is still stopped: parked is not down.
    tokio::time::sleep(Duration::from_secs(5)).await;
    assert!(parked(sluice) && postmaster_pid(&pgdata).is_none());
    assert_eq!(
        metric(sluice, r#"sluice_backend_up{tenant="nap"}"#),
        Some(1.0)
    );

    let started = Instant::now();
    let logins = (0..5).map(|_| {
        let t = t.clone();
        async move {
            let client = pg_connect(&t).await.map_err(|e| code(&e))?;
            let n: i32 = client
                .query_one("select n from kept", &[])
                .await
                .map_err(|e| code(&e))?
                .get(0);
            Ok::<_, String>((n, started.elapsed()))
        }
    });
    let answers = futures_util::future::join_all(logins).await;
    for answer in &answers {
        assert_eq!(answer.as_ref().map(|(n, _)| *n), Ok(42), "{answers:?}");
    }
    let slowest = answers.iter().flatten().map(|(_, t)| *t).max().unwrap();
    eprintln!("five logins to a parked tenant: slowest {slowest:?}");
    assert!(!parked(sluice));
    assert!(postmaster_pid(&pgdata).is_some());
    let series = |name: &str| format!(r#"{name}{{tenant="nap"}}"#);
    assert_eq!(
        metric(sluice, &series("sluice_cold_start_seconds_count")),
        Some(1.0)
    );
    assert_eq!(
        metric(sluice, &series("sluice_backend_parks_total")),
        Some(1.0)
    );
}
