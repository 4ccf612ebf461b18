//! The pgbench runs: A's flood and B's fixed-rate run with its per-transaction log.

use super::*;

/// A pgbench process writing to files; killed by pid if dropped before it finished.
pub(crate) struct Pgbench {
    pub(crate) child: Option<Child>,
    pub(crate) stdout: PathBuf,
    pub(crate) stderr: PathBuf,
}

/// What a finished pgbench run printed.
#[derive(Debug, Clone)]
pub(crate) struct Output {
    pub(crate) success: bool,
    pub(crate) stdout: String,
    pub(crate) stderr: String,
}

impl Pgbench {
    pub(crate) fn start(target: &PgTarget, args: &[&str], dir: &Path, label: &str) -> Self {
        Self::start_on(None, target, args, dir, label)
    }

    /// `start`, confined to `cpu` when given (`taskset -c`).
    pub(crate) fn start_on(
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
    pub(crate) fn finish(mut self) -> Output {
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
    pub(crate) fn tps(&self) -> f64 {
        field(&self.stdout, "tps =").unwrap_or(0.0)
    }
    pub(crate) fn processed(&self) -> u64 {
        field(&self.stdout, "number of transactions actually processed:").unwrap_or(0)
    }
    pub(crate) fn failed(&self) -> u64 {
        field(&self.stdout, "number of failed transactions:").unwrap_or(0)
    }
    pub(crate) fn aborted(&self) -> usize {
        self.stderr
            .lines()
            .filter(|l| l.contains("aborted"))
            .count()
    }
    /// Errors of any kind: failed transactions, aborted clients, or a failed run.
    pub(crate) fn errors(&self) -> u64 {
        self.failed() + self.aborted() as u64 + u64::from(!self.success && self.aborted() == 0)
    }
    pub(crate) fn first_error(&self) -> Option<String> {
        self.stderr
            .lines()
            .find(|l| l.contains("error") || l.contains("FATAL") || l.contains("aborted"))
            .map(|l| l.split_whitespace().collect::<Vec<_>>().join(" "))
    }
}

/// Per-transaction latencies and schedule lags (µs) from the `-l` files under `dir`.
/// Log line: client_id transaction_no time script_no time_epoch time_us [schedule_lag].
pub(crate) fn read_log(dir: &Path) -> Vec<(u64, u64, f64)> {
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

pub(crate) fn percentile(sorted: &[u64], q: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    sorted[((sorted.len() - 1) as f64 * q).round() as usize] as f64
}

/// One run of B.
#[derive(Debug, Clone)]
pub(crate) struct BRun {
    pub(crate) out: Output,
    pub(crate) p50: f64,
    pub(crate) p99: f64,
    pub(crate) max: f64,
    pub(crate) lag_p99: f64,
    pub(crate) cpu: Cpu,
}

pub(crate) fn run_b(
    target: &PgTarget,
    secs: u64,
    dir: &Path,
    label: &str,
) -> (Output, Vec<u64>, Vec<u64>) {
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

pub(crate) fn b_run(out: Output, lat: Vec<u64>, lag: Vec<u64>, cpu: Cpu) -> BRun {
    BRun {
        p50: percentile(&lat, 0.50),
        p99: percentile(&lat, 0.99),
        max: lat.last().map_or(f64::NAN, |&v| v as f64),
        lag_p99: percentile(&lag, 0.99),
        out,
        cpu,
    }
}
