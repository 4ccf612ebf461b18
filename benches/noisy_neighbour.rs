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
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use testkit::{PgTarget, SluiceProcess, TwoTenants};
use tokio_postgres_rustls::MakeRustlsConnect;

mod common;
use common::{clock_ticks_per_second, field, pgbench_logs};

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
// CPU accounting

/// Fields 3 on of /proc/PID/stat ("self" for this process), if it exists; field N is
/// `[N - 3]`. The command name (field 2) may contain spaces: split after its ')'.
fn stat_fields(pid: &str) -> Option<Vec<u64>> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = &stat[stat.rfind(')')? + 1..];
    // Field 3 (state) is a letter: keep the positions with a placeholder.
    Some(
        rest.split_whitespace()
            .map(|v| v.parse().unwrap_or(0))
            .collect(),
    )
}

/// utime + stime (fields 14, 15) of `pid`, plus with `children` the times of its
/// children it has reaped (cutime + cstime, fields 16, 17); 0 once it is gone.
fn cpu_ticks(pid: &str, children: bool) -> u64 {
    let Some(f) = stat_fields(pid) else {
        return 0;
    };
    let own = f[14 - 3] + f[15 - 3];
    if children {
        own + f[16 - 3] + f[17 - 3]
    } else {
        own
    }
}

/// A postmaster and all its processes: its own time, its reaped backends' (cutime),
/// and the live ones' (ppid = the postmaster). A backend counted live at one reading
/// and reaped at the next is counted once either way.
fn cluster_ticks(postmaster: u32) -> u64 {
    let mut ticks = cpu_ticks(&postmaster.to_string(), true);
    for entry in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let name = entry.file_name();
        let Some(pid) = name
            .to_str()
            .filter(|n| n.bytes().all(|b| b.is_ascii_digit()))
        else {
            continue;
        };
        if let Some(f) = stat_fields(pid) {
            if f[4 - 3] == u64::from(postmaster) {
                ticks += f[14 - 3] + f[15 - 3];
            }
        }
    }
    ticks
}

/// (busy, user + nice + system, softirq) ticks of the whole machine from /proc/stat's
/// `cpu` line; idle and iowait are not busy.
fn machine_ticks() -> (u64, u64, u64) {
    let stat = std::fs::read_to_string("/proc/stat").expect("reading /proc/stat");
    let line = stat.lines().next().expect("cpu line");
    let v: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .filter_map(|v| v.parse().ok())
        .collect();
    // user nice system idle iowait irq softirq steal (guest time is in user already).
    let total: u64 = v.iter().take(8).sum();
    (total - v[3] - v[4], v[0] + v[1] + v[2], v[6])
}

/// CPU ticks of the kernel's `ksoftirqd/N` threads: network work deferred from
/// interrupt context to a thread, where it waits its turn like any process.
fn ksoftirqd_ticks() -> u64 {
    let Ok(procs) = std::fs::read_dir("/proc") else {
        return 0;
    };
    procs
        .flatten()
        .filter_map(|entry| {
            let pid = entry.file_name().to_string_lossy().into_owned();
            let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).ok()?;
            comm.starts_with("ksoftirqd/")
                .then(|| cpu_ticks(&pid, false))
        })
        .sum()
}

/// CPU used over one phase, in cores (CPU seconds per wall-clock second).
#[derive(Debug, Clone, Copy, Default)]
struct Cpu {
    /// Sluice's CPU seconds over the phase.
    sluice_secs: f64,
    sluice: f64,
    /// This process: the storm's clients (and the waiting threads).
    client: f64,
    /// Both clusters' postmasters and backends.
    postgres: f64,
    /// The pgbench processes (reaped children of this process).
    pgbench: f64,
    machine: f64,
    /// Softirq time (/proc/stat), mostly the loopback network's receive side.
    softirq: f64,
    /// The ksoftirqd threads: softirq work the kernel deferred to them.
    ksoftirqd: f64,
    /// Machine user + system time not spent by any process above: other work on the
    /// machine (builds, other tests), which disturbs the phase.
    others: f64,
}

