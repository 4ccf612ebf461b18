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

use testkit::{PgTarget, Pki, SluiceConfig, TenantEntry, TestCluster, TestClusterOptions};

mod common;
use common::{
    app_scram_secret, clock_ticks_per_second, ensure_open_files, ensure_pgbouncer, field,
    hold_idle_clients, let_postgres_reach_socket, logged_latencies_us, percentile, ratio, rss_kib,
    run_pgbench, seconds, utc_time_of_day, IdleHeld, PgBouncer, PgBouncerSettings, PgbenchRun,
    SlowStartSluice, LOGIN_TIMEOUT,
};

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
// What runs: the cluster, the poolers, how clients reach them

#[derive(Clone, Copy, PartialEq, Eq)]
enum Mode {
    Session,
    Transaction,
}

const MODES: [Mode; 2] = [Mode::Session, Mode::Transaction];

impl Mode {
    fn name(self) -> &'static str {
        match self {
            Mode::Session => "session",
            Mode::Transaction => "transaction",
        }
    }

    /// Server connections per pool, the same for both poolers: session mode needs one
    /// per client (`-c 64`); transaction mode has both poolers' default, 20.
    fn pool_size(self) -> u32 {
        match self {
            Mode::Session => 64,
            Mode::Transaction => 20,
        }
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Leg {
    Tls,
    Plain,
}

const LEGS: [Leg; 2] = [Leg::Tls, Leg::Plain];

impl Leg {
    fn name(self) -> &'static str {
        match self {
            Leg::Tls => "TLS",
            Leg::Plain => "plain",
        }
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Side {
    Direct,
    PgBouncer,
    Sluice,
}

/// The cluster, its certificates and what PgBouncer needs. Field order is drop order:
/// the cluster stops before its directory is removed.
struct Base {
    cluster: TestCluster,
    pki: Pki,
    dir: tempfile::TempDir,
    /// PgBouncer's version and the SCRAM verifier for its auth_file, or why it is skipped.
    bouncer: Result<((u32, u32), String), String>,
    hz: f64,
}

impl Base {
    fn start() -> Self {
        let dir = tempfile::Builder::new()
            .prefix("sluice-bench-compare-")
            .tempdir()
            .unwrap();
        let pki = Pki::generate(&dir.path().join("pki")).unwrap();
        let cluster = TestCluster::start(
            dir.path(),
            "acme",
            TestClusterOptions {
                tcp_tls: Some(&pki),
                max_connections: MAX_CONNECTIONS,
                ..Default::default()
            },
        )
        .unwrap();
        let bouncer = ensure_pgbouncer("compare").map(|version| {
            // PgBouncer runs as `postgres` and reaches the cluster over its socket.
            let_postgres_reach_socket(dir.path(), &cluster);
            (version, app_scram_secret(&cluster))
        });
        if let Err(why) = &bouncer {
            println!("compare: SKIP PgBouncer column: {why}");
        }
        let base = Base {
            cluster,
            pki,
            dir,
            bouncer,
            hz: clock_ticks_per_second(),
        };
        let init = testkit::pgbench(
            &base.target(Side::Direct, base.direct_addr(), Leg::Tls),
            &["-i", "-s", "1", "-q"],
        );
        assert!(init.success, "pgbench -i: {}", init.stderr);
        base
    }

    fn direct_addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.cluster.tcp_port.unwrap()))
    }

    /// How `app` reaches `side` at `addr`. Sluice: SNI names the tenant over TLS, the
    /// `options` word `tenant=acme` in plaintext; the others: by address.
    fn target(&self, side: Side, addr: SocketAddr, leg: Leg) -> PgTarget {
        let mut t = PgTarget::tenant(addr, "acme", &self.cluster.app_password, &self.pki.ca_cert);
        t.sslmode = match leg {
            Leg::Tls => "require",
            Leg::Plain => "disable",
        };
        match (side, leg) {
            (Side::Sluice, Leg::Tls) => {}
            (Side::Sluice, Leg::Plain) => {
                t.sni_host = None;
                t.options = Some("tenant=acme".into());
            }
            _ => t.sni_host = Some("localhost".into()),
        }
        t
    }

    /// Sluice's config for `mode`: the tenant over the unix socket, plaintext clients
    /// allowed, no per-tenant connection caps or connect rate, logging at `warn`.
    fn sluice_config(&self, mode: Mode) -> SluiceConfig {
        let mut c = SluiceConfig::new(&self.pki);
        c.log = "warn".into();
        c.require_tls = false;
        c.tenants = vec![TenantEntry::over_unix_socket(&self.cluster, &self.pki)];
        c.default_pool = vec![
            format!("mode = \"{}\"", mode.name()),
            format!("size = {}", mode.pool_size()),
        ];
        c.default_limits = vec![
            "connect_rate = 0".into(),
            "max_client_connections = 0".into(),
        ];
        c
    }

    /// Starts `sluice serve` with `config`; `Err` if it does not listen within `timeout`.
    fn start_sluice(
        &self,
        mode: Mode,
        config: &SluiceConfig,
        label: &str,
        timeout: Duration,
    ) -> Result<Pooler, String> {
        let dir = self.dir.path().join(format!("sluice-{label}"));
        let sluice = SlowStartSluice::start(BIN.as_ref(), &dir, config, timeout)?;
        Ok(Pooler {
            side: Side::Sluice,
            mode,
            pid: sluice.pid(),
            addr: sluice.addr,
            started_in: sluice.took,
            _process: Box::new(sluice),
        })
    }

    /// A PgBouncer like `sluice_config(mode)`: TLS optional (`prefer`), no login logs.
    fn start_bouncer(&self, mode: Mode, max_client_conn: u32, label: &str) -> Option<Pooler> {
        let (version, secret) = self.bouncer.as_ref().ok()?;
        let settings = PgBouncerSettings {
            pool_mode: mode.name(),
            default_pool_size: mode.pool_size(),
            max_client_conn,
            client_tls_sslmode: "prefer",
            log_connections: false,
            version: *version,
        };
        let log = self.dir.path().join(format!("pgbouncer-{label}.log"));
        let bouncer = PgBouncer::start(&self.cluster, &self.pki, secret, &settings, log);
        Some(Pooler {
            side: Side::PgBouncer,
            mode,
            pid: bouncer.pid,
            addr: SocketAddr::from(([127, 0, 0, 1], bouncer.port)),
            started_in: Duration::ZERO,
            _process: Box::new(bouncer),
        })
    }
}

