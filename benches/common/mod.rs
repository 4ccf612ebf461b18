//! What the macro benchmarks share in how they run and print: the run length
//! (`SLUICE_BENCH_SECONDS`), ratios and the time of day. What they start and measure is
//! testkit's (`SluiceProcess`, and the `pgbench`, `procfs`, `pgbouncer` and `idle`
//! modules). Each bench target includes this with `mod common;` (a module shared by
//! bench targets has to be a `mod.rs`), and not every bench uses every item.
#![allow(dead_code)]

/// Seconds per pgbench run: `SLUICE_BENCH_SECONDS`, default 10.
pub fn seconds() -> String {
    std::env::var("SLUICE_BENCH_SECONDS").unwrap_or_else(|_| "10".into())
}

/// `a / b` with two decimals, `n/a` when either side is missing.
pub fn ratio(a: f64, b: f64) -> String {
    if a.is_finite() && b.is_finite() && b > 0.0 {
        format!("{:.2}", a / b)
    } else {
        "n/a".into()
    }
}

/// HH:MM:SS (UTC) now, to line runs up with whatever else ran on the machine.
pub fn utc_time_of_day() -> String {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
        % 86_400;
    format!("{:02}:{:02}:{:02}", secs / 3600, secs / 60 % 60, secs % 60)
}

/// The `p` quantile (0 < p ≤ 1) of `sorted`, by nearest rank.
pub fn percentile(sorted: &[std::time::Duration], p: f64) -> std::time::Duration {
    let rank = ((p * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
    sorted[rank - 1]
}

/// Why the lxc driver cannot run here, if it cannot (root, lxc, mmdebstrap, uidmap).
pub fn lxc_missing() -> Option<String> {
    if !nix::unistd::geteuid().is_root() {
        return Some("not root".into());
    }
    ["lxc-start", "mmdebstrap", "newuidmap"]
        .iter()
        .find(|c| {
            !std::process::Command::new("sh")
                .args(["-c", &format!("command -v {c}")])
                .stdout(std::process::Stdio::null())
                .status()
                .is_ok_and(|s| s.success())
        })
        .map(|c| format!("{c} is not installed"))
}

/// The lxc template the tests build and cache (`SLUICE_TEST_LXC_TEMPLATE`).
pub fn lxc_template() -> std::path::PathBuf {
    std::env::var_os("SLUICE_TEST_LXC_TEMPLATE")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| std::path::PathBuf::from("/var/tmp/sluice-test-lxc/template"))
}
