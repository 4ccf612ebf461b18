//! A noisy neighbour cannot break a quiet tenant: while `acme` (small limits) is flooded
//! by a connection storm and a full-speed pgbench, `globex` runs a paced pgbench without
//! a single error, the storm is refused with 53400 and the exact message, the refusals
//! are counted against acme only, and acme's own pgbench meets nothing but its rate
//! limits. Functional only: no timing is asserted (benches/noisy_neighbour/ measures).
//!
//! Every loop is bounded (a deadline and an attempt budget); pgbench processes are
//! killed by pid if the test fails before they finish.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use testkit::http::get;
use testkit::pgbench::Pgbench;
use testkit::{PgTarget, SluiceProcess, TwoTenants};

const BIN: &str = env!("CARGO_BIN_EXE_sluice");
const STORM_TASKS: usize = 4;
const STORM_MAX_ATTEMPTS: u64 = 2_000;
const FLOOD: Duration = Duration::from_secs(5);
const CONNECT_REFUSED: &str = "connection rate limit exceeded for tenant \"acme\"";
const QUERY_REFUSED: &str = "query rate limit exceeded for tenant \"acme\"";

/// What the storm's connection attempts got.
#[derive(Debug, Default)]
struct Storm {
    attempts: u64,
    admitted: u64,
    refused_53400: u64,
    /// Closed during the TLS handshake: refusals past the per-second allowance of
    /// readable ones, shed at the ClientHello (docs/limits.md).
    shed: u64,
    /// Anything else: (SQLSTATE or "none", message).
    other: Vec<(String, String)>,
}

/// `STORM_TASKS` tasks connecting to `target` until `deadline` or the attempt budget.
async fn storm(target: &PgTarget, deadline: Instant) -> Storm {
    let tls = testkit::clients::tls_connector(&target.ca);
    let config = testkit::clients::pg_config(target);
    let budget = Arc::new(AtomicU64::new(0));
    let tasks: Vec<_> = (0..STORM_TASKS)
        .map(|_| {
            let (tls, config, budget) = (tls.clone(), config.clone(), budget.clone());
            tokio::spawn(async move {
                let mut s = Storm::default();
                while Instant::now() < deadline
                    && budget.fetch_add(1, Ordering::Relaxed) < STORM_MAX_ATTEMPTS
                {
                    s.attempts += 1;
                    let attempt =
                        tokio::time::timeout(Duration::from_secs(20), config.connect(tls.clone()))
                            .await;
                    match attempt {
                        Ok(Ok(_admitted)) => s.admitted += 1,
                        Ok(Err(e)) => match e.as_db_error() {
                            Some(db) if db.code().code() == "53400" => {
                                assert_eq!(db.message(), CONNECT_REFUSED);
                                s.refused_53400 += 1;
                            }
                            Some(db) => s
                                .other
                                .push((db.code().code().to_owned(), db.message().to_owned())),
                            None => s.shed += 1,
                        },
                        Err(_) => s.other.push(("none".into(), "timed out".into())),
                    }
                }
                s
            })
        })
        .collect();
    let mut total = Storm::default();
    for task in tasks {
        let s = task.await.expect("storm task");
        total.attempts += s.attempts;
        total.admitted += s.admitted;
        total.refused_53400 += s.refused_53400;
        total.shed += s.shed;
        total.other.extend(s.other);
    }
    total
}

