//! The data path end to end: real clients → real `sluice serve` → real Postgres
//! clusters, one per tenant.

use std::time::{Duration, Instant};

use testkit::{pg_connect, pgbench, psql, scalar, TwoTenants};

const BIN: &str = env!("CARGO_BIN_EXE_sluice");

fn env() -> TwoTenants {
    TwoTenants::start(BIN.as_ref(), |_| {}).expect("test environment")
}

fn sqlstate(err: &tokio_postgres::Error) -> String {
    err.as_db_error()
        .map(|e| e.code().code().to_owned())
        .unwrap_or_else(|| format!("no db error: {err}"))
}

fn message(err: &tokio_postgres::Error) -> String {
    err.as_db_error()
        .map(|e| e.message().to_owned())
        .unwrap_or_default()
}

#[test]
fn psql_reaches_each_tenants_own_cluster_by_host_name() {
    let env = env();
    for tenant in ["acme", "globex"] {
        let out = psql(&env.target(tenant), "select tenant from tenant_marker");
        assert!(
            out.success,
            "{tenant}: {}\n{}",
            out.stderr,
            env.sluice.log()
        );
        assert_eq!(out.stdout, tenant);
    }
    // SCRAM-SHA-256-PLUS was negotiated (libpq prefers channel binding over TLS),
    // and the session is really on TLS.
    let out = psql(
        &env.target("globex"),
        "select ssl from pg_stat_ssl where pid = pg_backend_pid()",
    );
    assert!(out.success, "{}", out.stderr);
    assert_eq!(out.stdout, "t", "Sluice → globex backend uses TLS");
    let mut strict = env.target("acme");
    strict.conninfo_extra = Some("channel_binding=require".into());
    let out = psql(&strict, "select 1");
    assert!(out.success, "channel binding: {}", out.stderr);
}

#[tokio::test]
async fn tokio_postgres_reaches_each_tenant() {
    let env = env();
    for tenant in ["acme", "globex"] {
        let client = pg_connect(&env.target(tenant)).await.expect("connect");
        let row = client
            .query_one("select tenant from tenant_marker", &[])
            .await
            .unwrap();
        assert_eq!(row.get::<_, String>(0), tenant);
        // Extended protocol with parameters, through the relay.
        let row = client
            .query_one("select $1::int + 1", &[&41i32])
            .await
            .unwrap();
        assert_eq!(row.get::<_, i32>(0), 42);
    }
}

#[test]
fn pgbench_runs_without_failures() {
    let env = env();
    let target = env.target("globex");
    let init = pgbench(&target, &["-i", "-s", "1", "-q"]);
    assert!(init.success, "pgbench -i: {}", init.stderr);
    let run = pgbench(&target, &["-S", "-c", "16", "-j", "2", "-T", "5"]);
    assert!(run.success, "pgbench: {}\n{}", run.stderr, env.sluice.log());
    let processed = run
        .stdout
        .lines()
        .find_map(|l| l.strip_prefix("number of transactions actually processed: "))
        .expect("pgbench summary");
    assert_ne!(processed.trim(), "0");
    let failed = run
        .stdout
        .lines()
        .find_map(|l| l.strip_prefix("number of failed transactions: "))
        .expect("pgbench failure count");
    assert!(failed.starts_with("0 "), "failed transactions: {failed}");
}

#[tokio::test]
async fn tenant_from_options_without_sni() {
    let env = env();
    let mut target = env.target("acme");
    target.sni_host = None;
    target.sslmode = "require";
    target.options = Some("-c tenant=acme -c application_name=opt-test".into());
    let client = pg_connect(&target).await.expect("options=tenant=acme");
    let row = client
        .query_one(
            "select tenant, current_setting('application_name') from tenant_marker",
            &[],
        )
        .await
        .unwrap();
    assert_eq!(row.get::<_, String>(0), "acme");
    // Sluice removed its own word and passed the rest on.
    assert_eq!(row.get::<_, String>(1), "opt-test");

    let out = psql(&target, "select tenant from tenant_marker");
    assert!(out.success, "psql with options: {}", out.stderr);
    assert_eq!(out.stdout, "acme");
}