/// What the processes of the bench have used so far, in ticks.
#[derive(Debug, Clone, Copy)]
struct Reading {
    sluice: u64,
    client: u64,
    postgres: u64,
    pgbench: u64,
    machine: (u64, u64, u64),
    ksoftirqd: u64,
}

struct CpuMeter {
    sluice_pid: String,
    postmasters: Vec<u32>,
    hz: f64,
    started: Instant,
    start: Reading,
}

impl CpuMeter {
    fn start(ctx: &Ctx) -> Self {
        let mut meter = CpuMeter {
            sluice_pid: ctx.sluice.pid().to_string(),
            postmasters: ctx.postmasters.clone(),
            hz: ctx.hz,
            started: Instant::now(),
            start: Reading {
                sluice: 0,
                client: 0,
                postgres: 0,
                pgbench: 0,
                machine: (0, 0, 0),
                ksoftirqd: 0,
            },
        };
        meter.start = meter.read();
        meter
    }

    fn read(&self) -> Reading {
        let own = stat_fields("self").expect("/proc/self/stat");
        Reading {
            sluice: cpu_ticks(&self.sluice_pid, true),
            client: own[14 - 3] + own[15 - 3],
            pgbench: own[16 - 3] + own[17 - 3],
            postgres: self.postmasters.iter().map(|&p| cluster_ticks(p)).sum(),
            machine: machine_ticks(),
            ksoftirqd: ksoftirqd_ticks(),
        }
    }

    fn stop(&self) -> Cpu {
        let wall = self.started.elapsed().as_secs_f64();
        let (a, b) = (self.start, self.read());
        // /proc/stat counts in the same USER_HZ ticks as /proc/PID/stat.
        let cores = |ticks: u64| ticks as f64 / self.hz / wall;
        let ours = (b.sluice - a.sluice)
            + (b.client - a.client)
            + (b.postgres - a.postgres)
            + (b.pgbench - a.pgbench);
        let sluice_secs = (b.sluice - a.sluice) as f64 / self.hz;
        Cpu {
            sluice_secs,
            sluice: sluice_secs / wall,
            client: cores(b.client - a.client),
            postgres: cores(b.postgres - a.postgres),
            pgbench: cores(b.pgbench - a.pgbench),
            machine: cores(b.machine.0 - a.machine.0),
            softirq: cores(b.machine.2 - a.machine.2),
            ksoftirqd: cores(b.ksoftirqd - a.ksoftirqd),
            others: cores((b.machine.1 - a.machine.1).saturating_sub(ours)),
        }
    }
}

// ---------------------------------------------------------------------------------
// pgbench

/// A pgbench process writing to files; killed by pid if dropped before it finished.
struct Pgbench {
    child: Option<Child>,
    stdout: PathBuf,
    stderr: PathBuf,
}

/// What a finished pgbench run printed.
#[derive(Debug, Clone)]
struct Output {
    success: bool,
    stdout: String,
    stderr: String,
}

impl Pgbench {
    fn start(target: &PgTarget, args: &[&str], dir: &Path, label: &str) -> Self {
        Self::start_on(None, target, args, dir, label)
    }

    /// `start`, confined to `cpu` when given (`taskset -c`).
    fn start_on(
        cpu: Option<usize>,
        target: &PgTarget,
        args: &[&str],
        dir: &Path,
        label: &str,
    ) -> Self {
        let stdout = dir.join(format!("{label}.stdout"));
        let stderr = dir.join(format!("{label}.stderr"));
        let mut command = match cpu {
            Some(cpu) => {
                let mut c = Command::new("taskset");
                c.args(["-c", &cpu.to_string(), "pgbench"]);
                c
            }
            None => Command::new("pgbench"),
        };
        let child = command
            .args(args)
            .arg(target.conninfo())
            .env("PGPASSWORD", &target.password)
            .stdin(Stdio::null())
            .stdout(std::fs::File::create(&stdout).unwrap())
            .stderr(std::fs::File::create(&stderr).unwrap())
            .spawn()
            .expect("running pgbench");
        Pgbench {
            child: Some(child),
            stdout,
            stderr,
        }
    }

