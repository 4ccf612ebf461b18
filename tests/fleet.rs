//! A fleet: three real Sluice processes on one control store (a real Postgres) behind
//! real HAProxy (round robin, PROXY v2), in front of a real tenant backend. Replicas
//! list each other, cancels find the replica that holds their session, a tenant's pool
//! size is a fleet total, and a replica killed under load costs the others nothing.

use std::time::{Duration, Instant};

use nix::sys::signal::Signal;
use serde_json::Value;
use testkit::fleet::Fleet;
use testkit::http::get;
use testkit::{pg_connect, SluiceProcess};

const BIN: &str = env!("CARGO_BIN_EXE_sluice");

fn replicas(sluice: &SluiceProcess) -> Vec<Value> {
    let answer = sluice.api("GET", "/v1/replicas", "", "");
    assert_eq!(answer.status, 200, "{}", answer.body);
    let body: Value = serde_json::from_str(&answer.body).unwrap();
    assert_eq!(body["fleet"], true, "{body}");
    body["replicas"].as_array().unwrap().clone()
}

fn ids(replicas: &[Value]) -> Vec<String> {
    let mut ids: Vec<String> = replicas
        .iter()
        .map(|r| r["id"].as_str().unwrap().to_owned())
        .collect();
    ids.sort();
    ids
}

