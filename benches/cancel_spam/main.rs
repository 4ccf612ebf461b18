//! Cancel spam (issue 17): does a client that sends 10,000 CancelRequests a second at its
//! pool hurt the pool's other clients? Sluice against PgBouncer, in one run on one machine.
//!
//! One Postgres 15 cluster; in front of it one `sluice serve` and one PgBouncer, both in
//! transaction mode with 5 server connections, reaching Postgres over its unix socket
//! (Sluice with its default cancel rates: 5 per second and key, 100 per second and
//! address, buckets of twice that). The other clients: `pgbench -n -M simple -f
//! select1.sql -c 8 -j 2 -T $SLUICE_BENCH_SECONDS` (`SELECT 1` transactions, client TLS,
//! `sslmode=require`). Runs, each against Sluice then PgBouncer:
//!
//! 1. quiet: pgbench alone;
//! 2. owner only (the control for 3): a client of the same pool runs
//!    `select pg_sleep(0.01)` in a loop, holding one of the 5 server connections about
//!    half the time;
//! 3. own key: the same client, and `$SLUICE_BENCH_CANCEL_RATE` (default 10,000)
//!    CancelRequests a second carrying its key, each on its own plaintext connection;
//! 4. forged keys: the same rate with a random key each;
//! 5. sink (Sluice only, the control for 4): the same forged spam aimed at a listener
//!    in this process that only accepts, reads 16 bytes and closes, while pgbench runs
//!    against Sluice: what the attack traffic itself costs this machine;
//! 6. quiet again, to see drift.
//!
//! The spam starts a second before pgbench and stops after it. Per run: TPS, its ratio
//! to the mean of the same pooler's two quiet runs and to its control, failed
//! transactions and aborted clients, the pooler's CPU per transaction, the cancels per
//! second the target took (and errors), how many of the owner's sleeps were cancelled,
//! the server sessions Postgres started (`pg_stat_database.sessions`: pool churn; cancel
//! connections are not sessions), for Sluice its `sluice_cancel_requests_total` by
//! outcome, and the CPU of each process group (cpu.rs).
//!
//! Run with `cargo bench --bench cancel_spam`; see benches/README.md (PgBouncer must be
//! installed, or installable with apt-get; without it its column is skipped).
//!
//! Every loop here is bounded by pgbench's `-T` or the spam's stop; everything started is
//! stopped by pid on exit, also on panic (Drop guards).

use std::collections::BTreeMap;
use std::net::SocketAddr;

use testkit::http::get;
use testkit::pgbench::{run_pgbench, PgbenchRun};
use testkit::pgbouncer::{
    app_scram_secret, ensure_pgbouncer, let_postgres_reach_socket, PgBouncer, PgBouncerSettings,
};
use testkit::procfs::clock_ticks_per_second;
use testkit::{OneTenant, PgTarget, SluiceConfig, SluiceProcess, TenantEntry, TestCluster};

#[path = "../common/mod.rs"]
mod common;
mod cpu;
mod spam;

use common::{ratio, seconds, utc_time_of_day};
use cpu::{Cores, Reading, OTHERS_WARN};
use spam::{Sink, Spam, SpamStats};

const BIN: &str = env!("CARGO_BIN_EXE_sluice");
const POOL_SIZE: u32 = 5;
const CLIENTS: &str = "8";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    Quiet,
    /// The control for `OwnKey`: its owner's sleeps in the pool, no cancels.
    Owner,
    OwnKey,
    Forged,
    /// The control: forged keys at a sink that only accepts, reads and closes.
    Sink,
    QuietAgain,
}

impl Phase {
    fn name(self) -> &'static str {
        match self {
            Phase::Quiet => "quiet",
            Phase::Owner => "owner only",
            Phase::OwnKey => "own key",
            Phase::Forged => "forged keys",
            Phase::Sink => "sink",
            Phase::QuietAgain => "quiet again",
        }
    }
}