    /// Waits for the run (bounded by its `-T`).
    fn finish(mut self) -> Output {
        let status = self.child.take().expect("running").wait().expect("pgbench");
        Output {
            success: status.success(),
            stdout: std::fs::read_to_string(&self.stdout).unwrap_or_default(),
            stderr: std::fs::read_to_string(&self.stderr).unwrap_or_default(),
        }
    }
}

impl Drop for Pgbench {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Output {
    fn tps(&self) -> f64 {
        field(&self.stdout, "tps =").unwrap_or(0.0)
    }
    fn processed(&self) -> u64 {
        field(&self.stdout, "number of transactions actually processed:").unwrap_or(0)
    }
    fn failed(&self) -> u64 {
        field(&self.stdout, "number of failed transactions:").unwrap_or(0)
    }
    fn aborted(&self) -> usize {
        self.stderr
            .lines()
            .filter(|l| l.contains("aborted"))
            .count()
    }
    /// Errors of any kind: failed transactions, aborted clients, or a failed run.
    fn errors(&self) -> u64 {
        self.failed() + self.aborted() as u64 + u64::from(!self.success && self.aborted() == 0)
    }
    fn first_error(&self) -> Option<String> {
        self.stderr
            .lines()
            .find(|l| l.contains("error") || l.contains("FATAL") || l.contains("aborted"))
            .map(|l| l.split_whitespace().collect::<Vec<_>>().join(" "))
    }
}

/// Per-transaction latencies and schedule lags (µs) from the `-l` files under `dir`.
/// Log line: client_id transaction_no time script_no time_epoch time_us [schedule_lag].
fn read_log(dir: &Path) -> Vec<(u64, u64, f64)> {
    let mut rows = Vec::new();
    for path in pgbench_logs(dir, "pgbench_log") {
        for line in std::fs::read_to_string(&path).unwrap().lines() {
            let f: Vec<&str> = line.split_whitespace().collect();
            let (Some(lat), Some(secs), Some(us)) = (
                f.get(2).and_then(|v| v.parse::<u64>().ok()),
                f.get(4).and_then(|v| v.parse::<u64>().ok()),
                f.get(5).and_then(|v| v.parse::<u64>().ok()),
            ) else {
                continue;
            };
            let lag = f.get(6).and_then(|v| v.parse().ok()).unwrap_or(0);
            rows.push((lat, lag, secs as f64 + us as f64 / 1e6));
        }
    }
    rows
}

fn percentile(sorted: &[u64], q: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    sorted[((sorted.len() - 1) as f64 * q).round() as usize] as f64
}

/// One run of B.
#[derive(Debug, Clone)]
struct BRun {
    out: Output,
    p50: f64,
    p99: f64,
    max: f64,
    lag_p99: f64,
    cpu: Cpu,
}

fn run_b(target: &PgTarget, secs: u64, dir: &Path, label: &str) -> (Output, Vec<u64>, Vec<u64>) {
    let logs = dir.join(label);
    std::fs::create_dir_all(&logs).unwrap();
    let prefix = logs.join("pgbench_log");
    let secs = secs.to_string();
    let run = Pgbench::start_on(
        b_cpu(),
        target,
        &[
            "-n",
            "-S",
            "-R",
            B_RATE,
            "-c",
            "4",
            "-j",
            "2",
            "-T",
            &secs,
            "-l",
            "--log-prefix",
            prefix.to_str().unwrap(),
        ],
        dir,
        label,
    );
    let out = run.finish();
    let rows = read_log(&logs);
    let mut lat: Vec<u64> = rows.iter().map(|r| r.0).collect();
    let mut lag: Vec<u64> = rows.iter().map(|r| r.1).collect();
    lat.sort_unstable();
    lag.sort_unstable();
    (out, lat, lag)
}

fn b_run(out: Output, lat: Vec<u64>, lag: Vec<u64>, cpu: Cpu) -> BRun {
    BRun {
        p50: percentile(&lat, 0.50),
        p99: percentile(&lat, 0.99),
        max: lat.last().map_or(f64::NAN, |&v| v as f64),
        lag_p99: percentile(&lag, 0.99),
        out,
        cpu,
    }
}

// ---------------------------------------------------------------------------------
// The connection storm

#[derive(Debug, Default, Clone)]
struct StormCounts {
    attempts: u64,
    admitted: u64,
    /// 53400 with "connection rate limit exceeded for tenant \"acme\"".
    refused_rate: u64,
    /// Closed during the TLS handshake: shed at the ClientHello in a storm.
    shed: u64,
    other: u64,
    first_other: Option<String>,
    /// Attempts started in each second since the storm started.
    per_second: Vec<u64>,
    /// When the last attempt ended, in seconds since the storm started.
    ended_after: f64,
}

impl StormCounts {
    fn add(&mut self, o: &StormCounts) {
        if self.per_second.len() < o.per_second.len() {
            self.per_second.resize(o.per_second.len(), 0);
        }
        for (total, n) in self.per_second.iter_mut().zip(&o.per_second) {
            *total += n;
        }
        self.ended_after = self.ended_after.max(o.ended_after);
        self.attempts += o.attempts;
        self.admitted += o.admitted;
        self.refused_rate += o.refused_rate;
        self.shed += o.shed;
        self.other += o.other;
        if self.first_other.is_none() {
            self.first_other.clone_from(&o.first_other);
        }
    }
}

/// [`storm_threads`] threads connecting to A in a loop until the deadline, the attempt
/// budget, or the stop flag (set on drop, which then joins them).
struct Storm {
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<StormCounts>>,
    /// When it started (seconds since the epoch).
    started_at: f64,
}

impl Storm {
    fn start(target: &PgTarget, for_how_long: Duration) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let budget = Arc::new(AtomicU64::new(0));
        let (started, started_at) = (Instant::now(), epoch_now());
        let deadline = started + for_how_long;
        let tls = testkit::clients::tls_connector(&target.ca);
        let mut config = testkit::clients::pg_config(target);
        config.connect_timeout(ATTEMPT_TIMEOUT);
        let expected = format!("connection rate limit exceeded for tenant \"{A}\"");
        let n = storm_threads();
        // Each thread's attempts are `gap` apart when the storm is paced.
        let gap = storm_rate().map(|rate| Duration::from_secs_f64(n as f64 / rate));
        let threads = (0..n)
            .map(|_| {
                let (stop, budget) = (stop.clone(), budget.clone());
                let (tls, config, expected) = (tls.clone(), config.clone(), expected.clone());
                std::thread::spawn(move || {
                    let pace = (started, deadline, gap);
                    storm_thread(&stop, &budget, pace, tls, config, &expected)
                })
            })
            .collect();
        Storm {
            stop,
            threads,
            started_at,
        }
    }

