//! Direct Postgres vs PgBouncer vs Sluice, both poolers in transaction mode with 5
//! server connections, in one run on one machine against one Postgres 15 cluster:
//! `pgbench -n -S -M {prepared,simple,extended} -c 50 -j 2 -T $SLUICE_BENCH_SECONDS`,
//! client leg TLS (`sslmode=require`) everywhere, poolers reach Postgres over its unix
//! socket. For each run: TPS, average latency, failed transactions, aborted clients and
//! the pooler's own CPU time per transaction (utime+stime from /proc/PID/stat).
//!
//! Run with `cargo bench --bench poolers`; see benches/README.md (PgBouncer must be
//! installed, or installable with apt-get; without it the PgBouncer column is skipped).
//!
//! Every loop here is bounded by pgbench's `-T` or a fixed deadline; everything started
//! is stopped by pid on exit, also on panic (Drop guards).

use std::net::{SocketAddr, TcpStream};
use std::os::unix::fs::{chown, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::unistd::{Pid, User};
use testkit::{OneTenant, PgTarget, Pki, SluiceConfig, SluiceProcess, TenantEntry, TestCluster};

mod common;
use common::{clock_ticks_per_second, cpu_ticks, field, seconds};

const BIN: &str = env!("CARGO_BIN_EXE_sluice");
const CLIENTS: &str = "50";
const POOL_SIZE: u32 = 5;
const MODES: [&str; 3] = ["prepared", "simple", "extended"];
const TARGETS: [&str; 3] = ["direct", "PgBouncer", "Sluice"];

// ---------------------------------------------------------------------------------
// CPU accounting

/// The parent pid (field 4) and command name (field 2) of `pid`.
fn ppid_and_comm(pid: u32) -> Option<(u32, String)> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let open = stat.find('(')?;
    let close = stat.rfind(')')?;
    let comm = stat[open + 1..close].to_owned();
    let ppid = stat[close + 1..].split_whitespace().nth(1)?.parse().ok()?;
    Some((ppid, comm))
}

// ---------------------------------------------------------------------------------
// PgBouncer

/// `(major, minor)` of the installed `pgbouncer`, if any.
fn pgbouncer_version() -> Option<(u32, u32)> {
    let out = Command::new("pgbouncer").arg("--version").output().ok()?;
    let text = String::from_utf8_lossy(&out.stdout);
    let version = text.lines().next()?.strip_prefix("PgBouncer ")?;
    let mut parts = version.split('.');
    Some((parts.next()?.parse().ok()?, parts.next()?.parse().ok()?))
}

/// Finds PgBouncer, installing it from apt if it is missing and we are root.
/// `Err` is the reason to skip the PgBouncer column.
fn ensure_pgbouncer() -> Result<(u32, u32), String> {
    if User::from_name("postgres").ok().flatten().is_none() {
        return Err("no `postgres` system user to run PgBouncer as".into());
    }
    if let Some(v) = pgbouncer_version() {
        return Ok(v);
    }
    if !nix::unistd::geteuid().is_root() {
        return Err("pgbouncer is not installed (apt-get install -y pgbouncer)".into());
    }
    println!("poolers: pgbouncer not found; installing it with `apt-get install -y pgbouncer`");
    let status = Command::new("apt-get")
        .args(["install", "-y", "pgbouncer"])
        .env("DEBIAN_FRONTEND", "noninteractive")
        .stdout(Stdio::null())
        .status();
    match (status, pgbouncer_version()) {
        (_, Some(v)) => Ok(v),
        (Ok(s), None) => Err(format!("`apt-get install -y pgbouncer` failed ({s})")),
        (Err(e), None) => Err(format!("could not run apt-get: {e}")),
    }
}

/// A running PgBouncer, started as user `postgres` through `runuser` (which forks:
/// `pid` is the pgbouncer child, `runner` the runuser parent). Dropping it sends
/// SIGTERM to pgbouncer's pid, then SIGKILL to both if they have not exited.
struct PgBouncer {
    runner: Child,
    pid: u32,
    port: u16,
    log: PathBuf,
}

