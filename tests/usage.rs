//! Usage metering end to end (docs/usage.md): a real `sluice serve` over a real tenant
//! cluster and an external control store (a real Postgres too, so the test can stop
//! it). A scripted workload's metered usage equals what it did and what `/metrics`
//! counted; usage survives restarts of Sluice, an outage of the store, and both at
//! once (the spool); JSON, CSV, the CLI, and bad parameters named in 400s.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use serde_json::Value;
use testkit::clients::{pg_connect, PgTarget};
use testkit::{Pki, SluiceConfig, SluiceProcess, TenantEntry, TestCluster};

const BIN: &str = env!("CARGO_BIN_EXE_sluice");

/// Clients of the workload, and what each runs.
const CLIENTS: u64 = 4;
const QUERIES: u64 = 10;
const TRANSACTIONS: u64 = 3;

/// A tenant cluster, an external control store, and Sluice over them (flushing every
/// second, sampling disks every second).
struct Env {
    // Field order is drop order: Sluice first.
    sluice: Option<SluiceProcess>,
    acme: TestCluster,
    store: TestCluster,
    config: SluiceConfig,
    pki: Pki,
    dir: tempfile::TempDir,
}

impl Env {
    fn start() -> Env {
        let dir = tempfile::Builder::new()
            .prefix("sluice-usage-")
            .tempdir()
            .unwrap();
        let pki = Pki::generate(&dir.path().join("pki")).unwrap();
        let acme = TestCluster::start(dir.path(), "acme", Default::default()).unwrap();
        let store = TestCluster::start(dir.path(), "control", Default::default()).unwrap();
        let mut config = SluiceConfig::new(&pki);
        config.tenants = vec![TenantEntry::for_cluster(&acme, &pki)];
        config.plans = format!(
            "\n[control]\ndatabase_url = \"host={} port={} user={} dbname={} password={}\"\n\
             secrets_key_file = {:?}\n\n[usage]\nflush_interval_s = 1\ndisk_sample_interval_s = 1\n",
            store.socket_dir.display(),
            store.cluster.socket_port(),
            testkit::cluster::APP_ROLE,
            testkit::cluster::APP_DATABASE,
            store.app_password,
            dir.path().join("secrets.key").display().to_string(),
        );
        let sluice = SluiceProcess::start(BIN.as_ref(), &dir.path().join("sluice"), &config)
            .expect("starting sluice");
        Env {
            sluice: Some(sluice),
            acme,
            store,
            config,
            pki,
            dir,
        }
    }

    fn sluice(&self) -> &SluiceProcess {
        self.sluice.as_ref().expect("sluice runs")
    }

    /// Stops Sluice with SIGTERM (a graceful stop: its last flush, or the spool).
    fn stop(&mut self) {
        let mut sluice = self.sluice.take().expect("sluice runs");
        let status = sluice
            .signal_and_wait(nix::sys::signal::Signal::SIGTERM, Duration::from_secs(60))
            .expect("sluice stops");
        assert!(status.success(), "{status:?}\n{}", sluice.log());
        // The log of each run is kept beside the next one's.
        let _ = std::fs::rename(
            &sluice.log_path,
            sluice
                .log_path
                .with_extension(format!("{}.log", sluice.pid())),
        );
    }

    fn restart(&mut self) {
        let sluice =
            SluiceProcess::start(BIN.as_ref(), &self.dir.path().join("sluice"), &self.config)
                .expect("starting sluice again");
        self.sluice = Some(sluice);
    }

    fn target(&self) -> PgTarget {
        PgTarget::tenant(
            self.sluice().addr,
            "acme",
            &self.acme.app_password,
            &self.pki.ca_cert,
        )
    }
}

/// What the workload did, as `/metrics` counts it for acme.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
struct Counted {
    queries: u64,
    transactions: u64,
    logins: u64,
    bytes_from_clients: u64,
    bytes_to_clients: u64,
    connection_seconds: f64,
}

impl std::ops::Add for Counted {
    type Output = Counted;
    fn add(self, o: Counted) -> Counted {
        Counted {
            queries: self.queries + o.queries,
            transactions: self.transactions + o.transactions,
            logins: self.logins + o.logins,
            bytes_from_clients: self.bytes_from_clients + o.bytes_from_clients,
            bytes_to_clients: self.bytes_to_clients + o.bytes_to_clients,
            connection_seconds: self.connection_seconds + o.connection_seconds,
        }
    }
}