    fn finish(mut self) -> StormCounts {
        let mut total = StormCounts::default();
        for t in self.threads.drain(..) {
            total.add(&t.join().expect("storm thread"));
        }
        total
    }
}

impl Drop for Storm {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

fn storm_thread(
    stop: &AtomicBool,
    budget: &AtomicU64,
    (started, deadline, gap): (Instant, Instant, Option<Duration>),
    tls: MakeRustlsConnect,
    config: tokio_postgres::Config,
    expected: &str,
) -> StormCounts {
    if let Some(cpu) = flood_cpu() {
        let mut set = nix::sched::CpuSet::new();
        set.set(cpu).expect("a CPU number");
        nix::sched::sched_setaffinity(nix::unistd::Pid::from_raw(0), &set)
            .expect("confining the storm thread");
    }
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let mut counts = StormCounts::default();
    runtime.block_on(async {
        let mut next = Instant::now();
        while !stop.load(Ordering::Relaxed)
            && Instant::now() < deadline
            && budget.fetch_add(1, Ordering::Relaxed) < STORM_MAX_ATTEMPTS
        {
            if let Some(gap) = gap {
                // A fixed schedule: an attempt that ran late does not make the next early.
                tokio::time::sleep_until(next.into()).await;
                next = (next + gap).max(Instant::now());
            }
            counts.attempts += 1;
            let second = started.elapsed().as_secs() as usize;
            if counts.per_second.len() <= second {
                counts.per_second.resize(second + 1, 0);
            }
            counts.per_second[second] += 1;
            let attempt = tokio::time::timeout(ATTEMPT_TIMEOUT, config.connect(tls.clone())).await;
            let other = match attempt {
                // Admitted: hang up at once (the connection is dropped unpolled).
                Ok(Ok(_client_and_connection)) => {
                    counts.admitted += 1;
                    continue;
                }
                Ok(Err(e)) => match e.as_db_error() {
                    Some(db) if db.code().code() == "53400" && db.message() == expected => {
                        counts.refused_rate += 1;
                        continue;
                    }
                    Some(db) => format!("{} {}", db.code().code(), db.message()),
                    None => {
                        counts.shed += 1;
                        continue;
                    }
                },
                Err(_) => format!("no answer within {ATTEMPT_TIMEOUT:?}"),
            };
            counts.other += 1;
            counts.first_other.get_or_insert(other);
        }
    });
    counts.ended_after = started.elapsed().as_secs_f64();
    counts
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

fn fmt_us(v: f64) -> String {
    if v.is_finite() {
        format!("{v:.0}")
    } else {
        "n/a".into()
    }
}

fn ratio(x: f64, y: f64) -> String {
    if x.is_finite() && y.is_finite() && y > 0.0 {
        format!("{:.2}", x / y)
    } else {
        "n/a".into()
    }
}

fn fmt_errors(r: &BRun) -> String {
    format!(
        "{} / {}{}",
        r.out.failed(),
        r.out.aborted(),
        if r.out.success {
            ""
        } else {
            " (pgbench failed)"
        }
    )
}

/// The first quiet phase with B on the same path as `phase`: its baseline.
fn baseline<'p>(phases: &'p [Phase], phase: &Phase) -> &'p BRun {
    &phases
        .iter()
        .find(|p| p.a.is_none() && p.storm.is_none() && p.direct == phase.direct)
        .expect("a quiet phase first")
        .b
}