#[tokio::test]
async fn rejections_carry_the_designed_sqlstates() {
    let env = env();

    let mut no_tenant = env.target("acme");
    no_tenant.sni_host = None;
    no_tenant.sslmode = "require";
    let err = pg_connect(&no_tenant).await.unwrap_err();
    assert_eq!(sqlstate(&err), "08004", "{err}");

    let err = pg_connect(&env.target("nope")).await.unwrap_err();
    assert_eq!(sqlstate(&err), "3D000", "{err}");
    assert!(message(&err).contains("tenant \"nope\" does not exist"));

    let mut plaintext = env.target("acme");
    plaintext.sni_host = None;
    plaintext.sslmode = "disable";
    plaintext.options = Some("tenant=acme".into());
    let err = pg_connect(&plaintext).await.unwrap_err();
    assert_eq!(sqlstate(&err), "28000", "{err}");

    let mut wrong_password = env.target("acme");
    wrong_password.password = "wrong".into();
    let err = pg_connect(&wrong_password).await.unwrap_err();
    assert_eq!(sqlstate(&err), "28P01", "{err}");
    assert!(message(&err).contains("password authentication failed for user \"app\""));

    let mut unknown_role = env.target("acme");
    unknown_role.user = "nobody".into();
    let err = pg_connect(&unknown_role).await.unwrap_err();
    assert_eq!(sqlstate(&err), "28P01", "{err}");
    assert!(message(&err).contains("password authentication failed for user \"nobody\""));

    // The tenant's auth_user is Sluice's own role: no client logs in as it (unless the
    // tenant allows it), whatever the password; tests/hostile/prelogin.rs has more.
    let mut auth_user = env.target("acme");
    auth_user.user = "sluice_auth".into();
    let err = pg_connect(&auth_user).await.unwrap_err();
    assert_eq!(sqlstate(&err), "28000", "{err}");
    assert_eq!(
        message(&err),
        "role \"sluice_auth\" is Sluice's auth_user and cannot log in through Sluice"
    );

    // A database that does not exist: the backend's own answer reaches the client.
    let mut no_db = env.target("globex");
    no_db.dbname = "missing".into();
    let err = pg_connect(&no_db).await.unwrap_err();
    assert_eq!(sqlstate(&err), "3D000", "{err}");
    // ...and leaves no pool behind (no lasting stats row per name a client makes up).
    let pools = env
        .sluice
        .api("GET", "/v1/pools?tenant=globex", "", "")
        .json();
    let databases: Vec<&str> = pools["pools"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|p| p["database"].as_str())
        .collect();
    assert!(!databases.contains(&"missing"), "{pools}");
}

#[test]
fn md5_roles_authenticate_and_reach_the_backend() {
    let env = env();
    let mut target = env.target("acme");
    target.user = "md5user".into();
    let out = psql(&target, "select current_user || '@' || current_database()");
    assert!(out.success, "{}\n{}", out.stderr, env.sluice.log());
    assert_eq!(out.stdout, "md5user@app");
}

