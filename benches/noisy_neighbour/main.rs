//! Noisy neighbour: does one tenant flooding Sluice hurt another tenant's latency?
//!
//! Two tenants behind one `sluice serve`, each on its own Postgres 15 cluster
//! (testkit's `TwoTenants`: `acme` over its unix socket, `globex` over TCP with
//! verify-full TLS), both in session mode (the default pool). Tenant A (`acme`, the noisy
//! one) has `query_rate = 500` and `connect_rate = 20`; tenant B (`globex`, the quiet
//! one) has no query rate and `connect_rate = 0` (no limit). Client leg TLS with SNI
//! (`sslmode=verify-full`) everywhere.
//!
//! Phases (`$SLUICE_BENCH_SECONDS`, default 10, is `SECS`), 3 s apart:
//! 1. quiet: B alone, `pgbench -n -S -R 200 -c 4 -j 2 -T SECS -l`: p50/p99 latency from
//!    the per-transaction log (pgbench's latency under `-R` counts from the scheduled
//!    start, so it includes schedule lag, shown too), failed transactions, aborted
//!    clients;
//! 2. flood: the same B run while A is flooded by `pgbench -n -S -c 16 -j 2 -P 1` at full
//!    speed (far beyond its 500 q/s) and by a connection storm: 8 threads opening
//!    connections to A in a tight loop (tokio-postgres, TLS + SCRAM), for SECS + 2 s and
//!    at most 60,000 attempts, each classified as admitted, refused with 53400 and the
//!    exact message, or anything else. Both floods start before B and end after it;
//!    B's latency second by second next to the storm's attempts;
//! 3. and 4. the same with only A's pgbench, then only the storm: which flood costs B;
//! 5. live change: A alone, `pgbench -P 1 --progress-timestamp -l`, its `query_rate`
//!    lowered from 500 to 100 with `PATCH /v1/tenants/acme` about 3 s in; the per-second
//!    progression and 250 ms buckets around the PATCH;
//! 6. quiet again: B alone, as 1, to see drift;
//! 7. and 8. the control: "quiet" and "flood" again with B's pgbench connected straight
//!    to its own Postgres (TCP, TLS without verification), not through Sluice, while A's
//!    flood still goes through Sluice: what the flood costs a client on this machine
//!    that Sluice is not serving. `SLUICE_BENCH_CONTROL=0` leaves them out.
//!
//! The storm runs as fast as its threads can (`$SLUICE_BENCH_STORM_THREADS`, default 8),
//! or at `$SLUICE_BENCH_STORM_RATE` attempts per second in all (paced, as an attacker on
//! a fixed budget would).
//!
//! Per phase also the CPU (in cores) of Sluice, of this process (the storm's clients),
//! of both clusters (postmasters and backends), of the pgbench processes, of the machine
//! (/proc/stat), and of everything else on the machine (user + system time not spent by
//! the processes above): a phase where other processes used more than 0.15 cores is
//! flagged as disturbed.
//!
//! Run with `cargo bench --bench noisy_neighbour`; see benches/README.md.
//!
//! Every loop here is bounded by pgbench's `-T`, a deadline or an attempt count; every
//! process started is stopped by pid on exit, also on panic (Drop guards).

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use testkit::{PgTarget, SluiceProcess, TwoTenants};
use tokio_postgres_rustls::MakeRustlsConnect;

mod admin;
#[path = "../common/mod.rs"]
mod common;
mod cpu;
mod knobs;
mod live;
mod pgbench;
mod phases;
mod report;
mod storm;

use admin::{metrics, patch_query_rate, rejections, wait_for_clients};
use common::ratio;
use cpu::{Cpu, CpuMeter};
use knobs::{b_cpu, control, flood_cpu, seconds, storm_rate, storm_threads};
use live::{live_change, print_live};
use pgbench::{b_run, percentile, read_log, run_b, BRun};
use phases::{flood_phase, progress, quiet_phase, Ctx, Flood, Phase, FLOOD};
use report::print_summary;
use storm::{Storm, StormCounts};
use testkit::pgbench::{pgbench_logs, Output, Pgbench};
use testkit::procfs::clock_ticks_per_second;