fn print_table(phases: &[Phase]) {
    let mut head = String::from("| |");
    let mut rule = String::from("|---|");
    for p in phases {
        head.push_str(&format!(" {} |", p.name));
        rule.push_str("---|");
    }
    println!("{head}");
    println!("{rule}");
    let row = |what: &str, cell: &dyn Fn(&Phase) -> String| {
        let cells: Vec<String> = phases.iter().map(cell).collect();
        println!("| {what} | {} |", cells.join(" | "));
    };
    row("B's path", &|p| {
        if p.direct { "direct" } else { "Sluice" }.into()
    });
    // A B figure; under a flood, with its ratio to the quiet phase on the same path.
    let b_row = |what: &str, f: &dyn Fn(&BRun) -> f64| {
        row(what, &|p| {
            if p.a.is_some() || p.storm.is_some() {
                let quiet = baseline(phases, p);
                format!("{} (×{})", fmt_us(f(&p.b)), ratio(f(&p.b), f(quiet)))
            } else {
                fmt_us(f(&p.b))
            }
        });
    };
    b_row("B p50 latency (µs)", &|r| r.p50);
    b_row("B p99 latency (µs)", &|r| r.p99);
    b_row("B max latency (µs)", &|r| r.max);
    b_row("B p99 schedule lag (µs)", &|r| r.lag_p99);
    row("B transactions", &|p| p.b.out.processed().to_string());
    row("B failed txns / aborted clients", &|p| fmt_errors(&p.b));
    row(
        &format!("A TPS: whole run / steady (query_rate {A_QUERY_RATE})"),
        &|p| {
            p.a.as_ref().map_or("—".into(), |a| {
                format!("{:.0} / {:.0}", a.out.tps(), a.steady_tps)
            })
        },
    );
    row("A failed txns / aborted clients", &|p| {
        p.a.as_ref().map_or("—".into(), |a| {
            format!("{} / {}", a.out.failed(), a.out.aborted())
        })
    });
    row(
        "storm attempts / admitted / refused 53400 / shed / other",
        &|p| {
            p.storm.as_ref().map_or("—".into(), |s| {
                format!(
                    "{} / {} / {} / {} / {}",
                    s.attempts, s.admitted, s.refused_rate, s.shed, s.other
                )
            })
        },
    );
    row("storm attempts/s (active for)", &|p| {
        p.storm.as_ref().map_or("—".into(), |s| {
            format!(
                "{:.0} ({:.1} s)",
                s.attempts as f64 / s.ended_after,
                s.ended_after
            )
        })
    });
    row(
        "Sluice CPU per storm attempt (µs, all of Sluice's CPU)",
        &|p| {
            p.storm.as_ref().map_or("—".into(), |s| {
                format!(
                    "{:.0}",
                    p.b.cpu.sluice_secs * 1e6 / s.attempts.max(1) as f64
                )
            })
        },
    );
    row("Sluice CPU (cores)", &|p| format!("{:.2}", p.b.cpu.sluice));
    row("storm client CPU (cores)", &|p| {
        format!("{:.2}", p.b.cpu.client)
    });
    row("Postgres CPU, both clusters (cores)", &|p| {
        format!("{:.2}", p.b.cpu.postgres)
    });
    row("pgbench CPU (cores)", &|p| {
        format!("{:.2}", p.b.cpu.pgbench)
    });
    row("machine CPU busy (cores)", &|p| {
        format!("{:.2}", p.b.cpu.machine)
    });
    row("softirq time, machine (cores)", &|p| {
        format!("{:.2}", p.b.cpu.softirq)
    });
    row("ksoftirqd threads (cores)", &|p| {
        format!("{:.2}", p.b.cpu.ksoftirqd)
    });
    row("other processes' CPU (cores)", &|p| {
        format!("{:.2}", p.b.cpu.others)
    });
}

