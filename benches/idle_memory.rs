//! Memory per idle client: one `sluice serve` in transaction mode in front of one
//! Postgres 15 cluster; `$SLUICE_BENCH_IDLE_CLIENTS` clients (default 10,000) log in
//! (SCRAM), run `SELECT 1` once and then sit idle; Sluice's resident set size (VmRSS)
//! is read before the first and after the last, and the difference divided by the
//! number of clients. Once with the client leg in TLS (SNI), once in plaintext
//! (`options=tenant=acme`), each on a fresh Sluice.
//!
//! Run with `cargo bench --bench idle_memory`; see benches/README.md.
//!
//! Bounded: the clients are opened 64 at a time with a 30 s timeout each, held for 2 s,
//! then dropped; every process is stopped when its guard drops, also on panic.

use std::time::{Duration, Instant};

use testkit::{OneTenant, PgTarget, SluiceConfig, SluiceProcess, TenantEntry};

const BIN: &str = env!("CARGO_BIN_EXE_sluice");
const AT_ONCE: usize = 64;

fn clients() -> usize {
    std::env::var("SLUICE_BENCH_IDLE_CLIENTS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(10_000)
}

/// VmRSS of `pid`, in KiB.
fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("proc status");
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmRSS")
}

struct Measured {
    before_kib: u64,
    after_kib: u64,
    clients: usize,
    took: Duration,
}

async fn hold(target: &PgTarget, tls: bool, n: usize, pid: u32) -> Measured {
    let config = {
        let mut c = testkit::clients::pg_config(target);
        c.connect_timeout(Duration::from_secs(30));
        if !tls {
            c.ssl_mode(tokio_postgres::config::SslMode::Disable);
        }
        c
    };
    let connector = testkit::clients::tls_connector(&target.ca);
    // One client first: pools, caches and the runtime's threads are warm.
    let (first, conn) = config
        .connect(connector.clone())
        .await
        .expect("first client");
    let first_task = tokio::spawn(conn);
    first.simple_query("SELECT 1").await.unwrap();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let before_kib = rss_kib(pid);
    let started = Instant::now();
    let mut held = Vec::with_capacity(n);
    let mut tasks = Vec::with_capacity(n);
    for chunk_start in (0..n).step_by(AT_ONCE) {
        let size = AT_ONCE.min(n - chunk_start);
        let opened = futures_util::future::join_all((0..size).map(|_| {
            let (config, connector) = (config.clone(), connector.clone());
            async move {
                let (client, conn) = config.connect(connector).await.expect("client login");
                let task = tokio::spawn(conn);
                client.simple_query("SELECT 1").await.expect("first query");
                (client, task)
            }
        }))
        .await;
        for (client, task) in opened {
            held.push(client);
            tasks.push(task);
        }
    }
    let took = started.elapsed();
    tokio::time::sleep(Duration::from_secs(2)).await;
    let after_kib = rss_kib(pid);
    drop(held);
    for t in tasks {
        let _ = t.await;
    }
    drop(first);
    let _ = first_task.await;
    Measured {
        before_kib,
        after_kib,
        clients: n,
        took,
    }
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let n = clients();
    let OneTenant { dir, pki, cluster } = OneTenant::start("sluice-bench-idle-").unwrap();
    let mut rows = Vec::new();
    for tls in [true, false] {
        let mut config = SluiceConfig::new(&pki);
        config.log = "warn".into();
        config.require_tls = tls;
        config.tenants = vec![TenantEntry::over_unix_socket(&cluster, &pki)];
        config.default_pool = vec!["mode = \"transaction\"".into(), "size = 5".into()];
        config.default_limits = vec![
            "connect_rate = 0".into(),
            "max_client_connections = 0".into(),
        ];
        let label = if tls { "tls" } else { "plain" };
        let sluice = SluiceProcess::start(
            BIN.as_ref(),
            &dir.path().join(format!("sluice-{label}")),
            &config,
        )
        .unwrap();
        let mut target = PgTarget::tenant(sluice.addr, "acme", &cluster.app_password, &pki.ca_cert);
        if !tls {
            target.sni_host = None;
            target.options = Some("tenant=acme".into());
            target.sslmode = "disable";
        }
        println!("idle_memory: {n} idle {label} clients ...");
        let m = hold(&target, tls, n, sluice.pid()).await;
        rows.push((label, m));
    }
    println!();
    println!("Sluice RSS with {n} idle clients (transaction mode, each logged in with SCRAM and ran SELECT 1 once)");
    println!("| client leg | RSS before (MiB) | RSS with clients (MiB) | per client (KiB) | opened in (s) |");
    println!("|---|---|---|---|---|");
    for (label, m) in &rows {
        let per = (m.after_kib.saturating_sub(m.before_kib)) as f64 / m.clients as f64;
        println!(
            "| {label} | {:.1} | {:.1} | {per:.1} | {:.1} |",
            m.before_kib as f64 / 1024.0,
            m.after_kib as f64 / 1024.0,
            m.took.as_secs_f64()
        );
    }
}
