//! Routing scale: 1 vs many tenants in Sluice's catalog.

use super::*;

/// Sorted durations (µs) of `n` sequential logins (TLS + SCRAM, tokio-postgres) to
/// `target`, after one unmeasured login; stops after [`CONNECT_BUDGET`].
pub(crate) async fn connect_latencies(target: &PgTarget, n: usize) -> Result<Vec<u64>, String> {
    let config = testkit::clients::pg_config(target);
    let connector = testkit::clients::tls_connector(&target.ca);
    let started = Instant::now();
    let mut out = Vec::with_capacity(n);
    for i in 0..=n {
        if started.elapsed() > CONNECT_BUDGET {
            break;
        }
        let t = Instant::now();
        let (client, conn) = tokio::time::timeout(LOGIN_TIMEOUT, config.connect(connector.clone()))
            .await
            .map_err(|_| format!("login {i}: no answer within {LOGIN_TIMEOUT:?}"))?
            .map_err(|e| format!("login {i}: {e}"))?;
        let us = t.elapsed().as_micros() as u64;
        let task = tokio::spawn(conn);
        drop(client);
        let _ = tokio::time::timeout(LOGIN_TIMEOUT, task).await;
        if i > 0 {
            out.push(us);
        }
    }
    out.sort_unstable();
    Ok(out)
}

/// One line of the routing table.
pub(crate) struct Routed {
    pub(crate) name: String,
    pub(crate) tenants: String,
    pub(crate) latencies: Result<Vec<u64>, String>,
    pub(crate) rss_kib: Option<u64>,
    pub(crate) start_s: Option<f64>,
}

impl Routed {
    pub(crate) fn p(&self, q: f64) -> f64 {
        self.latencies
            .as_ref()
            .map_or(f64::NAN, |l| percentile(l, q) / 1000.0)
    }
}

pub(crate) fn routed(
    rt: &tokio::runtime::Runtime,
    base: &Base,
    pooler: &Pooler,
    knobs: &Knobs,
    tenants: &str,
) -> Routed {
    // Let the start's own work settle first (Sluice's control store has just taken
    // one upsert per config tenant).
    std::thread::sleep(SETTLE);
    let target = base.target(pooler.side, pooler.addr, Leg::Tls);
    let latencies = rt.block_on(connect_latencies(&target, knobs.connects));
    std::thread::sleep(Duration::from_secs(1));
    let name = match pooler.side {
        Side::Sluice => "Sluice",
        _ => "PgBouncer",
    };
    let r = Routed {
        name: name.into(),
        tenants: tenants.into(),
        latencies,
        rss_kib: rss_kib(pooler.pid),
        start_s: None,
    };
    println!(
        "compare: {} UTC routing {name} ({tenants} tenants): connect p50 {:.2} ms, p99 {:.2} ms{}",
        utc_time_of_day(),
        r.p(0.5),
        r.p(0.99),
        r.latencies
            .as_ref()
            .err()
            .map(|e| format!(" (failed: {e})"))
            .unwrap_or_default()
    );
    r
}

pub(crate) fn routing_table(
    base: &Base,
    rt: &tokio::runtime::Runtime,
    knobs: &Knobs,
    out: &mut String,
) {
    let mode = Mode::Transaction;
    let direct_target = base.target(Side::Direct, base.direct_addr(), Leg::Tls);
    let mut rows = vec![Routed {
        name: "direct".into(),
        tenants: "–".into(),
        latencies: rt.block_on(connect_latencies(&direct_target, knobs.connects)),
        rss_kib: None,
        start_s: None,
    }];
    if let Some(bouncer) = base.start_bouncer(mode, 1000, "routing") {
        rows.push(routed(rt, base, &bouncer, knobs, "–"));
    }
    for extra in [0, knobs.tenants] {
        let mut config = base.sluice_config(mode);
        config.start_timeout = LARGE_START_TIMEOUT;
        let template = config.tenants[0].clone();
        config.tenants.extend((0..extra).map(|i| TenantEntry {
            id: format!("t{i:05}"),
            ..template.clone()
        }));
        let count = config.tenants.len();
        let label = format!("routing-{count}");
        match base.start_sluice(mode, &config, &label) {
            Ok(sluice) => {
                let mut r = routed(rt, base, &sluice, knobs, &count.to_string());
                r.start_s = Some(sluice.started_in.as_secs_f64());
                rows.push(r);
            }
            Err(e) => {
                println!("compare: routing with {count} tenants: {e}");
                rows.push(Routed {
                    name: "Sluice".into(),
                    tenants: count.to_string(),
                    latencies: Err(e),
                    rss_kib: None,
                    start_s: None,
                });
            }
        }
    }
    let _ = writeln!(
        out,
        "\n### Routing scale: sequential logins (TLS + SCRAM, tokio-postgres) and Sluice's catalog size\n\n\
         {} logins one after another per row (after one unmeasured login), transaction mode; \
         the extra tenants are `[[tenants]]` entries of the config file on the same backend. \
         A login includes the client's own PBKDF2 (4096 iterations).\n\n\
         | target | tenants | login p50 (ms) | login p99 (ms) | RSS after (MiB) | start to listening (s) | p50 / PgBouncer | p50 / direct |\n\
         |---|---|---|---|---|---|---|---|",
        knobs.connects
    );
    let p50_of = |name: &str| {
        rows.iter()
            .find(|r| r.name == name)
            .map_or(f64::NAN, |r| r.p(0.5))
    };
    let (bouncer_p50, direct_p50) = (p50_of("PgBouncer"), p50_of("direct"));
    for r in &rows {
        let _ = writeln!(
            out,
            "| {} | {} | {:.2} | {:.2} | {} | {} | {} | {} |",
            r.name,
            r.tenants,
            r.p(0.5),
            r.p(0.99),
            r.rss_kib
                .map_or("–".into(), |k| format!("{:.1}", k as f64 / 1024.0)),
            r.start_s.map_or("–".into(), |s| format!("{s:.1}")),
            ratio(r.p(0.5), bouncer_p50),
            ratio(r.p(0.5), direct_p50),
        );
    }
    let sluices: Vec<&Routed> = rows.iter().filter(|r| r.name == "Sluice").collect();
    if let [one, many] = sluices[..] {
        if let (Some(a), Some(b)) = (one.rss_kib, many.rss_kib) {
            let grown = b as f64 - a as f64;
            let _ = writeln!(
                out,
                "\nWith {} more tenants: login p50 × {}, RSS {:+.1} MiB = {:.2} KiB per tenant.",
                knobs.tenants,
                ratio(many.p(0.5), one.p(0.5)),
                grown / 1024.0,
                grown / knobs.tenants.max(1) as f64,
            );
        }
    }
}