const BIN: &str = env!("CARGO_BIN_EXE_sluice");
const A: &str = "acme";
const B: &str = "globex";
const A_QUERY_RATE: u32 = 500;
const A_QUERY_RATE_LOWERED: u32 = 100;
const A_CONNECT_RATE: u32 = 20;
const A_CLIENTS: usize = 16;
const B_RATE: &str = "200";
/// Enough for the whole phase at the ~3,200 attempts/s one 2-vCPU machine manages.
const STORM_MAX_ATTEMPTS: u64 = 60_000;
/// How long one storm connection attempt may take before it counts as an error.
const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(10);
const LIVE_SECONDS: u64 = 8;
const LIVE_PATCH_AFTER: Duration = Duration::from_secs(3);
const BUCKET_MS: u64 = 250;
/// Other processes' CPU (cores) above which a phase is flagged as disturbed.
const OTHERS_WARN: f64 = 0.15;

fn epoch_now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

fn main() {
    // `cargo bench` passes `--bench`; nothing else to parse.
    let hz = clock_ticks_per_second();
    let cores = std::thread::available_parallelism().map_or(1.0, |n| n.get() as f64);
    let secs = seconds();
    let env = TwoTenants::start(BIN.as_ref(), |c| {
        // Production logging: no line per refused attempt.
        c.log = "info".into();
        for t in &mut c.tenants {
            t.limits = if t.id == A {
                vec![
                    format!("query_rate = {A_QUERY_RATE}"),
                    format!("connect_rate = {A_CONNECT_RATE}"),
                ]
            } else {
                vec!["connect_rate = 0".into()]
            };
        }
    })
    .expect("two tenants");
    let sluice = &env.sluice;
    let ctx = Ctx {
        sluice,
        postmasters: [&env.acme, &env.globex]
            .iter()
            .map(|c| c.cluster.pid().expect("postmaster running"))
            .collect(),
        a: env.target(A),
        b: env.target(B),
        b_direct: PgTarget {
            addr: ([127, 0, 0, 1], env.globex.tcp_port.expect("globex on TCP")).into(),
            sni_host: None,
            sslmode: "require",
            ..env.target(B)
        },
        work: env.dir.path().join("noisy"),
        secs,
        hz,
    };
    std::fs::create_dir_all(&ctx.work).unwrap();

    for (name, t) in [(A, &ctx.a), (B, &ctx.b)] {
        let init = testkit::pgbench(t, &["-i", "-s", "1", "-q"]);
        assert!(init.success, "pgbench -i on {name}: {}", init.stderr);
    }
    // Warm-up (not recorded).
    let wb = Pgbench::start(
        &ctx.b,
        &["-n", "-S", "-c", "4", "-T", "2"],
        &ctx.work,
        "warm-b",
    );
    let wa = Pgbench::start(
        &ctx.a,
        &["-n", "-S", "-c", "16", "-j", "2", "-T", "2"],
        &ctx.work,
        "warm-a",
    );
    assert!(wb.finish().success && wa.finish().success, "warm-up failed");
    // Between phases: A's connect bucket (burst 40) fills up again, A's sessions end.
    let pause = || std::thread::sleep(Duration::from_secs(3));
    pause();

    let mut phases = vec![quiet_phase(&ctx, "quiet", "quiet", false)];
    pause();
    phases.push(flood_phase(&ctx, "flood", "flood", FLOOD, false));
    pause();
    let pgbench_only = Flood {
        storm: false,
        ..FLOOD
    };
    let storm_only = Flood {
        pgbench: false,
        ..FLOOD
    };
    phases.push(flood_phase(
        &ctx,
        "A pgbench only",
        "pgbench-only",
        pgbench_only,
        false,
    ));
    pause();
    phases.push(flood_phase(
        &ctx,
        "A storm only",
        "storm-only",
        storm_only,
        false,
    ));
    pause();

    let live = live_change(&ctx);
    // The control phases flood A as the first ones did.
    patch_query_rate(sluice, A_QUERY_RATE);
    pause();

    phases.push(quiet_phase(&ctx, "quiet again", "quiet-again", false));
    if control() {
        pause();
        phases.push(quiet_phase(&ctx, "control: quiet", "control-quiet", true));
        pause();
        phases.push(flood_phase(
            &ctx,
            "control: flood",
            "control-flood",
            FLOOD,
            true,
        ));
    }

    let body = metrics(sluice);
    let log_bytes = std::fs::metadata(&sluice.log_path).map_or(0, |m| m.len());

    print_summary(&phases, &body, log_bytes, secs, cores);
    print_live(&live);
}
