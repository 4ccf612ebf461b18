//! Transaction pooling end to end: many clients share a few server connections, and
//! drivers (pgbench in all three protocol modes, tokio-postgres) cannot tell.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use testkit::{pg_connect, pgbench, scalar, TwoTenants};

const BIN: &str = env!("CARGO_BIN_EXE_sluice");

fn env_with(pool: &[&str]) -> TwoTenants {
    let mut lines: Vec<String> = vec!["mode = \"transaction\"".into()];
    lines.extend(pool.iter().map(|s| s.to_string()));
    TwoTenants::start(BIN.as_ref(), move |c| c.default_pool = lines).expect("environment")
}

/// Samples the number of `app` sessions on the backend until stopped; returns the max.
fn watch_sessions(env: &TwoTenants, stop: Arc<AtomicBool>) -> std::thread::JoinHandle<usize> {
    let conninfo = env.acme.direct_conninfo();
    let password = env.acme.app_password.clone();
    std::thread::spawn(move || {
        let mut max = 0;
        while !stop.load(Ordering::Relaxed) {
            let out = std::process::Command::new("psql")
                .arg(&conninfo)
                .args(["-XAtc", "select count(*) from pg_stat_activity where usename = 'app' and pid <> pg_backend_pid()"])
                .env("PGPASSWORD", &password)
                .output()
                .unwrap();
            if let Ok(n) = String::from_utf8_lossy(&out.stdout).trim().parse::<usize>() {
                max = max.max(n);
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        max
    })
}

#[test]
fn pgbench_in_every_protocol_mode_shares_five_server_connections() {
    let env = env_with(&["size = 5"]);
    let target = env.target("acme");
    let init = pgbench(&target, &["-i", "-s", "1", "-q"]);
    assert!(
        init.success,
        "pgbench -i: {}\n{}",
        init.stderr,
        env.sluice.log()
    );
    let stop = Arc::new(AtomicBool::new(false));
    let watcher = watch_sessions(&env, stop.clone());
    for mode in ["simple", "extended", "prepared"] {
        let run = pgbench(&target, &["-c", "50", "-j", "2", "-T", "10", "-M", mode]);
        assert!(
            run.success,
            "pgbench -M {mode}: {}\n{}",
            run.stderr,
            env.sluice.log()
        );
        let failed = run
            .stdout
            .lines()
            .find_map(|l| l.strip_prefix("number of failed transactions: "))
            .expect("failure count");
        assert!(failed.starts_with("0 "), "-M {mode}: failed {failed}");
        let processed = run
            .stdout
            .lines()
            .find_map(|l| l.strip_prefix("number of transactions actually processed: "))
            .expect("processed count");
        assert_ne!(processed.trim(), "0", "-M {mode}");
    }
    stop.store(true, Ordering::Relaxed);
    let max = watcher.join().unwrap();
    assert!(
        max <= 5,
        "backend saw {max} connections of app, pool size is 5"
    );
    assert!(max >= 1, "the watcher saw no session at all");
}

#[tokio::test]
async fn prepared_statements_follow_clients_across_server_connections() {
    let env = env_with(&["size = 3"]);
    let target = env.target("acme");
    let done = Arc::new(AtomicUsize::new(0));
    let mut tasks = Vec::new();
    for client_no in 0..8 {
        let target = target.clone();
        let done = done.clone();
        tasks.push(tokio::spawn(async move {
            let client = pg_connect(&target).await.unwrap();
            let stmt = client
                .prepare("select $1::int * 2, pg_backend_pid()")
                .await
                .unwrap();
            let mut pids = std::collections::HashSet::new();
            for i in 0..60i32 {
                let row = client.query_one(&stmt, &[&i]).await.unwrap();
                assert_eq!(row.get::<_, i32>(0), i * 2, "client {client_no}");
                pids.insert(row.get::<_, i32>(1));
                // The unnamed statement (Parse/Bind/Execute in one go) works too.
                let row = client
                    .query_typed_raw(
                        "select $1::text",
                        [(
                            format!("c{client_no}-{i}"),
                            tokio_postgres::types::Type::TEXT,
                        )],
                    )
                    .await;
                drop(row);
                done.fetch_add(1, Ordering::Relaxed);
            }
            pids
        }));
    }
    let mut all_pids = std::collections::HashSet::new();
    for task in tasks {
        all_pids.extend(task.await.unwrap());
    }
    assert_eq!(done.load(Ordering::Relaxed), 8 * 60);
    assert!(
        all_pids.len() > 1,
        "statements were used on more than one server connection"
    );
    assert!(all_pids.len() <= 3, "pool size respected: {all_pids:?}");
}

#[tokio::test]
async fn query_typed_uses_the_unnamed_statement() {
    let env = env_with(&["size = 2"]);
    let client = pg_connect(&env.target("acme")).await.unwrap();
    for i in 0..50i32 {
        let rows = client
            .query_typed(
                "select $1::int + 1",
                &[(&i, tokio_postgres::types::Type::INT4)],
            )
            .await
            .unwrap();
        assert_eq!(rows[0].get::<_, i32>(0), i + 1);
    }
}

#[tokio::test]
async fn a_prepared_statement_survives_its_server_connection_being_retired() {
    let env = env_with(&["size = 1", "lifetime_s = 1"]);
    let client = pg_connect(&env.target("acme")).await.unwrap();
    let stmt = client.prepare("select pg_backend_pid()").await.unwrap();
    let pid1: i32 = client.query_one(&stmt, &[]).await.unwrap().get(0);
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let pid2: i32 = client.query_one(&stmt, &[]).await.unwrap().get(0);
    assert_ne!(pid1, pid2, "the server connection was retired");
}

#[tokio::test]
async fn each_client_keeps_its_own_time_zone_on_a_shared_connection() {
    let env = env_with(&["size = 1"]);
    let target = env.target("acme");
    let tokyo = pg_connect(&target).await.unwrap();
    let utc = pg_connect(&target).await.unwrap();
    tokyo
        .batch_execute("SET TimeZone = 'Asia/Tokyo'")
        .await
        .unwrap();
    utc.batch_execute("SET TimeZone = 'UTC'").await.unwrap();
    for _ in 0..20 {
        let t: String = scalar(&tokyo, "select to_char(now(), 'TZH')").await;
        let u: String = scalar(&utc, "select to_char(now(), 'TZH')").await;
        assert_eq!(t, "+09");
        assert_eq!(u, "+00");
    }
    // Both ran on the one server connection.
    let p1: i32 = scalar(&tokyo, "select pg_backend_pid()").await;
    let p2: i32 = scalar(&utc, "select pg_backend_pid()").await;
    assert_eq!(p1, p2);
}

#[tokio::test]
async fn startup_settings_do_not_leak_to_the_next_client() {
    let env = env_with(&["size = 1"]);
    let mut with_timeout = env.target("acme");
    with_timeout.options = Some("-c statement_timeout=4242s".into());
    let a = pg_connect(&with_timeout).await.unwrap();
    let b = pg_connect(&env.target("acme")).await.unwrap();
    for _ in 0..5 {
        let ta: String = scalar(&a, "show statement_timeout").await;
        let tb: String = scalar(&b, "show statement_timeout").await;
        assert_eq!(ta, "4242s");
        assert_eq!(tb, "0");
    }
}

#[tokio::test]
async fn a_killed_client_mid_transaction_leaves_no_lock_behind() {
    let env = env_with(&["size = 1"]);
    let target = env.target("acme");
    let setup = pg_connect(&target).await.unwrap();
    setup
        .batch_execute(
            "CREATE TABLE locked (id int primary key, v int); INSERT INTO locked VALUES (1, 0)",
        )
        .await
        .unwrap();
    drop(setup);
    let holder = pg_connect(&target).await.unwrap();
    holder
        .batch_execute("BEGIN; UPDATE locked SET v = 1 WHERE id = 1")
        .await
        .unwrap();
    drop(holder); // the client vanishes mid-transaction, holding the row lock

    let next = pg_connect(&target).await.unwrap();
    let started = Instant::now();
    next.batch_execute("SET lock_timeout = '3s'; UPDATE locked SET v = 2 WHERE id = 1")
        .await
        .expect("the row lock was released");
    assert!(started.elapsed() < Duration::from_secs(3));
    let v: i32 = scalar(&next, "select v from locked").await;
    assert_eq!(v, 2, "the abandoned update was rolled back");
    let status: String = scalar(
        &next,
        "select state from pg_stat_activity where pid = pg_backend_pid()",
    )
    .await;
    assert_eq!(status, "active");
}

#[tokio::test]
async fn transactions_keep_their_server_until_they_end() {
    let env = env_with(&["size = 2"]);
    let target = env.target("acme");
    let a = pg_connect(&target).await.unwrap();
    a.batch_execute("BEGIN").await.unwrap();
    let p1: i32 = scalar(&a, "select pg_backend_pid()").await;
    // Another client in between cannot take a's server connection.
    let b = pg_connect(&target).await.unwrap();
    let pb: i32 = scalar(&b, "select pg_backend_pid()").await;
    assert_ne!(p1, pb);
    let p2: i32 = scalar(&a, "select pg_backend_pid()").await;
    assert_eq!(p1, p2, "a transaction moved between server connections");
    // An error inside the transaction keeps it too, until ROLLBACK.
    assert!(a.simple_query("select 1/0").await.is_err());
    let err = a.simple_query("select 1").await.unwrap_err();
    assert_eq!(err.as_db_error().unwrap().code().code(), "25P02");
    a.batch_execute("ROLLBACK").await.unwrap();
    a.simple_query("select 1").await.unwrap();
}

#[tokio::test]
async fn query_timeout_cancels_the_query_and_keeps_the_client() {
    let env = TwoTenants::start(BIN.as_ref(), |c| {
        c.default_pool = vec!["mode = \"transaction\"".into(), "size = 1".into()];
        c.default_limits = vec!["query_timeout_ms = 500".into()];
    })
    .unwrap();
    let client = pg_connect(&env.target("acme")).await.unwrap();
    let started = Instant::now();
    let err = client
        .simple_query("select pg_sleep(10)")
        .await
        .unwrap_err();
    assert_eq!(err.as_db_error().unwrap().code().code(), "57014", "{err}");
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "took {:?}",
        started.elapsed()
    );
    // Same client, same (only) server connection: still fine.
    client.simple_query("select 1").await.unwrap();
}

#[tokio::test]
async fn idle_in_transaction_timeout_ends_the_client_and_frees_the_server() {
    let env = TwoTenants::start(BIN.as_ref(), |c| {
        c.default_pool = vec!["mode = \"transaction\"".into(), "size = 1".into()];
        c.default_limits = vec!["idle_in_transaction_timeout_ms = 500".into()];
    })
    .unwrap();
    let target = env.target("acme");
    let idle = pg_connect(&target).await.unwrap();
    idle.batch_execute("BEGIN; SELECT 1").await.unwrap();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert!(
        idle.simple_query("select 1").await.is_err(),
        "client survived the timeout"
    );
    assert!(env.sluice.log().contains("idle-in-transaction timeout"));
    // The one server connection was rolled back and is usable by the next client.
    let next = pg_connect(&target).await.unwrap();
    next.simple_query("select 1").await.unwrap();
}

/// VmRSS of a process, in KiB.
fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap()
}

