//! What clients that never log in cost Sluice and the other tenants, next to PgBouncer
//! (and direct Postgres where that means something), in one run on one machine:
//!
//! - `partial`: `$SLUICE_PRELOGIN_PARTIAL` clients (default 1,000) each send the first 20
//!   bytes of a TLS ClientHello and close (half of them direct TLS, half after an
//!   SSLRequest; PgBouncer 1.18 has no direct TLS, so all of its after an SSLRequest).
//!   Figures: the pooler's CPU time (utime+stime from /proc/PID/stat) in the 3 s after the
//!   last one closed, and its sockets in CLOSE_WAIT 1 s after.
//! - `logins`: `$SLUICE_PRELOGIN_LOGINS` logins (default 200; tokio-postgres, TLS +
//!   SCRAM, each timed from connect to ReadyForQuery) of tenant `acme`'s client to each
//!   of three targets in turn: direct to Postgres, a pooler, and an identical twin of
//!   that pooler against which `$SLUICE_PRELOGIN_HELD` pre-login sockets (default
//!   10,000) are held from 127.0.0.10, .11, ... (500 per address): a quarter silent, a
//!   quarter after an answered SSLRequest, a quarter 20 bytes into a ClientHello naming
//!   the other tenant `noisy`, a quarter 6 bytes into a startup packet. One phase with
//!   two Sluices, one with two PgBouncers. Taking the logins in turn makes whatever
//!   else the machine does hit the quiet and the crowded pooler alike. p50 and p99, and
//!   the crowded pooler's RSS with the crowd, per socket.
//!
//! `SLUICE_PRELOGIN_ONLY=partial` or `=logins` runs one section; `SLUICE_BENCH_BIN`
//! measures another `sluice` binary (an older build, say) instead of this one (the
//! partial section runs with the default config keys only, so any build can).
//!
//! Run with `cargo bench --bench prelogin_flood`; see benches/README.md. Every loop is
//! bounded in count and time; everything started runs in temporary directories on
//! OS-assigned or free ports and is stopped by pid on exit and on panic (Drop guards).

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use testkit::pgbench::percentile;
use testkit::pgbouncer::{
    app_scram_secret, ensure_pgbouncer, let_postgres_reach_socket, PgBouncer, PgBouncerSettings,
};
use testkit::procfs::{self, clock_ticks_per_second, cpu_ticks, ensure_open_files, rss_kib};
use testkit::{OneTenant, PgTarget, SluiceConfig, SluiceProcess, TenantEntry};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};

mod common;
use common::{ratio, utc_time_of_day};

/// Longest one login may take before the row is reported failed.
const LOGIN_TIMEOUT: Duration = Duration::from_secs(30);
/// Longest the logins of one row may take altogether.
const LOGINS_BUDGET: Duration = Duration::from_secs(300);
/// Clients of the partial section in flight at once.
const PARTIAL_AT_ONCE: usize = 100;
/// Held sockets per source address.
const PER_ADDRESS: usize = 500;

fn knob(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn wants(section: &str) -> bool {
    std::env::var("SLUICE_PRELOGIN_ONLY").map_or(true, |only| only.split(',').any(|s| s == section))
}

fn sluice_bin() -> PathBuf {
    std::env::var_os("SLUICE_BENCH_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_BIN_EXE_sluice")))
}

/// Everything the sections share: the cluster, PgBouncer's setup, what clients send.
struct Bench {
    one: OneTenant,
    /// PgBouncer's version and the verifier for its auth_file, or why it is skipped.
    bouncer: Result<((u32, u32), String), String>,
    hello: Vec<u8>,
    hz: f64,
    held: usize,
}

/// A pooler under test; dropping it stops the process.
struct Pooler {
    name: &'static str,
    pid: u32,
    addr: SocketAddr,
    _process: Box<dyn std::any::Any>,
}

