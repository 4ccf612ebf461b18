//! How a session ends, in both pool modes, seen from a client that speaks the protocol
//! by hand (`testkit::raw`: no driver half-closes, and the point is the exact messages
//! that arrive before the end): a client that closes its side after a query still gets
//! the whole answer, as from Postgres itself; a backend that ends the session (here
//! `pg_terminate_backend`) is heard once, through its own FATAL, with nothing added by
//! Sluice.

use testkit::raw::{error_fields, message, tags, RawClient, Transport};
use testkit::{pg_connect, scalar, PgTarget, TwoTenants};
use wire::messages::parse_data_row;

const BIN: &str = env!("CARGO_BIN_EXE_sluice");

const MODES: [&str; 2] = ["session", "transaction"];

/// `acme` with one pooled server connection in `mode`; plaintext clients are allowed
/// (they name the tenant in `options`).
fn env(mode: &str) -> TwoTenants {
    TwoTenants::start(BIN.as_ref(), |c| {
        c.require_tls = false;
        c.default_pool = vec![format!("mode = \"{mode}\""), "size = 1".into()];
    })
    .expect("environment")
}

/// `app` on `acme`, by SNI over TLS and by `options` over plain TCP.
fn target(env: &TwoTenants) -> PgTarget {
    let mut target = env.target("acme");
    target.options = Some("tenant=acme".into());
    target
}

/// The backend pid serving the next query of a fresh tokio-postgres client.
async fn backend_pid(env: &TwoTenants) -> i32 {
    let client = pg_connect(&env.target("acme")).await.expect("connecting");
    scalar(&client, "select pg_backend_pid()").await
}

/// The one value of the one DataRow among `frames`.
fn value(frames: &[wire::frame::Frame]) -> String {
    let rows: Vec<_> = frames.iter().filter(|f| f.tag == b'D').collect();
    assert_eq!(rows.len(), 1, "{frames:?}");
    let row = parse_data_row(&rows[0].body).expect("DataRow");
    String::from_utf8(row[0].expect("not null").to_vec()).expect("text")
}

/// Ends the backend `pid` from a direct connection, and waits until it is gone.
fn terminate(env: &TwoTenants, pid: &str) {
    let out = env
        .acme
        .psql_direct(&format!("select pg_terminate_backend({pid}, 10000)"));
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "t", "{out:?}");
}

#[tokio::test]
async fn a_client_that_half_closes_still_gets_its_answer() {
    for mode in MODES {
        let env = env(mode);
        let target = target(&env);
        let pid = backend_pid(&env).await;
        for transport in [Transport::Plain, Transport::Tls] {
            // A query, then the client's side closed (TCP shutdown(SHUT_WR), or TLS
            // close_notify): Postgres would answer it in full before closing.
            let mut client = RawClient::login(&target, transport).await.unwrap();
            client.query("select 42").await.unwrap();
            client.half_close().await.unwrap();
            let frames = client.to_end().await.unwrap_or_else(|e| {
                panic!("{mode} mode, {transport:?}: {e}\n{}", env.sluice.log())
            });
            assert_eq!(
                tags(&frames),
                "TDCZ",
                "{mode} mode, {transport:?}: {frames:?}\n{}",
                env.sluice.log()
            );
            assert_eq!(value(&frames), "42");

            // A client that half-closes without asking anything is just let go.
            let mut silent = RawClient::login(&target, transport).await.unwrap();
            silent.half_close().await.unwrap();
            let frames = silent.to_end().await.unwrap();
            assert_eq!(tags(&frames), "", "{mode} mode, {transport:?}: {frames:?}");
        }
        // Each time the one server connection went back to the pool (a dirty end
        // would have closed it): the next client is served by the same backend.
        assert_eq!(
            backend_pid(&env).await,
            pid,
            "{mode} mode: the server connection was not reused\n{}",
            env.sluice.log()
        );
    }
}

/// Logs in and opens a transaction (so that in transaction mode too the client holds
/// its backend); returns the client and its backend's pid.
async fn in_a_transaction(env: &TwoTenants) -> (RawClient, String) {
    let mut client = RawClient::login(&target(env), Transport::Tls)
        .await
        .unwrap();
    client
        .query("begin; select pg_backend_pid()")
        .await
        .unwrap();
    let frames = client.until_ready().await.unwrap();
    assert_eq!(frames.last().unwrap().body[..], b"T"[..], "{frames:?}");
    let pid = value(&frames);
    (client, pid)
}

