//! pgbench -S and the pooler's CPU per transaction.

use super::*;

/// One pgbench run and the p99 of its logged transactions.
#[derive(Clone)]
pub(crate) struct Measured {
    pub(crate) run: PgbenchRun,
    pub(crate) p99_ms: f64,
}

/// One line of the pgbench tables: a configuration measured on the three sides.
pub(crate) struct Row {
    pub(crate) mode: Mode,
    pub(crate) leg: Leg,
    pub(crate) protocol: &'static str,
    pub(crate) clients: u32,
    pub(crate) direct: Option<Measured>,
    pub(crate) bouncer: Option<Measured>,
    pub(crate) sluice: Option<Measured>,
}

/// Runs pgbench with a per-transaction log (sampled) and reads the p99 from it.
pub(crate) struct Pgbench<'a> {
    pub(crate) base: &'a Base,
    pub(crate) logs: PathBuf,
    pub(crate) runs: usize,
}

impl Pgbench<'_> {
    pub(crate) fn measure(
        &mut self,
        target: &PgTarget,
        pooler: Option<u32>,
        args: &[String],
    ) -> Measured {
        self.runs += 1;
        let prefix = format!("run{}", self.runs);
        let log_prefix = self.logs.join(&prefix);
        let mut all: Vec<&str> = args.iter().map(String::as_str).collect();
        all.extend([
            "--log",
            "--sampling-rate",
            LOG_SAMPLING,
            "--log-prefix",
            log_prefix.to_str().unwrap(),
        ]);
        let run = run_pgbench(target, &all, pooler, self.base.hz);
        let latencies = logged_latencies_us(&self.logs, &prefix);
        remove_files_starting_with(&self.logs, &prefix);
        Measured {
            run,
            p99_ms: percentile(&latencies, 0.99) / 1000.0,
        }
    }
}

pub(crate) fn remove_files_starting_with(dir: &Path, prefix: &str) {
    for entry in std::fs::read_dir(dir).unwrap().flatten() {
        if entry.file_name().to_string_lossy().starts_with(prefix) {
            let _ = std::fs::remove_file(entry.path());
        }
    }
}

pub(crate) fn select_args(protocol: &str, clients: u32, secs: &str) -> Vec<String> {
    let threads = if clients > 1 { "2" } else { "1" };
    let c = clients.to_string();
    [
        "-n", "-S", "-M", protocol, "-c", &c, "-j", threads, "-T", secs,
    ]
    .map(String::from)
    .to_vec()
}

pub(crate) fn progress(what: &str, side: &str, run: &PgbenchRun, extra: &str) {
    println!(
        "compare: {} UTC {what} {side}: {:.0} TPS, {:.3} ms avg{extra}, {} txns, {} failed, {} clients aborted{}{}",
        utc_time_of_day(),
        run.tps,
        run.latency_ms,
        run.processed,
        run.failed,
        run.aborted_clients,
        run.cpu_us_per_txn
            .map(|c| format!(", pooler {c:.1} µs/txn"))
            .unwrap_or_default(),
        run.first_error
            .as_ref()
            .map(|e| format!(" (first error: {e})"))
            .unwrap_or_default(),
    );
}

/// An unrecorded 2 s run per side, so server connections are open before measuring.
pub(crate) fn warm_up(base: &Base, poolers: &[Pooler]) {
    let args = select_args("simple", 64, "2");
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let direct = base.target(Side::Direct, base.direct_addr(), Leg::Tls);
    run_pgbench(&direct, &args, None, base.hz);
    for p in poolers {
        run_pgbench(&base.target(p.side, p.addr, Leg::Tls), &args, None, base.hz);
    }
}

pub(crate) fn find(poolers: &[Pooler], side: Side, mode: Mode) -> Option<&Pooler> {
    poolers.iter().find(|p| p.side == side && p.mode == mode)
}

