//! Huge messages as an attack: 8 clients each declare a ~1 GiB Query (the largest
//! length Postgres accepts), send 128 MiB of it as fast as they can and then hold the
//! connection with the message unfinished, while a well-behaved client of another
//! tenant runs `SELECT 1` one after another. Measured, in one run against one Postgres
//! 15 cluster: the bystander's latency quiet and under attack, and the pooler's
//! resident set size (VmRSS) idle, at its peak during the attack and 10 s after the
//! attackers left. Targets: direct Postgres, PgBouncer (transaction mode) and Sluice
//! (transaction mode; then session mode). Client leg TLS everywhere; the poolers reach
//! Postgres over its unix socket. For Sluice the bystander is another tenant (same
//! cluster); direct and through PgBouncer it is just another client.
//!
//! Run with `cargo bench --bench memory_attack`; see benches/README.md.
//!
//! Bounded: each attacker sends a fixed amount, the attack lasts at most
//! `ATTACK_SECONDS`, every read and login has a timeout, and every process started is
//! stopped by pid when its guard drops, also on panic.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::{BufMut, BytesMut};
use testkit::pgbench::percentile;
use testkit::pgbouncer::{
    app_scram_secret, ensure_pgbouncer, let_postgres_reach_socket, PgBouncer, PgBouncerSettings,
};
use testkit::raw::Transport;
use testkit::TenantEntry;
use testkit::{pg_connect, procfs, OneTenant, PgTarget, RawClient, SluiceConfig, SluiceProcess};

mod common;
use common::utc_time_of_day;

const BIN: &str = env!("CARGO_BIN_EXE_sluice");
const ATTACKERS: usize = 8;
/// What each attacker sends of its declared message.
const SENT: usize = 128 << 20;
/// The declared length: Postgres' own limit, about 1 GiB.
const DECLARED: u32 = 0x3fff_fffe;
const ATTACK_SECONDS: u64 = 15;
const QUIET_QUERIES: usize = 2000;

struct Row {
    target: String,
    quiet: (f64, f64),
    attacked: (f64, f64, usize),
    rss: Option<(f64, f64, f64)>,
    sent_mib: f64,
}

fn rss_mib(pid: u32) -> f64 {
    procfs::rss_kib(pid).unwrap_or(0) as f64 / 1024.0
}

/// Latencies (µs) of `SELECT 1`s on one connection, until `n` or `stop`.
async fn select_ones(client: &tokio_postgres::Client, n: usize, stop: &AtomicBool) -> Vec<u64> {
    let mut lat = Vec::new();
    while lat.len() < n && !stop.load(Ordering::Relaxed) {
        let t = Instant::now();
        client
            .simple_query("select 1")
            .await
            .expect("bystander SELECT 1");
        lat.push(t.elapsed().as_micros() as u64);
    }
    lat
}

fn p50_p99(mut lat: Vec<u64>) -> (f64, f64) {
    lat.sort_unstable();
    (
        percentile(&lat, 0.50) / 1000.0,
        percentile(&lat, 0.99) / 1000.0,
    )
}

