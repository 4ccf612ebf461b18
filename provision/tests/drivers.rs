//! The provisioner drivers and the backend SQL, against real PostgreSQL clusters: the
//! local driver's clusters (made, found again, redone, taken over, removed), tenant roles
//! logging in over TLS, and the static driver against a testkit cluster.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use provision::sql::{self, RoleError, APP_DATABASE, AUTH_QUERY, AUTH_USER};
use provision::{BackendAddress, BackendRequest, Driver, LocalDriver, StaticDriver};
use serde_json::json;
use tokio_postgres::config::SslMode;
use tokio_postgres::error::SqlState;
use tokio_postgres::Client;
use tokio_postgres_rustls::MakeRustlsConnect;

const READY: Duration = Duration::from_secs(30);

fn request(tenant: &str, admin_password: &str) -> BackendRequest {
    BackendRequest {
        tenant: tenant.to_owned(),
        plan: None,
        params: json!({}),
        admin_password: admin_password.to_owned(),
    }
}

/// A local backend made, ready and set up, as the job worker leaves it.
async fn provisioned(
    data_dir: &Path,
    tenant: &str,
) -> (LocalDriver, BackendAddress, String, sql::AdminClient) {
    let driver = LocalDriver::new(data_dir).unwrap();
    let password = sql::generate_password();
    let addr = driver.create(&request(tenant, &password)).await.unwrap();
    sql::wait_ready(&addr, &password, READY).await.unwrap();
    let admin = sql::connect_admin(&addr, &password, None).await.unwrap();
    let auth_verifier = sql::scram_verifier(&sql::generate_password());
    sql::ensure_tenant_setup(&admin, AUTH_USER, &auth_verifier)
        .await
        .unwrap();
    (driver, addr, password, admin)
}

/// Logs in as `user` the way a client would, over TLS (not verified) on 127.0.0.1.
async fn login(
    addr: &BackendAddress,
    user: &str,
    password: &str,
    database: &str,
) -> Result<Client, tokio_postgres::Error> {
    let mut config = tokio_postgres::Config::new();
    config
        .host(&addr.host)
        .port(addr.port)
        .user(user)
        .password(password)
        .dbname(database)
        .ssl_mode(SslMode::Require)
        .connect_timeout(Duration::from_secs(10));
    let tls = pooler::TlsConnectors::new().unverified();
    let (client, connection) = config
        .connect(MakeRustlsConnect::new(Arc::unwrap_or_clone(tls)))
        .await?;
    tokio::spawn(connection);
    Ok(client)
}

fn entries(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|entry| entry.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

fn postmaster_pid(pgdata: &Path) -> Option<u32> {
    let text = std::fs::read_to_string(pgdata.join("postmaster.pid")).ok()?;
    text.lines().next()?.trim().parse().ok()
}

/// Alive and not a zombie (an orphaned postmaster is reaped by whoever adopted it).
fn alive(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|stat| {
        let state = stat
            .rfind(')')
            .and_then(|end| stat[end + 1..].trim().chars().next());
        !matches!(state, None | Some('Z') | Some('X'))
    })
}