/// Reads to the end and checks that exactly one ErrorResponse arrived, FATAL `code`,
/// as the last message (a query's RowDescription may come before it).
async fn exactly_one_fatal(client: &mut RawClient, code: &str, env: &TwoTenants, case: &str) {
    let frames = client.to_end().await.unwrap();
    let errors: Vec<_> = frames
        .iter()
        .filter(|f| f.tag == b'E')
        .map(error_fields)
        .collect();
    let tags = tags(&frames);
    assert!(
        errors.len() == 1 && tags.ends_with('E'),
        "{case}: {errors:?} {frames:?}\n{}",
        env.sluice.log()
    );
    assert_eq!(errors[0].severity, "FATAL", "{case}: {errors:?}");
    assert_eq!(errors[0].code, code, "{case}: {errors:?}");
}

#[tokio::test]
async fn a_backend_that_ends_the_session_is_heard_once() {
    for mode in MODES {
        let env = env(mode);
        // Idle in its transaction.
        let (mut client, pid) = in_a_transaction(&env).await;
        terminate(&env, &pid);
        exactly_one_fatal(&mut client, "57P01", &env, &format!("{mode} mode, idle")).await;

        // Waiting for a query.
        let (mut client, pid) = in_a_transaction(&env).await;
        client.query("select pg_sleep(60)").await.unwrap();
        terminate(&env, &pid);
        exactly_one_fatal(&mut client, "57P01", &env, &format!("{mode} mode, query")).await;
    }
}

#[tokio::test]
async fn a_backend_that_vanishes_without_a_word_is_reported_by_sluice() {
    // A backend killed outright sends nothing: then the client hears from Sluice.
    for mode in MODES {
        let env = env(mode);
        let (mut client, pid) = in_a_transaction(&env).await;
        let pid = nix::unistd::Pid::from_raw(pid.parse().unwrap());
        nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGKILL).unwrap();
        exactly_one_fatal(&mut client, "08006", &env, &format!("{mode} mode")).await;
    }
}

#[tokio::test]
async fn in_transaction_mode_a_backend_ended_between_transactions_goes_unnoticed() {
    // Between transactions a client holds no backend: ending the one it last used is
    // no business of the client's. Its next query runs on a new server connection.
    let env = env("transaction");
    let mut client = RawClient::login(&target(&env), Transport::Tls)
        .await
        .unwrap();
    client.query("select pg_backend_pid()").await.unwrap();
    let frames = client.until_ready().await.unwrap();
    let pid = value(&frames);
    terminate(&env, &pid);

    client.query("select pg_backend_pid()").await.unwrap();
    let frames = client.until_ready().await.unwrap();
    assert_eq!(tags(&frames), "TDCZ", "{frames:?}\n{}", env.sluice.log());
    assert_ne!(value(&frames), pid);
}

/// Starts `copy copied from stdin` with the extended protocol, as libpq sends it (a
/// Sync after the Execute, which the server ignores during the COPY); returns what
/// came up to and including the CopyInResponse.
async fn start_extended_copy(client: &mut RawClient) -> Vec<wire::frame::Frame> {
    let mut out = bytes::BytesMut::new();
    wire::messages::parse(&mut out, "", "copy copied from stdin", &[]);
    wire::messages::bind_text(&mut out, "", "", &[]);
    wire::messages::execute(&mut out, "", 0);
    wire::messages::sync(&mut out);
    client.send(&out).await.unwrap();
    let mut started = Vec::new();
    while started
        .last()
        .is_none_or(|f: &wire::frame::Frame| f.tag != b'G')
    {
        started.push(client.next().await.unwrap().expect("CopyInResponse"));
    }
    started
}

/// A table for COPY FROM STDIN on `acme`.
async fn create_copied(env: &TwoTenants) {
    let client = pg_connect(&env.target("acme")).await.expect("connecting");
    client
        .batch_execute("create table copied (v int)")
        .await
        .expect("create table");
}

