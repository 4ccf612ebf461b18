//! Memory per idle client: one `sluice serve` in transaction mode in front of one
//! Postgres 15 cluster; `$SLUICE_BENCH_IDLE_CLIENTS` clients (default 10,000) log in
//! (SCRAM), run `SELECT 1` once and then sit idle; Sluice's resident set size (VmRSS)
//! is read before the first and after the last, and the difference divided by the
//! number of clients. Once with the client leg in TLS (SNI), once in plaintext
//! (`options=tenant=acme`), each on a fresh Sluice.
//!
//! Run with `cargo bench --bench idle_memory`; see benches/README.md.
//!
//! Bounded: the clients are opened 64 at a time with a 30 s timeout each (no new ones
//! after 10 minutes), held for 2 s, then dropped; every process is stopped when its guard drops, also on panic.

use std::time::Duration;

use testkit::{OneTenant, PgTarget, SluiceConfig, SluiceProcess, TenantEntry};

use testkit::idle::hold_idle_clients;

const BIN: &str = env!("CARGO_BIN_EXE_sluice");
/// At most this long opening clients (each login has its own 30 s timeout).
const OPEN_BUDGET: Duration = Duration::from_secs(600);

fn clients() -> usize {
    std::env::var("SLUICE_BENCH_IDLE_CLIENTS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(10_000)
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
        let m = hold_idle_clients(&target, n, sluice.pid(), OPEN_BUDGET)
            .await
            .unwrap_or_else(|e| panic!("idle_memory: {e}"));
        if m.failed > 0 {
            println!(
                "idle_memory: {} {label} clients failed (first: {})",
                m.failed,
                m.first_error.as_deref().unwrap_or("")
            );
        }
        rows.push((label, m));
    }
    println!();
    println!("Sluice RSS with {n} idle clients (transaction mode, each logged in with SCRAM and ran SELECT 1 once)");
    println!("| client leg | RSS before (MiB) | RSS with clients (MiB) | per client (KiB) | opened in (s) |");
    println!("|---|---|---|---|---|");
    for (label, m) in &rows {
        let per = m.per_client_kib();
        println!(
            "| {label} | {:.1} | {:.1} | {per:.1} | {:.1} |",
            m.before_kib as f64 / 1024.0,
            m.after_kib as f64 / 1024.0,
            m.took.as_secs_f64()
        );
    }
}
