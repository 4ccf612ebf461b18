//! Session state in transaction mode, end to end: what one client's SQL leaves on a
//! server connection (settings, roles, prepared statements, LISTEN, temporary tables,
//! advisory locks, cursors WITH HOLD) stays that client's (it is pinned to its
//! connection, which is reset with DISCARD ALL when it leaves) and never reaches another
//! client; under `session_state = "refuse"` such statements fail with 0A000 and the
//! client goes on; Sluice's own statement names cannot be run or dropped from SQL.
//! Pools are smaller than the number of clients throughout.

use testkit::{pg_connect, scalar, TwoTenants};
use tokio_postgres::error::SqlState;
use tokio_postgres::Client;

const BIN: &str = env!("CARGO_BIN_EXE_sluice");

fn env_with(pool: &[&str]) -> TwoTenants {
    let mut lines: Vec<String> = vec!["mode = \"transaction\"".into()];
    lines.extend(pool.iter().map(|s| s.to_string()));
    TwoTenants::start(BIN.as_ref(), move |c| c.default_pool = lines).expect("environment")
}

async fn clients(env: &TwoTenants, n: usize) -> Vec<Client> {
    let mut all = Vec::new();
    for _ in 0..n {
        all.push(pg_connect(&env.target("acme")).await.unwrap());
    }
    all
}

/// Each state-making statement, what the client that ran it sees of it afterwards, and
/// what any other client must see instead.
const CASES: &[(&str, &str, &str, &str)] = &[
    (
        "select set_config('search_path', 'evil', false)",
        "show search_path",
        "evil",
        "\"$user\", public",
    ),
    (
        "SET statement_timeout = '4242s'",
        "show statement_timeout",
        "4242s",
        "0",
    ),
    (
        "do $$ begin perform set_config('work_mem', '7777kB', false); end $$",
        "show work_mem",
        "7777kB",
        "4MB",
    ),
    (
        "select pg_advisory_lock(4242)",
        "select count(*)::text from pg_locks where locktype = 'advisory' and pid = pg_backend_pid()",
        "1",
        "0",
    ),
    (
        "PREPARE mine AS select 'mine'",
        "select count(*)::text from pg_prepared_statements where name = 'mine'",
        "1",
        "0",
    ),
    (
        "CREATE TEMP TABLE mine (x int)",
        "select (to_regclass('pg_temp.mine') is not null)::text",
        "true",
        "false",
    ),
    (
        "DECLARE held CURSOR WITH HOLD FOR select 1",
        "select count(*)::text from pg_cursors where name = 'held'",
        "1",
        "0",
    ),
    (
        "LISTEN mine",
        "select count(*)::text from pg_listening_channels()",
        "1",
        "0",
    ),
];

#[tokio::test]
async fn state_stays_with_the_client_that_made_it() {
    // Two server connections, four clients: the one holding state keeps one of them.
    let env = env_with(&["size = 2"]);
    for &(make, probe, own, others_see) in CASES {
        let all = clients(&env, 4).await;
        let (owner, others) = all.split_first().unwrap();
        owner.batch_execute(make).await.unwrap();
        let pid: i32 = scalar(owner, "select pg_backend_pid()").await;
        for _ in 0..5 {
            // Its own state stays visible to it in its next transactions...
            let seen: String = scalar(owner, probe).await;
            assert_eq!(seen, own, "{make}: the client lost its own state");
            let again: i32 = scalar(owner, "select pg_backend_pid()").await;
            assert_eq!(again, pid, "{make}: the client changed server connection");
            // ...and never reaches another client, whichever connection it gets.
            for other in others {
                let seen: String = scalar(other, probe).await;
                assert_eq!(seen, others_see, "{make}: another client sees it");
                let theirs: i32 = scalar(other, "select pg_backend_pid()").await;
                assert_ne!(
                    theirs, pid,
                    "{make}: another client got the pinned connection"
                );
            }
        }
        // When the owner leaves, its connection is reset before anyone gets it.
        drop(all);
        let next = clients(&env, 2).await;
        for client in &next {
            for _ in 0..3 {
                let seen: String = scalar(client, probe).await;
                assert_eq!(seen, others_see, "{make}: state outlived its client");
            }
        }
    }
    assert!(
        env.sluice
            .log()
            .contains("client pinned to its server connection"),
        "a pin is logged"
    );
}

