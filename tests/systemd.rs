//! Running under systemd: `configs/systemd/sluice.service` passes `systemd-analyze
//! verify`, and a real `sluice serve` sends READY=1 (then RELOADING=1/READY=1 on SIGHUP
//! and STOPPING=1 on SIGTERM) to the datagram socket named by `$NOTIFY_SOCKET`, as
//! `Type=notify` expects, and nothing else does (the postmasters it starts do not
//! inherit the socket).

use std::io::{BufRead, BufReader};
use std::os::unix::net::UnixDatagram;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use testkit::{Pki, SluiceConfig};

const BIN: &str = env!("CARGO_BIN_EXE_sluice");
const UNIT: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/configs/systemd/sluice.service"
);
const SYSTEMD_ANALYZE: &str = "/usr/bin/systemd-analyze";

#[test]
fn the_unit_file_passes_systemd_analyze_verify() {
    let unit = std::fs::read_to_string(UNIT).expect("configs/systemd/sluice.service");
    for line in [
        "Type=notify",
        "ExecReload=/bin/kill -HUP $MAINPID",
        "ExecStart=/usr/local/bin/sluice serve --config /etc/sluice/sluice.toml",
    ] {
        assert!(
            unit.lines().any(|l| l == line),
            "the unit has {line:?}:\n{unit}"
        );
    }
    if !Path::new(SYSTEMD_ANALYZE).exists() {
        eprintln!("skipped: {SYSTEMD_ANALYZE} is not installed");
        return;
    }
    // verify checks that the commands exist: point them at the binary under test.
    let dir = tempfile::Builder::new()
        .prefix("sluice-unit-")
        .tempdir()
        .unwrap();
    let path = dir.path().join("sluice.service");
    std::fs::write(&path, unit.replace("/usr/local/bin/sluice", BIN)).unwrap();
    let out = Command::new(SYSTEMD_ANALYZE)
        .args(["verify", "--man=no"])
        .arg(&path)
        .output()
        .expect("running systemd-analyze verify");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "systemd-analyze verify:\n{stderr}");
    // It exits 0 on lines it ignores, with a warning naming the file.
    assert!(
        !stderr.contains("sluice.service"),
        "systemd-analyze verify warns:\n{stderr}"
    );
}

/// Sluice, started like systemd would start it, with `$NOTIFY_SOCKET`.
struct Notified {
    child: Child,
    socket: UnixDatagram,
    _dir: tempfile::TempDir,
}

impl Notified {
    fn start() -> Notified {
        let dir = tempfile::Builder::new()
            .prefix("sluice-notify-")
            .tempdir()
            .unwrap();
        let pki = Pki::generate(&dir.path().join("pki")).unwrap();
        let config_path = dir.path().join("sluice.toml");
        let mut config = SluiceConfig::new(&pki);
        config.shutdown_grace_s = 1;
        std::fs::write(&config_path, config.to_toml(&dir.path().join("data"))).unwrap();
        let socket_path = dir.path().join("notify.sock");
        let socket = UnixDatagram::bind(&socket_path).expect("binding the notify socket");
        socket
            .set_read_timeout(Some(Duration::from_secs(1)))
            .unwrap();
        let child = Command::new(BIN)
            .args(["serve", "--config"])
            .arg(&config_path)
            .env("NOTIFY_SOCKET", &socket_path)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(dir.path().join("sluice.log")).unwrap())
            .spawn()
            .expect("starting sluice serve");
        Notified {
            child,
            socket,
            _dir: dir,
        }
    }

    /// The next notification, waiting up to `timeout`.
    fn next(&mut self, timeout: Duration) -> String {
        let deadline = Instant::now() + timeout;
        let mut buf = [0u8; 4096];
        loop {
            match self.socket.recv(&mut buf) {
                Ok(n) => return String::from_utf8_lossy(&buf[..n]).into_owned(),
                Err(e) if Instant::now() < deadline => {
                    assert!(
                        matches!(self.child.try_wait(), Ok(None)),
                        "sluice exited before notifying ({e})"
                    );
                }
                Err(e) => panic!("no notification within {timeout:?}: {e}"),
            }
        }
    }

    fn signal(&self, signal: Signal) {
        kill(Pid::from_raw(self.child.id() as i32), signal).unwrap();
    }
}

impl Drop for Notified {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn ready_reloading_and_stopping_reach_notify_socket() {
    let mut sluice = Notified::start();
    let ready = sluice.next(Duration::from_secs(60));
    assert!(
        ready.lines().any(|l| l == "READY=1"),
        "the first notification is READY=1: {ready:?}"
    );
    // READY=1 comes once Sluice listens: its "listening" lines are already out.
    let stdout = sluice.child.stdout.take().unwrap();
    let printed: Vec<String> = BufReader::new(stdout)
        .lines()
        .map_while(Result::ok)
        .take(2)
        .collect();
    assert!(
        printed[1].starts_with("sluice: admin API listening on "),
        "{printed:?}"
    );
    let admin: std::net::SocketAddr = printed[1]
        .trim_start_matches("sluice: admin API listening on ")
        .parse()
        .unwrap();
    assert_eq!(testkit::http::get(admin, "/healthz", None).status, 200);

    sluice.signal(Signal::SIGHUP);
    let reloading = sluice.next(Duration::from_secs(20));
    assert!(
        reloading.lines().any(|l| l == "RELOADING=1"),
        "SIGHUP: {reloading:?}"
    );
    assert!(
        reloading.lines().any(|l| l.starts_with("MONOTONIC_USEC=")),
        "RELOADING=1 carries MONOTONIC_USEC: {reloading:?}"
    );
    let ready = sluice.next(Duration::from_secs(20));
    assert!(
        ready.lines().any(|l| l == "READY=1"),
        "ready again after the reload: {ready:?}"
    );

    sluice.signal(Signal::SIGTERM);
    let stopping = sluice.next(Duration::from_secs(20));
    assert!(
        stopping.lines().any(|l| l == "STOPPING=1"),
        "SIGTERM: {stopping:?}"
    );
    let deadline = Instant::now() + Duration::from_secs(30);
    while !matches!(sluice.child.try_wait(), Ok(Some(_))) {
        assert!(Instant::now() < deadline, "sluice stops after SIGTERM");
        std::thread::sleep(Duration::from_millis(50));
    }
    // Nothing else spoke on the socket: the Postgres clusters Sluice runs (the embedded
    // control store here) do not inherit NOTIFY_SOCKET.
    sluice.socket.set_nonblocking(true).unwrap();
    let mut buf = [0u8; 4096];
    if let Ok(n) = sluice.socket.recv(&mut buf) {
        panic!(
            "a notification after STOPPING=1, from a child process: {:?}",
            String::from_utf8_lossy(&buf[..n])
        );
    }
}