/// A running pooler; dropping it stops the process.
struct Pooler {
    side: Side,
    mode: Mode,
    pid: u32,
    addr: SocketAddr,
    /// From spawning Sluice to its "listening" lines (zero for PgBouncer).
    started_in: Duration,
    /// The `SlowStartSluice` or `PgBouncer` guard.
    _process: Box<dyn std::any::Any>,
}

// ---------------------------------------------------------------------------------
// pgbench -S and the pooler's CPU per transaction

/// One pgbench run and the p99 of its logged transactions.
#[derive(Clone)]
struct Measured {
    run: PgbenchRun,
    p99_ms: f64,
}

/// One line of the pgbench tables: a configuration measured on the three sides.
struct Row {
    mode: Mode,
    leg: Leg,
    protocol: &'static str,
    clients: u32,
    direct: Option<Measured>,
    bouncer: Option<Measured>,
    sluice: Option<Measured>,
}

/// Runs pgbench with a per-transaction log (sampled) and reads the p99 from it.
struct Pgbench<'a> {
    base: &'a Base,
    logs: PathBuf,
    runs: usize,
}

impl Pgbench<'_> {
    fn measure(&mut self, target: &PgTarget, pooler: Option<u32>, args: &[String]) -> Measured {
        self.runs += 1;
        let prefix = format!("run{}", self.runs);
        let log_prefix = self.logs.join(&prefix);
        let mut all: Vec<&str> = args.iter().map(String::as_str).collect();
        all.extend([
            "--log",
            "--sampling-rate",
            LOG_SAMPLING,
            "--log-prefix",
            log_prefix.to_str().unwrap(),
        ]);
        let run = run_pgbench(target, &all, pooler, self.base.hz);
        let latencies = logged_latencies_us(&self.logs, &prefix);
        remove_files_starting_with(&self.logs, &prefix);
        Measured {
            run,
            p99_ms: percentile(&latencies, 0.99) / 1000.0,
        }
    }
}