/// Logs in, declares the huge Query, sends `SENT` bytes of it, then holds until `stop`.
async fn attacker(target: PgTarget, sent: Arc<AtomicU64>, stop: Arc<AtomicBool>) {
    let Ok(mut client) = RawClient::login(&target, Transport::Tls).await else {
        return;
    };
    let mut head = BytesMut::new();
    head.put_u8(b'Q');
    head.put_u32(DECLARED);
    head.extend_from_slice(b"select length('");
    if client.send(&head).await.is_err() {
        return;
    }
    let chunk = vec![b'x'; 256 * 1024];
    let mut mine = 0;
    // SLUICE_BENCH_ATTACK_MIBS: the attackers' total rate in MiB/s (default: as fast
    // as they can).
    let per_second = std::env::var("SLUICE_BENCH_ATTACK_MIBS")
        .ok()
        .and_then(|v| v.parse::<f64>().ok())
        .map(|total| total * 1048576.0 / ATTACKERS as f64);
    let began = Instant::now();
    while mine < SENT && !stop.load(Ordering::Relaxed) {
        if client.send(&chunk).await.is_err() {
            return;
        }
        mine += chunk.len();
        sent.fetch_add(chunk.len() as u64, Ordering::Relaxed);
        if let Some(rate) = per_second {
            let due = began + Duration::from_secs_f64(mine as f64 / rate);
            tokio::time::sleep_until(due.into()).await;
        }
    }
    while !stop.load(Ordering::Relaxed) {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The bystander's `SELECT 1`s, quiet and then under attack, on a thread and runtime of
/// its own: the attackers' TLS runs on the bench's main runtime, and the bystander
/// must measure the pooler, not wait behind the load generator's own tasks.
struct Bystander {
    quiet: std::sync::mpsc::Receiver<Vec<u64>>,
    thread: std::thread::JoinHandle<Vec<u64>>,
}

impl Bystander {
    fn start(target: PgTarget, attacking: Arc<AtomicBool>, stop: Arc<AtomicBool>) -> Self {
        let (tx, quiet) = std::sync::mpsc::channel();
        let thread = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("bystander runtime");
            runtime.block_on(async {
                let client = pg_connect(&target).await.expect("bystander connects");
                let never = AtomicBool::new(false);
                let _ = tx.send(select_ones(&client, QUIET_QUERIES, &never).await);
                while !attacking.load(Ordering::Relaxed) {
                    tokio::time::sleep(Duration::from_millis(1)).await;
                }
                select_ones(&client, usize::MAX, &stop).await
            })
        });
        Bystander { quiet, thread }
    }
}