#[tokio::test]
async fn a_local_backend_is_made_once_and_serves_a_new_role_over_tls() {
    let dir = tempfile::tempdir().unwrap();
    let driver = LocalDriver::new(dir.path()).unwrap();
    assert_eq!(driver.name(), "local");
    let password = sql::generate_password();
    let req = request("acme", &password);
    let addr = driver.create(&req).await.unwrap();
    assert_eq!(
        (
            addr.host.as_str(),
            addr.tls.as_str(),
            addr.admin_user.as_str(),
            addr.admin_database.as_str(),
            addr.tls_ca.as_deref()
        ),
        ("127.0.0.1", "require", "postgres", "postgres", None)
    );

    // Twice: the same backend, one cluster.
    let pgdata = dir.path().join("backends/acme/pgdata");
    let pid = postmaster_pid(&pgdata).unwrap();
    assert_eq!(driver.create(&req).await.unwrap(), addr);
    assert_eq!(postmaster_pid(&pgdata), Some(pid));
    assert_eq!(
        entries(&dir.path().join("backends")),
        ["acme", "owner.lock"]
    );
    assert_eq!(
        entries(&dir.path().join("backends/acme")),
        ["pgdata", "run"]
    );

    sql::wait_ready(&addr, &password, READY).await.unwrap();
    let admin = sql::connect_admin(&addr, &password, None).await.unwrap();
    let auth_password = sql::generate_password();
    // Twice: the set-up is idempotent (the second run replaces the auth password).
    for _ in 0..2 {
        let verifier = sql::scram_verifier(&auth_password);
        sql::ensure_tenant_setup(&admin, AUTH_USER, &verifier)
            .await
            .unwrap();
    }

    let role_password = sql::generate_password();
    let verifier = sql::scram_verifier(&role_password);
    sql::create_role(&admin, "reporter", &verifier)
        .await
        .unwrap();
    assert!(matches!(
        sql::create_role(&admin, "reporter", &verifier).await,
        Err(RoleError::Exists)
    ));
    assert!(
        matches!(
            sql::create_role(&admin, "plain", "a plaintext password").await,
            Err(RoleError::Other(_))
        ),
        "only verifiers are sent"
    );

    let app = login(&addr, "reporter", &role_password, APP_DATABASE)
        .await
        .unwrap();
    let row = app
        .query_one(
            "SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()",
            &[],
        )
        .await
        .unwrap();
    assert!(row.get::<_, bool>(0), "the session is encrypted");
    app.batch_execute("CREATE TABLE notes (body text); INSERT INTO notes VALUES ('hi')")
        .await
        .unwrap();

    // The auth role reads a login role's verifier through the lookup function (in the
    // database auth_query connects to), never a superuser's, and nothing else.
    let auth = login(&addr, AUTH_USER, &auth_password, sql::AUTH_DATABASE)
        .await
        .unwrap();
    let secret: String = auth
        .query_one(AUTH_QUERY, &[&"reporter"])
        .await
        .unwrap()
        .get(0);
    assert_eq!(secret, verifier);
    assert!(auth
        .query(AUTH_QUERY, &[&"postgres"])
        .await
        .unwrap()
        .is_empty());
    assert!(auth.query("SELECT * FROM pg_authid", &[]).await.is_err());

    drop((app, auth, admin));
    driver.destroy("acme").await.unwrap();
    assert_eq!(entries(&dir.path().join("backends")), ["owner.lock"]);
    assert!(!alive(pid));
    driver.destroy("acme").await.unwrap();
    assert!(sql::connect_admin(&addr, &password, None).await.is_err());
    driver.shutdown();
}