impl Bench {
    /// A Sluice with the tenants `acme` and `noisy`; for the logins section (`held`),
    /// set up to hold the crowd (keys an older build may not know: the partial
    /// section runs without them).
    fn sluice(&self, label: &str, held: bool) -> Pooler {
        let mut config = SluiceConfig::new(&self.one.pki);
        config.log = "warn".into();
        let acme = TenantEntry::over_unix_socket(&self.one.cluster, &self.one.pki);
        let noisy = TenantEntry {
            id: "noisy".into(),
            ..acme.clone()
        };
        config.tenants = vec![acme, noisy];
        config.default_pool = vec!["mode = \"transaction\"".into(), "size = 20".into()];
        config.default_limits = vec![
            "connect_rate = 0".into(),
            "max_client_connections = 0".into(),
        ];
        if held {
            // The held sockets stay for the whole section (the login timeout would
            // close them after 15 s), and the process cap is above them (its default,
            // 10,000, would refuse the measured client while 10,000 are held).
            config.login_timeout_ms = 600_000;
            config.proxy_extra = vec![format!("max_pending_logins = {}", self.held + 1000)];
        }
        let dir = self.one.dir.path().join(format!("sluice-{label}"));
        let sluice = SluiceProcess::start(&sluice_bin(), &dir, &config).expect("sluice");
        Pooler {
            name: "Sluice",
            pid: sluice.pid(),
            addr: sluice.addr,
            _process: Box::new(sluice),
        }
    }

    fn bouncer(&self, label: &str) -> Option<Pooler> {
        let (version, secret) = self.bouncer.as_ref().ok()?;
        let settings = PgBouncerSettings {
            pool_mode: "transaction",
            default_pool_size: 20,
            max_client_conn: u32::try_from(self.held + 1000).unwrap_or(u32::MAX),
            client_tls_sslmode: "require",
            log_connections: false,
            version: *version,
        };
        let log = self.one.dir.path().join(format!("pgbouncer-{label}.log"));
        let bouncer = PgBouncer::start(&self.one.cluster, &self.one.pki, secret, &settings, log);
        Some(Pooler {
            name: "PgBouncer",
            pid: bouncer.pid,
            addr: SocketAddr::from(([127, 0, 0, 1], bouncer.port)),
            _process: Box::new(bouncer),
        })
    }

    /// How `acme`'s `app` reaches `addr` over TLS: by SNI through Sluice, by address
    /// otherwise.
    fn target(&self, addr: SocketAddr, sluice: bool) -> PgTarget {
        let mut t = PgTarget::tenant(
            addr,
            "acme",
            &self.one.cluster.app_password,
            &self.one.pki.ca_cert,
        );
        t.sslmode = "require";
        if !sluice {
            t.sni_host = Some("localhost".into());
        }
        t
    }
}

/// A real ClientHello naming `server`, as rustls's client writes it.
fn client_hello(server: &str) -> Vec<u8> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("protocol versions")
        .with_root_certificates(rustls::RootCertStore::empty())
        .with_no_client_auth();
    let name = rustls::pki_types::ServerName::try_from(server.to_owned()).expect("name");
    let mut conn = rustls::ClientConnection::new(Arc::new(config), name).expect("client");
    let mut out = Vec::new();
    while conn.wants_write() {
        conn.write_tls(&mut out).expect("ClientHello");
    }
    out
}

fn ssl_request() -> [u8; 8] {
    let mut out = [0u8; 8];
    out[..4].copy_from_slice(&8u32.to_be_bytes());
    out[4..].copy_from_slice(&wire::startup::SSL_REQUEST_CODE.to_be_bytes());
    out
}

/// SSLRequest, then its answer (`S` expected; anything else is reported).
async fn ssl_request_answered(tcp: &mut TcpStream) -> Result<(), String> {
    tcp.write_all(&ssl_request())
        .await
        .map_err(|e| e.to_string())?;
    let mut answer = [0u8; 1];
    tokio::time::timeout(Duration::from_secs(10), tcp.read_exact(&mut answer))
        .await
        .map_err(|_| "no answer to SSLRequest".to_owned())?
        .map_err(|e| e.to_string())?;
    match answer[0] {
        b'S' => Ok(()),
        other => Err(format!("SSLRequest answered {:?}", other as char)),
    }
}

// ---------------------------------------------------------------------------------
// partial: ClientHellos cut short.

struct Partial {
    name: &'static str,
    clients: usize,
    failed: usize,
    first_error: Option<String>,
    /// CPU seconds in the 3 s after the last client closed.
    cpu_after_s: f64,
    close_wait_after_1s: usize,
}

