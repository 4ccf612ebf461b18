//! Scratch measurements (not committed).
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use std::time::{Duration, Instant};
use testkit::fleet::Fleet;
use testkit::pgbench::Pgbench;
use testkit::{SluiceConfig, SluiceProcess};

const BIN: &str = env!("CARGO_BIN_EXE_sluice");

#[test]
fn scratch_transaction_mode_persistent_clients() {
    let mut fleet = Fleet::start(BIN.as_ref(), 3, "roundrobin", |config| {
        config.shutdown_grace_s = 8;
        config.log = "info".into();
        config.default_pool = vec!["mode = \"transaction\"".into()];
    })
    .expect("fleet");
    let target = fleet.target();
    let init = testkit::pgbench(&target, &["-i", "-s", "1", "-q"]);
    assert!(init.success, "{}", init.stderr);
    let dir = fleet.dir.path().to_owned();
    let steady = Pgbench::start(
        &target,
        &["-c", "16", "-j", "2", "-T", "30"],
        &dir,
        "steady",
    );
    std::thread::sleep(Duration::from_secs(4));
    let new = fleet.launch(0).unwrap();
    let mut old = fleet.replicas[0].replace(new).unwrap();
    let t = Instant::now();
    kill(Pid::from_raw(old.pid() as i32), Signal::SIGTERM).unwrap();
    while old.is_running() {
        std::thread::sleep(Duration::from_millis(50));
    }
    eprintln!("old replica 0 exited {:?} after SIGTERM", t.elapsed());
    let out = steady.finish();
    eprintln!(
        "processed {} failed {:?} aborted {} first {:?}",
        out.processed(),
        out.failed(),
        out.aborted(),
        out.first_error()
    );
    eprintln!("{}", out.stderr);
}

#[test]
fn scratch_embedded_store_beside() {
    let base = tempfile::tempdir().unwrap();
    let pki = testkit::Pki::generate(&base.path().join("pki")).unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut config = SluiceConfig::new(&pki);
    config.listen = format!("127.0.0.1:{port}");
    config.log = "info".into();
    let a_dir = base.path().join("a");
    let a = SluiceProcess::start(BIN.as_ref(), &a_dir, &config).unwrap();
    let b_dir = base.path().join("b");
    std::fs::create_dir_all(&b_dir).unwrap();
    std::os::unix::fs::symlink(a_dir.join("data"), b_dir.join("data")).unwrap();
    let b = SluiceProcess::start(BIN.as_ref(), &b_dir, &config);
    match &b {
        Ok(b) => {
            eprintln!("B started; B log:\n{}", b.plain_log());
            let r = b.api("GET", "/v1/tenants", "", "");
            eprintln!("B GET /v1/tenants: {} {}", r.status, r.body);
        }
        Err(e) => eprintln!("B failed: {e:#}"),
    }
    drop(a);
    std::thread::sleep(Duration::from_secs(2));
    if let Ok(b) = &b {
        let r = b.api("GET", "/v1/tenants", "", "");
        eprintln!(
            "after A stopped, B GET /v1/tenants: {} {}",
            r.status, r.body
        );
    }
}
