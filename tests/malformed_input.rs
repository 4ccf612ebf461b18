//! Malformed and hostile input at Sluice's front door, over real sockets to a real
//! `sluice serve` process (the design's rule: "malformed input from any peer yields an
//! error and a closed connection, never a panic, a hang, or an allocation sized by an
//! untrusted length field"; "no bytes before TLS"; "every rejection is a readable
//! ErrorResponse").
//!
//! Every read is bounded by a timeout, so a hang fails the test instead of blocking
//! it, and every test ends by proving that Sluice still serves a real psql client.

use std::future::Future;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::{BufMut, BytesMut};
use rand::{Rng, RngCore};
use testkit::{SluiceConfig, TwoTenants};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::rustls;
use tokio_rustls::TlsConnector;
use wire::frame::{split_frame, Frame};
use wire::messages::{parse_authentication, parse_error_fields, Authentication, ErrorFields};
use wire::startup::{self, CancelKey};

/// Longest any single read may wait for Sluice.
const READ_TIMEOUT: Duration = Duration::from_secs(10);
/// Frames Sluice sends before a session are tiny; anything bigger is a bug.
const MAX_FRAME: usize = 1 << 16;

// ---------------------------------------------------------------------------------
// Setup and the final check every test makes.

fn start(tweak: impl FnOnce(&mut SluiceConfig)) -> TwoTenants {
    TwoTenants::start(Path::new(env!("CARGO_BIN_EXE_sluice")), tweak)
        .expect("starting two tenants and sluice")
}

fn block_on<F: Future>(f: F) -> F::Output {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("tokio runtime")
        .block_on(f)
}

/// Sluice is alive, never panicked, and a real psql still reaches `acme` through it.
fn assert_still_serves(env: &mut TwoTenants) {
    assert!(
        env.sluice.is_running(),
        "sluice exited; log:\n{}",
        env.sluice.log()
    );
    let out = testkit::psql(&env.target("acme"), "select tenant from tenant_marker");
    assert!(
        out.success,
        "psql through sluice failed: {}\nsluice log:\n{}",
        out.stderr,
        env.sluice.log()
    );
    assert_eq!(out.stdout, "acme");
    let log = env.sluice.log();
    assert!(!log.contains("panicked"), "sluice panicked:\n{log}");
}

// ---------------------------------------------------------------------------------
// Packets, built by hand or with the `wire` builders.

fn startup_packet(params: &[(&str, &str)]) -> BytesMut {
    let mut out = BytesMut::new();
    startup::encode_startup(params, &mut out);
    out
}

fn app_startup() -> BytesMut {
    startup_packet(&[("user", "app"), ("database", "app")])
}

/// An 8-byte special request (SSLRequest, GSSENCRequest).
fn request(code: u32) -> [u8; 8] {
    let mut out = [0u8; 8];
    out[..4].copy_from_slice(&8u32.to_be_bytes());
    out[4..].copy_from_slice(&code.to_be_bytes());
    out
}

fn ssl_request() -> [u8; 8] {
    request(startup::SSL_REQUEST_CODE)
}

// ---------------------------------------------------------------------------------
// Reading what Sluice answers, always with a deadline.

/// What came next from Sluice.
#[derive(Debug)]
enum Next {
    Frame(Frame),
    /// Orderly close with nothing pending.
    Eof,
    /// The connection was reset (Sluice closed with our bytes still unread).
    Reset,
}

async fn read_some<S: AsyncRead + Unpin>(s: &mut S, buf: &mut [u8]) -> std::io::Result<usize> {
    tokio::time::timeout(READ_TIMEOUT, s.read(buf))
        .await
        .unwrap_or_else(|_| panic!("no answer from sluice within {READ_TIMEOUT:?}: it hangs"))
}

async fn next_frame<S: AsyncRead + Unpin>(s: &mut S, buf: &mut BytesMut) -> Next {
    loop {
        if let Some(frame) =
            split_frame(buf, MAX_FRAME).expect("sluice sent a malformed frame header")
        {
            return Next::Frame(frame);
        }
        let mut chunk = [0u8; 4096];
        match read_some(s, &mut chunk).await {
            Ok(0) if buf.is_empty() => return Next::Eof,
            Ok(0) => panic!("connection closed in the middle of a frame: {buf:?}"),
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset && buf.is_empty() => {
                return Next::Reset
            }
            // TLS closed without close_notify: still an end, not a hang.
            Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof && buf.is_empty() => {
                return Next::Eof
            }
            Err(e) => panic!("reading from sluice: {e}"),
        }
    }
}

