//! Connect storm: pgbench -C.

use super::*;

pub(crate) fn storm_table(base: &Base, poolers: &[Pooler], secs: &str, out: &mut String) {
    let args = ["-n", "-C", "-S", "-c", STORM_CLIENTS, "-j", "2", "-T", secs];
    let _ = writeln!(
        out,
        "\n### Connect storm: pgbench {} (a SCRAM login per transaction)\n\n\
         Connection cells are direct / PgBouncer / Sluice, pgbench's average connection time in ms; \
         pooler CPU per connection in µs.\n\n\
         | mode | client leg | TPS direct | TPS PgBouncer | TPS Sluice | TPS Sluice/PgBouncer | TPS Sluice/direct | avg connection | pooler CPU PgBouncer / Sluice | CPU Sluice/PgBouncer |\n\
         |---|---|---|---|---|---|---|---|---|---|",
        args.join(" ")
    );
    let mut rows = Vec::new();
    for leg in LEGS {
        let measure = |side: Side, addr: SocketAddr, pid: Option<u32>, label: &str| {
            let run = run_pgbench(&base.target(side, addr, leg), &args, pid, base.hz);
            let conn_ms: f64 = field(&run.stdout, "average connection time =").unwrap_or(f64::NAN);
            progress(
                &format!("storm {}", leg.name()),
                label,
                &run,
                &format!(", {conn_ms:.3} ms per connection"),
            );
            Some(Measured {
                run,
                p99_ms: conn_ms,
            })
        };
        let direct = measure(Side::Direct, base.direct_addr(), None, "direct");
        for mode in MODES {
            let on = |side: Side, name: &str| {
                let p = find(poolers, side, mode)?;
                measure(
                    side,
                    p.addr,
                    Some(p.pid),
                    &format!("{} {name}", mode.name()),
                )
            };
            let bouncer = on(Side::PgBouncer, "PgBouncer");
            let sluice = on(Side::Sluice, "Sluice");
            rows.push((mode, leg, direct.clone(), bouncer, sluice));
        }
    }
    for (mode, leg, direct, bouncer, sluice) in &rows {
        // `p99_ms` holds the average connection time here.
        let tps = |m: &Measured| m.run.tps;
        let cpu = |m: &Measured| m.run.cpu_us_per_txn.unwrap_or(f64::NAN);
        let _ = writeln!(
            out,
            "| {} | {} | {} | {} | {} | {} | {} | {} | {} | {} |",
            mode.name(),
            leg.name(),
            tps_cell(direct),
            tps_cell(bouncer),
            tps_cell(sluice),
            ratio(value(sluice, tps), value(bouncer, tps)),
            ratio(value(sluice, tps), value(direct, tps)),
            joined(&[direct, bouncer, sluice], 2, |m| m.p99_ms),
            joined(&[bouncer, sluice], 1, cpu),
            ratio(value(sluice, cpu), value(bouncer, cpu)),
        );
    }
}