#[test]
fn copy_of_100_mb_each_way_keeps_sluice_memory_flat() {
    let env = env_with(&["size = 2"]);
    let target = env.target("acme");
    let out = testkit::psql(&target, "create table big (line text)");
    assert!(out.success, "{}", out.stderr);
    // 1,000,000 lines of 100 bytes.
    let file = env.dir.path().join("big.txt");
    let line = format!("{}\n", "x".repeat(99));
    std::fs::write(&file, line.repeat(1_000_000)).unwrap();

    let pid = env.sluice.pid();
    let before = rss_kib(pid);
    let stop = Arc::new(AtomicBool::new(false));
    let peak = {
        let stop = stop.clone();
        std::thread::spawn(move || {
            let mut peak = 0;
            while !stop.load(Ordering::Relaxed) {
                peak = peak.max(rss_kib(pid));
                std::thread::sleep(Duration::from_millis(50));
            }
            peak
        })
    };
    let copy_in = testkit::psql(&target, &format!("\\copy big from '{}'", file.display()));
    assert!(copy_in.success, "COPY FROM STDIN: {}", copy_in.stderr);
    let copy_out = testkit::psql(&target, "\\copy big to '/dev/null'");
    assert!(copy_out.success, "COPY TO STDOUT: {}", copy_out.stderr);
    stop.store(true, Ordering::Relaxed);
    let peak = peak.join().unwrap();
    let count = testkit::psql(&target, "select count(*) from big");
    assert_eq!(count.stdout, "1000000");
    let growth_mib = peak.saturating_sub(before) / 1024;
    assert!(
        growth_mib < 32,
        "Sluice grew by {growth_mib} MiB relaying 2 x 100 MB"
    );
}