#[tokio::test]
async fn a_set_of_a_reported_setting_does_not_pin() {
    let env = env_with(&["size = 1"]);
    let all = clients(&env, 2).await;
    all[0]
        .batch_execute("SET application_name = 'mine'")
        .await
        .unwrap();
    // With one server connection, the other client could not run if the first were
    // pinned.
    let name: String = scalar(&all[1], "show application_name").await;
    assert_ne!(name, "mine");
    let name: String = scalar(&all[0], "show application_name").await;
    assert_eq!(name, "mine");
}

fn pools(env: &TwoTenants) -> serde_json::Value {
    let response = env.sluice.api("GET", "/v1/pools?tenant=acme", "", "");
    assert_eq!(response.status, 200, "{}", response.body);
    response.json()
}

fn metric(env: &TwoTenants, line_start: &str) -> Option<f64> {
    let response = testkit::http::get(env.sluice.admin_addr, "/metrics", None);
    response
        .body
        .lines()
        .find_map(|l| l.strip_prefix(line_start))
        .and_then(|v| v.trim().parse().ok())
}

#[tokio::test]
async fn pins_are_counted_and_discard_all_unpins() {
    let env = env_with(&["size = 1"]);
    let all = clients(&env, 2).await;
    all[0].batch_execute("LISTEN news").await.unwrap();
    assert_eq!(pools(&env)["pools"][0]["clients"]["pinned"], 1);
    assert_eq!(
        metric(&env, "sluice_pinned_clients{tenant=\"acme\"}"),
        Some(1.0)
    );
    assert_eq!(
        metric(&env, "sluice_pins_total{tenant=\"acme\",reason=\"listen\"}"),
        Some(1.0)
    );
    all[0].batch_execute("DISCARD ALL").await.unwrap();
    assert_eq!(pools(&env)["pools"][0]["clients"]["pinned"], 0);
    // The one server connection is free for the other client again.
    let n: i64 = scalar(&all[1], "select count(*) from pg_listening_channels()").await;
    assert_eq!(n, 0);
    // A pin made in the same request as a DISCARD ALL holds.
    // (Pipelined: DISCARD ALL cannot share a simple query's implicit transaction.)
    let (discarded, listened) = tokio::join!(
        all[0].batch_execute("DISCARD ALL"),
        all[0].batch_execute("LISTEN again")
    );
    discarded.unwrap();
    listened.unwrap();
    assert_eq!(pools(&env)["pools"][0]["clients"]["pinned"], 1);
    drop(all);
    // Leaving unpins.
    let after = clients(&env, 2).await;
    let _: i32 = scalar(&after[0], "select 1").await;
    assert_eq!(pools(&env)["pools"][0]["clients"]["pinned"], 0);
    // A text too long to look into pins: it could hide anything after its first MiB.
    let padded = format!("select 1 /* {} */", "x".repeat(1 << 20));
    after[0].batch_execute(&padded).await.unwrap();
    assert_eq!(pools(&env)["pools"][0]["clients"]["pinned"], 1);
    assert_eq!(
        metric(
            &env,
            "sluice_pins_total{tenant=\"acme\",reason=\"unscanned\"}"
        ),
        Some(1.0)
    );
}

