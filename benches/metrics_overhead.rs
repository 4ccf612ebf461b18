//! The cost of metrics on the hot path, in one run on one machine: two `sluice serve`
//! processes in front of one Postgres 15 cluster, both in transaction mode with 5 server
//! connections, A with metrics on (the default) and scraped once per second during its
//! runs (what Prometheus does), B with `[metrics] enabled = false` (no latency
//! histograms observed; the per-pool counters stay). Workload:
//! `pgbench -n -S -M {simple,extended} -c 50 -j 2 -T $SLUICE_BENCH_SECONDS`, client leg
//! TLS with SNI, runs alternated A, B, A, B, A, B per mode so drift hits both alike. Per
//! run: TPS, average latency, and Sluice CPU µs per transaction (utime+stime from
//! /proc/PID/stat over transactions processed).
//!
//! Run with `cargo bench --bench metrics_overhead`; see benches/README.md.
//!
//! Every loop here is bounded by pgbench's `-T`, a stop flag or a fixed deadline;
//! everything started is stopped on exit, also on panic (Drop guards).

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use testkit::{OneTenant, PgTarget, SluiceConfig, SluiceProcess, TenantEntry};

mod common;
use common::seconds;
use testkit::procfs::field;
use testkit::procfs::{clock_ticks_per_second, cpu_ticks};

const BIN: &str = env!("CARGO_BIN_EXE_sluice");
const MODES: [&str; 2] = ["simple", "extended"];
const CONFIGS: [&str; 2] = ["on", "off"];
const ROUNDS: usize = 3;

/// Scrapes `/metrics` once per second until dropped (stop flag, then join; each
/// request has testkit's 30 s read timeout, and the loop a hard deadline).
struct Scraper {
    stop: Arc<AtomicBool>,
    scrapes: Arc<AtomicU64>,
    errors: Arc<AtomicU64>,
    thread: Option<JoinHandle<()>>,
}

impl Scraper {
    fn start(admin: SocketAddr, limit: Duration) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let scrapes = Arc::new(AtomicU64::new(0));
        let errors = Arc::new(AtomicU64::new(0));
        let (s, n, e) = (stop.clone(), scrapes.clone(), errors.clone());
        let thread = std::thread::spawn(move || {
            let deadline = Instant::now() + limit;
            while !s.load(Ordering::Relaxed) && Instant::now() < deadline {
                let next = Instant::now() + Duration::from_secs(1);
                match testkit::http::request(admin, "GET", "/metrics", None, "", b"") {
                    Ok(r) if r.status == 200 => n.fetch_add(1, Ordering::Relaxed),
                    _ => e.fetch_add(1, Ordering::Relaxed),
                };
                while !s.load(Ordering::Relaxed) && Instant::now() < next {
                    std::thread::sleep(Duration::from_millis(20));
                }
            }
        });
        Scraper {
            stop,
            scrapes,
            errors,
            thread: Some(thread),
        }
    }
}

impl Scraper {
    /// Stops and joins the thread; the scrapes that succeeded and failed.
    fn finish(mut self) -> (u64, u64) {
        self.stop_and_join();
        (
            self.scrapes.load(Ordering::Relaxed),
            self.errors.load(Ordering::Relaxed),
        )
    }

