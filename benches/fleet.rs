//! A fleet on this machine: one Sluice vs three Sluice replicas behind HAProxy (round
//! robin, PROXY v2), beside direct Postgres and PgBouncer, in one run against one
//! Postgres 15 cluster: `pgbench -n -S -M extended -c 32 -j 2 -T $SLUICE_BENCH_SECONDS`
//! with client TLS (`sslmode=require`) everywhere; the poolers in transaction mode with
//! 12 server connections in all (three replicas share them, 4 each).
//!
//! For each run: TPS, average latency, errors, and CPU time per transaction of the
//! poolers (all replicas summed) and, separately, of HAProxy. The replicas run on a
//! shared control store (a cluster of its own) with a `[fleet]` section each; the
//! one-replica run is the same fleet after two replicas were stopped (SIGTERM).
//!
//! Run with `cargo bench --bench fleet`; needs HAProxy and PgBouncer (scripts/test
//! installs both; without PgBouncer its row is skipped). See benches/README.md.

use std::net::SocketAddr;
use std::time::Duration;

use nix::sys::signal::Signal;
use testkit::fleet::Fleet;
use testkit::pgbench::{run_pgbench, PgbenchRun};
use testkit::pgbouncer::{
    app_scram_secret, ensure_pgbouncer, let_postgres_reach_socket, PgBouncer, PgBouncerSettings,
};
use testkit::procfs::{clock_ticks_per_second, cpu_ticks};
use testkit::PgTarget;

mod common;
use common::{ratio, seconds, utc_time_of_day};

const BIN: &str = env!("CARGO_BIN_EXE_sluice");
const POOL: u32 = 12;

/// A run with the CPU of `poolers` (summed) and `balancer` per transaction.
struct Row {
    name: &'static str,
    run: PgbenchRun,
    pooler_us: Option<f64>,
    balancer_us: Option<f64>,
}

fn measure(
    name: &'static str,
    target: &PgTarget,
    poolers: &[u32],
    balancer: Option<u32>,
    secs: &str,
    hz: f64,
) -> Row {
    let args = [
        "-n", "-S", "-M", "extended", "-c", "32", "-j", "2", "-T", secs,
    ];
    let ticks = |pids: &[u32]| pids.iter().map(|p| cpu_ticks(*p)).sum::<u64>();
    let (pooler_before, balancer_before) = (ticks(poolers), balancer.map(cpu_ticks));
    let started = utc_time_of_day();
    let run = run_pgbench(target, &args, None, hz);
    let per_txn = |ticks: u64| (ticks as f64 / hz * 1e6) / run.processed.max(1) as f64;
    let pooler_us = (!poolers.is_empty()).then(|| per_txn(ticks(poolers) - pooler_before));
    let balancer_us = balancer
        .zip(balancer_before)
        .map(|(pid, before)| per_txn(cpu_ticks(pid) - before));
    println!(
        "fleet: {started} UTC {name:22}: {:.0} TPS, {:.3} ms avg, {} txns, {} failed, {} aborted{}",
        run.tps,
        run.latency_ms,
        run.processed,
        run.failed,
        run.aborted_clients,
        run.first_error
            .as_ref()
            .map(|e| format!(" (first: {e})"))
            .unwrap_or_default()
    );
    Row {
        name,
        run,
        pooler_us,
        balancer_us,
    }
}

