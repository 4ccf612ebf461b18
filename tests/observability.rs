//! The admin listener end to end: `/metrics` after known traffic (parsed with the
//! Prometheus project's own OpenMetrics parser), the stats API, health, the series
//! cap, and the dashboard and alerts referring only to metrics Sluice exports.

use std::collections::{BTreeMap, BTreeSet};
use std::io::Write;
use std::process::{Command, Stdio};
use std::time::Duration;

use testkit::http::get;
use testkit::{
    pg_connect, psql, PgTarget, Pki, SluiceConfig, SluiceProcess, TenantEntry, TestCluster,
    TwoTenants,
};

const BIN: &str = env!("CARGO_BIN_EXE_sluice");

/// One sample as the reference parser read it.
#[derive(Debug, Clone)]
struct Sample {
    name: String,
    labels: BTreeMap<String, String>,
    value: f64,
}

/// A scrape of `/metrics`, parsed.
struct Scrape {
    families: Vec<(String, String)>,
    samples: Vec<Sample>,
}

impl Scrape {
    /// The value of the sample `name` with exactly `labels`.
    fn value(&self, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
        let want: BTreeMap<String, String> = labels
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        self.samples
            .iter()
            .find(|s| s.name == name && s.labels == want)
            .map(|s| s.value)
    }

    fn samples(&self, name: &str) -> Vec<&Sample> {
        self.samples.iter().filter(|s| s.name == name).collect()
    }

    /// Distinct values of `label` among the samples of `name`.
    fn label_values(&self, name: &str, label: &str) -> BTreeSet<String> {
        self.samples(name)
            .iter()
            .filter_map(|s| s.labels.get(label).cloned())
            .collect()
    }
}

fn scrape(sluice: &SluiceProcess) -> Scrape {
    let response = get(sluice.admin_addr, "/metrics", None);
    assert_eq!(response.status, 200, "{}", response.body);
    assert_eq!(
        response.header("content-type"),
        Some("application/openmetrics-text; version=1.0.0; charset=utf-8")
    );
    let script = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/scripts/openmetrics_to_json.py"
    );
    let mut child = Command::new("python3")
        .arg(script)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("python3");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(response.body.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "the OpenMetrics parser rejected the scrape (pip install -r tests/scripts/requirements.txt?):\n{}\n---\n{}",
        String::from_utf8_lossy(&out.stderr),
        response.body
    );
    let parsed: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let mut families = Vec::new();
    let mut samples = Vec::new();
    for family in parsed["families"].as_array().unwrap() {
        families.push((
            family["name"].as_str().unwrap().to_owned(),
            family["type"].as_str().unwrap().to_owned(),
        ));
        for s in family["samples"].as_array().unwrap() {
            samples.push(Sample {
                name: s["name"].as_str().unwrap().to_owned(),
                labels: serde_json::from_value(s["labels"].clone()).unwrap(),
                value: s["value"].as_f64().unwrap(),
            });
        }
    }
    Scrape { families, samples }
}