/// The acme samples of a `/metrics` scrape, by name and labels.
fn scrape(sluice: &SluiceProcess) -> BTreeMap<String, f64> {
    let r = testkit::http::get(sluice.admin_addr, "/metrics", None);
    assert_eq!(r.status, 200, "{}", r.body);
    r.body
        .lines()
        .filter(|l| l.contains("tenant=\"acme\""))
        .filter_map(|l| {
            let (name, value) = l.rsplit_once(' ')?;
            Some((name.to_owned(), value.parse().ok()?))
        })
        .collect()
}

fn counted(sluice: &SluiceProcess) -> Counted {
    let m = scrape(sluice);
    let get = |name: &str| m.get(name).copied().unwrap_or(0.0);
    Counted {
        queries: get("sluice_queries_total{tenant=\"acme\"}") as u64,
        transactions: get("sluice_transactions_total{tenant=\"acme\"}") as u64,
        logins: get("sluice_client_logins_total{tenant=\"acme\"}") as u64,
        bytes_from_clients: get("sluice_bytes_total{tenant=\"acme\",direction=\"from_client\"}")
            as u64,
        bytes_to_clients: get("sluice_bytes_total{tenant=\"acme\",direction=\"to_client\"}") as u64,
        connection_seconds: get("sluice_client_connection_seconds_total{tenant=\"acme\"}"),
    }
}

/// `CLIENTS` connections at once, each running `QUERIES` single statements and
/// `TRANSACTIONS` explicit transactions of three statements, then leaving.
async fn workload(target: &PgTarget) {
    let mut clients = Vec::new();
    for _ in 0..CLIENTS {
        clients.push(pg_connect(target).await.expect("connect through sluice"));
    }
    for client in &clients {
        for i in 0..QUERIES {
            client.simple_query(&format!("SELECT {i}")).await.unwrap();
        }
        for _ in 0..TRANSACTIONS {
            client.simple_query("BEGIN").await.unwrap();
            client
                .simple_query("SELECT 'in a transaction'")
                .await
                .unwrap();
            client.simple_query("COMMIT").await.unwrap();
        }
    }
    drop(clients);
}

/// Waits until Sluice counts no client of acme logged in (the workload's clients left).
async fn until_clients_left(sluice: &SluiceProcess) {
    eventually("the workload's clients to leave", || {
        let m = scrape(sluice);
        let logged_in: f64 = m
            .iter()
            .filter(|(k, _)| k.starts_with("sluice_client_connections{"))
            .map(|(_, v)| v)
            .sum();
        (logged_in == 0.0)
            .then_some(())
            .ok_or(format!("{logged_in} logged in"))
    })
    .await;
}

/// Retries `check` every 100 ms for up to a minute (a bound for slow machines, not a
/// measurement), letting the test's own tasks (its clients' connections) run between.
async fn eventually<T>(what: &str, mut check: impl FnMut() -> Result<T, String>) -> T {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        match check() {
            Ok(v) => return v,
            Err(e) if Instant::now() > deadline => panic!("{what}: still {e}"),
            Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    }
}

/// A day-wide range around now, as query parameters.
fn range() -> String {
    let now = std::time::SystemTime::now();
    let at = |t: std::time::SystemTime| control::store::rfc3339::format_micros(t);
    format!(
        "from={}&to={}",
        at(now - Duration::from_secs(86_400)),
        at(now + Duration::from_secs(3600))
    )
}

fn usage(sluice: &SluiceProcess, query: &str) -> Value {
    let r = sluice.api("GET", &format!("/v1/tenants/acme/usage?{query}"), "", "");
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.header("content-type"), Some("application/json"));
    r.json()
}

/// The usage totals, as the metrics read them.
fn metered(totals: &Value) -> Counted {
    let n = |k: &str| {
        totals[k]
            .as_u64()
            .unwrap_or_else(|| panic!("{k}: {totals}"))
    };
    Counted {
        queries: n("queries"),
        transactions: n("transactions"),
        logins: n("client_connections"),
        bytes_from_clients: n("bytes_from_clients"),
        bytes_to_clients: n("bytes_to_clients"),
        connection_seconds: totals["connection_seconds"].as_f64().unwrap(),
    }
}

/// Waits until the stored usage equals `expected` (connection seconds within a
/// microsecond per process: each sums its own µs, the metric prints seconds).
async fn until_metered(sluice: &SluiceProcess, expected: Counted) -> Value {
    eventually("the usage to be written", || {
        let answer = usage(sluice, &range());
        let got = metered(&answer["totals"]);
        let seconds_match = (got.connection_seconds - expected.connection_seconds).abs() < 1e-5;
        let exact = Counted {
            connection_seconds: 0.0,
            ..got
        } == Counted {
            connection_seconds: 0.0,
            ..expected
        };
        (exact && seconds_match)
            .then_some(answer.clone())
            .ok_or(format!(
                "metered {got:?}, expected {expected:?} (now {:?}), rows {}",
                counted(sluice),
                answer["usage"]
            ))
    })
    .await
}

