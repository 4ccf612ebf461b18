//! Storage watermarks end to end (docs/limits.md, "Storage watermarks"), in both pool
//! modes: a real `sluice serve` samples acme's databases every second; with a limit a
//! little over their size, acme crosses 80 % (stats, metrics, audit event), then 100 %:
//! writes fail with 53100 naming the quota, in a session that was open before too,
//! reads work, the ways around `default_transaction_read_only` are refused, globex
//! writes on; a DROP TABLE brings acme under and writes work again; a lower limit
//! makes it full at once and a higher one lets it write again. No timing assertions:
//! everything is polled with generous bounds.

use std::time::{Duration, Instant};

use serde_json::Value;
use testkit::http::{get, request};
use testkit::{pg_connect, SluiceProcess, TwoTenants};
use tokio_postgres::Client;

const BIN: &str = env!("CARGO_BIN_EXE_sluice");
const MIB: u64 = 1 << 20;
/// How long anything may take to show (a sample is taken every second).
const PATIENCE: Duration = Duration::from_secs(90);

fn start(mode: &str) -> TwoTenants {
    TwoTenants::start(BIN.as_ref(), |c| {
        c.plans = "\n[usage]\nflush_interval_s = 1\ndisk_sample_interval_s = 1\n".into();
        for t in &mut c.tenants {
            t.pool = vec![format!("mode = \"{mode}\"")];
        }
    })
    .expect("test environment")
}

fn stats(sluice: &SluiceProcess) -> Value {
    let r = get(
        sluice.admin_addr,
        "/v1/tenants/acme/stats",
        Some(&sluice.admin_key),
    );
    assert_eq!(r.status, 200, "{}", r.body);
    r.json()
}