pub(crate) fn pgbench_rows(base: &Base, poolers: &[Pooler], knobs: &Knobs) -> Vec<Row> {
    let clients: &[u32] = if knobs.has("pgbench") {
        &CLIENTS
    } else {
        &CPU_ONLY_CLIENTS
    };
    let logs = base.dir.path().join("pgbench-logs");
    std::fs::create_dir_all(&logs).unwrap();
    let mut bench = Pgbench {
        base,
        logs,
        runs: 0,
    };
    let mut rows = Vec::new();
    for leg in LEGS {
        for protocol in PROTOCOLS {
            for &c in clients {
                let args = select_args(protocol, c, &knobs.secs);
                let what = format!("{} -M {protocol} -c {c}", leg.name());
                let target = base.target(Side::Direct, base.direct_addr(), leg);
                let direct = bench.measure(&target, None, &args);
                let p99 = |m: &Measured| format!(", {:.3} ms p99", m.p99_ms);
                progress(&what, "direct", &direct.run, &p99(&direct));
                for mode in MODES {
                    let mut on = |side: Side, name: &str| {
                        let p = find(poolers, side, mode)?;
                        let m = bench.measure(&base.target(side, p.addr, leg), Some(p.pid), &args);
                        progress(&what, &format!("{} {name}", mode.name()), &m.run, &p99(&m));
                        Some(m)
                    };
                    let bouncer = on(Side::PgBouncer, "PgBouncer");
                    let sluice = on(Side::Sluice, "Sluice");
                    rows.push(Row {
                        mode,
                        leg,
                        protocol,
                        clients: c,
                        direct: Some(direct.clone()),
                        bouncer,
                        sluice,
                    });
                }
            }
        }
    }
    rows
}

/// A measurement if it exists and every client finished.
pub(crate) fn usable(m: &Option<Measured>) -> Option<&Measured> {
    m.as_ref().filter(|m| m.run.usable())
}

/// A figure of a usable measurement, NaN otherwise.
pub(crate) fn value(m: &Option<Measured>, f: impl Fn(&Measured) -> f64) -> f64 {
    usable(m).map_or(f64::NAN, f)
}

pub(crate) fn tps_cell(m: &Option<Measured>) -> String {
    match m {
        None => "skipped".into(),
        Some(m) if !m.run.usable() => format!("failed ({} aborted)", m.run.aborted_clients),
        Some(m) => format!("{:.0}", m.run.tps),
    }
}

/// `a / b / c` with `decimals`, `–` where a side is missing or failed.
pub(crate) fn joined(
    ms: &[&Option<Measured>],
    decimals: usize,
    f: impl Fn(&Measured) -> f64,
) -> String {
    ms.iter()
        .map(|m| match usable(m) {
            Some(m) => format!("{:.*}", decimals, f(m)),
            None => "–".into(),
        })
        .collect::<Vec<_>>()
        .join(" / ")
}

/// Lines naming the first error of every failed run.
pub(crate) fn failures(rows: &[Row], out: &mut String) {
    for r in rows {
        for (name, m) in [("PgBouncer", &r.bouncer), ("Sluice", &r.sluice)] {
            if let Some(m) = m.as_ref().filter(|m| !m.run.usable()) {
                let _ = writeln!(
                    out,
                    "- {name}, {} mode, {} -M {} -c {}: {} of {} clients aborted: {}",
                    r.mode.name(),
                    r.leg.name(),
                    r.protocol,
                    r.clients,
                    m.run.aborted_clients,
                    r.clients,
                    m.run.first_error.as_deref().unwrap_or("?")
                );
            }
        }
    }
}