#[tokio::test]
async fn a_client_that_half_closes_after_copy_from_stdin_gets_every_answer() {
    for mode in MODES {
        let env = env(mode);
        let target = target(&env);
        create_copied(&env).await;
        let pid = backend_pid(&env).await;
        let rows = [message(b'd', b"1\n"), message(b'c', b"")].concat();

        // Simple protocol: the COPY's data and end, then a query, then the half-close.
        let mut client = RawClient::login(&target, Transport::Plain).await.unwrap();
        client.query("copy copied from stdin").await.unwrap();
        assert_eq!(tags(&[client.next().await.unwrap().unwrap()]), "G");
        client.send(&rows).await.unwrap();
        client.query("select 42").await.unwrap();
        client.half_close().await.unwrap();
        let frames = client.to_end().await.unwrap();
        assert_eq!(tags(&frames), "CZTDCZ", "{mode} mode, simple: {frames:?}");

        // Extended protocol, as libpq sends it: a Sync after the Execute (which the
        // server ignores during the COPY) and another after CopyDone.
        let mut client = RawClient::login(&target, Transport::Plain).await.unwrap();
        let started = start_extended_copy(&mut client).await;
        assert_eq!(tags(&started), "12G", "{mode} mode, extended: {started:?}");
        let mut out = bytes::BytesMut::from(&rows[..]);
        wire::messages::sync(&mut out);
        client.send(&out).await.unwrap();
        client.query("select 42").await.unwrap();
        client.half_close().await.unwrap();
        let frames = client.to_end().await.unwrap();
        assert_eq!(tags(&frames), "CZTDCZ", "{mode} mode, extended: {frames:?}");

        assert_eq!(
            backend_pid(&env).await,
            pid,
            "{mode} mode: the server connection was not reused\n{}",
            env.sluice.log()
        );
    }
}

#[tokio::test]
async fn a_client_that_half_closes_inside_copy_from_stdin_is_let_go() {
    // The server waits for COPY data that can no longer come: Sluice does not wait
    // with it. The connection, inside a COPY, is closed rather than reused.
    for mode in MODES {
        let env = env(mode);
        create_copied(&env).await;
        let mut client = RawClient::login(&target(&env), Transport::Plain)
            .await
            .unwrap();
        client.query("copy copied from stdin").await.unwrap();
        assert_eq!(tags(&[client.next().await.unwrap().unwrap()]), "G");
        client.send(&message(b'd', b"1\n")).await.unwrap();
        client.half_close().await.unwrap();
        let frames = client.to_end().await.unwrap();
        assert_eq!(tags(&frames), "", "{mode} mode: {frames:?}");

        let next = pg_connect(&env.target("acme")).await.unwrap();
        let n: i64 = scalar(&next, "select count(*) from copied").await;
        assert_eq!(n, 0, "{mode} mode: the unfinished COPY landed");
    }
}

#[tokio::test]
async fn a_client_that_leaves_inside_an_extended_copy_from_stdin_does_not_pass_it_on() {
    // Extended protocol: the Sync after the Execute gets no answer (the server ignores
    // it during the COPY), so the counts of requests and answers agree while the server
    // still waits for COPY data. A client that says Terminate there leaves a server
    // connection that must not be reused.
    for mode in MODES {
        let env = env(mode);
        create_copied(&env).await;
        let mut client = RawClient::login(&target(&env), Transport::Plain)
            .await
            .unwrap();
        let pid = client.scalar("select pg_backend_pid()").await.unwrap();
        let started = start_extended_copy(&mut client).await;
        assert_eq!(tags(&started), "12G", "{mode} mode: {started:?}");
        client.send(&message(b'd', b"1\n")).await.unwrap();
        client.send(&message(b'X', b"")).await.unwrap();
        let frames = client.to_end().await.unwrap();
        assert_eq!(tags(&frames), "", "{mode} mode: {frames:?}");

        let next = pg_connect(&env.target("acme")).await.unwrap();
        let n: i64 = scalar(&next, "select count(*) from copied").await;
        assert_eq!(n, 0, "{mode} mode: the unfinished COPY landed");
        let now: i32 = scalar(&next, "select pg_backend_pid()").await;
        assert_ne!(
            now.to_string(),
            pid,
            "{mode} mode: the connection left inside a COPY was reused"
        );
    }
}
