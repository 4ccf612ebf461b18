//! A real HAProxy (Debian's package, `mode tcp`) in front of one or more Sluice
//! processes, each connection preceded by a PROXY protocol v2 header.
//!
//! HAProxy runs in the foreground (`-db`) and is killed by its pid. It connects to the
//! servers from [`BALANCER`] (`source`), so a test can trust exactly that address
//! (`proxy_protocol_from`) while its clients bind addresses of their own. Its health
//! checks (`check inter 200`) reach Sluice as `LOCAL` headers throughout.

use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Where HAProxy connects to Sluice from.
pub const BALANCER: &str = "127.0.0.9";

/// A HAProxy process listening on one OS-assigned port.
pub struct Haproxy {
    child: Child,
    pub addr: SocketAddr,
}

impl Haproxy {
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// One Sluice behind HAProxy.
    pub fn start(dir: &Path, sluice: SocketAddr) -> Haproxy {
        Haproxy::balance(dir, &[sluice], "leastconn")
    }

    /// Several Sluice processes behind HAProxy with the algorithm `balance`
    /// (`roundrobin`, `leastconn`); the config is written to `dir/haproxy.cfg`.
    pub fn balance(dir: &Path, servers: &[SocketAddr], balance: &str) -> Haproxy {
        // A port the OS picked, released for HAProxy to bind.
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("a free port")
            .port();
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        let mut config = format!(
            "global\n  maxconn 4000\n\
             defaults\n  mode tcp\n  retries 3\n  option redispatch\n  timeout connect 5s\n  timeout client 120s\n  timeout server 120s\n\
             listen sluice\n  bind {addr}\n  balance {balance}\n"
        );
        for (i, server) in servers.iter().enumerate() {
            config.push_str(&format!(
                "  server s{i} {server} send-proxy-v2 source {BALANCER} check inter 200\n"
            ));
        }
        let path = dir.join("haproxy.cfg");
        std::fs::write(&path, config).expect("write haproxy.cfg");
        let child = Command::new("haproxy")
            .arg("-f")
            .arg(&path)
            .arg("-db")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("haproxy on the PATH (apt-get install haproxy)");
        let mut haproxy = Haproxy { child, addr };
        let start = Instant::now();
        loop {
            if std::net::TcpStream::connect(addr).is_ok() {
                break;
            }
            if let Ok(Some(status)) = haproxy.child.try_wait() {
                panic!("haproxy exited: {status}");
            }
            assert!(
                start.elapsed() < Duration::from_secs(10),
                "haproxy did not listen"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        haproxy
    }
}

impl Drop for Haproxy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