fn main() {
    let hz = clock_ticks_per_second();
    let secs = seconds();
    let mut fleet = Fleet::start(BIN.as_ref(), 3, "roundrobin", |c| {
        c.default_pool = vec!["mode = \"transaction\"".into(), format!("size = {POOL}")];
        c.log = "info".into();
    })
    .expect("a fleet of three");
    // Every replica has seen the others (and taken its share) after a few heartbeats.
    std::thread::sleep(Duration::from_secs(2));

    let mut direct = fleet.target();
    direct.sni_host = Some("localhost".into());
    direct.addr = SocketAddr::from(([127, 0, 0, 1], fleet.acme.tcp_port.unwrap()));
    direct.sslmode = "require";
    let mut via_fleet = fleet.target();
    via_fleet.sslmode = "require";

    let pgbouncer = match ensure_pgbouncer("fleet") {
        Ok(version) => {
            let_postgres_reach_socket(fleet.dir.path(), &fleet.acme);
            let secret = app_scram_secret(&fleet.acme);
            let settings = PgBouncerSettings {
                pool_mode: "transaction",
                default_pool_size: POOL,
                max_client_conn: 200,
                client_tls_sslmode: "require",
                log_connections: false,
                version,
            };
            Some(PgBouncer::start(
                &fleet.acme,
                &fleet.pki,
                &secret,
                &settings,
                fleet.dir.path().join("pgbouncer.log"),
            ))
        }
        Err(why) => {
            println!("fleet: SKIP PgBouncer row: {why}");
            None
        }
    };
    let init = testkit::pgbench(&direct, &["-i", "-s", "1", "-q"]);
    assert!(init.success, "pgbench -i: {}", init.stderr);

    let mut rows = vec![measure("direct", &direct, &[], None, &secs, hz)];
    if let Some(bouncer) = &pgbouncer {
        let mut target = direct.clone();
        target.addr = SocketAddr::from(([127, 0, 0, 1], bouncer.port));
        rows.push(measure(
            "PgBouncer",
            &target,
            &[bouncer.pid],
            None,
            &secs,
            hz,
        ));
    }
    let haproxy = Some(fleet.haproxy.pid());
    let pids: Vec<u32> = fleet.replicas.iter().flatten().map(|r| r.pid()).collect();
    rows.push(measure(
        "3 Sluice via HAProxy",
        &via_fleet,
        &pids,
        haproxy,
        &secs,
        hz,
    ));
    for i in [1, 2] {
        let mut replica = fleet.replicas[i].take().expect("running");
        replica.signal_and_wait(Signal::SIGTERM, Duration::from_secs(30));
    }
    // HAProxy's checks (every 200 ms) take the stopped ones out; the one left takes the
    // whole pool at its next heartbeat.
    std::thread::sleep(Duration::from_secs(2));
    let pid = fleet.replica(0).pid();
    rows.push(measure(
        "1 Sluice via HAProxy",
        &via_fleet,
        &[pid],
        haproxy,
        &secs,
        hz,
    ));

    println!();
    println!(
        "pgbench -n -S -M extended -c 32 -j 2 -T {secs}; poolers in transaction mode, {POOL} server connections in all; client TLS everywhere"
    );
    println!();
    println!("| target | TPS | avg latency (ms) | failed | aborted | pooler CPU (µs/txn) | HAProxy CPU (µs/txn) |");
    println!("|---|---|---|---|---|---|---|");
    let us = |v: Option<f64>| v.map_or_else(|| "—".into(), |v| format!("{v:.1}"));
    for row in &rows {
        println!(
            "| {} | {:.0} | {:.3} | {} | {} | {} | {} |",
            row.name,
            row.run.tps,
            row.run.latency_ms,
            row.run.failed,
            row.run.aborted_clients,
            us(row.pooler_us),
            us(row.balancer_us),
        );
    }
    let find = |name: &str| rows.iter().find(|r| r.name == name);
    if let (Some(three), Some(one)) = (find("3 Sluice via HAProxy"), find("1 Sluice via HAProxy")) {
        println!();
        println!(
            "TPS 3 replicas / 1 replica: {}; pooler CPU per txn 3 / 1: {}",
            ratio(three.run.tps, one.run.tps),
            ratio(
                three.pooler_us.unwrap_or(f64::NAN),
                one.pooler_us.unwrap_or(f64::NAN)
            ),
        );
    }
    drop(pgbouncer);
}
