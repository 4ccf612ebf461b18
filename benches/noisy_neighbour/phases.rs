//! The measured phases: B alone, or B while A is flooded by its pgbench and/or the
//! connection storm; B through Sluice or straight to its own Postgres (the control).

use super::*;

/// `(end of interval, tps)` of each `progress:` line of a `-P 1` run.
pub(crate) fn progress(stderr: &str) -> Vec<(f64, f64)> {
    stderr
        .lines()
        .filter_map(|line| {
            let (ts, rest) = line.strip_prefix("progress: ")?.split_once(" s, ")?;
            let tps = rest.split_whitespace().next()?.parse().ok()?;
            Some((ts.parse().ok()?, tps))
        })
        .collect()
}

pub(crate) fn median(mut v: Vec<f64>) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// A's pgbench during a flood.
pub(crate) struct ARun {
    pub(crate) out: Output,
    /// Median of the per-second rates after the first second (the burst).
    pub(crate) steady_tps: f64,
}

/// One phase: B's run, and whatever flooded A meanwhile.
pub(crate) struct Phase {
    pub(crate) name: &'static str,
    /// B's pgbench went straight to its Postgres (a control phase), not through Sluice.
    pub(crate) direct: bool,
    pub(crate) b: BRun,
    pub(crate) a: Option<ARun>,
    pub(crate) storm: Option<StormCounts>,
    /// B's transactions: (end time in seconds since the storm started, latency µs).
    pub(crate) b_timeline: Vec<(f64, u64)>,
}

/// What every phase needs: Sluice, the clusters, A's and B's targets, where the logs go,
/// the run length and the clock rate.
pub(crate) struct Ctx<'a> {
    pub(crate) sluice: &'a SluiceProcess,
    /// Both clusters' postmasters.
    pub(crate) postmasters: Vec<u32>,
    pub(crate) a: PgTarget,
    pub(crate) b: PgTarget,
    /// B's own Postgres, not through Sluice (the control phases).
    pub(crate) b_direct: PgTarget,
    pub(crate) work: PathBuf,
    pub(crate) secs: u64,
    pub(crate) hz: f64,
}

impl Ctx<'_> {
    fn b_target(&self, direct: bool) -> &PgTarget {
        if direct {
            &self.b_direct
        } else {
            &self.b
        }
    }
}

/// B alone, through Sluice or (`direct`) straight to its Postgres.
pub(crate) fn quiet_phase(ctx: &Ctx, name: &'static str, label: &str, direct: bool) -> Phase {
    println!("noisy_neighbour: {name}: B alone, {} s", ctx.secs);
    let meter = CpuMeter::start(ctx);
    let (out, lat, lag) = run_b(ctx.b_target(direct), ctx.secs, &ctx.work, label);
    Phase {
        name,
        direct,
        b: b_run(out, lat, lag, meter.stop()),
        a: None,
        storm: None,
        b_timeline: Vec::new(),
    }
}

/// What floods A in a phase.
#[derive(Clone, Copy)]
pub(crate) struct Flood {
    pub(crate) pgbench: bool,
    pub(crate) storm: bool,
}

pub(crate) const FLOOD: Flood = Flood {
    pgbench: true,
    storm: true,
};

/// B (through Sluice, or `direct`) while A is flooded by its pgbench and/or the
/// connection storm. Both floods start before B's run and last past its end.
pub(crate) fn flood_phase(
    ctx: &Ctx,
    name: &'static str,
    label: &str,
    Flood { pgbench, storm }: Flood,
    direct: bool,
) -> Phase {
    println!("noisy_neighbour: {name}: B with A flooded, {} s", ctx.secs);
    let meter = CpuMeter::start(ctx);
    let a_secs = (ctx.secs + 3).to_string();
    let clients = A_CLIENTS.to_string();
    let a_run = pgbench.then(|| {
        let run = Pgbench::start_on(
            flood_cpu(),
            &ctx.a,
            &[
                "-n", "-S", "-c", &clients, "-j", "2", "-T", &a_secs, "-P", "1",
            ],
            &ctx.work,
            &format!("{label}-a"),
        );
        if !wait_for_clients(ctx.sluice, A, A_CLIENTS) {
            println!("noisy_neighbour: A's pgbench did not get {A_CLIENTS} clients in within 15 s");
        }
        run
    });
    let started_at = epoch_now();
    let storm = storm.then(|| Storm::start(&ctx.a, Duration::from_secs(ctx.secs + 2)));
    let base = storm.as_ref().map_or(started_at, |s| s.started_at);
    std::thread::sleep(Duration::from_millis(500));
    let (out, lat, lag) = run_b(ctx.b_target(direct), ctx.secs, &ctx.work, label);
    let storm = storm.map(Storm::finish);
    let a = a_run.map(|run| {
        let out = run.finish();
        let rates: Vec<f64> = progress(&out.stderr).iter().skip(1).map(|p| p.1).collect();
        ARun {
            steady_tps: median(rates),
            out,
        }
    });
    let b_timeline = read_log(&ctx.work.join(label))
        .into_iter()
        .map(|(latency, _, at)| (at - base, latency))
        .collect();
    Phase {
        name,
        direct,
        b: b_run(out, lat, lag, meter.stop()),
        a,
        storm,
        b_timeline,
    }
}
