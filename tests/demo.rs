//! `sluice demo`: the README's first command, run as a person would (with a temporary
//! directory and an OS-assigned port), twice: stopped with Ctrl-C (SIGINT) the first
//! time; sent SIGHUP (it reloads and keeps serving) and then SIGTERM the second. Its
//! Postgres clusters never outlive it. And the README's operator quick start (the CLI
//! walkthrough, read from the README itself) run twice in a row against one demo: the
//! tenant it creates and deletes comes back under the same id.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

const BIN: &str = env!("CARGO_BIN_EXE_sluice");

/// Postgres processes whose command line mentions `dir`.
fn postgres_processes_under(dir: &std::path::Path) -> Vec<u32> {
    processes_under(dir, "postgres")
}

/// Starts the demo in `dir` and returns once it printed its instructions (its tenants
/// are ready and demo.json is written), with what it printed.
fn spawn_demo(dir: &std::path::Path) -> (std::process::Child, String) {
    spawn_demo_with(dir, &[])
}

/// [`spawn_demo`] with more arguments.
fn spawn_demo_with(dir: &std::path::Path, more: &[&str]) -> (std::process::Child, String) {
    let mut child = Command::new(BIN)
        .args([
            "demo",
            "--listen",
            "127.0.0.1:0",
            "--admin-listen",
            "127.0.0.1:0",
            "--dir",
        ])
        .arg(dir)
        .args(more)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(std::fs::File::create(dir.with_extension("stderr")).unwrap())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut printed = String::new();
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            printed.push_str(&line);
            printed.push('\n');
            // The last line of the instructions, printed once the tenants are ready and
            // demo.json is written.
            if line.starts_with("Facts for scripts:") {
                let _ = tx.send(printed.clone());
            }
        }
    });
    let printed = rx
        .recv_timeout(Duration::from_secs(120))
        .unwrap_or_else(|e| {
            panic!(
                "demo starts and listens ({e}); its stderr:\n{}",
                std::fs::read_to_string(dir.with_extension("stderr")).unwrap_or_default()
            )
        });
    (child, printed)
}