fn remove_files_starting_with(dir: &Path, prefix: &str) {
    for entry in std::fs::read_dir(dir).unwrap().flatten() {
        if entry.file_name().to_string_lossy().starts_with(prefix) {
            let _ = std::fs::remove_file(entry.path());
        }
    }
}

fn select_args(protocol: &str, clients: u32, secs: &str) -> Vec<String> {
    let threads = if clients > 1 { "2" } else { "1" };
    let c = clients.to_string();
    [
        "-n", "-S", "-M", protocol, "-c", &c, "-j", threads, "-T", secs,
    ]
    .map(String::from)
    .to_vec()
}

fn progress(what: &str, side: &str, run: &PgbenchRun, extra: &str) {
    println!(
        "compare: {} UTC {what} {side}: {:.0} TPS, {:.3} ms avg{extra}, {} txns, {} failed, {} clients aborted{}{}",
        utc_time_of_day(),
        run.tps,
        run.latency_ms,
        run.processed,
        run.failed,
        run.aborted_clients,
        run.cpu_us_per_txn
            .map(|c| format!(", pooler {c:.1} µs/txn"))
            .unwrap_or_default(),
        run.first_error
            .as_ref()
            .map(|e| format!(" (first error: {e})"))
            .unwrap_or_default(),
    );
}

/// An unrecorded 2 s run per side, so server connections are open before measuring.
fn warm_up(base: &Base, poolers: &[Pooler]) {
    let args = select_args("simple", 64, "2");
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let direct = base.target(Side::Direct, base.direct_addr(), Leg::Tls);
    run_pgbench(&direct, &args, None, base.hz);
    for p in poolers {
        run_pgbench(&base.target(p.side, p.addr, Leg::Tls), &args, None, base.hz);
    }
}

fn find(poolers: &[Pooler], side: Side, mode: Mode) -> Option<&Pooler> {
    poolers.iter().find(|p| p.side == side && p.mode == mode)
}

fn pgbench_rows(base: &Base, poolers: &[Pooler], knobs: &Knobs) -> Vec<Row> {
    let clients: &[u32] = if knobs.has("pgbench") {
        &CLIENTS
    } else {
        &CPU_ONLY_CLIENTS
    };
    let logs = base.dir.path().join("pgbench-logs");
    std::fs::create_dir_all(&logs).unwrap();
    let mut bench = Pgbench {
        base,
        logs,
        runs: 0,
    };
    let mut rows = Vec::new();
    for leg in LEGS {
        for protocol in PROTOCOLS {
            for &c in clients {
                let args = select_args(protocol, c, &knobs.secs);
                let what = format!("{} -M {protocol} -c {c}", leg.name());
                let target = base.target(Side::Direct, base.direct_addr(), leg);
                let direct = bench.measure(&target, None, &args);
                let p99 = |m: &Measured| format!(", {:.3} ms p99", m.p99_ms);
                progress(&what, "direct", &direct.run, &p99(&direct));
                for mode in MODES {
                    let mut on = |side: Side, name: &str| {
                        let p = find(poolers, side, mode)?;
                        let m = bench.measure(&base.target(side, p.addr, leg), Some(p.pid), &args);
                        progress(&what, &format!("{} {name}", mode.name()), &m.run, &p99(&m));
                        Some(m)
                    };
                    let bouncer = on(Side::PgBouncer, "PgBouncer");
                    let sluice = on(Side::Sluice, "Sluice");
                    rows.push(Row {
                        mode,
                        leg,
                        protocol,
                        clients: c,
                        direct: Some(direct.clone()),
                        bouncer,
                        sluice,
                    });
                }
            }
        }
    }
    rows
}