/// Reads a FATAL ErrorResponse with `sqlstate`, then the end of the connection.
async fn expect_fatal<S: AsyncRead + Unpin>(s: &mut S, sqlstate: &str) -> ErrorFields {
    let mut buf = BytesMut::new();
    let fields = match next_frame(s, &mut buf).await {
        Next::Frame(frame) if frame.tag == b'E' => {
            parse_error_fields(&frame.body).expect("ErrorResponse body")
        }
        other => panic!("expected ErrorResponse {sqlstate}, got {other:?}"),
    };
    assert_eq!(fields.code, sqlstate, "{fields:?}");
    assert_eq!(fields.severity, "FATAL", "{fields:?}");
    match next_frame(s, &mut buf).await {
        Next::Eof | Next::Reset => {}
        other => panic!("expected the connection to end after {sqlstate}, got {other:?}"),
    }
    fields
}

/// Reads to the end of the connection and returns every byte that arrived first.
async fn read_to_end<S: AsyncRead + Unpin>(s: &mut S) -> Vec<u8> {
    let mut all = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        match read_some(s, &mut chunk).await {
            Ok(0) => return all,
            Ok(n) => all.extend_from_slice(&chunk[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => return all,
            Err(e) => panic!("reading from sluice: {e}"),
        }
    }
}

async fn connect(env: &TwoTenants) -> TcpStream {
    TcpStream::connect(env.sluice.addr)
        .await
        .expect("connecting to sluice")
}

async fn send<S: AsyncWrite + Unpin>(s: &mut S, bytes: &[u8]) {
    s.write_all(bytes).await.expect("writing to sluice");
    s.flush().await.expect("flushing to sluice");
}

/// A rustls client that trusts the test CA, offering ALPN `postgresql` if `alpn`.
fn tls_connector(env: &TwoTenants, alpn: bool) -> TlsConnector {
    let mut config = testkit::clients::rustls_config(&env.pki.ca_cert);
    if alpn {
        config.alpn_protocols = vec![b"postgresql".to_vec()];
    }
    TlsConnector::from(Arc::new(config))
}

async fn tls_handshake(
    env: &TwoTenants,
    tcp: TcpStream,
    sni: &str,
    alpn: bool,
) -> tokio_rustls::client::TlsStream<TcpStream> {
    let name = rustls::pki_types::ServerName::try_from(sni.to_owned()).expect("server name");
    tokio::time::timeout(READ_TIMEOUT, tls_connector(env, alpn).connect(name, tcp))
        .await
        .expect("TLS handshake with sluice hangs")
        .expect("TLS handshake with sluice")
}

/// SSLRequest on a fresh connection, its `S`, then the TLS handshake with `sni`.
async fn tls_after_ssl_request(
    env: &TwoTenants,
    sni: &str,
) -> tokio_rustls::client::TlsStream<TcpStream> {
    let mut tcp = connect(env).await;
    send(&mut tcp, &ssl_request()).await;
    expect_ssl_accepted(&mut tcp).await;
    tls_handshake(env, tcp, sni, false).await
}

/// Reads Sluice's one-byte answer to an SSLRequest, which must be `S`.
async fn expect_ssl_accepted(tcp: &mut TcpStream) {
    let mut answer = [0u8; 1];
    tokio::time::timeout(READ_TIMEOUT, tcp.read_exact(&mut answer))
        .await
        .expect("no answer to SSLRequest: sluice hangs")
        .expect("reading the SSLRequest answer");
    assert_eq!(answer[0], b'S');
}

// ---------------------------------------------------------------------------------
// The tests.

#[test]
fn truncated_startup_packet_is_dropped_and_sluice_keeps_serving() {
    let mut env = start(|_| {});
    block_on(async {
        // Length says 100, ten bytes arrive, then the client half-closes: an I/O error
        // on Sluice's side, so there is nobody to tell and the connection just ends.
        let mut tcp = connect(&env).await;
        let mut packet = BytesMut::new();
        packet.put_u32(100);
        packet.put_u32(startup::PROTOCOL_3_0);
        packet.put_slice(b"us");
        assert_eq!(packet.len(), 10);
        send(&mut tcp, &packet).await;
        tcp.shutdown().await.expect("half-close");
        let mut buf = BytesMut::new();
        match next_frame(&mut tcp, &mut buf).await {
            Next::Eof | Next::Reset => {}
            other => panic!("expected the connection to end, got {other:?}"),
        }

        // The same, but the client vanishes completely.
        let mut tcp = connect(&env).await;
        send(&mut tcp, &packet).await;
        drop(tcp);
    });
    assert_still_serves(&mut env);
}

/// Reads to the end of the connection and insists on an orderly close with nothing
/// before it: what Postgres 15 does when the length of the first packet is invalid
/// (it logs "invalid length of startup packet" and closes, no ErrorResponse).
async fn expect_silent_close<S: AsyncRead + Unpin>(s: &mut S, what: &str) {
    let mut chunk = [0u8; 64];
    match read_some(s, &mut chunk).await {
        Ok(0) => {}
        Ok(n) => panic!("{what}: expected a silent close, got {:?}", &chunk[..n]),
        Err(e) => panic!("{what}: expected an orderly close, got {e}"),
    }
}

#[test]
fn absurd_startup_lengths_are_closed_silently_as_postgres_does() {
    let mut env = start(|_| {});
    block_on(async {
        // Only the four length bytes are sent: Sluice must decide from them alone,
        // without waiting for (or allocating) the body they announce.
        for len in [0xFFFF_FFFFu32, 0, 3, 7, 10_005, 0x7FFF_FFFF] {
            let mut tcp = connect(&env).await;
            send(&mut tcp, &len.to_be_bytes()).await;
            expect_silent_close(&mut tcp, &format!("length {len}")).await;
        }
        // A valid length with a protocol Postgres does not speak still gets FATAL.
        let mut tcp = connect(&env).await;
        let mut packet = BytesMut::new();
        packet.put_u32(8);
        packet.put_u32(2 << 16);
        send(&mut tcp, &packet).await;
        let fields = expect_fatal(&mut tcp, "08P01").await;
        assert!(
            fields.message.contains("unsupported frontend protocol 2.0"),
            "{fields:?}"
        );
    });
    assert_still_serves(&mut env);
}

#[test]
fn terminate_or_a_query_before_startup_is_closed_silently() {
    let mut env = start(|_| {});
    block_on(async {
        // A typed message where the startup packet belongs: its tag byte makes the
        // length absurd (b'X' << 24), so Postgres closes without a word. So does Sluice,
        // in order: an end of file in plaintext, close_notify inside TLS.
        let terminate: &[u8] = b"X\0\0\0\x04";
        let query: &[u8] = b"Q\0\0\0\x0dselect 1\0";
        for (what, bytes) in [("Terminate", terminate), ("Query", query)] {
            let mut tcp = connect(&env).await;
            send(&mut tcp, bytes).await;
            expect_silent_close(&mut tcp, what).await;

            let mut tls = tls_after_ssl_request(&env, "acme.db.example.test").await;
            send(&mut tls, bytes).await;
            expect_silent_close(&mut tls, &format!("{what} inside TLS")).await;
        }
    });
    assert_still_serves(&mut env);
}

#[test]
fn bytes_after_ssl_request_are_never_read_as_plaintext() {
    let mut env = start(|_| {});
    block_on(async {
        // SSLRequest and a complete plaintext StartupMessage in ONE write.
        let mut tcp = connect(&env).await;
        let mut both = BytesMut::from(&ssl_request()[..]);
        both.extend_from_slice(&startup_packet(&[
            ("user", "app"),
            ("database", "app"),
            ("options", "tenant=acme"),
        ]));
        send(&mut tcp, &both).await;
        expect_ssl_accepted(&mut tcp).await;

        // What follows the 'S' must be TLS's business: the startup bytes are an invalid
        // ClientHello. At most a TLS alert record, never an Authentication request.
        let rest = read_to_end(&mut tcp).await;
        assert!(
            rest.is_empty() || rest[0] == 0x15,
            "after 'S' sluice sent {rest:?}; it must not answer the plaintext startup"
        );
        assert!(
            rest.first() != Some(&b'R'),
            "sluice authenticated a plaintext startup after 'S'"
        );
    });
    assert_still_serves(&mut env);
}

#[test]
fn gssenc_request_is_declined_then_plaintext_needs_tls() {
    let mut env = start(|c| c.require_tls = true);
    block_on(async {
        let mut tcp = connect(&env).await;
        send(&mut tcp, &request(startup::GSSENC_REQUEST_CODE)).await;
        let mut answer = [0u8; 1];
        tokio::time::timeout(READ_TIMEOUT, tcp.read_exact(&mut answer))
            .await
            .expect("no answer to GSSENCRequest: sluice hangs")
            .expect("reading the GSSENCRequest answer");
        assert_eq!(answer[0], b'N');

        send(
            &mut tcp,
            &startup_packet(&[
                ("user", "app"),
                ("database", "app"),
                ("options", "tenant=acme"),
            ]),
        )
        .await;
        let fields = expect_fatal(&mut tcp, "28000").await;
        assert_eq!(fields.message, "TLS is required");
    });
    assert_still_serves(&mut env);
}

#[test]
fn silent_clients_are_closed_by_the_login_timeout() {
    let mut env = start(|c| c.login_timeout_ms = 1000);
    block_on(async {
        // One client sends nothing at all, one stops in the middle of its startup
        // packet (slowloris): both must be closed by Sluice, not held forever.
        let silent = connect(&env).await;
        let mut partial = connect(&env).await;
        send(&mut partial, &[0, 0, 0, 100, 0, 3]).await;
        let began = Instant::now();
        for (what, mut tcp) in [("silent", silent), ("partial", partial)] {
            let bytes = read_to_end(&mut tcp).await;
            assert!(
                bytes.is_empty(),
                "{what}: sluice sent {bytes:?} before closing"
            );
        }
        let waited = began.elapsed();
        assert!(
            waited >= Duration::from_millis(800),
            "closed after {waited:?}, before the login timeout"
        );
        assert!(
            waited < Duration::from_secs(5),
            "closed only after {waited:?}"
        );
    });
    assert_still_serves(&mut env);
}

#[test]
fn a_client_stuck_in_authentication_is_told_57014() {
    let mut env = start(|c| c.login_timeout_ms = 1000);
    block_on(async {
        // Startup sent, then the SASL challenge is never answered: Postgres' own
        // "canceling authentication due to timeout", readable inside TLS.
        let tcp = connect(&env).await;
        let mut tls = tls_handshake(&env, tcp, "acme.db.example.test", true).await;
        send(&mut tls, &app_startup()).await;
        let mut buf = BytesMut::new();
        match next_frame(&mut tls, &mut buf).await {
            Next::Frame(frame) => assert_eq!(frame.tag, b'R', "{frame:?}"),
            other => panic!("expected an authentication request, got {other:?}"),
        }
        let began = Instant::now();
        let fields = expect_fatal(&mut tls, "57014").await;
        assert_eq!(fields.message, "canceling authentication due to timeout");
        assert!(began.elapsed() < Duration::from_secs(5));
    });
    assert_still_serves(&mut env);
}

#[test]
fn direct_tls_needs_alpn_postgresql() {
    let mut env = start(|_| {});
    block_on(async {
        // With ALPN: the startup inside TLS reaches authentication (SASL).
        let tcp = connect(&env).await;
        let mut tls = tls_handshake(&env, tcp, "acme.db.example.test", true).await;
        assert_eq!(tls.get_ref().1.alpn_protocol(), Some(&b"postgresql"[..]));
        send(&mut tls, &app_startup()).await;
        let mut buf = BytesMut::new();
        match next_frame(&mut tls, &mut buf).await {
            Next::Frame(frame) if frame.tag == b'R' => {
                assert_eq!(&frame.body[..4], &10i32.to_be_bytes(), "AuthenticationSASL");
                match parse_authentication(&frame.body).expect("Authentication body") {
                    Authentication::Sasl { mechanisms } => {
                        assert!(mechanisms.contains(&"SCRAM-SHA-256"), "{mechanisms:?}")
                    }
                    other => panic!("expected AuthenticationSASL, got {other:?}"),
                }
            }
            other => panic!("expected an Authentication request, got {other:?}"),
        }

        // Without ALPN: a readable FATAL 08P01 inside TLS. The client sends nothing
        // after the handshake, so nothing unread can turn Sluice's close into a reset
        // that would race the error.
        let tcp = connect(&env).await;
        let mut tls = tls_handshake(&env, tcp, "acme.db.example.test", false).await;
        assert_eq!(tls.get_ref().1.alpn_protocol(), None);
        let fields = expect_fatal(&mut tls, "08P01").await;
        assert!(fields.message.contains("ALPN"), "{fields:?}");
    });
    assert_still_serves(&mut env);
}

#[test]
fn unknown_tenant_by_sni_gets_a_readable_3d000_inside_tls() {
    let mut env = start(|_| {});
    block_on(async {
        let mut tls = tls_after_ssl_request(&env, "nope.db.example.test").await;
        send(&mut tls, &app_startup()).await;
        let fields = expect_fatal(&mut tls, "3D000").await;
        assert_eq!(fields.message, "tenant \"nope\" does not exist");
    });
    assert_still_serves(&mut env);
}

#[test]
fn a_flood_of_garbage_connections_changes_nothing() {
    let mut env = start(|_| {});
    let addr = env.sluice.addr;
    block_on(async {
        let permits = Arc::new(tokio::sync::Semaphore::new(20));
        let mut tasks = tokio::task::JoinSet::new();
        let (ssl, gss) = (ssl_request(), request(startup::GSSENC_REQUEST_CODE));
        for i in 0..200u32 {
            let permit = permits.clone().acquire_owned().await.expect("semaphore");
            // Make sure every front-door path sees garbage, not just the length check.
            let prefix: &[u8] = match i % 4 {
                1 => &[0x16], // "direct TLS", then a junk ClientHello
                2 => &ssl,    // TLS accepted, then a junk ClientHello
                3 => &gss,    // declined, then a junk startup packet
                _ => &[],
            };
            let mut rng = rand::thread_rng();
            let mut noise = vec![0u8; rng.gen_range(0..64)];
            rng.fill_bytes(&mut noise);
            let bytes = [prefix, &noise[..]].concat();
            tasks.spawn(async move {
                let _permit = permit;
                let mut tcp = TcpStream::connect(addr)
                    .await
                    .expect("connecting to sluice");
                // Sluice may answer and close first; errors here are expected.
                let _ = tcp.write_all(&bytes).await;
            });
        }
        while let Some(done) = tasks.join_next().await {
            done.expect("flood task");
        }
    });
    assert_still_serves(&mut env);
}

#[test]
fn a_forged_cancel_request_cancels_nothing() {
    let mut env = start(|_| {});
    block_on(async {
        let client = testkit::pg_connect(&env.target("acme"))
            .await
            .expect("tokio-postgres through sluice");
        let began = Instant::now();
        let sleeper = tokio::spawn(async move { client.simple_query("select pg_sleep(2)").await });
        tokio::time::sleep(Duration::from_millis(300)).await;

        let mut rng = rand::thread_rng();
        for i in 0..20 {
            let key = CancelKey {
                pid: rng.gen(),
                secret: rng.gen(),
            };
            let mut packet = BytesMut::new();
            startup::encode_cancel(key, &mut packet);
            if i % 2 == 0 {
                // Plaintext, as libpq sends it.
                let mut tcp = connect(&env).await;
                send(&mut tcp, &packet).await;
                let answer = read_to_end(&mut tcp).await;
                assert!(
                    answer.is_empty(),
                    "a cancel request gets no answer, got {answer:?}"
                );
            } else {
                // Inside TLS.
                let mut tls = tls_after_ssl_request(&env, "acme.db.example.test").await;
                send(&mut tls, &packet).await;
                let mut buf = BytesMut::new();
                match next_frame(&mut tls, &mut buf).await {
                    Next::Eof | Next::Reset => {}
                    other => panic!("a cancel request gets no answer, got {other:?}"),
                }
            }
        }

        let result = tokio::time::timeout(Duration::from_secs(20), sleeper)
            .await
            .expect("pg_sleep(2) did not finish")
            .expect("query task");
        assert!(result.is_ok(), "the sleep was disturbed: {result:?}");
        assert!(
            began.elapsed() >= Duration::from_secs(2),
            "pg_sleep(2) ended early"
        );
    });
    assert_still_serves(&mut env);
}