async fn partial(bench: &Bench, pooler: &Pooler, n: usize, direct: bool) -> Partial {
    let permits = Arc::new(tokio::sync::Semaphore::new(PARTIAL_AT_ONCE));
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..n {
        let permit = permits.clone().acquire_owned().await.expect("semaphore");
        let first = bench.hello[..20].to_vec();
        let addr = pooler.addr;
        tasks.spawn(async move {
            let _permit = permit;
            let mut tcp = TcpStream::connect(addr).await.map_err(|e| e.to_string())?;
            if !(direct && i % 2 == 0) {
                ssl_request_answered(&mut tcp).await?;
            }
            tcp.write_all(&first).await.map_err(|e| e.to_string())?;
            Ok::<_, String>(())
            // Dropped: FIN after 20 bytes of a ClientHello.
        });
    }
    let (mut failed, mut first_error) = (0, None);
    while let Some(done) = tasks.join_next().await {
        if let Err(e) = done.map_err(|e| e.to_string()).and_then(|r| r) {
            failed += 1;
            first_error.get_or_insert(e);
        }
    }
    let before = cpu_ticks(pooler.pid);
    tokio::time::sleep(Duration::from_secs(1)).await;
    let close_wait = procfs::in_state(
        &procfs::tcp_states(pooler.pid, pooler.addr.port()),
        "CLOSE_WAIT",
    );
    tokio::time::sleep(Duration::from_secs(2)).await;
    let spent = cpu_ticks(pooler.pid) - before;
    let p = Partial {
        name: pooler.name,
        clients: n,
        failed,
        first_error,
        cpu_after_s: spent as f64 / bench.hz,
        close_wait_after_1s: close_wait,
    };
    println!(
        "prelogin_flood: {} UTC partial {}: {} clients ({} failed), CPU in the 3 s after: {:.3} s, CLOSE_WAIT after 1 s: {}",
        utc_time_of_day(),
        p.name,
        p.clients,
        p.failed,
        p.cpu_after_s,
        p.close_wait_after_1s
    );
    p
}

// ---------------------------------------------------------------------------------
// logins: latency of another tenant's client, quiet and with held pre-login sockets.

/// Logins to one target, measured one at a time in turn with the other series of its
/// phase.
struct Series {
    phase: &'static str,
    name: String,
    /// Pre-login sockets held against this target while it was measured.
    held: String,
    config: tokio_postgres::Config,
    connector: tokio_postgres_rustls::MakeRustlsConnect,
    /// Login times (µs), sorted once the phase is over.
    latencies: Vec<u64>,
    error: Option<String>,
    /// The pooler's RSS (KiB) before the crowd and with it.
    rss_kib: Option<(u64, u64)>,
}

impl Series {
    fn new(phase: &'static str, name: &str, target: &PgTarget) -> Self {
        Series {
            phase,
            name: name.into(),
            held: "0".into(),
            config: testkit::clients::pg_config(target),
            connector: testkit::clients::tls_connector(&target.ca),
            latencies: Vec::new(),
            error: None,
            rss_kib: None,
        }
    }

    fn p(&self, q: f64) -> f64 {
        match &self.error {
            Some(_) => f64::NAN,
            None => percentile(&self.latencies, q) / 1000.0,
        }
    }
}

/// One login (connect to ReadyForQuery), in µs.
async fn login_once(series: &Series) -> Result<u64, String> {
    let t = Instant::now();
    let (client, conn) = tokio::time::timeout(
        LOGIN_TIMEOUT,
        series.config.connect(series.connector.clone()),
    )
    .await
    .map_err(|_| format!("no answer within {LOGIN_TIMEOUT:?}"))?
    .map_err(|e| e.to_string())?;
    let us = t.elapsed().as_micros() as u64;
    let task = tokio::spawn(conn);
    drop(client);
    let _ = tokio::time::timeout(LOGIN_TIMEOUT, task).await;
    Ok(us)
}

/// `n` rounds of one login to every series in turn (after an unmeasured round), so
/// that whatever else the machine does meanwhile hits every series alike. Each round
/// starts one series further on, so each series follows each other one equally often
/// (a direct login leaves Postgres busy ending its backend for a moment).
async fn interleaved(series: &mut [Series], n: usize) {
    let started = Instant::now();
    for round in 0..=n {
        if started.elapsed() > LOGINS_BUDGET {
            for s in series.iter_mut().filter(|s| s.error.is_none()) {
                s.error = Some(format!("only {round} rounds within {LOGINS_BUDGET:?}"));
            }
            break;
        }
        let count = series.len();
        for i in 0..count {
            let s = &mut series[(round + i) % count];
            if s.error.is_some() {
                continue;
            }
            match login_once(s).await {
                Ok(us) if round > 0 => s.latencies.push(us),
                Ok(_) => {}
                Err(e) => s.error = Some(format!("login {round}: {e}")),
            }
        }
    }
    for s in series.iter_mut() {
        s.latencies.sort_unstable();
    }
}