/// A pooler under test.
struct Pooler {
    name: &'static str,
    pid: u32,
    /// pgbench's target (`sslmode=require`).
    bench: PgTarget,
    /// The spam owner's (verify-full TLS, as the raw client does).
    owner: PgTarget,
}

/// One measured run.
struct Run {
    phase: Phase,
    pooler: &'static str,
    bench: PgbenchRun,
    cpu: Cores,
    spam: Option<SpamStats>,
    sessions: i64,
    /// Sluice's cancel outcomes during the run.
    outcomes: BTreeMap<String, u64>,
}

fn cancel_rate() -> u64 {
    std::env::var("SLUICE_BENCH_CANCEL_RATE")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(10_000)
}

/// Server sessions Postgres has started, all databases, as far as its backends have
/// reported them (the reading session itself is not in its own answer).
fn sessions(cluster: &TestCluster) -> i64 {
    let out = cluster.psql_direct("SELECT sum(sessions) FROM pg_stat_database");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .last()
        .and_then(|l| l.trim().parse().ok())
        .unwrap_or(-1)
}

/// Sluice's `sluice_cancel_requests_total` by outcome (all tenants).
fn outcomes(sluice: &SluiceProcess) -> BTreeMap<String, u64> {
    let body = get(sluice.admin_addr, "/metrics", None).body;
    let mut found = BTreeMap::new();
    for line in body.lines() {
        let Some(rest) = line.strip_prefix("sluice_cancel_requests_total{") else {
            continue;
        };
        let Some((labels, value)) = rest.split_once("} ") else {
            continue;
        };
        let outcome = labels
            .split(',')
            .find_map(|kv| kv.strip_prefix("outcome="))
            .unwrap_or("?")
            .trim_matches('"')
            .to_owned();
        *found.entry(outcome).or_default() += value.trim().parse::<f64>().unwrap_or(0.0) as u64;
    }
    found
}

fn delta(after: &BTreeMap<String, u64>, before: &BTreeMap<String, u64>) -> BTreeMap<String, u64> {
    after
        .iter()
        .map(|(k, v)| (k.clone(), v - before.get(k).copied().unwrap_or(0)))
        .filter(|(_, v)| *v > 0)
        .collect()
}

