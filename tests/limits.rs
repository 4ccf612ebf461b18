//! Per-tenant limits end to end: each limit below and at its value (exact SQLSTATE and
//! message), raised and lowered live through `PATCH /v1/tenants/{id}`, bans per client
//! address (clients connect from 127.0.0.2 / 127.0.0.3), allow-lists, plans.

use std::net::IpAddr;
use std::time::{Duration, Instant};

use testkit::http::{get, request, HttpResponse};
use testkit::{pg_connect, pg_connect_from, psql, SluiceProcess, TwoTenants};

const BIN: &str = env!("CARGO_BIN_EXE_sluice");

fn env(tweak: impl FnOnce(&mut testkit::SluiceConfig)) -> TwoTenants {
    TwoTenants::start(BIN.as_ref(), tweak).expect("test environment")
}

fn patch(sluice: &SluiceProcess, tenant: &str, body: &str) -> HttpResponse {
    request(
        sluice.admin_addr,
        "PATCH",
        &format!("/v1/tenants/{tenant}"),
        Some(&sluice.admin_key),
        "Content-Type: application/json\r\n",
        body.as_bytes(),
    )
    .expect("PATCH")
}

fn code_and_message(err: &tokio_postgres::Error) -> (String, String) {
    match err.as_db_error() {
        Some(db) => (db.code().code().to_owned(), db.message().to_owned()),
        None => ("none".into(), err.to_string()),
    }
}

fn rejected(sluice: &SluiceProcess, tenant: &str, reason: &str) -> u64 {
    let body = get(sluice.admin_addr, "/metrics", None).body;
    let prefix =
        format!("sluice_connections_rejected_total{{tenant=\"{tenant}\",reason=\"{reason}\"}} ");
    body.lines()
        .find_map(|l| l.strip_prefix(prefix.as_str()))
        .map_or(0, |v| v.trim().parse().unwrap())
}

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

