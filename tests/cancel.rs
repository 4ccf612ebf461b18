//! Cancel requests through Sluice as clients send them, plaintext or inside TLS (libpq
//! 18 with `sslmode=prefer`), with the key of the BackendKeyData Sluice sent (4 bytes of
//! secret with protocol 3.0, 32 with 3.2); and what that key says. A raw protocol
//! client (`testkit::raw`) reads the key and the way each connection ends, which client
//! libraries keep to themselves; psycopg (libpq 18) cancels as applications do.

use std::time::Duration;

use bytes::BytesMut;
use testkit::raw::{self, RawClient, Transport};
use testkit::{TestCluster, TwoTenants};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use wire::startup::{self, CancelKey};

const BIN: &str = env!("CARGO_BIN_EXE_sluice");
const SLEEP: &str = "select pg_sleep(60)";

fn env() -> TwoTenants {
    TwoTenants::start(BIN.as_ref(), |_| {}).expect("test environment")
}

/// Waits until `sql` runs on `cluster` (seen directly in pg_stat_activity), so that a
/// cancel sent next finds it running.
async fn wait_until_running(cluster: &TestCluster, sql: &str) {
    let check =
        format!("SELECT count(*) FROM pg_stat_activity WHERE state = 'active' AND query = '{sql}'");
    for _ in 0..600 {
        let out = cluster.psql_direct(&check);
        if String::from_utf8_lossy(&out.stdout).trim() == "1" {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("{sql:?} never started on {}", cluster.name);
}

/// Sends a CancelRequest for `key` and reads until the server closes: what the read
/// returned at the end (`Ok(0)` for an orderly close, inside TLS one with close_notify).
async fn cancel_and_read_to_close<S>(stream: S, key: CancelKey) -> std::io::Result<usize>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    cancel_secret_and_read_to_close(stream, key.pid, &key.secret.to_be_bytes()).await
}

/// [`cancel_and_read_to_close`] with a secret of any length (protocol 3.2).
async fn cancel_secret_and_read_to_close<S>(
    mut stream: S,
    pid: i32,
    secret: &[u8],
) -> std::io::Result<usize>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let mut packet = BytesMut::new();
    startup::encode_cancel_secret(pid, secret, &mut packet);
    stream.write_all(&packet).await?;
    stream.flush().await?;
    let mut rest = Vec::new();
    tokio::time::timeout(Duration::from_secs(30), stream.read_to_end(&mut rest))
        .await
        .expect("sluice keeps the cancel connection open")
}

#[tokio::test]
async fn a_cancel_inside_tls_is_carried_out_and_closed_with_close_notify() {
    let env = env();
    let target = env.target("acme");
    let mut client = RawClient::login(&target, Transport::Tls)
        .await
        .expect("logging in");
    client.query(SLEEP).await.expect("sending the query");
    wait_until_running(&env.acme, SLEEP).await;

    // SSLRequest, handshake, then the CancelRequest as the first packet inside TLS. The
    // end must be a clean TLS close: tokio-rustls reports a close without close_notify
    // as UnexpectedEof (libpq: "SSL error: unexpected eof while reading").
    let tls = raw::tls_to(&target).await.expect("TLS to sluice");
    let end = cancel_and_read_to_close(tls, client.key).await;
    assert!(
        matches!(end, Ok(0)),
        "the cancel connection must end with close_notify and nothing else, got {end:?}"
    );

    let result = client.result().await.expect("the query's result");
    let err = result.expect_err("the query was cancelled");
    assert_eq!(err.code, "57014", "{err:?}");
}
#[tokio::test]
async fn session_mode_clients_see_their_real_backend_pid_and_can_cancel() {
    let env = env();
    let target = env.target("acme");
    let mut client = RawClient::login(&target, Transport::Tls)
        .await
        .expect("logging in");
    let other = RawClient::login(&target, Transport::Tls)
        .await
        .expect("logging in");

    // The pid in BackendKeyData is the backend's own, as a direct connection's is
    // (drivers compare it with pg_backend_pid() and with a NOTIFY's sender).
    let pid: i32 = client
        .scalar("select pg_backend_pid()")
        .await
        .expect("pg_backend_pid")
        .parse()
        .expect("a pid");
    assert_eq!(client.key.pid, pid, "BackendKeyData {:?}", client.key);
    assert_ne!(client.key, other.key, "each client has its own key");
    // The log line names the same pid, as a number (not Rust's `Some(…)`).
    let log = env.sluice.plain_log();
    assert!(
        log.lines()
            .any(|l| l.contains("session started") && l.contains(&format!("backend_pid={pid}"))),
        "{log}"
    );
    assert!(!log.contains("Some("), "{log}");

    // The secret is Sluice's own, and the key still cancels (plaintext, as libpq <= 17).
    client.query(SLEEP).await.expect("sending the query");
    wait_until_running(&env.acme, SLEEP).await;
    let tcp = TcpStream::connect(env.sluice.addr).await.expect("connect");
    let end = cancel_and_read_to_close(tcp, client.key).await;
    assert!(matches!(end, Ok(0)), "{end:?}");
    let result = client.result().await.expect("the query's result");
    let err = result.expect_err("the query was cancelled");
    assert_eq!(err.code, "57014", "{err:?}");
}

