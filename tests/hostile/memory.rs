//! Huge client messages. A message larger than `max_client_message_buffer` is streamed
//! to the server as it arrives, in both pool modes, so however much a client declares
//! or sends, Sluice holds a bounded amount of it; a message that must be held whole
//! (a Parse, whose text Sluice keeps) over that cap is refused with 54000; and what
//! clients make Sluice hold beyond a small per-client allowance is charged to a
//! process-wide budget with a share per tenant (53200 past it). Only the offending
//! client's connection ends; the other tenant is served throughout.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::{BufMut, BytesMut};
use testkit::raw::{error_fields, Transport};
use testkit::{pg_connect, procfs, RawClient, TwoTenants};
use tokio_postgres::error::SqlState;

const BIN: &str = env!("CARGO_BIN_EXE_sluice");

/// The largest length field Postgres accepts (its `PQ_LARGE_MESSAGE_LIMIT`): about 1 GiB.
const DECLARED: u32 = 0x3fff_fffe;

/// `acme` pools in transaction mode (2 server connections), `globex` in session mode.
fn start(proxy: &[&str]) -> TwoTenants {
    let proxy: Vec<String> = proxy.iter().map(|s| s.to_string()).collect();
    TwoTenants::start(BIN.as_ref(), move |c| {
        c.tenants[0].pool = vec!["mode = \"transaction\"".into(), "size = 2".into()];
        c.tenants[1].pool = vec!["mode = \"session\"".into(), "size = 10".into()];
        c.proxy_extra = proxy;
    })
    .expect("environment")
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("tokio runtime")
}

fn rss_mib(pid: u32) -> f64 {
    procfs::rss_kib(pid).expect("sluice is running") as f64 / 1024.0
}