/// A measurement if it exists and every client finished.
fn usable(m: &Option<Measured>) -> Option<&Measured> {
    m.as_ref().filter(|m| m.run.usable())
}

/// A figure of a usable measurement, NaN otherwise.
fn value(m: &Option<Measured>, f: impl Fn(&Measured) -> f64) -> f64 {
    usable(m).map_or(f64::NAN, f)
}

fn tps_cell(m: &Option<Measured>) -> String {
    match m {
        None => "skipped".into(),
        Some(m) if !m.run.usable() => format!("failed ({} aborted)", m.run.aborted_clients),
        Some(m) => format!("{:.0}", m.run.tps),
    }
}

/// `a / b / c` with `decimals`, `–` where a side is missing or failed.
fn joined(ms: &[&Option<Measured>], decimals: usize, f: impl Fn(&Measured) -> f64) -> String {
    ms.iter()
        .map(|m| match usable(m) {
            Some(m) => format!("{:.*}", decimals, f(m)),
            None => "–".into(),
        })
        .collect::<Vec<_>>()
        .join(" / ")
}

/// Lines naming the first error of every failed run.
fn failures(rows: &[Row], out: &mut String) {
    for r in rows {
        for (name, m) in [("PgBouncer", &r.bouncer), ("Sluice", &r.sluice)] {
            if let Some(m) = m.as_ref().filter(|m| !m.run.usable()) {
                let _ = writeln!(
                    out,
                    "- {name}, {} mode, {} -M {} -c {}: {} of {} clients aborted: {}",
                    r.mode.name(),
                    r.leg.name(),
                    r.protocol,
                    r.clients,
                    m.run.aborted_clients,
                    r.clients,
                    m.run.first_error.as_deref().unwrap_or("?")
                );
            }
        }
    }
}

fn pgbench_table(rows: &[Row], secs: &str, out: &mut String) {
    let _ = writeln!(
        out,
        "### pgbench -n -S -T {secs} (-j 2 from -c 16)\n\n\
         Latency cells are direct / PgBouncer / Sluice, in ms; p99 from a {}% sample of \
         pgbench's per-transaction log. Direct Postgres has no pooling mode: its runs are \
         shown in both mode rows.\n",
        (LOG_SAMPLING.parse::<f64>().unwrap() * 100.0).round()
    );
    let _ = writeln!(
        out,
        "| mode | client leg | -M | -c | TPS direct | TPS PgBouncer | TPS Sluice | TPS Sluice/PgBouncer | TPS Sluice/direct | avg latency | p99 latency | p99 Sluice/PgBouncer | p99 Sluice/direct |\n\
         |---|---|---|---|---|---|---|---|---|---|---|---|---|"
    );
    for r in rows {
        let tps = |m: &Measured| m.run.tps;
        let p99 = |m: &Measured| m.p99_ms;
        let all = [&r.direct, &r.bouncer, &r.sluice];
        let _ = writeln!(
            out,
            "| {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} |",
            r.mode.name(),
            r.leg.name(),
            r.protocol,
            r.clients,
            tps_cell(&r.direct),
            tps_cell(&r.bouncer),
            tps_cell(&r.sluice),
            ratio(value(&r.sluice, tps), value(&r.bouncer, tps)),
            ratio(value(&r.sluice, tps), value(&r.direct, tps)),
            joined(&all, 3, |m| m.run.latency_ms),
            joined(&all, 3, p99),
            ratio(value(&r.sluice, p99), value(&r.bouncer, p99)),
            ratio(value(&r.sluice, p99), value(&r.direct, p99)),
        );
    }
    let _ = writeln!(out);
    failures(rows, out);
}

