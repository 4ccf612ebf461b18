//! CancelRequests in a loop (issue 17): a client that sends cancels for its own key
//! as fast as it can, over plaintext and TLS, and a stream of forged keys, while
//! another client of the same pool runs queries.
//!
//! What must hold: the other client sees no error; every cancel request is counted in
//! `sluice_cancel_requests_total` under exactly one outcome; past the rates some are
//! `rate_limited`; a cancel is forwarded only while the client has a request running,
//! so the server connections the pool opens meanwhile are bounded by the cancels
//! forwarded (each closes at most one), never by the cancels sent; and a genuine cancel
//! within the limits still cancels a running query (57014).

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::BytesMut;
use testkit::http::get;
use testkit::raw::{RawClient, Transport};
use testkit::{PgTarget, SluiceProcess, TestCluster, TwoTenants};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};
use wire::startup::{self, CancelKey};

const BIN: &str = env!("CARGO_BIN_EXE_sluice");

/// Where the spam comes from: addresses of their own, so the per-address buckets of
/// the clients under test (127.0.0.1) are untouched.
const OWN_KEY_PLAIN: [u8; 4] = [127, 0, 0, 2];
const OWN_KEY_TLS: [u8; 4] = [127, 0, 0, 3];
const FORGED: [u8; 4] = [127, 0, 0, 4];

/// Cancels sent inside TLS per test: each is a new connection with SNI, which takes a
/// token of the tenant's `connect_rate` at its ClientHello (50 per second, 100 at
/// once by default), and past that a storm of them is shed before the handshake
/// (docs/limits.md). Kept within that burst, so every one reaches the cancel path.
const TLS_MAX: u64 = 60;

/// The counters of one family in a scrape of `/metrics`: labels → value.
fn counters(sluice: &SluiceProcess, family: &str) -> BTreeMap<Vec<(String, String)>, u64> {
    let response = get(sluice.admin_addr, "/metrics", None);
    assert_eq!(response.status, 200, "{}", response.body);
    let mut found = BTreeMap::new();
    for line in response.body.lines() {
        let Some(rest) = line.strip_prefix(family) else {
            continue;
        };
        let Some((labels, value)) = rest.strip_prefix('{').and_then(|r| r.split_once("} ")) else {
            continue;
        };
        let labels = labels
            .split(',')
            .filter_map(|kv| kv.split_once('='))
            .map(|(k, v)| (k.to_owned(), v.trim_matches('"').to_owned()))
            .collect();
        let value: f64 = value.trim().parse().expect("a counter value");
        found.insert(labels, value as u64);
    }
    found
}

/// The cancel requests counted so far: (tenant, outcome) → count.
fn cancels(sluice: &SluiceProcess) -> BTreeMap<(String, String), u64> {
    counters(sluice, "sluice_cancel_requests_total")
        .into_iter()
        .map(|(labels, n)| {
            let get = |k: &str| labels.iter().find(|(l, _)| l == k).unwrap().1.clone();
            ((get("tenant"), get("outcome")), n)
        })
        .collect()
}

fn outcome(counted: &BTreeMap<(String, String), u64>, tenant: &str, outcome: &str) -> u64 {
    counted
        .get(&(tenant.to_owned(), outcome.to_owned()))
        .copied()
        .unwrap_or(0)
}

/// Server connections the tenant's pools have opened so far.
fn opened(sluice: &SluiceProcess, tenant: &str) -> u64 {
    let want = vec![("tenant".to_owned(), tenant.to_owned())];
    counters(sluice, "sluice_server_connections_opened_total")
        .get(&want)
        .copied()
        .unwrap_or(0)
}

/// Waits until `sql` runs on `cluster` (seen directly in pg_stat_activity).
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

async fn connect_from(source: [u8; 4], to: SocketAddr) -> std::io::Result<TcpStream> {
    let socket = TcpSocket::new_v4()?;
    socket.bind(SocketAddr::new(IpAddr::from(source), 0))?;
    let tcp = socket.connect(to).await?;
    tcp.set_nodelay(true)?;
    Ok(tcp)
}