/// Known traffic, then exact counters: N single queries and one explicit transaction
/// of three statements for acme (session mode), a wrong password for globex, a
/// tenant that does not exist.
#[tokio::test]
async fn metrics_count_known_traffic_exactly() {
    let env = TwoTenants::start(BIN.as_ref(), |_| {}).unwrap();
    let before = scrape(&env.sluice);
    assert_eq!(
        before.value(
            "sluice_build_info",
            &[("version", env!("CARGO_PKG_VERSION"))]
        ),
        Some(1.0)
    );
    assert_eq!(before.value("sluice_tenants", &[]), Some(2.0));
    assert!(before.samples("sluice_queries_total").is_empty());

    const N: usize = 7;
    let client = pg_connect(&env.target("acme")).await.expect("connect");
    for i in 0..N {
        client.simple_query(&format!("select {i}")).await.unwrap();
    }
    for statement in ["begin", "select 1", "commit"] {
        client.simple_query(statement).await.unwrap();
    }

    let mut wrong = env.target("globex");
    wrong.password = "not-the-password".into();
    let err = pg_connect(&wrong).await.expect_err("wrong password");
    assert_eq!(err.code().map(|c| c.code()), Some("28P01"));
    let nowhere = PgTarget::tenant(env.sluice.addr, "nowhere", "x", &env.pki.ca_cert);
    let mut nowhere_opts = nowhere.clone();
    nowhere_opts.sni_host = None;
    nowhere_opts.sslmode = "require";
    nowhere_opts.options = Some("tenant=nowhere".into());
    let err = pg_connect(&nowhere_opts).await.expect_err("no such tenant");
    assert_eq!(err.code().map(|c| c.code()), Some("3D000"));

    // While acme's session is open it holds its server connection.
    let during = scrape(&env.sluice);
    let acme = [("tenant", "acme")];
    let state = |s| [("tenant", "acme"), ("state", s)];
    assert_eq!(
        during.value("sluice_client_connections", &state("active")),
        Some(1.0)
    );
    assert_eq!(
        during.value("sluice_client_connections", &state("idle")),
        Some(0.0)
    );
    assert_eq!(
        during.value("sluice_server_connections", &state("active")),
        Some(1.0)
    );
    assert_eq!(
        during.value("sluice_queries_total", &acme),
        Some((N + 3) as f64)
    );
    assert_eq!(
        during.value("sluice_transactions_total", &acme),
        Some((N + 1) as f64)
    );
    assert_eq!(during.value("sluice_backend_up", &acme), Some(1.0));
    assert_eq!(
        during.value(
            "sluice_connections_rejected_total",
            &[("tenant", "globex"), ("reason", "auth_failed")]
        ),
        Some(1.0)
    );
    assert_eq!(
        during.value("sluice_auth_failures_total", &[("tenant", "globex")]),
        Some(1.0)
    );
    assert_eq!(
        during.value(
            "sluice_connections_rejected_total",
            &[("tenant", "_unknown"), ("reason", "unknown_tenant")]
        ),
        Some(1.0)
    );
    // No series for the name the client made up, nor for acme's rejections.
    assert!(!during
        .label_values("sluice_connections_rejected_total", "tenant")
        .contains("nowhere"));
    // Every request's duration, no tenant label on histograms.
    assert_eq!(
        during.value("sluice_query_duration_seconds_count", &[]),
        Some((N + 3) as f64)
    );
    assert_eq!(
        during.value("sluice_query_duration_seconds_bucket", &[("le", "+Inf")]),
        Some((N + 3) as f64)
    );
    assert_eq!(
        during.value("sluice_pool_wait_seconds_count", &[]),
        Some(1.0)
    );
    let from_client = during
        .value(
            "sluice_bytes_total",
            &[("tenant", "acme"), ("direction", "from_client")],
        )
        .unwrap();
    assert!(from_client > 0.0);
    // The earlier scrape was counted (after it was answered).
    assert_eq!(
        during.value(
            "sluice_admin_requests_total",
            &[("route", "/metrics"), ("status", "200")]
        ),
        Some(1.0)
    );
    // Label sets are exactly the documented ones.
    for (name, labels) in [
        ("sluice_client_connections", &["state", "tenant"][..]),
        ("sluice_server_connections", &["state", "tenant"]),
        ("sluice_queries_total", &["tenant"]),
        ("sluice_bytes_total", &["direction", "tenant"]),
        ("sluice_connections_rejected_total", &["reason", "tenant"]),
        ("sluice_query_duration_seconds_bucket", &["le"]),
    ] {
        for s in during.samples(name) {
            let keys: Vec<&str> = s.labels.keys().map(String::as_str).collect();
            assert_eq!(keys, labels, "{name}: {s:?}");
        }
    }
    for (family, kind) in [
        ("sluice_queries", "counter"),
        ("sluice_client_connections", "gauge"),
        ("sluice_pool_wait_seconds", "histogram"),
        ("sluice_build", "info"),
    ] {
        assert!(
            during.families.contains(&(family.into(), kind.into())),
            "{family} {kind}: {:?}",
            during.families
        );
    }

    // The stats API agrees with /metrics.
    let key = env.sluice.admin_key.as_str();
    let stats = get(env.sluice.admin_addr, "/v1/tenants/acme/stats", Some(key));
    assert_eq!(stats.status, 200, "{}", stats.body);
    let stats = stats.json();
    assert_eq!(stats["totals"]["queries"], (N + 3) as u64);
    assert_eq!(stats["totals"]["transactions"], (N + 1) as u64);
    assert_eq!(stats["totals"]["bytes_from_clients"], from_client as u64);
    assert_eq!(stats["clients"]["active"], 1);
    assert_eq!(stats["servers"]["active"], 1);
    assert_eq!(stats["backend_up"], true);
    assert_eq!(stats["pools"][0]["database"], "app");
    assert_eq!(stats["pools"][0]["mode"], "session");
    let globex = get(env.sluice.admin_addr, "/v1/tenants/globex/stats", Some(key)).json();
    assert_eq!(globex["rejected"]["auth_failed"], 1);

    // The client leaves: its server connection goes idle.
    drop(client);
    let mut idle = None;
    for _ in 0..100 {
        let s = scrape(&env.sluice);
        if s.value("sluice_server_connections", &state("idle")) == Some(1.0) {
            idle = Some(s);
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let after = idle.expect("the server connection goes back to the pool");
    // The control store has no provisioning jobs yet: every state reads 0.
    for state in ["queued", "running", "succeeded", "failed"] {
        assert_eq!(
            after.value("sluice_provision_jobs", &[("state", state)]),
            Some(0.0),
            "{state}"
        );
    }
    assert_eq!(
        after.value("sluice_client_connections", &state("active")),
        Some(0.0)
    );
    assert_eq!(
        after.value("sluice_server_connections", &state("active")),
        Some(0.0)
    );

    // Everything the dashboard and the alerts name is exported.
    let exported: BTreeSet<String> = after.samples.iter().map(|s| s.name.clone()).collect();
    for file in [
        "configs/grafana/sluice.json",
        "configs/prometheus/alerts.yml",
    ] {
        let referenced = referenced_metrics(file);
        assert!(referenced.len() >= 5, "{file}: {referenced:?}");
        for name in referenced {
            assert!(
                exported.contains(&name),
                "{file} uses {name}, not exported: {exported:?}"
            );
        }
    }
    // The dashboard is valid JSON with its panels' queries in it.
    let dashboard: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/configs/grafana/sluice.json"
        ))
        .unwrap(),
    )
    .unwrap();
    assert!(!dashboard["panels"].as_array().unwrap().is_empty());
}

