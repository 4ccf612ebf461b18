//! How a session ends, in both pool modes, seen from a client that speaks the protocol
//! by hand (`testkit::raw`: no driver half-closes, and the point is the exact messages
//! that arrive before the end): a client that closes its side after a query still gets
//! the whole answer, as from Postgres itself.

use testkit::raw::{message, tags, RawClient, Transport};
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