#[test]
fn a_backend_restart_under_pgbench_recovers_without_leaks() {
    let mut env = env_with(&["size = 5"]);
    let target = env.target("acme");
    assert!(pgbench(&target, &["-i", "-s", "1", "-q"]).success);
    let during = {
        let target = target.clone();
        std::thread::spawn(move || pgbench(&target, &["-S", "-c", "10", "-j", "2", "-T", "6"]))
    };
    std::thread::sleep(Duration::from_secs(2));
    env.acme.stop(localpg::StopMode::Immediate).unwrap();
    std::thread::sleep(Duration::from_secs(1));
    env.acme.restart().unwrap();
    let during = during.join().unwrap();
    assert!(
        !during.success || during.stderr.contains("aborted"),
        "pgbench saw no error while the backend was down:\n{}",
        during.stdout
    );
    // Full recovery: a new run has no failures.
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let after = pgbench(&target, &["-S", "-c", "10", "-j", "2", "-T", "3"]);
        if after.success && after.stdout.contains("number of failed transactions: 0 ") {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no recovery: {}\n{}",
            after.stdout,
            after.stderr
        );
        std::thread::sleep(Duration::from_millis(500));
    }
    let sessions = env.acme.sessions_of("app");
    assert!(
        sessions <= 5,
        "{sessions} server connections after recovery, pool size is 5"
    );
}