#[tokio::test]
async fn metered_usage_equals_the_workload_and_the_metrics() {
    let env = Env::start();
    let sluice = env.sluice();
    workload(&env.target()).await;
    until_clients_left(sluice).await;
    let counted = counted(sluice);
    // The workload, as the metrics count it: every statement is one Query; each single
    // statement and each COMMIT ends a transaction.
    assert_eq!(counted.logins, CLIENTS, "{counted:?}");
    assert_eq!(counted.queries, CLIENTS * (QUERIES + 3 * TRANSACTIONS));
    assert_eq!(counted.transactions, CLIENTS * (QUERIES + TRANSACTIONS));
    assert!(counted.bytes_from_clients > 0 && counted.bytes_to_clients > 0);
    assert!(counted.connection_seconds > 0.0);

    let answer = until_metered(sluice, counted).await;
    let totals = &answer["totals"];
    println!(
        "metered {} vs counted {counted:?}",
        serde_json::to_string(totals).unwrap()
    );
    assert_eq!(answer["tenant"], "acme");
    assert_eq!(answer["granularity"], "hour");
    // Session mode: each client held its own server connection, all at once.
    let peak = totals["peak_server_connections"].as_u64().unwrap();
    assert!(peak >= CLIENTS, "{totals}");
    // The disk of acme's cluster, sampled from its backend (an empty cluster's
    // databases hold several MB).
    let disk = eventually("a disk sample", || {
        let t = usage(sluice, &range())["totals"].clone();
        t["disk_bytes"].as_u64().ok_or(format!("{t}"))
    })
    .await;
    assert!(disk > 1_000_000, "{disk}");

    // By day: the same totals, in one bucket.
    let by_day = usage(sluice, &format!("{}&granularity=day", range()));
    assert_eq!(by_day["granularity"], "day");
    assert_eq!(metered(&by_day["totals"]), metered(&answer["totals"]));
    assert!(by_day["usage"][0]["start"]
        .as_str()
        .unwrap()
        .ends_with("T00:00:00.000000Z"));

    // CSV, by parameter and by Accept: a header and a line per hour, adding up.
    for (query, headers) in [
        (format!("{}&format=csv", range()), ""),
        (range(), "Accept: text/csv\r\n"),
    ] {
        let r = sluice.api(
            "GET",
            &format!("/v1/tenants/acme/usage?{query}"),
            "",
            headers,
        );
        assert_eq!(r.status, 200, "{}", r.body);
        assert_eq!(r.header("content-type"), Some("text/csv; charset=utf-8"));
        let mut lines = r.body.lines();
        let header: Vec<&str> = lines.next().unwrap().split(',').collect();
        assert_eq!(
            header,
            [
                "tenant",
                "start",
                "connection_seconds",
                "client_connections",
                "queries",
                "transactions",
                "bytes_from_clients",
                "bytes_to_clients",
                "peak_server_connections",
                "disk_bytes"
            ]
        );
        let rows: Vec<Vec<&str>> = lines.map(|l| l.split(',').collect()).collect();
        assert_eq!(rows.len(), answer["usage"].as_array().unwrap().len());
        let column = |name: &str| {
            let i = header.iter().position(|h| *h == name).unwrap();
            rows.iter()
                .map(|r| r[i].parse::<u64>().unwrap())
                .sum::<u64>()
        };
        assert_eq!(column("queries"), counted.queries);
        assert_eq!(column("bytes_to_clients"), counted.bytes_to_clients);
        assert!(rows.iter().all(|r| r[0] == "acme"));
    }

    // Bad parameters: 400 naming the field, in the API's error shape.
    for (query, field) in [
        ("from=yesterday", "from: "),
        ("to=2026-13-01T00:00:00Z", "to: "),
        ("granularity=week", "granularity: "),
        ("format=xml", "format: "),
        (
            "from=2026-01-02T00:00:00Z&to=2026-01-01T00:00:00Z",
            "from: ",
        ),
        ("colour=blue", "unknown parameter \"colour\""),
    ] {
        let r = sluice.api("GET", &format!("/v1/tenants/acme/usage?{query}"), "", "");
        assert_eq!(r.status, 400, "{query}: {}", r.body);
        let error = r.json();
        assert_eq!(error["error"]["code"], "bad_request", "{query}");
        let message = error["error"]["message"].as_str().unwrap();
        assert!(message.starts_with(field), "{query}: {message}");
    }
    let r = sluice.api("GET", "/v1/tenants/nobody/usage", "", "");
    assert_eq!(r.status, 404, "{}", r.body);
    assert_eq!(r.json()["error"]["code"], "not_found");
    let r = testkit::http::get(sluice.admin_addr, "/v1/tenants/acme/usage", None);
    assert_eq!(r.status, 401);

    // The CLI: a table with a total line, the API's JSON, the API's CSV.
    let cli = |args: &[&str]| {
        let out = std::process::Command::new(BIN)
            .arg("usage")
            .args(args)
            .env("SLUICE_API", format!("http://{}", sluice.admin_addr))
            .env("SLUICE_TOKEN", &sluice.admin_key)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    };
    let now = std::time::SystemTime::now();
    let from = control::store::rfc3339::format_micros(now - Duration::from_secs(86_400));
    let table = cli(&["acme", "--from", &from]);
    let last = table.lines().last().unwrap();
    assert!(last.starts_with("total"), "{table}");
    assert!(
        last.split_whitespace()
            .any(|cell| cell == counted.queries.to_string()),
        "{table}"
    );
    let json: Value =
        serde_json::from_str(&cli(&["acme", "--from", &from, "--output", "json"])).unwrap();
    assert_eq!(metered(&json["totals"]), metered(totals));
    let csv = cli(&["acme", "--from", &from, "--csv", "--granularity", "day"]);
    assert!(csv.starts_with("tenant,start,"), "{csv}");
    assert_eq!(csv.lines().count(), 2, "{csv}");
    let bad = std::process::Command::new(BIN)
        .args(["usage", "acme", "--from", "yesterday"])
        .env("SLUICE_API", format!("http://{}", sluice.admin_addr))
        .env("SLUICE_TOKEN", &sluice.admin_key)
        .output()
        .unwrap();
    assert!(!bad.status.success());
    let stderr = String::from_utf8_lossy(&bad.stderr);
    assert!(stderr.contains("400 bad_request: from: "), "{stderr}");
}