/// Sends one CancelRequest for `key` on `stream` and reads until Sluice closes it.
async fn cancel_on<S>(mut stream: S, key: CancelKey) -> std::io::Result<()>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let mut packet = BytesMut::new();
    startup::encode_cancel(key, &mut packet);
    stream.write_all(&packet).await?;
    stream.flush().await?;
    let mut rest = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(20), stream.read_to_end(&mut rest))
        .await
        .map_err(|_| std::io::Error::other("sluice kept the cancel connection open"))?;
    // Inside TLS the end must carry close_notify (else: UnexpectedEof).
    read.map(|_| ())
}

/// One CancelRequest for `key` from `source`, plaintext or inside TLS (SSLRequest,
/// handshake with the target's server name, then the request).
async fn send_cancel(
    target: &PgTarget,
    source: [u8; 4],
    tls: bool,
    key: CancelKey,
) -> std::io::Result<()> {
    let mut tcp = connect_from(source, target.addr).await?;
    if !tls {
        return cancel_on(tcp, key).await;
    }
    let mut request = [0u8; 8];
    request[..4].copy_from_slice(&8u32.to_be_bytes());
    request[4..].copy_from_slice(&startup::SSL_REQUEST_CODE.to_be_bytes());
    tcp.write_all(&request).await?;
    let mut answer = [0u8; 1];
    tcp.read_exact(&mut answer).await?;
    assert_eq!(answer[0], b'S', "TLS offered");
    let host = target.sni_host.clone().expect("a server name");
    let name = rustls::pki_types::ServerName::try_from(host).expect("a DNS name");
    let config = testkit::clients::rustls_config(&target.ca);
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let tls = connector.connect(name, tcp).await?;
    cancel_on(tls, key).await
}

/// Cancel requests sent (each answered by Sluice closing the connection) until `stop`.
#[derive(Clone)]
struct Spam {
    stop: Arc<AtomicBool>,
    sent: Arc<AtomicU64>,
}

impl Spam {
    fn new() -> Self {
        Spam {
            stop: Arc::new(AtomicBool::new(false)),
            sent: Arc::new(AtomicU64::new(0)),
        }
    }

    /// A task sending cancels from `source` in a loop, for `key` (or, without one, for
    /// a different forged key each time), at most `max` of them.
    fn start(
        &self,
        target: &PgTarget,
        source: [u8; 4],
        tls: bool,
        key: Option<CancelKey>,
        max: u64,
    ) -> tokio::task::JoinHandle<()> {
        let (target, spam) = (target.clone(), self.clone());
        tokio::spawn(async move {
            for i in 0..max {
                if spam.stop.load(Ordering::Relaxed) {
                    break;
                }
                let key = key.unwrap_or(CancelKey {
                    pid: i as i32 + 1,
                    secret: (i as i32).wrapping_mul(7919),
                });
                send_cancel(&target, source, tls, key)
                    .await
                    .unwrap_or_else(|e| panic!("cancel #{i} from {source:?} (tls: {tls}): {e}"));
                spam.sent.fetch_add(1, Ordering::Relaxed);
            }
        })
    }

    async fn finish(&self, tasks: Vec<tokio::task::JoinHandle<()>>) -> u64 {
        self.stop.store(true, Ordering::Relaxed);
        for task in tasks {
            task.await.expect("a spam task");
        }
        self.sent.load(Ordering::Relaxed)
    }
}

