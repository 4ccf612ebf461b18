//! The load: the tokio-postgres and psql client loops and the operations they run
//! (killing some of their own clients on the way), and the restarter that stops and
//! starts the tenants' backends.

use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures_util::future::join_all;
use futures_util::{pin_mut, SinkExt, StreamExt};
use localpg::StopMode;
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::Rng;
use testkit::TestCluster;
use tokio::io::AsyncWriteExt;
use tokio::time::{sleep, timeout};
use tokio_postgres::types::ToSql;
use tokio_postgres::{Client, SimpleQueryMessage, Statement};

use crate::errors::{seen_pg, seen_psql, Seen};
use crate::run::{Shared, TenantCtx};
use crate::{MUST_NOT_COMMIT, OP_TIMEOUT, TENANTS};

/// A tokio-postgres connection through Sluice whose task the test owns, so that it can
/// kill it: aborting the task closes the socket with no Terminate (with a RST when the
/// socket has a zero linger).
pub(crate) struct Conn {
    pub(crate) client: Client,
    task: Option<tokio::task::JoinHandle<Result<(), tokio_postgres::Error>>>,
    since: Instant,
    /// The prepared statement this session reuses (in transaction mode, across
    /// server connections).
    stmt: Option<Statement>,
    /// When this session's last cancel operation ended.
    cancelled: Option<Instant>,
}

impl Conn {
    pub(crate) async fn open(t: &TenantCtx, reset: bool) -> Result<Conn, Seen> {
        let since = Instant::now();
        let tcp = t.tcp(reset).await?;
        let (client, connection) =
            match timeout(OP_TIMEOUT, t.config.connect_raw(tcp, t.tls())).await {
                Err(_) => return Err(Seen::Hang("login".into())),
                Ok(Err(e)) => return Err(seen_pg(&e, None).await),
                Ok(Ok(pair)) => pair,
            };
        Ok(Conn {
            client,
            task: Some(tokio::spawn(connection)),
            since,
            stmt: None,
            cancelled: None,
        })
    }

    /// How the connection task ended (waiting for it briefly).
    pub(crate) async fn end(&mut self) -> Option<Result<(), tokio_postgres::Error>> {
        timeout(Duration::from_secs(2), self.task.take()?)
            .await
            .ok()?
            .ok()
    }

    /// Ends the session politely (Terminate) and waits for the connection to close.
    pub(crate) async fn close(mut self) {
        let task = self.task.take();
        drop(self);
        if let Some(task) = task {
            let _ = timeout(Duration::from_secs(5), task).await;
        }
    }

    fn kill(&mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
        }
    }
}

