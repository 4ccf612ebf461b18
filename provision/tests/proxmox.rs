//! The `proxmox` driver against testkit's fake Proxmox VE, whose containers are real
//! PostgreSQL clusters on their own loopback addresses: a backend made, found again,
//! set up and logged into; a rejected token; node choice and a full cluster; concurrent
//! creations contending for locks and VMIDs; failed tasks; both error formats; a re-run
//! after a crash mid-create; resize; destroy with purge, and of nothing.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use provision::proxmox::{tenant_tag, PlanSize, PveTls, Timings, HANDOFF_MARKER};
use provision::sql::{self, APP_DATABASE, AUTH_USER};
use provision::{BackendAddress, BackendRequest, Driver, ProxmoxConfig, ProxmoxDriver};
use serde_json::json;
use testkit::fake_pve::{FakePve, FakePveOptions};
use tokio_postgres::config::SslMode;
use tokio_postgres_rustls::MakeRustlsConnect;

const READY: Duration = Duration::from_secs(30);
const SLUICE_HOSTS: [&str; 2] = ["10.20.0.0/24", "127.0.0.1"];

fn config(fake: &FakePve) -> ProxmoxConfig {
    let plans = HashMap::from([
        (
            "nano".to_owned(),
            PlanSize {
                cores: 1,
                memory_mib: 512,
                swap_mib: 256,
                disk_gib: 4,
            },
        ),
        (
            "pro".to_owned(),
            PlanSize {
                cores: 4,
                memory_mib: 4096,
                swap_mib: 1024,
                disk_gib: 16,
            },
        ),
    ]);
    ProxmoxConfig {
        url: fake.url.clone(),
        token_id: fake.token_id.clone(),
        token_secret: fake.token_secret.clone(),
        tls: PveTls::Fingerprint(fake.fingerprint.clone()),
        nodes: Vec::new(),
        ostemplate: "local:vztmpl/sluice-pg15.tar.zst".to_owned(),
        storage: "local-lvm".to_owned(),
        bridge: None,
        sluice_hosts: SLUICE_HOSTS.iter().map(|h| h.to_string()).collect(),
        plans,
        default_plan: PlanSize::default(),
    }
}

fn driver(config: ProxmoxConfig) -> ProxmoxDriver {
    ProxmoxDriver::new(config).unwrap().with_timings(Timings {
        poll: Duration::from_millis(50),
        task: Duration::from_secs(60),
        settle: Duration::from_secs(30),
    })
}

fn request(tenant: &str, plan: &str, admin_password: &str) -> BackendRequest {
    BackendRequest {
        tenant: tenant.to_owned(),
        plan: Some(plan.to_owned()),
        params: json!({}),
        admin_password: admin_password.to_owned(),
    }
}

fn fast() -> FakePveOptions {
    FakePveOptions {
        auth_failure_delay: Duration::from_millis(100),
        ..Default::default()
    }
}

/// Logs in as `user` over TLS (not verified), as a client would.
async fn login(
    addr: &BackendAddress,
    user: &str,
    password: &str,
) -> Result<tokio_postgres::Client, tokio_postgres::Error> {
    let mut config = tokio_postgres::Config::new();
    config
        .host(&addr.host)
        .port(addr.port)
        .user(user)
        .password(password)
        .dbname(APP_DATABASE)
        .ssl_mode(SslMode::Require)
        .connect_timeout(Duration::from_secs(10));
    let tls = pooler::TlsConnectors::new().unverified();
    let (client, connection) = config
        .connect(MakeRustlsConnect::new(Arc::unwrap_or_clone(tls)))
        .await?;
    tokio::spawn(connection);
    Ok(client)
}

fn count(fake: &FakePve, key: &str) -> usize {
    fake.request_counts().get(key).copied().unwrap_or(0)
}

