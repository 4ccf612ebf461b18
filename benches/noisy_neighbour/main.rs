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

#[path = "../common/mod.rs"]
mod common;
mod cpu;
mod pgbench;
mod report;
mod storm;

use cpu::{Cpu, CpuMeter};
use pgbench::{b_run, percentile, read_log, run_b, BRun};
use report::{baseline, fmt_us, print_table, print_timeline, ratio};
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

fn seconds() -> u64 {
    std::env::var("SLUICE_BENCH_SECONDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(10)
}

/// `$SLUICE_BENCH_FLOOD_CPU`: the one CPU A's flood (its pgbench and the storm's
/// threads) is confined to, as if A's clients ran on a machine of their own with one
/// core; unset, the flood may use every CPU, like everything else.
fn flood_cpu() -> Option<usize> {
    std::env::var("SLUICE_BENCH_FLOOD_CPU")
        .ok()
        .and_then(|s| s.parse().ok())
}

/// `$SLUICE_BENCH_B_CPU`: the same for B's pgbench (in every phase).
fn b_cpu() -> Option<usize> {
    std::env::var("SLUICE_BENCH_B_CPU")
        .ok()
        .and_then(|s| s.parse().ok())
}

/// `$SLUICE_BENCH_STORM_RATE`: the storm's attempts per second over all its threads;
/// unset or 0, as fast as they go.
fn storm_rate() -> Option<f64> {
    std::env::var("SLUICE_BENCH_STORM_RATE")
        .ok()
        .and_then(|s| s.parse::<f64>().ok())
        .filter(|&r| r > 0.0)
}

/// Whether to run the control phases (B straight to its Postgres); `$SLUICE_BENCH_CONTROL=0`
/// leaves them out.
fn control() -> bool {
    std::env::var("SLUICE_BENCH_CONTROL").map_or(true, |v| v != "0")
}

/// Threads of the connection storm: `$SLUICE_BENCH_STORM_THREADS`, default 8 (fewer
/// leave the machine CPU to spare, to tell CPU saturation from contention in Sluice).
fn storm_threads() -> usize {
    std::env::var("SLUICE_BENCH_STORM_THREADS")
        .ok()
        .and_then(|s| s.parse().ok())
        .filter(|&n| n > 0)
        .unwrap_or(8)
}

fn epoch_now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

// ---------------------------------------------------------------------------------
// Admin API

fn metrics(sluice: &SluiceProcess) -> String {
    testkit::http::get(sluice.admin_addr, "/metrics", None).body
}

/// Sum of the samples of `name` whose labels include `tenant="..."`.
fn tenant_sum(body: &str, name: &str, tenant: &str) -> f64 {
    let label = format!("tenant=\"{tenant}\"");
    body.lines()
        .filter(|l| l.starts_with(&format!("{name}{{")) && l.contains(&label))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// `reason=value` of every non-zero rejection counter of `tenant`.
fn rejections(body: &str, tenant: &str) -> String {
    let prefix = format!("sluice_connections_rejected_total{{tenant=\"{tenant}\",reason=\"");
    let list: Vec<String> = body
        .lines()
        .filter_map(|l| l.strip_prefix(prefix.as_str()))
        .filter_map(|l| {
            let (reason, value) = l.split_once("\"} ")?;
            (value.trim() != "0").then(|| format!("{reason} {}", value.trim()))
        })
        .collect();
    if list.is_empty() {
        "none".into()
    } else {
        list.join(", ")
    }
}

/// Waits (bounded) until `tenant` has at least `n` logged-in clients.
fn wait_for_clients(sluice: &SluiceProcess, tenant: &str, n: usize) -> bool {
    let deadline = Instant::now() + Duration::from_secs(15);
    while Instant::now() < deadline {
        if tenant_sum(&metrics(sluice), "sluice_client_connections", tenant) >= n as f64 {
            return true;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    false
}

fn patch_query_rate(sluice: &SluiceProcess, rate: u32) {
    let body = format!(r#"{{"limits": {{"query_rate": {rate}}}}}"#);
    let r = testkit::http::request(
        sluice.admin_addr,
        "PATCH",
        &format!("/v1/tenants/{A}"),
        Some(&sluice.admin_key),
        "Content-Type: application/json\r\n",
        body.as_bytes(),
    )
    .expect("PATCH");
    assert_eq!(r.status, 200, "PATCH query_rate: {}", r.body);
}

// ---------------------------------------------------------------------------------
// Phases

/// `(end of interval, tps)` of each `progress:` line of a `-P 1` run.
fn progress(stderr: &str) -> Vec<(f64, f64)> {
    stderr
        .lines()
        .filter_map(|line| {
            let (ts, rest) = line.strip_prefix("progress: ")?.split_once(" s, ")?;
            let tps = rest.split_whitespace().next()?.parse().ok()?;
            Some((ts.parse().ok()?, tps))
        })
        .collect()
}

fn median(mut v: Vec<f64>) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// A's pgbench during a flood.
struct ARun {
    out: Output,
    /// Median of the per-second rates after the first second (the burst).
    steady_tps: f64,
}

/// One phase: B's run, and whatever flooded A meanwhile.
struct Phase {
    name: &'static str,
    /// B's pgbench went straight to its Postgres (a control phase), not through Sluice.
    direct: bool,
    b: BRun,
    a: Option<ARun>,
    storm: Option<StormCounts>,
    /// B's transactions: (end time in seconds since the storm started, latency µs).
    b_timeline: Vec<(f64, u64)>,
}

struct Ctx<'a> {
    sluice: &'a SluiceProcess,
    /// Both clusters' postmasters.
    postmasters: Vec<u32>,
    a: PgTarget,
    b: PgTarget,
    /// B's own Postgres, not through Sluice (the control phases).
    b_direct: PgTarget,
    work: PathBuf,
    secs: u64,
    hz: f64,
}

impl Ctx<'_> {
    fn b_target(&self, direct: bool) -> &PgTarget {
        if direct {
            &self.b_direct
        } else {
            &self.b
        }
    }
}

/// B alone, through Sluice or (`direct`) straight to its Postgres.
fn quiet_phase(ctx: &Ctx, name: &'static str, label: &str, direct: bool) -> Phase {
    println!("noisy_neighbour: {name}: B alone, {} s", ctx.secs);
    let meter = CpuMeter::start(ctx);
    let (out, lat, lag) = run_b(ctx.b_target(direct), ctx.secs, &ctx.work, label);
    Phase {
        name,
        direct,
        b: b_run(out, lat, lag, meter.stop()),
        a: None,
        storm: None,
        b_timeline: Vec::new(),
    }
}

/// What floods A in a phase.
#[derive(Clone, Copy)]
struct Flood {
    pgbench: bool,
    storm: bool,
}

const FLOOD: Flood = Flood {
    pgbench: true,
    storm: true,
};

/// B (through Sluice, or `direct`) while A is flooded by its pgbench and/or the
/// connection storm. Both floods start before B's run and last past its end.
fn flood_phase(
    ctx: &Ctx,
    name: &'static str,
    label: &str,
    Flood { pgbench, storm }: Flood,
    direct: bool,
) -> Phase {
    println!("noisy_neighbour: {name}: B with A flooded, {} s", ctx.secs);
    let meter = CpuMeter::start(ctx);
    let a_secs = (ctx.secs + 3).to_string();
    let clients = A_CLIENTS.to_string();
    let a_run = pgbench.then(|| {
        let run = Pgbench::start_on(
            flood_cpu(),
            &ctx.a,
            &[
                "-n", "-S", "-c", &clients, "-j", "2", "-T", &a_secs, "-P", "1",
            ],
            &ctx.work,
            &format!("{label}-a"),
        );
        if !wait_for_clients(ctx.sluice, A, A_CLIENTS) {
            println!("noisy_neighbour: A's pgbench did not get {A_CLIENTS} clients in within 15 s");
        }
        run
    });
    let started_at = epoch_now();
    let storm = storm.then(|| Storm::start(&ctx.a, Duration::from_secs(ctx.secs + 2)));
    let base = storm.as_ref().map_or(started_at, |s| s.started_at);
    std::thread::sleep(Duration::from_millis(500));
    let (out, lat, lag) = run_b(ctx.b_target(direct), ctx.secs, &ctx.work, label);
    let storm = storm.map(Storm::finish);
    let a = a_run.map(|run| {
        let out = run.finish();
        let rates: Vec<f64> = progress(&out.stderr).iter().skip(1).map(|p| p.1).collect();
        ARun {
            steady_tps: median(rates),
            out,
        }
    });
    let b_timeline = read_log(&ctx.work.join(label))
        .into_iter()
        .map(|(latency, _, at)| (at - base, latency))
        .collect();
    Phase {
        name,
        direct,
        b: b_run(out, lat, lag, meter.stop()),
        a,
        storm,
        b_timeline,
    }
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

    // Live change of A's query rate.
    println!(
        "noisy_neighbour: live: A's query_rate {A_QUERY_RATE} -> {A_QUERY_RATE_LOWERED} after ~3 s"
    );
    let live_logs = ctx.work.join("live");
    std::fs::create_dir_all(&live_logs).unwrap();
    let live_prefix = live_logs.join("pgbench_log");
    let live_secs = LIVE_SECONDS.to_string();
    let live = Pgbench::start(
        &ctx.a,
        &[
            "-n",
            "-S",
            "-c",
            "16",
            "-j",
            "2",
            "-T",
            &live_secs,
            "-P",
            "1",
            "--progress-timestamp",
            "-l",
            "--log-prefix",
            live_prefix.to_str().unwrap(),
        ],
        &ctx.work,
        "live-a",
    );
    wait_for_clients(sluice, A, A_CLIENTS);
    std::thread::sleep(LIVE_PATCH_AFTER);
    patch_query_rate(sluice, A_QUERY_RATE_LOWERED);
    let patched_at = epoch_now();
    let live_out = live.finish();
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

    // ---------------------------------------------------------------------------
    for p in &phases {
        if let Some(e) = p.b.out.first_error() {
            println!("noisy_neighbour: B in {}: first error: {e}", p.name);
        }
        if let Some(e) = p.a.as_ref().and_then(|a| a.out.first_error()) {
            println!("noisy_neighbour: A in {}: first error: {e}", p.name);
        }
        if let Some(e) = p.storm.as_ref().and_then(|s| s.first_other.as_ref()) {
            println!(
                "noisy_neighbour: storm in {}: first other outcome: {e}",
                p.name
            );
        }
    }
    println!();
    println!(
        "B = globex: `pgbench -n -S -R {B_RATE} -c 4 -j 2 -T {secs} -l`. A = acme (query_rate {A_QUERY_RATE}, \
         connect_rate {A_CONNECT_RATE}), flooded by `pgbench -n -S -c {A_CLIENTS} -j 2 -T {} -P 1` and/or a \
         {}-thread connection storm (≤ {STORM_MAX_ATTEMPTS} attempts, ≤ {} s). Session mode, client \
         TLS with SNI, {cores} cores. (×N) = ratio to the first quiet phase; A steady = median of its \
         per-second rates after the first second (the first has the 2 × rate burst).",
        secs + 3,
        storm_threads(),
        secs + 2
    );
    println!();
    print_table(&phases);
    for p in phases.iter().filter(|p| p.b.cpu.others > OTHERS_WARN) {
        println!(
            "noisy_neighbour: WARNING: other processes used {:.2} cores during \"{}\": its figures are disturbed",
            p.b.cpu.others, p.name
        );
    }
    println!();
    println!(
        "rejections counted by Sluice: acme: {}; globex: {}. Sluice log: {:.1} MB (SLUICE_LOG=info, as in production)",
        rejections(&body, A),
        rejections(&body, B),
        log_bytes as f64 / 1e6
    );
    let (quiet, flood) = (&phases[0].b, &phases[1].b);
    let met = flood.p99 <= 2.0 * quiet.p99 && flood.out.errors() == 0;
    println!(
        "target (B p99 under flood ≤ 2 × quiet, zero errors): {} (p99 {} / {} µs = {}, {} errors)",
        if met { "met" } else { "NOT met" },
        fmt_us(flood.p99),
        fmt_us(quiet.p99),
        ratio(flood.p99, quiet.p99),
        flood.out.errors()
    );
    let control_flood = phases.iter().find(|p| p.direct && p.storm.is_some());
    if let Some(control) = control_flood {
        let control_quiet = baseline(&phases, control);
        println!(
            "control, B straight to its Postgres: p99 {} µs quiet, {} µs under the same flood (×{}); \
             under the flood B's p99 through Sluice / straight to Postgres = {}",
            fmt_us(control_quiet.p99),
            fmt_us(control.b.p99),
            ratio(control.b.p99, control_quiet.p99),
            ratio(flood.p99, control.b.p99)
        );
    }
    print_timeline(&phases[1]);
    if let Some(control) = control_flood {
        print_timeline(control);
    }

    // Live change.
    println!();
    println!(
        "Live change: `pgbench -n -S -c {A_CLIENTS} -j 2 -T {LIVE_SECONDS} -P 1 --progress-timestamp -l` on A, \
         `PATCH /v1/tenants/acme {{\"limits\": {{\"query_rate\": {A_QUERY_RATE_LOWERED}}}}}` about {} s in \
         (failed {}, aborted {})",
        LIVE_PATCH_AFTER.as_secs(),
        live_out.failed().unwrap_or(0),
        live_out.aborted()
    );
    println!();
    println!("| progress interval (s after the PATCH) | A TPS |");
    println!("|---|---|");
    for (ts, tps) in progress(&live_out.stderr) {
        let end = ts - patched_at;
        println!("| {:+.1} … {:+.1} | {tps:.0} |", end - 1.0, end);
    }
    // Buckets of completed transactions from the log, from 1 s before the PATCH.
    let rows = read_log(&live_logs);
    let width = BUCKET_MS as f64 / 1000.0;
    let buckets: Vec<(f64, f64)> = (-4..12)
        .map(|i| {
            let from = patched_at + f64::from(i) * width;
            let n = rows
                .iter()
                .filter(|r| r.2 >= from && r.2 < from + width)
                .count();
            (f64::from(i) * width, n as f64 / width)
        })
        .collect();
    println!();
    println!(
        "A's completed transactions per {BUCKET_MS} ms around the PATCH, as a rate per second: {}",
        buckets
            .iter()
            .map(|(t, r)| format!("{t:+.2} s: {r:.0}"))
            .collect::<Vec<_>>()
            .join(", ")
    );
    let limit = 1.2 * f64::from(A_QUERY_RATE_LOWERED);
    let first = buckets.iter().position(|(t, _)| *t >= 0.0).unwrap_or(0);
    let settled = (first..buckets.len())
        .find(|&i| buckets[i..].iter().all(|(_, r)| *r <= limit))
        .map(|i| buckets[i].0);
    match settled {
        Some(t) => println!(
            "every {BUCKET_MS} ms bucket from {t:+.2} s after the PATCH on ran at ≤ {limit:.0}/s (1.2 × the new rate)"
        ),
        None => println!("A's rate did not settle at ≤ {limit:.0}/s within the buckets shown"),
    }
}
