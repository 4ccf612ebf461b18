//! Signals on a real `sluice serve`, as an operator sends them: SIGHUP reloads the
//! config file (live changes of the defaults and of a config tenant applied and seen by
//! clients and the API, a key that needs a restart named, a broken file
//! refused with every problem logged while the old config stays in force), and a
//! second SIGTERM ends a shutdown that waits for a connected client.

use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use testkit::{pg_connect, scalar, SluiceProcess, TwoTenants};

const BIN: &str = env!("CARGO_BIN_EXE_sluice");

fn signal(sluice: &SluiceProcess, signal: Signal) {
    kill(Pid::from_raw(sluice.pid() as i32), signal).expect("sending a signal to sluice");
}

/// Waits up to 20 s for a log line containing `needle`, after `skip` bytes of the log.
fn wait_for_log(sluice: &SluiceProcess, skip: usize, needle: &str) -> String {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let log = sluice.log();
        let fresh = log.get(skip..).unwrap_or_default();
        if fresh.contains(needle) {
            return fresh.to_owned();
        }
        assert!(
            Instant::now() < deadline,
            "no log line with {needle:?} within 20 s; log since the signal:\n{fresh}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn tenant(sluice: &SluiceProcess, id: &str) -> serde_json::Value {
    let answer = sluice.api("GET", &format!("/v1/tenants/{id}"), "", "");
    assert_eq!(answer.status, 200, "{}", answer.body);
    answer.json()
}

/// The SQLSTATE of a failed connection attempt.
fn sqlstate(e: &tokio_postgres::Error) -> String {
    e.as_db_error()
        .map(|db| db.code().code().to_owned())
        .unwrap_or_else(|| format!("no server error: {e}"))
}

#[tokio::test(flavor = "multi_thread")]
async fn sighup_applies_a_changed_file_live_and_keeps_the_old_one_when_broken() {
    let mut env = TwoTenants::start(BIN.as_ref(), |config| {
        config.default_pool = vec!["size = 5".into()];
        config.default_limits = vec!["max_client_connections = 200".into()];
        config.tenants[1].limits = vec!["query_rate = 0".into()];
    })
    .expect("starting sluice and two tenants");
    let original = std::fs::read_to_string(&env.sluice.config_path).unwrap();
    assert_eq!(tenant(&env.sluice, "acme")["pool"]["size"], 5);

    // A valid change: three live keys (one a config tenant's) and one that needs a
    // restart.
    let changed = original
        .replace("size = 5", "size = 7")
        .replace("query_rate = 0", "query_rate = 50")
        .replace("max_client_connections = 200", "max_client_connections = 1")
        .replace("login_timeout_ms = 15000", "login_timeout_ms = 9000");
    assert_ne!(changed, original);
    std::fs::write(&env.sluice.config_path, &changed).unwrap();
    let mark = env.sluice.log().len();
    signal(&env.sluice, Signal::SIGHUP);
    let log = wait_for_log(&env.sluice, mark, "config reloaded");
    assert!(
        log.contains("needs a restart: proxy.login_timeout_ms"),
        "the key that needs a restart is named:\n{log}"
    );
    assert!(
        log.contains("defaults.pool.size")
            && log.contains("defaults.limits.max_client_connections")
            && log.contains("tenants[1].limits.query_rate"),
        "the live changes are named:\n{log}"
    );
    let globex = tenant(&env.sluice, "globex");
    assert_eq!(globex["limits"]["query_rate"], 50, "{globex}");
    let acme = tenant(&env.sluice, "acme");
    assert_eq!(acme["pool"]["size"], 7, "{acme}");
    assert_eq!(acme["limits"]["max_client_connections"], 1, "{acme}");
    // Clients see the new limit: one acme client at a time.
    let target = env.target("acme");
    let first = pg_connect(&target).await.expect("first acme client");
    assert_eq!(scalar::<i32>(&first, "select 1").await, 1);
    let refused = pg_connect(&target)
        .await
        .expect_err("a second acme client is over the reloaded limit");
    assert_eq!(sqlstate(&refused), "53300", "{refused}");
    drop(first);

    // A broken file: a type error, an unknown key and a password file that cannot be
    // read, each named with its key and line.
    let password_file = env.acme.auth_password_file.display().to_string();
    let broken = changed
        .replace("size = 7", "size = \"seven\"")
        .replace("[admin]\n", "[admin]\nlisten_typo = 1\n")
        .replace(&password_file, "/nonexistent/acme-auth");
    std::fs::write(&env.sluice.config_path, &broken).unwrap();
    let mark = env.sluice.log().len();
    signal(&env.sluice, Signal::SIGHUP);
    let log = wait_for_log(&env.sluice, mark, "config reload refused");
    let size_line = broken
        .lines()
        .position(|l| l.starts_with("size = \"seven\""))
        .unwrap()
        + 1;
    assert!(
        log.contains(&format!("line {size_line}: defaults.pool.size")),
        "the type error is named with its key and line {size_line}:\n{log}"
    );
    let line_of = |prefix: &str| broken.lines().position(|l| l.starts_with(prefix)).unwrap() + 1;
    let typo_line = line_of("listen_typo");
    assert!(
        log.contains(&format!("line {typo_line}: admin.listen_typo")),
        "the unknown key is named with its line {typo_line}:\n{log}"
    );
    let file_line = line_of("auth_password_file = \"/nonexistent/acme-auth\"");
    assert!(
        log.contains(&format!(
            "line {file_line}: tenants[0].backend.auth_password_file: cannot read /nonexistent/acme-auth"
        )),
        "the unreadable file is named with its key and line {file_line}:\n{log}"
    );
    assert!(env.sluice.is_running(), "a bad file never ends sluice");
    assert_eq!(
        tenant(&env.sluice, "acme")["pool"]["size"],
        7,
        "the last good config stays in force"
    );
    let client = pg_connect(&env.target("globex"))
        .await
        .expect("clients still served after a refused reload");
    assert_eq!(scalar::<i32>(&client, "select 1").await, 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_second_sigterm_ends_the_wait_for_connected_clients() {
    let mut env = TwoTenants::start(BIN.as_ref(), |config| {
        config.shutdown_grace_s = 120;
    })
    .expect("starting sluice and two tenants");
    let client = pg_connect(&env.target("acme")).await.expect("acme client");
    assert_eq!(scalar::<i32>(&client, "select 1").await, 1);

    let mark = env.sluice.log().len();
    signal(&env.sluice, Signal::SIGTERM);
    let log = wait_for_log(&env.sluice, mark, "stopped accepting");
    assert!(
        log.contains("waiting up to 120 s for 1 client(s)"),
        "the shutdown says what it waits for:\n{log}"
    );
    std::thread::sleep(Duration::from_millis(500));
    assert!(
        env.sluice.is_running(),
        "the first SIGTERM waits for the client"
    );

    let began = Instant::now();
    let status = env
        .sluice
        .signal_and_wait(Signal::SIGTERM, Duration::from_secs(20))
        .expect("sluice exits soon after a second SIGTERM, not after the 120 s grace");
    assert!(status.success(), "{status:?}");
    let log = env.sluice.log();
    assert!(
        log.contains("ending 1 client(s) now"),
        "the second signal is logged:\n{log}"
    );
    eprintln!("exited {:?} after the second SIGTERM", began.elapsed());
    // The client was told why (57P01), as at the end of the grace period.
    let err = client
        .simple_query("select 1")
        .await
        .expect_err("the client's session ended");
    assert!(err.is_closed() || sqlstate(&err) == "57P01", "{err}");
}