fn cpu_table(rows: &[Row], out: &mut String) {
    let _ = writeln!(
        out,
        "\n### Pooler CPU per transaction (µs, utime+stime of the pooler's pid over the pgbench run ÷ transactions)\n\n\
         user / system: the same time split into utime and stime; switches: the pooler's context \
         switches (all threads, voluntary + involuntary) per transaction. The last column is \
         Sluice's system time alone over PgBouncer's whole CPU time: the kernel's share of the \
         work (the same four socket calls per transaction in both) that no user-space change \
         removes.\n\n\
         | mode | client leg | -M | -c | PgBouncer | Sluice | Sluice/PgBouncer | user / system PgBouncer | user / system Sluice | switches PgBouncer / Sluice | Sluice system / PgBouncer total |\n\
         |---|---|---|---|---|---|---|---|---|---|---|"
    );
    for r in rows {
        let cpu = |m: &Measured| m.run.cpu_us_per_txn.unwrap_or(f64::NAN);
        let system = |m: &Measured| m.run.cpu_split_us_per_txn.map_or(f64::NAN, |s| s.1);
        let cell = |m: &Option<Measured>| match usable(m) {
            Some(m) => format!("{:.1}", cpu(m)),
            None => "–".into(),
        };
        let split = |m: &Option<Measured>| match usable(m).and_then(|m| m.run.cpu_split_us_per_txn)
        {
            Some((user, system)) => format!("{user:.1} / {system:.1}"),
            None => "–".into(),
        };
        let switches = |m: &Option<Measured>| match usable(m).and_then(|m| m.run.switches_per_txn) {
            Some(n) => format!("{n:.2}"),
            None => "–".into(),
        };
        let _ = writeln!(
            out,
            "| {} | {} | {} | {} | {} | {} | {} | {} | {} | {} / {} | {} |",
            r.mode.name(),
            r.leg.name(),
            r.protocol,
            r.clients,
            cell(&r.bouncer),
            cell(&r.sluice),
            ratio(value(&r.sluice, cpu), value(&r.bouncer, cpu)),
            split(&r.bouncer),
            split(&r.sluice),
            switches(&r.bouncer),
            switches(&r.sluice),
            ratio(value(&r.sluice, system), value(&r.bouncer, cpu)),
        );
    }
}

// ---------------------------------------------------------------------------------
// Connect storm: pgbench -C

fn storm_table(base: &Base, poolers: &[Pooler], secs: &str, out: &mut String) {
    let args = ["-n", "-C", "-S", "-c", STORM_CLIENTS, "-j", "2", "-T", secs];
    let _ = writeln!(
        out,
        "\n### Connect storm: pgbench {} (a SCRAM login per transaction)\n\n\
         Connection cells are direct / PgBouncer / Sluice, pgbench's average connection time in ms; \
         pooler CPU per connection in µs.\n\n\
         | mode | client leg | TPS direct | TPS PgBouncer | TPS Sluice | TPS Sluice/PgBouncer | TPS Sluice/direct | avg connection | pooler CPU PgBouncer / Sluice | CPU Sluice/PgBouncer |\n\
         |---|---|---|---|---|---|---|---|---|---|",
        args.join(" ")
    );
    let mut rows = Vec::new();
    for leg in LEGS {
        let measure = |side: Side, addr: SocketAddr, pid: Option<u32>, label: &str| {
            let run = run_pgbench(&base.target(side, addr, leg), &args, pid, base.hz);
            let conn_ms: f64 = field(&run.stdout, "average connection time =").unwrap_or(f64::NAN);
            progress(
                &format!("storm {}", leg.name()),
                label,
                &run,
                &format!(", {conn_ms:.3} ms per connection"),
            );
            Some(Measured {
                run,
                p99_ms: conn_ms,
            })
        };
        let direct = measure(Side::Direct, base.direct_addr(), None, "direct");
        for mode in MODES {
            let on = |side: Side, name: &str| {
                let p = find(poolers, side, mode)?;
                measure(
                    side,
                    p.addr,
                    Some(p.pid),
                    &format!("{} {name}", mode.name()),
                )
            };
            let bouncer = on(Side::PgBouncer, "PgBouncer");
            let sluice = on(Side::Sluice, "Sluice");
            rows.push((mode, leg, direct.clone(), bouncer, sluice));
        }
    }
    for (mode, leg, direct, bouncer, sluice) in &rows {
        // `p99_ms` holds the average connection time here.
        let tps = |m: &Measured| m.run.tps;
        let cpu = |m: &Measured| m.run.cpu_us_per_txn.unwrap_or(f64::NAN);
        let _ = writeln!(
            out,
            "| {} | {} | {} | {} | {} | {} | {} | {} | {} | {} |",
            mode.name(),
            leg.name(),
            tps_cell(direct),
            tps_cell(bouncer),
            tps_cell(sluice),
            ratio(value(sluice, tps), value(bouncer, tps)),
            ratio(value(sluice, tps), value(direct, tps)),
            joined(&[direct, bouncer, sluice], 2, |m| m.p99_ms),
            joined(&[bouncer, sluice], 1, cpu),
            ratio(value(sluice, cpu), value(bouncer, cpu)),
        );
    }
}

