//! The macro comparison: direct Postgres vs PgBouncer vs Sluice, in one run on one
//! machine against one Postgres 15 cluster, both poolers in session and in transaction
//! mode, client leg in plaintext and in TLS:
//!
//! - `pgbench`: `pgbench -n -S` TPS, average and p99 latency at `-c 1/16/64`,
//!   `-M simple/prepared` (p99 from a 10 % sample of the per-transaction log);
//! - `cpu`: the pooler's own CPU time per transaction in those runs (utime+stime from
//!   /proc/PID/stat before and after, over transactions processed);
//! - `storm`: `pgbench -n -C -S -c 16` (a new SCRAM login per transaction);
//! - `idle`: the pooler's RSS growth per idle client with 10,000 idle clients;
//! - `routing`: p50/p99 of sequential TLS+SCRAM connects and Sluice's RSS with 1 vs
//!   10,000 tenants in its catalog (RSS per tenant).
//!
//! Prints markdown tables with the ratios Sluice/PgBouncer and Sluice/direct and appends
//! them to benches/RESULTS.md with the date, commit and machine. Knobs (environment):
//! `SLUICE_BENCH_SECONDS` (per pgbench run, 10), `SLUICE_COMPARE_ONLY`
//! (`pgbench,cpu,storm,idle,routing`: all), `SLUICE_COMPARE_IDLE` (10000),
//! `SLUICE_COMPARE_TENANTS` (10000), `SLUICE_COMPARE_CONNECTS` (200),
//! `SLUICE_COMPARE_APPEND` (`0`: do not touch RESULTS.md). See benches/README.md.
//!
//! Every loop is bounded in count and time (pgbench's `-T`, client and connect counts
//! with deadlines); everything started is stopped by pid on exit and on panic (Drop
//! guards), in temporary directories, on OS-assigned or free ports.

use std::fmt::Write as _;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use testkit::{
    PgTarget, Pki, SluiceConfig, SluiceProcess, TenantEntry, TestCluster, TestClusterOptions,
};

#[path = "../common/mod.rs"]
mod common;
mod idle;
mod pgbench;
mod routing;
mod setup;
mod storm;

use idle::idle_table;
use pgbench::{
    cpu_table, find, joined, pgbench_rows, pgbench_table, progress, tps_cell, value, warm_up,
    Measured,
};
use routing::routing_table;
use setup::{Base, Leg, Mode, Pooler, Side, LEGS, MODES};
use storm::storm_table;

use common::{ratio, seconds, utc_time_of_day};
use testkit::idle::{hold_idle_clients, IdleHeld, LOGIN_TIMEOUT};
use testkit::pgbench::{logged_latencies_us, percentile, run_pgbench, PgbenchRun};
use testkit::pgbouncer::{
    app_scram_secret, ensure_pgbouncer, let_postgres_reach_socket, PgBouncer, PgBouncerSettings,
};
use testkit::procfs::field;
use testkit::procfs::{clock_ticks_per_second, ensure_open_files, rss_kib};

const BIN: &str = env!("CARGO_BIN_EXE_sluice");
const SECTIONS: [&str; 5] = ["pgbench", "cpu", "storm", "idle", "routing"];
const CLIENTS: [u32; 3] = [1, 16, 64];
/// Without the `pgbench` section, `cpu` runs only this client count.
const CPU_ONLY_CLIENTS: [u32; 1] = [16];
const PROTOCOLS: [&str; 2] = ["simple", "prepared"];
const STORM_CLIENTS: &str = "16";
/// Share of transactions pgbench writes to its per-transaction log (bounds the log).
const LOG_SAMPLING: &str = "0.1";
/// Postgres' max_connections: every pooler's server connections plus direct `-c 64`.
const MAX_CONNECTIONS: u32 = 300;
/// No new idle clients after this long (each login also has a 30 s timeout).
const IDLE_BUDGET: Duration = Duration::from_secs(300);
/// How long `sluice serve` may take to listen (with a small catalog).
const START_TIMEOUT: Duration = Duration::from_secs(60);
/// The same with the routing section's large catalog.
const LARGE_START_TIMEOUT: Duration = Duration::from_secs(900);
/// Pause between a pooler's start and the routing section's logins.
const SETTLE: Duration = Duration::from_secs(5);
/// No new sequential connects after this long.
const CONNECT_BUDGET: Duration = Duration::from_secs(60);

/// What to run, from the environment.
struct Knobs {
    secs: String,
    sections: Vec<&'static str>,
    idle: usize,
    tenants: usize,
    connects: usize,
    append: bool,
}

fn env_number(name: &str, default: usize) -> usize {
    match std::env::var(name) {
        Ok(v) => v
            .trim()
            .parse()
            .unwrap_or_else(|_| panic!("{name}={v}: not a number")),
        Err(_) => default,
    }
}

impl Knobs {
    fn from_env() -> Self {
        let sections = match std::env::var("SLUICE_COMPARE_ONLY") {
            Ok(list) => list
                .split(',')
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .map(|s| {
                    SECTIONS
                        .into_iter()
                        .find(|known| *known == s)
                        .unwrap_or_else(|| {
                            panic!(
                                "SLUICE_COMPARE_ONLY: unknown section {s:?} (known: {SECTIONS:?})"
                            )
                        })
                })
                .collect(),
            Err(_) => SECTIONS.to_vec(),
        };
        Knobs {
            secs: seconds(),
            sections,
            idle: env_number("SLUICE_COMPARE_IDLE", 10_000),
            tenants: env_number("SLUICE_COMPARE_TENANTS", 10_000),
            connects: env_number("SLUICE_COMPARE_CONNECTS", 200).max(1),
            append: std::env::var("SLUICE_COMPARE_APPEND").map_or(true, |v| v != "0"),
        }
    }

