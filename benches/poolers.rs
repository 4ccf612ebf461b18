//! Direct Postgres vs PgBouncer vs Sluice, both poolers in transaction mode with 5
//! server connections, in one run on one machine against one Postgres 15 cluster:
//! `pgbench -n -S -M {prepared,simple,extended} -c 50 -j 2 -T $SLUICE_BENCH_SECONDS`,
//! client leg TLS (`sslmode=require`) everywhere, poolers reach Postgres over its unix
//! socket. For each run: TPS, average latency, failed transactions, aborted clients and
//! the pooler's own CPU time per transaction (utime+stime from /proc/PID/stat).
//!
//! Run with `cargo bench --bench poolers`; see benches/README.md (PgBouncer must be
//! installed, or installable with apt-get; without it the PgBouncer column is skipped).
//!
//! Every loop here is bounded by pgbench's `-T` or a fixed deadline; everything started
//! is stopped by pid on exit, also on panic (Drop guards).

use std::net::SocketAddr;
use std::process::Command;

use testkit::{OneTenant, PgTarget, SluiceConfig, SluiceProcess, TenantEntry};

mod common;
use common::{ratio, seconds, utc_time_of_day};
use testkit::pgbench::{run_pgbench, PgbenchRun};
use testkit::pgbouncer::{
    app_scram_secret, ensure_pgbouncer, let_postgres_reach_socket, PgBouncer, PgBouncerSettings,
};
use testkit::procfs::clock_ticks_per_second;

const BIN: &str = env!("CARGO_BIN_EXE_sluice");
const CLIENTS: &str = "50";
const POOL_SIZE: u32 = 5;
const MODES: [&str; 3] = ["prepared", "simple", "extended"];
const TARGETS: [&str; 3] = ["direct", "PgBouncer", "Sluice"];

/// One pgbench run; `pooler` is the pid whose CPU time is charged per transaction.
fn bench(target: &PgTarget, mode: &str, secs: &str, pooler: Option<u32>, hz: f64) -> PgbenchRun {
    let args = ["-n", "-S", "-M", mode, "-c", CLIENTS, "-j", "2", "-T", secs];
    let run = run_pgbench(target, &args, pooler, hz);
    assert!(
        run.processed > 0 || run.aborted_clients > 0,
        "pgbench -M {mode} produced no transactions: {}",
        run.first_error.as_deref().unwrap_or("")
    );
    run
}

