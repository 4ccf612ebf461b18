//! Direct Postgres vs Sluice on the same machine in one run: `SELECT 1` latency at one
//! client (p50/p99) and `pgbench -S` throughput at 16 clients, with TLS on the client
//! leg in both cases. Run with `cargo bench --bench data_path`; see benches/README.md.
//!
//! Every loop here is bounded by pgbench's `-T`; everything started is stopped on exit.

use std::path::Path;

use testkit::{OneTenant, PgTarget, SluiceConfig, SluiceProcess, TenantEntry};

mod common;
use common::seconds;
use testkit::pgbench::{logged_latencies_us, percentile};

const BIN: &str = env!("CARGO_BIN_EXE_sluice");

/// Runs pgbench and returns its stdout; panics with stderr on failure.
fn pgbench(target: &PgTarget, args: &[&str]) -> String {
    let out = testkit::pgbench(target, args);
    assert!(out.success, "pgbench {args:?}: {}", out.stderr);
    out.stdout
}

fn tps(stdout: &str) -> f64 {
    stdout
        .lines()
        .find_map(|l| l.strip_prefix("tps = "))
        .and_then(|l| l.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .expect("tps line")
}

/// p50 and p99 of per-transaction latencies (µs) from pgbench's `--log` files.
fn latency_percentiles(log_dir: &Path, prefix: &str) -> (f64, f64) {
    let latencies = logged_latencies_us(log_dir, prefix);
    assert!(!latencies.is_empty(), "no pgbench log lines");
    (percentile(&latencies, 0.50), percentile(&latencies, 0.99))
}

fn main() {
    // `cargo bench` passes `--bench`; nothing else to parse.
    let OneTenant { dir, pki, cluster } = OneTenant::start("sluice-bench-").unwrap();
    let mut config = SluiceConfig::new(&pki);
    // Sluice reaches the backend over its unix socket; the client leg is TLS either way.
    config.tenants = vec![TenantEntry::over_unix_socket(&cluster, &pki)];
    config.default_pool = vec!["size = 20".into()];
    let sluice = SluiceProcess::start(BIN.as_ref(), &dir.path().join("sluice"), &config).unwrap();

    let through_sluice = PgTarget::tenant(sluice.addr, "acme", &cluster.app_password, &pki.ca_cert);
    let mut direct = through_sluice.clone();
    direct.sni_host = Some("localhost".into());
    direct.addr = std::net::SocketAddr::from(([127, 0, 0, 1], cluster.tcp_port.unwrap()));
    direct.sslmode = "require";
    let mut via = through_sluice.clone();
    via.sslmode = "require";

    pgbench(&direct, &["-i", "-s", "1", "-q"]);
    let select1 = dir.path().join("select1.sql");
    std::fs::write(&select1, "SELECT 1;\n").unwrap();
    let secs = seconds();
    let logs = dir.path().join("logs");
    std::fs::create_dir_all(&logs).unwrap();

    println!("| measurement | direct | Sluice | Sluice / direct |");
    println!("|---|---|---|---|");
    let mut rows = Vec::new();
    for (name, target) in [("direct", &direct), ("sluice", &via)] {
        let prefix = logs.join(name);
        pgbench(
            target,
            &[
                "-n",
                "-c",
                "1",
                "-T",
                &secs,
                "-M",
                "simple",
                "-f",
                select1.to_str().unwrap(),
                "--log",
                "--log-prefix",
                prefix.to_str().unwrap(),
            ],
        );
        let (p50, p99) = latency_percentiles(&logs, name);
        let tps16 = tps(&pgbench(
            target,
            &["-n", "-S", "-c", "16", "-j", "2", "-T", &secs],
        ));
        rows.push((p50, p99, tps16));
    }
    let (d, s) = (rows[0], rows[1]);
    println!(
        "| SELECT 1 p50 latency, -c 1 (µs) | {:.0} | {:.0} | {:.2} (+{:.0} µs) |",
        d.0,
        s.0,
        s.0 / d.0,
        s.0 - d.0
    );
    println!(
        "| SELECT 1 p99 latency, -c 1 (µs) | {:.0} | {:.0} | {:.2} |",
        d.1,
        s.1,
        s.1 / d.1
    );
    println!(
        "| pgbench -S -c 16 -j 2 TPS | {:.0} | {:.0} | {:.2} |",
        d.2,
        s.2,
        s.2 / d.2
    );
    drop(sluice);
    drop(cluster);
}