/// A query cancelled by the tenant's `query_timeout` in session mode: the client gets
/// 57014 and carries on, and the server connection the cancel went to is closed when the
/// client leaves, not handed to the next client (the cancel's signal may land after the
/// query ended, and must not hit someone else's).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_cancelled_for_query_timeout_is_not_reused() {
    let env = TwoTenants::start(BIN.as_ref(), |c| {
        c.tenants[0].pool = vec!["mode = \"session\"".into(), "size = 1".into()];
        c.tenants[0].limits = vec!["query_timeout_ms = 300".into()];
    })
    .expect("test environment");
    let target = env.target("acme");
    let first = testkit::pg_connect(&target).await.unwrap();
    let err = first
        .simple_query("select pg_sleep(5)")
        .await
        .expect_err("cancelled by query_timeout");
    assert_eq!(
        err.as_db_error().map(|e| e.code().code()),
        Some("57014"),
        "{err}"
    );
    let pid: i32 = testkit::scalar(&first, "select pg_backend_pid()").await;
    drop(first);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let next = testkit::pg_connect(&target).await.unwrap();
    let next_pid: i32 = testkit::scalar(&next, "select pg_backend_pid()").await;
    assert_ne!(
        pid, next_pid,
        "the cancelled connection went to the next client"
    );
}

