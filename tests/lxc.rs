//! The `lxc` driver end to end, as root, with real unprivileged LXC containers: two
//! tenants created through the admin API, each reached by SNI through Sluice in its own
//! container (PostgreSQL as the container's init, shifted ids, no network, the plan's
//! memory limit as its cgroup's), a plan change resizing the cgroup live, suspend and
//! resume, a container's postgres killed and brought back by the supervisor, delete
//! removing container, rootfs and socket directory; and a Sluice killed mid-provisioning
//! finishing the job after its restart with no orphan container; a backend that cannot
//! restart failing its tenant until it can; a host lacking a prerequisite told what; and
//! an idle tenant's container stopped (scale to zero) and started by its next login.
//!
//! Needs lxc, uidmap and mmdebstrap and root's subordinate ids (scripts/test installs
//! them). The rootfs template is built once per machine (≈ 30–60 s, needs the Debian
//! mirror) into `$SLUICE_TEST_LXC_TEMPLATE` (default /var/tmp/sluice-test-lxc/template)
//! and shared by every run.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::Value;
use testkit::clients::{pg_connect, PgTarget};
use testkit::http::request;
use testkit::{Pki, SluiceConfig, SluiceProcess};

const BIN: &str = env!("CARGO_BIN_EXE_sluice");
const SUBID_BASE: u32 = 200_000;
const NANO_MIB: u64 = 256;
const LITE_MIB: u64 = 384;

fn template_dir() -> PathBuf {
    std::env::var_os("SLUICE_TEST_LXC_TEMPLATE")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/var/tmp/sluice-test-lxc/template"))
}

/// A Sluice with the lxc driver, its containers under `<dir>/lxc`; stops every container
/// left there when dropped (after Sluice itself, which stops them on a clean exit).
struct Env {
    dir: tempfile::TempDir,
    pki: Pki,
    sluice: Option<SluiceProcess>,
    /// More `[provisioner.lxc]` lines (the storage).
    lxc_extra: String,
}

impl Env {
    fn new() -> Env {
        Env::with_lxc("")
    }