// ---------------------------------------------------------------------------------
// Idle clients: RSS per connection

fn idle_table(base: &Base, rt: &tokio::runtime::Runtime, n: usize, out: &mut String) {
    let max_clients = u32::try_from(n + 100).unwrap_or(u32::MAX);
    let mut rows = Vec::new();
    for leg in LEGS {
        let held = |side: Side, name: &str| -> Option<Result<IdleHeld, String>> {
            let label = format!("idle-{}-{}", name, leg.name());
            let mode = Mode::Transaction;
            let pooler = match side {
                Side::PgBouncer => base.start_bouncer(mode, max_clients, &label)?,
                _ => base
                    .start_sluice(mode, &base.sluice_config(mode), &label, START_TIMEOUT)
                    .unwrap_or_else(|e| panic!("{e}")),
            };
            println!(
                "compare: {} UTC idle: {n} {} clients to {name} ...",
                utc_time_of_day(),
                leg.name()
            );
            let target = base.target(side, pooler.addr, leg);
            let result = rt.block_on(hold_idle_clients(&target, n, pooler.pid, IDLE_BUDGET));
            match &result {
                Ok(h) => println!(
                    "compare: idle {} {name}: {} held, {} failed{}, {:.1} KiB each, opened in {:.1} s",
                    leg.name(),
                    h.clients,
                    h.failed,
                    h.first_error
                        .as_ref()
                        .map(|e| format!(" (first: {e})"))
                        .unwrap_or_default(),
                    h.per_client_kib(),
                    h.took.as_secs_f64()
                ),
                Err(e) => println!("compare: idle {} {name}: {e}", leg.name()),
            }
            Some(result)
        };
        let bouncer = held(Side::PgBouncer, "PgBouncer");
        let sluice = held(Side::Sluice, "Sluice");
        rows.push((leg, bouncer, sluice));
    }
    let _ = writeln!(
        out,
        "\n### Idle clients: pooler RSS growth per client ({n} clients, transaction mode)\n\n\
         Each client logs in with SCRAM, runs `SELECT 1` once and stays idle; VmRSS after one \
         warm-up client and after the last has been idle for 2 s. Direct Postgres would need a \
         backend process per client.\n\n\
         | client leg | PgBouncer KiB/client | Sluice KiB/client | Sluice/PgBouncer | PgBouncer RSS MiB before → with | Sluice RSS MiB before → with | clients held PgBouncer / Sluice |\n\
         |---|---|---|---|---|---|---|"
    );
    let per = |h: &Option<Result<IdleHeld, String>>| match h {
        Some(Ok(h)) if h.clients > 0 => h.per_client_kib(),
        _ => f64::NAN,
    };
    let cell = |h: &Option<Result<IdleHeld, String>>, f: &dyn Fn(&IdleHeld) -> String| match h {
        None => "skipped".to_owned(),
        Some(Err(_)) => "failed".to_owned(),
        Some(Ok(h)) => f(h),
    };
    let kib = |h: &IdleHeld| format!("{:.1}", h.per_client_kib());
    let mib = |h: &IdleHeld| {
        format!(
            "{:.1} → {:.1}",
            h.before_kib as f64 / 1024.0,
            h.after_kib as f64 / 1024.0
        )
    };
    let count = |h: &IdleHeld| h.clients.to_string();
    for (leg, bouncer, sluice) in &rows {
        let _ = writeln!(
            out,
            "| {} | {} | {} | {} | {} | {} | {} / {} |",
            leg.name(),
            cell(bouncer, &kib),
            cell(sluice, &kib),
            ratio(per(sluice), per(bouncer)),
            cell(bouncer, &mib),
            cell(sluice, &mib),
            cell(bouncer, &count),
            cell(sluice, &count),
        );
    }
}