/// Opens `n` pre-login sockets to `addr` from 127.0.0.10, .11, ... ([`PER_ADDRESS`]
/// each), each stopped at one phase in turn. Sockets that could not be opened are
/// counted, not fatal.
async fn hold(addr: SocketAddr, n: usize, hello: &[u8]) -> (Vec<TcpStream>, usize, Option<String>) {
    let permits = Arc::new(tokio::sync::Semaphore::new(200));
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..n {
        let permit = permits.clone().acquire_owned().await.expect("semaphore");
        let source = IpAddr::from([127, 0, 0, 10 + (i / PER_ADDRESS) as u8]);
        let first = hello[..20].to_vec();
        tasks.spawn(async move {
            let _permit = permit;
            let socket = TcpSocket::new_v4().map_err(|e| e.to_string())?;
            socket
                .bind(SocketAddr::new(source, 0))
                .map_err(|e| e.to_string())?;
            let mut tcp = socket.connect(addr).await.map_err(|e| e.to_string())?;
            let startup = [0u8, 0, 0, 40, 0, 3];
            match i % 4 {
                0 => {}
                1 => ssl_request_answered(&mut tcp).await?,
                2 => {
                    ssl_request_answered(&mut tcp).await?;
                    tcp.write_all(&first).await.map_err(|e| e.to_string())?;
                }
                _ => tcp.write_all(&startup).await.map_err(|e| e.to_string())?,
            }
            Ok::<_, String>(tcp)
        });
    }
    let (mut held, mut failed, mut first_error) = (Vec::with_capacity(n), 0, None);
    while let Some(done) = tasks.join_next().await {
        match done.map_err(|e| e.to_string()).and_then(|r| r) {
            Ok(tcp) => held.push(tcp),
            Err(e) => {
                failed += 1;
                first_error.get_or_insert(e);
            }
        }
    }
    (held, failed, first_error)
}