#[tokio::test]
async fn roles_are_rotated_and_dropped_and_their_data_stays() {
    let dir = tempfile::tempdir().unwrap();
    let (driver, addr, password, admin) = provisioned(dir.path(), "globex").await;
    let old = sql::generate_password();
    sql::create_role(&admin, "writer", &sql::scram_verifier(&old))
        .await
        .unwrap();
    let session = login(&addr, "writer", &old, APP_DATABASE).await.unwrap();
    session
        .batch_execute("CREATE TABLE kept (v int); INSERT INTO kept VALUES (1)")
        .await
        .unwrap();

    let new = sql::generate_password();
    sql::set_password(&admin, "writer", &sql::scram_verifier(&new))
        .await
        .unwrap();
    let refused = login(&addr, "writer", &old, APP_DATABASE)
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Some(&SqlState::INVALID_PASSWORD));
    login(&addr, "writer", &new, APP_DATABASE).await.unwrap();
    let count: i64 = session
        .query_one("SELECT count(*) FROM kept", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(
        count, 1,
        "a session logged in before the rotation keeps working"
    );

    let verifier = sql::scram_verifier(&new);
    assert!(matches!(
        sql::set_password(&admin, "nobody", &verifier).await,
        Err(RoleError::Missing)
    ));
    assert!(matches!(
        sql::set_password(&admin, "postgres", &verifier).await,
        Err(RoleError::Other(_))
    ));
    // A role Sluice did not make is not Sluice's to change.
    admin
        .batch_execute("CREATE ROLE outsider LOGIN")
        .await
        .unwrap();
    assert!(matches!(
        sql::set_password(&admin, "outsider", &verifier).await,
        Err(RoleError::Missing)
    ));
    assert!(matches!(
        sql::drop_role(&admin, "outsider").await,
        Err(RoleError::Missing)
    ));

    sql::drop_role(&admin, "writer").await.unwrap();
    assert!(
        session.simple_query("SELECT 1").await.is_err(),
        "the dropped role's sessions were ended"
    );
    assert!(login(&addr, "writer", &new, APP_DATABASE).await.is_err());
    let in_app = sql::connect_admin(&addr, &password, Some(APP_DATABASE))
        .await
        .unwrap();
    let owner: String = in_app
        .query_one(
            "SELECT tableowner::text FROM pg_tables WHERE tablename = 'kept'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(owner, "app_owner", "the table outlives its creator");
    assert!(matches!(
        sql::drop_role(&admin, "writer").await,
        Err(RoleError::Missing)
    ));

    drop((session, in_app, admin));
    driver.destroy("globex").await.unwrap();
}

/// What `drop_role` guards against: Postgres itself drops a role that has sessions, and
/// those sessions keep running queries.
#[tokio::test]
async fn postgres_drops_a_role_that_still_has_sessions() {
    let dir = tempfile::tempdir().unwrap();
    let (driver, addr, _password, admin) = provisioned(dir.path(), "initech").await;
    let password = sql::generate_password();
    sql::create_role(&admin, "lingering", &sql::scram_verifier(&password))
        .await
        .unwrap();
    let session = login(&addr, "lingering", &password, APP_DATABASE)
        .await
        .unwrap();
    admin.batch_execute("DROP ROLE lingering").await.unwrap();
    let one: i32 = session.query_one("SELECT 1", &[]).await.unwrap().get(0);
    assert_eq!(one, 1);
    let who = session
        .simple_query("SELECT current_user")
        .await
        .unwrap_err();
    assert_eq!(who.code(), Some(&SqlState::UNDEFINED_OBJECT)); // "invalid role OID: ..."
    let create = session
        .simple_query("CREATE TABLE orphan (v int)")
        .await
        .unwrap_err();
    assert_eq!(create.code(), Some(&SqlState::INSUFFICIENT_PRIVILEGE)); // no longer in app_owner
    drop((session, admin));
    driver.destroy("initech").await.unwrap();
}

#[tokio::test]
async fn a_creation_that_died_half_way_is_redone() {
    let dir = tempfile::tempdir().unwrap();
    let home = dir.path().join("backends/hooli");
    std::fs::create_dir_all(home.join("pgdata.new/global")).unwrap();
    std::fs::write(home.join("pgdata.new/PG_VERSION"), "15\n").unwrap();
    std::fs::create_dir_all(home.join("tls.new")).unwrap();
    std::fs::write(home.join("tls.new/server.key"), "half").unwrap();

    let driver = LocalDriver::new(dir.path()).unwrap();
    let password = sql::generate_password();
    let addr = driver.create(&request("hooli", &password)).await.unwrap();
    assert_eq!(entries(&home), ["pgdata", "run"]);
    sql::wait_ready(&addr, &password, READY).await.unwrap();
    driver.destroy("hooli").await.unwrap();
}

#[tokio::test]
async fn a_restarted_sluice_starts_its_backends_again() {
    let dir = tempfile::tempdir().unwrap();
    let first = LocalDriver::new(dir.path()).unwrap();
    let password = sql::generate_password();
    let req = request("pied", &password);
    let addr = first.create(&req).await.unwrap();

    let refused = LocalDriver::new(dir.path()).unwrap_err();
    assert!(
        format!("{refused:#}").contains("in use by another Sluice process"),
        "{refused:#}"
    );

    first.shutdown();
    assert!(first.ensure_running("pied").await.is_err(), "shut down");
    drop(first);
    assert!(sql::connect_admin(&addr, &password, None).await.is_err());

    let second = LocalDriver::new(dir.path()).unwrap();
    second.ensure_running("pied").await.unwrap();
    sql::wait_ready(&addr, &password, READY).await.unwrap();
    assert_eq!(second.create(&req).await.unwrap(), addr);
    second.ensure_running("pied").await.unwrap();

    let unknown = second.ensure_running("nobody").await.unwrap_err();
    assert!(
        format!("{unknown:#}").contains("no local backend"),
        "{unknown:#}"
    );
    let traversal = second.ensure_running("../pied").await.unwrap_err();
    assert!(
        format!("{traversal:#}").contains("not a valid tenant id"),
        "{traversal:#}"
    );
    second.destroy("pied").await.unwrap();
}

/// Set by the test below for the child process it runs.
const CHILD_DIR: &str = "SLUICE_PROVISION_TEST_CHILD_DIR";
const CHILD_PASSWORD: &str = "SLUICE_PROVISION_TEST_CHILD_PASSWORD";
const CHILD_READY: &str = "provision-child-ready";

/// Not a test by itself: run as a child process by the next test, it plays a Sluice that
/// made a backend and is then SIGKILLed. Without the environment variable it does nothing.
#[tokio::test]
async fn child_process_holding_a_backend() {
    let Some(dir) = std::env::var_os(CHILD_DIR) else {
        return;
    };
    let password = std::env::var(CHILD_PASSWORD).unwrap();
    let driver = LocalDriver::new(Path::new(&dir)).unwrap();
    let addr = driver
        .create(&request("umbrella", &password))
        .await
        .unwrap();
    println!("{CHILD_READY} {}", addr.port);
    tokio::time::sleep(Duration::from_secs(120)).await;
}

/// Kills the child and stops a postmaster it left, if the test ends early.
struct Leftovers {
    child: Child,
    pgdata: PathBuf,
}

impl Drop for Leftovers {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if let Some(pid) = postmaster_pid(&self.pgdata).filter(|&pid| alive(pid)) {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid as i32),
                nix::sys::signal::Signal::SIGINT,
            );
        }
    }
}