#[tokio::test]
async fn a_large_row_is_streamed_not_buffered() {
    let env = env_with(&["size = 1"]);
    let client = pg_connect(&env.target("acme")).await.unwrap();
    let pid = env.sluice.pid();
    let before = rss_kib(pid);
    let row = client
        .query_one("select repeat('x', 64 * 1024 * 1024)", &[])
        .await
        .unwrap();
    let after = rss_kib(pid);
    assert_eq!(row.get::<_, &str>(0).len(), 64 * 1024 * 1024);
    let growth_mib = after.saturating_sub(before) / 1024;
    assert!(
        growth_mib < 32,
        "Sluice grew by {growth_mib} MiB relaying one 64 MiB row"
    );
}

#[tokio::test]
async fn a_deep_pipeline_with_large_results_does_not_deadlock() {
    let env = env_with(&["size = 1"]);
    let client = pg_connect(&env.target("acme")).await.unwrap();
    let stmt = client.prepare("select $1::text").await.unwrap();
    // tokio-postgres pipelines concurrent requests on one connection: megabytes of
    // requests in flight while megabytes of results (the same values) come back.
    let value = "y".repeat(20_000);
    let params: [&(dyn tokio_postgres::types::ToSql + Sync); 1] = [&value];
    let queries = (0..400).map(|_| client.query_one(&stmt, &params));
    let rows = tokio::time::timeout(Duration::from_secs(60), futures_join_all(queries))
        .await
        .expect("pipeline deadlocked");
    assert_eq!(rows.len(), 400);
    for row in rows {
        assert_eq!(row.unwrap().get::<_, &str>(0).len(), 20_000);
    }
}

/// Polls all futures concurrently (no extra dependency for one helper).
async fn futures_join_all<F: std::future::Future>(
    futures: impl Iterator<Item = F>,
) -> Vec<F::Output> {
    let mut set = Vec::new();
    for f in futures {
        set.push(Box::pin(f));
    }
    let mut out: Vec<Option<F::Output>> = (0..set.len()).map(|_| None).collect();
    std::future::poll_fn(|cx| {
        let mut pending = false;
        for (i, f) in set.iter_mut().enumerate() {
            if out[i].is_none() {
                match f.as_mut().poll(cx) {
                    std::task::Poll::Ready(v) => out[i] = Some(v),
                    std::task::Poll::Pending => pending = true,
                }
            }
        }
        if pending {
            std::task::Poll::Pending
        } else {
            std::task::Poll::Ready(())
        }
    })
    .await;
    out.into_iter().map(|v| v.expect("ready")).collect()
}