/// Every `sluice_*` name in a config file (dashboard expressions, alert rules).
fn referenced_metrics(file: &str) -> BTreeSet<String> {
    let path = format!("{}/{file}", env!("CARGO_MANIFEST_DIR"));
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
    let mut names = BTreeSet::new();
    let mut rest = text.as_str();
    while let Some(at) = rest.find("sluice_") {
        let before = rest[..at].chars().last();
        let tail = &rest[at..];
        let end = tail
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .unwrap_or(tail.len());
        if !before.is_some_and(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-') {
            names.insert(tail[..end].to_owned());
        }
        rest = &tail[end..];
    }
    // Words like the dashboard's uid are not metric names.
    names.retain(|n| n != "sluice_");
    names
}

/// The stats API: bearer keys, JSON errors, pagination, health.
#[test]
fn admin_api_answers_with_json_and_checks_keys() {
    let env = TwoTenants::start(BIN.as_ref(), |_| {}).unwrap();
    let admin = env.sluice.admin_addr;
    for tenant in ["acme", "globex"] {
        let out = psql(&env.target(tenant), "select 1");
        assert!(out.success, "{}", out.stderr);
    }

    let health = get(admin, "/healthz", None);
    assert_eq!(
        (health.status, health.json()["status"].clone()),
        (200, "ok".into())
    );
    let ready = get(admin, "/readyz", None);
    assert_eq!(ready.status, 200);
    assert_eq!(ready.json()["ready"], true);
    assert_eq!(ready.json()["catalog"]["tenants"], 2);

    let no_key = get(admin, "/v1/pools", None);
    assert_eq!(no_key.status, 401);
    assert_eq!(no_key.header("www-authenticate"), Some("Bearer"));
    assert_eq!(no_key.json()["error"]["code"], "unauthorized");
    let real = &env.sluice.admin_key;
    let last = if real.ends_with('0') { '1' } else { '0' };
    let forged = format!("{}{last}", &real[..real.len() - 1]);
    let bad_key = get(admin, "/v1/pools", Some(&forged));
    assert_eq!(bad_key.status, 401, "{}", bad_key.body);

    let key = Some(env.sluice.admin_key.as_str());
    let pools = get(admin, "/v1/pools", key).json();
    let tenants: Vec<&str> = pools["pools"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["tenant"].as_str().unwrap())
        .collect();
    assert_eq!(tenants, ["acme", "globex"]);
    assert_eq!(pools["next_cursor"], serde_json::Value::Null);

    let page = get(admin, "/v1/pools?limit=1", key).json();
    assert_eq!(page["pools"].as_array().unwrap().len(), 1);
    let cursor = page["next_cursor"]
        .as_str()
        .expect("a second page")
        .to_owned();
    let next = get(admin, &format!("/v1/pools?limit=1&cursor={cursor}"), key).json();
    assert_eq!(next["pools"][0]["tenant"], "globex");
    assert_eq!(next["next_cursor"], serde_json::Value::Null);
    let only = get(admin, "/v1/pools?tenant=globex", key).json();
    assert_eq!(only["pools"].as_array().unwrap().len(), 1);

    for (path, status, code) in [
        ("/v1/pools?limit=0", 400, "bad_request"),
        ("/v1/pools?color=blue", 400, "bad_request"),
        ("/v1/tenants/nope/stats", 404, "not_found"),
        ("/v1/nothing", 404, "not_found"),
    ] {
        let r = get(admin, path, key);
        assert_eq!(r.status, status, "{path}: {}", r.body);
        assert_eq!(r.json()["error"]["code"], code, "{path}");
        assert!(r.json()["error"]["message"].as_str().is_some());
    }
    let post = testkit::http::request(admin, "POST", "/v1/pools", key, "", b"{}").unwrap();
    assert_eq!(post.status, 405);
    assert_eq!(post.json()["error"]["code"], "method_not_allowed");
    // A request head bigger than the admin listener takes is refused, not buffered.
    let huge = format!("X-Junk: {}\r\n", "a".repeat(100 * 1024));
    let r = testkit::http::request(admin, "GET", "/healthz", None, &huge, b"");
    assert!(
        r.as_ref()
            .map_or(true, |r| r.status == 431 || r.status == 400),
        "huge head accepted: {r:?}"
    );
    // The admin listener is still fine.
    assert_eq!(get(admin, "/healthz", None).status, 200);

    // `sluice stats` over the same API: a table, JSON, and a clear error.
    let api = format!("http://{admin}");
    let stats = |args: &[&str], token: &str| {
        Command::new(BIN)
            .arg("stats")
            .args(["--api", &api])
            .args(args)
            .env("SLUICE_TOKEN", token)
            .output()
            .unwrap()
    };
    let table = stats(&[], &env.sluice.admin_key);
    assert!(
        table.status.success(),
        "{}",
        String::from_utf8_lossy(&table.stderr)
    );
    let table = String::from_utf8(table.stdout).unwrap();
    let lines: Vec<&str> = table.lines().collect();
    assert!(
        lines[0].starts_with("TENANT") && lines[0].contains("CL_ACTIVE"),
        "{table}"
    );
    assert!(
        lines[1].starts_with("acme") && lines[2].starts_with("globex"),
        "{table}"
    );
    let json = stats(
        &["--tenant", "acme", "--output", "json"],
        &env.sluice.admin_key,
    );
    assert!(json.status.success());
    let json: serde_json::Value = serde_json::from_slice(&json.stdout).unwrap();
    assert_eq!(json["tenant"], "acme");
    assert_eq!(json["totals"]["queries"], 1);
    let denied = stats(&[], &forged);
    assert_eq!(denied.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&denied.stderr);
    assert!(stderr.contains("401 unauthorized"), "{stderr}");
}

