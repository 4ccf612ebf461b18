//! Create-tenant-to-first-query time per provisioner driver (`SLUICE_BENCH_DRIVERS`,
//! default `local,lxc,proxmox`): for each, one `sluice serve` (embedded control store),
//! then for each of `SLUICE_BENCH_TENANTS` tenants (default 10), one after another, the
//! clock runs from `POST /v1/tenants` through the job (`GET /v1/jobs/{id}` polled every
//! 20 ms), `POST /v1/tenants/{id}/roles`, and a TLS login by SNI through Sluice up to the
//! answer of `SELECT 1`. Prints each tenant's phases and the p50 / p90 / max of the
//! total; for `lxc` also each container's memory (its cgroup's usage) and disk once all
//! run. `SLUICE_BENCH_LXC_STORAGE=btrfs` puts the lxc containers on btrfs storage (a
//! 16 GiB image file the driver makes and loop-mounts in the bench's temporary directory,
//! unmounted at the end); the default is `dir`.
//!
//! `lxc` needs root, lxc, uidmap and mmdebstrap (skipped with the reason otherwise); its
//! template is the tests' (`SLUICE_TEST_LXC_TEMPLATE`, default
//! /var/tmp/sluice-test-lxc/template; built on first use). `proxmox` runs against the
//! fake Proxmox VE of testkit (each container a real local cluster, tasks of 150 ms):
//! it measures the driver's path, not a real cluster's.
//!
//! Run with `cargo bench --bench provision`; see benches/README.md.
//!
//! Every loop is bounded by a deadline; Sluice (and with it every tenant cluster) is
//! stopped when the guard drops, also on panic.

mod common;

use std::os::unix::fs::PermissionsExt;
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

