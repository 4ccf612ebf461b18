//! The tables the bench prints: per phase, and B second by second in a flood.

use super::*;

pub(crate) fn fmt_us(v: f64) -> String {
    if v.is_finite() {
        format!("{v:.0}")
    } else {
        "n/a".into()
    }
}

pub(crate) fn fmt_errors(r: &BRun) -> String {
    format!(
        "{} / {}{}",
        r.out.failed().unwrap_or(0),
        r.out.aborted(),
        if r.out.success {
            ""
        } else {
            " (pgbench failed)"
        }
    )
}

/// The first quiet phase with B on the same path as `phase`: its baseline.
pub(crate) fn baseline<'p>(phases: &'p [Phase], phase: &Phase) -> &'p BRun {
    &phases
        .iter()
        .find(|p| p.a.is_none() && p.storm.is_none() && p.direct == phase.direct)
        .expect("a quiet phase first")
        .b
}

pub(crate) fn print_table(phases: &[Phase]) {
    let mut head = String::from("| |");
    let mut rule = String::from("|---|");
    for p in phases {
        head.push_str(&format!(" {} |", p.name));
        rule.push_str("---|");
    }
    println!("{head}");
    println!("{rule}");
    let row = |what: &str, cell: &dyn Fn(&Phase) -> String| {
        let cells: Vec<String> = phases.iter().map(cell).collect();
        println!("| {what} | {} |", cells.join(" | "));
    };
    row("B's path", &|p| {
        if p.direct { "direct" } else { "Sluice" }.into()
    });
    // A B figure; under a flood, with its ratio to the quiet phase on the same path.
    let b_row = |what: &str, f: &dyn Fn(&BRun) -> f64| {
        row(what, &|p| {
            if p.a.is_some() || p.storm.is_some() {
                let quiet = baseline(phases, p);
                format!("{} (×{})", fmt_us(f(&p.b)), ratio(f(&p.b), f(quiet)))
            } else {
                fmt_us(f(&p.b))
            }
        });
    };
    b_row("B p50 latency (µs)", &|r| r.p50);
    b_row("B p99 latency (µs)", &|r| r.p99);
    b_row("B max latency (µs)", &|r| r.max);
    b_row("B p99 schedule lag (µs)", &|r| r.lag_p99);
    row("B transactions", &|p| p.b.out.processed().to_string());
    row("B failed txns / aborted clients", &|p| fmt_errors(&p.b));
    row(
        &format!("A TPS: whole run / steady (query_rate {A_QUERY_RATE})"),
        &|p| {
            p.a.as_ref().map_or("—".into(), |a| {
                format!("{:.0} / {:.0}", a.out.tps(), a.steady_tps)
            })
        },
    );
    row("A failed txns / aborted clients", &|p| {
        p.a.as_ref().map_or("—".into(), |a| {
            format!("{} / {}", a.out.failed().unwrap_or(0), a.out.aborted())
        })
    });
    row(
        "storm attempts / admitted / refused 53400 / shed / other",
        &|p| {
            p.storm.as_ref().map_or("—".into(), |s| {
                format!(
                    "{} / {} / {} / {} / {}",
                    s.attempts, s.admitted, s.refused_rate, s.shed, s.other
                )
            })
        },
    );
    row("storm attempts/s (active for)", &|p| {
        p.storm.as_ref().map_or("—".into(), |s| {
            format!(
                "{:.0} ({:.1} s)",
                s.attempts as f64 / s.ended_after,
                s.ended_after
            )
        })
    });
    row(
        "Sluice CPU per storm attempt (µs, all of Sluice's CPU)",
        &|p| {
            p.storm.as_ref().map_or("—".into(), |s| {
                format!(
                    "{:.0}",
                    p.b.cpu.sluice_secs * 1e6 / s.attempts.max(1) as f64
                )
            })
        },
    );
    row("Sluice CPU (cores)", &|p| format!("{:.2}", p.b.cpu.sluice));
    row("storm client CPU (cores)", &|p| {
        format!("{:.2}", p.b.cpu.client)
    });
    row("Postgres CPU, both clusters (cores)", &|p| {
        format!("{:.2}", p.b.cpu.postgres)
    });
    row("pgbench CPU (cores)", &|p| {
        format!("{:.2}", p.b.cpu.pgbench)
    });
    row("machine CPU busy (cores)", &|p| {
        format!("{:.2}", p.b.cpu.machine)
    });
    row("softirq time, machine (cores)", &|p| {
        format!("{:.2}", p.b.cpu.softirq)
    });
    row("ksoftirqd threads (cores)", &|p| {
        format!("{:.2}", p.b.cpu.ksoftirqd)
    });
    row("other processes' CPU (cores)", &|p| {
        format!("{:.2}", p.b.cpu.others)
    });
}

