//! The soak test (issue 7): one real `sluice serve` under mixed load from many clients
//! of four tenants for a bounded time, while the test restarts the tenants' backends
//! (fast and immediate stops) and kills its own clients at random moments.
//!
//! At the end it checks that Sluice never crashed (same pid, still running, no panic in
//! its log), that every pool's server connections went back to their baseline (admin
//! API `GET /v1/pools` and the backends' own `pg_stat_activity`), that Sluice's RSS
//! came back within 10 % of its level after the warm-up, that no killed transaction or
//! COPY left a row behind, and that every error a client saw is a Postgres error with a
//! SQLSTATE expected for what the test did to it (or a connection that closed while its
//! backend was being restarted). It prints a summary and fails on anything else.
//!
//! `SLUICE_SOAK_SECONDS` (default 30) bounds the load, `SLUICE_SOAK_SEED` fixes the
//! random choices (printed, so that a failing run can be repeated), `SLUICE_SOAK_LOG`
//! is Sluice's log filter (default `info`). `scripts/soak [DURATION]` runs it in
//! release mode; see docs/soak.md.
//!
//! Layout: this file holds the settings, the environment, the test and its checks;
//! `run` drives the load and judges the errors clients saw, `load` holds the client
//! loops and the restarter, `errors` what a client saw, `pools` the pool states and RSS.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use testkit::{Pki, SluiceConfig, SluiceProcess, TenantEntry, TestCluster};
use tokio::task::block_in_place;
use tokio::time::sleep;

use pools::{prime_pools, rss_kib, settle, PoolState};
use run::{run_load, LoadRun, TenantCtx};

mod errors;
mod load;
mod pools;
mod run;

const BIN: &str = env!("CARGO_BIN_EXE_sluice");

/// Longest any one client operation may take before it counts as a hang.
const OP_TIMEOUT: Duration = Duration::from_secs(60);
/// How long after a backend is back up its clients may still see the restart: pools
/// notice dead idle connections within a second, and the fail-fast backoff lasts up to
/// 5 s after the last failed connect.
const RESTART_GRACE: Duration = Duration::from_secs(10);
/// How long the pools may take to get back to their baseline (idle_timeout_s is 5).
const SETTLE_DEADLINE: Duration = Duration::from_secs(60);
/// The least time between the end of the load and the last RSS reading.
const SETTLE_MIN: Duration = Duration::from_secs(10);
/// How long after a session's own cancel a 57014 on its next statement is that
/// cancel's: Postgres (up to 17) signals the backend twice (its pid, then its process
/// group), and a second SIGINT that arrives late cancels whatever runs next. That
/// happens on a direct connection too.
const LATE_CANCEL: Duration = Duration::from_secs(1);
/// How far Sluice's RSS may end above its level after the warm-up.
const RSS_TOLERANCE: f64 = 0.10;
/// Payload of rows written by clients that the test kills before they commit.
const MUST_NOT_COMMIT: &str = "killed-before-commit";
/// Client loops per tenant: tokio-postgres sessions, and psql processes.
const TOKIO_WORKERS: usize = 3;
const PSQL_WORKERS: usize = 1;

/// One tenant of the run: its pool and how its backend is reached.
struct TenantSpec {
    id: &'static str,
    mode: &'static str,
    /// Backend over TCP with verify-full TLS; else over its unix socket.
    tls_backend: bool,
    pool: &'static [&'static str],
    /// Server connections its pool keeps when nobody uses it (its `min_idle`).
    baseline: usize,
}

const TENANTS: [TenantSpec; 4] = [
    TenantSpec {
        id: "acme",
        mode: "session",
        tls_backend: false,
        pool: &["size = 6"],
        baseline: 0,
    },
    TenantSpec {
        id: "globex",
        mode: "session",
        tls_backend: true,
        pool: &["size = 6", "min_idle = 1"],
        baseline: 1,
    },
    TenantSpec {
        id: "initech",
        mode: "transaction",
        tls_backend: false,
        pool: &["size = 3", "reserve = 1", "reserve_wait_ms = 200"],
        baseline: 0,
    },
    TenantSpec {
        id: "umbrella",
        mode: "transaction",
        tls_backend: true,
        pool: &["size = 2"],
        baseline: 0,
    },
];

struct Settings {
    duration: Duration,
    warmup: Duration,
    seed: u64,
    log: String,
}