/// The protocol a client asks for decides its key: 3.2 and later (told 3.2 by a
/// NegotiateProtocolVersion for 3.3) get a 32-byte secret, 3.0 and 3.1 (told 3.0) a
/// 4-byte one; a 3.2 key cancels plaintext and inside TLS.
#[tokio::test]
async fn a_protocol_3_2_client_gets_a_32_byte_key_and_cancels_with_it() {
    let env = env();
    let target = env.target("acme");
    let version = |minor: u32| (3 << 16) | minor;
    for (asked, told, secret_len) in [
        (0, None, 4),
        (1, Some(version(0)), 4),
        (2, None, 32),
        (3, Some(version(2)), 32),
        (0xffff, Some(version(2)), 32),
    ] {
        let client = RawClient::login_with(&target, Transport::Tls, version(asked))
            .await
            .unwrap_or_else(|e| panic!("logging in with 3.{asked}: {e}"));
        assert_eq!(client.negotiated, told, "3.{asked}");
        assert_eq!(client.secret.len(), secret_len, "3.{asked}");
    }
    let mut client = RawClient::login_with(&target, Transport::Tls, startup::PROTOCOL_3_2)
        .await
        .expect("logging in");
    let other = RawClient::login_with(&target, Transport::Tls, startup::PROTOCOL_3_2)
        .await
        .expect("logging in");
    assert_ne!(client.secret, other.secret, "each client has its own key");
    let pid: i32 = client
        .scalar("select pg_backend_pid()")
        .await
        .expect("pg_backend_pid")
        .parse()
        .expect("a pid");
    assert_eq!(client.key.pid, pid, "session mode: the backend's own pid");

    // Its first 4 bytes alone are no key (a 3.0 CancelRequest with them cancels nothing).
    client.query(SLEEP).await.expect("sending the query");
    wait_until_running(&env.acme, SLEEP).await;
    let tcp = TcpStream::connect(env.sluice.addr).await.expect("connect");
    let end = cancel_and_read_to_close(tcp, client.key).await;
    assert!(matches!(end, Ok(0)), "{end:?}");
    tokio::time::sleep(Duration::from_millis(500)).await;
    let count = env.acme.psql_direct(&format!(
        "SELECT count(*) FROM pg_stat_activity WHERE state = 'active' AND query = '{SLEEP}'"
    ));
    let still: i64 = String::from_utf8_lossy(&count.stdout)
        .trim()
        .parse()
        .expect("a count");
    assert_eq!(still, 1, "a cut key cancelled the query");

    // The whole key, plaintext.
    let tcp = TcpStream::connect(env.sluice.addr).await.expect("connect");
    let end = cancel_secret_and_read_to_close(tcp, client.key.pid, &client.secret).await;
    assert!(matches!(end, Ok(0)), "{end:?}");
    let err = client
        .result()
        .await
        .expect("the query's result")
        .expect_err("the query was cancelled");
    assert_eq!(err.code, "57014", "{err:?}");

    // And inside TLS, as libpq 18 sends it.
    client.query(SLEEP).await.expect("sending the query");
    wait_until_running(&env.acme, SLEEP).await;
    let tls = raw::tls_to(&target).await.expect("TLS to sluice");
    let end = cancel_secret_and_read_to_close(tls, client.key.pid, &client.secret).await;
    assert!(matches!(end, Ok(0)), "{end:?}");
    let err = client
        .result()
        .await
        .expect("the query's result")
        .expect_err("the query was cancelled");
    assert_eq!(err.code, "57014", "{err:?}");
}

/// psycopg with its bundled libpq 18 agrees protocol 3.2 through Sluice when it may
/// (`max_protocol_version=3.2`), 3.0 when told to, and `cancel_safe()` (libpq's
/// cancel API: inside TLS here) cancels a running `pg_sleep(30)` either way.
#[test]
fn psycopg_with_libpq_18_cancels_with_protocol_3_2_and_3_0() {
    let env = env();
    let target = env.target("acme");
    for (version, protocol) in [("3.2", 30002), ("3.0", 30000)] {
        let run = testkit::psycopg::cancel_rounds(&target, version, 3)
            .unwrap_or_else(|e| panic!("psycopg, protocol {version}: {e:#}"));
        assert!(run.libpq >= 180000, "libpq {} is older than 18", run.libpq);
        assert_eq!(run.protocol, protocol, "max_protocol_version={version}");
        for (i, round) in run.rounds.iter().enumerate() {
            assert_eq!(
                round.sqlstate.as_deref(),
                Some("57014"),
                "protocol {version}, round {i}: {round:?}"
            );
            assert!(
                round.seconds < 10.0,
                "protocol {version}, round {i}: {round:?}"
            );
        }
        let slowest = run.rounds.iter().map(|r| r.seconds).fold(0.0, f64::max);
        eprintln!(
            "psycopg (libpq {}), protocol {version}: {} cancels, slowest {slowest:.3} s, {:?} cancel requests each",
            run.libpq,
            run.rounds.len(),
            run.rounds.iter().map(|r| r.cancels).collect::<Vec<_>>()
        );
    }
}