    fn stop_and_join(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for Scraper {
    fn drop(&mut self) {
        self.stop_and_join();
    }
}

#[derive(Debug, Clone)]
struct Run {
    tps: f64,
    latency_ms: f64,
    processed: u64,
    failed: u64,
    aborted_clients: usize,
    cpu_us_per_txn: f64,
}

impl Run {
    fn usable(&self) -> bool {
        self.aborted_clients == 0 && self.failed == 0 && self.processed > 0
    }
}

/// One pgbench run against `target`, charging `pid`'s CPU time to its transactions.
fn bench(target: &PgTarget, mode: &str, secs: &str, pid: u32, hz: f64) -> Run {
    let before = cpu_ticks(pid);
    let out = testkit::pgbench(
        target,
        &["-n", "-S", "-M", mode, "-c", "50", "-j", "2", "-T", secs],
    );
    let after = cpu_ticks(pid);
    let processed = field(&out.stdout, "number of transactions actually processed:").unwrap_or(0);
    assert!(
        processed > 0,
        "pgbench -M {mode} produced no transactions:\n{}\n{}",
        out.stdout,
        out.stderr
    );
    Run {
        tps: field(&out.stdout, "tps =").unwrap_or(0.0),
        latency_ms: field(&out.stdout, "latency average =").unwrap_or(f64::NAN),
        processed,
        failed: field(&out.stdout, "number of failed transactions:").unwrap_or(0),
        aborted_clients: out.stderr.matches("aborted in command").count(),
        cpu_us_per_txn: (after - before) as f64 / hz * 1e6 / processed as f64,
    }
}

fn median(mut v: Vec<f64>) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_by(f64::total_cmp);
    let mid = v.len() / 2;
    if v.len() % 2 == 1 {
        v[mid]
    } else {
        (v[mid - 1] + v[mid]) / 2.0
    }
}

/// `(max - min) / median` of the usable runs, in percent.
fn spread(v: &[f64]) -> f64 {
    let max = v.iter().copied().fold(f64::NAN, f64::max);
    let min = v.iter().copied().fold(f64::NAN, f64::min);
    (max - min) / median(v.to_vec()) * 100.0
}

fn list(runs: &[Run], f: fn(&Run) -> f64, decimals: usize) -> String {
    runs.iter()
        .map(|r| {
            let s = format!("{:.*}", decimals, f(r));
            if r.usable() {
                s
            } else {
                format!("{s}*")
            }
        })
        .collect::<Vec<_>>()
        .join(", ")
}

fn main() {
    // `cargo bench` passes `--bench`; nothing else to parse.
    let hz = clock_ticks_per_second();
    let secs = seconds();
    let limit = Duration::from_secs(secs.parse::<u64>().unwrap_or(10) + 120);
    let OneTenant { dir, pki, cluster } = OneTenant::start("sluice-bench-metrics-").unwrap();

    let mut config = SluiceConfig::new(&pki);
    config.tenants = vec![TenantEntry::over_unix_socket(&cluster, &pki)];
    config.default_pool = vec!["mode = \"transaction\"".into(), "size = 5".into()];
    let on = SluiceProcess::start(BIN.as_ref(), &dir.path().join("sluice-on"), &config).unwrap();
    config.metrics = vec!["enabled = false".into()];
    let off = SluiceProcess::start(BIN.as_ref(), &dir.path().join("sluice-off"), &config).unwrap();
    assert_eq!(
        testkit::http::get(on.admin_addr, "/metrics", None).status,
        200
    );
    assert_eq!(
        testkit::http::get(off.admin_addr, "/metrics", None).status,
        404
    );

    let target = |s: &SluiceProcess| {
        let mut t = PgTarget::tenant(s.addr, "acme", &cluster.app_password, &pki.ca_cert);
        t.sslmode = "require";
        t
    };
    let targets = [target(&on), target(&off)];
    let sluices = [&on, &off];

    // pgbench's tables, created directly (TLS over TCP), as in poolers.rs.
    let mut direct = targets[0].clone();
    direct.sni_host = Some("localhost".into());
    direct.addr = SocketAddr::from(([127, 0, 0, 1], cluster.tcp_port.unwrap()));
    let init = testkit::pgbench(&direct, &["-i", "-s", "1", "-q"]);
    assert!(init.success, "pgbench -i: {}", init.stderr);

    // Warm-up (not recorded): fills both pools and faults in the code paths.
    for t in &targets {
        let w = testkit::pgbench(t, &["-n", "-S", "-c", "50", "-j", "2", "-T", "2"]);
        assert!(w.success, "warm-up: {}", w.stderr);
    }

    // runs[mode][config]
    let mut runs: Vec<[Vec<Run>; 2]> = vec![[Vec::new(), Vec::new()]; MODES.len()];
    let mut scrapes = (0, 0);
    for (m, mode) in MODES.iter().enumerate() {
        for round in 1..=ROUNDS {
            for c in 0..CONFIGS.len() {
                let scraper = (c == 0).then(|| Scraper::start(on.admin_addr, limit));
                let run = bench(&targets[c], mode, &secs, sluices[c].pid(), hz);
                if let Some(s) = scraper {
                    let (ok, failed) = s.finish();
                    scrapes.0 += ok;
                    scrapes.1 += failed;
                }
                println!(
                    "metrics_overhead: -M {mode:8} round {round} metrics {:3}: {:.0} TPS, {:.3} ms avg, {:.1} µs CPU/txn, {} txns, {} failed, {} clients aborted",
                    CONFIGS[c], run.tps, run.latency_ms, run.cpu_us_per_txn, run.processed, run.failed, run.aborted_clients
                );
                runs[m][c].push(run);
            }
        }
    }

    // What the scrapes saw: the histograms were fed on A.
    let body = testkit::http::get(on.admin_addr, "/metrics", None).body;
    let count_of = |name: &str| {
        body.lines()
            .find_map(|l| l.strip_prefix(name))
            .map_or("?".to_owned(), |v| v.trim().to_owned())
    };
    println!(
        "metrics_overhead: {} scrapes of /metrics on A ({} failed), last one {} bytes; sluice_query_duration_seconds_count {}, sluice_pool_wait_seconds_count {}",
        scrapes.0,
        scrapes.1,
        body.len(),
        count_of("sluice_query_duration_seconds_count"),
        count_of("sluice_pool_wait_seconds_count"),
    );

    println!();
    println!(
        "pgbench -n -S -c 50 -j 2 -T {secs}; Sluice in transaction mode with 5 server connections; client TLS; \
         runs alternated on, off ×{ROUNDS}; on = metrics enabled and /metrics scraped every second, off = `[metrics] enabled = false`"
    );
    println!();
    println!("| -M | metrics | TPS per run | median TPS | TPS spread | avg latency per run (ms) | CPU µs/txn per run | median CPU µs/txn | CPU spread |");
    println!("|---|---|---|---|---|---|---|---|---|");
    let mut medians = Vec::new();
    for (mode, per_config) in MODES.iter().zip(&runs) {
        let mut row = Vec::new();
        for (name, rs) in CONFIGS.iter().zip(per_config) {
            let usable: Vec<&Run> = rs.iter().filter(|r| r.usable()).collect();
            let tps: Vec<f64> = usable.iter().map(|r| r.tps).collect();
            let cpu: Vec<f64> = usable.iter().map(|r| r.cpu_us_per_txn).collect();
            println!(
                "| {mode} | {name} | {} | {:.0} | {:.1}% | {} | {} | {:.1} | {:.1}% |",
                list(rs, |r| r.tps, 0),
                median(tps.clone()),
                spread(&tps),
                list(rs, |r| r.latency_ms, 3),
                list(rs, |r| r.cpu_us_per_txn, 1),
                median(cpu.clone()),
                spread(&cpu),
            );
            row.push((median(tps), median(cpu)));
        }
        medians.push(row);
    }
    println!("(* run had failed transactions or aborted clients: left out of medians and spreads; spread = (max − min) / median)");
    println!();
    println!("| -M | median TPS on/off | median CPU µs/txn on/off |");
    println!("|---|---|---|");
    for (mode, row) in MODES.iter().zip(&medians) {
        println!(
            "| {mode} | {:.3} | {:.3} |",
            row[0].0 / row[1].0,
            row[0].1 / row[1].1
        );
    }

    drop(on);
    drop(off);
    drop(cluster);
}
