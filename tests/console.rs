//! The admin console end to end (docs/console.md): psql and tokio-postgres log in to
//! database `sluice` on the proxy port with API keys, over TLS; every SHOW answers;
//! viewer keys cannot change anything; PAUSE waits for a transaction in flight and
//! queues new ones until RESUME; RECONNECT and KILL act on one tenant only; write
//! commands are in the audit log. Also the same lists in the admin API
//! (`/v1/clients`, `/v1/servers`) and the CLI (`sluice clients`, `sluice servers`).

use std::time::{Duration, Instant};

use serde_json::Value;
use testkit::clients::{pg_connect, pg_connect_from, psql, scalar, PgTarget};
use testkit::TwoTenants;
use tokio_postgres::{Client, SimpleQueryMessage};

const BIN: &str = env!("CARGO_BIN_EXE_sluice");

/// Both tenants in transaction mode, so a client holds a server connection only
/// inside a transaction (what PAUSE waits for).
fn start() -> TwoTenants {
    TwoTenants::start(BIN.as_ref(), |config| {
        for tenant in &mut config.tenants {
            tenant.pool.push("mode = \"transaction\"".into());
        }
    })
    .expect("starting two tenants")
}

/// The console as `key` sees it: `sluice.<suffix>` by SNI, verify-full TLS.
fn console(env: &TwoTenants, key: &str) -> PgTarget {
    let mut target = PgTarget::tenant(env.sluice.addr, "sluice", key, &env.pki.ca_cert);
    target.user = "admin".into();
    target.dbname = "sluice".into();
    target
}

/// The rows of a console answer, each value as text ("" for NULL).
async fn rows(client: &Client, sql: &str) -> Vec<Vec<String>> {
    let messages = client
        .simple_query(sql)
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e}"));
    messages
        .into_iter()
        .filter_map(|m| match m {
            SimpleQueryMessage::Row(row) => Some(
                (0..row.len())
                    .map(|i| row.get(i).unwrap_or_default().to_owned())
                    .collect(),
            ),
            _ => None,
        })
        .collect()
}

/// The SQLSTATE `sql` fails with on the console.
async fn sqlstate(client: &Client, sql: &str) -> String {
    let err = client
        .simple_query(sql)
        .await
        .expect_err("the command should fail");
    err.code()
        .unwrap_or_else(|| panic!("{sql}: no SQLSTATE in {err}"))
        .code()
        .to_owned()
}

