//! Zero-downtime restart: every replica of a fleet (three real Sluice processes behind
//! real HAProxy, round robin, PROXY v2) replaced by a new process on the same port while
//! pgbench runs through HAProxy; the new process takes over the old one's listening
//! sockets (src/handover.rs), the old one is sent SIGTERM and drains.

use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use testkit::fleet::Fleet;
use testkit::pgbench::{Output, Pgbench};
use testkit::raw::{RawClient, Transport};
use testkit::SluiceProcess;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const BIN: &str = env!("CARGO_BIN_EXE_sluice");

/// Starts a new process for replica `i` beside the running one, then sends the old one
/// SIGTERM; returns the old one.
fn swap(fleet: &mut Fleet, i: usize) -> SluiceProcess {
    let new = fleet.launch(i).expect("a new process beside the old one");
    assert!(
        new.log().contains("took over the listening sockets"),
        "replica {i}'s new process did not take over the listeners:\n{}",
        new.log()
    );
    let old = fleet.replicas[i].replace(new).expect("replica running");
    kill(Pid::from_raw(old.pid() as i32), Signal::SIGTERM).expect("SIGTERM");
    old
}

fn assert_clean(run: &Output, what: &str) {
    assert!(
        run.success && run.errors() == 0 && run.processed() > 0,
        "{what}: {} failed transactions, {} aborted clients, processed {}; first error: {:?}\n{}\n{}",
        run.failed().unwrap_or(0),
        run.aborted(),
        run.processed(),
        run.first_error(),
        run.stdout,
        run.stderr
    );
}

/// Waits up to `timeout` for `process` to exit.
fn exits_within(process: &mut SluiceProcess, timeout: Duration) -> bool {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if !process.is_running() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    false
}

/// Session mode, grace longer than the run: the steady clients (`pgbench -c 16 -T 30`)
/// finish on the old processes, which exit once they left; new connections (`pgbench
/// -C`, a connection per transaction, throughout) reach the new processes without one
/// failing, including those queued in a listener when its old process stopped.
#[test]
fn rolling_restart_under_pgbench_drops_nobody() {
    let mut fleet = Fleet::start(BIN.as_ref(), 3, "roundrobin", |config| {
        config.shutdown_grace_s = 120;
        config.log = "info".into();
        // A start on a loaded machine (a storm beside it) can take longer than 30 s.
        config.start_timeout = Duration::from_secs(120);
        // About restarts, not the tenant's budgets (fleet totals): a connect rate the
        // storm stays under, and a server connection for every session-mode client.
        config.default_limits = vec!["connect_rate = 100000".into()];
        config.default_pool = vec!["size = 90".into()];
    })
    .expect("fleet");
    let target = fleet.target();
    let init = testkit::pgbench(&target, &["-i", "-s", "1", "-q"]);
    assert!(init.success, "pgbench -i: {}", init.stderr);
    let dir = fleet.dir.path().to_owned();
    let steady = Pgbench::start(
        &target,
        &["-c", "16", "-j", "2", "-T", "30"],
        &dir,
        "steady",
    );
    let storm = Pgbench::start(
        &target,
        &["-C", "-S", "-n", "-c", "4", "-j", "2", "-T", "30"],
        &dir,
        "storm",
    );
    let mut old = Vec::new();
    for i in 0..3 {
        std::thread::sleep(Duration::from_secs(4));
        old.push(swap(&mut fleet, i));
    }
    // Until the run ends, each old process still has its steady clients.
    std::thread::sleep(Duration::from_secs(2));
    for (i, process) in old.iter_mut().enumerate() {
        assert!(process.is_running(), "old replica {i} left its clients");
    }
    let steady = steady.finish();
    let storm = storm.finish();
    assert_clean(&steady, "pgbench -c 16 -T 30");
    assert_clean(&storm, "pgbench -C");
    for (i, process) in old.iter_mut().enumerate() {
        assert!(
            exits_within(process, Duration::from_secs(20)),
            "old replica {i} did not exit after its clients left:\n{}",
            process.log()
        );
    }
    eprintln!(
        "steady: {} transactions, {:.0} tps; storm: {} connections, {:.0} tps",
        steady.processed(),
        steady.tps(),
        storm.processed(),
        storm.tps()
    );
    // The new processes serve.
    let after = testkit::pgbench(&target, &["-S", "-n", "-c", "3", "-t", "20"]);
    assert!(after.success, "after the restart: {}", after.stderr);
}

