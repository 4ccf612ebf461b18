//! PROXY protocol end to end: real HAProxy (`mode tcp`, `send-proxy-v2`) in front of
//! real Sluice in front of real Postgres. HAProxy connects to Sluice from 127.0.0.9
//! (`source`), the only trusted balancer (`proxy_protocol_from`); clients bind their
//! own source addresses (127.0.0.2, 127.0.0.3, ...), which only the header carries.
//!
//! Needs `haproxy` on the PATH (scripts/test installs Debian's package); see
//! `testkit::haproxy`.

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use testkit::haproxy::{Haproxy, BALANCER};
use testkit::http::get;
use testkit::{pg_connect_from, PgTarget, TwoTenants};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_postgres::tls::MakeTlsConnect;

const BIN: &str = env!("CARGO_BIN_EXE_sluice");

fn env(mode: &str, proxy: &[&str], limits: &[&str]) -> TwoTenants {
    TwoTenants::start(BIN.as_ref(), |c| {
        c.proxy_extra = vec![
            format!("proxy_protocol = \"{mode}\""),
            format!("proxy_protocol_from = [\"{BALANCER}/32\"]"),
        ];
        c.proxy_extra.extend(proxy.iter().map(|l| l.to_string()));
        c.default_limits = limits.iter().map(|l| l.to_string()).collect();
    })
    .expect("test environment")
}

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

fn via(target: &PgTarget, haproxy: &Haproxy) -> PgTarget {
    PgTarget {
        addr: haproxy.addr,
        ..target.clone()
    }
}

fn code_and_message(err: &tokio_postgres::Error) -> (String, String) {
    match err.as_db_error() {
        Some(db) => (db.code().code().to_owned(), db.message().to_owned()),
        None => ("none".into(), err.to_string()),
    }
}

async fn select_one(target: &PgTarget, from: &str) -> Result<(), (String, String)> {
    let (client, _conn) = pg_connect_from(target, ip(from))
        .await
        .map_err(|e| code_and_message(&e))?;
    let row = client.query_one("select 1", &[]).await.expect("select 1");
    assert_eq!(row.get::<_, i32>(0), 1);
    Ok(())
}

/// Connects to `addr` from `source`, sends `bytes`, and returns the SQLSTATE and
/// message of the ErrorResponse Sluice answers with before it closes.
async fn refused_raw(addr: SocketAddr, source: &str, bytes: &[u8]) -> (String, String) {
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.bind(SocketAddr::new(ip(source), 0)).unwrap();
    let mut tcp = socket.connect(addr).await.expect("connect");
    tcp.write_all(bytes).await.expect("send");
    let mut got = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), tcp.read_to_end(&mut got))
        .await
        .expect("Sluice closes")
        .expect("read until Sluice closes");
    assert_eq!(got.first(), Some(&b'E'), "an ErrorResponse: {got:?}");
    let len = u32::from_be_bytes(got[1..5].try_into().unwrap()) as usize;
    let fields = wire::messages::parse_error_fields(&got[5..1 + len]).expect("ErrorResponse");
    (fields.code, fields.message)
}

/// A PROXY v2 header saying the connection is from `source`.
fn v2_header(source: [u8; 4]) -> Vec<u8> {
    let mut out = wire::proxy_header::V2_SIGNATURE.to_vec();
    out.extend_from_slice(&[0x21, 0x11, 0, 12]);
    out.extend_from_slice(&source);
    out.extend_from_slice(&[127, 0, 0, 1, 0x9c, 0x40, 0x19, 0x00]);
    out
}

const SSL_REQUEST: [u8; 8] = [0, 0, 0, 8, 4, 210, 22, 47];