/// Stops the demo with `stop` and checks that it exits cleanly and leaves no Postgres
/// behind.
fn stop_demo(mut child: std::process::Child, dir: &std::path::Path, stop: Signal) {
    kill(Pid::from_raw(child.id() as i32), stop).unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        assert!(Instant::now() < deadline, "demo did not stop after {stop}");
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(status.success(), "{status:?}");
    let deadline = Instant::now() + Duration::from_secs(10);
    while !postgres_processes_under(dir).is_empty() {
        assert!(
            Instant::now() < deadline,
            "postgres left behind after {stop}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Both demo tenants answer psql with their own marker, with demo.json's facts.
fn serves_both_tenants(facts: &serde_json::Value) {
    for tenant in facts["tenants"].as_array().unwrap() {
        let out = Command::new("psql")
            .arg(tenant["connection_string"].as_str().unwrap())
            .args(["-XAtc", "select tenant from tenant_marker"])
            .env("PGPASSWORD", tenant["password"].as_str().unwrap())
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert_eq!(
            String::from_utf8_lossy(&out.stdout).trim(),
            tenant["id"].as_str().unwrap()
        );
    }
}

/// Runs the demo until it serves both tenants, then (with `hangup`) sends it SIGHUP and
/// checks that it still serves, and stops it with `stop`.
fn run_demo_once(dir: &std::path::Path, hangup: bool, stop: Signal) -> serde_json::Value {
    let (mut child, printed) = spawn_demo(dir);
    assert!(
        printed.contains("psql \"host=acme.db.example.test hostaddr=127.0.0.1"),
        "{printed}"
    );

    let facts: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.join("demo.json")).unwrap()).unwrap();
    let serves_both = || serves_both_tenants(&facts);
    serves_both();
    if hangup {
        let stderr = dir.with_extension("stderr");
        kill(Pid::from_raw(child.id() as i32), Signal::SIGHUP).unwrap();
        let deadline = Instant::now() + Duration::from_secs(20);
        while !std::fs::read_to_string(&stderr)
            .unwrap_or_default()
            .contains("config reloaded")
        {
            assert!(
                child.try_wait().unwrap().is_none(),
                "the demo died of SIGHUP"
            );
            assert!(Instant::now() < deadline, "no reload after SIGHUP");
            std::thread::sleep(Duration::from_millis(50));
        }
        serves_both();
    }
    assert!(
        !postgres_processes_under(dir).is_empty(),
        "tenant clusters run"
    );
    // The admin API answers with the key the demo printed.
    let admin: std::net::SocketAddr = facts["admin_url"]
        .as_str()
        .unwrap()
        .trim_start_matches("http://")
        .parse()
        .unwrap();
    let key = facts["admin_key"].as_str().unwrap();
    let pools = testkit::http::get(admin, "/v1/pools", Some(key));
    assert_eq!(pools.status, 200, "{}", pools.body);
    assert_eq!(pools.json()["pools"].as_array().unwrap().len(), 2);
    assert_eq!(testkit::http::get(admin, "/metrics", None).status, 200);

    stop_demo(child, dir, stop);
    facts
}

#[test]
fn demo_serves_two_tenants_and_reuses_them_on_the_next_run() {
    let dir = tempfile::Builder::new()
        .prefix("sluice-demo-")
        .tempdir()
        .unwrap();
    let first = run_demo_once(dir.path(), false, Signal::SIGINT);
    assert_eq!(first["tenants"][0]["id"], "acme");
    assert_eq!(first["tenants"][1]["id"], "globex");
    assert!(first["ca_cert"].as_str().unwrap().ends_with("ca.crt"));

    // The second run reuses clusters, CA and passwords; it reloads on SIGHUP and stops
    // on SIGTERM.
    let second = run_demo_once(dir.path(), true, Signal::SIGTERM);
    assert_eq!(
        first["tenants"][0]["password"],
        second["tenants"][0]["password"]
    );
    // A restart over the same store says nothing about tables that exist already.
    let log = std::fs::read_to_string(dir.path().with_extension("stderr")).unwrap();
    assert!(!log.contains("already exists"), "{log}");
    assert_eq!(
        std::fs::read(dir.path().join("tls/ca.crt")).unwrap().len(),
        std::fs::read(first["ca_cert"].as_str().unwrap())
            .unwrap()
            .len()
    );
}

/// The README's CLI walkthrough: the lines of the `sh` block that starts with
/// `export SLUICE_API=`, without that line (the test sets the variables itself, for the
/// demo's OS-assigned admin port).
fn readme_cli_walkthrough() -> Vec<String> {
    let readme =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md")).unwrap();
    let block = readme
        .split("```sh\n")
        .find(|b| b.starts_with("export SLUICE_API="))
        .expect("the README's CLI walkthrough")
        .split("```")
        .next()
        .unwrap();
    block
        .lines()
        .skip(1)
        .filter(|l| !l.trim().is_empty())
        .map(str::to_owned)
        .collect()
}

/// The value of a `key  value` line of the CLI's table output.
fn field(out: &str, key: &str) -> Option<String> {
    out.lines().find_map(|l| {
        let (k, v) = l.split_once(char::is_whitespace)?;
        (k == key).then(|| v.trim().to_owned())
    })
}

#[test]
fn the_readme_quick_start_runs_twice_in_a_row() {
    let dir = tempfile::Builder::new()
        .prefix("sluice-quick-start-")
        .tempdir()
        .unwrap();
    let demo_dir = dir.path().join("sluice-demo");
    let (child, _) = spawn_demo(&demo_dir);
    let facts: serde_json::Value =
        serde_json::from_slice(&std::fs::read(demo_dir.join("demo.json")).unwrap()).unwrap();
    // What the walkthrough's `--cert chain.pem --key key.pem` read: a certificate for
    // the host name it adds, from a CA of the "customer".
    let ca = localpg::tls::CertificateAuthority::generate("Shop CA").unwrap();
    let issued = ca.issue(&["db.shop.example"]).unwrap();
    std::fs::write(dir.path().join("chain.pem"), &issued.cert_pem).unwrap();
    std::fs::write(dir.path().join("key.pem"), &issued.key_pem).unwrap();
    let bin_dir = std::path::Path::new(BIN).parent().unwrap();
    let path = format!("{}:{}", bin_dir.display(), std::env::var("PATH").unwrap());
    let lines = readme_cli_walkthrough();
    assert!(lines
        .iter()
        .any(|l| l.starts_with("sluice tenants delete shop")));

    for round in 1..=2 {
        let mut key_id: Option<String> = None;
        let mut password: Option<String> = None;
        for line in &lines {
            // `<id>`: the key the walkthrough created a line earlier.
            let command = match &key_id {
                Some(id) => line.replace("<id>", id),
                None => line.clone(),
            };
            let out = Command::new("sh")
                .args(["-c", &command])
                .current_dir(dir.path())
                .env("PATH", &path)
                .env("SLUICE_API", facts["admin_url"].as_str().unwrap())
                .env("SLUICE_TOKEN", facts["admin_key"].as_str().unwrap())
                .output()
                .unwrap();
            let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
            assert!(
                out.status.success(),
                "round {round}: {command}\n{stdout}{}",
                String::from_utf8_lossy(&out.stderr)
            );
            if line.starts_with("sluice roles create") {
                password = field(&stdout, "password");
                // The role logs in through the proxy, as the curl walkthrough's psql.
                let out = Command::new("psql")
                    .arg(format!(
                        "host=shop.db.example.test hostaddr=127.0.0.1 port={} user=app \
                         dbname=app sslmode=verify-full sslrootcert={}",
                        facts["proxy"].as_str().unwrap().rsplit(':').next().unwrap(),
                        facts["ca_cert"].as_str().unwrap()
                    ))
                    .args(["-XAtc", "select current_user"])
                    .env("PGPASSWORD", password.as_deref().expect("a password"))
                    .output()
                    .unwrap();
                assert!(
                    out.status.success(),
                    "round {round}: psql: {}",
                    String::from_utf8_lossy(&out.stderr)
                );
                assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "app");
            }
            if line.starts_with("sluice keys create") {
                key_id = field(&stdout, "id");
            }
        }
        assert!(password.is_some() && key_id.is_some(), "round {round}");
    }
    stop_demo(child, &demo_dir, Signal::SIGTERM);
}