    fn with_lxc(lxc_extra: &str) -> Env {
        let dir = tempfile::Builder::new()
            .prefix("sluice-lxc-")
            .tempdir()
            .unwrap();
        // The containers' root (uid 200000 on the host) passes through it.
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o711)).unwrap();
        let pki = Pki::generate(&dir.path().join("pki")).unwrap();
        let mut env = Env {
            dir,
            pki,
            sluice: None,
            lxc_extra: lxc_extra.to_owned(),
        };
        env.start();
        env
    }

    fn start(&mut self) {
        let mut config = SluiceConfig::new(&self.pki);
        config.plans = format!(
            "\n[plans.nano.backend]\ncores = 1\nmemory_mib = {NANO_MIB}\nswap_mib = 0\ndisk_gib = 1\n\
             [plans.lite.backend]\ncores = 2\nmemory_mib = {LITE_MIB}\nswap_mib = 0\ndisk_gib = 2\n\
             [provisioner]\ndriver = \"lxc\"\n[provisioner.lxc]\npath = {:?}\ntemplate = {:?}\n\
             subid_base = {SUBID_BASE}\n{}",
            self.lxc_path().display().to_string(),
            template_dir().display().to_string(),
            self.lxc_extra,
        );
        self.sluice = Some(
            SluiceProcess::start(BIN.as_ref(), &self.dir.path().join("sluice"), &config)
                .expect("starting sluice"),
        );
    }

    fn sluice(&self) -> &SluiceProcess {
        self.sluice.as_ref().expect("running")
    }

    fn lxc_path(&self) -> PathBuf {
        self.dir.path().join("lxc")
    }

    fn containers(&self) -> Vec<String> {
        let mut names: Vec<String> = std::fs::read_dir(self.lxc_path().join("containers"))
            .map(|entries| {
                entries
                    .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                    .collect()
            })
            .unwrap_or_default();
        names.sort();
        names
    }

    fn lxc(&self, command: &str, name: &str, args: &[&str]) -> String {
        let out = Command::new(command)
            .args(["-n", name, "-P"])
            .arg(self.lxc_path().join("containers"))
            .args(args)
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).trim().to_owned()
    }

    /// The host pid of the container's init (its postmaster), if it runs.
    fn init_pid(&self, name: &str) -> Option<u32> {
        self.lxc("lxc-info", name, &["-p", "-H"]).parse().ok()
    }

    fn memory_limit(&self, name: &str) -> u64 {
        let v2 = Path::new("/sys/fs/cgroup/cgroup.controllers").exists();
        let key = if v2 {
            "memory.max"
        } else {
            "memory.limit_in_bytes"
        };
        let value = self.lxc("lxc-cgroup", name, &[key]);
        value
            .parse()
            .unwrap_or_else(|_| panic!("{key} of {name}: {value:?}"))
    }

    fn call(&self, method: &str, path: &str, body: &str, status: u16) -> Value {
        let sluice = self.sluice();
        let r = sluice.api(method, path, body, "");
        assert_eq!(
            r.status,
            status,
            "{method} {path}: {}\n{}",
            r.body,
            sluice.log()
        );
        if r.body.is_empty() {
            Value::Null
        } else {
            r.json()
        }
    }

    fn wait_job(&self, job: i64, timeout: Duration) -> Value {
        let deadline = Instant::now() + timeout;
        loop {
            let job = self.call("GET", &format!("/v1/jobs/{job}"), "", 200);
            if job["state"] == "succeeded" || job["state"] == "failed" {
                return job;
            }
            assert!(
                Instant::now() < deadline,
                "job did not end: {job}\n{}",
                self.sluice().log()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Creates `id` on `plan` and waits for the job (the first one on a machine builds
    /// the template).
    fn provision(&self, id: &str, plan: &str) {
        let created = self.call(
            "POST",
            "/v1/tenants",
            &format!(r#"{{"id": "{id}", "plan": "{plan}"}}"#),
            202,
        );
        let job = self.wait_job(
            created["job"]["id"].as_i64().unwrap(),
            Duration::from_secs(600),
        );
        assert_eq!(job["state"], "succeeded", "{job}\n{}", self.sluice().log());
    }

    fn role(&self, tenant: &str) -> String {
        let made = self.call(
            "POST",
            &format!("/v1/tenants/{tenant}/roles"),
            r#"{"name": "app"}"#,
            201,
        );
        made["password"].as_str().unwrap().to_owned()
    }

    fn target(&self, tenant: &str, password: &str) -> PgTarget {
        PgTarget {
            user: "app".into(),
            ..PgTarget::tenant(self.sluice().addr, tenant, password, &self.pki.ca_cert)
        }
    }
}

impl Drop for Env {
    fn drop(&mut self) {
        drop(self.sluice.take());
        for name in self.containers() {
            if name.starts_with('.') {
                continue;
            }
            let _ = Command::new("lxc-stop")
                .args(["-k", "-n", &name, "-P"])
                .arg(self.lxc_path().join("containers"))
                .output();
        }
        // The btrfs filesystem the driver mounted in this test's directory (its loop
        // device goes with it: mount -o loop sets autoclear), and any loop device still
        // on this test's image.
        let containers = self.lxc_path().join("containers");
        if is_mount_point(&containers) {
            let out = Command::new("umount").arg(&containers).output().unwrap();
            if !out.status.success() {
                eprintln!(
                    "umount {}: {}",
                    containers.display(),
                    String::from_utf8_lossy(&out.stderr)
                );
                let _ = Command::new("umount").arg("-l").arg(&containers).output();
            }
        }
        let image = self.lxc_path().join("btrfs.img");
        if image.exists() {
            let out = Command::new("losetup")
                .arg("-j")
                .arg(&image)
                .output()
                .unwrap();
            for line in String::from_utf8_lossy(&out.stdout).lines() {
                if let Some(device) = line.split(':').next() {
                    let _ = Command::new("losetup").args(["-d", device]).output();
                }
            }
        }
    }
}

/// Whether `path` is a mount point (its device differs from its parent's).
fn is_mount_point(path: &Path) -> bool {
    use std::os::unix::fs::MetadataExt;
    match (
        std::fs::metadata(path),
        path.parent().map(std::fs::metadata),
    ) {
        (Ok(meta), Some(Ok(parent))) => meta.dev() != parent.dev(),
        _ => false,
    }
}

fn code(err: &tokio_postgres::Error) -> String {
    err.as_db_error()
        .map(|e| e.code().code().to_owned())
        .unwrap_or_else(|| format!("no SQLSTATE: {err}"))
}

/// The postgres uid and gid in the template, as the host sees them.
fn shifted_postgres_ids() -> (u32, u32) {
    let info: Value = serde_json::from_str(
        &std::fs::read_to_string(template_dir().join("sluice-template.json")).unwrap(),
    )
    .unwrap();
    (
        SUBID_BASE + info["postgres_uid"].as_u64().unwrap() as u32,
        SUBID_BASE + info["postgres_gid"].as_u64().unwrap() as u32,
    )
}

/// `Uid:` or `Gid:` of /proc/PID/status: real, effective, saved, filesystem.
fn proc_ids(pid: u32, key: &str) -> Vec<u32> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix(key))
        .unwrap()
        .split_whitespace()
        .map(|v| v.parse().unwrap())
        .collect()
}

fn namespace(pid: &str, kind: &str) -> PathBuf {
    std::fs::read_link(format!("/proc/{pid}/ns/{kind}")).unwrap()
}

/// The network interfaces the process sees (its namespace's /proc/net/dev).
fn interfaces(pid: u32) -> Vec<String> {
    std::fs::read_to_string(format!("/proc/{pid}/net/dev"))
        .unwrap()
        .lines()
        .skip(2)
        .filter_map(|l| Some(l.split(':').next()?.trim().to_owned()))
        .collect()
}

async fn query_marker(target: &PgTarget) -> Result<String, String> {
    let client = pg_connect(target).await.map_err(|e| code(&e))?;
    let row = client
        .query_one("SELECT name FROM marker", &[])
        .await
        .map_err(|e| code(&e))?;
    Ok(row.get(0))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_tenant_gets_its_own_unprivileged_container() {
    let env = tokio::task::block_in_place(Env::new);
    tokio::task::block_in_place(|| {
        env.provision("alpha", "nano");
        env.provision("beta", "lite");
    });
    assert_eq!(env.containers(), ["alpha", "beta"]);
    for (id, plan) in [("alpha", "nano"), ("beta", "lite")] {
        let tenant = env.call("GET", &format!("/v1/tenants/{id}"), "", 200);
        assert_eq!(tenant["status"], "active", "{tenant}");
        assert_eq!(tenant["plan"], plan);
        assert_eq!(tenant["backend"]["driver"], "lxc");
    }

    // Each tenant's role reaches its own server: a marker table written through one is
    // not in the other.
    let alpha = env.target("alpha", &env.role("alpha"));
    let beta = env.target("beta", &env.role("beta"));
    for (target, name) in [(&alpha, "alpha"), (&beta, "beta")] {
        let client = pg_connect(target).await.expect("login by SNI");
        client
            .batch_execute(&format!(
                "CREATE TABLE marker (name text); INSERT INTO marker VALUES ('{name}')"
            ))
            .await
            .unwrap();
    }
    assert_eq!(query_marker(&alpha).await.unwrap(), "alpha");
    assert_eq!(query_marker(&beta).await.unwrap(), "beta");

    // The server runs as the shifted postgres uid, in namespaces of its own, with no
    // network interface but loopback; its cgroup's memory limit is its plan's.
    let pid = env.init_pid("alpha").expect("alpha runs");
    let (uid, gid) = shifted_postgres_ids();
    assert_eq!(proc_ids(pid, "Uid:"), [uid; 4]);
    assert_eq!(proc_ids(pid, "Gid:"), [gid; 4]);
    for kind in ["user", "net", "mnt", "pid", "uts"] {
        assert_ne!(
            namespace(&pid.to_string(), kind),
            namespace("self", kind),
            "{kind} namespace"
        );
    }
    assert_eq!(interfaces(pid), ["lo"]);
    assert_eq!(env.memory_limit("alpha"), NANO_MIB << 20);
    assert_eq!(env.memory_limit("beta"), LITE_MIB << 20);
    let sockets = env.lxc_path().join("sockets/alpha");
    let meta = std::fs::metadata(&sockets).unwrap();
    assert_eq!(meta.permissions().mode() & 0o777, 0o700);

    // A plan change resizes the running container.
    let patched = env.call("PATCH", "/v1/tenants/alpha", r#"{"plan": "lite"}"#, 200);
    assert_eq!(patched["plan"], "lite", "{patched}");
    assert_eq!(env.memory_limit("alpha"), LITE_MIB << 20);
    assert_eq!(
        env.init_pid("alpha"),
        Some(pid),
        "resized without a restart"
    );

    // Suspend and resume.
    env.call("POST", "/v1/tenants/alpha/suspend", "", 200);
    assert_eq!(query_marker(&alpha).await.unwrap_err(), "28000");
    env.call("POST", "/v1/tenants/alpha/resume", "", 200);
    assert_eq!(query_marker(&alpha).await.unwrap(), "alpha");

    // The server killed: the supervisor starts the container again, the data is there.
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid as i32),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    let killed = Instant::now();
    let deadline = killed + Duration::from_secs(60);
    loop {
        match query_marker(&alpha).await {
            Ok(name) => {
                assert_eq!(name, "alpha");
                break;
            }
            Err(e) => assert!(
                Instant::now() < deadline,
                "alpha did not come back: {e}\n{}",
                env.sluice().log()
            ),
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    println!(
        "alpha answered again {:?} after its postgres was killed",
        killed.elapsed()
    );
    assert_ne!(env.init_pid("alpha"), Some(pid));
    assert!(env
        .sluice()
        .log()
        .contains("restarted the tenant's backend"));

    // Delete removes the container, its rootfs and its socket directory.
    let deleted = env.call("DELETE", "/v1/tenants/beta", "", 202);
    let job = tokio::task::block_in_place(|| {
        env.wait_job(
            deleted["job"]["id"].as_i64().unwrap(),
            Duration::from_secs(60),
        )
    });
    assert_eq!(job["state"], "succeeded", "{job}");
    assert_eq!(env.containers(), ["alpha"]);
    assert!(!env.lxc_path().join("sockets/beta").exists());
    assert_eq!(env.init_pid("beta"), None);
    assert_eq!(query_marker(&beta).await.unwrap_err(), "3D000");

    // A clean stop stops the containers.
    let mut env = env;
    let mut sluice = env.sluice.take().unwrap();
    sluice
        .signal_and_wait(nix::sys::signal::Signal::SIGTERM, Duration::from_secs(30))
        .unwrap();
    assert_eq!(env.init_pid("alpha"), None, "stopped with Sluice");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sluice_killed_mid_provisioning_finishes_with_one_container() {
    let mut env = tokio::task::block_in_place(Env::new);
    let created = env.call(
        "POST",
        "/v1/tenants",
        r#"{"id": "gamma", "plan": "nano"}"#,
        202,
    );
    let id = created["job"]["id"].as_i64().unwrap();
    // Kill Sluice as soon as the container is being made (its staging directory exists),
    // or, if the template must be built first, while that runs.
    let staging = env.lxc_path().join("containers/gamma.new");
    let deadline = Instant::now() + Duration::from_secs(600);
    while !staging.exists() {
        let job = env.call("GET", &format!("/v1/jobs/{id}"), "", 200);
        assert_ne!(
            job["state"], "succeeded",
            "ended before it could be interrupted"
        );
        assert!(Instant::now() < deadline, "the job never started: {job}");
        std::thread::sleep(Duration::from_millis(2));
    }
    env.sluice
        .as_mut()
        .unwrap()
        .signal_and_wait(nix::sys::signal::Signal::SIGKILL, Duration::from_secs(10))
        .expect("sluice killed");
    env.sluice = None;

    tokio::task::block_in_place(|| env.start());
    let job = tokio::task::block_in_place(|| env.wait_job(id, Duration::from_secs(300)));
    assert_eq!(job["state"], "succeeded", "{job}\n{}", env.sluice().log());
    assert!(job["attempts"].as_i64().unwrap() >= 2, "{job}");
    assert_eq!(
        env.containers(),
        ["gamma"],
        "no orphan or half-made container"
    );
    let gamma = env.target("gamma", &env.role("gamma"));
    let client = pg_connect(&gamma).await.expect("the tenant works");
    client.simple_query("SELECT 1").await.unwrap();
}

/// `sluice lxc prepare` names what the host lacks, with the fix, instead of failing
/// inside a job; and a create on a driver that cannot run answers 422 with the same.
#[test]
fn a_host_that_lacks_something_is_told_what_and_how_to_fix_it() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o711)).unwrap();
    let config = dir.path().join("sluice.toml");
    std::fs::write(
        &config,
        format!(
            "data_dir = {:?}\n[proxy]\nrequire_tls = false\n[provisioner]\ndriver = \"lxc\"\n\
             [provisioner.lxc]\nsubid_base = 900000\n",
            dir.path().join("data").display().to_string()
        ),
    )
    .unwrap();
    let out = Command::new(BIN)
        .args(["lxc", "prepare", "-c"])
        .arg(&config)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    assert!(
        stderr.contains("/etc/subuid gives root no subordinate ids 900000-965535")
            && stderr.contains("echo root:900000:65536 >> /etc/subuid")
            && stderr.contains("/etc/subgid gives root no subordinate ids"),
        "{stderr}"
    );

    // Without an lxc section or driver there is nothing to prepare.
    std::fs::write(&config, "[proxy]\nrequire_tls = false\n").unwrap();
    let out = Command::new(BIN)
        .args(["lxc", "prepare", "-c"])
        .arg(&config)
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("enables no lxc driver"));

    // A Sluice whose lxc driver cannot run serves on, and says why to a create.
    let pki = Pki::generate(&dir.path().join("pki")).unwrap();
    let mut config = SluiceConfig::new(&pki);
    config.plans =
        "\n[provisioner]\ndriver = \"lxc\"\n[provisioner.lxc]\nsubid_base = 900000\n".into();
    let sluice = SluiceProcess::start(BIN.as_ref(), &dir.path().join("sluice"), &config)
        .expect("starting sluice");
    let r = request(
        sluice.admin_addr,
        "POST",
        "/v1/tenants",
        Some(&sluice.admin_key),
        "Content-Type: application/json\r\n",
        br#"{"id": "delta"}"#,
    )
    .unwrap();
    assert_eq!(r.status, 422, "{}", r.body);
    assert!(
        r.body.contains("\\\"lxc\\\" cannot run here") && r.body.contains("900000"),
        "{}",
        r.body
    );
}

/// A backend that cannot come back: after 5 failed restarts its tenant is `failed` with
/// the reason (and an audit event); once it can start again the supervisor brings it
/// back and the tenant is `active` again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backend_that_cannot_restart_fails_its_tenant_until_it_can() {
    let env = tokio::task::block_in_place(Env::new);
    tokio::task::block_in_place(|| env.provision("omega", "nano"));
    let omega = env.target("omega", &env.role("omega"));
    pg_connect(&omega).await.expect("up");

    // Break the server's settings, then kill it: every restart fails at once.
    let plan_conf = env
        .lxc_path()
        .join("containers/omega/rootfs/etc/postgresql/15/main/conf.d/sluice-plan.conf");
    let good = std::fs::read_to_string(&plan_conf).unwrap();
    std::fs::write(&plan_conf, "shared_buffers = 'plenty'\n").unwrap();
    let pid = env.init_pid("omega").unwrap();
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid as i32),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    let wait_status = |status: &str, timeout: Duration| -> Value {
        let deadline = Instant::now() + timeout;
        loop {
            let tenant = env.call("GET", "/v1/tenants/omega", "", 200);
            if tenant["status"] == status {
                return tenant;
            }
            assert!(
                Instant::now() < deadline,
                "omega never became {status}: {tenant}\n{}",
                env.sluice().log()
            );
            std::thread::sleep(Duration::from_millis(250));
        }
    };
    let failed = tokio::task::block_in_place(|| wait_status("failed", Duration::from_secs(120)));
    let reason = failed["failed_reason"].as_str().unwrap_or_default();
    assert!(
        reason.contains("does not restart") && reason.contains("stopped right after starting"),
        "{failed}"
    );
    // The supervisor writes the status, then takes the tenant out of this process's
    // catalog: the API may show `failed` a moment before logins see it gone.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let code = query_marker(&omega).await.unwrap_err();
        if code == "3D000" || Instant::now() > deadline {
            assert_eq!(code, "3D000", "out of the catalog");
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let events = env.call(
        "GET",
        "/v1/audit-events?tenant=omega&action=tenant.backend_failed",
        "",
        200,
    );
    assert_eq!(events["events"].as_array().unwrap().len(), 1, "{events}");

    // Repaired: the next restart works and the tenant is active again.
    std::fs::write(&plan_conf, good).unwrap();
    tokio::task::block_in_place(|| wait_status("active", Duration::from_secs(90)));
    // The store says active at once; the catalog follows a moment later.
    let deadline = Instant::now() + Duration::from_secs(10);
    let client = loop {
        match pg_connect(&omega).await {
            Ok(client) => break client,
            Err(e) => assert!(Instant::now() < deadline, "omega is not back: {e}"),
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    client.simple_query("SELECT 1").await.unwrap();
    let events = env.call(
        "GET",
        "/v1/audit-events?tenant=omega&action=tenant.backend_recovered",
        "",
        200,
    );
    assert_eq!(events["events"].as_array().unwrap().len(), 1, "{events}");
}

/// Scale to zero with containers: a tenant idle for its `suspend_after_idle_s` has its
/// container stopped (no init process left, its memory freed); the next login starts
/// it, within the login, and finds the data; the supervisor leaves it stopped meanwhile.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_tenants_container_is_stopped_and_the_next_login_starts_it() {
    let env = Env::new();
    env.provision("doze", "nano");
    let password = env.role("doze");
    let target = env.target("doze", &password);
    let client = pg_connect(&target).await.expect("a first login");
    client
        .batch_execute("CREATE TABLE kept (n int); INSERT INTO kept VALUES (7)")
        .await
        .unwrap();
    drop(client);
    env.call(
        "PATCH",
        "/v1/tenants/doze",
        r#"{"limits": {"suspend_after_idle_s": 1}}"#,
        200,
    );
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let stats = env.call("GET", "/v1/tenants/doze/stats", "", 200);
        if stats["backend_parked"] == true && env.init_pid("doze").is_none() {
            break;
        }
        assert!(Instant::now() < deadline, "never parked: {stats}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Two supervisor rounds: a parked container is not restarted.
    tokio::time::sleep(Duration::from_secs(5)).await;
    assert!(env.init_pid("doze").is_none(), "restarted while parked");

    let started = Instant::now();
    let client = pg_connect(&target)
        .await
        .expect("a login starts the container");
    let n: i32 = client
        .query_one("select n from kept", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(n, 7);
    eprintln!("cold start of an lxc tenant: {:?}", started.elapsed());
    assert!(env.init_pid("doze").is_some());
}

/// Runs `btrfs args...` and returns its stdout; panics with its stderr on failure.
fn btrfs(args: &[&str]) -> String {
    let out = Command::new("btrfs").args(args).output().unwrap();
    assert!(
        out.status.success(),
        "btrfs {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// (referenced, exclusive, exclusive limit) bytes of the qgroup of the subvolume at
/// `path`, after a commit of the filesystem mounted at `mount`.
fn qgroup(mount: &Path, path: &Path) -> (u64, u64, Option<u64>) {
    btrfs(&["filesystem", "sync", mount.to_str().unwrap()]);
    let id = format!(
        "0/{}",
        btrfs(&["inspect-internal", "rootid", path.to_str().unwrap()]).trim()
    );
    let out = btrfs(&["qgroup", "show", "--raw", "-e", mount.to_str().unwrap()]);
    let fields: Vec<&str> = out
        .lines()
        .map(|l| l.split_whitespace().collect::<Vec<_>>())
        .find(|f| f.first() == Some(&id.as_str()))
        .unwrap_or_else(|| panic!("no qgroup {id}: {out}"));
    (
        fields[1].parse().unwrap(),
        fields[2].parse().unwrap(),
        fields[3].parse().ok(),
    )
}

/// The end of the PostgreSQL log in a container's rootfs.
fn postgres_log(rootfs: &Path) -> String {
    let Ok(entries) = std::fs::read_dir(rootfs.join("var/log/postgresql")) else {
        return "no PostgreSQL log".into();
    };
    let mut text = String::new();
    for entry in entries.flatten() {
        let log = std::fs::read_to_string(entry.path()).unwrap_or_default();
        let lines: Vec<&str> = log.lines().collect();
        text += &lines[lines.len().saturating_sub(30)..].join("\n");
    }
    text
}

/// Bytes in use on the filesystem of `path`.
fn used_bytes(path: &Path) -> u64 {
    let stat = nix::sys::statvfs::statvfs(path).unwrap();
    (stat.blocks() - stat.blocks_free()) * stat.fragment_size()
}

/// Inserts ~50 MB at a time into `fill` until a statement fails (its SQLSTATE and
/// message) or `max_mb` were written.
async fn fill(target: &PgTarget, max_mb: u64) -> (u64, Option<(String, String)>) {
    let client = match pg_connect(target).await {
        Ok(client) => client,
        Err(e) => return (0, Some((code(&e), e.to_string()))),
    };
    if let Err(e) = client
        .batch_execute("CREATE TABLE IF NOT EXISTS fill (v text)")
        .await
    {
        return (0, Some((code(&e), e.to_string())));
    }
    let mut written = 0;
    while written < max_mb {
        match client
            .batch_execute(
                "INSERT INTO fill SELECT repeat('x', 1000) FROM generate_series(1, 50000)",
            )
            .await
        {
            Ok(()) => written += 50,
            Err(e) => {
                let message = e
                    .as_db_error()
                    .map(|db| db.message().to_owned())
                    .unwrap_or_else(|| e.to_string());
                return (written, Some((code(&e), message)));
            }
        }
    }
    (written, None)
}

/// With `storage = "btrfs"` (an image file the driver makes and loop-mounts): each
/// rootfs is a snapshot sharing the template's blocks, its plan's `disk_gib` the limit
/// of its qgroup; a tenant that fills it gets PostgreSQL's disk-full error while another
/// writes on, the filesystem grows by no more than that; a plan change raises the limit
/// live; delete removes the subvolume and its qgroup.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn btrfs_storage_limits_each_tenant_to_its_plans_disk() {
    let env =
        tokio::task::block_in_place(|| Env::with_lxc("storage = \"btrfs\"\nbtrfs_image_gib = 8\n"));
    let started = Instant::now();
    tokio::task::block_in_place(|| {
        env.provision("alpha", "nano");
        env.provision("beta", "lite");
    });
    println!("two tenants on btrfs in {:?}", started.elapsed());
    let mount = env.lxc_path().join("containers");
    assert!(is_mount_point(&mount), "the driver mounted its image");
    let rootfs = |t: &str| mount.join(t).join("rootfs");

    // Snapshots: each shares nearly everything with the template. The plan's disk is
    // split between the rootfs and its WAL's own subvolume.
    let wal = |t: &str| rootfs(t).join("var/lib/postgresql/15/main/pg_wal");
    // The rootfs's limit is the plan's disk less the WAL's part (a quarter, at least
    // 256 MiB); the WAL has none (PostgreSQL's max_wal_size bounds it).
    let limits = |t: &str| {
        assert_eq!(qgroup(&mount, &wal(t)).2, None, "no limit on the WAL");
        let data = qgroup(&mount, &rootfs(t)).2.unwrap();
        (data, ((data >> 20) / 3).max(256) << 20)
    };
    for (tenant, gib) in [("alpha", 1u64), ("beta", 2)] {
        let (rfer, excl, _) = qgroup(&mount, &rootfs(tenant));
        let (_, wal_excl, _) = qgroup(&mount, &wal(tenant));
        let (data_limit, wal_limit) = limits(tenant);
        println!(
            "{tenant}: referenced {} MiB, exclusive {:.1} MiB (rootfs) + {:.1} MiB (pg_wal), \
             limits {} + {} MiB",
            rfer >> 20,
            excl as f64 / 1048576.0,
            wal_excl as f64 / 1048576.0,
            data_limit >> 20,
            wal_limit >> 20
        );
        assert_eq!(data_limit + wal_limit, gib << 30, "{tenant}'s limits");
        assert!(rfer > 300 << 20, "{tenant} references the template: {rfer}");
        assert!(
            (excl + wal_excl) * 10 <= rfer,
            "{tenant} owns ≤ 10 % of a full copy: {excl} + {wal_excl} of {rfer}"
        );
    }

    let alpha = env.target("alpha", &env.role("alpha"));
    let beta = env.target("beta", &env.role("beta"));
    let used_before = used_bytes(&mount);
    let image = env.lxc_path().join("btrfs.img");
    let image_before = {
        use std::os::unix::fs::MetadataExt;
        std::fs::metadata(&image).unwrap().blocks() * 512
    };

    let alpha_pid = env.init_pid("alpha").expect("alpha runs");
    // alpha fills its 1 GiB: PostgreSQL's own disk-full error, and the server stays up.
    let filling = Instant::now();
    let (written, error) = fill(&alpha, 4096).await;
    let (state, message) = error.expect("alpha stopped at its quota");
    println!(
        "alpha: {written} MB written in {:?}, then {state}: {message}",
        filling.elapsed()
    );
    // EDQUOT: PostgreSQL 15 gives ENOSPC and a short write its 53100 and other errnos
    // of a failed write XX000, with the kernel's words. Known gap (docs/drivers.md): in some
    // runs one of alpha's processes PANICs at the quota first (a write PostgreSQL must
    // not fail); the postmaster then restarts its processes and the client has lost its
    // connection (08006).
    // 53100 also for a short write at the quota ("wrote only 4096 of 8192 bytes").
    let disk_full = state == "53100"
        || (state == "XX000"
            && (message.contains("Disk quota exceeded")
                || message.contains("No space left on device")));
    assert!(
        disk_full || state == "08006",
        "{state}: {message}\n{}",
        postgres_log(&rootfs("alpha"))
    );
    assert!(written < 1024, "stopped within its quota: {written} MB");
    tokio::time::sleep(Duration::from_secs(2)).await;
    println!(
        "alpha's server after the quota: {}",
        if env.init_pid("alpha") == Some(alpha_pid) {
            "same postmaster (a PANIC of a child only restarts the children)"
        } else {
            "a new postmaster (restarted by the supervisor)"
        }
    );

    // beta writes on.
    let (written, error) = fill(&beta, 150).await;
    assert_eq!(error, None, "beta writes on");
    assert_eq!(written, 150);

    // The filesystem grew by alpha's quota and beta's writes, no more.
    let grown = used_bytes(&mount).saturating_sub(used_before);
    let image_grown = {
        use std::os::unix::fs::MetadataExt;
        (std::fs::metadata(&image).unwrap().blocks() * 512).saturating_sub(image_before)
    };
    println!(
        "btrfs used grew by {} MiB; the image file on the host by {} MiB",
        grown >> 20,
        image_grown >> 20
    );
    let bound = (1u64 << 30) + ((2 * 150) << 20) + (256 << 20);
    assert!(grown <= bound, "grown {grown} > {bound}");
    // The image file takes host blocks as btrfs allocates its chunks (1 GiB of data at
    // a time) and gives freed ones back by discard later: a chunk of slack.
    assert!(
        image_grown <= bound + (1 << 30),
        "image grown {image_grown} > {bound} + 1 GiB"
    );

    // A plan change raises alpha's limit live: it writes again.
    env.call("PATCH", "/v1/tenants/alpha", r#"{"plan": "lite"}"#, 200);
    let (data_limit, wal_limit) = limits("alpha");
    assert_eq!(data_limit + wal_limit, 2 << 30);
    // With room again it writes (a moment after the PATCH: the pool's connection may
    // have to be made again).
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        match fill(&alpha, 100).await {
            (100, None) => break,
            (_, error) => assert!(
                Instant::now() < deadline,
                "alpha does not write after the resize: {error:?}\n{}\n{}",
                postgres_log(&rootfs("alpha")),
                env.sluice().log()
            ),
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }

    // Delete removes beta's subvolume and its qgroup.
    let id = btrfs(&[
        "inspect-internal",
        "rootid",
        rootfs("beta").to_str().unwrap(),
    ])
    .trim()
    .to_owned();
    let deleted = env.call("DELETE", "/v1/tenants/beta", "", 202);
    let job = tokio::task::block_in_place(|| {
        env.wait_job(
            deleted["job"]["id"].as_i64().unwrap(),
            Duration::from_secs(120),
        )
    });
    assert_eq!(job["state"], "succeeded", "{job}");
    assert!(!mount.join("beta").exists());
    let subvolumes = btrfs(&["subvolume", "list", mount.to_str().unwrap()]);
    assert!(
        !subvolumes
            .lines()
            .any(|l| l.split_whitespace().nth(1) == Some(id.as_str())),
        "{subvolumes}"
    );
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        btrfs(&["filesystem", "sync", mount.to_str().unwrap()]);
        let qgroups = btrfs(&["qgroup", "show", mount.to_str().unwrap()]);
        if !qgroups
            .lines()
            .any(|l| l.split_whitespace().next() == Some(format!("0/{id}").as_str()))
        {
            break;
        }
        assert!(Instant::now() < deadline, "beta's qgroup stays: {qgroups}");
        std::thread::sleep(Duration::from_millis(500));
    }
}