#[tokio::test]
async fn a_container_is_made_once_set_up_logged_into_resized_and_purged() {
    let fake = FakePve::start(fast()).await.unwrap();
    let driver = driver(config(&fake));
    assert_eq!(driver.name(), "proxmox");
    let password = sql::generate_password();
    let req = request("acme", "nano", &password);
    let addr = driver.create(&req).await.unwrap();

    let guests = fake.guests();
    assert_eq!(guests.len(), 1);
    let ct = &guests[0];
    assert_eq!(
        (
            addr.host.clone(),
            addr.port,
            addr.tls.as_str(),
            addr.admin_user.as_str()
        ),
        (ct.address.to_string(), 5432, "require", "postgres")
    );
    let c = &ct.config;
    assert_eq!(c["unprivileged"], "1");
    assert_eq!(
        (
            c["cores"].as_str(),
            c["memory"].as_str(),
            c["swap"].as_str()
        ),
        ("1", "512", "256")
    );
    assert!(
        c["rootfs"].starts_with("local-lvm:") && c["rootfs"].ends_with(",size=4G"),
        "{c:?}"
    );
    assert!(
        c["net0"].contains("firewall=1") && c["net0"].contains("bridge=vmbr0"),
        "{c:?}"
    );
    assert_eq!(c["tags"], format!("sluice;{}", tenant_tag("acme")));
    assert_eq!(c["hostname"], "acme");
    // The firewall: inbound dropped but 5432 from the Sluice hosts.
    let fw = &ct.firewall;
    assert_eq!(fw.options["enable"], "1");
    assert_eq!(fw.options["policy_in"], "DROP");
    let mut set = fw.ipsets["sluice"].clone();
    set.sort();
    assert_eq!(set, SLUICE_HOSTS);
    assert_eq!(fw.rules.len(), 1);
    let rule = &fw.rules[0];
    assert_eq!(
        (
            rule["type"].as_str(),
            rule["action"].as_str(),
            rule["proto"].as_str()
        ),
        ("in", "ACCEPT", "tcp")
    );
    assert_eq!(
        (
            rule["dport"].as_str(),
            rule["source"].as_str(),
            rule["enable"].as_str()
        ),
        ("5432", "+sluice", "1")
    );
    // The first boot consumed the handoff line; the password is nowhere on Proxmox.
    assert!(
        !ct.authorized_keys.contains(HANDOFF_MARKER),
        "{}",
        ct.authorized_keys
    );
    assert!(!format!("{:?}", fake.guests()).contains(&password));

    // Again: the same container, no second create.
    assert_eq!(driver.create(&req).await.unwrap(), addr);
    assert_eq!(fake.guests().len(), 1);
    assert_eq!(count(&fake, "POST nodes/pve1/lxc"), 1);

    // What the job worker does next, then a tenant role logs in.
    sql::wait_ready(&addr, &password, READY).await.unwrap();
    let admin = sql::connect_admin(&addr, &password, None).await.unwrap();
    let auth_password = sql::generate_password();
    sql::ensure_tenant_setup(&admin, AUTH_USER, &sql::scram_verifier(&auth_password))
        .await
        .unwrap();
    let role_password = sql::generate_password();
    sql::create_role(&admin, "reporter", &sql::scram_verifier(&role_password))
        .await
        .unwrap();
    let app = login(&addr, "reporter", &role_password).await.unwrap();
    app.batch_execute("CREATE TABLE notes (body text); INSERT INTO notes VALUES ('hi')")
        .await
        .unwrap();
    let ssl: bool = app
        .query_one(
            "SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert!(ssl);
    assert!(login(&addr, "reporter", "wrong").await.is_err());

    // Trusting the CA instead of a pinned fingerprint works too; a wrong pin does not.
    let mut by_ca = config(&fake);
    by_ca.tls = PveTls::Ca(fake.ca_cert.clone());
    driver_with(by_ca).ensure_running("acme").await.unwrap();
    let mut pinned_wrong = config(&fake);
    pinned_wrong.tls = PveTls::Fingerprint("00".repeat(32));
    let e = format!(
        "{:#}",
        driver_with(pinned_wrong)
            .ensure_running("acme")
            .await
            .unwrap_err()
    );
    assert!(e.contains("fingerprint"), "{e}");

    // A bigger plan: cores, memory and swap at once, the disk grown; a lock on the way
    // is waited out.
    fake.fail_requests("PUT", "/config", 500, "CT is locked (backup)", 1);
    driver.resize("acme", Some("pro")).await.unwrap();
    let c = fake.guests()[0].config.clone();
    assert_eq!(
        (
            c["cores"].as_str(),
            c["memory"].as_str(),
            c["swap"].as_str()
        ),
        ("4", "4096", "1024")
    );
    assert!(c["rootfs"].ends_with(",size=16G"), "{c:?}");
    // A smaller one keeps the disk.
    driver.resize("acme", Some("nano")).await.unwrap();
    assert!(fake.guests()[0].config["rootfs"].ends_with(",size=16G"));

    drop((app, admin));
    driver.destroy("acme").await.unwrap();
    assert!(fake.guests().is_empty());
    let destroyed = fake.destroyed();
    assert_eq!(destroyed.len(), 1);
    assert_eq!(destroyed[0].1.get("purge").map(String::as_str), Some("1"));
    assert!(sql::connect_admin(&addr, &password, None).await.is_err());
    // Nothing left: still success.
    driver.destroy("acme").await.unwrap();
    driver.destroy("never-made").await.unwrap();
}

fn driver_with(config: ProxmoxConfig) -> ProxmoxDriver {
    driver(config)
}

#[tokio::test]
async fn a_rejected_token_is_a_clear_error() {
    let fake = FakePve::start(fast()).await.unwrap();
    let mut bad = config(&fake);
    bad.token_secret = "not-the-secret".to_owned();
    let e = driver(bad)
        .create(&request("acme", "nano", &sql::generate_password()))
        .await
        .unwrap_err();
    let text = format!("{e:#}");
    assert!(text.contains("rejected the API token"), "{text}");
    assert!(
        text.contains("401") && text.contains("Authentication failed!"),
        "{text}"
    );
    assert!(
        text.contains(&fake.token_id) && !text.contains("not-the-secret"),
        "{text}"
    );
    assert!(fake.guests().is_empty());
}

#[tokio::test]
async fn the_node_with_most_free_memory_is_chosen_and_a_full_cluster_refused() {
    let fake = FakePve::start(FakePveOptions {
        nodes: vec![("pve1".to_owned(), 2048), ("pve2".to_owned(), 4096)],
        ..fast()
    })
    .await
    .unwrap();
    let driver = driver(config(&fake));
    let e = driver
        .create(&request("big", "pro", &sql::generate_password()))
        .await
        .unwrap_err();
    let text = format!("{e:#}");
    assert!(
        text.contains("no Proxmox node can hold tenant big's container (4096 MiB"),
        "{text}"
    );
    assert!(
        text.contains("pve1 1536 MiB free") && text.contains("pve2 3584 MiB free"),
        "{text}"
    );
    assert!(fake.guests().is_empty());

    driver
        .create(&request("small", "nano", &sql::generate_password()))
        .await
        .unwrap();
    assert_eq!(fake.guests()[0].node, "pve2");
    driver.destroy("small").await.unwrap();
}

#[tokio::test]
async fn concurrent_creations_contend_for_locks_and_vmids_and_all_succeed() {
    let fake = FakePve::start(FakePveOptions {
        storage_lock_conflicts: true,
        task_duration: Duration::from_millis(400),
        ..fast()
    })
    .await
    .unwrap();
    // Two replicas of Sluice, each with its own driver, and two jobs in one of them.
    let one = driver(config(&fake));
    let two = driver(config(&fake));
    let (pa, pb, pc) = (
        sql::generate_password(),
        sql::generate_password(),
        sql::generate_password(),
    );
    let (ra, rb, rc) = (
        request("alpha", "nano", &pa),
        request("beta", "nano", &pb),
        request("gamma", "nano", &pc),
    );
    let (a, b, c) = tokio::join!(one.create(&ra), two.create(&rb), one.create(&rc));
    let (a, b, c) = (a.unwrap(), b.unwrap(), c.unwrap());
    let guests = fake.guests();
    assert_eq!(guests.len(), 3, "{guests:?}");
    let mut hosts = vec![a.host.clone(), b.host.clone(), c.host.clone()];
    hosts.sort();
    hosts.dedup();
    assert_eq!(hosts.len(), 3);
    // At least one creation lost a race (a storage lock or a VMID) and was redone.
    assert!(
        count(&fake, "POST nodes/pve1/lxc") > 3,
        "{:?}",
        fake.request_counts()
    );
    for (addr, password) in [(&a, &pa), (&b, &pb), (&c, &pc)] {
        sql::wait_ready(addr, password, READY).await.unwrap();
    }
    for tenant in ["alpha", "beta", "gamma"] {
        one.destroy(tenant).await.unwrap();
    }
    assert!(fake.guests().is_empty());
}

#[tokio::test]
async fn a_failed_task_reports_its_exit_status_and_a_retry_adopts_the_container() {
    let fake = FakePve::start(fast()).await.unwrap();
    let driver = driver(config(&fake));
    let password = sql::generate_password();
    let req = request("acme", "nano", &password);
    fake.fail_next_task("vzstart", "startup for container '100' failed");
    let e = format!("{:#}", driver.create(&req).await.unwrap_err());
    assert!(e.contains("startup for container '100' failed"), "{e}");
    assert!(e.contains(":vzstart:100:"), "the UPID is named: {e}");

    // The job is retried: the stopped container is found and started, not made again.
    let addr = driver.create(&req).await.unwrap();
    assert_eq!(fake.guests().len(), 1);
    assert_eq!(count(&fake, "POST nodes/pve1/lxc"), 1);
    sql::wait_ready(&addr, &password, READY).await.unwrap();

    // A failed creation removes its container; the error carries the exit status.
    fake.fail_next_task(
        "vzcreate",
        "unable to create CT 101 - no space left on device",
    );
    let e = format!(
        "{:#}",
        driver
            .create(&request("globex", "nano", &sql::generate_password()))
            .await
            .unwrap_err()
    );
    assert!(e.contains("no space left on device"), "{e}");
    assert_eq!(fake.guests().len(), 1);
    driver.destroy("acme").await.unwrap();
}

#[tokio::test]
async fn errors_in_the_old_format_are_read_from_the_reason_phrase() {
    let fake = FakePve::start(FakePveOptions {
        legacy_errors: true,
        ..fast()
    })
    .await
    .unwrap();
    let driver = driver(config(&fake));
    // Not retried: a permission error, its text only in the reason phrase.
    fake.fail_requests(
        "POST",
        "pve1/lxc",
        403,
        "Permission check failed (/vms/100, VM.Allocate)",
        1,
    );
    let e = format!(
        "{:#}",
        driver
            .create(&request("acme", "nano", &sql::generate_password()))
            .await
            .unwrap_err()
    );
    assert!(
        e.contains("HTTP 403: Permission check failed (/vms/100, VM.Allocate)"),
        "{e}"
    );

    // Retried: a flock timeout, then the inter-node proxy's 596, then a VMID race.
    fake.fail_requests(
        "POST",
        "pve1/lxc",
        500,
        "can't lock file '/var/lock/pve-manager/pve-storage-local-lvm' - got timeout",
        1,
    );
    fake.fail_requests("GET", "status/current", 596, "Connection timed out", 1);
    fake.fail_requests(
        "POST",
        "pve1/lxc",
        500,
        "CT 100 already exists on node 'pve1'",
        1,
    );
    let password = sql::generate_password();
    let addr = driver
        .create(&request("acme", "nano", &password))
        .await
        .unwrap();
    assert_eq!(fake.guests().len(), 1);
    sql::wait_ready(&addr, &password, READY).await.unwrap();

    // A container that vanished between looking and deleting: done.
    fake.fail_requests(
        "DELETE",
        "lxc/100",
        500,
        "Configuration file 'nodes/pve1/lxc/100.conf' does not exist",
        1,
    );
    driver.destroy("acme").await.unwrap();
}

#[tokio::test]
async fn a_rerun_after_a_crash_mid_create_finds_the_container() {
    let fake = FakePve::start(FakePveOptions {
        task_duration: Duration::from_millis(1500),
        ..fast()
    })
    .await
    .unwrap();
    let password = sql::generate_password();
    let req = request("acme", "nano", &password);
    // The first run dies while Proxmox is still creating the container (its tags are
    // not written yet: it is locked `create`).
    let first = driver(config(&fake));
    let crashed = {
        let req = req.clone();
        tokio::spawn(async move { first.create(&req).await })
    };
    let mut waited = Duration::ZERO;
    while !fake
        .guests()
        .iter()
        .any(|g| g.lock.as_deref() == Some("create"))
    {
        assert!(waited < READY, "no creation seen");
        tokio::time::sleep(Duration::from_millis(20)).await;
        waited += Duration::from_millis(20);
    }
    crashed.abort();
    let _ = crashed.await;

    // The re-run waits for that creation, recognises the container, and adopts it.
    let rerun = driver(config(&fake));
    let addr = rerun.create(&req).await.unwrap();
    assert_eq!(fake.guests().len(), 1, "{:?}", fake.guests());
    assert_eq!(count(&fake, "POST nodes/pve1/lxc"), 1);
    sql::wait_ready(&addr, &password, READY).await.unwrap();
    rerun.destroy("acme").await.unwrap();
    assert!(fake.guests().is_empty());
}
