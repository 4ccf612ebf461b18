//! Idle clients: RSS per connection.

use super::*;

pub(crate) fn idle_table(base: &Base, rt: &tokio::runtime::Runtime, n: usize, out: &mut String) {
    let max_clients = u32::try_from(n + 100).unwrap_or(u32::MAX);
    let mut rows = Vec::new();
    for leg in LEGS {
        let held = |side: Side, name: &str| -> Option<Result<IdleHeld, String>> {
            let label = format!("idle-{}-{}", name, leg.name());
            let mode = Mode::Transaction;
            let pooler = match side {
                Side::PgBouncer => base.start_bouncer(mode, max_clients, &label)?,
                _ => base
                    .start_sluice(mode, &base.sluice_config(mode), &label)
                    .unwrap_or_else(|e| panic!("{e}")),
            };
            println!(
                "compare: {} UTC idle: {n} {} clients to {name} ...",
                utc_time_of_day(),
                leg.name()
            );
            let target = base.target(side, pooler.addr, leg);
            let result = rt.block_on(hold_idle_clients(&target, n, pooler.pid, IDLE_BUDGET));
            match &result {
                Ok(h) => println!(
                    "compare: idle {} {name}: {} held, {} failed{}, {:.1} KiB each, opened in {:.1} s",
                    leg.name(),
                    h.clients,
                    h.failed,
                    h.first_error
                        .as_ref()
                        .map(|e| format!(" (first: {e})"))
                        .unwrap_or_default(),
                    h.per_client_kib(),
                    h.took.as_secs_f64()
                ),
                Err(e) => println!("compare: idle {} {name}: {e}", leg.name()),
            }
            Some(result)
        };
        let bouncer = held(Side::PgBouncer, "PgBouncer");
        let sluice = held(Side::Sluice, "Sluice");
        rows.push((leg, bouncer, sluice));
    }
    let _ = writeln!(
        out,
        "\n### Idle clients: pooler RSS growth per client ({n} clients, transaction mode)\n\n\
         Each client logs in with SCRAM, runs `SELECT 1` once and stays idle; VmRSS after one \
         warm-up client and after the last has been idle for 2 s. Direct Postgres would need a \
         backend process per client.\n\n\
         | client leg | PgBouncer KiB/client | Sluice KiB/client | Sluice/PgBouncer | PgBouncer RSS MiB before → with | Sluice RSS MiB before → with | clients held PgBouncer / Sluice |\n\
         |---|---|---|---|---|---|---|"
    );
    let per = |h: &Option<Result<IdleHeld, String>>| match h {
        Some(Ok(h)) if h.clients > 0 => h.per_client_kib(),
        _ => f64::NAN,
    };
    let cell = |h: &Option<Result<IdleHeld, String>>, f: &dyn Fn(&IdleHeld) -> String| match h {
        None => "skipped".to_owned(),
        Some(Err(_)) => "failed".to_owned(),
        Some(Ok(h)) => f(h),
    };
    let kib = |h: &IdleHeld| format!("{:.1}", h.per_client_kib());
    let mib = |h: &IdleHeld| {
        format!(
            "{:.1} → {:.1}",
            h.before_kib as f64 / 1024.0,
            h.after_kib as f64 / 1024.0
        )
    };
    let count = |h: &IdleHeld| h.clients.to_string();
    for (leg, bouncer, sluice) in &rows {
        let _ = writeln!(
            out,
            "| {} | {} | {} | {} | {} | {} | {} / {} |",
            leg.name(),
            cell(bouncer, &kib),
            cell(sluice, &kib),
            ratio(per(sluice), per(bouncer)),
            cell(bouncer, &mib),
            cell(sluice, &mib),
            cell(bouncer, &count),
            cell(sluice, &count),
        );
    }
}