/// Polls `check` every 50 ms until it holds or `timeout` passes (then panics with
/// `what` and the last value seen).
fn eventually<T: std::fmt::Debug>(
    what: &str,
    timeout: Duration,
    mut probe: impl FnMut() -> T,
    check: impl Fn(&T) -> bool,
) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        let value = probe();
        if check(&value) {
            return value;
        }
        assert!(Instant::now() < deadline, "{what}: still {value:?}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Waits until every running replica lists exactly `want` (by id), serving.
fn settled(fleet: &Fleet, want: &[&str]) {
    for replica in fleet.replicas.iter().flatten() {
        eventually(
            "the replicas listed",
            Duration::from_secs(10),
            || replicas(replica),
            |list| ids(list) == want && list.iter().all(|r| r["state"] == "serving"),
        );
    }
    // One more heartbeat for every replica to take its share from that list.
    std::thread::sleep(Duration::from_millis(500));
}

/// The sum over the replicas of `sluice_cancel_requests_total` with `outcome`.
fn cancels(fleet: &Fleet, outcome: &str) -> u64 {
    let needle = format!("outcome=\"{outcome}\"");
    fleet
        .replicas
        .iter()
        .flatten()
        .map(|r| {
            get(r.admin_addr, "/metrics", None)
                .body
                .lines()
                .filter(|l| l.starts_with("sluice_cancel_requests_total{") && l.contains(&needle))
                .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
                .sum::<f64>() as u64
        })
        .sum()
}

#[tokio::test(flavor = "multi_thread")]
async fn replicas_list_each_other_and_a_dead_one_expires() {
    let mut fleet = Fleet::start(BIN.as_ref(), 3, "roundrobin", |_| {}).expect("fleet");
    settled(&fleet, &["r0", "r1", "r2"]);
    let list = replicas(fleet.replica(1));
    let mut slots: Vec<u64> = list.iter().map(|r| r["slot"].as_u64().unwrap()).collect();
    slots.sort();
    slots.dedup();
    assert_eq!(slots.len(), 3, "slots are unique: {list:?}");
    for (i, port) in fleet.ports.iter().enumerate() {
        let row = list.iter().find(|r| r["id"] == format!("r{i}")).unwrap();
        assert_eq!(row["proxy_addrs"][0], format!("127.0.0.1:{port}"), "{row}");
        assert_eq!(row["admin_addr"], fleet.replica(i).admin_addr.to_string());
    }

    // The CLI prints the same list.
    let r0 = fleet.replica(0);
    let out = std::process::Command::new(BIN)
        .args(["replicas", "--api"])
        .arg(format!("http://{}", r0.admin_addr))
        .args(["--token", &r0.admin_key])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(text.lines().next().unwrap().starts_with("ID"), "{text}");
    for id in ["r0", "r1", "r2"] {
        assert!(text.contains(id), "{text}");
    }

    // A killed replica is dropped when its heartbeat is older than the expiry (3 s).
    let mut r2 = fleet.replicas[2].take().unwrap();
    r2.signal_and_wait(Signal::SIGKILL, Duration::from_secs(5))
        .expect("killed");
    let killed = Instant::now();
    eventually(
        "r2 expired",
        Duration::from_secs(10),
        || ids(&replicas(fleet.replica(0))),
        |ids| ids == &["r0", "r1"],
    );
    eprintln!(
        "a killed replica left the list after {:?}",
        killed.elapsed()
    );

    // A stopped one leaves at once (it deletes its row), after saying it drains.
    let mut r1 = fleet.replicas[1].take().unwrap();
    r1.signal_and_wait(Signal::SIGTERM, Duration::from_secs(15))
        .expect("stopped");
    assert_eq!(ids(&replicas(fleet.replica(0))), ["r0"]);
    assert!(
        r1.plain_log().contains("left the fleet"),
        "{}",
        r1.plain_log()
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn cancels_through_round_robin_find_the_replica_of_their_session() {
    let fleet = Fleet::start(BIN.as_ref(), 3, "roundrobin", |_| {}).expect("fleet");
    settled(&fleet, &["r0", "r1", "r2"]);
    let target = fleet.target();
    let mut slowest = Duration::ZERO;
    for i in 0..20 {
        let client = pg_connect(&target).await.expect("connect through haproxy");
        let token = client.cancel_token();
        let sleeping = tokio::spawn(async move {
            let result = client.simple_query("select pg_sleep(30)").await;
            drop(client);
            result
        });
        // Until the backend runs it, a cancel has nothing to cancel.
        tokio::time::sleep(Duration::from_millis(300)).await;
        let sent = Instant::now();
        token
            .cancel_query(testkit::clients::tls_connector(&fleet.pki.ca_cert))
            .await
            .unwrap_or_else(|e| panic!("cancel {i}: {e}"));
        let result = tokio::time::timeout(Duration::from_secs(10), sleeping)
            .await
            .unwrap_or_else(|_| panic!("cancel {i} did not end the query"))
            .unwrap();
        slowest = slowest.max(sent.elapsed());
        let err = result.expect_err("the query was cancelled");
        assert_eq!(
            err.code().map(|c| c.code()),
            Some("57014"),
            "cancel {i}: {err}"
        );
    }
    eprintln!("20 cancels through round-robin HAProxy, slowest {slowest:?}");
    // Round robin sends each cancel's connection to another replica than its session's.
    // The query's error may reach the client before the replica has counted the cancel
    // (the backend acts on it as it closes the cancel's connection).
    let forwarded = eventually(
        "every cancel counted as carried out",
        Duration::from_secs(10),
        || cancels(&fleet, "forwarded"),
        |n| *n >= 20,
    );
    assert_eq!(
        forwarded, 20,
        "cancels carried out by the session's replica"
    );
    let sent_on = cancels(&fleet, "to_replica");
    assert!(sent_on >= 10, "cancels sent between replicas: {sent_on}");
}

/// The same with protocol 3.2 keys: psycopg (libpq 18, `max_protocol_version=3.2`)
/// through round-robin HAProxy, 20 queries each cancelled with `cancel_safe()` (inside
/// TLS); the 32-byte keys name their replica and process, and every cancel lands.
#[test]
fn protocol_3_2_cancels_through_round_robin_find_their_replica() {
    let fleet = Fleet::start(BIN.as_ref(), 3, "roundrobin", |_| {}).expect("fleet");
    settled(&fleet, &["r0", "r1", "r2"]);
    let run = testkit::psycopg::cancel_rounds(&fleet.target(), "3.2", 20).expect("psycopg");
    assert_eq!(run.protocol, 30002, "protocol 3.2 agreed");
    for (i, round) in run.rounds.iter().enumerate() {
        assert_eq!(
            round.sqlstate.as_deref(),
            Some("57014"),
            "cancel {i}: {round:?}"
        );
        assert!(round.seconds < 10.0, "cancel {i}: {round:?}");
    }
    let slowest = run.rounds.iter().map(|r| r.seconds).fold(0.0, f64::max);
    let requests: u64 = run.rounds.iter().map(|r| r.cancels).sum();
    eprintln!(
        "20 protocol 3.2 cancels (psycopg, libpq {}) through round-robin HAProxy, slowest \
         {slowest:.3} s, {requests} cancel requests",
        run.libpq
    );
    let forwarded = eventually(
        "every cancel counted as carried out",
        Duration::from_secs(10),
        || cancels(&fleet, "forwarded"),
        |n| *n >= 20,
    );
    assert!(
        forwarded >= 20,
        "cancels carried out by the session's replica: {forwarded} of {requests} requests"
    );
    let sent_on = cancels(&fleet, "to_replica");
    assert!(sent_on >= 10, "cancels sent between replicas: {sent_on}");
}

/// Counts the tenant's server connections on its backend (`app` sessions but this one).
async fn server_connections(backend: &tokio_postgres::Client) -> i64 {
    backend
        .query_one(
            "select count(*) from pg_stat_activity where usename = 'app' and pid <> pg_backend_pid()",
            &[],
        )
        .await
        .unwrap()
        .get(0)
}

/// Runs pgbench with `clients` through HAProxy for `secs` while counting the backend's
/// server connections every 20 ms; the most seen, and the run's output.
async fn busiest(fleet: &Fleet, clients: usize, secs: u64) -> (i64, testkit::pgbench::Output) {
    let (backend, connection) =
        tokio_postgres::connect(&fleet.backend_conninfo(), tokio_postgres::NoTls)
            .await
            .unwrap();
    tokio::spawn(connection);
    let clients = clients.to_string();
    let secs = secs.to_string();
    let run = testkit::pgbench::Pgbench::start(
        &fleet.target(),
        &["-n", "-S", "-c", &clients, "-j", "2", "-T", &secs],
        fleet.dir.path(),
        &format!("pgbench-{clients}"),
    );
    let output = tokio::task::spawn_blocking(move || run.finish());
    let mut most = 0;
    while !output.is_finished() {
        most = most.max(server_connections(&backend).await);
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    (most, output.await.unwrap())
}

#[tokio::test(flavor = "multi_thread")]
async fn a_pool_of_six_is_six_connections_across_three_replicas() {
    let mut fleet = Fleet::start(BIN.as_ref(), 3, "roundrobin", |c| {
        c.tenants[0].pool = vec!["mode = \"transaction\"".into(), "size = 6".into()];
    })
    .expect("fleet");
    settled(&fleet, &["r0", "r1", "r2"]);
    let init = testkit::pgbench(&fleet.target(), &["-i", "-s", "1", "-q"]);
    assert!(init.success, "pgbench -i: {}", init.stderr);

    let (most, run) = busiest(&fleet, 60, 8).await;
    assert_eq!(run.errors(), 0, "{:?}\n{}", run.first_error(), run.stdout);
    assert!(run.processed() > 0, "{}", run.stdout);
    eprintln!(
        "pool size 6, 3 replicas, pgbench -c 60: at most {most} server connections, {:.0} tps",
        run.tps()
    );
    assert!(most <= 6, "{most} server connections for a pool of 6");
    assert!(most >= 3, "the run never loaded the pool ({most})");
    for i in 0..3 {
        let pools = fleet.replica(i).api("GET", "/v1/pools?tenant=acme", "", "");
        let pools: Value = serde_json::from_str(&pools.body).unwrap();
        assert_eq!(pools["pools"][0]["size"], 2, "replica {i}: {pools}");
    }

    // One replica gone: the two left take 3 each once its row expires.
    let mut r2 = fleet.replicas[2].take().unwrap();
    r2.signal_and_wait(Signal::SIGKILL, Duration::from_secs(5))
        .expect("killed");
    settled(&fleet, &["r0", "r1"]);
    let (most, run) = busiest(&fleet, 40, 5).await;
    assert_eq!(run.errors(), 0, "{:?}\n{}", run.first_error(), run.stdout);
    eprintln!("pool size 6, 2 replicas, pgbench -c 40: at most {most} server connections");
    assert!(most <= 6, "{most} server connections for a pool of 6");
    for i in 0..2 {
        let pools = fleet.replica(i).api("GET", "/v1/pools?tenant=acme", "", "");
        let pools: Value = serde_json::from_str(&pools.body).unwrap();
        assert_eq!(pools["pools"][0]["size"], 3, "replica {i}: {pools}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_killed_replica_costs_the_other_replicas_clients_nothing() {
    use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
    use std::sync::Arc;

    let mut fleet = Fleet::start(BIN.as_ref(), 3, "roundrobin", |_| {}).expect("fleet");
    settled(&fleet, &["r0", "r1", "r2"]);
    let target = fleet.target();
    let stop = Arc::new(AtomicBool::new(false));
    let killed = Arc::new(AtomicBool::new(false));
    let mut loops = Vec::new();
    for _ in 0..9 {
        let client = pg_connect(&target).await.expect("connect through haproxy");
        let (stop, killed) = (stop.clone(), killed.clone());
        let after_kill = Arc::new(AtomicU64::new(0));
        let counted = after_kill.clone();
        loops.push((
            after_kill,
            tokio::spawn(async move {
                while !stop.load(Ordering::Acquire) {
                    let was_killed = killed.load(Ordering::Acquire);
                    client.simple_query("select 1").await?;
                    if was_killed {
                        counted.fetch_add(1, Ordering::Relaxed);
                    }
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
                Ok::<_, tokio_postgres::Error>(())
            }),
        ));
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let r2_clients: u64 = {
        let pools = fleet.replica(2).api("GET", "/v1/pools", "", "");
        let pools: Value = serde_json::from_str(&pools.body).unwrap();
        pools["pools"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| {
                let clients = &p["clients"];
                ["active", "waiting", "idle"]
                    .iter()
                    .map(|k| clients[k].as_u64().unwrap())
                    .sum::<u64>()
            })
            .sum()
    };
    let mut r2 = fleet.replicas[2].take().unwrap();
    r2.signal_and_wait(Signal::SIGKILL, Duration::from_secs(5))
        .expect("killed");
    killed.store(true, Ordering::Release);
    let at = Instant::now();

    // New connections keep working: HAProxy sends them to the live replicas.
    let mut first = None;
    for i in 0..20 {
        let client = pg_connect(&target)
            .await
            .unwrap_or_else(|e| panic!("connection {i} after the kill: {e}"));
        let one: i32 = testkit::scalar(&client, "select 1").await;
        assert_eq!(one, 1);
        first.get_or_insert(at.elapsed());
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    stop.store(true, Ordering::Release);
    let mut broken = 0;
    for (after_kill, handle) in loops {
        match handle.await.unwrap() {
            Ok(()) => assert!(
                after_kill.load(Ordering::Relaxed) > 10,
                "a client of a live replica stalled"
            ),
            Err(_) => broken += 1,
        }
    }
    eprintln!(
        "replica killed under load: {broken} of 9 clients lost (it held {r2_clients}); \
         first new connection after {first:?}"
    );
    assert_eq!(
        broken, r2_clients,
        "only the killed replica's clients see an error"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn keys_and_suspensions_reach_every_replica_at_once() {
    let fleet = Fleet::start(BIN.as_ref(), 3, "roundrobin", |_| {}).expect("fleet");
    settled(&fleet, &["r0", "r1", "r2"]);
    let (r0, r2) = (fleet.replica(0), fleet.replica(2));

    // A key made through r0 works at r2 as soon as the store's notification arrives
    // (the periodic re-read is every 5 s).
    let made = r0.api("POST", "/v1/api-keys", r#"{"role": "viewer"}"#, "");
    assert_eq!(made.status, 201, "{}", made.body);
    let made: Value = serde_json::from_str(&made.body).unwrap();
    let key = made["key"].as_str().unwrap().to_owned();
    let at = Instant::now();
    eventually(
        "the new key works at r2",
        Duration::from_secs(10),
        || get(r2.admin_addr, "/v1/pools", Some(&key)).status,
        |status| *status == 200,
    );
    let took = at.elapsed();
    eprintln!("a key made at r0 worked at r2 after {took:?}");
    assert!(
        took < Duration::from_millis(4500),
        "not by notification: {took:?}"
    );
    let revoked = r0.api(
        "DELETE",
        &format!("/v1/api-keys/{}", made["id"].as_str().unwrap()),
        "",
        "",
    );
    assert_eq!(revoked.status, 200, "{}", revoked.body);
    let at = Instant::now();
    eventually(
        "the revoked key fails at r2",
        Duration::from_secs(10),
        || get(r2.admin_addr, "/v1/pools", Some(&key)).status,
        |status| *status == 401,
    );
    eprintln!("a key revoked at r0 failed at r2 after {:?}", at.elapsed());
    assert!(at.elapsed() < Duration::from_millis(4500));

    // A suspension with terminate through r0 ends the sessions on every replica.
    let target = fleet.target();
    let mut clients = Vec::new();
    for _ in 0..3 {
        let (client, ended) = testkit::pg_connect_from(&target, "127.0.0.1".parse().unwrap())
            .await
            .expect("connect through haproxy");
        let one: i32 = testkit::scalar(&client, "select 1").await;
        assert_eq!(one, 1);
        clients.push((client, ended));
    }
    let suspended = r0.api(
        "POST",
        "/v1/tenants/acme/suspend",
        r#"{"reason": "billing", "terminate": true}"#,
        "",
    );
    assert_eq!(suspended.status, 200, "{}", suspended.body);
    for (i, (client, ended)) in clients.into_iter().enumerate() {
        let end = tokio::time::timeout(Duration::from_secs(10), ended)
            .await
            .unwrap_or_else(|_| panic!("client {i}'s session was not ended"))
            .unwrap();
        let err = end.expect_err("the session ended with an error");
        let code = err.code().map(|c| c.code().to_owned());
        assert_eq!(code.as_deref(), Some("57P01"), "client {i}: {err}");
        assert!(client.is_closed());
    }
    let err = pg_connect(&target).await.expect_err("suspended");
    assert_eq!(err.code().map(|c| c.code()), Some("28000"), "{err}");
}

/// Waits for job `id` to finish (through `sluice`'s API) and returns it.
fn finished_job(sluice: &SluiceProcess, id: i64) -> Value {
    eventually(
        "the job finished",
        Duration::from_secs(120),
        || {
            let job = sluice.api("GET", &format!("/v1/jobs/{id}"), "", "");
            serde_json::from_str::<Value>(&job.body).unwrap()
        },
        |job| job["state"] == "succeeded" || job["state"] == "failed",
    )
}

#[tokio::test(flavor = "multi_thread")]
async fn a_local_tenant_is_made_and_destroyed_on_its_home_replica() {
    let fleet = Fleet::start(BIN.as_ref(), 3, "roundrobin", |_| {}).expect("fleet");
    settled(&fleet, &["r0", "r1", "r2"]);
    let backend = |i: usize| {
        let data = fleet.replica(i).config_path.with_file_name("data");
        data.join("backends").join("shop")
    };
    // Created through r1: its worker makes the backend in its own data_dir.
    let created = fleet
        .replica(1)
        .api("POST", "/v1/tenants", r#"{"id": "shop"}"#, "");
    assert_eq!(created.status, 202, "{}", created.body);
    let created: Value = serde_json::from_str(&created.body).unwrap();
    let job = finished_job(fleet.replica(1), created["job"]["id"].as_i64().unwrap());
    assert_eq!(job["state"], "succeeded", "{job}");
    assert!(backend(1).exists());
    assert!(!backend(0).exists() && !backend(2).exists());

    // Deleted through r0: only r1's worker may run the job (r0's is woken first).
    let deleted = fleet.replica(0).api("DELETE", "/v1/tenants/shop", "", "");
    assert_eq!(deleted.status, 202, "{}", deleted.body);
    let deleted: Value = serde_json::from_str(&deleted.body).unwrap();
    let job = finished_job(fleet.replica(0), deleted["job"]["id"].as_i64().unwrap());
    assert_eq!(job["state"], "succeeded", "{job}");
    assert!(!backend(1).exists(), "r1's backend of shop was destroyed");
}