/// Connection attempts straight at a replica's port, as fast as `threads` threads can
/// make them, until `stop`: each is refused at accept with a FATAL 28000 (not from the
/// balancer), which costs the process almost nothing, so thousands a second queue in
/// the listener. Counts the attempts answered (the FATAL arrived) and those lost
/// (refused, reset, or closed without a word).
struct Storm {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    threads: Vec<std::thread::JoinHandle<(u64, u64)>>,
}

impl Storm {
    fn start(addr: std::net::SocketAddr, threads: usize) -> Storm {
        use std::io::Read;
        use std::sync::atomic::Ordering;
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let threads = (0..threads)
            .map(|_| {
                let stop = stop.clone();
                std::thread::spawn(move || {
                    let (mut answered, mut lost) = (0u64, 0u64);
                    while !stop.load(Ordering::Relaxed) {
                        let answer = std::net::TcpStream::connect(addr).and_then(|mut tcp| {
                            tcp.set_read_timeout(Some(Duration::from_secs(10)))?;
                            let mut first = [0u8; 1];
                            tcp.read_exact(&mut first)?;
                            Ok(first[0])
                        });
                        match answer {
                            Ok(b'E') => answered += 1,
                            _ => lost += 1,
                        }
                    }
                    (answered, lost)
                })
            })
            .collect();
        Storm { stop, threads }
    }

    fn finish(self) -> (u64, u64) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        self.threads
            .into_iter()
            .map(|t| t.join().expect("storm thread"))
            .fold((0, 0), |(a, l), (ta, tl)| (a + ta, l + tl))
    }
}

/// A replica replaced three times while connection attempts hammer its port: none is
/// lost, including those waiting in the listen queue when an old process stopped (the
/// queue is the new process's too).
#[test]
fn no_connection_attempt_is_lost_in_a_swap() {
    let mut fleet = Fleet::start(BIN.as_ref(), 1, "roundrobin", |config| {
        config.log = "info".into();
        // A start on a loaded machine (a storm beside it) can take longer than 30 s.
        config.start_timeout = Duration::from_secs(120);
    })
    .expect("fleet");
    let port = fleet.ports[0];
    let storm = Storm::start(std::net::SocketAddr::from(([127, 0, 0, 1], port)), 32);
    for _ in 0..3 {
        std::thread::sleep(Duration::from_secs(2));
        let mut old = swap(&mut fleet, 0);
        assert!(
            exits_within(&mut old, Duration::from_secs(20)),
            "the old process did not exit:\n{}",
            old.log()
        );
    }
    std::thread::sleep(Duration::from_secs(1));
    let (answered, lost) = storm.finish();
    eprintln!("storm through three swaps: {answered} answered, {lost} lost");
    assert!(answered > 100, "the storm hardly ran: {answered} answered");
    assert_eq!(lost, 0, "{lost} of {} attempts lost", answered + lost);
}