// ---------------------------------------------------------------------------------
// Routing scale: 1 vs many tenants in Sluice's catalog

/// Sorted durations (µs) of `n` sequential logins (TLS + SCRAM, tokio-postgres) to
/// `target`, after one unmeasured login; stops after [`CONNECT_BUDGET`].
async fn connect_latencies(target: &PgTarget, n: usize) -> Result<Vec<u64>, String> {
    let config = testkit::clients::pg_config(target);
    let connector = testkit::clients::tls_connector(&target.ca);
    let started = Instant::now();
    let mut out = Vec::with_capacity(n);
    for i in 0..=n {
        if started.elapsed() > CONNECT_BUDGET {
            break;
        }
        let t = Instant::now();
        let (client, conn) = tokio::time::timeout(LOGIN_TIMEOUT, config.connect(connector.clone()))
            .await
            .map_err(|_| format!("login {i}: no answer within {LOGIN_TIMEOUT:?}"))?
            .map_err(|e| format!("login {i}: {e}"))?;
        let us = t.elapsed().as_micros() as u64;
        let task = tokio::spawn(conn);
        drop(client);
        let _ = tokio::time::timeout(LOGIN_TIMEOUT, task).await;
        if i > 0 {
            out.push(us);
        }
    }
    out.sort_unstable();
    Ok(out)
}

/// One line of the routing table.
struct Routed {
    name: String,
    tenants: String,
    latencies: Result<Vec<u64>, String>,
    rss_kib: Option<u64>,
    start_s: Option<f64>,
}

impl Routed {
    fn p(&self, q: f64) -> f64 {
        self.latencies
            .as_ref()
            .map_or(f64::NAN, |l| percentile(l, q) / 1000.0)
    }
}

fn routed(
    rt: &tokio::runtime::Runtime,
    base: &Base,
    pooler: &Pooler,
    knobs: &Knobs,
    tenants: &str,
) -> Routed {
    // Let the start's own work settle first (Sluice's control store has just taken
    // one upsert per config tenant).
    std::thread::sleep(SETTLE);
    let target = base.target(pooler.side, pooler.addr, Leg::Tls);
    let latencies = rt.block_on(connect_latencies(&target, knobs.connects));
    std::thread::sleep(Duration::from_secs(1));
    let name = match pooler.side {
        Side::Sluice => "Sluice",
        _ => "PgBouncer",
    };
    let r = Routed {
        name: name.into(),
        tenants: tenants.into(),
        latencies,
        rss_kib: rss_kib(pooler.pid),
        start_s: None,
    };
    println!(
        "compare: {} UTC routing {name} ({tenants} tenants): connect p50 {:.2} ms, p99 {:.2} ms{}",
        utc_time_of_day(),
        r.p(0.5),
        r.p(0.99),
        r.latencies
            .as_ref()
            .err()
            .map(|e| format!(" (failed: {e})"))
            .unwrap_or_default()
    );
    r
}