/// What one operation of a session led to.
enum Step {
    Continue,
    /// Done, with an outcome worth counting on its own.
    Counted(&'static str),
    /// The test killed the connection.
    Killed,
}

/// Why an operation failed: an error of the driver (to be explained through its
/// connection) or something already judged.
enum Failed {
    Pg(tokio_postgres::Error),
    Seen(Seen),
}

impl From<tokio_postgres::Error> for Failed {
    fn from(e: tokio_postgres::Error) -> Self {
        Failed::Pg(e)
    }
}

fn wrong(what: String) -> Failed {
    Failed::Seen(Seen::Other(format!("wrong answer: {what}")))
}

const TOKIO_OPS: &[(&str, u32)] = &[
    ("simple query", 20),
    ("prepared statement", 20),
    ("transaction", 14),
    ("COPY FROM STDIN", 10),
    ("COPY TO STDOUT", 10),
    ("cancel", 8),
    ("kill mid-query", 5),
    ("kill mid-transaction", 5),
    ("kill mid-COPY FROM STDIN", 4),
    ("kill mid-COPY TO STDOUT", 4),
];

fn pick(rng: &mut StdRng, table: &[(&'static str, u32)]) -> &'static str {
    table.choose_weighted(rng, |e| e.1).expect("weights").0
}

/// `n` rows of COPY text for `soak_items (worker, payload)`.
fn rows(n: usize, worker: i32, payload: &str) -> bytes::Bytes {
    format!("{worker}\t{payload}\n").repeat(n).into()
}

async fn run_op(
    op: &'static str,
    conn: &mut Conn,
    t: &TenantCtx,
    worker: i32,
    rng: &mut StdRng,
) -> Result<Step, Failed> {
    let client = &mut conn.client;
    match op {
        "simple query" => {
            let sql = if rng.gen_bool(0.05) {
                // Keeps the table small over long runs.
                "select tenant from tenant_marker; \
                 delete from soak_items where id < (select max(id) - 20000 from soak_items)"
            } else {
                "select tenant from tenant_marker; select count(*) from soak_items"
            };
            let answer = client.simple_query(sql).await?;
            let tenant = answer.iter().find_map(|m| match m {
                SimpleQueryMessage::Row(r) => r.get(0).map(str::to_owned),
                _ => None,
            });
            if tenant.as_deref() != Some(t.id) {
                return Err(wrong(format!("tenant_marker says {tenant:?}")));
            }
        }
        "prepared statement" => {
            let stmt = match &conn.stmt {
                Some(s) => s.clone(),
                None => {
                    let sql = "select $1::int4 * 2, tenant from tenant_marker";
                    conn.stmt.insert(client.prepare(sql).await?).clone()
                }
            };
            // Several executions, pipelined half of the time (several Syncs in flight).
            let xs: Vec<i32> = (0..rng.gen_range(1..=5))
                .map(|_| rng.gen_range(-999..999))
                .collect();
            let params: Vec<[&(dyn ToSql + Sync); 1]> = xs.iter().map(|x| [x as _]).collect();
            let answers = if rng.gen_bool(0.5) {
                join_all(params.iter().map(|p| client.query_one(&stmt, p))).await
            } else {
                let mut answers = Vec::new();
                for p in &params {
                    answers.push(client.query_one(&stmt, p).await);
                }
                answers
            };
            for (x, row) in xs.iter().zip(answers) {
                let row = row?;
                let (double, tenant): (i32, String) = (row.get(0), row.get(1));
                if double != 2 * x || tenant != t.id {
                    return Err(wrong(format!("{x} * 2 = {double} on {tenant}")));
                }
            }
        }
        "transaction" => {
            let commit = rng.gen_bool(0.7);
            let tx = client.transaction().await?;
            for _ in 0..rng.gen_range(1..=5) {
                let sql = "insert into soak_items (worker, payload) values ($1, 'tx')";
                tx.execute(sql, &[&worker]).await?;
            }
            tx.query_one(
                "select count(*) from soak_items where worker = $1",
                &[&worker],
            )
            .await?;
            if commit {
                tx.commit().await?;
            } else {
                tx.rollback().await?;
            }
        }
        "COPY FROM STDIN" => {
            let n = rng.gen_range(1..=400);
            let sink = client
                .copy_in("copy soak_items (worker, payload) from stdin")
                .await?;
            pin_mut!(sink);
            for chunk in (0..n).step_by(50) {
                sink.send(rows((n - chunk).min(50), worker, "copy")).await?;
            }
            let got = sink.finish().await?;
            if got != n as u64 {
                return Err(wrong(format!("COPY of {n} rows reported {got}")));
            }
        }
        "COPY TO STDOUT" => {
            let n = rng.gen_range(1..=20_000);
            let sql =
                format!("copy (select g, md5(g::text) from generate_series(1, {n}) g) to stdout");
            let stream = client.copy_out(&sql).await?;
            pin_mut!(stream);
            let mut lines = 0;
            while let Some(chunk) = stream.next().await {
                lines += chunk?.iter().filter(|b| **b == b'\n').count();
            }
            if lines != n {
                return Err(wrong(format!("COPY TO of {n} rows gave {lines} lines")));
            }
        }
        "cancel" => return cancel(conn, t, rng).await,
        "kill mid-query" => {
            let delay = Duration::from_millis(rng.gen_range(10..600));
            tokio::select! {
                r = client.simple_query("select pg_sleep(2)") => { r?; }
                _ = sleep(delay) => {}
            }
            conn.kill();
            return Ok(Step::Killed);
        }
        "kill mid-transaction" => {
            let sql = format!(
                "begin; insert into soak_items (worker, payload) values ({worker}, '{MUST_NOT_COMMIT}')"
            );
            client.batch_execute(&sql).await?;
            sleep(Duration::from_millis(rng.gen_range(0..100))).await;
            conn.kill();
            return Ok(Step::Killed);
        }
        "kill mid-COPY FROM STDIN" => {
            let chunks = rng.gen_range(0..5);
            let sink = client
                .copy_in("copy soak_items (worker, payload) from stdin")
                .await?;
            pin_mut!(sink);
            for _ in 0..chunks {
                sink.send(rows(20, worker, MUST_NOT_COMMIT)).await?;
            }
            sleep(Duration::from_millis(rng.gen_range(0..100))).await;
            conn.kill();
            return Ok(Step::Killed);
        }
        "kill mid-COPY TO STDOUT" => {
            let chunks = rng.gen_range(0..30);
            let sql =
                "copy (select g, repeat('x', 200) from generate_series(1, 2000000) g) to stdout";
            let stream = client.copy_out(sql).await?;
            pin_mut!(stream);
            for _ in 0..chunks {
                match stream.next().await {
                    Some(chunk) => drop(chunk?),
                    None => break,
                }
            }
            conn.kill();
            return Ok(Step::Killed);
        }
        other => unreachable!("{other}"),
    }
    Ok(Step::Continue)
}

/// Runs `pg_sleep` and cancels it with the session's CancelToken, sent through Sluice
/// over a new TLS connection with the tenant's SNI.
async fn cancel(conn: &mut Conn, t: &TenantCtx, rng: &mut StdRng) -> Result<Step, Failed> {
    let token = conn.client.cancel_token();
    let delay = Duration::from_millis(rng.gen_range(50..800));
    let canceller = async {
        sleep(delay).await;
        let tcp = t.tcp(false).await.map_err(Failed::Seen)?;
        token
            .cancel_query_raw(tcp, t.tls())
            .await
            .map_err(Failed::Pg)
    };
    let (slept, sent) = tokio::join!(conn.client.simple_query("select pg_sleep(2)"), canceller);
    conn.cancelled = Some(Instant::now());
    sent?;
    // Cancelling is racy: the CancelRequest may arrive before the query runs (in
    // transaction mode, while the client waits for a server connection, it is ignored).
    match slept {
        Ok(_) if t.mode == "session" => Ok(Step::Counted("cancel missed (session mode)")),
        Ok(_) => Ok(Step::Counted("cancel missed (transaction mode)")),
        Err(e) => Err(Failed::Pg(e)),
    }
}

/// A login the test gives up on after a few milliseconds: the socket closes somewhere
/// in the TLS handshake, SCRAM or the server checkout, or right after the login.
async fn killed_login(t: &TenantCtx, rng: &mut StdRng) -> Result<(), Seen> {
    let delay = Duration::from_millis(rng.gen_range(0..40));
    let tcp = t.tcp(rng.gen_bool(0.5)).await?;
    tokio::select! {
        r = t.config.connect_raw(tcp, t.tls()) => match r {
            Ok(_) => Ok(()),
            Err(e) => Err(seen_pg(&e, None).await),
        },
        _ = sleep(delay) => Ok(()),
    }
}

/// One tokio-postgres client: sessions of a few operations each until the load ends.
pub(crate) async fn tokio_worker(shared: Arc<Shared>, tenant: usize, worker: i32, mut rng: StdRng) {
    let t = &shared.tenants[tenant];
    while Instant::now() < shared.load_end {
        let since = Instant::now();
        if rng.gen_bool(0.1) {
            shared.count("kill during login");
            if let Err(seen) = killed_login(t, &mut rng).await {
                shared.error(tenant, "kill during login", since, seen);
            }
            continue;
        }
        shared.count("connect");
        let mut conn = match Conn::open(t, rng.gen_bool(0.3)).await {
            Ok(c) => c,
            Err(seen) => {
                shared.error(tenant, "connect", since, seen);
                sleep(Duration::from_millis(200)).await;
                continue;
            }
        };
        for _ in 0..rng.gen_range(1..=8) {
            if Instant::now() >= shared.load_end {
                break;
            }
            let op = pick(&mut rng, TOKIO_OPS);
            shared.count(op);
            let result = timeout(OP_TIMEOUT, run_op(op, &mut conn, t, worker, &mut rng))
                .await
                .unwrap_or_else(|_| Err(Failed::Seen(Seen::Hang(op.into()))));
            match result {
                Ok(Step::Continue) => {}
                Ok(Step::Counted(outcome)) => shared.count(outcome),
                Ok(Step::Killed) => break,
                Err(failed) => {
                    let seen = match failed {
                        Failed::Pg(e) => seen_pg(&e, Some(&mut conn)).await,
                        Failed::Seen(seen) => seen,
                    };
                    let goes_on = matches!(&seen, Seen::Code { code, .. } if code == "57014");
                    shared.error_after(tenant, op, conn.since, conn.cancelled, seen);
                    if !goes_on || conn.client.is_closed() {
                        break;
                    }
                }
            }
            sleep(Duration::from_millis(rng.gen_range(0..30))).await;
        }
        // A session that was not killed ends politely (Terminate).
        conn.close().await;
    }
}

const PSQL_OPS: &[(&str, u32)] = &[
    ("psql query", 40),
    ("psql COPY FROM STDIN", 20),
    ("psql COPY TO STDOUT", 20),
    ("psql SIGKILL", 20),
];

fn psql(t: &TenantCtx, command: &str) -> Result<tokio::process::Child, Seen> {
    tokio::process::Command::new("psql")
        .arg(t.target.conninfo())
        .args([
            "-XAtq",
            "-v",
            "ON_ERROR_STOP=1",
            "-v",
            "VERBOSITY=verbose",
            "-c",
            command,
        ])
        .env("PGPASSWORD", &t.target.password)
        .env("PGCONNECT_TIMEOUT", "20")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| Seen::Other(format!("spawning psql: {e}")))
}

/// One psql run; `Ok` when it did what was asked (or was killed as planned).
async fn psql_op(op: &'static str, t: &TenantCtx, rng: &mut StdRng) -> Result<(), Seen> {
    let kill = op == "psql SIGKILL";
    let (command, input, expect) = match op {
        "psql query" => (
            "select tenant from tenant_marker; \
             insert into soak_items (worker, payload) values (-1, 'psql')"
                .to_owned(),
            None,
            Some(t.id.to_owned()),
        ),
        "psql COPY FROM STDIN" => (
            "\\copy soak_items (worker, payload) from pstdin".into(),
            Some(rows(rng.gen_range(1..=300), -1, "psql-copy")),
            None,
        ),
        "psql COPY TO STDOUT" => {
            let n: usize = rng.gen_range(1..=5000);
            let expect = (1..=n)
                .map(|i| i.to_string())
                .collect::<Vec<_>>()
                .join("\n");
            let sql = format!("copy (select g from generate_series(1, {n}) g) to stdout");
            (sql, None, Some(expect))
        }
        // Killed in the middle of a query, or of a COPY whose input never ends.
        _ if rng.gen_bool(0.5) => (
            "\\copy soak_items (worker, payload) from pstdin".into(),
            Some(rows(50, -1, MUST_NOT_COMMIT)),
            None,
        ),
        _ => ("select pg_sleep(3)".into(), None, None),
    };
    let mut child = psql(t, &command)?;
    let mut stdin = child.stdin.take().expect("piped stdin");
    if let Some(data) = input {
        // A failed login closes the pipe early; psql's exit status tells.
        let _ = stdin.write_all(&data).await;
    }
    if kill {
        sleep(Duration::from_millis(rng.gen_range(50..1500))).await;
        // SIGKILL to this child's pid (unless it has exited already).
        let _ = child.start_kill();
    } else {
        drop(stdin);
    }
    let out = match timeout(OP_TIMEOUT, child.wait_with_output()).await {
        Ok(Ok(out)) => out,
        Ok(Err(e)) => return Err(Seen::Other(format!("waiting for psql: {e}"))),
        Err(_) => return Err(Seen::Hang(op.into())),
    };
    // Killed (no exit code), or exited with 0 before the kill.
    if kill && out.status.code().is_none_or(|c| c == 0) {
        return Ok(());
    }
    if !out.status.success() {
        return Err(seen_psql(&String::from_utf8_lossy(&out.stderr)));
    }
    let stdout = String::from_utf8_lossy(&out.stdout);
    match expect {
        Some(e) if stdout.trim() != e => Err(Seen::Other(format!(
            "wrong answer from psql: {:.200}",
            stdout.trim()
        ))),
        _ => Ok(()),
    }
}

pub(crate) async fn psql_worker(shared: Arc<Shared>, tenant: usize, mut rng: StdRng) {
    let t = &shared.tenants[tenant];
    while Instant::now() < shared.load_end {
        let op = pick(&mut rng, PSQL_OPS);
        let since = Instant::now();
        shared.count(op);
        if let Err(seen) = psql_op(op, t, &mut rng).await {
            shared.error(tenant, op, since, seen);
        }
        sleep(Duration::from_millis(rng.gen_range(0..50))).await;
    }
}

/// Stops a random tenant's backend (fast or immediate) at random moments and starts it
/// again, until shortly before the load ends. Returns what went wrong.
pub(crate) fn restarter(
    clusters: Arc<Vec<Mutex<TestCluster>>>,
    shared: Arc<Shared>,
    mut rng: StdRng,
) -> Vec<String> {
    let mut problems = Vec::new();
    loop {
        let gap = Duration::from_millis(rng.gen_range(2_000..8_000));
        if Instant::now() + gap + Duration::from_secs(5) >= shared.load_end {
            return problems;
        }
        std::thread::sleep(gap);
        let tenant = rng.gen_range(0..clusters.len());
        let (mode, name) = match rng.gen_bool(0.5) {
            true => (StopMode::Fast, "fast"),
            false => (StopMode::Immediate, "immediate"),
        };
        let downtime = Duration::from_millis(rng.gen_range(0..2_500));
        let id = TENANTS[tenant].id;
        let mut cluster = clusters[tenant].lock().unwrap();
        shared.restarts.down(tenant, name);
        if let Err(e) = cluster.stop(mode) {
            problems.push(format!("stopping {id} ({name}): {e}"));
        }
        std::thread::sleep(downtime);
        let mut started = cluster.restart();
        for _ in 0..3 {
            if started.is_ok() {
                break;
            }
            std::thread::sleep(Duration::from_secs(1));
            started = cluster.restart();
        }
        if let Err(e) = started {
            problems.push(format!("starting {id} again: {e}"));
            return problems;
        }
        shared.restarts.up(tenant);
    }
}
