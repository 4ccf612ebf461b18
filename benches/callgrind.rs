//! Instructions per transaction in Sluice's own process, counted by valgrind's
//! callgrind: deterministic for the same binary and workload whatever else runs on the
//! machine, so it compares builds on a busy machine where CPU time cannot. Run with
//! `cargo bench --bench callgrind`; see benches/README.md.
//!
//! One Postgres 15 cluster (testkit's `OneTenant`), and in front of it, over its unix
//! socket, one `sluice serve` run under `valgrind --tool=callgrind` with two tenants on
//! that backend: `acme` in transaction mode and `sess` in session mode. For each cell
//! (mode × client leg × pgbench protocol) pgbench runs twice, `-n -S -M <protocol> -c 4
//! -j 1 -t <short>` and `-t <long>`; the counters are zeroed before each run and dumped
//! after it (`callgrind_control -z`, `-d`), so startup is not counted. The logins and
//! logouts of the 4 clients are the same in both runs, so
//! `(I(long) − I(short)) / (4 × (long − short))` is what one transaction costs, and
//! the calls to malloc/calloc/realloc in the same difference are its allocations.
//!
//! Everything runs in a temporary directory (kept with `SLUICE_CALLGRIND_KEEP=1`, for
//! `callgrind_annotate` on the dumps); every pgbench run is bounded by `-t`; Sluice
//! (SIGTERM) and the cluster are stopped by their Drop guards.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use testkit::{OneTenant, PgTarget, SluiceConfig, SluiceProcess, TenantEntry};

const BIN: &str = env!("CARGO_BIN_EXE_sluice");
const CLIENTS: u64 = 4;

/// Function names whose calls count as allocations.
const ALLOCATORS: &[&str] = &[
    "malloc",
    "calloc",
    "realloc",
    "posix_memalign",
    "aligned_alloc",
];