/// One phase: logins direct, to `quiet` and to `crowded` in turn, while the crowd of
/// pre-login sockets is held against `crowded` (two poolers of the same kind and
/// config, so that the crowd is the only difference).
async fn phase(
    bench: &Bench,
    phase: &'static str,
    quiet: &Pooler,
    crowded: &Pooler,
    n: usize,
) -> Vec<Series> {
    let direct_addr = SocketAddr::from(([127, 0, 0, 1], bench.one.cluster.tcp_port.expect("tcp")));
    let sluice = quiet.name == "Sluice";
    let mut series = vec![
        Series::new(phase, "direct", &bench.target(direct_addr, false)),
        Series::new(phase, quiet.name, &bench.target(quiet.addr, sluice)),
        Series::new(phase, crowded.name, &bench.target(crowded.addr, sluice)),
    ];
    let port = crowded.addr.port();
    let before = rss_kib(crowded.pid).unwrap_or(0);
    let (held, failed, first_error) = hold(crowded.addr, bench.held, &bench.hello).await;
    // Every one accepted before the clock starts.
    let deadline = Instant::now() + Duration::from_secs(60);
    while procfs::in_state(&procfs::tcp_states(crowded.pid, port), "ESTABLISHED") < held.len()
        && Instant::now() < deadline
    {
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    let with = rss_kib(crowded.pid).unwrap_or(0);
    series[2].held = match failed {
        0 => held.len().to_string(),
        _ => format!(
            "{} ({failed} failed to open: {})",
            held.len(),
            first_error.unwrap_or_default()
        ),
    };
    series[2].rss_kib = Some((before, with));
    interleaved(&mut series, n).await;
    for s in &series {
        println!(
            "prelogin_flood: {} UTC logins, {} phase: {} ({} held): p50 {:.2} ms, p99 {:.2} ms{}",
            utc_time_of_day(),
            s.phase,
            s.name,
            s.held,
            s.p(0.5),
            s.p(0.99),
            s.error
                .as_deref()
                .map(|e| format!(" (failed: {e})"))
                .unwrap_or_default()
        );
    }
    drop(held);
    // Let the pooler close its side before it is stopped.
    let deadline = Instant::now() + Duration::from_secs(60);
    while procfs::in_state(&procfs::tcp_states(crowded.pid, port), "ESTABLISHED") > 0
        && Instant::now() < deadline
    {
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    series
}

// ---------------------------------------------------------------------------------

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let n_partial = knob("SLUICE_PRELOGIN_PARTIAL", 1000);
    let held = knob("SLUICE_PRELOGIN_HELD", 10_000);
    let logins = knob("SLUICE_PRELOGIN_LOGINS", 200);
    let limit = ensure_open_files(held as u64 + 4096);
    println!(
        "prelogin_flood: binary {}; open-files limit {limit}",
        sluice_bin().display()
    );
    let one = OneTenant::start("sluice-bench-prelogin-").expect("cluster");
    let bouncer = ensure_pgbouncer("prelogin_flood").map(|version| {
        let_postgres_reach_socket(one.dir.path(), &one.cluster);
        (version, app_scram_secret(&one.cluster))
    });
    if let Err(why) = &bouncer {
        println!("prelogin_flood: SKIP PgBouncer: {why}");
    }
    let bench = Bench {
        one,
        bouncer,
        hello: client_hello("noisy.db.example.test"),
        hz: clock_ticks_per_second(),
        held,
    };
    let mut out = String::new();

    if wants("partial") {
        let mut rows = Vec::new();
        let sluice = bench.sluice("partial", false);
        tokio::time::sleep(Duration::from_secs(2)).await;
        rows.push(partial(&bench, &sluice, n_partial, true).await);
        drop(sluice);
        if let Some(bouncer) = bench.bouncer("partial") {
            tokio::time::sleep(Duration::from_secs(2)).await;
            rows.push(partial(&bench, &bouncer, n_partial, false).await);
        }
        out.push_str(&format!(
            "\n### {n_partial} clients send 20 bytes of a ClientHello and close\n\n\
             | pooler | how | clients failed | CPU in the 3 s after they closed (s) | CLOSE_WAIT sockets 1 s after |\n\
             |---|---|---|---|---|\n"
        ));
        for r in &rows {
            let how = if r.name == "Sluice" {
                "half direct TLS, half after SSLRequest"
            } else {
                "after SSLRequest"
            };
            out.push_str(&format!(
                "| {} | {how} | {}{} | {:.3} | {} |\n",
                r.name,
                r.failed,
                r.first_error
                    .as_deref()
                    .map(|e| format!(" ({e})"))
                    .unwrap_or_default(),
                r.cpu_after_s,
                r.close_wait_after_1s
            ));
        }
    }

    if wants("logins") {
        let mut rows = Vec::new();
        {
            let quiet = bench.sluice("logins-quiet", true);
            let crowded = bench.sluice("logins-crowded", true);
            tokio::time::sleep(Duration::from_secs(2)).await;
            rows.extend(phase(&bench, "Sluice", &quiet, &crowded, logins).await);
        }
        if let (Some(quiet), Some(crowded)) = (
            bench.bouncer("logins-quiet"),
            bench.bouncer("logins-crowded"),
        ) {
            tokio::time::sleep(Duration::from_secs(2)).await;
            rows.extend(phase(&bench, "PgBouncer", &quiet, &crowded, logins).await);
        }
        out.push_str(&format!(
            "\n### {logins} logins of another tenant's client (TLS + SCRAM, tokio-postgres) to each target in turn, with {held} pre-login sockets held against one of two identical poolers\n\n\
             | phase | target | pre-login sockets held | login p50 (ms) | login p99 (ms) | p99 / quiet twin's p99 | RSS before → with (MiB) | per held socket (KiB) |\n\
             |---|---|---|---|---|---|---|---|\n"
        ));
        for r in &rows {
            let twin = rows
                .iter()
                .find(|q| q.phase == r.phase && q.name == r.name && q.held == "0");
            let vs_quiet = match twin {
                Some(q) if r.held != "0" => ratio(r.p(0.99), q.p(0.99)),
                _ => "–".to_owned(),
            };
            let (rss, per) = match r.rss_kib {
                Some((before, with)) => (
                    format!(
                        "{:.1} → {:.1}",
                        before as f64 / 1024.0,
                        with as f64 / 1024.0
                    ),
                    format!(
                        "{:.1}",
                        with.saturating_sub(before) as f64 / bench.held.max(1) as f64
                    ),
                ),
                None => ("–".into(), "–".into()),
            };
            let failed = r
                .error
                .as_deref()
                .map(|e| format!(" (failed: {e})"))
                .unwrap_or_default();
            out.push_str(&format!(
                "| {} | {}{failed} | {} | {:.2} | {:.2} | {vs_quiet} | {rss} | {per} |\n",
                r.phase,
                r.name,
                r.held,
                r.p(0.5),
                r.p(0.99)
            ));
        }
    }
    println!("{out}");
}