struct Timing {
    job: Duration,
    role: Duration,
    login: Duration,
    total: Duration,
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let tenants: usize = std::env::var("SLUICE_BENCH_TENANTS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(10);
    let drivers =
        std::env::var("SLUICE_BENCH_DRIVERS").unwrap_or_else(|_| "local,lxc,proxmox".into());
    for driver in drivers.split(',').map(str::trim) {
        match driver {
            "local" => run(driver, tenants, String::new()).await,
            "lxc" => match lxc_missing() {
                Some(reason) => println!("\nprovision: SKIP lxc: {reason}"),
                None => run(driver, tenants, String::new()).await,
            },
            "proxmox" => {
                use testkit::fake_pve::{FakePve, FakePveOptions};
                let fake = FakePve::start(FakePveOptions::default()).await.unwrap();
                let secret =
                    std::env::temp_dir().join(format!("sluice-bench-pve-{}", std::process::id()));
                let section = fake.provisioner_section(&secret);
                run(driver, tenants, section).await;
                let _ = std::fs::remove_file(secret);
            }
            other => panic!("SLUICE_BENCH_DRIVERS: unknown driver {other:?}"),
        }
    }
}

/// Provisions `tenants` tenants one after another with `driver` (`extra`: its config).
async fn run(driver: &str, tenants: usize, extra: String) {
    let dir = tempfile::Builder::new()
        .prefix("sluice-bench-provision-")
        .tempdir()
        .unwrap();
    let pki = Pki::generate(&dir.path().join("pki")).unwrap();
    let mut config = SluiceConfig::new(&pki);
    config.log = "info".into();
    config.plans = if driver == "lxc" {
        // The containers' root passes through the directories above their rootfs.
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o711)).unwrap();
        format!(
            "\n[provisioner]\ndriver = \"lxc\"\n[provisioner.lxc]\npath = {:?}\ntemplate = {:?}\n{}",
            dir.path().join("lxc").display().to_string(),
            lxc_template().display().to_string(),
            if lxc_btrfs() {
                "storage = \"btrfs\"\nbtrfs_image_gib = 16\n"
            } else {
                ""
            },
        )
    } else {
        format!("\n{extra}")
    };
    let sluice = tokio::task::block_in_place(|| {
        SluiceProcess::start(BIN.as_ref(), &dir.path().join("sluice"), &config)
    })
    .expect("starting sluice");
    let storage = match (driver, lxc_btrfs()) {
        ("lxc", true) => " (storage btrfs)",
        ("lxc", false) => " (storage dir)",
        _ => "",
    };
    println!(
        "\ncreate-tenant-to-first-query, {driver} driver{storage}, {tenants} tenants one after another"
    );
    println!(
        "{:<8} {:>10} {:>10} {:>10} {:>10}",
        "tenant", "job ms", "role ms", "login ms", "total ms"
    );
    let mut timings = Vec::new();
    for n in 0..tenants {
        let id = format!("bench{n}");
        let started = Instant::now();
        let created = tokio::task::block_in_place(|| {
            call(
                &sluice,
                "POST",
                "/v1/tenants",
                &format!(r#"{{"id": "{id}"}}"#),
            )
        });
        let job = created["job"]["id"].as_i64().unwrap();
        // The first lxc tenant on a machine builds the template (minutes).
        let deadline = started + Duration::from_secs(600);
        loop {
            let state = tokio::task::block_in_place(|| {
                call(&sluice, "GET", &format!("/v1/jobs/{job}"), "")
            });
            match state["state"].as_str() {
                Some("succeeded") => break,
                Some("failed") => panic!("job failed: {state}"),
                _ => {}
            }
            assert!(Instant::now() < deadline, "job {job} did not finish");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let job_done = started.elapsed();
        let role = tokio::task::block_in_place(|| {
            call(
                &sluice,
                "POST",
                &format!("/v1/tenants/{id}/roles"),
                r#"{"name": "app"}"#,
            )
        });
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
        "{driver} total: p50 {:.0} ms, p90 {:.0} ms, max {:.0} ms",
        percentile(&totals, 0.5).as_secs_f64() * 1e3,
        percentile(&totals, 0.9).as_secs_f64() * 1e3,
        totals.last().unwrap().as_secs_f64() * 1e3
    );
    if driver == "lxc" {
        let containers = dir.path().join("lxc/containers");
        let mut mib = Vec::new();
        for n in 0..tenants {
            let out = std::process::Command::new("lxc-cgroup")
                .args(["-n", &format!("bench{n}"), "-P"])
                .arg(&containers)
                .arg("memory.usage_in_bytes")
                .output()
                .unwrap();
            if let Ok(bytes) = String::from_utf8_lossy(&out.stdout).trim().parse::<u64>() {
                mib.push(bytes as f64 / 1048576.0);
            }
        }
        if !mib.is_empty() {
            mib.sort_by(f64::total_cmp);
            println!(
                "lxc memory per container (cgroup memory.usage_in_bytes, idle after one query): min {:.1} MiB, median {:.1} MiB, max {:.1} MiB",
                mib[0],
                mib[mib.len() / 2],
                mib[mib.len() - 1]
            );
        }
        lxc_disk(&containers, tenants);
    }
    drop(sluice);
    if driver == "lxc" && lxc_btrfs() {
        let containers = dir.path().join("lxc/containers");
        let out = std::process::Command::new("umount")
            .arg(&containers)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "umount {}: {}",
            containers.display(),
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

fn lxc_btrfs() -> bool {
    std::env::var("SLUICE_BENCH_LXC_STORAGE").is_ok_and(|v| v == "btrfs")
}

/// Prints each container's own disk: with btrfs the exclusive bytes of its rootfs's and
/// its WAL's qgroups (what it does not share with the template), else its rootfs's
/// allocated blocks (`du`).
fn lxc_disk(containers: &std::path::Path, tenants: usize) {
    let run = |program: &str, args: &[&str]| {
        let out = std::process::Command::new(program)
            .args(args)
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let mount = containers.to_str().unwrap();
    let mut mib = Vec::new();
    if lxc_btrfs() {
        run("btrfs", &["filesystem", "sync", mount]);
        let qgroups = run("btrfs", &["qgroup", "show", "--raw", mount]);
        let exclusive = |path: &std::path::Path| -> Option<u64> {
            let id = format!(
                "0/{}",
                run("btrfs", &["inspect-internal", "rootid", path.to_str()?]).trim()
            );
            qgroups
                .lines()
                .map(|l| l.split_whitespace().collect::<Vec<_>>())
                .find(|f| f.first() == Some(&id.as_str()))?
                .get(2)?
                .parse()
                .ok()
        };
        for n in 0..tenants {
            let rootfs = containers.join(format!("bench{n}/rootfs"));
            let wal = rootfs.join("var/lib/postgresql/15/main/pg_wal");
            if let (Some(a), Some(b)) = (exclusive(&rootfs), exclusive(&wal)) {
                mib.push((a + b) as f64 / 1048576.0);
            }
        }
    } else {
        for n in 0..tenants {
            let rootfs = containers.join(format!("bench{n}/rootfs"));
            let du = run("du", &["-s", "--block-size=1", rootfs.to_str().unwrap()]);
            if let Some(bytes) = du
                .split_whitespace()
                .next()
                .and_then(|v| v.parse::<u64>().ok())
            {
                mib.push(bytes as f64 / 1048576.0);
            }
        }
    }
    if !mib.is_empty() {
        mib.sort_by(f64::total_cmp);
        println!(
            "lxc disk per container ({}, after one query): min {:.1} MiB, median {:.1} MiB, max {:.1} MiB",
            if lxc_btrfs() {
                "btrfs qgroup exclusive bytes, rootfs + pg_wal"
            } else {
                "du of the rootfs"
            },
            mib[0],
            mib[mib.len() / 2],
            mib[mib.len() - 1]
        );
    }
}