impl PgBouncer {
    /// Writes the config into `dir` (owned by `postgres`), starts PgBouncer and waits
    /// until it accepts TCP connections.
    fn start(
        dir: &Path,
        cluster: &TestCluster,
        pki: &Pki,
        scram_secret: &str,
        version: (u32, u32),
        log: PathBuf,
    ) -> Self {
        let postgres = User::from_name("postgres").unwrap().expect("postgres user");
        let cert = dir.join("proxy.crt");
        let key = dir.join("proxy.key");
        std::fs::copy(&pki.proxy_cert, &cert).unwrap();
        std::fs::copy(&pki.proxy_key, &key).unwrap();
        let userlist = dir.join("userlist.txt");
        std::fs::write(
            &userlist,
            format!("\"{}\" \"{scram_secret}\"\n", testkit::cluster::APP_ROLE),
        )
        .unwrap();
        let port = localpg::free_port().unwrap();
        // 1.18 refuses unknown keys ("cannot load config file"); protocol-level
        // prepared statements in transaction mode exist from 1.21 on.
        let prepared = if version >= (1, 21) {
            "max_prepared_statements = 200\n"
        } else {
            ""
        };
        let ini = dir.join("pgbouncer.ini");
        std::fs::write(
            &ini,
            format!(
                "[databases]\n{db} = host={sock} port={sock_port} dbname={db}\n\n\
                 [pgbouncer]\nlisten_addr = 127.0.0.1\nlisten_port = {port}\nunix_socket_dir =\n\
                 pool_mode = transaction\ndefault_pool_size = {POOL_SIZE}\nmax_client_conn = 200\n\
                 {prepared}auth_type = scram-sha-256\nauth_file = {userlist}\n\
                 client_tls_sslmode = require\nclient_tls_key_file = {key}\n\
                 client_tls_cert_file = {cert}\nignore_startup_parameters = extra_float_digits\n",
                db = testkit::cluster::APP_DATABASE,
                sock = cluster.socket_dir.display(),
                sock_port = cluster.cluster.socket_port(),
                userlist = userlist.display(),
                key = key.display(),
                cert = cert.display(),
            ),
        )
        .unwrap();
        for path in [dir, &cert, &key, &userlist, &ini] {
            chown(
                path,
                Some(postgres.uid.as_raw()),
                Some(postgres.gid.as_raw()),
            )
            .unwrap();
        }
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700)).unwrap();
        std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600)).unwrap();

        let log_file = std::fs::File::create(&log).unwrap();
        let runner = Command::new("runuser")
            .args(["-u", "postgres", "--", "pgbouncer"])
            .arg(&ini)
            .stdin(Stdio::null())
            .stdout(log_file.try_clone().unwrap())
            .stderr(log_file)
            .spawn()
            .expect("running runuser -u postgres -- pgbouncer");
        let mut bouncer = PgBouncer {
            pid: 0,
            runner,
            port,
            log,
        };
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            if let Ok(Some(status)) = bouncer.runner.try_wait() {
                panic!("pgbouncer exited ({status}); log:\n{}", bouncer.log_text());
            }
            if bouncer.pid == 0 {
                bouncer.pid = bouncer.find_child().unwrap_or(0);
            }
            let up = TcpStream::connect_timeout(
                &SocketAddr::from(([127, 0, 0, 1], port)),
                Duration::from_millis(200),
            )
            .is_ok();
            if up && bouncer.pid != 0 {
                return bouncer;
            }
            assert!(
                Instant::now() < deadline,
                "pgbouncer did not start; log:\n{}",
                bouncer.log_text()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// The pgbouncer process whose parent is the runuser process.
    fn find_child(&self) -> Option<u32> {
        let parent = self.runner.id();
        std::fs::read_dir("/proc")
            .ok()?
            .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
            .find(|&pid| {
                matches!(ppid_and_comm(pid), Some((ppid, comm)) if ppid == parent && comm == "pgbouncer")
            })
    }

    fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for PgBouncer {
    fn drop(&mut self) {
        if self.pid != 0 {
            let _ = kill(Pid::from_raw(self.pid as i32), Signal::SIGTERM);
        }
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.runner.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        if self.pid != 0 {
            let _ = kill(Pid::from_raw(self.pid as i32), Signal::SIGKILL);
        }
        let _ = self.runner.kill();
        let _ = self.runner.wait();
    }
}

/// The backend's SCRAM verifier for `app`, read as `sluice_auth` through the
/// SECURITY DEFINER function testkit creates (the same lookup Sluice uses).
fn app_scram_secret(cluster: &TestCluster) -> String {
    let password = std::fs::read_to_string(&cluster.auth_password_file).unwrap();
    let out = Command::new("psql")
        .arg(format!(
            "host={} port={} user={} dbname=postgres",
            cluster.socket_dir.display(),
            cluster.cluster.socket_port(),
            testkit::cluster::AUTH_ROLE
        ))
        .args([
            "-XAtq",
            "-v",
            "ON_ERROR_STOP=1",
            "-c",
            &format!(
                "SELECT secret FROM sluice.role_secret('{}')",
                testkit::cluster::APP_ROLE
            ),
        ])
        .env("PGPASSWORD", password.trim_end())
        .output()
        .expect("running psql");
    let secret = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    assert!(
        out.status.success() && secret.starts_with("SCRAM-SHA-256$"),
        "reading app's verifier: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    secret
}

// ---------------------------------------------------------------------------------
// pgbench

#[derive(Debug, Default, Clone)]
struct Run {
    tps: f64,
    latency_ms: f64,
    processed: u64,
    failed: u64,
    aborted_clients: usize,
    /// The first client error, if any client aborted.
    first_error: Option<String>,
    /// Pooler CPU µs per processed transaction (None for direct).
    cpu_us_per_txn: Option<f64>,
}

impl Run {
    fn usable(&self) -> bool {
        self.aborted_clients == 0 && self.processed > 0
    }
}

/// One pgbench run; `pooler` is the pid whose CPU time is charged per transaction.
fn bench(target: &PgTarget, mode: &str, secs: &str, pooler: Option<u32>, hz: f64) -> Run {
    let before = pooler.map(cpu_ticks);
    let out = Command::new("pgbench")
        .args(["-n", "-S", "-M", mode, "-c", CLIENTS, "-j", "2", "-T", secs])
        .arg(target.conninfo())
        .env("PGPASSWORD", &target.password)
        .output()
        .expect("running pgbench");
    let after = pooler.map(cpu_ticks);
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    let aborted: Vec<&str> = stderr
        .lines()
        .filter(|l| l.contains("aborted in command"))
        .collect();
    let processed = field(&stdout, "number of transactions actually processed:").unwrap_or(0);
    assert!(
        processed > 0 || !aborted.is_empty(),
        "pgbench -M {mode} produced no transactions (exit {}):\n{stdout}\n{stderr}",
        out.status
    );
    let cpu_us_per_txn = match (before, after) {
        (Some(b), Some(a)) if processed > 0 => Some((a - b) as f64 / hz * 1e6 / processed as f64),
        _ => None,
    };
    Run {
        tps: field(&stdout, "tps =").unwrap_or(0.0),
        latency_ms: field(&stdout, "latency average =").unwrap_or(f64::NAN),
        processed,
        failed: field(&stdout, "number of failed transactions:").unwrap_or(0),
        aborted_clients: aborted.len(),
        first_error: aborted.first().map(|l| {
            l.find("ERROR:")
                .map_or(*l, |at| &l[at..])
                .split_whitespace()
                .collect::<Vec<_>>()
                .join(" ")
        }),
        cpu_us_per_txn,
    }
}

/// HH:MM:SS (UTC) now, to line runs up with whatever else ran on the machine.
fn utc_time_of_day() -> String {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
        % 86_400;
    format!("{:02}:{:02}:{:02}", secs / 3600, secs / 60 % 60, secs % 60)
}

fn ratio(a: f64, b: f64) -> String {
    if a.is_finite() && b.is_finite() && b > 0.0 {
        format!("{:.2}", a / b)
    } else {
        "n/a".into()
    }
}

fn main() {
    // `cargo bench` passes `--bench`; nothing else to parse.
    let hz = clock_ticks_per_second();
    let secs = seconds();
    let OneTenant { dir, pki, cluster } = OneTenant::start("sluice-bench-poolers-").unwrap();

    // Sluice: transaction mode, 5 server connections, backend over the unix socket.
    let mut config = SluiceConfig::new(&pki);
    config.tenants = vec![TenantEntry::over_unix_socket(&cluster, &pki)];
    config.default_pool = vec![
        "mode = \"transaction\"".into(),
        format!("size = {POOL_SIZE}"),
        "max_prepared_statements = 200".into(),
    ];
    let sluice = SluiceProcess::start(BIN.as_ref(), &dir.path().join("sluice"), &config).unwrap();

    // PgBouncer runs as `postgres`: it must traverse the (root-only) temporary
    // directories down to the cluster's socket. 0711: no listing, only known names.
    let pgbouncer_dir = tempfile::Builder::new()
        .prefix("sluice-bench-pgbouncer-")
        .tempdir()
        .unwrap();
    let pgbouncer = match ensure_pgbouncer() {
        Ok(version) => {
            let home = cluster.socket_dir.parent().unwrap();
            for path in [dir.path(), home, &cluster.socket_dir] {
                std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o711)).unwrap();
            }
            let secret = app_scram_secret(&cluster);
            println!(
                "poolers: PgBouncer {}.{} (max_prepared_statements {})",
                version.0,
                version.1,
                if version >= (1, 21) {
                    "= 200"
                } else {
                    "not supported before 1.21: left out"
                }
            );
            Some(PgBouncer::start(
                pgbouncer_dir.path(),
                &cluster,
                &pki,
                &secret,
                version,
                dir.path().join("pgbouncer.log"),
            ))
        }
        Err(why) => {
            println!("poolers: SKIP PgBouncer column: {why}");
            None
        }
    };

    let through_sluice = PgTarget::tenant(sluice.addr, "acme", &cluster.app_password, &pki.ca_cert);
    let mut direct = through_sluice.clone();
    direct.sni_host = Some("localhost".into());
    direct.addr = SocketAddr::from(([127, 0, 0, 1], cluster.tcp_port.unwrap()));
    direct.sslmode = "require";
    let mut via_sluice = through_sluice.clone();
    via_sluice.sslmode = "require";
    let via_pgbouncer = pgbouncer.as_ref().map(|b| {
        let mut t = direct.clone();
        t.addr = SocketAddr::from(([127, 0, 0, 1], b.port));
        t
    });

    let init = Command::new("pgbench")
        .args(["-i", "-s", "1", "-q"])
        .arg(direct.conninfo())
        .env("PGPASSWORD", &direct.password)
        .output()
        .expect("running pgbench -i");
    assert!(
        init.status.success(),
        "pgbench -i: {}",
        String::from_utf8_lossy(&init.stderr)
    );

    // results[mode][target]
    let mut results: Vec<Vec<Option<Run>>> = Vec::new();
    for mode in MODES {
        let mut row = Vec::new();
        for name in TARGETS {
            let started = utc_time_of_day();
            let run = match name {
                "direct" => Some(bench(&direct, mode, &secs, None, hz)),
                "PgBouncer" => via_pgbouncer
                    .as_ref()
                    .zip(pgbouncer.as_ref())
                    .map(|(t, b)| bench(t, mode, &secs, Some(b.pid), hz)),
                _ => Some(bench(&via_sluice, mode, &secs, Some(sluice.pid()), hz)),
            };
            match &run {
                Some(r) => println!(
                    "poolers: {started} UTC -M {mode:8} {name:9}: {:.0} TPS, {:.3} ms avg, {} txns, {} failed, {} clients aborted{}",
                    r.tps,
                    r.latency_ms,
                    r.processed,
                    r.failed,
                    r.aborted_clients,
                    r.first_error
                        .as_ref()
                        .map(|e| format!(" (first: {e})"))
                        .unwrap_or_default()
                ),
                None => println!("poolers: {started} UTC -M {mode:8} {name:9}: skipped"),
            }
            row.push(run);
        }
        results.push(row);
    }

    println!();
    println!(
        "pgbench -n -S -c {CLIENTS} -j 2 -T {secs}; poolers in transaction mode with {POOL_SIZE} server connections; client TLS everywhere"
    );
    println!();
    println!("| -M | target | TPS | avg latency (ms) | txns processed | failed txns | aborted clients | pooler CPU (µs/txn) |");
    println!("|---|---|---|---|---|---|---|---|");
    for (mode, row) in MODES.iter().zip(&results) {
        for (name, run) in TARGETS.iter().zip(row) {
            match run {
                Some(r) => println!(
                    "| {mode} | {name} | {:.0} | {:.3} | {} | {} | {} | {} |",
                    r.tps,
                    r.latency_ms,
                    r.processed,
                    r.failed,
                    r.aborted_clients,
                    r.cpu_us_per_txn
                        .map(|c| format!("{c:.1}"))
                        .unwrap_or_else(|| "—".into())
                ),
                None => println!("| {mode} | {name} | skipped | | | | | |"),
            }
        }
    }
    println!();
    println!("| -M | TPS Sluice/PgBouncer | TPS Sluice/direct | latency Sluice/PgBouncer | latency Sluice/direct | CPU/txn Sluice/PgBouncer |");
    println!("|---|---|---|---|---|---|");
    for (mode, row) in MODES.iter().zip(&results) {
        let direct = row[0].clone().filter(Run::usable);
        let bouncer = row[1].clone().filter(Run::usable);
        let sluice = row[2].clone().filter(Run::usable);
        let get = |r: &Option<Run>, f: fn(&Run) -> f64| r.as_ref().map_or(f64::NAN, f);
        let tps = |r: &Run| r.tps;
        let lat = |r: &Run| r.latency_ms;
        let cpu = |r: &Run| r.cpu_us_per_txn.unwrap_or(f64::NAN);
        println!(
            "| {mode} | {} | {} | {} | {} | {} |",
            ratio(get(&sluice, tps), get(&bouncer, tps)),
            ratio(get(&sluice, tps), get(&direct, tps)),
            ratio(get(&sluice, lat), get(&bouncer, lat)),
            ratio(get(&sluice, lat), get(&direct, lat)),
            ratio(get(&sluice, cpu), get(&bouncer, cpu)),
        );
    }
    println!("(n/a: a side was skipped or had aborted clients)");

    drop(sluice);
    drop(pgbouncer);
    drop(cluster);
}