#[tokio::test]
async fn list_settings_and_client_sets_do_not_leak_or_break() {
    // Two server connections: the client whose SET pins it keeps one of them.
    let env = env_with(&["size = 2"]);
    let mut listed = env.target("acme");
    listed.options = Some("-c search_path=app,public".into());
    let a = pg_connect(&listed).await.unwrap();
    let b = pg_connect(&env.target("acme")).await.unwrap();
    // A list setting keeps its meaning (two schemas, not one named "app,public").
    // (as a startup packet sets it; SET with a quoted literal would make it one
    // schema named "app,public").
    let path: String = scalar(&a, "show search_path").await;
    assert_eq!(path, "app,public");
    // A SET of an unreported setting by one client does not reach the next one.
    a.batch_execute("SET statement_timeout = '7s'")
        .await
        .unwrap();
    let tb: String = scalar(&b, "show statement_timeout").await;
    assert_eq!(tb, "0");
    let pb: String = scalar(&b, "show search_path").await;
    assert_eq!(pb, "\"$user\", public");
    // ...and the client that set it keeps its startup settings and its SET (it is
    // pinned to its server connection: docs/transaction-mode.md).
    let path: String = scalar(&a, "show search_path").await;
    assert_eq!(path, "app,public");
    let ta: String = scalar(&a, "show statement_timeout").await;
    assert_eq!(ta, "7s");
}

#[tokio::test]
async fn extended_protocol_copy_in_releases_the_server_afterwards() {
    use futures_util::SinkExt;
    let env = env_with(&["size = 1"]);
    let target = env.target("acme");
    let client = pg_connect(&target).await.unwrap();
    client
        .batch_execute("CREATE TABLE copied (n int)")
        .await
        .unwrap();
    let sink = client.copy_in("COPY copied FROM STDIN").await.unwrap();
    futures_util::pin_mut!(sink);
    for i in 0..1000 {
        sink.send(bytes::Bytes::from(format!("{i}\n")))
            .await
            .unwrap();
    }
    assert_eq!(sink.finish().await.unwrap(), 1000);
    // The same client goes on with prepared statements (the answer queue is in step)...
    let n: i64 = scalar(&client, "select count(*) from copied").await;
    assert_eq!(n, 1000);
    // ...and the single server connection is free for another client.
    let other = pg_connect(&target).await.unwrap();
    let n: i64 = tokio::time::timeout(
        Duration::from_secs(10),
        other.query_one("select count(*) from copied", &[]),
    )
    .await
    .expect("the server connection was never released")
    .unwrap()
    .get(0);
    assert_eq!(n, 1000);
}

#[tokio::test]
async fn a_failed_copy_in_leaves_a_usable_connection() {
    let env = env_with(&["size = 1"]);
    let target = env.target("acme");
    let out = testkit::psql(&target, "create table strict (n int)");
    assert!(out.success);
    let bad = env.dir.path().join("bad.txt");
    std::fs::write(&bad, format!("{}not a number\n", "1\n".repeat(100_000))).unwrap();
    let out = testkit::psql(&target, &format!("\\copy strict from '{}'", bad.display()));
    assert!(!out.success, "the bad row must fail the COPY");
    // Nothing half-written stayed on the pooled connection.
    let client = pg_connect(&target).await.unwrap();
    for _ in 0..5 {
        let n: i64 = scalar(&client, "select count(*) from strict").await;
        assert_eq!(n, 0);
    }
}

/// One client cancels its own short queries at random moments; another shares the only
/// server connection and never cancels. A cancel that lands late (after its query
/// finished and the connection went to the other client) must never cancel the other
/// client's query: a connection a cancel was sent to is closed, not handed on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancel_never_lands_on_another_clients_query() {
    let env = env_with(&["size = 1"]);
    let tls = testkit::clients::tls_connector(&env.pki.ca_cert);
    let canceller = pg_connect(&env.target("acme")).await.unwrap();
    let bystander = pg_connect(&env.target("acme")).await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(8);
    let bystander_task = tokio::spawn(async move {
        let (mut ok, mut cancelled) = (0, 0);
        while Instant::now() < deadline {
            match bystander.simple_query("select pg_sleep(0.003)").await {
                Ok(_) => ok += 1,
                Err(e) if e.code().map(|c| c.code()) == Some("57014") => cancelled += 1,
                Err(e) => panic!("bystander: {e}"),
            }
        }
        (ok, cancelled)
    });
    let token = canceller.cancel_token();
    let canceller = Arc::new(canceller);
    let (mut sent, mut n) = (0, 0u64);
    while Instant::now() < deadline {
        let c = canceller.clone();
        let query = tokio::spawn(async move { c.simple_query("select pg_sleep(0.005)").await });
        // 2 to 10 ms in: before, during and after the query's end on the server.
        n += 1;
        tokio::time::sleep(Duration::from_micros(2000 + (n * 7919) % 8000)).await;
        if token.cancel_query(tls.clone()).await.is_ok() {
            sent += 1;
        }
        let _ = query.await.unwrap();
    }
    let (ok, cancelled) = bystander_task.await.unwrap();
    assert!(sent > 100, "only {sent} cancels were sent");
    assert!(ok > 100, "the bystander ran only {ok} queries");
    assert_eq!(
        cancelled, 0,
        "{cancelled} of the bystander's {} queries were cancelled by the other client's {sent} cancels",
        ok + cancelled
    );
}

