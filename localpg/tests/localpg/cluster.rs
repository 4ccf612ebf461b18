//! Cluster lifecycle: create, start, connect (socket, TCP + TLS), stop, restart, drop, open.

use std::time::Instant;

use localpg::tls::CertificateAuthority;
use localpg::{free_port, Cluster, Error, StopMode, TlsFiles};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

use crate::support::{
    self, assert_gone, install, psql, scram_verifier, socket_conninfo, SUPERUSER_PASSWORD,
};

fn timed_start(cluster: &mut Cluster) {
    let started = Instant::now();
    cluster.start().expect("start");
    eprintln!("start took {:?}", started.elapsed());
}

fn timed_stop(cluster: &mut Cluster, mode: StopMode) {
    let started = Instant::now();
    cluster.stop(mode).expect("stop");
    eprintln!("stop {mode:?} took {:?}", started.elapsed());
}

#[test]
fn lifecycle_with_socket_tls_and_restarts() {
    let root = tempfile::tempdir().unwrap();
    let ca = CertificateAuthority::generate("lifecycle CA").unwrap();
    let ca_crt = root.path().join("ca.crt");
    ca.write(&ca_crt, &root.path().join("ca.key")).unwrap();
    let leaf = ca.issue(&["localhost", "127.0.0.1"]).unwrap();
    let tls = TlsFiles {
        cert_pem: root.path().join("server.crt"),
        key_pem: root.path().join("server.key"),
    };
    leaf.write(&tls.cert_pem, &tls.key_pem).unwrap();
    let port = free_port().unwrap();

    let mut cluster = support::cluster(root.path(), |config| {
        config.port = Some(port);
        config.tls = Some(tls.clone());
    });
    let verifier = scram_verifier("app-secret");
    cluster
        .run_single_user(&format!(
            "CREATE ROLE app LOGIN PASSWORD '{verifier}'\nCREATE DATABASE app OWNER app"
        ))
        .expect("create role and database");
    assert!(!cluster.is_running());
    assert_eq!(cluster.pid(), None);

    timed_start(&mut cluster);
    let pid = cluster.pid().expect("running");
    assert!(cluster.is_running());

    let socket = socket_conninfo(&cluster, "postgres");
    assert_eq!(psql(&socket, SUPERUSER_PASSWORD, "select 1").unwrap(), "1");
    assert!(
        psql(&socket, "wrong", "select 1").is_err(),
        "SCRAM must be enforced"
    );

    let tls_conninfo = |user: &str, db: &str| {
        format!(
            "host=localhost port={port} user={user} dbname={db} sslmode=verify-full sslrootcert={}",
            ca_crt.display()
        )
    };
    let ssl_used = "select ssl from pg_stat_ssl where pid = pg_backend_pid()";
    assert_eq!(
        psql(
            &tls_conninfo("postgres", "postgres"),
            SUPERUSER_PASSWORD,
            ssl_used
        )
        .unwrap(),
        "t"
    );
    // The role whose verifier was installed in single-user mode logs in with its password.
    assert_eq!(
        psql(
            &tls_conninfo("app", "app"),
            "app-secret",
            "select current_user"
        )
        .unwrap(),
        "app"
    );
    let stored = psql(
        &socket,
        SUPERUSER_PASSWORD,
        "select rolpassword from pg_authid where rolname = 'app'",
    )
    .unwrap();
    assert_eq!(stored, verifier);

    timed_stop(&mut cluster, StopMode::Fast);
    assert_gone(pid);
    assert!(!cluster.is_running());
    cluster
        .stop(StopMode::Fast)
        .expect("stopping a stopped cluster is a no-op");

    timed_start(&mut cluster);
    let pid = cluster.pid().unwrap();
    timed_stop(&mut cluster, StopMode::Immediate);
    assert_gone(pid);

    // After an immediate stop the server runs crash recovery and comes back.
    timed_start(&mut cluster);
    assert_eq!(psql(&socket, SUPERUSER_PASSWORD, "select 2").unwrap(), "2");

    // A SIGKILLed postmaster leaves postmaster.pid and the socket lock behind.
    let pid = cluster.pid().unwrap();
    kill(Pid::from_raw(pid as i32), Signal::SIGKILL).unwrap();
    let started = Instant::now();
    while cluster.is_running() {
        assert!(started.elapsed().as_secs() < 10, "SIGKILL did not take");
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    assert!(cluster.data_dir().join("postmaster.pid").exists());
    timed_start(&mut cluster);
    assert_eq!(psql(&socket, SUPERUSER_PASSWORD, "select 3").unwrap(), "3");

    let pid = cluster.pid().unwrap();
    timed_stop(&mut cluster, StopMode::Smart);
    assert_gone(pid);
}

#[test]
fn dropping_a_started_cluster_stops_it() {
    let root = tempfile::tempdir().unwrap();
    let mut cluster = support::cluster(root.path(), |_| {});
    cluster.start().unwrap();
    let pid = cluster.pid().unwrap();
    let log = cluster.log_path();
    drop(cluster);
    assert_gone(pid);
    let log = std::fs::read_to_string(log).unwrap();
    assert!(log.contains("database system is ready"), "{log}");
}

#[test]
fn open_reads_back_a_cluster_and_leaves_foreign_postmasters_alone() {
    let root = tempfile::tempdir().unwrap();
    let port = free_port().unwrap();
    let created = support::cluster(root.path(), |config| {
        config.port = Some(port);
        config.settings = vec![
            ("max_connections".to_owned(), "17".to_owned()),
            ("cluster_name".to_owned(), "it's \\ quoted".to_owned()),
        ];
    });
    let data_dir = created.data_dir().to_path_buf();
    let socket_dir = created.socket_dir().to_path_buf();
    drop(created);

    let mut first = Cluster::open(install(), &data_dir).unwrap();
    assert_eq!(first.port(), Some(port));
    assert_eq!(first.socket_dir(), socket_dir);
    assert_eq!(first.data_dir(), data_dir);
    first.start().unwrap();
    let socket = socket_conninfo(&first, "postgres");
    assert_eq!(
        psql(&socket, SUPERUSER_PASSWORD, "show max_connections").unwrap(),
        "17"
    );
    assert_eq!(
        psql(&socket, SUPERUSER_PASSWORD, "show cluster_name").unwrap(),
        "it's \\ quoted"
    );

    // A second handle sees the postmaster but does not own it.
    let mut second = Cluster::open(install(), &data_dir).unwrap();
    assert_eq!(second.pid(), first.pid());
    assert!(matches!(second.start(), Err(Error::AlreadyRunning { .. })));
    assert!(matches!(
        second.run_single_user("select 1"),
        Err(Error::AlreadyRunning { .. })
    ));
    drop(second);
    assert!(
        first.is_running(),
        "dropping an observing handle must not stop the server"
    );

    // ... and can stop it, after which the owner notices.
    let pid = first.pid().unwrap();
    let mut second = Cluster::open(install(), &data_dir).unwrap();
    second.stop(StopMode::Fast).unwrap();
    assert!(!first.is_running());
    assert_gone(pid);
}

#[test]
fn create_and_open_refuse_the_wrong_directories() {
    let root = tempfile::tempdir().unwrap();
    let existing = root.path().join("data");
    std::fs::create_dir(&existing).unwrap();
    let config = localpg::ClusterConfig::new(&existing, root.path().join("sock"));
    assert!(matches!(
        Cluster::create(install(), support::template(), config),
        Err(Error::DataDirExists(_))
    ));
    assert!(matches!(
        Cluster::open(install(), &existing),
        Err(Error::NotACluster { .. })
    ));

    let long = root.path().join("s".repeat(120));
    let config = localpg::ClusterConfig::new(root.path().join("other"), long);
    assert!(matches!(
        Cluster::create(install(), support::template(), config),
        Err(Error::SocketPathTooLong(_))
    ));
}

#[test]
fn cluster_handles_can_move_between_threads() {
    fn assert_send_sync<T: Send + Sync>() {}
    assert_send_sync::<Cluster>();
}