fn main() {
    // `cargo bench` passes `--bench`; nothing else to parse.
    let hz = clock_ticks_per_second();
    let secs = seconds();
    let OneTenant { dir, pki, cluster } = OneTenant::start("sluice-bench-poolers-").unwrap();

    // Sluice: transaction mode, 5 server connections, backend over the unix socket.
    let mut config = SluiceConfig::new(&pki);
    config.tenants = vec![TenantEntry::over_unix_socket(&cluster, &pki)];
    config.default_pool = vec![
        "mode = \"transaction\"".into(),
        format!("size = {POOL_SIZE}"),
        "max_prepared_statements = 200".into(),
    ];
    let sluice = SluiceProcess::start(BIN.as_ref(), &dir.path().join("sluice"), &config).unwrap();

    let pgbouncer = match ensure_pgbouncer("poolers") {
        Ok(version) => {
            // PgBouncer runs as `postgres`: it must traverse the (root-only) temporary
            // directories down to the cluster's socket.
            let_postgres_reach_socket(dir.path(), &cluster);
            let secret = app_scram_secret(&cluster);
            println!(
                "poolers: PgBouncer {}.{} (max_prepared_statements {})",
                version.0,
                version.1,
                if version >= (1, 21) {
                    "= 200"
                } else {
                    "not supported before 1.21: left out"
                }
            );
            let settings = PgBouncerSettings {
                pool_mode: "transaction",
                default_pool_size: POOL_SIZE,
                max_client_conn: 200,
                client_tls_sslmode: "require",
                log_connections: true,
                version,
            };
            Some(PgBouncer::start(
                &cluster,
                &pki,
                &secret,
                &settings,
                dir.path().join("pgbouncer.log"),
            ))
        }
        Err(why) => {
            println!("poolers: SKIP PgBouncer column: {why}");
            None
        }
    };

    let through_sluice = PgTarget::tenant(sluice.addr, "acme", &cluster.app_password, &pki.ca_cert);
    let mut direct = through_sluice.clone();
    direct.sni_host = Some("localhost".into());
    direct.addr = SocketAddr::from(([127, 0, 0, 1], cluster.tcp_port.unwrap()));
    direct.sslmode = "require";
    let mut via_sluice = through_sluice.clone();
    via_sluice.sslmode = "require";
    let via_pgbouncer = pgbouncer.as_ref().map(|b| {
        let mut t = direct.clone();
        t.addr = SocketAddr::from(([127, 0, 0, 1], b.port));
        t
    });

    let init = Command::new("pgbench")
        .args(["-i", "-s", "1", "-q"])
        .arg(direct.conninfo())
        .env("PGPASSWORD", &direct.password)
        .output()
        .expect("running pgbench -i");
    assert!(
        init.status.success(),
        "pgbench -i: {}",
        String::from_utf8_lossy(&init.stderr)
    );

    // results[mode][target]
    let mut results: Vec<Vec<Option<PgbenchRun>>> = Vec::new();
    for mode in MODES {
        let mut row = Vec::new();
        for name in TARGETS {
            let started = utc_time_of_day();
            let run = match name {
                "direct" => Some(bench(&direct, mode, &secs, None, hz)),
                "PgBouncer" => via_pgbouncer
                    .as_ref()
                    .zip(pgbouncer.as_ref())
                    .map(|(t, b)| bench(t, mode, &secs, Some(b.pid), hz)),
                _ => Some(bench(&via_sluice, mode, &secs, Some(sluice.pid()), hz)),
            };
            match &run {
                Some(r) => println!(
                    "poolers: {started} UTC -M {mode:8} {name:9}: {:.0} TPS, {:.3} ms avg, {} txns, {} failed, {} clients aborted{}",
                    r.tps,
                    r.latency_ms,
                    r.processed,
                    r.failed,
                    r.aborted_clients,
                    r.first_error
                        .as_ref()
                        .map(|e| format!(" (first: {e})"))
                        .unwrap_or_default()
                ),
                None => println!("poolers: {started} UTC -M {mode:8} {name:9}: skipped"),
            }
            row.push(run);
        }
        results.push(row);
    }

    println!();
    println!(
        "pgbench -n -S -c {CLIENTS} -j 2 -T {secs}; poolers in transaction mode with {POOL_SIZE} server connections; client TLS everywhere"
    );
    println!();
    println!("| -M | target | TPS | avg latency (ms) | txns processed | failed txns | aborted clients | pooler CPU (µs/txn) |");
    println!("|---|---|---|---|---|---|---|---|");
    for (mode, row) in MODES.iter().zip(&results) {
        for (name, run) in TARGETS.iter().zip(row) {
            match run {
                Some(r) => println!(
                    "| {mode} | {name} | {:.0} | {:.3} | {} | {} | {} | {} |",
                    r.tps,
                    r.latency_ms,
                    r.processed,
                    r.failed,
                    r.aborted_clients,
                    r.cpu_us_per_txn
                        .map(|c| format!("{c:.1}"))
                        .unwrap_or_else(|| "—".into())
                ),
                None => println!("| {mode} | {name} | skipped | | | | | |"),
            }
        }
    }
    println!();
    println!("| -M | TPS Sluice/PgBouncer | TPS Sluice/direct | latency Sluice/PgBouncer | latency Sluice/direct | CPU/txn Sluice/PgBouncer |");
    println!("|---|---|---|---|---|---|");
    for (mode, row) in MODES.iter().zip(&results) {
        let direct = row[0].clone().filter(PgbenchRun::usable);
        let bouncer = row[1].clone().filter(PgbenchRun::usable);
        let sluice = row[2].clone().filter(PgbenchRun::usable);
        let get =
            |r: &Option<PgbenchRun>, f: fn(&PgbenchRun) -> f64| r.as_ref().map_or(f64::NAN, f);
        let tps = |r: &PgbenchRun| r.tps;
        let lat = |r: &PgbenchRun| r.latency_ms;
        let cpu = |r: &PgbenchRun| r.cpu_us_per_txn.unwrap_or(f64::NAN);
        println!(
            "| {mode} | {} | {} | {} | {} | {} |",
            ratio(get(&sluice, tps), get(&bouncer, tps)),
            ratio(get(&sluice, tps), get(&direct, tps)),
            ratio(get(&sluice, lat), get(&bouncer, lat)),
            ratio(get(&sluice, lat), get(&direct, lat)),
            ratio(get(&sluice, cpu), get(&bouncer, cpu)),
        );
    }
    println!("(n/a: a side was skipped or had aborted clients)");

    drop(sluice);
    drop(pgbouncer);
    drop(cluster);
}