/// More tenants than `max_tenant_series`: the extra ones share `_other`, and names
/// that are not tenants never get a series.
#[tokio::test]
async fn tenant_series_are_capped() {
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::generate(&dir.path().join("pki")).unwrap();
    let cluster = TestCluster::start(dir.path(), "shared", Default::default()).unwrap();
    let ids = ["t1", "t2", "t3", "t4", "t5"];
    let mut config = SluiceConfig::new(&pki);
    config.metrics = vec!["max_tenant_series = 2".into()];
    config.tenants = ids
        .iter()
        .map(|id| TenantEntry {
            id: id.to_string(),
            ..TenantEntry::for_cluster(&cluster, &pki)
        })
        .collect();
    let sluice = SluiceProcess::start(BIN.as_ref(), &dir.path().join("sluice"), &config).unwrap();

    for (i, id) in ids.iter().enumerate() {
        let target = PgTarget::tenant(sluice.addr, id, &cluster.app_password, &pki.ca_cert);
        let client = pg_connect(&target).await.expect("connect");
        for _ in 0..=i {
            client.simple_query("select 1").await.unwrap();
        }
    }
    for i in 0..20 {
        let mut target = PgTarget::tenant(sluice.addr, "x", "x", &pki.ca_cert);
        target.sni_host = None;
        target.sslmode = "require";
        target.options = Some(format!("tenant=scan{i}"));
        assert!(pg_connect(&target).await.is_err());
    }

    let scrape = scrape(&sluice);
    let tenants = scrape.label_values("sluice_queries_total", "tenant");
    assert_eq!(tenants.len(), 3, "{tenants:?}");
    assert!(tenants.contains("_other"), "{tenants:?}");
    let total: f64 = scrape
        .samples("sluice_queries_total")
        .iter()
        .map(|s| s.value)
        .sum();
    assert_eq!(
        total, 15.0,
        "1 + 2 + 3 + 4 + 5 queries, none lost by folding"
    );
    assert_eq!(scrape.value("sluice_metrics_tenant_series", &[]), Some(2.0));
    assert_eq!(
        scrape.label_values("sluice_connections_rejected_total", "tenant"),
        BTreeSet::from(["_unknown".to_owned()])
    );
    for name in [
        "sluice_client_connections",
        "sluice_server_connections",
        "sluice_bytes_total",
    ] {
        assert_eq!(scrape.label_values(name, "tenant").len(), 3, "{name}");
    }
}