/// B's latency second by second during a flood, next to the storm's attempts.
fn print_timeline(phase: &Phase) {
    println!();
    println!(
        "B second by second during \"{}\" (seconds since the flood started; B started at +0.5):",
        phase.name
    );
    println!();
    println!("| second | storm attempts | B txns | B p50 (µs) | B p99 (µs) | B max (µs) |");
    println!("|---|---|---|---|---|---|");
    let last = phase
        .b_timeline
        .iter()
        .map(|t| t.0)
        .fold(0.0, f64::max)
        .ceil() as usize;
    for second in 0..last {
        let mut lat: Vec<u64> = phase
            .b_timeline
            .iter()
            .filter(|t| t.0 >= second as f64 && t.0 < (second + 1) as f64)
            .map(|t| t.1)
            .collect();
        lat.sort_unstable();
        let attempts = phase
            .storm
            .as_ref()
            .map_or(0, |s| s.per_second.get(second).copied().unwrap_or(0));
        println!(
            "| {second} | {attempts} | {} | {} | {} | {} |",
            lat.len(),
            fmt_us(percentile(&lat, 0.5)),
            fmt_us(percentile(&lat, 0.99)),
            lat.last().map_or("n/a".into(), |v| v.to_string())
        );
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
        live_out.failed(),
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