#[tokio::test]
async fn tenant_connection_limit_and_live_changes() {
    let env = env(|c| c.default_limits = vec!["max_client_connections = 2".into()]);
    let target = env.target("acme");
    let a = pg_connect(&target).await.unwrap();
    let b = pg_connect(&target).await.unwrap();
    let err = pg_connect(&target).await.expect_err("third connection");
    assert_eq!(
        code_and_message(&err),
        (
            "53300".to_owned(),
            "too many connections for tenant \"acme\"".to_owned()
        )
    );
    // Another tenant is not affected.
    assert!(pg_connect(&env.target("globex")).await.is_ok());
    assert_eq!(rejected(&env.sluice, "acme", "too_many_connections"), 1);

    // Raised live: the next connection gets in.
    let r = patch(
        &env.sluice,
        "acme",
        r#"{"limits": {"max_client_connections": 3}}"#,
    );
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.json()["limits"]["max_client_connections"], 3);
    let c = pg_connect(&target)
        .await
        .expect("room after raising the limit");
    // Lowered live: nobody is cut off, new ones are refused.
    let r = patch(
        &env.sluice,
        "acme",
        r#"{"limits": {"max_client_connections": 1}}"#,
    );
    assert_eq!(r.status, 200, "{}", r.body);
    for client in [&a, &b, &c] {
        client
            .simple_query("select 1")
            .await
            .expect("still connected");
    }
    assert!(pg_connect(&target).await.is_err());
    drop((a, b));
    drop(c);
    // The slots come back as clients leave.
    let mut ok = false;
    for _ in 0..100 {
        if pg_connect(&target).await.is_ok() {
            ok = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(ok, "a slot frees up once the clients are gone");
    // 0 = no limit.
    let r = patch(
        &env.sluice,
        "acme",
        r#"{"limits": {"max_client_connections": 0}}"#,
    );
    assert_eq!(r.json()["limits"]["max_client_connections"], 0);
}

#[tokio::test]
async fn connect_rate_refuses_a_burst_and_follows_live_changes() {
    let env = env(|c| c.default_limits = vec!["connect_rate = 2".into()]);
    let target = env.target("acme");
    // Burst of twice the rate, then 53400.
    let mut refused = None;
    let mut admitted = 0;
    for _ in 0..12 {
        match pg_connect(&target).await {
            Ok(_) => admitted += 1,
            Err(e) => {
                refused = Some(code_and_message(&e));
                break;
            }
        }
    }
    assert!(
        admitted >= 4,
        "the burst (2 × rate) is admitted: {admitted}"
    );
    assert_eq!(
        refused,
        Some((
            "53400".to_owned(),
            "connection rate limit exceeded for tenant \"acme\"".to_owned()
        ))
    );
    assert!(rejected(&env.sluice, "acme", "connect_rate") >= 1);
    // globex has its own bucket.
    assert!(pg_connect(&env.target("globex")).await.is_ok());
    // No limit: everything gets in at once.
    let r = patch(&env.sluice, "acme", r#"{"limits": {"connect_rate": 0}}"#);
    assert_eq!(r.status, 200, "{}", r.body);
    for _ in 0..10 {
        pg_connect(&target).await.expect("no connect rate");
    }
}

#[tokio::test]
async fn query_rate_holds_queries_back_and_follows_live_changes() {
    let env = env(|c| c.default_limits = vec!["query_rate = 20".into()]);
    let client = pg_connect(&env.target("acme")).await.unwrap();
    // 40 (the burst) go at once; the next 20 wait their turn at 20/s.
    let started = Instant::now();
    for _ in 0..60 {
        client.simple_query("select 1").await.unwrap();
    }
    assert!(
        started.elapsed() >= Duration::from_millis(900),
        "60 queries at 20/s with a burst of 40 cannot finish in {:?}",
        started.elapsed()
    );

    // Lowered live under a running session: from now on at most 2/s (+ burst 4).
    let r = patch(
        &env.sluice,
        "acme",
        r#"{"limits": {"query_rate": 2}, "pool": {"max_wait_ms": 10000}}"#,
    );
    assert_eq!(r.status, 200, "{}", r.body);
    let window = Instant::now();
    let mut done = 0u32;
    while window.elapsed() < Duration::from_secs(2) {
        client.simple_query("select 1").await.unwrap();
        done += 1;
    }
    let elapsed = window.elapsed().as_secs_f64();
    assert!(
        f64::from(done) <= 2.0 * elapsed + 4.0 + 1.0,
        "{done} queries in {elapsed:.2}s at 2/s"
    );

    // A wait longer than max_wait: 53400, and the connection ends.
    let r = patch(
        &env.sluice,
        "acme",
        r#"{"limits": {"query_rate": 1}, "pool": {"max_wait_ms": 100}}"#,
    );
    assert_eq!(r.status, 200, "{}", r.body);
    let mut refused = None;
    for _ in 0..10 {
        if let Err(e) = client.simple_query("select 1").await {
            refused = Some(e);
            break;
        }
    }
    let refused = refused.expect("a query over the rate is refused");
    assert_eq!(
        code_and_message(&refused),
        (
            "53400".to_owned(),
            "query rate limit exceeded for tenant \"acme\"".to_owned()
        )
    );
    assert_eq!(rejected(&env.sluice, "acme", "query_rate"), 1);
    // The other tenant never waited.
    let other = pg_connect(&env.target("globex")).await.unwrap();
    for _ in 0..50 {
        other.simple_query("select 1").await.unwrap();
    }
}

#[tokio::test]
async fn query_rate_in_transaction_mode() {
    let env = env(|c| {
        c.default_pool = vec!["mode = \"transaction\"".into()];
        c.default_limits = vec!["query_rate = 10".into()];
    });
    let client = pg_connect(&env.target("acme")).await.unwrap();
    let started = Instant::now();
    for _ in 0..40 {
        client.query_one("select 1", &[]).await.unwrap();
    }
    assert!(
        started.elapsed() >= Duration::from_millis(1900),
        "40 queries at 10/s with a burst of 20 took {:?}",
        started.elapsed()
    );
}

/// Sends a Query of about `bytes` bytes and reads an answer of about `bytes` bytes back;
/// returns how long each half took.
async fn big_query_then_big_answer(client: &tokio_postgres::Client, bytes: usize) -> [Duration; 2] {
    let started = Instant::now();
    let sql = format!("select length('{}')", "x".repeat(bytes));
    let rows = client.simple_query(&sql).await.unwrap();
    let length = rows.iter().find_map(|m| match m {
        tokio_postgres::SimpleQueryMessage::Row(r) => r.get(0).map(str::to_owned),
        _ => None,
    });
    assert_eq!(length, Some(bytes.to_string()));
    let sent = started.elapsed();
    let started = Instant::now();
    let row = client
        .query_one("select repeat('y', $1)", &[&(bytes as i32)])
        .await
        .unwrap();
    assert_eq!(row.get::<_, String>(0).len(), bytes);
    [sent, started.elapsed()]
}

#[tokio::test]
async fn byte_rates_shape_a_tenants_traffic_both_ways_in_both_modes() {
    for mode in ["session", "transaction"] {
        let env = env(|c| {
            c.default_pool = vec![format!("mode = \"{mode}\"")];
            c.tenants[0].limits = vec![
                "client_bytes_rate = 1000000".into(),
                "server_bytes_rate = 1000000".into(),
            ];
        });
        // 3 MB each way at 1 MB/s (a burst of 100 kB): at least 2.9 s each. Only a
        // floor is checked; how fast an unshaped tenant goes is the benchmark's to say.
        let acme = pg_connect(&env.target("acme")).await.unwrap();
        let [sent, answered] = big_query_then_big_answer(&acme, 3_000_000).await;
        assert!(
            sent >= Duration::from_millis(2500) && answered >= Duration::from_millis(2500),
            "{mode}: 3 MB each way at 1 MB/s took {sent:?} and {answered:?}"
        );
        // The other tenant has no byte rate: its traffic never waits on acme's bucket.
        let globex = pg_connect(&env.target("globex")).await.unwrap();
        big_query_then_big_answer(&globex, 3_000_000).await;
        let key = Some(env.sluice.admin_key.as_str());
        let shown = get(env.sluice.admin_addr, "/v1/tenants/acme", key).json();
        assert_eq!(shown["limits"]["client_bytes_rate"], 1_000_000, "{shown}");
        assert_eq!(shown["limits"]["server_bytes_rate"], 1_000_000, "{shown}");

        // Lowered live, under the running session: 1 MB each way at 250 kB/s.
        let r = patch(
            &env.sluice,
            "acme",
            r#"{"limits": {"client_bytes_rate": 250000, "server_bytes_rate": 250000}}"#,
        );
        assert_eq!(r.status, 200, "{}", r.body);
        let [sent, answered] = big_query_then_big_answer(&acme, 1_000_000).await;
        assert!(
            sent >= Duration::from_millis(3000) && answered >= Duration::from_millis(3000),
            "{mode}: 1 MB each way at 250 kB/s took {sent:?} and {answered:?}"
        );
        let r = patch(
            &env.sluice,
            "acme",
            r#"{"limits": {"client_bytes_rate": -1}}"#,
        );
        assert_eq!(r.status, 422, "{}", r.body);
    }
}

#[tokio::test]
async fn failed_logins_ban_one_address_until_it_expires() {
    let env = env(|c| {
        c.default_limits = vec![
            "failed_login_max = 10".into(),
            "failed_login_window_s = 60".into(),
            "failed_login_ban_s = 3".into(),
        ]
    });
    let good = env.target("acme");
    let mut bad = good.clone();
    bad.password = "wrong".into();
    for _ in 0..10 {
        let err = pg_connect_from(&bad, ip("127.0.0.2"))
            .await
            .expect_err("wrong password");
        assert_eq!(code_and_message(&err).0, "28P01");
    }
    // Banned: even the right password is refused, before SCRAM.
    let err = pg_connect_from(&good, ip("127.0.0.2"))
        .await
        .expect_err("banned");
    let (code, message) = code_and_message(&err);
    assert_eq!(code, "28P01");
    assert!(
        message.starts_with("too many failed logins; retry in "),
        "{message}"
    );
    // Other addresses, and the same address for another tenant, are fine.
    pg_connect_from(&good, ip("127.0.0.3"))
        .await
        .expect("127.0.0.3");
    pg_connect_from(&env.target("globex"), ip("127.0.0.2"))
        .await
        .expect("globex from 127.0.0.2");
    assert_eq!(rejected(&env.sluice, "acme", "banned"), 1);

    let key = Some(env.sluice.admin_key.as_str());
    let bans = get(env.sluice.admin_addr, "/v1/tenants/acme/bans", key).json();
    assert_eq!(bans["bans"][0]["ip"], "127.0.0.2", "{bans}");
    assert_eq!(bans["bans"].as_array().unwrap().len(), 1);

    // The ban expires by itself.
    tokio::time::sleep(Duration::from_millis(3200)).await;
    pg_connect_from(&good, ip("127.0.0.2"))
        .await
        .expect("the ban expired");

    // Lifted through the API.
    for _ in 0..10 {
        let _ = pg_connect_from(&bad, ip("127.0.0.4")).await;
    }
    assert!(pg_connect_from(&good, ip("127.0.0.4")).await.is_err());
    let lifted = request(
        env.sluice.admin_addr,
        "DELETE",
        "/v1/tenants/acme/bans?ip=127.0.0.4",
        key,
        "",
        b"",
    )
    .unwrap();
    assert_eq!(lifted.json()["lifted"], 1, "{}", lifted.body);
    pg_connect_from(&good, ip("127.0.0.4"))
        .await
        .expect("ban lifted");
}

#[tokio::test]
async fn allow_list_refuses_other_addresses() {
    let env = env(|c| c.default_limits = vec!["allow_cidrs = [\"127.0.0.3/32\"]".into()]);
    let target = env.target("acme");
    let err = pg_connect_from(&target, ip("127.0.0.2"))
        .await
        .expect_err("not allowed");
    assert_eq!(
        code_and_message(&err),
        (
            "28000".to_owned(),
            "connections from 127.0.0.2 are not allowed for tenant \"acme\"".to_owned()
        )
    );
    pg_connect_from(&target, ip("127.0.0.3"))
        .await
        .expect("allowed address");
    // Widened live.
    let r = patch(
        &env.sluice,
        "acme",
        r#"{"limits": {"allow_cidrs": ["127.0.0.0/8"]}}"#,
    );
    assert_eq!(r.status, 200, "{}", r.body);
    pg_connect_from(&target, ip("127.0.0.2"))
        .await
        .expect("allowed after the change");
    // A bad CIDR is refused whole, and changes nothing.
    let r = patch(
        &env.sluice,
        "acme",
        r#"{"limits": {"allow_cidrs": ["127.0.0.1/8"], "connect_rate": 1}}"#,
    );
    assert_eq!(r.status, 422, "{}", r.body);
    assert!(r.json()["error"]["message"]
        .as_str()
        .unwrap()
        .contains("did you mean 127.0.0.0/8"));
    let now = get(
        env.sluice.admin_addr,
        "/v1/tenants/acme",
        Some(&env.sluice.admin_key),
    )
    .json();
    assert_eq!(now["limits"]["connect_rate"], 50, "{now}");
}

#[tokio::test]
async fn idle_clients_are_disconnected_after_client_idle_timeout() {
    for mode in ["session", "transaction"] {
        let env = env(|c| {
            c.default_pool = vec![format!("mode = \"{mode}\"")];
            c.default_limits = vec!["client_idle_timeout_s = 1".into()];
        });
        let (client, connection) = pg_connect_from(&env.target("acme"), ip("127.0.0.1"))
            .await
            .unwrap();
        client.simple_query("select 1").await.unwrap();
        // A busy client is not idle: a query longer than the timeout is fine.
        client.simple_query("select pg_sleep(1.5)").await.unwrap();
        client.simple_query("select 2").await.unwrap();
        // Then nothing for longer than the timeout: Sluice says goodbye.
        let ended = tokio::time::timeout(Duration::from_secs(10), connection)
            .await
            .expect("the connection ends")
            .unwrap();
        let err = ended.expect_err("ended by Sluice");
        assert_eq!(
            code_and_message(&err),
            (
                "57P05".to_owned(),
                "terminating connection due to idle-session timeout".to_owned()
            ),
            "{mode}"
        );
        assert!(client.simple_query("select 3").await.is_err());
    }
}

#[tokio::test]
async fn process_wide_connection_limit() {
    let env = env(|c| c.proxy_extra = vec!["max_client_connections = 2".into()]);
    let _a = pg_connect(&env.target("acme")).await.unwrap();
    let _b = pg_connect(&env.target("globex")).await.unwrap();
    let err = pg_connect(&env.target("acme")).await.expect_err("full");
    assert_eq!(
        code_and_message(&err),
        (
            "53300".to_owned(),
            "sorry, too many clients already".to_owned()
        )
    );
}

#[tokio::test]
async fn plans_set_limits_and_tenants_override_them() {
    let env = env(|c| {
        c.plans = "\n[plans.nano]\n[plans.nano.limits]\nmax_client_connections = 1\n\
                   [plans.nano.pool]\nsize = 3\n"
            .into();
        for t in &mut c.tenants {
            t.plan = Some("nano".into());
        }
        c.tenants[1].limits = vec!["max_client_connections = 2".into()];
    });
    let _a = pg_connect(&env.target("acme")).await.unwrap();
    assert!(pg_connect(&env.target("acme")).await.is_err(), "nano: 1");
    let _g1 = pg_connect(&env.target("globex")).await.unwrap();
    let _g2 = pg_connect(&env.target("globex"))
        .await
        .expect("override: 2");
    let acme = get(
        env.sluice.admin_addr,
        "/v1/tenants/acme",
        Some(&env.sluice.admin_key),
    )
    .json();
    assert_eq!(acme["pool"]["size"], 3);
    assert_eq!(acme["limits"]["max_client_connections"], 1);
}

#[test]
fn patch_checks_keys_roles_and_input() {
    let env = env(|_| {});
    let sluice = &env.sluice;
    let send = |token: Option<&str>, body: &str| {
        request(
            sluice.admin_addr,
            "PATCH",
            "/v1/tenants/acme",
            token,
            "",
            body.as_bytes(),
        )
        .unwrap()
    };
    let key = Some(sluice.admin_key.as_str());
    assert_eq!(send(None, "{}").status, 401);
    for (body, status) in [
        ("{not json", 400),
        ("", 400),
        (r#"{"pool": {"size": 0}}"#, 422),
        (r#"{"pool": {"colour": "blue"}}"#, 422),
        (r#"{"limits": {"query_rate": -1}}"#, 422),
        (r#"{"pool": {"mode": "statement"}}"#, 422),
        (r#"{"pool": {"min_idle": 50}}"#, 422),
        (r#"{"nonsense": 1}"#, 422),
    ] {
        let r = send(key, body);
        assert_eq!(r.status, status, "{body}: {}", r.body);
        assert!(r.json()["error"]["code"].is_string(), "{body}");
    }
    // A body that does not fit names the field, in plain words.
    let r = send(key, r#"{"pool": {"size": "3"}}"#);
    assert_eq!(r.status, 422, "{}", r.body);
    assert_eq!(
        r.json()["error"]["message"],
        "pool.size: invalid type: string \"3\", expected a whole number"
    );
    let r = send(key, r#"{"limits": {"colour": 1}}"#);
    assert!(
        r.json()["error"]["message"]
            .as_str()
            .is_some_and(|m| m.starts_with("limits.colour: unknown field `colour`")),
        "{}",
        r.body
    );
    let huge = format!(r#"{{"pool": {{"mode": "{}"}}}}"#, "x".repeat(100_000));
    assert_eq!(send(key, &huge).status, 413);
    let missing = request(
        sluice.admin_addr,
        "PATCH",
        "/v1/tenants/nope",
        key,
        "",
        br#"{"pool": {"size": 3}}"#,
    )
    .unwrap();
    assert_eq!(missing.status, 404);
    // Nothing above changed acme.
    let acme = get(sluice.admin_addr, "/v1/tenants/acme", key).json();
    assert_eq!(acme["pool"]["size"], 20);
    // A pool size change is visible in the stats without reconnecting.
    assert!(psql(&env.target("acme"), "select 1").success);
    let r = send(key, r#"{"pool": {"size": 7}}"#);
    assert_eq!(r.status, 200, "{}", r.body);
    let pools = get(sluice.admin_addr, "/v1/pools?tenant=acme", key).json();
    assert_eq!(pools["pools"][0]["size"], 7, "{pools}");
    let list = get(sluice.admin_addr, "/v1/tenants", key).json();
    assert_eq!(list["tenants"].as_array().unwrap().len(), 2);
}

#[tokio::test]
async fn suspension_refuses_new_connections_and_can_end_running_ones() {
    for mode in ["session", "transaction"] {
        let env = env(|c| c.default_pool = vec![format!("mode = \"{mode}\"")]);
        let sluice = &env.sluice;
        let key = Some(sluice.admin_key.as_str());
        let post = |path: &str, body: &str| {
            request(sluice.admin_addr, "POST", path, key, "", body.as_bytes()).unwrap()
        };
        let target = env.target("acme");
        let (running, running_conn) = pg_connect_from(&target, ip("127.0.0.1")).await.unwrap();
        let other = pg_connect(&env.target("globex")).await.unwrap();

        let r = post(
            "/v1/tenants/acme/suspend",
            r#"{"reason": "unpaid invoice"}"#,
        );
        assert_eq!(r.status, 200, "{}", r.body);
        assert_eq!(r.json()["status"], "suspended");
        assert_eq!(r.json()["suspended_reason"], "unpaid invoice");
        let err = pg_connect(&target).await.expect_err("suspended");
        assert_eq!(
            code_and_message(&err),
            (
                "28000".to_owned(),
                "tenant \"acme\" is suspended".to_owned()
            ),
            "{mode}"
        );
        assert_eq!(rejected(sluice, "acme", "suspended"), 1);
        // Without terminate, running sessions carry on.
        running
            .simple_query("select 1")
            .await
            .expect("still running");

        let r = post("/v1/tenants/acme/suspend", r#"{"terminate": true}"#);
        assert_eq!(r.status, 200, "{}", r.body);
        let ended = tokio::time::timeout(Duration::from_secs(10), running_conn)
            .await
            .expect("the running session ends")
            .unwrap()
            .expect_err("ended by Sluice");
        assert_eq!(
            code_and_message(&ended),
            (
                "57P01".to_owned(),
                "terminating connection: tenant \"acme\" is suspended".to_owned()
            ),
            "{mode}"
        );
        // Other tenants are not touched.
        other
            .simple_query("select 1")
            .await
            .expect("globex runs on");

        let r = post("/v1/tenants/acme/resume", "");
        assert_eq!(r.status, 200, "{}", r.body);
        assert_eq!(r.json()["status"], "active");
        let again = pg_connect(&target).await.expect("resumed");
        again.simple_query("select 1").await.unwrap();
        assert_eq!(post("/v1/tenants/nope/suspend", "{}").status, 404);
        assert_eq!(
            post("/v1/tenants/acme/suspend", r#"{"terminat": true}"#).status,
            422
        );
    }
}

#[tokio::test]
async fn server_connections_are_capped_per_tenant_across_its_pools() {
    let env = env(|c| {
        c.default_pool = vec!["max_wait_ms = 1000".into()];
        c.default_limits = vec!["max_server_connections = 1".into()];
    });
    let app = env.target("acme");
    let mut other_db = app.clone();
    other_db.dbname = "postgres".into();

    let first = pg_connect(&app).await.unwrap();
    // Session mode: the first client holds the tenant's only server connection.
    let err = pg_connect(&other_db)
        .await
        .expect_err("at the tenant's cap");
    assert_eq!(
        code_and_message(&err),
        (
            "53300".to_owned(),
            "timed out waiting for a server connection".to_owned()
        )
    );
    // Its connection goes idle in the app pool; the other pool takes its place.
    drop(first);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let second = pg_connect(&other_db)
        .await
        .expect("an idle sibling is closed for it");
    second.simple_query("select 1").await.unwrap();
    let stats = get(
        env.sluice.admin_addr,
        "/v1/tenants/acme/stats",
        Some(&env.sluice.admin_key),
    )
    .json();
    let open: u64 = ["active", "idle", "connecting"]
        .iter()
        .map(|s| stats["servers"][*s].as_u64().unwrap())
        .sum();
    assert_eq!(open, 1, "{stats}");

    // Raised live.
    let r = patch(
        &env.sluice,
        "acme",
        r#"{"limits": {"max_server_connections": 2}}"#,
    );
    assert_eq!(r.status, 200, "{}", r.body);
    let third = pg_connect(&app).await.expect("room after raising the cap");
    third.simple_query("select 1").await.unwrap();
    second.simple_query("select 1").await.unwrap();
}

#[tokio::test]
async fn refusals_reach_the_audit_log_summed_per_tenant_and_reason() {
    let env = env(|c| c.admin_extra = vec!["refusal_audit_interval_s = 1".into()]);
    let mut wrong = env.target("globex");
    wrong.password = "wrong".into();
    for _ in 0..3 {
        assert!(pg_connect(&wrong).await.is_err());
    }
    let key = Some(env.sluice.admin_key.as_str());
    let mut counted = 0;
    for _ in 0..100 {
        let events = get(
            env.sluice.admin_addr,
            "/v1/audit-events?action=tenant.refusals&tenant=globex",
            key,
        )
        .json();
        let rows = events["events"].as_array().cloned().unwrap_or_default();
        counted = rows
            .iter()
            .filter(|e| e["details"]["reason"] == "auth_failed")
            .map(|e| e["details"]["count"].as_u64().unwrap())
            .sum();
        if counted >= 3 {
            // A storm is a few rows, not one per connection.
            assert!(rows.len() <= 3, "{events}");
            assert_eq!(rows[0]["target"], "globex", "{events}");
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(counted, 3);
    let verify = get(env.sluice.admin_addr, "/v1/audit-events/verify", key).json();
    assert_eq!(verify["ok"], true, "{verify}");
}
