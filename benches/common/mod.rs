//! What the macro benchmarks share: run length, the CPU time a process has used, and
//! reading pgbench's summary. Each bench target includes this with `mod common;`, and
//! not every bench uses every item.
#![allow(dead_code)]

use std::process::Command;

/// Seconds per pgbench run: `SLUICE_BENCH_SECONDS`, default 10.
pub fn seconds() -> String {
    std::env::var("SLUICE_BENCH_SECONDS").unwrap_or_else(|_| "10".into())
}

/// Clock ticks per second for /proc/PID/stat times (`getconf CLK_TCK`).
pub fn clock_ticks_per_second() -> f64 {
    Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8_lossy(&o.stdout).trim().parse().ok())
        .unwrap_or(100.0)
}

/// utime + stime (fields 14 and 15 of /proc/PID/stat) of `pid`, in clock ticks.
pub fn cpu_ticks(pid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .unwrap_or_else(|e| panic!("reading /proc/{pid}/stat: {e}"));
    // The command name (field 2) may contain spaces: count from after its ')'.
    let rest = &stat[stat.rfind(')').expect("stat format") + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // `rest` starts at field 3, so field N is fields[N - 3].
    let utime: u64 = fields[14 - 3].parse().expect("utime");
    let stime: u64 = fields[15 - 3].parse().expect("stime");
    utime + stime
}

/// The first word after `prefix` on a line of pgbench's summary, parsed.
pub fn field<T: std::str::FromStr>(stdout: &str, prefix: &str) -> Option<T> {
    stdout
        .lines()
        .find_map(|l| l.trim().strip_prefix(prefix))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
}