/// Polls `check` every 20 ms until it holds (or panics after 20 s with `what`).
async fn until<F, Fut>(what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + Duration::from_secs(20);
    while !check().await {
        assert!(Instant::now() < deadline, "never happened: {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn create_key(env: &TwoTenants, role: &str) -> String {
    let answer = env.sluice.api(
        "POST",
        "/v1/api-keys",
        &format!(r#"{{"role": "{role}"}}"#),
        "",
    );
    assert_eq!(answer.status, 201, "{}", answer.body);
    let body: Value = serde_json::from_str(&answer.body).unwrap();
    body["key"].as_str().unwrap().to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn psql_runs_every_show_and_sees_a_connected_client() {
    let env = start();
    let app = pg_connect(&env.target("acme")).await.unwrap();
    assert_eq!(scalar::<i32>(&app, "SELECT 1").await, 1);
    let admin = console(&env, &env.sluice.admin_key);
    for show in [
        "SHOW POOLS",
        "SHOW STATS",
        "SHOW CLIENTS",
        "SHOW SERVERS",
        "SHOW TENANTS",
        "SHOW HELP",
        "SHOW VERSION",
    ] {
        let out = psql(&admin, show);
        assert!(out.success, "{show}: {}", out.stderr);
    }
    let clients = psql(&admin, "SHOW CLIENTS");
    let line = clients
        .stdout
        .lines()
        .find(|l| l.contains("|acme|"))
        .unwrap_or_else(|| panic!("no acme client in {}", clients.stdout));
    let fields: Vec<&str> = line.split('|').collect();
    assert_eq!(fields[3], "app", "{line}");
    assert_eq!(fields[4], "idle", "between transactions: {line}");
    assert_eq!(fields[5], "127.0.0.1", "{line}");
    assert_eq!(fields[7], "true", "TLS: {line}");
    assert_eq!(fields[8], "transaction", "{line}");
    let servers = psql(&admin, "SHOW SERVERS");
    assert!(
        servers
            .stdout
            .lines()
            .any(|l| l.contains("|acme|app|app|idle|")),
        "{}",
        servers.stdout
    );
    let tenants = psql(&admin, "SHOW TENANTS");
    assert!(
        tenants.stdout.contains("acme|active|false|transaction"),
        "{}",
        tenants.stdout
    );
    assert!(
        tenants.stdout.contains("globex|active|false|transaction"),
        "{}",
        tenants.stdout
    );
    assert!(psql(&admin, "SHOW VERSION").stdout.starts_with("Sluice "));
    let pools = psql(&admin, "SHOW POOLS");
    // One client between transactions (cl_idle), one idle server connection.
    assert!(
        pools.stdout.contains("acme|app|app|0|1|0|0|1|"),
        "{}",
        pools.stdout
    );
    let stats = psql(&admin, "SHOW STATS");
    assert!(
        stats.stdout.starts_with("acme|app|app|"),
        "{}",
        stats.stdout
    );

    // Mistakes are ERRORs with their SQLSTATE, and the session goes on.
    let console = pg_connect(&admin).await.unwrap();
    assert_eq!(sqlstate(&console, "SHOW FOO").await, "42704");
    assert_eq!(sqlstate(&console, "SELECT 1").await, "42601");
    assert_eq!(sqlstate(&console, "PAUSE nosuch").await, "42704");
    assert_eq!(rows(&console, "SHOW VERSION").await.len(), 1);
    // The extended protocol is refused (0A000), and the session still goes on.
    let err = console.query("SHOW POOLS", &[]).await.unwrap_err();
    assert_eq!(err.code().unwrap().code(), "0A000", "{err}");
    assert_eq!(rows(&console, "SHOW VERSION").await.len(), 1);

    // By address (no SNI) with sslmode=require, too.
    let mut by_ip = admin.clone();
    by_ip.sni_host = None;
    by_ip.sslmode = "require";
    let out = psql(&by_ip, "SHOW VERSION");
    assert!(out.success, "{}", out.stderr);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_console_needs_tls_and_a_live_key() {
    let env = start();
    let mut plain = console(&env, &env.sluice.admin_key);
    plain.sni_host = None;
    plain.sslmode = "disable";
    let out = psql(&plain, "SHOW POOLS");
    assert!(!out.success);
    assert!(out.stderr.contains("TLS is required"), "{}", out.stderr);
    let wrong = console(
        &env,
        "sk_00000000_000000000000000000000000000000000000000000000000",
    );
    let err = pg_connect(&wrong).await.unwrap_err();
    assert_eq!(err.code().unwrap().code(), "28P01", "{err}");
    // A tenant's own database called `sluice` is still the tenant's: SNI names it.
    let mut tenant_db = env.target("acme");
    tenant_db.dbname = "sluice".into();
    let err = pg_connect(&tenant_db).await.unwrap_err();
    assert_eq!(err.code().unwrap().code(), "3D000", "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_viewer_key_reads_but_cannot_pause() {
    let env = start();
    let viewer = create_key(&env, "viewer");
    let console = pg_connect(&console(&env, &viewer)).await.unwrap();
    assert!(!rows(&console, "SHOW TENANTS").await.is_empty());
    for write in ["PAUSE acme", "RESUME", "RECONNECT acme", "KILL acme"] {
        assert_eq!(sqlstate(&console, write).await, "42501", "{write}");
    }
    let tenants = rows(&console, "SHOW TENANTS").await;
    assert!(tenants.iter().all(|t| t[2] == "false"), "{tenants:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pause_waits_for_the_transaction_in_flight_and_queues_new_ones_until_resume() {
    let env = start();
    let operator = create_key(&env, "operator");
    let console = pg_connect(&console(&env, &operator)).await.unwrap();
    let busy = pg_connect(&env.target("acme")).await.unwrap();
    let later = pg_connect(&env.target("acme")).await.unwrap();
    let other = pg_connect(&env.target("globex")).await.unwrap();
    busy.batch_execute("BEGIN; SELECT 1").await.unwrap();

    let pause = tokio::spawn({
        let console = pg_connect(&console_target(&env, &operator)).await.unwrap();
        async move { console.simple_query("PAUSE acme").await.map(|_| ()) }
    });
    until("acme shows as paused", || async {
        rows(&console, "SHOW TENANTS")
            .await
            .iter()
            .any(|t| t[0] == "acme" && t[2] == "true")
    })
    .await;
    // The transaction holds a server connection: PAUSE cannot be done yet.
    assert!(
        !pause.is_finished(),
        "PAUSE returned while a transaction was open"
    );
    // Another tenant is not paused.
    assert_eq!(scalar::<i32>(&other, "SELECT 2").await, 2);
    busy.batch_execute("COMMIT").await.unwrap();
    pause
        .await
        .unwrap()
        .expect("PAUSE returns once the transaction ended");

    // A new transaction waits (as a waiting client) until RESUME, then runs.
    let query = tokio::spawn(async move { scalar::<i32>(&later, "SELECT 3").await });
    until("a client waits", || async {
        rows(&console, "SHOW CLIENTS")
            .await
            .iter()
            .any(|c| c[1] == "acme" && c[4] == "waiting")
    })
    .await;
    assert!(!query.is_finished());
    let resumed = rows(&console, "RESUME acme").await;
    assert!(resumed.is_empty());
    assert_eq!(query.await.unwrap(), 3);

    // Both are in the audit log, with the operator key as actor.
    let events = env
        .sluice
        .api("GET", "/v1/audit-events?tenant=acme", "", "");
    let events: Value = serde_json::from_str(&events.body).unwrap();
    let actions: Vec<&str> = events["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["action"].as_str().unwrap())
        .collect();
    assert_eq!(
        actions[..2],
        ["console.resume", "console.pause"],
        "{events}"
    );
    let key_id = operator.split('_').nth(1).unwrap();
    assert_eq!(events["events"][0]["actor"], key_id);
    assert_eq!(events["events"][0]["details"]["command"], "RESUME acme");
}

/// Same as [`console`], for a second connection.
fn console_target(env: &TwoTenants, key: &str) -> PgTarget {
    console(env, key)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_paused_client_gives_up_at_max_wait_with_53300() {
    let env = TwoTenants::start(BIN.as_ref(), |config| {
        for tenant in &mut config.tenants {
            tenant.pool.push("mode = \"transaction\"".into());
            tenant.pool.push("max_wait_ms = 200".into());
        }
    })
    .unwrap();
    let console = pg_connect(&console(&env, &env.sluice.admin_key))
        .await
        .unwrap();
    let app = pg_connect(&env.target("acme")).await.unwrap();
    rows(&console, "PAUSE acme").await;
    let err = app.simple_query("SELECT 1").await.unwrap_err();
    let db = err.as_db_error().unwrap_or_else(|| panic!("{err}"));
    assert_eq!(db.code().code(), "53300", "{db}");
    assert!(db.message().contains("paused"), "{db}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reconnect_and_kill_act_on_one_tenant() {
    let env = start();
    let console = pg_connect(&console(&env, &env.sluice.admin_key))
        .await
        .unwrap();
    let acme = pg_connect(&env.target("acme")).await.unwrap();
    let globex = pg_connect(&env.target("globex")).await.unwrap();
    let before: i32 = scalar(&acme, "SELECT pg_backend_pid()").await;
    let globex_pid: i32 = scalar(&globex, "SELECT pg_backend_pid()").await;
    rows(&console, "RECONNECT acme").await;
    let after: i32 = scalar(&acme, "SELECT pg_backend_pid()").await;
    assert_ne!(before, after, "RECONNECT closed acme's server connection");
    assert_eq!(
        scalar::<i32>(&globex, "SELECT pg_backend_pid()").await,
        globex_pid
    );

    // A client whose connection task tells how it ended: with KILL's ErrorResponse.
    let loopback = std::net::IpAddr::from([127, 0, 0, 1]);
    let (killed, ended) = pg_connect_from(&env.target("acme"), loopback)
        .await
        .unwrap();
    assert_eq!(scalar::<i32>(&killed, "SELECT 1").await, 1);
    rows(&console, "KILL acme").await;
    let err = ended.await.unwrap().expect_err("KILL ends the session");
    let db = err
        .as_db_error()
        .unwrap_or_else(|| panic!("no ErrorResponse: {err}"));
    assert_eq!(db.code().code(), "57P01", "{db}");
    assert_eq!(
        db.message(),
        "terminating connection due to administrator command"
    );
    assert!(acme.simple_query("SELECT 1").await.is_err());
    assert_eq!(scalar::<i32>(&globex, "SELECT 1").await, 1);
    // New clients of the killed tenant are welcome again.
    let again = pg_connect(&env.target("acme")).await.unwrap();
    assert_eq!(scalar::<i32>(&again, "SELECT 1").await, 1);
    let log = env.sluice.plain_log();
    assert!(
        log.contains("terminating connection due to administrator command"),
        "{log}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_api_and_the_cli_list_a_connected_client_and_its_server() {
    let env = start();
    let app = pg_connect(&env.target("acme")).await.unwrap();
    let pid: i32 = scalar(&app, "SELECT pg_backend_pid()").await;
    app.batch_execute("BEGIN").await.unwrap();
    let get = |path: &str| -> Value {
        let answer = env.sluice.api("GET", path, "", "");
        assert_eq!(answer.status, 200, "{path}: {}", answer.body);
        serde_json::from_str(&answer.body).unwrap()
    };
    let clients = get("/v1/clients?tenant=acme");
    let client = &clients["clients"][0];
    assert_eq!(clients["clients"].as_array().unwrap().len(), 1, "{clients}");
    assert_eq!(client["addr"], "127.0.0.1", "{client}");
    assert_eq!(client["state"], "active", "inside a transaction: {client}");
    assert_eq!(client["tls"], true);
    assert_eq!(client["backend_pid"], pid, "{client}");
    let servers = get("/v1/servers?tenant=acme");
    let server = &servers["servers"][0];
    assert_eq!(server["state"], "active", "{server}");
    assert_eq!(server["client_id"], client["id"], "{server}");
    assert_eq!(server["id"], client["server_id"]);
    assert_eq!(
        get("/v1/clients?tenant=globex"),
        serde_json::json!({"clients": []})
    );
    app.batch_execute("COMMIT").await.unwrap();
    let clients = get("/v1/clients");
    assert_eq!(clients["clients"][0]["state"], "idle", "{clients}");
    assert_eq!(clients["clients"][0]["server_id"], Value::Null);

    // The CLI prints the same lists as tables.
    let cli = |args: &[&str]| {
        let out = std::process::Command::new(BIN)
            .args(args)
            .env("SLUICE_API", format!("http://{}", env.sluice.admin_addr))
            .env("SLUICE_TOKEN", &env.sluice.admin_key)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    };
    let table = cli(&["clients"]);
    let lines: Vec<&str> = table.lines().collect();
    assert!(lines[0].starts_with("ID  TENANT  DATABASE"), "{table}");
    let row: Vec<&str> = lines[1].split_whitespace().collect();
    assert_eq!(row[1..5], ["acme", "app", "app", "idle"], "{table}");
    assert!(row[5].starts_with("127.0.0.1:"), "{table}");
    let table = cli(&["servers", "--tenant", "acme"]);
    assert!(table.lines().nth(1).unwrap().contains(" idle "), "{table}");
    assert!(table.contains(&pid.to_string()), "{table}");
    let json = cli(&["clients", "--output", "json"]);
    let json: Value = serde_json::from_str(&json).unwrap();
    assert_eq!(json["clients"][0]["tenant"], "acme");

    // PAUSE and RESUME through the API, with the CLI.
    let paused = cli(&["tenants", "pause", "acme"]);
    assert_eq!(
        paused.trim(),
        "tenant acme: paused true, 0 server connection(s) in use"
    );
    let console = pg_connect(&console(&env, &env.sluice.admin_key))
        .await
        .unwrap();
    let tenants = rows(&console, "SHOW TENANTS").await;
    assert!(
        tenants.iter().any(|t| t[0] == "acme" && t[2] == "true"),
        "{tenants:?}"
    );
    let resumed = cli(&["tenants", "unpause", "acme"]);
    assert!(
        resumed.starts_with("tenant acme: paused false"),
        "{resumed}"
    );
    let events = get("/v1/audit-events?tenant=acme");
    assert_eq!(
        events["events"][0]["action"], "tenant.pause.lift",
        "{events}"
    );
    assert_eq!(events["events"][1]["action"], "tenant.pause", "{events}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn in_session_mode_a_login_during_pause_waits_for_resume() {
    let env = TwoTenants::start(BIN.as_ref(), |_| {}).expect("starting two tenants");
    let console = pg_connect(&console(&env, &env.sluice.admin_key))
        .await
        .unwrap();
    // A session-mode client holds its server connection: PAUSE waits for it to leave.
    let first = pg_connect(&env.target("acme")).await.unwrap();
    let pause = tokio::spawn({
        let console = pg_connect(&console_target(&env, &env.sluice.admin_key))
            .await
            .unwrap();
        async move { console.simple_query("PAUSE acme").await.map(|_| ()) }
    });
    until("acme shows as paused", || async {
        rows(&console, "SHOW POOLS")
            .await
            .iter()
            .any(|p| p[0] == "acme" && p[11] == "true")
    })
    .await;
    assert!(
        !pause.is_finished(),
        "PAUSE returned while a session held a connection"
    );
    drop(first);
    pause
        .await
        .unwrap()
        .expect("PAUSE returns once the session left");
    // A new login waits for a server connection, and is in once RESUMEd.
    let target = env.target("acme");
    let login = tokio::spawn(async move {
        let client = pg_connect(&target).await.unwrap();
        scalar::<i32>(&client, "SELECT 4").await
    });
    until("a login waits", || async {
        rows(&console, "SHOW POOLS")
            .await
            .iter()
            .any(|p| p[0] == "acme" && p[5] == "1")
    })
    .await;
    assert!(!login.is_finished());
    rows(&console, "RESUME").await;
    assert_eq!(login.await.unwrap(), 4);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_ends_clients_waiting_in_a_pause_at_once() {
    let env = start();
    let console = pg_connect(&console(&env, &env.sluice.admin_key))
        .await
        .unwrap();
    let app = pg_connect(&env.target("acme")).await.unwrap();
    rows(&console, "PAUSE acme").await;
    let query = tokio::spawn(async move { app.simple_query("SELECT 1").await.map(|_| ()) });
    until("the client waits", || async {
        rows(&console, "SHOW CLIENTS")
            .await
            .iter()
            .any(|c| c[1] == "acme" && c[4] == "waiting")
    })
    .await;
    rows(&console, "KILL acme").await;
    let err = query
        .await
        .unwrap()
        .expect_err("KILL ends the waiting client");
    let db = err
        .as_db_error()
        .unwrap_or_else(|| panic!("no ErrorResponse: {err}"));
    // Told why at once: not the pool timeout (53300) at the end of max_wait.
    assert_eq!(db.code().code(), "57P01", "{db}");
    rows(&console, "RESUME acme").await;
}