#[tokio::test]
async fn behind_haproxy_the_headers_address_is_the_clients() {
    let env = env(
        "v2",
        &["max_pending_logins_per_ip = 2"],
        &[
            "allow_cidrs = [\"127.0.0.2/32\", \"127.0.0.3/32\"]",
            "failed_login_max = 3",
            "failed_login_window_s = 60",
            "failed_login_ban_s = 60",
        ],
    );
    let haproxy = Haproxy::start(env.dir.path(), env.sluice.addr);
    let good = via(&env.target("acme"), &haproxy);

    // allow_cidrs sees the client's own address, not HAProxy's (127.0.0.9).
    select_one(&good, "127.0.0.2")
        .await
        .expect("127.0.0.2 through HAProxy");
    let refused = select_one(&good, "127.0.0.1").await.expect_err("127.0.0.1");
    assert_eq!(
        refused,
        (
            "28000".to_owned(),
            "connections from 127.0.0.1 are not allowed for tenant \"acme\"".to_owned()
        )
    );

    // Failed logins ban 127.0.0.3 only.
    let mut bad = good.clone();
    bad.password = "wrong".into();
    for _ in 0..3 {
        let (code, _) = select_one(&bad, "127.0.0.3")
            .await
            .expect_err("wrong password");
        assert_eq!(code, "28P01");
    }
    let (code, message) = select_one(&good, "127.0.0.3").await.expect_err("banned");
    assert_eq!(code, "28P01");
    assert!(message.starts_with("too many failed logins"), "{message}");
    select_one(&good, "127.0.0.2")
        .await
        .expect("127.0.0.2 is not banned");
    let key = Some(env.sluice.admin_key.as_str());
    let bans = get(env.sluice.admin_addr, "/v1/tenants/acme/bans", key).json();
    let listed: Vec<_> = bans["bans"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| b["ip"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(listed, ["127.0.0.3"], "{bans}");

    // The connection's log lines carry the client's address and the balancer's.
    let log = env.sluice.plain_log();
    assert!(log.contains("client_addr=127.0.0.2:"), "{log}");
    assert!(log.contains(&format!("proxy_addr={BALANCER}:")), "{log}");
    // HAProxy's health checks (a LOCAL header, then close) are its own connections:
    // neither refusals nor lines at info. No other line has its address as a client's.
    let balancer = format!("client_addr={BALANCER}:");
    assert!(log.contains("health check from the load balancer"), "{log}");
    assert!(
        log.lines()
            .filter(|l| l.contains(&balancer))
            .all(|l| l.contains("DEBUG") && l.contains("health check from the load balancer")),
        "{log}"
    );

    // max_pending_logins_per_ip counts the header's address, not HAProxy's: two
    // silent connections from 127.0.0.4 fill its share, a third is refused, and
    // 127.0.0.2 still gets in.
    let mut silent = Vec::new();
    for _ in 0..2 {
        let socket = tokio::net::TcpSocket::new_v4().unwrap();
        socket.bind(SocketAddr::new(ip("127.0.0.4"), 0)).unwrap();
        silent.push(socket.connect(haproxy.addr).await.unwrap());
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let (code, message) = refused_raw(haproxy.addr, "127.0.0.4", &[]).await;
    assert_eq!(code, "53300");
    assert_eq!(
        message,
        "sorry, too many connections from this address waiting to log in"
    );
    select_one(&good, "127.0.0.2")
        .await
        .expect("127.0.0.2 while 127.0.0.4 is at its cap");
    drop(silent);

    // Straight to Sluice, not through the trusted balancer: refused, with or without
    // a header claiming an allowed address.
    let forged = [v2_header([127, 0, 0, 2]), SSL_REQUEST.to_vec()].concat();
    for bytes in [&forged[..], &SSL_REQUEST[..]] {
        let (code, message) = refused_raw(env.sluice.addr, "127.0.0.2", bytes).await;
        assert_eq!(code, "28000");
        assert_eq!(message, "connections must come through a trusted proxy");
    }
    let direct = select_one(&env.target("acme"), "127.0.0.2").await;
    assert!(direct.is_err(), "a direct client in v2 mode");
}

#[tokio::test]
async fn optional_mode_takes_direct_clients_and_never_their_headers() {
    let env = env("optional", &[], &["allow_cidrs = [\"127.0.0.2/32\"]"]);
    let haproxy = Haproxy::start(env.dir.path(), env.sluice.addr);
    let direct = env.target("acme");
    let balanced = via(&direct, &haproxy);

    // Through HAProxy: the header's address decides.
    select_one(&balanced, "127.0.0.2")
        .await
        .expect("127.0.0.2 through HAProxy");
    let (code, message) = select_one(&balanced, "127.0.0.1")
        .await
        .expect_err("127.0.0.1 through HAProxy");
    assert_eq!(code, "28000");
    assert!(message.contains("from 127.0.0.1 "), "{message}");

    // Directly: the socket's address decides.
    select_one(&direct, "127.0.0.2")
        .await
        .expect("a direct client from 127.0.0.2");
    let (code, message) = select_one(&direct, "127.0.0.3")
        .await
        .expect_err("a direct client from 127.0.0.3");
    assert_eq!(code, "28000");
    assert!(message.contains("from 127.0.0.3 "), "{message}");

    // A direct client's header is refused, whatever it claims.
    let forged = [v2_header([127, 0, 0, 2]), SSL_REQUEST.to_vec()].concat();
    let (code, message) = refused_raw(env.sluice.addr, "127.0.0.3", &forged).await;
    assert_eq!(code, "28000");
    assert_eq!(message, "PROXY protocol header from an untrusted address");
    let v1 = b"PROXY TCP4 127.0.0.2 127.0.0.1 1234 6432\r\n";
    let (code, _) = refused_raw(env.sluice.addr, "127.0.0.3", v1).await;
    assert_eq!(code, "28000");

    // A cancel through HAProxy reaches the query (the CancelRequest comes after a
    // header too; the cancel rate is kept per header address).
    let (client, _conn) = pg_connect_from(&balanced, ip("127.0.0.2"))
        .await
        .expect("127.0.0.2 through HAProxy");
    let token = client.cancel_token();
    let sleeping = tokio::spawn(async move { client.simple_query("select pg_sleep(30)").await });
    tokio::time::sleep(Duration::from_millis(300)).await;
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.bind(SocketAddr::new(ip("127.0.0.2"), 0)).unwrap();
    let tcp = socket.connect(haproxy.addr).await.unwrap();
    let host = balanced.sni_host.clone().unwrap();
    let mut tls = testkit::clients::tls_connector(&balanced.ca);
    let tls = <tokio_postgres_rustls::MakeRustlsConnect as MakeTlsConnect<
        tokio::net::TcpStream,
    >>::make_tls_connect(&mut tls, &host)
    .unwrap();
    token
        .cancel_query_raw(tcp, tls)
        .await
        .expect("cancel request sent");
    let err = tokio::time::timeout(Duration::from_secs(5), sleeping)
        .await
        .expect("cancelled within 5 s")
        .unwrap()
        .expect_err("cancelled");
    assert_eq!(code_and_message(&err).0, "57014", "{err}");

    // And the balancer itself without a header is a direct client of its own.
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.bind(SocketAddr::new(ip(BALANCER), 0)).unwrap();
    let mut tcp = socket.connect(env.sluice.addr).await.unwrap();
    tcp.write_all(&SSL_REQUEST).await.unwrap();
    let mut answer = [0u8; 1];
    tcp.read_exact(&mut answer).await.unwrap();
    assert_eq!(&answer, b"S", "TLS offered to the headerless balancer");
}