fn env_u64(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// `callgrind_control ARGS PID`; panics if it fails.
fn control(pid: u32, args: &[&str]) {
    let out = Command::new("callgrind_control")
        .args(args)
        .arg(pid.to_string())
        .output()
        .expect("running callgrind_control (valgrind installed?)");
    assert!(
        out.status.success(),
        "callgrind_control {args:?}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The dump files `callgrind_control -d` made callgrind write so far, oldest first.
fn dumps(dir: &Path) -> Vec<PathBuf> {
    let mut files: Vec<(u64, PathBuf)> = std::fs::read_dir(dir)
        .unwrap()
        .filter_map(|e| e.ok())
        .map(|e| e.path())
        .filter_map(|p| {
            let name = p.file_name()?.to_str()?.to_owned();
            let rest = name.strip_prefix("callgrind.out.")?;
            // callgrind.out.PID.PART (PART from 1); callgrind.out.PID is written at exit.
            let part = rest.split_once('.')?.1.parse().ok()?;
            Some((part, p))
        })
        .collect();
    files.sort();
    files.into_iter().map(|(_, p)| p).collect()
}

/// What one dump counted: instructions, and calls to each allocator and to free.
#[derive(Debug, Default, Clone, Copy)]
struct Counts {
    instructions: u64,
    allocations: u64,
    frees: u64,
}

/// Reads a callgrind dump (`--dump-instr=no`, event `Ir`): the `totals:`/`summary:`
/// line, and the `calls=` lines whose callee (`cfn=`, names compressed as `(id) name`
/// on first use) is an allocator or `free`.
fn read_dump(path: &Path) -> Counts {
    let text = std::fs::read_to_string(path).unwrap();
    let mut names: HashMap<String, String> = HashMap::new();
    let mut callee = String::new();
    let mut counts = Counts::default();
    let strip = |n: &str| n.trim_start_matches("__libc_").to_owned();
    for line in text.lines() {
        if let Some(spec) = line.strip_prefix("cfn=") {
            callee = match spec.strip_prefix('(').and_then(|s| s.split_once(')')) {
                Some((id, "")) => names.get(id).cloned().unwrap_or_default(),
                Some((id, name)) => {
                    let name = strip(name.trim());
                    names.insert(id.to_owned(), name.clone());
                    name
                }
                None => strip(spec),
            };
        } else if let Some(spec) = line.strip_prefix("fn=") {
            if let Some((id, name)) = spec.strip_prefix('(').and_then(|s| s.split_once(')')) {
                if !name.is_empty() {
                    names.insert(id.to_owned(), strip(name.trim()));
                }
            }
        } else if let Some(calls) = line.strip_prefix("calls=") {
            let n: u64 = calls
                .split_whitespace()
                .next()
                .and_then(|v| v.parse().ok())
                .unwrap_or(0);
            if ALLOCATORS.contains(&callee.as_str()) {
                counts.allocations += n;
            } else if callee == "free" {
                counts.frees += n;
            }
        } else if let Some(total) = line
            .strip_prefix("totals:")
            .or_else(|| line.strip_prefix("summary:"))
        {
            counts.instructions = total
                .split_whitespace()
                .next()
                .and_then(|v| v.parse().ok())
                .unwrap_or(0);
        }
    }
    counts
}

/// Runs pgbench with callgrind counting, and returns what the dump counted.
fn measured(pid: u32, out_dir: &Path, target: &PgTarget, args: &[&str]) -> (Counts, PathBuf) {
    let before = dumps(out_dir).len();
    control(pid, &["-z"]);
    let run = testkit::pgbench(target, args);
    control(pid, &["-d"]);
    assert!(run.success, "pgbench {args:?}: {}", run.stderr);
    let processed: u64 = run
        .stdout
        .lines()
        .find_map(|l| l.strip_prefix("number of transactions actually processed: "))
        .and_then(|l| l.split('/').next())
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0);
    let expected: u64 = args
        .windows(2)
        .find(|w| w[0] == "-t")
        .map(|w| w[1].parse::<u64>().unwrap() * CLIENTS)
        .unwrap();
    assert_eq!(processed, expected, "pgbench {args:?}: {}", run.stdout);
    // The dump is written by the process itself; wait for the new file to appear whole.
    for _ in 0..600 {
        let files = dumps(out_dir);
        if files.len() > before {
            let file = files.last().unwrap().clone();
            let counts = read_dump(&file);
            if counts.instructions > 0 {
                return (counts, file);
            }
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let files: Vec<String> = dumps(out_dir)
        .iter()
        .map(|f| format!("{}: {:?}", f.display(), read_dump(f)))
        .collect();
    panic!(
        "no callgrind dump with counts appeared in {}: {files:#?}",
        out_dir.display()
    );
}

fn main() {
    let bin = std::env::var("SLUICE_BENCH_BIN").unwrap_or_else(|_| BIN.to_owned());
    let short = env_u64("SLUICE_CALLGRIND_SHORT", 200);
    let long = env_u64("SLUICE_CALLGRIND_LONG", 1200);
    assert!(
        long > short,
        "SLUICE_CALLGRIND_LONG must exceed SLUICE_CALLGRIND_SHORT"
    );
    let only = std::env::var("SLUICE_CALLGRIND_ONLY").unwrap_or_default();
    let repeat = env_u64("SLUICE_CALLGRIND_REPEAT", 3).max(1);

    let OneTenant { dir, pki, cluster } = OneTenant::start("sluice-bench-callgrind-").unwrap();
    let out_dir = dir.path().join("callgrind");
    std::fs::create_dir_all(&out_dir).unwrap();
    // valgrind runs the binary in the same process: its pid is Sluice's.
    let wrapper = dir.path().join("sluice-under-callgrind.sh");
    std::fs::write(
        &wrapper,
        format!(
            "#!/bin/sh\nexec valgrind -q --tool=callgrind --dump-instr=no \
             --callgrind-out-file={}/callgrind.out.%p {bin} \"$@\"\n",
            out_dir.display()
        ),
    )
    .unwrap();
    std::fs::set_permissions(
        &wrapper,
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .unwrap();

    let mut config = SluiceConfig::new(&pki);
    config.log = "warn".into();
    config.require_tls = false;
    config.start_timeout = Duration::from_secs(600);
    config.login_timeout_ms = 120_000;
    let mut transaction = TenantEntry::over_unix_socket(&cluster, &pki);
    transaction.pool = vec!["mode = \"transaction\"".into(), "size = 8".into()];
    let mut session = transaction.clone();
    session.id = "sess".into();
    session.pool = vec!["mode = \"session\"".into(), "size = 8".into()];
    config.tenants = vec![transaction, session];
    config.default_limits = vec![
        "connect_rate = 0".into(),
        "max_client_connections = 0".into(),
    ];
    // Usage metering's writes to the control store (a login to it each time) are
    // background work on a clock, not per transaction: out of the way here.
    config.plans = "[usage]\nflush_interval_s = 3600\ndisk_sample_interval_s = 0\n".into();
    let sluice = SluiceProcess::start(wrapper.as_ref(), &dir.path().join("sluice"), &config)
        .unwrap_or_else(|e| panic!("starting sluice under callgrind: {e}"));
    let pid = sluice.pid();

    let direct = {
        let mut t = PgTarget::tenant(
            std::net::SocketAddr::from(([127, 0, 0, 1], cluster.tcp_port.unwrap())),
            "acme",
            &cluster.app_password,
            &pki.ca_cert,
        );
        t.sni_host = Some("localhost".into());
        t.sslmode = "require";
        t
    };
    let init = testkit::pgbench(&direct, &["-i", "-s", "1", "-q"]);
    assert!(init.success, "pgbench -i: {}", init.stderr);

    let target = |tenant: &str, tls: bool| {
        let mut t = PgTarget::tenant(sluice.addr, tenant, &cluster.app_password, &pki.ca_cert);
        if tls {
            // SNI names the tenant.
            t.sslmode = "require";
        } else {
            t.sni_host = None;
            t.sslmode = "disable";
            t.options = Some(format!("tenant={tenant}"));
        }
        t
    };

    // What the process does on its own clocks with no client (pool maintenance,
    // catalog follow-up): the noise floor under the differences below.
    control(pid, &["-z"]);
    std::thread::sleep(Duration::from_secs(10));
    let before = dumps(&out_dir).len();
    control(pid, &["-d"]);
    let idle = loop {
        let files = dumps(&out_dir);
        if files.len() > before {
            break read_dump(files.last().unwrap());
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    println!(
        "callgrind: idle, no client: {} instructions per second",
        idle.instructions / 10
    );
    println!(
        "callgrind: {bin}; pgbench -n -S -c {CLIENTS} -j 1, -t {short} and -t {long} per cell; \
         per transaction = difference / ({CLIENTS} × {}), median of {repeat} pairs",
        long - short
    );
    println!();
    println!("| mode | leg | -M | instructions / txn (median pair) | every pair | allocations / txn | frees / txn | fixed per run (4 logins + logouts), instructions |");
    println!("|---|---|---|---|---|---|---|---|");
    for (mode, tenant) in [("transaction", "acme"), ("session", "sess")] {
        for (leg, tls) in [("plain", false), ("TLS", true)] {
            for protocol in ["simple", "extended", "prepared"] {
                let label = format!("{mode}-{leg}-{protocol}");
                if !only.is_empty() && !only.split(',').all(|w| label.contains(w)) {
                    continue;
                }
                let t = target(tenant, tls);
                let args = |n: &str| -> Vec<String> {
                    ["-n", "-S", "-M", protocol, "-c", "4", "-j", "1", "-t", n]
                        .map(String::from)
                        .to_vec()
                };
                // Warm-up (not counted): pools filled, lazy state built.
                let warm = args("50");
                let warm: Vec<&str> = warm.iter().map(String::as_str).collect();
                let run = testkit::pgbench(&t, &warm);
                assert!(run.success, "warm-up {label}: {}", run.stderr);
                let (s_args, l_args) = (args(&short.to_string()), args(&long.to_string()));
                let s_args: Vec<&str> = s_args.iter().map(String::as_str).collect();
                let l_args: Vec<&str> = l_args.iter().map(String::as_str).collect();
                let txns = (CLIENTS * (long - short)) as f64;
                let per = |x: u64, y: u64| (y as f64 - x as f64) / txns;
                // The pair with the median figure: work the process does on its own
                // clocks (a secret's refresh, a SCRAM login to the control store) lands
                // in one run or another, raising a pair's figure (in its long run) or
                // lowering it (in its short run).
                let mut pairs: Vec<(f64, Counts, Counts, PathBuf)> = Vec::new();
                for _ in 0..repeat {
                    let (a, _) = measured(pid, &out_dir, &t, &s_args);
                    let (b, long_file) = measured(pid, &out_dir, &t, &l_args);
                    pairs.push((per(a.instructions, b.instructions), a, b, long_file));
                }
                let all: Vec<String> = pairs.iter().map(|p| format!("{:.0}", p.0)).collect();
                pairs.sort_by(|x, y| x.0.total_cmp(&y.0));
                let (ir, a, b, long_file) = pairs.swap_remove((pairs.len() - 1) / 2);
                let fixed = a.instructions as f64 - ir * (CLIENTS * short) as f64;
                let kept = out_dir.join(format!("{label}.callgrind"));
                std::fs::copy(&long_file, &kept).unwrap();
                println!(
                    "| {mode} | {leg} | {protocol} | {ir:.0} | {} | {:.2} | {:.2} | {fixed:.0} |",
                    all.join(" / "),
                    per(a.allocations, b.allocations),
                    per(a.frees, b.frees),
                );
            }
        }
    }
    println!();
    if std::env::var("SLUICE_CALLGRIND_KEEP").is_ok_and(|v| v == "1") {
        let kept = dir.keep();
        println!(
            "callgrind: dumps of the -t {long} runs kept as {}/callgrind/<mode>-<leg>-<protocol>.callgrind \
             (callgrind_annotate --inclusive=yes FILE)",
            kept.display()
        );
    }
    drop(sluice);
}