#[tokio::test]
async fn refuse_fails_the_statement_and_keeps_the_client() {
    let env = env_with(&["size = 1", "session_state = \"refuse\""]);
    let all = clients(&env, 2).await;
    let a = &all[0];
    for (sql, names) in [
        ("LISTEN news", "LISTEN"),
        (
            "select set_config('search_path', 'evil', false)",
            "set_config",
        ),
        ("SET statement_timeout = '1s'", "SET"),
        ("create temp table t (x int)", "temporary table"),
    ] {
        let e = a.batch_execute(sql).await.unwrap_err();
        let db = e.as_db_error().unwrap_or_else(|| panic!("{sql}: {e}"));
        assert_eq!(db.code(), &SqlState::FEATURE_NOT_SUPPORTED, "{sql}");
        assert!(db.message().contains(names), "{sql}: {}", db.message());
        assert!(db.message().contains("session_state"), "{}", db.message());
        // The client goes on, and nothing was made.
        let n: i64 = scalar(a, "select count(*) from pg_listening_channels()").await;
        assert_eq!(n, 0);
    }
    // Inside a transaction the refusal aborts it, as any error would.
    a.batch_execute("BEGIN").await.unwrap();
    assert!(a.batch_execute("LISTEN news").await.is_err());
    let e = a.batch_execute("select 1").await.unwrap_err();
    assert_eq!(e.code(), Some(&SqlState::IN_FAILED_SQL_TRANSACTION));
    a.batch_execute("ROLLBACK").await.unwrap();
    // Through the extended protocol too. (With parameters, the refusal, a statement
    // without any, fails the driver's own parameter check first: documented.)
    let e = a.query("LISTEN news", &[]).await.unwrap_err();
    assert_eq!(e.code(), Some(&SqlState::FEATURE_NOT_SUPPORTED), "{e:?}");
    let refused = a
        .query(
            "select set_config($1, $2, false)",
            &[&"search_path", &"evil"],
        )
        .await;
    assert!(refused.is_err(), "a refused statement with parameters ran");
    // Nothing pinned: with one server connection the other client runs.
    let path: String = scalar(&all[1], "show search_path").await;
    assert_eq!(path, "\"$user\", public");
    let path: String = scalar(a, "show search_path").await;
    assert_eq!(path, "\"$user\", public");
}

#[tokio::test]
async fn sluice_statement_names_cannot_be_run_or_dropped_from_sql() {
    let env = env_with(&["size = 1"]);
    let all = clients(&env, 2).await;
    let (a, b) = (&all[0], &all[1]);
    let statement = a.prepare("select 'secret of a'::text").await.unwrap();
    let row = a.query_one(&statement, &[]).await.unwrap();
    assert_eq!(row.get::<_, String>(0), "secret of a");
    // b shares the server connection and can see the name (inherent: documented)...
    let name: String = scalar(
        b,
        "select name from pg_prepared_statements \
         where statement like '%secret of a%' and statement not like '%pg_prepared%'",
    )
    .await;
    assert!(name.starts_with("sluice_"), "{name}");
    // ...but cannot run it, drop it, or take the name.
    for sql in [
        format!("EXECUTE {name}"),
        format!("DEALLOCATE {name}"),
        format!("DEALLOCATE PREPARE \"{name}\""),
    ] {
        let e = b.batch_execute(&sql).await.unwrap_err();
        assert_eq!(
            e.code(),
            Some(&SqlState::INVALID_SQL_STATEMENT_NAME),
            "{sql}: {e:?}"
        );
        assert!(!e.to_string().contains("secret"), "{e}");
    }
    let e = b
        .batch_execute("PREPARE sluice_1_1 AS select 1")
        .await
        .unwrap_err();
    assert_eq!(e.code(), Some(&SqlState::RESERVED_NAME), "{e:?}");
    // DEALLOCATE ALL by b is b's own business; a's statement still works after it.
    b.batch_execute("DEALLOCATE ALL").await.unwrap();
    let row = a.query_one(&statement, &[]).await.unwrap();
    assert_eq!(row.get::<_, String>(0), "secret of a");
}

/// Sluice's idle server connections to a database do not make `DROP DATABASE` of it
/// fail "being accessed by other users": they are closed before it runs.
#[tokio::test]
async fn drop_database_is_not_blocked_by_idle_pooled_connections() {
    let env = env_with(&["size = 2"]);
    {
        let gone = pg_connect(&env.target("acme")).await.unwrap();
        let _: i32 = scalar(&gone, "select 1").await;
        // Its server connection to `app` now idles in the pool.
    }
    let mut elsewhere = env.target("acme");
    elsewhere.dbname = "postgres".into();
    let owner = pg_connect(&elsewhere).await.unwrap();
    owner
        .batch_execute("DROP DATABASE app")
        .await
        .unwrap_or_else(|e| panic!("{e:?}\n{}", env.sluice.log()));
    let left: i64 = scalar(
        &owner,
        "select count(*) from pg_database where datname = 'app'",
    )
    .await;
    assert_eq!(left, 0);
}