/// A transaction-mode login greeted without a server connection still reports values
/// as the server spells them (`utf-8` is `UTF8`, `iso` is `ISO, MDY`), and the
/// client's own `application_name`.
#[tokio::test]
async fn the_greeting_spells_values_as_the_server_does() {
    let env = env_with(&["size = 1"]);
    // The first login teaches the pool what a fresh connection reports.
    let first = pg_connect(&env.target("acme")).await.unwrap();
    let _: i32 = scalar(&first, "select 1").await;
    let mut target = env.target("acme");
    target.options =
        Some("-c client_encoding=utf-8 -c DateStyle=iso -c application_name=mine".into());
    let client = testkit::raw::RawClient::login(&target, testkit::raw::Transport::Tls)
        .await
        .unwrap();
    let reported = |name: &str| {
        client
            .params
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.clone())
    };
    assert_eq!(reported("client_encoding").as_deref(), Some("UTF8"));
    assert_eq!(reported("DateStyle").as_deref(), Some("ISO, MDY"));
    assert_eq!(reported("application_name").as_deref(), Some("mine"));
}

/// An extended-protocol COPY FROM STDIN sent whole without waiting for the server's
/// CopyInResponse (Parse, Bind, Execute, the data, CopyDone, Sync): the server reads
/// the Sync after the COPY ended and answers it, so the server connection stays with
/// the client until that ReadyForQuery, and then serves the next client cleanly.
/// Then a client that breaks the protocol inside a COPY (a second Execute): Postgres
/// ends that session, the client gets the server's errors, and the other client keeps
/// the pool.
#[tokio::test]
async fn a_copy_sent_whole_or_broken_keeps_every_answer_with_its_client() {
    use testkit::raw::{error_fields, tags, RawClient, Transport};
    use wire::messages as put;
    let env = env_with(&["size = 1"]);
    let target = env.target("acme");
    let out = testkit::psql(&target, "create table piped (n int)");
    assert!(out.success, "{}", out.stderr);
    let mut other = RawClient::login(&target, Transport::Tls).await.unwrap();
    let copy = |out: &mut bytes::BytesMut| {
        put::parse(out, "", "COPY piped FROM STDIN", &[]);
        put::bind_text(out, "", "", &[]);
        put::execute(out, "", 0);
    };
    let mut client = RawClient::login(&target, Transport::Tls).await.unwrap();
    for round in 0..20 {
        let mut out = bytes::BytesMut::new();
        copy(&mut out);
        out.extend_from_slice(&testkit::raw::message(b'd', b"7\n"));
        out.extend_from_slice(&testkit::raw::message(b'c', b""));
        put::sync(&mut out);
        client.send(&out).await.unwrap();
        let frames = client.until_ready().await.unwrap();
        assert_eq!(tags(&frames), "12GCZ", "round {round}");
        assert_eq!(other.scalar("select 'other'").await.unwrap(), "other");
        let n = client.scalar("select count(*) from piped").await.unwrap();
        assert_eq!(n, (round + 1).to_string());
    }
    for round in 0..5 {
        let mut broken = RawClient::login(&target, Transport::Tls).await.unwrap();
        let mut out = bytes::BytesMut::new();
        copy(&mut out);
        put::execute(&mut out, "", 0);
        put::sync(&mut out);
        broken.send(&out).await.unwrap();
        let frames = broken.to_end().await.unwrap();
        let codes: Vec<_> = frames
            .iter()
            .filter(|f| f.tag == b'E')
            .map(|f| error_fields(f).code)
            .collect();
        assert_eq!(tags(&frames), "12GEE", "round {round}");
        assert_eq!(codes, ["08P01", "08P01"], "round {round}");
        assert_eq!(other.scalar("select 'other'").await.unwrap(), "other");
        assert_eq!(client.scalar("select 'mine'").await.unwrap(), "mine");
    }
}