fn patch_limit(sluice: &SluiceProcess, mb: u64) {
    let body = format!(r#"{{"limits": {{"disk_limit_mb": {mb}}}}}"#);
    let r = request(
        sluice.admin_addr,
        "PATCH",
        "/v1/tenants/acme",
        Some(&sluice.admin_key),
        "Content-Type: application/json\r\n",
        body.as_bytes(),
    )
    .expect("PATCH");
    assert_eq!(r.status, 200, "{}", r.body);
}

fn metric(sluice: &SluiceProcess, name: &str) -> Option<u64> {
    let body = get(sluice.admin_addr, "/metrics", None).body;
    let prefix = format!("{name}{{tenant=\"acme\"}} ");
    body.lines()
        .find_map(|l| l.strip_prefix(prefix.as_str()))
        .map(|v| v.trim().parse().unwrap())
}

fn audit(sluice: &SluiceProcess, action: &str) -> Vec<Value> {
    let events = get(
        sluice.admin_addr,
        &format!("/v1/audit-events?action={action}&tenant=acme"),
        Some(&sluice.admin_key),
    )
    .json();
    events["events"].as_array().cloned().unwrap_or_default()
}

/// Polls `check` until it gives a value, for up to [`PATIENCE`].
async fn eventually<T>(what: &str, mut check: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + PATIENCE;
    loop {
        if let Some(v) = check() {
            return v;
        }
        assert!(Instant::now() < deadline, "gave up waiting for {what}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// The SQLSTATE and message of a failed statement.
fn failure(result: Result<impl std::fmt::Debug, tokio_postgres::Error>) -> (String, String) {
    let err = result.expect_err("the statement should fail");
    match err.as_db_error() {
        Some(db) => (db.code().code().to_owned(), db.message().to_owned()),
        None => ("none".into(), err.to_string()),
    }
}

fn assert_quota(failed: (String, String)) {
    assert_eq!(failed.0, "53100", "{failed:?}");
    assert!(
        failed
            .1
            .starts_with("tenant \"acme\" is over its disk quota (")
            && failed
                .1
                .ends_with("): read-only until it is under again or its plan grows"),
        "{failed:?}"
    );
}

/// About 1.3 MB more of table `big`.
const GROW: &str = "INSERT INTO big SELECT g, md5(g::text) FROM generate_series(1, 20000) g";

async fn scenario(mode: &str) {
    let env = start(mode);
    let sluice = &env.sluice;
    let base = eventually("acme's first disk sample", || {
        stats(sluice)["disk"]["bytes"].as_u64()
    })
    .await;
    // Its databases are 70 % of the limit.
    let limit_mb = (base * 10 / 7).div_ceil(MIB);
    patch_limit(sluice, limit_mb);
    let disk = stats(sluice)["disk"].clone();
    assert_eq!(disk["limit_bytes"], limit_mb * MIB, "{disk}");
    assert_eq!(disk["state"], "ok", "{disk}");
    assert_eq!(
        metric(sluice, "sluice_tenant_disk_limit_bytes"),
        Some(limit_mb * MIB)
    );

    let held = pg_connect(&env.target("acme")).await.unwrap();
    held.batch_execute("CREATE TABLE big (id int, v text); CREATE TABLE small (id int)")
        .await
        .unwrap();
    // Over 80 %.
    let mut grown = 0;
    loop {
        let state = stats(sluice)["disk"]["state"].as_str().unwrap().to_owned();
        if state == "warning" {
            break;
        }
        assert_eq!(state, "ok", "went from ok to {state} in one step");
        assert!(grown < 200, "never reached the warning");
        held.batch_execute(GROW).await.unwrap();
        grown += 1;
        let sampled = stats(sluice)["disk"]["sampled_at"].clone();
        eventually("a new sample", || {
            (stats(sluice)["disk"]["sampled_at"] != sampled).then_some(())
        })
        .await;
    }
    let warned = eventually("tenant.disk_warning", || {
        audit(sluice, "tenant.disk_warning").first().cloned()
    })
    .await;
    assert_eq!(warned["actor"], "sluice", "{warned}");
    assert_eq!(warned["details"]["state"], "warning", "{warned}");
    assert!(metric(sluice, "sluice_tenant_disk_bytes").unwrap() * 5 >= limit_mb * MIB * 4);

    // To 100 %: the session open since before is refused too.
    let deadline = Instant::now() + PATIENCE;
    let failed = loop {
        match held.batch_execute(GROW).await {
            Ok(()) => {}
            Err(e) => break failure(Err::<(), _>(e)),
        }
        assert!(Instant::now() < deadline, "writes never refused");
        tokio::time::sleep(Duration::from_millis(300)).await;
    };
    assert_quota(failed);
    assert_eq!(stats(sluice)["disk"]["state"], "full");
    let full = eventually("tenant.disk_full", || {
        audit(sluice, "tenant.disk_full").first().cloned()
    })
    .await;
    assert_eq!(full["details"]["limit_bytes"], limit_mb * MIB, "{full}");
    assert_eq!(
        audit(sluice, "tenant.disk_warning").len(),
        1,
        "once per transition"
    );

    // Reads work; writes and the ways around read-only do not, in a new session too.
    let fresh = pg_connect(&env.target("acme")).await.unwrap();
    for client in [&held, &fresh] {
        let n: i64 = client
            .query_one("SELECT count(*) FROM big", &[])
            .await
            .unwrap()
            .get(0);
        assert!(n > 0);
        assert_quota(failure(
            client.batch_execute("INSERT INTO small VALUES (1)").await,
        ));
        assert_quota(failure(
            client
                .execute("INSERT INTO small VALUES ($1)", &[&1i32])
                .await,
        ));
        for sneak in [
            "BEGIN READ WRITE",
            "START TRANSACTION READ WRITE",
            "SET default_transaction_read_only = off",
            "SET SESSION CHARACTERISTICS AS TRANSACTION READ WRITE",
            "RESET ALL",
        ] {
            assert_quota(failure(client.batch_execute(sneak).await));
        }
        assert_quota(failure(
            client
                .query(
                    "SELECT set_config('default_transaction_read_only', 'off', false)",
                    &[],
                )
                .await,
        ));
        // Inside a transaction: the write fails, the transaction is aborted.
        client.batch_execute("BEGIN").await.unwrap();
        assert_quota(failure(
            client.batch_execute("INSERT INTO small VALUES (1)").await,
        ));
        client.batch_execute("ROLLBACK").await.unwrap();
        assert_quota(failure(
            client.batch_execute("INSERT INTO small VALUES (1)").await,
        ));
    }
    // Another tenant writes on.
    let globex = pg_connect(&env.target("globex")).await.unwrap();
    globex
        .batch_execute("CREATE TABLE t (id int); INSERT INTO t VALUES (1)")
        .await
        .unwrap();

    // Dropping the table brings acme under: writes work again, without reconnecting.
    fresh.batch_execute("DROP TABLE big").await.unwrap();
    for client in [&fresh, &held] {
        let deadline = Instant::now() + PATIENCE;
        while client
            .batch_execute("INSERT INTO small VALUES (1)")
            .await
            .is_err()
        {
            assert!(Instant::now() < deadline, "writes never came back");
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
    }
    assert_eq!(stats(sluice)["disk"]["state"], "ok");
    eventually("tenant.disk_ok", || {
        audit(sluice, "tenant.disk_ok").first().cloned()
    })
    .await;

    // A limit below the size: full at once; raised again: writable at once.
    let now = stats(sluice)["disk"]["bytes"].as_u64().unwrap();
    patch_limit(sluice, (now / MIB).max(2) - 1);
    assert_eq!(stats(sluice)["disk"]["state"], "full");
    let deadline = Instant::now() + PATIENCE;
    while fresh
        .batch_execute("INSERT INTO small VALUES (2)")
        .await
        .is_ok()
    {
        assert!(Instant::now() < deadline, "the lower limit never applied");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    patch_limit(sluice, limit_mb * 100);
    assert_eq!(stats(sluice)["disk"]["state"], "ok");
    fresh
        .batch_execute("INSERT INTO small VALUES (3)")
        .await
        .unwrap();
    held.batch_execute("INSERT INTO small VALUES (3)")
        .await
        .unwrap();
    check_held_is_usable(&held).await;
}

async fn check_held_is_usable(client: &Client) {
    let n: i64 = client
        .query_one("SELECT count(*) FROM small WHERE id = 3", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(n, 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn session_mode_tenant_over_its_disk_quota_is_read_only() {
    scenario("session").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transaction_mode_tenant_over_its_disk_quota_is_read_only() {
    scenario("transaction").await;
}