#[tokio::test]
async fn a_postmaster_left_by_a_killed_sluice_is_taken_over() {
    let dir = tempfile::tempdir().unwrap();
    let password = sql::generate_password();
    let child = Command::new(std::env::current_exe().unwrap())
        .args(["--exact", "child_process_holding_a_backend"])
        .args(["--nocapture", "--test-threads=1"])
        .env(CHILD_DIR, dir.path())
        .env(CHILD_PASSWORD, &password)
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut leftovers = Leftovers {
        child,
        pgdata: dir.path().join("backends/umbrella/pgdata"),
    };
    let stdout = leftovers.child.stdout.take().unwrap();
    // The harness prints "test <name> ... " before the child's own line.
    let ready = tokio::task::spawn_blocking(move || {
        BufReader::new(stdout)
            .lines()
            .map_while(Result::ok)
            .find_map(|line| line.split_once(CHILD_READY)?.1.trim().parse::<u16>().ok())
    });
    let port = tokio::time::timeout(Duration::from_secs(90), ready)
        .await
        .expect("the child reports its backend in time")
        .unwrap()
        .expect("the child made its backend");

    leftovers.child.kill().unwrap(); // SIGKILL: no destructor runs
    leftovers.child.wait().unwrap();
    let orphan = postmaster_pid(&leftovers.pgdata).unwrap();
    assert!(
        alive(orphan),
        "the postmaster outlives the Sluice that started it"
    );
    let addr = BackendAddress {
        host: "127.0.0.1".into(),
        port,
        tls: "require".into(),
        tls_ca: None,
        admin_user: "postgres".into(),
        admin_database: "postgres".into(),
    };
    sql::wait_ready(&addr, &password, READY).await.unwrap();

    // The kernel released the dead Sluice's owner lock.
    let driver = LocalDriver::new(dir.path()).unwrap();
    driver.ensure_running("umbrella").await.unwrap();
    let ours = postmaster_pid(&leftovers.pgdata).unwrap();
    assert_ne!(ours, orphan);
    assert!(!alive(orphan), "the orphan was stopped");
    sql::wait_ready(&addr, &password, READY).await.unwrap();
    driver.destroy("umbrella").await.unwrap();
    assert!(!alive(ours));
}

#[tokio::test]
async fn the_static_driver_checks_the_operators_credential() {
    let dir = tempfile::tempdir().unwrap();
    let pki = testkit::Pki::generate(&dir.path().join("pki")).unwrap();
    let options = testkit::TestClusterOptions {
        tcp_tls: Some(&pki),
        ..Default::default()
    };
    let cluster = testkit::TestCluster::start(dir.path(), "operator", options).unwrap();
    let params = json!({
        "host": "127.0.0.1",
        "port": cluster.tcp_port.unwrap(),
        "tls": "verify-full",
        "tls_ca": pki.ca_cert,
        "admin_user": testkit::cluster::APP_ROLE,
        "admin_database": testkit::cluster::APP_DATABASE,
    });
    let driver = StaticDriver;
    assert_eq!(driver.name(), "static");
    let create = |password: &str| BackendRequest {
        tenant: "operator".into(),
        plan: None,
        params: params.clone(),
        admin_password: password.to_owned(),
    };

    let wrong = driver
        .create(&create("not-the-password"))
        .await
        .unwrap_err();
    let wrong = format!("{wrong:#}");
    assert!(
        wrong.contains("password authentication failed for user \"app\""),
        "{wrong}"
    );
    // The right password of a role that is no superuser: refused, saying why.
    let weak = driver
        .create(&create(&cluster.app_password))
        .await
        .unwrap_err();
    assert!(
        format!("{weak:#}").contains("is not a superuser"),
        "{weak:#}"
    );

    // A superuser on a server Sluice does not run (here, a local driver's backend): the
    // address comes back as given, and the static driver never stops or removes it.
    let local = LocalDriver::new(&dir.path().join("local")).unwrap();
    let password = sql::generate_password();
    let backend = local.create(&request("wayne", &password)).await.unwrap();
    let req = BackendRequest {
        params: json!({"host": "127.0.0.1", "port": backend.port, "tls": "require", "admin_user": "postgres"}),
        ..create(&password)
    };
    let addr = driver.create(&req).await.unwrap();
    assert_eq!(addr, backend);
    driver.ensure_running("wayne").await.unwrap();
    driver.destroy("wayne").await.unwrap();
    driver.shutdown();
    sql::wait_ready(&backend, &password, READY).await.unwrap();
    local.destroy("wayne").await.unwrap();
}