#[tokio::test]
async fn session_state_does_not_leak_between_clients() {
    let env = TwoTenants::start(BIN.as_ref(), |c| {
        c.default_pool = vec!["size = 1".into()];
    })
    .unwrap();
    let target = env.target("acme");

    let first = pg_connect(&target).await.unwrap();
    let pid1: i32 = scalar(&first, "select pg_backend_pid()").await;
    first
        .batch_execute(
            "SET statement_timeout = '4242s'; \
             CREATE TEMP TABLE leak (x int); \
             PREPARE leaky AS SELECT 1; \
             SELECT set_config('sluice.test', 'leaked', false)",
        )
        .await
        .unwrap();
    drop(first);

    // Pool size 1: the next client must get the same server connection, once it is
    // back (the first client's goodbye is asynchronous).
    let deadline = Instant::now() + Duration::from_secs(10);
    let second = loop {
        let c = pg_connect(&target).await.unwrap();
        let pid: i32 = scalar(&c, "select pg_backend_pid()").await;
        if pid == pid1 {
            break c;
        }
        assert!(
            Instant::now() < deadline,
            "never got server connection {pid1} back"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let timeout: String = scalar(&second, "show statement_timeout").await;
    assert_eq!(timeout, "0");
    let temp: i64 = scalar(
        &second,
        "select count(*) from pg_class where relname = 'leak'",
    )
    .await;
    assert_eq!(temp, 0, "temp table survived");
    let prepared: i64 = scalar(
        &second,
        "select count(*) from pg_prepared_statements where name = 'leaky'",
    )
    .await;
    assert_eq!(prepared, 0, "prepared statement survived");
    let custom: Option<String> =
        scalar(&second, "select current_setting('sluice.test', true)").await;
    assert!(custom.unwrap_or_default().is_empty(), "custom GUC survived");
}

#[tokio::test]
async fn a_client_that_vanishes_while_idle_gives_its_connection_back() {
    // A client that disappears between queries without Terminate and, over TLS, without
    // close_notify (a killed process, a dropped connection object) leaves the server
    // connection at ReadyForQuery: it goes back to the pool like after a goodbye.
    let env = TwoTenants::start(BIN.as_ref(), |c| {
        c.default_pool = vec!["size = 1".into()];
    })
    .unwrap();
    let target = env.target("acme");
    let (first, connection) = testkit::clients::pg_connect_from(&target, [127, 0, 0, 1].into())
        .await
        .unwrap();
    let pid1: i32 = scalar(&first, "select pg_backend_pid()").await;
    // Dropping the task's connection closes the socket: no Terminate, no close_notify.
    connection.abort();
    let _ = connection.await;
    drop(first);

    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let c = pg_connect(&target).await.unwrap();
        let pid: i32 = scalar(&c, "select pg_backend_pid()").await;
        if pid == pid1 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "server connection {pid1} was not given back (got {pid})"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn an_abandoned_transaction_is_rolled_back_before_reuse() {
    let env = TwoTenants::start(BIN.as_ref(), |c| {
        c.default_pool = vec!["size = 1".into()];
    })
    .unwrap();
    let target = env.target("acme");
    let first = pg_connect(&target).await.unwrap();
    first
        .batch_execute("BEGIN; INSERT INTO tenant_marker VALUES ('uncommitted')")
        .await
        .unwrap();
    drop(first);
    let second = pg_connect(&target).await.unwrap();
    let n: i64 = scalar(&second, "select count(*) from tenant_marker").await;
    // Had the transaction survived on this (only) server connection, this session
    // would see its own uncommitted row.
    assert_eq!(n, 1, "the first client's transaction was not rolled back");
}

#[tokio::test]
async fn cancel_stops_a_running_query() {
    let env = env();
    let client = pg_connect(&env.target("globex")).await.unwrap();
    let token = client.cancel_token();
    let started = Instant::now();
    let sleeper = tokio::spawn(async move { client.simple_query("select pg_sleep(30)").await });
    tokio::time::sleep(Duration::from_millis(500)).await;
    let tls = testkit::clients::tls_connector(&env.pki.ca_cert);
    token.cancel_query(tls).await.expect("cancel request sent");
    let result = sleeper.await.unwrap();
    let err = result.expect_err("query was cancelled");
    assert_eq!(sqlstate(&err), "57014", "{err}");
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "cancel took {:?}",
        started.elapsed()
    );
}

#[tokio::test]
async fn a_killed_backend_errors_its_clients_and_the_pool_recovers() {
    let mut env = env();
    let target = env.target("acme");
    let client = pg_connect(&target).await.unwrap();
    client.simple_query("select 1").await.unwrap();
    let bystander = pg_connect(&env.target("globex")).await.unwrap();

    env.acme.stop(localpg::StopMode::Immediate).unwrap();
    assert!(client.simple_query("select 1").await.is_err());
    let err = pg_connect(&target).await.unwrap_err();
    assert_eq!(sqlstate(&err), "08006", "{err}");
    assert!(message(&err).contains("backend for tenant \"acme\" is unavailable"));
    // Other tenants are not affected.
    bystander.simple_query("select 1").await.unwrap();

    env.acme.restart().unwrap();
    let deadline = Instant::now() + Duration::from_secs(15);
    let client = loop {
        match pg_connect(&target).await {
            Ok(c) => break c,
            Err(e) if Instant::now() < deadline => {
                let _ = e;
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(e) => panic!("pool never recovered: {e}\n{}", env.sluice.log()),
        }
    };
    let row = client
        .query_one("select tenant from tenant_marker", &[])
        .await
        .unwrap();
    assert_eq!(row.get::<_, String>(0), "acme");
    drop(client);
    // Back to baseline: one idle pooled connection, nothing leaked.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let n = env.acme.sessions_of("app");
        if n == 1 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "backend has {n} sessions of app, expected 1"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[test]
fn sigterm_drains_and_exits_cleanly() {
    let mut env = env();
    let out = psql(&env.target("acme"), "select 1");
    assert!(out.success);
    let status = env
        .sluice
        .signal_and_wait(nix::sys::signal::Signal::SIGTERM, Duration::from_secs(15))
        .expect("sluice exits after SIGTERM");
    assert!(
        status.success(),
        "exit status {status:?}\n{}",
        env.sluice.log()
    );
    assert!(env.sluice.log().contains("stopped"));
}

/// A login queued for a server connection waits up to `max_wait_ms` (default 120 s, as
/// PgBouncer's `query_wait_timeout`), past `login_timeout_ms`: once its password is
/// proved, the pool's own bound applies, and a full pool answers 53300, not 57014.
#[tokio::test]
async fn a_queued_login_waits_up_to_max_wait_past_the_login_timeout() {
    let env = TwoTenants::start(BIN.as_ref(), |c| {
        c.login_timeout_ms = 1000;
        c.default_pool = vec!["size = 1".into()];
        c.tenants[1].pool = vec!["max_wait_ms = 2500".into()];
    })
    .unwrap();
    // The default, as the API shows it.
    let acme = env.sluice.api("GET", "/v1/tenants/acme", "", "").json();
    assert_eq!(acme["pool"]["max_wait_ms"], 120_000, "{acme}");

    // acme: the waiter is still queued when the login timeout has passed, and gets the
    // connection when the holder leaves.
    let target = env.target("acme");
    let holder = pg_connect(&target).await.unwrap();
    holder.simple_query("select 1").await.unwrap();
    let waiter = tokio::spawn({
        let target = target.clone();
        async move { pg_connect(&target).await }
    });
    // The holder leaves only after the login timeout: a login still bound by it would
    // have been refused with 57014 by then.
    tokio::time::sleep(Duration::from_millis(2000)).await;
    drop(holder);
    let client = waiter.await.unwrap().expect("served after the holder left");
    client.simple_query("select 1").await.unwrap();

    // globex (max_wait_ms 2500): past the login timeout too, then the pool's 53300.
    let target = env.target("globex");
    let holder = pg_connect(&target).await.unwrap();
    holder.simple_query("select 1").await.unwrap();
    let err = pg_connect(&target).await.unwrap_err();
    assert_eq!(sqlstate(&err), "53300", "{err}");
    assert_eq!(message(&err), "timed out waiting for a server connection");
}

#[tokio::test]
async fn a_full_pool_queues_then_times_out_with_53300() {
    let env = TwoTenants::start(BIN.as_ref(), |c| {
        c.default_pool = vec!["size = 1".into(), "max_wait_ms = 300".into()];
    })
    .unwrap();
    let target = env.target("acme");
    let holder = pg_connect(&target).await.unwrap();
    holder.simple_query("select 1").await.unwrap();
    let err = pg_connect(&target).await.unwrap_err();
    assert_eq!(sqlstate(&err), "53300", "{err}");
    assert_eq!(message(&err), "timed out waiting for a server connection");

    // A waiter gets the connection as soon as the holder leaves.
    let waiter = tokio::spawn({
        let target = target.clone();
        async move { pg_connect(&target).await }
    });
    tokio::time::sleep(Duration::from_millis(100)).await;
    drop(holder);
    let client = waiter.await.unwrap().expect("queued client served");
    client.simple_query("select 1").await.unwrap();
    assert!(env.acme.sessions_of("app") <= 1, "pool size respected");
}

#[tokio::test]
async fn idle_server_connections_are_closed_after_idle_timeout() {
    let env = TwoTenants::start(BIN.as_ref(), |c| {
        c.default_pool = vec!["idle_timeout_s = 1".into()];
    })
    .unwrap();
    let client = pg_connect(&env.target("acme")).await.unwrap();
    client.simple_query("select 1").await.unwrap();
    drop(client);
    let deadline = Instant::now() + Duration::from_secs(10);
    while env.acme.sessions_of("app") != 0 {
        assert!(Instant::now() < deadline, "idle connection never closed");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test]
async fn server_connections_are_retired_after_their_lifetime() {
    let env = TwoTenants::start(BIN.as_ref(), |c| {
        c.default_pool = vec!["size = 1".into(), "lifetime_s = 1".into()];
    })
    .unwrap();
    let target = env.target("acme");
    let first = pg_connect(&target).await.unwrap();
    let pid1: i32 = scalar(&first, "select pg_backend_pid()").await;
    tokio::time::sleep(Duration::from_millis(1200)).await;
    drop(first);
    tokio::time::sleep(Duration::from_millis(200)).await;
    let second = pg_connect(&target).await.unwrap();
    let pid2: i32 = scalar(&second, "select pg_backend_pid()").await;
    assert_ne!(pid1, pid2, "an expired connection was reused");
}

#[tokio::test]
async fn an_expired_role_cannot_log_in() {
    let env = env();
    let mut target = env.target("acme");
    target.user = testkit::cluster::EXPIRED_ROLE.into();
    let err = pg_connect(&target).await.unwrap_err();
    assert_eq!(sqlstate(&err), "28P01", "{err}");
    assert!(
        !env.sluice.log().contains("session started"),
        "Sluice itself refuses the expired role, before any backend login"
    );
}

#[tokio::test]
async fn backend_tls_require_encrypts_without_verifying() {
    let env = TwoTenants::start(BIN.as_ref(), |c| {
        let globex = &mut c.tenants[1];
        globex.host = "127.0.0.1".into();
        globex.tls = "require";
        globex.tls_ca = None;
    })
    .unwrap();
    let client = pg_connect(&env.target("globex")).await.unwrap();
    let row = client
        .query_one(
            "select ssl from pg_stat_ssl where pid = pg_backend_pid()",
            &[],
        )
        .await
        .unwrap();
    assert!(row.get::<_, bool>(0), "Sluice → backend is TLS");
}

#[tokio::test]
async fn sigterm_lets_clients_finish_then_terminates_them_with_57p01() {
    let mut env = TwoTenants::start(BIN.as_ref(), |c| c.shutdown_grace_s = 2).unwrap();
    let target = env.target("acme");
    let client = pg_connect(&target).await.unwrap();
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(env.sluice.pid() as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    // Draining: the connected client keeps working, new clients are not accepted.
    client
        .simple_query("select 1")
        .await
        .expect("served during the grace period");
    assert!(
        pg_connect(&target).await.is_err(),
        "accepted a client while draining"
    );
    // After the grace period the client is told why it goes.
    let deadline = Instant::now() + Duration::from_secs(10);
    let err = loop {
        match client.simple_query("select 1").await {
            Err(e) => break e,
            Ok(_) if Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(200)).await
            }
            Ok(_) => panic!("client never terminated"),
        }
    };
    let db = err.as_db_error().map(|e| e.code().code().to_owned());
    assert!(
        db.as_deref() == Some("57P01") || err.is_closed(),
        "unexpected error {err:?}"
    );
    let status = env
        .sluice
        .signal_and_wait(nix::sys::signal::Signal::SIGTERM, Duration::from_secs(10))
        .expect("sluice exits after the grace period");
    assert!(status.success(), "{status:?}");
    assert!(env.sluice.log().contains("terminating remaining clients"));
}

#[tokio::test]
async fn reserve_connections_serve_clients_that_waited() {
    let env = TwoTenants::start(BIN.as_ref(), |c| {
        c.default_pool = vec![
            "size = 1".into(),
            "reserve = 1".into(),
            "reserve_wait_ms = 200".into(),
            "max_wait_ms = 5000".into(),
        ];
    })
    .unwrap();
    let target = env.target("acme");
    let first = pg_connect(&target).await.unwrap();
    first.simple_query("select 1").await.unwrap();
    let started = Instant::now();
    let second = pg_connect(&target).await.expect("served from the reserve");
    assert!(
        started.elapsed() >= Duration::from_millis(150),
        "reserve used before reserve_wait"
    );
    second.simple_query("select 1").await.unwrap();
    assert_eq!(env.acme.sessions_of("app"), 2);
    // Beyond size + reserve, clients wait and time out as usual.
    drop((first, second));
}

#[tokio::test]
async fn min_idle_keeps_connections_warm() {
    let env = TwoTenants::start(BIN.as_ref(), |c| {
        c.default_pool = vec!["min_idle = 2".into()];
    })
    .unwrap();
    // Nothing is opened before a client has logged in (no credential to use yet).
    assert_eq!(env.acme.sessions_of("app"), 0);
    let client = pg_connect(&env.target("acme")).await.unwrap();
    client.simple_query("select 1").await.unwrap();
    drop(client);
    let deadline = Instant::now() + Duration::from_secs(10);
    while env.acme.sessions_of("app") < 2 {
        assert!(Instant::now() < deadline, "min_idle never reached");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test]
async fn a_dead_backend_fails_fast_instead_of_being_hammered() {
    let mut env = env();
    let target = env.target("acme");
    pg_connect(&target)
        .await
        .unwrap()
        .simple_query("select 1")
        .await
        .unwrap();
    env.acme.stop(localpg::StopMode::Immediate).unwrap();
    for _ in 0..3 {
        let err = pg_connect(&target).await.unwrap_err();
        assert_eq!(sqlstate(&err), "08006", "{err}");
    }
    assert!(
        env.sluice.log().contains("backend failed moments ago"),
        "no fail-fast after a failed connect"
    );
}

#[tokio::test]
async fn session_mode_query_timeout_cancels_and_keeps_the_client() {
    let env = TwoTenants::start(BIN.as_ref(), |c| {
        c.default_limits = vec!["query_timeout_ms = 500".into()];
    })
    .unwrap();
    let client = pg_connect(&env.target("globex")).await.unwrap();
    let started = Instant::now();
    let err = client
        .simple_query("select pg_sleep(10)")
        .await
        .unwrap_err();
    assert_eq!(sqlstate(&err), "57014", "{err}");
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "took {:?}",
        started.elapsed()
    );
    client.simple_query("select 1").await.unwrap();
    // A second slow query in the same session is cancelled too.
    let err = client
        .simple_query("select pg_sleep(10)")
        .await
        .unwrap_err();
    assert_eq!(sqlstate(&err), "57014", "{err}");
}

#[tokio::test]
async fn session_mode_idle_in_transaction_timeout_ends_the_client() {
    let env = TwoTenants::start(BIN.as_ref(), |c| {
        c.default_pool = vec!["size = 1".into()];
        c.default_limits = vec!["idle_in_transaction_timeout_ms = 500".into()];
    })
    .unwrap();
    let target = env.target("acme");
    let idle = pg_connect(&target).await.unwrap();
    idle.batch_execute("BEGIN; SELECT 1").await.unwrap();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert!(idle.simple_query("select 1").await.is_err());
    assert!(env.sluice.log().contains("idle-in-transaction timeout"));
    // Rolled back and handed to the next client (pool of one).
    let next = pg_connect(&target).await.unwrap();
    next.simple_query("select 1").await.unwrap();
    // Idle outside a transaction is fine.
    tokio::time::sleep(Duration::from_millis(1000)).await;
    next.simple_query("select 1").await.unwrap();
}

#[test]
fn json_logs_are_one_object_per_line_and_carry_no_secret() {
    let mut env = TwoTenants::start(BIN.as_ref(), |c| c.log_format = "json").unwrap();
    let ok = psql(&env.target("acme"), "select tenant from tenant_marker");
    assert!(ok.success, "{}", ok.stderr);
    let mut wrong = env.target("globex");
    wrong.password = "Sup3r-Secret-Pw".into();
    assert!(!psql(&wrong, "select 1").success);
    env.sluice
        .signal_and_wait(nix::sys::signal::Signal::SIGTERM, Duration::from_secs(15))
        .expect("sluice exits");
    let log = env.sluice.log();
    let mut lines = 0;
    for line in log.lines() {
        let value: serde_json::Value =
            serde_json::from_str(line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}"));
        assert!(
            value.get("level").is_some() && value.get("fields").is_some(),
            "{line}"
        );
        lines += 1;
    }
    assert!(lines > 3, "too few log lines:\n{log}");
    // The connection span's fields ride along.
    assert!(
        log.lines()
            .any(|l| l.contains("\"tenant\":\"acme\"") && l.contains("session started")),
        "{log}"
    );
    // log_connections: the end of acme's connection, with its duration and bytes.
    let closed = log
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .find(|v| v["fields"]["message"] == "connection closed" && v["span"]["tenant"] == "acme")
        .unwrap_or_else(|| panic!("no connection closed line for acme:\n{log}"));
    assert!(closed["fields"]["duration_ms"].is_u64(), "{closed}");
    assert!(
        closed["fields"]["bytes_from_client"].as_u64().unwrap() > 0,
        "{closed}"
    );
    assert!(
        closed["fields"]["bytes_to_client"].as_u64().unwrap() > 0,
        "{closed}"
    );
    assert_eq!(closed["fields"]["outcome"], "client left", "{closed}");
    for secret in [
        env.acme.app_password.as_str(),
        env.globex.app_password.as_str(),
        "Sup3r-Secret-Pw",
        ",p=", // a SCRAM client proof
    ] {
        assert!(!log.contains(secret), "log contains {secret:?}");
    }
    let auth_password = std::fs::read_to_string(&env.acme.auth_password_file).unwrap();
    assert!(
        !log.contains(auth_password.trim()),
        "log contains the auth_user password"
    );
}