    fn has(&self, section: &str) -> bool {
        self.sections.contains(&section)
    }

    /// The command line that reproduces this run.
    fn command(&self) -> String {
        let mut words: Vec<String> = [
            "SLUICE_BENCH_SECONDS",
            "SLUICE_COMPARE_ONLY",
            "SLUICE_COMPARE_IDLE",
            "SLUICE_COMPARE_TENANTS",
            "SLUICE_COMPARE_CONNECTS",
        ]
        .iter()
        .filter_map(|name| Some(format!("{name}={}", std::env::var(name).ok()?)))
        .collect();
        words.push("cargo bench --bench compare".into());
        words.join(" ")
    }
}

// ---------------------------------------------------------------------------------
// The report

fn command_output(program: &str, args: &[&str]) -> String {
    Command::new(program)
        .args(args)
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        .unwrap_or_default()
}

/// The 1, 5 and 15 minute load averages, as /proc/loadavg has them.
fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_default()
}

/// Date, commit and machine, as a RESULTS.md section heading and its first lines.
fn heading(base: &Base, knobs: &Knobs, load_at_start: &str) -> String {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("model name")?.split(':').nth(1))
                .map(|m| m.trim().to_owned())
        })
        .unwrap_or_else(|| "unknown CPU".into());
    let memory_gib = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|s| field::<f64>(&s, "MemTotal:"))
        .map_or(f64::NAN, |kib| kib / 1024.0 / 1024.0);
    let commit = command_output("git", &["rev-parse", "--short", "HEAD"]);
    let dirty =
        !command_output("git", &["status", "--porcelain", "--untracked-files=no"]).is_empty();
    let postgres = String::from_utf8_lossy(&base.cluster.psql_direct("SHOW server_version").stdout)
        .trim()
        .to_owned();
    let bouncer = match &base.bouncer {
        Ok(((major, minor), _)) => format!("PgBouncer {major}.{minor}"),
        Err(why) => format!("no PgBouncer ({why})"),
    };
    format!(
        "## {} — compare: direct vs PgBouncer vs Sluice (commit {commit}{})\n\n\
         Machine: {cpu}, {} CPUs (nproc), {memory_gib:.0} GiB; PostgreSQL {postgres}, {bouncer}, \
         release build. Command: `{}`.\n\n\
         One Postgres cluster (max_connections {MAX_CONNECTIONS}, fsync off); both poolers reach it \
         over its unix socket with SCRAM pass-through (PgBouncer: the role's SCRAM verifier in its \
         auth_file; Sluice: auth_query), pool size {} in session mode and {} in transaction mode, \
         client TLS optional with the same certificate, no per-login logging (Sluice `warn`, \
         PgBouncer `log_connections = 0`). Plaintext Sluice clients name the tenant with \
         `options=tenant=acme`, TLS ones with SNI. Everything shares the machine's cores; \
         load average (1, 5, 15 min) {load_at_start} at the start, {} at the end.\n",
        command_output("date", &["-u", "+%Y-%m-%d"]),
        if dirty {
            ", plus uncommitted changes in the working tree"
        } else {
            ""
        },
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        knobs.command(),
        Mode::Session.pool_size(),
        Mode::Transaction.pool_size(),
        load_average(),
    )
}

fn main() {
    // `cargo bench` passes `--bench`; nothing else to parse.
    let knobs = Knobs::from_env();
    let load_at_start = load_average();
    if knobs.has("idle") {
        // This process holds the clients' sockets and the pooler their other ends;
        // PgBouncer and Sluice inherit the limit.
        ensure_open_files(knobs.idle as u64 + 4096);
    }
    let base = Base::start();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let mut out = String::new();
    if knobs.has("pgbench") || knobs.has("cpu") || knobs.has("storm") {
        let mut poolers = Vec::new();
        for mode in MODES {
            poolers.extend(base.start_bouncer(mode, 1000, &format!("main-{}", mode.name())));
            let config = base.sluice_config(mode);
            let label = format!("main-{}", mode.name());
            let sluice = base.start_sluice(mode, &config, &label);
            poolers.push(sluice.unwrap_or_else(|e| panic!("{e}")));
        }
        warm_up(&base, &poolers);
        if knobs.has("pgbench") || knobs.has("cpu") {
            let rows = pgbench_rows(&base, &poolers, &knobs);
            if knobs.has("pgbench") {
                pgbench_table(&rows, &knobs.secs, &mut out);
            }
            if knobs.has("cpu") {
                cpu_table(&rows, &mut out);
            }
        }
        if knobs.has("storm") {
            storm_table(&base, &poolers, &knobs.secs, &mut out);
        }
    }
    if knobs.has("idle") {
        idle_table(&base, &rt, knobs.idle, &mut out);
    }
    if knobs.has("routing") {
        routing_table(&base, &rt, &knobs, &mut out);
    }
    let report = format!(
        "{}\n{}",
        heading(&base, &knobs, &load_at_start),
        out.trim_start()
    );
    println!("\n{report}");
    if knobs.append {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("benches/RESULTS.md");
        let mut results = std::fs::OpenOptions::new()
            .append(true)
            .open(&path)
            .unwrap_or_else(|e| panic!("opening {}: {e}", path.display()));
        std::io::Write::write_all(&mut results, format!("\n{report}").as_bytes()).unwrap();
        println!("compare: appended to {}", path.display());
    } else {
        println!("compare: SLUICE_COMPARE_APPEND=0, RESULTS.md left alone");
    }
}