fn routing_table(base: &Base, rt: &tokio::runtime::Runtime, knobs: &Knobs, out: &mut String) {
    let mode = Mode::Transaction;
    let direct_target = base.target(Side::Direct, base.direct_addr(), Leg::Tls);
    let mut rows = vec![Routed {
        name: "direct".into(),
        tenants: "–".into(),
        latencies: rt.block_on(connect_latencies(&direct_target, knobs.connects)),
        rss_kib: None,
        start_s: None,
    }];
    if let Some(bouncer) = base.start_bouncer(mode, 1000, "routing") {
        rows.push(routed(rt, base, &bouncer, knobs, "–"));
    }
    for extra in [0, knobs.tenants] {
        let mut config = base.sluice_config(mode);
        let template = config.tenants[0].clone();
        config.tenants.extend((0..extra).map(|i| TenantEntry {
            id: format!("t{i:05}"),
            ..template.clone()
        }));
        let count = config.tenants.len();
        let label = format!("routing-{count}");
        match base.start_sluice(mode, &config, &label, LARGE_START_TIMEOUT) {
            Ok(sluice) => {
                let mut r = routed(rt, base, &sluice, knobs, &count.to_string());
                r.start_s = Some(sluice.started_in.as_secs_f64());
                rows.push(r);
            }
            Err(e) => {
                println!("compare: routing with {count} tenants: {e}");
                rows.push(Routed {
                    name: "Sluice".into(),
                    tenants: count.to_string(),
                    latencies: Err(e),
                    rss_kib: None,
                    start_s: None,
                });
            }
        }
    }
    let _ = writeln!(
        out,
        "\n### Routing scale: sequential logins (TLS + SCRAM, tokio-postgres) and Sluice's catalog size\n\n\
         {} logins one after another per row (after one unmeasured login), transaction mode; \
         the extra tenants are `[[tenants]]` entries of the config file on the same backend. \
         A login includes the client's own PBKDF2 (4096 iterations).\n\n\
         | target | tenants | login p50 (ms) | login p99 (ms) | RSS after (MiB) | start to listening (s) | p50 / PgBouncer | p50 / direct |\n\
         |---|---|---|---|---|---|---|---|",
        knobs.connects
    );
    let p50_of = |name: &str| {
        rows.iter()
            .find(|r| r.name == name)
            .map_or(f64::NAN, |r| r.p(0.5))
    };
    let (bouncer_p50, direct_p50) = (p50_of("PgBouncer"), p50_of("direct"));
    for r in &rows {
        let _ = writeln!(
            out,
            "| {} | {} | {:.2} | {:.2} | {} | {} | {} | {} |",
            r.name,
            r.tenants,
            r.p(0.5),
            r.p(0.99),
            r.rss_kib
                .map_or("–".into(), |k| format!("{:.1}", k as f64 / 1024.0)),
            r.start_s.map_or("–".into(), |s| format!("{s:.1}")),
            ratio(r.p(0.5), bouncer_p50),
            ratio(r.p(0.5), direct_p50),
        );
    }
    let sluices: Vec<&Routed> = rows.iter().filter(|r| r.name == "Sluice").collect();
    if let [one, many] = sluices[..] {
        if let (Some(a), Some(b)) = (one.rss_kib, many.rss_kib) {
            let grown = b as f64 - a as f64;
            let _ = writeln!(
                out,
                "\nWith {} more tenants: login p50 × {}, RSS {:+.1} MiB = {:.2} KiB per tenant.",
                knobs.tenants,
                ratio(many.p(0.5), one.p(0.5)),
                grown / 1024.0,
                grown / knobs.tenants.max(1) as f64,
            );
        }
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
            let sluice = base.start_sluice(mode, &config, &label, START_TIMEOUT);
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