/// Samples a process's RSS every 20 ms until dropped; keeps the peak.
struct RssPeak {
    peak_kib: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl RssPeak {
    fn watch(pid: u32) -> Self {
        let peak_kib = Arc::new(AtomicU64::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let (peak, done) = (peak_kib.clone(), stop.clone());
        let thread = std::thread::spawn(move || {
            while !done.load(Ordering::Relaxed) {
                if let Some(kib) = procfs::rss_kib(pid) {
                    peak.fetch_max(kib, Ordering::Relaxed);
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        });
        RssPeak {
            peak_kib,
            stop,
            thread: Some(thread),
        }
    }

    fn peak_mib(mut self) -> f64 {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        self.peak_kib.load(Ordering::Relaxed) as f64 / 1024.0
    }
}

/// Logs in, declares a ~1 GiB Query, sends `send` bytes of it, and leaves.
async fn declare_huge_query(env_target: testkit::PgTarget, send: usize) -> anyhow::Result<()> {
    let mut client = RawClient::login(&env_target, Transport::Tls).await?;
    let mut head = BytesMut::new();
    head.put_u8(b'Q');
    head.put_u32(DECLARED);
    head.extend_from_slice(b"select length('");
    client.send(&head).await?;
    let chunk = vec![b'x'; 256 * 1024];
    let mut sent = 0;
    while sent < send {
        client.send(&chunk).await?;
        sent += chunk.len();
    }
    Ok(())
}

/// A well-behaved client of `target` runs `SELECT 1` until `stop`; returns how many
/// succeeded, and panics on the first failure.
async fn bystander(target: testkit::PgTarget, stop: Arc<AtomicBool>) -> u64 {
    let client = pg_connect(&target).await.expect("bystander connects");
    let mut ok = 0;
    while !stop.load(Ordering::Relaxed) {
        let row = client.query_one("select 1", &[]).await;
        assert!(row.is_ok(), "the bystander's SELECT 1 failed: {row:?}");
        ok += 1;
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    ok
}

/// Eight clients each declare a ~1 GiB Query and send 24 MB of it, in transaction mode
/// and then in session mode: Sluice's RSS stays within 64 MB of idle throughout and
/// comes back within 16 MB of it once they are gone, while a client of the other
/// tenant is served.
#[test]
fn declared_gigabyte_messages_are_streamed_in_both_modes() {
    let env = start(&[]);
    let pid = env.sluice.pid();
    let rt = runtime();
    for (attacked, bystanding) in [("acme", "globex"), ("globex", "acme")] {
        // Idle, with the bystander logged in and the attacked tenant's pool warm.
        let stop = Arc::new(AtomicBool::new(false));
        let served = rt.spawn(bystander(env.target(bystanding), stop.clone()));
        rt.block_on(async {
            let c = pg_connect(&env.target(attacked)).await.unwrap();
            c.simple_query("select 1").await.unwrap();
            tokio::time::sleep(Duration::from_millis(500)).await;
        });
        let idle = rss_mib(pid);
        let peak = RssPeak::watch(pid);
        rt.block_on(async {
            let attackers: Vec<_> = (0..8)
                .map(|_| tokio::spawn(declare_huge_query(env.target(attacked), 24 << 20)))
                .collect();
            for a in attackers {
                // A client whose server gave up on its message may see an error: what
                // matters is what Sluice held meanwhile.
                let _ = a.await.unwrap();
            }
        });
        let peak = peak.peak_mib();
        // Back to idle within 10 s.
        let deadline = Instant::now() + Duration::from_secs(10);
        let mut after = rss_mib(pid);
        while after > idle + 16.0 && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(200));
            after = rss_mib(pid);
        }
        stop.store(true, Ordering::Relaxed);
        let served = rt.block_on(served).unwrap();
        println!(
            "{attacked}: idle {idle:.1} MiB, peak {peak:.1} MiB, after {after:.1} MiB; \
             bystander ran {served} queries"
        );
        assert!(
            peak <= idle + 64.0,
            "{attacked}: RSS peaked at {peak:.1} MiB, idle {idle:.1} MiB"
        );
        assert!(
            after <= idle + 16.0,
            "{attacked}: RSS {after:.1} MiB 10 s after, idle {idle:.1} MiB"
        );
        assert!(served > 0, "the bystander was never served");
    }
    // The streamed bytes were counted as relayed (the last connections may still be
    // closing).
    let streamed = || {
        env.sluice
            .plain_log()
            .lines()
            .filter_map(|l| {
                let v = l.split("bytes_from_client=").nth(1)?;
                v.split(|c: char| !c.is_ascii_digit())
                    .next()?
                    .parse::<u64>()
                    .ok()
            })
            .filter(|&n| n >= 24 << 20)
            .count()
    };
    let deadline = Instant::now() + Duration::from_secs(10);
    while streamed() < 16 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(
        streamed(),
        16,
        "connection lines counting 24 MB from the client"
    );
}

/// Messages over the cap that can be streamed reach the server whole, in both modes:
/// a simple Query, a Bind with a large parameter, COPY data.
#[test]
fn large_messages_reach_the_server_whole() {
    let env = start(&["max_client_message_buffer = 65536"]);
    let rt = runtime();
    rt.block_on(async {
        for tenant in ["acme", "globex"] {
            let c = pg_connect(&env.target(tenant)).await.unwrap();
            let big = "y".repeat(3 << 20);
            let rows = c
                .simple_query(&format!("select length('{big}')"))
                .await
                .unwrap();
            let n = rows.iter().find_map(|m| match m {
                tokio_postgres::SimpleQueryMessage::Row(r) => r.get(0).map(str::to_owned),
                _ => None,
            });
            assert_eq!(n.as_deref(), Some("3145728"), "{tenant}: simple query");
            let blob = vec![7u8; 5 << 20];
            let len: i32 = c
                .query_one("select octet_length($1::bytea)", &[&blob])
                .await
                .unwrap()
                .get(0);
            assert_eq!(len, 5 << 20, "{tenant}: bind");
            c.batch_execute("create temp table t (b text)")
                .await
                .unwrap();
            let sink = c.copy_in("copy t from stdin").await.unwrap();
            let mut line = "z".repeat(2 << 20);
            line.push('\n');
            use futures_util::SinkExt;
            let mut sink = Box::pin(sink);
            sink.send(bytes::Bytes::from(line)).await.unwrap();
            let copied = sink.as_mut().finish().await.unwrap();
            assert_eq!(copied, 1, "{tenant}: copy");
            let len: i32 = c
                .query_one("select length(b) from t", &[])
                .await
                .unwrap()
                .get(0);
            assert_eq!(len, 2 << 20, "{tenant}: copied row");
            // The client goes on as usual.
            assert_eq!(testkit::scalar::<i32>(&c, "select 1").await, 1);
        }
    });
}

/// A Parse over the cap (Sluice keeps statement texts to prepare them again) is
/// refused with 54000 naming the limit; that client's connection ends, nobody else's.
#[test]
fn a_message_that_must_be_held_whole_is_capped() {
    let env = start(&["max_client_message_buffer = 65536"]);
    let rt = runtime();
    rt.block_on(async {
        let other = pg_connect(&env.target("acme")).await.unwrap();
        let c = pg_connect(&env.target("acme")).await.unwrap();
        let text = format!("select '{}'", "p".repeat(100_000));
        let err = c
            .prepare(&text)
            .await
            .expect_err("a 100 kB Parse over a 64 kB cap");
        let db = err.as_db_error().unwrap_or_else(|| panic!("{err}"));
        assert_eq!(db.code(), &SqlState::PROGRAM_LIMIT_EXCEEDED, "{db:?}");
        assert!(
            db.message().contains("max_client_message_buffer"),
            "{}",
            db.message()
        );
        assert!(
            c.simple_query("select 1").await.is_err(),
            "its connection ended"
        );
        assert_eq!(testkit::scalar::<i32>(&other, "select 1").await, 1);

        // A client that half-closes in the middle of a streamed message can get no
        // answer to it: Sluice ends the session at once rather than wait for one.
        let mut raw = RawClient::login(&env.target("acme"), Transport::Tls)
            .await
            .unwrap();
        let mut head = BytesMut::new();
        head.put_u8(b'Q');
        head.put_u32(2_000_000);
        head.put_slice(&vec![b' '; 100_000]);
        raw.send(&head).await.unwrap();
        raw.half_close().await.unwrap();
        let rest = raw.to_end().await;
        assert!(
            rest.is_ok(),
            "the connection ended within the read timeout: {rest:?}"
        );
        assert_eq!(testkit::scalar::<i32>(&other, "select 1").await, 1);
    });
}

/// `sluice_client_memory_bytes` of `tenant` on /metrics (0 without a series).
fn memory_gauge(env: &TwoTenants, tenant: &str) -> f64 {
    let scrape = testkit::http::get(env.sluice.admin_addr, "/metrics", None);
    assert_eq!(scrape.status, 200);
    let series = format!("sluice_client_memory_bytes{{tenant=\"{tenant}\"}} ");
    scrape
        .body
        .lines()
        .find_map(|l| l.strip_prefix(&series))
        .map_or(0.0, |v| v.trim().parse().expect("a number"))
}

/// The first 850 kB of a Parse that declares 900,000 bytes: held whole by Sluice (it is
/// under the cap) and so charged, and never finished.
fn most_of_a_900_kb_parse() -> BytesMut {
    let mut head = BytesMut::new();
    head.put_u8(b'P');
    head.put_u32(900_000);
    head.put_slice(b"s\0select '");
    head.put_slice(&vec![b'q'; 850_000]);
    head
}

/// Partial messages held by many clients are charged to their tenant's share of the
/// memory budget: past it a client gets 53200 and only it goes; small messages are
/// never charged, and the other tenant's large messages still fit the process budget.
#[test]
fn the_memory_budget_has_a_share_per_tenant() {
    let env = start(&[
        "max_client_message_buffer = 1048576",
        "memory_budget = 8388608",
        "memory_budget_per_tenant = 2097152",
    ]);
    let rt = runtime();
    rt.block_on(async {
        // Each holds most of a 900 kB Parse: about 0.9 MB charged to acme.
        let mut holders = Vec::new();
        let mut refused = None;
        for _ in 0..4 {
            let mut c = RawClient::login(&env.target("acme"), Transport::Tls)
                .await
                .unwrap();
            let head = most_of_a_900_kb_parse();
            // Sluice may refuse at the header, while the client is still writing.
            let _ = c.send(&head).await;
            // Nothing comes back to a client within its share; the first past it gets
            // 53200.
            let answer = tokio::time::timeout(Duration::from_millis(500), c.next()).await;
            match answer {
                Ok(Ok(Some(frame))) if frame.tag == b'E' => {
                    refused = Some(error_fields(&frame));
                    break;
                }
                Ok(other) => panic!("unexpected answer: {:?}", other.map(|f| f.map(|f| f.tag))),
                Err(_) => holders.push(c),
            }
        }
        let refused = refused.expect("the third holder is past acme's 2 MiB share");
        // What the two holders hold is on /metrics.
        let held = memory_gauge(&env, "acme");
        assert!(
            (1_700_000.0..=2_097_152.0).contains(&held),
            "sluice_client_memory_bytes{{tenant=\"acme\"}} = {held}"
        );
        assert_eq!(holders.len(), 2, "two fit in 2 MiB");
        assert_eq!(refused.code, "53200", "{refused:?}");
        assert!(
            refused.message.contains("memory_budget_per_tenant"),
            "{refused:?}"
        );
        // Small messages of acme are not charged; globex has its own share.
        let small = pg_connect(&env.target("acme")).await.unwrap();
        assert_eq!(testkit::scalar::<i32>(&small, "select 1").await, 1);
        let g = pg_connect(&env.target("globex")).await.unwrap();
        let text = format!("select length('{}')", "g".repeat(900_000));
        let st = g.prepare(&text).await.unwrap();
        let n: i32 = g.query_one(&st, &[]).await.unwrap().get(0);
        assert_eq!(n, 900_000);
        // The holders that fit are still connected, and their charge goes with them.
        drop(holders);
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert_eq!(
            memory_gauge(&env, "acme"),
            0.0,
            "the holders' charge was given back"
        );
        let mut c = RawClient::login(&env.target("acme"), Transport::Tls)
            .await
            .unwrap();
        c.send(&most_of_a_900_kb_parse()).await.unwrap();
        assert!(
            tokio::time::timeout(Duration::from_millis(500), c.next())
                .await
                .is_err(),
            "the share was given back when its holders left"
        );
    });
}
