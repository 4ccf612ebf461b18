//! Scale to zero: how long the first login to a parked tenant takes, per driver
//! (`SLUICE_BENCH_DRIVERS`, default `local,lxc`), and what parking frees. For each
//! driver, one `sluice serve` and one tenant with `suspend_after_idle_s = 1`; then
//! `SLUICE_BENCH_ROUNDS` times (default 10): wait until the tenant is parked (its stats
//! say `backend_parked`), then time a TLS + SCRAM login by SNI through Sluice up to the
//! answer of `SELECT 1` (the cold start), and a second login while it runs (warm).
//! Prints each round, the p50 / p90 / max of both, and the backend's memory while it
//! runs and while it is parked (`local`: the postmaster's processes' RSS; `lxc`: the
//! container's cgroup usage).
//!
//! `lxc` needs what the lxc tests need (skipped with the reason otherwise).
//! Run with `cargo bench --bench cold_start`; see benches/README.md.

mod common;

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::time::{Duration, Instant};

use common::{lxc_missing, lxc_template, percentile};
use testkit::clients::{pg_connect, PgTarget};
use testkit::{Pki, SluiceConfig, SluiceProcess};

const BIN: &str = env!("CARGO_BIN_EXE_sluice");

fn call(sluice: &SluiceProcess, method: &str, path: &str, body: &str) -> serde_json::Value {
    let r = sluice.api(method, path, body, "");
    assert!(r.status < 300, "{method} {path}: {} {}", r.status, r.body);
    r.json()
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let rounds: usize = std::env::var("SLUICE_BENCH_ROUNDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(10);
    let drivers = std::env::var("SLUICE_BENCH_DRIVERS").unwrap_or_else(|_| "local,lxc".into());
    println!("cold_start: {} UTC", common::utc_time_of_day());
    for driver in drivers.split(',').map(str::trim) {
        match driver {
            "local" => run(driver, rounds).await,
            "lxc" => match lxc_missing() {
                Some(reason) => println!("\ncold_start: SKIP lxc: {reason}"),
                None => run(driver, rounds).await,
            },
            other => panic!("SLUICE_BENCH_DRIVERS: unknown driver {other:?}"),
        }
    }
}

/// The backend's memory in MiB: the local postmaster's processes' RSS, or the lxc
/// container's cgroup usage; 0 when nothing runs.
fn backend_mib(driver: &str, root: &Path) -> f64 {
    if driver == "lxc" {
        let out = std::process::Command::new("lxc-cgroup")
            .args(["-n", "nap", "-P"])
            .arg(root.join("lxc/containers"))
            .arg("memory.usage_in_bytes")
            .output();
        return out
            .ok()
            .and_then(|o| {
                String::from_utf8_lossy(&o.stdout)
                    .trim()
                    .parse::<f64>()
                    .ok()
            })
            .map_or(0.0, |b| b / 1048576.0);
    }
    let pid_file = root.join("sluice/data/backends/nap/pgdata/postmaster.pid");
    let Some(pid) = std::fs::read_to_string(pid_file)
        .ok()
        .and_then(|s| s.lines().next()?.trim().parse::<u32>().ok())
    else {
        return 0.0;
    };
    // The postmaster and its children.
    let mut kib = 0u64;
    for entry in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let status = std::fs::read_to_string(entry.path().join("status")).unwrap_or_default();
        let field = |name: &str| {
            status
                .lines()
                .find_map(|l| l.strip_prefix(name))
                .and_then(|v| v.split_whitespace().next()?.parse::<u64>().ok())
        };
        let own = entry
            .file_name()
            .to_str()
            .and_then(|s| s.parse::<u32>().ok());
        if own == Some(pid) || field("PPid:") == Some(u64::from(pid)) {
            kib += field("VmRSS:").unwrap_or(0);
        }
    }
    kib as f64 / 1024.0
}

async fn run(driver: &str, rounds: usize) {
    let dir = tempfile::Builder::new()
        .prefix("sluice-bench-cold-start-")
        .tempdir()
        .unwrap();
    let pki = Pki::generate(&dir.path().join("pki")).unwrap();
    let mut config = SluiceConfig::new(&pki);
    config.log = "info".into();
    if driver == "lxc" {
        // The containers' root passes through the directories above their rootfs.
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o711)).unwrap();
        config.plans = format!(
            "\n[provisioner]\ndriver = \"lxc\"\n[provisioner.lxc]\npath = {:?}\ntemplate = {:?}\n",
            dir.path().join("lxc").display().to_string(),
            lxc_template().display().to_string(),
        );
    }
    let sluice = tokio::task::block_in_place(|| {
        SluiceProcess::start(BIN.as_ref(), &dir.path().join("sluice"), &config)
    })
    .expect("starting sluice");
    let created = call(
        &sluice,
        "POST",
        "/v1/tenants",
        r#"{"id": "nap", "limits": {"suspend_after_idle_s": 1}}"#,
    );
    let job = created["job"]["id"].as_i64().unwrap();
    let deadline = Instant::now() + Duration::from_secs(600);
    loop {
        let state = call(&sluice, "GET", &format!("/v1/jobs/{job}"), "");
        match state["state"].as_str() {
            Some("succeeded") => break,
            Some("failed") => panic!("job failed: {state}"),
            _ => {}
        }
        assert!(Instant::now() < deadline, "job {job} did not finish");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let role = call(
        &sluice,
        "POST",
        "/v1/tenants/nap/roles",
        r#"{"name": "app"}"#,
    );
    let target = PgTarget {
        user: "app".into(),
        ..PgTarget::tenant(
            sluice.addr,
            "nap",
            role["password"].as_str().unwrap(),
            &pki.ca_cert,
        )
    };
    println!("\ncold start, {driver} driver, {rounds} rounds (login + SELECT 1 over TLS + SCRAM)");
    println!(
        "{:<6} {:>10} {:>10} {:>14} {:>14}",
        "round", "cold ms", "warm ms", "running MiB", "parked MiB"
    );
    let (mut cold, mut warm) = (Vec::new(), Vec::new());
    for round in 0..rounds {
        let running = backend_mib(driver, dir.path());
        let deadline = Instant::now() + Duration::from_secs(60);
        while call(&sluice, "GET", "/v1/tenants/nap/stats", "")["backend_parked"] != true {
            assert!(Instant::now() < deadline, "the tenant was never parked");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let parked = backend_mib(driver, dir.path());
        let started = Instant::now();
        let client = match pg_connect(&target).await {
            Ok(client) => client,
            Err(e) => panic!("a cold login: {e}\n{}", sluice.log()),
        };
        client.simple_query("SELECT 1").await.expect("a cold query");
        cold.push(started.elapsed());
        let started = Instant::now();
        let second = pg_connect(&target).await.expect("a warm login");
        second.simple_query("SELECT 1").await.expect("a warm query");
        warm.push(started.elapsed());
        drop((client, second));
        println!(
            "{round:<6} {:>10.0} {:>10.0} {running:>14.1} {parked:>14.1}",
            cold[round].as_secs_f64() * 1e3,
            warm[round].as_secs_f64() * 1e3,
        );
    }
    cold.sort();
    warm.sort();
    let ms = |d: Duration| d.as_secs_f64() * 1e3;
    println!(
        "{driver} cold: p50 {:.0} ms, p90 {:.0} ms, max {:.0} ms; warm: p50 {:.0} ms",
        ms(percentile(&cold, 0.5)),
        ms(percentile(&cold, 0.9)),
        ms(*cold.last().unwrap()),
        ms(percentile(&warm, 0.5)),
    );
}