fn settings() -> Settings {
    let var = |name: &str| std::env::var(name).ok().map(|v| v.trim().to_owned());
    let seconds: u64 = var("SLUICE_SOAK_SECONDS").map_or(30, |s| {
        s.parse()
            .unwrap_or_else(|_| panic!("SLUICE_SOAK_SECONDS={s:?}: not a number of seconds"))
    });
    let seed = var("SLUICE_SOAK_SEED").map_or(0x50A4_5EED, |s| {
        match s.strip_prefix("0x") {
            Some(hex) => u64::from_str_radix(hex, 16),
            None => s.parse(),
        }
        .unwrap_or_else(|_| panic!("SLUICE_SOAK_SEED={s:?}: not a number"))
    });
    let duration = Duration::from_secs(seconds.max(10));
    Settings {
        duration,
        warmup: (duration / 6).clamp(Duration::from_secs(3), Duration::from_secs(60)),
        seed,
        log: var("SLUICE_SOAK_LOG").unwrap_or_else(|| "info".into()),
    }
}

/// The processes of the run. Field order is drop order: Sluice, then the clusters,
/// then the files.
struct Env {
    sluice: SluiceProcess,
    clusters: Arc<Vec<Mutex<TestCluster>>>,
    pki: Pki,
    dir: Option<tempfile::TempDir>,
}

fn start_env(s: &Settings) -> Env {
    let dir = tempfile::Builder::new()
        .prefix("sluice-soak-")
        .tempdir()
        .expect("temp dir");
    let pki = Pki::generate(&dir.path().join("pki")).expect("PKI");
    let mut config = SluiceConfig::new(&pki);
    config.log = s.log.clone();
    let mut clusters = Vec::new();
    for spec in &TENANTS {
        let opts = testkit::TestClusterOptions {
            tcp_tls: spec.tls_backend.then_some(&pki),
            ..Default::default()
        };
        let cluster = TestCluster::start(dir.path(), spec.id, opts).expect("tenant cluster");
        let out = cluster.psql_direct(
            "CREATE TABLE soak_items (id bigserial PRIMARY KEY, worker int, payload text)",
        );
        assert!(out.status.success(), "{out:?}");
        let mut entry = TenantEntry::for_cluster(&cluster, &pki);
        entry.pool = vec![
            format!("mode = \"{}\"", spec.mode),
            "idle_timeout_s = 5".into(),
            "lifetime_s = 30".into(),
        ];
        entry.pool.extend(spec.pool.iter().map(|l| l.to_string()));
        entry.limits = vec!["connect_rate = 1000".into()];
        config.tenants.push(entry);
        clusters.push(Mutex::new(cluster));
    }
    let sluice = SluiceProcess::start(BIN.as_ref(), &dir.path().join("sluice"), &config)
        .expect("sluice serve");
    Env {
        sluice,
        clusters: Arc::new(clusters),
        pki,
        dir: Some(dir),
    }
}