#[test]
fn static_backend_parameters_are_checked() {
    let valid = json!({"host": "db.internal", "admin_user": "admin"});
    let addr = StaticDriver::address_from_params(&valid).unwrap();
    assert_eq!(
        addr,
        BackendAddress {
            host: "db.internal".into(),
            port: 5432,
            tls: "prefer".into(),
            tls_ca: None,
            admin_user: "admin".into(),
            admin_database: "postgres".into(),
        }
    );
    let cases = [
        (json!("db:5432"), "must be an object"),
        (json!({"admin_user": "a"}), "backend.host is required"),
        (
            json!({"host": "", "admin_user": "a"}),
            "backend.host is required",
        ),
        (
            json!({"host": "h", "admin_user": "a", "port": 0}),
            "from 1 to 65535",
        ),
        (
            json!({"host": "h", "admin_user": "a", "port": 65536}),
            "from 1 to 65535",
        ),
        (
            json!({"host": "h", "admin_user": "a", "port": "5432"}),
            "from 1 to 65535",
        ),
        (
            json!({"host": "h", "admin_user": "a", "tls": "verify-ca"}),
            "tls must be one of",
        ),
        (
            json!({"host": "h", "admin_user": "a", "tls": "verify-full"}),
            "tls_ca is required",
        ),
        (json!({"host": "h"}), "backend.admin_user is required"),
        (
            json!({"host": "h", "admin_user": ""}),
            "backend.admin_user is required",
        ),
        (
            json!({"host": "h", "admin_user": "a", "password": "x"}),
            "backend.password is not a known key",
        ),
        (
            json!({"host": 5, "admin_user": "a"}),
            "backend.host must be a string",
        ),
    ];
    for (params, expected) in cases {
        let error = StaticDriver::address_from_params(&params).unwrap_err();
        assert!(error.contains(expected), "{params}: {error}");
    }
}

#[test]
fn role_names_are_checked() {
    let long = "a".repeat(63);
    let too_long = "a".repeat(64);
    let cases: [(&str, bool); 22] = [
        ("app", true),
        ("reporter_2", true),
        ("_private", true),
        (&long, true),
        ("", false),
        (&too_long, false),
        ("2fast", false),
        ("App", false),
        ("with-dash", false),
        ("with space", false),
        ("dot.ted", false),
        ("quote\"d", false),
        ("pg_monitor", false),
        ("postgres", false),
        ("sluice_auth", false),
        ("sluice", false),
        ("sluice_next", false),
        ("app_owner", false),
        ("public", false),
        ("current_user", false),
        ("none", false),
        ("all", false),
    ];
    for (name, ok) in cases {
        assert_eq!(sql::valid_role_name(name).is_ok(), ok, "{name:?}");
    }
}

#[test]
fn passwords_and_verifiers_are_fresh() {
    let password = sql::generate_password();
    assert!(password.len() >= 24);
    assert!(password.bytes().all(|b| b.is_ascii_alphanumeric()));
    assert_ne!(password, sql::generate_password());
    let verifier = sql::scram_verifier(&password);
    assert!(verifier.starts_with("SCRAM-SHA-256$4096:"), "{verifier}");
    assert_ne!(
        verifier,
        sql::scram_verifier(&password),
        "a new salt each time"
    );
}