fn main() {
    // `cargo bench` passes `--bench`; nothing else to parse.
    let hz = clock_ticks_per_second();
    let secs = seconds();
    let rate = cancel_rate();
    let OneTenant { dir, pki, cluster } = OneTenant::start("sluice-bench-cancel-spam-").unwrap();
    let script = dir.path().join("select1.sql");
    std::fs::write(&script, "SELECT 1;\n").unwrap();
    let script = script.display().to_string();

    let mut config = SluiceConfig::new(&pki);
    config.log = "info".into();
    config.tenants = vec![TenantEntry::over_unix_socket(&cluster, &pki)];
    config.default_pool = vec![
        "mode = \"transaction\"".into(),
        format!("size = {POOL_SIZE}"),
    ];
    let sluice = SluiceProcess::start(BIN.as_ref(), &dir.path().join("sluice"), &config).unwrap();

    let owner = PgTarget::tenant(sluice.addr, "acme", &cluster.app_password, &pki.ca_cert);
    let mut bench = owner.clone();
    bench.sslmode = "require";
    let mut poolers = vec![Pooler {
        name: "Sluice",
        pid: sluice.pid(),
        bench: bench.clone(),
        owner: owner.clone(),
    }];
    let pgbouncer = match ensure_pgbouncer("cancel_spam") {
        Ok(version) => {
            let_postgres_reach_socket(dir.path(), &cluster);
            let secret = app_scram_secret(&cluster);
            println!("cancel_spam: PgBouncer {}.{}", version.0, version.1);
            let settings = PgBouncerSettings {
                pool_mode: "transaction",
                default_pool_size: POOL_SIZE,
                max_client_conn: 500,
                client_tls_sslmode: "require",
                log_connections: false,
                version,
            };
            let bouncer = PgBouncer::start(
                &cluster,
                &pki,
                &secret,
                &settings,
                dir.path().join("pgbouncer.log"),
            );
            let port = bouncer.port;
            let at = |t: &PgTarget| {
                let mut t = t.clone();
                t.addr = SocketAddr::from(([127, 0, 0, 1], port));
                t
            };
            poolers.push(Pooler {
                name: "PgBouncer",
                pid: bouncer.pid,
                bench: at(&bench),
                owner: at(&owner),
            });
            Some(bouncer)
        }
        Err(why) => {
            println!("cancel_spam: SKIP PgBouncer column: {why}");
            None
        }
    };

    // Warm-up, unrecorded: both pools open their server connections.
    for p in &poolers {
        let args = [
            "-n", "-M", "simple", "-f", &script, "-c", CLIENTS, "-j", "2", "-T", "2",
        ];
        run_pgbench(&p.bench, &args, None, hz);
    }

    let postmaster = cluster.cluster.pid().expect("postmaster running");
    let sink = Sink::start();
    let mut runs: Vec<Run> = Vec::new();
    let phases = [
        Phase::Quiet,
        Phase::Owner,
        Phase::OwnKey,
        Phase::Forged,
        Phase::Sink,
        Phase::QuietAgain,
    ];
    for phase in phases {
        for p in &poolers {
            if phase == Phase::Sink && p.name != "Sluice" {
                continue;
            }
            let started = utc_time_of_day();
            let spam = match phase {
                Phase::Owner => Some(Spam::start(p.bench.addr, Some(p.owner.clone()), 0)),
                Phase::OwnKey => Some(Spam::start(p.bench.addr, Some(p.owner.clone()), rate)),
                Phase::Forged => Some(Spam::start(p.bench.addr, None, rate)),
                Phase::Sink => Some(Spam::start(sink.addr, None, rate)),
                Phase::Quiet | Phase::QuietAgain => None,
            };
            if spam.is_some() {
                std::thread::sleep(std::time::Duration::from_secs(1));
            }
            let sessions_before = sessions(&cluster);
            let outcomes_before = outcomes(&sluice);
            let before = Reading::now(p.pid, postmaster);
            let args = [
                "-n", "-M", "simple", "-f", &script, "-c", CLIENTS, "-j", "2", "-T", &secs,
            ];
            let run = run_pgbench(&p.bench, &args, Some(p.pid), hz);
            let cpu = before.until(&Reading::now(p.pid, postmaster), hz);
            let spam = spam.map(Spam::stop);
            let sessions = sessions(&cluster) - sessions_before - 1;
            let outcomes = if p.name == "Sluice" {
                delta(&outcomes(&sluice), &outcomes_before)
            } else {
                BTreeMap::new()
            };
            println!(
                "cancel_spam: {started} UTC {:11} {:9}: {:.0} TPS, {} failed, {} aborted{}; {}; {} sessions started; {:?}; cores: pooler {:.2}, spam {:.2}, pgbench {:.2}, postgres {:.2}, softirq {:.2}, machine {:.2}, others {:.2}",
                phase.name(),
                p.name,
                run.tps,
                run.failed,
                run.aborted_clients,
                run.first_error
                    .as_ref()
                    .map(|e| format!(" (first: {e})"))
                    .unwrap_or_default(),
                spam.as_ref().map_or("no spam".into(), |s| format!(
                    "{} cancels closed in order and {} reset ({:.0}/s), {} errors{}, owner {} sleeps, {} cancelled",
                    s.sent,
                    s.reset,
                    s.rate(),
                    s.errors,
                    s.first_error
                        .as_ref()
                        .map(|e| format!(" (first: {e})"))
                        .unwrap_or_default(),
                    s.owner_queries + s.owner_cancelled,
                    s.owner_cancelled
                )),
                sessions,
                outcomes,
                cpu.pooler,
                cpu.spam,
                cpu.pgbench,
                cpu.postgres,
                cpu.softirq,
                cpu.machine,
                cpu.others,
            );
            runs.push(Run {
                phase,
                pooler: p.name,
                bench: run,
                cpu,
                spam,
                sessions,
                outcomes,
            });
        }
    }
    drop(sink);

    println!();
    println!(
        "pgbench -n -M simple -f select1.sql (SELECT 1) -c {CLIENTS} -j 2 -T {secs}, client TLS; \
         poolers in transaction mode with {POOL_SIZE} server connections; spam {rate} cancels/s \
         requested, plaintext, one connection each"
    );
    println!();
    println!("| phase | pooler | TPS | / quiet | / control | failed | aborted | pooler µs/txn | cancels/s taken | of them reset | spam errors | owner sleeps cancelled | sessions started | Sluice outcomes | cores: pooler | spam | pgbench | postgres | softirq | machine | others |");
    println!(
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"
    );
    for r in &runs {
        let tps_of = |phase| {
            runs.iter()
                .find(|q| q.phase == phase && q.pooler == r.pooler)
                .map_or(f64::NAN, |q| q.bench.tps)
        };
        // Both quiet runs, so drift over the bench hits every ratio alike.
        let quiet = (tps_of(Phase::Quiet) + tps_of(Phase::QuietAgain)) / 2.0;
        let control = match r.phase {
            Phase::OwnKey => tps_of(Phase::Owner),
            _ => quiet,
        };
        let flags = match (r.bench.usable(), r.cpu.others > OTHERS_WARN) {
            (true, false) => "",
            (false, false) => " *",
            (true, true) => " †",
            (false, true) => " *†",
        };
        let c = &r.cpu;
        println!(
            "| {} | {} | {:.0}{flags} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {:.2} | {:.2} | {:.2} | {:.2} | {:.2} | {:.2} | {:.2} |",
            r.phase.name(),
            if r.phase == Phase::Sink { "Sluice (spam at a sink)" } else { r.pooler },
            r.bench.tps,
            ratio(r.bench.tps, quiet),
            ratio(r.bench.tps, control),
            r.bench.failed,
            r.bench.aborted_clients,
            r.bench
                .cpu_us_per_txn
                .map_or("—".into(), |c| format!("{c:.1}")),
            r.spam.as_ref().map_or("—".into(), |s| format!("{:.0}", s.rate())),
            r.spam.as_ref().map_or("—".into(), |s| format!(
                "{:.0} %",
                100.0 * s.reset as f64 / (s.sent + s.reset).max(1) as f64
            )),
            r.spam.as_ref().map_or("—".into(), |s| s.errors.to_string()),
            r.spam
                .as_ref()
                .filter(|s| s.owner_queries + s.owner_cancelled > 0)
                .map_or("—".into(), |s| format!(
                    "{} of {}",
                    s.owner_cancelled,
                    s.owner_queries + s.owner_cancelled
                )),
            r.sessions,
            if r.outcomes.is_empty() {
                "—".to_owned()
            } else {
                r.outcomes
                    .iter()
                    .map(|(k, v)| format!("{k} {v}"))
                    .collect::<Vec<_>>()
                    .join(", ")
            },
            c.pooler,
            c.spam,
            c.pgbench,
            c.postgres,
            c.softirq,
            c.machine,
            c.others,
        );
    }
    println!(
        "(* a client aborted; † other processes used more than {OTHERS_WARN} cores: disturbed; \
         / quiet: TPS over the mean of the same pooler's two quiet runs; / control: over \
         its owner-only run for own key, else as / quiet; sink: the same spam at a \
         listener in this process that only accepts, reads 16 bytes and closes)"
    );

    drop(sluice);
    drop(pgbouncer);
    drop(cluster);
}