/// Transaction mode: a client runs short sleeps and cancels them itself in a loop
/// (plaintext and TLS), a third address sends forged keys, and another client of the
/// same pool runs its queries throughout.
#[tokio::test]
async fn own_key_spam_costs_a_bounded_number_of_server_connections() {
    let env = TwoTenants::start(BIN.as_ref(), |c| {
        c.default_pool = vec!["mode = \"transaction\"".into(), "size = 4".into()];
        c.proxy_extra = vec![
            "cancel_rate_per_key = 2".into(),
            "cancel_rate_per_ip = 20".into(),
        ];
    })
    .expect("test environment");
    let target = env.target("acme");
    let victim = testkit::pg_connect(&target).await.expect("victim logs in");
    let mut spammer = RawClient::login(&target, Transport::Tls)
        .await
        .expect("spammer logs in");
    let opened_before = opened(&env.sluice, "acme");
    assert!(opened_before >= 1, "the logins opened a server connection");

    let started = Instant::now();
    let spam = Spam::new();
    let tasks = vec![
        spam.start(&target, OWN_KEY_PLAIN, false, Some(spammer.key), 100_000),
        spam.start(&target, OWN_KEY_TLS, true, Some(spammer.key), TLS_MAX),
        spam.start(&target, FORGED, false, None, 100_000),
    ];
    let own_queries = async {
        let mut cancelled = 0;
        for _ in 0..40 {
            let result = spammer
                .scalar("select pg_sleep(0.05)::text")
                .await
                .map(|_| ());
            match result {
                Ok(()) => {}
                Err(e) if e.to_string().contains("57014") => cancelled += 1,
                Err(e) => panic!("the spammer's own query failed otherwise: {e}"),
            }
        }
        cancelled
    };
    let other_queries = async {
        for i in 0..400 {
            let n: i32 = victim
                .query_one("select $1::int4", &[&i])
                .await
                .unwrap_or_else(|e| panic!("the other client's query #{i} failed: {e}"))
                .get(0);
            assert_eq!(n, i);
        }
    };
    let (cancelled, ()) = tokio::join!(own_queries, other_queries);
    let sent = spam.finish(tasks).await;
    let elapsed = started.elapsed();

    let counted = cancels(&env.sluice);
    let total: u64 = counted.values().sum();
    assert_eq!(total, sent, "every request counted once: {counted:?}");
    let forwarded = outcome(&counted, "acme", "forwarded") + outcome(&counted, "acme", "failed");
    let limited =
        outcome(&counted, "acme", "rate_limited") + outcome(&counted, "_none", "rate_limited");
    assert!(
        forwarded >= 1,
        "the spammer's sleeps were cancelled: {counted:?}"
    );
    assert!(
        limited >= 1,
        "{sent} requests in {elapsed:?} passed no limit: {counted:?}"
    );
    assert_eq!(
        outcome(&counted, "_none", "forwarded"),
        0,
        "a forged key reaches no backend: {counted:?}"
    );
    // The key's bucket: 2 per second and 4 at once, over the time it was used.
    let bound = 4 + (2.0 * elapsed.as_secs_f64()).ceil() as u64;
    assert!(forwarded <= bound, "{forwarded} > {bound}: {counted:?}");
    assert!(
        cancelled <= forwarded,
        "{cancelled} cancelled sleeps, {forwarded} cancels"
    );
    // Each forwarded cancel closes at most the one server connection it went to; the
    // two clients need at most two at a time.
    let opened_now = opened(&env.sluice, "acme") - opened_before;
    assert!(
        opened_now <= forwarded + 2,
        "{opened_now} server connections opened for {forwarded} forwarded cancels ({sent} sent)"
    );
    println!("cancel_spam: {sent} cancels in {elapsed:?}: {counted:?}; {cancelled} sleeps cancelled, {opened_now} server connections opened");

    // The clients are fine, and so is the pool.
    assert_eq!(spammer.scalar("select 1").await.expect("spammer"), "1");
    let n: i64 = testkit::scalar(&victim, "select count(*) from pg_stat_activity").await;
    assert!(n >= 1);
}