/// Processes whose command line mentions `dir` and `word`.
fn processes_under(dir: &std::path::Path, word: &str) -> Vec<u32> {
    let needle = dir.display().to_string();
    std::fs::read_dir("/proc")
        .unwrap()
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            std::fs::read(format!("/proc/{pid}/cmdline"))
                .map(|c| String::from_utf8_lossy(&c).replace('\0', " "))
                .is_ok_and(|c| c.contains(word) && c.contains(&needle))
        })
        .collect()
}

#[test]
fn the_demo_runs_as_a_fleet_of_three_behind_haproxy() {
    let dir = tempfile::tempdir().unwrap();
    let demo_dir = dir.path().join("demo");
    let (child, printed) = spawn_demo_with(&demo_dir, &["--replicas", "3"]);
    let facts: serde_json::Value =
        serde_json::from_slice(&std::fs::read(demo_dir.join("demo.json")).unwrap()).unwrap();
    assert!(
        printed.contains(facts["proxy"].as_str().unwrap()),
        "{printed}"
    );
    assert_eq!(
        processes_under(&demo_dir, "serve").len(),
        2,
        "two replicas beside the demo"
    );
    // Both tenants answer through HAProxy, whichever replica each connection lands on.
    for _ in 0..4 {
        serves_both_tenants(&facts);
    }
    let admin: std::net::SocketAddr = facts["admin_url"]
        .as_str()
        .unwrap()
        .trim_start_matches("http://")
        .parse()
        .unwrap();
    let replicas = testkit::http::get(admin, "/v1/replicas", facts["admin_key"].as_str());
    let replicas: serde_json::Value = serde_json::from_str(&replicas.body).unwrap();
    let ids: Vec<&str> = replicas["replicas"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids.len(), 3, "{replicas}");
    stop_demo(child, &demo_dir, Signal::SIGTERM);
    assert!(
        processes_under(&demo_dir, "serve").is_empty(),
        "replicas left behind"
    );
    assert!(
        processes_under(&demo_dir, "haproxy").is_empty(),
        "haproxy left behind"
    );
}
