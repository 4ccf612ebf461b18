//! Running pgbench for a measurement and reading what it reports: its summary
//! ([`run_pgbench`], with the CPU time a pooler spent meanwhile), its `--log`
//! per-transaction files ([`logged_latencies_us`], [`percentile`]), and a run in the
//! background while something else happens ([`Pgbench`], killed by pid if dropped
//! before it finished). A plain run, its output unparsed, is `testkit::pgbench`
//! ([`crate::clients::pgbench`]).

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use crate::clients::PgTarget;
use crate::procfs::{context_switches, cpu_ticks_split, field};

/// What one pgbench run reported.
#[derive(Debug, Default, Clone)]
pub struct PgbenchRun {
    pub tps: f64,
    pub latency_ms: f64,
    pub processed: u64,
    pub failed: u64,
    pub aborted_clients: usize,
    /// The first client error if a client aborted, or why pgbench produced nothing.
    pub first_error: Option<String>,
    /// Pooler CPU µs per processed transaction (None without a pooler).
    pub cpu_us_per_txn: Option<f64>,
    /// The same split: (user, system) µs per processed transaction.
    pub cpu_split_us_per_txn: Option<(f64, f64)>,
    /// The pooler's context switches (all threads) per processed transaction.
    pub switches_per_txn: Option<f64>,
    pub stdout: String,
}

impl PgbenchRun {
    /// Every client ran to the end and something was processed.
    pub fn usable(&self) -> bool {
        self.aborted_clients == 0 && self.processed > 0
    }
}

/// Runs `pgbench args... target`; `pooler` is the pid whose CPU time (utime+stime
/// around the run) is charged per processed transaction, `hz` the clock ticks per
/// second ([`crate::procfs::clock_ticks_per_second`]). Never panics on pgbench's own
/// failures: they are in `aborted_clients` and `first_error`.
pub fn run_pgbench(target: &PgTarget, args: &[&str], pooler: Option<u32>, hz: f64) -> PgbenchRun {
    let before = pooler.map(|pid| (cpu_ticks_split(pid), context_switches(pid)));
    let out = crate::clients::pgbench(target, args);
    let after = pooler.map(|pid| (cpu_ticks_split(pid), context_switches(pid)));
    let (stdout, stderr) = (out.stdout, out.stderr);
    let aborted: Vec<&str> = stderr
        .lines()
        .filter(|l| l.contains("aborted in command"))
        .collect();
    let processed = field(&stdout, "number of transactions actually processed:").unwrap_or(0);
    let first_error = match aborted.first() {
        Some(l) => Some(l.find("ERROR:").map_or(*l, |at| &l[at..])),
        None if processed == 0 => Some(stderr.lines().last().unwrap_or("no output")),
        None => None,
    }
    .map(|e| e.split_whitespace().collect::<Vec<_>>().join(" "));
    let per_txn = |ticks: u64| ticks as f64 / hz * 1e6 / processed as f64;
    let (cpu_split_us_per_txn, switches_per_txn) = match (before, after) {
        (Some(((bu, bs), bw)), Some(((au, as_), aw))) if processed > 0 => (
            Some((per_txn(au - bu), per_txn(as_ - bs))),
            Some(aw.saturating_sub(bw) as f64 / processed as f64),
        ),
        _ => (None, None),
    };
    let cpu_us_per_txn = cpu_split_us_per_txn.map(|(user, system)| user + system);
    PgbenchRun {
        tps: field(&stdout, "tps =").unwrap_or(0.0),
        latency_ms: field(&stdout, "latency average =").unwrap_or(f64::NAN),
        processed,
        failed: field(&stdout, "number of failed transactions:").unwrap_or(0),
        aborted_clients: aborted.len(),
        first_error,
        cpu_us_per_txn,
        cpu_split_us_per_txn,
        switches_per_txn,
        stdout,
    }
}

/// pgbench's `--log` files in `dir` whose names start with `prefix` (one per pgbench
/// thread).
pub fn pgbench_logs(dir: &Path, prefix: &str) -> Vec<PathBuf> {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|entry| entry.unwrap().path())
        .filter(|path| {
            path.file_name()
                .is_some_and(|name| name.to_string_lossy().starts_with(prefix))
        })
        .collect()
}

/// Per-transaction latencies in µs, sorted, from pgbench's `--log` files whose names
/// start with `prefix` in `dir` (one per pgbench thread).
pub fn logged_latencies_us(dir: &Path, prefix: &str) -> Vec<u64> {
    let mut latencies: Vec<u64> = Vec::new();
    for path in pgbench_logs(dir, prefix) {
        for line in std::fs::read_to_string(&path).unwrap().lines() {
            // client_id transaction_no time script_no time_epoch time_us
            if let Some(us) = line.split_whitespace().nth(2).and_then(|v| v.parse().ok()) {
                latencies.push(us);
            }
        }
    }
    latencies.sort_unstable();
    latencies
}

/// The `q` quantile (0..=1) of sorted values, nearest rank below; NaN when empty.
pub fn percentile(sorted: &[u64], q: f64) -> f64 {
    match sorted.len() {
        0 => f64::NAN,
        n => sorted[((n - 1) as f64 * q) as usize] as f64,
    }
}

/// A pgbench process in the background, writing its output to files; killed by pid if
/// dropped before it finished.
pub struct Pgbench {
    child: Option<Child>,
    stdout: PathBuf,
    stderr: PathBuf,
}

/// What a finished background pgbench printed.
#[derive(Debug, Clone)]
pub struct Output {
    pub success: bool,
    pub stdout: String,
    pub stderr: String,
}

impl Pgbench {
    /// Starts `pgbench args... target`, its output in `dir/label.stdout` and
    /// `dir/label.stderr`.
    pub fn start(target: &PgTarget, args: &[&str], dir: &Path, label: &str) -> Self {
        Self::start_on(None, target, args, dir, label)
    }

    /// `start`, confined to `cpu` when given (`taskset -c`).
    pub fn start_on(
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
    pub fn finish(mut self) -> Output {
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
    pub fn tps(&self) -> f64 {
        field(&self.stdout, "tps =").unwrap_or(0.0)
    }

    pub fn processed(&self) -> u64 {
        field(&self.stdout, "number of transactions actually processed:").unwrap_or(0)
    }

    /// Failed transactions; `None` when pgbench printed no such line.
    pub fn failed(&self) -> Option<u64> {
        field(&self.stdout, "number of failed transactions:")
    }

    /// Lines of stderr about an aborted client (or the aborted run).
    pub fn aborted(&self) -> usize {
        self.stderr
            .lines()
            .filter(|l| l.contains("aborted"))
            .count()
    }

    /// Errors of any kind: failed transactions, aborted clients, or a failed run.
    pub fn errors(&self) -> u64 {
        self.failed().unwrap_or(0)
            + self.aborted() as u64
            + u64::from(!self.success && self.aborted() == 0)
    }

    /// The first line of stderr with an error, a FATAL or an abort, its white space
    /// folded.
    pub fn first_error(&self) -> Option<String> {
        self.stderr
            .lines()
            .find(|l| l.contains("error") || l.contains("FATAL") || l.contains("aborted"))
            .map(|l| l.split_whitespace().collect::<Vec<_>>().join(" "))
    }
}