/// While one client's key is spammed, another client of the pool cancels its own
/// running query: its cancel is within its key's and its address's rates, and works.
#[tokio::test]
async fn a_genuine_cancel_works_during_the_spam() {
    let env = TwoTenants::start(BIN.as_ref(), |c| {
        c.default_pool = vec!["mode = \"transaction\"".into(), "size = 4".into()];
        c.proxy_extra = vec![
            "cancel_rate_per_key = 1".into(),
            "cancel_rate_per_ip = 5".into(),
        ];
    })
    .expect("test environment");
    let target = env.target("acme");
    let mut spammer = RawClient::login(&target, Transport::Tls)
        .await
        .expect("spammer logs in");
    let mut victim = RawClient::login(&target, Transport::Tls)
        .await
        .expect("victim logs in");

    const OWN_SLEEP: &str = "select pg_sleep(30)";
    const SLEEP: &str = "select pg_sleep(60)";
    spammer.query(OWN_SLEEP).await.expect("the spammer's query");
    wait_until_running(&env.acme, OWN_SLEEP).await;
    let spam = Spam::new();
    let tasks = vec![
        spam.start(&target, OWN_KEY_PLAIN, false, Some(spammer.key), 100_000),
        spam.start(&target, OWN_KEY_TLS, true, Some(spammer.key), TLS_MAX),
        spam.start(&target, FORGED, false, None, 100_000),
    ];
    // The spammer's own sleep is cancelled (its first cancel is within its rates).
    let own = spammer.result().await.expect("the spammer's result");
    assert_eq!(own.expect_err("cancelled").code, "57014");
    // Wait until the spam has used up every bucket it can reach.
    for _ in 0..3000 {
        if spam.sent.load(Ordering::Relaxed) >= 200 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(spam.sent.load(Ordering::Relaxed) >= 200, "the spam stalled");
    victim.query(SLEEP).await.expect("the victim's query");
    wait_until_running(&env.acme, SLEEP).await;
    let tcp = TcpStream::connect(env.sluice.addr).await.expect("connect");
    cancel_on(tcp, victim.key)
        .await
        .expect("the victim's cancel");
    let result = victim.result().await.expect("the victim's result");
    assert_eq!(result.expect_err("cancelled").code, "57014");
    let sent = spam.finish(tasks).await;

    let counted = cancels(&env.sluice);
    assert_eq!(
        counted.values().sum::<u64>(),
        sent + 1,
        "every request counted once: {counted:?}"
    );
    assert!(
        outcome(&counted, "acme", "rate_limited") >= 1,
        "{counted:?}"
    );
    assert!(
        outcome(&counted, "_none", "rate_limited") >= 1,
        "{counted:?}"
    );
    assert!(outcome(&counted, "acme", "forwarded") >= 2, "{counted:?}");
    assert_eq!(victim.scalar("select 1").await.expect("victim"), "1");
}

/// A client with nothing running has nothing to cancel: however many cancels it sends
/// for its own key, none is forwarded and its server connection stays in the pool
/// (session mode: the next client gets the same backend; transaction mode between
/// transactions: it holds none).
#[tokio::test]
async fn an_idle_clients_cancels_are_neither_forwarded_nor_costly() {
    let env = TwoTenants::start(BIN.as_ref(), |c| {
        c.proxy_extra = vec![
            "cancel_rate_per_key = 1".into(),
            "cancel_rate_per_ip = 0".into(),
        ];
        c.tenants[1].pool = vec!["mode = \"transaction\"".into()];
    })
    .expect("test environment");
    for tenant in ["acme", "globex"] {
        let target = env.target(tenant);
        let mut spammer = RawClient::login(&target, Transport::Tls)
            .await
            .expect("logging in");
        let pid = spammer
            .scalar("select pg_backend_pid()")
            .await
            .expect("a pid");
        let before = opened(&env.sluice, tenant);
        let spam = Spam::new();
        let tasks = vec![
            spam.start(&target, OWN_KEY_PLAIN, false, Some(spammer.key), 300),
            spam.start(&target, OWN_KEY_TLS, true, Some(spammer.key), 30),
        ];
        for task in tasks {
            task.await.expect("a spam task");
        }
        let sent = spam.sent.load(Ordering::Relaxed);
        assert_eq!(sent, 330);
        let counted = cancels(&env.sluice);
        assert_eq!(
            outcome(&counted, tenant, "idle"),
            sent,
            "{tenant}: {counted:?}"
        );
        assert_eq!(
            outcome(&counted, tenant, "forwarded"),
            0,
            "{tenant}: {counted:?}"
        );
        // The connection was not marked: back in the pool when the client leaves (a
        // Terminate; Sluice closes the client's connection once it has released the
        // server connection), it serves the next client.
        spammer
            .send(&testkit::raw::message(b'X', &[]))
            .await
            .expect("Terminate");
        spammer.to_end().await.expect("the end of the connection");
        let mut next = RawClient::login(&target, Transport::Tls)
            .await
            .expect("logging in");
        let next_pid = next.scalar("select pg_backend_pid()").await.expect("a pid");
        assert_eq!(next_pid, pid, "{tenant}: the same server connection");
        assert_eq!(opened(&env.sluice, tenant), before, "{tenant}: none opened");
    }
}
