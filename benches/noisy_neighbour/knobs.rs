//! The bench's knobs, from the environment: the run length, the CPUs A's flood and B's
//! pgbench are confined to, the storm's rate and threads, and the control phases.

/// Seconds per B run: `$SLUICE_BENCH_SECONDS`, default 10.
pub(crate) fn seconds() -> u64 {
    std::env::var("SLUICE_BENCH_SECONDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(10)
}

/// `$SLUICE_BENCH_FLOOD_CPU`: the one CPU A's flood (its pgbench and the storm's
/// threads) is confined to, as if A's clients ran on a machine of their own with one
/// core; unset, the flood may use every CPU, like everything else.
pub(crate) fn flood_cpu() -> Option<usize> {
    std::env::var("SLUICE_BENCH_FLOOD_CPU")
        .ok()
        .and_then(|s| s.parse().ok())
}

/// `$SLUICE_BENCH_B_CPU`: the same for B's pgbench (in every phase).
pub(crate) fn b_cpu() -> Option<usize> {
    std::env::var("SLUICE_BENCH_B_CPU")
        .ok()
        .and_then(|s| s.parse().ok())
}

/// `$SLUICE_BENCH_STORM_RATE`: the storm's attempts per second over all its threads;
/// unset or 0, as fast as they go.
pub(crate) fn storm_rate() -> Option<f64> {
    std::env::var("SLUICE_BENCH_STORM_RATE")
        .ok()
        .and_then(|s| s.parse::<f64>().ok())
        .filter(|&r| r > 0.0)
}

/// Whether to run the control phases (B straight to its Postgres); `$SLUICE_BENCH_CONTROL=0`
/// leaves them out.
pub(crate) fn control() -> bool {
    std::env::var("SLUICE_BENCH_CONTROL").map_or(true, |v| v != "0")
}

/// Threads of the connection storm: `$SLUICE_BENCH_STORM_THREADS`, default 8 (fewer
/// leave the machine CPU to spare, to tell CPU saturation from contention in Sluice).
pub(crate) fn storm_threads() -> usize {
    std::env::var("SLUICE_BENCH_STORM_THREADS")
        .ok()
        .and_then(|s| s.parse().ok())
        .filter(|&n| n > 0)
        .unwrap_or(8)
}
