//! Create-tenant-to-first-query time with the `local` provisioner: one `sluice serve`
//! (embedded control store), then for each of `SLUICE_BENCH_TENANTS` tenants (default
//! 10), one after another, the clock runs from `POST /v1/tenants` through the job
//! (`GET /v1/jobs/{id}` polled every 20 ms), `POST /v1/tenants/{id}/roles`, and a TLS
//! login by SNI through Sluice up to the answer of `SELECT 1`. Prints each tenant's
//! phases and the p50 / p90 / max of the total.
//!
//! Run with `cargo bench --bench provision`; see benches/README.md.
//!
//! Every loop is bounded by a deadline; Sluice (and with it every tenant cluster) is
//! stopped when the guard drops, also on panic.

use std::time::{Duration, Instant};

use testkit::clients::{pg_connect, PgTarget};
use testkit::http::request;
use testkit::{Pki, SluiceConfig, SluiceProcess};

const BIN: &str = env!("CARGO_BIN_EXE_sluice");

fn call(sluice: &SluiceProcess, method: &str, path: &str, body: &str) -> serde_json::Value {
    let headers = if body.is_empty() {
        ""
    } else {
        "Content-Type: application/json\r\n"
    };
    let r = request(
        sluice.admin_addr,
        method,
        path,
        Some(&sluice.admin_key),
        headers,
        body.as_bytes(),
    )
    .unwrap_or_else(|e| panic!("{method} {path}: {e}"));
    assert!(r.status < 300, "{method} {path}: {} {}", r.status, r.body);
    r.json()
}

struct Timing {
    job: Duration,
    role: Duration,
    login: Duration,
    total: Duration,
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let rank = ((p * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
    sorted[rank - 1]
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let tenants: usize = std::env::var("SLUICE_BENCH_TENANTS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(10);
    let dir = tempfile::Builder::new()
        .prefix("sluice-bench-provision-")
        .tempdir()
        .unwrap();
    let pki = Pki::generate(&dir.path().join("pki")).unwrap();
    let sluice = SluiceProcess::start(
        BIN.as_ref(),
        &dir.path().join("sluice"),
        &SluiceConfig::new(&pki),
    )
    .expect("starting sluice");
    println!("create-tenant-to-first-query, local driver, {tenants} tenants one after another");
    println!(
        "{:<8} {:>10} {:>10} {:>10} {:>10}",
        "tenant", "job ms", "role ms", "login ms", "total ms"
    );
    let mut timings = Vec::new();
    for n in 0..tenants {
        let id = format!("bench{n}");
        let started = Instant::now();
        let created = call(
            &sluice,
            "POST",
            "/v1/tenants",
            &format!(r#"{{"id": "{id}"}}"#),
        );
        let job = created["job"]["id"].as_i64().unwrap();
        let deadline = started + Duration::from_secs(120);
        loop {
            let state = call(&sluice, "GET", &format!("/v1/jobs/{job}"), "");
            match state["state"].as_str() {
                Some("succeeded") => break,
                Some("failed") => panic!("job failed: {state}"),
                _ => {}
            }
            assert!(Instant::now() < deadline, "job {job} did not finish");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let job_done = started.elapsed();
        let role = call(
            &sluice,
            "POST",
            &format!("/v1/tenants/{id}/roles"),
            r#"{"name": "app"}"#,
        );
        let role_done = started.elapsed();
        let target = PgTarget {
            user: "app".into(),
            ..PgTarget::tenant(
                sluice.addr,
                &id,
                role["password"].as_str().unwrap(),
                &pki.ca_cert,
            )
        };
        let client = pg_connect(&target).await.expect("first login");
        client.simple_query("SELECT 1").await.expect("first query");
        let total = started.elapsed();
        let t = Timing {
            job: job_done,
            role: role_done - job_done,
            login: total - role_done,
            total,
        };
        println!(
            "{id:<8} {:>10.0} {:>10.0} {:>10.0} {:>10.0}",
            t.job.as_secs_f64() * 1e3,
            t.role.as_secs_f64() * 1e3,
            t.login.as_secs_f64() * 1e3,
            t.total.as_secs_f64() * 1e3
        );
        timings.push(t);
    }
    let mut totals: Vec<Duration> = timings.iter().map(|t| t.total).collect();
    totals.sort();
    println!(
        "total: p50 {:.0} ms, p90 {:.0} ms, max {:.0} ms",
        percentile(&totals, 0.5).as_secs_f64() * 1e3,
        percentile(&totals, 0.9).as_secs_f64() * 1e3,
        totals.last().unwrap().as_secs_f64() * 1e3
    );
}
