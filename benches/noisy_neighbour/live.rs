//! The live change: A alone at full speed, its `query_rate` lowered with
//! `PATCH /v1/tenants/acme` about 3 s in; pgbench's per-second progress around the
//! PATCH, and A's completed transactions per 250 ms bucket from its log.

use super::*;

/// A's run in the live change.
pub(crate) struct Live {
    pub(crate) out: Output,
    /// When the PATCH was answered, in seconds since the epoch.
    pub(crate) patched_at: f64,
    /// Where A's per-transaction log is.
    pub(crate) logs: PathBuf,
}

/// Runs the live change; A's `query_rate` is left lowered.
pub(crate) fn live_change(ctx: &Ctx) -> Live {
    println!(
        "noisy_neighbour: live: A's query_rate {A_QUERY_RATE} -> {A_QUERY_RATE_LOWERED} after ~3 s"
    );
    let live_logs = ctx.work.join("live");
    std::fs::create_dir_all(&live_logs).unwrap();
    let live_prefix = live_logs.join("pgbench_log");
    let live_secs = LIVE_SECONDS.to_string();
    let live = Pgbench::start(
        &ctx.a,
        &[
            "-n",
            "-S",
            "-c",
            "16",
            "-j",
            "2",
            "-T",
            &live_secs,
            "-P",
            "1",
            "--progress-timestamp",
            "-l",
            "--log-prefix",
            live_prefix.to_str().unwrap(),
        ],
        &ctx.work,
        "live-a",
    );
    wait_for_clients(ctx.sluice, A, A_CLIENTS);
    std::thread::sleep(LIVE_PATCH_AFTER);
    patch_query_rate(ctx.sluice, A_QUERY_RATE_LOWERED);
    let patched_at = epoch_now();
    let live_out = live.finish();
    Live {
        out: live_out,
        patched_at,
        logs: live_logs,
    }
}

/// The live change's tables: progress around the PATCH, and the 250 ms buckets.
pub(crate) fn print_live(live: &Live) {
    println!();
    println!(
        "Live change: `pgbench -n -S -c {A_CLIENTS} -j 2 -T {LIVE_SECONDS} -P 1 --progress-timestamp -l` on A, \
         `PATCH /v1/tenants/acme {{\"limits\": {{\"query_rate\": {A_QUERY_RATE_LOWERED}}}}}` about {} s in \
         (failed {}, aborted {})",
        LIVE_PATCH_AFTER.as_secs(),
        live.out.failed().unwrap_or(0),
        live.out.aborted()
    );
    println!();
    println!("| progress interval (s after the PATCH) | A TPS |");
    println!("|---|---|");
    for (ts, tps) in progress(&live.out.stderr) {
        let end = ts - live.patched_at;
        println!("| {:+.1} … {:+.1} | {tps:.0} |", end - 1.0, end);
    }
    // Buckets of completed transactions from the log, from 1 s before the PATCH.
    let rows = read_log(&live.logs);
    let width = BUCKET_MS as f64 / 1000.0;
    let buckets: Vec<(f64, f64)> = (-4..12)
        .map(|i| {
            let from = live.patched_at + f64::from(i) * width;
            let n = rows
                .iter()
                .filter(|r| r.2 >= from && r.2 < from + width)
                .count();
            (f64::from(i) * width, n as f64 / width)
        })
        .collect();
    println!();
    println!(
        "A's completed transactions per {BUCKET_MS} ms around the PATCH, as a rate per second: {}",
        buckets
            .iter()
            .map(|(t, r)| format!("{t:+.2} s: {r:.0}"))
            .collect::<Vec<_>>()
            .join(", ")
    );
    let limit = 1.2 * f64::from(A_QUERY_RATE_LOWERED);
    let first = buckets.iter().position(|(t, _)| *t >= 0.0).unwrap_or(0);
    let settled = (first..buckets.len())
        .find(|&i| buckets[i..].iter().all(|(_, r)| *r <= limit))
        .map(|i| buckets[i].0);
    match settled {
        Some(t) => println!(
            "every {BUCKET_MS} ms bucket from {t:+.2} s after the PATCH on ran at ≤ {limit:.0}/s (1.2 × the new rate)"
        ),
        None => println!("A's rate did not settle at ≤ {limit:.0}/s within the buckets shown"),
    }
}