async fn measure(name: &str, attacked: &PgTarget, bystander: &PgTarget, pid: Option<u32>) -> Row {
    println!("memory_attack: {name} ...");
    let attacking = Arc::new(AtomicBool::new(false));
    let stop = Arc::new(AtomicBool::new(false));
    let by = Bystander::start(bystander.clone(), attacking.clone(), stop.clone());
    let quiet =
        p50_p99(tokio::task::block_in_place(|| by.quiet.recv()).expect("bystander's quiet run"));
    let idle = pid.map(rss_mib);
    let sent = Arc::new(AtomicU64::new(0));
    let peak = Arc::new(AtomicU64::new(0));
    let sampler = pid.map(|pid| {
        let (peak, stop) = (peak.clone(), stop.clone());
        std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                peak.fetch_max(procfs::rss_kib(pid).unwrap_or(0), Ordering::Relaxed);
                std::thread::sleep(Duration::from_millis(20));
            }
        })
    });
    let attackers: Vec<_> = (0..ATTACKERS)
        .map(|_| tokio::spawn(attacker(attacked.clone(), sent.clone(), stop.clone())))
        .collect();
    attacking.store(true, Ordering::Relaxed);
    let started = Instant::now();
    while started.elapsed() < Duration::from_secs(ATTACK_SECONDS) {
        tokio::time::sleep(Duration::from_millis(50)).await;
        if sent.load(Ordering::Relaxed) >= (ATTACKERS * SENT) as u64
            && started.elapsed() > Duration::from_secs(5)
        {
            break;
        }
    }
    stop.store(true, Ordering::Relaxed);
    for a in attackers {
        let _ = a.await;
    }
    if let Some(s) = sampler {
        let _ = s.join();
    }
    let lat = tokio::task::block_in_place(|| by.thread.join()).expect("bystander thread");
    let n = lat.len();
    let (p50, p99) = p50_p99(lat);
    let rss = pid.zip(idle).map(|(pid, idle)| {
        tokio::task::block_in_place(|| std::thread::sleep(Duration::from_secs(10)));
        (
            idle,
            peak.load(Ordering::Relaxed) as f64 / 1024.0,
            rss_mib(pid),
        )
    });
    Row {
        target: name.to_owned(),
        quiet,
        attacked: (p50, p99, n),
        rss,
        sent_mib: sent.load(Ordering::Relaxed) as f64 / 1048576.0,
    }
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let OneTenant { dir, pki, cluster } = OneTenant::start("sluice-bench-memory-").unwrap();
    let started = utc_time_of_day();
    let mut direct = PgTarget::tenant(
        SocketAddr::from(([127, 0, 0, 1], cluster.tcp_port.unwrap())),
        "acme",
        &cluster.app_password,
        &pki.ca_cert,
    );
    direct.sni_host = Some("localhost".into());
    direct.sslmode = "require";
    let mut rows = vec![measure("direct", &direct, &direct, None).await];

    match ensure_pgbouncer("memory_attack") {
        Ok(version) => {
            let_postgres_reach_socket(dir.path(), &cluster);
            let settings = PgBouncerSettings {
                pool_mode: "transaction",
                default_pool_size: 10,
                max_client_conn: 200,
                client_tls_sslmode: "require",
                log_connections: false,
                version,
            };
            let bouncer = PgBouncer::start(
                &cluster,
                &pki,
                &app_scram_secret(&cluster),
                &settings,
                dir.path().join("pgbouncer.log"),
            );
            let mut t = direct.clone();
            t.addr = SocketAddr::from(([127, 0, 0, 1], bouncer.port));
            rows.push(measure("PgBouncer (transaction)", &t, &t, Some(bouncer.pid)).await);
        }
        Err(why) => println!("memory_attack: SKIP PgBouncer: {why}"),
    }

    // The attacking tenant without a byte rate, then with one
    // (SLUICE_BENCH_BYTE_RATE bytes/s each way, default 32 MiB/s).
    let byte_rate: u64 = std::env::var("SLUICE_BENCH_BYTE_RATE")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(32 << 20);
    for (mode, rate) in [
        ("transaction", 0),
        ("session", 0),
        ("transaction", byte_rate),
        ("session", byte_rate),
    ] {
        let mut config = SluiceConfig::new(&pki);
        config.log = "warn".into();
        let mut acme = TenantEntry::over_unix_socket(&cluster, &pki);
        if rate > 0 {
            acme.limits = vec![
                format!("client_bytes_rate = {rate}"),
                format!("server_bytes_rate = {rate}"),
            ];
        }
        let globex = TenantEntry {
            id: "globex".into(),
            limits: Vec::new(),
            ..acme.clone()
        };
        config.tenants = vec![acme, globex];
        config.default_pool = vec![format!("mode = \"{mode}\""), "size = 10".into()];
        config.default_limits = vec!["connect_rate = 0".into()];
        let sluice = SluiceProcess::start(
            BIN.as_ref(),
            &dir.path().join(format!("sluice-{mode}-{rate}")),
            &config,
        )
        .unwrap();
        let mut attacked =
            PgTarget::tenant(sluice.addr, "acme", &cluster.app_password, &pki.ca_cert);
        attacked.sslmode = "require";
        let mut bystander = attacked.clone();
        bystander.sni_host = Some(format!("globex.{}", testkit::SNI_SUFFIX));
        rows.push(
            measure(
                &if rate > 0 {
                    format!("Sluice ({mode}, byte rate {} MiB/s)", rate >> 20)
                } else {
                    format!("Sluice ({mode})")
                },
                &attacked,
                &bystander,
                Some(sluice.pid()),
            )
            .await,
        );
    }

    println!();
    println!(
        "memory_attack (started {started} UTC): {ATTACKERS} clients each declare a ~1 GiB Query, send {} MiB of it and hold; a bystander runs SELECT 1",
        SENT >> 20
    );
    println!("| target | bystander quiet p50 / p99 (ms) | under attack p50 / p99 (ms), queries | pooler RSS idle / peak / 10 s after (MiB) | attack sent (MiB) |");
    println!("|---|---|---|---|---|");
    for r in &rows {
        let rss = r.rss.map_or("n/a".to_owned(), |(i, p, a)| {
            format!("{i:.1} / {p:.1} / {a:.1}")
        });
        println!(
            "| {} | {:.3} / {:.3} | {:.3} / {:.3}, {} | {rss} | {:.0} |",
            r.target, r.quiet.0, r.quiet.1, r.attacked.0, r.attacked.1, r.attacked.2, r.sent_mib
        );
    }
}