/// The store stops while clients work; Sluice restarts; both at once. Every query is
/// in the store in the end, exactly once: the sum of what each process's `/metrics`
/// counted.
#[tokio::test]
async fn usage_survives_restarts_and_store_outages_and_counts_nothing_twice() {
    let mut env = Env::start();

    // First process: a workload, written.
    workload(&env.target()).await;
    until_clients_left(env.sluice()).await;
    let first = counted(env.sluice());
    until_metered(env.sluice(), first).await;

    // A restart: the second process starts from zero; the store has the first's.
    env.stop();
    env.restart();
    workload(&env.target()).await;
    until_clients_left(env.sluice()).await;
    let second = counted(env.sluice());
    assert_eq!(second.queries, first.queries, "a fresh process");
    until_metered(env.sluice(), first + second).await;

    // The store goes away: clients go on, flushes fail (and say so once), the totals
    // wait in memory.
    env.store.stop(localpg::StopMode::Fast).unwrap();
    workload(&env.target()).await;
    until_clients_left(env.sluice()).await;
    eventually("a failed flush in the log", || {
        let log = env.sluice().plain_log();
        log.contains("writing usage to the control store; kept in memory")
            .then_some(())
            .ok_or("not yet".to_owned())
    })
    .await;
    let second = counted(env.sluice());
    env.store.restart().unwrap();
    until_metered(env.sluice(), first + second).await;
    assert!(
        env.sluice()
            .plain_log()
            .contains("usage written to the control store again"),
        "{}",
        env.sluice().log()
    );

    // Both at once: the store is down when Sluice stops, so the last flush spools;
    // the next process (started while the store is still down) writes the spool when
    // the store is back.
    env.store.stop(localpg::StopMode::Fast).unwrap();
    workload(&env.target()).await;
    until_clients_left(env.sluice()).await;
    let second = counted(env.sluice());
    env.stop();
    let spool = env.dir.path().join("sluice/data/usage-spool");
    let files: Vec<_> = std::fs::read_dir(&spool)
        .expect("a spool directory")
        .map(|e| e.unwrap().path())
        .collect();
    assert_eq!(files.len(), 1, "{files:?}");
    env.restart();
    env.store.restart().unwrap();
    let answer = until_metered(env.sluice(), first + second).await;
    eventually("the spool file to go", || {
        let left = std::fs::read_dir(&spool).unwrap().count();
        (left == 0).then_some(()).ok_or(format!("{left} files"))
    })
    .await;
    println!(
        "after two restarts and two outages: {} (counted by the processes: {:?})",
        answer["totals"],
        first + second
    );
    // Each hour's rows came from three processes; nothing counted twice.
    let queries = answer["totals"]["queries"].as_u64().unwrap();
    assert_eq!(queries, 4 * CLIENTS * (QUERIES + 3 * TRANSACTIONS));
}