/// Logged-in clients of `tenant`, from `/metrics`.
fn clients(sluice: &SluiceProcess, tenant: &str) -> f64 {
    let label = format!("tenant=\"{tenant}\"");
    get(sluice.admin_addr, "/metrics", None)
        .body
        .lines()
        .filter(|l| l.starts_with("sluice_client_connections{") && l.contains(&label))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flooded_tenant_does_not_break_its_neighbour() {
    let env = TwoTenants::start(BIN.as_ref(), |c| {
        c.tenants[0].limits = vec!["connect_rate = 5".into(), "query_rate = 50".into()];
        c.tenants[1].limits = vec!["connect_rate = 0".into()];
    })
    .expect("test environment");
    assert_eq!(env.acme.name, "acme");
    let (a, b) = (env.target("acme"), env.target("globex"));
    for t in [&a, &b] {
        let init = testkit::pgbench(t, &["-i", "-s", "1", "-q"]);
        assert!(init.success, "pgbench -i: {}", init.stderr);
    }
    let dir = env.dir.path().join("noisy");
    std::fs::create_dir_all(&dir).unwrap();
    // Let acme's connect bucket (burst 10) fill up again after pgbench -i.
    tokio::time::sleep(Duration::from_secs(2)).await;

    // acme's own pgbench first, so its 8 connections come out of a full bucket.
    let a_run = Pgbench::start(
        &a,
        &["-n", "-S", "-c", "8", "-j", "2", "-T", "7"],
        &dir,
        "acme",
    );
    let wait_for_a = Instant::now() + Duration::from_secs(15);
    while clients(&env.sluice, "acme") < 8.0 && Instant::now() < wait_for_a {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let b_run = Pgbench::start(
        &b,
        &["-n", "-S", "-R", "50", "-c", "2", "-T", "5"],
        &dir,
        "globex",
    );
    let storm = storm(&a, Instant::now() + FLOOD).await;
    let (b_out, a_out) = tokio::task::spawn_blocking(move || (b_run.finish(), a_run.finish()))
        .await
        .unwrap();

    println!(
        "storm: {} attempts, {} admitted, {} refused 53400, {} shed; globex: {} txns; acme: {} txns, {} aborted",
        storm.attempts,
        storm.admitted,
        storm.refused_53400,
        storm.shed,
        b_out.processed(),
        a_out.processed(),
        a_out.aborted()
    );

    // The quiet tenant: every transaction went through.
    assert!(
        b_out.success,
        "globex's pgbench failed:\n{}\n{}",
        b_out.stdout, b_out.stderr
    );
    assert!(b_out.processed() > 0, "{}", b_out.stdout);
    assert_eq!(b_out.failed(), Some(0), "{}", b_out.stdout);
    assert_eq!(b_out.aborted(), 0, "{}", b_out.stderr);

    // The storm: refused with 53400 and the exact message (checked per refusal above),
    // nothing else, and the bucket still lets some through.
    assert!(storm.refused_53400 > 0, "{storm:?}");
    assert!(storm.other.is_empty(), "{storm:?}");
    assert!(storm.admitted > 0, "{storm:?}");
    assert!(storm.attempts <= STORM_MAX_ATTEMPTS);

    // Counted against acme only.
    let body = get(env.sluice.admin_addr, "/metrics", None).body;
    let rate_refusals: u64 = body
        .lines()
        .find_map(|l| {
            l.strip_prefix(
                "sluice_connections_rejected_total{tenant=\"acme\",reason=\"connect_rate\"} ",
            )
        })
        .map_or(0, |v| v.trim().parse().unwrap());
    assert!(rate_refusals >= storm.refused_53400 + storm.shed, "{body}");
    let globex_refusals: Vec<&str> = body
        .lines()
        .filter(|l| l.starts_with("sluice_connections_rejected_total{tenant=\"globex\""))
        .filter(|l| l.rsplit(' ').next().map(str::trim) != Some("0"))
        .collect();
    assert!(globex_refusals.is_empty(), "{globex_refusals:?}");

    // acme's pgbench: ran, and met nothing but its rate limits (53400) if anything.
    assert!(a_out.processed() > 0, "{}\n{}", a_out.stdout, a_out.stderr);
    assert_eq!(a_out.failed(), Some(0), "{}", a_out.stdout);
    let unexpected: Vec<&str> = a_out
        .stderr
        .lines()
        .filter(|l| l.contains("error") || l.contains("FATAL") || l.contains("aborted"))
        .filter(|l| !l.contains(QUERY_REFUSED) && !l.contains(CONNECT_REFUSED))
        // pgbench's closing summary when a client aborted.
        .filter(|l| !l.contains("Run was aborted"))
        .collect();
    assert!(
        unexpected.is_empty(),
        "acme's pgbench failed otherwise than by its rate limits:\n{}",
        a_out.stderr
    );
    assert!(a_out.success || a_out.aborted() > 0, "{}", a_out.stderr);
}