/// B's latency second by second during a flood, next to the storm's attempts.
pub(crate) fn print_timeline(phase: &Phase) {
    println!();
    println!(
        "B second by second during \"{}\" (seconds since the flood started; B started at +0.5):",
        phase.name
    );
    println!();
    println!("| second | storm attempts | B txns | B p50 (µs) | B p99 (µs) | B max (µs) |");
    println!("|---|---|---|---|---|---|");
    let last = phase
        .b_timeline
        .iter()
        .map(|t| t.0)
        .fold(0.0, f64::max)
        .ceil() as usize;
    for second in 0..last {
        let mut lat: Vec<u64> = phase
            .b_timeline
            .iter()
            .filter(|t| t.0 >= second as f64 && t.0 < (second + 1) as f64)
            .map(|t| t.1)
            .collect();
        lat.sort_unstable();
        let attempts = phase
            .storm
            .as_ref()
            .map_or(0, |s| s.per_second.get(second).copied().unwrap_or(0));
        println!(
            "| {second} | {attempts} | {} | {} | {} | {} |",
            lat.len(),
            fmt_us(percentile(&lat, 0.5)),
            fmt_us(percentile(&lat, 0.99)),
            lat.last().map_or("n/a".into(), |v| v.to_string())
        );
    }
}

/// Everything after the phases but the live change: first errors, the phase table and
/// its warnings, Sluice's rejection counts, whether the target was met, the control's
/// ratio, and B second by second in the floods.
pub(crate) fn print_summary(phases: &[Phase], body: &str, log_bytes: u64, secs: u64, cores: f64) {
    for p in phases {
        if let Some(e) = p.b.out.first_error() {
            println!("noisy_neighbour: B in {}: first error: {e}", p.name);
        }
        if let Some(e) = p.a.as_ref().and_then(|a| a.out.first_error()) {
            println!("noisy_neighbour: A in {}: first error: {e}", p.name);
        }
        if let Some(e) = p.storm.as_ref().and_then(|s| s.first_other.as_ref()) {
            println!(
                "noisy_neighbour: storm in {}: first other outcome: {e}",
                p.name
            );
        }
    }
    println!();
    println!(
        "B = globex: `pgbench -n -S -R {B_RATE} -c 4 -j 2 -T {secs} -l`. A = acme (query_rate {A_QUERY_RATE}, \
         connect_rate {A_CONNECT_RATE}), flooded by `pgbench -n -S -c {A_CLIENTS} -j 2 -T {} -P 1` and/or a \
         {}-thread connection storm (≤ {STORM_MAX_ATTEMPTS} attempts, ≤ {} s). Session mode, client \
         TLS with SNI, {cores} cores. (×N) = ratio to the first quiet phase; A steady = median of its \
         per-second rates after the first second (the first has the 2 × rate burst).",
        secs + 3,
        storm_threads(),
        secs + 2
    );
    println!();
    print_table(phases);
    for p in phases.iter().filter(|p| p.b.cpu.others > OTHERS_WARN) {
        println!(
            "noisy_neighbour: WARNING: other processes used {:.2} cores during \"{}\": its figures are disturbed",
            p.b.cpu.others, p.name
        );
    }
    println!();
    println!(
        "rejections counted by Sluice: acme: {}; globex: {}. Sluice log: {:.1} MB (SLUICE_LOG=info, as in production)",
        rejections(body, A),
        rejections(body, B),
        log_bytes as f64 / 1e6
    );
    let (quiet, flood) = (&phases[0].b, &phases[1].b);
    let met = flood.p99 <= 2.0 * quiet.p99 && flood.out.errors() == 0;
    println!(
        "target (B p99 under flood ≤ 2 × quiet, zero errors): {} (p99 {} / {} µs = {}, {} errors)",
        if met { "met" } else { "NOT met" },
        fmt_us(flood.p99),
        fmt_us(quiet.p99),
        ratio(flood.p99, quiet.p99),
        flood.out.errors()
    );
    let control_flood = phases.iter().find(|p| p.direct && p.storm.is_some());
    if let Some(control) = control_flood {
        let control_quiet = baseline(phases, control);
        println!(
            "control, B straight to its Postgres: p99 {} µs quiet, {} µs under the same flood (×{}); \
             under the flood B's p99 through Sluice / straight to Postgres = {}",
            fmt_us(control_quiet.p99),
            fmt_us(control.b.p99),
            ratio(control.b.p99, control_quiet.p99),
            ratio(flood.p99, control.b.p99)
        );
    }
    print_timeline(&phases[1]);
    if let Some(control) = control_flood {
        print_timeline(control);
    }
}