fn print_summary(
    s: &Settings,
    run: &LoadRun,
    pools: &[(PoolState, PoolState)],
    rss_end: u64,
    running: bool,
) {
    println!("\n==== soak summary (seed {:#x}) ====", s.seed);
    println!(
        "load {:.0} s (warm-up {} s) over {} tenants, {TOKIO_WORKERS} tokio-postgres + \
         {PSQL_WORKERS} psql client loops each",
        run.seconds,
        s.warmup.as_secs(),
        TENANTS.len()
    );
    for spec in &TENANTS {
        let backend = if spec.tls_backend {
            "TCP + TLS"
        } else {
            "unix socket"
        };
        println!(
            "  {:9} {:11} pool, backend over {backend}",
            spec.id, spec.mode
        );
    }
    println!("operations by kind (attempted):");
    for (op, n) in &run.tally.ops {
        println!("  {op:34} {n:>8}");
    }
    println!("errors seen by clients, by SQLSTATE and cause (count, first message):");
    if run.tally.errors.is_empty() {
        println!("  (none)");
    }
    for (label, (n, first)) in &run.tally.errors {
        println!("  {label:50} {n:>6}  {first:.110}");
    }
    for line in &run.tally.unexpected {
        println!("  ! {line}");
    }
    for line in &run.tally.notes {
        println!("  ~ {line}");
    }
    println!("backend restarts:");
    for ((tenant, mode), n) in &run.restarts {
        println!("  {tenant:9} {mode:9} {n:>4}");
    }
    println!("pools (before the load / after the settle):");
    for (spec, (before, after)) in TENANTS.iter().zip(pools) {
        println!(
            "  {:9} before: {before}\n  {:9} after:  {after}",
            spec.id, ""
        );
    }
    println!(
        "sluice: {}",
        if running {
            "running, same pid"
        } else {
            "NOT RUNNING"
        }
    );
    println!(
        "RSS: {} KiB after the warm-up, peak {} KiB, {rss_end} KiB at the end ({:+.1} %)",
        run.rss_start,
        run.rss_peak,
        (rss_end as f64 / run.rss_start.max(1) as f64 - 1.0) * 100.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn soak() {
    let s = settings();
    println!(
        "soak: {} s of load, seed {:#x} (set SLUICE_SOAK_SEED to repeat it)",
        s.duration.as_secs(),
        s.seed
    );
    let mut env = block_in_place(|| start_env(&s));
    let pid = env.sluice.pid();
    let tenants: Vec<TenantCtx> = (0..TENANTS.len())
        .map(|i| TenantCtx::new(&env, i))
        .collect();
    let before = prime_pools(&env, &tenants).await;
    let run = run_load(&s, &env, tenants).await;

    // Settle: every client is gone; the pools go back to their baseline.
    let settle_started = Instant::now();
    let after = block_in_place(|| settle(&env, settle_started + SETTLE_DEADLINE));
    sleep(SETTLE_MIN.saturating_sub(settle_started.elapsed())).await;
    let rss_end = rss_kib(pid).unwrap_or(u64::MAX);

    let mut failures = run.problems.clone();
    let running = env.sluice.is_running() && env.sluice.pid() == pid;
    if !running {
        failures.push(format!("sluice (pid {pid}) is no longer running"));
    }
    let log = env.sluice.log();
    let panics: Vec<&str> = log.lines().filter(|l| l.contains("panicked")).collect();
    if !panics.is_empty() {
        failures.push(format!("sluice logged panics: {panics:#?}"));
    }
    for ((spec, b), a) in TENANTS.iter().zip(&before).zip(&after) {
        if !b.at_baseline(spec.baseline) {
            failures.push(format!("{}: no steady state before the load: {b}", spec.id));
        }
        if !a.at_baseline(spec.baseline) {
            failures.push(format!(
                "{}: pool not back at its baseline {SETTLE_DEADLINE:?} after the load: {a}",
                spec.id
            ));
        }
    }
    for (cluster, spec) in env.clusters.iter().zip(&TENANTS) {
        let sql = format!("select count(*) from soak_items where payload = '{MUST_NOT_COMMIT}'");
        let out = block_in_place(|| cluster.lock().unwrap().psql_direct(&sql));
        let n = String::from_utf8_lossy(&out.stdout).trim().to_owned();
        if n != "0" {
            failures.push(format!(
                "{}: {n:?} rows of killed transactions or COPYs were committed",
                spec.id
            ));
        }
    }
    if run.rss_start == 0 || rss_end as f64 > run.rss_start as f64 * (1.0 + RSS_TOLERANCE) {
        failures.push(format!(
            "RSS {rss_end} KiB at the end, more than 10 % above {} KiB after the warm-up",
            run.rss_start
        ));
    }
    if run.tally.unexpected_total > 0 {
        failures.push(format!(
            "{} unexpected client errors (listed with '!')",
            run.tally.unexpected_total
        ));
    }

    let pools: Vec<_> = before.into_iter().zip(after).collect();
    print_summary(&s, &run, &pools, rss_end, running);
    if failures.is_empty() {
        println!("result: PASS");
        return;
    }
    println!("result: FAIL");
    for f in &failures {
        println!("  - {f}");
    }
    println!(
        "repeat with: SLUICE_SOAK_SEED={:#x} SLUICE_SOAK_SECONDS={} (timing varies: the same \
         seed makes the same choices, not the same interleaving)",
        s.seed,
        s.duration.as_secs()
    );
    // Keep Sluice's log and the clusters' logs for a look.
    if let Some(dir) = env.dir.take() {
        println!("logs kept in {}", dir.keep().display());
    }
    panic!("soak test failed: {failures:#?}");
}