pub(crate) fn pgbench_table(rows: &[Row], secs: &str, out: &mut String) {
    let _ = writeln!(
        out,
        "### pgbench -n -S -T {secs} (-j 2 from -c 16)\n\n\
         Latency cells are direct / PgBouncer / Sluice, in ms; p99 from a {}% sample of \
         pgbench's per-transaction log. Direct Postgres has no pooling mode: its runs are \
         shown in both mode rows.\n",
        (LOG_SAMPLING.parse::<f64>().unwrap() * 100.0).round()
    );
    let _ = writeln!(
        out,
        "| mode | client leg | -M | -c | TPS direct | TPS PgBouncer | TPS Sluice | TPS Sluice/PgBouncer | TPS Sluice/direct | avg latency | p99 latency | p99 Sluice/PgBouncer | p99 Sluice/direct |\n\
         |---|---|---|---|---|---|---|---|---|---|---|---|---|"
    );
    for r in rows {
        let tps = |m: &Measured| m.run.tps;
        let p99 = |m: &Measured| m.p99_ms;
        let all = [&r.direct, &r.bouncer, &r.sluice];
        let _ = writeln!(
            out,
            "| {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} |",
            r.mode.name(),
            r.leg.name(),
            r.protocol,
            r.clients,
            tps_cell(&r.direct),
            tps_cell(&r.bouncer),
            tps_cell(&r.sluice),
            ratio(value(&r.sluice, tps), value(&r.bouncer, tps)),
            ratio(value(&r.sluice, tps), value(&r.direct, tps)),
            joined(&all, 3, |m| m.run.latency_ms),
            joined(&all, 3, p99),
            ratio(value(&r.sluice, p99), value(&r.bouncer, p99)),
            ratio(value(&r.sluice, p99), value(&r.direct, p99)),
        );
    }
    let _ = writeln!(out);
    failures(rows, out);
}

pub(crate) fn cpu_table(rows: &[Row], out: &mut String) {
    let _ = writeln!(
        out,
        "\n### Pooler CPU per transaction (µs, utime+stime of the pooler's pid over the pgbench run ÷ transactions)\n\n\
         user / system: the same time split into utime and stime; switches: the pooler's context \
         switches (all threads, voluntary + involuntary) per transaction. The last column is \
         Sluice's system time alone over PgBouncer's whole CPU time: the kernel's share of the \
         work (the same four socket calls per transaction in both) that no user-space change \
         removes.\n\n\
         | mode | client leg | -M | -c | PgBouncer | Sluice | Sluice/PgBouncer | user / system PgBouncer | user / system Sluice | switches PgBouncer / Sluice | Sluice system / PgBouncer total |\n\
         |---|---|---|---|---|---|---|---|---|---|---|"
    );
    for r in rows {
        let cpu = |m: &Measured| m.run.cpu_us_per_txn.unwrap_or(f64::NAN);
        let system = |m: &Measured| m.run.cpu_split_us_per_txn.map_or(f64::NAN, |s| s.1);
        // A usable measurement's figure, else a dash.
        let show = |m: &Option<Measured>, f: &dyn Fn(&Measured) -> Option<String>| {
            usable(m).and_then(f).unwrap_or_else(|| "–".into())
        };
        let cell = |m: &Option<Measured>| show(m, &|m| Some(format!("{:.1}", cpu(m))));
        let split = |m: &Option<Measured>| {
            show(m, &|m| {
                let (user, system) = m.run.cpu_split_us_per_txn?;
                Some(format!("{user:.1} / {system:.1}"))
            })
        };
        let switches =
            |m: &Option<Measured>| show(m, &|m| m.run.switches_per_txn.map(|n| format!("{n:.2}")));
        let _ = writeln!(
            out,
            "| {} | {} | {} | {} | {} | {} | {} | {} | {} | {} / {} | {} |",
            r.mode.name(),
            r.leg.name(),
            r.protocol,
            r.clients,
            cell(&r.bouncer),
            cell(&r.sluice),
            ratio(value(&r.sluice, cpu), value(&r.bouncer, cpu)),
            split(&r.bouncer),
            split(&r.sluice),
            switches(&r.bouncer),
            switches(&r.sluice),
            ratio(value(&r.sluice, system), value(&r.bouncer, cpu)),
        );
    }
}
