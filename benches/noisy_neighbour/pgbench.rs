//! B's fixed-rate pgbench runs and what their per-transaction logs say (the runs
//! themselves are testkit's background [`Pgbench`]).

use super::*;

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

/// The `q` quantile of sorted values, the nearest rank rounded (testkit's
/// `pgbench::percentile` takes the rank below; this bench's figures have always been
/// rounded); NaN when empty.
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