/// With a fixed admin port, the admin listener is taken over too: once the old process
/// drains (a client still holds it), the port answers for the new one (`/readyz` 200),
/// not the draining one (503).
#[test]
fn the_admin_port_answers_for_the_new_process() {
    let admin_port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port();
    let mut fleet = Fleet::start(BIN.as_ref(), 1, "roundrobin", |config| {
        config.admin_listen = format!("127.0.0.1:{admin_port}");
        config.shutdown_grace_s = 60;
        config.log = "info".into();
        // A start on a loaded machine (a storm beside it) can take longer than 30 s.
        config.start_timeout = Duration::from_secs(120);
    })
    .expect("fleet");
    let admin = std::net::SocketAddr::from(([127, 0, 0, 1], admin_port));
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let target = fleet.target();
    // A session-mode client keeps the old process draining.
    let client = rt
        .block_on(testkit::pg_connect(&target))
        .expect("a client on the old process");
    let mut old = swap(&mut fleet, 0);
    let new_log = fleet.replica(0).log();
    assert!(
        new_log.lines().any(|l| {
            l.contains("took over the listening sockets") && l.contains(&admin.to_string())
        }),
        "the new process did not take the admin listener over:\n{new_log}"
    );
    let deadline = Instant::now() + Duration::from_secs(10);
    while !old.log().contains("admin listener: stopped accepting") {
        assert!(
            Instant::now() < deadline,
            "the old process kept accepting on the admin port:\n{}",
            old.log()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    for _ in 0..20 {
        let ready =
            testkit::http::request(admin, "GET", "/readyz", None, "", b"").expect("/readyz");
        assert_eq!(ready.status, 200, "{}", ready.body);
    }
    assert!(old.is_running(), "the old process left its client");
    let one: i32 = rt
        .block_on(client.query_one("select 1", &[]))
        .expect("the client is still served by the old process")
        .get(0);
    assert_eq!(one, 1);
    drop(client);
    assert!(
        exits_within(&mut old, Duration::from_secs(20)),
        "{}",
        old.log()
    );
}

/// Transaction mode, persistent plaintext clients (`pgbench -c 16 -T 30`, one
/// connection each for the whole run, plus clients with prepared statements: `-M
/// prepared` and `-M extended`): each replica in turn replaced; the old process's
/// clients move to the new one between transactions, statements and all, so the old
/// process is gone within 15 s of its SIGTERM although the grace is longer than the
/// run, and no client notices.
#[test]
fn persistent_transaction_mode_clients_move_to_the_new_process() {
    let mut fleet = Fleet::start(BIN.as_ref(), 3, "roundrobin", |config| {
        config.shutdown_grace_s = 120;
        config.require_tls = false;
        config.default_pool = vec!["mode = \"transaction\"".into()];
        config.log = "info".into();
        // A start on a loaded machine (a storm beside it) can take longer than 30 s.
        config.start_timeout = Duration::from_secs(120);
    })
    .expect("fleet");
    let mut target = fleet.target();
    target.sni_host = None;
    target.sslmode = "disable";
    target.options = Some("tenant=acme".into());
    let init = testkit::pgbench(&target, &["-i", "-s", "1", "-q"]);
    assert!(init.success, "pgbench -i: {}", init.stderr);
    let dir = fleet.dir.path().to_owned();
    let steady = Pgbench::start(
        &target,
        &["-c", "16", "-j", "2", "-T", "30"],
        &dir,
        "steady",
    );
    let prepared = Pgbench::start(
        &target,
        &["-S", "-n", "-M", "prepared", "-c", "3", "-T", "30"],
        &dir,
        "prepared",
    );
    let extended = Pgbench::start(
        &target,
        &["-S", "-n", "-M", "extended", "-c", "3", "-T", "30"],
        &dir,
        "extended",
    );
    let mut gone_after = Vec::new();
    for i in 0..3 {
        std::thread::sleep(Duration::from_secs(4));
        let mut old = swap(&mut fleet, i);
        let sigterm = Instant::now();
        assert!(
            exits_within(&mut old, Duration::from_secs(15)),
            "old replica {i} still runs 15 s after its SIGTERM:\n{}",
            old.log()
        );
        gone_after.push(sigterm.elapsed());
        assert!(
            old.log().contains("moved to the new process"),
            "no client of old replica {i} moved:\n{}",
            old.log()
        );
    }
    let steady = steady.finish();
    assert_clean(&steady, "pgbench -c 16 -T 30, transaction mode");
    assert_clean(&prepared.finish(), "pgbench -M prepared, transaction mode");
    assert_clean(&extended.finish(), "pgbench -M extended, transaction mode");
    let moved: usize = fleet
        .replicas
        .iter()
        .flatten()
        .map(|p| p.log().matches("client moved here").count())
        .sum();
    eprintln!(
        "transaction mode: {} transactions, {:.0} tps; old processes gone {:?} after SIGTERM; \
         {moved} client moves into the last processes",
        steady.processed(),
        steady.tps(),
        gone_after
    );
}

/// Sends a CancelRequest with `pid` and `secret` to `addr` and waits until Sluice
/// closes the connection (it has then dealt with the cancel).
async fn cancel_at(addr: std::net::SocketAddr, pid: i32, secret: &[u8]) {
    let mut packet = bytes::BytesMut::new();
    wire::startup::encode_cancel_secret(pid, secret, &mut packet);
    let mut tcp = tokio::net::TcpStream::connect(addr).await.expect("connect");
    tcp.write_all(&packet).await.expect("send the cancel");
    let mut rest = Vec::new();
    tokio::time::timeout(Duration::from_secs(15), tcp.read_to_end(&mut rest))
        .await
        .expect("the cancel connection closed")
        .expect("read");
}

/// Runs `select pg_sleep(30)` on `client`, waits until the backend runs it, cancels it
/// at `addr`, and returns how long the 57014 took from the cancel.
async fn cancelled_at(
    client: &mut RawClient,
    backend: &str,
    addr: std::net::SocketAddr,
    what: &str,
) -> Duration {
    const SLEEP: &str = "select pg_sleep(30)";
    client.query(SLEEP).await.expect("sending the query");
    let check = format!(
        "SELECT count(*) FROM pg_stat_activity WHERE state = 'active' AND query = '{SLEEP}'"
    );
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let out = std::process::Command::new("psql")
            .arg(backend)
            .args(["-XAtq", "-c", &check])
            .output()
            .expect("psql");
        if String::from_utf8_lossy(&out.stdout).trim() == "1" {
            break;
        }
        assert!(Instant::now() < deadline, "{what}: the query never ran");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let sent = Instant::now();
    cancel_at(addr, client.key.pid, &client.secret).await;
    let result = tokio::time::timeout(Duration::from_secs(15), client.result())
        .await
        .unwrap_or_else(|_| panic!("{what}: the cancel did not end the query"))
        .expect("the query's result");
    let err = result.expect_err("the query was cancelled");
    assert_eq!(err.code, "57014", "{what}: {err:?}");
    sent.elapsed()
}

/// Cancels find their client across a restart of its replica: clients that moved to the
/// new process (plaintext, transaction mode) keep the keys the old process gave them
/// (protocol 3.0 and 3.2), and those keys still name their replica's slot, which the
/// new process took over; clients that stay on the old process while it drains (TLS)
/// are found there. Each is cancelled at its own replica's port (the old or the new
/// process, whichever accepts) and at another replica's, while the old process drains
/// and, for the moved ones, after it exited.
#[test]
fn cancels_reach_clients_moved_in_a_restart_and_those_left_behind() {
    let mut fleet = Fleet::start(BIN.as_ref(), 2, "roundrobin", |config| {
        config.shutdown_grace_s = 120;
        config.require_tls = false;
        config.default_pool = vec!["mode = \"transaction\"".into()];
        config.log = "info".into();
        // Straight to each replica's port as well as through HAProxy.
        config.proxy_extra = vec![
            "proxy_protocol = \"optional\"".into(),
            format!(
                "proxy_protocol_from = [\"{}/32\"]",
                testkit::haproxy::BALANCER
            ),
        ];
        config.start_timeout = Duration::from_secs(120);
    })
    .expect("fleet");
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let port = |i: usize| std::net::SocketAddr::from(([127, 0, 0, 1], fleet.ports[i]));
    let (r0, r1) = (port(0), port(1));
    let mut plain = fleet.target();
    plain.addr = r0;
    plain.sni_host = None;
    plain.options = Some("tenant=acme".into());
    let mut tls = fleet.target();
    tls.addr = r0;
    let backend = fleet.backend_conninfo();
    use wire::startup::{PROTOCOL_3_0, PROTOCOL_3_2};
    let login = |target, transport, version| {
        rt.block_on(RawClient::login_with(target, transport, version))
            .expect("logging in at replica 0")
    };
    let mut moving = [
        ("moved, 3.0", login(&plain, Transport::Plain, PROTOCOL_3_0)),
        ("moved, 3.2", login(&plain, Transport::Plain, PROTOCOL_3_2)),
    ];
    let mut staying = [
        ("stays, 3.0", login(&tls, Transport::Tls, PROTOCOL_3_0)),
        ("stays, 3.2", login(&tls, Transport::Tls, PROTOCOL_3_2)),
    ];
    assert_eq!(moving[1].1.secret.len(), 32);

    let mut old = swap(&mut fleet, 0);
    let deadline = Instant::now() + Duration::from_secs(30);
    while old.log().matches("moved to the new process").count() < 2 {
        assert!(
            Instant::now() < deadline,
            "the plaintext clients did not move:\n{}",
            old.log()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let mut slowest = Duration::ZERO;
    // The old process drains, holding the TLS clients: every client is found, whichever
    // process takes the cancel.
    for (what, client) in moving.iter_mut().chain(staying.iter_mut()) {
        for (at, addr) in [("its replica", r0), ("another replica", r1)] {
            let what = format!("{what}, cancelled at {at}, old process draining");
            let took = rt.block_on(cancelled_at(client, &backend, addr, &what));
            slowest = slowest.max(took);
        }
    }
    // A 3.0 key of a client left on the old process, cancelled at replica 1, went to the
    // serving process of its slot (the new one), which handed it to the old one.
    let metrics = testkit::http::get(fleet.replica(0).admin_addr, "/metrics", None).body;
    let handed_on: f64 = metrics
        .lines()
        .filter(|l| l.starts_with("sluice_cancel_requests_total{") && l.contains("to_replica"))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum();
    assert!(
        handed_on >= 1.0,
        "the new process handed no cancel on:\n{metrics}"
    );
    // The old process exits once its clients left; the moved clients' keys still work.
    drop(staying);
    assert!(
        exits_within(&mut old, Duration::from_secs(30)),
        "{}",
        old.log()
    );
    for (what, client) in moving.iter_mut() {
        for (at, addr) in [("its replica", r0), ("another replica", r1)] {
            let what = format!("{what}, cancelled at {at}, old process gone");
            let took = rt.block_on(cancelled_at(client, &backend, addr, &what));
            slowest = slowest.max(took);
        }
    }
    eprintln!("12 cancels across a restart, slowest {slowest:?}");
}