/// `[metrics] enabled = false`: no `/metrics`, and the proxy works as before.
#[test]
fn metrics_can_be_switched_off() {
    let env =
        TwoTenants::start(BIN.as_ref(), |c| c.metrics = vec!["enabled = false".into()]).unwrap();
    assert!(psql(&env.target("acme"), "select 1").success);
    let r = get(env.sluice.admin_addr, "/metrics", None);
    assert_eq!(r.status, 404);
    assert_eq!(r.json()["error"]["code"], "not_found");
}

/// Polls `/metrics` until `line` is in it (or 40 s pass); returns whether it came.
fn metrics_show(sluice: &SluiceProcess, line: &str) -> bool {
    for _ in 0..80 {
        if get(sluice.admin_addr, "/metrics", None).body.contains(line) {
            return true;
        }
        std::thread::sleep(Duration::from_millis(500));
    }
    false
}

#[test]
fn a_backend_that_is_down_is_visible_before_any_client_tried_it() {
    // No client ever connects, so no pool exists: the supervisor's own checks (a
    // connect to a config tenant's address) are all there is to go on.
    let mut env = TwoTenants::start(BIN.as_ref(), |_| {}).expect("environment");
    let key = Some(env.sluice.admin_key.as_str());
    assert!(
        metrics_show(&env.sluice, "sluice_backend_up{tenant=\"acme\"} 1"),
        "acme's backend is checked at start"
    );
    env.acme
        .stop(localpg::StopMode::Fast)
        .expect("stopping acme's cluster");
    assert!(
        metrics_show(&env.sluice, "sluice_backend_up{tenant=\"acme\"} 0"),
        "a stopped backend shows as down\n{}",
        get(env.sluice.admin_addr, "/metrics", None).body
    );
    assert!(get(env.sluice.admin_addr, "/metrics", None)
        .body
        .contains("sluice_backend_up{tenant=\"globex\"} 1"));
    let ready = get(env.sluice.admin_addr, "/readyz", None);
    assert_eq!(
        ready.status, 200,
        "one tenant down leaves the process ready"
    );
    let down = ready.json()["backends_down"].clone();
    assert_eq!(down.as_array().map(Vec::len), Some(1), "{down}");
    assert_eq!(down[0]["tenant"], "acme", "{down}");
    assert!(
        down[0]["error"].as_str().is_some_and(|e| !e.is_empty()),
        "{down}"
    );
    let stats = get(env.sluice.admin_addr, "/v1/tenants/acme/stats", key).json();
    assert_eq!(stats["backend_up"], false, "{stats}");

    env.acme.restart().expect("starting acme's cluster again");
    assert!(
        metrics_show(&env.sluice, "sluice_backend_up{tenant=\"acme\"} 1"),
        "a backend that came back shows as up"
    );
    let ready = get(env.sluice.admin_addr, "/readyz", None).json();
    assert_eq!(ready["backends_down"], serde_json::json!([]), "{ready}");
}
